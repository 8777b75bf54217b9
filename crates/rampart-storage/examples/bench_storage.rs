//! Storage benchmark (scripts/bench-storage.sh): plain raw file vs a LUKS local volume through
//! QEMU's block layer (one `qemu-storage-daemon`, O_DIRECT, exporting both over NBD on a unix
//! socket; `qemu-img bench` at queue depth 16), in the same run and on the same filesystem; create-from-image and verified wipe time per GiB through the local backend.
//! Writes `{"date","load_avg","rows":[…]}` to `BENCH_OUT`.
//!
//! `qemu-img bench` has no random mode; "random 4 KiB" here strides through the volume by a
//! large odd number of 4 KiB blocks (wrapping modulo the size), so consecutive requests never
//! touch neighbouring blocks and caches cannot help. Both files are filled first so that reads
//! hit allocated, encrypted data.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use rampart_common::Sensitive;
use rampart_storage::backend::{StorageBackend, VolumeSpec};
use rampart_storage::proc;
use rampart_storage::{ImageFormat, LocalBackend, LocalConfig};
use serde_json::{Value, json};
use uuid::Uuid;

const GIB: u64 = 1 << 30;
const T: Duration = Duration::from_secs(3600);

fn qemu_img_bench(url: &str, write: bool, bs: u64, step: u64, count: u64) -> f64 {
    let mut cmd = Command::new("qemu-img");
    cmd.args(["bench", "-f", "raw", "-d", "16", "-c"])
        .arg(count.to_string())
        .arg("-s")
        .arg(bs.to_string())
        .arg("-S")
        .arg(step.to_string());
    if write {
        cmd.args(["-w", "--pattern=165"]);
    }
    cmd.arg(url);
    let out = proc::run(cmd, None, T).expect("qemu-img bench");
    // "Run completed in 3.141 seconds."
    out.stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("Run completed in ")?
                .strip_suffix(" seconds.")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no timing in {:?}", out.stdout))
}

/// One `qemu-storage-daemon` serving both files over NBD on a unix socket, the LUKS passphrase
/// on its standard input. `qemu-img bench` takes no `--object`, so it cannot open a LUKS volume
/// itself; both sides go through the same daemon so the comparison stays fair.
struct Daemon(std::process::Child);

impl Daemon {
    fn start(
        sock: &std::path::Path,
        raw: &std::path::Path,
        volume: &std::path::Path,
        ceph: Option<&std::path::Path>,
        pw: &Sensitive,
    ) -> Daemon {
        let node = |name: &str, driver: &str, file: &std::path::Path, luks: bool| {
            let mut n = json!({
                "driver": driver, "node-name": name, "cache": {"direct": true},
                "file": {"driver": "file", "filename": file, "aio": "threads", "cache": {"direct": true}},
            });
            if luks {
                n["encrypt"] = json!({"format": "luks", "key-secret": "s0"});
            }
            n.to_string()
        };
        let (reader, mut writer) = std::io::pipe().expect("pipe");
        std::io::Write::write_all(&mut writer, pw.expose().as_bytes()).expect("secret");
        drop(writer);
        let mut cmd = Command::new("qemu-storage-daemon");
        cmd.arg("--object")
            .arg(proc::secret_object_arg("s0"))
            .arg("--blockdev")
            .arg(node("plain", "raw", raw, false))
            .arg("--blockdev")
            .arg(node("luks", "qcow2", volume, true));
        // The Ceph volume: the same qcow2+LUKS over its rbd-fuse file, same passphrase.
        if let Some(c) = ceph {
            cmd.arg("--blockdev").arg(node("ceph", "qcow2", c, true));
        }
        cmd.arg("--nbd-server")
            .arg(format!("addr.type=unix,addr.path={}", sock.display()))
            .args(["--export", "type=nbd,id=e1,node-name=plain,name=plain,writable=on"])
            .args(["--export", "type=nbd,id=e2,node-name=luks,name=luks,writable=on"]);
        if ceph.is_some() {
            cmd.args(["--export", "type=nbd,id=e3,node-name=ceph,name=ceph,writable=on"]);
        }
        let child = cmd
            .stdin(std::process::Stdio::from(reader))
            .spawn()
            .expect("qemu-storage-daemon");
        let t = Instant::now();
        while !sock.exists() {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "qemu-storage-daemon did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon(child)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn load_avg() -> Vec<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .filter_map(|s| s.parse().ok())
        .collect()
}

fn main() {
    let out = PathBuf::from(std::env::var("BENCH_OUT").unwrap_or_else(|_| "target/bench/storage.json".into()));
    let gib: u64 = std::env::var("BENCH_GIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let base = std::env::var("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("target"));
    std::fs::create_dir_all(&base).expect("bench dir");
    let dir = tempfile::Builder::new()
        .prefix("bench-storage-")
        .tempdir_in(&base)
        .expect("temp dir");
    let size = gib * GIB;
    let load_before = load_avg();

    let mut cfg = LocalConfig::new(dir.path().join("pool"));
    // PBKDF time is paid once per open, not per I/O; keep the bench short.
    cfg.luks_iter_time_ms = 100;
    cfg.tool_timeout = T;
    let b = LocalBackend::open(cfg).expect("pool");
    let pw = Sensitive::new(hex_random());

    // The plain baseline: a preallocated raw file on the same filesystem.
    let raw = dir.path().join("plain.raw");
    let mut c = Command::new("qemu-img");
    c.args(["create", "-q", "-f", "raw", "-o", "preallocation=falloc"])
        .arg(&raw)
        .arg(size.to_string());
    proc::run(c, None, T).expect("raw file");

    // Create-from-image: a raw image of random bytes into an encrypted volume.
    let image = dir.path().join("image.raw");
    let mut c = Command::new("dd");
    c.args(["if=/dev/urandom", "bs=1M", "status=none"])
        .arg(format!("of={}", image.display()))
        .arg(format!("count={}", size >> 20));
    proc::run(c, None, T).expect("image");
    let spec = VolumeSpec {
        id: Uuid::new_v4(),
        size_bytes: size,
        encrypted: true,
        owner: None,
    };
    let t = Instant::now();
    let v = b
        .create_from_image(&spec, &image, ImageFormat::Raw, Some(&pw))
        .expect("create from image");
    let create_s = t.elapsed().as_secs_f64() / gib as f64;
    std::fs::remove_file(&image).ok();
    let ceph = CephBench::start(dir.path(), &pw);
    let sock = dir.path().join("nbd.sock");
    let daemon = Daemon::start(&sock, &raw, &v.path, ceph.as_ref().map(|c| c.path.as_path()), &pw);
    let url = |name: &str| format!("nbd+unix:///{name}?socket={}", sock.display());

    let mut rows: Vec<Value> = Vec::new();
    // Fill the raw file as the image filled the volume (and the Ceph volume likewise).
    qemu_img_bench(&url("plain"), true, 1 << 20, 1 << 20, size >> 20);
    if ceph.is_some() {
        qemu_img_bench(&url("ceph"), true, 1 << 20, 1 << 20, CEPH_SIZE >> 20);
    }
    let cases: [(&str, bool, u64, u64, u64); 4] = [
        ("seq_read_1m", false, 1 << 20, 1 << 20, size >> 20),
        ("seq_write_1m", true, 1 << 20, 1 << 20, size >> 20),
        // 4 KiB strided by 7919 blocks (a prime): scattered over the whole volume.
        ("rand_read_4k", false, 4096, 7919 * 4096, 50_000),
        ("rand_write_4k", true, 4096, 7919 * 4096, 50_000),
    ];
    for (name, write, bs, step, count) in cases {
        let r = qemu_img_bench(&url("plain"), write, bs, step, count);
        let l = qemu_img_bench(&url("luks"), write, bs, step, count);
        let (unit, rv, lv) = if bs >= 1 << 20 {
            (
                "MiB/s",
                (count * bs) as f64 / (1 << 20) as f64 / r,
                (count * bs) as f64 / (1 << 20) as f64 / l,
            )
        } else {
            ("IOPS", count as f64 / r, count as f64 / l)
        };
        let goal = if name.starts_with("seq") { 0.8 } else { 0.7 };
        rows.push(json!({"metric": format!("{name}_plain_raw"), "value": round(rv), "unit": unit, "goal": "baseline"}));
        rows.push(json!({
            "metric": format!("{name}_luks_local"), "value": round(lv), "unit": unit,
            "limit": round(rv), "ratio": round(lv / rv), "goal": format!(">= {goal} of plain raw"),
        }));
        if ceph.is_some() {
            // The Ceph volume is CEPH_SIZE (the test cluster's OSDs are 2 GiB files); fewer
            // scattered requests, the rate is per request all the same.
            let (ccount, cstep) = if bs >= 1 << 20 {
                (CEPH_SIZE >> 20, step)
            } else {
                (count / 10, step)
            };
            let cv = qemu_img_bench(&url("ceph"), write, bs, cstep, ccount);
            let value = if bs >= 1 << 20 {
                (ccount * bs) as f64 / (1 << 20) as f64 / cv
            } else {
                ccount as f64 / cv
            };
            rows.push(json!({
                "metric": format!("{name}_luks_ceph"), "value": round(value), "unit": unit,
                "limit": round(rv), "ratio": round(value / rv), "goal": "report (rbd-fuse, 2 replicas on one host)",
            }));
        }
    }
    drop(daemon);
    drop(ceph);
    rows.push(
        json!({"metric": "create_from_image_luks_local", "value": round(create_s), "unit": "s/GiB", "goal": "report"}),
    );

    let t = Instant::now();
    let report = b.wipe(v.id, "bench").expect("wipe");
    let wipe_s = t.elapsed().as_secs_f64() * GIB as f64 / report.bytes as f64;
    assert!(report.verified);
    b.release(v.id).expect("release");
    rows.push(json!({"metric": "wipe_verified_luks_local", "value": round(wipe_s), "unit": "s/GiB", "goal": "report", "bytes": report.bytes}));

    let load_after = load_avg();
    let doc = json!({
        "date": time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).expect("date"),
        "load_avg": load_after,
        "load_avg_before": load_before,
        "size_gib": gib,
        "rows": rows,
    });
    if let Some(p) = out.parent() {
        std::fs::create_dir_all(p).expect("out dir");
    }
    std::fs::write(&out, serde_json::to_string_pretty(&doc).expect("json") + "\n").expect("write result");
    println!("{}", serde_json::to_string_pretty(&doc).expect("json"));
    drop(dir);
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn hex_random() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("random");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Size of the Ceph bench volume.
const CEPH_SIZE: u64 = 256 << 20;

/// A Ceph volume in its own pool of the cluster `scripts/ci/start-ceph.sh` started
/// (`RAMPART_TEST_CEPH_CONF`, `RAMPART_TEST_CEPH_KEYRING`); none when those are unset.
struct CephBench {
    admin: rampart_storage::ceph::CephAdmin,
    pool: String,
    backend: rampart_storage::CephBackend,
    path: PathBuf,
}

impl CephBench {
    fn start(dir: &std::path::Path, pw: &Sensitive) -> Option<CephBench> {
        use rampart_storage::ceph;
        let conf = PathBuf::from(std::env::var_os("RAMPART_TEST_CEPH_CONF")?);
        let keyring = PathBuf::from(std::env::var_os("RAMPART_TEST_CEPH_KEYRING")?);
        let mon = std::fs::read_to_string(&conf)
            .expect("ceph conf")
            .lines()
            .find_map(|l| l.strip_prefix("mon host = v2:").map(|m| m.trim().parse().expect("mon")))
            .expect("mon host");
        let admin = ceph::CephAdmin {
            conf,
            id: "admin".into(),
            keyring,
            timeout: T,
        };
        let pool = format!("bench-{}", &Uuid::new_v4().simple().to_string()[..8]);
        ceph::create_pool(&admin, &pool, 2, 8).expect("bench pool");
        let kr = dir.join("bench.keyring");
        ceph::create_client(&admin, &pool, &pool, &kr).expect("bench user");
        let settings = rampart_storage::CephSettings {
            monitors: vec![mon],
            pool: pool.clone(),
            client_id: pool.clone(),
            keyring: kr,
            storage_network: "127.0.0.0/8".parse().expect("net"),
            storage_address: "127.0.0.1".parse().expect("addr"),
            storage_interface: None,
        };
        let mut cfg = rampart_storage::CephConfig::new(settings, dir.join("ceph"));
        cfg.luks_iter_time_ms = 100;
        let backend = rampart_storage::CephBackend::open(cfg).expect("ceph backend");
        let spec = VolumeSpec {
            id: Uuid::new_v4(),
            size_bytes: CEPH_SIZE,
            encrypted: true,
            owner: None,
        };
        let v = backend.create(&spec, Some(pw)).expect("ceph volume");
        let path = backend.open(v.id, false).expect("open").path.into();
        Some(CephBench {
            admin,
            pool,
            backend,
            path,
        })
    }
}

impl Drop for CephBench {
    fn drop(&mut self) {
        self.backend.unmount_all();
        let _ = rampart_storage::ceph::delete_pool(&self.admin, &self.pool);
        let _ = rampart_storage::ceph::delete_client(&self.admin, &self.pool);
    }
}
