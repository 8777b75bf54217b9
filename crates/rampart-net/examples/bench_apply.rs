//! Measures, as root, the nft side of the data plane against ruleset size: compile time, the
//! first (full) transaction, a no-op re-plan, and a retag (element update) for N ports, each in
//! a throwaway namespace. Prints one JSON line per N. Port devices are not created: nft only
//! names them, so the figures are the ruleset's own cost.
//!
//! `cargo run --release --example bench_apply -- 10 100 1000`

use std::time::Instant;

use rampart_net::compile::compile_vpc;
use rampart_net::desired::NetNodeConfig;
use rampart_net::exec::run;
use rampart_net::nft::{ObservedRuleset, diff, render_ops};
use rampart_net::plan::OWNED_TABLES;
use rampart_net::testing::VpcBuilder;

fn nft(ns: &str, script: &str) -> f64 {
    let t = Instant::now();
    let out = run(
        "ip",
        &["netns", "exec", ns, "nft", "-f", "-"],
        Some(script),
        ns,
        std::time::Duration::from_secs(60),
    )
    .expect("nft");
    assert!(out.ok, "{}", out.stderr);
    t.elapsed().as_secs_f64() * 1000.0
}

fn observe(ns: &str) -> ObservedRuleset {
    let out = run(
        "ip",
        &["netns", "exec", ns, "nft", "-j", "list", "ruleset"],
        None,
        ns,
        std::time::Duration::from_secs(60),
    )
    .expect("nft list");
    ObservedRuleset::from_json(&serde_json::from_str(&out.stdout).expect("json")).expect("parse")
}

fn main() {
    let sizes: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![10, 100, 1000] } else { sizes };
    let cfg = NetNodeConfig {
        netns_prefix: "rpbench-".into(),
        run_dir: std::env::temp_dir(),
        underlay: None,
    };
    for n in sizes {
        let ns = format!("rpbench-{}-{n}", std::process::id());
        assert!(
            run(
                "ip",
                &["netns", "add", &ns],
                None,
                &ns,
                std::time::Duration::from_secs(10)
            )
            .unwrap()
            .ok
        );
        let mut b = VpcBuilder::new(n as u64 + 1, "10.0.0.0/8");
        let s = b.subnet("10.0.0.0/12", false);
        let groups: Vec<_> = (0..10).map(|i| b.group(&format!("g{i}"))).collect();
        for i in 0..n {
            let g = groups[i % groups.len()];
            let p = b.port_with(s, &[g], &[("role", if i % 2 == 0 { "web" } else { "db" })], |r| {
                r.max_connections = Some(100)
            });
            b.bind_tap(p);
        }
        b.policy(serde_json::json!({"name":"p","from":{"role":"web"},"to":{"role":"db"},"protocol":"tcp","ports":[5432],"action":"deny"}));
        let t = Instant::now();
        let c = compile_vpc(&cfg, None, &b.net).unwrap();
        let compile_ms = t.elapsed().as_secs_f64() * 1000.0;
        let ops = diff(&c.ruleset, &ObservedRuleset::default(), &OWNED_TABLES);
        let rules: usize = c
            .ruleset
            .tables
            .iter()
            .flat_map(|t| t.chains.iter())
            .map(|c| c.rules.len() + 1)
            .sum();
        let full_ms = nft(&ns, &render_ops(&ops));
        let t = Instant::now();
        let observed = observe(&ns);
        let noop = diff(&c.ruleset, &observed, &OWNED_TABLES);
        let observe_plan_ms = t.elapsed().as_secs_f64() * 1000.0;
        assert!(noop.is_empty(), "not idempotent at {n}");
        let p = b.net.ports[0].id;
        b.net
            .ports
            .iter_mut()
            .find(|x| x.id == p)
            .unwrap()
            .tags
            .insert("role".into(), "db".into());
        let c2 = compile_vpc(&cfg, None, &b.net).unwrap();
        let retag = diff(&c2.ruleset, &observed, &OWNED_TABLES);
        assert!(retag.iter().all(|o| o.is_element_update()));
        let retag_ms = nft(&ns, &render_ops(&retag));
        println!(
            "{}",
            serde_json::json!({"ports": n, "rules": rules, "compile_ms": compile_ms, "full_apply_ms": full_ms,
                "observe_and_plan_ms": observe_plan_ms, "retag_apply_ms": retag_ms, "retag_ops": retag.len()})
        );
        run(
            "ip",
            &["netns", "del", &ns],
            None,
            &ns,
            std::time::Duration::from_secs(10),
        )
        .unwrap();
    }
}
