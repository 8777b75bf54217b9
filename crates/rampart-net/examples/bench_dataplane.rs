//! As root, two data-plane benchmarks on the real driver, in throwaway namespaces:
//!
//! * `apply [RULES...]` (default 100 1000 10000): the time of one atomic `nft -f` transaction
//!   against ruleset size, for a full load of the VPC ruleset and for an incremental change of
//!   one security-group rule (its chain is flushed and refilled, nothing else). Rules sit in
//!   groups of at most 100 (one local port per group).
//! * `throughput [RULES] [SECONDS]` (default 10000 5): TCP throughput between two "VM"
//!   namespaces across the VPC datapath (bridge, bridge guard, br_netfilter, the inet
//!   firewall), with no Rampart table at all, with the VPC's own ruleset, and with RULES extra
//!   rules in the receiver's group ahead of the one that admits the flow; plus the rate of new
//!   connections, which is where a long chain costs (established packets skip it).
//!
//! Prints one JSON document and writes it to `$BENCH_OUT` when set. Namespaces are named
//! `$BENCH_NETNS_PREFIX` (default `rpbench-<pid>-`) and deleted on every exit path that runs
//! destructors; the calling script deletes the prefix again from its trap.
//!
//! `cargo run --release -p rampart-net --example bench_dataplane -- apply 100 1000 10000`

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use rampart_net::compile::compile_vpc;
use rampart_net::desired::{NetNodeConfig, NodeNetwork, VpcNetwork};
use rampart_net::exec::{IpNftDriver, NetDriver, reconcile, run};
use rampart_net::nft::{NftOp, ObservedRuleset, diff, render_ops};
use rampart_net::plan::OWNED_TABLES;
use rampart_net::testing::VpcBuilder;
use serde_json::{Value, json};
use uuid::Uuid;

const T: Duration = Duration::from_secs(120);
/// Rules per security group in the `apply` layout (AWS allows 60 per group by default).
const RULES_PER_GROUP: usize = 100;
/// Rounds of the throughput benchmark (each measures every case once).
const ROUNDS: usize = 3;

fn prefix() -> String {
    std::env::var("BENCH_NETNS_PREFIX").unwrap_or_else(|_| format!("rpbench-{}-", std::process::id()))
}

fn sh(cmd: &str) -> String {
    let out = run("bash", &["-c", cmd], None, cmd, T).expect("spawn");
    assert!(out.ok, "{cmd}: {}", out.stderr);
    out.stdout
}

/// Deletes every namespace with our prefix (and so every veth, bridge and nft table in them)
/// and the run directory when dropped, also when a panic unwinds.
struct Cleanup(String, std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.1);
        if let Ok(dir) = std::fs::read_dir("/run/netns") {
            for e in dir.flatten() {
                let n = e.file_name().to_string_lossy().to_string();
                if n.starts_with(&self.0) {
                    let _ = run(
                        "bash",
                        &["-c", &format!("ip netns pids {n} | xargs -r kill -9; ip netns del {n}")],
                        None,
                        &n,
                        T,
                    );
                }
            }
        }
    }
}

fn nft_timed(ns: &str, script: &str) -> f64 {
    let t = Instant::now();
    let out = run("ip", &["netns", "exec", ns, "nft", "-f", "-"], Some(script), ns, T).expect("nft");
    assert!(out.ok, "{}", out.stderr);
    t.elapsed().as_secs_f64() * 1000.0
}

fn observe(ns: &str) -> ObservedRuleset {
    let out = run(
        "ip",
        &["netns", "exec", ns, "nft", "-j", "list", "ruleset"],
        None,
        ns,
        T,
    )
    .expect("nft list");
    ObservedRuleset::from_json(&serde_json::from_str(&out.stdout).expect("json")).expect("parse")
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let i = ((p / 100.0) * (v.len() as f64 - 1.0)).round() as usize;
    v[i.min(v.len() - 1)]
}

fn stats(v: &[f64]) -> Value {
    json!({"samples": v.len(), "p50_ms": percentile(v, 50.0), "min_ms": percentile(v, 0.0), "max_ms": percentile(v, 100.0)})
}

fn nft_rule_count(net: &VpcNetwork, cfg: &NetNodeConfig) -> usize {
    compile_vpc(cfg, None, net)
        .expect("compile")
        .ruleset
        .tables
        .iter()
        .flat_map(|t| t.chains.iter())
        .map(|c| c.rules.len() + 1)
        .sum()
}

/// An ingress rule that matches no probe traffic: one distinct source host and port each.
fn filler_rule(i: usize) -> Value {
    json!({"direction":"ingress","protocol":"tcp","port_min": 6000 + i % 4000, "port_max": 6000 + i % 4000,
           "remote_cidr": format!("172.16.{}.{}/32", i / 256, i % 256)})
}

fn bench_apply(sizes: &[usize], cfg: &NetNodeConfig) -> Value {
    let mut rows = Vec::new();
    for &n in sizes {
        let ns = format!("{}a{n}", cfg.netns_prefix);
        sh(&format!("ip netns add {ns}"));
        let mut b = VpcBuilder::new(n as u64 + 7, "10.0.0.0/8");
        let s = b.subnet("10.0.0.0/12", false);
        let mut first_rule = None;
        let mut made = 0;
        while made < n {
            let g = b.group(&format!("g{made}"));
            let k = RULES_PER_GROUP.min(n - made);
            for i in 0..k {
                let r = b.rule(g, filler_rule(made + i));
                first_rule.get_or_insert((g, r));
            }
            made += k;
            let p = b.port(s, &[g], &[]);
            b.bind_tap(p);
        }
        let total_rules = nft_rule_count(&b.net, cfg);
        let c = compile_vpc(cfg, None, &b.net).expect("compile");
        let full_ops = diff(&c.ruleset, &ObservedRuleset::default(), &OWNED_TABLES);
        let full_script = render_ops(&full_ops);
        let mut full = Vec::new();
        for _ in 0..5 {
            sh(&format!("ip netns exec {ns} nft flush ruleset"));
            full.push(nft_timed(&ns, &full_script));
        }
        // One rule changed: its port moves back and forth; the plan is measured against the
        // live ruleset every time, as the agent does.
        let (g, r) = first_rule.expect("at least one rule");
        let mut incr = Vec::new();
        let mut observe_plan = Vec::new();
        let mut rewritten = 0;
        for round in 0..5 {
            let rule = b
                .net
                .security_groups
                .iter_mut()
                .find(|x| x.id == g)
                .expect("group")
                .rules
                .iter_mut()
                .find(|x| x.id == r)
                .expect("rule");
            let port = 20000 + round as u16;
            rule.port_min = Some(port);
            rule.port_max = Some(port);
            let c2 = compile_vpc(cfg, None, &b.net).expect("compile");
            let t = Instant::now();
            let observed = observe(&ns);
            let ops = diff(&c2.ruleset, &observed, &OWNED_TABLES);
            observe_plan.push(t.elapsed().as_secs_f64() * 1000.0);
            assert!(
                ops.iter()
                    .all(|o| matches!(o, NftOp::FlushChain { .. } | NftOp::AddRule { .. })),
                "a one-rule change must only refill its chain: {}",
                render_ops(&ops)
            );
            rewritten = ops.iter().filter(|o| matches!(o, NftOp::AddRule { .. })).count();
            incr.push(nft_timed(&ns, &render_ops(&ops)));
        }
        let row = json!({"sg_rules": n, "nft_rules": total_rules, "groups": n.div_ceil(RULES_PER_GROUP),
            "full_apply": stats(&full), "one_rule_changed_apply": stats(&incr),
            "one_rule_changed_rules_rewritten": rewritten, "observe_and_plan": stats(&observe_plan)});
        eprintln!("{row}");
        rows.push(row);
        sh(&format!("ip netns del {ns}"));
    }
    json!({"benchmark": "nft-apply", "results": rows})
}

/// Runs `f` on a new thread inside namespace `ns`.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("netns file");
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

/// Bulk TCP from `from` to `ip:port` for `secs`; Gbit/s as the receiver counted it.
fn throughput(from: &str, to: &str, ip: Ipv4Addr, port: u16, secs: f64) -> f64 {
    let listener = in_ns(to, move || TcpListener::bind(("0.0.0.0", port)).expect("bind"))
        .join()
        .unwrap();
    let rx = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 256 * 1024];
        let mut bytes = 0u64;
        let started = Instant::now();
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => bytes += n as u64,
                Err(e) => panic!("receive: {e}"),
            }
        }
        bytes as f64 * 8.0 / started.elapsed().as_secs_f64() / 1e9
    });
    in_ns(from, move || {
        let mut s = TcpStream::connect_timeout(&SocketAddr::from((ip, port)), Duration::from_secs(5)).expect("connect");
        let buf = vec![0x5au8; 128 * 1024];
        let started = Instant::now();
        while started.elapsed().as_secs_f64() < secs {
            s.write_all(&buf).expect("send");
        }
        s.shutdown(std::net::Shutdown::Write).unwrap();
    })
    .join()
    .unwrap();
    rx.join().unwrap()
}

/// New TCP connections per second (connect, then close with RST so no TIME_WAIT piles up).
fn connection_rate(from: &str, to: &str, ip: Ipv4Addr, port: u16, secs: f64) -> f64 {
    let listener = in_ns(to, move || TcpListener::bind(("0.0.0.0", port)).expect("bind"))
        .join()
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let acceptor = std::thread::spawn(move || {
        listener.set_nonblocking(true).unwrap();
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            match listener.accept() {
                Ok((s, _)) => drop(s),
                Err(_) => std::thread::sleep(Duration::from_micros(200)),
            }
        }
    });
    let n = in_ns(from, move || {
        let started = Instant::now();
        let mut n = 0u64;
        while started.elapsed().as_secs_f64() < secs {
            let s = TcpStream::connect_timeout(&SocketAddr::from((ip, port)), Duration::from_secs(2)).expect("connect");
            let linger = nix::libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Linger, &linger).unwrap();
            n += 1;
        }
        n as f64 / started.elapsed().as_secs_f64()
    })
    .join()
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    acceptor.join().unwrap();
    n
}

fn bench_throughput(extra_rules: usize, secs: f64, cfg: &NetNodeConfig) -> Value {
    let vm_a = format!("{}vma", prefix());
    let vm_b = format!("{}vmb", prefix());
    for ns in [&vm_a, &vm_b] {
        sh(&format!("ip netns add {ns} && ip -n {ns} link set lo up"));
    }
    let mut b = VpcBuilder::new(0x7b7b, "10.0.0.0/16");
    let s = b.subnet("10.0.1.0/24", false);
    let (ga, gb) = (b.group("a"), b.group("b"));
    let pa = b.port(s, &[ga], &[]);
    let pb = b.port(s, &[gb], &[]);
    b.bind_veth(pa, &vm_a);
    b.bind_veth(pb, &vm_b);
    let admit = |from: Uuid| json!({"direction":"ingress","protocol":"tcp","port_min":5201,"port_max":5300,"remote_group": from});
    b.rule(ga, admit(gb));
    let last = b.rule(gb, admit(ga));
    let base = b.net.clone();
    for i in 0..extra_rules {
        b.rule(gb, filler_rule(i));
    }
    // The rule that admits a→b goes behind all the others: a new connection walks them all.
    let group = b.net.security_groups.iter_mut().find(|g| g.id == gb).unwrap();
    let pos = group.rules.iter().position(|r| r.id == last).unwrap();
    let r = group.rules.remove(pos);
    group.rules.push(r);
    let loaded = b.net.clone();

    let driver = IpNftDriver::default();
    let apply = |net: &VpcNetwork| {
        let desired = NodeNetwork {
            external: None,
            vpcs: vec![net.clone()],
        };
        let (_, report) = reconcile(&driver, cfg, &desired).expect("reconcile");
        assert!(report.errors.is_empty(), "{:?}", report.errors);
    };
    apply(&base);
    let (ip_a, ip_b) = (b.ip_of(pa), b.ip_of(pb));
    for (ns, ip) in [(&vm_a, ip_a), (&vm_b, ip_b)] {
        sh(&format!(
            "ip -n {ns} link set eth0 up && ip -n {ns} addr replace {ip}/24 dev eth0"
        ));
    }
    let vpc_ns = cfg.vpc_netns(&b.net.vpc.id);
    let loaded_name = format!("rampart_ruleset_plus_{extra_rules}_rules");
    let names = ["rampart_ruleset", loaded_name.as_str(), "no_nft_tables"];
    let rules = [nft_rule_count(&base, cfg), nft_rule_count(&loaded, cfg), 0];
    // [case][metric] → one sample per round. The machine is shared: rounds interleave the
    // cases so that a burst of load elsewhere does not land on one case only.
    let mut samples = vec![vec![Vec::new(); 3]; 3];
    let mut load_ms = Vec::new();
    let mut port = 5201;
    for round in 0..ROUNDS {
        for (i, name) in names.iter().enumerate() {
            match i {
                0 => apply(&base),
                1 => {
                    let t = Instant::now();
                    apply(&loaded);
                    load_ms.push(t.elapsed().as_secs_f64() * 1000.0);
                    let observed = driver.observe(cfg).expect("observe");
                    let desired = NodeNetwork {
                        external: None,
                        vpcs: vec![loaded.clone()],
                    };
                    let pending = rampart_net::plan::plan(cfg, &desired, &observed).expect("plan");
                    assert!(pending.is_empty(), "the loaded ruleset is not in place");
                }
                _ => {
                    // Reference: the same bridge and namespaces without any Rampart table.
                    sh(&format!(
                        "ip netns exec {vpc_ns} nft delete table inet rampart_fw && \
                         ip netns exec {vpc_ns} nft delete table bridge rampart_guard"
                    ));
                }
            }
            // Warm-up: ARP and the first connection.
            connection_rate(&vm_a, &vm_b, ip_b, port, 0.2);
            let m = [
                throughput(&vm_a, &vm_b, ip_b, port + 1, secs),
                throughput(&vm_b, &vm_a, ip_a, port + 2, secs),
                connection_rate(&vm_a, &vm_b, ip_b, port + 3, 2.0),
            ];
            port += 4;
            eprintln!(
                "round {round} {name}: a→b {:.2} Gbit/s, b→a {:.2} Gbit/s, {:.0} conn/s",
                m[0], m[1], m[2]
            );
            for (k, v) in m.into_iter().enumerate() {
                samples[i][k].push(v);
            }
        }
    }
    let median = |v: &[f64]| percentile(v, 50.0);
    let cases: Vec<Value> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            json!({"case": name, "nft_rules": rules[i],
                "a_to_b_gbit_s": median(&samples[i][0]), "b_to_a_gbit_s": median(&samples[i][1]),
                "new_connections_per_s_a_to_b": median(&samples[i][2]),
                "samples": {"a_to_b_gbit_s": samples[i][0], "b_to_a_gbit_s": samples[i][1],
                    "new_connections_per_s_a_to_b": samples[i][2]}})
        })
        .collect();
    let ratio = |k: usize| median(&samples[1][k]) / median(&samples[0][k]);
    json!({"benchmark": "net-throughput", "seconds_per_run": secs, "rounds": ROUNDS, "extra_rules": extra_rules,
        "layout": "a (group A) → b (group B): the extra rules are ingress rules of group B that match nothing, ahead of the rule admitting A; medians over rounds",
        "extra_rules_apply_ms": stats(&load_ms),
        "ratio_loaded_to_base": {"a_to_b": ratio(0), "b_to_a": ratio(1), "new_connections_per_s": ratio(2)},
        "results": cases})
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let prefix = prefix();
    let run_dir = std::env::temp_dir().join(format!("{prefix}run"));
    let _cleanup = Cleanup(prefix.clone(), run_dir.clone());
    std::fs::create_dir_all(&run_dir).expect("run dir");
    let cfg = NetNodeConfig {
        // The probe "VMs" must not carry the agent's prefix: it deletes such namespaces as stale.
        netns_prefix: format!("{prefix}n-"),
        run_dir: run_dir.clone(),
        underlay: None,
    };
    let nums: Vec<usize> = args.iter().skip(1).filter_map(|a| a.parse().ok()).collect();
    let mut out = match args.first().map(String::as_str) {
        Some("apply") => bench_apply(if nums.is_empty() { &[100, 1000, 10000] } else { &nums }, &cfg),
        Some("throughput") => {
            let secs = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5.0);
            bench_throughput(nums.first().copied().unwrap_or(10000), secs, &cfg)
        }
        _ => {
            eprintln!("usage: bench_dataplane apply [RULES...] | throughput [RULES] [SECONDS]");
            std::process::exit(2);
        }
    };
    out["cpus"] = json!(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
    out["kernel"] = json!(sh("uname -r").trim());
    out["nft"] = json!(sh("nft --version").trim());
    out["load_average_at_end"] = json!(std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim());
    let text = serde_json::to_string_pretty(&out).unwrap();
    println!("{text}");
    if let Ok(path) = std::env::var("BENCH_OUT") {
        if let Some(dir) = std::path::Path::new(&path).parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(&path, text).expect("write BENCH_OUT");
    }
}
