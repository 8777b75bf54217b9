//! The DB tier: every test runs on SQLite and on PostgreSQL (when configured; required in CI).

use rampart_api::NodeState;
use rampart_db::identity::{self, NewToken, NewUser, Scope};
use rampart_db::testing::TestDb;
use rampart_db::{Backend, ConnectOptions, Db, DbError, leases, meta, nodes};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

fn now() -> OffsetDateTime {
    // Millisecond precision, as stored.
    rampart_common::time::from_ms(rampart_common::time::to_ms(OffsetDateTime::now_utc()))
}

async fn each_backend<F, Fut>(f: F)
where
    F: Fn(Db) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for t in TestDb::all().await {
        let db = t.connect().await;
        eprintln!("backend {:?}", db.backend());
        f(db.clone()).await;
        db.close().await;
    }
}

#[tokio::test]
async fn spec_9_2_migrations_produce_the_same_schema_on_both_backends() {
    let sqlite = TestDb::sqlite();
    let Some(pg) = TestDb::postgres().await else {
        return;
    };
    let a = sqlite.connect().await.schema().await.unwrap();
    let b = pg.connect().await.schema().await.unwrap();
    assert!(a.len() >= 8, "schema read back: {a:?}");
    let names = |s: &rampart_db::Schema| s.iter().map(|t| t.0.clone()).collect::<Vec<_>>();
    assert_eq!(names(&a), names(&b), "tables differ");
    for ((ta, ca), (_, cb)) in a.iter().zip(b.iter()) {
        assert_eq!(ca, cb, "columns of table {ta} differ between SQLite and PostgreSQL");
    }
}

#[tokio::test]
async fn migrations_are_idempotent_across_restarts() {
    for t in TestDb::all().await {
        let db = t.connect().await;
        let mut c = db.conn().await.unwrap();
        meta::set(&mut c, "k", "v1").await.unwrap();
        drop(c);
        db.close().await;
        let db = t.connect().await;
        let mut c = db.conn().await.unwrap();
        assert_eq!(meta::get(&mut c, "k").await.unwrap().as_deref(), Some("v1"));
    }
}

#[tokio::test]
async fn spec_9_1_1e_sqlite_file_is_private_and_in_wal_mode() {
    let t = TestDb::sqlite();
    let db = t.connect().await;
    let path = t.sqlite_path().unwrap();
    assert_eq!(rampart_common::fsutil::mode_of(&path).unwrap(), 0o600);
    let mut c = db.conn().await.unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut *c)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(&mut *c)
        .await
        .unwrap();
    assert_eq!(fk, 1);
    let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(&mut *c)
        .await
        .unwrap();
    assert_eq!(sync, 2, "synchronous=FULL");
    let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
        .fetch_one(&mut *c)
        .await
        .unwrap();
    assert!(busy >= 5000);
}

#[tokio::test]
async fn identity_round_trip_and_unique_names() {
    each_backend(|db| async move {
        let t = now();
        let mut tx = db.begin().await.unwrap();
        let d = identity::insert_domain(&mut tx, "default", t).await.unwrap();
        let p = identity::insert_project(&mut tx, d.id, "admin", t).await.unwrap();
        let u = identity::insert_user(
            &mut tx,
            NewUser {
                domain_id: d.id,
                name: "admin",
                password_hash: Some("$argon2id$x"),
                password_change_required: true,
            },
            t,
        )
        .await
        .unwrap();
        identity::assign_role(&mut tx, u.id, "system-admin", Scope::System, t)
            .await
            .unwrap();
        identity::assign_role(&mut tx, u.id, "system-admin", Scope::System, t)
            .await
            .unwrap();
        identity::assign_role(&mut tx, u.id, "project-admin", Scope::Project(p.id), t)
            .await
            .unwrap();
        tx.commit().await.unwrap();

        let mut c = db.conn().await.unwrap();
        assert_eq!(identity::find_domain(&mut c, "default").await.unwrap().unwrap(), d);
        assert_eq!(
            identity::find_domain(&mut c, &d.id.to_string()).await.unwrap().unwrap(),
            d
        );
        assert_eq!(identity::find_project(&mut c, d.id, "admin").await.unwrap().unwrap(), p);
        let found = identity::find_user(&mut c, d.id, "admin").await.unwrap().unwrap();
        assert_eq!(found, u);
        assert!(found.password_change_required);
        let roles = identity::role_assignments(&mut c, u.id).await.unwrap();
        assert_eq!(roles.len(), 2, "{roles:?}");
        let err = identity::insert_domain(&mut c, "default", t).await.unwrap_err();
        assert!(matches!(err, DbError::Conflict(_)), "{err:?}");
        let err = identity::insert_user(
            &mut c,
            NewUser {
                domain_id: d.id,
                name: "admin",
                password_hash: None,
                password_change_required: false,
            },
            t,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, DbError::Conflict(_)), "{err:?}");
        assert!(format!("{found:?}").contains("admin") && !format!("{found:?}").contains("argon2"));
    })
    .await;
}

#[tokio::test]
async fn spec_13_2_4_tokens_expire_and_revoke() {
    each_backend(|db| async move {
        let t = now();
        let mut c = db.conn().await.unwrap();
        let d = identity::insert_domain(&mut c, "default", t).await.unwrap();
        let u = identity::insert_user(
            &mut c,
            NewUser {
                domain_id: d.id,
                name: "u",
                password_hash: None,
                password_change_required: false,
            },
            t,
        )
        .await
        .unwrap();
        let id = identity::insert_token(
            &mut c,
            NewToken {
                token_hash: "h1",
                user_id: u.id,
                project_id: None,
                scope: "full",
                methods: &["password".to_string()],
                application_credential_id: None,
                expires_at: t + Duration::hours(1),
                source_ip: Some("127.0.0.1"),
            },
            t,
        )
        .await
        .unwrap();
        identity::insert_token(
            &mut c,
            NewToken {
                token_hash: "h2",
                user_id: u.id,
                project_id: None,
                scope: "full",
                methods: &["password".to_string()],
                application_credential_id: None,
                expires_at: t - Duration::hours(1),
                source_ip: None,
            },
            t,
        )
        .await
        .unwrap();
        let tok = identity::token_by_hash(&mut c, "h1").await.unwrap().unwrap();
        assert_eq!(tok.id, id);
        assert_eq!(tok.expires_at, t + Duration::hours(1));
        assert!(tok.revoked_at.is_none());
        identity::touch_token(&mut c, id, t + Duration::minutes(5), 1000)
            .await
            .unwrap();
        assert_eq!(
            identity::token_by_hash(&mut c, "h1")
                .await
                .unwrap()
                .unwrap()
                .last_used_at,
            t + Duration::minutes(5)
        );
        assert_eq!(identity::revoke_user_tokens(&mut c, u.id, t).await.unwrap(), 2);
        assert!(
            identity::token_by_hash(&mut c, "h1")
                .await
                .unwrap()
                .unwrap()
                .revoked_at
                .is_some()
        );
        assert_eq!(identity::purge_expired_tokens(&mut c, t).await.unwrap(), 1);
        assert!(identity::token_by_hash(&mut c, "h2").await.unwrap().is_none());
        assert!(identity::token_by_hash(&mut c, "nope").await.unwrap().is_none());
    })
    .await;
}

async fn add_node(db: &Db, name: &str, t: OffsetDateTime) -> Uuid {
    let id = Uuid::new_v4();
    let mut c = db.conn().await.unwrap();
    nodes::insert_node(
        &mut c,
        nodes::NewNode {
            id,
            name,
            cert_sha256: &format!("fp-{id}"),
            cert_not_after: t + Duration::days(90),
            config: "{\"a\":1}",
        },
        t,
    )
    .await
    .unwrap();
    id
}

#[tokio::test]
async fn node_generation_moves_only_when_the_document_changes() {
    each_backend(|db| async move {
        let t = now();
        let id = add_node(&db, "n1", t).await;
        let mut c = db.conn().await.unwrap();
        assert_eq!(
            nodes::config(&mut c, id).await.unwrap().unwrap(),
            (1, "{\"a\":1}".to_string())
        );
        assert_eq!(nodes::publish_config(&mut c, id, "{\"a\":1}").await.unwrap(), 1);
        assert_eq!(nodes::publish_config(&mut c, id, "{\"a\":2}").await.unwrap(), 2);
        assert_eq!(nodes::publish_config(&mut c, id, "{\"a\":2}").await.unwrap(), 2);
        assert_eq!(
            nodes::id_by_certificate(&mut c, &format!("fp-{id}")).await.unwrap(),
            Some(id)
        );
        assert_eq!(nodes::id_by_certificate(&mut c, "other").await.unwrap(), None);
    })
    .await;
}

#[tokio::test]
async fn node_liveness_transitions() {
    each_backend(|db| async move {
        let t = now();
        let a = add_node(&db, "a", t).await;
        let b = add_node(&db, "b", t).await;
        let mut c = db.conn().await.unwrap();
        assert_eq!(nodes::get(&mut c, a).await.unwrap().unwrap().state, NodeState::Joining);
        let status = nodes::Status {
            applied_generation: 1,
            agent_version: "0.1.0",
            host_json: "{}",
            errors_json: "[]",
        };
        let (generation, before) = nodes::record_status(&mut c, a, status, t + Duration::seconds(1))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((generation, before), (1, NodeState::Joining));
        assert_eq!(nodes::counts(&mut c).await.unwrap(), (1, 2));
        // b never sent a heartbeat, a did at t+1s.
        let gone = nodes::mark_unreachable(&mut c, t + Duration::milliseconds(500), t + Duration::seconds(2))
            .await
            .unwrap();
        assert_eq!(gone, vec![(b, "b".to_string())]);
        let gone = nodes::mark_unreachable(&mut c, t + Duration::seconds(20), t + Duration::seconds(20))
            .await
            .unwrap();
        assert_eq!(gone, vec![(a, "a".to_string())]);
        assert_eq!(nodes::counts(&mut c).await.unwrap(), (0, 2));
        let status = nodes::Status {
            applied_generation: 1,
            agent_version: "0.1.0",
            host_json: "{}",
            errors_json: "[]",
        };
        let (_, before) = nodes::record_status(&mut c, a, status, t + Duration::seconds(21))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(before, NodeState::Unreachable);
        let n = nodes::get(&mut c, a).await.unwrap().unwrap();
        assert_eq!(n.state, NodeState::Ready);
        assert_eq!(n.last_heartbeat, Some(t + Duration::seconds(21)));
        let status = nodes::Status {
            applied_generation: 1,
            agent_version: "x",
            host_json: "{}",
            errors_json: "[]",
        };
        assert!(
            nodes::record_status(&mut c, Uuid::new_v4(), status, t)
                .await
                .unwrap()
                .is_none()
        );
    })
    .await;
}

#[tokio::test]
async fn nodes_list_in_pages_by_name() {
    each_backend(|db| async move {
        let t = now();
        for name in ["c", "a", "b"] {
            add_node(&db, name, t).await;
        }
        let mut c = db.conn().await.unwrap();
        let first: Vec<String> = nodes::list(&mut c, None, 2)
            .await
            .unwrap()
            .into_iter()
            .map(|n| n.name)
            .collect();
        assert_eq!(first, ["a", "b"]);
        let rest: Vec<String> = nodes::list(&mut c, Some("b"), 2)
            .await
            .unwrap()
            .into_iter()
            .map(|n| n.name)
            .collect();
        assert_eq!(rest, ["c"]);
        let err = nodes::insert_node(
            &mut c,
            nodes::NewNode {
                id: Uuid::new_v4(),
                name: "a",
                cert_sha256: "x",
                cert_not_after: t,
                config: "{}",
            },
            t,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, DbError::Conflict(_)));
    })
    .await;
}

#[tokio::test]
async fn join_token_is_consumed_once_even_under_a_race() {
    each_backend(|db| async move {
        let t = now();
        let id = Uuid::new_v4();
        let mut c = db.conn().await.unwrap();
        nodes::insert_join_token(&mut c, id, "hash", Some("n1"), None, t + Duration::hours(1), t)
            .await
            .unwrap();
        drop(c);
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                let mut tx = db.begin().await.unwrap();
                let won = nodes::consume_join_token(&mut tx, id, Uuid::new_v4(), now())
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                won
            }));
        }
        let mut winners = 0;
        for t in tasks {
            winners += t.await.unwrap() as usize;
        }
        assert_eq!(winners, 1);
        let mut c = db.conn().await.unwrap();
        let row = nodes::join_token(&mut c, id).await.unwrap().unwrap();
        assert!(row.used_at.is_some());
        assert_eq!(row.node_name.as_deref(), Some("n1"));
    })
    .await;
}

#[tokio::test]
async fn leases_have_one_holder_until_expiry() {
    each_backend(|db| async move {
        let mut c = db.conn().await.unwrap();
        assert!(leases::acquire(&mut c, "reconcilers", "a", 0, 100).await.unwrap());
        assert!(!leases::acquire(&mut c, "reconcilers", "b", 50, 150).await.unwrap());
        assert!(
            leases::acquire(&mut c, "reconcilers", "a", 60, 160).await.unwrap(),
            "holder renews"
        );
        assert!(
            leases::acquire(&mut c, "reconcilers", "b", 200, 300).await.unwrap(),
            "expired lease is taken over"
        );
        leases::release(&mut c, "reconcilers", "b").await.unwrap();
        assert!(leases::acquire(&mut c, "reconcilers", "a", 201, 301).await.unwrap());
    })
    .await;
}

#[tokio::test]
async fn unreachable_database_gives_a_clear_error_without_the_password() {
    let err = Db::connect(
        "postgres://rampart:do-not-print-me@127.0.0.1:1/rampart",
        &ConnectOptions {
            connect_timeout: std::time::Duration::from_secs(2),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    let text = rampart_common::error::ErrorChain(&err).to_string();
    assert!(
        text.contains("cannot connect to the database at postgres://rampart:***@127.0.0.1:1/rampart"),
        "{text}"
    );
    assert!(!text.contains("do-not-print-me"), "{text}");
    let err = Db::connect("mysql://x/y", &ConnectOptions::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unsupported database URL"));
}

#[tokio::test]
async fn spec_9_2_1_postgres_over_tls_with_verify_full() {
    let Some(pg) = TestDb::postgres().await else {
        return;
    };
    let ca = std::env::var(rampart_db::testing::POSTGRES_CA_ENV).expect("CA of the test PostgreSQL");
    let url = format!("{}?sslmode=verify-full&sslrootcert={ca}", pg.url);
    let db = Db::connect(&url, &ConnectOptions::default())
        .await
        .expect("verified TLS connection");
    assert_eq!(db.backend(), Backend::Postgres);
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert!(ssl, "connection is encrypted");
    db.close().await;

    // A CA that did not sign the server's certificate: refused.
    let other = tempfile::NamedTempFile::new().unwrap();
    let cert = rcgen_free_self_signed_pem();
    std::fs::write(other.path(), cert).unwrap();
    let url = format!("{}?sslmode=verify-full&sslrootcert={}", pg.url, other.path().display());
    let err = Db::connect(
        &url,
        &ConnectOptions {
            connect_timeout: std::time::Duration::from_secs(5),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, DbError::Connect { .. }), "{err:?}");
}

/// A self-signed CA certificate unrelated to the test server (any valid one will do).
fn rcgen_free_self_signed_pem() -> String {
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=other",
            "-keyout",
            "/dev/null",
        ])
        .output()
        .expect("openssl");
    String::from_utf8(out.stdout).unwrap()
}

/// The `default` domain and one user `u` in it.
async fn one_user(c: &mut rampart_db::Conn, t: OffsetDateTime) -> identity::User {
    let d = identity::insert_domain(c, "default", t).await.unwrap();
    identity::insert_user(
        c,
        NewUser {
            domain_id: d.id,
            name: "u",
            password_hash: Some("h"),
            password_change_required: false,
        },
        t,
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn spec_13_2_6_reserved_attempts_never_exceed_the_threshold() {
    each_backend(|db| async move {
        let t = now();
        let mut c = db.conn().await.unwrap();
        let u = one_user(&mut c, t).await;
        let until = t + Duration::minutes(30);
        // Five attempts in flight at once take every slot; the sixth is refused unchecked.
        for i in 0..5 {
            assert!(identity::reserve_attempt(&mut c, u.id, 5, t).await.unwrap(), "slot {i}");
        }
        assert!(!identity::reserve_attempt(&mut c, u.id, 5, t).await.unwrap());
        // One ends neutral (a right password, second factor to come): a slot frees.
        identity::release_attempt(&mut c, u.id).await.unwrap();
        assert!(identity::reserve_attempt(&mut c, u.id, 5, t).await.unwrap());
        // The first failure at the threshold locks; a success still in flight is then refused.
        assert!(identity::fail_attempt(&mut c, u.id, 5, until).await.unwrap());
        assert!(
            !identity::fail_attempt(&mut c, u.id, 5, until).await.unwrap(),
            "locked once"
        );
        assert!(!identity::succeed_attempt(&mut c, u.id, t).await.unwrap());
        assert!(!identity::reserve_attempt(&mut c, u.id, 5, t).await.unwrap(), "locked");
        // When the lock ends, the count starts afresh.
        let later = until + Duration::seconds(1);
        assert!(identity::reserve_attempt(&mut c, u.id, 5, later).await.unwrap());
        let row = identity::user_by_id(&mut c, u.id).await.unwrap().unwrap();
        assert_eq!((row.failed_attempts, row.locked_until), (1, None));
        assert!(identity::succeed_attempt(&mut c, u.id, later).await.unwrap());
        assert_eq!(
            identity::user_by_id(&mut c, u.id)
                .await
                .unwrap()
                .unwrap()
                .failed_attempts,
            0
        );
        // 0 turns lockout off: every attempt is granted, nothing locks.
        for _ in 0..10 {
            assert!(identity::reserve_attempt(&mut c, u.id, 0, later).await.unwrap());
            assert!(!identity::fail_attempt(&mut c, u.id, 0, until).await.unwrap());
        }
    })
    .await;
}

#[tokio::test]
async fn spec_13_2_6_failures_lock_and_success_resets() {
    each_backend(|db| async move {
        let t = now();
        let mut c = db.conn().await.unwrap();
        let u = one_user(&mut c, t).await;
        let until = t + Duration::minutes(30);
        assert!(!identity::record_failure(&mut c, u.id, 3, until).await.unwrap());
        assert!(!identity::record_failure(&mut c, u.id, 3, until).await.unwrap());
        identity::record_success(&mut c, u.id, t).await.unwrap();
        assert_eq!(
            identity::user_by_id(&mut c, u.id)
                .await
                .unwrap()
                .unwrap()
                .failed_attempts,
            0,
            "a success resets"
        );
        for _ in 0..2 {
            assert!(!identity::record_failure(&mut c, u.id, 3, until).await.unwrap());
        }
        assert!(
            identity::record_failure(&mut c, u.id, 3, until).await.unwrap(),
            "third consecutive failure locks"
        );
        let row = identity::user_by_id(&mut c, u.id).await.unwrap().unwrap();
        assert_eq!(row.locked_until, Some(until));
        assert_eq!(row.failed_attempts, 0, "the count restarts after a lock");
        identity::unlock(&mut c, u.id).await.unwrap();
        assert_eq!(
            identity::user_by_id(&mut c, u.id).await.unwrap().unwrap().locked_until,
            None
        );
        assert!(
            !identity::record_failure(&mut c, u.id, 0, until).await.unwrap(),
            "0 turns lockout off"
        );
    })
    .await;
}

#[tokio::test]
async fn spec_13_1_2_4_password_history_keeps_the_latest() {
    each_backend(|db| async move {
        let t = now();
        let mut c = db.conn().await.unwrap();
        let d = identity::insert_domain(&mut c, "default", t).await.unwrap();
        let u = identity::insert_user(
            &mut c,
            NewUser {
                domain_id: d.id,
                name: "u",
                password_hash: Some("h0"),
                password_change_required: false,
            },
            t,
        )
        .await
        .unwrap();
        for i in 1..30 {
            identity::set_password(&mut c, u.id, &format!("h{i}"), false, t + Duration::seconds(i))
                .await
                .unwrap();
        }
        let last = identity::password_history(&mut c, u.id, 5).await.unwrap();
        assert_eq!(last, ["h29", "h28", "h27", "h26", "h25"]);
        assert_eq!(
            identity::password_history(&mut c, u.id, 100).await.unwrap().len(),
            24,
            "bounded"
        );
    })
    .await;
}

#[tokio::test]
async fn spec_13_2_2_totp_steps_and_recovery_codes_are_single_use() {
    each_backend(|db| async move {
        let t = now();
        let mut c = db.conn().await.unwrap();
        let d = identity::insert_domain(&mut c, "default", t).await.unwrap();
        let u = identity::insert_user(
            &mut c,
            NewUser {
                domain_id: d.id,
                name: "u",
                password_hash: None,
                password_change_required: false,
            },
            t,
        )
        .await
        .unwrap();
        identity::set_totp_pending(&mut c, u.id, Some("sealed")).await.unwrap();
        identity::confirm_totp(&mut c, u.id, 100).await.unwrap();
        let row = identity::user_by_id(&mut c, u.id).await.unwrap().unwrap();
        assert!(row.mfa_enrolled() && row.totp_pending_secret.is_none());
        assert!(
            !identity::use_totp_step(&mut c, u.id, 100).await.unwrap(),
            "the confirming step is spent"
        );
        assert!(identity::use_totp_step(&mut c, u.id, 101).await.unwrap());
        assert!(!identity::use_totp_step(&mut c, u.id, 101).await.unwrap(), "replay");
        identity::replace_recovery_codes(&mut c, u.id, &["a".into(), "b".into()], t)
            .await
            .unwrap();
        assert!(identity::use_recovery_code(&mut c, u.id, "a", t).await.unwrap());
        assert!(!identity::use_recovery_code(&mut c, u.id, "a", t).await.unwrap());
        assert!(!identity::use_recovery_code(&mut c, u.id, "zz", t).await.unwrap());
    })
    .await;
}

#[tokio::test]
async fn group_assignments_reach_members_only() {
    each_backend(|db| async move {
        let t = now();
        let mut c = db.conn().await.unwrap();
        let d = identity::insert_domain(&mut c, "default", t).await.unwrap();
        let p = identity::insert_project(&mut c, d.id, "p", t).await.unwrap();
        let nu = |name| NewUser {
            domain_id: d.id,
            name,
            password_hash: None,
            password_change_required: false,
        };
        let a = identity::insert_user(&mut c, nu("a"), t).await.unwrap();
        let b = identity::insert_user(&mut c, nu("b"), t).await.unwrap();
        let g = rampart_db::groups::create(&mut c, d.id, "ops", "", t).await.unwrap();
        rampart_db::groups::add_member(&mut c, g.id, a.id, t).await.unwrap();
        let id = identity::create_assignment(&mut c, identity::Holder::Group(g.id), "member", Scope::Project(p.id), t)
            .await
            .unwrap();
        let again =
            identity::create_assignment(&mut c, identity::Holder::Group(g.id), "member", Scope::Project(p.id), t)
                .await
                .unwrap();
        assert_eq!(id, again, "idempotent");
        assert_eq!(identity::role_assignments(&mut c, a.id).await.unwrap().len(), 1);
        assert!(identity::role_assignments(&mut c, b.id).await.unwrap().is_empty());
        let listed = identity::list_assignments(&mut c, None, Some(Scope::Project(p.id)), None, 10)
            .await
            .unwrap();
        assert_eq!(listed.len(), 1);
        let found = identity::assignment_by_id(&mut c, id).await.unwrap().unwrap();
        identity::delete_assignment(&mut c, &found).await.unwrap();
        assert!(identity::role_assignments(&mut c, a.id).await.unwrap().is_empty());
    })
    .await;
}

#[tokio::test]
async fn spec_9_2_4_runtime_role_has_data_rights_but_no_ddl() {
    let Some(pg) = TestDb::postgres().await else { return };
    // A login role of our own for this test (roles are cluster-wide: unique name, dropped at the end).
    let role = format!("rt_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let password = "rt-test-password";
    let admin = std::env::var(rampart_db::testing::POSTGRES_URL_ENV).unwrap();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin)
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE {role} LOGIN PASSWORD '{password}'"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    let db_name = pg
        .url
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_string();
    let runtime_url = {
        let at = pg.url.find('@').unwrap();
        format!("postgres://{role}:{password}@{}", &pg.url[at + 1..])
    };
    // Without the owner, a fresh database cannot be migrated by the runtime role.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC; GRANT CONNECT ON DATABASE {db_name} TO {role}"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    let mut db_conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&pg.url)
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC".to_string(),
    ))
    .execute(&mut db_conn)
    .await
    .unwrap();
    assert!(
        Db::connect(&runtime_url, &ConnectOptions::default()).await.is_err(),
        "no DDL for the runtime role"
    );
    let opts = ConnectOptions {
        migration_url: Some(pg.url.clone()),
        runtime_role: Some(role.clone()),
        ..Default::default()
    };
    let db = Db::connect(&runtime_url, &opts)
        .await
        .expect("migrated by the owner, connected as the runtime role");
    let mut c = db.conn().await.unwrap();
    let d = identity::insert_domain(&mut c, "default", now())
        .await
        .expect("data rights");
    assert_eq!(identity::find_domain(&mut c, "default").await.unwrap().unwrap(), d);
    for ddl in [
        "CREATE TABLE evil (x BIGINT)",
        "DROP TABLE users",
        "ALTER TABLE users ADD COLUMN evil TEXT",
        "DELETE FROM _sqlx_migrations",
        // Spec 13.4-1: audit records and checkpoints are append-only for the controller.
        "UPDATE audit_records SET outcome = 'success'",
        "UPDATE audit_checkpoints SET key_id = 'x'",
        "DROP TRIGGER audit_records_append_only ON audit_records",
    ] {
        let err = sqlx::raw_sql(sqlx::AssertSqlSafe(ddl.to_string()))
            .execute(&mut *c)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("permission denied") || err.to_string().contains("must be owner"),
            "{ddl}: {err}"
        );
    }
    drop(c);
    db.close().await;
    drop(db_conn);
    drop(pg);
    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP OWNED BY {role}; DROP ROLE IF EXISTS {role}"
    )))
    .execute(&mut conn)
    .await;
}
