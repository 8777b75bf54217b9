//! The hypervisor behind a trait: [`QemuDriver`] (real: confined QEMU processes) and
//! [`FakeHypervisor`] (in memory, for the agent's fast tests, like Nova's fake driver: it also
//! documents what a real driver must do). Starting a VM takes [`BootPermit`]s, so no code path
//! can start a VM whose image was not verified just before ([`verify_and_start`]).
//!
//! Power state is reconciled both ways by the pure [`plan_power`]: desired running but absent →
//! start (or `crashed` if it died by itself), present but not desired → stop or destroy. The
//! real driver finds its VMs again after an agent restart from the VM cgroups (a QEMU's pid is
//! in its cgroup whatever happened to the agent).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use crate::confine::{self, CgroupLayout, ConfineError, JailSpec, Limits, UidRange, UidRegistry, VmCgroup};
use crate::image::{self, BootPermit, Digest, ImageError, ImageSignature, SignaturePolicy, TrustedKey};
use crate::monitor::{self, Sample};
use crate::qemu::{self, Accel, Boot, RenderError, VmSpec};
use crate::qmp::{QmpClient, QmpError};

/// How long a start waits for the network driver to create the VM's taps.
pub const TAP_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("image {0} was not verified before boot")]
    Unverified(PathBuf),
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error(transparent)]
    Confine(#[from] ConfineError),
    #[error(transparent)]
    Qmp(#[from] QmpError),
    #[error("VM {0} is already running")]
    AlreadyRunning(Uuid),
    #[error("VM {0} not found")]
    NotFound(Uuid),
    #[error("QEMU exited during start ({status}): {log}")]
    StartFailed { status: String, log: String },
    /// The VM's tap is missing or cannot be made its own: no QEMU was started.
    #[error(transparent)]
    Tap(#[from] crate::tap::TapError),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl DriverError {
    /// The code an instance's `failed` status carries.
    pub fn code(&self) -> &'static str {
        match self {
            DriverError::Image(_) | DriverError::Unverified(_) => image::CODE_IMAGE_SIGNATURE_INVALID,
            DriverError::Render(_) => "invalid_vm_spec",
            DriverError::AlreadyRunning(_) => "conflict",
            DriverError::NotFound(_) => "not_found",
            DriverError::Tap(_) => "port_not_ready",
            _ => "vm_start_failed",
        }
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DriverError {
    let what = what.into();
    move |source| DriverError::Io { what, source }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PowerState {
    Running,
    Paused,
    /// The guest panicked (pvpanic) and QEMU is still there.
    Panicked,
    /// No QEMU process.
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedVm {
    pub id: Uuid,
    pub state: PowerState,
    pub pid: Option<u32>,
    pub uid: Option<u32>,
}

/// Everything the driver needs to start one VM.
#[derive(Debug, Clone)]
pub struct StartRequest {
    pub spec: VmSpec,
    pub limits: Limits,
    /// Network namespace holding the VM's taps (created by the network driver).
    pub netns: Option<String>,
    /// Start with the guest stopped (`-S`, status `prelaunch`): the agent plugs the VM's
    /// volumes over QMP first, then sends `cont`.
    pub paused: bool,
}

impl StartRequest {
    /// The files that come from the image and therefore need a permit.
    pub fn image_paths(&self) -> Vec<PathBuf> {
        match &self.spec.boot {
            Boot::Kernel { kernel, initrd, .. } => std::iter::once(kernel.clone()).chain(initrd.clone()).collect(),
            Boot::Disk => self.spec.disks.first().map(|d| d.path.clone()).into_iter().collect(),
        }
    }

    fn check_permits(&self, permits: &[BootPermit]) -> Result<(), DriverError> {
        for p in self.image_paths() {
            if !permits.iter().any(|permit| permit.path() == p) {
                return Err(DriverError::Unverified(p));
            }
        }
        Ok(())
    }
}

pub trait Hypervisor: Send + Sync + 'static {
    /// Starts the VM. `permits` must cover [`StartRequest::image_paths`].
    fn start(
        &self,
        req: StartRequest,
        permits: &[BootPermit],
    ) -> impl Future<Output = Result<ObservedVm, DriverError>> + Send;
    /// Asks the guest to power off, then ends QEMU after `grace`. The VM's files stay.
    fn stop(&self, id: Uuid, grace: Duration) -> impl Future<Output = Result<(), DriverError>> + Send;
    /// Stops and removes everything the VM had on the host.
    fn destroy(&self, id: Uuid) -> impl Future<Output = Result<(), DriverError>> + Send;
    /// Every VM the driver knows on this host, with its power state.
    fn observe(&self) -> impl Future<Output = Result<Vec<ObservedVm>, DriverError>> + Send;
}

/// One image file to check before a boot, as the desired-state document carries it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageCheck {
    pub path: PathBuf,
    pub digest: Digest,
    pub signature: Option<ImageSignature>,
}

/// The agent's VmStart step: verify every image file (re-hashing the node's copy), then start.
/// On any verification failure the hypervisor is never called: no QEMU process exists.
pub async fn verify_and_start<H: Hypervisor>(
    h: &H,
    req: StartRequest,
    images: &[ImageCheck],
    trusted: &[TrustedKey],
    policy: SignaturePolicy,
) -> Result<(ObservedVm, Vec<BootPermit>), DriverError> {
    let mut permits = Vec::new();
    for i in images {
        let permit =
            image::verify_before_boot_async(i.path.clone(), i.digest, i.signature.clone(), trusted.to_vec(), policy)
                .await?;
        permits.push(permit);
    }
    let vm = h.start(req, &permits).await?;
    Ok((vm, permits))
}

// ---------------------------------------------------------------------------------------------
// Power-state reconciliation

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DesiredPower {
    Running,
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PowerAction {
    Start(Uuid),
    Stop(Uuid),
    Destroy(Uuid),
    /// Desired running, was running, is gone without being asked: report `crashed` with an
    /// event and do not restart by itself (the controller decides).
    ReportCrashed(Uuid),
    ReportPanicked(Uuid),
}

/// Pure power planner. `was_running` is the agent's ledger of VMs it last saw running (kept on
/// disk, so it survives agent restarts).
pub fn plan_power(
    desired: &BTreeMap<Uuid, DesiredPower>,
    observed: &[ObservedVm],
    was_running: &BTreeSet<Uuid>,
) -> Vec<PowerAction> {
    let obs: BTreeMap<Uuid, &ObservedVm> = observed.iter().map(|o| (o.id, o)).collect();
    let mut out = Vec::new();
    for (id, want) in desired {
        let state = obs.get(id).map_or(PowerState::Stopped, |o| o.state);
        match (want, state) {
            (DesiredPower::Running, PowerState::Stopped) if was_running.contains(id) => {
                out.push(PowerAction::ReportCrashed(*id))
            }
            (DesiredPower::Running, PowerState::Stopped) => out.push(PowerAction::Start(*id)),
            (DesiredPower::Running, PowerState::Panicked) => out.push(PowerAction::ReportPanicked(*id)),
            (DesiredPower::Stopped, PowerState::Running | PowerState::Paused | PowerState::Panicked) => {
                out.push(PowerAction::Stop(*id))
            }
            _ => {}
        }
    }
    for o in observed {
        if !desired.contains_key(&o.id) {
            out.push(PowerAction::Destroy(o.id));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Fake

#[derive(Debug, Clone)]
pub struct FakeVm {
    pub spec: VmSpec,
    pub state: PowerState,
    pub uid: u32,
    /// What the guest is doing, set by tests ([`FakeHypervisor::set_load`]).
    pub load: FakeLoad,
    /// The counters as of the last sample; reset by each start, like a new QEMU's.
    counters: Sample,
}

/// Injected guest activity: the fake's counters grow at these rates between two samples.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FakeLoad {
    /// 100 = one host CPU.
    pub cpu_percent: f64,
    pub memory_bytes: u64,
    pub disk_write_bps: u64,
}

/// An in-memory hypervisor with the real driver's rules: specs must render, permits must cover
/// the image files, one start per running VM, uids from the range. Tests inject crashes and
/// panics and count starts.
#[derive(Debug, Clone, Default)]
pub struct FakeHypervisor {
    inner: Arc<Mutex<FakeInner>>,
}

#[derive(Debug, Default)]
struct FakeInner {
    vms: BTreeMap<Uuid, FakeVm>,
    starts: usize,
    fail_next_start: Option<String>,
}

impl FakeHypervisor {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn starts(&self) -> usize {
        self.inner.lock().expect("fake").starts
    }
    pub fn vm(&self, id: Uuid) -> Option<FakeVm> {
        self.inner.lock().expect("fake").vms.get(&id).cloned()
    }
    /// The QEMU process dies by itself.
    pub fn crash(&self, id: Uuid) {
        if let Some(v) = self.inner.lock().expect("fake").vms.get_mut(&id) {
            v.state = PowerState::Stopped;
        }
    }
    pub fn panic_guest(&self, id: Uuid) {
        if let Some(v) = self.inner.lock().expect("fake").vms.get_mut(&id) {
            v.state = PowerState::Panicked;
        }
    }
    pub fn fail_next_start(&self, why: &str) {
        self.inner.lock().expect("fake").fail_next_start = Some(why.into());
    }
    /// Sets what a VM's guest does from now on (CPU, memory, disk writes).
    pub fn set_load(&self, id: Uuid, load: FakeLoad) {
        if let Some(v) = self.inner.lock().expect("fake").vms.get_mut(&id) {
            v.load = load;
        }
    }

    /// The VM's counters at `at_ms`, grown at its load's rates since the previous sample, as
    /// the real driver's cgroup and blockstats counters would; `None` when it is not running.
    pub fn sample(&self, id: Uuid, at_ms: i64) -> Option<Sample> {
        let mut g = self.inner.lock().expect("fake");
        let v = g.vms.get_mut(&id)?;
        if v.state == PowerState::Stopped {
            return None;
        }
        let c = &mut v.counters;
        if c.at_ms > 0 && at_ms > c.at_ms {
            let dt_ms = (at_ms - c.at_ms) as f64;
            c.cpu_usage_ns += (v.load.cpu_percent / 100.0 * dt_ms * 1e6) as u64;
            let written = (v.load.disk_write_bps as f64 * dt_ms / 1000.0) as u64;
            c.disk_write_bytes += written;
            c.disk_write_ops += written.div_ceil(4096);
        }
        c.at_ms = c.at_ms.max(at_ms);
        c.memory_bytes = v.load.memory_bytes;
        Some(c.clone())
    }
}

impl Hypervisor for FakeHypervisor {
    async fn start(&self, req: StartRequest, permits: &[BootPermit]) -> Result<ObservedVm, DriverError> {
        req.check_permits(permits)?;
        qemu::render_argv(&req.spec)?;
        let mut g = self.inner.lock().expect("fake");
        if let Some(why) = g.fail_next_start.take() {
            return Err(DriverError::StartFailed {
                status: "exit status: 1".into(),
                log: why,
            });
        }
        if g.vms.get(&req.spec.id).is_some_and(|v| v.state != PowerState::Stopped) {
            return Err(DriverError::AlreadyRunning(req.spec.id));
        }
        let used: BTreeSet<u32> = g
            .vms
            .iter()
            .filter(|(k, _)| **k != req.spec.id)
            .map(|(_, v)| v.uid)
            .collect();
        let uid = match g.vms.get(&req.spec.id) {
            Some(v) => v.uid,
            None => UidRange::default().allocate(&used)?,
        };
        g.starts += 1;
        let id = req.spec.id;
        let load = g.vms.get(&id).map(|v| v.load).unwrap_or(FakeLoad {
            // An idle guest holds part of its memory.
            memory_bytes: (req.spec.memory_mib << 20) / 4,
            ..FakeLoad::default()
        });
        g.vms.insert(
            id,
            FakeVm {
                spec: req.spec,
                state: PowerState::Running,
                uid,
                load,
                counters: Sample::default(),
            },
        );
        Ok(ObservedVm {
            id,
            state: PowerState::Running,
            pid: Some(100_000 + g.starts as u32),
            uid: Some(uid),
        })
    }

    async fn stop(&self, id: Uuid, _grace: Duration) -> Result<(), DriverError> {
        let mut g = self.inner.lock().expect("fake");
        let v = g.vms.get_mut(&id).ok_or(DriverError::NotFound(id))?;
        v.state = PowerState::Stopped;
        Ok(())
    }

    async fn destroy(&self, id: Uuid) -> Result<(), DriverError> {
        self.inner.lock().expect("fake").vms.remove(&id);
        Ok(())
    }

    async fn observe(&self) -> Result<Vec<ObservedVm>, DriverError> {
        let g = self.inner.lock().expect("fake");
        Ok(g.vms
            .iter()
            .map(|(id, v)| ObservedVm {
                id: *id,
                state: v.state,
                pid: None,
                uid: Some(v.uid),
            })
            .collect())
    }
}

// ---------------------------------------------------------------------------------------------
// Real

#[derive(Debug, Clone)]
pub struct QemuDriverConfig {
    /// One 0700 directory per VM below it (`<state_dir>/<uuid>/`), owned by the VM's uid.
    pub state_dir: PathBuf,
    pub qemu_binary: PathBuf,
    pub uid_range: UidRange,
    /// Host-wide: every agent of the host allocates VM uids through it.
    pub uid_registry: UidRegistry,
    pub cgroups: CgroupLayout,
    /// How long QEMU may take to open its QMP socket.
    pub start_timeout: Duration,
}

impl QemuDriverConfig {
    pub fn new(state_dir: PathBuf) -> Result<Self, DriverError> {
        Ok(QemuDriverConfig {
            state_dir,
            qemu_binary: "/usr/bin/qemu-system-x86_64".into(),
            uid_range: UidRange::default(),
            uid_registry: UidRegistry::new(UidRegistry::DEFAULT_DIR),
            cgroups: CgroupLayout::detect()?,
            start_timeout: Duration::from_secs(10),
        })
    }
}

/// Confined QEMU processes.
pub struct QemuDriver {
    cfg: QemuDriverConfig,
    /// Children started by this agent process, kept to reap them.
    children: Mutex<BTreeMap<Uuid, tokio::task::JoinHandle<()>>>,
}

impl QemuDriver {
    pub fn new(cfg: QemuDriverConfig) -> Self {
        QemuDriver {
            cfg,
            children: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn config(&self) -> &QemuDriverConfig {
        &self.cfg
    }

    /// The directory of a VM; the agent puts its disks and config drive there before start.
    pub fn vm_dir(&self, id: Uuid) -> PathBuf {
        self.cfg.state_dir.join(id.to_string())
    }

    pub fn cgroup(&self, id: Uuid) -> VmCgroup {
        VmCgroup::locate(&self.cfg.cgroups, &confine::cgroup_name(&id))
    }

    /// Creates the VM directory (0700) and allocates the VM's uid: the directory owner is the
    /// allocation, so it survives agent restarts without a table of its own.
    pub fn prepare_dir(&self, id: Uuid) -> Result<(PathBuf, u32), DriverError> {
        std::fs::create_dir_all(&self.cfg.state_dir).map_err(io("creating the VM state dir"))?;
        // Search without listing: each VM uid reaches its own 0700 directory and nothing else.
        std::fs::set_permissions(&self.cfg.state_dir, std::os::unix::fs::PermissionsExt::from_mode(0o711))
            .map_err(io("securing the VM state dir"))?;
        let dir = self.vm_dir(id);
        if let Ok(m) = std::fs::metadata(&dir)
            && self.cfg.uid_range.contains(m.uid())
        {
            // After a restart or a reboot: the uid is this VM's again, unless another VM of the
            // host took it meanwhile (then this one must not run under it).
            self.cfg.uid_registry.claim(m.uid(), &dir)?;
            return Ok((dir, m.uid()));
        }
        // The directory first: the registry takes a claim without its directory for stale.
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io("creating the VM dir")(e)),
        }
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(io("securing the VM dir"))?;
        let uid = self.cfg.uid_registry.allocate(&self.cfg.uid_range, &dir)?;
        confine::own_private(&dir, uid, uid)?;
        Ok((dir, uid))
    }

    /// Hands every file QEMU opens to the VM's uid, mode 0600; files outside the VM directory
    /// are refused (they might be another VM's).
    fn own_files(&self, dir: &Path, spec: &VmSpec, uid: u32) -> Result<(), DriverError> {
        let mut files: Vec<&Path> = spec.disks.iter().map(|d| d.path.as_path()).collect();
        if let Some(c) = &spec.config_drive {
            files.push(c);
        }
        if let Boot::Kernel { kernel, initrd, .. } = &spec.boot {
            files.push(kernel);
            if let Some(i) = initrd {
                files.push(i);
            }
        }
        for f in files {
            if f.parent() != Some(dir) {
                return Err(ConfineError::Invalid("VM files must live in the VM's own directory").into());
            }
            confine::own_private(f, uid, uid)?;
        }
        let log = &spec.serial_log;
        if log.parent() != Some(dir) {
            return Err(ConfineError::Invalid("VM files must live in the VM's own directory").into());
        }
        if !log.exists() {
            std::fs::File::create(log).map_err(io("creating the console log"))?;
        }
        confine::own_private(log, uid, uid)?;
        Ok(())
    }

    /// Copies an image file into the VM directory, where only this VM's uid will read it; the
    /// agent verifies the staged copy (the bytes QEMU will read) right after, before start.
    pub fn stage_image(&self, id: Uuid, src: &Path, name: &str) -> Result<PathBuf, DriverError> {
        if name.contains('/') || name.starts_with('.') {
            return Err(ConfineError::Invalid("staged image name").into());
        }
        let dst = self.vm_dir(id).join(name);
        let tmp = self.vm_dir(id).join(format!(".{name}.staging"));
        std::fs::copy(src, &tmp).map_err(io("staging an image"))?;
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(io("staging an image"))?;
        std::fs::rename(&tmp, &dst).map_err(io("staging an image"))?;
        Ok(dst)
    }

    async fn wait_gone(&self, id: Uuid, within: Duration) -> bool {
        let cg = self.cgroup(id);
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if cg.pids().is_empty() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Fencing (spec 14.1-3): SIGKILL every process of the VM at once, with no shutdown
    /// request first, and wait until they are gone; true when something was running. The VM's
    /// directory stays (the controller decides whether it boots here again).
    pub async fn kill_now(&self, id: Uuid) -> bool {
        if self.cgroup(id).pids().is_empty() {
            return false;
        }
        self.kill_all(id);
        self.wait_gone(id, Duration::from_secs(5)).await;
        true
    }

    fn kill_all(&self, id: Uuid) {
        for pid in self.cgroup(id).pids() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }

    /// The last `max_bytes` of the VM's serial console (`GET …/instances/{id}/console`).
    pub fn console_tail(&self, id: Uuid, max_bytes: u64) -> Result<String, DriverError> {
        use std::io::{Read, Seek, SeekFrom};
        let path = self.vm_dir(id).join("console.log");
        let mut f = std::fs::File::open(&path).map_err(io("opening the console log"))?;
        let len = f.metadata().map_err(io("reading the console log"))?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(max_bytes)))
            .map_err(io("reading the console log"))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).map_err(io("reading the console log"))?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// The VM's counters now (spec 12.1-5): CPU and memory from its cgroup, disk I/O from QMP
    /// `query-blockstats`, network from its `taps` as QEMU's own network namespace shows them.
    /// `None` when no QEMU runs; without QMP the disk counters are 0 (the rates then read as 0,
    /// never negative: see [`monitor::rates`]).
    pub async fn sample(&self, id: Uuid, at_ms: i64, taps: &[String]) -> Option<Sample> {
        let cg = self.cgroup(id);
        let pid = *cg.pids().first()?;
        let cpu_mem = monitor::read_cgroup(&cg);
        let net_dev = if taps.is_empty() {
            String::new()
        } else {
            std::fs::read_to_string(format!("/proc/{pid}/net/dev")).unwrap_or_default()
        };
        let taps: Vec<_> = taps
            .iter()
            .filter_map(|t| monitor::parse_net_dev(&net_dev, t))
            .collect();
        let blocks = match QmpClient::connect(&self.vm_dir(id).join("qmp.sock"), Duration::from_secs(2)).await {
            Ok(mut c) => c.query_blockstats().await.unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        Some(monitor::assemble(at_ms, cpu_mem, &blocks, &taps))
    }

    /// Waits until `marker` appears in the VM's console log (tests and the benchmark).
    pub async fn wait_console(&self, log: &Path, marker: &str, within: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Ok(s) = tokio::fs::read(log).await {
                // Complete lines only: the guest may be in the middle of writing the marker's.
                let complete = s.iter().rposition(|b| *b == b'\n').map_or(&s[..0], |i| &s[..i]);
                let s = String::from_utf8_lossy(complete);
                if let Some(line) = s.lines().find(|l| l.contains(marker)) {
                    return Some(line.to_string());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Hypervisor for QemuDriver {
    async fn start(&self, req: StartRequest, permits: &[BootPermit]) -> Result<ObservedVm, DriverError> {
        req.check_permits(permits)?;
        let id = req.spec.id;
        let mut argv = qemu::render_argv(&req.spec)?;
        if req.paused {
            argv.push("-S".into());
        }
        let cg = self.cgroup(id);
        if !cg.pids().is_empty() {
            return Err(DriverError::AlreadyRunning(id));
        }
        let (dir, uid) = self.prepare_dir(id)?;
        if let Some(ns) = &req.netns {
            // The VM starts only once each of its taps exists and is its own.
            for n in &req.spec.nics {
                crate::tap::claim(ns, &n.tap, uid, TAP_WAIT).await?;
            }
        }
        self.own_files(&dir, &req.spec, uid)?;
        let _ = std::fs::remove_file(&req.spec.qmp_socket);
        let devdir = dir.join("dev");
        std::fs::create_dir_all(&devdir).map_err(io("creating the VM dev dir"))?;
        confine::own_private(&devdir, uid, uid)?;
        let tun = if req.spec.nics.is_empty() {
            None
        } else {
            let p = devdir.join("tun");
            confine::make_device_node(&p, 10, 200, uid, uid)?;
            Some(p)
        };
        let kvm = if req.spec.accel == Accel::Kvm {
            let p = devdir.join("kvm");
            confine::make_device_node(&p, 10, 232, uid, uid)?;
            Some(p)
        } else {
            None
        };
        cg.create(&req.limits)?;
        let (program, args) = confine::render_jail_command(&JailSpec {
            uid,
            gid: uid,
            tun_node: tun,
            kvm_node: kvm,
            netns: req.netns.clone(),
            private_dir: Some((self.cfg.state_dir.clone(), id.to_string())),
            program: self.cfg.qemu_binary.clone(),
            args: argv,
        })?;
        // QEMU's own stderr (root-owned, outside its reach once it runs).
        let qlog_path = dir.join("qemu.log");
        let qlog = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&qlog_path)
            .map_err(io("opening qemu.log"))?;
        let qlog2 = qlog.try_clone().map_err(io("opening qemu.log"))?;
        let mut child = tokio::process::Command::new(&program)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(qlog)
            .stderr(qlog2)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            // Its own process group: signals to the agent's group do not reach VMs, and VMs
            // outlive an agent restart.
            .process_group(0)
            .kill_on_drop(false)
            .spawn()
            .map_err(io("spawning the VM jail"))?;
        let pid = child.id().unwrap_or(0);
        let gate = async {
            cg.add_pid(pid)?;
            let mut stdin = child.stdin.take().expect("piped stdin");
            stdin.write_all(b"go\n").await.map_err(io("releasing the VM jail"))?;
            Ok::<(), DriverError>(())
        };
        if let Err(e) = gate.await {
            let _ = child.start_kill();
            let _ = child.wait().await;
            let _ = cg.remove();
            return Err(e);
        }
        let (exit_tx, mut exit_rx) = tokio::sync::oneshot::channel();
        let reaper = tokio::spawn(async move {
            let status = child.wait().await;
            let _ = exit_tx.send(status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()));
        });
        self.children.lock().expect("children").insert(id, reaper);
        // Running once QMP answers "running"; an early exit is a failed start with QEMU's words.
        let qmp = tokio::select! {
            r = QmpClient::connect_retry(&req.spec.qmp_socket, self.cfg.start_timeout) => r,
            status = &mut exit_rx => {
                let log = std::fs::read_to_string(&qlog_path).unwrap_or_default();
                let tail: String = log.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join(" | ");
                let _ = cg.remove();
                return Err(DriverError::StartFailed { status: status.unwrap_or_default(), log: tail });
            }
        };
        let status = match qmp {
            Ok(mut c) => c.query_status().await,
            Err(e) => Err(e),
        };
        match status {
            Ok(s) if s.running || (req.paused && s.status == "prelaunch") => {
                tracing::info!(vm = %id, pid, uid, "VM started");
                Ok(ObservedVm {
                    id,
                    state: PowerState::Running,
                    pid: Some(pid),
                    uid: Some(uid),
                })
            }
            other => {
                self.kill_all(id);
                self.wait_gone(id, Duration::from_secs(5)).await;
                let _ = cg.remove();
                Err(match other {
                    Err(e) => e.into(),
                    Ok(s) => DriverError::StartFailed {
                        status: s.status,
                        log: String::new(),
                    },
                })
            }
        }
    }

    async fn stop(&self, id: Uuid, grace: Duration) -> Result<(), DriverError> {
        let cg = self.cgroup(id);
        if !cg.pids().is_empty() {
            let sock = self.vm_dir(id).join("qmp.sock");
            if let Ok(mut c) = QmpClient::connect(&sock, Duration::from_secs(2)).await {
                let _ = c.system_powerdown().await;
                if !self.wait_gone(id, grace).await {
                    let _ = c.quit().await;
                }
            }
            if !self.wait_gone(id, Duration::from_secs(3)).await {
                self.kill_all(id);
                self.wait_gone(id, Duration::from_secs(5)).await;
            }
        }
        if let Some(h) = self.children.lock().expect("children").remove(&id) {
            // The reaper ends by itself once the process is gone; do not wait on it here.
            drop(h);
        }
        cg.remove()?;
        Ok(())
    }

    async fn destroy(&self, id: Uuid) -> Result<(), DriverError> {
        self.stop(id, Duration::from_secs(0)).await?;
        let dir = self.vm_dir(id);
        let uid = std::fs::metadata(&dir).ok().map(|m| m.uid());
        // Only the VM's own directory; the mount namespace of the jail never leaked a mount here.
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("removing the VM dir")(e)),
        }
        if let Some(uid) = uid.filter(|u| self.cfg.uid_range.contains(*u)) {
            self.cfg.uid_registry.release(uid, &dir);
        }
        Ok(())
    }

    async fn observe(&self) -> Result<Vec<ObservedVm>, DriverError> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(&self.cfg.state_dir) else {
            return Ok(out);
        };
        for e in rd.filter_map(Result::ok) {
            let Some(id) = e.file_name().to_str().and_then(|s| s.parse::<Uuid>().ok()) else {
                continue;
            };
            let uid = e.metadata().ok().map(|m| m.uid());
            let pids = self.cgroup(id).pids();
            let mut state = if pids.is_empty() {
                PowerState::Stopped
            } else {
                PowerState::Running
            };
            if state == PowerState::Running
                && let Ok(mut c) = QmpClient::connect(&e.path().join("qmp.sock"), Duration::from_secs(2)).await
                && let Ok(s) = c.query_status().await
            {
                state = match s.status.as_str() {
                    "guest-panicked" => PowerState::Panicked,
                    "paused" | "suspended" => PowerState::Paused,
                    _ if s.running => PowerState::Running,
                    _ => PowerState::Paused,
                };
            }
            out.push(ObservedVm {
                id,
                state,
                pid: pids.first().copied(),
                uid,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::SigningKey;
    use crate::qemu::{Machine, Nic};

    fn spec(dir: &Path, id: Uuid) -> VmSpec {
        VmSpec {
            id,
            name: "t".into(),
            vcpus: 1,
            memory_mib: 128,
            machine: Machine::Microvm,
            accel: Accel::Tcg,
            boot: Boot::Kernel {
                kernel: dir.join("vmlinux"),
                initrd: None,
                cmdline: "console=ttyS0".into(),
            },
            disks: vec![],
            nics: vec![Nic {
                id: "net0".into(),
                tap: "rp-t".into(),
                mac: "52:54:00:00:00:01".into(),
            }],
            config_drive: None,
            serial_log: dir.join("console.log"),
            qmp_socket: dir.join("qmp.sock"),
        }
    }

    #[tokio::test]
    async fn spec_12_1_1_tampered_image_never_reaches_the_hypervisor() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, b"signed kernel").unwrap();
        let key = SigningKey::generate().unwrap();
        let sig = key.sign_file(&kernel).unwrap();
        let check = ImageCheck {
            path: kernel.clone(),
            digest: sig.digest,
            signature: Some(sig),
        };
        let trusted = [TrustedKey::new(&key.public_key())];
        let fake = FakeHypervisor::new();
        let req = |id| StartRequest {
            spec: spec(dir.path(), id),
            limits: Limits::for_flavor(1, 128, true, vec![]),
            netns: None,
            paused: false,
        };

        let id = Uuid::new_v4();
        verify_and_start(
            &fake,
            req(id),
            std::slice::from_ref(&check),
            &trusted,
            SignaturePolicy::Require,
        )
        .await
        .unwrap();
        assert_eq!(fake.starts(), 1);

        std::fs::write(&kernel, b"signed kernel, then modified").unwrap();
        let e = verify_and_start(&fake, req(Uuid::new_v4()), &[check], &trusted, SignaturePolicy::Require)
            .await
            .unwrap_err();
        assert_eq!(e.code(), "image_signature_invalid");
        assert_eq!(fake.starts(), 1, "no start after a failed verification");
    }

    #[tokio::test]
    async fn spec_12_1_1_start_without_a_permit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeHypervisor::new();
        let req = StartRequest {
            spec: spec(dir.path(), Uuid::new_v4()),
            limits: Limits::for_flavor(1, 128, true, vec![]),
            netns: None,
            paused: false,
        };
        let e = fake.start(req, &[]).await.unwrap_err();
        assert!(matches!(e, DriverError::Unverified(_)));
        assert_eq!(e.code(), "image_signature_invalid");
        assert_eq!(fake.starts(), 0);
    }

    #[tokio::test]
    async fn fake_hypervisor_allocates_distinct_nonroot_uids_and_reports_power() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vmlinux"), b"k").unwrap();
        let (d, _) = image::sha256_file(&dir.path().join("vmlinux")).unwrap();
        let permit =
            image::verify_before_boot(&dir.path().join("vmlinux"), &d, None, &[], SignaturePolicy::Off).unwrap();
        let fake = FakeHypervisor::new();
        let mut uids = BTreeSet::new();
        let mut ids = vec![];
        for _ in 0..3 {
            let id = Uuid::new_v4();
            let req = StartRequest {
                spec: spec(dir.path(), id),
                limits: Limits::for_flavor(1, 128, true, vec![]),
                netns: None,
                paused: false,
            };
            let vm = fake.start(req.clone(), std::slice::from_ref(&permit)).await.unwrap();
            assert!(matches!(
                fake.start(req, std::slice::from_ref(&permit)).await,
                Err(DriverError::AlreadyRunning(_))
            ));
            assert_ne!(vm.uid, Some(0));
            uids.insert(vm.uid.unwrap());
            ids.push(id);
        }
        assert_eq!(uids.len(), 3);
        fake.crash(ids[0]);
        let obs = fake.observe().await.unwrap();
        assert_eq!(obs.iter().find(|o| o.id == ids[0]).unwrap().state, PowerState::Stopped);
    }

    #[test]
    fn power_state_is_reconciled_both_ways() {
        let (a, b, c, d, e) = (
            Uuid::from_u128(1),
            Uuid::from_u128(2),
            Uuid::from_u128(3),
            Uuid::from_u128(4),
            Uuid::from_u128(5),
        );
        let desired = BTreeMap::from([
            (a, DesiredPower::Running), // never started → start
            (b, DesiredPower::Running), // was running, now gone → crashed, no restart
            (c, DesiredPower::Stopped), // running → stop
            (d, DesiredPower::Running), // running (re-adopted after an agent restart) → nothing
        ]);
        let obs = |id, state| ObservedVm {
            id,
            state,
            pid: None,
            uid: None,
        };
        let observed = [
            obs(c, PowerState::Running),
            obs(d, PowerState::Running),
            obs(e, PowerState::Running), // deleted in the desired state → destroy
        ];
        let was = BTreeSet::from([b, c, d]);
        assert_eq!(
            plan_power(&desired, &observed, &was),
            [
                PowerAction::Start(a),
                PowerAction::ReportCrashed(b),
                PowerAction::Stop(c),
                PowerAction::Destroy(e)
            ]
        );
        let panicked = [obs(d, PowerState::Panicked)];
        let only_d = BTreeMap::from([(d, DesiredPower::Running)]);
        assert_eq!(plan_power(&only_d, &panicked, &was), [PowerAction::ReportPanicked(d)]);
    }

    /// Two agents on one host, each with its own state directory: their VMs get different
    /// uids (they allocate through the host's registry), and a deleted VM's uid is free again.
    #[tokio::test]
    async fn spec_9_1_1f_two_agents_on_one_host_give_their_vms_different_uids() {
        // Root: it chowns to VM uids.
        if !rampart_common::testing::require_root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let registry = UidRegistry::new(tmp.path().join("host-uids"));
        // A range of its own, so that VMs of other tests on this host never meet it.
        let range = UidRange {
            start: 2_100_000_000 + (std::process::id() % 1000) * 64,
            count: 64,
        };
        let driver = |name: &str| {
            let Ok(mut cfg) = QemuDriverConfig::new(tmp.path().join(name)) else {
                return None;
            };
            cfg.uid_range = range;
            cfg.uid_registry = registry.clone();
            Some(QemuDriver::new(cfg))
        };
        let (Some(a), Some(b)) = (driver("agent-a"), driver("agent-b")) else {
            // A counted skip, and a failure in CI (where root has its cgroups).
            rampart_common::testing::require(rampart_common::testing::Need::Root, false, "no cgroup hierarchy");
            return;
        };
        let (va, vb) = (Uuid::new_v4(), Uuid::new_v4());
        let (_, ua) = a.prepare_dir(va).unwrap();
        let (_, ub) = b.prepare_dir(vb).unwrap();
        assert_ne!(ua, ub, "two agents, one host: one uid each");
        assert_eq!(a.prepare_dir(va).unwrap().1, ua, "stable across calls (restarts)");
        a.destroy(va).await.unwrap();
        let (_, uc) = b.prepare_dir(Uuid::new_v4()).unwrap();
        assert_eq!(uc, ua, "a deleted VM's uid is free again");
    }
}
