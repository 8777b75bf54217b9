//! The README's first steps with the CLI, through the real binary: change the bootstrap
//! password, log in (enrolment-only token), enrol TOTP, log in with the code, administer.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_rampart");

struct Proc(std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn cli(home: &Path, ca: &Path, args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> (bool, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("XDG_CONFIG_HOME", home)
        .env("RAMPART_CA", ca)
        .env_remove("RAMPART_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_2_2_readme_first_steps_with_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = tmp.path().join("rampart.toml");
    std::fs::write(
        &config,
        format!("[api]\nlisten = [\"127.0.0.1:{port}\"]\n[log]\nstderr = false\n"),
    )
    .unwrap();
    let data = tmp.path().join("data");
    let _up = Proc(
        Command::new(BIN)
            .args(["up", "--data-dir"])
            .arg(&data)
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let ca = data.join("ca.pem");
    let url = format!("https://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    // The files appear before the listener does: wait for both, or the first CLI call races it.
    while !data.join("bootstrap-admin-password").exists()
        || !ca.exists()
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
    {
        assert!(Instant::now() < deadline, "rampart up did not start");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let home = tmp.path().join("home");
    let bootstrap = std::fs::read_to_string(data.join("bootstrap-admin-password")).unwrap();
    let url_arg = ["--url", url.as_str()];

    let (ok, _, err) = cli(
        &home,
        &ca,
        &["passwd", "--user", "admin", url_arg[0], url_arg[1]],
        &[
            ("RAMPART_PASSWORD", bootstrap.trim()),
            ("RAMPART_NEW_PASSWORD", "Puffin-shingle-26"),
        ],
        None,
    );
    assert!(ok, "{err}");
    let (ok, _, err) = cli(
        &home,
        &ca,
        &["login", "--user", "admin", url_arg[0], url_arg[1]],
        &[("RAMPART_PASSWORD", "Puffin-shingle-26")],
        None,
    );
    assert!(ok && err.contains("MfaEnrollment"), "{err}");
    let session = home.join("rampart/session.json");
    assert_eq!(rampart_common::fsutil::mode_of(&session).unwrap(), 0o600);
    assert!(
        !std::fs::read_to_string(&session).unwrap().contains("Puffin-shingle-26"),
        "no password in the session file"
    );
    let (ok, _, _) = cli(&home, &ca, &["user", "list"], &[], None);
    assert!(!ok, "an enrolment-only session administers nothing");

    // `rampart mfa-enrol` prints the secret, then reads a code.
    let mut child = Command::new(BIN)
        .arg("mfa-enrol")
        .env("XDG_CONFIG_HOME", &home)
        .env("RAMPART_CA", &ca)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut secret = None;
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap() > 0 {
        if let Some(s) = line.trim().strip_prefix("(secret ").and_then(|s| s.strip_suffix(')')) {
            secret = Some(s.to_string());
            break;
        }
        line.clear();
    }
    let secret = secret.expect("secret printed");
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as u64;
    let code = rampart_iam::totp::code_at(&secret, now).unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{code}\n").as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());

    let next = rampart_iam::totp::code_at(&secret, now + 30).unwrap();
    let (ok, _, err) = cli(
        &home,
        &ca,
        &["login", "--user", "admin"],
        &[("RAMPART_PASSWORD", "Puffin-shingle-26")],
        Some(&format!("{next}\n")),
    );
    assert!(ok && err.contains("Full"), "{err}");
    let (ok, out, err) = cli(
        &home,
        &ca,
        &["user", "create", "bob"],
        &[("RAMPART_NEW_PASSWORD", "Gadwall-ember-93")],
        None,
    );
    assert!(ok, "{err}");
    let bob: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        bob["password_change_required"], true,
        "an admin-set password is changed at first use"
    );
    let (ok, out, _) = cli(&home, &ca, &["user", "list"], &[], None);
    assert!(ok && out.contains("\"bob\""));
    let (ok, out, err) = cli(&home, &ca, &["project", "create", "vault"], &[], None);
    assert!(ok, "{err}");
    let project: serde_json::Value = serde_json::from_str(&out).unwrap();
    let (project, bob) = (
        project["id"].as_str().unwrap().to_string(),
        bob["id"].as_str().unwrap().to_string(),
    );
    // Tenant keys stay with the tenant (13.1.1-2): the system admin gives the project an
    // admin, carol; she names bob its first key admin; bob lets her use the keys.
    let (ok, out, err) = cli(
        &home,
        &ca,
        &["user", "create", "carol"],
        &[("RAMPART_NEW_PASSWORD", "Shelduck-amber-27")],
        None,
    );
    assert!(ok, "{err}");
    let carol: serde_json::Value = serde_json::from_str(&out).unwrap();
    let carol = carol["id"].as_str().unwrap().to_string();
    let (ok, _, err) = cli(
        &home,
        &ca,
        &[
            "role",
            "grant",
            "project-admin",
            "--user",
            &carol,
            "--project",
            &project,
        ],
        &[],
        None,
    );
    assert!(ok, "{err}");
    let (ok, _, err) = cli(
        &home,
        &ca,
        &["role", "grant", "key-user", "--user", &bob, "--project", &project],
        &[],
        None,
    );
    assert!(!ok && err.contains("403"), "the system admin grants no key role: {err}");
    // 12.1-1 with the CLI: a signing key made locally, its public half trusted, an image signed,
    // streamed up and verified by the controller, then listed, shown and deleted.
    let (ok, out, err) = cli(&home, &ca, &["project", "list"], &[], None);
    assert!(ok, "{err}");
    let projects: serde_json::Value = serde_json::from_str(&out).unwrap();
    let own = projects["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "admin")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (private, public, disk) = (
        tmp.path().join("image.key"),
        tmp.path().join("image.pub"),
        tmp.path().join("disk.raw"),
    );
    std::fs::write(&disk, vec![0x5a_u8; 1 << 20]).unwrap();
    let p = |x: &Path| x.to_str().unwrap().to_string();
    let image = |args: &[&str]| {
        let mut all = vec!["image"];
        all.extend_from_slice(args);
        let (ok, out, err) = cli(&home, &ca, &all, &[], None);
        assert!(ok, "rampart image {args:?}: {err}");
        out
    };
    image(&["keygen", &p(&private), &p(&public)]);
    assert_eq!(rampart_common::fsutil::mode_of(&private).unwrap(), 0o600);
    image(&["trust", &p(&public), "--name", "cli-release", "--project", &own]);
    image(&["sign", &p(&disk), "--key", &p(&private)]);
    let up: serde_json::Value = serde_json::from_str(&image(&[
        "upload",
        &p(&disk),
        "--project",
        &own,
        "--name",
        "cli-disk",
        "--format",
        "raw",
    ]))
    .unwrap();
    assert_eq!(
        (up["status"].as_str(), up["signature_verified"].as_bool()),
        (Some("active"), Some(true)),
        "{up}"
    );
    assert_eq!(up["size_bytes"], 1 << 20);
    let id = up["id"].as_str().unwrap().to_string();
    assert!(image(&["list", "--project", &own]).contains(&id));
    assert!(image(&["show", &id, "--project", &own]).contains("cli-disk"));
    image(&["delete", &id, "--project", &own]);
    assert!(!image(&["list", "--project", &own]).contains(&id));
    // A file changed after signing is refused, and says why.
    std::fs::write(&disk, vec![0xa5_u8; 1 << 20]).unwrap();
    let (ok, _, err) = cli(
        &home,
        &ca,
        &[
            "image",
            "upload",
            &p(&disk),
            "--project",
            &own,
            "--name",
            "cli-tampered",
            "--format",
            "raw",
        ],
        &[],
        None,
    );
    assert!(
        !ok && err.contains("policy_violation") && err.contains("integrity"),
        "{err}"
    );

    let (ok, _, _) = cli(&home, &ca, &["logout"], &[], None);
    assert!(ok && !session.exists());

    // Carol, the project's admin, names bob its first key admin.
    let (ok, _, err) = cli(
        &home,
        &ca,
        &["passwd", "--user", "carol", url_arg[0], url_arg[1]],
        &[
            ("RAMPART_PASSWORD", "Shelduck-amber-27"),
            ("RAMPART_NEW_PASSWORD", "Shelduck-amber-28x"),
        ],
        None,
    );
    assert!(ok, "{err}");
    let (ok, _, err) = cli(
        &home,
        &ca,
        &["login", "--user", "carol", url_arg[0], url_arg[1]],
        &[("RAMPART_PASSWORD", "Shelduck-amber-28x")],
        None,
    );
    assert!(ok, "{err}");
    let (ok, _, err) = cli(
        &home,
        &ca,
        &["role", "grant", "key-admin", "--user", &bob, "--project", &project],
        &[],
        None,
    );
    assert!(ok, "{err}");
    let (ok, _, _) = cli(&home, &ca, &["logout"], &[], None);
    assert!(ok);

    // Bob changes his admin-set password, logs in, makes a key and lets carol use it; she
    // encrypts and decrypts with it (12.4, 13.3-1).
    let (ok, _, err) = cli(
        &home,
        &ca,
        &["passwd", "--user", "bob", url_arg[0], url_arg[1]],
        &[
            ("RAMPART_PASSWORD", "Gadwall-ember-93"),
            ("RAMPART_NEW_PASSWORD", "Teal-harbour-58"),
        ],
        None,
    );
    assert!(ok, "{err}");
    let (ok, _, err) = cli(
        &home,
        &ca,
        &["login", "--user", "bob", url_arg[0], url_arg[1]],
        &[("RAMPART_PASSWORD", "Teal-harbour-58")],
        None,
    );
    assert!(ok, "{err}");
    let (ok, out, err) = cli(
        &home,
        &ca,
        &["key", "create", "orders", "--project", &project],
        &[],
        None,
    );
    assert!(ok, "{err}");
    let key: serde_json::Value = serde_json::from_str(&out).unwrap();
    let key = key["id"].as_str().unwrap().to_string();
    let (ok, _, err) = cli(
        &home,
        &ca,
        &["role", "grant", "key-user", "--user", &carol, "--project", &project],
        &[],
        None,
    );
    assert!(ok, "{err}");
    let (ok, _, _) = cli(&home, &ca, &["logout"], &[], None);
    assert!(ok);
    let (ok, _, err) = cli(
        &home,
        &ca,
        &["login", "--user", "carol", url_arg[0], url_arg[1]],
        &[("RAMPART_PASSWORD", "Shelduck-amber-28x")],
        None,
    );
    assert!(ok, "{err}");
    let with = |verb: &'static str, ctx: &'static str| {
        [
            "key",
            verb,
            key.as_str(),
            "--project",
            project.as_str(),
            "--context",
            ctx,
        ]
        .map(str::to_string)
    };
    let args = with("encrypt", "order=42");
    let (ok, ciphertext, err) = cli(
        &home,
        &ca,
        &args.each_ref().map(String::as_str),
        &[],
        Some("attack at dawn"),
    );
    assert!(ok, "{err}");
    assert!(!ciphertext.contains("attack"));
    let args = with("decrypt", "order=42");
    let (ok, plain, err) = cli(&home, &ca, &args.each_ref().map(String::as_str), &[], Some(&ciphertext));
    assert!(ok, "{err}");
    assert_eq!(plain, "attack at dawn");
    let args = with("decrypt", "order=43");
    let (ok, _, err) = cli(&home, &ca, &args.each_ref().map(String::as_str), &[], Some(&ciphertext));
    assert!(
        !ok && err.contains("context_mismatch"),
        "another context is refused: {err}"
    );
    let (ok, _, _) = cli(&home, &ca, &["logout"], &[], None);
    assert!(ok);
}
