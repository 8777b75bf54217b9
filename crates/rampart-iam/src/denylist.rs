//! Weak-password dictionaries (spec 13.1.2-3): the 10,000 most common passwords shipped with
//! Rampart, plus operator files (one password per line, `#` comments) that are re-read when
//! their modification time changes, so an update needs no restart.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

const SHIPPED: &str = include_str!("../data/common-passwords.txt");

fn shipped() -> &'static HashSet<&'static str> {
    static SET: OnceLock<HashSet<&'static str>> = OnceLock::new();
    SET.get_or_init(|| {
        SHIPPED
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect()
    })
}

#[derive(Default)]
pub struct DenyLists {
    files: Mutex<HashMap<PathBuf, (SystemTime, HashSet<String>)>>,
}

impl std::fmt::Debug for DenyLists {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DenyLists")
    }
}

/// Which list matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listed {
    Shipped,
    Operator(PathBuf),
}

impl DenyLists {
    /// Whether `password` (compared in lower case) is on the shipped list or one of `files`.
    /// Unreadable operator files are reported in the run log and skipped.
    pub fn find(&self, password: &str, files: &[String]) -> Option<Listed> {
        let lower = password.to_lowercase();
        if shipped().contains(lower.as_str()) {
            return Some(Listed::Shipped);
        }
        let mut cache = self.files.lock().expect("deny-list lock");
        for f in files {
            let path = PathBuf::from(f);
            let mtime = match std::fs::metadata(&path).and_then(|m| m.modified()) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot read a password deny-list file");
                    continue;
                }
            };
            let fresh = cache.get(&path).is_some_and(|(t, _)| *t == mtime);
            if !fresh {
                match std::fs::read_to_string(&path) {
                    Ok(text) => {
                        let set: HashSet<String> = text
                            .lines()
                            .map(|l| l.trim().to_lowercase())
                            .filter(|l| !l.is_empty() && !l.starts_with('#'))
                            .collect();
                        tracing::info!(path = %path.display(), entries = set.len(), "loaded a password deny-list");
                        cache.insert(path.clone(), (mtime, set));
                    }
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "cannot read a password deny-list file");
                        continue;
                    }
                }
            }
            if cache.get(&path).is_some_and(|(_, set)| set.contains(&lower)) {
                return Some(Listed::Operator(path));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_13_1_2_3_shipped_list_catches_common_passwords() {
        let d = DenyLists::default();
        assert_eq!(shipped().len(), 10_000);
        for p in ["password", "Password", "123456", "qwerty", "letmein", "iloveyou"] {
            assert_eq!(d.find(p, &[]), Some(Listed::Shipped), "{p}");
        }
        assert_eq!(d.find("correct horse battery staple", &[]), None);
    }

    #[test]
    fn spec_13_1_2_3_operator_list_reloads_without_restart() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("deny.txt");
        std::fs::write(&f, "# company words\nRampart-Rocks-2026\n").unwrap();
        let files = vec![f.to_string_lossy().to_string()];
        let d = DenyLists::default();
        assert_eq!(d.find("rampart-rocks-2026", &files), Some(Listed::Operator(f.clone())));
        assert_eq!(d.find("Acme-Corp-Winter", &files), None);
        // The operator edits the file: the next check sees it. (Bump the mtime explicitly:
        // some filesystems have one-second resolution.)
        std::fs::write(&f, "acme-corp-winter\n").unwrap();
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert_eq!(d.find("Acme-Corp-Winter", &files), Some(Listed::Operator(f.clone())));
        assert_eq!(d.find("rampart-rocks-2026", &files), None);
        // A missing file is skipped, not fatal.
        assert_eq!(d.find("x", &["/nonexistent/deny".into()]), None);
    }
}
