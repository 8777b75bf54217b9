//! Installed packages from dpkg's database (`var/lib/dpkg/status` under a root: a node, or an
//! image's filesystem read without booting it).

use std::path::Path;

use serde::Serialize;

use crate::paths::under;

pub const STATUS: &str = "/var/lib/dpkg/status";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub architecture: String,
    /// The source package (the unit of the Debian security tracker).
    pub source: String,
    /// The source version when it differs from the binary one (binNMUs, renamed sources).
    pub source_version: String,
}

/// States in which the package's files are on disk.
fn files_present(status: &str) -> bool {
    matches!(
        status.split_whitespace().nth(2),
        Some("installed" | "half-configured" | "unpacked" | "triggers-awaited" | "triggers-pending")
    )
}

pub fn parse_status(text: &str) -> Vec<Package> {
    let mut out = Vec::new();
    for para in text.split("\n\n") {
        let mut name = None;
        let mut version = None;
        let mut status = None;
        let mut arch = String::new();
        let mut source = None;
        for line in para.lines() {
            if line.starts_with([' ', '\t']) {
                continue;
            }
            let Some((k, v)) = line.split_once(':') else { continue };
            let v = v.trim();
            match k {
                "Package" => name = Some(v.to_string()),
                "Version" => version = Some(v.to_string()),
                "Status" => status = Some(v.to_string()),
                "Architecture" => arch = v.to_string(),
                "Source" => source = Some(v.to_string()),
                _ => {}
            }
        }
        let (Some(name), Some(version), Some(status)) = (name, version, status) else {
            continue;
        };
        if !files_present(&status) {
            continue;
        }
        // `Source: name (version)` when the source version differs from the binary one.
        let (src, src_version) = match source.as_deref() {
            Some(s) => match s.split_once('(') {
                Some((n, v)) => (n.trim().to_string(), v.trim_end_matches(')').trim().to_string()),
                None => (s.to_string(), version.clone()),
            },
            None => (name.clone(), version.clone()),
        };
        out.push(Package {
            name,
            version,
            architecture: arch,
            source: src,
            source_version: src_version,
        });
    }
    out
}

pub fn installed(root: &Path) -> std::io::Result<Vec<Package>> {
    Ok(parse_status(&std::fs::read_to_string(under(root, STATUS))?))
}

/// The Debian release codename of a root (`VERSION_CODENAME` of os-release).
pub fn release(root: &Path) -> Option<String> {
    let text = std::fs::read_to_string(under(root, "/etc/os-release"))
        .or_else(|_| std::fs::read_to_string(under(root, "/usr/lib/os-release")))
        .ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim_matches('"').to_string())
            .filter(|v| !v.is_empty())
    };
    field("VERSION_CODENAME=").or_else(|| field("VERSION_ID=").and_then(|id| codename(&id).map(str::to_string)))
}

/// Debian release numbers and codenames (OSV names releases `Debian:12`).
pub fn codename(number: &str) -> Option<&'static str> {
    Some(match number {
        "9" => "stretch",
        "10" => "buster",
        "11" => "bullseye",
        "12" => "bookworm",
        "13" => "trixie",
        "14" => "forky",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_15_4_dpkg_status_paragraphs() {
        let text = "Package: libssl3\nStatus: install ok installed\nArchitecture: amd64\nSource: openssl\nVersion: 3.0.11-1~deb12u2\nDescription: x\n continuation: not a field\n\n\
Package: gone\nStatus: deinstall ok config-files\nVersion: 1.0\n\n\
Package: sudo\nStatus: install ok installed\nVersion: 1.9.13p3-1+deb12u1\n\n\
Package: libfoo1\nStatus: install ok installed\nSource: foo (1.2-3)\nVersion: 1.2-3+b1\n";
        let p = parse_status(text);
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].source, "openssl");
        assert_eq!(p[0].source_version, "3.0.11-1~deb12u2");
        assert_eq!(p[1].source, "sudo");
        assert_eq!(p[2].source, "foo");
        assert_eq!(p[2].source_version, "1.2-3");
    }
}
