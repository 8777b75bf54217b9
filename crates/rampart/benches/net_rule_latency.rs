//! API call → enforced rule, as root, through the real binary: `rampart up` in a temporary
//! data dir on a 127.0.0.1 port (as the network end-to-end tests start it), with the local
//! agent building the data plane with the real driver. The VPC holds N ports bound to the node
//! (N = 10, 100, 1000 by default): two are veths into probe namespaces this program creates
//! ("VMs" a in group A and b in group B), the others taps in the VPC namespace, half in each
//! group. Each sample POSTs an ingress rule to group B admitting a fresh TCP port from group
//! A, then connects from a to b on that port every few milliseconds (a SYN the firewall drops
//! costs a 20 ms connect timeout) until one connection is accepted: the time from the POST to
//! that connection is the sample. After each sample the rule is deleted and the agent's
//! report of the applied generation is awaited, so samples do not overlap.
//!
//! `BENCH_SAMPLES` (default 20), `BENCH_PORTS` (default "10,100,1000"), `BENCH_OUT` (default
//! target/bench/net-rule-latency.json). `cargo bench -p rampart --bench net_rule_latency`.
//! Not a test: nothing is asserted about the figures.

use std::io::Read as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http::Method;
use rampart_api::Client;
use rampart_api::network::{NodeNetworkReport, Port, SecurityGroup, Subnet, Vpc};
use serde_json::{Value, json};
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_rampart");
/// Per-attempt connect timeout of the probe: the measurement's granularity.
const PROBE: Duration = Duration::from_millis(20);

fn sh(cmd: &str) -> String {
    let out = Command::new("timeout")
        .args(["60", "bash", "-c", cmd])
        .output()
        .unwrap();
    assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn rand_tag() -> String {
    let mut b = [0u8; 3];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut b).unwrap();
    hex::encode(b)
}

/// Everything with our prefix goes on drop: the server, the agent's namespaces, our probe
/// namespaces (and with them every veth, tap, bridge, nft table and dnsmasq inside).
struct Cleanup {
    proc: Option<Child>,
    prefix: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
        if let Ok(dir) = std::fs::read_dir("/run/netns") {
            for e in dir.flatten() {
                let n = e.file_name().to_string_lossy().to_string();
                if n.starts_with(&self.prefix) {
                    let _ = Command::new("bash")
                        .args(["-c", &format!("ip netns pids {n} | xargs -r kill -9; ip netns del {n}")])
                        .status();
                }
            }
        }
    }
}

struct Cloud {
    admin: Client,
    node: Uuid,
    project: Uuid,
}

impl Cloud {
    fn path(&self, rest: &str) -> String {
        format!("/v1/projects/{}/{rest}", self.project)
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let r = self
            .admin
            .send(method.clone(), path, body.as_ref())
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert!(r.status().is_success(), "{method} {path}: {}", r.status());
        if r.status() == http::StatusCode::NO_CONTENT {
            return Value::Null;
        }
        r.json().await.unwrap()
    }

    async fn post<T: serde::de::DeserializeOwned>(&self, rest: &str, body: Value) -> T {
        serde_json::from_value(self.call(Method::POST, &self.path(rest), Some(body)).await).unwrap()
    }

    async fn bind(&self, port: Uuid, device: Value) {
        self.call(
            Method::PUT,
            &self.path(&format!("ports/{port}/binding")),
            Some(json!({"node": self.node, "device": device})),
        )
        .await;
    }

    /// Waits until the agent reports the node's current generation applied without errors.
    async fn applied(&self) -> NodeNetworkReport {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let g = self.admin.nodes().await.unwrap().items[0].generation;
            if let Ok(r) = self
                .admin
                .get::<NodeNetworkReport>(&format!("/v1/nodes/{}/network", self.node))
                .await
                && r.status.applied_generation == g
                && r.status.errors.is_empty()
            {
                return r;
            }
            assert!(Instant::now() < deadline, "generation {g} not applied in 300 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn start(dir: &Path, prefix: &str, cleanup: &mut Cleanup) -> Cloud {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = dir.join("rampart.toml");
    std::fs::write(
        &config,
        format!(
            "[api]\nlisten = [\"127.0.0.1:{port}\"]\n[log]\nlevel = \"warn\"\n[network]\nnetns_prefix = \"{prefix}\"\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("stderr.log")).unwrap();
    cleanup.proc = Some(
        Command::new(BIN)
            .args(["up", "--data-dir"])
            .arg(dir.join("data"))
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let url = format!("https://127.0.0.1:{port}");
    let data = dir.join("data");
    let rampart_testkit::up::UpAdmin { admin, project, .. } =
        rampart_testkit::up::take_over(&url, &data, 1, "Bench-net-passphrase-9", Duration::from_secs(120)).await;
    let node = admin.nodes().await.unwrap().items[0].id;
    Cloud { admin, node, project }
}

/// Runs `f` on a thread inside namespace `ns` and returns its result.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("netns file");
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("netns thread")
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let i = ((p / 100.0) * (v.len() as f64 - 1.0)).round() as usize;
    v[i.min(v.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let samples: usize = std::env::var("BENCH_SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let sizes: Vec<usize> = std::env::var("BENCH_PORTS")
        .unwrap_or_else(|_| "10,100,1000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let out_path = std::env::var("BENCH_OUT").unwrap_or_else(|_| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/bench/net-rule-latency.json")
            .to_string_lossy()
            .to_string()
    });
    let prefix = std::env::var("BENCH_NETNS_PREFIX").unwrap_or_else(|_| format!("rpl{}-", rand_tag()));
    let mut cleanup = Cleanup {
        proc: None,
        prefix: prefix.clone(),
    };
    let dir = tempfile::tempdir().unwrap();
    // The probe "VMs" must not carry the agent's prefix: it deletes such namespaces as stale.
    let c = start(dir.path(), &format!("{prefix}n-"), &mut cleanup).await;

    let vpc: Vpc = c.post("vpcs", json!({"name":"bench","cidr":"10.70.0.0/16"})).await;
    let subnet: Subnet = c
        .post(
            "subnets",
            json!({"vpc": vpc.id, "name":"s1","cidr":"10.70.0.0/20","dhcp": false}),
        )
        .await;
    let ga: SecurityGroup = c.post("security-groups", json!({"name":"a"})).await;
    let gb: SecurityGroup = c.post("security-groups", json!({"name":"b"})).await;
    let port = |g: Uuid| json!({"subnet": subnet.id, "security_groups": [g]});
    let pa: Port = c.post("ports", port(ga.id)).await;
    let pb: Port = c.post("ports", port(gb.id)).await;
    let (vm_a, vm_b) = (format!("{prefix}vma"), format!("{prefix}vmb"));
    for (p, ns) in [(&pa, &vm_a), (&pb, &vm_b)] {
        sh(&format!("ip netns add {ns} && ip -n {ns} link set lo up"));
        c.bind(p.id, json!({"kind":"veth","peer_netns": ns, "peer_name":"eth0"}))
            .await;
    }
    c.applied().await;
    for (p, ns) in [(&pa, &vm_a), (&pb, &vm_b)] {
        sh(&format!(
            "ip -n {ns} link set eth0 up && ip -n {ns} addr replace {}/20 dev eth0",
            p.ip
        ));
    }
    // One listener per sample port in b, accepting and closing.
    let first_port = 31000u16;
    let listeners: Vec<TcpListener> = in_ns(&vm_b, move || {
        (0..samples as u16)
            .map(|i| TcpListener::bind(("0.0.0.0", first_port + i)).expect("bind"))
            .collect()
    });
    for l in listeners {
        std::thread::spawn(move || {
            for s in l.incoming() {
                drop(s);
            }
        });
    }
    let b_ip: Ipv4Addr = pb.ip;
    let probe = move |port: u16| -> bool { TcpStream::connect_timeout(&SocketAddr::from((b_ip, port)), PROBE).is_ok() };

    let mut ports_bound = 2usize;
    let mut rows = Vec::new();
    for &n in &sizes {
        let grow = Instant::now();
        while ports_bound < n {
            let g = if ports_bound.is_multiple_of(2) { ga.id } else { gb.id };
            let p: Port = c.post("ports", port(g)).await;
            c.bind(p.id, json!({"kind":"tap"})).await;
            ports_bound += 1;
        }
        let report = c.applied().await;
        eprintln!(
            "{n} ports bound and applied in {:?} (last pass: {} steps, nft {} ms)",
            grow.elapsed(),
            report.status.last_steps,
            report.status.last_nft_ms
        );
        let mut api_ms = Vec::new();
        let mut enforced_ms = Vec::new();
        for i in 0..samples {
            let tcp = first_port + i as u16;
            // Precondition: the port is refused before the rule exists.
            let refused = in_ns(&vm_a, move || !probe(tcp));
            assert!(refused, "port {tcp} open before its rule");
            let t0 = Instant::now();
            let rule = c
                .call(
                    Method::POST,
                    &c.path(&format!("security-groups/{}/rules", gb.id)),
                    Some(json!({"direction":"ingress","protocol":"tcp","port_min":tcp,"port_max":tcp,"remote_group": ga.id})),
                )
                .await;
            let api = t0.elapsed();
            let enforced = in_ns(&vm_a, move || {
                let deadline = Instant::now() + Duration::from_secs(120);
                loop {
                    if probe(tcp) {
                        return Some(Instant::now());
                    }
                    if Instant::now() > deadline {
                        return None;
                    }
                }
            })
            .expect("rule not enforced within 120 s");
            api_ms.push(api.as_secs_f64() * 1000.0);
            enforced_ms.push((enforced - t0).as_secs_f64() * 1000.0);
            let rule_id = rule["id"].as_str().expect("rule id").to_string();
            c.call(
                Method::DELETE,
                &c.path(&format!("security-groups/{}/rules/{rule_id}", gb.id)),
                None,
            )
            .await;
            c.applied().await;
        }
        let report = c.applied().await;
        let row = json!({
            "ports": n,
            "samples": samples,
            "enforced_p50_ms": percentile(&enforced_ms, 50.0),
            "enforced_p99_ms": percentile(&enforced_ms, 99.0),
            "enforced_max_ms": percentile(&enforced_ms, 100.0),
            "api_call_p50_ms": percentile(&api_ms, 50.0),
            "api_call_p99_ms": percentile(&api_ms, 99.0),
            "last_pass_nft_ms": report.status.last_nft_ms,
            "enforced_ms": enforced_ms,
        });
        eprintln!(
            "{n:>5} ports: API call p50 {:.1} ms; API call → enforced p50 {:.0} ms, p99 {:.0} ms",
            row["api_call_p50_ms"].as_f64().unwrap(),
            row["enforced_p50_ms"].as_f64().unwrap(),
            row["enforced_p99_ms"].as_f64().unwrap()
        );
        rows.push(row);
    }
    let out = json!({
        "benchmark": "net-rule-latency",
        "what": "POST security-groups/{id}/rules returns → first TCP connection accepted between two probe namespaces",
        "probe_granularity_ms": PROBE.as_millis() as u64,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": sh("uname -r").trim(),
        "load_average_at_end": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        "results": rows,
    });
    let text = serde_json::to_string_pretty(&out).unwrap();
    if let Some(d) = Path::new(&out_path).parent() {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(&out_path, &text).unwrap();
    println!("{text}");
    eprintln!("written: {out_path}");
    drop(cleanup);
}
