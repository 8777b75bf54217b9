//! End to end through the real binary, started the README's way.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rampart_api::{Client, JoinTokenCreate, NodeState, PasswordChange};
use rampart_common::Sensitive;
use rampart_testkit::{free_port, privileged};

const BIN: &str = env!("CARGO_BIN_EXE_rampart");

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write_config(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("rampart.toml");
    std::fs::write(&path, body).unwrap();
    path
}

fn up(dir: &Path, config: &Path) -> Proc {
    let log = std::fs::File::create(dir.join(format!("stderr-{}.log", std::process::id()))).unwrap();
    Proc(
        Command::new(BIN)
            .args(["up", "--data-dir"])
            .arg(dir.join("data"))
            .arg("--config")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

async fn wait_healthy(url: &str, ca: &Path, ready: u64, timeout: Duration) -> Client {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(pem) = std::fs::read(ca)
            && let Ok(c) = Client::with_ca(url, &pem)
            && let Ok(h) = c.health().await
            && h.nodes.ready == ready
        {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "{url} not healthy with {ready} ready nodes within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn mode(p: &Path) -> u32 {
    rampart_common::fsutil::mode_of(p).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_gives_a_ready_node_and_kill_9_loses_nothing_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(
        tmp.path(),
        &format!(
            "[api]\nlisten = [\"127.0.0.1:{port}\"]\n[nodes]\nheartbeat_interval_s = 1\nheartbeat_timeout_s = 3\n"
        ),
    );
    let data = tmp.path().join("data");
    let url = format!("https://127.0.0.1:{port}");
    let ca = data.join("ca.pem");

    let mut proc = up(tmp.path(), &config);
    let anon = wait_healthy(&url, &ca, 1, Duration::from_secs(60)).await;
    let health = anon.health().await.unwrap();
    assert_eq!((health.status.as_str(), health.nodes.total), ("ok", 1));

    // Least privilege on the data directory (spec 9.1-1e).
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("rampart.db")), 0o600);
    // The CA key is in the embedded HSM (no key file); its token, configuration and PINs are private.
    assert!(!data.join("tls/ca-key.pem").exists());
    assert_eq!(mode(&data.join("hsm")), 0o700);
    assert_eq!(mode(&data.join("hsm/tokens")), 0o700);
    assert_eq!(mode(&data.join("hsm/softhsm2.conf")), 0o600);
    assert_eq!(mode(&data.join("hsm/user.pin")), 0o600);
    assert_eq!(mode(&data.join("hsm/so.pin")), 0o600);
    assert_eq!(mode(&data.join("tls/server-key.pem")), 0o600);
    assert_eq!(mode(&data.join("agent/node-key.pem")), 0o600);
    assert_eq!(mode(&data.join("bootstrap-admin-password")), 0o600);

    let bootstrap = std::fs::read_to_string(data.join("bootstrap-admin-password")).unwrap();
    anon.change_password(&PasswordChange {
        username: "admin".into(),
        domain: None,
        current_password: Sensitive::new(bootstrap.trim()),
        new_password: Sensitive::new("E2e-survives-kill-9"),
        totp: None,
    })
    .await
    .unwrap();
    let mfa = rampart_testkit::MfaUser::enrol(&anon, "admin", "E2e-survives-kill-9")
        .await
        .unwrap();
    let admin = mfa.login(&anon).await.unwrap();
    let token = admin.create_join_token(&JoinTokenCreate::default()).await.unwrap();
    let ca_before = std::fs::read(&ca).unwrap();

    // No chance to flush anything.
    proc.0.kill().unwrap();
    proc.0.wait().unwrap();
    let _proc = up(tmp.path(), &config);
    let anon = wait_healthy(&url, &ca, 1, Duration::from_secs(60)).await;
    assert_eq!(std::fs::read(&ca).unwrap(), ca_before, "same CA");
    assert!(!data.join("bootstrap-admin-password").exists(), "no second bootstrap");
    let admin = mfa
        .login(&anon)
        .await
        .expect("the changed password and the second factor survived");
    assert_eq!(
        admin.nodes().await.unwrap().items.len(),
        1,
        "the local node was kept, not re-joined"
    );

    // The join token acknowledged before the crash still admits an agent (a second binary).
    let agent_dir = tmp.path().join("agent2");
    let token_file = tmp.path().join("join-token");
    std::fs::write(&token_file, token.token.expose()).unwrap();
    let _agent = Proc(
        Command::new(BIN)
            .args(["agent", "--controller", &url, "--name", "second", "--join-file"])
            .arg(&token_file)
            .arg("--data-dir")
            .arg(&agent_dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(tmp.path().join("agent2.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_healthy(&url, &ca, 2, Duration::from_secs(30)).await;

    // Run logs: JSON lines with level, thread name and request id (spec 13.4-2).
    let logs: Vec<_> = std::fs::read_dir(data.join("logs")).unwrap().flatten().collect();
    assert!(!logs.is_empty());
    let text = std::fs::read_to_string(logs[0].path()).unwrap();
    let line = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["span"]["request_id"].is_string())
        .expect("a request log line");
    assert!(
        line["level"].is_string() && line["threadName"].is_string() && line["timestamp"].is_string(),
        "{line}"
    );
    assert!(!text.contains("E2e-survives-kill-9"), "no password in the run log");
    assert!(!text.contains(token.token.expose()), "no join token in the run log");
}

fn run_expecting_failure(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn bad_configuration_stops_start_up_with_the_key_named() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let data = data.to_str().unwrap();
    for (body, key) in [
        ("[api]\nlisten_port = 1\n", "listen_port"),
        (
            "[nodes]\nheartbeat_interval_s = 10\nheartbeat_timeout_s = 11\n",
            "nodes.heartbeat_timeout_s",
        ),
        ("[log]\nlevel = \"loud,,=\"\n", "log.level"),
        ("[api]\nlisten = [\"nowhere\"]\n", "listen"),
    ] {
        let config = write_config(tmp.path(), body);
        let (code, stderr) = run_expecting_failure(&["up", "--data-dir", data, "--config", config.to_str().unwrap()]);
        assert_eq!(code, 2, "{body}: {stderr}");
        assert!(stderr.contains(key), "{body}: {stderr}");
    }
    assert!(!Path::new(data).join("rampart.db").exists(), "nothing was created");
}

#[test]
fn unreachable_database_stops_start_up_without_leaking_the_password() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), "[database]\nconnect_timeout_s = 2\n[log]\nstderr = false\n");
    let (code, stderr) = run_expecting_failure(&[
        "controller",
        "--data-dir",
        tmp.path().join("data").to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--database-url",
        "postgres://rampart:hunter2-secret@127.0.0.1:1/rampart",
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("postgres://rampart:***@127.0.0.1:1/rampart"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2-secret"), "{stderr}");
}

/// A network namespace joined to the root namespace by a veth pair; removed on drop.
struct Netns {
    name: String,
    host_ip: String,
    ns_ip: String,
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    fn new() -> Netns {
        let tag = format!(
            "{:x}",
            std::process::id() ^ (Instant::now().elapsed().as_nanos() as u32) ^ rand_u32()
        );
        let tag = &tag[tag.len().saturating_sub(6)..];
        let name = format!("rpt-{tag}");
        let (host_if, ns_if) = (format!("rv{tag}a"), format!("rv{tag}b"));
        let octet = rand_u32() % 250 + 1;
        let (host_ip, ns_ip) = (format!("10.231.{octet}.1"), format!("10.231.{octet}.2"));
        let n = Netns {
            name: name.clone(),
            host_ip: host_ip.clone(),
            ns_ip: ns_ip.clone(),
        };
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if]);
        sh(&["ip", "link", "set", &ns_if, "netns", &name]);
        sh(&["ip", "addr", "add", &format!("{host_ip}/30"), "dev", &host_if]);
        sh(&["ip", "link", "set", &host_if, "up"]);
        sh(&["ip", "-n", &name, "addr", "add", &format!("{ns_ip}/30"), "dev", &ns_if]);
        sh(&["ip", "-n", &name, "link", "set", &ns_if, "up"]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        n
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace destroys its veth end, and with it the host end.
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .unwrap();
    u32::from_le_bytes(b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_10_1_agent_in_another_network_namespace_joins_then_turns_unreachable() {
    if !privileged() {
        return;
    }
    let ns = Netns::new();
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(
        tmp.path(),
        &format!(
            "[api]\nlisten = [\"127.0.0.1:{port}\", \"{}:{port}\"]\n[nodes]\nheartbeat_interval_s = 1\nheartbeat_timeout_s = 3\n",
            ns.host_ip
        ),
    );
    let data = tmp.path().join("data");
    let local = format!("https://127.0.0.1:{port}");
    let _controller = up(tmp.path(), &config);
    let anon = wait_healthy(&local, &data.join("ca.pem"), 1, Duration::from_secs(60)).await;
    let bootstrap = std::fs::read_to_string(data.join("bootstrap-admin-password")).unwrap();
    anon.change_password(&PasswordChange {
        username: "admin".into(),
        domain: None,
        current_password: Sensitive::new(bootstrap.trim()),
        new_password: Sensitive::new("Netns-test-passphrase"),
        totp: None,
    })
    .await
    .unwrap();
    let admin = rampart_testkit::MfaUser::enrol(&anon, "admin", "Netns-test-passphrase")
        .await
        .unwrap()
        .login(&anon)
        .await
        .unwrap();
    let token = admin
        .create_join_token(&JoinTokenCreate {
            node_name: Some("far-node".into()),
            ttl_s: None,
        })
        .await
        .unwrap();
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, token.token.expose()).unwrap();

    // The agent lives in the namespace and reaches the controller over the veth only.
    let remote = format!("https://{}:{port}", ns.host_ip);
    let mut agent = Proc(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.name,
                BIN,
                "agent",
                "--controller",
                &remote,
                "--name",
                "far-node",
                "--join-file",
            ])
            .arg(&token_file)
            .arg("--data-dir")
            .arg(tmp.path().join("far"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(tmp.path().join("far.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let node_state = |name: &'static str| {
        let admin = admin.clone();
        async move {
            admin
                .nodes()
                .await
                .ok()?
                .items
                .into_iter()
                .find(|n| n.name == name)
                .map(|n| (n.state, n.host))
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((NodeState::Ready, Some(host))) = node_state("far-node").await {
            assert!(!host.hostname.is_empty());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "far-node never became ready: {}",
            std::fs::read_to_string(tmp.path().join("far.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(anon.health().await.unwrap().nodes.ready, 2);
    let _ = &ns.ns_ip;

    agent.0.kill().unwrap();
    agent.0.wait().unwrap();
    let stopped = Instant::now();
    loop {
        if let Some((NodeState::Unreachable, _)) = node_state("far-node").await {
            break;
        }
        // heartbeat_timeout_s = 3, plus the 1 s reconciler tick and one poll.
        assert!(
            stopped.elapsed() < Duration::from_secs(6),
            "not unreachable after {:?}",
            stopped.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "far-node unreachable {:?} after its agent died (timeout 3 s)",
        stopped.elapsed()
    );
    assert_eq!(anon.health().await.unwrap().nodes.ready, 1);
}
