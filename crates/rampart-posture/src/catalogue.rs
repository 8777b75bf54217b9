//! The check catalogue: checks as data (`data/checks.toml`), read once and validated.

use serde::{Deserialize, Serialize};

use crate::Error;

const BUILTIN: &str = include_str!("../data/checks.toml");

/// How serious a failed check is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// One check: what it proves (`clause`) and the rule that decides it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    pub id: String,
    pub clause: String,
    pub title: String,
    pub severity: Severity,
    pub rule: Rule,
}

/// The expected value of a scalar setting; every present condition must hold.
// No `deny_unknown_fields` here and on `Rule`: serde does not support it with `flatten`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Expect {
    /// One of these (compared without case).
    #[serde(default)]
    pub equals: Option<Vec<String>>,
    #[serde(default)]
    pub min: Option<i64>,
    #[serde(default)]
    pub max: Option<i64>,
    /// Octal bits that must all be set (a umask at least this strict).
    #[serde(default)]
    pub mask_set: Option<String>,
    /// Substrings none of the comma-separated items may contain (algorithm lists).
    #[serde(default)]
    pub forbid: Option<Vec<String>>,
}

/// Syntax of a `key value` configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Syntax {
    /// `KEY value` (login.defs).
    Space,
    /// `key = value` (pwquality.conf, faillock.conf).
    Equals,
    /// `KEY=value` (shell-style, /etc/default/useradd).
    Shell,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Rule {
    /// Non-loopback listening sockets of the root namespace against `proto/port` entries.
    Listening {
        allow: Vec<String>,
    },
    /// One keyword of the effective sshd configuration (lower case).
    Sshd {
        key: String,
        default: String,
        #[serde(flatten)]
        expect: Expect,
        fix: Option<String>,
    },
    /// A kernel parameter: the running value and the one persisted for the next boot.
    Sysctl {
        key: String,
        #[serde(flatten)]
        expect: Expect,
        fix: Option<String>,
    },
    /// A key in a configuration file under the root (the last occurrence wins).
    Setting {
        file: String,
        syntax: Syntax,
        key: String,
        default: String,
        #[serde(flatten)]
        expect: Expect,
        fix: Option<String>,
    },
    EmptyPasswords,
    ExtraUid0,
    WorldWritable,
    SuidBaseline {
        allow: Vec<String>,
    },
    RampartPrivate {
        dirs: Vec<String>,
    },
    RootServices {
        names: Vec<String>,
    },
    RemoteLogging,
}

impl Rule {
    /// Whether `apply` can remediate a failure of this rule.
    pub fn remediable(&self) -> bool {
        match self {
            Rule::Sshd { fix, .. } | Rule::Sysctl { fix, .. } | Rule::Setting { fix, .. } => fix.is_some(),
            Rule::WorldWritable | Rule::RampartPrivate { .. } => true,
            Rule::Listening { .. }
            | Rule::EmptyPasswords
            | Rule::ExtraUid0
            | Rule::SuidBaseline { .. }
            | Rule::RootServices { .. }
            | Rule::RemoteLogging => false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalogue {
    #[serde(rename = "check")]
    pub checks: Vec<Check>,
}

impl Catalogue {
    /// The catalogue shipped in the binary.
    pub fn builtin() -> Catalogue {
        Catalogue::parse(BUILTIN).expect("the built-in check catalogue is valid (tested)")
    }

    pub fn parse(text: &str) -> Result<Catalogue, Error> {
        let c: Catalogue = toml::from_str(text).map_err(|e| Error::Catalogue(e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    fn validate(&self) -> Result<(), Error> {
        let mut seen = std::collections::BTreeSet::new();
        for check in &self.checks {
            if !seen.insert(check.id.as_str()) {
                return Err(Error::Catalogue(format!("duplicate check id {}", check.id)));
            }
            if !crate::CLAUSES.contains(&check.clause.as_str()) {
                return Err(Error::Catalogue(format!(
                    "check {}: clause {} is not one of {:?}",
                    check.id,
                    check.clause,
                    crate::CLAUSES
                )));
            }
            let (expect, fix) = match &check.rule {
                Rule::Sshd { expect, fix, .. }
                | Rule::Sysctl { expect, fix, .. }
                | Rule::Setting { expect, fix, .. } => (expect, fix),
                _ => continue,
            };
            if expect.equals.is_none()
                && expect.min.is_none()
                && expect.max.is_none()
                && expect.mask_set.is_none()
                && expect.forbid.is_none()
            {
                return Err(Error::Catalogue(format!("check {}: expects nothing", check.id)));
            }
            // A fix that does not satisfy its own check would make `apply` loop forever.
            if let Some(fix) = fix
                && let Err(why) = crate::eval::meets(expect, fix)
            {
                return Err(Error::Catalogue(format!(
                    "check {}: the fix {fix:?} fails the check itself ({why})",
                    check.id
                )));
            }
        }
        Ok(())
    }

    pub fn get(&self, id: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalogue_parses_and_covers_every_host_clause() {
        let c = Catalogue::builtin();
        for clause in crate::CLAUSES {
            assert!(
                c.checks.iter().any(|k| k.clause == *clause),
                "no check proves clause {clause}"
            );
        }
    }

    #[test]
    fn a_fix_that_fails_its_own_check_is_refused() {
        let text = r#"
[[check]]
id = "x"
clause = "9.1-1b"
title = "t"
severity = "low"
[check.rule]
kind = "sshd"
key = "maxauthtries"
default = "6"
max = 4
fix = "6"
"#;
        let e = Catalogue::parse(text).unwrap_err().to_string();
        assert!(e.contains("fails the check itself"), "{e}");
    }

    #[test]
    fn unknown_fields_and_clauses_are_refused() {
        let unknown =
            "[[check]]\nid='x'\nclause='9.1-1b'\ntitle='t'\nseverity='low'\nbogus=1\n[check.rule]\nkind='extra_uid0'\n";
        assert!(Catalogue::parse(unknown).is_err());
        let clause = "[[check]]\nid='x'\nclause='9.9'\ntitle='t'\nseverity='low'\n[check.rule]\nkind='extra_uid0'\n";
        assert!(Catalogue::parse(clause).unwrap_err().to_string().contains("clause"));
    }
}
