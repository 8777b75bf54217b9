//! Identity administration: domains, projects, users and the security-compliance policy
//! (groups, roles and role assignments have their own modules beside this one): parse, call
//! `app::identity`, render.

use axum::extract::State;
use axum::http::StatusCode;
use rampart_api::{
    Domain, DomainCreate, DomainUpdate, List, PasswordReset, Project, ProjectCreate, ProjectUpdate, SecurityCompliance,
    User, UserCreate, UserUpdate,
};
use rampart_common::Error;
use rampart_common::error::ErrorBody;
use rampart_common::page::PageParams;
use serde::Deserialize;
use uuid::Uuid;

use crate::app::identity::{compliance, domains, projects, users};
use crate::auth::Principal;
use crate::http::{ApiJson, ApiPath, ApiQuery};
use crate::state::AppState;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DomainFilter {
    /// Only this domain (name or id).
    pub domain: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

impl DomainFilter {
    pub(super) fn page(&self) -> Result<rampart_common::page::PageRequest, Error> {
        PageParams {
            limit: self.limit,
            cursor: self.cursor.clone(),
        }
        .validate()
    }
}

/// Domains you may see.
#[utoipa::path(get, path = "/v1/domains", tag = "identity", params(PageParams), security(("bearer" = [])),
    responses((status = 200, body = List<Domain>), (status = 401, body = ErrorBody)))]
pub async fn list_domains(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Result<axum::Json<List<Domain>>, Error> {
    Ok(axum::Json(domains::list_domains(&state, &principal, page).await?))
}

/// Create a domain (system-admin).
#[utoipa::path(post, path = "/v1/domains", tag = "identity", request_body = DomainCreate, security(("bearer" = [])),
    responses((status = 201, body = Domain), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_domain(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(req): ApiJson<DomainCreate>,
) -> Result<(StatusCode, axum::Json<Domain>), Error> {
    let v = domains::create_domain(&state, &principal, req).await?;
    Ok((StatusCode::CREATED, axum::Json(v)))
}

/// One domain.
#[utoipa::path(get, path = "/v1/domains/{id}", tag = "identity", params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = Domain), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_domain(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<axum::Json<Domain>, Error> {
    Ok(axum::Json(domains::get_domain(&state, &principal, id).await?))
}

/// Change a domain (system-admin). Disabling it ends its users' sessions.
#[utoipa::path(patch, path = "/v1/domains/{id}", tag = "identity", params(("id" = Uuid, Path)), request_body = DomainUpdate, security(("bearer" = [])),
    responses((status = 200, body = Domain), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn update_domain(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(req): ApiJson<DomainUpdate>,
) -> Result<axum::Json<Domain>, Error> {
    Ok(axum::Json(domains::update_domain(&state, &principal, id, req).await?))
}

/// Delete an empty domain (system-admin).
#[utoipa::path(delete, path = "/v1/domains/{id}", tag = "identity", params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_domain(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, Error> {
    domains::delete_domain(&state, &principal, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Projects you may see: all for system readers, a domain's for its admins, otherwise those
/// you have a role on.
#[utoipa::path(get, path = "/v1/projects", tag = "identity", params(DomainFilter), security(("bearer" = [])),
    responses((status = 200, body = List<Project>), (status = 401, body = ErrorBody)))]
pub async fn list_projects(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(q): ApiQuery<DomainFilter>,
) -> Result<axum::Json<List<Project>>, Error> {
    let page = q.page()?;
    Ok(axum::Json(
        projects::list_projects(&state, &principal, q.domain.as_deref(), page).await?,
    ))
}

/// Create a project (system-admin, or domain-admin of its domain).
#[utoipa::path(post, path = "/v1/projects", tag = "identity", request_body = ProjectCreate, security(("bearer" = [])),
    responses((status = 201, body = Project), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_project(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(req): ApiJson<ProjectCreate>,
) -> Result<(StatusCode, axum::Json<Project>), Error> {
    let v = projects::create_project(&state, &principal, req).await?;
    Ok((StatusCode::CREATED, axum::Json(v)))
}

/// One project.
#[utoipa::path(get, path = "/v1/projects/{id}", tag = "identity", params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = Project), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_project(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<axum::Json<Project>, Error> {
    Ok(axum::Json(projects::get_project(&state, &principal, id).await?))
}

/// Change a project (its domain's admins, or the project's own admins).
#[utoipa::path(patch, path = "/v1/projects/{id}", tag = "identity", params(("id" = Uuid, Path)), request_body = ProjectUpdate, security(("bearer" = [])),
    responses((status = 200, body = Project), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn update_project(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(req): ApiJson<ProjectUpdate>,
) -> Result<axum::Json<Project>, Error> {
    Ok(axum::Json(projects::update_project(&state, &principal, id, req).await?))
}

/// Delete a project (its domain's admins).
#[utoipa::path(delete, path = "/v1/projects/{id}", tag = "identity", params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_project(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, Error> {
    projects::delete_project(&state, &principal, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Users you may administer: all for system readers, a domain's for its admins.
#[utoipa::path(get, path = "/v1/users", tag = "identity", params(DomainFilter), security(("bearer" = [])),
    responses((status = 200, body = List<User>), (status = 401, body = ErrorBody)))]
pub async fn list_users(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(q): ApiQuery<DomainFilter>,
) -> Result<axum::Json<List<User>>, Error> {
    let page = q.page()?;
    Ok(axum::Json(
        users::list_users(&state, &principal, q.domain.as_deref(), page).await?,
    ))
}

/// Create a user (system-admin, or domain-admin of its domain). Unless told otherwise the
/// user must change the given password at first login.
#[utoipa::path(post, path = "/v1/users", tag = "identity", request_body = UserCreate, security(("bearer" = [])),
    responses((status = 201, body = User), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_user(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(req): ApiJson<UserCreate>,
) -> Result<(StatusCode, axum::Json<User>), Error> {
    let v = users::create_user(&state, &principal, req).await?;
    Ok((StatusCode::CREATED, axum::Json(v)))
}

/// One user.
#[utoipa::path(get, path = "/v1/users/{id}", tag = "identity", params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = User), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_user(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<axum::Json<User>, Error> {
    Ok(axum::Json(users::get_user(&state, &principal, id).await?))
}

/// Change a user. Disabling it or narrowing its window or sources ends its sessions.
#[utoipa::path(patch, path = "/v1/users/{id}", tag = "identity", params(("id" = Uuid, Path)), request_body = UserUpdate, security(("bearer" = [])),
    responses((status = 200, body = User), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn update_user(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(req): ApiJson<UserUpdate>,
) -> Result<axum::Json<User>, Error> {
    Ok(axum::Json(users::update_user(&state, &principal, id, req).await?))
}

/// Delete a user (not yourself).
#[utoipa::path(delete, path = "/v1/users/{id}", tag = "identity", params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_user(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, Error> {
    users::delete_user(&state, &principal, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Unlock an account locked after failed logins.
#[utoipa::path(post, path = "/v1/users/{id}/unlock", tag = "identity", params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Unlocked"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn unlock_user(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, Error> {
    users::unlock_user(&state, &principal, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Set a new password for a user (who must change it at next login unless told otherwise);
/// ends the user's sessions.
#[utoipa::path(post, path = "/v1/users/{id}/reset-password", tag = "identity", params(("id" = Uuid, Path)), request_body = PasswordReset, security(("bearer" = [])),
    responses((status = 204, description = "Password reset"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn reset_password(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(req): ApiJson<PasswordReset>,
) -> Result<StatusCode, Error> {
    users::reset_password(&state, &principal, id, req).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Remove a user's second factor (for a lost device); the user enrols again at next login.
#[utoipa::path(delete, path = "/v1/users/{id}/mfa", tag = "identity", params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Second factor removed"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn reset_mfa(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, Error> {
    users::reset_mfa(&state, &principal, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The password, lockout, MFA and session policy.
#[utoipa::path(get, path = "/v1/security-compliance", tag = "identity", security(("bearer" = [])),
    responses((status = 200, body = SecurityCompliance), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn get_compliance(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<axum::Json<SecurityCompliance>, Error> {
    Ok(axum::Json(compliance::get_compliance(&state, &principal).await?))
}

/// Replace the policy (security-admin). Absent fields take their defaults.
#[utoipa::path(put, path = "/v1/security-compliance", tag = "identity", request_body = SecurityCompliance, security(("bearer" = [])),
    responses((status = 200, body = SecurityCompliance), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn put_compliance(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(req): ApiJson<SecurityCompliance>,
) -> Result<axum::Json<SecurityCompliance>, Error> {
    Ok(axum::Json(compliance::put_compliance(&state, &principal, req).await?))
}
