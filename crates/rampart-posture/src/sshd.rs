//! The effective sshd configuration: `sshd -T` on the live host, else the files read as sshd
//! reads them (Include expanded in place, the first value of a keyword wins, `Match` blocks
//! are conditional and left out of the global configuration).

use std::collections::BTreeMap;
use std::path::Path;

use crate::paths::{expand, under};

pub const MAIN: &str = "/etc/ssh/sshd_config";
pub const DROP_IN: &str = "/etc/ssh/sshd_config.d/50-rampart.conf";

/// One global directive, where it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    /// Host path of the file.
    pub file: String,
    /// Line index (0-based) in that file.
    pub line: usize,
    /// Keyword in lower case.
    pub key: String,
    pub value: String,
}

/// `keyword value` of an sshd_config line (also `keyword=value`), without comments.
pub fn split_line(line: &str) -> Option<(String, String)> {
    let t = line.trim();
    if t.is_empty() || t.starts_with('#') {
        return None;
    }
    let idx = t.find(|c: char| c.is_whitespace() || c == '=')?;
    let key = t[..idx].to_ascii_lowercase();
    let rest = t[idx..].trim_start_matches(|c: char| c.is_whitespace() || c == '=');
    // Values keep their words; a trailing comment is not part of sshd's syntax, so nothing
    // else is stripped.
    Some((key, rest.trim().to_string()))
}

/// The global directives in the order sshd reads them; `None` when the main file is absent.
pub fn read_directives(root: &Path) -> Option<Vec<Directive>> {
    if !under(root, MAIN).is_file() {
        return None;
    }
    let mut out = Vec::new();
    let mut in_match = false;
    read_file(root, MAIN, 0, &mut in_match, &mut out);
    Some(out)
}

fn read_file(root: &Path, host: &str, depth: usize, in_match: &mut bool, out: &mut Vec<Directive>) {
    if depth > 16 {
        tracing::warn!(file = host, "sshd Include nesting deeper than 16: not followed");
        return;
    }
    let Ok(text) = std::fs::read_to_string(under(root, host)) else {
        return;
    };
    for (i, line) in text.lines().enumerate() {
        let Some((key, value)) = split_line(line) else { continue };
        if key == "match" {
            *in_match = true;
            continue;
        }
        if *in_match {
            continue;
        }
        if key == "include" {
            for pattern in value.split_whitespace() {
                let pattern = if pattern.starts_with('/') {
                    pattern.to_string()
                } else {
                    format!("/etc/ssh/{pattern}")
                };
                for file in expand(root, &pattern) {
                    read_file(root, &file, depth + 1, in_match, out);
                }
            }
            continue;
        }
        out.push(Directive {
            file: host.to_string(),
            line: i,
            key,
            value,
        });
    }
}

/// First value wins, as in sshd.
pub fn effective(directives: &[Directive]) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for d in directives {
        m.entry(d.key.clone()).or_insert_with(|| d.value.clone());
    }
    m
}

/// Whether the main file includes our drop-in (Debian's default sshd_config does, on its
/// first line).
pub fn includes_drop_in(root: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(under(root, MAIN)) else {
        return false;
    };
    text.lines()
        .take_while(|l| split_line(l).is_none_or(|(k, _)| k != "match"))
        .filter_map(split_line)
        .filter(|(k, _)| k == "include")
        .flat_map(|(_, v)| v.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .any(|p| {
            let p = if p.starts_with('/') { p } else { format!("/etc/ssh/{p}") };
            match (p.rsplit_once('/'), DROP_IN.rsplit_once('/')) {
                (Some((pd, pf)), Some((dd, df))) => pd == dd && crate::paths::glob_match(pf, df),
                _ => false,
            }
        })
}

/// `sshd -T` on the live host: `None` when sshd is missing or refuses (e.g. no host keys).
pub fn live_effective() -> Option<BTreeMap<String, String>> {
    let out = std::process::Command::new("sshd").arg("-T").output().ok()?;
    if !out.status.success() {
        tracing::info!(
            stderr = %String::from_utf8_lossy(&out.stderr).trim(),
            "sshd -T failed: reading the configuration files instead"
        );
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Some(text.lines().filter_map(split_line).collect())
}

/// An algorithm list as sshd resolves it against its default: `+` appends, `-` removes,
/// `^` prepends, otherwise the list replaces the default.
pub fn resolve_list(value: &str, default: &str) -> Vec<String> {
    let split = |s: &str| -> Vec<String> {
        s.split(',')
            .map(|x| x.trim().to_ascii_lowercase())
            .filter(|x| !x.is_empty())
            .collect()
    };
    let defaults = split(default);
    if let Some(rest) = value.strip_prefix('+') {
        let mut v = defaults;
        v.extend(split(rest));
        v
    } else if let Some(rest) = value.strip_prefix('-') {
        let gone = split(rest);
        defaults
            .into_iter()
            .filter(|a| !gone.iter().any(|g| crate::paths::glob_match(g, a)))
            .collect()
    } else if let Some(rest) = value.strip_prefix('^') {
        let mut v = split(rest);
        v.extend(defaults);
        v
    } else {
        split(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (p, text) in files {
            let path = under(d.path(), p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        d
    }

    #[test]
    fn spec_9_1_1b_first_value_wins_across_includes_and_match_is_left_out() {
        let r = root_with(&[
            (
                MAIN,
                "Include /etc/ssh/sshd_config.d/*.conf\nPermitRootLogin yes\nMaxAuthTries=3\nMatch User bob\n  PasswordAuthentication yes\n",
            ),
            ("/etc/ssh/sshd_config.d/10-a.conf", "permitrootlogin no\n"),
            (
                "/etc/ssh/sshd_config.d/20-b.conf",
                "PermitRootLogin without-password\nPasswordAuthentication no\n",
            ),
            ("/etc/ssh/sshd_config.d/30-c.conf.bak", "MaxAuthTries 9\n"),
        ]);
        let d = read_directives(r.path()).unwrap();
        let e = effective(&d);
        assert_eq!(e["permitrootlogin"], "no");
        assert_eq!(e["passwordauthentication"], "no");
        assert_eq!(e["maxauthtries"], "3");
        assert!(includes_drop_in(r.path()));
    }

    #[test]
    fn a_main_file_without_include_does_not_read_the_drop_in() {
        let r = root_with(&[(MAIN, "PermitRootLogin yes\n"), (DROP_IN, "PermitRootLogin no\n")]);
        assert!(!includes_drop_in(r.path()));
        assert_eq!(effective(&read_directives(r.path()).unwrap())["permitrootlogin"], "yes");
    }

    #[test]
    fn algorithm_lists_resolve_against_the_default() {
        assert_eq!(resolve_list("+aes128-cbc", "a,b"), ["a", "b", "aes128-cbc"]);
        assert_eq!(resolve_list("-b", "a,b"), ["a"]);
        assert_eq!(resolve_list("-*", "a,b"), Vec::<String>::new());
        assert_eq!(resolve_list("^c", "a,b"), ["c", "a", "b"]);
        assert_eq!(resolve_list("C,D", "a,b"), ["c", "d"]);
    }
}
