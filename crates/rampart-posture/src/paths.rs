//! Host paths (`/etc/ssh/sshd_config`) and where they are under the inspected root.

use std::path::{Path, PathBuf};

/// `host` (absolute, as the host sees it) under `root`.
pub fn under(root: &Path, host: &str) -> PathBuf {
    root.join(host.trim_start_matches('/'))
}

/// The host path of `path` (a path under `root`), for evidence that does not depend on where
/// a fixture root was copied.
pub fn host_path(root: &Path, path: &Path) -> String {
    match path.strip_prefix(root) {
        Ok(rel) => format!("/{}", rel.display()),
        Err(_) => path.display().to_string(),
    }
}

/// Whether `root` is the running host's own root (then the live sources apply: `sshd -T`,
/// `/proc/*/status`, `sshd -t` and reloads).
pub fn is_live_root(root: &Path) -> bool {
    root.canonicalize().is_ok_and(|p| p == Path::new("/"))
}

/// `*` and `?` in one path component, as glob(3) does for Include lines.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

/// The files a host glob pattern (wildcards in the last component only) names under `root`,
/// sorted like glob(3); as host paths.
pub fn expand(root: &Path, pattern: &str) -> Vec<String> {
    let (dir, file) = match pattern.rsplit_once('/') {
        Some((d, f)) => (if d.is_empty() { "/" } else { d }, f),
        None => return Vec::new(),
    };
    if dir.contains(['*', '?', '[']) {
        tracing::warn!(
            pattern,
            "wildcards in a directory of an include pattern are not followed"
        );
        return Vec::new();
    }
    if !file.contains(['*', '?']) {
        return if under(root, pattern).is_file() {
            vec![pattern.to_string()]
        } else {
            Vec::new()
        };
    }
    let Ok(entries) = std::fs::read_dir(under(root, dir)) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| glob_match(file, n))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|n| format!("{}/{n}", dir.trim_end_matches('/')))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_like_fnmatch() {
        assert!(glob_match("*.conf", "50-rampart.conf"));
        assert!(!glob_match("*.conf", "50-rampart.conf.rampart-bak.1"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("*", ""));
    }

    #[test]
    fn host_paths_drop_the_root() {
        assert_eq!(host_path(Path::new("/tmp/r"), Path::new("/tmp/r/etc/x")), "/etc/x");
        assert_eq!(under(Path::new("/tmp/r"), "/etc/x"), Path::new("/tmp/r/etc/x"));
    }
}
