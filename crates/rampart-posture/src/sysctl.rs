//! Kernel parameters: the running value (`/proc/sys`, which is the root network namespace
//! when read by a process in it) and the persisted value, in the order `sysctl --system`
//! and systemd-sysctl apply the files (the last assignment wins).

use std::collections::BTreeMap;
use std::path::Path;

use crate::paths::under;

pub const DROP_IN: &str = "/etc/sysctl.d/60-rampart.conf";

/// Directories of sysctl.d fragments, highest priority first: a file name in an earlier
/// directory hides the same name in later ones.
const DIRS: [&str; 5] = [
    "/etc/sysctl.d",
    "/run/sysctl.d",
    "/usr/local/lib/sysctl.d",
    "/usr/lib/sysctl.d",
    "/lib/sysctl.d",
];
/// Read after the fragments by procps' `sysctl --system`.
const LEGACY: &str = "/etc/sysctl.conf";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Host path of the file.
    pub file: String,
    pub line: usize,
    pub key: String,
    pub value: String,
}

/// `net/ipv4/ip_forward` and `net.ipv4.ip_forward` are the same key.
pub fn normalize_key(k: &str) -> String {
    k.trim().trim_start_matches('-').replace('/', ".")
}

/// The running value of `key` under `root` (`None` when the kernel has no such parameter or
/// the fixture does not model it).
pub fn runtime(root: &Path, key: &str) -> Option<String> {
    std::fs::read_to_string(runtime_path(root, key))
        .ok()
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
}

pub fn runtime_path(root: &Path, key: &str) -> std::path::PathBuf {
    under(root, &format!("/proc/sys/{}", key.replace('.', "/")))
}

/// The configuration files in application order (host paths).
pub fn files(root: &Path) -> Vec<String> {
    let mut by_name: BTreeMap<String, String> = BTreeMap::new();
    for dir in DIRS.iter().rev() {
        let Ok(entries) = std::fs::read_dir(under(root, dir)) else {
            continue;
        };
        for e in entries.filter_map(|e| e.ok()) {
            let Ok(name) = e.file_name().into_string() else {
                continue;
            };
            if name.ends_with(".conf") && (e.path().is_file()) {
                by_name.insert(name.clone(), format!("{dir}/{name}"));
            }
        }
    }
    let mut out: Vec<String> = by_name.into_values().collect();
    // Debian links /etc/sysctl.d/99-sysctl.conf to ../sysctl.conf: read it once, last.
    out.retain(|f| {
        !std::fs::read_link(under(root, f)).is_ok_and(|t| t.file_name().is_some_and(|n| n == "sysctl.conf"))
    });
    if under(root, LEGACY).is_file() {
        out.push(LEGACY.to_string());
    }
    out
}

pub fn parse(file: &str, text: &str) -> Vec<Entry> {
    text.lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let t = l.trim();
            if t.is_empty() || t.starts_with('#') || t.starts_with(';') {
                return None;
            }
            let (k, v) = t.split_once('=')?;
            Some(Entry {
                file: file.to_string(),
                line: i,
                key: normalize_key(k),
                value: v.trim().to_string(),
            })
        })
        .collect()
}

/// Every persisted assignment, in application order.
pub fn persisted(root: &Path) -> Vec<Entry> {
    files(root)
        .into_iter()
        .flat_map(|f| {
            let text = std::fs::read_to_string(under(root, &f)).unwrap_or_default();
            parse(&f, &text)
        })
        .collect()
}

/// The value `key` gets at boot and the file that sets it.
pub fn persisted_value(entries: &[Entry], key: &str) -> Option<(String, String)> {
    entries
        .iter()
        .rev()
        .find(|e| e.key == key)
        .map(|e| (e.value.clone(), e.file.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_9_1_1c_the_last_file_in_order_wins_and_sysctl_conf_is_last() {
        let d = tempfile::tempdir().unwrap();
        let w = |p: &str, t: &str| {
            let path = under(d.path(), p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, t).unwrap();
        };
        w(
            "/usr/lib/sysctl.d/10-a.conf",
            "net.ipv4.ip_forward = 1\nfs.protected_fifos=1\n",
        );
        w("/usr/lib/sysctl.d/50-b.conf", "net/ipv4/ip_forward=0\n");
        w("/etc/sysctl.d/50-b.conf", "# hides the one in /usr/lib\n");
        w("/etc/sysctl.d/90-c.conf", "-kernel.dmesg_restrict = 0\n");
        w("/etc/sysctl.conf", "kernel.dmesg_restrict=1\n");
        let e = persisted(d.path());
        assert_eq!(persisted_value(&e, "net.ipv4.ip_forward").unwrap().0, "1");
        assert_eq!(
            persisted_value(&e, "kernel.dmesg_restrict").unwrap(),
            ("1".to_string(), "/etc/sysctl.conf".to_string())
        );
        assert!(persisted_value(&e, "kernel.kptr_restrict").is_none());
    }
}
