//! A real confined QEMU (TCG) running the demo guest, a real `local` pool with LUKS volumes:
//! hot-plug over QMP with the file handed over as a descriptor, what the guest sees, what the
//! pool holds, another VM's volume out of reach, and the unplug. Root only; the test cleans up
//! (VM processes, cgroups, directories) on every path and bounds every wait.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rampart_agent::attach;
use rampart_api::storage::{DesiredAttachment, Qos};
use rampart_common::Sensitive;
use rampart_common::testing::Need;
use rampart_compute::confine::Limits;
use rampart_compute::driver::{Hypervisor, ImageCheck, QemuDriver, QemuDriverConfig, StartRequest, verify_and_start};
use rampart_compute::image::{self, SignaturePolicy};
use rampart_compute::qemu::{self, Accel, Boot, Machine, VmSpec};
use rampart_compute::qmp::QmpClient;
use rampart_storage::{LocalBackend, LocalConfig, StorageBackend, VolumeSpec};
use uuid::Uuid;

const MARKER: &str = "RAMPART-BOOT-OK";
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

fn have(cmd: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn demo_image() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::env::var_os("RAMPART_DEMO_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("../../target/demo-image"));
    let st = std::process::Command::new(root.join("../rampart-compute/scripts/build-demo-image.sh"))
        .arg(&out)
        .status()
        .expect("running build-demo-image.sh");
    assert!(st.success(), "build-demo-image.sh failed");
    out
}

/// Kills the VM's processes and removes its cgroup and the test's directories, however the
/// test ends.
struct Cleanup {
    driver: Arc<QemuDriver>,
    vms: Vec<Uuid>,
    dirs: Vec<PathBuf>,
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
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// A run of `n` bytes equal to `byte` somewhere in `hay`.
fn has_run(hay: &[u8], byte: u8, n: usize) -> bool {
    let mut run = 0;
    for b in hay {
        run = if *b == byte { run + 1 } else { 0 };
        if run >= n {
            return true;
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_12_3_2_2_and_11_4_an_encrypted_volume_is_plugged_by_descriptor_into_a_running_vm_and_at_boot() {
    let needs = ["qemu-system-x86_64", "qemu-img", "setpriv", "unshare", "mknod"];
    let missing: Vec<_> = needs.iter().filter(|c| !have(c)).collect();
    let root = rampart_common::testing::is_root();
    if !rampart_common::testing::require(
        Need::Root,
        root && missing.is_empty(),
        &format!("root {root}, missing {missing:?}"),
    ) {
        return;
    }
    let tag = &Uuid::new_v4().simple().to_string()[..8];
    let base = std::env::temp_dir().join(format!("rampart-volqemu-{tag}"));
    let Ok(cfg) = QemuDriverConfig::new(base.join("vms")) else {
        rampart_common::testing::require(Need::Root, false, "no cgroup hierarchy");
        return;
    };
    let driver = Arc::new(QemuDriver::new(cfg));
    let mut cleanup = Cleanup {
        driver: driver.clone(),
        vms: vec![],
        dirs: vec![base.clone()],
    };

    // The pool, with this VM's volume and another VM's.
    let mut pcfg = LocalConfig::new(base.join("pool"));
    pcfg.luks_iter_time_ms = 10;
    pcfg.tool_timeout = Duration::from_secs(60);
    let pool = LocalBackend::open(pcfg).unwrap();
    let (mine, theirs) = (Uuid::new_v4(), Uuid::new_v4());
    let pw = Sensitive::new(format!("volume-passphrase-{tag}"));
    for (id, size) in [(mine, 96u64 << 20), (theirs, 64 << 20)] {
        let spec = VolumeSpec {
            id,
            size_bytes: size,
            encrypted: true,
            owner: None,
        };
        pool.create(&spec, Some(&pw)).unwrap();
    }

    // The demo guest on q35 (hot-plug ports), kernel messages on the console.
    let img = demo_image();
    let id = Uuid::new_v4();
    cleanup.vms.push(id);
    let (dir, uid) = driver.prepare_dir(id).unwrap();
    let kernel = driver.stage_image(id, &img.join("vmlinux"), "vmlinux").unwrap();
    let initrd = driver.stage_image(id, &img.join("initrd.img"), "initrd.img").unwrap();
    let checks: Vec<ImageCheck> = [&kernel, &initrd]
        .iter()
        .map(|p| ImageCheck {
            path: (*p).clone(),
            digest: image::sha256_file(p).unwrap().0,
            signature: None,
        })
        .collect();
    let tsc = qemu::host_tsc_khz().unwrap_or(2_000_000);
    let spec = VmSpec {
        id,
        name: format!("v{tag}"),
        vcpus: 1,
        memory_mib: 256,
        machine: Machine::Q35,
        accel: Accel::Tcg,
        boot: Boot::Kernel {
            kernel,
            initrd: Some(initrd),
            cmdline: qemu::microvm_cmdline(tsc, "rampart.sshd=0 loglevel=7"),
        },
        disks: vec![],
        nics: vec![],
        config_drive: None,
        serial_log: dir.join("console.log"),
        qmp_socket: dir.join("qmp.sock"),
    };
    let req = StartRequest {
        limits: Limits::for_flavor(1, 256, true, vec![]),
        spec: spec.clone(),
        netns: None,
        paused: false,
    };
    let (vm, _) = verify_and_start(&*driver, req, &checks, &[], SignaturePolicy::Off)
        .await
        .expect("start");
    assert_eq!(vm.uid, Some(uid));
    driver
        .wait_console(&spec.serial_log, MARKER, BOOT_TIMEOUT)
        .await
        .unwrap_or_else(|| {
            panic!(
                "no boot marker: {}",
                std::fs::read_to_string(&spec.serial_log).unwrap_or_default()
            )
        });
    let before = std::fs::read_to_string(&spec.serial_log).unwrap();

    // Hot-plug into the running guest.
    let want = DesiredAttachment {
        volume_id: mine,
        read_only: false,
        encrypted: true,
        qos: Qos::default(),
    };
    let mut qmp = QmpClient::connect(&spec.qmp_socket, Duration::from_secs(10))
        .await
        .unwrap();
    let ports: Vec<String> = (0..qemu::HOTPLUG_PORTS).map(|i| format!("hp{i}")).collect();
    attach::attach(&mut qmp, &pool, &want, uid, Some(&pw), &ports)
        .await
        .expect("attach");
    let short = attach::short_of(mine);
    let nodes = qmp.block_node_names().await.unwrap();
    assert!(nodes.contains(&format!("vol-{short}")), "{nodes:?}");
    // QEMU holds it through an fd set, never by its pool path.
    let blocks = qmp.execute("query-block", None).await.unwrap().to_string();
    assert!(blocks.contains("/dev/fdset/"), "{blocks}");
    assert!(!blocks.contains(&base.display().to_string()), "{blocks}");
    // 11.4: the file is the VM's while attached.
    let m = std::fs::metadata(pool.volume_path(mine)).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o777), (uid, 0o600));

    // The guest sees a new virtio disk of the volume's size (96 MiB = 196608 sectors).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let seen = loop {
        let now = std::fs::read_to_string(&spec.serial_log).unwrap_or_default();
        let new = &now[before.len().min(now.len())..];
        if let Some(l) = new.lines().find(|l| l.contains("virtio_blk") && l.contains("196608")) {
            break l.to_string();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the guest never saw the disk: {new}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("guest: {seen}");

    // 12.3.2-2: data written through the VM's node is not in the pool file in clear.
    let w = qmp
        .execute(
            "human-monitor-command",
            Some(serde_json::json!({"command-line": format!("qemu-io -d dev-{short} \"write -P 0x5a 0 1M\"")})),
        )
        .await
        .unwrap();
    assert!(!w.to_string().contains("error"), "{w}");
    let r = qmp
        .execute(
            "human-monitor-command",
            Some(serde_json::json!({"command-line": format!("qemu-io -d dev-{short} \"read -P 0x5a 0 1M\"")})),
        )
        .await
        .unwrap();
    assert!(!r.to_string().contains("Pattern verification failed"), "{r}");
    let _ = qmp
        .execute(
            "human-monitor-command",
            Some(serde_json::json!({"command-line": format!("qemu-io -d dev-{short} \"flush\"")})),
        )
        .await;
    let raw = std::fs::read(pool.volume_path(mine)).unwrap();
    assert!(raw.len() > 1 << 20, "the write reached the file");
    assert!(!has_run(&raw, 0x5a, 4096), "plaintext in the pool file");

    // 11.4: another VM's volume, by path, is out of this QEMU's reach.
    let other = pool.volume_path(theirs);
    let e = qmp
        .execute(
            "blockdev-add",
            Some(serde_json::json!({"driver": "file", "node-name": "steal", "filename": other})),
        )
        .await
        .expect_err("QEMU must not open another VM's volume");
    assert!(
        e.to_string().contains("No such file or directory") || e.to_string().contains("Permission denied"),
        "{e}"
    );

    // An agent restart: a new connection finds the attachment again from QEMU's node names.
    drop(qmp);
    let mut qmp = QmpClient::connect(&spec.qmp_socket, Duration::from_secs(10))
        .await
        .unwrap();
    let have_now = attach::attached(&mut qmp).await.unwrap();
    let (plug, unplug) = attach::diff(std::slice::from_ref(&want), &have_now);
    assert!(plug.is_empty() && unplug.is_empty(), "{have_now:?}");

    // Unplug: the guest lets go, the nodes and the fd set go, the file goes back to root.
    let (_, unplug) = attach::diff(&[], &have_now);
    assert_eq!(unplug, vec![short.clone()]);
    attach::detach(&mut qmp, &short, false).await.expect("detach");
    let nodes = qmp.block_node_names().await.unwrap();
    assert!(!nodes.iter().any(|n| n.contains(&short)), "{nodes:?}");
    let fdsets = qmp.execute("query-fdsets", None).await.unwrap();
    assert_eq!(fdsets, serde_json::json!([]), "fd set removed");
    pool.set_owner(mine, 0, 0).unwrap();
    assert_eq!(std::fs::metadata(pool.volume_path(mine)).unwrap().uid(), 0);
    // The volume is intact and still encrypted for the next attach.
    assert!(pool.info(mine).unwrap().encrypted);

    driver.destroy(id).await.unwrap();

    // At boot: a VM with volumes starts paused (`-S`), gets them, then runs: the guest finds
    // the disk before its init prints the marker.
    let id2 = Uuid::new_v4();
    cleanup.vms.push(id2);
    let (dir2, uid2) = driver.prepare_dir(id2).unwrap();
    let k2 = driver.stage_image(id2, &img.join("vmlinux"), "vmlinux").unwrap();
    let i2 = driver.stage_image(id2, &img.join("initrd.img"), "initrd.img").unwrap();
    let checks: Vec<ImageCheck> = [&k2, &i2]
        .iter()
        .map(|p| ImageCheck {
            path: (*p).clone(),
            digest: image::sha256_file(p).unwrap().0,
            signature: None,
        })
        .collect();
    let spec2 = VmSpec {
        id: id2,
        boot: Boot::Kernel {
            kernel: k2,
            initrd: Some(i2),
            cmdline: qemu::microvm_cmdline(tsc, "rampart.sshd=0 loglevel=7"),
        },
        serial_log: dir2.join("console.log"),
        qmp_socket: dir2.join("qmp.sock"),
        ..spec.clone()
    };
    let req = StartRequest {
        limits: Limits::for_flavor(1, 256, true, vec![]),
        spec: spec2.clone(),
        netns: None,
        paused: true,
    };
    verify_and_start(&*driver, req, &checks, &[], SignaturePolicy::Off)
        .await
        .expect("paused start");
    let mut qmp = QmpClient::connect(&spec2.qmp_socket, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(qmp.query_status().await.unwrap().status, "prelaunch");
    attach::attach(&mut qmp, &pool, &want, uid2, Some(&pw), &ports)
        .await
        .expect("attach before the guest runs");
    qmp.cont().await.unwrap();
    let console = driver
        .wait_console(&spec2.serial_log, MARKER, BOOT_TIMEOUT)
        .await
        .and_then(|_| std::fs::read_to_string(&spec2.serial_log).ok())
        .expect("boot marker");
    let disk = console.find("196608 512-byte").expect("the disk at boot");
    assert!(disk < console.find(MARKER).unwrap(), "seen before init finished");
    assert_eq!(std::fs::metadata(pool.volume_path(mine)).unwrap().uid(), uid2);
    driver.destroy(id2).await.unwrap();
    drop(cleanup);
}
