//! The node agent. It listens on no port: it enrols once with a join token, then pulls the
//! full desired state of its node (long poll, generation-numbered), keeps it in a ledger on
//! disk, converges the host on it (the network section through the host's network driver, on
//! every new generation and on a drift timer), and reports status, which is also its
//! heartbeat: the generation applied without error, the errors, and the data plane's counters
//! and flow logs.

pub mod attach;
pub mod compute;
pub mod fence;
pub mod host;
pub mod identity;
pub mod ledger;
mod netloop;
pub mod storage;

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rampart_api::ClientError;
use rampart_api::agent::{AgentStatus, NodeConfig};
use rampart_api::network::NetworkStatus;
use rampart_common::Sensitive;
use rampart_common::time::SharedClock;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::compute::{ComputeOptions, ComputeRuntime};
use crate::host::HostDriver;
use crate::identity::{Credentials, Identity, NodeClient};
use crate::ledger::Ledger;

/// Longest wait of one config poll (the controller caps `nodes.long_poll_timeout_s` at 300 s).
const POLL_CLIENT_TIMEOUT: Duration = Duration::from_secs(330);
const STATUS_CLIENT_TIMEOUT: Duration = Duration::from_secs(15);
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often the certificate's renewal time is compared with the clock.
const RENEWAL_CHECK: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("agent state is damaged: {0}")]
    Corrupt(String),
    #[error("the join token is malformed (expected rjt1.<id>.<secret>.<ca-sha256>)")]
    MalformedToken,
    #[error(
        "the controller's CA certificate does not match the SHA-256 in the join token: wrong controller URL, or someone in the middle"
    )]
    CaMismatch,
    #[error("the controller refused the join token: it is unknown, expired or already used; ask for a new one")]
    TokenRefused,
    #[error("this node has not joined yet: give --join TOKEN")]
    NotJoined,
    #[error("the controller no longer knows this node (it was removed); delete {0} and join again with a new token")]
    Removed(PathBuf),
    #[error(transparent)]
    Client(Box<ClientError>),
}

pub struct AgentOptions {
    pub controller_url: String,
    pub data_dir: PathBuf,
    pub join_token: Option<Sensitive>,
    /// Node name to join under (default: the host name).
    pub name: Option<String>,
    /// CA certificate to trust instead of fetching it (it must still match the token's pin).
    pub ca_file: Option<PathBuf>,
    pub host: Arc<dyn HostDriver>,
    /// How this node runs VMs; `None`: it runs none (and takes no instances).
    pub compute: Option<ComputeOptions>,
    pub network: NetOptions,
    /// When the node certificate's renewal is due (tests move it).
    pub clock: SharedClock,
}

/// How the agent runs the node's data plane.
#[derive(Debug, Clone)]
pub struct NetOptions {
    /// Prefix of every network namespace the agent owns; it deletes the stale ones that carry
    /// it, so two agents on one host need different prefixes.
    pub netns_prefix: String,
    /// Where the per-VPC dnsmasq files live (default `<data-dir>/net`).
    pub run_dir: Option<PathBuf>,
    /// How often the data plane is checked against the desired state (drift repair) when no
    /// new generation arrives.
    pub reconcile_interval: Duration,
    /// The tenant plane (VXLAN underlay): without it, VPCs of this node reach no port on
    /// another node.
    pub underlay: Option<rampart_net::desired::Underlay>,
}

impl Default for NetOptions {
    fn default() -> Self {
        NetOptions {
            netns_prefix: "rp-".into(),
            run_dir: None,
            reconcile_interval: Duration::from_secs(30),
            underlay: None,
        }
    }
}

/// An enrolled agent, ready to run.
pub struct Agent {
    identity: Identity,
    data_dir: PathBuf,
    host: Arc<dyn HostDriver>,
    compute: Option<ComputeOptions>,
    network: NetOptions,
    clock: SharedClock,
    storage: Option<Arc<dyn rampart_storage::StorageBackend>>,
    /// The `local` pool's directory and how it is scrubbed (a btrfs RAID1 pool, 14.1-2).
    pool_dir: PathBuf,
    scrub: storage::scrub::ScrubOptions,
}

/// How often the storage service looks again without a new document (retries, pool health).
const STORAGE_INTERVAL: Duration = Duration::from_secs(10);
/// The simulated node's pool (the fake backend): 1 TiB.
const FAKE_POOL_BYTES: u64 = 1 << 40;

/// The node's pool: the fake of the simulated cluster beside the fake hypervisor, else the
/// `local` pool under `<data dir>/volumes`. `None` (logged) when it cannot be opened.
fn default_storage(
    data_dir: &std::path::Path,
    compute: Option<&ComputeOptions>,
) -> Option<Arc<dyn rampart_storage::StorageBackend>> {
    if let Some(ComputeOptions {
        driver: compute::VmDriver::Fake { .. },
        ..
    }) = compute
    {
        return Some(Arc::new(rampart_storage::FakeBackend::new(FAKE_POOL_BYTES)));
    }
    match rampart_storage::LocalBackend::open(rampart_storage::LocalConfig::new(data_dir.join("volumes"))) {
        Ok(b) => Some(Arc::new(b)),
        Err(e) => {
            tracing::warn!(error = %rampart_common::error::ErrorChain(&e), "this node holds no volumes");
            None
        }
    }
}

impl Agent {
    /// Loads the node's identity, or joins with the token when there is none.
    pub async fn enrol(opts: AgentOptions) -> Result<Agent, AgentError> {
        let identity = match Identity::load(&opts.data_dir)? {
            Some(id) => {
                if opts.join_token.is_some() {
                    tracing::info!(node = %id.node.node_id, "already joined; ignoring --join");
                }
                id
            }
            None => {
                let token = opts.join_token.as_ref().ok_or(AgentError::NotJoined)?;
                let name = opts
                    .name
                    .clone()
                    .unwrap_or_else(|| rampart_common::names::node_name_from_hostname(&opts.host.facts().hostname));
                Identity::join(
                    &opts.data_dir,
                    &opts.controller_url,
                    token,
                    &name,
                    opts.ca_file.as_deref(),
                )
                .await?
            }
        };
        let storage = default_storage(&opts.data_dir, opts.compute.as_ref());
        let pool_dir = opts.data_dir.join("volumes");
        Ok(Agent {
            identity,
            data_dir: opts.data_dir,
            host: opts.host,
            compute: opts.compute,
            network: opts.network,
            clock: opts.clock,
            storage,
            pool_dir,
            scrub: storage::scrub::ScrubOptions::default(),
        })
    }

    /// Another storage backend than the default (`None`: the node holds no volumes).
    pub fn with_storage(mut self, backend: Option<Arc<dyn rampart_storage::StorageBackend>>) -> Self {
        self.storage = backend;
        self
    }

    /// The `local` pool in `dir` instead of `<data dir>/volumes` (for example a directory on a
    /// btrfs RAID1 filesystem over two devices, 14.1-2), scrubbed every `scrub_interval` when
    /// it is on btrfs (zero: never).
    pub fn with_local_pool(mut self, dir: PathBuf, scrub_interval: Duration) -> Self {
        self.storage = match rampart_storage::LocalBackend::open(rampart_storage::LocalConfig::new(dir.clone())) {
            Ok(b) => Some(Arc::new(b)),
            Err(e) => {
                tracing::warn!(error = %rampart_common::error::ErrorChain(&e), pool = %dir.display(), "this node holds no volumes");
                None
            }
        };
        self.pool_dir = dir;
        self.scrub.interval = scrub_interval;
        self
    }

    /// Time between scrubs of the `local` pool when it is on btrfs (zero: never).
    pub fn with_scrub_interval(mut self, interval: Duration) -> Self {
        self.scrub.interval = interval;
        self
    }

    pub fn node_id(&self) -> Uuid {
        self.identity.node.node_id
    }

    pub fn node_name(&self) -> &str {
        &self.identity.node.node_name
    }

    /// Runs until `shutdown` is cancelled or the controller disowns the node.
    pub fn spawn(self, shutdown: CancellationToken) -> Result<JoinHandle<Result<(), AgentError>>, AgentError> {
        let creds = Credentials::new(&self.identity, &self.data_dir)?;
        let poll_client = creds.client(POLL_CLIENT_TIMEOUT);
        let status_client = creds.client(STATUS_CLIENT_TIMEOUT);
        let ledger = Ledger::new(&self.data_dir);
        let node_id = self.node_id();
        let storage = match self.storage {
            Some(backend) => {
                let images = self.data_dir.join("images");
                rampart_common::fsutil::ensure_private_dir(&images).map_err(|source| AgentError::Io {
                    action: "create",
                    path: images.clone(),
                    source,
                })?;
                let ctl = Arc::new(storage::NodeController {
                    client: creds.client(compute::IMAGE_CLIENT_TIMEOUT),
                    image_cache: images,
                });
                Some(storage::StorageService::new(
                    backend,
                    ctl,
                    &self.data_dir.join("storage"),
                )?)
            }
            None => None,
        };
        let lease = Arc::new(fence::Lease::load(&self.data_dir));
        let compute = match self.compute {
            Some(c) => Some(
                ComputeRuntime::new(c, &self.data_dir, creds.client(compute::IMAGE_CLIENT_TIMEOUT))?
                    .netns_prefix(&self.network.netns_prefix)
                    .storage(storage.clone())
                    .lease(lease.clone()),
            ),
            None => None,
        };
        // `fetched`: the generation held (the poll cursor); `applied`: the one the host
        // converged on without error (what the status reports).
        let fetched = Arc::new(AtomicI64::new(0));
        let applied = Arc::new(AtomicI64::new(0));
        let report = Arc::new(Mutex::new(None::<NetworkStatus>));
        let (wake_tx, wake_rx) = watch::channel(());
        let (desired_tx, desired_rx) = watch::channel::<Option<NodeConfig>>(None);
        if let Some(doc) = ledger.load()? {
            // Converge on the last known state before talking to anyone.
            tracing::info!(generation = doc.generation, "resuming from the ledger");
            fetched.store(doc.generation, Ordering::SeqCst);
            desired_tx.send_replace(Some(doc));
        }
        let dir = self.data_dir.clone();
        let removed = CancellationToken::new();
        let net_cfg = rampart_net::desired::NetNodeConfig {
            netns_prefix: self.network.netns_prefix.clone(),
            run_dir: self
                .network
                .run_dir
                .clone()
                .unwrap_or_else(|| self.data_dir.join("net")),
            underlay: self.network.underlay.clone(),
        };
        let scrub_loop = storage
            .as_ref()
            .filter(|svc| svc.backend().kind() == "local")
            .map(|svc| {
                let scrubber = storage::scrub::Scrubber::new(
                    self.pool_dir.clone(),
                    &self.data_dir.join("storage"),
                    self.scrub.clone(),
                );
                svc.set_scrubber(scrubber.clone());
                tokio::spawn(scrubber.run(shutdown.clone()))
            });
        let storage_loop = storage.clone().map(|svc| {
            tokio::spawn(storage::run(
                svc,
                desired_rx.clone(),
                STORAGE_INTERVAL,
                shutdown.clone(),
            ))
        });
        let network = tokio::spawn(netloop::run(netloop::NetLoop {
            host: self.host.clone(),
            cfg: net_cfg,
            interval: self.network.reconcile_interval,
            desired: desired_rx.clone(),
            applied: applied.clone(),
            report: report.clone(),
            wake: wake_tx,
            shutdown: shutdown.clone(),
        }));
        let fencer = compute.as_ref().map(|rt| {
            tokio::spawn(fence::run(
                lease.clone(),
                rt.driver(),
                desired_rx.clone(),
                shutdown.clone(),
            ))
        });
        let poller = tokio::spawn(poll_loop(
            poll_client,
            ledger,
            fetched.clone(),
            desired_tx,
            shutdown.clone(),
            removed.clone(),
        ));
        let heartbeat = tokio::spawn(status_loop(StatusLoop {
            client: status_client,
            host: self.host,
            compute,
            storage,
            applied,
            fetched,
            report,
            lease,
            wake: wake_rx,
            desired: desired_rx,
            shutdown: shutdown.clone(),
            removed: removed.clone(),
        }));
        let renewal = tokio::spawn(renew_loop(
            creds.clone(),
            creds.client(STATUS_CLIENT_TIMEOUT),
            self.clock,
            shutdown.clone(),
        ));
        tracing::info!(node = %node_id, "agent running");
        Ok(tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = removed.cancelled() => {}
            }
            shutdown.cancel();
            let _ = poller.await;
            let _ = heartbeat.await;
            let _ = network.await;
            let _ = renewal.await;
            if let Some(s) = storage_loop {
                let _ = s.await;
            }
            if let Some(f) = fencer {
                let _ = f.await;
            }
            if let Some(s) = scrub_loop {
                let _ = s.await;
            }
            if removed.is_cancelled() {
                Err(AgentError::Removed(dir))
            } else {
                Ok(())
            }
        }))
    }
}

fn is_removed(e: &ClientError) -> bool {
    e.code() == Some("unknown_node_certificate")
}

/// Exponential backoff with jitter, so a fleet does not hammer a recovering controller in step.
fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(500)
        .saturating_mul(1u32 << attempt.min(6))
        .min(MAX_BACKOFF);
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    let jitter = u16::from_le_bytes(b) as u64 % (base.as_millis() as u64 / 2 + 1);
    base / 2 + Duration::from_millis(jitter)
}

/// Renews the node certificate once two thirds of its lifetime are gone (spec 13.3-2), with
/// backoff on failure; the current certificate stays in use meanwhile, until it expires.
async fn renew_loop(creds: Arc<Credentials>, client: NodeClient, clock: SharedClock, shutdown: CancellationToken) {
    let mut failures = 0u32;
    loop {
        let times = creds.times();
        let now = clock.now();
        let wait = if now < times.renewal_due() {
            // Compared again often: the clock may jump (tests, a suspended host).
            RENEWAL_CHECK
        } else {
            let result = match client.get() {
                Ok((_, c)) => creds.renew(&c).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(new) => {
                    failures = 0;
                    tracing::info!(
                        previous_serial = %times.serial,
                        serial = %new.serial,
                        not_after = %rampart_common::time::rfc3339(new.not_after),
                        "renewed the node certificate; new connections present it"
                    );
                    if clock.now() < new.renewal_due() {
                        continue;
                    }
                    // Due again at once: this node's clock is far from the controller's. Do
                    // not ask for a certificate in a loop.
                    tracing::warn!(
                        not_before = %rampart_common::time::rfc3339(new.not_before),
                        "the renewed certificate is already due for renewal; is this node's clock right?"
                    );
                    MAX_BACKOFF
                }
                Err(e) => {
                    let wait = backoff(failures);
                    failures = failures.saturating_add(1);
                    let expired = now >= times.not_after;
                    tracing::warn!(
                        error = %rampart_common::error::ErrorChain(&e),
                        serial = %times.serial,
                        not_after = %rampart_common::time::rfc3339(times.not_after),
                        expired,
                        attempt = failures,
                        retry_in_ms = wait.as_millis() as u64,
                        "cannot renew the node certificate; keeping the current one"
                    );
                    wait
                }
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn poll_loop(
    client: NodeClient,
    ledger: Ledger,
    fetched: Arc<AtomicI64>,
    desired: watch::Sender<Option<NodeConfig>>,
    shutdown: CancellationToken,
    removed: CancellationToken,
) {
    let mut failures = 0u32;
    loop {
        let after = fetched.load(Ordering::SeqCst);
        tracing::debug!(after, "polling for desired state");
        let (generation, http) = match client.get() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %rampart_common::error::ErrorChain(&e), "cannot build the controller client");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff(failures)) => {}
                }
                failures = failures.saturating_add(1);
                continue;
            }
        };
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = http.agent_config(after) => r,
        };
        match result {
            Ok(Some(doc)) => {
                failures = 0;
                match apply(&ledger, &doc) {
                    Ok(()) => {
                        tracing::info!(generation = doc.generation, "received desired state");
                        fetched.store(doc.generation, Ordering::SeqCst);
                        desired.send_replace(Some(doc));
                    }
                    Err(e) => {
                        tracing::error!(error = %rampart_common::error::ErrorChain(&e), generation = doc.generation, "cannot apply desired state");
                        tokio::time::sleep(backoff(3)).await;
                    }
                }
            }
            Ok(None) => failures = 0,
            // Sent with the certificate a renewal has just replaced: try again with the new one.
            Err(e) if is_removed(&e) && client.renewed_since(generation) => {}
            Err(e) if is_removed(&e) => {
                tracing::error!("the controller no longer knows this node");
                removed.cancel();
                return;
            }
            Err(e) => {
                if failures == 0 {
                    tracing::warn!(error = %rampart_common::error::ErrorChain(&e), "cannot fetch desired state; retrying");
                }
                let wait = backoff(failures);
                failures = failures.saturating_add(1);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// Keeps a desired-state document in the ledger; the host converges on it in the network
/// loop (and, later, the other drivers' loops), which report what they applied.
fn apply(ledger: &Ledger, doc: &NodeConfig) -> Result<(), AgentError> {
    ledger.store(doc)
}

struct StatusLoop {
    client: NodeClient,
    host: Arc<dyn HostDriver>,
    compute: Option<ComputeRuntime>,
    storage: Option<Arc<storage::StorageService>>,
    applied: Arc<AtomicI64>,
    fetched: Arc<AtomicI64>,
    report: Arc<Mutex<Option<NetworkStatus>>>,
    /// Renewed by every accepted report (self fencing).
    lease: Arc<fence::Lease>,
    /// Changed after each apply: report at once rather than at the next heartbeat.
    wake: watch::Receiver<()>,
    desired: watch::Receiver<Option<NodeConfig>>,
    shutdown: CancellationToken,
    removed: CancellationToken,
}

async fn status_loop(s: StatusLoop) {
    let StatusLoop {
        client,
        host,
        mut compute,
        storage,
        applied,
        fetched,
        report,
        lease,
        mut wake,
        mut desired,
        shutdown,
        removed,
    } = s;
    let mut failing = false;
    let mut wake_alive = true;
    loop {
        wake.mark_unchanged();
        let network = report.lock().expect("report lock").clone();
        let compute_report = match compute.as_mut() {
            Some(rt) => {
                // Converge on the document that was applied, then report what the node has.
                let doc = desired.borrow().clone();
                let (vms, net) = doc.map(|d| (d.compute, d.network)).unwrap_or_default();
                rt.reconcile(&vms, &net).await;
                Some(rt.report().await)
            }
            None => None,
        };
        let status = AgentStatus {
            applied_generation: applied.load(Ordering::SeqCst),
            agent_version: rampart_common::VERSION.to_string(),
            host: host.facts(),
            errors: network.as_ref().map(|n| n.errors.clone()).unwrap_or_default(),
            network,
            compute: compute_report,
            storage: storage.as_ref().map(|s| s.report()),
        };
        tracing::debug!(applied = status.applied_generation, "sending status");
        // The lease counts from the sending: the controller records the heartbeat no earlier.
        let (sent_at, sent_wall) = (std::time::Instant::now(), std::time::SystemTime::now());
        let confirmed_before = lease.may_boot(true);
        let (sent_with, result) = match client.get() {
            // A stopping agent does not wait for a heartbeat in flight (up to its timeout).
            Ok((generation, http)) => (
                Some(generation),
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = http.agent_status(&status) => r.map_err(AgentError::from),
                },
            ),
            Err(e) => (None, Err(e)),
        };
        if let (Some(rt), Some(sent)) = (compute.as_mut(), status.compute) {
            if result.is_ok() {
                rt.delivered(&sent);
            } else {
                rt.requeue(sent);
            }
        }
        match result {
            Ok(ack) => {
                if failing {
                    tracing::info!("controller reachable again");
                    failing = false;
                }
                let held = fetched.load(Ordering::SeqCst);
                lease.renewed(sent_at, sent_wall, ack.generation, held);
                if !confirmed_before && lease.may_boot(true) && compute.is_some() {
                    // Boots held for the controller's word may go now, not at the next beat.
                    continue;
                }
                if ack.generation < held {
                    // The controller's database went back in time (restored backup): take its
                    // word over the ledger's and fetch everything again.
                    tracing::warn!(
                        controller = ack.generation,
                        ledger = held,
                        "controller generation is behind the ledger; refetching"
                    );
                    fetched.store(0, Ordering::SeqCst);
                }
            }
            Err(AgentError::Client(e)) if is_removed(&e) && !sent_with.is_some_and(|g| client.renewed_since(g)) => {
                tracing::error!("the controller no longer knows this node");
                removed.cancel();
                return;
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %rampart_common::error::ErrorChain(&e), "heartbeat failed; retrying");
                    failing = true;
                }
            }
        }
        // The interval comes from the desired state, which may arrive or change while we
        // wait: recompute the deadline whenever it does.
        let sent = tokio::time::Instant::now();
        loop {
            let interval = desired
                .borrow_and_update()
                .as_ref()
                .map(|d| Duration::from_secs(d.heartbeat_interval_s.max(1)))
                .unwrap_or(DEFAULT_HEARTBEAT);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(sent + interval) => break,
                woken = wake.changed(), if wake_alive => match woken {
                    Ok(()) => break,
                    Err(_) => wake_alive = false,
                },
                changed = desired.changed() => if changed.is_ok() && compute.is_some() {
                    // A new document: apply its VMs now rather than at the next heartbeat.
                    break;
                } else if changed.is_err() {
                    // The poller is gone (shutting down): keep the last interval.
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep_until(sent + interval) => break,
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for attempt in 0..20 {
            let b = backoff(attempt);
            assert!(b <= MAX_BACKOFF, "{attempt}: {b:?}");
            assert!(b >= Duration::from_millis(250));
        }
        assert!(backoff(10) >= MAX_BACKOFF / 2);
    }
}
