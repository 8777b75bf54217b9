//! Debian version ordering, exactly as dpkg orders (`lib/dpkg/version.c`: epoch, then
//! upstream and revision with `verrevcmp`). Written here rather than taken from the
//! `debversion` crate: that crate orders an absent numeric part below `0` ("1.0a" < "1.0a0"),
//! where dpkg treats both as zero and equal. Tested against dpkg's own comparisons.

use std::cmp::Ordering;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a Debian version: {0:?}")]
pub struct BadVersion(pub String);

/// A parsed `[epoch:]upstream[-revision]`.
#[derive(Debug, Clone)]
pub struct Version {
    pub epoch: u64,
    pub upstream: String,
    pub revision: String,
}

impl Version {
    pub fn parse(s: &str) -> Result<Version, BadVersion> {
        let bad = || BadVersion(s.to_string());
        let t = s.trim();
        if t.is_empty() || t.chars().any(char::is_whitespace) {
            return Err(bad());
        }
        let (epoch, rest) = match t.split_once(':') {
            Some((e, r)) => {
                if e.is_empty() || !e.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                (e.parse().map_err(|_| bad())?, r)
            }
            None => (0, t),
        };
        let (upstream, revision) = match rest.rsplit_once('-') {
            Some((u, r)) => (u, r),
            None => (rest, ""),
        };
        if upstream.is_empty()
            || !upstream
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".+-~:".contains(&b))
        {
            return Err(bad());
        }
        if !revision
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".+~".contains(&b))
        {
            return Err(bad());
        }
        Ok(Version {
            epoch,
            upstream: upstream.to_string(),
            revision: revision.to_string(),
        })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.epoch != 0 {
            write!(f, "{}:", self.epoch)?;
        }
        f.write_str(&self.upstream)?;
        if !self.revision.is_empty() {
            write!(f, "-{}", self.revision)?;
        }
        Ok(())
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.epoch
            .cmp(&other.epoch)
            .then_with(|| verrevcmp(&self.upstream, &other.upstream))
            .then_with(|| verrevcmp(&self.revision, &other.revision))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Version {}

/// `~` sorts before everything, even the end; letters before other characters.
fn order(c: u8) -> i32 {
    match c {
        b'0'..=b'9' | 0 => 0,
        b'a'..=b'z' | b'A'..=b'Z' => c as i32,
        b'~' => -1,
        _ => c as i32 + 256,
    }
}

fn verrevcmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let at = |i: usize| a.get(i).copied().unwrap_or(0);
    let bt = |j: usize| b.get(j).copied().unwrap_or(0);
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        while (at(i) != 0 && !at(i).is_ascii_digit()) || (bt(j) != 0 && !bt(j).is_ascii_digit()) {
            let (ac, bc) = (order(at(i)), order(bt(j)));
            if ac != bc {
                return ac.cmp(&bc);
            }
            i += 1;
            j += 1;
        }
        while at(i) == b'0' {
            i += 1;
        }
        while bt(j) == b'0' {
            j += 1;
        }
        let mut first_diff = Ordering::Equal;
        while at(i).is_ascii_digit() && bt(j).is_ascii_digit() {
            if first_diff == Ordering::Equal {
                first_diff = at(i).cmp(&bt(j));
            }
            i += 1;
            j += 1;
        }
        if at(i).is_ascii_digit() {
            return Ordering::Greater;
        }
        if bt(j).is_ascii_digit() {
            return Ordering::Less;
        }
        if first_diff != Ordering::Equal {
            return first_diff;
        }
    }
    Ordering::Equal
}

/// Compares two version strings (errors when either is not a version).
pub fn compare(a: &str, b: &str) -> Result<Ordering, BadVersion> {
    Ok(Version::parse(a)?.cmp(&Version::parse(b)?))
}

/// Ordered pairs from dpkg's own test suite and Debian policy §5.6.12, with the relation
/// dpkg answers; also used by the differential test against `dpkg --compare-versions`.
pub const VECTORS: &[(&str, &str, Ordering)] = &[
    ("1.0", "1.0", Ordering::Equal),
    ("0:1.0", "1.0", Ordering::Equal),
    ("1.0", "1.0-0", Ordering::Equal),
    ("1.002", "1.2", Ordering::Equal),
    ("1.0a", "1.0a0", Ordering::Equal),
    ("1.2-3", "1.2-03", Ordering::Equal),
    ("1:1.0", "2.0", Ordering::Greater),
    ("2:0.1", "1:9.9", Ordering::Greater),
    ("1.0", "1.0-1", Ordering::Less),
    ("1.0~rc1", "1.0", Ordering::Less),
    ("1.0~~", "1.0~~a", Ordering::Less),
    ("1.0~~a", "1.0~", Ordering::Less),
    ("1.0~", "1.0", Ordering::Less),
    ("1.0", "1.0a", Ordering::Less),
    ("1.0-1", "1.0-1+b1", Ordering::Less),
    ("1.0-1+deb12u1", "1.0-1", Ordering::Greater),
    ("3.0.11-1~deb12u2", "3.0.11-1", Ordering::Less),
    ("3.0.11-1~deb12u2", "3.0.11-1~deb12u1", Ordering::Greater),
    ("1:9.2p1-2+deb12u3", "1:9.2p1-2+deb12u5", Ordering::Less),
    ("2.30", "2.4", Ordering::Greater),
    ("1.2.3", "1.2", Ordering::Greater),
    ("7.6p2-4", "7.6-0", Ordering::Greater),
    ("1.0.3-3", "1.0-1", Ordering::Greater),
    ("1.3", "1.2.2-2", Ordering::Greater),
    ("0-pre", "0-pre", Ordering::Equal),
    ("0-pre", "0-pree", Ordering::Less),
    ("1.1.6r2-37.1", "1.1.6r-37.1", Ordering::Greater),
    ("2.7.4+reloaded2-13", "2.7.4+reloaded2-13+deb9u1", Ordering::Less),
    ("1.9.13p3-1+deb12u1", "1.9.13p3-1", Ordering::Greater),
    ("0.8.7", "0.8.7-1", Ordering::Less),
    ("1.0+", "1.0.", Ordering::Less),
    ("1.0a", "1.0.", Ordering::Less),
    (
        "99999999999999999999999999.1",
        "99999999999999999999999999.0",
        Ordering::Greater,
    ),
    (
        "100000000000000000000000000",
        "99999999999999999999999999",
        Ordering::Greater,
    ),
    ("1:0", "0:99999", Ordering::Greater),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_15_4_debian_version_vectors() {
        for (a, b, want) in VECTORS {
            assert_eq!(compare(a, b).unwrap(), *want, "{a} vs {b}");
            assert_eq!(compare(b, a).unwrap(), want.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn bad_versions_are_refused() {
        for v in ["", "a b", "x:1.0", ":1", "1.0-a_b", "1.0$"] {
            assert!(Version::parse(v).is_err(), "{v}");
        }
        assert_eq!(Version::parse("1:2.3-4").unwrap().to_string(), "1:2.3-4");
        assert_eq!(Version::parse("1.2-3-4").unwrap().upstream, "1.2-3");
    }

    /// The same pairs, asked of dpkg itself: the ordering here is dpkg's, not a reading of it.
    #[test]
    fn spec_15_4_debian_version_order_agrees_with_dpkg() {
        let dpkg = std::process::Command::new("dpkg").arg("--version").output();
        assert!(
            dpkg.is_ok_and(|o| o.status.success()),
            "dpkg is part of every Debian host this runs on"
        );
        for (a, b, want) in VECTORS {
            let op = match want {
                Ordering::Less => "lt",
                Ordering::Equal => "eq",
                Ordering::Greater => "gt",
            };
            let ok = std::process::Command::new("dpkg")
                .args(["--compare-versions", a, op, b])
                .status()
                .unwrap()
                .success();
            assert!(ok, "dpkg disagrees: {a} {op} {b}");
        }
    }
}
