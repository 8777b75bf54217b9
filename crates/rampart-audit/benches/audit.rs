//! Audit throughput: sealing (canonical JSON + SHA-256 chain), appends through `AuditLog` on the
//! memory store (sealing, row conversion, Merkle update, a signed checkpoint every 1000),
//! verification, and the forwarding queue with its fsync per enqueue.
//! Run with `scripts/bench-audit.sh` (release build); writes `target/bench/audit.json`.

use std::sync::Arc;
use std::time::Instant;

use rampart_audit::checkpoint::{CheckpointSigner, Ed25519Signer, KeyRing};
use rampart_audit::queue::{PersistentQueue, QueueOptions};
use rampart_audit::record::{Actor, AuditResult, AuthMethod, ChainHead, NewRecord, Target, seal};
use rampart_audit::store::{AuditLog, CheckpointPolicy, MemoryStore, verify_store};
use rampart_audit::verify::VerifyOptions;
use rampart_common::time::{SharedClock, SystemClock};

fn event(i: u64) -> NewRecord {
    NewRecord::new(
        time::OffsetDateTime::now_utc(),
        Actor::user(
            "7d0c7f6e-7a51-4c1b-9a55-0d3c1f7b2a10",
            "alice",
            "default",
            AuthMethod::Token,
        ),
        "instance.create",
        Target::new(
            "instance",
            Some(format!("vm-{i}")),
            Some("4f1d2c3b-5a6e-4b7c-8d9e-0f1a2b3c4d5e".into()),
        ),
        AuditResult::success(201),
    )
    .source_ip("192.0.2.10")
    .user_agent("rampart-cli/0.1")
    .request_id("5c3a8f6e-2d1b-4e7f-9a0c-1b2d3e4f5a6b")
    .duration_ms(3)
    .detail("name", format!("web-{i}"))
}

fn rate(n: u64, secs: f64) -> f64 {
    (n as f64 / secs).round()
}

fn main() {
    let n: u64 = std::env::var("AUDIT_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut results = serde_json::Map::new();

    // 1. seal: the pure cost of a record (validation, redaction, canonical JSON, SHA-256).
    let events: Vec<NewRecord> = (0..n).map(event).collect();
    let start = Instant::now();
    let mut head = ChainHead::GENESIS;
    for e in events {
        let r = seal(&head, e).unwrap();
        head = ChainHead::of(&r);
    }
    let seal_rate = rate(n, start.elapsed().as_secs_f64());
    results.insert("seal_records_per_s".into(), seal_rate.into());

    // 2. append through AuditLog on the memory store, checkpoint every 1000.
    let store = MemoryStore::new();
    let signer = Arc::new(Ed25519Signer::generate().unwrap().0);
    let keys = KeyRing::new([signer.public_key()]);
    let clock: SharedClock = Arc::new(SystemClock);
    let log = rt
        .block_on(AuditLog::open(
            store.clone(),
            signer,
            clock,
            CheckpointPolicy::default(),
        ))
        .unwrap();
    let start = Instant::now();
    rt.block_on(async {
        for i in 0..n {
            log.append(event(i)).await.unwrap();
        }
        log.checkpoint_now().await.unwrap();
    });
    let append_rate = rate(n, start.elapsed().as_secs_f64());
    results.insert("append_records_per_s".into(), append_rate.into());

    // 3. verify the whole store.
    let start = Instant::now();
    let report = rt
        .block_on(verify_store(&store, &keys, VerifyOptions::default()))
        .unwrap();
    assert!(report.ok && report.checked == n);
    let verify_rate = rate(n, start.elapsed().as_secs_f64());
    results.insert("verify_records_per_s".into(), verify_rate.into());

    // 4. the forwarding queue on disk: one fsync per enqueue, then 100 entries per enqueue.
    // On the real disk (not a tmpfs /tmp): the fsync figures are the point.
    let base = std::env::var("AUDIT_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    std::fs::create_dir_all(&base).unwrap();
    let dir = tempfile::tempdir_in(base).unwrap();
    let q = PersistentQueue::open(dir.path(), QueueOptions::default()).unwrap();
    let msg = vec![b'x'; 900];
    let single = 2_000u64;
    let start = Instant::now();
    for i in 0..single {
        q.enqueue(&[([i, 0], msg.as_slice())]).unwrap();
    }
    let q_single = rate(single, start.elapsed().as_secs_f64());
    let batched = 100_000u64;
    let batch: Vec<([u64; 2], &[u8])> = (0..100).map(|i| ([i, 0], msg.as_slice())).collect();
    let start = Instant::now();
    for _ in 0..batched / 100 {
        q.enqueue(&batch).unwrap();
    }
    let q_batched = rate(batched, start.elapsed().as_secs_f64());
    results.insert("queue_enqueue_fsync_each_per_s".into(), q_single.into());
    results.insert("queue_enqueue_batch100_per_s".into(), q_batched.into());
    results.insert("records".into(), n.into());

    let out = serde_json::Value::Object(results);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("audit.json"), serde_json::to_string_pretty(&out).unwrap()).unwrap();
    println!("audit bench ({n} records, 900-byte queue entries)");
    println!("  seal (canonical JSON + SHA-256 chain):      {seal_rate:>10} records/s");
    println!("  append via AuditLog (memory store, cp/1000): {append_rate:>10} records/s");
    println!("  verify (hash, chain, Merkle, signatures):    {verify_rate:>10} records/s");
    println!("  queue enqueue, fsync per entry:              {q_single:>10} entries/s");
    println!("  queue enqueue, 100 entries per fsync:        {q_batched:>10} entries/s");
}
