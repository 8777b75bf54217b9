//! The node's storage service: converges the `storage` section of the desired state (volumes and
//! snapshots that must exist here, or must be wiped) on the node's pool, and reports what the
//! pool holds.
//!
//! One pass is [`plan`] (pure: desired × what the service knows → actions) and the executor,
//! which runs each action as its own task: the backend's blocking work (`qemu-img`, writing
//! gigabytes) goes to `spawn_blocking`, and a volume is busy while one of its actions runs, so
//! there is at most one operation per volume and the heartbeat never waits on a disk.
//!
//! Passphrases come from the controller ([`Controller::passphrase`], mTLS) only for the action
//! that needs one, live as [`Sensitive`] for that action and are dropped at its end; they are
//! never logged nor put in an error. Verified wipe reports are kept under the agent's data
//! directory before the space is released, so `wiped` and its proof are reported until the
//! volume leaves the document, across agent restarts.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rampart_api::compute::Failure;
use rampart_api::storage::{
    DesiredVolume, NodeStorage, PoolHealthState, PoolReport, StorageStatus, VolumeSource, WipeReport,
};
use rampart_common::Sensitive;
use rampart_storage::{ImageFormat, PoolHealth, Recovery, StorageBackend, StorageError};
use rampart_storage::{VolumeInfo, VolumeSpec};
use tokio::sync::Notify;
use uuid::Uuid;

/// A failure the backend may outgrow (an unreachable pool, a key the controller did not give)
/// is tried again after this long; a refused create stays `error` until the controller acts.
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// A wipe that did not verify is tried again (the wipe is resumable), less often.
const WIPE_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Who the report names when a wipe resumed after a restart before the document said.
const RESUMED_BY: &str = "rampart-agent (wipe resumed after a restart)";

pub mod ceph;
/// The backend trait object the binary hands to [`crate::Agent::with_storage`].
pub use rampart_storage::StorageBackend as StorageBackendDyn;
mod plan;
pub mod scrub;
pub use plan::{Action, Have, Kind, Slot, code_of, plan, pool_report};
use plan::{failure, public_message, report_of, retry_for};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the service asks the controller for. A trait so that tests give a fake.
pub trait Controller: Send + Sync + 'static {
    /// The volume's passphrase (`POST /agent/v1/volumes/{id}/passphrase`).
    fn passphrase(&self, volume: Uuid) -> BoxFuture<'_, Result<Sensitive, Failure>>;
    /// A verified local copy of an image (digest checked while it downloads); `progress` gets
    /// the bytes received so far.
    fn image<'a>(
        &'a self,
        image_id: Uuid,
        sha256: &'a str,
        progress: &'a (dyn Fn(u64) + Send + Sync),
    ) -> BoxFuture<'a, Result<PathBuf, Failure>>;
}

#[derive(Default)]
struct Inner {
    vols: BTreeMap<Uuid, Slot>,
    snaps: BTreeMap<Uuid, Slot>,
    pool: Option<PoolReport>,
}

impl Inner {
    fn map(&mut self, kind: Kind) -> &mut BTreeMap<Uuid, Slot> {
        match kind {
            Kind::Volume => &mut self.vols,
            Kind::Snapshot => &mut self.snaps,
        }
    }
}

/// The node's storage service. Cheap to share (`Arc`); every method returns at once except
/// [`StorageService::recover`] and [`StorageService::settle`].
pub struct StorageService {
    backend: Arc<dyn StorageBackend>,
    ctl: Arc<dyn Controller>,
    pool_name: String,
    /// `<data dir>/storage/wiped/<id>.json`: proofs kept until the volume leaves the document.
    reports_dir: PathBuf,
    inner: Mutex<Inner>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Notified when an action ends: the loop plans again (a snapshot made lets a volume from
    /// it be created) and the status goes out sooner.
    pub changed: Notify,
    /// The pool's scheduled scrub, whose last result goes into the pool's report (14.1-2).
    scrubber: std::sync::OnceLock<Arc<scrub::Scrubber>>,
}

fn lock(m: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    m.lock().expect("storage state lock")
}

impl StorageService {
    pub fn new(
        backend: Arc<dyn StorageBackend>,
        ctl: Arc<dyn Controller>,
        state_dir: &Path,
    ) -> Result<Arc<Self>, crate::AgentError> {
        let reports_dir = state_dir.join("wiped");
        rampart_common::fsutil::ensure_private_dir(&reports_dir).map_err(|source| crate::AgentError::Io {
            action: "create",
            path: reports_dir.clone(),
            source,
        })?;
        let mut inner = Inner::default();
        // Proofs of wipes finished before a restart: still reported.
        for e in std::fs::read_dir(&reports_dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some((kind, id)) = name.strip_suffix(".json").and_then(|s| {
                let (k, id) = s.split_once('-')?;
                let kind = match k {
                    "volume" => Kind::Volume,
                    "snapshot" => Kind::Snapshot,
                    _ => return None,
                };
                Some((kind, id.parse::<Uuid>().ok()?))
            }) else {
                continue;
            };
            match std::fs::read(e.path())
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
            {
                Some(report) => {
                    inner.map(kind).insert(
                        id,
                        Slot {
                            have: Have::Wiped { report },
                            busy: false,
                        },
                    );
                }
                None => tracing::warn!(volume = %id, "unreadable kept wipe report; ignored"),
            }
        }
        Ok(Arc::new(StorageService {
            pool_name: backend.kind().into(),
            backend,
            ctl,
            reports_dir,
            inner: Mutex::new(inner),
            tasks: Mutex::new(Vec::new()),
            changed: Notify::new(),
            scrubber: std::sync::OnceLock::new(),
        }))
    }

    pub fn backend(&self) -> Arc<dyn StorageBackend> {
        self.backend.clone()
    }

    /// What the service knows of a volume.
    pub fn volume(&self, id: Uuid) -> Option<Slot> {
        lock(&self.inner).vols.get(&id).cloned()
    }

    /// A volume that may be opened for a VM now.
    pub fn is_ready(&self, id: Uuid) -> bool {
        self.volume(id).is_some_and(|s| !s.busy && s.have.in_service())
    }

    /// A volume's passphrase from the controller, for an attach.
    pub async fn passphrase(&self, id: Uuid) -> Result<Sensitive, Failure> {
        self.ctl.passphrase(id).await
    }

    fn set(&self, kind: Kind, id: Uuid, have: Have, busy: bool) {
        lock(&self.inner).map(kind).insert(id, Slot { have, busy });
    }

    fn report_path(&self, kind: Kind, id: Uuid) -> PathBuf {
        let k = match kind {
            Kind::Volume => "volume",
            Kind::Snapshot => "snapshot",
        };
        self.reports_dir.join(format!("{k}-{id}.json"))
    }

    /// After a start: rolls back the creates a crash interrupted (those volumes go `error`
    /// `create_failed`), releases wiped volumes whose release was cut, and marks unfinished
    /// wipes to be resumed by the next pass.
    pub async fn recover(self: &Arc<Self>) {
        let b = self.backend.clone();
        let found = match tokio::task::spawn_blocking(move || b.recover()).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::warn!(error = %rampart_common::error::ErrorChain(&e), "cannot read the pool's leftovers");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "pool recovery task failed");
                return;
            }
        };
        for r in found {
            // Whether the id is a volume or a snapshot is not in the pool's names; the
            // document sorts it out (a snapshot id only ever appears under snapshots).
            match r {
                Recovery::RollBackCreate { id } => {
                    let b = self.backend.clone();
                    let res = tokio::task::spawn_blocking(move || b.roll_back(id)).await;
                    if !matches!(res, Ok(Ok(()))) {
                        tracing::warn!(volume = %id, "cannot roll back an unfinished create yet");
                    }
                    tracing::info!(volume = %id, "the agent stopped during a create: rolled back");
                    self.set(
                        Kind::Volume,
                        id,
                        Have::Error {
                            failure: failure(
                                "create_failed",
                                "the node stopped while creating the volume; the half-made copy was removed",
                            ),
                            retry_at: None,
                        },
                        false,
                    );
                }
                Recovery::ResumeWipe { id } => {
                    tracing::info!(volume = %id, "an interrupted wipe will resume");
                    self.set(Kind::Volume, id, Have::Wiping, false);
                }
                Recovery::ReleasePending { report } => {
                    let id = report.volume;
                    let svc = self.clone();
                    let res = tokio::task::spawn_blocking(move || svc.keep_and_release(Kind::Volume, id, report)).await;
                    match res {
                        Ok(Ok(report)) => self.set(Kind::Volume, id, Have::Wiped { report: Some(report) }, false),
                        _ => self.set(Kind::Volume, id, Have::Wiping, false),
                    }
                }
            }
        }
    }

    /// Moves records that recovery filed under volumes to snapshots when the document says
    /// the id is a snapshot's.
    fn sort_recovered(&self, desired: &NodeStorage) {
        let mut g = lock(&self.inner);
        for s in &desired.snapshots {
            if !g.snaps.contains_key(&s.id)
                && let Some(slot) = g.vols.remove(&s.id)
            {
                g.snaps.insert(s.id, slot);
            }
        }
    }

    /// One pass: plans and starts the actions (each in its own task); returns at once.
    pub fn converge(self: &Arc<Self>, desired: &NodeStorage) {
        self.sort_recovered(desired);
        let actions = {
            let mut g = lock(&self.inner);
            let actions = plan(desired, &g.vols, &g.snaps, Instant::now());
            for a in &actions {
                match a {
                    Action::Forget { kind, id } => {
                        g.map(*kind).remove(id);
                    }
                    Action::Probe { kind, id } | Action::Wipe { kind, id, .. } => {
                        let prev = g.map(*kind).get(id).map(|s| s.have.clone());
                        let have = match a {
                            Action::Wipe { .. } => Have::Wiping,
                            _ => prev.unwrap_or(Have::Absent),
                        };
                        g.map(*kind).insert(*id, Slot { have, busy: true });
                    }
                    Action::Create(v) => {
                        g.vols.insert(
                            v.id,
                            Slot {
                                have: Have::Creating { progress: Some(0) },
                                busy: true,
                            },
                        );
                    }
                    Action::Extend { id, .. } => {
                        if let Some(s) = g.vols.get_mut(id) {
                            s.busy = true;
                        }
                    }
                    Action::Snapshot { snapshot, .. } => {
                        g.snaps.insert(
                            snapshot.id,
                            Slot {
                                have: Have::Creating { progress: None },
                                busy: true,
                            },
                        );
                        // The volume is read while it is copied: nothing else runs on it.
                        if let Some(p) = g.vols.get_mut(&snapshot.volume_id) {
                            p.busy = true;
                        }
                    }
                }
            }
            actions
        };
        for a in actions {
            if let Action::Forget { kind, id } = a {
                let _ = std::fs::remove_file(self.report_path(kind, id));
                continue;
            }
            let svc = self.clone();
            let h = tokio::spawn(async move {
                svc.run(a).await;
                svc.changed.notify_one();
            });
            let mut t = self.tasks.lock().expect("tasks lock");
            t.retain(|h| !h.is_finished());
            t.push(h);
        }
    }

    /// Waits for every action started so far (tests; a stopping agent).
    pub async fn settle(&self) {
        loop {
            let hs: Vec<_> = std::mem::take(&mut *self.tasks.lock().expect("tasks lock"));
            if hs.is_empty() {
                return;
            }
            for h in hs {
                let _ = h.await;
            }
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn StorageBackend) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let b = self.backend.clone();
        tokio::task::spawn_blocking(move || f(b.as_ref()))
            .await
            .unwrap_or_else(|e| {
                Err(StorageError::Io {
                    context: "a storage task".into(),
                    source: std::io::Error::other(e.to_string()),
                })
            })
    }

    /// The passphrase when the volume is encrypted.
    async fn key(&self, id: Uuid, encrypted: bool) -> Result<Option<Sensitive>, Failure> {
        if !encrypted {
            return Ok(None);
        }
        self.ctl.passphrase(id).await.map(Some).map_err(|f| {
            failure(
                "key_unavailable",
                format!("the volume's key could not be had from the controller: {}", f.message),
            )
        })
    }

    fn fail(&self, kind: Kind, id: Uuid, f: Failure) {
        tracing::warn!(volume = %id, code = %f.code, message = %f.message, "storage operation failed");
        let retry_at = retry_for(&f.code, Instant::now());
        self.set(kind, id, Have::Error { failure: f, retry_at }, false);
    }

    fn failed(&self, kind: Kind, id: Uuid, op: &str, e: StorageError) {
        // The full chain (it may name pool paths) goes to the node's log only.
        tracing::warn!(volume = %id, op, error = %rampart_common::error::ErrorChain(&e), "storage backend error");
        self.fail(kind, id, failure(code_of(&e, op), public_message(&e, op)));
    }

    /// A failed extend leaves the volume in service at its old size.
    fn not_extended(&self, id: Uuid, f: Failure) {
        let mut g = lock(&self.inner);
        let (size_bytes, allocated_bytes) = match g.vols.get(&id).map(|s| &s.have) {
            Some(Have::Ready {
                size_bytes,
                allocated_bytes,
            })
            | Some(Have::NotExtended {
                size_bytes,
                allocated_bytes,
                ..
            }) => (*size_bytes, *allocated_bytes),
            _ => {
                drop(g);
                return self.fail(Kind::Volume, id, f);
            }
        };
        g.vols.insert(
            id,
            Slot {
                have: Have::NotExtended {
                    size_bytes,
                    allocated_bytes,
                    failure: f,
                    retry_at: Instant::now() + RETRY_AFTER,
                },
                busy: false,
            },
        );
    }

    fn ready(&self, kind: Kind, info: &VolumeInfo) {
        self.set(
            kind,
            info.id,
            Have::Ready {
                size_bytes: info.size_bytes,
                allocated_bytes: info.allocated_bytes,
            },
            false,
        );
    }

    async fn run(self: &Arc<Self>, a: Action) {
        match a {
            Action::Probe { kind, id } => match self.blocking(move |b| b.info(id)).await {
                Ok(info) => self.ready(kind, &info),
                Err(StorageError::NotFound(_)) => self.set(kind, id, Have::Absent, false),
                Err(e) => self.failed(kind, id, "look-up", e),
            },
            Action::Create(v) => self.create(v).await,
            Action::Extend {
                id,
                size_bytes,
                encrypted,
            } => {
                let res = match self.key(id, encrypted).await {
                    Ok(key) => self
                        .blocking(move |b| b.extend(id, size_bytes, key.as_ref()))
                        .await
                        .map_err(|e| {
                            tracing::warn!(volume = %id, error = %rampart_common::error::ErrorChain(&e), "extend failed");
                            failure(code_of(&e, "extend"), public_message(&e, "extend"))
                        }),
                    Err(f) => Err(f),
                };
                match res {
                    Ok(info) => {
                        tracing::info!(volume = %id, size_bytes, "volume extended");
                        self.ready(Kind::Volume, &info)
                    }
                    Err(f) => self.not_extended(id, f),
                }
            }
            Action::Snapshot { snapshot, encrypted } => {
                let (sid, vid) = (snapshot.id, snapshot.volume_id);
                // A snapshot keeps its volume's key: the volume's passphrase opens both.
                let res = match self.key(vid, encrypted).await {
                    Ok(key) => self
                        .blocking(move |b| b.snapshot(vid, sid, key.as_ref()))
                        .await
                        .map_err(|e| (code_of(&e, "snapshot"), public_message(&e, "snapshot"), Some(e))),
                    Err(f) => Err(("key_unavailable", f.message, None)),
                };
                {
                    let mut g = lock(&self.inner);
                    if let Some(p) = g.vols.get_mut(&vid) {
                        p.busy = false;
                    }
                }
                match res {
                    Ok(info) => {
                        tracing::info!(volume = %vid, snapshot = %sid, "snapshot made");
                        self.ready(Kind::Snapshot, &info)
                    }
                    Err((code, message, e)) => {
                        if let Some(e) = e {
                            tracing::warn!(snapshot = %sid, error = %rampart_common::error::ErrorChain(&e), "snapshot failed");
                        }
                        self.fail(Kind::Snapshot, sid, failure(code, message))
                    }
                }
            }
            Action::Wipe { kind, id, requested_by } => self.wipe(kind, id, requested_by).await,
            Action::Forget { .. } => {}
        }
    }

    async fn create(self: &Arc<Self>, v: DesiredVolume) {
        let id = v.id;
        let spec = VolumeSpec {
            id,
            size_bytes: v.size_bytes,
            encrypted: v.encrypted,
            owner: None,
        };
        let source = match &v.source {
            None => None,
            Some(VolumeSource::Snapshot { snapshot_id }) => Some(Err(*snapshot_id)),
            Some(VolumeSource::Image {
                image_id,
                sha256,
                size,
                format,
            }) => {
                let format = match format.as_str() {
                    "raw" => ImageFormat::Raw,
                    "qcow2" => ImageFormat::Qcow2,
                    other => {
                        return self.fail(
                            Kind::Volume,
                            id,
                            failure("create_failed", format!("image format {other:?} is not raw or qcow2")),
                        );
                    }
                };
                // The download is the first half of the progress, the copy the second.
                let total = (*size).max(1);
                let svc = self.clone();
                let progress = move |got: u64| {
                    let pct = (got.min(total) * 50 / total) as u8;
                    let mut g = lock(&svc.inner);
                    if let Some(s) = g.vols.get_mut(&id)
                        && matches!(s.have, Have::Creating { .. })
                    {
                        s.have = Have::Creating { progress: Some(pct) };
                    }
                };
                match self.ctl.image(*image_id, sha256, &progress).await {
                    Ok(path) => Some(Ok((path, format))),
                    Err(f) => {
                        let code = if f.code == "image_signature_invalid" {
                            "create_failed"
                        } else {
                            "image_unavailable"
                        };
                        return self.fail(
                            Kind::Volume,
                            id,
                            failure(code, format!("image {image_id}: {}", f.message)),
                        );
                    }
                }
            }
        };
        self.set(Kind::Volume, id, Have::Creating { progress: Some(50) }, true);
        let key = match self.key(id, v.encrypted).await {
            Ok(k) => k,
            Err(f) => return self.fail(Kind::Volume, id, f),
        };
        let res = self
            .blocking(move |b| match source {
                None => b.create(&spec, key.as_ref()),
                Some(Ok((path, format))) => b.create_from_image(&spec, &path, format, key.as_ref()),
                Some(Err(snapshot)) => b.create_from_snapshot(&spec, snapshot, key.as_ref()),
            })
            .await;
        match res {
            Ok(info) => {
                tracing::info!(volume = %id, size_bytes = info.size_bytes, encrypted = info.encrypted, "volume created");
                self.ready(Kind::Volume, &info)
            }
            Err(e) => self.failed(Kind::Volume, id, "create", e),
        }
    }

    /// Writes the proof under the data directory, then frees the space (blocking).
    fn keep_and_release(&self, kind: Kind, id: Uuid, report: WipeReport) -> Result<WipeReport, StorageError> {
        let bytes = serde_json::to_vec(&report).expect("a wipe report serialises");
        rampart_common::fsutil::write_atomic(&self.report_path(kind, id), &bytes, 0o600)
            .map_err(StorageError::io("keeping a wipe report"))?;
        self.backend.release(id)?;
        Ok(report)
    }

    async fn wipe(self: &Arc<Self>, kind: Kind, id: Uuid, requested_by: String) {
        // An instance deleted with its volumes frees them in the controller before this node
        // has stopped its QEMU: a wipe then would race the guest's last writes (made with the
        // master key QEMU still holds). The wipe waits, still `wiping`, for the next pass.
        if let Ok(info) = self.blocking(move |b| b.info(id)).await
            && tokio::task::spawn_blocking(move || held_open(&info.path))
                .await
                .unwrap_or(true)
        {
            tracing::info!(volume = %id, "the volume is still open by a process (a VM being stopped); the wipe waits");
            self.set(kind, id, Have::Wiping, false);
            return;
        }
        tracing::info!(volume = %id, "wiping");
        let svc = self.clone();
        let res = tokio::task::spawn_blocking(move || {
            let report = svc.backend.wipe(id, &requested_by)?;
            if !report.verified {
                return Err(StorageError::WipeUnverified {
                    volume: id,
                    reason: "the report is not verified".into(),
                });
            }
            svc.keep_and_release(kind, id, report).map(Some)
        })
        .await
        .unwrap_or_else(|e| {
            Err(StorageError::Io {
                context: "a wipe task".into(),
                source: std::io::Error::other(e.to_string()),
            })
        });
        let res = match res {
            // Never in this pool (a create that failed and was rolled back): nothing to wipe,
            // unless the pool itself is missing, which `pool_status` says.
            Err(StorageError::NotFound(_)) => match self.blocking(|b| b.pool_status()).await {
                Ok(p) if p.health != PoolHealth::Unavailable => Ok(None),
                Ok(_) => Err(StorageError::Unavailable("the pool is unavailable".into())),
                Err(e) => Err(e),
            },
            other => other,
        };
        match res {
            Ok(report) => {
                tracing::info!(volume = %id, proof = report.is_some(), "wiped and released");
                self.set(kind, id, Have::Wiped { report }, false)
            }
            Err(e) => self.failed(kind, id, "wipe", e),
        }
    }

    /// Reads the pool's health and space (blocking: the loop calls it off the heartbeat).
    pub async fn refresh_pool(&self) {
        let pool = match self.blocking(|b| b.pool_status()).await {
            Ok(s) => pool_report(&self.pool_name, &s),
            Err(e) => {
                tracing::warn!(error = %rampart_common::error::ErrorChain(&e), "cannot read the storage pool");
                PoolReport {
                    name: self.pool_name.clone(),
                    backend: self.backend.kind().into(),
                    total_bytes: 0,
                    free_bytes: 0,
                    volumes: 0,
                    redundancy: "none".into(),
                    copies: 1,
                    health: PoolHealthState::Unavailable,
                    problems: vec![public_message(&e, "pool status")],
                }
            }
        };
        let mut pool = pool;
        if let Some(last) = self.scrubber.get().and_then(|s| s.last()) {
            scrub::annotate(&mut pool, &last);
        }
        lock(&self.inner).pool = Some(pool);
    }

    /// Reports the last scrub of `scrubber` with the pool from now on (set once).
    pub fn set_scrubber(&self, scrubber: Arc<scrub::Scrubber>) {
        let _ = self.scrubber.set(scrubber);
    }

    /// The storage section of the next status (from memory: never waits on the disk).
    pub fn report(&self) -> StorageStatus {
        let g = lock(&self.inner);
        StorageStatus {
            pools: g.pool.clone().into_iter().collect(),
            volumes: g.vols.iter().map(|(id, s)| report_of(*id, s)).collect(),
            snapshots: g.snaps.iter().map(|(id, s)| report_of(*id, s)).collect(),
        }
    }
}

/// The service's loop: recover, then converge on every new document, when an action ends
/// and every `interval` (retries, pool health).
pub(crate) async fn run(
    svc: Arc<StorageService>,
    mut desired: tokio::sync::watch::Receiver<Option<rampart_api::agent::NodeConfig>>,
    interval: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    svc.recover().await;
    loop {
        svc.refresh_pool().await;
        let doc = desired.borrow_and_update().as_ref().map(|d| d.storage.clone());
        // Before the first document the node knows nothing to make; resumed wipes still run.
        svc.converge(&doc.unwrap_or_default());
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = desired.changed() => {}
            _ = svc.changed.notified() => {}
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// The controller through the node's mTLS client, images through the compute side's cache.
pub struct NodeController {
    pub client: crate::identity::NodeClient,
    pub image_cache: PathBuf,
}

impl Controller for NodeController {
    fn passphrase(&self, volume: Uuid) -> BoxFuture<'_, Result<Sensitive, Failure>> {
        Box::pin(async move {
            let (_, c) = self
                .client
                .get()
                .map_err(|e| failure("key_unavailable", e.to_string()))?;
            c.agent_volume_passphrase(volume)
                .await
                .map(|p| p.passphrase)
                .map_err(|e| failure("key_unavailable", e.to_string()))
        })
    }

    fn image<'a>(
        &'a self,
        image_id: Uuid,
        sha256: &'a str,
        progress: &'a (dyn Fn(u64) + Send + Sync),
    ) -> BoxFuture<'a, Result<PathBuf, Failure>> {
        Box::pin(crate::compute::fetch_image(
            &self.client,
            &self.image_cache,
            image_id,
            sha256,
            progress,
        ))
    }
}

/// Whether another process holds `path` open. `/proc/*/fd` also shows descriptors handed
/// over a socket (how QEMU gets a volume), which no path-based lock would see. This process
/// is left out: its own descriptors are its own business (and a wipe opens the file itself).
pub(crate) fn held_open(path: &Path) -> bool {
    let me = std::process::id().to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    procs
        .flatten()
        .filter(|p| {
            let name = p.file_name();
            let name = name.to_string_lossy();
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) && name != me
        })
        .any(|p| {
            std::fs::read_dir(p.path().join("fd"))
                .map(|fds| {
                    fds.flatten()
                        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == path))
                })
                .unwrap_or(false)
        })
}

#[cfg(test)]
mod tests;
