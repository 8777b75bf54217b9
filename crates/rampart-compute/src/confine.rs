//! VM confinement, jailer style (spec 11.1-2, 11.2, 11.4, 9.1-1f): each QEMU runs under its
//! own unprivileged uid/gid, in its own cgroup with CPU, memory, I/O and pid limits, in its own
//! mount namespace where `/dev/net/tun` (and `/dev/kvm` when used) are device nodes owned by
//! that uid and the VM state directory shows only the VM's own directory, with no supplementary groups, no capabilities and `no_new_privs`, and with its
//! files (disks, config drive, console, QMP socket) in a 0700 directory of its own.
//!
//! The launch is race-free without `unsafe`: the agent starts a root shell in a new mount
//! namespace that blocks on stdin; while it waits, the agent writes its pid into the VM's
//! cgroups, then sends `go`; the shell bind-mounts the device nodes and execs `setpriv`, which
//! drops to the VM uid and execs QEMU. Every byte QEMU allocates is charged to its cgroup.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error("no free VM uid in {start}..{end}")]
    UidsExhausted { start: u32, end: u32 },
    #[error("no usable cgroup hierarchy: {0}")]
    NoCgroups(String),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{command} failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("invalid {0}")]
    Invalid(&'static str),
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ConfineError {
    let path = path.to_path_buf();
    move |source| ConfineError::Io { what, path, source }
}

/// The uids (= gids) VMs run under. Far above any login or system account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UidRange {
    pub start: u32,
    pub count: u32,
}

impl Default for UidRange {
    fn default() -> Self {
        UidRange {
            start: 2_100_000_000,
            count: 65_536,
        }
    }
}

impl UidRange {
    pub fn contains(&self, uid: u32) -> bool {
        uid >= self.start && uid - self.start < self.count
    }

    /// The lowest uid of the range not in `in_use` (the owners of existing VM directories).
    pub fn allocate(&self, in_use: &BTreeSet<u32>) -> Result<u32, ConfineError> {
        (self.start..self.start.saturating_add(self.count))
            .find(|u| !in_use.contains(u))
            .ok_or(ConfineError::UidsExhausted {
                start: self.start,
                end: self.start.saturating_add(self.count),
            })
    }
}

/// Host-wide claims on VM uids, shared by every agent of the host (two agents with their own
/// state directories would otherwise both pick the lowest free uid of the same range and run
/// two tenants' VMs under one uid). One file per claimed uid names the VM directory holding
/// it; claims are made under an exclusive lock on the registry. A claim whose directory is
/// gone is stale and taken over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UidRegistry {
    dir: PathBuf,
}

impl UidRegistry {
    /// Cleared at boot with the VMs it describes; VM directories that outlive a reboot claim
    /// their uid again when their VM is prepared.
    pub const DEFAULT_DIR: &'static str = "/run/rampart/vm-uids";

    pub fn new(dir: impl Into<PathBuf>) -> Self {
        UidRegistry { dir: dir.into() }
    }

    fn locked(&self) -> Result<std::fs::File, ConfineError> {
        std::fs::create_dir_all(&self.dir).map_err(io_err("creating", &self.dir))?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err("securing", &self.dir))?;
        let path = self.dir.join(".lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("opening", &path))?;
        f.lock().map_err(io_err("locking", &path))?;
        Ok(f)
    }

    /// Whether `uid` is free for `owner` (the VM directory), claiming it if so.
    fn try_claim(&self, uid: u32, owner: &Path) -> Result<bool, ConfineError> {
        let path = self.dir.join(uid.to_string());
        let owner_text = owner.to_string_lossy();
        match std::fs::read_to_string(&path) {
            Ok(holder) if holder == owner_text => return Ok(true),
            Ok(holder) => {
                // The holder makes its directory before it claims, so a missing one is gone.
                if Path::new(&holder).exists() {
                    return Ok(false);
                }
                tracing::info!(uid, stale = %holder, "taking over a stale VM uid claim");
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("reading", &path)(e)),
        }
        std::fs::write(&path, owner_text.as_bytes()).map_err(io_err("writing", &path))?;
        Ok(true)
    }

    /// Claims `uid` for `owner` (a VM directory found owned by it, after a restart); an error
    /// if another live VM of this host holds it.
    pub fn claim(&self, uid: u32, owner: &Path) -> Result<(), ConfineError> {
        let _lock = self.locked()?;
        if self.try_claim(uid, owner)? {
            Ok(())
        } else {
            Err(ConfineError::Invalid("VM uid already held by another VM of this host"))
        }
    }

    /// The lowest uid of `range` that no VM of this host holds, claimed for `owner`.
    pub fn allocate(&self, range: &UidRange, owner: &Path) -> Result<u32, ConfineError> {
        let _lock = self.locked()?;
        for uid in range.start..range.start.saturating_add(range.count) {
            if self.try_claim(uid, owner)? {
                return Ok(uid);
            }
        }
        Err(ConfineError::UidsExhausted {
            start: range.start,
            end: range.start.saturating_add(range.count),
        })
    }

    /// Gives up `owner`'s claim on `uid` (its VM was deleted).
    pub fn release(&self, uid: u32, owner: &Path) {
        let Ok(_lock) = self.locked() else {
            return;
        };
        let path = self.dir.join(uid.to_string());
        if std::fs::read_to_string(&path).is_ok_and(|h| h == owner.to_string_lossy()) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Per-device I/O throttle (`MAJ:MIN`, the device holding the VM's files).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoLimit {
    pub major: u32,
    pub minor: u32,
    pub read_bps: Option<u64>,
    pub write_bps: Option<u64>,
    pub read_iops: Option<u64>,
    pub write_iops: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// CPU time per period, in µs (`vcpus × period` = the flavor's vCPUs at 100 %).
    pub cpu_quota_us: u64,
    pub cpu_period_us: u64,
    /// Guest RAM plus QEMU's own overhead; no swap beyond it.
    pub memory_max_bytes: u64,
    pub pids_max: u64,
    pub io: Vec<IoLimit>,
}

impl Limits {
    /// Limits for a flavor. TCG keeps a translation cache (bounded with `tb-size` in the argv),
    /// so its overhead is larger than KVM's.
    pub fn for_flavor(vcpus: u32, memory_mib: u64, tcg: bool, io: Vec<IoLimit>) -> Limits {
        let overhead_mib = if tcg { 384 } else { 160 };
        Limits {
            cpu_quota_us: u64::from(vcpus) * 100_000,
            cpu_period_us: 100_000,
            memory_max_bytes: (memory_mib + overhead_mib) << 20,
            pids_max: 256,
            io,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupVersion {
    V1,
    V2,
}

/// One file write: `controller` names the v1 hierarchy (ignored on v2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupWrite {
    pub controller: &'static str,
    pub file: &'static str,
    pub value: String,
}

fn w(controller: &'static str, file: &'static str, value: impl Into<String>) -> CgroupWrite {
    CgroupWrite {
        controller,
        file,
        value: value.into(),
    }
}

/// The cgroup files that enforce `limits`, in write order. Pure.
pub fn render_cgroup_writes(version: CgroupVersion, l: &Limits) -> Vec<CgroupWrite> {
    let mut out = Vec::new();
    match version {
        CgroupVersion::V2 => {
            out.push(w("cpu", "cpu.max", format!("{} {}", l.cpu_quota_us, l.cpu_period_us)));
            out.push(w("memory", "memory.max", l.memory_max_bytes.to_string()));
            out.push(w("memory", "memory.swap.max", "0"));
            out.push(w("pids", "pids.max", l.pids_max.to_string()));
            for io in &l.io {
                let f = |v: Option<u64>| v.map_or("max".to_string(), |n| n.to_string());
                out.push(w(
                    "io",
                    "io.max",
                    format!(
                        "{}:{} rbps={} wbps={} riops={} wiops={}",
                        io.major,
                        io.minor,
                        f(io.read_bps),
                        f(io.write_bps),
                        f(io.read_iops),
                        f(io.write_iops)
                    ),
                ));
            }
        }
        CgroupVersion::V1 => {
            out.push(w("cpu", "cpu.cfs_period_us", l.cpu_period_us.to_string()));
            out.push(w("cpu", "cpu.cfs_quota_us", l.cpu_quota_us.to_string()));
            out.push(w("memory", "memory.limit_in_bytes", l.memory_max_bytes.to_string()));
            // memsw = mem + swap: equal to the memory limit means no swap. Absent when the
            // kernel runs without swap accounting; the writer skips missing files here only.
            out.push(w(
                "memory",
                "memory.memsw.limit_in_bytes",
                l.memory_max_bytes.to_string(),
            ));
            out.push(w("pids", "pids.max", l.pids_max.to_string()));
            for io in &l.io {
                let dev = format!("{}:{}", io.major, io.minor);
                for (file, v) in [
                    ("blkio.throttle.read_bps_device", io.read_bps),
                    ("blkio.throttle.write_bps_device", io.write_bps),
                    ("blkio.throttle.read_iops_device", io.read_iops),
                    ("blkio.throttle.write_iops_device", io.write_iops),
                ] {
                    if let Some(v) = v {
                        out.push(w("blkio", file, format!("{dev} {v}")));
                    }
                }
            }
        }
    }
    out
}

/// Where the cgroup hierarchies are and where the agent itself sits in them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupLayout {
    /// Unified hierarchy with the controllers available: the directory VM cgroups go under.
    V2 { parent: PathBuf },
    /// Per-controller directories VM cgroups go under (cpu, cpuacct, memory, blkio, pids).
    V1 { parents: Vec<(&'static str, PathBuf)> },
}

const V1_CONTROLLERS: [&str; 5] = ["cpu", "cpuacct", "memory", "blkio", "pids"];

impl CgroupLayout {
    pub fn version(&self) -> CgroupVersion {
        match self {
            CgroupLayout::V2 { .. } => CgroupVersion::V2,
            CgroupLayout::V1 { .. } => CgroupVersion::V1,
        }
    }

    /// Pure: from `/proc/self/mountinfo` and `/proc/self/cgroup`, VM cgroups go below the
    /// agent's own cgroup in each hierarchy, so the agent's own limits still bound them.
    /// `v2_controllers` is the content of the unified root's `cgroup.controllers`.
    pub fn from_proc(mountinfo: &str, self_cgroup: &str, v2_controllers: &str) -> Result<CgroupLayout, ConfineError> {
        let mut v2_mount = None;
        let mut v1: Vec<(&'static str, PathBuf, String)> = Vec::new();
        for line in mountinfo.lines() {
            let (pre, post) = match line.split_once(" - ") {
                Some(x) => x,
                None => continue,
            };
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            if pre.len() < 5 || post.len() < 3 {
                continue;
            }
            let (root, mnt) = (pre[3], pre[4]);
            match post[0] {
                "cgroup2" => v2_mount = Some((PathBuf::from(mnt), root.to_string())),
                "cgroup" => {
                    for opt in post[2].split(',') {
                        if let Some(c) = V1_CONTROLLERS.iter().find(|c| **c == opt) {
                            v1.push((c, PathBuf::from(mnt), root.to_string()));
                        }
                    }
                }
                _ => {}
            }
        }
        let own = |pred: &dyn Fn(&str) -> bool| -> Option<String> {
            self_cgroup.lines().find_map(|l| {
                let mut it = l.splitn(3, ':');
                let (_, ctrls, path) = (it.next()?, it.next()?, it.next()?);
                pred(ctrls).then(|| path.to_string())
            })
        };
        let join = |mnt: &Path, mount_root: &str, own_path: &str| -> PathBuf {
            let rel = own_path.strip_prefix(mount_root).unwrap_or(own_path);
            mnt.join(rel.trim_start_matches('/'))
        };
        let v2_has_all = ["cpu", "memory", "io", "pids"]
            .iter()
            .all(|c| v2_controllers.split_whitespace().any(|x| x == *c));
        if let (Some((mnt, root)), true) = (&v2_mount, v2_has_all) {
            let path = own(&|c: &str| c.is_empty()).unwrap_or_else(|| "/".into());
            return Ok(CgroupLayout::V2 {
                parent: join(mnt, root, &path),
            });
        }
        let mut parents = Vec::new();
        for c in ["cpu", "memory", "blkio", "pids", "cpuacct"] {
            let Some((_, mnt, root)) = v1.iter().find(|(n, _, _)| *n == c) else {
                if c == "cpuacct" {
                    continue;
                }
                return Err(ConfineError::NoCgroups(format!("v1 controller {c} is not mounted")));
            };
            let path = own(&|ctrls: &str| ctrls.split(',').any(|x| x == c)).unwrap_or_else(|| "/".into());
            parents.push((c, join(mnt, root, &path)));
        }
        Ok(CgroupLayout::V1 { parents })
    }

    pub fn detect() -> Result<CgroupLayout, ConfineError> {
        let mi =
            fs::read_to_string("/proc/self/mountinfo").map_err(io_err("reading", Path::new("/proc/self/mountinfo")))?;
        let sc = fs::read_to_string("/proc/self/cgroup").map_err(io_err("reading", Path::new("/proc/self/cgroup")))?;
        let v2c = mi
            .lines()
            .find(|l| l.contains(" - cgroup2 "))
            .and_then(|l| l.split(' ').nth(4))
            .and_then(|mnt| fs::read_to_string(Path::new(mnt).join("cgroup.controllers")).ok())
            .unwrap_or_default();
        Self::from_proc(&mi, &sc, &v2c)
    }
}

/// The cgroup(s) of one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmCgroup {
    pub version: CgroupVersion,
    /// `(controller, directory)`; one entry named `unified` on v2.
    pub dirs: Vec<(&'static str, PathBuf)>,
}

/// Cgroup name of a VM.
pub fn cgroup_name(vm: &uuid::Uuid) -> String {
    format!("rampart-vm-{vm}")
}

impl VmCgroup {
    /// The VM's cgroup in `layout`, created or not.
    pub fn locate(layout: &CgroupLayout, name: &str) -> VmCgroup {
        match layout {
            CgroupLayout::V2 { parent } => VmCgroup {
                version: CgroupVersion::V2,
                dirs: vec![("unified", parent.join(name))],
            },
            CgroupLayout::V1 { parents } => VmCgroup {
                version: CgroupVersion::V1,
                dirs: parents.iter().map(|(c, p)| (*c, p.join(name))).collect(),
            },
        }
    }

    fn dir_for(&self, controller: &str) -> Option<&Path> {
        match self.version {
            CgroupVersion::V2 => self.dirs.first().map(|(_, p)| p.as_path()),
            CgroupVersion::V1 => self
                .dirs
                .iter()
                .find(|(c, _)| *c == controller)
                .map(|(_, p)| p.as_path()),
        }
    }

    /// Creates the directories and writes the limits. Idempotent.
    pub fn create(&self, limits: &Limits) -> Result<(), ConfineError> {
        if self.version == CgroupVersion::V2 {
            let dir = &self.dirs[0].1;
            if let Some(parent) = dir.parent() {
                let ctl = parent.join("cgroup.subtree_control");
                // Enabling controllers for children of the parent; already-enabled is fine.
                let _ = fs::write(&ctl, "+cpu +memory +io +pids");
            }
        }
        for (_, dir) in &self.dirs {
            match fs::create_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err("creating cgroup", dir)(e)),
            }
        }
        for wr in render_cgroup_writes(self.version, limits) {
            let Some(dir) = self.dir_for(wr.controller) else {
                continue;
            };
            let file = dir.join(wr.file);
            if wr.file == "memory.memsw.limit_in_bytes" && !file.exists() {
                continue;
            }
            fs::write(&file, &wr.value).map_err(io_err("writing", &file))?;
        }
        Ok(())
    }

    /// Moves a process into the VM's cgroup(s).
    pub fn add_pid(&self, pid: u32) -> Result<(), ConfineError> {
        for (_, dir) in &self.dirs {
            let f = dir.join("cgroup.procs");
            fs::write(&f, pid.to_string()).map_err(io_err("joining", &f))?;
        }
        Ok(())
    }

    /// Pids in the VM's cgroup: the running QEMU, if any (how the agent re-adopts VMs).
    pub fn pids(&self) -> Vec<u32> {
        let Some((_, dir)) = self.dirs.first() else {
            return Vec::new();
        };
        fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    pub fn read(&self, controller: &str, file: &str) -> Option<String> {
        fs::read_to_string(self.dir_for(controller)?.join(file))
            .ok()
            .map(|s| s.trim().to_string())
    }

    pub fn exists(&self) -> bool {
        self.dirs.iter().any(|(_, d)| d.exists())
    }

    /// Removes the cgroup(s); they must hold no process any more.
    pub fn remove(&self) -> Result<(), ConfineError> {
        for (_, dir) in &self.dirs {
            match fs::remove_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("removing cgroup", dir)(e)),
            }
        }
        Ok(())
    }
}

/// `MAJ:MIN` of the block device holding `path` (for `io.max`).
pub fn device_of(path: &Path) -> io::Result<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let dev = fs::metadata(path)?.dev();
    // glibc's gnu_dev_major/minor encoding.
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0xff);
    Ok((major as u32, minor as u32))
}

/// Makes `path` the VM's own: owned by its uid/gid, mode 0600 (files) or 0700 (directories).
pub fn own_private(path: &Path, uid: u32, gid: u32) -> Result<(), ConfineError> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(io_err("chown", path))?;
    let mode = if path.is_dir() { 0o700 } else { 0o600 };
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err("chmod", path))
}

/// Creates a character device node owned by the VM (`/dev/net/tun` is 10:200, `/dev/kvm`
/// 10:232), to be bind-mounted over the host's node inside the VM's mount namespace.
pub fn make_device_node(path: &Path, major: u32, minor: u32, uid: u32, gid: u32) -> Result<(), ConfineError> {
    let _ = fs::remove_file(path);
    let out = std::process::Command::new("mknod")
        .args(["-m", "0600"])
        .arg(path)
        .args(["c", &major.to_string(), &minor.to_string()])
        .output()
        .map_err(io_err("running mknod for", path))?;
    if !out.status.success() {
        return Err(ConfineError::Command {
            command: "mknod".into(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    own_private(path, uid, gid)
}

/// Shell run as root in the VM's new mount namespace. Fixed text: every variable part comes in
/// as a positional argument, so nothing is ever parsed by the shell.
pub const JAIL_SCRIPT: &str = r#"read -r go || exit 97
[ "$go" = go ] || exit 97
t=$1 k=$2 n=$3 s=$4 v=$5
shift 5
if [ "$s" != - ]; then
    # Cover the state directory with an empty tmpfs and bind the VM's own directory back (reached
    # through the cwd, which still points at the covered original): QEMU sees no other VM.
    cd "$s/$v" || exit 96
    mount -t tmpfs -o mode=0711,size=64k,nosuid,nodev,noexec rampart-vms "$s" || exit 96
    # -c: util-linux would otherwise canonicalise "." to the (now covered) path string.
    mkdir "$s/$v" && mount -c --bind . "$s/$v" || exit 96
    cd / || exit 96
fi
if [ "$t" != - ]; then mount --bind "$t" /dev/net/tun || exit 98; fi
if [ "$k" != - ]; then mount --bind "$k" /dev/kvm || exit 98; fi
if [ "$n" != - ]; then exec nsenter --net="/run/netns/$n" -- "$@" </dev/null; fi
exec "$@" </dev/null"#;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailSpec {
    pub uid: u32,
    pub gid: u32,
    pub tun_node: Option<PathBuf>,
    pub kvm_node: Option<PathBuf>,
    /// Network namespace (name under /run/netns) the VM's taps live in.
    pub netns: Option<String>,
    /// `(state_dir, vm_dir_name)`: inside the jail only `state_dir/vm_dir_name` is visible.
    pub private_dir: Option<(PathBuf, String)>,
    pub program: PathBuf,
    pub args: Vec<String>,
}

/// `(program, args)` of the jailed launch. Pure.
pub fn render_jail_command(j: &JailSpec) -> Result<(String, Vec<String>), ConfineError> {
    if j.uid == 0 || j.gid == 0 {
        return Err(ConfineError::Invalid("uid/gid 0 for a VM"));
    }
    if let Some(n) = &j.netns
        && (n.is_empty() || !n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    {
        return Err(ConfineError::Invalid("netns name"));
    }
    let opt = |p: &Option<PathBuf>| p.as_ref().map_or("-".to_string(), |p| p.display().to_string());
    let mut a: Vec<String> = [
        "--mount",
        "--propagation",
        "private",
        "--",
        "/bin/sh",
        "-c",
        JAIL_SCRIPT,
        "rampart-jail",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push(opt(&j.tun_node));
    a.push(opt(&j.kvm_node));
    a.push(j.netns.clone().unwrap_or_else(|| "-".into()));
    match &j.private_dir {
        Some((state, name)) => {
            let st = state.to_str().filter(|s| s.starts_with('/') && !s.contains('\n'));
            let name_ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            match (st, name_ok) {
                (Some(st), true) => {
                    a.push(st.to_string());
                    a.push(name.clone());
                }
                _ => return Err(ConfineError::Invalid("private dir")),
            }
        }
        None => {
            a.push("-".into());
            a.push("-".into());
        }
    }
    a.extend([
        "setpriv".to_string(),
        format!("--reuid={}", j.uid),
        format!("--regid={}", j.gid),
        "--clear-groups".into(),
        "--no-new-privs".into(),
        "--inh-caps=-all".into(),
        "--bounding-set=-all".into(),
        "--".into(),
        j.program.display().to_string(),
    ]);
    a.extend(j.args.iter().cloned());
    Ok(("unshare".into(), a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_9_1_1f_uids_are_allocated_from_the_range_never_root() {
        let r = UidRange { start: 5000, count: 3 };
        let mut used = BTreeSet::new();
        for want in [5000, 5001, 5002] {
            let u = r.allocate(&used).unwrap();
            assert_eq!(u, want);
            used.insert(u);
        }
        assert!(matches!(r.allocate(&used), Err(ConfineError::UidsExhausted { .. })));
        used.remove(&5001);
        assert_eq!(r.allocate(&used).unwrap(), 5001);
        assert!(UidRange::default().start > 65_535);
    }

    fn limits() -> Limits {
        Limits::for_flavor(
            2,
            256,
            true,
            vec![IoLimit {
                major: 254,
                minor: 0,
                read_bps: Some(50 << 20),
                write_bps: Some(20 << 20),
                read_iops: Some(2000),
                write_iops: None,
            }],
        )
    }

    #[test]
    fn spec_11_2_cgroup_v2_writes_golden() {
        let got: Vec<String> = render_cgroup_writes(CgroupVersion::V2, &limits())
            .into_iter()
            .map(|w| format!("{}={}", w.file, w.value))
            .collect();
        assert_eq!(
            got,
            [
                "cpu.max=200000 100000",
                "memory.max=671088640",
                "memory.swap.max=0",
                "pids.max=256",
                "io.max=254:0 rbps=52428800 wbps=20971520 riops=2000 wiops=max",
            ]
        );
    }

    #[test]
    fn spec_11_4_cgroup_v1_writes_golden() {
        let got: Vec<String> = render_cgroup_writes(CgroupVersion::V1, &limits())
            .into_iter()
            .map(|w| format!("{}/{}={}", w.controller, w.file, w.value))
            .collect();
        assert_eq!(
            got,
            [
                "cpu/cpu.cfs_period_us=100000",
                "cpu/cpu.cfs_quota_us=200000",
                "memory/memory.limit_in_bytes=671088640",
                "memory/memory.memsw.limit_in_bytes=671088640",
                "pids/pids.max=256",
                "blkio/blkio.throttle.read_bps_device=254:0 52428800",
                "blkio/blkio.throttle.write_bps_device=254:0 20971520",
                "blkio/blkio.throttle.read_iops_device=254:0 2000",
            ]
        );
    }

    const MOUNTINFO_V1: &str = "\
30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:28 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
33 30 0:29 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
34 30 0:30 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
35 30 0:31 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
36 30 0:32 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const SELF_V1: &str = "8:pids:/\n7:blkio:/\n4:memory:/process_api/abc\n2:cpuacct:/\n1:cpu:/\n0::/\n";

    #[test]
    fn cgroup_layout_v1_hybrid_nests_under_the_agents_own_cgroup() {
        let l = CgroupLayout::from_proc(MOUNTINFO_V1, SELF_V1, "hugetlb\n").unwrap();
        let CgroupLayout::V1 { parents } = &l else {
            panic!("{l:?}")
        };
        assert!(parents.contains(&("memory", PathBuf::from("/sys/fs/cgroup/memory/process_api/abc"))));
        assert!(parents.contains(&("cpu", PathBuf::from("/sys/fs/cgroup/cpu"))));
        let cg = VmCgroup::locate(&l, "rampart-vm-x");
        assert_eq!(
            cg.dir_for("memory").unwrap(),
            Path::new("/sys/fs/cgroup/memory/process_api/abc/rampart-vm-x")
        );
    }

    #[test]
    fn cgroup_layout_v2_is_used_when_it_has_the_controllers() {
        let mi = "25 20 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let l = CgroupLayout::from_proc(mi, "0::/rampart.slice/agent\n", "cpuset cpu io memory pids\n").unwrap();
        assert_eq!(
            l,
            CgroupLayout::V2 {
                parent: "/sys/fs/cgroup/rampart.slice/agent".into()
            }
        );
        assert!(CgroupLayout::from_proc(mi, "0::/\n", "cpu memory\n").is_err());
    }

    #[test]
    fn spec_9_1_1f_jail_command_drops_to_the_vm_uid_golden() {
        let j = JailSpec {
            uid: 2_100_000_000,
            gid: 2_100_000_000,
            tun_node: Some("/run/rampart/vms/x/dev/tun".into()),
            kvm_node: None,
            netns: Some("vpc-1".into()),
            private_dir: Some(("/var/lib/rampart/vms".into(), "x".into())),
            program: "/usr/bin/qemu-system-x86_64".into(),
            args: vec!["-name".into(), "guest=web-1".into()],
        };
        let (prog, args) = render_jail_command(&j).unwrap();
        assert_eq!(prog, "unshare");
        let tail: Vec<&str> = args[8..].iter().map(String::as_str).collect();
        assert_eq!(
            tail,
            [
                "/run/rampart/vms/x/dev/tun",
                "-",
                "vpc-1",
                "/var/lib/rampart/vms",
                "x",
                "setpriv",
                "--reuid=2100000000",
                "--regid=2100000000",
                "--clear-groups",
                "--no-new-privs",
                "--inh-caps=-all",
                "--bounding-set=-all",
                "--",
                "/usr/bin/qemu-system-x86_64",
                "-name",
                "guest=web-1",
            ]
        );
        assert!(render_jail_command(&JailSpec { uid: 0, ..j.clone() }).is_err());
        assert!(
            render_jail_command(&JailSpec {
                netns: Some("../x".into()),
                ..j.clone()
            })
            .is_err()
        );
        assert!(
            render_jail_command(&JailSpec {
                private_dir: Some(("/var/lib/rampart/vms".into(), "../other".into())),
                ..j
            })
            .is_err()
        );
    }

    #[test]
    fn spec_11_4_device_numbers_match_stat() {
        let out = std::process::Command::new("stat")
            .args(["-c", "%Hd:%Ld", "/"])
            .output()
            .unwrap();
        let want = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let (maj, min) = device_of(Path::new("/")).unwrap();
        assert_eq!(format!("{maj}:{min}"), want);
    }

    #[test]
    fn spec_9_1_1f_two_agents_on_one_host_never_share_a_vm_uid() {
        let tmp = tempfile::tempdir().unwrap();
        let registry = UidRegistry::new(tmp.path().join("uids"));
        let range = UidRange {
            start: 2_100_000_000,
            count: 4,
        };
        // Two agents, two state directories, one registry (the host's).
        let (a, b) = (tmp.path().join("agent-a/vm1"), tmp.path().join("agent-b/vm1"));
        for d in [&a, &b] {
            std::fs::create_dir_all(d).unwrap();
        }
        let ua = registry.allocate(&range, &a).unwrap();
        let ub = registry.allocate(&range, &b).unwrap();
        assert_ne!(ua, ub);
        // The holder's claim is its own again after a restart.
        registry.claim(ua, &a).unwrap();
        // A claim whose VM directory is gone (or owned by someone else) is stale.
        std::fs::remove_dir_all(&a).unwrap();
        let c = tmp.path().join("agent-b/vm2");
        std::fs::create_dir_all(&c).unwrap();
        assert_eq!(registry.allocate(&range, &c).unwrap(), ua);
        registry.release(ub, &b);
        assert!(!tmp.path().join("uids").join(ub.to_string()).exists());
    }
}
