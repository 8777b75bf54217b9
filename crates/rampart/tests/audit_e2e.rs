//! The audit trail end to end through the real binary, started the README's way: offline
//! verification of the same database with tampering (a changed byte, a deleted row, a cut
//! tail), black-box dumps (SIGUSR2 without stopping, a real panic) recorded in the trail, and
//! the canary scan: secrets planted through the API are found in no log, record, dump, queue
//! or forwarded message.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rampart_api::{Client, LoginRequest, PasswordChange};
use rampart_audit::AuditRecord;
use rampart_common::Sensitive;
use rampart_testkit::MfaUser;
use rampart_testkit::rsyslog::{Rsyslog, available};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_rampart");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// SIGTERM and wait: the controller writes its final checkpoint.
    fn stop(mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.0.id().to_string()).status();
        let start = Instant::now();
        while self.0.try_wait().unwrap().is_none() {
            assert!(start.elapsed() < Duration::from_secs(30), "rampart did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

struct Up {
    dir: PathBuf,
    data: PathBuf,
    url: String,
    config: PathBuf,
}

impl Up {
    fn new(tmp: &Path, extra: &str) -> Up {
        let port = free_port();
        let config = tmp.join("rampart.toml");
        std::fs::write(
            &config,
            format!("[api]\nlisten = [\"127.0.0.1:{port}\"]\n[local_agent]\nenabled = false\n{extra}"),
        )
        .unwrap();
        Up {
            dir: tmp.to_path_buf(),
            data: tmp.join("data"),
            url: format!("https://127.0.0.1:{port}"),
            config,
        }
    }

    fn start(&self) -> Proc {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("stderr.log"))
            .unwrap();
        Proc(
            Command::new(BIN)
                .args(["up", "--data-dir"])
                .arg(&self.data)
                .arg("--config")
                .arg(&self.config)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }

    async fn anon(&self) -> Client {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(pem) = std::fs::read(self.data.join("ca.pem"))
                && let Ok(c) = Client::with_ca(&self.url, &pem)
                && c.health().await.is_ok()
            {
                return c;
            }
            assert!(Instant::now() < deadline, "rampart did not come up");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// First login of the bootstrap admin: new password, TOTP enrolment.
    async fn admin(&self, anon: &Client, password: &str) -> (Client, MfaUser) {
        let bootstrap = std::fs::read_to_string(self.data.join("bootstrap-admin-password")).unwrap();
        anon.change_password(&PasswordChange {
            username: "admin".into(),
            domain: None,
            current_password: Sensitive::new(bootstrap.trim()),
            new_password: Sensitive::new(password),
            totp: None,
        })
        .await
        .unwrap();
        let mfa = MfaUser::enrol(anon, "admin", password).await.unwrap();
        (mfa.login(anon).await.unwrap(), mfa)
    }

    fn audit(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(BIN)
            .arg("audit")
            .args(args)
            .arg("--data-dir")
            .arg(&self.data)
            .arg("--config")
            .arg(&self.config)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }

    async fn sql(&self, sql: &str) {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let url = format!("sqlite://{}", self.data.join("rampart.db").display());
        let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        conn.close().await.unwrap();
    }
}

impl Up {
    /// `rampart admin ARGS --data-dir … --config …`, optionally under another uid.
    fn admin_cli(&self, args: &[&str], as_uid: Option<u32>) -> (i32, String, String) {
        let mut cmd = match as_uid {
            Some(uid) => {
                let mut c = Command::new("setpriv");
                c.args([
                    format!("--reuid={uid}"),
                    format!("--regid={uid}"),
                    "--clear-groups".into(),
                    BIN.into(),
                ]);
                c
            }
            None => Command::new(BIN),
        };
        let out = cmd
            .arg("admin")
            .args(args)
            .arg("--data-dir")
            .arg(&self.data)
            .arg("--config")
            .arg(&self.config)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }
}

/// The break-glass way to a security admin (13.1.1-2): refused to anyone but root, refused
/// while the controller runs, then a usable `security` with a new one-time password, and the
/// recovery is in the audit trail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_1_1_2_break_glass_recovers_a_security_admin_only_as_root_with_the_controller_stopped() {
    if !rampart_testkit::privileged() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let up = Up::new(tmp.path(), "");
    let proc = up.start();
    let anon = up.anon().await;
    let (admin, _) = up.admin(&anon, "Break-glass-passw0rd").await;
    // The bootstrap security admin loses its second factor and nobody else holds the role.
    let (sec, _) = rampart_testkit::up::security_officer(&anon, &up.data, "Lost-device-officer-71").await;
    sec.current_token().await.unwrap();
    let recover = ["recover-security-admin"];
    let (code, _, err) = up.admin_cli(&recover, None);
    assert_eq!(code, 2, "refused while the controller runs: {err}");
    assert!(err.contains("stop the controller"), "{err}");
    proc.stop();
    let (code, _, err) = up.admin_cli(&recover, Some(65534));
    assert_eq!(code, 2, "refused to a non-root user: {err}");
    assert!(err.contains("root"), "{err}");
    let (code, out, err) = up.admin_cli(&recover, None);
    assert_eq!(code, 0, "{out}\n{err}");
    let file = up.data.join("bootstrap-security-password");
    assert_eq!(rampart_common::fsutil::mode_of(&file).unwrap(), 0o600);
    let one_time = std::fs::read_to_string(&file).unwrap();
    // Back up: the old session is gone, the one-time password must be changed, then a second
    // factor enrolled again.
    let _proc = up.start();
    let anon = up.anon().await;
    assert!(
        sec.current_token().await.is_err(),
        "the recovered account's sessions ended"
    );
    let e = anon.login_as("security", one_time.trim()).await.unwrap_err();
    assert_eq!(e.code(), Some("password_change_required"));
    let (officer, _) = rampart_testkit::up::security_officer(&anon, &up.data, "Found-again-officer-72").await;
    officer.get::<Value>("/v1/security-compliance").await.unwrap();
    assert!(!file.exists(), "the spent one-time password is removed");
    drop(admin);
    let (code, out, _) = up.audit(&["list", "--operation", "security_admin.recover"]);
    assert_eq!(code, 0);
    let recs: Vec<AuditRecord> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(recs.len(), 1, "{out}");
    assert_eq!(recs[0].actor.name.as_deref(), Some("rampart-cli"));
    assert_eq!(recs[0].result.outcome, rampart_audit::record::Outcome::Success);
}

fn problems(report: &str) -> Vec<(u64, String)> {
    let v: Value = serde_json::from_str(report).unwrap_or_else(|e| panic!("{e}: {report}"));
    v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["seq"].as_u64().unwrap(), p["kind"].as_str().unwrap().to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_4_1_offline_verify_reads_the_same_database_and_names_tampering() {
    let tmp = tempfile::tempdir().unwrap();
    let up = Up::new(tmp.path(), "[audit]\ncheckpoint_every_records = 5\n");
    let proc = up.start();
    let anon = up.anon().await;
    let (admin, _) = up.admin(&anon, "Offline-verify-passw0rd").await;
    for i in 0..12 {
        admin
            .send(
                http::Method::POST,
                "/v1/groups",
                Some(&json!({"name": format!("g{i}")})),
            )
            .await
            .unwrap();
    }
    proc.stop();

    let (code, out, err) = up.audit(&["verify"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["ok"], true);
    let total = report["checked"].as_u64().unwrap();
    assert!(total >= 15, "{report}");
    // Nothing was written by verifying.
    let (code, out, _) = up.audit(&["list", "--operation", "group.*", "--result", "success"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 12);
    // Each change was first written ahead as pending.
    let (code, pending, _) = up.audit(&["list", "--operation", "group.*", "--result", "pending"]);
    assert_eq!(code, 0);
    assert_eq!(pending.lines().count(), 12);
    let first: AuditRecord = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(first.operation, "group.create");
    let (code, out, _) = up.audit(&["export", "--format", "cef", "--operation", "group.create"]);
    assert_eq!(code, 0);
    assert!(out.lines().all(|l| l.starts_with("CEF:0|Rampart|")), "{out}");

    // One changed byte.
    let seq = first.seq;
    up.sql(&format!(
        "DROP TRIGGER audit_records_no_update; DROP TRIGGER audit_records_no_delete; \
         UPDATE audit_records SET target_id = 'x' || target_id WHERE seq = {seq}"
    ))
    .await;
    let (code, out, _) = up.audit(&["verify"]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(problems(&out), vec![(seq, "modified".to_string())]);
    // A deleted row.
    up.sql(&format!("DELETE FROM audit_records WHERE seq = {}", seq + 2))
        .await;
    let (code, out, _) = up.audit(&["verify"]);
    assert_eq!(code, 1);
    assert!(problems(&out).contains(&(seq + 2, "missing".to_string())), "{out}");
    // A cut tail: the last checkpoint attests what is gone.
    let (_, listed, _) = up.audit(&["list"]);
    let last: AuditRecord = serde_json::from_str(listed.lines().last().unwrap()).unwrap();
    up.sql(&format!("DELETE FROM audit_records WHERE seq > {}", last.seq - 4))
        .await;
    let (code, out, _) = up.audit(&["verify"]);
    assert_eq!(code, 1);
    let p = problems(&out);
    assert!(
        p.iter().any(|(s, k)| k == "truncated" && *s == last.seq - 3),
        "{p:?} (last seq {})",
        last.seq
    );
    // A forged checkpoint signature.
    up.sql("DROP TRIGGER audit_checkpoints_no_update; UPDATE audit_checkpoints SET checkpoint = replace(checkpoint, '\"kind\":\"periodic\"', '\"kind\":\"boundary\"') WHERE seq = 1").await;
    let (code, out, _) = up.audit(&["verify"]);
    assert_eq!(code, 1);
    assert!(problems(&out).iter().any(|(_, k)| k == "bad_signature"), "{out}");
    // No database at all: a clear error, exit 3.
    let (code, _, err) = Up {
        data: tmp.path().join("nowhere"),
        ..Up::new(tmp.path(), "")
    }
    .audit(&["verify"]);
    assert_eq!(code, 3, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_4_3_black_box_dumps_on_sigusr2_and_panic_are_written_and_audited() {
    let tmp = tempfile::tempdir().unwrap();
    let up = Up::new(tmp.path(), "");
    // A real panic of the binary (the hook of `rampart up`), before any controller ran.
    let out = Command::new(BIN)
        .args(["debug-crash", "--data-dir"])
        .arg(&up.data)
        .arg("--config")
        .arg(&up.config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(101), "a panic exits 101");
    let dumps = |kind: &str| dumps_in(&up.data, kind);
    let panic_dump = dumps("panic").pop().expect("panic dump");
    assert_eq!(rampart_common::fsutil::mode_of(&panic_dump).unwrap(), 0o600);
    let d: Value = serde_json::from_slice(&std::fs::read(&panic_dump).unwrap()).unwrap();
    assert_eq!(d["kind"], "panic");
    assert!(d["location"].as_str().unwrap().contains("main.rs"), "{d}");
    assert!(d["message"].as_str().unwrap().contains("deliberate panic"));
    assert!(d["backtrace"].as_str().unwrap().len() > 20);
    assert!(d["config_digest"].as_str().unwrap().starts_with("sha256:"));
    assert!(d["build_id"].is_string());
    let events = d["events"].as_array().unwrap();
    assert!(
        events.iter().any(|e| e["message"] == "debug-crash: about to fail"),
        "the flight recorder's last events: {events:?}"
    );

    // `rampart up` records the dump it finds, and SIGUSR2 dumps without stopping.
    let proc = up.start();
    let anon = up.anon().await;
    let (admin, _) = up.admin(&anon, "Black-box-passw0rd").await;
    let _ = Command::new("kill").arg("-USR2").arg(proc.0.id().to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while dumps("signal").is_empty() {
        assert!(Instant::now() < deadline, "no dump after SIGUSR2");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let signal: Value = serde_json::from_slice(&std::fs::read(dumps("signal").pop().unwrap()).unwrap()).unwrap();
    assert_eq!(signal["kind"], "signal");
    assert!(
        signal["events"].as_array().unwrap().len() > 5,
        "recent run-log events in the dump"
    );
    assert!(anon.health().await.is_ok(), "still serving after SIGUSR2");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list: rampart_api::List<AuditRecord> = admin
            .get("/v1/audit/events?operation=system.blackbox.dump")
            .await
            .unwrap();
        let kinds: Vec<&str> = list.items.iter().map(|r| r.details["kind"].as_str().unwrap()).collect();
        if kinds.contains(&"panic") && kinds.contains(&"signal") {
            let p = list.items.iter().find(|r| r.details["kind"] == "panic").unwrap();
            assert_eq!(p.result.status, 500);
            assert!(p.details["location"].as_str().unwrap().contains("main.rs"));
            break;
        }
        assert!(Instant::now() < deadline, "dumps not recorded: {kinds:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    proc.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_4_7_canary_secrets_reach_no_log_record_dump_queue_or_receiver() {
    if !available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let recv_dir = tmp.path().join("rsyslog");
    std::fs::create_dir_all(&recv_dir).unwrap();
    let mut rsyslog = Rsyslog::new(&recv_dir);
    rsyslog.start();
    let up = Up::new(
        tmp.path(),
        "[log]\nlevel = \"debug\"\n[audit]\nforward_probe_interval_s = 1\nforward_retry_max_s = 1\ncheckpoint_every_records = 5\n",
    );
    let proc = up.start();
    let anon = up.anon().await;
    let canary = |label: &str| rampart_audit::canary::new_canary(label);
    let admin_password = format!("Aa1-{}", canary("bootstrap-pw"));
    let (admin, mfa) = up.admin(&anon, &admin_password).await;
    // The bootstrap security admin (MFA) routes the trail to the receiver.
    let sec_password = format!("Aa1-{}", canary("officer-pw"));
    let (sec, sec_mfa) = rampart_testkit::up::security_officer(&anon, &up.data, &sec_password).await;
    sec.send(
        http::Method::PUT,
        "/v1/audit/forwarding",
        Some(&rsyslog.forwarding_settings()),
    )
    .await
    .unwrap();

    // Secrets through every door: a user's password, a wrong password, a password typed into
    // the user name, a weak new password refused by policy, an application credential secret,
    // a join token, bearer tokens, TOTP secrets.
    let user_password = format!("Aa1-{}", canary("user-password"));
    let _: Value = admin
        .post(
            "/v1/users",
            &json!({"name": "dora", "password": user_password, "password_change_required": false}),
        )
        .await
        .unwrap();
    let wrong = canary("wrong-password");
    let typed = canary("typed-as-username");
    assert!(anon.login(&login("dora", &wrong)).await.is_err());
    assert!(anon.login(&login(&typed, &wrong)).await.is_err());
    // A password change refused (wrong current password): both values are secrets.
    let weak = canary("refused-new-password");
    let wrong_current = canary("wrong-current-password");
    assert!(
        anon.change_password(&PasswordChange {
            username: "dora".into(),
            domain: None,
            current_password: Sensitive::new(&wrong_current),
            new_password: Sensitive::new(&weak),
            totp: None,
        })
        .await
        .is_err()
    );
    let (dora, dora_token) = anon.login_as("dora", &user_password).await.unwrap();
    let project: Value = admin.get("/v1/projects").await.unwrap();
    let pid = project["items"][0]["id"].clone();
    let _: Value = admin
        .post(
            "/v1/role-assignments",
            &json!({"user": dora_token.user.id, "role": "member", "scope": {"project": pid}}),
        )
        .await
        .unwrap();
    let cred: Value = dora
        .post(
            "/v1/application-credentials",
            &json!({"name": "ci", "project": "admin"}),
        )
        .await
        .unwrap();
    let join: rampart_api::JoinToken = admin
        .create_join_token(&rampart_api::JoinTokenCreate::default())
        .await
        .unwrap();
    dora.logout().await.unwrap();
    let _ = Command::new("kill").arg("-USR2").arg(proc.0.id().to_string()).status();

    let mut secrets: Vec<String> = vec![
        admin_password,
        sec_password,
        user_password,
        wrong,
        typed,
        weak,
        wrong_current,
        cred["secret"].as_str().unwrap().to_string(),
        join.token.expose().to_string(),
        dora_token.token.expose().to_string(),
        admin.token().unwrap().expose().to_string(),
        sec.token().unwrap().expose().to_string(),
        mfa.secret.expose().to_string(),
        sec_mfa.secret.expose().to_string(),
    ];
    secrets.retain(|s| !s.is_empty());

    // The dump (it hashes the binary first: slow on a busy machine) and its record, then
    // everything reaches the receiver before we look.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let dumps: Value = sec
            .get("/v1/audit/events?operation=system.blackbox.dump")
            .await
            .unwrap();
        if !dumps["items"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "no black-box dump recorded after SIGUSR2");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s: Value = sec.get("/v1/audit/forwarding").await.unwrap();
        let st = &s["status"];
        if st["active"] == true && st["pending"] == 0 && st["delivered"].as_u64().unwrap_or(0) > 20 {
            break;
        }
        assert!(Instant::now() < deadline, "forwarding did not drain: {s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(rsyslog.output().contains("auth.login"), "records reached the receiver");
    assert!(std::fs::read_dir(up.data.join("blackbox")).unwrap().count() > 0);
    proc.stop();
    rsyslog.stop();

    let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
    // The whole data directory: database (audit store included), run logs, black-box dumps,
    // the forwarding queue; the receiver's output; the controller's standard error.
    let received = rsyslog.output_path();
    let stderr = up.dir.join("stderr.log");
    let scanned = [up.data.as_path(), received.as_path(), stderr.as_path()];
    let hits = rampart_audit::canary::scan_paths(&scanned, &refs).unwrap();
    assert!(hits.is_empty(), "secrets found: {hits:?}");
    // The scanner works: the canary file of a planted secret is found.
    std::fs::write(tmp.path().join("planted"), format!("x{}x", refs[0])).unwrap();
    let planted = [tmp.path().join("planted")];
    let planted: Vec<&Path> = planted.iter().map(PathBuf::as_path).collect();
    assert_eq!(rampart_audit::canary::scan_paths(&planted, &refs).unwrap().len(), 1);
}

fn login(user: &str, password: &str) -> LoginRequest {
    LoginRequest {
        username: user.into(),
        password: Some(Sensitive::new(password)),
        domain: None,
        project: None,
        totp: None,
        application_credential: None,
    }
}

/// The black-box dumps of kind `kind` in `data_dir/blackbox`.
fn dumps_in(data_dir: &Path, kind: &str) -> Vec<PathBuf> {
    std::fs::read_dir(data_dir.join("blackbox"))
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    let n = p.file_name().unwrap().to_string_lossy();
                    n.starts_with(kind) && n.ends_with(".json")
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn spec_13_4_3_standalone_agent_has_a_black_box() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("agent");
    // A "controller" on loopback that accepts and never answers: the agent stays in its join.
    let stall = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}", stall.local_addr().unwrap());
    let token_file = tmp.path().join("join-token");
    let token = format!(
        "rjt1.{}.{}.{}",
        uuid::Uuid::new_v4().simple(),
        "s3cret".repeat(5),
        "ab".repeat(32)
    );
    std::fs::write(&token_file, &token).unwrap();
    let mut agent = Proc(
        Command::new(BIN)
            .args(["agent", "--controller", &url, "--join-file"])
            .arg(&token_file)
            .arg("--data-dir")
            .arg(&data)
            .args(["--accel", "tcg", "--vm-state-dir"])
            .arg(tmp.path().join("vms"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (held, _) = stall.accept().unwrap();

    // SIGUSR2: a dump, the agent going on.
    let _ = Command::new("kill").arg("-USR2").arg(agent.0.id().to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while dumps_in(&data, "signal").is_empty() {
        assert!(Instant::now() < deadline, "no agent dump after SIGUSR2");
        std::thread::sleep(Duration::from_millis(100));
    }
    let signal_dump = dumps_in(&data, "signal").pop().unwrap();
    assert_eq!(rampart_common::fsutil::mode_of(&signal_dump).unwrap(), 0o600);
    assert!(agent.0.try_wait().unwrap().is_none(), "still running after SIGUSR2");

    // The join fails (the "controller" hangs up): the fatal path dumps too, with the flight
    // recorder's last run-log events, and no join token anywhere in it.
    drop(held);
    drop(stall);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = agent.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the agent did not give up its join");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(1));
    let mut stderr = String::new();
    std::io::Read::read_to_string(agent.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("black-box dump written to"), "{stderr}");
    let fatal = dumps_in(&data, "fatal").pop().expect("a fatal dump");
    for path in [&signal_dump, &fatal] {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(!text.contains(&token), "no join token in {}", path.display());
        let d: Value = serde_json::from_str(&text).unwrap();
        assert!(d["config_digest"].as_str().unwrap().starts_with("sha256:"), "{d}");
        assert!(d["backtrace"].as_str().unwrap().len() > 20);
        let events = d["events"].as_array().unwrap();
        assert!(!events.is_empty(), "the flight recorder's events: {d}");
    }
    let d: Value = serde_json::from_slice(&std::fs::read(&fatal).unwrap()).unwrap();
    assert_eq!(d["kind"], "fatal");
    assert!(!d["message"].as_str().unwrap().is_empty(), "{d}");
}
