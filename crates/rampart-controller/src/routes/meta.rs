//! Unauthenticated routes: health, the CA certificate, the OpenAPI documents.

use axum::extract::State;
use axum::response::IntoResponse;
use rampart_api::Health;
use rampart_common::Error;
use rampart_common::error::ErrorBody;

use crate::app;
use crate::state::AppState;

/// Liveness of the control plane and its nodes.
#[utoipa::path(get, path = "/v1/health", tag = "meta",
    params(("verbose" = Option<bool>, Query, description = "Also list the background tasks of this controller, each with its period and health")),
    responses((status = 200, body = Health, description = "`ok`, or `degraded` with a `reason` while the database refuses writes or the HSM fails"),
        (status = 503, body = ErrorBody, description = "The database does not answer")))]
pub async fn health(
    State(state): State<AppState>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Result<axum::Json<Health>, Error> {
    // `?verbose` or `?verbose=true`; anything else is the short answer load balancers poll.
    let verbose = query.as_deref().is_some_and(|q| {
        q.split('&')
            .any(|kv| kv == "verbose" || kv == "verbose=true" || kv == "verbose=1")
    });
    app::nodes::health(&state, verbose).await.map(axum::Json)
}

/// Readiness for traffic (load balancers, orchestrators): 200 while the database answers and
/// takes writes and the HSM serves keys, 503 `unavailable` with the reason otherwise.
#[utoipa::path(get, path = "/readyz", tag = "meta",
    responses((status = 200, body = String, description = "`ready`"),
        (status = 503, body = ErrorBody, description = "The database does not answer or refuses writes, or the HSM fails")))]
pub async fn readyz(State(state): State<AppState>) -> Result<&'static str, Error> {
    app::nodes::readiness(&state).await.map(|()| "ready")
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
