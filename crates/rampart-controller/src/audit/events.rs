//! Host events in the trail.

use rampart_audit::record::{Actor, AuditResult, NewRecord, Target};
use rampart_common::Error;

use crate::state::AppState;

/// A node's state change seen by the controller (joined and ready, unreachable, back): host
/// events belong in the trail beside the API calls that caused them.
pub async fn node_state_event(state: &AppState, node_id: &str, name: &str, operation: &str) -> Result<(), Error> {
    let rec = NewRecord::new(
        state.now(),
        Actor::system("node-liveness"),
        operation,
        Target::new("node", Some(node_id.to_string()), None),
        AuditResult::success(200),
    )
    .detail("name", name);
    state.audit.append_system(rec).await
}
