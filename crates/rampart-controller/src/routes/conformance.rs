//! Live conformance (`GET /v1/conformance`): auditors and security administrators.

use axum::extract::State;
use rampart_api::conformance::ConformanceReport;
use rampart_common::Error;
use rampart_common::error::ErrorBody;

use crate::app;
use crate::auth::Principal;
use crate::state::AppState;

/// Every clause of the spec with its mechanism and tests; for the clauses with a live probe,
/// what the probe found in this running cloud (`pass`, `fail` with the evidence, or
/// `not_applicable`); `not_probed` otherwise.
#[utoipa::path(get, path = "/v1/conformance", tag = "security", security(("bearer" = [])),
    responses(
        (status = 200, body = ConformanceReport),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
    ))]
pub async fn report(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<axum::Json<ConformanceReport>, Error> {
    app::conformance::report(&state, &principal).await.map(axum::Json)
}
