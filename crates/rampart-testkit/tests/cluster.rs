//! The simulated cluster: enrolment over mutual TLS, heartbeats, liveness, desired state.

use std::time::Duration;

use rampart_agent::AgentError;
use rampart_api::agent::JoinTokenParts;
use rampart_api::{JoinTokenCreate, NodeState};
use rampart_common::Sensitive;
use rampart_testkit::{Backend, ClusterOptions, TestCluster, backends};
use serde_json::Value;

async fn cluster(backend: Backend, agents: usize) -> TestCluster {
    TestCluster::start(ClusterOptions {
        agents,
        backend,
        ..Default::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_12_3_1_agents_join_over_mtls_and_become_ready() {
    for backend in backends().await {
        let c = cluster(backend, 3).await;
        c.wait_for_ready_nodes(3).await;
        let nodes = c.admin.nodes().await.unwrap();
        let names: Vec<_> = nodes.items.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["node-0", "node-1", "node-2"], "{backend:?}");
        for n in &nodes.items {
            assert_eq!(
                n.host.as_ref().unwrap().hostname,
                n.name,
                "facts come from each node's own host"
            );
            assert!(n.last_heartbeat.is_some());
            assert!(n.certificate_expires_at > time::OffsetDateTime::now_utc() + time::Duration::days(80));
        }
        // Every agent has applied its desired state.
        TestCluster::wait_for("generations applied", Duration::from_secs(10), || async {
            let nodes = c.admin.nodes().await.ok()?;
            nodes
                .items
                .iter()
                .all(|n| n.applied_generation == n.generation)
                .then_some(())
        })
        .await;
        let health = c.anon.health().await.unwrap();
        assert_eq!((health.nodes.ready, health.nodes.total), (3, 3));
        c.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_4_1_node_turns_unreachable_without_heartbeats_and_ready_when_back_each_in_the_trail() {
    for backend in backends().await {
        let mut c = cluster(backend, 2).await;
        c.wait_for_ready_nodes(2).await;
        let agent = c.agents.remove(1);
        let name = agent.name.clone();
        let dir = agent.stop().await;
        let stopped = std::time::Instant::now();
        // heartbeat_timeout_s = 3 plus one reconciler tick.
        c.wait_for_node_state(&name, NodeState::Unreachable, Duration::from_secs(6))
            .await;
        let took = stopped.elapsed();
        assert!(
            took >= Duration::from_secs(1),
            "not before a heartbeat was due ({took:?})"
        );
        let nodes = c.admin.nodes().await.unwrap();
        assert_eq!(c.anon.health().await.unwrap().nodes.ready, 1, "{nodes:#?}");
        // Restarted from its state directory, with no token: it is still the same node.
        let back = c
            .start_agent(&name, dir, None)
            .await
            .expect("restart from saved identity");
        c.wait_for_node_state(&name, NodeState::Ready, Duration::from_secs(5))
            .await;
        assert_eq!(c.admin.nodes().await.unwrap().items.len(), 2, "no second node row");
        // Each host event is in the audit trail, in order, naming the node. The liveness task
        // appends its record after it saves the state the API shows, so the last one may land a
        // moment after `ready` is visible: wait for it.
        let expected = ["node.ready", "node.unreachable", "node.reachable"];
        let of_node = || async {
            let trail: Value = c
                .admin
                .get("/v1/audit/events?operation=node.*&limit=1000")
                .await
                .unwrap();
            trail["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| r["details"]["name"] == name.as_str() && r["actor"]["auth_method"] == "system")
                .map(|r| r["operation"].as_str().unwrap().to_string())
                .collect::<Vec<String>>()
        };
        let seen = TestCluster::wait_for("the node's three host events", Duration::from_secs(5), || async {
            let ops = of_node().await;
            (ops.len() >= expected.len()).then_some(ops)
        })
        .await;
        assert_eq!(seen, expected, "{backend:?}");
        c.agents.push(back);
        c.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_token_is_one_time() {
    let mut c = cluster(Backend::Sqlite, 0).await;
    let token = c.admin.create_join_token(&JoinTokenCreate::default()).await.unwrap();
    let first = c
        .start_agent("first", tempfile::tempdir().unwrap(), Some(token.token.clone()))
        .await
        .unwrap();
    let again = c
        .start_agent("second", tempfile::tempdir().unwrap(), Some(token.token.clone()))
        .await;
    assert!(matches!(again, Err(AgentError::TokenRefused)), "{:?}", again.err());
    let nodes = c.admin.nodes().await.unwrap();
    assert_eq!(nodes.items.len(), 1);
    assert_eq!(nodes.items[0].name, "first");
    c.agents.push(first);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_token_bound_to_a_name_only_admits_that_name() {
    let c = cluster(Backend::Sqlite, 0).await;
    let token = c
        .admin
        .create_join_token(&JoinTokenCreate {
            node_name: Some("web-1".into()),
            ttl_s: None,
        })
        .await
        .unwrap();
    let err = c
        .start_agent("web-2", tempfile::tempdir().unwrap(), Some(token.token.clone()))
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("web-1"), "{err}");
    // The refusal consumed nothing: the right node can still use it.
    let ok = c
        .start_agent("web-1", tempfile::tempdir().unwrap(), Some(token.token))
        .await
        .unwrap();
    ok.stop().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_join_token_is_refused() {
    let clock = std::sync::Arc::new(rampart_common::time::ManualClock::new(time::OffsetDateTime::now_utc()));
    let c = TestCluster::start(ClusterOptions {
        clock: Some(clock.clone()),
        ..Default::default()
    })
    .await;
    let token = c
        .admin
        .create_join_token(&JoinTokenCreate {
            node_name: None,
            ttl_s: Some(60),
        })
        .await
        .unwrap();
    clock.advance(time::Duration::seconds(61));
    let err = c
        .start_agent("late", tempfile::tempdir().unwrap(), Some(token.token))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, AgentError::TokenRefused), "{err}");
    assert!(c.admin.nodes().await.unwrap().items.is_empty());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_12_3_1_token_pinning_another_ca_never_sends_the_secret() {
    let c = cluster(Backend::Sqlite, 0).await;
    let real = c.admin.create_join_token(&JoinTokenCreate::default()).await.unwrap();
    let parts = JoinTokenParts::parse(real.token.expose()).unwrap();
    // Same id and secret, another CA pin: the agent must stop before sending anything.
    let forged = JoinTokenParts::format(parts.id, &parts.secret, &"0".repeat(64));
    let err = c
        .start_agent("mitm", tempfile::tempdir().unwrap(), Some(Sensitive::new(forged)))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, AgentError::CaMismatch), "{err}");
    // The real token is untouched and still works.
    let ok = c
        .start_agent("real", tempfile::tempdir().unwrap(), Some(real.token))
        .await
        .unwrap();
    ok.stop().await;
    // Garbage and unknown tokens.
    let err = c
        .start_agent("x", tempfile::tempdir().unwrap(), Some(Sensitive::new("nonsense")))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, AgentError::MalformedToken), "{err}");
    let unknown = JoinTokenParts::format(uuid::Uuid::new_v4(), &parts.secret, &parts.ca_sha256);
    let err = c
        .start_agent("y", tempfile::tempdir().unwrap(), Some(Sensitive::new(unknown)))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, AgentError::TokenRefused), "{err}");
    let wrong_secret = JoinTokenParts::format(
        parts.id,
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        &parts.ca_sha256,
    );
    let err = c
        .start_agent("z", tempfile::tempdir().unwrap(), Some(Sensitive::new(wrong_secret)))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, AgentError::TokenRefused), "{err}");
    assert_eq!(c.admin.nodes().await.unwrap().items.len(), 1);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_node_is_refused_at_once_and_its_agent_stops() {
    let mut c = cluster(Backend::Sqlite, 1).await;
    c.wait_for_ready_nodes(1).await;
    let agent = c.agents.remove(0);
    let id = agent.node_id;
    let resp = c
        .admin
        .send::<()>(http::Method::DELETE, &format!("/v1/nodes/{id}"), None)
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let result = tokio::time::timeout(Duration::from_secs(10), agent.join_result())
        .await
        .expect("agent stops");
    assert!(matches!(result, Err(AgentError::Removed(_))), "{result:?}");
    assert!(c.admin.nodes().await.unwrap().items.is_empty());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_generation_reaches_the_agent_without_waiting_for_the_poll_timeout() {
    let c = cluster(Backend::Sqlite, 1).await;
    c.wait_for_ready_nodes(1).await;
    let agent = &c.agents[0];
    let ledger = agent.dir.path().join("desired.json");
    // The node reports ready before its ledger is on disk (and the file is replaced by a
    // rename): a missing or half-seen ledger is "not yet", not a failure.
    let read_gen = || -> Option<i64> {
        let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&ledger).ok()?).ok()?;
        doc["generation"].as_i64()
    };
    TestCluster::wait_for("first generation applied", Duration::from_secs(5), || async {
        (read_gen() == Some(1)).then_some(())
    })
    .await;
    // Let the agent settle into a long poll, then publish a changed document.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let state = &c.controller.state;
    let mut conn = state.db.conn().await.unwrap();
    let doc = format!(
        r#"{{"node_id":"{}","node_name":"node-0","generation":0,"heartbeat_interval_s":2}}"#,
        agent.node_id
    );
    let generation = rampart_db::nodes::publish_config(&mut conn, agent.node_id, &doc)
        .await
        .unwrap();
    drop(conn);
    assert_eq!(generation, 2);
    let published = std::time::Instant::now();
    state.notify_node_changes();
    TestCluster::wait_for("generation 2 in the ledger", Duration::from_secs(3), || async {
        (read_gen() == Some(2)).then_some(())
    })
    .await;
    assert!(
        published.elapsed() < Duration::from_secs(3),
        "long poll woke on the change (timeout is 5 s)"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_ride_out_a_controller_restart_and_pick_up_changed_settings() {
    for backend in backends().await {
        let c = cluster(backend, 2).await;
        c.wait_for_ready_nodes(2).await;
        let before = c.admin.nodes().await.unwrap();
        // A restart with another heartbeat interval: every node's document changes, so every
        // generation moves by one and the agents apply it without joining again.
        let c = c
            .restart_controller(|config| config.nodes.heartbeat_interval_s = 2)
            .await;
        TestCluster::wait_for("new generation applied everywhere", Duration::from_secs(15), || async {
            let nodes = c.admin.nodes().await.ok()?;
            nodes
                .items
                .iter()
                .all(|n| n.state == NodeState::Ready && n.generation == 2 && n.applied_generation == 2)
                .then_some(())
        })
        .await;
        let after = c.admin.nodes().await.unwrap();
        let ids = |l: &rampart_api::List<rampart_api::Node>| l.items.iter().map(|n| n.id).collect::<Vec<_>>();
        assert_eq!(ids(&before), ids(&after), "same nodes, no re-join");
        for a in &c.agents {
            let doc: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(a.dir.path().join("desired.json")).unwrap()).unwrap();
            assert_eq!(doc["heartbeat_interval_s"], 2);
        }
        c.shutdown().await;
    }
}

/// Background work runs as separate supervised tasks, each with its own health (issue 14):
/// the lease holder shows its leader-only tasks running, the short health stays short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verbose_health_lists_every_background_task_with_its_state() {
    for backend in backends().await {
        let c = cluster(backend, 1).await;
        c.wait_for_ready_nodes(1).await;
        assert!(
            c.anon.health().await.unwrap().tasks.is_empty(),
            "the short answer has no tasks"
        );
        let tasks = TestCluster::wait_for("every task ran once", Duration::from_secs(15), || async {
            let h: rampart_api::Health = c.anon.get("/v1/health?verbose").await.ok()?;
            h.tasks.iter().all(|t| t.state == "ok").then_some(h.tasks)
        })
        .await;
        let names: Vec<&str> = tasks.iter().map(|t| t.name.as_str()).collect();
        for wanted in [
            "reconciler_lease",
            "node_liveness",
            "audit_checkpoint",
            "audit_intents",
            "audit_retention",
            "alarms",
            "metrics_prune",
            "token_purge",
            "key_maintenance",
            "server_certificate",
        ] {
            assert!(names.contains(&wanted), "{wanted} missing from {names:?}");
        }
        let lease = tasks.iter().find(|t| t.name == "reconciler_lease").unwrap();
        assert!(!lease.leader_only && lease.period_s == 1 && lease.last_success_at.is_some());
        let liveness = tasks.iter().find(|t| t.name == "node_liveness").unwrap();
        assert!(liveness.leader_only && liveness.consecutive_failures == 0 && liveness.restarts == 0);
        c.shutdown().await;
    }
}
