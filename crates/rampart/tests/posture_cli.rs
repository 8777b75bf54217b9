//! `rampart harden` through the binary, as an operator runs it (spec 9.1-1): on a copy of a
//! drifted Debian root, `check` reports findings with clause ids and exits 1, `apply --dry-run`
//! changes nothing, `apply` fixes every check and keeps backups, `check` then passes (exit 0),
//! and a second `apply` has nothing to do.

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_rampart");

fn harden(args: &[&str], root: &Path) -> Output {
    Command::new(BIN)
        .arg("harden")
        .args(args)
        .arg("--root")
        .arg(root)
        .output()
        .expect("rampart runs")
}

fn snapshot(root: &Path) -> String {
    let out = Command::new("find")
        .arg(root)
        .args(["-type", "f", "-printf", "%P %s %m\n"])
        .output()
        .unwrap();
    let mut lines: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
    lines.sort();
    lines.join("\n")
}

#[test]
fn spec_9_1_1_harden_check_apply_check_through_the_binary() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rampart-posture/tests/fixtures/drifted");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let copied = Command::new("cp").arg("-r").arg(&fixture).arg(&root).status().unwrap();
    assert!(copied.success());

    let check = harden(&["check", "--json"], &root);
    assert_eq!(check.status.code(), Some(1), "findings exit 1");
    let report: serde_json::Value = serde_json::from_slice(&check.stdout).expect("JSON report");
    let failing: Vec<&serde_json::Value> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "fail")
        .collect();
    assert!(!failing.is_empty(), "the drifted root has findings");
    assert!(
        failing
            .iter()
            .all(|c| c["clause"].as_str().is_some_and(|s| s.starts_with("9.1-"))),
        "every finding names its clause: {failing:?}"
    );

    let before = snapshot(&root);
    let dry = harden(&["apply", "--dry-run"], &root);
    assert!(dry.status.success(), "{}", String::from_utf8_lossy(&dry.stderr));
    assert!(
        String::from_utf8_lossy(&dry.stdout).contains("+++"),
        "the dry run shows a diff"
    );
    assert_eq!(snapshot(&root), before, "a dry run changes nothing");

    let apply = harden(&["apply"], &root);
    assert!(apply.status.success(), "{}", String::from_utf8_lossy(&apply.stderr));
    assert!(
        std::fs::read_dir(root.join("etc")).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains(".rampart-bak.")),
        "changed files are backed up"
    );
    let again = harden(&["check"], &root);
    assert_eq!(
        again.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );

    let after = snapshot(&root);
    let second = harden(&["apply"], &root);
    assert!(second.status.success());
    assert_eq!(snapshot(&root), after, "a second apply changes nothing");
}
