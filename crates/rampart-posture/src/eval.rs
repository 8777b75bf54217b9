//! Pure evaluation: observed facts → one result per check, with its evidence.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::catalogue::{Catalogue, Check, Expect, Rule, Severity};
use crate::facts::{HostFacts, file_key};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pass,
    Fail,
    NotApplicable,
}

/// One check's result, in the JSON shape of `rampart harden check --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    pub id: String,
    pub clause: String,
    pub title: String,
    pub severity: Severity,
    pub status: Status,
    pub evidence: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub checks: Vec<CheckResult>,
}

impl Report {
    pub fn failed(&self) -> impl Iterator<Item = &CheckResult> {
        self.checks.iter().filter(|c| c.status == Status::Fail)
    }
    pub fn all_pass(&self) -> bool {
        self.failed().next().is_none()
    }
}

/// Whether `value` satisfies `expect`; the reason when it does not.
pub fn meets(expect: &Expect, value: &str) -> Result<(), String> {
    let v = value.trim();
    if let Some(eq) = &expect.equals
        && !eq.iter().any(|e| e.eq_ignore_ascii_case(v))
    {
        return Err(format!("expected {}", eq.join(" or ")));
    }
    if expect.min.is_some() || expect.max.is_some() {
        let n: i64 = v.parse().map_err(|_| "not a number".to_string())?;
        if let Some(min) = expect.min
            && n < min
        {
            return Err(format!("expected at least {min}"));
        }
        if let Some(max) = expect.max
            && n > max
        {
            return Err(format!("expected at most {max}"));
        }
    }
    if let Some(mask) = &expect.mask_set {
        let want = u32::from_str_radix(mask, 8).map_err(|_| "bad mask in the catalogue".to_string())?;
        let have = u32::from_str_radix(v, 8).map_err(|_| "not an octal mask".to_string())?;
        if have & want != want {
            return Err(format!("expected a mask with at least {mask} set"));
        }
    }
    if let Some(forbid) = &expect.forbid {
        let bad: Vec<&str> = v
            .split(',')
            .map(str::trim)
            .filter(|a| forbid.iter().any(|f| a.to_ascii_lowercase().contains(f.as_str())))
            .collect();
        if !bad.is_empty() {
            return Err(format!("weak: {}", bad.join(",")));
        }
    }
    Ok(())
}

/// Every check of the catalogue against the facts.
pub fn evaluate(catalogue: &Catalogue, facts: &HostFacts) -> Report {
    Report {
        checks: catalogue.checks.iter().map(|c| evaluate_one(c, facts)).collect(),
    }
}

fn result(check: &Check, status: Status, evidence: String) -> CheckResult {
    CheckResult {
        id: check.id.clone(),
        clause: check.clause.clone(),
        title: check.title.clone(),
        severity: check.severity,
        status,
        evidence,
    }
}

fn list(items: &[String]) -> String {
    const SHOWN: usize = 20;
    let mut s = items.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if items.len() > SHOWN {
        s.push_str(&format!(" … ({} in all)", items.len()));
    }
    s
}

fn evaluate_one(check: &Check, f: &HostFacts) -> CheckResult {
    use Status::*;
    let (status, evidence) = match &check.rule {
        Rule::Sshd {
            key, default, expect, ..
        } => match &f.sshd {
            None => (NotApplicable, "sshd is not installed (no sshd_config)".to_string()),
            Some(s) => {
                let (raw, set) = match s.values.get(key) {
                    Some(v) => (v.clone(), true),
                    None => (default.clone(), false),
                };
                let value = if expect.forbid.is_some() {
                    crate::sshd::resolve_list(&raw, default).join(",")
                } else {
                    raw
                };
                let origin = if set { s.source } else { "OpenSSH default" };
                match meets(expect, &value) {
                    Ok(()) => (Pass, format!("{key} {value} ({origin})")),
                    Err(why) => (Fail, format!("{key} {value} ({origin}): {why}")),
                }
            }
        },
        Rule::Sysctl { key, expect, .. } => {
            let fact = f.sysctl.get(key).cloned().unwrap_or_default();
            let note = if key == "net.ipv4.ip_forward" {
                "; routing happens inside per-VPC namespaces, whose own ip_forward is separate"
            } else {
                ""
            };
            let runtime = fact.runtime.as_deref().map(|v| (v, meets(expect, v)));
            let persisted = fact.persisted.as_ref().map(|(v, file)| (v, file, meets(expect, v)));
            let mut parts = Vec::new();
            let mut fail = false;
            match &runtime {
                Some((v, Ok(()))) => parts.push(format!("{key} = {v}")),
                Some((v, Err(why))) => {
                    fail = true;
                    parts.push(format!("{key} = {v} ({why})"));
                }
                None => {}
            }
            match &persisted {
                Some((v, file, Ok(()))) => parts.push(format!("persisted {v} in {file}")),
                Some((v, file, Err(why))) => {
                    fail = true;
                    parts.push(format!("persisted {v} in {file} ({why}; applied at boot)"));
                }
                None => parts.push("not persisted".to_string()),
            }
            if runtime.is_none() && persisted.is_none() {
                (NotApplicable, format!("{key}: not present on this kernel"))
            } else {
                (if fail { Fail } else { Pass }, format!("{}{note}", parts.join("; ")))
            }
        }
        Rule::Setting {
            file,
            key,
            default,
            expect,
            ..
        } => match f.settings.get(&file_key(file)) {
            None | Some(None) => match meets(expect, default) {
                Ok(()) => (Pass, format!("{} absent: {key} defaults to {default}", file_key(file))),
                Err(why) => (
                    Fail,
                    format!("{} absent: {key} defaults to {default} ({why})", file_key(file)),
                ),
            },
            Some(Some(entries)) => {
                let (value, origin) = match entries.iter().rev().find(|(_, k, _)| k == key) {
                    Some((line, _, v)) => (v.clone(), format!("{}:{}", file_key(file), line + 1)),
                    None => (default.clone(), format!("default, unset in {}", file_key(file))),
                };
                match meets(expect, &value) {
                    Ok(()) => (Pass, format!("{key} {value} ({origin})")),
                    Err(why) => (Fail, format!("{key} {value} ({origin}): {why}")),
                }
            }
        },
        Rule::EmptyPasswords => match &f.empty_password_accounts {
            None => (NotApplicable, "/etc/shadow not readable".to_string()),
            Some(v) if v.is_empty() => (Pass, "every account has a password or is locked".to_string()),
            Some(v) => (Fail, format!("empty password: {}", list(v))),
        },
        Rule::ExtraUid0 => match &f.extra_uid0 {
            None => (NotApplicable, "/etc/passwd not readable".to_string()),
            Some(v) if v.is_empty() => (Pass, "only root has uid 0".to_string()),
            Some(v) => (Fail, format!("uid 0 besides root: {}", list(v))),
        },
        Rule::Listening { allow } => match &f.listeners {
            None => (NotApplicable, "no /proc/net tables under this root".to_string()),
            Some(ls) => {
                let exposed: Vec<String> = ls
                    .iter()
                    .filter(|l| !is_loopback(l.addr))
                    .map(|l| format!("{}/{}", l.proto, l.port))
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let unexpected: Vec<String> = exposed.iter().filter(|p| !allow.contains(p)).cloned().collect();
                if unexpected.is_empty() {
                    (
                        Pass,
                        if exposed.is_empty() {
                            "nothing listens beyond loopback".to_string()
                        } else {
                            format!("listening beyond loopback: {} (allowed)", list(&exposed))
                        },
                    )
                } else {
                    (Fail, format!("not on the allow-list: {}", list(&unexpected)))
                }
            }
        },
        Rule::WorldWritable => match &f.files {
            None => (NotApplicable, "file scan not run".to_string()),
            Some(s) if s.world_writable.is_empty() => (Pass, "none found".to_string()),
            Some(s) => (Fail, format!("world-writable: {}", list(&s.world_writable))),
        },
        Rule::SuidBaseline { allow } => match &f.files {
            None => (NotApplicable, "file scan not run".to_string()),
            Some(s) => {
                let extra: Vec<String> = s.suid_sgid.iter().filter(|p| !allow.contains(p)).cloned().collect();
                if extra.is_empty() {
                    (
                        Pass,
                        format!("{} SUID/SGID programs, all in the baseline", s.suid_sgid.len()),
                    )
                } else {
                    (Fail, format!("not in the baseline: {}", list(&extra)))
                }
            }
        },
        Rule::RampartPrivate { .. } => {
            let present: Vec<_> = f.private_dirs.iter().filter(|d| d.mode.is_some()).collect();
            if present.is_empty() {
                (NotApplicable, "no Rampart data directory on this host".to_string())
            } else {
                let mut bad = Vec::new();
                let mut good = Vec::new();
                for d in present {
                    let mode = d.mode.unwrap_or(0);
                    if mode & 0o077 != 0 {
                        bad.push(format!("{} is {mode:04o} (expected 0700)", d.dir));
                    } else {
                        good.push(format!("{} {mode:04o}", d.dir));
                    }
                    for (p, m) in &d.loose_files {
                        bad.push(format!("{p} is {m:04o} (expected 0600)"));
                    }
                }
                if bad.is_empty() {
                    (Pass, format!("{}; key files 0600", good.join(", ")))
                } else {
                    (Fail, list(&bad))
                }
            }
        }
        Rule::RootServices { names } => match &f.processes {
            None => (NotApplicable, "processes are only read on the live host".to_string()),
            Some(ps) => {
                let bad: Vec<String> = ps
                    .iter()
                    .filter(|p| p.euid == 0 && names.contains(&p.name))
                    .map(|p| format!("{} (pid {})", p.name, p.pid))
                    .collect();
                if bad.is_empty() {
                    (Pass, format!("none of {} runs as root", names.len()))
                } else {
                    (Fail, format!("running as root: {}", list(&bad)))
                }
            }
        },
        Rule::RemoteLogging => {
            if f.log_forwarding.is_empty() {
                (
                    Fail,
                    "no rsyslog forwarding action or systemd-journal-upload URL configured".to_string(),
                )
            } else {
                (Pass, list(&f.log_forwarding))
            }
        }
    };
    result(check, status, evidence)
}

fn is_loopback(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(equals: Option<&[&str]>, min: Option<i64>, max: Option<i64>) -> Expect {
        Expect {
            equals: equals.map(|v| v.iter().map(|s| s.to_string()).collect()),
            min,
            max,
            ..Default::default()
        }
    }

    #[test]
    fn conditions() {
        assert!(meets(&e(Some(&["no"]), None, None), "No").is_ok());
        assert!(meets(&e(Some(&["no"]), None, None), "yes").is_err());
        assert!(meets(&e(None, Some(1), Some(365)), "99999").is_err());
        assert!(meets(&e(None, Some(1), Some(365)), "90").is_ok());
        assert!(meets(&e(None, Some(1), None), "x").is_err());
        let umask = Expect {
            mask_set: Some("027".into()),
            ..Default::default()
        };
        assert!(meets(&umask, "022").is_err());
        assert!(meets(&umask, "077").is_ok());
        assert!(meets(&umask, "0027").is_ok());
        let forbid = Expect {
            forbid: Some(vec!["-cbc".into()]),
            ..Default::default()
        };
        assert_eq!(meets(&forbid, "aes256-ctr,aes128-cbc").unwrap_err(), "weak: aes128-cbc");
    }

    #[test]
    fn spec_9_1_1a_loopback_listeners_are_not_exposure() {
        assert!(is_loopback("127.0.0.53".parse().unwrap()));
        assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!is_loopback("0.0.0.0".parse().unwrap()));
    }
}
