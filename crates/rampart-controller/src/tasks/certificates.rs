//! Renewal of this controller's API server certificate once two thirds of its lifetime are
//! gone (spec 13.3-2, 12.3.1), in place: the listener stays up and new handshakes get the new
//! certificate. On failure the current certificate is kept (it is still valid for a third of
//! its lifetime) and the supervisor retries with a growing wait (30 s doubling to an hour).

use rampart_common::error::ErrorChain;

use crate::state::AppState;

pub async fn renew(state: AppState) -> Result<(), String> {
    let now = state.now();
    if now < state.server_cert.renewal_due() {
        return Ok(());
    }
    let (cert, ca) = (state.server_cert.clone(), state.ca.clone());
    let days = state.config.tls.server_certificate_days;
    let renewed = crate::kms::blocking(move || cert.renew_if_due(&ca, days, now))
        .await
        .map_err(|e| format!("server certificate renewal failed: {}", ErrorChain(&e)))?
        .map_err(|e| {
            format!(
                "server certificate renewal failed; the current certificate (valid until {}) stays in use: {}",
                rampart_common::time::rfc3339(state.server_cert.not_after()),
                ErrorChain(&e)
            )
        })?;
    if renewed
        && let Ok(mut conn) = state.db.conn().await
        && let Err(e) = crate::app::certificates::record_server_certificate(&state, &mut conn).await
    {
        tracing::warn!(error = %ErrorChain(&e), "cannot put the renewed server certificate in the inventory");
    }
    Ok(())
}
