//! The README's first steps with the CLI, through the real binary: change the bootstrap
//! password, log in (enrolment-only token), enrol TOTP, log in with the code, administer, and
//! walk the README's lines up to the demo guest booting to its console marker.

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

fn workspace() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The demo guest, built once (from Debian packages) into target/demo-image or
/// `RAMPART_DEMO_IMAGE`, as the compute tests do.
fn demo_image() -> std::path::PathBuf {
    let out = std::env::var_os("RAMPART_DEMO_IMAGE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/demo-image"));
    let st = Command::new(workspace().join("crates/rampart-compute/scripts/build-demo-image.sh"))
        .arg(&out)
        .status()
        .expect("running build-demo-image.sh");
    assert!(st.success(), "build-demo-image.sh failed");
    out
}

struct VmDir(std::path::PathBuf);

impl Drop for VmDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
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

/// Lines of the README run as written, in bash, against this test's controller: the README's
/// `https://127.0.0.1:8443` is its address and `$D` its data directory. Each line must be in
/// README.md verbatim, so that the README and this walk cannot drift apart.
struct Readme {
    home: std::path::PathBuf,
    ca: std::path::PathBuf,
    data: std::path::PathBuf,
    url: String,
    text: String,
}

impl Readme {
    fn new(home: &Path, ca: &Path, port: u16, data: &Path) -> Readme {
        let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md")).unwrap();
        Readme {
            home: home.into(),
            ca: ca.into(),
            data: data.into(),
            url: format!("https://127.0.0.1:{port}"),
            text,
        }
    }

    /// Runs `lines` (with `env` set) in the data directory's parent; returns the values of
    /// `vars` afterwards, and all standard output as `out`.
    fn run(&self, env: &[(&str, &str)], lines: &[&str], vars: &[&str]) -> std::collections::HashMap<String, String> {
        for l in lines {
            assert!(self.text.contains(l), "not in the README as written: {l}");
        }
        let mut script = format!("set -euo pipefail\n{}\n", lines.join("\n"));
        script = script.replace("https://127.0.0.1:8443", &self.url);
        // A line of its own even after output without a final newline (curl's JSON).
        script.push_str("echo\n");
        for v in vars {
            script.push_str(&format!("echo \"@@{v}=${{{v}}}\"\n"));
        }
        let bin_dir = Path::new(BIN).parent().unwrap();
        let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
        let out = Command::new("bash")
            .arg("-c")
            .arg(&script)
            .current_dir(self.data.parent().unwrap())
            .env("PATH", path)
            .env("XDG_CONFIG_HOME", &self.home)
            .env("RAMPART_CA", &self.ca)
            .env("D", &self.data)
            .env_remove("RAMPART_TOKEN")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "README lines failed:\n{script}\nstdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut values: std::collections::HashMap<String, String> = stdout
            .lines()
            .filter_map(|l| l.strip_prefix("@@")?.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        values.insert("out".into(), stdout);
        values
    }
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
    // VM directories outside the private temporary directory (VM uids must reach theirs).
    let vms = VmDir(std::path::PathBuf::from(format!(
        "/tmp/rampart-readme-vms-{}",
        std::process::id()
    )));
    std::fs::write(
        &config,
        format!(
            "[api]\nlisten = [\"127.0.0.1:{port}\"]\n[log]\nstderr = false\n[compute]\nvm_state_dir = \"{}\"\naccel = \"tcg\"\n",
            vms.0.display()
        ),
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
    // In words, with the next command to run; not an enum name or an API call.
    assert!(
        ok && err.contains("enrolling a second factor only") && err.contains("rampart mfa-enrol"),
        "{err}"
    );
    assert!(!err.contains("MfaEnrollment") && !err.contains("/v1/auth/mfa"), "{err}");
    let session = home.join("rampart/session.json");
    assert_eq!(rampart_common::fsutil::mode_of(&session).unwrap(), 0o600);
    assert!(
        !std::fs::read_to_string(&session).unwrap().contains("Puffin-shingle-26"),
        "no password in the session file"
    );
    let (ok, _, _) = cli(&home, &ca, &["user", "list"], &[], None);
    assert!(!ok, "an enrolment-only session administers nothing");

    // `rampart mfa-enrol` shows a QR code and the secret, reads a code, logs in again with
    // the password and the app's next code, and prints the recovery codes once.
    let mut child = Command::new(BIN)
        .arg("mfa-enrol")
        .env("XDG_CONFIG_HOME", &home)
        .env("RAMPART_CA", &ca)
        .env("RAMPART_PASSWORD", "Puffin-shingle-26")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut secret = None;
    let mut shown = String::new();
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap() > 0 {
        shown.push_str(&line);
        if let Some(s) = line.trim().strip_prefix("(secret ").and_then(|s| s.strip_suffix(')')) {
            secret = Some(s.to_string());
            break;
        }
        line.clear();
    }
    let secret = secret.expect("secret printed");
    assert!(
        shown
            .lines()
            .filter(|l| l.contains('\u{2580}') || l.contains('\u{2584}'))
            .count()
            > 10,
        "a QR code in the terminal: {shown}"
    );
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as u64;
    let code = rampart_iam::totp::code_at(&secret, now).unwrap();
    let next = rampart_iam::totp::code_at(&secret, now + 30).unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{code}\n{next}\n").as_bytes())
        .unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{rest}");
    assert!(
        rest.contains("everything your roles allow"),
        "a full session now: {rest}"
    );
    let recovery = String::from_utf8(out.stdout).unwrap();
    assert!(recovery.lines().count() >= 8, "recovery codes on stdout: {recovery}");
    assert!(rest.contains("shown only now"), "{rest}");
    let (ok, out, err) = cli(
        &home,
        &ca,
        &["user", "create", "alice"],
        &[("RAMPART_NEW_PASSWORD", "Gadwall-ember-93")],
        None,
    );
    assert!(ok, "{err}");
    let alice_created: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        alice_created["password_change_required"], true,
        "an admin-set password is changed at first use"
    );
    let (ok, out, _) = cli(&home, &ca, &["user", "list"], &[], None);
    assert!(ok && out.contains("\"alice\""));
    let (ok, _, err) = cli(&home, &ca, &["project", "create", "web"], &[], None);
    assert!(ok, "{err}");
    // The README's lines, as written (only the address differs): ids picked with jq, the
    // project's roles for alice, a flavor made with curl and the session's token.
    let readme = Readme::new(&home, &ca, port, &data);
    let out = readme.run(
        &[("RAMPART_NEW_PASSWORD", "Shelduck-amber-27")],
        &[
            r#"P=$(rampart project list | jq -r '.items[] | select(.name=="web") | .id')"#,
            r#"ALICE=$(rampart user list | jq -r '.items[] | select(.name=="alice") | .id')"#,
            "rampart role grant project-admin --user $ALICE --project $P",
            "rampart user create bob         # he will be the project's key admin",
            r#"BOB=$(rampart user list | jq -r '.items[] | select(.name=="bob") | .id')"#,
            r#"curl --cacert $D/ca.pem -H "Authorization: Bearer $(rampart token)" -H 'content-type: application/json' \"#,
            r#"  https://127.0.0.1:8443/v1/flavors -d '{"name":"small","vcpus":1,"memory_mib":256,"root_disk_gib":1}'"#,
            "FLAVOR=small",
        ],
        &["P", "ALICE", "BOB", "FLAVOR"],
    );
    let (project, alice, bob, flavor) = (
        out["P"].clone(),
        out["ALICE"].clone(),
        out["BOB"].clone(),
        out["FLAVOR"].clone(),
    );
    assert_eq!(alice, alice_created["id"].as_str().unwrap());
    uuid::Uuid::parse_str(&project).expect("the project id");
    uuid::Uuid::parse_str(&bob).expect("bob's id");
    // Tenant keys stay with the tenant (13.1.1-2): the system admin grants no key role.
    let (ok, _, err) = cli(
        &home,
        &ca,
        &["role", "grant", "key-user", "--user", &alice, "--project", &project],
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

    // Volumes with the CLI (12.3.2-2, 12.3.3): the types (the built-in one encrypted), the
    // refusals the API gives, and a create that is either placed (a node reports a pool) or
    // refused with storage_unavailable, never anything else.
    let volume = |args: &[&str]| {
        let mut all = vec!["volume"];
        all.extend_from_slice(args);
        cli(&home, &ca, &all, &[], None)
    };
    let (ok, out, err) = volume(&["types"]);
    assert!(ok, "{err}");
    let types: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        types["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "default" && t["encrypted"] == true),
        "{out}"
    );
    let (ok, _, err) = volume(&["create", "cli-data", "--project", &own, "--size-gib", "0"]);
    assert!(
        !ok && err.contains("validation_failed") && err.contains("size_gib"),
        "{err}"
    );
    let (ok, _, err) = volume(&["show", "nosuch", "--project", &own]);
    assert!(!ok && err.contains("not_found"), "{err}");
    let (ok, _, err) = volume(&["access", "x", "--project", &own, "--grant", "alice=read"]);
    assert!(!ok && err.contains("--grant takes"), "{err}");
    let (ok, out, err) = volume(&["create", "cli-data", "--project", &own, "--size-gib", "1"]);
    if ok {
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            (v["encrypted"].as_bool(), v["name"].as_str()),
            (Some(true), Some("cli-data")),
            "{out}"
        );
        let (ok, out, err) = volume(&["list", "--project", &own]);
        assert!(ok && out.contains("cli-data"), "{err}");
        // As root the embedded agent holds a real local pool: the volume is made there
        // (LUKS), and deleting it ends `deleted` only with a verified wipe report (12.3.4-1/3).
        if rampart_common::testing::is_root() {
            let id = v["id"].as_str().unwrap().to_string();
            let (ok, out, err) = volume(&["show", &id, "--project", &own]);
            assert!(ok, "{err}");
            let mut status = serde_json::from_str::<serde_json::Value>(&out).unwrap()["status"].clone();
            for _ in 0..120 {
                if status == "available" || status == "error" {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_secs(1));
                let (_, out, _) = volume(&["show", &id, "--project", &own]);
                status = serde_json::from_str::<serde_json::Value>(&out).unwrap()["status"].clone();
            }
            assert_eq!(status, "available", "the node made the volume");
            let (ok, out, err) = volume(&["delete", &id, "--project", &own, "--wait"]);
            assert!(ok, "{err}");
            let gone: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(gone["status"], "deleted", "{out}");
            let (ok, out, err) = volume(&["wipe-report", &id, "--project", &own]);
            assert!(ok, "{err}");
            let report: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(
                (
                    report["verified"].as_bool(),
                    report["method"].as_str(),
                    report["volume"].as_str()
                ),
                (Some(true), Some("crypto_erase_and_zero"), Some(id.as_str())),
                "{out}"
            );
        }
    } else {
        assert!(
            !rampart_common::testing::is_root(),
            "as root the embedded agent reports a pool, so the volume must be placed: {err}"
        );
        assert!(err.contains("storage_unavailable"), "{err}");
        let (ok, out, err) = volume(&["list", "--project", &own]);
        assert!(ok && !out.contains("cli-data"), "nothing half-created: {out} {err}");
    }

    let (ok, _, _) = cli(&home, &ca, &["logout"], &[], None);
    assert!(ok && !session.exists());

    // Alice changes her admin-set password, logs in and, as the project's own admin, names bob
    // its first key admin; bob makes the key and lets alice use it (12.4, 13.3-1, 13.1.1-2).
    let login = |user: &str, password: &str| {
        let (ok, _, err) = cli(
            &home,
            &ca,
            &["login", "--user", user, url_arg[0], url_arg[1]],
            &[("RAMPART_PASSWORD", password)],
            None,
        );
        assert!(ok, "{user}: {err}");
    };
    let (ok, _, err) = cli(
        &home,
        &ca,
        &["passwd", "--user", "alice", url_arg[0], url_arg[1]],
        &[
            ("RAMPART_PASSWORD", "Gadwall-ember-93"),
            ("RAMPART_NEW_PASSWORD", "Teal-harbour-58"),
        ],
        None,
    );
    assert!(ok, "{err}");
    login("alice", "Teal-harbour-58");
    readme.run(
        &[("BOB", &bob), ("P", &project)],
        &["rampart role grant key-admin --user $BOB --project $P"],
        &[],
    );
    let (ok, _, _) = cli(&home, &ca, &["logout"], &[], None);
    assert!(ok);
    let (ok, _, err) = cli(
        &home,
        &ca,
        &["passwd", "--user", "bob", url_arg[0], url_arg[1]],
        &[
            ("RAMPART_PASSWORD", "Shelduck-amber-27"),
            ("RAMPART_NEW_PASSWORD", "Shelduck-amber-28x"),
        ],
        None,
    );
    assert!(ok, "{err}");
    login("bob", "Shelduck-amber-28x");
    let keys = readme.run(
        &[("ALICE", &alice), ("P", &project)],
        &[
            "K=$(rampart key create orders --project $P | jq -r .id)    # keys live in the HSM",
            "rampart role grant key-user --user $ALICE --project $P     # alice may use the project's keys",
        ],
        &["K"],
    );
    let key = keys["K"].clone();
    uuid::Uuid::parse_str(&key).expect("the key id");
    let (ok, _, _) = cli(&home, &ca, &["logout"], &[], None);
    assert!(ok);
    login("alice", "Teal-harbour-58");
    // The README's walk as alice: keys, a network, the demo guest signed and uploaded, a VM
    // booted from it to its console marker and deleted. The demo guest comes from the cache the
    // compute tests build (`RAMPART_DEMO_IMAGE` or target/demo-image, made from Debian packages
    // by the README's script); the README's own build line then finds it built.
    let demo = demo_image();
    std::fs::create_dir_all(tmp.path().join("demo")).unwrap();
    for f in ["vmlinux", "initrd.img", "manifest.txt"] {
        std::fs::copy(demo.join(f), tmp.path().join("demo").join(f)).unwrap();
    }
    std::os::unix::fs::symlink(workspace().join("crates"), tmp.path().join("crates")).unwrap();
    let walk = readme.run(
        &[("P", &project), ("FLAVOR", &flavor), ("K", &key)],
        &[
            "TOKEN=$(rampart token)",
            r#"A=(--cacert $D/ca.pem -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json')"#,
            "API=https://127.0.0.1:8443/v1/projects/$P",
            r#"curl -s "${A[@]}" $API/keys/$K/encrypt -d '{"plaintext":"aGVsbG8=","context":{"order":"42"}}'"#,
            r#"curl -s "${A[@]}" "https://127.0.0.1:8443/v1/ca/crl?format=pem""#,
            "echo -n secret | rampart key encrypt $K --project $P --context order=42 | rampart key decrypt $K --project $P --context order=42",
            r#"VPC=$(curl -s "${A[@]}" $API/vpcs -d '{"name":"web","cidr":"10.10.0.0/16"}' | jq -r .id)"#,
            r#"SUBNET=$(curl -s "${A[@]}" $API/subnets -d '{"vpc":"'$VPC'","name":"front","cidr":"10.10.1.0/24"}' | jq -r .id)"#,
            r#"SG=$(curl -s "${A[@]}" $API/security-groups -d '{"name":"web"}' | jq -r .id)"#,
            "crates/rampart-compute/scripts/build-demo-image.sh demo      # needs cpio and lz4, which scripts/up.sh installs",
            "rampart image keygen image.key image.pub && rampart image trust image.pub --name release --project $P",
            "rampart image sign demo/initrd.img --key image.key && rampart image sign demo/vmlinux --key image.key",
            "RD=$(rampart image upload demo/initrd.img --project $P --name demo-initrd --format initrd | jq -r .id)",
            "IMG=$(rampart image upload demo/vmlinux --project $P --name demo-kernel --format kernel --ramdisk $RD | jq -r .id)",
            "ssh-keygen -q -t ed25519 -N '' -f vm-key",
            r#"VM=$(curl -s "${A[@]}" $API/instances \"#,
            r#"  -d '{"name":"vm1","image":"'$IMG'","flavor":"'$FLAVOR'","networks":["'$SUBNET'"],"security_groups":["'$SG'"],"ssh_keys":["'"$(cat vm-key.pub)"'"]}' | jq -r .id)"#,
        ],
        &["K", "VPC", "SUBNET", "SG", "RD", "IMG", "VM"],
    );
    for var in ["K", "VPC", "SUBNET", "SG", "RD", "IMG"] {
        uuid::Uuid::parse_str(&walk[var]).unwrap_or_else(|_| panic!("{var} is {:?}: {walk:?}", walk[var]));
    }
    assert!(walk["out"].contains("\"ciphertext\""), "{walk:?}");
    assert!(walk["out"].contains("BEGIN X509 CRL"), "{walk:?}");
    assert!(walk["out"].contains("secret"), "the CLI round trip: {walk:?}");
    // The instance boots where the node runs VMs (root with QEMU): the README's lines wait for
    // it, read the guest's boot marker from its console and delete it. Elsewhere it is refused
    // with a clear 503, and the boot is a counted skip.
    let token = readme.run(&[], &["TOKEN=$(rampart token)"], &["TOKEN"])["TOKEN"].clone();
    let api = rampart_api::Client::with_ca(&url, &std::fs::read(&ca).unwrap())
        .unwrap()
        .with_token(rampart_common::Sensitive::new(token));
    match uuid::Uuid::parse_str(&walk["VM"]) {
        Ok(vm) => {
            let started = Instant::now();
            let session = [
                "TOKEN=$(rampart token)",
                r#"A=(--cacert $D/ca.pem -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json')"#,
                "API=https://127.0.0.1:8443/v1/projects/$P",
            ];
            let env = [("P", project.as_str()), ("VM", walk["VM"].as_str())];
            let wait_lines = [
                &session[..],
                &[
                    r#"for i in $(seq 120); do [ "$(curl -s "${A[@]}" $API/instances/$VM | jq -r .status)" = running ] && break; sleep 1; done"#,
                    r#"for i in $(seq 120); do curl -s "${A[@]}" $API/instances/$VM/console | jq -r .output | grep RAMPART-BOOT-OK && break; sleep 1; done"#,
                ],
            ]
            .concat();
            let mut boot = readme.run(&env, &wait_lines, &[]);
            let path = format!("/v1/projects/{project}/instances/{vm}");
            // Known and not yet explained: under load the TCG guest sometimes dies 5–10 s after
            // its start with nothing on its console (about 1 run in 5 of the whole suite here).
            // A crashed instance gets one more boot, said loudly; the marker is still required.
            let crashed = api
                .get::<serde_json::Value>(&path)
                .await
                .is_ok_and(|i| i["status"] == "crashed");
            if !boot["out"].contains("RAMPART-BOOT-OK") && crashed {
                eprintln!("README walk: the demo guest crashed before its marker; starting it once more");
                api.send::<()>(http::Method::POST, &format!("{path}/start"), None)
                    .await
                    .expect("starting the crashed instance again");
                boot = readme.run(&env, &wait_lines, &[]);
            }
            if !boot["out"].contains("RAMPART-BOOT-OK") {
                let instance = api.get::<serde_json::Value>(&path).await;
                let events = api.get::<serde_json::Value>(&format!("{path}/events")).await;
                let console = api.get::<serde_json::Value>(&format!("{path}/console")).await;
                let log: String = std::fs::read_dir(data.join("logs"))
                    .into_iter()
                    .flatten()
                    .filter_map(Result::ok)
                    .filter_map(|f| std::fs::read_to_string(f.path()).ok())
                    .flat_map(|t| {
                        t.lines()
                            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                            .map(String::from)
                            .collect::<Vec<_>>()
                    })
                    .collect::<Vec<_>>()
                    .join("\n");
                let vm_dir = vms.0.join(vm.to_string());
                let file = |f: &str| std::fs::read_to_string(vm_dir.join(f)).unwrap_or_default();
                panic!(
                    "the demo guest did not boot to its marker: {boot:?}\ninstance: {instance:?}\nevents: {events:?}\nconsole: {console:?}\nwarnings: {log}\nqemu.log: {}\nconsole.log: {}",
                    file("qemu.log"),
                    file("console.log")
                );
            }
            readme.run(
                &env,
                &[
                    &session[..],
                    &[r#"curl -s "${A[@]}" -X DELETE $API/instances/$VM         # the VM stops; its ports and files go with it"#],
                ]
                .concat(),
                &[],
            );
            eprintln!(
                "README walk: the demo guest's marker on its console {:.1} s after the instance request was accepted",
                started.elapsed().as_secs_f64()
            );
            let path = format!("/v1/projects/{project}/instances/{vm}");
            let deadline = Instant::now() + Duration::from_secs(60);
            while api.get::<serde_json::Value>(&path).await.is_ok() {
                assert!(Instant::now() < deadline, "instance {vm} not removed");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        Err(_) => {
            let e = api
                .post::<_, serde_json::Value>(
                    &format!("/v1/projects/{project}/instances"),
                    &serde_json::json!({"name": "vm1", "image": walk["IMG"], "flavor": "small",
                        "networks": [walk["SUBNET"]], "security_groups": [walk["SG"]]}),
                )
                .await
                .unwrap_err();
            assert_eq!(e.code(), Some("unavailable"), "{e}");
            rampart_common::testing::require(
                rampart_common::testing::Need::Root,
                false,
                "not root: the README's instance does not boot here",
            );
        }
    }
    // Alice is no key admin: she uses bob's key, and cannot make one.
    let (ok, _, err) = cli(
        &home,
        &ca,
        &["key", "create", "orders-cli", "--project", &project],
        &[],
        None,
    );
    assert!(!ok && err.contains("403"), "{err}");
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
