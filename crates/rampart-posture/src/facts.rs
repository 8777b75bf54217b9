//! Observed host facts, gathered from a root directory (`/` or a fixture tree). Everything
//! here reads; the decisions are in `eval.rs`, which is pure.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::catalogue::{Catalogue, Rule};
use crate::paths::{host_path, is_live_root, under};
use crate::{settings, sshd, sysctl};

/// `(line index, key, value)` of each assignment of a settings file.
pub type Assignments = Vec<(usize, String, String)>;

#[derive(Debug, Clone, Default)]
pub struct HostFacts {
    /// The running host itself (live sources were read), not a fixture tree.
    pub live: bool,
    /// `None`: no sshd configuration (sshd is not installed).
    pub sshd: Option<SshdFacts>,
    pub sysctl: BTreeMap<String, SysctlFact>,
    /// File (host path) → its assignments; `None` when the file is absent.
    pub settings: BTreeMap<String, Option<Assignments>>,
    /// `None` when /etc/shadow cannot be read.
    pub empty_password_accounts: Option<Vec<String>>,
    pub extra_uid0: Option<Vec<String>>,
    /// `None` when /proc/net of the root is not there.
    pub listeners: Option<Vec<Listener>>,
    pub files: Option<FileScan>,
    pub private_dirs: Vec<PrivateDir>,
    /// `None` off the live host (a fixture has no processes).
    pub processes: Option<Vec<Process>>,
    /// Where host logs are forwarded (configuration lines); empty when nowhere.
    pub log_forwarding: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct SshdFacts {
    /// `sshd -T` or the files.
    pub source: &'static str,
    pub values: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default)]
pub struct SysctlFact {
    pub runtime: Option<String>,
    /// Value and file.
    pub persisted: Option<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Listener {
    pub proto: &'static str,
    pub addr: IpAddr,
    pub port: u16,
}

#[derive(Debug, Clone, Default)]
pub struct FileScan {
    /// Host paths of world-writable files, and of world-writable directories without the sticky bit.
    pub world_writable: Vec<String>,
    /// Host paths of SUID or SGID regular files.
    pub suid_sgid: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct PrivateDir {
    pub dir: String,
    /// `None` when the directory does not exist.
    pub mode: Option<u32>,
    /// Key and secret files readable beyond their owner: (host path, mode).
    pub loose_files: Vec<(String, u32)>,
}

#[derive(Debug, Clone)]
pub struct Process {
    pub pid: u32,
    pub name: String,
    pub euid: u32,
}

/// Top-level directories the permission scan walks (not /proc, /sys, /dev, /run, /tmp, nor
/// work trees elsewhere).
const SCAN_DIRS: [&str; 12] = [
    "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib64", "/opt", "/var", "/srv", "/boot", "/root", "/home",
];

/// Gathers what the catalogue's rules read.
pub fn gather(root: &Path, catalogue: &Catalogue) -> HostFacts {
    let live = is_live_root(root);
    let mut f = HostFacts {
        live,
        ..Default::default()
    };
    let entries = sysctl::persisted(root);
    let mut want_sshd = false;
    let mut want_files = false;
    for check in &catalogue.checks {
        match &check.rule {
            Rule::Sshd { .. } => want_sshd = true,
            Rule::Sysctl { key, .. } => {
                f.sysctl.insert(
                    key.clone(),
                    SysctlFact {
                        runtime: sysctl::runtime(root, key),
                        persisted: sysctl::persisted_value(&entries, key),
                    },
                );
            }
            Rule::Setting { file, syntax, .. } => {
                f.settings.entry(file_key(file)).or_insert_with(|| {
                    std::fs::read_to_string(under(root, file))
                        .ok()
                        .map(|t| settings::parse(*syntax, &t))
                });
            }
            Rule::EmptyPasswords => f.empty_password_accounts = empty_passwords(root),
            Rule::ExtraUid0 => f.extra_uid0 = extra_uid0(root),
            Rule::Listening { .. } => f.listeners = listeners(root),
            Rule::WorldWritable | Rule::SuidBaseline { .. } => want_files = true,
            Rule::RampartPrivate { dirs } => f.private_dirs = dirs.iter().map(|d| private_dir(root, d)).collect(),
            Rule::RootServices { .. } => f.processes = live.then(processes),
            Rule::RemoteLogging => f.log_forwarding = log_forwarding(root),
        }
    }
    if want_sshd {
        f.sshd = sshd_facts(root, live);
    }
    if want_files {
        f.files = Some(scan_files(root));
    }
    f
}

/// Settings files are keyed by host path.
pub fn file_key(file: &str) -> String {
    format!("/{}", file.trim_start_matches('/'))
}

fn sshd_facts(root: &Path, live: bool) -> Option<SshdFacts> {
    if live && let Some(values) = sshd::live_effective() {
        return Some(SshdFacts {
            source: "sshd -T",
            values,
        });
    }
    let directives = sshd::read_directives(root)?;
    Some(SshdFacts {
        source: "sshd_config",
        values: sshd::effective(&directives),
    })
}

fn empty_passwords(root: &Path) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(under(root, "/etc/shadow")).ok()?;
    Some(
        text.lines()
            .filter_map(|l| {
                let mut it = l.split(':');
                let (user, pw) = (it.next()?, it.next()?);
                pw.is_empty().then(|| user.to_string())
            })
            .collect(),
    )
}

fn extra_uid0(root: &Path) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(under(root, "/etc/passwd")).ok()?;
    Some(
        text.lines()
            .filter_map(|l| {
                let fields: Vec<&str> = l.split(':').collect();
                (fields.len() >= 3 && fields[2] == "0" && fields[0] != "root").then(|| fields[0].to_string())
            })
            .collect(),
    )
}

/// Listening sockets of `/proc/net/{tcp,tcp6,udp,udp6}` under the root.
fn listeners(root: &Path) -> Option<Vec<Listener>> {
    let mut any = false;
    let mut out = BTreeSet::new();
    for (file, proto, v6) in [
        ("tcp", "tcp", false),
        ("tcp6", "tcp", true),
        ("udp", "udp", false),
        ("udp6", "udp", true),
    ] {
        let Ok(text) = std::fs::read_to_string(under(root, &format!("/proc/net/{file}"))) else {
            continue;
        };
        any = true;
        out.extend(parse_proc_net(&text, proto, v6));
    }
    any.then(|| out.into_iter().collect())
}

/// TCP sockets in LISTEN (0A) and unconnected UDP sockets (07) of one /proc/net table.
pub fn parse_proc_net(text: &str, proto: &'static str, v6: bool) -> Vec<Listener> {
    let listen_state = if proto == "tcp" { "0A" } else { "07" };
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            if cols.len() < 4 || cols[3] != listen_state {
                return None;
            }
            let (addr, port) = cols[1].split_once(':')?;
            let port = u16::from_str_radix(port, 16).ok()?;
            let addr = if v6 { parse_v6(addr)? } else { parse_v4(addr)? };
            Some(Listener { proto, addr, port })
        })
        .collect()
}

/// /proc prints the address as host-order (little-endian here) 32-bit words.
fn parse_v4(hex: &str) -> Option<IpAddr> {
    let n = u32::from_str_radix(hex, 16).ok()?;
    Some(IpAddr::V4(Ipv4Addr::from(n.swap_bytes())))
}

fn parse_v6(hex: &str) -> Option<IpAddr> {
    if hex.len() != 32 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for w in 0..4 {
        let word = u32::from_str_radix(&hex[w * 8..w * 8 + 8], 16).ok()?;
        bytes[w * 4..w * 4 + 4].copy_from_slice(&word.swap_bytes().to_be_bytes());
    }
    Some(IpAddr::V6(Ipv6Addr::from(bytes)))
}

fn scan_files(root: &Path) -> FileScan {
    let mut scan = FileScan::default();
    let live = is_live_root(root);
    let tops: Vec<std::path::PathBuf> = if live {
        SCAN_DIRS.iter().map(|d| under(root, d)).collect()
    } else {
        // A fixture tree is small: all of it, but never its pseudo-filesystems.
        std::fs::read_dir(root)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| !p.file_name().is_some_and(|n| n == "proc" || n == "sys" || n == "dev"))
                    .collect()
            })
            .unwrap_or_default()
    };
    for top in tops {
        // Symlinked top directories (/bin → usr/bin) are walked through their target.
        if std::fs::symlink_metadata(&top).is_ok_and(|m| m.file_type().is_symlink()) {
            continue;
        }
        let mut it = walkdir::WalkDir::new(&top).same_file_system(true).into_iter();
        while let Some(entry) = it.next() {
            let Ok(entry) = entry else { continue };
            let Ok(md) = entry.metadata() else { continue };
            let mode = md.permissions().mode();
            let ft = entry.file_type();
            if ft.is_dir() {
                // Sticky world-writable directories are the shared temporary directories:
                // what users leave there is theirs.
                if mode & 0o1002 == 0o1002 {
                    it.skip_current_dir();
                } else if mode & 0o002 != 0 {
                    scan.world_writable.push(host_path(root, entry.path()));
                }
            } else if ft.is_file() {
                if mode & 0o002 != 0 {
                    scan.world_writable.push(host_path(root, entry.path()));
                }
                if mode & 0o6000 != 0 {
                    scan.suid_sgid.push(host_path(root, entry.path()));
                }
            }
        }
    }
    scan.world_writable.sort();
    scan.suid_sgid.sort();
    scan
}

/// Names of key and secret files in Rampart's data directories.
pub fn is_secret_file(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.ends_with(".key")
        || n.ends_with("-key.pem")
        || n.ends_with("_key.pem")
        || n.ends_with(".p12")
        || n.ends_with(".pin")
        || n.contains("password")
        || n.contains("secret")
        || n.contains("token")
}

fn private_dir(root: &Path, dir: &str) -> PrivateDir {
    let path = under(root, dir);
    let mode = std::fs::symlink_metadata(&path)
        .ok()
        .filter(|m| m.is_dir())
        .map(|m| m.permissions().mode() & 0o7777);
    let mut loose_files = Vec::new();
    if mode.is_some() {
        for entry in walkdir::WalkDir::new(&path)
            .max_depth(4)
            .same_file_system(true)
            .into_iter()
            .filter_map(|e| e.ok())
        {
            if !entry.file_type().is_file() || !is_secret_file(&entry.file_name().to_string_lossy()) {
                continue;
            }
            if let Ok(md) = entry.metadata() {
                let m = md.mode() & 0o7777;
                if m & 0o077 != 0 {
                    loose_files.push((host_path(root, entry.path()), m));
                }
            }
        }
    }
    loose_files.sort();
    PrivateDir {
        dir: dir.to_string(),
        mode,
        loose_files,
    }
}

fn processes() -> Vec<Process> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else { return out };
    for e in rd.filter_map(|e| e.ok()) {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let mut name = None;
        let mut euid = None;
        for l in status.lines() {
            if let Some(v) = l.strip_prefix("Name:") {
                name = Some(v.trim().to_string());
            } else if let Some(v) = l.strip_prefix("Uid:") {
                euid = v.split_whitespace().nth(1).and_then(|u| u.parse().ok());
            }
        }
        if let (Some(name), Some(euid)) = (name, euid) {
            out.push(Process { pid, name, euid });
        }
    }
    out.sort_by_key(|p| p.pid);
    out
}

/// rsyslog forwarding actions (`@host`, `@@host`, `omfwd`, `omrelp`) and systemd-journal-upload.
fn log_forwarding(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut files = vec!["/etc/rsyslog.conf".to_string()];
    files.extend(crate::paths::expand(root, "/etc/rsyslog.d/*.conf"));
    for f in files {
        let Ok(text) = std::fs::read_to_string(under(root, &f)) else {
            continue;
        };
        for l in text.lines() {
            let t = l.trim();
            if t.starts_with('#') || t.is_empty() {
                continue;
            }
            let classic = t.split_whitespace().nth(1).is_some_and(|a| a.starts_with('@'));
            if classic || t.contains("omfwd") || t.contains("omrelp") {
                out.push(format!("{f}: {t}"));
            }
        }
    }
    if let Ok(text) = std::fs::read_to_string(under(root, "/etc/systemd/journal-upload.conf"))
        && let Some(url) = text
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("URL=") && l.len() > 4)
    {
        out.push(format!("/etc/systemd/journal-upload.conf: {url}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_9_1_1a_proc_net_tables_decode() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1\n\
   1: 00000000:0017 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1\n\
   2: 0100007F:A1B2 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 3 1\n";
        let l = parse_proc_net(tcp, "tcp", false);
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].addr, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(l[0].port, 8080);
        assert_eq!(l[1].addr, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert_eq!(l[1].port, 23);
        let tcp6 = "hdr\n   0: 00000000000000000000000001000000:0016 00000000000000000000000000000000:0000 0A 0\n";
        let l6 = parse_proc_net(tcp6, "tcp", true);
        assert_eq!(l6[0].addr, IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(l6[0].port, 22);
    }

    #[test]
    fn secret_file_names() {
        assert!(is_secret_file("ca.key"));
        assert!(is_secret_file("bootstrap-admin-password"));
        assert!(is_secret_file("node-key.pem"));
        assert!(!is_secret_file("ca.pem"));
    }
}
