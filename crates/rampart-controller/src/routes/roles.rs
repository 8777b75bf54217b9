//! The role catalogue: built-in roles and custom roles (`app::roles`).

use axum::extract::State;
use axum::http::StatusCode;
use rampart_api::{List, Role, RoleCreate, RoleUpdate};
use rampart_common::Error;
use rampart_common::error::ErrorBody;

use crate::app::roles;
use crate::auth::Principal;
use crate::http::{ApiJson, ApiPath};
use crate::state::AppState;

/// Built-in and custom roles.
#[utoipa::path(get, path = "/v1/roles", tag = "identity", security(("bearer" = [])),
    responses((status = 200, body = List<Role>), (status = 401, body = ErrorBody)))]
pub async fn list_roles(State(state): State<AppState>, _principal: Principal) -> Result<axum::Json<List<Role>>, Error> {
    Ok(axum::Json(roles::list_roles(&state).await?))
}

/// Create a custom role: a named bundle of built-in project roles (system-admin).
#[utoipa::path(post, path = "/v1/roles", tag = "identity", request_body = RoleCreate, security(("bearer" = [])),
    responses((status = 201, body = Role), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_role(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(req): ApiJson<RoleCreate>,
) -> Result<(StatusCode, axum::Json<Role>), Error> {
    let v = roles::create_role(&state, &principal, req).await?;
    Ok((StatusCode::CREATED, axum::Json(v)))
}

/// One role (a built-in role's id is its name).
#[utoipa::path(get, path = "/v1/roles/{id}", tag = "identity", params(("id" = String, Path)), security(("bearer" = [])),
    responses((status = 200, body = Role), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_role(
    State(state): State<AppState>,
    _principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<axum::Json<Role>, Error> {
    Ok(axum::Json(roles::get_role(&state, &id).await?))
}

/// Change a custom role; holders get the new bundle at their next request.
#[utoipa::path(patch, path = "/v1/roles/{id}", tag = "identity", params(("id" = String, Path)), request_body = RoleUpdate, security(("bearer" = [])),
    responses((status = 200, body = Role), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn update_role(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<RoleUpdate>,
) -> Result<axum::Json<Role>, Error> {
    Ok(axum::Json(roles::update_role(&state, &principal, &id, req).await?))
}

/// Delete an unassigned custom role.
#[utoipa::path(delete, path = "/v1/roles/{id}", tag = "identity", params(("id" = String, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_role(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, Error> {
    roles::delete_role(&state, &principal, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
