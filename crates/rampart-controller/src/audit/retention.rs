//! Leader work of the audit trail: checkpoints when due and the retention purge of records,
//! run logs and black-box dumps.

use std::path::Path;
use std::time::Duration;

use rampart_audit::record::{Actor, AuditResult, NewRecord, Target};
use rampart_common::Error;
use rampart_common::error::ErrorChain;

use super::settings::load_forwarding;
use crate::state::AppState;

/// Seals a checkpoint when one is due (leader work, every second).
pub async fn checkpoint(state: &AppState) -> Result<(), String> {
    state
        .audit
        .log
        .tick()
        .await
        .map(drop)
        .map_err(|e| format!("audit checkpoint failed: {}", ErrorChain(&e)))
}

/// The retention purge: expired operation and security records (keeping the chain
/// verifiable with a boundary checkpoint, never dropping what the forwarder has not taken),
/// run-log files and black-box dumps older than their retention.
pub async fn purge(state: &AppState) -> Result<u64, Error> {
    let policy = {
        let mut conn = state.db.conn().await?;
        rampart_db::audit::retention(&mut conn).await?
    };
    let forwarding = load_forwarding(&state.db).await?;
    let max_seq = if forwarding.enabled {
        state.audit.queue.last_meta()[0]
    } else {
        u64::MAX
    };
    let removed = match state.audit.log.purge_expired_up_to(&policy, max_seq).await {
        Ok(Some((cp, n))) => {
            tracing::info!(
                removed = n,
                boundary = cp.body.tree_size,
                "audit records past retention purged"
            );
            state
                .audit
                .append_system(
                    NewRecord::new(
                        state.now(),
                        Actor::system("retention"),
                        "audit.records.purge",
                        Target::new("audit_trail", None, None),
                        AuditResult::success(200),
                    )
                    .detail("removed", n)
                    .detail("boundary_checkpoint", cp.body.seq)
                    .detail("first_kept_seq", cp.body.tree_size + 1),
                )
                .await?;
            n
        }
        Ok(None) => 0,
        Err(e) => {
            tracing::error!(error = %ErrorChain(&e), "audit retention purge refused");
            return Err(e.into_public());
        }
    };
    let now: std::time::SystemTime = state.now().into();
    let log_dir = state.config.log_dir(&state.data_dir);
    purge_files(&log_dir, "rampart.", policy.run_days, now, Some("rampart.log"));
    purge_files(&state.data_dir.join("blackbox"), "", policy.blackbox_days, now, None);
    Ok(removed)
}

/// Deletes files in `dir` whose name starts with `prefix` and that were last written more
/// than `days` ago (never `keep`, the file being written).
fn purge_files(dir: &Path, prefix: &str, days: u32, now: std::time::SystemTime, keep: Option<&str>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let limit = Duration::from_secs(u64::from(days) * 86_400);
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !name.starts_with(prefix) || Some(name.as_str()) == keep {
            continue;
        }
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age > limit);
        if old {
            match std::fs::remove_file(e.path()) {
                Ok(()) => tracing::info!(file = %e.path().display(), days, "removed a file past its retention"),
                Err(err) => tracing::warn!(file = %e.path().display(), error = %err, "cannot remove an expired file"),
            }
        }
    }
}
