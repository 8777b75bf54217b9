//! Group commit (spec 13.4-1 with 9.2-5): appends that arrive while one is being stored share
//! the next durable batch; each caller still returns only once its own record is stored, the
//! chain has one order, and a failed batch fails every call in it and takes no seq.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use rampart_audit::checkpoint::{Checkpoint, CheckpointSigner, KeyRing};
use rampart_audit::record::{AuditRecord, ChainHead, RowError};
use rampart_audit::store::{AuditLog, AuditStore, CheckpointPolicy, MemoryStore, StoreError, verify_store};
use rampart_audit::verify::VerifyOptions;
use tokio::sync::Semaphore;

/// A store that holds each batch at a gate the test opens, and can fail the next batch.
#[derive(Clone)]
struct GatedStore {
    inner: MemoryStore,
    batches: Arc<Mutex<Vec<usize>>>,
    gate: Arc<Semaphore>,
    fail_next: Arc<AtomicBool>,
}

impl AuditStore for GatedStore {
    async fn head(&self) -> Result<ChainHead, StoreError> {
        self.inner.head().await
    }
    async fn append(&self, record: &AuditRecord) -> Result<(), StoreError> {
        self.append_batch(std::slice::from_ref(record)).await
    }
    async fn append_batch(&self, records: &[AuditRecord]) -> Result<(), StoreError> {
        self.batches.lock().unwrap().push(records.len());
        self.gate.acquire().await.unwrap().forget();
        if self.fail_next.swap(false, Ordering::SeqCst) {
            return Err(StoreError::Backend {
                context: "appending",
                source: "disk full".into(),
            });
        }
        self.inner.append_batch(records).await
    }
    async fn read(&self, from: u64, limit: usize) -> Result<Vec<Result<AuditRecord, RowError>>, StoreError> {
        self.inner.read(from, limit).await
    }
    async fn append_checkpoint(&self, cp: &Checkpoint) -> Result<(), StoreError> {
        self.inner.append_checkpoint(cp).await
    }
    async fn checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        self.inner.checkpoints().await
    }
    async fn purge(&self, boundary: &Checkpoint) -> Result<u64, StoreError> {
        self.inner.purge(boundary).await
    }
}

/// Waits until the store has been handed `n` batches in all.
async fn wait_batches(store: &GatedStore, n: usize) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while store.batches.lock().unwrap().len() < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("batch reached the store");
}

async fn wait_queued(log: &AuditLog<GatedStore>, n: usize) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while log.queued() < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("appenders queued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_4_1_concurrent_appends_share_one_durable_batch_in_one_chain() {
    let store = GatedStore {
        inner: MemoryStore::new(),
        batches: Arc::default(),
        gate: Arc::new(Semaphore::new(0)),
        fail_next: Arc::default(),
    };
    let (_, clock) = manual_clock();
    let s = signer();
    let keys = KeyRing::new([s.public_key()]);
    let policy = CheckpointPolicy {
        every_records: 1000,
        every: time::Duration::seconds(60),
    };
    let log = Arc::new(AuditLog::open(store.clone(), s, clock.clone(), policy).await.unwrap());

    // The first append is inside the store; twenty more arrive meanwhile.
    let first = tokio::spawn({
        let (log, clock) = (log.clone(), clock.clone());
        async move { log.append(event(&clock, 0)).await }
    });
    wait_batches(&store, 1).await;
    let rest: Vec<_> = (1..=20)
        .map(|i| {
            let (log, clock) = (log.clone(), clock.clone());
            tokio::spawn(async move { log.append(event(&clock, i)).await })
        })
        .collect();
    wait_queued(&log, 20).await;
    store.gate.add_permits(2);
    assert_eq!(first.await.unwrap().unwrap().seq, 1);
    let mut seqs: Vec<u64> = Vec::new();
    for t in rest {
        seqs.push(t.await.unwrap().unwrap().seq);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (2..=21).collect::<Vec<_>>(), "each caller has its own seq");
    assert_eq!(
        *store.batches.lock().unwrap(),
        [1, 20],
        "two durable writes for 21 records"
    );
    log.checkpoint_now().await.unwrap();
    let report = verify_store(&store.inner, &keys, VerifyOptions::default())
        .await
        .unwrap();
    assert!(report.ok && report.checked == 21, "{report:?}");

    // A failed batch fails every call in it, and the chain goes on without a gap.
    store.fail_next.store(true, Ordering::SeqCst);
    let doomed = tokio::spawn({
        let (log, clock) = (log.clone(), clock.clone());
        async move { log.append(event(&clock, 100)).await }
    });
    wait_batches(&store, 3).await;
    let with_it: Vec<_> = (101..=105)
        .map(|i| {
            let (log, clock) = (log.clone(), clock.clone());
            tokio::spawn(async move { log.append(event(&clock, i)).await })
        })
        .collect();
    wait_queued(&log, 5).await;
    // The lone first batch fails; the five queued behind it are stored next.
    store.gate.add_permits(2);
    let err = doomed.await.unwrap().unwrap_err();
    assert_eq!(err.into_public().status(), 503);
    for t in with_it {
        t.await.unwrap().unwrap();
    }
    store.gate.add_permits(1);
    assert_eq!(
        log.append(event(&clock, 200)).await.unwrap().seq,
        27,
        "the failed record took no seq"
    );
    log.checkpoint_now().await.unwrap();
    assert!(
        verify_store(&store.inner, &keys, VerifyOptions::default())
            .await
            .unwrap()
            .ok
    );
}
