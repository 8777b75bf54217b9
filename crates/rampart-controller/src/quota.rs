//! Enforcing per-project quotas where resources are created: one call per creating use case,
//! inside its transaction, before the insert.

use rampart_common::Error;
use rampart_common::quota::{self, Resource};
use uuid::Uuid;

use crate::state::AppState;

/// 409 `quota_exceeded` unless `project` may hold `adding` more of `resource`.
pub async fn enforce(
    state: &AppState,
    conn: &mut rampart_db::Conn,
    project: Uuid,
    resource: Resource,
    adding: u64,
) -> Result<(), Error> {
    if adding == 0 {
        return Ok(());
    }
    let limit = rampart_db::quotas::overrides(conn, project)
        .await?
        .effective(&state.config.quotas)
        .limit(resource);
    let used = rampart_db::quotas::usage(conn, project, resource).await?;
    quota::check(resource, used, adding, limit).inspect_err(|_| {
        tracing::info!(%project, resource = resource.as_str(), used, limit, "quota exceeded");
    })
}
