//! Reliability under injected faults (issue 13): a full data disk, crashes in the middle of
//! calls, retries. Each test injects its fault for real (root: a small tmpfs) and checks that
//! the controller recovers without a restart.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rampart_api::{Client, ClientError, Project, ProjectCreate};
use rampart_testkit::{ClusterOptions, TestCluster, free_port, privileged};

/// A small tmpfs of its own, unmounted on drop (also when the test panics).
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount a tmpfs on {}", dir.path().display());
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file until the disk is full.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 64 << 10];
        loop {
            if let Err(e) = f.write_all(&block) {
                assert_eq!(e.raw_os_error(), Some(nix::libc::ENOSPC), "{e}");
                break;
            }
        }
        // Whatever partial block fit is on the disk too.
        let _ = f.sync_all();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

const PLAIN_PASSWORD: &str = "Heron-quartz-Lantern-71";

async fn create_project(admin: &Client, name: String) -> Result<Project, ClientError> {
    admin
        .post(
            "/v1/projects",
            &ProjectCreate {
                name,
                ..Default::default()
            },
        )
        .await
}

async fn readyz(client: &Client) -> http::StatusCode {
    match client.send::<()>(http::Method::GET, "/readyz", None).await {
        Ok(r) => r.status(),
        Err(e) => e.status().expect("an HTTP answer from /readyz"),
    }
}

/// A full data disk: calls answer 503, health says `degraded` with the reason and `/readyz`
/// fails; once space returns every call succeeds again within seconds, without a restart
/// (connections whose commit failed are not handed out again inside a transaction).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spec_14_2_3_writes_recover_after_a_full_disk_without_a_restart() {
    if !privileged() {
        return;
    }
    let disk = SmallDisk::mount("12m");
    let url = format!("sqlite://{}", disk.path().join("rampart.db").display());
    let cluster = TestCluster::start(ClusterOptions {
        configure: Box::new(move |c| c.database.url = url),
        ..Default::default()
    })
    .await;
    let admin = &cluster.admin;
    create_project(admin, "before-full".into())
        .await
        .expect("a write before the fault");
    // Logins without a second factor (the admin's TOTP allows two a step).
    cluster.create_user("plain", PLAIN_PASSWORD, &[]).await;
    assert_eq!(admin.health().await.unwrap().status, "ok");
    assert_eq!(readyz(admin).await, 200);

    let filler = disk.fill();
    // Writes land in space SQLite already holds until that runs out: write until they fail,
    // many at once so that group commits and transactions fail at COMMIT on several pooled
    // connections.
    let mut refused = 0;
    for round in 0..60 {
        let calls = (0..8).map(|i| create_project(admin, format!("full-{round}-{i}")));
        for r in futures::future::join_all(calls).await {
            match r {
                Ok(_) => {}
                Err(e) => {
                    assert!(
                        matches!(e.status().map(|s| s.as_u16()), Some(503 | 500)),
                        "a full disk is a clean refusal: {e}"
                    );
                    refused += 1;
                }
            }
        }
        if refused >= 40 {
            break;
        }
    }
    assert!(refused >= 40, "writes fail on a full disk (refused {refused})");
    let h = admin.health().await.expect("health answers while the disk is full");
    assert_eq!(h.status, "degraded", "{h:?}");
    assert!(h.reason.as_deref().unwrap_or("").contains("full"), "{h:?}");
    assert_eq!(readyz(admin).await, 503);

    std::fs::remove_file(filler).unwrap();
    let freed = Instant::now();
    TestCluster::wait_for("health ok after space returned", Duration::from_secs(10), || async {
        (admin.health().await.ok()?.status == "ok").then_some(())
    })
    .await;
    assert_eq!(readyz(admin).await, 200);
    // Every call succeeds now: writes on every pooled connection, and logins.
    for round in 0..5 {
        let calls = (0..8).map(|i| create_project(admin, format!("after-{round}-{i}")));
        for r in futures::future::join_all(calls).await {
            r.expect("every write succeeds once space returned");
        }
        cluster
            .anon
            .login_as("plain", PLAIN_PASSWORD)
            .await
            .expect("login after space returned");
    }
    eprintln!("recovered {:?} after space returned", freed.elapsed());
    assert!(freed.elapsed() < Duration::from_secs(30));
    cluster.shutdown().await;
}

const BIN: &str = env!("CARGO_BIN_EXE_rampart");

/// A `rampart up` process, killed on drop.
struct Up(std::process::Child);

impl Up {
    fn start(dir: &Path, port: u16) -> Up {
        let config = dir.join("rampart.toml");
        std::fs::write(
            &config,
            format!(
                "[api]\nlisten = [\"127.0.0.1:{port}\"]\n[nodes]\nheartbeat_interval_s = 1\nheartbeat_timeout_s = 3\n"
            ),
        )
        .unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("stderr.log"))
            .unwrap();
        Up(std::process::Command::new(BIN)
            .args(["up", "--data-dir"])
            .arg(dir.join("data"))
            .arg("--config")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap())
    }

    /// SIGKILL: no chance to finish anything.
    fn kill_9(mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every record of the trail of `operation`.
async fn audit_records(admin: &Client, operation: &str) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    loop {
        let page: serde_json::Value = admin
            .get(&format!("/v1/audit/events?operation={operation}&limit=500{cursor}"))
            .await
            .expect("audit events");
        out.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => return out,
        }
    }
}

/// SIGKILL in the middle of project creations: after the restart every pending record has a
/// completion (`success` naming the project that exists, or `abandoned` when none was made).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spec_13_4_1_open_intents_are_completed_after_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let up = Up::start(tmp.path(), port);
    let data = tmp.path().join("data");
    let admin = rampart_testkit::up::take_over(&url, &data, 1, "Faults-kill-9-passw0rd", Duration::from_secs(90))
        .await
        .admin;

    // Creators that keep going until the process dies under them.
    let creators: Vec<_> = (0..12)
        .map(|w| {
            let admin = admin.clone();
            tokio::spawn(async move {
                for i in 0.. {
                    if create_project(&admin, format!("k9-{w}-{i}")).await.is_err() {
                        return;
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    up.kill_9();
    for c in creators {
        c.await.unwrap();
    }

    let _up = Up::start(tmp.path(), port);
    TestCluster::wait_for("the restarted controller", Duration::from_secs(60), || async {
        admin.health().await.ok()
    })
    .await;
    let projects: rampart_api::List<Project> = admin.get("/v1/projects?limit=1000").await.unwrap();
    let existing: std::collections::HashSet<String> = projects.items.iter().map(|p| p.id.to_string()).collect();
    let (open, records) = TestCluster::wait_for("every intent completed", Duration::from_secs(30), || async {
        let records = audit_records(&admin, "project.create").await;
        let completed: std::collections::HashSet<&str> = records
            .iter()
            .filter(|r| r["result"]["outcome"] != "pending")
            .filter_map(|r| r["request_id"].as_str())
            .collect();
        let open: Vec<u64> = records
            .iter()
            .filter(|r| r["result"]["outcome"] == "pending")
            .filter(|r| !r["request_id"].as_str().is_some_and(|id| completed.contains(id)))
            .map(|r| r["seq"].as_u64().unwrap())
            .collect();
        open.is_empty().then(|| (open, records.clone()))
    })
    .await;
    assert!(open.is_empty());
    let reconciled: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["details"]["reconciled"].is_string())
        .collect();
    eprintln!(
        "{} project.create records, {} completed at start-up",
        records.len(),
        reconciled.len()
    );
    assert!(
        !reconciled.is_empty(),
        "the kill interrupted some calls (else the test proves nothing)"
    );
    for r in &reconciled {
        match r["result"]["outcome"].as_str() {
            Some("success") => {
                let id = r["target"]["id"]
                    .as_str()
                    .expect("a completed create names what it made");
                assert!(existing.contains(id), "{r}");
            }
            Some("failure") => assert_eq!(r["result"]["code"], "abandoned", "{r}"),
            other => panic!("{other:?}: {r}"),
        }
    }
    // And every project that exists is named by a successful completion.
    let named: std::collections::HashSet<&str> = records
        .iter()
        .filter(|r| r["result"]["outcome"] == "success")
        .filter_map(|r| r["target"]["id"].as_str())
        .collect();
    for p in &projects.items {
        if p.name.starts_with("k9-") {
            assert!(
                named.contains(p.id.to_string().as_str()),
                "project {} has no completion",
                p.name
            );
        }
    }
}

/// A retried create with the same `Idempotency-Key` gets the first answer and makes nothing;
/// the same key with another body is refused; keys of different principals do not meet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_4_1_retries_with_an_idempotency_key_make_nothing_twice() {
    let cluster = TestCluster::start(ClusterOptions::default()).await;
    let admin = &cluster.admin;
    let key = uuid::Uuid::new_v4().to_string();
    let body = ProjectCreate {
        name: "idem-a".into(),
        ..Default::default()
    };
    let send = |client: &Client, body: ProjectCreate, key: String| {
        let client = client.clone();
        async move {
            client
                .send_with_key(http::Method::POST, "/v1/projects", Some(&body), Some(&key))
                .await
        }
    };
    let first = send(admin, body.clone(), key.clone()).await.expect("first call");
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let made: Project = first.json().await.unwrap();

    // Without the key a second call is a second create (here refused: the name is taken).
    let again = send(admin, body.clone(), key.clone())
        .await
        .expect("the retry gets the first answer");
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let replayed: Project = again.json().await.unwrap();
    assert_eq!(replayed.id, made.id);
    let projects: rampart_api::List<Project> = admin.get("/v1/projects?limit=1000").await.unwrap();
    assert_eq!(projects.items.iter().filter(|p| p.name == "idem-a").count(), 1);

    let other = ProjectCreate {
        name: "idem-b".into(),
        ..Default::default()
    };
    let e = send(admin, other.clone(), key.clone()).await.unwrap_err();
    assert_eq!(
        (e.status().map(|s| s.as_u16()), e.code()),
        (Some(409), Some("idempotency_key_reused")),
        "{e}"
    );
    let e = send(admin, other.clone(), "not a key".into()).await.unwrap_err();
    assert_eq!(e.code(), Some("invalid_idempotency_key"), "{e}");

    // Another principal's key is its own: the same key runs its own call.
    cluster.create_user("idem-other", PLAIN_PASSWORD, &[]).await;
    let (second, _) = cluster.anon.login_as("idem-other", PLAIN_PASSWORD).await.unwrap();
    let theirs = send(&second, other, key.clone()).await;
    // Whatever their rights allow, it is not the first principal's kept answer.
    match theirs {
        Ok(r) => assert!(r.headers().get("idempotent-replayed").is_none()),
        Err(e) => assert_ne!(e.code(), Some("idempotency_key_reused"), "{e}"),
    }
    cluster.shutdown().await;
}

/// A listen address that cannot be used (port taken, address not on this host) is refused
/// before anything is written: no data directory, no HSM token, no database.
#[test]
fn spec_10_6_1_listen_failures_are_refused_before_the_data_directory_is_made() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    // 192.0.2.1 (TEST-NET-1) is on no host: binding it sends nothing.
    for (listen, what) in [
        (format!("127.0.0.1:{port}"), "in use"),
        ("192.0.2.1:8443".to_string(), "not on this host"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let config = tmp.path().join("rampart.toml");
        std::fs::write(&config, format!("[api]\nlisten = [\"{listen}\"]\n")).unwrap();
        let data = tmp.path().join("data");
        let mut child = std::process::Command::new(BIN)
            .args(["up", "--data-dir"])
            .arg(&data)
            .arg("--config")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("rampart up with {listen} ({what}) did not exit");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(!status.success(), "{listen} ({what}): {stderr}");
        assert!(
            stderr.contains(&format!("cannot listen on {listen}")),
            "{what}: {stderr}"
        );
        assert!(
            !data.exists(),
            "{what}: the data directory was made before the listen check"
        );
    }
    drop(taken);
}

/// Start-up does not wait for a per-project HSM check: with 10 000 projects the controller
/// answers within a second (the check runs in the background).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spec_13_3_9_start_up_does_not_wait_for_10000_project_root_checks() {
    let cluster = TestCluster::start(ClusterOptions::default()).await;
    let domains: rampart_api::List<rampart_api::Domain> = cluster.admin.get("/v1/domains").await.unwrap();
    let domain = domains.items.iter().find(|d| d.name == "default").unwrap().id;
    {
        let db = rampart_db::Db::connect(&cluster.config.database.url, &Default::default())
            .await
            .unwrap();
        let mut tx = db.begin().await.unwrap();
        let now = time::OffsetDateTime::now_utc();
        for i in 0..10_000 {
            rampart_db::identity::insert_project(&mut tx, domain, &format!("bulk-{i}"), now)
                .await
                .unwrap();
        }
        rampart_db::Db::commit(tx).await.unwrap();
        db.close().await;
    }
    let started = Instant::now();
    let cluster = cluster.restart_controller(|_| {}).await;
    let took = started.elapsed();
    cluster.admin.health().await.expect("answers at once");
    eprintln!("restart with 10 000 projects: {took:?}");
    assert!(took <= Duration::from_secs(1), "restart took {took:?}");
    cluster.shutdown().await;
}

/// Agents that kept running while the controller was down longer than the heartbeat timeout
/// are not declared unreachable by the restarted controller before they could report.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spec_14_2_3_nodes_do_not_flap_to_unreachable_after_a_controller_restart() {
    let cluster = TestCluster::start(ClusterOptions {
        agents: 1,
        ..Default::default()
    })
    .await;
    cluster.wait_for_ready_nodes(1).await;
    let timeout = Duration::from_secs(cluster.config.nodes.heartbeat_timeout_s);
    let cluster = cluster.restart_controller_after(timeout * 2, |_| {}).await;
    let restarted = time::OffsetDateTime::now_utc();
    // Long enough for the agent to report, and for a liveness pass with a stale heartbeat.
    let watch = Instant::now();
    while watch.elapsed() < timeout * 2 {
        let nodes = cluster.admin.nodes().await.unwrap();
        assert!(
            nodes
                .items
                .iter()
                .all(|n| n.state != rampart_api::NodeState::Unreachable),
            "a node flapped to unreachable after the restart: {nodes:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let since = restarted
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let flaps: serde_json::Value = cluster
        .admin
        .get(&format!("/v1/audit/events?operation=node.unreachable&since={since}"))
        .await
        .unwrap();
    assert_eq!(flaps["items"].as_array().unwrap().len(), 0, "{flaps}");
    cluster.wait_for_ready_nodes(1).await;
    cluster.shutdown().await;
}
