//! Weakness management (spec 15-4): the shipped tracker and OSV fixtures matched against the
//! fixture root's dpkg status with Debian version ordering.

use std::path::Path;

use rampart_posture::dpkg;
use rampart_posture::vulndb::{self, Kind, VulnDb};

fn data(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)).unwrap()
}

fn bad_root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bad")
}

#[test]
fn spec_15_4_tracker_data_finds_the_vulnerable_packages() {
    let (kind, advisories) = vulndb::parse(&data("debian-tracker-bookworm.json")).unwrap();
    assert_eq!(kind, Kind::DebianTracker);
    // "fixed_version": "0" (never affected) is not an advisory.
    assert!(!advisories.iter().any(|a| a.id == "CVE-2024-3094"));
    let root = bad_root();
    assert_eq!(dpkg::release(&root).as_deref(), Some("bookworm"));
    let packages = dpkg::installed(&root).unwrap();
    assert_eq!(packages.len(), 6, "config-files only is not installed");
    let index = vulndb::Index::new(&advisories, "bookworm");
    let found: Vec<(String, String, Option<String>)> = index
        .scan(&packages)
        .into_iter()
        .map(|f| (f.id, f.package, f.fixed))
        .collect();
    let want = |id: &str, pkg: &str, fixed: &str| (id.to_string(), pkg.to_string(), Some(fixed.to_string()));
    assert_eq!(
        found,
        vec![
            want("CVE-2023-4911", "libc6", "2.36-9+deb12u3"),
            want("CVE-2024-6387", "openssh-client", "1:9.2p1-2+deb12u3"),
            want("CVE-2024-6387", "openssh-server", "1:9.2p1-2+deb12u3"),
            want("CVE-2025-32462", "sudo", "1.9.13p3-1+deb12u2"),
        ]
    );
    // Terrapin is fixed in the installed +deb12u2; sudoedit's CVE in the older 1.9.12p2-1;
    // openssl's in exactly the installed version.
    assert!(
        !found
            .iter()
            .any(|f| f.0 == "CVE-2023-48795" || f.0 == "CVE-2023-22809" || f.0 == "CVE-2023-5363")
    );
    // Another release's data does not apply.
    let bullseye = vulndb::Index::new(&advisories, "bullseye");
    assert!(bullseye.scan(&packages).iter().all(|f| f.id == "CVE-2023-48795"));
}

#[test]
fn spec_15_4_osv_records_match_with_their_cvss_and_aliases() {
    let (kind, advisories) = vulndb::parse(&data("osv-DSA-5724-1.json")).unwrap();
    assert_eq!(kind, Kind::Osv);
    assert_eq!(advisories.len(), 1, "the PyPI entry is not Debian");
    let a = &advisories[0];
    assert_eq!(a.id, "CVE-2024-6387");
    assert_eq!(a.aliases, ["DSA-5724-1"]);
    assert_eq!(a.release, "bookworm");
    let packages = dpkg::installed(&bad_root()).unwrap();
    let findings = vulndb::Index::new(&advisories, "bookworm").scan(&packages);
    assert_eq!(findings.len(), 2);
    assert_eq!(
        findings[0].cvss.as_deref(),
        Some("CVSS:3.1/AV:N/AC:H/PR:N/UI:N/S:U/C:H/I:H/A:H")
    );
    assert_eq!(findings[0].severity.as_deref(), Some("high"));
    // Patched: nothing.
    let patched: Vec<_> = packages
        .iter()
        .cloned()
        .map(|mut p| {
            if p.source == "openssh" {
                p.source_version = "1:9.2p1-2+deb12u3".into();
            }
            p
        })
        .collect();
    assert!(vulndb::Index::new(&advisories, "bookworm").scan(&patched).is_empty());
}

#[test]
fn spec_15_4_the_store_merges_imports_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vulndb.json");
    let mut db = VulnDb::load(&path).unwrap();
    assert!(db.advisories.is_empty());
    let (k, a) = vulndb::parse(&data("debian-tracker-bookworm.json")).unwrap();
    let n = a.len();
    db.merge("tracker.json", k, "2026-12-07T00:00:00Z", a.clone());
    // The same file again replaces, it does not duplicate.
    db.merge("tracker.json", k, "2026-12-07T00:00:01Z", a);
    assert_eq!(db.advisories.len(), n);
    let (k2, osv) = vulndb::parse(&data("osv-DSA-5724-1.json")).unwrap();
    db.merge("osv.json", k2, "2026-12-07T00:00:02Z", osv);
    assert_eq!(db.advisories.len(), n + 1);
    db.save(&path).unwrap();
    assert_eq!(VulnDb::load(&path).unwrap(), db);
    // One finding per CVE and package, even with two sources saying so.
    let packages = dpkg::installed(&bad_root()).unwrap();
    let findings = vulndb::Index::new(&db.advisories, "bookworm").scan(&packages);
    assert_eq!(findings.iter().filter(|f| f.id == "CVE-2024-6387").count(), 2);
}

#[test]
fn spec_15_4_other_json_is_refused() {
    assert!(vulndb::parse("[1,2]").is_err());
    assert!(vulndb::parse("{\"a\": 1}").is_err());
    assert!(vulndb::parse("not json").is_err());
}
