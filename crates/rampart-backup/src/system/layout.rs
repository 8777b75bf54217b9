//! Which files of a controller's data directory a system backup holds. Everything is taken
//! unless it is listed here as rebuilt, copied another way or not state: a file a later
//! feature adds to the data directory is backed up without anyone remembering to add it.
//!
//! The data directory of `rampart up` (see `docs/operations/backup-restore.md`):
//! `ca.pem`, `tenant-ca.pem`, `project-ca/` (certificates); `tls/` (CA keys or their HSM
//! handles, server certificate and key, credential key, project CA keys); `hsm/` (the embedded
//! SoftHSM2 token and its PINs); `audit/` (checkpoint signing key, forwarding queue);
//! `agent/` (the local agent's node certificate and key, and under it its volumes, image cache
//! and network state); `images/` (the image store); the bootstrap one-time passwords;
//! `rampart.db` (taken through the database, not as a file); `logs/`, `blackbox/`.

use std::path::{Component, Path};

/// Why a file is left out, or `None` when it is backed up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// The SQLite file and its journals: the database is copied through SQLite itself.
    Database,
    /// Run logs and black-box dumps: diagnostics, not state (the dumps are in the audit trail).
    Diagnostics,
    /// Rewritten at every start from the data directory's own path.
    Regenerated,
    /// Backups and their work files.
    Backup,
    /// Tenant content (the image store; the local agent's volumes and image cache) and the
    /// local agent's runtime state, which it rebuilds from the desired state: tenant data has
    /// its own backups, and would make this archive as large as the cloud.
    TenantData,
}

/// Names of the work directories of a backup being made, inside the data directory.
pub const STAGING_PREFIX: &str = ".system-backup-";
/// Default directory of the periodic backups, inside the data directory.
pub const DEFAULT_BACKUP_DIR: &str = "system-backups";

/// The decision for one path relative to the data directory. `database` is the SQLite file's
/// path relative to the data directory when it lies inside it.
pub fn classify(rel: &Path, database: Option<&Path>, backup_dir: Option<&Path>) -> Option<Skip> {
    let first = match rel.components().next() {
        Some(Component::Normal(c)) => c.to_str().unwrap_or(""),
        _ => "",
    };
    if let Some(db) = database {
        let name = rel.as_os_str().to_string_lossy();
        let db = db.as_os_str().to_string_lossy();
        if name == db || ["-wal", "-shm", "-journal"].iter().any(|s| name == format!("{db}{s}")) {
            return Some(Skip::Database);
        }
    }
    if backup_dir.is_some_and(|d| rel.starts_with(d))
        || first.starts_with(STAGING_PREFIX)
        || first == DEFAULT_BACKUP_DIR
    {
        return Some(Skip::Backup);
    }
    match first {
        "logs" | "blackbox" => return Some(Skip::Diagnostics),
        "images" => return Some(Skip::TenantData),
        // The local agent's identity (node key and certificate, CA, node.json) is kept, so it
        // reconnects without joining again; its subdirectories are not.
        "agent" if rel.components().count() > 2 => return Some(Skip::TenantData),
        _ => {}
    }
    if rel == Path::new("hsm/softhsm2.conf") {
        return Some(Skip::Regenerated);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The files of a real `rampart up` data directory (embedded HSM, local agent, a project
    /// CA) and the decision for each.
    #[test]
    fn spec_14_2_1_data_dir_selection() {
        let paths = [
            "agent/ca.pem",
            "agent/node-key.pem",
            "agent/node.json",
            "agent/node.pem",
            "agent/volumes/3c2e.qcow2",
            "agent/images/9a1f",
            "agent/net/leases",
            "audit/checkpoint.key",
            "audit/forward-queue/000001.log",
            "blackbox/dump-1.json",
            "bootstrap-admin-password",
            "bootstrap-security-password",
            "ca.pem",
            "hsm/so.pin",
            "hsm/softhsm2.conf",
            "hsm/tokens/3f1b/token.object",
            "hsm/tokens/3f1b/token.lock",
            "hsm/user.pin",
            "images/5b7d.img",
            "logs/rampart.log.2026-12-07",
            "project-ca/0d6c.pem",
            "rampart.db",
            "rampart.db-shm",
            "rampart.db-wal",
            "rampart.dbx",
            "system-backups/rampart-system-20261207T000000Z.rsbk",
            ".system-backup-1234/rampart.db",
            "tenant-ca.pem",
            "tls/ca-key.hsm",
            "tls/credential-key",
            "tls/project-ca/0d6c-key.pem",
            "tls/server-key.pem",
            "tls/server.pem",
        ];
        let out: String = paths
            .iter()
            .map(|p| {
                let d = classify(Path::new(p), Some(Path::new("rampart.db")), None);
                format!("{p:<56} {}\n", d.map_or("backed up".to_string(), |s| format!("{s:?}")))
            })
            .collect();
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/system_backup_layout.txt");
        rampart_common::testing::golden(&path, &out);
    }

    #[test]
    fn spec_14_2_2_configured_backup_dir_inside_the_data_dir_is_skipped() {
        let dir = Path::new("nightly");
        assert_eq!(
            classify(Path::new("nightly/a.rsbk"), None, Some(dir)),
            Some(Skip::Backup)
        );
        assert_eq!(classify(Path::new("nightlyx"), None, Some(dir)), None);
    }
}
