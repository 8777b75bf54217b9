//! Node liveness (the heartbeat is `PUT /agent/v1/status`): nodes silent for longer than
//! `nodes.heartbeat_timeout_s` become unreachable, with a host event in the trail.

use std::time::Duration;

use rampart_common::error::ErrorChain;
use rampart_db::nodes;

use crate::state::AppState;

pub async fn pass(state: AppState) -> Result<(), String> {
    // Agents that kept running through a controller restart (or a failover) get a heartbeat
    // timeout after the leadership began to report before they are declared unreachable.
    let grace = Duration::from_secs(state.config.nodes.heartbeat_timeout_s);
    if state.tasks.leader_for() < grace {
        return Ok(());
    }
    mark_unreachable(&state)
        .await
        .map_err(|e| format!("node liveness: {}", ErrorChain(&e)))
}

async fn mark_unreachable(state: &AppState) -> rampart_db::Result<()> {
    let now = state.now();
    let cutoff = now - time::Duration::seconds(state.config.nodes.heartbeat_timeout_s as i64);
    let mut conn = state.db.conn().await?;
    let lost = nodes::mark_unreachable(&mut conn, cutoff, now).await?;
    drop(conn);
    for (id, name) in lost {
        tracing::warn!(node = %id, name = %name, timeout_s = state.config.nodes.heartbeat_timeout_s, "node is unreachable: no heartbeat");
        // A failed write is in the run log (append_system); liveness goes on.
        let _ = crate::audit::events::node_state_event(state, &id.to_string(), &name, "node.unreachable").await;
    }
    Ok(())
}
