//! Real QEMU, real cgroups, real uids. As root these run for real; otherwise they skip with a
//! note, and fail when `RAMPART_TEST_REQUIRE_ROOT=1`. Every test names its VMs uniquely,
//! cleans up on every path (guard with `Drop`: kill the VM's processes, remove its cgroups,
//! directories and namespaces) and bounds every wait. Guests get no network but taps inside
//! network namespaces the test creates.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rampart_common::Sensitive;
use rampart_common::testing::Need;
use rampart_compute::configdrive::{self, GuestConfig, NicConfig};
use rampart_compute::confine::{IoLimit, Limits, device_of};
use rampart_compute::driver::{
    DesiredPower, Hypervisor, ImageCheck, PowerAction, PowerState, QemuDriver, QemuDriverConfig, StartRequest,
    plan_power, verify_and_start,
};
use rampart_compute::image::{SignaturePolicy, SigningKey, TrustedKey};
use rampart_compute::qemu::{self, Accel, AccelSetting, Boot, Disk, DiskFormat, Machine, Nic, VmSpec};
use rampart_compute::qmp::QmpClient;
use uuid::Uuid;

const MARKER: &str = "RAMPART-BOOT-OK";
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

fn have(cmd: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// True when the test may run; otherwise prints why it skips (or panics when root is required).
fn privileged(_test: &str, needs: &[&str]) -> bool {
    let missing: Vec<&&str> = needs.iter().filter(|c| !have(c)).collect();
    let root = rampart_common::testing::is_root();
    let why = if !root {
        "not root".to_string()
    } else {
        format!("missing commands {missing:?}")
    };
    rampart_common::testing::require(Need::Root, root && missing.is_empty(), &why)
}

/// Boots share two cores with the rest of the machine: one at a time (an async lock: each
/// test has its own runtime, and the guard is held across awaits).
static BOOT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The demo guest, built once by the script (from Debian packages) into target/demo-image.
fn demo_image() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        // RAMPART_DEMO_IMAGE names a directory to build (or reuse) it in; by default the
        // workspace's target/demo-image.
        let out = std::env::var_os("RAMPART_DEMO_IMAGE")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("../../target/demo-image"));
        let st = std::process::Command::new(root.join("scripts/build-demo-image.sh"))
            .arg(&out)
            .status()
            .expect("running build-demo-image.sh");
        assert!(st.success(), "build-demo-image.sh failed");
        out
    })
    .clone()
}

/// Removes everything a test put on the host, whatever way the test ends.
struct Cleanup {
    driver: Arc<QemuDriver>,
    vms: Vec<Uuid>,
    netns: Vec<String>,
    state_dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for id in &self.vms {
            let cg = self.driver.cgroup(*id);
            for _ in 0..50 {
                let pids = cg.pids();
                if pids.is_empty() {
                    break;
                }
                for p in pids {
                    let _ = std::process::Command::new("kill")
                        .args(["-KILL", &p.to_string()])
                        .status();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = cg.remove();
        }
        for ns in &self.netns {
            let _ = std::process::Command::new("ip")
                .args(["netns", "pids", ns])
                .output()
                .map(|o| {
                    for p in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                        let _ = std::process::Command::new("kill").args(["-KILL", p]).status();
                    }
                });
            let _ = std::process::Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

fn new_driver(tag: &str) -> (Arc<QemuDriver>, Cleanup) {
    let state_dir = std::env::temp_dir().join(format!(
        "rampart-compute-{tag}-{}",
        &Uuid::new_v4().simple().to_string()[..8]
    ));
    let cfg = QemuDriverConfig::new(state_dir.clone()).expect("cgroups");
    let driver = Arc::new(QemuDriver::new(cfg));
    let c = Cleanup {
        driver: driver.clone(),
        vms: vec![],
        netns: vec![],
        state_dir,
    };
    (driver, c)
}

struct Staged {
    spec: VmSpec,
    images: Vec<ImageCheck>,
    uid: u32,
}

/// Prepares a VM directory with the demo kernel and initramfs staged in it, signed by `key`,
/// a config drive, and a 32 MiB raw data disk.
fn stage_demo_vm(
    driver: &QemuDriver,
    id: Uuid,
    key: &SigningKey,
    nics: Vec<Nic>,
    ssh_key: Option<String>,
    extra: &str,
) -> Staged {
    let img = demo_image();
    let (dir, uid) = driver.prepare_dir(id).unwrap();
    let kernel = driver.stage_image(id, &img.join("vmlinux"), "vmlinux").unwrap();
    let initrd = driver.stage_image(id, &img.join("initrd.img"), "initrd.img").unwrap();
    // Signatures are made over the published image (the source), and checked on the staged copy.
    let images = [
        (img.join("vmlinux"), kernel.clone()),
        (img.join("initrd.img"), initrd.clone()),
    ]
    .into_iter()
    .map(|(src, staged)| {
        let sig = key.sign_file(&src).unwrap();
        ImageCheck {
            path: staged,
            digest: sig.digest,
            signature: Some(sig),
        }
    })
    .collect();
    let guest = GuestConfig {
        instance_id: id,
        hostname: "demo".into(),
        user: "rampart".into(),
        ssh_authorized_keys: vec![ssh_key.unwrap_or_else(|| {
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOJmO8kU0gQ7wJ3yFf1Xx3x0m9J9a7v0cGQ1y9w8v7uZ test@rampart".into()
        })],
        password_hash: Some(configdrive::hash_guest_password(&Sensitive::new("not-a-real-password-42")).unwrap()),
        nics: nics
            .iter()
            .enumerate()
            .map(|(i, n)| NicConfig {
                name: format!("eth{i}"),
                mac: n.mac.clone(),
            })
            .collect(),
    };
    let cidata = dir.join("cidata.iso");
    configdrive::build_iso(&configdrive::render(&guest).unwrap(), &cidata).unwrap();
    let data = dir.join("data.raw");
    std::fs::File::create(&data).unwrap().set_len(32 << 20).unwrap();
    let tsc = qemu::host_tsc_khz().expect("host TSC kHz");
    let spec = VmSpec {
        id,
        name: format!("t{}", &id.simple().to_string()[..8]),
        vcpus: 1,
        memory_mib: 256,
        machine: Machine::Microvm,
        accel: Accel::Tcg,
        boot: Boot::Kernel {
            kernel,
            initrd: Some(initrd),
            cmdline: qemu::microvm_cmdline(tsc, extra),
        },
        disks: vec![Disk {
            id: "data".into(),
            path: data,
            format: DiskFormat::Raw,
            read_only: false,
        }],
        nics,
        config_drive: Some(cidata),
        serial_log: dir.join("console.log"),
        qmp_socket: dir.join("qmp.sock"),
    };
    Staged { spec, images, uid }
}

fn limits_for(spec: &VmSpec) -> Limits {
    let (major, minor) = device_of(spec.serial_log.parent().unwrap()).unwrap();
    Limits::for_flavor(
        spec.vcpus,
        spec.memory_mib,
        true,
        vec![IoLimit {
            major,
            minor,
            read_bps: Some(200 << 20),
            write_bps: Some(100 << 20),
            read_iops: None,
            write_iops: Some(5000),
        }],
    )
}

fn proc_status(pid: u32) -> BTreeMap<String, String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(':').map(|(k, v)| (k.to_string(), v.trim().to_string())))
        .collect()
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if let Ok(c) = std::fs::read(e.path().join("cmdline"))
            && String::from_utf8_lossy(&c).contains(needle)
        {
            out.push(pid);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_12_1_1_tampered_image_starts_no_qemu() {
    if !privileged(
        "spec_12_1_1_tampered_image_starts_no_qemu",
        &["qemu-system-x86_64", "genisoimage", "setpriv"],
    ) {
        return;
    }
    let (driver, mut cleanup) = new_driver("tamper");
    let key = SigningKey::generate().unwrap();
    let trusted = [TrustedKey::new(&key.public_key())];
    let rogue = SigningKey::generate().unwrap();

    for case in ["tampered", "untrusted", "unsigned"] {
        let id = Uuid::new_v4();
        cleanup.vms.push(id);
        let signer = if case == "untrusted" { &rogue } else { &key };
        let mut st = stage_demo_vm(&driver, id, signer, vec![], None, "");
        match case {
            "tampered" => {
                // One byte appended to the node's staged kernel after signing.
                let k = &st.images[0].path;
                let mut bytes = std::fs::read(k).unwrap();
                bytes.push(0);
                std::fs::write(k, bytes).unwrap();
            }
            "unsigned" => st.images.iter_mut().for_each(|i| i.signature = None),
            _ => {}
        }
        let req = StartRequest {
            limits: limits_for(&st.spec),
            spec: st.spec.clone(),
            netns: None,
            paused: false,
        };
        let e = verify_and_start(&*driver, req, &st.images, &trusted, SignaturePolicy::Require)
            .await
            .expect_err(case);
        assert_eq!(e.code(), "image_signature_invalid", "{case}: {e}");
        // No QEMU process, no cgroup, no console output: nothing was started.
        assert!(
            processes_mentioning(&id.to_string()).is_empty(),
            "{case}: a process exists for {id}"
        );
        assert!(!driver.cgroup(id).exists(), "{case}: cgroup created");
        assert!(!st.spec.serial_log.exists(), "{case}: console log exists");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_9_1_1f_qemu_runs_confined_and_the_demo_guest_reads_its_metadata() {
    if !privileged(
        "spec_9_1_1f_qemu_runs_confined_and_the_demo_guest_reads_its_metadata",
        &[
            "qemu-system-x86_64",
            "genisoimage",
            "setpriv",
            "unshare",
            "mknod",
            "nsenter",
        ],
    ) {
        return;
    }
    let _boot = BOOT.lock().await;
    let (driver, mut cleanup) = new_driver("confine");
    let key = SigningKey::generate().unwrap();
    let trusted = [TrustedKey::new(&key.public_key())];

    // Another VM's disk, owned by that VM's uid.
    let other = Uuid::new_v4();
    cleanup.vms.push(other);
    let (other_dir, other_uid) = driver.prepare_dir(other).unwrap();
    let other_disk = other_dir.join("root.raw");
    std::fs::write(&other_disk, b"tenant B secret data").unwrap();
    rampart_compute::confine::own_private(&other_disk, other_uid, other_uid).unwrap();

    let id = Uuid::new_v4();
    cleanup.vms.push(id);
    let st = stage_demo_vm(&driver, id, &key, vec![], None, "rampart.sshd=0");
    assert_ne!(st.uid, other_uid);
    let limits = limits_for(&st.spec);
    let req = StartRequest {
        limits: limits.clone(),
        spec: st.spec.clone(),
        netns: None,
        paused: false,
    };
    let t0 = Instant::now();
    let (vm, permits) = verify_and_start(&*driver, req, &st.images, &trusted, SignaturePolicy::Require)
        .await
        .expect("start");
    assert_eq!(permits.len(), 2);
    let line = driver
        .wait_console(&st.spec.serial_log, MARKER, BOOT_TIMEOUT)
        .await
        .unwrap_or_else(|| {
            panic!(
                "no boot marker; console: {}",
                std::fs::read_to_string(&st.spec.serial_log).unwrap_or_default()
            )
        });
    let boot = t0.elapsed();
    eprintln!("BOOT verify+start→marker: {:.2} s ({line})", boot.as_secs_f64());

    // 12.1-2: the guest read its config drive.
    assert!(line.contains(&format!("instance-id={id}")), "{line}");
    assert!(line.contains("metadata=yes") && line.contains("ssh_keys=1"), "{line}");
    assert!(driver.console_tail(id, 4096).unwrap().contains(MARKER));

    // 9.1-1f, 11.1-2: QEMU runs as the VM's uid, no groups, no capabilities, no_new_privs, seccomp.
    let pid = vm.pid.unwrap();
    let s = proc_status(pid);
    assert!(s["Name"].starts_with("qemu-system"), "{s:?}");
    let uids: Vec<&str> = s["Uid"].split_whitespace().collect();
    assert_eq!(uids, vec![st.uid.to_string(); 4], "real, effective, saved, fs uid");
    assert_ne!(st.uid, 0);
    assert_eq!(s["Gid"].split_whitespace().next().unwrap(), st.uid.to_string());
    assert_eq!(s["Groups"], "");
    assert_eq!(s["CapEff"], "0000000000000000");
    assert_eq!(s["CapBnd"], "0000000000000000");
    assert_eq!(s["NoNewPrivs"], "1");
    assert_eq!(s["Seccomp"], "2", "-sandbox on installs a seccomp filter");
    // Its own mount namespace.
    assert_ne!(
        std::fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap(),
        std::fs::read_link("/proc/self/ns/mnt").unwrap()
    );

    // 11.2, 11.4: its own cgroup, with the limits.
    let cg = driver.cgroup(id);
    assert_eq!(cg.pids(), vec![pid]);
    let own_cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(own_cgroups.contains(&format!("rampart-vm-{id}")), "{own_cgroups}");
    match cg.version {
        rampart_compute::confine::CgroupVersion::V1 => {
            assert_eq!(
                cg.read("memory", "memory.limit_in_bytes").unwrap(),
                limits.memory_max_bytes.to_string()
            );
            assert_eq!(
                cg.read("cpu", "cpu.cfs_quota_us").unwrap(),
                limits.cpu_quota_us.to_string()
            );
            let (maj, min) = (limits.io[0].major, limits.io[0].minor);
            assert_eq!(
                cg.read("blkio", "blkio.throttle.write_bps_device").unwrap(),
                format!("{maj}:{min} {}", 100 << 20)
            );
            assert_eq!(cg.read("pids", "pids.max").unwrap(), "256");
        }
        rampart_compute::confine::CgroupVersion::V2 => {
            assert_eq!(
                cg.read("memory", "memory.max").unwrap(),
                limits.memory_max_bytes.to_string()
            );
            assert_eq!(
                cg.read("cpu", "cpu.max").unwrap(),
                format!("{} 100000", limits.cpu_quota_us)
            );
            assert!(cg.read("io", "io.max").unwrap().contains("wbps=104857600"));
        }
    }

    // 11.4: the VM's files are its own, 0600; QEMU itself cannot open another VM's disk.
    for f in [&st.spec.disks[0].path, st.spec.config_drive.as_ref().unwrap()] {
        let m = std::fs::metadata(f).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!((m.uid(), m.mode() & 0o777), (st.uid, 0o600), "{}", f.display());
    }
    let mut qmp = QmpClient::connect(&st.spec.qmp_socket, Duration::from_secs(5))
        .await
        .unwrap();
    let e = qmp
        .execute(
            "blockdev-add",
            Some(serde_json::json!({"driver": "raw", "node-name": "steal", "file": {"driver": "file", "filename": other_disk}})),
        )
        .await
        .expect_err("QEMU must not open another VM's disk");
    // Hidden by the jail's mount namespace (and, below, refused by its uid anyway).
    assert!(e.to_string().contains("No such file or directory"), "{e}");
    let seen = std::process::Command::new("nsenter")
        .arg(format!("--mount=/proc/{pid}/ns/mnt"))
        .arg("ls")
        .arg(&driver.config().state_dir)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&seen.stdout).trim(),
        id.to_string(),
        "QEMU sees only its own VM dir"
    );
    // Outside the jail, the VM uid cannot read it either (0600, another uid, 0700 directory).
    let out = std::process::Command::new("setpriv")
        .args([
            format!("--reuid={}", st.uid),
            format!("--regid={}", st.uid),
            "--clear-groups".into(),
            "cat".into(),
        ])
        .arg(&other_disk)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("secret"));

    // 12.1-5: the guest's reads of its config drive show in QMP blockstats.
    let stats = qmp.query_blockstats().await.unwrap();
    let cid = stats
        .iter()
        .find(|b| b.device == "cidata")
        .unwrap_or_else(|| panic!("{stats:?}"));
    assert!(cid.rd_bytes > 0, "{stats:?}");
    let (cpu_ns, mem) = rampart_compute::monitor::read_cgroup(&cg);
    assert!(cpu_ns > 0 && mem > 0, "cgroup counters {cpu_ns} {mem}");
    // The agent's sampler: two samples a second apart give non-zero CPU and memory and the
    // config drive's reads (QMP serves one client at a time: ours lets go first).
    drop(qmp);
    let at = |t: Instant| 1_000_000 + t.duration_since(t0).as_millis() as i64;
    let a = driver
        .sample(id, at(Instant::now()), &[])
        .await
        .expect("a sample of a running VM");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let b = driver
        .sample(id, at(Instant::now()), &[])
        .await
        .expect("a sample of a running VM");
    assert!(
        a.disk_read_bytes > 0 && b.disk_read_bytes >= a.disk_read_bytes,
        "{a:?} {b:?}"
    );
    let m = rampart_compute::monitor::rates(&a, &b).unwrap();
    assert!(m.cpu_percent > 0.0 && m.memory_bytes > 0, "{m:?}");
    eprintln!(
        "METRICS idle guest: cpu {:.1} %, memory {} MiB",
        m.cpu_percent,
        m.memory_bytes >> 20
    );

    // Agent restart: a fresh driver on the same state finds the VM running (re-adoption).
    let again = QemuDriver::new(driver.config().clone());
    let obs = again.observe().await.unwrap();
    let me = obs.iter().find(|o| o.id == id).expect("re-adopted");
    assert_eq!((me.state, me.pid), (PowerState::Running, Some(pid)));
    let desired = BTreeMap::from([(id, DesiredPower::Running), (other, DesiredPower::Stopped)]);
    assert!(
        plan_power(&desired, &obs, &BTreeSet::from([id]))
            .iter()
            .all(|a| !matches!(a, PowerAction::Start(_)))
    );

    // The VM dies without being asked: observed stopped, planned as crashed (not restarted).
    std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cg.pids().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let obs = again.observe().await.unwrap();
    assert_eq!(obs.iter().find(|o| o.id == id).unwrap().state, PowerState::Stopped);
    assert_eq!(
        plan_power(&desired, &obs, &BTreeSet::from([id])),
        [PowerAction::ReportCrashed(id)]
    );
    driver.destroy(id).await.unwrap();
    assert!(!cg.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_11_1_1_auto_accel_picks_tcg_here_and_the_kvm_probe_is_bounded() {
    if !privileged(
        "spec_11_1_1_auto_accel_picks_tcg_here_and_the_kvm_probe_is_bounded",
        &["qemu-system-x86_64"],
    ) {
        return;
    }
    let facts = qemu::VirtFacts::probe();
    let d = qemu::choose_accel(AccelSetting::Auto, &facts, || true);
    eprintln!("accel auto → {} ({})", d.accel, d.reason);
    if facts.hardware_virtualization() {
        eprintln!("host has hardware virtualization; the emulated-KVM case is not reproducible here");
        return;
    }
    assert_eq!(d.accel, Accel::Tcg);
    if !Path::new("/dev/kvm").exists() {
        return;
    }
    // The probe itself, forced on this emulated /dev/kvm: it must fail, within its bound.
    let _boot = BOOT.lock().await;
    let img = demo_image();
    let t0 = Instant::now();
    let ok = qemu::kvm_probe_boot(
        Path::new("/usr/bin/qemu-system-x86_64"),
        &img.join("vmlinux"),
        &img.join("initrd.img"),
        qemu::host_tsc_khz().unwrap(),
        MARKER,
        Duration::from_secs(8),
    )
    .await;
    assert!(!ok, "the KVM probe must not pass on a software /dev/kvm");
    assert!(t0.elapsed() < Duration::from_secs(12), "probe took {:?}", t0.elapsed());
}

/// The QMP client against a real QEMU (no guest, paused at start): greeting, capabilities,
/// status, resume, events, powerdown, quit. Needs no privilege.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qmp_client_drives_a_real_qemu() {
    if !rampart_common::testing::require(
        Need::Root,
        have("qemu-system-x86_64"),
        "missing commands [\"qemu-system-x86_64\"]",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("qmp.sock");
    let mut child = tokio::process::Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "q35",
            "-accel",
            "tcg",
            "-m",
            "64",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-S",
        ])
        .args(["-sandbox", qemu::SANDBOX])
        .arg("-chardev")
        .arg(format!("socket,id=qmp,path={},server=on,wait=off", sock.display()))
        .args(["-mon", "chardev=qmp,mode=control"])
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut c = QmpClient::connect_retry(&sock, Duration::from_secs(10)).await.unwrap();
    assert!(c.version.starts_with(char::is_numeric), "{}", c.version);
    let st = c.query_status().await.unwrap();
    assert!(!st.running);
    assert_eq!(st.status, "prelaunch");
    c.cont().await.unwrap();
    assert!(c.wait_event("RESUME", Duration::from_secs(5)).await.unwrap().is_some());
    assert!(c.query_status().await.unwrap().running);
    c.system_powerdown().await.unwrap();
    assert!(
        c.wait_event("POWERDOWN", Duration::from_secs(5))
            .await
            .unwrap()
            .is_some()
    );
    c.quit().await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}

fn run(cmd: &[&str]) -> std::process::Output {
    let out = std::process::Command::new(cmd[0]).args(&cmd[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The whole tenant path on one node, in a network namespace of the test's own: DHCP gives the
/// guest the port's address (static lease), the injected key logs in over SSH (12.1-2), and a
/// disk write of known size shows in the metrics within 10 % (12.1-5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_12_1_2_guest_gets_its_address_and_accepts_the_injected_ssh_key() {
    if !privileged(
        "spec_12_1_2_guest_gets_its_address_and_accepts_the_injected_ssh_key",
        &[
            "qemu-system-x86_64",
            "genisoimage",
            "setpriv",
            "ip",
            "busybox",
            "ssh",
            "ssh-keygen",
        ],
    ) {
        return;
    }
    let _boot = BOOT.lock().await;
    let (driver, mut cleanup) = new_driver("ssh");
    let key = SigningKey::generate().unwrap();
    let trusted = [TrustedKey::new(&key.public_key())];
    let tag = &Uuid::new_v4().simple().to_string()[..8];
    let ns = format!("rc-{tag}");
    let tap = format!("rt{tag}");
    run(&["ip", "netns", "add", &ns]);
    cleanup.netns.push(ns.clone());

    let id = Uuid::new_v4();
    cleanup.vms.push(id);
    let (dir, uid) = driver.prepare_dir(id).unwrap();
    let uid_s = uid.to_string();
    // The tap belongs to the VM's uid, as the network driver will create it.
    run(&[
        "ip", "-n", &ns, "tuntap", "add", "dev", &tap, "mode", "tap", "user", &uid_s, "group", &uid_s,
    ]);
    run(&["ip", "-n", &ns, "addr", "add", "192.0.2.1/24", "dev", &tap]);
    run(&["ip", "-n", &ns, "link", "set", &tap, "up"]);
    let mac = "52:54:00:c0:00:0f";
    let work = tempfile::tempdir().unwrap();
    let conf = work.path().join("udhcpd.conf");
    std::fs::write(
        &conf,
        format!(
            "interface {tap}\nstart 192.0.2.100\nend 192.0.2.110\nlease_file {}\noption subnet 255.255.255.0\nstatic_lease {mac} 192.0.2.15\n",
            work.path().join("leases").display()
        ),
    )
    .unwrap();
    std::fs::write(work.path().join("leases"), b"").unwrap();
    let _dhcpd = tokio::process::Command::new("ip")
        .args(["netns", "exec", &ns, "busybox", "udhcpd", "-f"])
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let ssh_key = work.path().join("id_ed25519");
    run(&[
        "ssh-keygen",
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-C",
        "tenant@test",
        "-f",
        ssh_key.to_str().unwrap(),
    ]);
    let pubkey = std::fs::read_to_string(ssh_key.with_extension("pub"))
        .unwrap()
        .trim()
        .to_string();

    let nic = Nic {
        id: "net0".into(),
        tap: tap.clone(),
        mac: mac.into(),
    };
    let st = stage_demo_vm(&driver, id, &key, vec![nic], Some(pubkey), "");
    assert_eq!(st.uid, uid);
    assert_eq!(st.spec.serial_log.parent().unwrap(), dir);
    let req = StartRequest {
        limits: limits_for(&st.spec),
        spec: st.spec.clone(),
        netns: Some(ns.clone()),
        paused: false,
    };
    let t0 = Instant::now();
    verify_and_start(&*driver, req, &st.images, &trusted, SignaturePolicy::Require)
        .await
        .expect("start");
    let line = driver
        .wait_console(&st.spec.serial_log, MARKER, BOOT_TIMEOUT)
        .await
        .unwrap_or_else(|| {
            panic!(
                "no marker: {}",
                std::fs::read_to_string(&st.spec.serial_log).unwrap_or_default()
            )
        });
    eprintln!("BOOT with NIC + DHCP: {:.2} s ({line})", t0.elapsed().as_secs_f64());
    assert!(line.contains("ip=192.0.2.15"), "the port's address by DHCP: {line}");

    let ssh = |remote: &str| {
        std::process::Command::new("ip")
            .args(["netns", "exec", &ns, "ssh", "-i"])
            .arg(&ssh_key)
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=10",
                "-o",
                "LogLevel=ERROR",
                "rampart@192.0.2.15",
                remote,
            ])
            .output()
            .unwrap()
    };
    let mut who = None;
    for _ in 0..10 {
        let out = ssh("id -u");
        if out.status.success() {
            who = Some(String::from_utf8_lossy(&out.stdout).trim().to_string());
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(who.as_deref(), Some("1000"), "SSH login with the injected key");
    // A key that was not injected is refused.
    let stranger = work.path().join("stranger");
    run(&[
        "ssh-keygen",
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-f",
        stranger.to_str().unwrap(),
    ]);
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &ns, "ssh", "-i"])
        .arg(&stranger)
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            "rampart@192.0.2.15",
            "true",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a stranger's key must not log in");

    // 12.1-5: the SSH sessions went through the tap, which the agent's sampler reads in QEMU's
    // own network namespace: both directions counted.
    let net = driver
        .sample(id, 1, std::slice::from_ref(&tap))
        .await
        .expect("a sample");
    assert!(net.net_rx_bytes > 0 && net.net_tx_bytes > 0, "{net:?}");
    assert!(net.net_rx_packets > 0 && net.net_tx_packets > 0, "{net:?}");

    // 12.1-5: a 16 MiB write inside the guest shows in the disk metrics within 10 %.
    let mut qmp = QmpClient::connect(&st.spec.qmp_socket, Duration::from_secs(5))
        .await
        .unwrap();
    let cg = driver.cgroup(id);
    let sample = |blocks: &[rampart_compute::qmp::BlockStats]| {
        let tap_stats = rampart_compute::monitor::read_tap(Path::new("/nonexistent"));
        rampart_compute::monitor::assemble(
            rampart_common::time::to_ms(rampart_common::time::Timestamp::now_utc()),
            rampart_compute::monitor::read_cgroup(&cg),
            &blocks
                .iter()
                .filter(|b| b.device == "data")
                .cloned()
                .collect::<Vec<_>>(),
            &[tap_stats],
        )
    };
    let before = sample(&qmp.query_blockstats().await.unwrap());
    let out = ssh(
        "for d in /sys/block/vd*; do [ \"$(cat $d/serial)\" = data ] && dd if=/dev/zero of=/dev/${d##*/} bs=1M count=16 conv=fsync 2>&1; done; true",
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let after = sample(&qmp.query_blockstats().await.unwrap());
    let m = rampart_compute::monitor::rates(&before, &after).unwrap();
    let written = after.disk_write_bytes - before.disk_write_bytes;
    let want = 16u64 << 20;
    assert!(
        written.abs_diff(want) * 10 <= want,
        "disk write metric {written} vs {want} ({})",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(m.disk_write_bps > 0.0 && m.cpu_percent > 0.0, "{m:?}");
    eprintln!("METRICS after a 16 MiB write: wrote {written} bytes, {m:?}");

    // Graceful stop path: powerdown (microvm has no ACPI, so QEMU is ended after the grace).
    drop(qmp);
    driver.stop(id, Duration::from_secs(2)).await.unwrap();
    assert!(cg.pids().is_empty());
    assert!(!cg.exists());
}

/// A qcow2 disk rendered by `render_argv` is opened by a real QEMU as qcow2: QMP shows the
/// node's driver `qcow2` and the image's virtual size (64 MiB), not the container file's few
/// hundred KiB a raw driver would show the guest, and no backing file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_12_1_1_a_qcow2_disk_is_opened_by_qemu_as_qcow2() {
    if !privileged(
        "spec_12_1_1_a_qcow2_disk_is_opened_by_qemu_as_qcow2",
        &["qemu-system-x86_64", "qemu-img"],
    ) {
        return;
    }
    // Not tmpfs: the drive asks for O_DIRECT.
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let disk = dir.path().join("root.qcow2");
    run(&["qemu-img", "create", "-q", "-f", "qcow2", disk.to_str().unwrap(), "64M"]);
    let file_size = std::fs::metadata(&disk).unwrap().len();
    assert!(file_size < 1 << 20, "{file_size}");
    let id = Uuid::new_v4();
    let spec = VmSpec {
        id,
        name: format!("q{}", &id.simple().to_string()[..8]),
        vcpus: 1,
        memory_mib: 64,
        machine: Machine::Q35,
        accel: Accel::Tcg,
        boot: Boot::Disk,
        disks: vec![Disk {
            id: "root".into(),
            path: disk.clone(),
            format: DiskFormat::Qcow2,
            read_only: false,
        }],
        nics: vec![],
        config_drive: None,
        serial_log: dir.path().join("console.log"),
        qmp_socket: dir.path().join("qmp.sock"),
    };
    let argv = qemu::render_argv(&spec).unwrap();
    // Paused before the firmware runs: the block graph is what is under test.
    let mut child = tokio::process::Command::new("qemu-system-x86_64")
        .args(&argv)
        .arg("-S")
        .kill_on_drop(true)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut c = match QmpClient::connect_retry(&spec.qmp_socket, Duration::from_secs(20)).await {
        Ok(c) => c,
        Err(e) => {
            let _ = child.start_kill();
            let out = child.wait_with_output().await.unwrap();
            panic!("QEMU did not start ({e}): {}", String::from_utf8_lossy(&out.stderr));
        }
    };
    let nodes = c.execute("query-named-block-nodes", None).await.unwrap();
    let root = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node-name"] == "root")
        .unwrap_or_else(|| panic!("no node root: {nodes:#}"))
        .clone();
    assert_eq!(root["drv"], "qcow2", "{root:#}");
    assert_eq!(root["image"]["format"], "qcow2", "{root:#}");
    assert_eq!(root["image"]["virtual-size"], 64 << 20, "{root:#}");
    assert_eq!(root["backing_file_depth"], 0, "{root:#}");
    assert!(root["image"].get("backing-filename").is_none(), "{root:#}");
    c.quit().await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}
