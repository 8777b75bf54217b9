//! In-process cost of authentication and authorization, and of one password hash.
//! Run: `cargo bench -p rampart-testkit --bench auth` (writes target/bench/auth.json).

use std::time::Instant;

use rampart_iam::authz::{Ctx, Target};
use rampart_testkit::{ClusterOptions, TestCluster};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = TestCluster::start(ClusterOptions::default()).await;
        let p = c.admin_project().await;
        c.create_user(
            "bench",
            "Grebe-lantern-47",
            &[(
                "member",
                rampart_api::ScopeRef {
                    project: Some(p),
                    ..Default::default()
                },
            )],
        )
        .await;
        let (client, _) = c.anon.login_as("bench", "Grebe-lantern-47").await.unwrap();
        let token = client.token().unwrap().expose().to_string();
        let state = &c.controller.state;
        let ip = std::net::IpAddr::from([127, 0, 0, 1]);
        let n = 2000;
        // Token check: hash, token row, user, domain, role assignments (+ groups, custom roles).
        let mut auth_us = Vec::with_capacity(n);
        let mut principal = None;
        for _ in 0..n {
            let t = Instant::now();
            principal = Some(rampart_controller::auth::authenticate(state, &token, ip).await.unwrap());
            auth_us.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let principal = principal.unwrap();
        // One Cedar decision on a project resource.
        let ctx = Ctx {
            now: time::OffsetDateTime::now_utc(),
            source_ip: ip,
            mfa: false,
        };
        let target = Target::Project {
            id: p,
            domain: principal.domain_id,
        };
        let mut authz_us = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            let v = state.authz.authorize(&principal.subject, "project.write", target, &ctx);
            authz_us.push(t.elapsed().as_secs_f64() * 1e6);
            assert!(v.allowed);
        }
        let mut hash_ms = Vec::new();
        for _ in 0..10 {
            let t = Instant::now();
            rampart_iam::password::hash("Grebe-lantern-47").unwrap();
            hash_ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        for v in [&mut auth_us, &mut authz_us, &mut hash_ms] {
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        }
        let out = serde_json::json!({
            "benchmark": "auth",
            "token_check_us": {"p50": percentile(&auth_us, 0.5), "p99": percentile(&auth_us, 0.99)},
            "cedar_authorize_us": {"p50": percentile(&authz_us, 0.5), "p99": percentile(&authz_us, 0.99)},
            "argon2id_hash_ms": {"p50": percentile(&hash_ms, 0.5), "max": hash_ms[hash_ms.len() - 1]},
            "backend": "sqlite",
            "iterations": n,
        });
        std::fs::create_dir_all(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/bench")).unwrap();
        std::fs::write(
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/bench/auth.json"),
            serde_json::to_string_pretty(&out).unwrap(),
        )
        .unwrap();
        println!("{}", serde_json::to_string_pretty(&out).unwrap());
        c.shutdown().await;
    });
}
