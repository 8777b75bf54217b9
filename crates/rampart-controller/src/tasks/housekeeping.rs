//! Forgetting what has expired: tokens past their lifetime, idempotency keys older than 24 h.

use rampart_common::error::ErrorChain;
use rampart_db::identity;

use crate::state::AppState;

pub async fn purge_tokens(state: AppState) -> Result<(), String> {
    purge(&state)
        .await
        .map_err(|e| format!("token purge: {}", ErrorChain(&e)))
}

async fn purge(state: &AppState) -> rampart_db::Result<()> {
    let mut conn = state.db.conn().await?;
    let n = identity::purge_expired_tokens(&mut conn, state.now()).await?;
    if n > 0 {
        tracing::info!(count = n, "purged expired tokens");
    }
    let n = rampart_db::idempotency::purge(&mut conn, state.now() - crate::idempotency::TTL).await?;
    if n > 0 {
        tracing::info!(count = n, "forgot idempotency keys older than 24 h");
    }
    Ok(())
}
