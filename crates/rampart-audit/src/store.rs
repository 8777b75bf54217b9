//! Storage of records and checkpoints behind a small trait, an in-memory implementation for
//! tests, and [`AuditLog`]: the appender that assigns seq and hashes, writes checkpoints every
//! N records or T seconds, runs the retention purge and the verifier over any store.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use rampart_common::time::SharedClock;
use time::{Duration, OffsetDateTime};
use tokio::sync::Mutex as AsyncMutex;
use tokio::sync::oneshot;

use crate::checkpoint::{Checkpoint, CheckpointBody, CheckpointKind, CheckpointSigner, KeyRing, SignError};
use crate::hash::Hash;
use crate::merkle::CompactRange;
use crate::record::{
    AuditRecord, AuditRow, ChainHead, NewRecord, RecordError, RowError, compute_hash, seal, truncate_ms,
};
use crate::retention::{ChainStart, LogType, PurgePlanner, PurgeRefused, RetentionPolicy};
use crate::verify::{Verifier, VerifyOptions, VerifyReport};

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The seq or checkpoint number is taken: another writer appended first.
    #[error("audit store conflict: {0}")]
    Conflict(String),
    #[error("audit store failed while {context}")]
    Backend {
        context: &'static str,
        #[source]
        source: BoxError,
    },
}

/// Persistence of the audit trail. Records are append-only: no method edits one, and only
/// [`AuditStore::purge`] removes them (a prefix, atomically with its boundary checkpoint).
pub trait AuditStore: Send + Sync {
    /// The last record's seq and hash ([`ChainHead::GENESIS`] when empty).
    fn head(&self) -> impl Future<Output = Result<ChainHead, StoreError>> + Send;
    /// Stores a sealed record; `Conflict` when `record.seq` is not the next seq.
    fn append(&self, record: &AuditRecord) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Stores consecutive sealed records (group commit). Stores that can should do it in one
    /// durable transaction, all or nothing; this default stores them one at a time.
    fn append_batch(&self, records: &[AuditRecord]) -> impl Future<Output = Result<(), StoreError>> + Send {
        async move {
            for r in records {
                self.append(r).await?;
            }
            Ok(())
        }
    }
    /// Up to `limit` rows with `seq >= from`, ascending; rows that no longer decode are errors
    /// in the list, not a failure of the call (the verifier reports them).
    fn read(
        &self,
        from: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Result<AuditRecord, RowError>>, StoreError>> + Send;
    /// Stores a signed checkpoint; `Conflict` when its number is taken.
    fn append_checkpoint(&self, cp: &Checkpoint) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// All checkpoints, ascending by number.
    fn checkpoints(&self) -> impl Future<Output = Result<Vec<Checkpoint>, StoreError>> + Send;
    /// In one transaction: stores `boundary`, deletes records with `seq < boundary.tree_size + 1`
    /// and checkpoints with `tree_size < boundary.tree_size` (they attest only purged records).
    /// Returns the number of records deleted.
    fn purge(&self, boundary: &Checkpoint) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// The store of tests and benchmarks. Rows are kept in their SQL form ([`AuditRow`]) so tests
/// can tamper with them the way an attacker with database access would.
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<MemoryInner>>,
}

#[derive(Debug, Default)]
pub struct MemoryInner {
    pub rows: BTreeMap<i64, AuditRow>,
    pub checkpoints: BTreeMap<u64, Checkpoint>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Direct access to the stored rows, for tamper tests.
    pub fn with_inner<T>(&self, f: impl FnOnce(&mut MemoryInner) -> T) -> T {
        f(&mut self.inner.lock().expect("memory store lock"))
    }
}

impl AuditStore for MemoryStore {
    async fn head(&self) -> Result<ChainHead, StoreError> {
        self.with_inner(|i| {
            Ok(i.rows.values().next_back().map_or(ChainHead::GENESIS, |r| ChainHead {
                seq: r.seq as u64,
                hash: Hash::from_hex(&r.hash).unwrap_or(Hash::ZERO),
            }))
        })
    }

    async fn append(&self, record: &AuditRecord) -> Result<(), StoreError> {
        self.with_inner(|i| {
            let next = i.rows.keys().next_back().map_or(1, |s| s + 1);
            let first = i
                .checkpoints
                .values()
                .filter(|c| c.body.kind == CheckpointKind::Boundary)
                .map(|c| c.body.tree_size as i64 + 1)
                .max()
                .unwrap_or(1);
            let expect = next.max(first);
            if record.seq as i64 != expect {
                return Err(StoreError::Conflict(format!(
                    "seq {} is not the next seq {expect}",
                    record.seq
                )));
            }
            i.rows.insert(record.seq as i64, AuditRow::from_record(record));
            Ok(())
        })
    }

    async fn append_batch(&self, records: &[AuditRecord]) -> Result<(), StoreError> {
        // All or nothing, like a transaction: on a failure, the records this call added go.
        for (added, r) in records.iter().enumerate() {
            if let Err(e) = self.append(r).await {
                self.with_inner(|i| {
                    for r in &records[..added] {
                        i.rows.remove(&(r.seq as i64));
                    }
                });
                return Err(e);
            }
        }
        Ok(())
    }

    async fn read(&self, from: u64, limit: usize) -> Result<Vec<Result<AuditRecord, RowError>>, StoreError> {
        self.with_inner(|i| {
            Ok(i.rows
                .range(from as i64..)
                .take(limit)
                .map(|(_, r)| r.clone().into_record())
                .collect())
        })
    }

    async fn append_checkpoint(&self, cp: &Checkpoint) -> Result<(), StoreError> {
        self.with_inner(|i| {
            if i.checkpoints.contains_key(&cp.body.seq) {
                return Err(StoreError::Conflict(format!("checkpoint {} exists", cp.body.seq)));
            }
            i.checkpoints.insert(cp.body.seq, cp.clone());
            Ok(())
        })
    }

    async fn checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        self.with_inner(|i| Ok(i.checkpoints.values().cloned().collect()))
    }

    async fn purge(&self, boundary: &Checkpoint) -> Result<u64, StoreError> {
        self.with_inner(|i| {
            if i.checkpoints.contains_key(&boundary.body.seq) {
                return Err(StoreError::Conflict(format!("checkpoint {} exists", boundary.body.seq)));
            }
            let keep_from = boundary.body.tree_size as i64 + 1;
            let kept = i.rows.split_off(&keep_from);
            let removed = i.rows.len() as u64;
            i.rows = kept;
            i.checkpoints.insert(boundary.body.seq, boundary.clone());
            // Checkpoints link to their predecessor: only the prefix before the first one that
            // attests a kept record goes (an older boundary may attest fewer records).
            let first_kept = i
                .checkpoints
                .values()
                .filter(|c| c.body.tree_size >= boundary.body.tree_size)
                .map(|c| c.body.seq)
                .min()
                .unwrap_or(boundary.body.seq);
            i.checkpoints.retain(|&seq, _| seq >= first_kept);
            Ok(removed)
        })
    }
}

/// When checkpoints are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointPolicy {
    /// After this many records since the last checkpoint.
    pub every_records: u64,
    /// After this long since the last checkpoint, if any record came in (checked by [`AuditLog::tick`]).
    pub every: Duration,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        CheckpointPolicy {
            every_records: 1000,
            every: Duration::seconds(60),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("invalid audit record: {0}")]
    Record(#[from] RecordError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot sign the audit checkpoint")]
    Sign(#[from] SignError),
    #[error(transparent)]
    PurgeRefused(#[from] PurgeRefused),
    /// Records that arrived since the last checkpoint do not chain: the checkpoint is withheld
    /// rather than signed over tampered data.
    #[error("audit record {seq} does not chain to its predecessor; checkpoint withheld")]
    Broken { seq: u64 },
}

/// The append whose group held this record was cancelled (its caller went away): whether the
/// record was stored is unknown, so the call fails.
fn interrupted() -> AuditError {
    AuditError::Store(StoreError::Backend {
        context: "appending an audit record",
        source: "the group commit holding it was interrupted".into(),
    })
}

/// One failure told to every member of a group.
fn replicate(e: &AuditError) -> AuditError {
    match e {
        AuditError::Store(StoreError::Conflict(m)) => AuditError::Store(StoreError::Conflict(m.clone())),
        AuditError::Broken { seq } => AuditError::Broken { seq: *seq },
        other => AuditError::Store(StoreError::Backend {
            context: "appending audit records",
            source: rampart_common::error::ErrorChain(other).to_string().into(),
        }),
    }
}

impl AuditError {
    /// As the public error: an audit failure fails the call (503), its cause goes to the run log.
    pub fn into_public(self) -> rampart_common::Error {
        match self {
            AuditError::Record(e) => rampart_common::Error::internal("building the audit record", e),
            other => rampart_common::Error::Unavailable(format!(
                "the audit trail cannot be written, so the operation was not performed: {}",
                match other {
                    AuditError::Store(_) => "store unavailable",
                    AuditError::Sign(_) => "checkpoint signer unavailable",
                    _ => "audit chain integrity",
                }
            )),
        }
    }
}

struct State {
    /// Head as far as this appender knows; [`AuditLog::catch_up`] follows other writers.
    head: ChainHead,
    /// Merkle state over records 1..=tree.size.
    tree: CompactRange,
    /// Newest checkpoint by number.
    latest: Option<Checkpoint>,
    /// Tree size of the newest periodic attestation and when it was made.
    attested: u64,
    attested_at: OffsetDateTime,
}

const PAGE: usize = 1000;
/// Appends retried after a seq conflict before the call fails.
const MAX_APPEND_ATTEMPTS: u32 = 16;

/// A record waiting for the next group commit, and where its outcome goes.
struct Waiting {
    new: NewRecord,
    reply: oneshot::Sender<Result<AuditRecord, AuditError>>,
}

/// The appender. One per store; appends are serialised by an async mutex so seq and hashes
/// are assigned in one order. Appends that arrive while one is being stored wait in `queue`
/// and the next holder of the mutex stores all of them with one durable commit (group commit):
/// each caller still returns only once its own record is durable.
pub struct AuditLog<S: AuditStore> {
    store: S,
    signer: Arc<dyn CheckpointSigner>,
    clock: SharedClock,
    policy: CheckpointPolicy,
    state: AsyncMutex<State>,
    queue: Mutex<Vec<Waiting>>,
}

impl<S: AuditStore> AuditLog<S> {
    /// Opens the trail: the Merkle state comes from the checkpoint with the largest tree and is
    /// brought up to the store's head by reading only the records after it.
    pub async fn open(
        store: S,
        signer: Arc<dyn CheckpointSigner>,
        clock: SharedClock,
        policy: CheckpointPolicy,
    ) -> Result<Self, AuditError> {
        let cps = store.checkpoints().await?;
        let latest = cps.iter().max_by_key(|c| c.body.seq).cloned();
        let widest = cps
            .iter()
            .filter(|c| c.body.tree().is_some())
            .max_by_key(|c| c.body.tree_size);
        let (tree, link) = match widest {
            Some(c) => (c.body.tree().expect("filtered"), c.body.last_hash),
            None => (CompactRange::new(), Hash::ZERO),
        };
        let attested = cps
            .iter()
            .filter(|c| c.body.kind == CheckpointKind::Periodic)
            .map(|c| c.body.tree_size)
            .max()
            .unwrap_or(0);
        let now = clock.now();
        let mut state = State {
            head: ChainHead {
                seq: tree.size,
                hash: link,
            },
            tree,
            latest,
            attested,
            attested_at: now,
        };
        Self::catch_up_state(&store, &mut state).await?;
        Ok(AuditLog {
            store,
            signer,
            clock,
            policy,
            state: AsyncMutex::new(state),
            queue: Mutex::new(Vec::new()),
        })
    }

    /// Records waiting for the next group commit (a gauge of audit back-pressure).
    pub fn queued(&self) -> usize {
        self.queue.lock().expect("audit queue lock").len()
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn trusted_keys(&self) -> KeyRing {
        KeyRing::new([self.signer.public_key()])
    }

    /// Reads records the appender has not seen (written by another controller, or by a request
    /// that sealed its record inside its own transaction) and extends the Merkle state,
    /// checking each link so a checkpoint is never signed over a broken chain.
    async fn catch_up_state(store: &S, state: &mut State) -> Result<(), AuditError> {
        loop {
            let rows = store.read(state.tree.size + 1, PAGE).await?;
            if rows.is_empty() {
                return Ok(());
            }
            for row in rows {
                let r = row.map_err(|e| AuditError::Broken {
                    seq: u64::try_from(e.seq).unwrap_or(0),
                })?;
                let expected_seq = state.tree.size + 1;
                let links = r.seq == expected_seq && r.prev_hash == state.head.hash;
                let intact = compute_hash(&r).is_ok_and(|h| h == r.hash);
                if !links || !intact {
                    tracing::error!(seq = r.seq, "audit chain broken; checkpoints withheld until verified");
                    return Err(AuditError::Broken { seq: r.seq });
                }
                state.tree.push(&r.hash);
                state.head = ChainHead::of(&r);
            }
        }
    }

    /// Seals, stores and returns a record; writes a checkpoint when N records have gone by.
    /// An error means the record is not stored: the caller must fail the request.
    pub async fn append(&self, new: NewRecord) -> Result<AuditRecord, AuditError> {
        let (reply, mut outcome) = oneshot::channel();
        self.queue
            .lock()
            .expect("audit queue lock")
            .push(Waiting { new, reply });
        let mut state = self.state.lock().await;
        // A holder of the mutex before us may have stored ours with its group: it answers
        // every record it took before letting the mutex go.
        match outcome.try_recv() {
            Ok(done) => return done,
            Err(oneshot::error::TryRecvError::Closed) => return Err(interrupted()),
            Err(oneshot::error::TryRecvError::Empty) => {}
        }
        let group = std::mem::take(&mut *self.queue.lock().expect("audit queue lock"));
        self.store_group(&mut state, group).await;
        drop(state);
        outcome.await.unwrap_or_else(|_| Err(interrupted()))
    }

    /// Seals the group in order and stores it in one batch, following other writers on a
    /// seq conflict; answers every member.
    async fn store_group(&self, state: &mut State, mut group: Vec<Waiting>) {
        let mut attempts = 0;
        loop {
            let mut head = state.head;
            let mut sealed = Vec::with_capacity(group.len());
            let mut members = Vec::with_capacity(group.len());
            for w in group.drain(..) {
                match seal(&head, w.new.clone()) {
                    Ok(r) => {
                        head = ChainHead::of(&r);
                        sealed.push(r);
                        members.push(w);
                    }
                    // An invalid record fails its own call only.
                    Err(e) => {
                        let _ = w.reply.send(Err(e.into()));
                    }
                }
            }
            if sealed.is_empty() {
                return;
            }
            let failure = match self.store.append_batch(&sealed).await {
                Ok(()) => {
                    for (record, w) in sealed.into_iter().zip(members) {
                        let done = self.after_append(state, record).await;
                        let _ = w.reply.send(done);
                    }
                    return;
                }
                Err(StoreError::Conflict(_)) if attempts < MAX_APPEND_ATTEMPTS => {
                    // Another writer (another controller on the same database) moved the
                    // head: follow it and seal again.
                    attempts += 1;
                    Self::catch_up_state(&self.store, state).await.err()
                }
                Err(e) => Some(e.into()),
            };
            if let Some(e) = failure {
                tracing::error!(error = %rampart_common::error::ErrorChain(&e), records = members.len(), "audit records not stored");
                for w in members {
                    let _ = w.reply.send(Err(replicate(&e)));
                }
                return;
            }
            group = members;
        }
    }

    /// Reloads the newest checkpoint after another writer stored one with the number this
    /// appender meant to use.
    async fn reload_checkpoints(&self, state: &mut State) -> Result<(), AuditError> {
        let cps = self.store.checkpoints().await?;
        if let Some(latest) = cps.iter().max_by_key(|c| c.body.seq) {
            state.latest = Some(latest.clone());
        }
        let attested = cps
            .iter()
            .filter(|c| c.body.kind == CheckpointKind::Periodic)
            .map(|c| c.body.tree_size)
            .max()
            .unwrap_or(0);
        state.attested = state.attested.max(attested);
        Ok(())
    }

    async fn after_append(&self, state: &mut State, record: AuditRecord) -> Result<AuditRecord, AuditError> {
        state.tree.push(&record.hash);
        state.head = ChainHead::of(&record);
        if state.head.seq - state.attested >= self.policy.every_records {
            // The record is stored; a failed checkpoint is retried by the next append or tick
            // and must not fail the request whose record is already safe.
            if let Err(e) = self.write_checkpoint(state).await {
                tracing::error!(error = %rampart_common::error::ErrorChain(&e), "audit checkpoint failed");
            }
        }
        Ok(record)
    }

    /// Call periodically (every second or so): writes a checkpoint when T has elapsed since the
    /// last one and records came in meanwhile.
    pub async fn tick(&self) -> Result<Option<Checkpoint>, AuditError> {
        let mut state = self.state.lock().await;
        Self::catch_up_state(&self.store, &mut state).await?;
        let due = state.head.seq > state.attested && self.clock.now() - state.attested_at >= self.policy.every;
        if due {
            self.write_checkpoint(&mut state).await.map(Some)
        } else {
            Ok(None)
        }
    }

    /// Writes a checkpoint now if any record is unattested (shutdown, before an export).
    pub async fn checkpoint_now(&self) -> Result<Option<Checkpoint>, AuditError> {
        let mut state = self.state.lock().await;
        Self::catch_up_state(&self.store, &mut state).await?;
        if state.head.seq > state.attested {
            self.write_checkpoint(&mut state).await.map(Some)
        } else {
            Ok(None)
        }
    }

    async fn write_checkpoint(&self, state: &mut State) -> Result<Checkpoint, AuditError> {
        match self.try_write_checkpoint(state).await {
            Err(AuditError::Store(StoreError::Conflict(_))) => {
                self.reload_checkpoints(state).await?;
                if state.attested >= state.tree.size {
                    // The other writer attested everything already.
                    return state.latest.clone().ok_or(AuditError::Broken { seq: 0 });
                }
                self.try_write_checkpoint(state).await
            }
            other => other,
        }
    }

    async fn try_write_checkpoint(&self, state: &mut State) -> Result<Checkpoint, AuditError> {
        let now = self.clock.now();
        let body = CheckpointBody {
            version: 1,
            seq: state.latest.as_ref().map_or(1, |c| c.body.seq + 1),
            kind: CheckpointKind::Periodic,
            tree_size: state.tree.size,
            root: state.tree.root(),
            last_hash: state.head.hash,
            compact_range: state.tree.nodes.clone(),
            time: truncate_ms(now),
            key_id: self.signer.key_id().to_string(),
            prev: state.latest.as_ref().map_or(Hash::ZERO, Checkpoint::digest),
        };
        let cp = Checkpoint::sign(body, self.signer.as_ref())?;
        self.store.append_checkpoint(&cp).await?;
        tracing::info!(
            checkpoint = cp.body.seq,
            tree_size = cp.body.tree_size,
            "audit checkpoint written"
        );
        state.attested = cp.body.tree_size;
        state.attested_at = now;
        state.latest = Some(cp.clone());
        Ok(cp)
    }

    /// Runs the retention purge for operation records: drops the expired prefix and writes the
    /// boundary checkpoint in one store transaction. Returns the boundary, or `None` when
    /// nothing expired. Refuses (and drops nothing) when the expired range fails verification.
    pub async fn purge_expired(&self, policy: &RetentionPolicy) -> Result<Option<(Checkpoint, u64)>, AuditError> {
        self.purge_expired_up_to(policy, u64::MAX).await
    }

    /// As [`AuditLog::purge_expired`], never dropping records after `max_seq` (those the log
    /// forwarder has not taken yet).
    pub async fn purge_expired_up_to(
        &self,
        policy: &RetentionPolicy,
        max_seq: u64,
    ) -> Result<Option<(Checkpoint, u64)>, AuditError> {
        let mut state = self.state.lock().await;
        Self::catch_up_state(&self.store, &mut state).await?;
        let now = self.clock.now();
        let cps = self.store.checkpoints().await?;
        let start = cps
            .iter()
            .filter(|c| c.body.kind == CheckpointKind::Boundary)
            .max_by_key(|c| c.body.tree_size)
            .and_then(ChainStart::from_boundary)
            .unwrap_or_else(ChainStart::genesis);
        let first = start.first_seq();
        let mut planner = PurgePlanner::new(start, policy.cutoff(LogType::Operation, now))
            .with_security_cutoff(policy.cutoff(LogType::Security, now))
            .up_to(max_seq);
        let mut from = first;
        'outer: loop {
            let rows = self.store.read(from, PAGE).await?;
            if rows.is_empty() {
                break;
            }
            for row in rows {
                let r = row.map_err(|e| PurgeRefused {
                    seq: u64::try_from(e.seq).unwrap_or(0),
                })?;
                from = r.seq + 1;
                if !planner.push(&r)? {
                    break 'outer;
                }
            }
        }
        let Some(plan) = planner.finish(first) else {
            return Ok(None);
        };
        let body = plan.boundary_body(state.latest.as_ref(), now, self.signer.key_id());
        let cp = Checkpoint::sign(body, self.signer.as_ref())?;
        let removed = self.store.purge(&cp).await?;
        tracing::info!(
            checkpoint = cp.body.seq,
            removed,
            first_kept = plan.drop_before,
            "audit retention purge"
        );
        state.latest = Some(cp.clone());
        Ok(Some((cp, removed)))
    }

    /// Verifies the whole store page by page.
    pub async fn verify(&self, keys: &KeyRing, opts: VerifyOptions) -> Result<VerifyReport, AuditError> {
        verify_store(&self.store, keys, opts).await
    }
}

/// Verifies any store page by page (the API handler and the offline CLI share this).
pub async fn verify_store<S: AuditStore>(
    store: &S,
    keys: &KeyRing,
    opts: VerifyOptions,
) -> Result<VerifyReport, AuditError> {
    let cps = store.checkpoints().await?;
    let mut v = Verifier::new(&cps, keys, opts);
    let mut from = 0;
    loop {
        let rows = store.read(from, PAGE).await?;
        let Some(last) = rows.last() else {
            break;
        };
        from = match last {
            Ok(r) => r.seq + 1,
            Err(e) => u64::try_from(e.seq).unwrap_or(0) + 1,
        };
        for row in rows {
            v.push_row(row);
        }
    }
    Ok(v.finish())
}
