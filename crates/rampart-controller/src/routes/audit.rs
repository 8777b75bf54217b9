//! The audit API (spec 13.4): the records, verification of the trail, retention per log type
//! and forwarding to an external log manager. Reading needs `audit.read` (system admin,
//! security admin, auditor), verifying `audit.verify`, changing retention or forwarding
//! `audit.manage` (security admin and auditor only: the system administrator whose actions
//! are recorded cannot shorten or redirect the record). Every call here is itself audited.

use crate::app;
use crate::app::audit::{EventQuery, Forwarding};
use crate::audit::ForwardingSettings;
use crate::auth::Principal;
use crate::http::{ApiJson, ApiQuery};
use crate::state::AppState;
use axum::extract::State;
use rampart_api::List;
use rampart_audit::record::AuditRecord;
use rampart_audit::retention::RetentionPolicy;
use rampart_audit::verify::VerifyReport;
use rampart_common::Error;
use rampart_common::error::ErrorBody;

/// Audit records, filtered, oldest first unless `order=desc`.
#[utoipa::path(get, path = "/v1/audit/events", tag = "audit", params(EventQuery), security(("bearer" = [])),
    responses(
        (status = 200, body = List<AuditRecord>),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
    ))]
pub async fn list_events(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(q): ApiQuery<EventQuery>,
) -> Result<axum::Json<List<AuditRecord>>, Error> {
    app::audit::list_events(&state, &principal, q).await.map(axum::Json)
}

/// Verifies the whole trail: every record's hash, the chain links, the Merkle roots and the
/// signatures of the checkpoints. Each problem names the record's seq and its kind
/// (`modified`, `missing`, `truncated`, `bad_signature`).
#[utoipa::path(post, path = "/v1/audit/verify", tag = "audit", security(("bearer" = [])),
    responses(
        (status = 200, body = VerifyReport, description = "`ok` is false when any problem was found"),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
    ))]
pub async fn verify(State(state): State<AppState>, principal: Principal) -> Result<axum::Json<VerifyReport>, Error> {
    app::audit::verify(&state, &principal).await.map(axum::Json)
}

/// The retention of each log type, in days.
#[utoipa::path(get, path = "/v1/audit/retention", tag = "audit", security(("bearer" = [])),
    responses((status = 200, body = RetentionPolicy), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn get_retention(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<axum::Json<RetentionPolicy>, Error> {
    app::audit::get_retention(&state, &principal).await.map(axum::Json)
}

/// Changes the retention (auditor or security admin). Operation and security records are kept
/// at least 180 days; the change itself is recorded with the old and new values.
#[utoipa::path(put, path = "/v1/audit/retention", tag = "audit", request_body = RetentionPolicy, security(("bearer" = [])),
    responses(
        (status = 200, body = RetentionPolicy),
        (status = 400, body = ErrorBody, description = "validation_failed: `details.fields` names each value out of range"),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
    ))]
pub async fn put_retention(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(policy): ApiJson<RetentionPolicy>,
) -> Result<axum::Json<RetentionPolicy>, Error> {
    app::audit::put_retention(&state, &principal, policy)
        .await
        .map(axum::Json)
}

/// Where records and checkpoints are forwarded (RFC 5425 syslog over TLS) and how that goes:
/// `status.degraded` is the "forwarding degraded" alarm.
#[utoipa::path(get, path = "/v1/audit/forwarding", tag = "audit", security(("bearer" = [])),
    responses((status = 200, body = Forwarding), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn get_forwarding(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<axum::Json<Forwarding>, Error> {
    app::audit::get_forwarding(&state, &principal).await.map(axum::Json)
}

/// Sets the forwarding target (auditor or security admin). The receiver's certificate is
/// verified against `ca_pem` and `server_name`; a client certificate is given as file paths
/// the controller reads.
#[utoipa::path(put, path = "/v1/audit/forwarding", tag = "audit", request_body = ForwardingSettings, security(("bearer" = [])),
    responses(
        (status = 200, body = Forwarding),
        (status = 400, body = ErrorBody, description = "validation_failed naming the field"),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
    ))]
pub async fn put_forwarding(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(settings): ApiJson<ForwardingSettings>,
) -> Result<axum::Json<Forwarding>, Error> {
    app::audit::put_forwarding(&state, &principal, settings)
        .await
        .map(axum::Json)
}
