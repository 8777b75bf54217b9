//! Groups: a domain's users gathered to share role assignments (`app::groups`).

use axum::extract::State;
use axum::http::StatusCode;
use rampart_api::{Group, GroupCreate, GroupUpdate, List};
use rampart_common::Error;
use rampart_common::error::ErrorBody;
use uuid::Uuid;

use super::identity::DomainFilter;
use crate::app::groups;
use crate::auth::Principal;
use crate::http::{ApiJson, ApiPath, ApiQuery};
use crate::state::AppState;

/// Groups you may administer.
#[utoipa::path(get, path = "/v1/groups", tag = "identity", params(DomainFilter), security(("bearer" = [])),
    responses((status = 200, body = List<Group>), (status = 401, body = ErrorBody)))]
pub async fn list_groups(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(q): ApiQuery<DomainFilter>,
) -> Result<axum::Json<List<Group>>, Error> {
    let page = q.page()?;
    Ok(axum::Json(
        groups::list_groups(&state, &principal, q.domain.as_deref(), page).await?,
    ))
}

/// Create a group.
#[utoipa::path(post, path = "/v1/groups", tag = "identity", request_body = GroupCreate, security(("bearer" = [])),
    responses((status = 201, body = Group), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_group(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(req): ApiJson<GroupCreate>,
) -> Result<(StatusCode, axum::Json<Group>), Error> {
    let v = groups::create_group(&state, &principal, req).await?;
    Ok((StatusCode::CREATED, axum::Json(v)))
}

/// One group.
#[utoipa::path(get, path = "/v1/groups/{id}", tag = "identity", params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = Group), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_group(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<axum::Json<Group>, Error> {
    Ok(axum::Json(groups::get_group(&state, &principal, id).await?))
}

/// Change a group.
#[utoipa::path(patch, path = "/v1/groups/{id}", tag = "identity", params(("id" = Uuid, Path)), request_body = GroupUpdate, security(("bearer" = [])),
    responses((status = 200, body = Group), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn update_group(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(req): ApiJson<GroupUpdate>,
) -> Result<axum::Json<Group>, Error> {
    Ok(axum::Json(groups::update_group(&state, &principal, id, req).await?))
}

/// Delete a group; its members lose the roles it gave them at once.
#[utoipa::path(delete, path = "/v1/groups/{id}", tag = "identity", params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_group(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, Error> {
    groups::delete_group(&state, &principal, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Members of a group (user ids).
#[utoipa::path(get, path = "/v1/groups/{id}/users", tag = "identity", params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = List<Uuid>), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn group_members(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<axum::Json<List<Uuid>>, Error> {
    Ok(axum::Json(groups::group_members(&state, &principal, id).await?))
}

/// Add a user of the same domain to a group.
#[utoipa::path(put, path = "/v1/groups/{id}/users/{user}", tag = "identity", params(("id" = Uuid, Path), ("user" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Member added"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn add_group_member(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((id, user)): ApiPath<(Uuid, Uuid)>,
) -> Result<StatusCode, Error> {
    groups::add_group_member(&state, &principal, id, user).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Remove a user from a group; the roles it gave end at once.
#[utoipa::path(delete, path = "/v1/groups/{id}/users/{user}", tag = "identity", params(("id" = Uuid, Path), ("user" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Member removed"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn remove_group_member(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((id, user)): ApiPath<(Uuid, Uuid)>,
) -> Result<StatusCode, Error> {
    groups::remove_group_member(&state, &principal, id, user).await?;
    Ok(StatusCode::NO_CONTENT)
}
