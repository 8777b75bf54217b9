//! The audit trail on SQL, on SQLite and PostgreSQL: append-only, tampering named by seq and
//! kind when the stored rows are edited directly, retention purge with a movable clock.

use std::sync::Arc;

use rampart_audit::checkpoint::{CheckpointSigner, Ed25519Signer};
use rampart_audit::record::{Actor, AuditResult, AuthMethod, NewRecord, Target};
use rampart_audit::retention::RetentionPolicy;
use rampart_audit::store::{AuditLog, CheckpointPolicy, verify_store};
use rampart_audit::verify::{ProblemKind, VerifyOptions};
use rampart_audit::{AuditStore, KeyRing};
use rampart_common::time::{ManualClock, SharedClock};
use rampart_db::audit::{EventFilter, SqlAuditStore};
use rampart_db::testing::TestDb;
use rampart_db::{Backend, Db};
use time::macros::datetime;

fn event(clock: &SharedClock, i: u64) -> NewRecord {
    NewRecord::new(
        clock.now(),
        Actor::user(
            "7d0c7f6e-7a51-4c1b-9a55-0d3c1f7b2a10",
            if i.is_multiple_of(2) { "alice" } else { "bob" },
            "default",
            AuthMethod::Token,
        ),
        if i.is_multiple_of(3) {
            "auth.login"
        } else {
            "user.create"
        },
        Target::new("user", Some(format!("u-{i}")), Some("p-1".into())),
        if i.is_multiple_of(5) {
            AuditResult::failure(409, "conflict")
        } else {
            AuditResult::success(201)
        },
    )
    .source_ip("127.0.0.1")
    .request_id(format!("req-{i}"))
}

struct Trail {
    db: Db,
    log: AuditLog<SqlAuditStore>,
    keys: KeyRing,
    clock: Arc<ManualClock>,
    shared: SharedClock,
}

async fn trail(db: &Db, every: u64) -> Trail {
    let clock = Arc::new(ManualClock::new(datetime!(2026-06-01 00:00 UTC)));
    let shared: SharedClock = clock.clone();
    let signer = Arc::new(Ed25519Signer::generate().unwrap().0);
    let keys = KeyRing::new([signer.public_key()]);
    let log = AuditLog::open(
        SqlAuditStore::new(db.clone()),
        signer,
        shared.clone(),
        CheckpointPolicy {
            every_records: every,
            every: time::Duration::seconds(60),
        },
    )
    .await
    .unwrap();
    Trail {
        db: db.clone(),
        log,
        keys,
        clock,
        shared,
    }
}

async fn exec(db: &Db, sql: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(db.pool())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// What an attacker with database rights does first.
async fn drop_guards(db: &Db) {
    match db.backend() {
        Backend::Sqlite => {
            exec(db, "DROP TRIGGER audit_records_no_update; DROP TRIGGER audit_records_no_delete; DROP TRIGGER audit_checkpoints_no_update").await
        }
        Backend::Postgres => {
            exec(db, "DROP TRIGGER audit_records_append_only ON audit_records; DROP TRIGGER audit_checkpoints_append_only ON audit_checkpoints").await
        }
    }
}

async fn report(t: &Trail) -> Vec<(u64, ProblemKind)> {
    let r = verify_store(t.log.store(), &t.keys, VerifyOptions::default())
        .await
        .unwrap();
    assert_eq!(r.ok, r.problems.is_empty());
    r.problems.iter().map(|p| (p.seq, p.kind)).collect()
}

#[tokio::test]
async fn spec_13_4_1_sql_trail_chains_checkpoints_and_reopens() {
    for t in TestDb::all().await {
        let db = t.connect().await;
        let tr = trail(&db, 10).await;
        for i in 1..=25 {
            let r = tr.log.append(event(&tr.shared, i)).await.unwrap();
            assert_eq!(r.seq, i);
        }
        assert_eq!(report(&tr).await, vec![]);
        let cps = tr.log.store().checkpoints().await.unwrap();
        assert_eq!(cps.iter().map(|c| c.body.tree_size).collect::<Vec<_>>(), vec![10, 20]);
        // Reopened (a restart), it continues the seq and the checkpoint numbers.
        let signer = Arc::new(Ed25519Signer::generate().unwrap().0);
        let keys = KeyRing::new(tr.keys.keys.values().cloned().chain([signer.public_key()]));
        let again = AuditLog::open(
            SqlAuditStore::new(db.clone()),
            signer,
            tr.shared.clone(),
            CheckpointPolicy::default(),
        )
        .await
        .unwrap();
        assert_eq!(again.append(event(&tr.shared, 26)).await.unwrap().seq, 26);
        let cp = again.checkpoint_now().await.unwrap().unwrap();
        assert_eq!((cp.body.seq, cp.body.tree_size), (3, 26));
        let r = verify_store(again.store(), &keys, VerifyOptions::default())
            .await
            .unwrap();
        assert!(r.ok, "{r:?}");
        assert_eq!(r.checked, 26);
        db.close().await;
    }
}

#[tokio::test]
async fn spec_13_4_1_records_cannot_be_edited_or_deleted_in_place() {
    for t in TestDb::all().await {
        let db = t.connect().await;
        let tr = trail(&db, 1000).await;
        for i in 1..=3 {
            tr.log.append(event(&tr.shared, i)).await.unwrap();
        }
        for sql in [
            "UPDATE audit_records SET operation = 'user.delete' WHERE seq = 2",
            "DELETE FROM audit_records WHERE seq = 2",
            "DELETE FROM audit_records",
        ] {
            let err = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
                .execute(db.pool())
                .await
                .expect_err(sql);
            assert!(
                err.to_string().contains("audit records"),
                "{:?}: {sql}: {err}",
                db.backend()
            );
        }
        assert_eq!(report(&tr).await, vec![]);
        db.close().await;
    }
}

#[tokio::test]
async fn spec_13_4_1_direct_edits_of_the_store_are_named_by_seq_and_kind() {
    for t in TestDb::all().await {
        let db = t.connect().await;
        let tr = trail(&db, 10).await;
        for i in 1..=30 {
            tr.log.append(event(&tr.shared, i)).await.unwrap();
        }
        drop_guards(&db).await;
        // One changed byte.
        exec(&db, "UPDATE audit_records SET actor_name = 'mallory' WHERE seq = 4").await;
        // A deleted row.
        exec(&db, "DELETE FROM audit_records WHERE seq = 15").await;
        // A cut tail: records 26.. gone, but checkpoint 3 attests 30.
        exec(&db, "DELETE FROM audit_records WHERE seq >= 26").await;
        let problems = report(&tr).await;
        assert!(problems.contains(&(4, ProblemKind::Modified)), "{problems:?}");
        assert!(problems.contains(&(15, ProblemKind::Missing)), "{problems:?}");
        assert!(problems.contains(&(26, ProblemKind::Truncated)), "{problems:?}");
        // A forged checkpoint: its body edited after signing.
        let text: String = sqlx::query_scalar("SELECT checkpoint FROM audit_checkpoints WHERE seq = 2")
            .fetch_one(db.pool())
            .await
            .unwrap();
        let forged = text.replace("\"tree_size\":20", "\"tree_size\":19");
        assert_ne!(forged, text);
        sqlx::query("UPDATE audit_checkpoints SET checkpoint = $1 WHERE seq = 2")
            .bind(forged)
            .execute(db.pool())
            .await
            .unwrap();
        let problems = report(&tr).await;
        assert!(problems.contains(&(19, ProblemKind::BadSignature)), "{problems:?}");
        db.close().await;
    }
}

#[tokio::test]
async fn spec_13_4_6_purge_drops_expired_records_and_keeps_the_chain_verifiable() {
    for t in TestDb::all().await {
        let db = t.connect().await;
        let tr = trail(&db, 5).await;
        for i in 1..=12 {
            tr.log.append(event(&tr.shared, i)).await.unwrap();
        }
        tr.clock.advance(time::Duration::days(200));
        for i in 13..=15 {
            tr.log.append(event(&tr.shared, i)).await.unwrap();
        }
        tr.clock.advance(time::Duration::days(1));
        // auth.login (every third) is a security event: kept 365 days, so the expired prefix
        // stops before record 3.
        let policy = RetentionPolicy::default();
        let (cp, removed) = tr.log.purge_expired(&policy).await.unwrap().unwrap();
        assert_eq!((removed, cp.body.tree_size), (2, 2));
        // With security events at the minimum too, everything before 13 goes.
        tr.clock.advance(time::Duration::days(200));
        tr.log.append(event(&tr.shared, 16)).await.unwrap();
        let policy = RetentionPolicy {
            operation_days: 180,
            security_days: 180,
            ..RetentionPolicy::default()
        };
        let (_, removed) = tr.log.purge_expired(&policy).await.unwrap().unwrap();
        assert_eq!(removed, 13, "records 3..=15 are older than 180 days now");
        let r = verify_store(tr.log.store(), &tr.keys, VerifyOptions::default())
            .await
            .unwrap();
        assert!(r.ok, "{r:?}");
        assert_eq!(r.checked, 1);
        // The kept record still cannot be deleted, and deleting it anyway is found.
        assert!(
            sqlx::raw_sql(sqlx::AssertSqlSafe(
                "DELETE FROM audit_records WHERE seq = 16".to_string()
            ))
            .execute(db.pool())
            .await
            .is_err()
        );
        // A checkpoint attests record 16 (a deleted tail after the newest checkpoint is the
        // documented limit that forwarding the checkpoints covers).
        tr.log.checkpoint_now().await.unwrap();
        drop_guards(&db).await;
        exec(&db, "DELETE FROM audit_records WHERE seq = 16").await;
        let problems = report(&tr).await;
        assert!(problems.iter().any(|p| p.0 == 16), "{problems:?}");
        db.close().await;
    }
}

#[tokio::test]
async fn spec_13_4_1_two_controllers_share_one_chain() {
    for t in TestDb::all().await {
        let db = t.connect().await;
        let a = trail(&db, 7).await;
        let b = trail(&db, 7).await;
        let keys = KeyRing::new(a.keys.keys.values().chain(b.keys.keys.values()).cloned());
        let (ra, rb) = tokio::join!(
            async {
                for i in 0..20 {
                    a.log.append(event(&a.shared, i)).await.unwrap();
                }
            },
            async {
                for i in 0..20 {
                    b.log.append(event(&b.shared, i)).await.unwrap();
                }
            }
        );
        let _ = (ra, rb);
        a.log.checkpoint_now().await.unwrap();
        b.log.checkpoint_now().await.unwrap();
        let r = verify_store(a.log.store(), &keys, VerifyOptions::default())
            .await
            .unwrap();
        assert!(r.ok, "{:?}: {r:?}", db.backend());
        assert_eq!(r.checked, 40);
        db.close().await;
    }
}

#[tokio::test]
async fn spec_13_4_1_events_are_listed_with_filters_and_pages() {
    for t in TestDb::all().await {
        let db = t.connect().await;
        let tr = trail(&db, 1000).await;
        for i in 1..=30 {
            tr.log.append(event(&tr.shared, i)).await.unwrap();
            tr.clock.advance(time::Duration::seconds(1));
        }
        let mut c = tr.db.conn().await.unwrap();
        let ok = |v: Vec<Result<rampart_audit::AuditRecord, rampart_audit::record::RowError>>| {
            v.into_iter().map(|r| r.unwrap().seq).collect::<Vec<_>>()
        };
        let all = EventFilter::default();
        assert_eq!(
            ok(rampart_db::audit::list_events(&mut c, &all, None, 5).await.unwrap()),
            vec![1, 2, 3, 4, 5]
        );
        assert_eq!(
            ok(rampart_db::audit::list_events(&mut c, &all, Some(5), 2).await.unwrap()),
            vec![6, 7]
        );
        let desc = EventFilter {
            descending: true,
            ..EventFilter::default()
        };
        assert_eq!(
            ok(rampart_db::audit::list_events(&mut c, &desc, None, 2).await.unwrap()),
            vec![30, 29]
        );
        let f = EventFilter {
            operation: Some("auth.*".into()),
            actor: Some("bob".into()),
            outcome: Some("failure".into()),
            ..EventFilter::default()
        };
        assert_eq!(
            ok(rampart_db::audit::list_events(&mut c, &f, None, 100).await.unwrap()),
            vec![15]
        );
        let f = EventFilter {
            since: Some(datetime!(2026-06-01 00:00:10 UTC)),
            until: Some(datetime!(2026-06-01 00:00:12 UTC)),
            project: Some("p-1".into()),
            ..EventFilter::default()
        };
        assert_eq!(
            ok(rampart_db::audit::list_events(&mut c, &f, None, 100).await.unwrap()),
            vec![11, 12]
        );
        // A `_` in a prefix is literal, not a wildcard.
        let f = EventFilter {
            operation: Some("user_*".into()),
            ..EventFilter::default()
        };
        assert!(
            rampart_db::audit::list_events(&mut c, &f, None, 100)
                .await
                .unwrap()
                .is_empty()
        );
        let policy = rampart_db::audit::retention(&mut c).await.unwrap();
        assert_eq!(policy, RetentionPolicy::default());
        drop(c);
        db.close().await;
    }
}
