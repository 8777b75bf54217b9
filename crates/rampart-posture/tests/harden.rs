//! Hardening checks on fixture roots (spec 9.1-1a … 9.1-1f, 9.1-2): the bad root's report is a
//! golden file; `apply` fixes every remediable check, and a second `apply` changes nothing.
//! One test runs on the real host (root).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rampart_common::testing::require_root;
use rampart_posture::apply;
use rampart_posture::{Catalogue, Status};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let ft = e.file_type().unwrap();
        if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src).unwrap(), &dst).unwrap();
        } else if ft.is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn chmod(root: &Path, p: &str, mode: u32) {
    std::fs::set_permissions(root.join(p), std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A fixture copied to a fresh directory, with the modes git does not keep.
fn materialize(name: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    copy_tree(&fixture(name), d.path());
    let r = d.path();
    chmod(r, "etc/shadow", 0o640);
    chmod(r, "etc/cron.d/job", 0o666);
    chmod(r, "usr/bin/passwd", 0o4755);
    chmod(r, "var/lib/rampart", 0o755);
    chmod(r, "var/lib/rampart/ca.key", 0o644);
    // A sticky temporary directory: what is world-writable inside it is not a finding.
    std::fs::create_dir_all(r.join("var/tmp")).unwrap();
    chmod(r, "var/tmp", 0o1777);
    std::fs::write(r.join("var/tmp/scratch"), "x").unwrap();
    chmod(r, "var/tmp/scratch", 0o666);
    if r.join("usr/local/bin/backdoor").exists() {
        chmod(r, "usr/local/bin/backdoor", 0o4755);
        // A world-writable directory without the sticky bit.
        std::fs::create_dir_all(r.join("srv/drop")).unwrap();
        chmod(r, "srv/drop", 0o777);
    }
    d
}

#[track_caller]
fn golden(name: &str, actual: &str) {
    rampart_common::testing::golden(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name),
        actual,
    );
}

fn status_of(report: &rampart_posture::Report, id: &str) -> Status {
    report
        .checks
        .iter()
        .find(|c| c.id == id)
        .unwrap_or_else(|| panic!("no check {id}"))
        .status
}

#[test]
fn spec_9_1_1_bad_fixture_report_is_golden() {
    let root = materialize("bad");
    let (_, report) = rampart_posture::check(root.path());
    let json = serde_json::to_string_pretty(&report).unwrap() + "\n";
    golden("check-bad.json", &json);
    // Every check of the catalogue fails on this root, except those only the live host has.
    for c in &report.checks {
        match c.id.as_str() {
            "proc.root_services" => assert_eq!(c.status, Status::NotApplicable),
            "account.faillock_deny" => assert_eq!(c.status, Status::Pass, "default deny 3"),
            _ => assert_eq!(c.status, Status::Fail, "{} should fail: {}", c.id, c.evidence),
        }
    }
}

#[test]
fn spec_9_1_1b_match_blocks_and_unread_drop_ins_do_not_count() {
    let root = materialize("bad");
    let (facts, _) = rampart_posture::check(root.path());
    let sshd = facts.sshd.unwrap();
    assert_eq!(sshd.source, "sshd_config");
    // `PermitRootLogin no` inside `Match User backup` is not the global value.
    assert_eq!(sshd.values["permitrootlogin"], "yes");
    // 10-local.conf is not included, so its ClientAliveInterval is not in effect.
    assert!(!sshd.values.contains_key("clientaliveinterval"));
}

#[test]
fn spec_9_1_1_apply_fixes_every_remediable_check_and_is_idempotent() {
    let root = materialize("bad");
    let r = root.path();
    let (before, plan) = rampart_posture::plan(r);
    assert!(!before.all_pass());
    let diff = apply::render_diff(&plan);
    assert!(diff.contains("+++ b/etc/ssh/sshd_config.d/50-rampart.conf"), "{diff}");
    assert!(diff.contains("+Include /etc/ssh/sshd_config.d/*.conf"), "{diff}");
    assert!(diff.contains("+++ b/etc/sysctl.d/60-rampart.conf"), "{diff}");
    assert!(diff.contains("-PASS_MAX_DAYS\t99999"), "{diff}");
    assert!(diff.contains("chmod 0666 -> 0664 /etc/cron.d/job"), "{diff}");
    assert!(diff.contains("chmod 0755 -> 0700 /var/lib/rampart"), "{diff}");
    assert!(diff.contains("sysctl -w net.ipv4.ip_forward=0"), "{diff}");

    let applied = apply::execute(r, &plan, "20261207T000000Z").unwrap();
    assert!(applied.warnings.is_empty(), "{:?}", applied.warnings);
    // Each changed file was backed up first, with its old content.
    assert!(
        applied
            .backups
            .contains(&"/etc/login.defs.rampart-bak.20261207T000000Z".to_string())
    );
    assert!(
        std::fs::read_to_string(r.join("etc/login.defs.rampart-bak.20261207T000000Z"))
            .unwrap()
            .contains("PASS_MAX_DAYS\t99999")
    );
    assert!(
        !r.join("etc/ssh/sshd_config.d/50-rampart.conf.rampart-bak.20261207T000000Z")
            .exists()
    );

    let (facts, after) = rampart_posture::check(r);
    let catalogue = Catalogue::builtin();
    let manual = [
        "net.listening_sockets",
        "account.empty_passwords",
        "account.uid0",
        "files.suid_sgid",
        "log.remote_forwarding",
    ];
    for c in &after.checks {
        let rule = &catalogue.get(&c.id).unwrap().rule;
        if manual.contains(&c.id.as_str()) {
            assert!(!rule.remediable());
            assert_eq!(c.status, Status::Fail, "{} needs a person", c.id);
        } else {
            assert_ne!(
                c.status,
                Status::Fail,
                "{} still fails after apply: {}",
                c.id,
                c.evidence
            );
        }
    }
    // 10-local.conf is read before the drop-in now: its PasswordAuthentication was disabled.
    assert_eq!(facts.sshd.unwrap().values["passwordauthentication"], "no");
    let local = std::fs::read_to_string(r.join("etc/ssh/sshd_config.d/10-local.conf")).unwrap();
    assert!(
        local.contains("#rampart-disabled: PasswordAuthentication yes"),
        "{local}"
    );
    // /etc/sysctl.conf is applied last: its ip_forward=1 would undo the drop-in at boot.
    let conf = std::fs::read_to_string(r.join("etc/sysctl.conf")).unwrap();
    assert!(conf.contains("#rampart-disabled: net.ipv4.ip_forward=1"), "{conf}");
    assert_eq!(
        std::fs::read_to_string(r.join("proc/sys/net/ipv4/ip_forward")).unwrap(),
        "0\n"
    );
    let mode = |p: &str| std::fs::metadata(r.join(p)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("var/lib/rampart"), 0o700);
    assert_eq!(mode("var/lib/rampart/ca.key"), 0o600);
    assert_eq!(mode("srv/drop"), 0o775);

    // Idempotent: the second run plans nothing and changes no byte.
    let (_, again) = rampart_posture::plan(r);
    assert!(again.is_empty(), "second plan: {}", apply::render_diff(&again));
    assert_eq!(again.manual.len(), manual.len());
}

#[test]
fn spec_9_1_1_apply_then_check_passes_on_a_drifted_debian_root() {
    let root = materialize("drifted");
    let r = root.path();
    let (before, plan) = rampart_posture::plan(r);
    let failed: Vec<&str> = before.failed().map(|c| c.id.as_str()).collect();
    assert!(
        failed.contains(&"ssh.permit_root_login"),
        "OpenSSH's default prohibit-password"
    );
    assert!(failed.contains(&"ssh.macs"), "OpenSSH's default MACs include SHA-1");
    assert!(failed.contains(&"sysctl.accept_redirects"));
    assert!(failed.contains(&"files.world_writable"));
    assert!(plan.manual.is_empty(), "{:?}", plan.manual);
    // The Debian file already includes the drop-in directory: the main file is not touched.
    assert!(plan.edits.iter().all(|e| e.path != "/etc/ssh/sshd_config"));
    apply::execute(r, &plan, "1").unwrap();
    let (_, after) = rampart_posture::check(r);
    assert!(after.all_pass(), "{:#?}", after.failed().collect::<Vec<_>>());
    assert_eq!(status_of(&after, "ssh.permit_root_login"), Status::Pass);
    assert!(rampart_posture::plan(r).1.is_empty());
}

#[test]
fn spec_9_1_1_dry_run_plans_change_nothing() {
    let root = materialize("drifted");
    let r = root.path();
    let snapshot = |p: &str| std::fs::read(r.join(p)).ok();
    let before = (
        snapshot("etc/login.defs"),
        snapshot("etc/ssh/sshd_config.d/50-rampart.conf"),
    );
    let (_, plan) = rampart_posture::plan(r);
    assert!(!apply::render_diff(&plan).is_empty());
    assert_eq!(
        before,
        (
            snapshot("etc/login.defs"),
            snapshot("etc/ssh/sshd_config.d/50-rampart.conf")
        )
    );
}

/// On the real host: real facts, a result for every check, each with its clause.
#[test]
fn spec_9_1_1_harden_check_runs_on_the_real_host() {
    if !require_root() {
        return;
    }
    let (facts, report) = rampart_posture::check(Path::new("/"));
    assert!(facts.live);
    assert_eq!(report.checks.len(), Catalogue::builtin().checks.len());
    for c in &report.checks {
        assert!(rampart_posture::CLAUSES.contains(&c.clause.as_str()), "{c:?}");
        assert!(!c.evidence.is_empty(), "{c:?}");
    }
    // Facts only a live host has were read: its processes, its own root namespace.
    assert!(facts.processes.as_ref().is_some_and(|p| !p.is_empty()));
    assert_ne!(status_of(&report, "proc.root_services"), Status::NotApplicable);
    assert!(facts.listeners.is_some());
    assert!(facts.sysctl["net.ipv4.ip_forward"].runtime.is_some());
    assert_ne!(status_of(&report, "sysctl.randomize_va_space"), Status::NotApplicable);
}
