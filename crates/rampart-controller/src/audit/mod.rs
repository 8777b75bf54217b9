//! The audit trail of the controller (spec 13.4, 9.2-5, 9.3-3): one [`Audit`] service per
//! controller holding the appender over the SQL store, and the middleware that writes an
//! operation record for every state-changing call, every authentication event, every refused
//! call (401/403) and every read of audit data or key metadata, **before the response leaves**:
//! when the record cannot be written the caller gets 503 `unavailable` instead.
//!
//! No unaudited changes: a state-changing call is first sealed as a `pending` write-ahead record
//! (Vault's rule: a request that cannot be logged is not served) by [`write_ahead`], which runs
//! after authentication and before the handler. If it cannot be written the call is refused
//! before anything changes. The completion record follows with the result and `intent_seq`
//! naming the pending record; if that second write fails, the caller gets 503 but the change is
//! already covered by the pending record of the same `request_id`.
//!
//! Handlers add what only they know through the request's [`AuditSlot`] (a task-local set by the
//! middleware): who tried to log in, why it failed, an extra event such as a lockout, details
//! such as the old and new retention. Nothing from request bodies is recorded except names and
//! ids the handler chooses; the record builder redacts anything credential-shaped anyway.
//!
//! Background work: checkpoints every second when due, the retention purge and the forwarding
//! to an RFC 5425 syslog receiver run on the controller holding the reconciler lease.

pub mod events;
pub mod forwarding;
pub mod intents;
pub mod middleware;
pub mod operations;
pub mod retention;
pub mod settings;
mod slot;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rampart_audit::checkpoint::{CheckpointSigner, Ed25519Signer};
use rampart_audit::flood::RefusalLimiter;
use rampart_audit::forward::{Forwarder, ForwardingStatus};
use rampart_audit::queue::{PersistentQueue, QueueOptions};
use rampart_audit::record::NewRecord;
use rampart_audit::store::{AuditLog, CheckpointPolicy};
use rampart_common::Error;
use rampart_common::config::AuditConfig;
use rampart_common::error::ErrorChain;
use rampart_common::time::SharedClock;
use rampart_db::Db;
use rampart_db::audit::SqlAuditStore;
use time::OffsetDateTime;

pub use settings::{FORWARDING_KEY, ForwardingSettings, ForwardingState, load_forwarding};
pub use slot::{AuditSlot, SlotData, note, note_actor, note_detail, note_login_actor};

#[derive(Debug, thiserror::Error)]
pub enum AuditSetupError {
    #[error("the audit checkpoint key")]
    Key(#[from] rampart_audit::checkpoint::SignError),
    #[error("the audit trail")]
    Log(#[from] rampart_audit::AuditError),
    #[error("the audit forwarding queue")]
    Queue(#[from] rampart_audit::queue::QueueError),
    #[error(transparent)]
    Db(#[from] rampart_db::DbError),
}

pub(crate) struct Running {
    pub(crate) settings: ForwardingSettings,
    pub(crate) forwarder: Forwarder,
}

/// The audit service of one controller.
pub struct Audit {
    pub log: AuditLog<SqlAuditStore>,
    pub store: SqlAuditStore,
    pub queue: PersistentQueue,
    pub config: AuditConfig,
    pub key_id: String,
    /// Wakes the forwarding pump after an append.
    pub wake_pump: tokio::sync::Notify,
    leader: AtomicBool,
    /// Bumped when the forwarding settings change, so the pump reloads them.
    pub(crate) settings_generation: AtomicU64,
    pub(crate) running: Mutex<Option<Running>>,
    pub(crate) hostname: String,
    clock: SharedClock,
    /// Refused calls per principal and source (13.4-1: nobody fills the trail in a loop).
    pub(crate) refusals: RefusalLimiter,
}

impl Audit {
    pub async fn open(
        db: &Db,
        data_dir: &Path,
        clock: SharedClock,
        config: AuditConfig,
    ) -> Result<Audit, AuditSetupError> {
        let dir = data_dir.join("audit");
        rampart_common::fsutil::ensure_private_dir(&dir)
            .map_err(|e| AuditSetupError::Key(rampart_audit::checkpoint::SignError::Io(e)))?;
        let signer = Arc::new(Ed25519Signer::load_or_create(&dir.join("checkpoint.key"))?);
        let key_id = signer.key_id().to_string();
        {
            let mut conn = db.conn().await?;
            rampart_db::audit::register_key(&mut conn, &signer.public_key(), clock.now()).await?;
        }
        let store = SqlAuditStore::new(db.clone());
        let log = AuditLog::open(
            store.clone(),
            signer,
            clock.clone(),
            CheckpointPolicy {
                every_records: config.checkpoint_every_records,
                every: time::Duration::seconds(config.checkpoint_interval_s as i64),
            },
        )
        .await?;
        let queue = PersistentQueue::open(
            &dir.join("forward-queue"),
            QueueOptions {
                max_bytes: config.forward_queue_max_bytes,
                ..QueueOptions::default()
            },
        )?;
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "-".into());
        Ok(Audit {
            log,
            store,
            queue,
            config: config.clone(),
            key_id,
            wake_pump: tokio::sync::Notify::new(),
            leader: AtomicBool::new(false),
            settings_generation: AtomicU64::new(1),
            running: Mutex::new(None),
            hostname,
            clock,
            refusals: RefusalLimiter::new(config.refused_calls_per_minute),
        })
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.store(leader, Ordering::SeqCst);
    }

    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::SeqCst)
    }

    pub fn settings_changed(&self) {
        self.settings_generation.fetch_add(1, Ordering::SeqCst);
        self.wake_pump.notify_one();
    }

    /// Status of the forwarder run by this controller.
    pub fn forwarding_state(&self) -> ForwardingState {
        match self.running.lock().expect("forwarder lock").as_ref() {
            Some(r) => ForwardingState::of(true, r.forwarder.status()),
            None => ForwardingState::of(
                false,
                ForwardingStatus {
                    pending: self.queue.pending(),
                    ..ForwardingStatus::default()
                },
            ),
        }
    }

    /// Appends a record from outside a request (system events such as black-box dumps).
    pub async fn append_system(&self, rec: NewRecord) -> Result<(), Error> {
        self.log.append(rec).await.map_err(|e| {
            tracing::error!(error = %ErrorChain(&e), "cannot write a system audit record");
            e.into_public()
        })?;
        self.wake_pump.notify_one();
        Ok(())
    }

    pub fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    /// Stops forwarding (shutdown).
    pub fn stop_forwarding(&self) {
        if let Some(r) = self.running.lock().expect("forwarder lock").take() {
            r.forwarder.stop();
        }
    }
}
