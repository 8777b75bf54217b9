//! Encrypt and decrypt of 1 KiB payloads through the HTTPS API (token check, Cedar, audit
//! record, SoftHSM2 unwrap and AES-GCM) with keep-alive connections, beside raw AES-256-GCM of
//! one core on the same machine (ring), the physical limit the ratio is taken against.
//! Run: `cargo bench -p rampart-testkit --bench keys_https [-- SECONDS CONNECTIONS]`
//! (writes target/bench/keys-https.json). Needs SoftHSM2 (`apt-get install softhsm2`).

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rampart_api::{DecryptRequest, EncryptRequest, KeyCreate, ScopeRef};
use rampart_common::Sensitive;
use rampart_testkit::{ClusterOptions, TestCluster};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

const PAYLOAD: usize = 1024;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn summary(mut lat_us: Vec<f64>, elapsed: Duration) -> serde_json::Value {
    lat_us.sort_by(|a, b| a.partial_cmp(b).unwrap());
    serde_json::json!({
        "ops_per_s": lat_us.len() as f64 / elapsed.as_secs_f64(),
        "p50_us": percentile(&lat_us, 0.5),
        "p99_us": percentile(&lat_us, 0.99),
        "n": lat_us.len(),
    })
}

/// One core sealing 1 KiB with AES-256-GCM, nothing else.
fn raw_aes_gcm(for_how_long: Duration) -> f64 {
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7u8; 32]).unwrap());
    let mut n = 0u64;
    let start = Instant::now();
    while start.elapsed() < for_how_long {
        for _ in 0..1000 {
            let mut buf = vec![0x5au8; PAYLOAD];
            let mut nonce = [0u8; 12];
            nonce[..8].copy_from_slice(&n.to_le_bytes());
            key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut buf)
                .unwrap();
            std::hint::black_box(&buf);
            n += 1;
        }
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let seconds: u64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(10);
    let connections: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(8);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = TestCluster::start(ClusterOptions {
            configure: Box::new(|config| config.kms.sessions = 4),
            ..Default::default()
        })
        .await;
        assert!(c.has_hsm(), "this benchmark needs SoftHSM2 (apt-get install softhsm2)");
        let p = c.admin_project().await;
        let grant = |role: &'static str| {
            (
                role,
                ScopeRef {
                    project: Some(p),
                    ..Default::default()
                },
            )
        };
        c.create_user("kbadmin", "Harrier-pebble-58", &[grant("key-admin")])
            .await;
        c.create_user("kbuser", "Harrier-pebble-58", &[grant("key-user")]).await;
        let (admin, _) = c.anon.login_as("kbadmin", "Harrier-pebble-58").await.unwrap();
        let (user, _) = c.anon.login_as("kbuser", "Harrier-pebble-58").await.unwrap();
        let key = admin
            .create_key(
                p,
                &KeyCreate {
                    name: "bench".into(),
                    algorithm: Some("aes-256-gcm".into()),
                    rotation_period_days: None,
                },
            )
            .await
            .unwrap();
        let plaintext = STANDARD.encode([0x5au8; PAYLOAD]);
        let sample = user
            .encrypt(
                p,
                key.id,
                &EncryptRequest {
                    plaintext: Sensitive::new(plaintext.clone()),
                    context: None,
                },
            )
            .await
            .unwrap();

        let mut results = serde_json::Map::new();
        for op in ["encrypt", "decrypt"] {
            let deadline = Instant::now() + Duration::from_secs(seconds);
            let start = Instant::now();
            let tasks: Vec<_> = (0..connections)
                .map(|_| {
                    let (user, plaintext, ciphertext) = (user.clone(), plaintext.clone(), sample.ciphertext.clone());
                    tokio::spawn(async move {
                        let mut lat = Vec::new();
                        while Instant::now() < deadline {
                            let t = Instant::now();
                            if op == "encrypt" {
                                let req = EncryptRequest {
                                    plaintext: Sensitive::new(plaintext.clone()),
                                    context: None,
                                };
                                user.encrypt(p, key.id, &req).await.unwrap();
                            } else {
                                let req = DecryptRequest {
                                    ciphertext: ciphertext.clone(),
                                    context: None,
                                };
                                user.decrypt(p, key.id, &req).await.unwrap();
                            }
                            lat.push(t.elapsed().as_secs_f64() * 1e6);
                        }
                        lat
                    })
                })
                .collect();
            let mut lat = Vec::new();
            for t in tasks {
                lat.extend(t.await.unwrap());
            }
            results.insert(format!("https_{op}"), summary(lat, start.elapsed()));
        }
        let raw = raw_aes_gcm(Duration::from_secs(3));
        let https_encrypt = results["https_encrypt"]["ops_per_s"].as_f64().unwrap();
        let out = serde_json::json!({
            "benchmark": "keys_https",
            "payload_bytes": PAYLOAD,
            "connections": connections,
            "seconds": seconds,
            "results": results,
            "raw_aes_256_gcm_one_core_ops_per_s": raw,
            "raw_over_https_encrypt": raw / https_encrypt,
        });
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/bench");
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(
            format!("{dir}/keys-https.json"),
            serde_json::to_string_pretty(&out).unwrap(),
        )
        .unwrap();
        println!("{}", serde_json::to_string_pretty(&out).unwrap());
        c.shutdown().await;
    });
}
