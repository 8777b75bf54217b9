//! The compute section of the desired state, applied on the node: image cache, staging,
//! verification before every boot, power reconciliation both ways, and the report back.
//!
//! The order of one boot is fixed: fetch the image into the node cache (digest checked while it
//! streams), stage a copy into the VM's own directory, re-hash and verify that copy
//! ([`verify_and_start`]), and only then ask the hypervisor for a process. Any integrity failure
//! leaves the instance `failed` with `image_signature_invalid` and no process exists.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rampart_api::compute::{
    ComputeStatus, DesiredImage, DesiredInstance, Failure, ImageRole, InstanceEventReport, InstanceReport,
    MetricTotals, MetricsReport, NodeCompute, ObservedPower, PowerState as WantedPower, SignaturePolicy as DocPolicy,
};
use rampart_compute::configdrive::{self, GuestConfig, NicConfig};
use rampart_compute::confine::Limits;
use rampart_compute::driver::{
    DriverError, FakeHypervisor, Hypervisor, ImageCheck, ObservedVm, PowerState, QemuDriver, StartRequest,
    verify_and_start,
};
use rampart_compute::image::{self, Digest, ImageSignature, SignaturePolicy, StreamingHasher, TrustedKey};
use rampart_compute::monitor::{self, Sample};
use rampart_compute::qemu::{self, Accel, Boot, Disk, DiskFormat, Machine, Nic, VmSpec};
use rampart_compute::qmp::QmpClient;

use crate::attach;
use rampart_net::desired::{NetNodeConfig, NodeNetwork};
use uuid::Uuid;

const CONSOLE_TAIL_BYTES: u64 = 64 * 1024;
const STOP_GRACE: Duration = Duration::from_secs(10);
pub(crate) const IMAGE_CLIENT_TIMEOUT: Duration = Duration::from_secs(3600);
/// Two samples closer than this give no rate: a report sent right after an apply would
/// otherwise divide a few milliseconds' worth of counters into a noisy datapoint.
const MIN_SAMPLE_GAP_MS: i64 = 900;
/// A volume that could not be plugged is tried again after this long.
const ATTACH_RETRY: Duration = Duration::from_secs(30);

/// The hypervisor of a node: the real confined QEMU driver, or the fake of the simulated cluster
/// (same rules: specs must render, permits must cover the image files).
#[derive(Clone)]
pub enum VmDriver {
    Fake { hv: FakeHypervisor, dir: PathBuf },
    Qemu(Arc<QemuDriver>),
}

impl VmDriver {
    /// Creates the VM's own directory (for QEMU: 0700, owned by the VM's uid).
    fn prepare(&self, id: Uuid) -> Result<PathBuf, DriverError> {
        match self {
            VmDriver::Fake { dir, .. } => {
                let d = dir.join(id.to_string());
                std::fs::create_dir_all(&d).map_err(|e| DriverError::Io {
                    what: "creating the VM dir".into(),
                    source: e,
                })?;
                Ok(d)
            }
            VmDriver::Qemu(q) => q.prepare_dir(id).map(|(d, _)| d),
        }
    }

    /// Copies a cached image into the VM's directory; that copy is what is verified and booted.
    fn stage(&self, id: Uuid, src: &Path, name: &str) -> Result<PathBuf, DriverError> {
        match self {
            VmDriver::Fake { dir, .. } => {
                let to = dir.join(id.to_string()).join(name);
                std::fs::copy(src, &to).map_err(|e| DriverError::Io {
                    what: "staging an image".into(),
                    source: e,
                })?;
                Ok(to)
            }
            VmDriver::Qemu(q) => q.stage_image(id, src, name),
        }
    }

    fn console_tail(&self, id: Uuid) -> Option<String> {
        match self {
            VmDriver::Fake { .. } => None,
            VmDriver::Qemu(q) => q.console_tail(id, CONSOLE_TAIL_BYTES).ok(),
        }
    }

    /// The VM's counters now, `None` when it has no process.
    async fn sample(&self, id: Uuid, at_ms: i64, taps: &[String]) -> Option<Sample> {
        match self {
            VmDriver::Fake { hv, .. } => hv.sample(id, at_ms),
            VmDriver::Qemu(q) => q.sample(id, at_ms, taps).await,
        }
    }

    /// Fencing: kills the VM's QEMU at once; true when one was running.
    pub(crate) async fn kill_now(&self, id: Uuid) -> bool {
        match self {
            VmDriver::Fake { hv, .. } => {
                let up = hv
                    .observe()
                    .await
                    .is_ok_and(|vms| vms.iter().any(|o| o.id == id && is_up(o.state)));
                if up {
                    let _ = hv.destroy(id).await;
                }
                up
            }
            VmDriver::Qemu(q) => q.kill_now(id).await,
        }
    }

    fn forget(&self, id: Uuid) {
        if let VmDriver::Fake { dir, .. } = self {
            let _ = std::fs::remove_dir_all(dir.join(id.to_string()));
        }
    }
}

impl Hypervisor for VmDriver {
    async fn start(&self, req: StartRequest, permits: &[image::BootPermit]) -> Result<ObservedVm, DriverError> {
        match self {
            VmDriver::Fake { hv, .. } => hv.start(req, permits).await,
            VmDriver::Qemu(q) => q.start(req, permits).await,
        }
    }
    async fn stop(&self, id: Uuid, grace: Duration) -> Result<(), DriverError> {
        match self {
            VmDriver::Fake { hv, .. } => hv.stop(id, grace).await,
            VmDriver::Qemu(q) => q.stop(id, grace).await,
        }
    }
    async fn destroy(&self, id: Uuid) -> Result<(), DriverError> {
        match self {
            VmDriver::Fake { hv, .. } => hv.destroy(id).await,
            VmDriver::Qemu(q) => q.destroy(id).await,
        }
    }
    async fn observe(&self) -> Result<Vec<ObservedVm>, DriverError> {
        match self {
            VmDriver::Fake { hv, .. } => hv.observe().await,
            VmDriver::Qemu(q) => q.observe().await,
        }
    }
}

/// What a node needs to run VMs.
#[derive(Clone)]
pub struct ComputeOptions {
    pub driver: VmDriver,
    /// The accelerator chosen once at agent start.
    pub accel: Accel,
    /// Why that accelerator (reported to the controller).
    pub reason: String,
    /// Host TSC frequency for the microvm kernel command line (`tsc_early_khz`).
    pub tsc_khz: u64,
    /// Build a NoCloud config drive (needs `genisoimage`); the fake driver goes without.
    pub config_drive: bool,
}

#[derive(Debug, Clone)]
struct Vm {
    boot_seq: i64,
    power: ObservedPower,
    error: Option<Failure>,
    pid: Option<u32>,
    uid: Option<u32>,
    console: Option<String>,
    /// The VM's taps (in its VPC's namespace), whose counters are its network traffic.
    taps: Vec<String>,
    /// Volumes plugged into it (their files belong to its uid until unplugged).
    volumes: BTreeSet<Uuid>,
    /// Plugs that failed, with when: tried again after [`ATTACH_RETRY`], reported once.
    attach_failed: BTreeMap<Uuid, (String, std::time::Instant)>,
    /// QEMU was asked once what it holds (after an agent restart it may hold volumes).
    volumes_checked: bool,
}

/// The node's compute state between two heartbeats.
pub struct ComputeRuntime {
    opts: ComputeOptions,
    cache: PathBuf,
    client: crate::identity::NodeClient,
    vms: BTreeMap<Uuid, Vm>,
    events: BTreeMap<Uuid, Vec<InstanceEventReport>>,
    console_sent: BTreeMap<Uuid, String>,
    /// The last counters of each running VM; the next report's rates are taken against them.
    samples: BTreeMap<Uuid, Sample>,
    /// Where the network loop builds VPC namespaces (a VM's taps live in its VPC's).
    net: NetNodeConfig,
    /// The node's volumes, for attaching them to VMs.
    storage: Option<Arc<crate::storage::StorageService>>,
    /// The lease with the controller: whether a VM may boot now (self fencing).
    lease: Option<Arc<crate::fence::Lease>>,
}

fn now_ms() -> i64 {
    rampart_common::time::to_ms(time::OffsetDateTime::now_utc())
}

fn failure(code: &str, message: impl Into<String>) -> Failure {
    Failure {
        code: code.into(),
        message: message.into(),
    }
}

fn is_up(s: PowerState) -> bool {
    matches!(s, PowerState::Running | PowerState::Paused | PowerState::Panicked)
}

impl ComputeRuntime {
    pub fn new(
        opts: ComputeOptions,
        data_dir: &Path,
        client: crate::identity::NodeClient,
    ) -> Result<Self, crate::AgentError> {
        let cache = data_dir.join("images");
        std::fs::create_dir_all(&cache).map_err(|source| crate::AgentError::Io {
            action: "create",
            path: cache.clone(),
            source,
        })?;
        Ok(ComputeRuntime {
            opts,
            cache,
            client,
            vms: BTreeMap::new(),
            events: BTreeMap::new(),
            console_sent: BTreeMap::new(),
            samples: BTreeMap::new(),
            net: NetNodeConfig {
                netns_prefix: "rp-".into(),
                run_dir: PathBuf::new(),
                underlay: None,
            },
            storage: None,
            lease: None,
        })
    }

    /// The node's lease (self fencing, spec 14.1-3).
    pub fn lease(mut self, lease: Arc<crate::fence::Lease>) -> Self {
        self.lease = Some(lease);
        self
    }

    /// The driver, for the fence task.
    pub fn driver(&self) -> VmDriver {
        self.opts.driver.clone()
    }

    fn may_boot(&self, d: &DesiredInstance) -> bool {
        self.lease.as_ref().is_none_or(|l| l.may_boot(d.ha))
    }

    /// The node's storage service (volumes are attached from its pool).
    pub fn storage(mut self, storage: Option<Arc<crate::storage::StorageService>>) -> Self {
        self.storage = storage;
        self
    }

    /// The network loop's namespace prefix (the agent's `network.netns_prefix`).
    pub fn netns_prefix(mut self, prefix: &str) -> Self {
        self.net.netns_prefix = prefix.to_string();
        self
    }

    fn event(&mut self, id: Uuid, kind: &str, detail: serde_json::Value) {
        self.events.entry(id).or_default().push(InstanceEventReport {
            kind: kind.into(),
            at_ms: now_ms(),
            detail,
        });
    }

    /// One level-triggered pass: every desired VM converges on its power state; VMs that are
    /// no longer desired are destroyed.
    pub async fn reconcile(&mut self, desired: &NodeCompute, network: &NodeNetwork) {
        let observed = match self.opts.driver.observe().await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %rampart_common::error::ErrorChain(&e), "cannot observe the VMs");
                return;
            }
        };
        let obs: BTreeMap<Uuid, ObservedVm> = observed.into_iter().map(|o| (o.id, o)).collect();
        // Protected VMs the fence killed: reported, and not booted again here until the
        // controller asks for a new boot.
        let killed = self.lease.as_ref().map(|l| l.take_killed()).unwrap_or_default();
        for id in killed {
            if let Some(vm) = self.vms.get_mut(&id) {
                vm.power = ObservedPower::Crashed;
                vm.pid = None;
            }
            self.event(
                id,
                "fenced",
                serde_json::json!({"reason": "no answer from the controller within fence_after_s"}),
            );
        }
        for d in &desired.instances {
            let d = self.with_port_namespaces(d, network);
            self.converge(&d, obs.get(&d.id)).await;
        }
        let wanted: std::collections::BTreeSet<Uuid> = desired.instances.iter().map(|d| d.id).collect();
        let gone: Vec<Uuid> = obs
            .keys()
            .chain(self.vms.keys())
            .filter(|id| !wanted.contains(id))
            .copied()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        for id in gone {
            if obs.contains_key(&id)
                && let Err(e) = self.opts.driver.destroy(id).await
            {
                tracing::warn!(instance = %id, error = %rampart_common::error::ErrorChain(&e), "cannot destroy a VM");
                continue;
            }
            self.opts.driver.forget(id);
            if let Some(vm) = self.vms.remove(&id) {
                self.release_volumes(id, &vm.volumes);
            }
            self.console_sent.remove(&id);
            self.samples.remove(&id);
            tracing::info!(instance = %id, "VM destroyed");
        }
    }

    /// Names the VPC namespace of each port (the network section of the same document holds
    /// the port's VPC); a port missing there keeps `None` and the boot fails on it.
    fn with_port_namespaces(&self, d: &DesiredInstance, network: &NodeNetwork) -> DesiredInstance {
        let mut d = d.clone();
        for p in &mut d.ports {
            p.netns = network
                .vpcs
                .iter()
                .find(|v| v.local_ports.iter().any(|l| l.port == p.port_id))
                .map(|v| self.net.vpc_netns(&v.vpc.id));
        }
        d
    }

    async fn converge(&mut self, d: &DesiredInstance, o: Option<&ObservedVm>) {
        let up = o.is_some_and(|o| is_up(o.state));
        let may_boot = self.may_boot(d);
        let held = || tracing::info!(instance = %d.id, ha = d.ha, "boot held until the controller answers and confirms this node's document");
        let adopted = !self.vms.contains_key(&d.id);
        let vm = self.vms.entry(d.id).or_insert(Vm {
            // A VM found running after an agent restart is the current boot.
            boot_seq: if up { d.boot_seq } else { 0 },
            power: if up {
                ObservedPower::Running
            } else {
                ObservedPower::Stopped
            },
            error: None,
            pid: None,
            uid: None,
            console: None,
            taps: Vec::new(),
            volumes: BTreeSet::new(),
            attach_failed: BTreeMap::new(),
            volumes_checked: false,
        });
        vm.taps = d.ports.iter().map(|p| p.tap.clone()).collect();
        if let Some(o) = o {
            vm.pid = o.pid.or(vm.pid);
            vm.uid = o.uid.or(vm.uid);
        }
        if adopted && up {
            tracing::info!(instance = %d.id, "re-adopted a running VM");
        }
        match d.power {
            WantedPower::Running => {
                if up && d.boot_seq > vm.boot_seq {
                    if !may_boot {
                        held();
                        return;
                    }
                    // Reboot: a new boot, so the images are verified again.
                    if let Err(e) = self.opts.driver.stop(d.id, STOP_GRACE).await {
                        tracing::warn!(instance = %d.id, error = %rampart_common::error::ErrorChain(&e), "cannot stop a VM for reboot");
                        return;
                    }
                    self.event(d.id, "stopped", serde_json::json!({"reason": "reboot"}));
                    self.boot(d).await;
                    return;
                }
                if up {
                    let panicked = o.is_some_and(|o| o.state == PowerState::Panicked);
                    if panicked && vm.power != ObservedPower::Panicked {
                        vm.power = ObservedPower::Panicked;
                        self.event(d.id, "guest_panicked", serde_json::json!({}));
                    } else if !panicked {
                        vm.power = ObservedPower::Running;
                    }
                    self.sync_volumes(d).await;
                    return;
                }
                match vm.power {
                    ObservedPower::Running | ObservedPower::Paused | ObservedPower::Panicked
                        if vm.boot_seq >= d.boot_seq =>
                    {
                        // Gone without being asked: report it, do not restart by itself.
                        vm.power = ObservedPower::Crashed;
                        vm.pid = None;
                        self.event(d.id, "crashed", serde_json::json!({}));
                        tracing::warn!(instance = %d.id, "VM died by itself");
                    }
                    ObservedPower::Failed | ObservedPower::Crashed if vm.boot_seq >= d.boot_seq => {}
                    _ if !may_boot => held(),
                    _ => self.boot(d).await,
                }
            }
            WantedPower::Stopped => {
                if up {
                    match self.opts.driver.stop(d.id, STOP_GRACE).await {
                        Ok(()) => {
                            if let Some(vm) = self.vms.get_mut(&d.id) {
                                vm.power = ObservedPower::Stopped;
                                vm.pid = None;
                            }
                            self.event(d.id, "stopped", serde_json::json!({}));
                        }
                        Err(e) => {
                            tracing::warn!(instance = %d.id, error = %rampart_common::error::ErrorChain(&e), "cannot stop a VM")
                        }
                    }
                } else if !matches!(vm.power, ObservedPower::Failed | ObservedPower::Crashed) {
                    vm.power = ObservedPower::Stopped;
                    vm.pid = None;
                }
            }
        }
    }

    async fn boot(&mut self, d: &DesiredInstance) {
        let result = self.try_boot(d).await;
        let vm = self.vms.get_mut(&d.id).expect("entry made by converge");
        vm.boot_seq = d.boot_seq;
        match result {
            Ok(o) => {
                vm.power = ObservedPower::Running;
                vm.error = None;
                vm.pid = o.pid;
                vm.uid = o.uid;
                // A new QEMU holds no volume yet.
                vm.volumes.clear();
                vm.attach_failed.clear();
                vm.volumes_checked = true;
                tracing::info!(instance = %d.id, uid = ?o.uid, "VM started");
                self.event(d.id, "started", serde_json::json!({"uid": o.uid}));
                if self.starts_paused(d) {
                    // Plugged before the guest's first instruction, then let go.
                    self.sync_volumes(d).await;
                    self.resume(d.id).await;
                }
            }
            Err(f) => {
                vm.power = ObservedPower::Failed;
                vm.pid = None;
                tracing::warn!(instance = %d.id, code = %f.code, message = %f.message, "VM not started");
                let kind = if f.code == image::CODE_IMAGE_SIGNATURE_INVALID {
                    image::CODE_IMAGE_SIGNATURE_INVALID
                } else {
                    "start_failed"
                };
                let detail = serde_json::json!({"code": f.code, "message": f.message});
                vm.error = Some(f);
                self.event(d.id, kind, detail);
            }
        }
    }

    async fn try_boot(&mut self, d: &DesiredInstance) -> Result<ObservedVm, Failure> {
        let drv = |e: DriverError| failure(e.code(), e.to_string());
        let dir = self.opts.driver.prepare(d.id).map_err(drv)?;
        let policy = match d.signature_policy {
            DocPolicy::Require => SignaturePolicy::Require,
            DocPolicy::Warn => SignaturePolicy::Warn,
            DocPolicy::Off => SignaturePolicy::Off,
        };
        let trusted: Vec<TrustedKey> = d
            .trusted_keys
            .iter()
            .map(|k| TrustedKey {
                key_id: k.key_id.clone(),
                public_key: k.public_key.clone(),
            })
            .collect();
        let mut checks = Vec::new();
        let (mut kernel, mut initrd, mut disk) = (None, None, None);
        for img in &d.images {
            let cached = self.fetch(img).await?;
            let name = match img.role {
                ImageRole::Kernel => "vmlinux",
                ImageRole::Initrd => "initrd.img",
                ImageRole::Disk => "root.img",
            };
            let staged = self.opts.driver.stage(d.id, &cached, name).map_err(drv)?;
            checks.push(ImageCheck {
                path: staged.clone(),
                digest: parse_digest(&img.sha256)?,
                signature: img
                    .signature
                    .as_ref()
                    .map(|s| {
                        Ok::<_, Failure>(ImageSignature {
                            format: s.format.clone(),
                            hash_method: s.hash_method.clone(),
                            digest: parse_digest(&s.digest)?,
                            key_type: s.key_type.clone(),
                            key_id: s.key_id.clone(),
                            signature: s.signature.clone(),
                        })
                    })
                    .transpose()?,
            });
            match img.role {
                ImageRole::Kernel => kernel = Some(staged),
                ImageRole::Initrd => initrd = Some(staged),
                ImageRole::Disk => disk = Some((staged, disk_format(img)?)),
            }
        }
        if let Some(p) = d.ports.iter().find(|p| p.netns.is_none()) {
            return Err(failure(
                "port_unavailable",
                format!("port {} is not bound to this node", p.port_id),
            ));
        }
        let netns: std::collections::BTreeSet<&String> = d.ports.iter().filter_map(|p| p.netns.as_ref()).collect();
        if netns.len() > 1 {
            return Err(failure("port_unavailable", "the ports of one VM must be in one VPC"));
        }
        let nics: Vec<Nic> = d
            .ports
            .iter()
            .enumerate()
            .map(|(i, p)| Nic {
                id: format!("net{i}"),
                tap: p.tap.clone(),
                mac: p.mac.clone(),
            })
            .collect();
        let guest = GuestConfig {
            instance_id: d.id,
            hostname: d.guest.hostname.clone(),
            user: d.guest.user.clone(),
            ssh_authorized_keys: d.guest.ssh_authorized_keys.clone(),
            password_hash: d.guest.password_hash.clone(),
            nics: nics
                .iter()
                .enumerate()
                .map(|(i, n)| NicConfig {
                    name: format!("eth{i}"),
                    mac: n.mac.clone(),
                })
                .collect(),
        };
        let files = configdrive::render(&guest).map_err(|e| failure("invalid_guest_config", e.to_string()))?;
        let config_drive = if self.opts.config_drive {
            let iso = dir.join("cidata.iso");
            configdrive::build_iso(&files, &iso).map_err(|e| failure("config_drive_failed", e.to_string()))?;
            Some(iso)
        } else {
            None
        };
        let (machine, boot, disks) = match (kernel, disk) {
            (Some(kernel), _) => (
                // microvm has no PCI hot-plug: a VM with volumes boots on q35 with its
                // hot-plug ports (a slower boot, but volumes can come and go).
                if d.volumes.is_empty() {
                    Machine::Microvm
                } else {
                    Machine::Q35
                },
                Boot::Kernel {
                    kernel,
                    initrd,
                    cmdline: qemu::microvm_cmdline(self.opts.tsc_khz, &d.kernel_cmdline_extra),
                },
                vec![],
            ),
            (None, Some((root, format))) => (
                Machine::Q35,
                Boot::Disk,
                vec![Disk {
                    id: "root".into(),
                    path: root,
                    format,
                    read_only: false,
                }],
            ),
            (None, None) => return Err(failure("invalid_image", "the instance has no bootable image")),
        };
        let spec = VmSpec {
            id: d.id,
            name: d.name.clone(),
            vcpus: d.vcpus,
            memory_mib: d.memory_mib,
            machine,
            accel: self.opts.accel,
            boot,
            disks,
            nics,
            config_drive,
            serial_log: dir.join("console.log"),
            qmp_socket: dir.join("qmp.sock"),
        };
        let req = StartRequest {
            limits: Limits::for_flavor(d.vcpus, d.memory_mib, self.opts.accel == Accel::Tcg, vec![]),
            spec,
            netns: d.ports.iter().find_map(|p| p.netns.clone()),
            paused: self.starts_paused(d),
        };
        let (vm, permits) = verify_and_start(&self.opts.driver, req, &checks, &trusted, policy)
            .await
            .map_err(drv)?;
        for p in &permits {
            for w in p.warnings() {
                // Policy `warn`: the boot goes on, the reason is recorded.
                self.event(d.id, "image_signature_warning", serde_json::json!({"message": w}));
            }
        }
        Ok(vm)
    }

    /// A real VM with volumes starts paused (`-S`) so they are plugged before the guest runs.
    fn starts_paused(&self, d: &DesiredInstance) -> bool {
        !d.volumes.is_empty() && matches!(self.opts.driver, VmDriver::Qemu(_))
    }

    async fn resume(&self, id: Uuid) {
        if let VmDriver::Qemu(q) = &self.opts.driver {
            let sock = q.vm_dir(id).join("qmp.sock");
            let r = match QmpClient::connect(&sock, QMP_TIMEOUT).await {
                Ok(mut c) => c.cont().await,
                Err(e) => Err(e),
            };
            if let Err(e) = r {
                tracing::warn!(instance = %id, error = %rampart_common::error::ErrorChain(&e), "cannot resume a VM after plugging its volumes");
            }
        }
    }

    /// Volume files go back to root once no VM holds them (the VM's uid may be given to
    /// another VM later).
    fn release_volumes(&self, id: Uuid, volumes: &BTreeSet<Uuid>) {
        let Some(storage) = &self.storage else { return };
        for v in volumes {
            if let Err(e) = storage.backend().set_owner(*v, 0, 0) {
                tracing::warn!(instance = %id, volume = %v, error = %rampart_common::error::ErrorChain(&e), "cannot take a volume back from a VM");
            }
        }
    }

    fn attach_failed(&mut self, id: Uuid, volume: Uuid, code: &str, message: String) {
        let Some(vm) = self.vms.get_mut(&id) else { return };
        let again = vm.attach_failed.get(&volume).is_some_and(|(c, _)| c == code);
        vm.attach_failed
            .insert(volume, (code.to_string(), std::time::Instant::now()));
        if !again {
            tracing::warn!(instance = %id, volume = %volume, code, message = %message, "cannot attach a volume");
            self.event(
                id,
                "volume_attach_failed",
                serde_json::json!({"volume": volume, "code": code, "message": message}),
            );
        }
    }

    /// Plugs the desired volumes a running VM lacks and unplugs those it no longer has, as
    /// QEMU itself reports them (so an agent restart re-adopts what it plugged).
    async fn sync_volumes(&mut self, d: &DesiredInstance) {
        let Some(storage) = self.storage.clone() else { return };
        let Some(vm) = self.vms.get(&d.id) else { return };
        let Some(uid) = vm.uid else { return };
        if d.volumes.is_empty() && vm.volumes.is_empty() && vm.volumes_checked {
            return;
        }
        let now = std::time::Instant::now();
        let due = |v: &Uuid| {
            storage.is_ready(*v)
                && vm
                    .attach_failed
                    .get(v)
                    .is_none_or(|(_, at)| now.duration_since(*at) >= ATTACH_RETRY)
        };
        let VmDriver::Qemu(q) = &self.opts.driver else {
            // The simulated node: the pool's rules (ready, owner) without a QEMU.
            let plug: Vec<Uuid> = d
                .volumes
                .iter()
                .map(|a| a.volume_id)
                .filter(|v| !vm.volumes.contains(v) && due(v))
                .collect();
            let unplug: Vec<Uuid> = vm
                .volumes
                .iter()
                .filter(|v| !d.volumes.iter().any(|a| a.volume_id == **v))
                .copied()
                .collect();
            for v in plug {
                match storage.backend().set_owner(v, uid, uid) {
                    Ok(()) => {
                        self.vms.get_mut(&d.id).expect("listed").volumes.insert(v);
                        self.event(d.id, "volume_attached", serde_json::json!({"volume": v}));
                    }
                    Err(e) => self.attach_failed(d.id, v, "attach_failed", e.to_string()),
                }
            }
            for v in unplug {
                self.vms.get_mut(&d.id).expect("listed").volumes.remove(&v);
                self.release_volumes(d.id, &BTreeSet::from([v]));
                self.event(d.id, "volume_detached", serde_json::json!({"volume": v}));
            }
            return;
        };
        let sock = q.vm_dir(d.id).join("qmp.sock");
        let mut qmp = match QmpClient::connect(&sock, QMP_TIMEOUT).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(instance = %d.id, error = %rampart_common::error::ErrorChain(&e), "no QMP to sync volumes");
                return;
            }
        };
        let have = match attach::attached(&mut qmp).await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(instance = %d.id, error = %rampart_common::error::ErrorChain(&e), "cannot list a VM's volumes");
                return;
            }
        };
        // Re-adopted after a restart: QEMU's word is the truth.
        let known: BTreeSet<Uuid> = d
            .volumes
            .iter()
            .map(|a| a.volume_id)
            .filter(|v| have.volumes.contains(&attach::short_of(*v)))
            .collect();
        let (plug, unplug) = attach::diff(&d.volumes, &have);
        let plug: Vec<_> = plug.into_iter().filter(|a| due(&a.volume_id)).cloned().collect();
        let mut held = vm.volumes.clone();
        held.extend(known);
        for short in unplug {
            let throttled = have.throttled.contains(&short);
            match attach::detach(&mut qmp, &short, throttled).await {
                Ok(()) => {
                    let gone: BTreeSet<Uuid> = held
                        .iter()
                        .filter(|v| attach::short_of(**v) == short)
                        .copied()
                        .collect();
                    self.release_volumes(d.id, &gone);
                    for v in &gone {
                        held.remove(v);
                        self.event(d.id, "volume_detached", serde_json::json!({"volume": v}));
                    }
                    tracing::info!(instance = %d.id, node = %short, "volume unplugged");
                }
                Err(e) => {
                    tracing::warn!(instance = %d.id, node = %short, error = %rampart_common::error::ErrorChain(&e), "cannot unplug a volume yet")
                }
            }
        }
        let buses = if plug.is_empty() {
            Vec::new()
        } else {
            hotplug_ports(&mut qmp).await
        };
        for a in plug {
            if buses.is_empty() {
                self.attach_failed(
                    d.id,
                    a.volume_id,
                    "hotplug_unsupported",
                    "this VM booted without hot-plug ports (microvm); the volume is plugged at its next boot".into(),
                );
                continue;
            }
            let key = if a.encrypted {
                match storage.passphrase(a.volume_id).await {
                    Ok(k) => Some(k),
                    Err(f) => {
                        self.attach_failed(d.id, a.volume_id, "key_unavailable", f.message);
                        continue;
                    }
                }
            } else {
                None
            };
            let backend = storage.backend();
            match attach::attach(&mut qmp, backend.as_ref(), &a, uid, key.as_ref(), &buses).await {
                Ok(()) => {
                    held.insert(a.volume_id);
                    if let Some(vm) = self.vms.get_mut(&d.id) {
                        vm.attach_failed.remove(&a.volume_id);
                    }
                    tracing::info!(instance = %d.id, volume = %a.volume_id, "volume plugged");
                    self.event(d.id, "volume_attached", serde_json::json!({"volume": a.volume_id}));
                }
                Err(e) => self.attach_failed(d.id, a.volume_id, e.code(), e.to_string()),
            }
            drop(key);
        }
        if let Some(vm) = self.vms.get_mut(&d.id) {
            vm.volumes = held;
            vm.volumes_checked = true;
        }
    }

    /// The node's cached copy of an image, downloaded when missing (see [`fetch_image`]).
    async fn fetch(&self, img: &DesiredImage) -> Result<PathBuf, Failure> {
        fetch_image(&self.client, &self.cache, img.image_id, &img.sha256, &|_| {}).await
    }

    /// Samples a running VM's counters (spec 12.1-5) and returns the rates since the previous
    /// sample, with the totals since the VM started. The first sample of a boot only sets the
    /// baseline.
    async fn metrics(&mut self, id: Uuid) -> Option<MetricsReport> {
        let running = self.vms.get(&id).is_some_and(|v| {
            matches!(
                v.power,
                ObservedPower::Running | ObservedPower::Paused | ObservedPower::Panicked
            )
        });
        let now = now_ms();
        if !running {
            self.samples.remove(&id);
            return None;
        }
        if self.samples.get(&id).is_some_and(|p| now - p.at_ms < MIN_SAMPLE_GAP_MS) {
            return None;
        }
        let taps = self.vms.get(&id).map(|v| v.taps.clone()).unwrap_or_default();
        let Some(cur) = self.opts.driver.sample(id, now, &taps).await else {
            self.samples.remove(&id);
            return None;
        };
        let prev = self.samples.insert(id, cur.clone())?;
        let m = monitor::rates(&prev, &cur)?;
        Some(MetricsReport {
            at_ms: m.at_ms,
            cpu_percent: m.cpu_percent,
            memory_bytes: m.memory_bytes,
            disk_read_bps: m.disk_read_bps,
            disk_write_bps: m.disk_write_bps,
            disk_write_iops: m.disk_write_iops,
            net_rx_bps: m.net_rx_bps,
            net_tx_bps: m.net_tx_bps,
            totals: Some(MetricTotals {
                cpu_usage_ns: cur.cpu_usage_ns,
                disk_read_bytes: cur.disk_read_bytes,
                disk_write_bytes: cur.disk_write_bytes,
                net_rx_bytes: cur.net_rx_bytes,
                net_tx_bytes: cur.net_tx_bytes,
            }),
        })
    }

    /// The report for the next status; events move out with it (see [`Self::requeue`]).
    pub async fn report(&mut self) -> ComputeStatus {
        let mut instances = Vec::new();
        let ids: Vec<Uuid> = self.vms.keys().copied().collect();
        for id in ids {
            let metrics = self.metrics(id).await;
            let console = self.opts.driver.console_tail(id);
            let vm = self.vms.get_mut(&id).expect("listed");
            vm.console = console.clone();
            let console = console.filter(|c| self.console_sent.get(&id) != Some(c));
            instances.push(InstanceReport {
                id,
                power: vm.power,
                boot_seq: vm.boot_seq,
                pid: vm.pid,
                uid: vm.uid,
                error: vm.error.clone(),
                events: self.events.remove(&id).unwrap_or_default(),
                metrics,
                console,
            });
        }
        ComputeStatus {
            available: true,
            accel: Some(self.opts.accel.to_string()),
            reason: self.opts.reason.clone(),
            instances,
        }
    }

    /// The report reached the controller.
    pub fn delivered(&mut self, sent: &ComputeStatus) {
        for i in &sent.instances {
            if let Some(c) = &i.console {
                self.console_sent.insert(i.id, c.clone());
            }
        }
    }

    /// The report did not reach the controller: keep its events for the next one.
    pub fn requeue(&mut self, sent: ComputeStatus) {
        for i in sent.instances {
            if !i.events.is_empty() {
                let q = self.events.entry(i.id).or_default();
                let later = std::mem::take(q);
                *q = i.events;
                q.extend(later);
            }
        }
    }
}

/// What QEMU opens a disk image as: its format in the document (raw from a controller that
/// sent none). Only the formats with a QEMU driver boot.
fn disk_format(img: &DesiredImage) -> Result<DiskFormat, Failure> {
    use rampart_api::compute::DiskFormat as Doc;
    match img.format {
        None | Some(Doc::Raw) => Ok(DiskFormat::Raw),
        Some(Doc::Qcow2) => Ok(DiskFormat::Qcow2),
        Some(other) => Err(failure(
            "invalid_image",
            format!("a disk image cannot be of format {}", other.as_str()),
        )),
    }
}

/// The node's cached copy of an image (`<data dir>/images/<sha256>`), downloaded when missing.
/// The download is hashed while it streams and dropped unless it has the digest recorded at
/// upload. Shared by VM boots and volumes made from an image; `progress` gets the bytes so far.
pub(crate) async fn fetch_image(
    node: &crate::identity::NodeClient,
    cache: &Path,
    image_id: Uuid,
    sha256: &str,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<PathBuf, Failure> {
    let digest = parse_digest(sha256)?;
    let path = cache.join(digest.to_string());
    if path.exists() {
        return Ok(path);
    }
    let fail = |m: String| failure("image_unavailable", m);
    let (_, client) = node
        .get()
        .map_err(|e| fail(format!("downloading image {}: {e}", image_id)))?;
    let mut resp = client
        .send::<()>(http::Method::GET, &format!("/agent/v1/images/{}/data", image_id), None)
        .await
        .map_err(|e| fail(format!("downloading image {}: {e}", image_id)))?;
    let tmp = cache.join(format!(".{}.part", Uuid::new_v4()));
    let mut file = tokio::fs::File::create(&tmp)
        .await
        .map_err(|e| fail(format!("writing the image cache: {e}")))?;
    let mut hasher = StreamingHasher::new();
    let mut got_bytes = 0u64;
    let result: Result<(), Failure> = async {
        use tokio::io::AsyncWriteExt;
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| fail(format!("downloading image {}: {e}", image_id)))?
        {
            hasher.update(&chunk);
            got_bytes += chunk.len() as u64;
            progress(got_bytes);
            file.write_all(&chunk)
                .await
                .map_err(|e| fail(format!("writing the image cache: {e}")))?;
        }
        file.sync_all()
            .await
            .map_err(|e| fail(format!("writing the image cache: {e}")))?;
        Ok(())
    }
    .await;
    if let Err(f) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(f);
    }
    let (got, _) = hasher.finish();
    if got != digest {
        let _ = std::fs::remove_file(&tmp);
        return Err(failure(
            image::CODE_IMAGE_SIGNATURE_INVALID,
            format!(
                "image {} downloaded with sha256:{got}, expected sha256:{digest}",
                image_id
            ),
        ));
    }
    std::fs::rename(&tmp, &path).map_err(|e| fail(format!("writing the image cache: {e}")))?;
    Ok(path)
}

const QMP_TIMEOUT: Duration = Duration::from_secs(5);

/// The VM's hot-plug ports (`hp0` …, rendered for q35); none on microvm.
async fn hotplug_ports(qmp: &mut QmpClient) -> Vec<String> {
    let Ok(v) = qmp
        .execute("qom-list", Some(serde_json::json!({"path": "/machine/peripheral"})))
        .await
    else {
        return Vec::new();
    };
    let mut ports: Vec<String> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str())
        .filter(|n| n.strip_prefix("hp").is_some_and(|i| i.parse::<u8>().is_ok()))
        .map(str::to_string)
        .collect();
    ports.sort_by_key(|p| p[2..].parse::<u8>().unwrap_or(u8::MAX));
    ports
}

fn parse_digest(s: &str) -> Result<Digest, Failure> {
    s.parse::<Digest>()
        .map_err(|_| failure(image::CODE_IMAGE_SIGNATURE_INVALID, "malformed image digest"))
}

impl ComputeOptions {
    /// The simulated cluster's node: the fake hypervisor, VM directories under `dir`.
    pub fn fake(hv: FakeHypervisor, dir: PathBuf) -> ComputeOptions {
        ComputeOptions {
            driver: VmDriver::Fake { hv, dir },
            accel: Accel::Tcg,
            reason: "fake hypervisor (simulated node)".into(),
            tsc_khz: 1_000_000,
            config_drive: false,
        }
    }

    /// A real node: confined QEMU processes with VM directories under `state_dir`. `Err` says
    /// why this host cannot run VMs (the agent then runs without compute).
    pub fn real(state_dir: PathBuf, accel: &str) -> Result<ComputeOptions, String> {
        use rampart_compute::driver::QemuDriverConfig;
        use rampart_compute::qemu::{AccelSetting, VirtFacts, choose_accel};
        let setting = match accel {
            "auto" => AccelSetting::Auto,
            "kvm" => AccelSetting::Kvm,
            "tcg" => AccelSetting::Tcg,
            other => return Err(format!("compute.accel {other:?} is not auto, kvm or tcg")),
        };
        // Confinement (setuid to VM uids, cgroups, mount namespaces) needs root.
        if std::fs::read_to_string("/proc/self/status").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:").map(|v| v.split_whitespace().nth(1) == Some("0")))
        }) != Some(true)
        {
            return Err("VMs need the agent to run as root (per-VM uids, cgroups, namespaces)".into());
        }
        let cfg = QemuDriverConfig::new(state_dir).map_err(|e| e.to_string())?;
        if !cfg.qemu_binary.exists() {
            return Err(format!(
                "{} is missing (install qemu-system-x86)",
                cfg.qemu_binary.display()
            ));
        }
        let facts = VirtFacts::probe();
        // The probe boot needs a signed guest kernel that a fresh node does not have yet; without
        // one, `auto` keeps to TCG even where KVM may work (set `kvm` explicitly there).
        let mut decision = choose_accel(setting, &facts, || false);
        if setting == AccelSetting::Auto && facts.hardware_virtualization() {
            decision.reason =
                "hardware virtualization present but no probe kernel: TCG (set compute.accel = \"kvm\")".into();
        }
        Ok(ComputeOptions {
            driver: VmDriver::Qemu(Arc::new(QemuDriver::new(cfg))),
            accel: decision.accel,
            reason: decision.reason,
            tsc_khz: qemu::host_tsc_khz().unwrap_or(2_000_000),
            config_drive: true,
        })
    }
}
