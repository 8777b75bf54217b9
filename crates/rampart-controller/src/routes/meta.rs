//! Unauthenticated routes: health, the CA certificate, the OpenAPI documents.

use axum::extract::State;
use axum::response::IntoResponse;
use rampart_api::{Health, NodeCounts};
use rampart_common::Error;
use rampart_common::error::ErrorBody;
use rampart_db::nodes;

use crate::state::AppState;

/// Liveness of the control plane and its nodes.
#[utoipa::path(get, path = "/v1/health", tag = "meta",
    responses((status = 200, body = Health), (status = 503, body = ErrorBody, description = "The database does not answer")))]
pub async fn health(State(state): State<AppState>) -> Result<axum::Json<Health>, Error> {
    let mut conn = state.db.conn().await?;
    let (ready, total) = nodes::counts(&mut conn).await?;
    Ok(axum::Json(Health {
        status: "ok".into(),
        version: rampart_common::VERSION.into(),
        nodes: NodeCounts { ready, total },
    }))
}

/// The internal CA certificate (PEM). Public: agents fetch it before they trust it and check
/// it against the SHA-256 pinned in their join token.
#[utoipa::path(get, path = "/v1/ca/certificate", tag = "meta",
    responses((status = 200, content_type = "application/x-pem-file", body = String)))]
pub async fn ca_certificate(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(http::header::CONTENT_TYPE, "application/x-pem-file")],
        state.ca.cert_pem().to_string(),
    )
}
