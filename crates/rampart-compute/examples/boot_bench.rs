//! Boot benchmark (run as root by `scripts/bench-boot.sh`): the demo guest booted N times bare
//! (`qemu-system-x86_64` with the same fast microvm line, unconfined, no config drive) and N
//! times through Rampart's path (stage the signed image into the VM directory, re-hash and
//! verify it, write the config drive, confine, start, wait for the marker). Prints one JSON
//! document: p50/min/max seconds for both, Rampart's overhead, and the host memory of an idle
//! VM (QEMU RSS and the VM cgroup's charge).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rampart_compute::configdrive::{self, GuestConfig};
use rampart_compute::confine::Limits;
use rampart_compute::driver::{Hypervisor, ImageCheck, QemuDriver, QemuDriverConfig, StartRequest, verify_and_start};
use rampart_compute::image::{SignaturePolicy, SigningKey, TrustedKey};
use rampart_compute::qemu::{self, Accel, Boot, Machine, VmSpec};
use tokio::io::AsyncBufReadExt;
use uuid::Uuid;

const MARKER: &str = "RAMPART-BOOT-OK";

fn stats(mut v: Vec<f64>) -> serde_json::Value {
    v.sort_by(|a, b| a.total_cmp(b));
    serde_json::json!({"p50_s": v[v.len() / 2], "min_s": v[0], "max_s": v[v.len() - 1], "runs": v})
}

async fn bare(img: &Path, cmdline: &str) -> f64 {
    let t0 = Instant::now();
    let mut child = tokio::process::Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "microvm,pic=off,pit=off,isa-serial=on,rtc=on",
            "-accel",
            "tcg,thread=multi,tb-size=256",
        ])
        .args([
            "-smp",
            "1",
            "-m",
            "256",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .args(["-serial", "stdio", "-kernel"])
        .arg(img.join("vmlinux"))
        .arg("-initrd")
        .arg(img.join("initrd.img"))
        .args(["-append", cmdline])
        .stdout(std::process::Stdio::piped())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("qemu");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let found = tokio::time::timeout(Duration::from_secs(90), async {
        while let Ok(Some(l)) = lines.next_line().await {
            if l.contains(MARKER) {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    let t = t0.elapsed().as_secs_f64();
    let _ = child.kill().await;
    assert!(found, "bare boot printed no marker");
    t
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let img = PathBuf::from(args.get(1).expect("usage: boot_bench DEMO_IMAGE_DIR [RUNS]"));
    let runs: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    let tsc = qemu::host_tsc_khz().expect("TSC");
    let cmdline = qemu::microvm_cmdline(tsc, "rampart.sshd=0");

    let mut bare_t = vec![];
    for _ in 0..runs {
        bare_t.push(bare(&img, &cmdline).await);
    }

    let state = std::env::temp_dir().join(format!("rampart-bench-{}", &Uuid::new_v4().simple().to_string()[..8]));
    let driver = QemuDriver::new(QemuDriverConfig::new(state.clone()).expect("cgroups"));
    let key = SigningKey::generate().unwrap();
    let trusted = [TrustedKey::new(&key.public_key())];
    let sigs = [
        key.sign_file(&img.join("vmlinux")).unwrap(),
        key.sign_file(&img.join("initrd.img")).unwrap(),
    ];
    let mut ours = vec![];
    let (mut prep_t, mut start_t) = (vec![], vec![]);
    let mut memory = serde_json::Value::Null;
    for run in 0..runs {
        let id = Uuid::new_v4();
        let t0 = Instant::now();
        let (dir, _uid) = driver.prepare_dir(id).unwrap();
        let kernel = driver.stage_image(id, &img.join("vmlinux"), "vmlinux").unwrap();
        let initrd = driver.stage_image(id, &img.join("initrd.img"), "initrd.img").unwrap();
        let guest = GuestConfig {
            instance_id: id,
            hostname: "bench".into(),
            user: "rampart".into(),
            ssh_authorized_keys: vec![],
            password_hash: None,
            nics: vec![],
        };
        let cidata = dir.join("cidata.iso");
        configdrive::build_iso(&configdrive::render(&guest).unwrap(), &cidata).unwrap();
        let spec = VmSpec {
            id,
            name: "bench".into(),
            vcpus: 1,
            memory_mib: 256,
            machine: Machine::Microvm,
            accel: Accel::Tcg,
            boot: Boot::Kernel {
                kernel: kernel.clone(),
                initrd: Some(initrd.clone()),
                cmdline: cmdline.clone(),
            },
            disks: vec![],
            nics: vec![],
            config_drive: Some(cidata),
            serial_log: dir.join("console.log"),
            qmp_socket: dir.join("qmp.sock"),
        };
        let images = [
            ImageCheck {
                path: kernel,
                digest: sigs[0].digest,
                signature: Some(sigs[0].clone()),
            },
            ImageCheck {
                path: initrd,
                digest: sigs[1].digest,
                signature: Some(sigs[1].clone()),
            },
        ];
        prep_t.push(t0.elapsed().as_secs_f64());
        let req = StartRequest {
            limits: Limits::for_flavor(1, 256, true, vec![]),
            spec: spec.clone(),
            netns: None,
            paused: false,
        };
        let (vm, _) = verify_and_start(&driver, req, &images, &trusted, SignaturePolicy::Require)
            .await
            .expect("start");
        start_t.push(t0.elapsed().as_secs_f64());
        let line = driver
            .wait_console(&spec.serial_log, MARKER, Duration::from_secs(90))
            .await;
        let t = t0.elapsed().as_secs_f64();
        assert!(line.is_some(), "rampart boot printed no marker");
        ours.push(t);
        if run == runs - 1 {
            // Idle a little, then measure what the VM costs the host.
            tokio::time::sleep(Duration::from_secs(3)).await;
            let pid = vm.pid.unwrap();
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let rss_kib: u64 = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0);
            let (_, cg_bytes) = rampart_compute::monitor::read_cgroup(&driver.cgroup(id));
            memory = serde_json::json!({"guest_ram_mib": 256, "qemu_rss_mib": rss_kib as f64 / 1024.0,
                                        "cgroup_charge_mib": cg_bytes as f64 / 1048576.0});
        }
        driver.destroy(id).await.unwrap();
    }
    let _ = std::fs::remove_dir_all(&state);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let b = stats(bare_t);
    let o = stats(ours);
    let overhead = o["p50_s"].as_f64().unwrap() - b["p50_s"].as_f64().unwrap();
    let out = serde_json::json!({
        "benchmark": "demo guest boot to marker, microvm + PVH, TCG, 1 vCPU, 256 MiB",
        "bare_qemu": b,
        "rampart_driver": o,
        "rampart_overhead_p50_s": overhead,
        "rampart_phases_p50_s": {"staged_and_config_drive": stats(prep_t)["p50_s"], "verified_and_running": stats(start_t)["p50_s"]},
        "idle_vm_memory": memory,
        "host_loadavg": load.trim(),
        "qemu": String::from_utf8_lossy(&std::process::Command::new("qemu-system-x86_64").arg("--version").output().unwrap().stdout).lines().next().unwrap_or("").to_string(),
    });
    println!("{}", serde_json::to_string_pretty(&out).unwrap());
}
