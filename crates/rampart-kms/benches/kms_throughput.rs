//! Encrypt/decrypt throughput and latency of the key service on SoftHSM2 for 1 KiB payloads,
//! beside the same service on the in-process software stand-in and raw AES-256-GCM (ring, one
//! core) as the physical limit. Writes `target/bench/kms-hsm.json` (or `$BENCH_OUT`).
//! Run with `scripts/bench.sh` (the embedded SoftHSM2 needs its `SOFTHSM2_CONF` from process
//! start, which this program arranges by re-executing itself, as the binary does).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rampart_kms::envelope::EncryptionContext;
use rampart_kms::soft::InsecureSoftwareBackend;
use rampart_kms::softhsm::{self, EmbeddedSoftHsm, SOFTHSM_MODULE};
use rampart_kms::{KeyBackend, KeyService};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use serde_json::json;
use uuid::Uuid;

const PAYLOAD: usize = 1024;

struct Stats {
    ops_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    n: usize,
}

/// Runs `op` for about `for_how_long`, one call at a time, recording each latency.
fn measure(for_how_long: Duration, mut op: impl FnMut()) -> Stats {
    for _ in 0..200 {
        op();
    }
    let mut lat = Vec::with_capacity(1 << 16);
    let start = Instant::now();
    while start.elapsed() < for_how_long {
        let t = Instant::now();
        op();
        lat.push(t.elapsed().as_nanos() as f64 / 1000.0);
    }
    let total = start.elapsed().as_secs_f64();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Stats {
        ops_per_s: lat.len() as f64 / total,
        p50_us: lat[lat.len() / 2],
        p99_us: lat[lat.len() * 99 / 100],
        n: lat.len(),
    }
}

fn threads(n: usize, for_how_long: Duration, op: impl Fn() + Sync) -> f64 {
    let counts: Vec<usize> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                s.spawn(|| {
                    let start = Instant::now();
                    let mut c = 0;
                    while start.elapsed() < for_how_long {
                        op();
                        c += 1;
                    }
                    c
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    counts.iter().sum::<usize>() as f64 / for_how_long.as_secs_f64()
}

fn stats_json(s: &Stats) -> serde_json::Value {
    json!({"ops_per_s": s.ops_per_s.round(), "p50_us": (s.p50_us * 10.0).round() / 10.0, "p99_us": (s.p99_us * 10.0).round() / 10.0, "samples": s.n})
}

fn service_bench(svc: &KeyService, d: Duration) -> serde_json::Value {
    let now = time::OffsetDateTime::now_utc();
    let key = svc.create_key(Uuid::new_v4(), "bench", None, now).unwrap();
    let ctx: EncryptionContext = [("volume".to_string(), "vol-1".to_string())].into();
    let payload = vec![0x5au8; PAYLOAD];
    let ct = svc.encrypt(&key, &payload, &ctx).unwrap().ciphertext;
    let enc = measure(d, || {
        svc.encrypt(&key, &payload, &ctx).unwrap();
    });
    let dec = measure(d, || {
        svc.decrypt(&key, &ct, &ctx).unwrap();
    });
    let gdk = measure(d, || {
        svc.generate_data_key(&key, &ctx, None).unwrap();
    });
    let enc2 = threads(2, d, || {
        svc.encrypt(&key, &payload, &ctx).unwrap();
    });
    let dec2 = threads(2, d, || {
        svc.decrypt(&key, &ct, &ctx).unwrap();
    });
    let create = measure(d / 2, || {
        svc.create_key(key.project, "k", None, now).unwrap();
    });
    json!({
        "encrypt_1k": stats_json(&enc),
        "decrypt_1k": stats_json(&dec),
        "generate_data_key_32": stats_json(&gdk),
        "create_key": stats_json(&create),
        "encrypt_1k_2_threads_ops_per_s": enc2.round(),
        "decrypt_1k_2_threads_ops_per_s": dec2.round(),
    })
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken from the command line.
    let secs: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let d = Duration::from_secs(secs);
    let data_dir = std::env::var_os("BENCH_DATA_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join(format!("rampart-kms-bench-{}", std::process::id())));
    let hsm = EmbeddedSoftHsm::prepare(&data_dir).unwrap();
    if !hsm.env_is_active() {
        // SoftHSM reads SOFTHSM2_CONF at module load only: start again with it (and with the
        // data directory, so the new process image finds the same files).
        use std::os::unix::process::CommandExt;
        let err = std::process::Command::new(std::env::current_exe().unwrap())
            .args(std::env::args_os().skip(1))
            .env("BENCH_DATA_DIR", &data_dir)
            .env(softhsm::SOFTHSM_CONF_ENV, &hsm.conf)
            .exec();
        panic!("re-exec: {err}");
    }

    // Raw AES-256-GCM on one core: the physical limit.
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7u8; 32]).unwrap());
    let mut buf = vec![0u8; PAYLOAD];
    let mut n: u64 = 0;
    let raw_seal = measure(d, || {
        n += 1;
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&n.to_be_bytes());
        buf.truncate(PAYLOAD);
        key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(b"aad"), &mut buf)
            .unwrap();
    });

    let soft = service_bench(&KeyService::new(Arc::new(InsecureSoftwareBackend::new())), d);
    let backend = Arc::new(hsm.open(Path::new(SOFTHSM_MODULE)).unwrap());
    let hsm_results = service_bench(&KeyService::new(backend.clone() as Arc<dyn KeyBackend>), d);
    let mut r = [0u8; 32];
    let rand = measure(d / 2, || backend.random(&mut r).unwrap());

    let ratio = |v: &serde_json::Value| raw_seal.ops_per_s / v["encrypt_1k"]["ops_per_s"].as_f64().unwrap();
    let result = json!({
        "benchmark": "kms-hsm",
        "payload_bytes": PAYLOAD,
        "seconds_per_case": secs,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "raw_aes_256_gcm_seal_1k_one_core": stats_json(&raw_seal),
        "software_backend": soft,
        "softhsm2": hsm_results,
        "softhsm2_generate_random_32": stats_json(&rand),
        "raw_over_softhsm2_encrypt_ratio": (ratio(&hsm_results) * 10.0).round() / 10.0,
        "raw_over_software_encrypt_ratio": (ratio(&soft) * 10.0).round() / 10.0,
    });
    let out = std::env::var_os("BENCH_OUT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench/kms-hsm.json"));
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    std::fs::write(&out, serde_json::to_string_pretty(&result).unwrap()).unwrap();
    println!("{}", serde_json::to_string_pretty(&result).unwrap());
    drop(backend);
    let _ = std::fs::remove_dir_all(&data_dir);
}
