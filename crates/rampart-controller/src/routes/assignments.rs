//! Role assignments: who holds which role where (`app::assignments`, by the grant rules of
//! `docs/authz.md`).

use axum::extract::State;
use axum::http::StatusCode;
use rampart_api::{List, RoleAssignment, RoleAssignmentCreate};
use rampart_common::Error;
use rampart_common::error::ErrorBody;
use rampart_common::page::PageParams;
use serde::Deserialize;
use uuid::Uuid;

use crate::app::assignments::{self, Filter};
use crate::auth::Principal;
use crate::http::{ApiJson, ApiPath, ApiQuery};
use crate::state::AppState;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AssignmentFilter {
    pub user: Option<Uuid>,
    pub group: Option<Uuid>,
    /// Only assignments on this project.
    pub project: Option<Uuid>,
    /// Only assignments on this domain.
    pub domain: Option<Uuid>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// Grant a role to a user or group at a scope.
#[utoipa::path(post, path = "/v1/role-assignments", tag = "identity", request_body = RoleAssignmentCreate, security(("bearer" = [])),
    responses((status = 201, body = RoleAssignment), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn create_assignment(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(req): ApiJson<RoleAssignmentCreate>,
) -> Result<(StatusCode, axum::Json<RoleAssignment>), Error> {
    let v = assignments::create_assignment(&state, &principal, req).await?;
    Ok((StatusCode::CREATED, axum::Json(v)))
}

/// Role assignments you may see: all for system readers; on the domains and projects you
/// administer; and your own.
#[utoipa::path(get, path = "/v1/role-assignments", tag = "identity", params(AssignmentFilter), security(("bearer" = [])),
    responses((status = 200, body = List<RoleAssignment>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn list_assignments(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(q): ApiQuery<AssignmentFilter>,
) -> Result<axum::Json<List<RoleAssignment>>, Error> {
    let page = PageParams {
        limit: q.limit,
        cursor: q.cursor.clone(),
    }
    .validate()?;
    let filter = Filter {
        user: q.user,
        group: q.group,
        project: q.project,
        domain: q.domain,
    };
    Ok(axum::Json(
        assignments::list_assignments(&state, &principal, filter, page).await?,
    ))
}

/// Revoke a role assignment; the holders' sessions end at once.
#[utoipa::path(delete, path = "/v1/role-assignments/{id}", tag = "identity", params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Revoked"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_assignment(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, Error> {
    assignments::delete_assignment(&state, &principal, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
