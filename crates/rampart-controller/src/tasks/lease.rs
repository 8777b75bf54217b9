//! The `reconcilers` lease: one controller per database runs the leader-only tasks, so several
//! controllers can share PostgreSQL.

use rampart_common::error::ErrorChain;
use rampart_common::time::to_ms;
use rampart_db::leases;

use crate::state::AppState;

const LEASE: &str = "reconcilers";
const LEASE_TTL: time::Duration = time::Duration::seconds(15);

pub async fn renew(state: AppState) -> Result<(), String> {
    let now = state.now();
    let result = async {
        let mut conn = state.db.conn().await?;
        leases::acquire(&mut conn, LEASE, &state.instance_id, to_ms(now), to_ms(now + LEASE_TTL)).await
    }
    .await;
    let leader = *result.as_ref().unwrap_or(&false);
    if state.tasks.set_leader(leader) {
        tracing::info!(instance = %state.instance_id, leader, "reconciler lease changed hands");
    }
    state.audit.set_leader(leader);
    result
        .map(drop)
        .map_err(|e| format!("cannot renew the reconciler lease: {}", ErrorChain(&e)))
}

/// Hands the lease over at shutdown instead of letting it expire.
pub async fn release_on_shutdown(state: AppState) {
    state.shutdown.cancelled().await;
    if state.tasks.is_leader()
        && let Ok(mut conn) = state.db.conn().await
    {
        let _ = leases::release(&mut conn, LEASE, &state.instance_id).await;
    }
}
