//! The control plane's backup and restore end to end through the real binary (spec 14.2-1,
//! 14.2-2): `rampart system-backup create` while `rampart up` runs, the data directory
//! destroyed, `rampart system-restore` into a new one, and the restored controller serves the
//! same users, keys (an old ciphertext decrypts), CA and audit trail. Also the refusals (wrong
//! passphrase, a flipped byte, a cut file, a non-empty target) and the controller's periodic
//! backup with its copy, pruning, audit records and health.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use rampart_api::{Client, PasswordChange};
use rampart_common::Sensitive;
use rampart_testkit::MfaUser;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_rampart");
const ADMIN_PASSWORD: &str = "Orchid-lantern-93";
const KEYS_PASSWORD: &str = "Velvet-compass-71";
const PASSPHRASE: &str = "granite meadow lighthouse 4711";

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
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
    url: String,
    config: PathBuf,
}

impl Up {
    fn new(tmp: &Path, extra: &str) -> Up {
        let port = rampart_testkit::free_port();
        let config = tmp.join("rampart.toml");
        std::fs::write(
            &config,
            format!("[api]\nlisten = [\"127.0.0.1:{port}\"]\n[local_agent]\nenabled = false\n{extra}"),
        )
        .unwrap();
        Up {
            dir: tmp.to_path_buf(),
            url: format!("https://127.0.0.1:{port}"),
            config,
        }
    }

    fn start(&self, data: &Path) -> Proc {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("stderr.log"))
            .unwrap();
        Proc(
            Command::new(BIN)
                .args(["up", "--data-dir"])
                .arg(data)
                .arg("--config")
                .arg(&self.config)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }

    async fn anon(&self, data: &Path) -> Client {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(pem) = std::fs::read(data.join("ca.pem"))
                && let Ok(c) = Client::with_ca(&self.url, &pem)
                && c.health().await.is_ok()
            {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "rampart did not come up: {}",
                std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// `rampart ARGS`: (exit code, stdout, stderr).
fn rampart(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

async fn first_admin(anon: &Client, data: &Path) -> (Client, MfaUser) {
    let bootstrap = std::fs::read_to_string(data.join("bootstrap-admin-password")).unwrap();
    anon.change_password(&PasswordChange {
        username: "admin".into(),
        domain: None,
        current_password: Sensitive::new(bootstrap.trim()),
        new_password: Sensitive::new(ADMIN_PASSWORD),
        totp: None,
    })
    .await
    .unwrap();
    let mfa = MfaUser::enrol(anon, "admin", ADMIN_PASSWORD).await.unwrap();
    (mfa.login(anon).await.unwrap(), mfa)
}

async fn new_user(admin: &Client, name: &str, password: &str) -> Value {
    admin
        .post(
            "/v1/users",
            &json!({"name": name, "password": password, "password_change_required": false}),
        )
        .await
        .unwrap()
}

async fn grant(by: &Client, user: &Value, role: &str, project: &str) {
    let _: Value = by
        .post(
            "/v1/role-assignments",
            &json!({"user": user["id"], "role": role, "scope": {"project": project}}),
        )
        .await
        .unwrap_or_else(|e| panic!("grant {role}: {e}"));
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn spec_14_2_1_system_backup_restores_users_keys_and_audit() {
    let tmp = tempfile::tempdir().unwrap();
    let up = Up::new(tmp.path(), "");
    let data = tmp.path().join("data");
    let proc = up.start(&data);
    let anon = up.anon(&data).await;
    let (admin, admin_mfa) = first_admin(&anon, &data).await;

    // A project, its admin, a key admin named by that project admin, a key and a ciphertext.
    let project: Value = admin.post("/v1/projects", &json!({"name": "ledger"})).await.unwrap();
    let p = project["id"].as_str().unwrap().to_string();
    let padmin = new_user(&admin, "ledger-admin", KEYS_PASSWORD).await;
    grant(&admin, &padmin, "project-admin", &p).await;
    let (padmin_c, _) = anon.login_as("ledger-admin", KEYS_PASSWORD).await.unwrap();
    let keeper = new_user(&admin, "keeper", KEYS_PASSWORD).await;
    grant(&padmin_c, &keeper, "key-admin", &p).await;
    let (keeper_c, _) = anon.login_as("keeper", KEYS_PASSWORD).await.unwrap();
    let key: Value = keeper_c
        .post(&format!("/v1/projects/{p}/keys"), &json!({"name": "ledger-key"}))
        .await
        .unwrap();
    let k = key["id"].as_str().unwrap().to_string();
    // Separation of duties: the key admin names a key user, who encrypts.
    let clerk = new_user(&admin, "clerk", KEYS_PASSWORD).await;
    grant(&keeper_c, &clerk, "key-user", &p).await;
    let (clerk_c, _) = anon.login_as("clerk", KEYS_PASSWORD).await.unwrap();
    let plain = base64::engine::general_purpose::STANDARD.encode("attack at dawn");
    let sealed: Value = clerk_c
        .post(
            &format!("/v1/projects/{p}/keys/{k}/encrypt"),
            &json!({"plaintext": plain, "context": {"order": "42"}}),
        )
        .await
        .unwrap();

    // The backup, taken while the controller runs and is being written to.
    let pass = tmp.path().join("passphrase");
    std::fs::write(&pass, format!("{PASSPHRASE}\n")).unwrap();
    let backups = tmp.path().join("backups");
    std::fs::create_dir(&backups).unwrap();
    let writer = {
        let admin = admin.clone();
        tokio::spawn(async move {
            for i in 0..20 {
                let _: Result<Value, _> = admin.post("/v1/projects", &json!({"name": format!("busy-{i}")})).await;
            }
        })
    };
    let (code, out, err) = rampart(&[
        "system-backup",
        "create",
        "--data-dir",
        s(&data),
        "--config",
        s(&up.config),
        "--out",
        s(&backups),
        "--passphrase-file",
        s(&pass),
    ]);
    assert_eq!(code, 0, "create: {out}{err}");
    writer.await.unwrap();
    let listed = entries(&backups);
    assert_eq!(listed.len(), 1, "{listed:?}");
    let file = backups.join(&listed[0]);
    let (code, out, err) = rampart(&[
        "system-backup",
        "verify",
        s(&file),
        "--passphrase-file",
        s(&pass),
        "--json",
    ]);
    assert_eq!(code, 0, "verify: {err}");
    let manifest: Value = serde_json::from_str(&out).unwrap();
    let paths: Vec<&str> = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    for want in [
        "database/rampart.db",
        "config/rampart.toml",
        "data/ca.pem",
        "data/tls/server-key.pem",
        "data/tls/credential-key",
        "data/hsm/user.pin",
        "data/audit/checkpoint.key",
    ] {
        assert!(paths.contains(&want), "{want} missing from {paths:?}");
    }
    assert!(paths.iter().any(|p| p.starts_with("data/hsm/tokens/")), "{paths:?}");
    assert!(manifest["database"]["schema_version"].as_i64().unwrap() > 0);
    assert_eq!(manifest["rampart_version"], rampart_common::VERSION);
    let (code, out, _) = rampart(&["system-backup", "list", s(&backups)]);
    assert_eq!(code, 0);
    assert!(out.contains(&listed[0]), "{out}");

    // No plaintext secret in the file: passwords, PIN, key material, PEM armour, the database.
    let bytes = std::fs::read(&file).unwrap();
    let pin = std::fs::read(data.join("hsm/user.pin")).unwrap();
    let bootstrap_security = std::fs::read(data.join("bootstrap-security-password")).unwrap();
    for needle in [
        KEYS_PASSWORD.as_bytes(),
        ADMIN_PASSWORD.as_bytes(),
        PASSPHRASE.as_bytes(),
        &pin,
        bootstrap_security.trim_ascii(),
        b"PRIVATE KEY",
        b"BEGIN CERTIFICATE",
        b"SQLite format 3",
        b"ledger-key",
    ] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "{:?} found in the backup file",
            String::from_utf8_lossy(needle)
        );
    }

    // Disaster: the controller stops and its data directory is gone.
    let old_ca = std::fs::read(data.join("ca.pem")).unwrap();
    proc.stop();
    std::fs::remove_dir_all(&data).unwrap();

    // The refusals: each names its cause, exits non-zero and leaves no directory behind.
    let restored = tmp.path().join("restored");
    let wrong = tmp.path().join("wrong-passphrase");
    std::fs::write(&wrong, "not the right passphrase").unwrap();
    let restore = |from: &Path, pass: &Path| {
        rampart(&[
            "system-restore",
            "--from",
            s(from),
            "--passphrase-file",
            s(pass),
            "--data-dir",
            s(&restored),
        ])
    };
    let (code, _, err) = restore(&file, &wrong);
    assert_ne!(code, 0);
    assert!(err.contains("wrong passphrase"), "{err}");
    let bad = tmp.path().join("bad.rsbk");
    let mut flipped = bytes.clone();
    let at = bytes.len() * 2 / 3;
    flipped[at] ^= 0x20;
    std::fs::write(&bad, &flipped).unwrap();
    let (code, _, err) = restore(&bad, &pass);
    assert_ne!(code, 0);
    assert!(err.contains("damaged"), "{err}");
    std::fs::write(&bad, &bytes[..bytes.len() - 1000]).unwrap();
    let (code, _, err) = restore(&bad, &pass);
    assert_ne!(code, 0);
    assert!(err.contains("truncated") || err.contains("damaged"), "{err}");
    assert!(!restored.exists());
    assert!(
        entries(tmp.path()).iter().all(|n| !n.contains(".restore-")),
        "{:?}",
        entries(tmp.path())
    );
    std::fs::create_dir(&restored).unwrap();
    std::fs::write(restored.join("someone-else"), "x").unwrap();
    let (code, _, err) = restore(&file, &pass);
    assert_ne!(code, 0);
    assert!(err.contains("not empty"), "{err}");
    std::fs::remove_dir_all(&restored).unwrap();

    // The restore, and the controller on it.
    let (code, out, err) = restore(&file, &pass);
    assert_eq!(code, 0, "restore: {out}{err}");
    assert_eq!(std::fs::read(restored.join("ca.pem")).unwrap(), old_ca);
    let proc = up.start(&restored);
    let anon = up.anon(&restored).await;
    // The old CA still authenticates the restored controller: clients and agents keep it.
    Client::with_ca(&up.url, &old_ca).unwrap().health().await.unwrap();
    let admin = admin_mfa
        .login(&anon)
        .await
        .expect("the admin logs in with its password and TOTP");
    let projects: Value = admin.get("/v1/projects").await.unwrap();
    assert!(
        projects["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["name"] == "ledger"),
        "{projects}"
    );
    let (clerk_c, _) = anon
        .login_as("clerk", KEYS_PASSWORD)
        .await
        .expect("the key user logs in");
    let opened: Value = clerk_c
        .post(
            &format!("/v1/projects/{p}/keys/{k}/decrypt"),
            &json!({"ciphertext": sealed["ciphertext"], "context": {"order": "42"}}),
        )
        .await
        .expect("the old ciphertext decrypts with the restored HSM token");
    assert_eq!(opened["plaintext"], plain);
    proc.stop();
    let (code, out, err) = rampart(&["audit", "verify", "--data-dir", s(&restored), "--config", s(&up.config)]);
    assert_eq!(code, 0, "audit verify on the restored trail: {out}{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn spec_14_2_2_periodic_backup_copies_prunes_audits_and_reports_failure() {
    let tmp = tempfile::tempdir().unwrap();
    let pass = tmp.path().join("passphrase");
    std::fs::write(&pass, PASSPHRASE).unwrap();
    let local = tmp.path().join("local");
    let remote = tmp.path().join("remote");
    let up = Up::new(
        tmp.path(),
        &format!(
            "[backup.system]\npassphrase_file = {:?}\ninterval_s = 1\nkeep = 2\ndir = {:?}\ncopy_to = {:?}\n",
            s(&pass),
            s(&local),
            s(&remote)
        ),
    );
    let data = tmp.path().join("data");
    let proc = up.start(&data);
    let anon = up.anon(&data).await;

    // At least four runs seen, two kept in each directory.
    let mut seen = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        seen.extend(entries(&local).into_iter().filter(|n| n.ends_with(".rsbk")));
        if seen.len() >= 4 && entries(&local).len() == 2 && entries(&remote).len() == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "seen {seen:?}, local {:?}, remote {:?}",
            entries(&local),
            entries(&remote)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let newest = entries(&remote).pop().unwrap();
    let (code, _, err) = rampart(&[
        "system-backup",
        "verify",
        s(&remote.join(&newest)),
        "--passphrase-file",
        s(&pass),
    ]);
    assert_eq!(code, 0, "{err}");

    // Each run is an audit record.
    let (code, out, err) = rampart(&[
        "audit",
        "list",
        "--operation",
        "system.backup.create",
        "--data-dir",
        s(&data),
        "--config",
        s(&up.config),
    ]);
    assert_eq!(code, 0, "{err}");
    let ok = out.lines().filter(|l| l.contains("\"success\"")).count();
    assert!(ok >= 3, "{out}");

    // A failing run (the passphrase file is gone) makes the controller degraded, with why.
    std::fs::remove_file(&pass).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let h = anon.health().await.unwrap();
        if h.status == "degraded" {
            assert!(h.reason.as_deref().unwrap_or("").contains("system backup"), "{h:?}");
            break;
        }
        assert!(Instant::now() < deadline, "still {h:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    proc.stop();
    let (_, out, _) = rampart(&[
        "audit",
        "list",
        "--operation",
        "system.backup.create",
        "--result",
        "failure",
        "--data-dir",
        s(&data),
        "--config",
        s(&up.config),
    ]);
    assert!(
        out.contains("passphrase"),
        "the failure is recorded with its cause: {out}"
    );
}
