//! Compute end to end through the real binary (`rampart up`, as the README starts it): the
//! signed demo guest is uploaded through the API, an instance of it boots under TCG on the
//! local node's confined QEMU, its console shows the boot marker, its metrics arrive, and stop
//! and delete leave no QEMU process, cgroup or file behind. Root only: without root (or QEMU
//! and the jail's tools) the test says so and passes, unless RAMPART_TEST_REQUIRE_ROOT=1 (CI),
//! where it fails. Instances are created without ports: no packet leaves the machine.
//!
//! `RAMPART_BOOT_BENCH_RUNS=N` turns the boot part into the benchmark of
//! `scripts/bench-boot.sh` (N boots through the API, each timed from the create call to the
//! boot marker in the console the API serves, beside N bare `qemu-system-x86_64` boots of the
//! same kernel and initramfs with the same flags), written to `target/bench/boot-api.json`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rampart_api::Client;
use rampart_compute::confine::{CgroupLayout, VmCgroup, cgroup_name};
use rampart_compute::image::SigningKey;
use serde_json::{Value, json};
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_rampart");
const MARKER: &str = "RAMPART-BOOT-OK";
/// TCG boots take ~2.3 s alone and ~1.5× that under load; the first boot also downloads and
/// hashes the images on the node.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
const WAIT: Duration = Duration::from_secs(60);
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(600);

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn privileged(_test: &str) -> bool {
    let root = rampart_common::testing::is_root();
    let tools = [
        "qemu-system-x86_64",
        "genisoimage",
        "setpriv",
        "unshare",
        "mknod",
        "nsenter",
    ];
    let ok = root && tools.iter().all(|t| have(t));
    rampart_common::testing::require(
        rampart_common::testing::Need::Root,
        ok,
        &format!("needs root and {tools:?}"),
    )
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The demo guest (Debian packages only), built once into target/demo-image (or
/// `RAMPART_DEMO_IMAGE`), as the compute crate's privileged tests do.
fn demo_image() -> PathBuf {
    let out = std::env::var_os("RAMPART_DEMO_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/demo-image"));
    let st = Command::new(workspace().join("crates/rampart-compute/scripts/build-demo-image.sh"))
        .arg(&out)
        .status()
        .expect("running build-demo-image.sh");
    assert!(st.success(), "build-demo-image.sh failed");
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `rampart up` and everything its node started: on drop the process ends, then every QEMU
/// left in a VM cgroup of this run is killed, the cgroups and the VM state directory removed
/// (VMs outlive their agent by design, so a failed test must clean up after it).
struct Host {
    proc: Option<Child>,
    dir: tempfile::TempDir,
    vm_dir: PathBuf,
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
        let Ok(layout) = CgroupLayout::detect() else {
            return;
        };
        if let Ok(rd) = std::fs::read_dir(&self.vm_dir) {
            for e in rd.flatten() {
                let Some(id) = e.file_name().to_str().and_then(|s| s.parse::<Uuid>().ok()) else {
                    continue;
                };
                let cg = VmCgroup::locate(&layout, &cgroup_name(&id));
                for _ in 0..100 {
                    let pids = cg.pids();
                    if pids.is_empty() {
                        break;
                    }
                    for p in pids {
                        let _ = Command::new("kill").args(["-KILL", &p.to_string()]).status();
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = cg.remove();
            }
        }
        let _ = std::fs::remove_dir_all(&self.vm_dir);
    }
}

struct Cloud {
    host: Host,
    admin: Client,
    project: Uuid,
}

impl Cloud {
    async fn up() -> Cloud {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        // Outside the 0700 data directory: each VM uid must traverse to its own directory.
        let vm_dir = std::env::temp_dir().join(format!(
            "rampart-e2e-vms-{}",
            &Uuid::new_v4().simple().to_string()[..12]
        ));
        let config = dir.path().join("rampart.toml");
        std::fs::write(
            &config,
            format!(
                "[api]\nlisten = [\"127.0.0.1:{port}\"]\n[nodes]\nheartbeat_interval_s = 1\nheartbeat_timeout_s = 3\n\
                 [compute]\naccel = \"tcg\"\nvm_state_dir = \"{}\"\n",
                vm_dir.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let proc = Command::new(BIN)
            .args(["up", "--data-dir"])
            .arg(dir.path().join("data"))
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let url = format!("https://127.0.0.1:{port}");
        let data = dir.path().join("data");
        let host = Host {
            proc: Some(proc),
            dir,
            vm_dir,
        };
        let rampart_testkit::up::UpAdmin { admin, project, .. } =
            rampart_testkit::up::take_over(&url, &data, 1, "Compute-e2e-passphrase-9", Duration::from_secs(90)).await;
        Cloud { host, admin, project }
    }

    fn path(&self, rest: &str) -> String {
        format!("/v1/projects/{}/{rest}", self.project)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.host.dir.path().join("stderr.log")).unwrap_or_default()
    }

    async fn get(&self, rest: &str) -> Result<Value, rampart_api::ClientError> {
        self.admin.get(&self.path(rest)).await
    }

    async fn post(&self, rest: &str, body: Value) -> Value {
        self.admin
            .post(&self.path(rest), &body)
            .await
            .unwrap_or_else(|e| panic!("POST {rest} {body}: {e}"))
    }

    /// Registers an image signed by `key`, then streams its bytes; returns its id.
    async fn image(&self, key: &SigningKey, file: &Path, name: &str, mut meta: Value) -> String {
        let sig = key.sign_file(file).unwrap();
        meta["name"] = json!(name);
        meta["signature"] = json!(sig.signature);
        meta["signing_key"] = json!(sig.key_id);
        let created = self.post("images", meta).await;
        let id = created["id"].as_str().unwrap().to_string();
        let done: Value = self
            .admin
            .put_file(&self.path(&format!("images/{id}/data")), file, UPLOAD_TIMEOUT)
            .await
            .unwrap();
        assert_eq!(done["status"], "active", "{done}");
        assert_eq!(done["signature_verified"], true, "{done}");
        id
    }

    /// The signed demo kernel and initramfs and a 1-vCPU flavor; returns (kernel image, flavor).
    async fn demo(&self) -> (String, String) {
        let img = demo_image();
        let key = SigningKey::generate().unwrap();
        let _: Value = self
            .admin
            .post(
                "/v1/signing-keys",
                &json!({"name": "demo-release", "public_key": key.public_key().to_text()}),
            )
            .await
            .unwrap();
        let initrd = self
            .image(
                &key,
                &img.join("initrd.img"),
                "demo-initrd",
                json!({"disk_format": "initrd"}),
            )
            .await;
        let kernel = self
            .image(
                &key,
                &img.join("vmlinux"),
                "demo-kernel",
                // No SSH server: nothing can reach the guest without a port anyway.
                json!({"disk_format": "kernel", "ramdisk_image": initrd, "kernel_cmdline": "rampart.sshd=0"}),
            )
            .await;
        let flavor = format!("e2e-{}", &Uuid::new_v4().simple().to_string()[..8]);
        let _: Value = self
            .admin
            .post(
                "/v1/flavors",
                &json!({"name": flavor, "vcpus": 1, "memory_mib": 256, "root_disk_gib": 1}),
            )
            .await
            .unwrap();
        (kernel, flavor)
    }

    /// Creates an instance and waits for the boot marker in the console the API serves;
    /// returns the instance id and the time from the create call to the marker.
    async fn boot(&self, name: &str, kernel: &str, flavor: &str) -> (Uuid, Duration) {
        let t0 = Instant::now();
        let created = self
            .post("instances", json!({"name": name, "image": kernel, "flavor": flavor}))
            .await;
        let id: Uuid = created["id"].as_str().unwrap().parse().unwrap();
        loop {
            let c = self.get(&format!("instances/{id}/console")).await;
            if let Ok(c) = &c
                && c["output"].as_str().is_some_and(|o| o.contains(MARKER))
            {
                return (id, t0.elapsed());
            }
            if t0.elapsed() > BOOT_TIMEOUT {
                let i = self.get(&format!("instances/{id}")).await;
                let ev = self.get(&format!("instances/{id}/events")).await;
                panic!(
                    "no boot marker within {BOOT_TIMEOUT:?}: instance {i:?}, events {ev:?}, console {c:?}\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_status(&self, id: Uuid, want: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let i = self.get(&format!("instances/{id}")).await.unwrap();
            if i["status"] == want {
                return i;
            }
            assert!(Instant::now() < deadline, "instance not {want}: {i}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn delete(&self, id: Uuid) {
        self.admin
            .send::<()>(http::Method::DELETE, &self.path(&format!("instances/{id}")), None)
            .await
            .unwrap();
        let deadline = Instant::now() + WAIT;
        loop {
            match self.get(&format!("instances/{id}")).await {
                Err(e) if e.code() == Some("not_found") => return,
                other => assert!(Instant::now() < deadline, "instance not deleted: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn proc_status(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default()
}

fn p50(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// RSS of a process in bytes.
fn rss(pid: u32) -> u64 {
    proc_status(pid)
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// The same guest with the same flags, by hand: the floor Rampart's own overhead is measured
/// against. Returns the time from spawning QEMU to the marker on its serial console.
fn bare_qemu_boot(img: &Path, cmdline: &str, log_dir: &Path) -> Duration {
    let log = log_dir.join(format!("bare-{}.log", Uuid::new_v4().simple()));
    let t0 = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        // The machine and accelerator flags the driver renders (qemu::render_argv).
        .args(["-machine", "microvm,pic=off,pit=off,isa-serial=on,rtc=on"])
        .args(["-accel", "tcg,thread=multi,tb-size=256", "-smp", "1", "-m", "256"])
        .args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .arg("-kernel")
        .arg(img.join("vmlinux"))
        .arg("-initrd")
        .arg(img.join("initrd.img"))
        .args(["-append", cmdline])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64");
    let found = loop {
        if std::fs::read_to_string(&log).is_ok_and(|s| s.contains(MARKER)) {
            break Some(t0.elapsed());
        }
        if t0.elapsed() > BOOT_TIMEOUT {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&log);
    found.expect("bare QEMU boot: no marker")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_12_1_1_instance_created_through_the_api_boots_the_signed_demo_guest_under_tcg() {
    if !privileged("spec_12_1_1_instance_created_through_the_api_boots_the_signed_demo_guest_under_tcg") {
        return;
    }
    let cloud = Cloud::up().await;
    let (kernel, flavor) = cloud.demo().await;
    let runs: usize = std::env::var("RAMPART_BOOT_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);

    let (id, boot) = cloud.boot("demo-1", &kernel, &flavor).await;
    eprintln!(
        "BOOT api create → marker: {:.2} s (first boot: downloads and hashes the images)",
        boot.as_secs_f64()
    );
    let running = cloud.wait_status(id, "running").await;
    let uid = running["vm_uid"].as_u64().expect("vm_uid") as u32;
    assert_ne!(uid, 0);

    // The QEMU process: in its own cgroup, under the VM's uid, with the instance's files.
    let layout = CgroupLayout::detect().unwrap();
    let cg = VmCgroup::locate(&layout, &cgroup_name(&id));
    let pids = cg.pids();
    assert_eq!(pids.len(), 1, "one QEMU in the VM's cgroup: {pids:?}");
    let pid = pids[0];
    let status = proc_status(pid);
    assert!(status.starts_with("Name:\tqemu-system"), "{status}");
    let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uids.split_whitespace().skip(1).collect::<Vec<_>>(),
        vec![uid.to_string(); 4],
        "{uids}"
    );
    let vm_files = cloud.host.vm_dir.join(id.to_string());
    assert!(vm_files.join("console.log").exists());

    // 12.1-5: the node samples the VM and the API serves the rates.
    let deadline = Instant::now() + WAIT;
    let metrics = loop {
        let m = cloud.get(&format!("instances/{id}/metrics")).await.unwrap();
        if m["latest"]["memory_bytes"].as_u64().is_some_and(|b| b > 0)
            && m["latest"]["cpu_percent"].as_f64().is_some_and(|c| c > 0.0)
        {
            break m;
        }
        assert!(Instant::now() < deadline, "no metrics of the running guest: {m}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!("METRICS through the API: {}", metrics["latest"]);

    // Benchmark (scripts/bench-boot.sh): N more boots through the API beside N bare QEMU boots.
    if runs > 0 {
        let idle_rss = rss(pid);
        let idle_cgroup: u64 = cg
            .read(
                "memory",
                if cg.version == rampart_compute::confine::CgroupVersion::V2 {
                    "memory.current"
                } else {
                    "memory.usage_in_bytes"
                },
            )
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let img = demo_image();
        let cmdline = rampart_compute::qemu::microvm_cmdline(
            rampart_compute::qemu::host_tsc_khz().unwrap_or(2_000_000),
            "rampart.sshd=0",
        );
        let mut api = Vec::new();
        let mut bare = Vec::new();
        for n in 0..runs {
            let (b, t) = cloud.boot(&format!("bench-{n}"), &kernel, &flavor).await;
            api.push(t.as_secs_f64());
            cloud.delete(b).await;
            let cmd = cmdline.clone();
            let dir = cloud.host.dir.path().to_path_buf();
            let img2 = img.clone();
            let t = tokio::task::spawn_blocking(move || bare_qemu_boot(&img2, &cmd, &dir))
                .await
                .unwrap();
            bare.push(t.as_secs_f64());
            eprintln!("run {n}: api {:.2} s, bare {:.2} s", api[n], bare[n]);
        }
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let result = json!({
            "date": rampart_common::time::rfc3339(time::OffsetDateTime::now_utc()),
            "runs": runs,
            "api_create_to_marker_s": api,
            "bare_qemu_to_marker_s": bare,
            "p50_api_s": p50(api.clone()),
            "p50_bare_s": p50(bare.clone()),
            "idle_vm_qemu_rss_bytes": idle_rss,
            "idle_vm_cgroup_memory_bytes": idle_cgroup,
            "flavor": {"vcpus": 1, "memory_mib": 256},
            "accel": "tcg",
            "loadavg": load.trim(),
        });
        let out = workspace().join("target/bench");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(
            out.join("boot-api.json"),
            serde_json::to_string_pretty(&result).unwrap(),
        )
        .unwrap();
        eprintln!("BENCH {result}");
    }

    // Stop: the QEMU process and its cgroup are gone; the VM's files stay for the next start.
    let _: Value = cloud.post(&format!("instances/{id}/stop"), json!({})).await;
    cloud.wait_status(id, "stopped").await;
    assert!(cg.pids().is_empty(), "no QEMU after stop");
    assert!(!cg.exists(), "no cgroup after stop");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "QEMU {pid} gone"
    );

    // Delete: nothing of the VM stays on the host.
    cloud.delete(id).await;
    let deadline = Instant::now() + WAIT;
    while vm_files.exists() {
        assert!(Instant::now() < deadline, "{} left behind", vm_files.display());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!cg.exists());
}
