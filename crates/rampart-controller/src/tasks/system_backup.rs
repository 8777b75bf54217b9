//! The periodic backup of the control plane (spec 14.2-1, 14.2-2), on the leader: when the
//! newest backup in `backup.system.dir` is older than `interval_s`, a consistent copy of the
//! database (SQLite `VACUUM INTO`, PostgreSQL `pg_dump`) and the data directory's files go into
//! one encrypted archive (`rampart_backup::system`), written atomically, copied to `copy_to`,
//! and both directories pruned to `keep`. Every run is an audit record
//! (`system.backup.create`); a failed run marks the task failing, which `GET /v1/health`
//! reports as degraded with the reason.

use std::path::{Path, PathBuf};

use rampart_audit::record::{Actor, AuditResult, NewRecord, Target};
use rampart_backup::system::{self as sysbak, DatabaseCopy, DbBackend};
use rampart_common::config::SystemBackupConfig;
use rampart_common::error::ErrorChain;
use time::OffsetDateTime;

use crate::state::AppState;

pub const TASK: &str = "system_backup";

/// Whether a backup is due: none yet, or the newest is `interval_s` old (pure).
pub fn due(newest: Option<i64>, now: OffsetDateTime, interval_s: u64) -> bool {
    newest.is_none_or(|t| now.unix_timestamp() - t >= interval_s as i64)
}

/// How often the task looks whether a backup is due.
pub fn period_s(cfg: &SystemBackupConfig) -> u64 {
    cfg.interval_s.min(60)
}

pub fn backup_dir(cfg: &SystemBackupConfig, data_dir: &Path) -> PathBuf {
    cfg.dir
        .clone()
        .unwrap_or_else(|| data_dir.join(sysbak::layout::DEFAULT_BACKUP_DIR))
}

struct Done {
    file: PathBuf,
    size: u64,
    files: usize,
    copy: Option<PathBuf>,
    pruned: usize,
}

pub async fn pass(state: AppState) -> Result<(), String> {
    let cfg = state.config.backup.system.clone();
    if cfg.passphrase_file.is_none() {
        return Ok(());
    }
    let dir = backup_dir(&cfg, &state.data_dir);
    let newest = match std::fs::metadata(&dir) {
        Ok(_) => sysbak::list(&dir)
            .map_err(|e| format!("system backup: {}", ErrorChain(&e)))?
            .last()
            .map(|l| l.created_at),
        Err(_) => None,
    };
    let now = state.now();
    if !due(newest, now, cfg.interval_s) {
        return Ok(());
    }
    let result = run(&state, &cfg, &dir, now).await;
    let (outcome, rec_target) = match &result {
        Ok(d) => (
            AuditResult::success(200),
            d.file.file_name().map(|n| n.to_string_lossy().to_string()),
        ),
        Err(_) => (AuditResult::failure(500, "system_backup_failed"), None),
    };
    let mut rec = NewRecord::new(
        now,
        Actor::system("system-backup"),
        "system.backup.create",
        Target::new("system_backup", rec_target, None),
        outcome,
    )
    .detail("dir", dir.display().to_string());
    if let Err(e) = &result {
        rec = rec.detail("error", e.clone());
    }
    if let Ok(d) = &result {
        rec = rec
            .detail("size_bytes", d.size)
            .detail("files", d.files)
            .detail("pruned", d.pruned);
        if let Some(c) = &d.copy {
            rec = rec.detail("copy", c.display().to_string());
        }
    }
    if let Err(e) = state.audit.append_system(rec).await {
        tracing::error!(error = %e, "cannot record the system backup in the audit trail");
    }
    match result {
        Ok(d) => {
            tracing::info!(file = %d.file.display(), size = d.size, pruned = d.pruned, "system backup written");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

async fn run(state: &AppState, cfg: &SystemBackupConfig, dir: &Path, now: OffsetDateTime) -> Result<Done, String> {
    let staging = state.data_dir.join(format!(
        "{}{}",
        sysbak::layout::STAGING_PREFIX,
        uuid::Uuid::new_v4().simple()
    ));
    rampart_common::fsutil::ensure_private_dir(&staging)
        .map_err(|e| format!("cannot create {}: {e}", staging.display()))?;
    let r = run_staged(state, cfg, dir, now, &staging).await;
    if let Err(e) = std::fs::remove_dir_all(&staging) {
        tracing::warn!(error = %e, dir = %staging.display(), "cannot remove the system backup's staging directory");
    }
    r
}

async fn run_staged(
    state: &AppState,
    cfg: &SystemBackupConfig,
    dir: &Path,
    now: OffsetDateTime,
    staging: &Path,
) -> Result<Done, String> {
    let url = state.config.database_url(&state.data_dir);
    // The database first, the files after: a key created in between is in the files without
    // the database knowing it, never the reverse.
    let database = match state.db.backend() {
        rampart_db::Backend::Sqlite => {
            let file = staging.join("rampart.db");
            let schema_version = state
                .db
                .sqlite_copy(&file)
                .await
                .map_err(|e| format!("database copy: {}", ErrorChain(&e)))?;
            DatabaseCopy {
                backend: DbBackend::Sqlite,
                file,
                schema_version,
            }
        }
        rampart_db::Backend::Postgres => {
            let file = staging.join("rampart.pgdump");
            let schema_version =
                rampart_db::snapshot::pg_dump(&url, state.config.database.password_file.as_deref(), &file)
                    .await
                    .map_err(|e| format!("database copy: {}", ErrorChain(&e)))?;
            DatabaseCopy {
                backend: DbBackend::Postgres,
                file,
                schema_version,
            }
        }
    };
    let data_dir = state.data_dir.clone();
    let sqlite_in_data_dir =
        rampart_db::snapshot::sqlite_file(&url).and_then(|p| p.strip_prefix(&data_dir).ok().map(Path::to_path_buf));
    let backup_dir_in_data_dir = dir.strip_prefix(&data_dir).ok().map(Path::to_path_buf);
    let config = toml::to_string(&state.config)
        .map_err(|e| format!("configuration: {e}"))?
        .into_bytes();
    let cfg = cfg.clone();
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || -> Result<Done, String> {
        let fail = |e: sysbak::SystemBackupError| format!("{}", ErrorChain(&e));
        let pass_file = cfg.passphrase_file.as_deref().expect("checked by the caller");
        let passphrase = sysbak::read_passphrase(pass_file, true).map_err(fail)?;
        rampart_common::fsutil::ensure_private_dir(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let out = dir.join(sysbak::file_name(now));
        let manifest = sysbak::create(sysbak::CreateOptions {
            data_dir: &data_dir,
            database,
            sqlite_in_data_dir,
            backup_dir_in_data_dir,
            config: Some(config),
            passphrase: &passphrase,
            kdf: sysbak::KdfParams::default(),
            out: &out,
            now,
        })
        .map_err(fail)?;
        let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
        let copy = match &cfg.copy_to {
            Some(remote) => {
                let c = sysbak::copy_to(&out, remote)
                    .map_err(|e| format!("copy to {}: {}", remote.display(), ErrorChain(&e)))?;
                Some(c)
            }
            None => None,
        };
        let mut pruned = sysbak::prune(&dir, cfg.keep).map_err(fail)?.len();
        if let Some(remote) = &cfg.copy_to {
            pruned += sysbak::prune(remote, cfg.keep).map_err(fail)?.len();
        }
        Ok(Done {
            file: out,
            size,
            files: manifest.files.len(),
            copy,
            pruned,
        })
    })
    .await
    .map_err(|e| format!("system backup task: {e}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_14_2_1_backup_is_due_after_the_interval_only() {
        let now = time::macros::datetime!(2026-12-07 12:00:00 UTC);
        let t = now.unix_timestamp();
        assert!(due(None, now, 21_600));
        assert!(!due(Some(t - 100), now, 21_600));
        assert!(due(Some(t - 21_600), now, 21_600));
        assert_eq!(period_s(&SystemBackupConfig::default()), 60);
        let fast = SystemBackupConfig {
            interval_s: 2,
            ..Default::default()
        };
        assert_eq!(period_s(&fast), 2);
    }
}
