//! Per-project quotas (`app::identity::quotas`): read by anyone who sees the project, set by
//! system admins.

use axum::extract::State;
use rampart_api::{ProjectQuotas, QuotaSet};
use rampart_common::Error;
use rampart_common::error::ErrorBody;
use uuid::Uuid;

use crate::app::identity::quotas;
use crate::auth::Principal;
use crate::http::{ApiJson, ApiPath};
use crate::state::AppState;

/// The project's quotas: limits in force, usage, and its own limits.
#[utoipa::path(get, path = "/v1/projects/{project}/quotas", tag = "identity", params(("project" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = ProjectQuotas), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_quotas(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(project): ApiPath<Uuid>,
) -> Result<axum::Json<ProjectQuotas>, Error> {
    Ok(axum::Json(quotas::get_quotas(&state, &principal, project).await?))
}

/// Set the project's own limits (system admins); a field left out or `null` takes the
/// configured default. Lowering a limit below the usage deletes nothing: new resources are
/// refused (409 `quota_exceeded`) until the usage is under it again.
#[utoipa::path(put, path = "/v1/projects/{project}/quotas", tag = "identity", params(("project" = Uuid, Path)), request_body = QuotaSet, security(("bearer" = [])),
    responses((status = 200, body = ProjectQuotas), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn put_quotas(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(project): ApiPath<Uuid>,
    ApiJson(req): ApiJson<QuotaSet>,
) -> Result<axum::Json<ProjectQuotas>, Error> {
    Ok(axum::Json(quotas::put_quotas(&state, &principal, project, req).await?))
}
