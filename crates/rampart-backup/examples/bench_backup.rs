//! Volume backup throughput (`scripts/bench-backup.sh`): a LUKS local volume of `BENCH_GIB` GiB
//! (default 1) full of random bytes, backed up through the FUSE export into a fresh restic
//! repository (full), again after 1 % changed (incremental), restored into a new volume; and,
//! in the same run, `restic backup --stdin` of the same raw bytes read from a plain file (the
//! baseline without QEMU). Writes `{"date","load_avg","rows":[…]}` to `BENCH_OUT`.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rampart_backup::export::Export;
use rampart_backup::plan::{Location, Repository};
use rampart_backup::restic::Restic;
use rampart_common::Sensitive;
use rampart_storage::backend::{StorageBackend, VolumeSpec};
use rampart_storage::{LocalBackend, LocalConfig};
use serde_json::{Value, json};
use uuid::Uuid;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const T: Duration = Duration::from_secs(3600);

fn load_avg() -> Vec<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .filter_map(|s| s.parse().ok())
        .collect()
}

fn random(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut v))
        .expect("urandom");
    v
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn main() {
    let out = PathBuf::from(std::env::var("BENCH_OUT").unwrap_or_else(|_| "target/bench/backup.json".into()));
    let gib: u64 = std::env::var("BENCH_GIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let base = std::env::var("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("target"));
    std::fs::create_dir_all(&base).expect("bench dir");
    let dir = tempfile::Builder::new()
        .prefix("bench-backup-")
        .tempdir_in(&base)
        .expect("temp dir");
    let size = gib * GIB;
    let load_before = load_avg();
    let mut cfg = LocalConfig::new(dir.path().join("pool"));
    cfg.luks_iter_time_ms = 100;
    cfg.tool_timeout = T;
    let pool = LocalBackend::open(cfg).expect("pool");
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).expect("work dir");
    let pass = Sensitive::new("bench-volume-passphrase");
    let spec = |id| VolumeSpec {
        id,
        size_bytes: size,
        encrypted: true,
        owner: None,
    };
    let vol = Uuid::new_v4();
    pool.create(&spec(vol), Some(&pass)).expect("volume");
    let export = |id: Uuid, writable: bool| {
        Export::open(&pool.volume_path(id), Some(&pass), writable, &work, T).expect("export")
    };
    {
        let e = export(vol, true);
        let mut w = e.open_write().expect("write");
        for _ in 0..size / (16 * MIB) {
            w.write_all(&random((16 * MIB) as usize)).expect("fill");
        }
        drop(w);
        e.close().expect("close");
    }
    let project = Uuid::new_v4();
    let repo = |name: &str| {
        let mut r = Restic::new(
            Repository::new(
                Location::Local {
                    path: dir.path().join(name),
                },
                project,
            ),
            Sensitive::new("bench-repository-password"),
        );
        r.timeout = T;
        r.cache_dir = Some(dir.path().join("cache"));
        r.ensure(None).expect("init");
        r
    };
    let mbs = |t: Duration| size as f64 / MIB as f64 / t.as_secs_f64();
    let primary = repo("repo");
    let backup = |id: Uuid| {
        let t = Instant::now();
        let e = export(vol, false);
        let s = primary.backup(e.open_read().expect("read"), id, vol).expect("backup");
        e.close().expect("close");
        (t.elapsed(), s)
    };
    let full_id = Uuid::new_v4();
    let (full_t, full) = backup(full_id);
    {
        let e = export(vol, true);
        let mut w = e.open_write().expect("write");
        w.seek(SeekFrom::Start(size / 3)).expect("seek");
        w.write_all(&random((size / 100) as usize)).expect("change");
        drop(w);
        e.close().expect("close");
    }
    let (inc_t, inc) = backup(Uuid::new_v4());
    let snap = primary.snapshot_of(full_id).expect("snapshot");
    let new = Uuid::new_v4();
    let t = Instant::now();
    pool.create(&spec(new), Some(&pass)).expect("new volume");
    let e = export(new, true);
    primary
        .dump(&snap.id, vol, e.open_write().expect("write"))
        .expect("dump");
    e.close().expect("close");
    let restore_t = t.elapsed();

    // Baseline: the same bytes from a plain file straight into restic.
    let raw = dir.path().join("plain.raw");
    {
        let e = export(vol, false);
        std::io::copy(
            &mut e.open_read().expect("read"),
            &mut std::fs::File::create(&raw).expect("raw"),
        )
        .expect("copy");
        e.close().expect("close");
    }
    let direct = repo("direct");
    let t = Instant::now();
    direct
        .backup(std::fs::File::open(&raw).expect("raw"), Uuid::new_v4(), vol)
        .expect("direct backup");
    let direct_t = t.elapsed();

    let direct_mbs = mbs(direct_t);
    let rows: Vec<Value> = vec![
        json!({"metric": "restic_backup_stdin_plain_file", "value": round(direct_mbs), "unit": "MiB/s", "goal": "baseline"}),
        json!({"metric": "volume_backup_full", "value": round(mbs(full_t)), "unit": "MiB/s", "limit": round(direct_mbs),
               "ratio": (mbs(full_t) / direct_mbs * 1000.0).round() / 1000.0, "goal": ">= 0.5 of baseline",
               "data_added": full.data_added}),
        json!({"metric": "volume_backup_incremental_1pct", "value": round(mbs(inc_t)), "unit": "MiB/s",
               "goal": "report", "data_added": inc.data_added,
               "data_added_pct": (inc.data_added as f64 * 10000.0 / size as f64).round() / 100.0}),
        json!({"metric": "volume_restore", "value": round(mbs(restore_t)), "unit": "MiB/s", "goal": "report"}),
    ];
    let doc = json!({
        "date": time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).expect("date"),
        "load_avg": load_avg(),
        "load_avg_before": load_before,
        "size_gib": gib,
        "rows": rows,
    });
    if let Some(p) = out.parent() {
        std::fs::create_dir_all(p).expect("out dir");
    }
    std::fs::write(&out, serde_json::to_string_pretty(&doc).expect("json") + "\n").expect("write result");
    println!("{}", serde_json::to_string_pretty(&doc).expect("json"));
}
