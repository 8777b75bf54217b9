//! Tamper evidence of the stored trail (spec 13.4-1, 13.4-6): the store is edited directly, the
//! way an attacker with database access would (change a byte, delete a row, cut the tail, forge
//! a checkpoint), and the verifier must name each problem by seq and kind.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use rampart_audit::checkpoint::{Checkpoint, CheckpointKind, CheckpointSigner, KeyRing};
use rampart_audit::record::{AuditRecord, AuditRow, ChainHead, RowError, compute_hash};
use rampart_audit::retention::RetentionPolicy;
use rampart_audit::store::{AuditLog, AuditStore, MemoryStore, StoreError, verify_store};
use rampart_audit::verify::{ProblemKind, VerifyOptions, VerifyReport};
use rampart_common::time::SharedClock;

async fn filled(n: u64, every: u64) -> (MemoryStore, AuditLog<MemoryStore>, KeyRing, SharedClock) {
    let store = MemoryStore::new();
    let (_, clock) = manual_clock();
    let s = signer();
    let keys = KeyRing::new([s.public_key()]);
    let log = audit_log(store.clone(), s, clock.clone(), every).await;
    for i in 1..=n {
        log.append(event(&clock, i)).await.unwrap();
    }
    (store, log, keys, clock)
}

async fn report(store: &MemoryStore, keys: &KeyRing) -> VerifyReport {
    verify_store(store, keys, VerifyOptions::default()).await.unwrap()
}

fn kinds(r: &VerifyReport) -> Vec<(u64, ProblemKind)> {
    r.problems.iter().map(|p| (p.seq, p.kind)).collect()
}

fn rehash_row(row: &mut AuditRow) {
    let rec = row.clone().into_record().unwrap();
    row.hash = compute_hash(&rec).unwrap().to_hex();
}

#[tokio::test]
async fn spec_13_4_1_intact_trail_verifies() {
    let (store, log, keys, _) = filled(35, 10).await;
    log.checkpoint_now().await.unwrap();
    let r = report(&store, &keys).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.checked, 35);
    assert_eq!(r.checkpoints_trusted, 4, "checkpoints at 10, 20, 30 and 35");
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["ok"], true);
    assert_eq!(json["problems"], serde_json::json!([]));
}

#[tokio::test]
async fn spec_13_4_1_verify_names_a_modified_record() {
    let (store, _log, keys, _) = filled(35, 10).await;
    // One changed byte in a stored column.
    store.with_inner(|i| i.rows.get_mut(&17).unwrap().operation = "instance.delets".into());
    let r = report(&store, &keys).await;
    assert_eq!(kinds(&r), vec![(17, ProblemKind::Modified)], "{r:?}");
    assert!(!r.ok);
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["problems"][0]["seq"], 17);
    assert_eq!(json["problems"][0]["kind"], "modified");
}

#[tokio::test]
async fn spec_13_4_1_verify_names_a_modified_record_whose_hash_was_recomputed() {
    let (store, _log, keys, _) = filled(35, 10).await;
    store.with_inner(|i| {
        let row = i.rows.get_mut(&17).unwrap();
        row.actor_name = Some("mallory".into());
        rehash_row(row);
    });
    assert_eq!(kinds(&report(&store, &keys).await), vec![(17, ProblemKind::Modified)]);
}

#[tokio::test]
async fn spec_13_4_1_rewriting_the_chain_forward_is_caught_by_the_signed_checkpoint() {
    let (store, _log, keys, _) = filled(35, 10).await;
    // The attacker changes 17 and recomputes every hash after it: the chain is self-consistent,
    // only checkpoint 2 (tree size 20, signed) disagrees.
    store.with_inner(|i| {
        let mut prev = None;
        for seq in 17..=35 {
            let row = i.rows.get_mut(&seq).unwrap();
            if seq == 17 {
                row.result_status_for_test();
            }
            if let Some(p) = prev {
                row.prev_hash = p;
            }
            rehash_row(row);
            prev = Some(row.hash.clone());
        }
    });
    let r = report(&store, &keys).await;
    assert_eq!(kinds(&r), vec![(20, ProblemKind::Modified)], "{r:?}");
    assert!(r.problems[0].detail.contains("11..=20"), "{}", r.problems[0].detail);
}

trait TamperRow {
    fn result_status_for_test(&mut self);
}

impl TamperRow for AuditRow {
    fn result_status_for_test(&mut self) {
        self.outcome = "success".into();
        self.status = 200;
        self.code = None;
    }
}

#[tokio::test]
async fn spec_13_4_1_verify_names_a_deleted_record() {
    let (store, _log, keys, _) = filled(35, 10).await;
    store.with_inner(|i| i.rows.remove(&12));
    assert_eq!(kinds(&report(&store, &keys).await), vec![(12, ProblemKind::Missing)]);
}

#[tokio::test]
async fn spec_13_4_1_verify_names_a_truncated_tail() {
    let (store, log, keys, _) = filled(35, 10).await;
    log.checkpoint_now().await.unwrap();
    store.with_inner(|i| {
        for s in 31..=35 {
            i.rows.remove(&s);
        }
    });
    let r = report(&store, &keys).await;
    assert_eq!(kinds(&r), vec![(31, ProblemKind::Truncated)], "{r:?}");
    assert_eq!(r.problems[0].checkpoint, Some(4));
}

#[tokio::test]
async fn spec_13_4_1_verify_names_a_forged_checkpoint_signature() {
    let (store, _log, keys, _) = filled(35, 10).await;
    // Checkpoint 2 edited to attest less; its signature no longer verifies.
    store.with_inner(|i| i.checkpoints.get_mut(&2).unwrap().body.tree_size = 19);
    let r = report(&store, &keys).await;
    assert!(kinds(&r).contains(&(19, ProblemKind::BadSignature)), "{r:?}");
    assert!(
        r.problems
            .iter()
            .all(|p| p.kind != ProblemKind::BadSignature || p.checkpoint == Some(2))
    );

    // A checkpoint signed by a key the verifier does not trust.
    let (store, _log, keys, _) = filled(12, 10).await;
    let rogue = signer();
    store.with_inner(|i| {
        let mut cp = i.checkpoints.get(&1).unwrap().clone();
        cp.body.key_id = rogue.key_id().to_string();
        let forged = Checkpoint::sign(cp.body, rogue.as_ref()).unwrap();
        i.checkpoints.insert(1, forged);
    });
    let r = report(&store, &keys).await;
    assert_eq!(kinds(&r), vec![(10, ProblemKind::BadSignature)], "{r:?}");
}

#[tokio::test]
async fn spec_13_4_1_undecodable_row_is_reported_as_modified() {
    let (store, _log, keys, _) = filled(15, 10).await;
    store.with_inner(|i| i.rows.get_mut(&4).unwrap().outcome = "maybe".into());
    assert_eq!(kinds(&report(&store, &keys).await), vec![(4, ProblemKind::Modified)]);
}

#[tokio::test]
async fn spec_13_4_1_external_head_catches_tail_and_checkpoint_deleted_together() {
    let (store, log, keys, _) = filled(35, 10).await;
    let head = log.checkpoint_now().await.unwrap().unwrap();
    // Cut the tail back to the previous checkpoint and drop the newest checkpoint with it:
    // locally consistent, which is why checkpoints are shipped to the log manager.
    store.with_inner(|i| {
        for s in 31..=35 {
            i.rows.remove(&s);
        }
        i.checkpoints.remove(&4);
    });
    assert!(report(&store, &keys).await.ok);
    let opts = VerifyOptions {
        trusted_head: Some(head),
        ..VerifyOptions::default()
    };
    let r = verify_store(&store, &keys, opts).await.unwrap();
    assert_eq!(kinds(&r), vec![(31, ProblemKind::Truncated)]);
}

#[tokio::test]
async fn spec_13_4_1_checkpoints_every_n_records_and_every_t_seconds() {
    let store = MemoryStore::new();
    let (manual, clock) = manual_clock();
    let log = audit_log(store.clone(), signer(), clock.clone(), 5).await;
    for i in 1..=12 {
        log.append(event(&clock, i)).await.unwrap();
    }
    let sizes =
        |s: &MemoryStore| s.with_inner(|i| i.checkpoints.values().map(|c| c.body.tree_size).collect::<Vec<_>>());
    assert_eq!(sizes(&store), vec![5, 10]);
    assert!(log.tick().await.unwrap().is_none(), "T has not elapsed");
    manual.advance(time::Duration::seconds(61));
    let cp = log.tick().await.unwrap().expect("T elapsed with 2 unattested records");
    assert_eq!((cp.body.seq, cp.body.tree_size), (3, 12));
    assert_eq!(cp.body.time, T0 + time::Duration::seconds(61));
    manual.advance(time::Duration::seconds(61));
    assert!(log.tick().await.unwrap().is_none(), "nothing new to attest");
    assert_eq!(sizes(&store), vec![5, 10, 12]);
}

#[tokio::test]
async fn spec_13_4_1_reopened_log_continues_the_chain_and_checkpoint_numbers() {
    let (store, log, keys, clock) = filled(23, 10).await;
    drop(log);
    let s2 = signer();
    let log = audit_log(store.clone(), s2.clone(), clock.clone(), 10).await;
    let r = log.append(event(&clock, 24)).await.unwrap();
    assert_eq!(r.seq, 24);
    for i in 25..=31 {
        log.append(event(&clock, i)).await.unwrap();
    }
    let cp3 = store
        .with_inner(|i| i.checkpoints.get(&3).cloned())
        .expect("third checkpoint");
    assert_eq!(cp3.body.tree_size, 30);
    assert_eq!(cp3.body.key_id, s2.key_id(), "signed by the rotated key");
    let both = KeyRing::new([keys.keys.values().next().unwrap().clone(), s2.public_key()]);
    assert!(report(&store, &both).await.ok);
    // With only the old key trusted, the new checkpoint is reported, not silently accepted.
    assert_eq!(
        kinds(&report(&store, &keys).await),
        vec![(30, ProblemKind::BadSignature)]
    );
}

#[tokio::test]
async fn spec_13_4_1_two_appenders_on_one_store_keep_one_chain() {
    let store = MemoryStore::new();
    let (_, clock) = manual_clock();
    let s = signer();
    let keys = KeyRing::new([s.public_key()]);
    let a = audit_log(store.clone(), s.clone(), clock.clone(), 1000).await;
    let b = audit_log(store.clone(), s.clone(), clock.clone(), 1000).await;
    for i in 0..10 {
        a.append(event(&clock, i)).await.unwrap();
        b.append(event(&clock, i)).await.unwrap();
    }
    let head = store.head().await.unwrap();
    assert_eq!(head.seq, 20);
    a.checkpoint_now().await.unwrap();
    assert!(report(&store, &keys).await.ok);
}

/// A store whose writes can be made to fail, like a full disk or a lost database.
#[derive(Clone)]
struct FlakyStore {
    inner: MemoryStore,
    down: Arc<AtomicBool>,
}

impl AuditStore for FlakyStore {
    async fn head(&self) -> Result<ChainHead, StoreError> {
        self.inner.head().await
    }
    async fn append(&self, record: &AuditRecord) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Backend {
                context: "appending",
                source: "disk full".into(),
            });
        }
        self.inner.append(record).await
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

#[tokio::test]
async fn spec_9_2_5_failed_audit_write_fails_the_call() {
    let store = FlakyStore {
        inner: MemoryStore::new(),
        down: Arc::new(AtomicBool::new(false)),
    };
    let (_, clock) = manual_clock();
    let log = AuditLog::open(store.clone(), signer(), clock.clone(), Default::default())
        .await
        .unwrap();
    log.append(event(&clock, 1)).await.unwrap();
    store.down.store(true, Ordering::SeqCst);
    let err = log.append(event(&clock, 2)).await.unwrap_err();
    let public = err.into_public();
    assert_eq!(public.status(), 503);
    assert!(
        !public.public_message().contains("disk full"),
        "the cause stays in the run log"
    );
    store.down.store(false, Ordering::SeqCst);
    let r = log.append(event(&clock, 3)).await.unwrap();
    assert_eq!(r.seq, 2, "the failed record took no seq");
}

#[tokio::test]
async fn spec_13_4_6_purge_keeps_the_chain_verifiable_from_the_boundary() {
    let store = MemoryStore::new();
    let (manual, clock) = manual_clock();
    let s = signer();
    let keys = KeyRing::new([s.public_key()]);
    let log = audit_log(store.clone(), s, clock.clone(), 10).await;
    for i in 1..=25 {
        log.append(event(&clock, i)).await.unwrap();
    }
    manual.advance(time::Duration::days(100));
    for i in 26..=32 {
        log.append(event(&clock, i)).await.unwrap();
    }
    manual.advance(time::Duration::days(100));
    let policy = RetentionPolicy::default();
    let (boundary, removed) = log
        .purge_expired(&policy)
        .await
        .unwrap()
        .expect("25 records are 200 days old");
    assert_eq!(removed, 25);
    assert_eq!(boundary.body.kind, CheckpointKind::Boundary);
    assert_eq!(boundary.body.tree_size, 25);
    assert_eq!(store.with_inner(|i| *i.rows.keys().next().unwrap()), 26);
    assert!(store.with_inner(|i| i.checkpoints.values().all(|c| c.body.tree_size >= 25)));
    let r = report(&store, &keys).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.checked, 7);

    // The chain goes on after the purge, and checkpoints keep covering all of it.
    for i in 33..=45 {
        log.append(event(&clock, i)).await.unwrap();
    }
    log.checkpoint_now().await.unwrap();
    assert!(report(&store, &keys).await.ok);
    assert!(
        log.purge_expired(&policy).await.unwrap().is_none(),
        "nothing else expired"
    );

    // Deleting the first kept record is still noticed: the boundary says where the chain starts.
    store.with_inner(|i| i.rows.remove(&26));
    assert_eq!(kinds(&report(&store, &keys).await), vec![(26, ProblemKind::Missing)]);
}

#[tokio::test]
async fn spec_13_4_6_records_deleted_from_the_front_without_a_boundary_are_missing() {
    let (store, _log, keys, _) = filled(15, 10).await;
    store.with_inner(|i| {
        for s in 1..=3 {
            i.rows.remove(&s);
        }
    });
    assert_eq!(
        kinds(&report(&store, &keys).await),
        vec![
            (1, ProblemKind::Missing),
            (2, ProblemKind::Missing),
            (3, ProblemKind::Missing)
        ]
    );
}

#[tokio::test]
async fn spec_13_4_6_purge_refuses_to_erase_tampered_evidence() {
    let store = MemoryStore::new();
    let (manual, clock) = manual_clock();
    let log = audit_log(store.clone(), signer(), clock.clone(), 10).await;
    for i in 1..=5 {
        log.append(event(&clock, i)).await.unwrap();
    }
    manual.advance(time::Duration::days(365));
    store.with_inner(|i| i.rows.get_mut(&3).unwrap().actor_name = Some("mallory".into()));
    assert!(log.purge_expired(&RetentionPolicy::default()).await.is_err());
    assert_eq!(store.with_inner(|i| i.rows.len()), 5, "nothing dropped");
}
