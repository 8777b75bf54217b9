//! The QEMU command line, rendered purely from a [`VmSpec`] (golden tests in
//! `tests/golden/`), and the choice of accelerator (spec 11.1-1, 11.2).
//!
//! Two machine shapes:
//! * [`Machine::Microvm`]: the fast path for kernel + initramfs guests (virtio-mmio, no PCI, no
//!   firmware work), booting an uncompressed kernel through its PVH entry. Needs
//!   `tsc_early_khz` on the kernel command line (microvm has no PIT/HPET/PM timer to calibrate
//!   the TSC against; without it the Debian kernel hangs).
//! * [`Machine::Q35`]: full disk images (stock cloud images) with virtio-pci and pvpanic.
//!
//! Whatever the shape, the line contains no monitor but the agent's QMP socket, no default
//! devices, no network backend but the VM's own taps, and the seccomp sandbox with every
//! optional deny turned on.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The seccomp policy every VM runs under.
pub const SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// Kernel command line that boots the Debian cloud kernel fastest under TCG on microvm
/// (shared/notes/compute.md); `tsc_early_khz` is appended by [`microvm_cmdline`].
pub const FAST_CMDLINE: &str = "console=ttyS0 panic=-1 cryptomgr.notests quiet mitigations=off init_on_alloc=0 \
8250.nr_uarts=1 rcupdate.rcu_expedited=1 nowatchdog audit=0 kfence.sample_interval=0";

/// PCIe root ports (`hp0` …) of a q35 VM, one per volume it may take while running.
pub const HOTPLUG_PORTS: u8 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Machine {
    Microvm,
    Q35,
}

/// A resolved accelerator (see [`choose_accel`] for `auto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// The operator's setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelSetting {
    #[default]
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Boot {
    /// Direct kernel boot (the kernel is the signed image, or part of it).
    Kernel {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        cmdline: String,
    },
    /// Firmware boots the first disk.
    Disk,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

impl fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// Device id, `[a-z0-9-]`, unique in the VM (also the QMP `query-blockstats` name).
    pub id: String,
    pub path: PathBuf,
    pub format: DiskFormat,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    pub id: String,
    /// Host tap device, created by the network driver and owned by the VM's uid.
    pub tap: String,
    /// `52:54:00:xx:xx:xx`, allocated with the port.
    pub mac: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    pub id: uuid::Uuid,
    /// Guest name shown in `ps` (`-name`), `[a-z][a-z0-9-]*`.
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub machine: Machine,
    pub accel: Accel,
    pub boot: Boot,
    #[serde(default)]
    pub disks: Vec<Disk>,
    #[serde(default)]
    pub nics: Vec<Nic>,
    /// NoCloud config drive (read-only raw disk, label `cidata`).
    pub config_drive: Option<PathBuf>,
    pub serial_log: PathBuf,
    pub qmp_socket: PathBuf,
}

/// Why a spec cannot be rendered. Checked before anything is created on the host.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RenderError {
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> RenderError {
    RenderError::Invalid {
        field,
        reason: reason.into(),
    }
}

fn check_id(field: &'static str, s: &str) -> Result<(), RenderError> {
    let ok = !s.is_empty()
        && s.len() <= 32
        && s.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(invalid(field, format!("{s:?} must match [a-z][a-z0-9-]{{0,31}}")))
    }
}

/// QEMU splits option values on commas (`,,` escapes one); a path with a comma or a newline
/// could smuggle extra options, so such paths are refused rather than escaped.
fn check_path(field: &'static str, p: &Path) -> Result<String, RenderError> {
    let s = p.to_str().ok_or_else(|| invalid(field, "path is not UTF-8"))?;
    if !p.is_absolute() || s.contains([',', '\n', '\0']) {
        return Err(invalid(field, format!("{s:?} must be absolute, without commas")));
    }
    Ok(s.to_string())
}

fn check_mac(mac: &str) -> Result<(), RenderError> {
    let parts: Vec<&str> = mac.split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    // Multicast MACs (low bit of the first octet) would let a guest claim group traffic.
    let unicast = ok && u8::from_str_radix(parts[0], 16).is_ok_and(|b| b & 1 == 0);
    if unicast {
        Ok(())
    } else {
        Err(invalid("nics.mac", format!("{mac:?} is not a unicast MAC")))
    }
}

fn check_tap(tap: &str) -> Result<(), RenderError> {
    if tap.is_empty() || tap.len() > 15 || !tap.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(invalid("nics.tap", format!("{tap:?} is not an interface name")));
    }
    Ok(())
}

#[derive(serde::Serialize)]
struct CacheMode {
    direct: bool,
    #[serde(rename = "no-flush")]
    no_flush: bool,
}

#[derive(serde::Serialize)]
struct FileNode<'a> {
    driver: &'static str,
    filename: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    aio: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache: Option<CacheMode>,
}

/// A `-blockdev` node. A struct, not a `json!` map, so the argv is the same whatever
/// `serde_json` features the build unifies (the golden files compare it byte for byte).
#[derive(serde::Serialize)]
struct BlockdevNode<'a> {
    #[serde(rename = "node-name")]
    node_name: &'a str,
    driver: String,
    #[serde(rename = "read-only")]
    read_only: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    discard: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache: Option<CacheMode>,
    file: FileNode<'a>,
    /// `Some(None)` renders `"backing": null`.
    #[serde(skip_serializing_if = "Option::is_none")]
    backing: Option<Option<()>>,
}

/// `"backing": null` for the formats whose header can name a backing file (spec 12.1-1,
/// OSSA-2024-001: such a header must never make QEMU open a host file; the keyval form cannot
/// say null, `backing=null` names a node called "null", hence JSON). The `raw` driver has no
/// backing at all, and QEMU refuses the option there.
fn backing_for(format: &str) -> Option<Option<()>> {
    (format != "raw").then_some(None)
}

/// One tenant drive as a `-blockdev` JSON node (what `-drive id=…,cache=none,aio=threads,
/// discard=unmap` meant).
fn blockdev(id: &str, path: &str, format: DiskFormat, read_only: bool) -> String {
    let driver = format.to_string();
    let node = BlockdevNode {
        node_name: id,
        backing: backing_for(&driver),
        driver,
        read_only,
        discard: Some("unmap"),
        cache: Some(CacheMode {
            direct: true,
            no_flush: false,
        }),
        file: FileNode {
            driver: "file",
            filename: path,
            aio: Some("threads"),
            cache: Some(CacheMode {
                direct: true,
                no_flush: false,
            }),
        },
    };
    serde_json::to_string(&node).expect("a blockdev node serialises")
}

/// The config drive: read-only raw with the default (host page) cache, as before.
fn config_blockdev(path: &str) -> String {
    let node = BlockdevNode {
        node_name: "cidata",
        driver: "raw".into(),
        read_only: true,
        discard: None,
        cache: None,
        file: FileNode {
            driver: "file",
            filename: path,
            aio: None,
            cache: None,
        },
        backing: backing_for("raw"),
    };
    serde_json::to_string(&node).expect("a blockdev node serialises")
}

/// The argv (without the program) for `qemu-system-x86_64`.
pub fn render_argv(spec: &VmSpec) -> Result<Vec<String>, RenderError> {
    check_id("name", &spec.name)?;
    if spec.vcpus == 0 || spec.vcpus > 64 {
        return Err(invalid("vcpus", "must be 1..=64"));
    }
    if spec.memory_mib < 32 {
        return Err(invalid("memory_mib", "must be at least 32"));
    }
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));

    push(&["-name", &format!("guest={},debug-threads=on", spec.name)]);
    push(&["-uuid", &spec.id.to_string()]);
    let machine = match spec.machine {
        // No legacy devices the guest does not need: each one is attack surface.
        Machine::Microvm => "microvm,pic=off,pit=off,isa-serial=on,rtc=on",
        Machine::Q35 => "q35",
    };
    push(&["-machine", machine]);
    match spec.accel {
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
        // Multi-threaded TCG: one host thread per vCPU (2.25 s vs 2.68 s on the CI kind); the
        // translation cache is bounded so the memory cgroup limit can be sized.
        Accel::Tcg => push(&["-accel", "tcg,thread=multi,tb-size=256"]),
    }
    push(&["-smp", &spec.vcpus.to_string(), "-m", &spec.memory_mib.to_string()]);
    push(&["-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none"]);
    push(&["-sandbox", SANDBOX]);
    // Reboot is handled by the agent (stop + start with fresh verification), never in place.
    push(&["-no-reboot"]);

    let qmp = check_path("qmp_socket", &spec.qmp_socket)?;
    push(&["-chardev", &format!("socket,id=qmp,path={qmp},server=on,wait=off")]);
    push(&["-mon", "chardev=qmp,mode=control"]);
    let log = check_path("serial_log", &spec.serial_log)?;
    push(&["-chardev", &format!("file,id=serial0,path={log},append=on")]);
    push(&["-serial", "chardev:serial0"]);

    if let Boot::Kernel {
        kernel,
        initrd,
        cmdline,
    } = &spec.boot
    {
        push(&["-kernel", &check_path("boot.kernel", kernel)?]);
        if let Some(i) = initrd {
            push(&["-initrd", &check_path("boot.initrd", i)?]);
        }
        if cmdline.contains(['\n', '\0']) {
            return Err(invalid("boot.cmdline", "contains a newline"));
        }
        push(&["-append", cmdline]);
    } else if spec.machine == Machine::Microvm {
        return Err(invalid("boot", "microvm boots a kernel; use q35 for disk images"));
    } else if spec.disks.is_empty() {
        return Err(invalid("disks", "disk boot needs a disk"));
    }

    let (blk, net) = match spec.machine {
        Machine::Microvm => ("virtio-blk-device", "virtio-net-device"),
        Machine::Q35 => ("virtio-blk-pci", "virtio-net-pci"),
    };
    let mut ids = std::collections::BTreeSet::new();
    for (i, d) in spec.disks.iter().enumerate() {
        check_id("disks.id", &d.id)?;
        if !ids.insert(d.id.clone()) {
            return Err(invalid("disks.id", format!("duplicate {:?}", d.id)));
        }
        let path = check_path("disks.path", &d.path)?;
        push(&["-blockdev", &blockdev(&d.id, &path, d.format, d.read_only)]);
        let boot = if spec.machine == Machine::Q35 && spec.boot == Boot::Disk && i == 0 {
            ",bootindex=0"
        } else {
            ""
        };
        push(&["-device", &format!("{blk},drive={},serial={}{boot}", d.id, d.id)]);
    }
    if let Some(cd) = &spec.config_drive {
        let path = check_path("config_drive", cd)?;
        push(&["-blockdev", &config_blockdev(&path)]);
        push(&["-device", &format!("{blk},drive=cidata,serial=cidata")]);
    }
    for n in &spec.nics {
        check_id("nics.id", &n.id)?;
        check_tap(&n.tap)?;
        check_mac(&n.mac)?;
        push(&[
            "-netdev",
            &format!("tap,id={},ifname={},script=no,downscript=no", n.id, n.tap),
        ]);
        push(&["-device", &format!("{net},netdev={},mac={}", n.id, n.mac)]);
    }
    if spec.machine == Machine::Q35 {
        // Guest panics become QMP GUEST_PANICKED events (black-box records, spec 13.4-3).
        push(&["-device", "pvpanic"]);
        // Volumes are hot-plugged into these (the q35 root complex takes no hot-plug).
        for i in 0..HOTPLUG_PORTS {
            push(&[
                "-device",
                &format!("pcie-root-port,id=hp{i},bus=pcie.0,chassis={},slot=0", u32::from(i) + 1),
            ]);
        }
    }
    Ok(a)
}

/// The fast microvm command line with the host's TSC frequency.
pub fn microvm_cmdline(tsc_khz: u64, extra: &str) -> String {
    let mut s = format!("{FAST_CMDLINE} tsc_early_khz={tsc_khz}");
    if !extra.is_empty() {
        s.push(' ');
        s.push_str(extra);
    }
    s
}

/// The host TSC frequency in kHz, from `/proc/cpuinfo` ("cpu MHz", which on a constant-TSC
/// host is the TSC rate the kernel detected).
pub fn host_tsc_khz_from_cpuinfo(cpuinfo: &str) -> Option<u64> {
    let mhz: f64 = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("cpu MHz").and_then(|r| r.split(':').nth(1)))?
        .trim()
        .parse()
        .ok()?;
    Some((mhz * 1000.0).round() as u64)
}

pub fn host_tsc_khz() -> Option<u64> {
    host_tsc_khz_from_cpuinfo(&std::fs::read_to_string("/proc/cpuinfo").ok()?)
}

/// What the host says about hardware virtualization.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VirtFacts {
    /// `vmx` or `svm` in `/proc/cpuinfo` flags.
    pub cpu_flag: bool,
    /// `kvm_intel` or `kvm_amd` loaded (`/sys/module/...`).
    pub hw_kvm_module: bool,
    /// `/dev/kvm` exists.
    pub dev_kvm: bool,
}

impl VirtFacts {
    pub fn from_cpuinfo_and_modules(cpuinfo: &str, modules: &[&str], dev_kvm: bool) -> VirtFacts {
        let cpu_flag = cpuinfo
            .lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
        VirtFacts {
            cpu_flag,
            hw_kvm_module: modules.iter().any(|m| *m == "kvm_intel" || *m == "kvm_amd"),
            dev_kvm,
        }
    }

    pub fn probe() -> VirtFacts {
        Self::probe_root(Path::new("/"))
    }

    /// The facts of the host whose `/proc`, `/sys` and `/dev` are under `root` (tests give a
    /// made-up host).
    pub fn probe_root(root: &Path) -> VirtFacts {
        let cpuinfo = std::fs::read_to_string(root.join("proc/cpuinfo")).unwrap_or_default();
        let mods: Vec<&str> = ["kvm_intel", "kvm_amd"]
            .into_iter()
            .filter(|m| root.join("sys/module").join(m).exists())
            .collect();
        Self::from_cpuinfo_and_modules(&cpuinfo, &mods, root.join("dev/kvm").exists())
    }

    /// KVM is worth a probe boot only with real hardware virtualization: a `/dev/kvm` alone may
    /// be a software virtualizer that emulates guest kernels instruction by instruction.
    pub fn hardware_virtualization(&self) -> bool {
        self.dev_kvm && (self.cpu_flag || self.hw_kvm_module)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelDecision {
    pub accel: Accel,
    pub reason: String,
}

/// Resolves the setting. `probe` is run only when KVM is a candidate (it boots a guest under
/// KVM with a bounded timeout and reports whether the boot marker appeared).
pub fn choose_accel(setting: AccelSetting, facts: &VirtFacts, probe: impl FnOnce() -> bool) -> AccelDecision {
    match setting {
        AccelSetting::Tcg => AccelDecision {
            accel: Accel::Tcg,
            reason: "configured tcg".into(),
        },
        AccelSetting::Kvm => AccelDecision {
            accel: Accel::Kvm,
            reason: "configured kvm".into(),
        },
        AccelSetting::Auto if !facts.hardware_virtualization() => AccelDecision {
            accel: Accel::Tcg,
            reason: format!(
                "no hardware virtualization (vmx/svm flag: {}, kvm_intel/kvm_amd: {}, /dev/kvm: {})",
                facts.cpu_flag, facts.hw_kvm_module, facts.dev_kvm
            ),
        },
        AccelSetting::Auto => {
            if probe() {
                AccelDecision {
                    accel: Accel::Kvm,
                    reason: "hardware virtualization and the KVM probe boot passed".into(),
                }
            } else {
                AccelDecision {
                    accel: Accel::Tcg,
                    reason: "the KVM probe boot failed or timed out".into(),
                }
            }
        }
    }
}

/// The bounded KVM probe boot: boots `kernel`/`initrd` (the signed demo guest, whose init
/// prints `marker` and powers off when given `rampart.poweroff=1`) under KVM and reports whether
/// the marker appeared within `timeout`. A software `/dev/kvm` that emulates guest kernels
/// fails this by timing out or by refusing the CPU model; either way `auto` stays on TCG.
pub async fn kvm_probe_boot(
    qemu_binary: &Path,
    kernel: &Path,
    initrd: &Path,
    tsc_khz: u64,
    marker: &str,
    timeout: std::time::Duration,
) -> bool {
    let cmdline = microvm_cmdline(tsc_khz, "rampart.poweroff=1 rampart.sshd=0");
    let mut cmd = tokio::process::Command::new(qemu_binary);
    cmd.args([
        "-machine", "microvm", "-accel", "kvm", "-cpu", "host", "-smp", "1", "-m", "256",
    ])
    .args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"])
    .args(["-sandbox", SANDBOX, "-serial", "stdio"])
    .arg("-kernel")
    .arg(kernel)
    .arg("-initrd")
    .arg(initrd)
    .args(["-append", &cmdline])
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::null())
    .kill_on_drop(true);
    let Ok(child) = cmd.spawn() else {
        return false;
    };
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => String::from_utf8_lossy(&out.stdout).contains(marker),
        // Timed out: dropping the future drops the child, which kill_on_drop ends.
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn demo_spec(machine: Machine) -> VmSpec {
        let dir = PathBuf::from("/run/rampart/vms/3f0c7a52-4a47-4bde-9d59-5c8b3c1e9f00");
        VmSpec {
            id: "3f0c7a52-4a47-4bde-9d59-5c8b3c1e9f00".parse().unwrap(),
            name: "web-1".into(),
            vcpus: 2,
            memory_mib: 256,
            machine,
            accel: Accel::Tcg,
            boot: if machine == Machine::Microvm {
                Boot::Kernel {
                    kernel: "/var/lib/rampart/images/demo/vmlinux".into(),
                    initrd: Some("/var/lib/rampart/images/demo/initrd.img".into()),
                    cmdline: microvm_cmdline(2445420, ""),
                }
            } else {
                Boot::Disk
            },
            disks: vec![Disk {
                id: "root".into(),
                path: dir.join("root.qcow2"),
                format: DiskFormat::Qcow2,
                read_only: false,
            }],
            nics: vec![Nic {
                id: "net0".into(),
                tap: "rp-3f0c7a52".into(),
                mac: "52:54:00:12:34:56".into(),
            }],
            config_drive: Some(dir.join("cidata.iso")),
            serial_log: dir.join("console.log"),
            qmp_socket: dir.join("qmp.sock"),
        }
    }

    #[track_caller]
    fn golden(name: &str, actual: &str) {
        rampart_common::testing::golden(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name),
            actual,
        );
    }

    fn one_per_line(argv: &[String]) -> String {
        argv.iter().map(|s| format!("{s}\n")).collect()
    }

    #[test]
    fn spec_11_1_microvm_argv_golden() {
        golden(
            "qemu-microvm.argv",
            &one_per_line(&render_argv(&demo_spec(Machine::Microvm)).unwrap()),
        );
    }

    #[test]
    fn spec_11_1_q35_argv_golden() {
        let mut s = demo_spec(Machine::Q35);
        s.accel = Accel::Kvm;
        golden("qemu-q35.argv", &one_per_line(&render_argv(&s).unwrap()));
    }

    #[test]
    fn spec_11_1_1_argv_has_sandbox_and_no_monitor_but_qmp() {
        for m in [Machine::Microvm, Machine::Q35] {
            let a = render_argv(&demo_spec(m)).unwrap();
            let joined = a.join(" ");
            assert!(joined.contains(&format!("-sandbox {SANDBOX}")));
            assert!(joined.contains("-nodefaults"));
            assert!(joined.contains("-monitor none"));
            // Exactly one monitor: the QMP one on the agent's unix socket. No TCP, no telnet,
            // no stdio, no VNC/SPICE.
            assert_eq!(a.iter().filter(|s| *s == "-mon").count(), 1);
            for forbidden in [
                "tcp:",
                "telnet",
                "stdio",
                "-vnc",
                "-spice",
                "-qmp",
                "user,",
                "-netdev user",
            ] {
                assert!(!joined.contains(forbidden), "{forbidden} in {joined}");
            }
        }
    }

    #[test]
    fn spec_12_1_1_every_tenant_drive_is_rendered_with_backing_null() {
        for m in [Machine::Microvm, Machine::Q35] {
            let mut s = demo_spec(m);
            s.disks.push(Disk {
                id: "data".into(),
                path: "/run/rampart/vms/x/data.raw".into(),
                format: DiskFormat::Raw,
                read_only: true,
            });
            let a = render_argv(&s).unwrap();
            assert!(!a.iter().any(|x| x == "-drive"), "legacy -drive in {a:?}");
            let nodes: Vec<serde_json::Value> = a
                .iter()
                .zip(a.iter().skip(1))
                .filter(|(flag, _)| *flag == "-blockdev")
                .map(|(_, v)| serde_json::from_str(v).unwrap())
                .collect();
            // Both disks and the config drive.
            assert_eq!(nodes.len(), 3, "{a:?}");
            for n in &nodes {
                // A format that can name a backing file gets an explicit null; raw has none
                // (and QEMU refuses the option for it).
                let expected = (n["driver"] != "raw").then_some(&serde_json::Value::Null);
                assert_eq!(n.get("backing"), expected, "{n}");
                assert_eq!(n["file"]["driver"], "file", "{n}");
            }
            assert_eq!(nodes[0]["driver"], "qcow2");
            assert_eq!(nodes[1]["read-only"], true);
            assert_eq!(nodes[2]["node-name"], "cidata");
        }
    }

    #[test]
    fn spec_11_4_option_injection_through_paths_and_names_is_refused() {
        let mut s = demo_spec(Machine::Microvm);
        s.disks[0].path = "/tmp/a.qcow2,file=/etc/shadow".into();
        assert!(render_argv(&s).is_err());
        let mut s = demo_spec(Machine::Microvm);
        s.disks[0].path = "relative.qcow2".into();
        assert!(render_argv(&s).is_err());
        let mut s = demo_spec(Machine::Microvm);
        s.nics[0].tap = "tap0,script=/bin/sh".into();
        assert!(render_argv(&s).is_err());
        let mut s = demo_spec(Machine::Microvm);
        s.nics[0].mac = "01:00:5e:00:00:01".into();
        assert!(render_argv(&s).is_err(), "multicast MAC");
        let mut s = demo_spec(Machine::Microvm);
        s.name = "Web 1".into();
        assert!(render_argv(&s).is_err());
        let mut s = demo_spec(Machine::Microvm);
        s.disks.push(s.disks[0].clone());
        assert!(render_argv(&s).is_err(), "duplicate disk id");
        let mut s = demo_spec(Machine::Microvm);
        s.boot = Boot::Disk;
        assert!(render_argv(&s).is_err(), "microvm cannot boot a disk");
    }

    #[test]
    fn spec_11_1_1_auto_picks_tcg_without_hardware_virtualization() {
        // The CI kind: /dev/kvm exists (a software virtualizer), no vmx/svm, no kvm_intel/amd.
        let ci =
            VirtFacts::from_cpuinfo_and_modules("flags\t\t: fpu vme de pse tsc msr sse sse2 hypervisor\n", &[], true);
        let mut probed = false;
        let d = choose_accel(AccelSetting::Auto, &ci, || {
            probed = true;
            true
        });
        assert_eq!(d.accel, Accel::Tcg);
        assert!(!probed, "no probe boot without hardware virtualization");

        let hw = VirtFacts::from_cpuinfo_and_modules("flags\t\t: fpu vmx sse\n", &["kvm_intel"], true);
        assert_eq!(choose_accel(AccelSetting::Auto, &hw, || true).accel, Accel::Kvm);
        assert_eq!(choose_accel(AccelSetting::Auto, &hw, || false).accel, Accel::Tcg);
        let no_dev = VirtFacts::from_cpuinfo_and_modules("flags\t\t: svm\n", &["kvm_amd"], false);
        assert_eq!(choose_accel(AccelSetting::Auto, &no_dev, || true).accel, Accel::Tcg);
        assert_eq!(choose_accel(AccelSetting::Tcg, &hw, || true).accel, Accel::Tcg);
        assert_eq!(choose_accel(AccelSetting::Kvm, &ci, || false).accel, Accel::Kvm);
    }

    /// A made-up host: `/proc/cpuinfo` with `flags`, the given `/sys/module` entries, and
    /// `/dev/kvm` when asked.
    fn fake_host(flags: &str, modules: &[&str], dev_kvm: bool) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("proc")).unwrap();
        std::fs::write(
            root.path().join("proc/cpuinfo"),
            format!("processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n"),
        )
        .unwrap();
        for m in modules {
            std::fs::create_dir_all(root.path().join("sys/module").join(m)).unwrap();
        }
        if dev_kvm {
            std::fs::create_dir_all(root.path().join("dev")).unwrap();
            std::fs::write(root.path().join("dev/kvm"), b"").unwrap();
        }
        root
    }

    #[test]
    fn spec_11_1_1_auto_picks_tcg_from_the_hosts_cpu_flags_both_ways() {
        let auto = |root: &tempfile::TempDir, probe_passes: bool| {
            let facts = VirtFacts::probe_root(root.path());
            let mut probed = false;
            let d = choose_accel(AccelSetting::Auto, &facts, || {
                probed = true;
                probe_passes
            });
            (facts, d.accel, probed)
        };
        // A software /dev/kvm without vmx/svm or a kvm_intel/kvm_amd module (the CI kind):
        // TCG, and no KVM probe boot at all.
        let software = fake_host("fpu vme de pse tsc msr sse sse2 hypervisor", &["kvm"], true);
        let (facts, accel, probed) = auto(&software, true);
        assert!(!facts.cpu_flag && !facts.hw_kvm_module && facts.dev_kvm, "{facts:?}");
        assert_eq!((accel, probed), (Accel::Tcg, false));
        // The same host with the flag and the module: KVM is a candidate, the probe decides.
        for (flags, module) in [("fpu vmx sse", "kvm_intel"), ("fpu svm sse", "kvm_amd")] {
            let hw = fake_host(flags, &[module], true);
            let (facts, accel, probed) = auto(&hw, true);
            assert!(facts.cpu_flag && facts.hw_kvm_module && facts.dev_kvm, "{facts:?}");
            assert_eq!((accel, probed), (Accel::Kvm, true), "{flags}");
            assert_eq!(auto(&hw, false).1, Accel::Tcg, "a failed probe boot stays on TCG");
        }
        // The flag alone is enough with /dev/kvm; without /dev/kvm nothing is.
        assert_eq!(auto(&fake_host("vmx", &[], true), true).1, Accel::Kvm);
        let (_, accel, probed) = auto(&fake_host("vmx", &["kvm_intel"], false), true);
        assert_eq!((accel, probed), (Accel::Tcg, false));
        // "vmx" must be a flag of its own, not part of another word.
        let (facts, _, _) = auto(&fake_host("fpu vmxfoo notsvm", &[], true), true);
        assert!(!facts.cpu_flag);
    }

    #[test]
    fn tsc_khz_is_read_from_cpuinfo() {
        assert_eq!(host_tsc_khz_from_cpuinfo("cpu MHz\t\t: 2445.420\n"), Some(2445420));
        assert_eq!(host_tsc_khz_from_cpuinfo("nothing"), None);
    }
}
