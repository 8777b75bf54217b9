//! Posture benchmarks (scripts/bench-posture.sh): vulnerability matching of 2 000 installed
//! packages against a synthetic Debian Security Tracker file of realistic size (~40 000
//! CVE × package entries; goal < 1 s for import + match), and a hardening check of this host.
//! Writes target/bench/posture.json ({"date","load_avg","rows":[…]}).

use std::fmt::Write as _;
use std::time::Instant;

use rampart_posture::{dpkg, vulndb};

const PACKAGES: usize = 2_000;
const TRACKER_SOURCES: usize = 8_000;
const CVES_PER_SOURCE: usize = 5;

/// Tracker JSON shaped like the real one: several releases per CVE, most resolved.
fn synthetic_tracker() -> String {
    let mut s = String::from("{");
    for p in 0..TRACKER_SOURCES {
        if p > 0 {
            s.push(',');
        }
        write!(s, "\"src{p}\":{{").unwrap();
        for c in 0..CVES_PER_SOURCE {
            if c > 0 {
                s.push(',');
            }
            let status = if c == 0 { "open" } else { "resolved" };
            write!(
                s,
                "\"CVE-20{:02}-{:05}\":{{\"description\":\"synthetic entry for a benchmark of realistic size\",\"scope\":\"local\",\"releases\":{{\
                 \"bookworm\":{{\"status\":\"{status}\",\"repositories\":{{\"bookworm\":\"1.{c}-1\"}},\"fixed_version\":\"1.{c}-2~deb12u1\",\"urgency\":\"medium\"}},\
                 \"bullseye\":{{\"status\":\"resolved\",\"repositories\":{{\"bullseye\":\"1.{c}-1\"}},\"fixed_version\":\"1.{c}-1+deb11u1\",\"urgency\":\"low\"}},\
                 \"trixie\":{{\"status\":\"resolved\",\"repositories\":{{\"trixie\":\"1.{c}-3\"}},\"fixed_version\":\"1.{c}-3\",\"urgency\":\"medium\"}}}}}}",
                10 + c,
                p
            )
            .unwrap();
        }
        s.push('}');
    }
    s.push('}');
    s
}

fn synthetic_status() -> String {
    let mut s = String::new();
    for p in 0..PACKAGES {
        // Every fourth source is seen through a binary package of another name.
        let name = if p % 4 == 0 {
            format!("lib{p}-1")
        } else {
            format!("src{p}")
        };
        write!(
            s,
            "Package: {name}\nStatus: install ok installed\nArchitecture: amd64\nSource: src{p}\nVersion: 1.{}-2\nDescription: d\n\n",
            p % 5
        )
        .unwrap();
    }
    s
}

fn load_avg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(-1.0)
}

fn main() {
    let tracker = synthetic_tracker();
    let status = synthetic_status();

    let t = Instant::now();
    let (_, advisories) = vulndb::parse(&tracker).expect("synthetic tracker parses");
    let import_s = t.elapsed().as_secs_f64();
    let entries = advisories.len();

    let t = Instant::now();
    let packages = dpkg::parse_status(&status);
    let index = vulndb::Index::new(&advisories, "bookworm");
    let findings = index.scan(&packages);
    let match_s = t.elapsed().as_secs_f64();
    assert_eq!(packages.len(), PACKAGES);
    assert!(!findings.is_empty());

    // A host hardening check of this machine (facts from `/`, evaluation).
    let t = Instant::now();
    let (_, report) = rampart_posture::check(std::path::Path::new("/"));
    let host_s = t.elapsed().as_secs_f64();

    let total = import_s + match_s;
    let rows = serde_json::json!([
        {"metric": "vuln_tracker_entries", "value": entries, "unit": "CVE×package×release", "goal": "~40 000 CVE×package (3 releases each)"},
        {"metric": "vuln_import_parse_s", "value": import_s, "unit": "s", "goal": "part of < 1 s"},
        {"metric": "vuln_match_2000_packages_s", "value": match_s, "unit": "s", "goal": "part of < 1 s"},
        {"metric": "vuln_import_and_match_s", "value": total, "unit": "s", "limit": 1.0, "ratio": total / 1.0, "goal": "< 1 s"},
        {"metric": "vuln_findings", "value": findings.len(), "unit": "findings", "goal": "informational"},
        {"metric": "host_posture_check_s", "value": host_s, "unit": "s", "goal": "informational (per node)"},
        {"metric": "host_posture_checks", "value": report.checks.len(), "unit": "checks", "goal": "informational"},
    ]);
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("formats");
    let out = serde_json::json!({"date": date, "load_avg": load_avg(), "rows": rows});
    let path = std::env::var("BENCH_OUT")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/bench/posture.json").to_string());
    if let Some(dir) = std::path::Path::new(&path).parent() {
        std::fs::create_dir_all(dir).expect("bench directory");
    }
    std::fs::write(&path, serde_json::to_string_pretty(&out).expect("serialises")).expect("bench output written");
    println!("{}", serde_json::to_string_pretty(&out).expect("serialises"));
}
