//! Vulnerability data imported offline and matched against installed packages (spec 15-4).
//! Two input formats: OSV records of the Debian ecosystem (one record, an array, or an object
//! with a `vulns` array) and the Debian Security Tracker's JSON
//! (`{source: {CVE: {releases: {codename: {status, fixed_version, urgency}}}}}`). Both are
//! normalised to advisories: one affected version range of one source package in one release.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::debver::Version;
use crate::dpkg::Package;

pub const FORMAT: u32 = 1;

/// One affected range: versions `>= introduced` and `< fixed` (or `<= last_affected`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advisory {
    /// CVE id, or the OSV id (DSA-…, DLA-…) when there is no CVE.
    pub id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Source package.
    pub package: String,
    /// Release codename, or `*` for every release.
    pub release: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub introduced: Option<String>,
    /// `None`: no fix yet, every version from `introduced` on is affected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_affected: Option<String>,
    /// Debian urgency (`low`, `medium`, `high`, `unimportant`, …) when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    /// CVSS vector when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cvss: Option<String>,
    /// `osv` or `debian-tracker`.
    pub origin: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Import {
    pub file: String,
    pub kind: String,
    pub imported_at: String,
    pub advisories: usize,
}

/// The normalised store (`rampart vulndb import`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VulnDb {
    pub format: u32,
    pub imports: Vec<Import>,
    pub advisories: Vec<Advisory>,
}

/// Which input format a document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Osv,
    DebianTracker,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Osv => "osv",
            Kind::DebianTracker => "debian-tracker",
        }
    }
}

// --- Debian Security Tracker ---------------------------------------------------------------

#[derive(Deserialize)]
struct TrackerCve {
    #[serde(default)]
    releases: HashMap<String, TrackerRelease>,
}

#[derive(Deserialize)]
struct TrackerRelease {
    status: String,
    #[serde(default)]
    fixed_version: Option<String>,
    #[serde(default)]
    urgency: Option<String>,
}

fn from_tracker(doc: HashMap<String, HashMap<String, TrackerCve>>) -> Vec<Advisory> {
    let mut out = Vec::new();
    for (package, cves) in doc {
        for (cve, entry) in cves {
            for (release, r) in entry.releases {
                let fixed = match r.status.as_str() {
                    // Fixed version "0": this release never shipped the flaw.
                    "resolved" => match r.fixed_version {
                        Some(v) if v != "0" => Some(v),
                        _ => continue,
                    },
                    "open" | "undetermined" => None,
                    _ => continue,
                };
                out.push(Advisory {
                    id: cve.clone(),
                    aliases: Vec::new(),
                    package: package.clone(),
                    release,
                    introduced: None,
                    fixed,
                    last_affected: None,
                    severity: r.urgency.filter(|u| !u.is_empty() && u != "not yet assigned"),
                    cvss: None,
                    origin: Kind::DebianTracker.as_str().into(),
                });
            }
        }
    }
    out
}

// --- OSV -------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct Osv {
    id: String,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    withdrawn: Option<String>,
    #[serde(default)]
    severity: Vec<OsvSeverity>,
    #[serde(default)]
    affected: Vec<OsvAffected>,
}

#[derive(Deserialize)]
struct OsvSeverity {
    #[serde(rename = "type")]
    kind: String,
    score: String,
}

#[derive(Deserialize)]
struct OsvAffected {
    package: OsvPackage,
    #[serde(default)]
    ranges: Vec<OsvRange>,
    #[serde(default)]
    ecosystem_specific: Option<serde_json::Value>,
    #[serde(default)]
    database_specific: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct OsvPackage {
    ecosystem: String,
    name: String,
}

#[derive(Deserialize)]
struct OsvRange {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    events: Vec<BTreeMap<String, String>>,
}

fn from_osv(records: Vec<Osv>) -> Vec<Advisory> {
    let mut out = Vec::new();
    for rec in records.into_iter().filter(|r| r.withdrawn.is_none()) {
        let cvss = rec
            .severity
            .iter()
            .find(|s| s.kind.starts_with("CVSS"))
            .map(|s| s.score.clone());
        // Debian's OSV records are advisories (DSA-…) naming the CVEs they fix.
        let cves: Vec<&String> = rec.aliases.iter().filter(|a| a.starts_with("CVE-")).collect();
        let id = if rec.id.starts_with("CVE-") || cves.is_empty() {
            rec.id.clone()
        } else {
            cves[0].clone()
        };
        let aliases: Vec<String> = std::iter::once(&rec.id)
            .chain(rec.aliases.iter())
            .filter(|a| **a != id)
            .cloned()
            .collect();
        for aff in &rec.affected {
            let eco = &aff.package.ecosystem;
            let release = match eco.split_once(':') {
                Some(("Debian", n)) => match crate::dpkg::codename(n) {
                    Some(c) => c.to_string(),
                    None => continue,
                },
                None if eco == "Debian" => "*".to_string(),
                _ => continue,
            };
            let urgency = [&aff.ecosystem_specific, &aff.database_specific]
                .into_iter()
                .flatten()
                .find_map(|v| v.get("urgency").and_then(|u| u.as_str()).map(str::to_string));
            for range in aff.ranges.iter().filter(|r| r.kind == "ECOSYSTEM") {
                let mut introduced: Option<String> = None;
                let mut open = false;
                let mut push = |introduced: &Option<String>, fixed: Option<String>, last: Option<String>| {
                    out.push(Advisory {
                        id: id.clone(),
                        aliases: aliases.clone(),
                        package: aff.package.name.clone(),
                        release: release.clone(),
                        introduced: introduced.clone().filter(|v| v != "0"),
                        fixed,
                        last_affected: last,
                        severity: urgency.clone(),
                        cvss: cvss.clone(),
                        origin: Kind::Osv.as_str().into(),
                    })
                };
                for ev in &range.events {
                    if let Some(v) = ev.get("introduced") {
                        introduced = Some(v.clone());
                        open = true;
                    } else if let Some(v) = ev.get("fixed") {
                        push(&introduced, Some(v.clone()), None);
                        open = false;
                    } else if let Some(v) = ev.get("last_affected") {
                        push(&introduced, None, Some(v.clone()));
                        open = false;
                    }
                }
                if open {
                    push(&introduced, None, None);
                }
            }
        }
    }
    out
}

/// Parses a document of either format.
pub fn parse(text: &str) -> Result<(Kind, Vec<Advisory>), Error> {
    let bad = |e: serde_json::Error| Error::VulnData(e.to_string());
    // The tracker export is tens of megabytes: read it straight into its types, without an
    // intermediate `Value` (an OSV record or `{"vulns": […]}` does not fit them).
    if text.trim_start().starts_with('{')
        && let Ok(doc) = serde_json::from_str::<HashMap<String, HashMap<String, TrackerCve>>>(text)
    {
        return Ok((Kind::DebianTracker, from_tracker(doc)));
    }
    let value: serde_json::Value = serde_json::from_str(text).map_err(bad)?;
    let is_osv = |v: &serde_json::Value| v.get("id").is_some_and(|i| i.is_string()) && v.get("affected").is_some();
    if value.is_array() || is_osv(&value) || value.get("vulns").is_some_and(|v| v.is_array()) {
        let records: Vec<Osv> = match value {
            serde_json::Value::Array(_) => serde_json::from_value(value).map_err(bad)?,
            v if is_osv(&v) => vec![serde_json::from_value(v).map_err(bad)?],
            mut v => serde_json::from_value(v["vulns"].take()).map_err(bad)?,
        };
        return Ok((Kind::Osv, from_osv(records)));
    }
    // The tracker's top level is `{source package: {CVE: {...}}}`.
    if value.is_object() {
        let doc: HashMap<String, HashMap<String, TrackerCve>> = serde_json::from_value(value)
            .map_err(|e| Error::VulnData(format!("neither OSV nor Debian Security Tracker JSON: {e}")))?;
        return Ok((Kind::DebianTracker, from_tracker(doc)));
    }
    Err(Error::VulnData("neither OSV nor Debian Security Tracker JSON".into()))
}

impl VulnDb {
    pub fn load(path: &Path) -> Result<VulnDb, Error> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(VulnDb {
                    format: FORMAT,
                    ..Default::default()
                });
            }
            Err(source) => {
                return Err(Error::Io {
                    path: path.display().to_string(),
                    source,
                });
            }
        };
        let db: VulnDb =
            serde_json::from_str(&text).map_err(|e| Error::VulnData(format!("{}: {e}", path.display())))?;
        if db.format != FORMAT {
            return Err(Error::VulnData(format!(
                "{}: format {} (this version reads {FORMAT})",
                path.display(),
                db.format
            )));
        }
        Ok(db)
    }

    /// Adds advisories; one already stored for the same (id, package, release, origin) is
    /// replaced, so importing a newer file updates the data.
    pub fn merge(&mut self, file: &str, kind: Kind, imported_at: &str, new: Vec<Advisory>) {
        self.format = FORMAT;
        let key = |a: &Advisory| (a.id.clone(), a.package.clone(), a.release.clone(), a.origin.clone());
        let replaced: std::collections::HashSet<_> = new.iter().map(key).collect();
        self.advisories.retain(|a| !replaced.contains(&key(a)));
        self.imports.push(Import {
            file: file.to_string(),
            kind: kind.as_str().into(),
            imported_at: imported_at.to_string(),
            advisories: new.len(),
        });
        self.advisories.extend(new);
        self.advisories.sort_by(|a, b| {
            (&a.package, &a.id, &a.release, &a.introduced).cmp(&(&b.package, &b.id, &b.release, &b.introduced))
        });
    }

    /// Written whole to a temporary file, then renamed.
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        let io = |source| Error::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(self).expect("the store serialises")).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}

/// One vulnerable installed package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub id: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    pub package: String,
    pub source_package: String,
    pub installed: String,
    /// `None`: no fixed version yet.
    pub fixed: Option<String>,
    pub severity: Option<String>,
    pub cvss: Option<String>,
}

/// Advisories of one release by source package, versions parsed once.
pub struct Index<'a> {
    by_package: HashMap<&'a str, Vec<(&'a Advisory, Bounds)>>,
    /// Advisories whose versions do not parse (skipped, counted).
    pub unparsable: usize,
}

struct Bounds {
    introduced: Option<Version>,
    fixed: Option<Version>,
    last_affected: Option<Version>,
}

impl<'a> Index<'a> {
    pub fn new(advisories: &'a [Advisory], release: &str) -> Index<'a> {
        let mut by_package: HashMap<&str, Vec<(&Advisory, Bounds)>> = HashMap::new();
        let mut unparsable = 0;
        for a in advisories.iter().filter(|a| a.release == release || a.release == "*") {
            let p = |v: &Option<String>| v.as_deref().map(Version::parse).transpose();
            match (p(&a.introduced), p(&a.fixed), p(&a.last_affected)) {
                (Ok(introduced), Ok(fixed), Ok(last_affected)) => {
                    by_package.entry(a.package.as_str()).or_default().push((
                        a,
                        Bounds {
                            introduced,
                            fixed,
                            last_affected,
                        },
                    ))
                }
                _ => unparsable += 1,
            }
        }
        Index { by_package, unparsable }
    }

    /// The findings for `packages`, sorted by package then id.
    pub fn scan(&self, packages: &[Package]) -> Vec<Finding> {
        let mut out = Vec::new();
        for pkg in packages {
            let Some(advisories) = self.by_package.get(pkg.source.as_str()) else {
                continue;
            };
            let Ok(installed) = Version::parse(&pkg.source_version) else {
                tracing::warn!(package = %pkg.name, version = %pkg.source_version, "installed version does not parse");
                continue;
            };
            let mut seen = std::collections::HashSet::new();
            for (a, b) in advisories {
                let affected = b.introduced.as_ref().is_none_or(|i| &installed >= i)
                    && b.fixed.as_ref().is_none_or(|f| &installed < f)
                    && b.last_affected.as_ref().is_none_or(|l| &installed <= l);
                if affected && seen.insert(a.id.as_str()) {
                    out.push(Finding {
                        id: a.id.clone(),
                        aliases: a.aliases.clone(),
                        package: pkg.name.clone(),
                        source_package: pkg.source.clone(),
                        installed: pkg.version.clone(),
                        fixed: a.fixed.clone(),
                        severity: a.severity.clone(),
                        cvss: a.cvss.clone(),
                    });
                }
            }
        }
        out.sort_by(|a, b| (&a.package, &a.id).cmp(&(&b.package, &b.id)));
        out
    }
}
