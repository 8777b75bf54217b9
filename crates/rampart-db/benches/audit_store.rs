//! Audit trail on SQL: sustained appends/s with the durability the API promises (every append
//! returns once its record is committed; SQLite in WAL mode with `synchronous=FULL`, PostgreSQL
//! as configured), one appender at a time (one commit each) and 16 at once (group commit), and
//! verification records/s reading the same store. Writes
//! `target/bench/audit-sql.json`. Run by `scripts/bench-audit.sh`.
//!
//! `AUDIT_SQL_BENCH_RECORDS` (default 2000) records per backend; PostgreSQL is measured when
//! `RAMPART_TEST_POSTGRES_URL` names a server (`scripts/ci/start-postgres.sh`).

use std::sync::Arc;
use std::time::Instant;

use rampart_audit::checkpoint::{CheckpointSigner, Ed25519Signer};
use rampart_audit::record::{Actor, AuditResult, AuthMethod, NewRecord, Target};
use rampart_audit::store::{AuditLog, CheckpointPolicy, verify_store};
use rampart_audit::{KeyRing, verify::VerifyOptions};
use rampart_db::audit::SqlAuditStore;
use rampart_db::testing::TestDb;

/// Appenders at once in the concurrent run (the API serves many requests at a time).
const CONCURRENT: u64 = 16;

fn record(i: u64) -> NewRecord {
    NewRecord::new(
        time::OffsetDateTime::now_utc(),
        Actor::user(
            "7d0c7f6e-7a51-4c1b-9a55-0d3c1f7b2a10",
            "alice",
            "default",
            AuthMethod::Token,
        ),
        "instance.create",
        Target::new("instance", Some(format!("vm-{i}")), Some("p-1".into())),
        AuditResult::success(201),
    )
    .source_ip("192.0.2.10")
    .user_agent("rampart-cli/0.1")
    .request_id(format!("req-{i}"))
}

fn main() {
    let n: u64 = std::env::var("AUDIT_SQL_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let results = rt.block_on(async {
        let mut out = serde_json::Map::new();
        for t in TestDb::all().await {
            let db = t.connect().await;
            let signer = Arc::new(Ed25519Signer::generate().unwrap().0);
            let keys = KeyRing::new([signer.public_key()]);
            let log = AuditLog::open(
                SqlAuditStore::new(db.clone()),
                signer,
                rampart_common::time::system_clock(),
                CheckpointPolicy::default(),
            )
            .await
            .unwrap();
            let start = Instant::now();
            for i in 0..n {
                log.append(record(i)).await.unwrap();
            }
            let append = n as f64 / start.elapsed().as_secs_f64();
            // The API's load: many requests at once, each waiting for its own durable record;
            // concurrent appends share one commit (group commit).
            let log = Arc::new(log);
            let start = Instant::now();
            let tasks: Vec<_> = (0..CONCURRENT)
                .map(|c| {
                    let log = log.clone();
                    tokio::spawn(async move {
                        for i in 0..n / CONCURRENT {
                            log.append(record(n + c * n + i)).await.unwrap();
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            let concurrent = (n / CONCURRENT * CONCURRENT) as f64 / start.elapsed().as_secs_f64();
            log.checkpoint_now().await.unwrap();
            let start = Instant::now();
            let report = verify_store(log.store(), &keys, VerifyOptions::default()).await.unwrap();
            assert!(report.ok);
            let verify = report.checked as f64 / start.elapsed().as_secs_f64();
            let name = format!("{:?}", db.backend()).to_lowercase();
            println!(
                "{name}: {append:.0} appends/s one at a time, {concurrent:.0} appends/s from {CONCURRENT} concurrent appenders, verify {verify:.0} records/s, {n} records"
            );
            out.insert(
                name,
                serde_json::json!({
                    "records": n,
                    "appends_per_s": append.round(),
                    "concurrent_appenders": CONCURRENT,
                    "concurrent_appends_per_s": concurrent.round(),
                    "verify_records_per_s": verify.round(),
                }),
            );
            db.close().await;
        }
        out
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("audit-sql.json"),
        serde_json::to_string_pretty(&results).unwrap(),
    )
    .unwrap();
}
