//! The manifest, first entry of every system backup archive: what is inside and how to check
//! it (sizes and SHA-256 of every other entry), which Rampart and which database schema made it.

use serde::{Deserialize, Serialize};

pub const MANIFEST_PATH: &str = "manifest.json";
pub const MANIFEST_FORMAT: u32 = 1;
/// Archive prefix of the data directory's files.
pub const DATA_PREFIX: &str = "data/";
pub const SQLITE_PATH: &str = "database/rampart.db";
pub const PGDUMP_PATH: &str = "database/rampart.pgdump";
pub const CONFIG_PATH: &str = "config/rampart.toml";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DbBackend {
    /// A consistent copy of the SQLite file (`VACUUM INTO`).
    Sqlite,
    /// `pg_dump --format=custom` of the configured database.
    Postgres,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseEntry {
    pub backend: DbBackend,
    /// Highest applied migration.
    pub schema_version: i64,
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub path: String,
    pub size: u64,
    pub sha256: String,
    /// Permission bits to restore.
    pub mode: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub rampart_version: String,
    /// RFC 3339.
    pub created_at: String,
    pub source_data_dir: String,
    pub database: DatabaseEntry,
    /// Every entry after the manifest, in archive order.
    pub files: Vec<FileEntry>,
}

impl Manifest {
    pub fn entry(&self, path: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.path == path)
    }

    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Refuses a manifest whose paths could leave the restore directory, repeat, or that does
    /// not hold the database it names.
    pub fn check(&self) -> Result<(), String> {
        if self.format != MANIFEST_FORMAT {
            return Err(format!("manifest format {} is not supported", self.format));
        }
        let mut seen = std::collections::BTreeSet::new();
        for f in &self.files {
            if !safe_path(&f.path) {
                return Err(format!("unsafe path {:?}", f.path));
            }
            if !seen.insert(f.path.as_str()) {
                return Err(format!("{:?} is listed twice", f.path));
            }
            if f.sha256.len() != 64 || !f.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("{:?} has no valid SHA-256", f.path));
            }
            let known =
                f.path.starts_with(DATA_PREFIX) || [SQLITE_PATH, PGDUMP_PATH, CONFIG_PATH].contains(&f.path.as_str());
            if !known {
                return Err(format!("{:?} is not a path a system backup holds", f.path));
            }
        }
        if self.entry(&self.database.path).is_none() {
            return Err(format!("the database {:?} is not in the archive", self.database.path));
        }
        Ok(())
    }
}

/// Relative, `/`-separated, no `.`/`..`/empty components, no NUL.
pub fn safe_path(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('/')
        && !p.contains('\0')
        && !p.contains('\\')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(paths: &[&str]) -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            rampart_version: "0.1.0".into(),
            created_at: "2026-12-07T00:00:00Z".into(),
            source_data_dir: "/var/lib/rampart".into(),
            database: DatabaseEntry {
                backend: DbBackend::Sqlite,
                schema_version: 16,
                path: SQLITE_PATH.into(),
            },
            files: paths
                .iter()
                .map(|p| FileEntry {
                    path: (*p).into(),
                    size: 1,
                    sha256: "ab".repeat(32),
                    mode: 0o600,
                })
                .collect(),
        }
    }

    #[test]
    fn spec_14_2_1_manifest_refuses_escaping_repeated_or_foreign_paths() {
        assert!(manifest(&[SQLITE_PATH, "data/ca.pem", CONFIG_PATH]).check().is_ok());
        for bad in ["data/../etc/passwd", "/etc/passwd", "data//x", "data/./x", "other/x"] {
            assert!(manifest(&[SQLITE_PATH, bad]).check().is_err(), "{bad}");
        }
        assert!(manifest(&[SQLITE_PATH, "data/a", "data/a"]).check().is_err());
        assert!(manifest(&["data/a"]).check().is_err(), "the database must be inside");
    }
}
