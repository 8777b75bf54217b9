//! The audit trail through the simulated cluster (spec 13.4, 9.2-5, 9.3-3): what each call
//! records, who may read and manage the trail, tampering found through the API, a failed
//! audit write failing the call, the retention purge under the lease with a movable clock, and
//! forwarding to a real rsyslog TLS receiver that goes down and comes back.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use rampart_api::{Client, LoginRequest, ScopeRef};
use rampart_audit::AuditRecord;
use rampart_common::Sensitive;
use rampart_testkit::rsyslog::{Rsyslog, available};
use rampart_testkit::{ClusterOptions, TestCluster};
use serde_json::{Value, json};

const AUDITOR_PASSWORD: &str = "Ledger-heron-4417";

async fn cluster_with(configure: impl FnOnce(&mut rampart_common::config::Config) + Send + 'static) -> TestCluster {
    TestCluster::start(ClusterOptions {
        configure: Box::new(configure),
        ..Default::default()
    })
    .await
}

async fn auditor(c: &TestCluster, name: &str) -> Client {
    let system = ScopeRef {
        system: Some(true),
        ..Default::default()
    };
    c.create_user(name, AUDITOR_PASSWORD, &[("auditor", system)]).await;
    // Auditors need a second factor by default.
    c.login_with_mfa(name, AUDITOR_PASSWORD).await.0
}

async fn events(client: &Client, query: &str) -> Vec<AuditRecord> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let sep = if query.is_empty() { "" } else { "&" };
        let path = match &cursor {
            Some(c) => format!("/v1/audit/events?limit=1000{sep}{query}&cursor={c}"),
            None => format!("/v1/audit/events?limit=1000{sep}{query}"),
        };
        let page: rampart_api::List<AuditRecord> = client.get(&path).await.unwrap();
        out.extend(page.items);
        match page.next {
            Some(n) => cursor = Some(n),
            None => return out,
        }
    }
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

fn sqlite(c: &TestCluster) -> String {
    format!("sqlite://{}", c.db.sqlite_path().unwrap().display())
}

async fn raw_sql(c: &TestCluster, sql: &str) {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&sqlite(c)).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_4_1_every_call_and_authentication_event_is_recorded_with_who_what_where_and_result() {
    let c = cluster_with(|_| {}).await;
    let alice = auditor(&c, "alice").await;

    // A state change through the API: its record carries the response's request id.
    let resp = c
        .admin
        .send(Method::POST, "/v1/groups", Some(&json!({"name": "ops"})))
        .await
        .unwrap();
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let group: Value = resp.json().await.unwrap();
    let all = events(&alice, "").await;
    let r = all
        .iter()
        .find(|r| {
            r.request_id.as_deref() == Some(request_id.as_str()) && r.result.outcome != rampart_audit::Outcome::Pending
        })
        .expect("a completion record under the response's request id");
    // Its write-ahead record came first, under the same request id, naming the same actor.
    let intent = all
        .iter()
        .find(|r| r.request_id.as_deref() == Some(request_id.as_str()))
        .unwrap();
    assert_eq!(
        (intent.result.outcome, intent.seq, intent.actor.name.as_deref()),
        (
            rampart_audit::Outcome::Pending,
            r.details["intent_seq"].as_u64().unwrap(),
            Some("admin")
        )
    );
    assert_eq!(r.operation, "group.create");
    assert_eq!(r.actor.name.as_deref(), Some("admin"));
    assert_eq!(r.actor.domain.as_deref(), Some("default"));
    assert_eq!(r.actor.auth_method, rampart_audit::AuthMethod::Token);
    assert_eq!(r.source_ip.as_deref(), Some("127.0.0.1"));
    assert!(r.user_agent.as_deref().unwrap().starts_with("rampart/"));
    assert_eq!(r.target.kind, "group");
    assert_eq!(r.target.id.as_deref(), group["id"].as_str());
    assert_eq!(
        (r.result.outcome, r.result.status),
        (rampart_audit::Outcome::Success, 201)
    );

    // Authentication events of the cluster's start: the bootstrap admin's password change
    // and MFA enrolment, and the auditor's login.
    for op in ["auth.password.change", "auth.mfa.enroll", "auth.mfa.confirm"] {
        assert!(
            all.iter()
                .any(|r| r.operation == op && r.actor.name.as_deref() == Some("admin") && r.result.status < 300),
            "{op} recorded"
        );
    }
    assert!(all.iter().any(|r| r.operation == "auth.login"
        && r.actor.name.as_deref() == Some("alice")
        && r.actor.auth_method == rampart_audit::AuthMethod::Password
        && r.result.status == 201));
    assert!(all.iter().any(|r| r.operation == "auth.login"
        && r.actor.name.as_deref() == Some("admin")
        && r.actor.auth_method == rampart_audit::AuthMethod::PasswordTotp));

    // A wrong password for a known user, a user that does not exist (a password typed into
    // the user field is never stored), a call without a token, a call the roles refuse.
    let typed_password = "Canary-typed-into-user-field-9";
    assert!(c.anon.login(&login("alice", "wrong-Password-1")).await.is_err());
    assert!(c.anon.login(&login(typed_password, "whatever-Pass-2")).await.is_err());
    let no_token = c.anon.send::<()>(Method::GET, "/v1/nodes", None).await.unwrap_err();
    assert_eq!(no_token.status(), Some(StatusCode::UNAUTHORIZED));
    let forbidden = alice
        .send(Method::POST, "/v1/groups", Some(&json!({"name": "x"})))
        .await
        .unwrap_err();
    assert_eq!(forbidden.status(), Some(StatusCode::FORBIDDEN));

    // Five failures lock carol's account: the lockout is an event of its own.
    c.create_user("carol", "Quiet-otter-8812", &[]).await;
    for _ in 0..5 {
        assert!(c.anon.login(&login("carol", "not-her-Passw0rd")).await.is_err());
    }
    let (bob, _) = {
        c.create_user("bob", "Amber-lynx-5120", &[]).await;
        c.anon.login_as("bob", "Amber-lynx-5120").await.unwrap()
    };
    bob.logout().await.unwrap();

    let all = events(&alice, "").await;
    let text = serde_json::to_string(&all).unwrap();
    assert!(
        !text.contains(typed_password),
        "a name typed at login is never recorded"
    );
    let failed: Vec<&AuditRecord> = all
        .iter()
        .filter(|r| r.operation == "auth.login" && r.result.outcome == rampart_audit::Outcome::Failure)
        .collect();
    assert!(failed.iter().any(|r| r.actor.name.as_deref() == Some("alice")
        && r.result.code.as_deref() == Some("invalid_credentials")
        && r.details["reason"] == "wrong_password"));
    assert!(
        failed
            .iter()
            .any(|r| r.actor.name.is_none() && r.details["reason"] == "unknown_user")
    );
    assert!(all.iter().any(|r| r.operation == "node.list"
        && r.result.status == 401
        && r.result.code.as_deref() == Some("unauthenticated")));
    assert!(all.iter().any(|r| r.operation == "group.create"
        && r.actor.name.as_deref() == Some("alice")
        && r.result.status == 403
        && r.result.code.as_deref() == Some("forbidden")));
    let lock = all
        .iter()
        .find(|r| r.operation == "auth.lockout")
        .expect("lockout recorded");
    assert_eq!(lock.actor.name.as_deref(), Some("carol"));
    assert!(
        all.iter()
            .any(|r| r.operation == "auth.logout" && r.actor.name.as_deref() == Some("bob"))
    );
    // Reads of the trail are recorded too (the audit of the auditor).
    assert!(
        all.iter()
            .any(|r| r.operation == "audit.events.list" && r.actor.name.as_deref() == Some("alice"))
    );
    // Plain reads are not.
    assert!(!all.iter().any(|r| r.operation == "user.list"));
    // Filters.
    let mine = events(&alice, "actor=carol&operation=auth.*&result=failure").await;
    assert!(mine.len() >= 5 && mine.iter().all(|r| r.actor.name.as_deref() == Some("carol")));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_4_6_retention_is_changed_only_by_auditor_or_security_admin_and_each_change_is_recorded() {
    let c = cluster_with(|_| {}).await;
    let alice = auditor(&c, "alice").await;
    let policy: Value = c.admin.get("/v1/audit/retention").await.unwrap();
    assert_eq!(
        policy,
        json!({"operation_days": 180, "run_days": 30, "blackbox_days": 90, "security_days": 365})
    );
    let new = json!({"operation_days": 400, "run_days": 14, "blackbox_days": 60, "security_days": 400});
    let err = c
        .admin
        .send(Method::PUT, "/v1/audit/retention", Some(&new))
        .await
        .unwrap_err();
    assert_eq!(
        err.status(),
        Some(StatusCode::FORBIDDEN),
        "the system admin may not shorten the trail"
    );
    let bad = json!({"operation_days": 90, "run_days": 14, "blackbox_days": 60, "security_days": 400});
    let err = alice
        .send(Method::PUT, "/v1/audit/retention", Some(&bad))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("validation_failed"));
    let ClientError::Api { body, .. } = &err else { panic!() };
    assert_eq!(
        body.error.details.as_ref().unwrap()["fields"][0]["field"],
        "operation_days"
    );
    let unknown = json!({"operation_days": 400, "run_days": 14, "blackbox_days": 60, "security_days": 400, "x": 1});
    let err = alice
        .send(Method::PUT, "/v1/audit/retention", Some(&unknown))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("invalid_request"));
    alice
        .send(Method::PUT, "/v1/audit/retention", Some(&new))
        .await
        .unwrap();
    let now: Value = alice.get("/v1/audit/retention").await.unwrap();
    assert_eq!(now, new);
    let changes = events(&alice, "operation=audit.retention.update").await;
    let ok: Vec<&AuditRecord> = changes.iter().filter(|r| r.result.status == 200).collect();
    assert_eq!(ok.len(), 1);
    assert_eq!(ok[0].actor.name.as_deref(), Some("alice"));
    assert_eq!(ok[0].details["old"]["operation_days"], 180);
    assert_eq!(ok[0].details["new"]["operation_days"], 400);
    assert!(
        changes
            .iter()
            .any(|r| r.result.status == 403 && r.actor.name.as_deref() == Some("admin"))
    );
    // A project member cannot even read the trail.
    let project = c.admin_project().await;
    c.create_user(
        "mel",
        "Velvet-crane-2231",
        &[(
            "member",
            ScopeRef {
                project: Some(project),
                ..Default::default()
            },
        )],
    )
    .await;
    let (mel, _) = c.anon.login_as("mel", "Velvet-crane-2231").await.unwrap();
    let err = mel.get::<Value>("/v1/audit/events").await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::FORBIDDEN));
    // No API edits or deletes a record.
    for (m, p) in [
        (Method::DELETE, "/v1/audit/events".to_string()),
        (Method::PUT, "/v1/audit/events".to_string()),
        (Method::DELETE, format!("/v1/audit/events/{}", changes[0].id)),
        (Method::PATCH, format!("/v1/audit/events/{}", changes[0].id)),
    ] {
        let err = alice.send::<()>(m.clone(), &p, None).await.unwrap_err();
        assert!(
            matches!(
                err.status(),
                Some(StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED)
            ),
            "{m} {p}: {err:?}"
        );
    }
    c.shutdown().await;
}

use rampart_api::ClientError;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_4_1_verify_through_the_api_names_the_tampered_seq_and_kind() {
    let c = cluster_with(|cfg| cfg.audit.checkpoint_every_records = 5).await;
    let alice = auditor(&c, "alice").await;
    for i in 0..12 {
        c.admin
            .send(Method::POST, "/v1/groups", Some(&json!({"name": format!("g{i}")})))
            .await
            .unwrap();
    }
    let report: Value = alice.post("/v1/audit/verify", &json!({})).await.unwrap();
    assert_eq!(report["ok"], true, "{report}");
    assert!(report["checked"].as_u64().unwrap() >= 12);
    assert!(report["checkpoints_trusted"].as_u64().unwrap() >= 2);
    // An attacker with the database file: drop the guards, change a byte of record 3,
    // delete record 6, forge checkpoint 1.
    raw_sql(
        &c,
        "DROP TRIGGER audit_records_no_update; DROP TRIGGER audit_records_no_delete; DROP TRIGGER audit_checkpoints_no_update; \
         UPDATE audit_records SET source_ip = '10.9.9.9' WHERE seq = 3; \
         DELETE FROM audit_records WHERE seq = 6; \
         UPDATE audit_checkpoints SET checkpoint = replace(checkpoint, '\"tree_size\":5', '\"tree_size\":4') WHERE seq = 1;",
    )
    .await;
    let report: Value = alice.post("/v1/audit/verify", &json!({})).await.unwrap();
    assert_eq!(report["ok"], false);
    let problems: Vec<(u64, String)> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["seq"].as_u64().unwrap(), p["kind"].as_str().unwrap().to_string()))
        .collect();
    assert!(problems.contains(&(3, "modified".into())), "{problems:?}");
    assert!(problems.contains(&(6, "missing".into())), "{problems:?}");
    assert!(problems.contains(&(4, "bad_signature".into())), "{problems:?}");
    // The verification is recorded with its outcome.
    let v = events(&alice, "operation=audit.verify").await;
    assert_eq!(v.last().unwrap().details["ok"], false);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_4_1_a_call_whose_record_cannot_be_written_fails_with_503() {
    let c = cluster_with(|_| {}).await;
    raw_sql(
        &c,
        "CREATE TRIGGER test_audit_down BEFORE INSERT ON audit_records BEGIN SELECT RAISE(ABORT, 'disk full'); END;",
    )
    .await;
    let err = c
        .admin
        .send(Method::POST, "/v1/groups", Some(&json!({"name": "unrecorded"})))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(err.code(), Some("unavailable"));
    let ClientError::Api { body, .. } = &err else { panic!() };
    assert!(
        !body.error.message.contains("disk full"),
        "the cause stays in the run log"
    );
    raw_sql(&c, "DROP TRIGGER test_audit_down").await;
    assert!(
        !group_names(&c).await.contains(&"unrecorded".to_string()),
        "refused before the handler ran: nothing changed without its record"
    );
    c.admin
        .send(Method::POST, "/v1/groups", Some(&json!({"name": "recorded"})))
        .await
        .unwrap();
    c.shutdown().await;
}

async fn group_names(c: &TestCluster) -> Vec<String> {
    let page: Value = c.admin.get("/v1/groups").await.unwrap();
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_4_1_no_unaudited_changes_the_write_ahead_record_comes_first() {
    let c = cluster_with(|_| {}).await;
    let alice = auditor(&c, "alice").await;

    // The store takes the write-ahead record and then fails: the caller hears 503, the change
    // happened, and the trail holds the pending record of that very request.
    raw_sql(
        &c,
        "CREATE TRIGGER test_audit_half BEFORE INSERT ON audit_records WHEN NEW.outcome <> 'pending' \
         BEGIN SELECT RAISE(ABORT, 'disk full'); END;",
    )
    .await;
    let err = c
        .admin
        .send(Method::POST, "/v1/groups", Some(&json!({"name": "half-recorded"})))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    let ClientError::Api { body, .. } = &err else { panic!() };
    assert!(
        body.error.message.contains("was performed") && !body.error.message.contains("disk full"),
        "{}",
        body.error.message
    );
    raw_sql(&c, "DROP TRIGGER test_audit_half").await;
    assert!(group_names(&c).await.contains(&"half-recorded".to_string()));
    // The only group.create request without a completion record is that one.
    let creates = events(&alice, "operation=group.create").await;
    let unfinished: Vec<&AuditRecord> = creates
        .iter()
        .filter(|r| creates.iter().filter(|o| o.request_id == r.request_id).count() == 1)
        .collect();
    assert_eq!(unfinished.len(), 1, "{creates:?}");
    let intent = unfinished[0];
    assert_eq!(intent.result.outcome, rampart_audit::Outcome::Pending);
    assert_eq!(
        intent.actor.name.as_deref(),
        Some("admin"),
        "the actor is known before the handler runs"
    );
    assert_eq!(intent.source_ip.as_deref(), Some("127.0.0.1"));

    // A normal call: pending first, then the completion naming it.
    let resp = c
        .admin
        .send(Method::POST, "/v1/groups", Some(&json!({"name": "recorded"})))
        .await
        .unwrap();
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let of_call: Vec<AuditRecord> = events(&alice, "operation=group.create")
        .await
        .into_iter()
        .filter(|r| r.request_id.as_deref() == Some(request_id.as_str()))
        .collect();
    assert_eq!(of_call.len(), 2, "{of_call:?}");
    assert_eq!(of_call[0].result.outcome, rampart_audit::Outcome::Pending);
    assert_eq!(of_call[1].result.outcome, rampart_audit::Outcome::Success);
    assert_eq!(of_call[1].details["intent_seq"], of_call[0].seq);
    // Reads and refused authentication need no write-ahead record.
    assert!(
        events(&alice, "result=pending")
            .await
            .iter()
            .all(|r| r.operation != "audit.events.list")
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_4_6_purge_job_runs_under_the_lease_with_a_movable_clock() {
    let clock = Arc::new(rampart_common::time::ManualClock::new(time::OffsetDateTime::now_utc()));
    let shared: rampart_common::time::SharedClock = clock.clone();
    let c = TestCluster::start(ClusterOptions {
        clock: Some(shared),
        configure: Box::new(|cfg| {
            cfg.audit.purge_interval_s = 1;
            cfg.audit.checkpoint_every_records = 4;
        }),
        ..Default::default()
    })
    .await;
    for i in 0..6 {
        c.admin
            .send(Method::POST, "/v1/groups", Some(&json!({"name": format!("g{i}")})))
            .await
            .unwrap();
    }
    let state = c.controller.state.clone();
    let store = state.audit.store.clone();
    use rampart_audit::AuditStore;
    let before = store.read(0, 10_000).await.unwrap().len();
    assert!(before >= 6);
    let dumps = c.data_dir.path().join("blackbox");
    std::fs::create_dir_all(&dumps).unwrap();
    std::fs::write(dumps.join("panic-old.json"), "{}").unwrap();
    // 400 days later everything is past the operation and security retention.
    clock.advance(time::Duration::days(400));
    TestCluster::wait_for("the purge", Duration::from_secs(20), || {
        let store = store.clone();
        async move {
            let rows = store.read(0, 10_000).await.ok()?;
            let first = rows.first()?.as_ref().ok()?.seq;
            (first > before as u64).then_some(())
        }
    })
    .await;
    let rows = store.read(0, 10_000).await.unwrap();
    let purge = rows
        .iter()
        .flatten()
        .find(|r| r.operation == "audit.records.purge")
        .expect("the purge is itself recorded");
    assert_eq!(purge.actor.auth_method, rampart_audit::AuthMethod::System);
    assert!(purge.details["removed"].as_u64().unwrap() >= before as u64);
    let keys = {
        let mut conn = state.db.conn().await.unwrap();
        rampart_db::audit::keys(&mut conn).await.unwrap()
    };
    let report = rampart_audit::store::verify_store(&store, &keys, Default::default())
        .await
        .unwrap();
    assert!(report.ok, "{report:?}");
    assert!(
        !dumps.join("panic-old.json").exists(),
        "black-box dumps past retention removed"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_4_5_records_reach_a_real_rsyslog_across_a_restart_without_loss_or_duplicates() {
    if !available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut rsyslog = Rsyslog::new(tmp.path());
    rsyslog.start();
    let c = cluster_with(|cfg| {
        cfg.audit.forward_probe_interval_s = 1;
        cfg.audit.forward_retry_max_s = 1;
        cfg.audit.checkpoint_every_records = 10;
    })
    .await;
    let alice = auditor(&c, "alice").await;
    // The system admin may not redirect the trail; the auditor may.
    let err = c
        .admin
        .send(
            Method::PUT,
            "/v1/audit/forwarding",
            Some(&rsyslog.forwarding_settings()),
        )
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::FORBIDDEN));
    let mut bad = rsyslog.forwarding_settings();
    bad["ca_pem"] = json!("not a certificate");
    let err = alice
        .send(Method::PUT, "/v1/audit/forwarding", Some(&bad))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("validation_failed"));
    alice
        .send(
            Method::PUT,
            "/v1/audit/forwarding",
            Some(&rsyslog.forwarding_settings()),
        )
        .await
        .unwrap();
    let group = |i: u32| json!({ "name": format!("g{i}") });
    for i in 0..15 {
        c.admin.send(Method::POST, "/v1/groups", Some(&group(i))).await.unwrap();
    }
    let status = |a: Client| async move { a.get::<Value>("/v1/audit/forwarding").await.unwrap()["status"].clone() };
    TestCluster::wait_for("forwarding to drain", Duration::from_secs(30), || {
        let a = alice.clone();
        async move {
            let s = status(a).await;
            (s["active"] == true && s["pending"] == 0 && s["delivered"].as_u64()? > 15).then_some(())
        }
    })
    .await;

    // The receiver goes down while calls go on: degraded, nothing lost.
    rsyslog.stop();
    for i in 15..30 {
        c.admin.send(Method::POST, "/v1/groups", Some(&group(i))).await.unwrap();
    }
    let down = TestCluster::wait_for("the degraded alarm", Duration::from_secs(30), || {
        let a = alice.clone();
        async move {
            let s = status(a).await;
            (s["degraded"] == true).then_some(s)
        }
    })
    .await;
    assert!(
        down["degraded_since"].is_string() && down["last_error"].is_string(),
        "{down}"
    );
    assert!(down["pending"].as_u64().unwrap() > 0);
    rsyslog.start();
    TestCluster::wait_for("recovery", Duration::from_secs(60), || {
        let a = alice.clone();
        async move {
            let s = status(a).await;
            (s["degraded"] == false && s["pending"] == 0).then_some(())
        }
    })
    .await;
    let listed = events(&alice, "").await;
    // Wait for the last listed records to be forwarded, then compare.
    let last = listed.last().unwrap().seq;
    TestCluster::wait_for("the last record at the receiver", Duration::from_secs(30), || {
        let got = rsyslog.received_seqs();
        async move { got.contains_key(&last).then_some(()) }
    })
    .await;
    let got = rsyslog.received_seqs();
    let missing: Vec<u64> = listed.iter().map(|r| r.seq).filter(|s| !got.contains_key(s)).collect();
    let twice: Vec<(&u64, &usize)> = got.iter().filter(|(_, n)| **n > 1).collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
    assert!(twice.is_empty(), "received twice: {twice:?}");
    // Checkpoints travel too: the log manager is the external witness.
    assert!(rsyslog.output().contains("[checkpoint@32473 "));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_4_1_system_admin_reads_the_trail_only_auditors_verify_and_pages_follow_the_cursor() {
    let c = cluster_with(|_| {}).await;
    let alice = auditor(&c, "alice").await;
    for i in 0..7 {
        c.admin
            .send(Method::POST, "/v1/groups", Some(&json!({"name": format!("p{i}")})))
            .await
            .unwrap();
    }
    // API.md: the system admin reads the trail; verifying and managing it are the auditor's
    // and the security admin's (the one whose actions are recorded does not judge them).
    let page: Value = c
        .admin
        .get("/v1/audit/events?operation=group.create&result=success")
        .await
        .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 7);
    let refused = c
        .admin
        .send(Method::POST, "/v1/audit/verify", Some(&json!({})))
        .await
        .unwrap_err();
    assert_eq!(refused.status(), Some(StatusCode::FORBIDDEN));
    let refused = c
        .admin
        .send(Method::PUT, "/v1/audit/forwarding", Some(&json!({"enabled": false})))
        .await
        .unwrap_err();
    assert_eq!(refused.status(), Some(StatusCode::FORBIDDEN));

    // Pages of 3 follow the cursor to the end: every record once, in order.
    let all = events(&alice, "operation=group.create&result=success").await;
    assert_eq!(all.len(), 7);
    let mut paged: Vec<u64> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(cur) => format!("/v1/audit/events?operation=group.create&result=success&limit=3&cursor={cur}"),
            None => "/v1/audit/events?operation=group.create&result=success&limit=3".to_string(),
        };
        let page: rampart_api::List<AuditRecord> = alice.get(&path).await.unwrap();
        assert!(page.items.len() <= 3);
        paged.extend(page.items.iter().map(|r| r.seq));
        pages += 1;
        match page.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(paged, all.iter().map(|r| r.seq).collect::<Vec<_>>());
    assert!(paged.windows(2).all(|w| w[0] < w[1]));
    // Newest first, and a time window.
    let desc: rampart_api::List<AuditRecord> = alice
        .get("/v1/audit/events?operation=group.create&result=success&order=desc&limit=2")
        .await
        .unwrap();
    assert_eq!(desc.items[0].seq, *paged.last().unwrap());
    let after_last = all.last().unwrap().time + time::Duration::milliseconds(1);
    let since = after_last
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let none: rampart_api::List<AuditRecord> = alice
        .get(&format!(
            "/v1/audit/events?operation=group.create&since={}",
            since.replace('+', "%2B")
        ))
        .await
        .unwrap();
    assert!(none.items.is_empty());
    // Bad parameters are refused with the field named.
    for q in [
        "limit=0",
        "limit=1001",
        "cursor=not-a-cursor",
        "result=maybe",
        "order=up",
        "nope=1",
    ] {
        let err = alice.get::<Value>(&format!("/v1/audit/events?{q}")).await.unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST), "{q}");
    }
    c.shutdown().await;
}

/// Posts `body` to a key operation as `client`; returns the status.
async fn key_call(c: &TestCluster, client: &Client, path: &str, body: &Value) -> StatusCode {
    let tls = rampart_api::tls::client_config(c.controller.ca_pem().as_bytes(), None).unwrap();
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .unwrap();
    http.post(format!("{}{path}", c.controller.url()))
        .bearer_auth(client.token().unwrap().expose())
        .json(body)
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_4_1_refused_key_calls_cannot_flood_the_trail() {
    const LIMIT: u32 = 4;
    let c = cluster_with(|config| config.audit.refused_calls_per_minute = LIMIT).await;
    let a = c.admin_project().await;
    let b: rampart_api::Project = c.admin.post("/v1/projects", &json!({"name": "flood-b"})).await.unwrap();
    let in_project = |p: uuid::Uuid| ScopeRef {
        project: Some(p),
        ..Default::default()
    };
    c.create_user("outsider", AUDITOR_PASSWORD, &[("key-user", in_project(b.id))])
        .await;
    c.create_user("insider", AUDITOR_PASSWORD, &[("key-user", in_project(a))])
        .await;
    let outsider = c.anon.login_as("outsider", AUDITOR_PASSWORD).await.unwrap().0;
    let insider = c.anon.login_as("insider", AUDITOR_PASSWORD).await.unwrap().0;
    let reader = auditor(&c, "flood-auditor").await;

    // ~600 KB of context, to a project the caller cannot see.
    let huge: serde_json::Map<String, Value> = (0..600)
        .map(|i| (format!("k{i:04}"), Value::String("v".repeat(1000))))
        .collect();
    let body = json!({"plaintext": "aGk=", "context": huge});
    let key = uuid::Uuid::new_v4();
    let path = format!("/v1/projects/{a}/keys/{key}/encrypt");
    assert_eq!(key_call(&c, &outsider, &path, &body).await, StatusCode::NOT_FOUND);
    // An authorized caller over the 32-entry limit: refused, nothing of the context kept.
    let over: serde_json::Map<String, Value> = (0..33).map(|i| (format!("k{i}"), Value::from("v"))).collect();
    assert_eq!(
        key_call(&c, &insider, &path, &json!({"plaintext": "aGk=", "context": over})).await,
        StatusCode::BAD_REQUEST
    );
    let records = events(&reader, "operation=key.encrypt").await;
    assert!(!records.is_empty());
    for r in &records {
        let size = serde_json::to_vec(r).unwrap().len();
        assert!(size < 4096, "a {size}-byte record for a refused call: {:?}", r.details);
        assert!(r.details.get("encryption_context").is_none(), "{:?}", r.details);
    }

    // The outsider goes on: past the limit its calls get 429 and add no record. (A small body:
    // a 429 answered before a large body is read may close the connection while the client
    // still writes it, which the client sees as a broken pipe, not as the answer.)
    let small = json!({"plaintext": "aGk=", "context": {"k": "v"}});
    let mut statuses = vec![];
    for _ in 0..LIMIT + 3 {
        statuses.push(key_call(&c, &outsider, &path, &small).await);
    }
    let refused = statuses.iter().filter(|s| **s == StatusCode::NOT_FOUND).count();
    assert_eq!(refused as u32, LIMIT - 1, "{statuses:?}");
    assert!(
        statuses[LIMIT as usize - 1..]
            .iter()
            .all(|s| *s == StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    let outsider_records = events(&reader, "operation=key.encrypt&actor=outsider").await;
    // Each refused call: its write-ahead intent and its completion.
    assert_eq!(outsider_records.len() as u32, 2 * LIMIT, "{outsider_records:?}");
    // Another principal from the same address is not limited.
    assert_eq!(
        key_call(&c, &insider, &path, &json!({"plaintext": "aGk="})).await,
        StatusCode::NOT_FOUND,
        "the insider is not rate limited (no such key)"
    );
    c.shutdown().await;
}
