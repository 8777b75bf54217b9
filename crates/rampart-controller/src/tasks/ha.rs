//! HA recovery (spec 14.1-3), leader only: lost nodes' protected instances restart elsewhere
//! once their node has fenced itself (see [`crate::app::ha`]).

use rampart_common::error::ErrorChain;

use crate::state::AppState;

pub async fn pass(state: AppState) -> Result<(), String> {
    // Like liveness: agents that kept running through a failover get a heartbeat timeout to
    // report to the new leader before anything is judged lost.
    let grace = std::time::Duration::from_secs(state.config.nodes.heartbeat_timeout_s);
    if state.tasks.leader_for() < grace {
        return Ok(());
    }
    crate::app::ha::recover(&state)
        .await
        .map_err(|e| format!("ha recovery: {}", ErrorChain(&e)))
}
