//! Tenant networking end to end through the real binary (`rampart up`, as the README starts
//! it), with real packets between network namespaces the test creates as stand-in VMs. Every
//! change goes through the public API; the local agent builds the data plane with the real
//! driver (`ip`, `nft`, `conntrack`, `dnsmasq`). Root only: without it each test says so and
//! passes, unless RAMPART_TEST_REQUIRE_ROOT=1 (CI), where it fails.
//!
//! No packet leaves the machine: the "VMs", the outside host and the external network are
//! namespaces and veths the test or Rampart creates.

use std::io::Read as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Method;
use rampart_api::network::{NodeNetworkReport, Port, Reachability, SecurityGroup, Subnet, Vpc};
use rampart_api::{Client, PasswordChange};
use rampart_common::Sensitive;
use serde_json::{Value, json};
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_rampart");

fn privileged(_test: &str) -> bool {
    let root = rampart_common::testing::is_root();
    let tools = ["nft", "conntrack", "dnsmasq", "busybox"].iter().all(|t| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    rampart_common::testing::require(
        rampart_common::testing::Need::Root,
        root && tools,
        "needs root and nft, conntrack, dnsmasq, busybox",
    )
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut b).unwrap();
    u32::from_le_bytes(b)
}

/// A short tag unique to this process and call.
fn tag() -> String {
    format!(
        "{:03x}{:x}",
        (std::process::id() ^ rand_u32()) & 0xfff,
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

fn sh(cmd: &str) -> (bool, String) {
    let out = Command::new("timeout")
        .args(["20", "bash", "-c", cmd])
        .output()
        .unwrap();
    let mut s = String::from_utf8_lossy(&out.stdout).to_string();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), s)
}

fn must(cmd: &str) -> String {
    let (ok, out) = sh(cmd);
    assert!(ok, "{cmd} failed: {out}");
    out
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A namespace standing in for a VM or an outside host; deleted (with what runs in it) on
/// drop.
struct Ns(String);

impl Ns {
    fn new() -> Ns {
        let name = format!("rpt-{}", tag());
        must(&format!("ip netns add {name} && ip -n {name} link set lo up"));
        Ns(name)
    }

    fn exec(&self, cmd: &str) -> (bool, String) {
        sh(&format!("ip netns exec {} {cmd}", self.0))
    }

    /// What the guest OS would do with its NIC: up, a static address, a default route.
    fn configure(&self, ip: Ipv4Addr, prefix: u8, gw: Option<Ipv4Addr>) {
        must(&format!(
            "ip -n {0} link set eth0 up && ip -n {0} addr replace {ip}/{prefix} dev eth0",
            self.0
        ));
        if let Some(g) = gw {
            must(&format!("ip -n {} route replace default via {g}", self.0));
        }
    }

    fn ping(&self, ip: Ipv4Addr) -> bool {
        self.exec(&format!("ping -c1 -W1 {ip}")).0
    }

    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("netns file");
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("netns thread")
    }

    /// A TCP server that accepts and holds connections until dropped.
    fn serve(&self, port: u16) -> Server {
        let held = Arc::new(Mutex::new(Vec::new()));
        let listener = self.run(move || TcpListener::bind(("0.0.0.0", port)).expect("bind"));
        let (l2, h) = (listener.try_clone().unwrap(), held.clone());
        std::thread::spawn(move || {
            for s in l2.incoming() {
                match s {
                    Ok(s) => h.lock().unwrap().push(s),
                    Err(_) => break,
                }
            }
        });
        Server { listener, held }
    }

    /// Up to `n` connections; a refused one costs the full timeout, which is generous because a
    /// loaded CI machine must not turn an allowed connection into a "denied" verdict.
    fn connect_many(&self, ip: Ipv4Addr, port: u16, n: usize) -> Vec<TcpStream> {
        self.run(move || {
            (0..n)
                .filter_map(|_| {
                    TcpStream::connect_timeout(&SocketAddr::from((ip, port)), Duration::from_millis(1000)).ok()
                })
                .collect()
        })
    }

    fn can_connect(&self, ip: Ipv4Addr, port: u16) -> bool {
        !self.connect_many(ip, port, 1).is_empty()
    }

    /// One attempt with a short timeout: only for polling until something opens, where a
    /// slow success merely costs another attempt (a refusal verdict needs `can_connect`).
    fn connects_within(&self, ip: Ipv4Addr, port: u16, timeout: Duration) -> bool {
        self.run(move || TcpStream::connect_timeout(&SocketAddr::from((ip, port)), timeout).is_ok())
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = sh(&format!(
            "ip netns pids {0} 2>/dev/null | xargs -r kill -9; ip netns del {0} 2>/dev/null",
            self.0
        ));
    }
}

struct Server {
    listener: TcpListener,
    held: Arc<Mutex<Vec<TcpStream>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = nix::sys::socket::shutdown(
            std::os::fd::AsRawFd::as_raw_fd(&self.listener),
            nix::sys::socket::Shutdown::Both,
        );
        self.held.lock().unwrap().clear();
    }
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One `rampart up` with its own namespace prefix, the admin logged in, and cleanup of every
/// namespace carrying the prefix on drop (whatever the test left).
struct Cloud {
    proc: Option<Proc>,
    dir: tempfile::TempDir,
    config: PathBuf,
    url: String,
    prefix: String,
    admin: Client,
    node: Uuid,
    project: Uuid,
}

impl Drop for Cloud {
    fn drop(&mut self) {
        drop(self.proc.take());
        let prefix = self.prefix.clone();
        if let Ok(dir) = std::fs::read_dir("/run/netns") {
            for e in dir.flatten() {
                let n = e.file_name().to_string_lossy().to_string();
                if n.starts_with(&prefix) {
                    let _ = sh(&format!("ip netns pids {n} | xargs -r kill -9; ip netns del {n}"));
                }
            }
        }
    }
}

fn start(dir: &Path, config: &Path) -> Proc {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("stderr.log"))
        .unwrap();
    Proc(
        Command::new(BIN)
            .args(["up", "--data-dir"])
            .arg(dir.join("data"))
            .arg("--config")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

async fn healthy(url: &str, ca: &Path) -> Client {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(pem) = std::fs::read(ca)
            && let Ok(c) = Client::with_ca(url, &pem)
            && let Ok(h) = c.health().await
            && h.nodes.ready == 1
        {
            return c;
        }
        assert!(Instant::now() < deadline, "{url} not healthy with its local node");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl Cloud {
    async fn up(extra_network_config: &str) -> Cloud {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let prefix = format!("rq{}-", tag());
        let config = dir.path().join("rampart.toml");
        std::fs::write(
            &config,
            format!(
                "[api]\nlisten = [\"127.0.0.1:{port}\"]\n[nodes]\nheartbeat_interval_s = 1\nheartbeat_timeout_s = 3\n\
                 [network]\nnetns_prefix = \"{prefix}\"\nreconcile_interval_s = 5\n{extra_network_config}\n"
            ),
        )
        .unwrap();
        let url = format!("https://127.0.0.1:{port}");
        let proc = start(dir.path(), &config);
        let data = dir.path().join("data");
        let rampart_testkit::up::UpAdmin { admin, project, .. } =
            rampart_testkit::up::take_over(&url, &data, 1, "Network-e2e-passphrase-7", Duration::from_secs(60)).await;
        let node = admin.nodes().await.unwrap().items[0].id;
        Cloud {
            proc: Some(proc),
            dir,
            config,
            url,
            prefix,
            admin,
            node,
            project,
        }
    }

    fn path(&self, rest: &str) -> String {
        format!("/v1/projects/{}/{rest}", self.project)
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let r = self
            .admin
            .send(method.clone(), path, body.as_ref())
            .await
            .unwrap_or_else(|e| panic!("{method} {path} {body:?}: {e}"));
        if r.status() == http::StatusCode::NO_CONTENT {
            return Value::Null;
        }
        r.json().await.unwrap()
    }

    async fn post<T: serde::de::DeserializeOwned>(&self, rest: &str, body: Value) -> T {
        serde_json::from_value(self.call(Method::POST, &self.path(rest), Some(body)).await).unwrap()
    }

    fn vpc_ns(&self, vpc: Uuid) -> String {
        format!("{}vpc-{}", self.prefix, vpc.simple())
    }

    /// A stand-in VM: a namespace the port's veth goes into, bound through the API.
    async fn vm(&self, port: &Port) -> Ns {
        let ns = Ns::new();
        self.call(
            Method::PUT,
            &self.path(&format!("ports/{}/binding", port.id)),
            Some(json!({"node": self.node, "device": {"kind":"veth","peer_netns": ns.0, "peer_name":"eth0"}})),
        )
        .await;
        ns
    }

    async fn report(&self) -> NodeNetworkReport {
        self.admin
            .get(&format!("/v1/nodes/{}/network", self.node))
            .await
            .unwrap()
    }

    /// Waits until the agent reports the node's current generation applied without errors.
    async fn applied(&self) -> NodeNetworkReport {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let g = self.admin.nodes().await.unwrap().items[0].generation;
            if let Ok(r) = self
                .admin
                .get::<NodeNetworkReport>(&format!("/v1/nodes/{}/network", self.node))
                .await
            {
                if r.status.applied_generation == g && r.status.errors.is_empty() {
                    return r;
                }
                assert!(
                    Instant::now() < deadline,
                    "generation {g} not applied: {:?}\n{}",
                    r.status,
                    std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "no network report");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the named counter the agent reports for `vpc` reaches `min`, and returns it.
    /// Counters reach the API late and at a varying delay: the agent re-reads them every
    /// heartbeat interval (1 s here) and sends them with its next heartbeat (another 1 s),
    /// plus `nft -j list ruleset` time on a loaded machine. A fixed sleep (1.5 s before)
    /// lost that race now and then; polling the report cannot.
    async fn counter_at_least(&self, vpc: Uuid, name: &str, min: u64) -> u64 {
        let started = Instant::now();
        let deadline = started + Duration::from_secs(20);
        loop {
            let v = self
                .report()
                .await
                .status
                .vpcs
                .iter()
                .find(|v| v.vpc == vpc)
                .and_then(|v| v.counters.get(name).copied())
                .unwrap_or(0);
            if v >= min {
                eprintln!(
                    "counter {name} = {v} reported {:?} after the check began",
                    started.elapsed()
                );
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "counter {name} still {v} (< {min}) in the node's report after {:?}",
                started.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn our_namespaces(&self) -> Vec<String> {
        std::fs::read_dir("/run/netns")
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .filter(|n| n.starts_with(&self.prefix))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Polls `f` every 20 ms until it holds; returns how long that took, or None after `limit`.
fn time_until(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if f() {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn rules_without_elements(ns: &str) -> String {
    must(&format!("ip netns exec {ns} nft -a list table inet rampart_fw"))
        .lines()
        .filter(|l| l.contains("# handle") && !l.contains("packets ") && !l.contains("elements"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spec_10_3_4_groups_segmentation_limits_and_flows_with_real_packets_through_rampart_up() {
    if !privileged("spec_10_3_4 e2e") {
        return;
    }
    let c = Cloud::up("").await;
    let vpc: Vpc = c.post("vpcs", json!({"name":"prod","cidr":"10.61.0.0/16"})).await;
    let subnet: Subnet = c
        .post(
            "subnets",
            json!({"vpc": vpc.id, "name":"s1","cidr":"10.61.1.0/24","dhcp": false}),
        )
        .await;
    let ga: SecurityGroup = c.post("security-groups", json!({"name":"a"})).await;
    let gb: SecurityGroup = c.post("security-groups", json!({"name":"b"})).await;
    let mk = |groups: Vec<Uuid>, tags: Value, extra: Value| {
        let mut b = json!({"subnet": subnet.id, "security_groups": groups, "tags": tags});
        if let Value::Object(m) = extra {
            for (k, v) in m {
                b[k] = v;
            }
        }
        b
    };
    let a1: Port = c.post("ports", mk(vec![ga.id], json!({"role":"web"}), json!({}))).await;
    let a2: Port = c.post("ports", mk(vec![ga.id], json!({"role":"web"}), json!({}))).await;
    let b1: Port = c
        .post(
            "ports",
            mk(vec![gb.id], json!({"role":"db"}), json!({"max_connections": 3})),
        )
        .await;
    let n1: Port = c.post("ports", mk(vec![gb.id], json!({"role":"db"}), json!({}))).await;
    let ports = [&a1, &a2, &b1, &n1];
    let mut vms = Vec::new();
    for p in ports {
        vms.push(c.vm(p).await);
    }
    c.applied().await;
    for (p, ns) in ports.iter().zip(&vms) {
        ns.configure(p.ip, 24, Some(subnet.gateway));
    }
    let (va1, va2, vb1) = (&vms[0], &vms[1], &vms[2]);
    let _servers: Vec<Server> = vms.iter().flat_map(|v| [v.serve(80), v.serve(443)]).collect();

    // 10.3-4: intra-group allowed, inter-group refused by default.
    assert!(va1.ping(a2.ip), "same group");
    assert!(va1.can_connect(a2.ip, 80));
    assert!(!va1.ping(b1.ip), "other group, default");
    assert!(!va1.can_connect(b1.ip, 80));

    // Configurable: group b admits tcp/80 from group a. Time from the API call to the
    // first connection that passes (controller → long poll → agent → nft).
    let t0 = Instant::now();
    c.call(
        Method::POST,
        &c.path(&format!("security-groups/{}/rules", gb.id)),
        Some(json!({"direction":"ingress","protocol":"tcp","port_min":80,"port_max":80,"remote_group": ga.id})),
    )
    .await;
    let api_ms = t0.elapsed();
    let took = time_until(Duration::from_secs(10), || {
        va1.connects_within(b1.ip, 80, Duration::from_millis(50))
    })
    .expect("rule never enforced");
    eprintln!(
        "API call {api_ms:?}, then rule enforced {took:?} later ({:?} from the call)",
        t0.elapsed()
    );
    assert!(!va1.ping(b1.ip), "icmp still refused");
    assert!(!va1.can_connect(b1.ip, 443), "only port 80");
    assert!(!vb1.can_connect(a2.ip, 80), "one-way");
    c.applied().await;

    // The reachability analysis of the API agrees with real packets on every pair.
    let vpc_ns = c.vpc_ns(vpc.id);
    must(&format!("ip netns exec {vpc_ns} conntrack -F"));
    let mut agreed = 0;
    for (i, from) in ports.iter().enumerate() {
        for (j, to) in ports.iter().enumerate() {
            if i == j {
                continue;
            }
            for port in [80u16, 443] {
                // Fresh conntrack per probe: b1's connection limit must not decide.
                must(&format!("ip netns exec {vpc_ns} conntrack -F"));
                let r: Reachability = c
                    .admin
                    .get(&c.path(&format!(
                        "reachability?from={}&to={}&protocol=tcp&port={port}",
                        from.id, to.id
                    )))
                    .await
                    .unwrap();
                let real = !vms[i].connect_many(to.ip, port, 1).is_empty();
                assert_eq!(r.allowed, real, "{i}->{j}:{port}: API says {r:?}, packets say {real}");
                agreed += 1;
            }
        }
    }
    eprintln!("reachability: {agreed} probes agreed with packets");

    // 10.8: b1 accepts exactly 3 connections; its neighbour in the same group is unaffected.
    must(&format!("ip netns exec {vpc_ns} conntrack -F"));
    let held = va1.connect_many(b1.ip, 80, 6);
    assert_eq!(held.len(), 3, "limited port");
    let held_n = va1.connect_many(n1.ip, 80, 6);
    assert_eq!(held_n.len(), 6, "neighbour unaffected");
    // The connection allowance exceeded is exposed (each refused attempt dropped a SYN).
    c.counter_at_least(
        vpc.id,
        &format!("port_{}_ct_drop", rampart_net::model::short_id(&b1.id)),
        3,
    )
    .await;
    drop((held, held_n));

    // 10.9-1: a deny policy on tags; retagging a2 puts it under the policy once the agent has
    // applied it, with set updates only (no rule or handle changes). The target is n1 (no
    // connection limit, so only the policy can refuse).
    c.call(
        Method::POST,
        &c.path("segmentation-policies"),
        Some(json!({"name":"no-batch-to-db","from":{"role":"batch"},"to":{"role":"db"},"protocol":"tcp","ports":[80],"action":"deny"})),
    )
    .await;
    c.applied().await;
    must(&format!("ip netns exec {vpc_ns} conntrack -F"));
    assert!(va2.can_connect(n1.ip, 80), "web may reach db:80");
    let rules_before = rules_without_elements(&vpc_ns);
    let t0 = Instant::now();
    c.call(
        Method::PATCH,
        &c.path(&format!("ports/{}", a2.id)),
        Some(json!({"tags": {"role":"batch"}})),
    )
    .await;
    // Wait for the agent to report the new generation applied, then probe once: polling for a
    // refused connection would take a merely slow one (loaded machine) for the policy.
    c.applied().await;
    eprintln!("retag applied by the agent {:?} after the API call", t0.elapsed());
    assert!(!va2.can_connect(n1.ip, 80), "the retagged port still reaches db:80");
    assert_eq!(rules_before, rules_without_elements(&vpc_ns), "a retag rewrote rules");
    assert!(va1.can_connect(n1.ip, 80), "the other web port is not affected");

    // 10.9-2: the flow graph names the endpoints, allowed and denied.
    let deadline = Instant::now() + Duration::from_secs(15);
    let graph = loop {
        let g: Value = c.admin.get(&c.path("flows")).await.unwrap();
        let edges = g["edges"].as_array().unwrap();
        let has = |from: &Port, to: &Port, verdict: &str| {
            edges.iter().any(|e| {
                e["from"] == json!(from.id) && e["to"] == json!(to.id) && e["port"] == 80 && e["verdict"] == verdict
            })
        };
        if has(&a1, &b1, "allowed") && has(&a2, &n1, "denied") {
            break g;
        }
        assert!(
            Instant::now() < deadline,
            "flows never showed a1→b1 allowed and a2→n1 denied: {g}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let icmp_denied = graph["edges"].as_array().unwrap().iter().any(|e| {
        e["from"] == json!(a1.id) && e["to"] == json!(b1.id) && e["protocol"] == "icmp" && e["verdict"] == "denied"
    });
    assert!(icmp_denied, "the refused ping is in the graph: {graph}");
    let dot = c
        .admin
        .send::<()>(Method::GET, &c.path("flows?format=dot"), None)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(dot.contains(&format!("\"{}\" -> \"{}\"", a1.id, b1.id)), "{dot}");

    // 9.1-1c: the VPC namespace routes, the root namespace does not forward.
    assert_eq!(
        must(&format!("ip netns exec {vpc_ns} sysctl -n net.ipv4.ip_forward")).trim(),
        "1"
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap().trim(),
        "0",
        "root namespace forwards"
    );

    // Hygiene: deleting the ports and the VPC leaves no namespace, link or process.
    for p in ports {
        c.call(Method::DELETE, &c.path(&format!("ports/{}", p.id)), None).await;
    }
    c.call(Method::DELETE, &c.path(&format!("vpcs/{}", vpc.id)), None).await;
    c.applied().await;
    assert!(c.our_namespaces().is_empty(), "{:?}", c.our_namespaces());
    let gone = time_until(Duration::from_secs(3), || !va1.exec("ip link show eth0").0);
    assert!(gone.is_some(), "the VM end of a deleted port survived");
}

fn udhcpc(ns: &Ns) -> String {
    must(&format!("ip -n {} link set eth0 up", ns.0));
    ns.exec("busybox udhcpc -i eth0 -n -q -f -t 4 -T 1 -s /bin/true").1
}

/// One UDP datagram from `sport` in `from` to `ip:dport` where `to` listens; true if it came.
fn udp_arrives(from: &Ns, to: &Ns, ip: Ipv4Addr, sport: u16, dport: u16) -> bool {
    let rx = to.run(move || {
        let s = std::net::UdpSocket::bind(("0.0.0.0", dport)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        s
    });
    from.run(move || {
        let s = std::net::UdpSocket::bind(("0.0.0.0", sport)).unwrap();
        s.send_to(b"offer", (ip, dport)).unwrap();
    });
    let mut buf = [0u8; 16];
    rx.recv_from(&mut buf).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spec_10_5_anti_spoofing_and_10_7_dhcp_quarantine_with_real_packets_through_rampart_up() {
    if !privileged("spec_10_5 e2e") {
        return;
    }
    let c = Cloud::up("").await;
    let vpc: Vpc = c.post("vpcs", json!({"name":"prod","cidr":"10.63.0.0/16"})).await;
    let subnet: Subnet = c
        .post(
            "subnets",
            json!({"vpc": vpc.id, "name":"s1","cidr":"10.63.1.0/24","dhcp": true}),
        )
        .await;
    let g: SecurityGroup = c.post("security-groups", json!({"name":"g"})).await;
    // Admit DHCP-client-port traffic from the whole subnet, so only the quarantine can stop a
    // rogue server's datagram.
    c.call(
        Method::POST,
        &c.path(&format!("security-groups/{}/rules", g.id)),
        Some(json!({"direction":"ingress","protocol":"udp","port_min":68,"port_max":68,"remote_cidr":"10.63.1.0/24"})),
    )
    .await;
    let port = |body: Value| {
        let mut b = body;
        b["subnet"] = json!(subnet.id);
        b
    };
    let p1: Port = c.post("ports", port(json!({"security_groups":[g.id]}))).await;
    let p2: Port = c.post("ports", port(json!({"security_groups":[g.id]}))).await;
    let p3: Port = c.post("ports", port(json!({"security_groups":[g.id]}))).await;
    let client: Port = c.post("ports", port(json!({"security_groups":[g.id]}))).await;
    let open: Port = c.post("ports", port(json!({"port_security": false}))).await;
    let (v1, v2, v3, vc, vo) = (
        c.vm(&p1).await,
        c.vm(&p2).await,
        c.vm(&p3).await,
        c.vm(&client).await,
        c.vm(&open).await,
    );
    c.applied().await;
    for (p, v) in [(&p1, &v1), (&p2, &v2), (&p3, &v3), (&open, &vo)] {
        v.configure(p.ip, 24, Some(subnet.gateway));
    }
    assert!(v1.ping(p3.ip) && v2.ping(p3.ip), "baseline");

    // 10.5: a spoofed source address is dropped.
    must(&format!("ip -n {} addr add 10.63.1.99/24 dev eth0", v1.0));
    assert!(
        !v1.exec(&format!("ping -c1 -W1 -I 10.63.1.99 {}", p3.ip)).0,
        "spoofed source passed"
    );
    must(&format!("ip -n {} addr del 10.63.1.99/24 dev eth0", v1.0));
    c.counter_at_least(vpc.id, "drop_ip_spoof", 1).await;
    // A changed MAC is dropped.
    must(&format!("ip -n {} link set eth0 address 02:aa:bb:cc:dd:ee", v1.0));
    must(&format!("ip -n {} neigh flush all", v3.0));
    assert!(!v1.ping(p3.ip), "changed MAC passed");
    c.counter_at_least(vpc.id, "drop_mac_spoof", 1).await;
    must(&format!("ip -n {} link set eth0 address {}", v1.0, p1.mac));
    assert!(v1.ping(p3.ip), "restored MAC passes again");
    // A gratuitous ARP for a neighbour's address does not poison anyone.
    assert!(v3.ping(p2.ip));
    must(&format!(
        "ip netns exec {} sysctl -qw net.ipv4.ip_nonlocal_bind=1",
        v1.0
    ));
    v1.exec(&format!("busybox arping -U -c 3 -w 2 -I eth0 -s {0} {0}", p2.ip));
    v1.exec(&format!("busybox arping -c 2 -w 2 -I eth0 -s {} {}", p2.ip, p3.ip));
    let neigh = v3.exec(&format!("ip neigh show {}", p2.ip)).1;
    assert!(neigh.contains(&p2.mac.to_string()), "ARP cache poisoned: {neigh}");
    c.counter_at_least(vpc.id, "drop_arp_spoof", 1).await;
    // Control: the same attack from the port without port security works, so the checks
    // above can fail.
    must(&format!(
        "ip netns exec {} sysctl -qw net.ipv4.ip_nonlocal_bind=1",
        vo.0
    ));
    vo.exec(&format!("busybox arping -U -c 3 -w 2 -I eth0 -s {0} {0}", p2.ip));
    vo.exec(&format!("busybox arping -c 2 -w 2 -I eth0 -s {} {}", p2.ip, p3.ip));
    let neigh = v3.exec(&format!("ip neigh show {}", p2.ip)).1;
    assert!(
        neigh.contains(&open.mac.to_string()),
        "control: poisoning from an open port: {neigh}"
    );

    // 10.7: a rogue DHCP server in a VM never leases; the platform's DHCP does.
    let (ok, out) = v2.exec(&format!(
        "dnsmasq --port=0 --interface=eth0 --bind-interfaces --dhcp-range=10.63.1.150,10.63.1.160,1h \
         --dhcp-authoritative --pid-file=/tmp/rogue-{0}.pid --dhcp-leasefile=/tmp/rogue-{0}.leases",
        v2.0
    ));
    assert!(ok, "rogue dnsmasq: {out}");
    let lease = udhcpc(&vc);
    let want = format!("lease of {} obtained from {}", client.ip, subnet.gateway);
    assert!(
        lease.contains(&want),
        "expected the platform's static lease ({want}): {lease}"
    );
    assert!(!lease.contains("10.63.1.15"), "rogue range leased: {lease}");
    // udhcpc ran without a script: put the leased address on the NIC as a guest would.
    vc.configure(client.ip, 24, Some(subnet.gateway));
    // The rogue server holds UDP/67 in v2; stop it so the probe below can send from that port.
    v2.exec(&format!(
        "timeout 5 sh -c 'p=$(cat /tmp/rogue-{}.pid); kill $p; while kill -0 $p 2>/dev/null; do sleep 0.05; done'",
        v2.0
    ));
    // Even unicast DHCP-server traffic from a VM is dropped; ordinary UDP passes; from the
    // open port (control) the same datagram passes.
    assert!(!udp_arrives(&v2, &vc, client.ip, 67, 68), "DHCP server traffic passed");
    assert!(udp_arrives(&v2, &vc, client.ip, 1067, 68), "ordinary UDP must pass");
    assert!(udp_arrives(&vo, &vc, client.ip, 67, 68), "control: unguarded port");
    c.counter_at_least(vpc.id, "drop_dhcp_server", 1).await;
    let _ = std::fs::remove_file(format!("/tmp/rogue-{}.leases", v2.0));
    let _ = std::fs::remove_file(format!("/tmp/rogue-{}.pid", v2.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spec_10_2_same_cidr_vpcs_apart_10_4_floating_ips_and_restart_keeps_flows_through_rampart_up() {
    if !privileged("spec_10_2 e2e") {
        return;
    }
    let mut c = Cloud::up("external_cidr = \"203.0.113.0/24\"\n").await;
    let mut nets = Vec::new();
    for name in ["a", "b"] {
        let vpc: Vpc = c
            .post(
                "vpcs",
                json!({"name": name, "cidr":"10.62.0.0/16", "external": name == "a"}),
            )
            .await;
        let s: Subnet = c
            .post(
                "subnets",
                json!({"vpc": vpc.id, "name":"s","cidr":"10.62.1.0/24","dhcp": false}),
            )
            .await;
        let g: SecurityGroup = c.post("security-groups", json!({"name": format!("g{name}")})).await;
        let p1: Port = c.post("ports", json!({"subnet": s.id, "security_groups":[g.id]})).await;
        let p2: Port = c.post("ports", json!({"subnet": s.id, "security_groups":[g.id]})).await;
        nets.push((vpc, s, g, p1, p2));
    }
    let (va1, va2) = (c.vm(&nets[0].3).await, c.vm(&nets[0].4).await);
    let (vb1, vb2) = (c.vm(&nets[1].3).await, c.vm(&nets[1].4).await);
    let (a1, a2, b1, b2) = (&nets[0].3, &nets[0].4, &nets[1].3, &nets[1].4);
    assert_eq!((a1.ip, a2.ip), (b1.ip, b2.ip), "the same addresses in both VPCs");
    // From outside: port 80 of group a is open to the world; a1 gets a floating IP.
    c.call(
        Method::POST,
        &c.path(&format!("security-groups/{}/rules", nets[0].2.id)),
        Some(json!({"direction":"ingress","protocol":"tcp","port_min":80,"port_max":80,"remote_cidr":"0.0.0.0/0"})),
    )
    .await;
    let fip: Value = c
        .call(Method::POST, &c.path("floating-ips"), Some(json!({"port": a1.id})))
        .await;
    let fip: Ipv4Addr = fip["address"].as_str().unwrap().parse().unwrap();
    c.applied().await;
    let gw = nets[0].1.gateway;
    for (p, v) in [(a1, &va1), (a2, &va2), (b1, &vb1), (b2, &vb2)] {
        v.configure(p.ip, 24, Some(gw));
    }
    let _sa = va2.serve(7000);
    let _sb = vb2.serve(7001);
    assert!(va1.can_connect(a2.ip, 7000));
    assert!(!va1.can_connect(a2.ip, 7001), "VPC a reached VPC b");
    assert!(vb1.can_connect(b2.ip, 7001));
    assert!(!vb1.can_connect(b2.ip, 7000), "VPC b reached VPC a");

    // An outside host on the external network (a namespace joined to Rampart's external
    // bridge: nothing reaches the real uplink).
    let out = Ns::new();
    let ext = format!("{}ext", c.prefix);
    must(&format!(
        "ip link add o{0} netns {ext} type veth peer name eth0 netns {1} && ip -n {ext} link set o{0} master brext up",
        tag(),
        out.0
    ));
    out.configure("203.0.113.200".parse().unwrap(), 24, None);
    let _s80 = va1.serve(80);
    let _s22 = va1.serve(22);
    assert!(out.can_connect(fip, 80), "floating IP on an allowed port");
    assert!(!out.can_connect(fip, 22), "floating IP on a port the group refuses");
    let router: Value = c
        .call(Method::GET, &c.path(&format!("vpcs/{}", nets[0].0.id)), None)
        .await;
    let router = router["router_external_ip"].as_str().unwrap().to_string();
    must(&format!("ip -n {} route add 10.62.0.0/16 via {router}", out.0));
    assert!(!out.can_connect(a1.ip, 80), "a private address reached from outside");
    must(&format!("ip -n {} route del 10.62.0.0/16", out.0));
    // Egress is SNAT-ed: to the floating IP for a1, to the router's address for a2; VPC b has
    // no outside access at all.
    let srv = out.serve(8080);
    let outside: Ipv4Addr = "203.0.113.200".parse().unwrap();
    assert!(va1.can_connect(outside, 8080) && va2.can_connect(outside, 8080));
    assert!(!vb1.can_connect(outside, 8080), "VPC b is not external");
    std::thread::sleep(Duration::from_millis(100));
    let peers: Vec<String> = srv
        .held
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.peer_addr().unwrap().ip().to_string())
        .collect();
    assert!(peers.contains(&fip.to_string()) && peers.contains(&router), "{peers:?}");

    // Restart (kill -9): the agent resumes, re-applies a byte-identical ruleset and does not
    // cut an established connection.
    let vpc_ns = c.vpc_ns(nets[0].0.id);
    let listing = || must(&format!("ip netns exec {vpc_ns} nft list ruleset | grep -v 'packets '"));
    let before = listing();
    let mut held = va1.connect_many(a2.ip, 7000, 1);
    assert_eq!(held.len(), 1);
    let mut proc = c.proc.take().unwrap();
    proc.0.kill().unwrap();
    proc.0.wait().unwrap();
    c.proc = Some(start(c.dir.path(), &c.config));
    healthy(&c.url, &c.dir.path().join("data/ca.pem")).await;
    c.applied().await;
    assert_eq!(before, listing(), "the restarted agent changed the ruleset");
    use std::io::Write as _;
    held[0].write_all(b"still there").unwrap();
    held[0].set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut b = [0u8; 1];
    let alive = match held[0].read(&mut b) {
        Ok(0) => false,
        Ok(_) => true,
        Err(e) => matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
    };
    assert!(alive, "the restart cut an established connection");
}

/// Two addresses joined by a veth pair between namespaces `a` and `b` (`a` and `b` may be
/// "root" for the initial namespace). Returns the interface names.
fn wire(a: Option<&str>, a_if: &str, a_ip: &str, b: &str, b_if: &str, b_ip: &str) {
    let side_a = a.map(|n| format!("netns {n}")).unwrap_or_default();
    must(&format!(
        "ip link add {a_if} {side_a} type veth peer name {b_if} netns {b} && \
         ip {na} addr add {a_ip} dev {a_if} && ip {na} link set {a_if} up && \
         ip -n {b} addr add {b_ip} dev {b_if} && ip -n {b} link set {b_if} up",
        na = a.map(|n| format!("-n {n}")).unwrap_or_default(),
    ));
}

async fn admin_of(url: &str, data: &Path) -> Client {
    let anon = healthy_nodes(url, &data.join("ca.pem"), 1).await;
    let bootstrap = std::fs::read_to_string(data.join("bootstrap-admin-password")).unwrap();
    let password = "Network-e2e-passphrase-8";
    anon.change_password(&PasswordChange {
        username: "admin".into(),
        domain: None,
        current_password: Sensitive::new(bootstrap.trim()),
        new_password: Sensitive::new(password),
        totp: None,
    })
    .await
    .unwrap();
    rampart_testkit::MfaUser::enrol(&anon, "admin", password)
        .await
        .unwrap()
        .login(&anon)
        .await
        .unwrap()
}

async fn healthy_nodes(url: &str, ca: &Path, ready: u64) -> Client {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(pem) = std::fs::read(ca)
            && let Ok(c) = Client::with_ca(url, &pem)
            && let Ok(h) = c.health().await
            && h.nodes.ready == ready
        {
            return c;
        }
        assert!(Instant::now() < deadline, "{url} not healthy with {ready} ready nodes");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Deletes every namespace whose name starts with one of the prefixes.
struct PrefixGuard(Vec<String>);

impl Drop for PrefixGuard {
    fn drop(&mut self) {
        if let Ok(dir) = std::fs::read_dir("/run/netns") {
            for e in dir.flatten() {
                let n = e.file_name().to_string_lossy().to_string();
                if self.0.iter().any(|p| n.starts_with(p)) {
                    let _ = sh(&format!("ip netns pids {n} | xargs -r kill -9; ip netns del {n}"));
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spec_10_3_3_vxlan_joins_a_vpc_across_two_hosts_and_membership_changes_reach_the_other() {
    if !privileged("vxlan e2e") {
        return;
    }
    // Two "hosts" (namespaces), joined by a veth underlay (the tenant plane) and each running
    // its own agent; host A also runs the controller, reached from here over a management veth.
    let (host_a, host_b) = (Ns::new(), Ns::new());
    let o = rand_u32() % 200 + 20;
    let t = tag();
    let (prefix_a, prefix_b) = (format!("rqa{t}-"), format!("rqb{t}-"));
    let _cleanup = PrefixGuard(vec![prefix_a.clone(), prefix_b.clone()]);
    wire(
        None,
        &format!("rm{t}"),
        &format!("10.232.{o}.1/30"),
        &host_a.0,
        "mgmt0",
        &format!("10.232.{o}.2/30"),
    );
    must(&format!(
        "ip link add und0 netns {a} type veth peer name und0 netns {b} && \
         ip -n {a} addr add 172.31.{o}.1/24 dev und0 && ip -n {a} link set und0 up && \
         ip -n {b} addr add 172.31.{o}.2/24 dev und0 && ip -n {b} link set und0 up",
        a = host_a.0,
        b = host_b.0
    ));
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("rampart.toml");
    std::fs::write(
        &config,
        format!(
            "[api]\nlisten = [\"10.232.{o}.2:{port}\", \"172.31.{o}.1:{port}\"]\n\
             [nodes]\nheartbeat_interval_s = 1\nheartbeat_timeout_s = 3\n\
             [local_agent]\nname = \"host-a\"\n\
             [network]\nnetns_prefix = \"{prefix_a}\"\nreconcile_interval_s = 5\n\
             tunnel_interface = \"und0\"\ntunnel_ip = \"172.31.{o}.1\"\n"
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    // nsenter switches only the network namespace: the namespaces the agents create stay
    // visible in /run/netns to everyone (ip netns exec would hide them in a mount namespace).
    let _controller = Proc(
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", host_a.0))
            .args([BIN, "up", "--data-dir"])
            .arg(&data)
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("a.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let url = format!("https://10.232.{o}.2:{port}");
    let admin = admin_of(&url, &data).await;
    let token = admin
        .create_join_token(&rampart_api::JoinTokenCreate {
            node_name: Some("host-b".into()),
            ttl_s: None,
        })
        .await
        .unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token.token.expose()).unwrap();
    let _agent_b = Proc(
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", host_b.0))
            .args([
                BIN,
                "agent",
                "--controller",
                &format!("https://172.31.{o}.1:{port}"),
                "--name",
                "host-b",
            ])
            .arg("--join-file")
            .arg(&token_file)
            .arg("--data-dir")
            .arg(dir.path().join("b"))
            .args(["--netns-prefix", &prefix_b, "--reconcile-interval-s", "5"])
            .args(["--tunnel-interface", "und0", "--tunnel-ip", &format!("172.31.{o}.2")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("b.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    healthy_nodes(&url, &data.join("ca.pem"), 2).await;
    let nodes = admin.nodes().await.unwrap().items;
    let node = |name: &str| nodes.iter().find(|n| n.name == name).unwrap().id;
    let (na, nb) = (node("host-a"), node("host-b"));
    let projects: rampart_api::List<rampart_api::Project> = admin.get("/v1/projects").await.unwrap();
    let p = projects.items.iter().find(|p| p.name == "admin").unwrap().id;
    let post = |path: String, body: Value| {
        let admin = admin.clone();
        async move {
            let v: Value = admin
                .post(&format!("/v1/projects/{p}/{path}"), &body)
                .await
                .unwrap_or_else(|e| panic!("{path}: {e}"));
            v
        }
    };
    let vpc = post("vpcs".into(), json!({"name":"span","cidr":"10.64.0.0/16"})).await;
    let subnet = post(
        "subnets".into(),
        json!({"vpc": vpc["id"], "name":"s","cidr":"10.64.1.0/24","dhcp": false}),
    )
    .await;
    let g = post("security-groups".into(), json!({"name":"g"})).await;
    let h = post("security-groups".into(), json!({"name":"h"})).await;
    let a1: Port = serde_json::from_value(
        post(
            "ports".into(),
            json!({"subnet": subnet["id"], "security_groups":[h["id"]]}),
        )
        .await,
    )
    .unwrap();
    let b1: Port = serde_json::from_value(
        post(
            "ports".into(),
            json!({"subnet": subnet["id"], "security_groups":[g["id"]]}),
        )
        .await,
    )
    .unwrap();
    let b2: Port = serde_json::from_value(
        post(
            "ports".into(),
            json!({"subnet": subnet["id"], "security_groups":[h["id"]]}),
        )
        .await,
    )
    .unwrap();
    let mut vms = Vec::new();
    for (port_, node_) in [(&a1, na), (&b1, nb), (&b2, nb)] {
        let ns = Ns::new();
        admin
            .send(
                Method::PUT,
                &format!("/v1/projects/{p}/ports/{}/binding", port_.id),
                Some(&json!({"node": node_, "device": {"kind":"veth","peer_netns": ns.0, "peer_name":"eth0"}})),
            )
            .await
            .unwrap();
        vms.push(ns);
    }
    let applied = |node_: Uuid| {
        let admin = admin.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let g = admin
                    .nodes()
                    .await
                    .unwrap()
                    .items
                    .into_iter()
                    .find(|n| n.id == node_)
                    .unwrap()
                    .generation;
                if let Ok(r) = admin
                    .get::<NodeNetworkReport>(&format!("/v1/nodes/{node_}/network"))
                    .await
                    && r.status.applied_generation == g
                    && r.status.errors.is_empty()
                {
                    return r;
                }
                assert!(Instant::now() < deadline, "node {node_} did not apply generation {g}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let ra = applied(na).await;
    applied(nb).await;
    assert_eq!(
        ra.status.tunnel_ip.map(|i| i.to_string()),
        Some(format!("172.31.{o}.1"))
    );
    let gw: Ipv4Addr = subnet["gateway"].as_str().unwrap().parse().unwrap();
    for (pt, ns) in [(&a1, &vms[0]), (&b1, &vms[1]), (&b2, &vms[2])] {
        ns.configure(pt.ip, 24, Some(gw));
    }
    let (va1, vb1, vb2) = (&vms[0], &vms[1], &vms[2]);
    let vpc_id: Uuid = serde_json::from_value(vpc["id"].clone()).unwrap();
    let segment = subnet["segment_id"].as_u64().unwrap();
    let vx = must(&format!("ip -n {prefix_a}vpc-{} -d link show", vpc_id.simple()));
    assert!(
        vx.contains(&format!("vxlan id {segment}")),
        "host A's end of the tunnel: {vx}"
    );

    // Across hosts, inside one group: a1 (host A) and b2 (host B) are both in h.
    assert!(va1.ping(b2.ip), "same group across hosts (VXLAN)");
    let _s = vb1.serve(80);
    assert!(!va1.can_connect(b1.ip, 80), "a1 is not in b1's group");
    // The membership change of a port on host A takes effect on host B.
    admin
        .send(
            Method::PATCH,
            &format!("/v1/projects/{p}/ports/{}", a1.id),
            Some(&json!({"security_groups":[g["id"], h["id"]]})),
        )
        .await
        .unwrap();
    let took = time_until(Duration::from_secs(15), || va1.can_connect(b1.ip, 80));
    eprintln!("membership change on host A enforced on host B after {took:?}");
    assert!(took.is_some(), "b1 on host B never admitted a1 after it joined g");
    applied(nb).await;
    assert!(vb2.ping(a1.ip), "and the way back");
    // Another subnet's traffic never crosses: b1's host-B router does not answer for host A.
    let vni = must(&format!("ip -n {prefix_b}vpc-{} -d link show", vpc_id.simple()));
    assert!(vni.contains(&format!("vxlan id {segment}")), "{vni}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_10_1_and_10_6_api_answers_only_on_the_management_plane_from_trusted_sources() {
    if !privileged("planes e2e") {
        return;
    }
    // A node with a management and a storage interface; clients on each plane.
    let node = Ns::new();
    let mgmt = Ns::new();
    let stor = Ns::new();
    let o = rand_u32() % 200 + 20;
    let t = tag();
    wire(
        Some(&node.0),
        "mgmt0",
        &format!("10.20.{o}.1/24"),
        &mgmt.0,
        &format!("mc{t}"),
        &format!("10.20.{o}.2/24"),
    );
    must(&format!("ip -n {} addr add 10.20.{o}.3/24 dev mc{t}", mgmt.0));
    wire(
        Some(&node.0),
        "stor0",
        &format!("10.30.{o}.1/24"),
        &stor.0,
        &format!("sc{t}"),
        &format!("10.30.{o}.2/24"),
    );
    // The storage client routes to the management address through the storage interface: on
    // Linux (weak host model) a service bound only to the address would answer it.
    must(&format!("ip -n {} route add 10.20.{o}.0/24 via 10.30.{o}.1", stor.0));
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("rampart.toml");
    std::fs::write(
        &config,
        format!(
            "[api]\nlisten = [\"10.20.{o}.1:{port}\"]\n\
             [network]\nmanagement_interface = \"mgmt0\"\nmanagement_sources = [\"10.20.{o}.2/32\"]\n"
        ),
    )
    .unwrap();
    let _controller = Proc(
        Command::new("ip")
            .args(["netns", "exec", &node.0, BIN, "controller", "--data-dir"])
            .arg(dir.path().join("data"))
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("c.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let url = format!("https://10.20.{o}.1:{port}/v1/health");
    let curl = |ns: &Ns, from: &str| ns.exec(&format!("curl -sk --connect-timeout 2 --interface {from} {url}"));
    let up = time_until(Duration::from_secs(60), || curl(&mgmt, &format!("10.20.{o}.2")).0);
    assert!(
        up.is_some(),
        "API not reachable from the trusted management client: {}",
        std::fs::read_to_string(dir.path().join("c.log")).unwrap_or_default()
    );
    assert!(
        !curl(&mgmt, &format!("10.20.{o}.3")).0,
        "untrusted source on the management plane answered"
    );
    assert!(
        !curl(&stor, &format!("10.30.{o}.2")).0,
        "the API answered on the storage plane"
    );
    // Control: an ordinary service bound to the same address does answer the storage plane.
    let _leak = node.serve(port + 1);
    assert!(
        stor.can_connect(format!("10.20.{o}.1").parse().unwrap(), port + 1),
        "control: the weak host model lets the storage plane in"
    );
    let counters = must(&format!(
        "ip netns exec {} nft list counter inet rampart_api_{port} refused",
        node.0
    ));
    assert!(!counters.contains("packets 0 "), "{counters}");
    // Each layer holds on its own: without the input filter, pinning still refuses the
    // storage plane (while the untrusted management source now gets in).
    must(&format!(
        "ip netns exec {} nft delete table inet rampart_api_{port}",
        node.0
    ));
    assert!(
        curl(&mgmt, &format!("10.20.{o}.3")).0,
        "filter gone: the management plane answers all"
    );
    assert!(
        !curl(&stor, &format!("10.30.{o}.2")).0,
        "SO_BINDTODEVICE alone keeps the storage plane out"
    );
}

// ---- VMs on tenant ports ----

const BOOT_MARKER: &str = "RAMPART-BOOT-OK";

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The demo guest (Debian cloud kernel + busybox initramfs, from Debian packages only), built
/// once by the compute crate's script into `RAMPART_DEMO_IMAGE` or the workspace's
/// `target/demo-image` (reused when present).
fn demo_image() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rampart-compute/scripts/build-demo-image.sh");
    let out = std::env::var_os("RAMPART_DEMO_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/demo-image"));
    let st = Command::new(script)
        .arg(&out)
        .status()
        .expect("running build-demo-image.sh");
    assert!(st.success(), "build-demo-image.sh failed");
    out
}

/// Ends whatever VMs a test left under its own VM directory (VMs outlive their agent by
/// design), with the driver's own destroy, then removes the directory.
struct VmDir(PathBuf);

impl Drop for VmDir {
    fn drop(&mut self) {
        let dir = self.0.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                use rampart_compute::driver::{Hypervisor, QemuDriver, QemuDriverConfig};
                if let Ok(cfg) = QemuDriverConfig::new(dir.clone()) {
                    let d = QemuDriver::new(cfg);
                    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                        if let Ok(id) = e.file_name().to_string_lossy().parse::<Uuid>() {
                            let _ = d.destroy(id).await;
                        }
                    }
                }
            });
            let _ = std::fs::remove_dir_all(&dir);
        })
        .join();
    }
}

impl Cloud {
    /// Registers an image signed by `key` and uploads its bytes.
    async fn image(&self, key: &rampart_compute::image::SigningKey, name: &str, file: &Path, extra: Value) -> Uuid {
        let sig = key.sign_file(file).unwrap();
        let mut body = json!({"name": name, "signature": sig.signature, "signing_key": sig.key_id});
        if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
            b.extend(e);
        }
        let created: Value = self.post("images", body).await;
        let id: Uuid = created["id"].as_str().unwrap().parse().unwrap();
        // The token goes to curl in a private file, not on its command line.
        let header = self.dir.path().join("auth-header");
        std::fs::write(
            &header,
            format!("Authorization: Bearer {}\n", self.admin.token().unwrap().expose()),
        )
        .unwrap();
        // The kernel is about 50 MiB, hashed as it streams: more time than `sh` gives.
        let out = Command::new("curl")
            .args(["-sS", "--fail-with-body", "--max-time", "120", "--cacert"])
            .arg(self.dir.path().join("data/ca.pem"))
            .arg("-H")
            .arg(format!("@{}", header.display()))
            .args([
                "-H",
                "content-type: application/octet-stream",
                "-X",
                "PUT",
                "--data-binary",
            ])
            .arg(format!("@{}", file.display()))
            .arg(format!("{}/v1/projects/{}/images/{id}/data", self.url, self.project))
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&header);
        let out = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        let after: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(after["status"], "active", "{after}");
        id
    }

    /// The status and, for an error, `{"error":{"code":…}}`.
    async fn try_call(&self, method: Method, rest: &str, body: Option<Value>) -> (http::StatusCode, Value) {
        match self.admin.send(method, &self.path(rest), body.as_ref()).await {
            Ok(r) => {
                let s = r.status();
                (s, r.json().await.unwrap_or(Value::Null))
            }
            Err(e) => (
                e.status().expect("an HTTP answer"),
                json!({"error": {"code": e.code(), "message": e.to_string()}}),
            ),
        }
    }
}

/// Issue 7 with issue 6 (spec 10.3-2: a VM joins its security groups when it is created): the
/// demo guest boots under TCG through `rampart up` with a port made from a subnet, takes that
/// port's address by DHCP from the VPC's dnsmasq, answers a "VM" of its own group, and one of
/// another group only while a rule admits it: no reply by default (10.3-4), ping once the group
/// admits ICMP from the other group, TCP only once a TCP rule exists, and no reply again when
/// the rules go. Deleting the instance removes its port and tap.
/// The boot marker line of an instance's console (180 s at most under TCG).
async fn boot_marker(c: &Cloud, id: Uuid) -> String {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let v: Value = c
            .call(Method::GET, &c.path(&format!("instances/{id}/console")), None)
            .await;
        let out = v["output"].as_str().unwrap_or("").to_string();
        if let Some(l) = out.lines().find(|l| l.contains(BOOT_MARKER)) {
            return l.to_string();
        }
        if Instant::now() > deadline {
            let i: Value = c.call(Method::GET, &c.path(&format!("instances/{id}")), None).await;
            let ev: Value = c
                .call(Method::GET, &c.path(&format!("instances/{id}/events")), None)
                .await;
            panic!(
                "no boot marker within 180 s: {i}\n{ev}\nconsole: {out}\n{}",
                std::fs::read_to_string(c.dir.path().join("stderr.log")).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spec_10_3_2_a_vm_booted_into_a_security_group_answers_only_what_its_group_admits() {
    let test = "spec_10_3_2_a_vm_booted_into_a_security_group_answers_only_what_its_group_admits";
    if !privileged(test) {
        return;
    }
    let tools = [
        "qemu-system-x86_64",
        "genisoimage",
        "setpriv",
        "curl",
        "ssh",
        "ssh-keygen",
    ];
    if !rampart_common::testing::require(
        rampart_common::testing::Need::Root,
        tools.iter().all(|t| have(t)),
        &format!("needs {tools:?}"),
    ) {
        return;
    }
    let img = demo_image();
    // Outside the data directory: VM uids must reach their own directories.
    let vm_dir = VmDir(PathBuf::from(format!("/tmp/rampart-vmtest-{}", tag())));
    let c = Cloud::up(&format!(
        "[compute]\nvm_state_dir = \"{}\"\naccel = \"tcg\"\n",
        vm_dir.0.display()
    ))
    .await;
    let key = rampart_compute::image::SigningKey::generate().unwrap();
    let _: Value = c
        .call(
            Method::POST,
            "/v1/signing-keys",
            Some(json!({"name": format!("demo-{}", tag()), "public_key": key.public_key().to_text()})),
        )
        .await;
    let initrd = c
        .image(
            &key,
            "demo-initrd",
            &img.join("initrd.img"),
            json!({"disk_format": "initrd"}),
        )
        .await;
    let kernel = c
        .image(
            &key,
            "demo-kernel",
            &img.join("vmlinux"),
            json!({"disk_format": "kernel", "ramdisk_image": initrd}),
        )
        .await;

    let vpc: Vpc = c.post("vpcs", json!({"name":"vms","cidr":"10.71.0.0/16"})).await;
    let subnet: Subnet = c
        .post(
            "subnets",
            json!({"vpc": vpc.id, "name":"s1","cidr":"10.71.1.0/24","dhcp": true}),
        )
        .await;
    let web: SecurityGroup = c.post("security-groups", json!({"name":"web"})).await;
    let probe_group: SecurityGroup = c.post("security-groups", json!({"name":"probe"})).await;
    let probe_port: Port = c
        .post(
            "ports",
            json!({"subnet": subnet.id, "security_groups": [probe_group.id]}),
        )
        .await;
    let probe = c.vm(&probe_port).await;
    // A stand-in VM in the guest's own group.
    let peer_port: Port = c
        .post("ports", json!({"subnet": subnet.id, "security_groups": [web.id]}))
        .await;
    let peer = c.vm(&peer_port).await;
    c.applied().await;
    probe.configure(probe_port.ip, 24, Some(subnet.gateway));
    peer.configure(peer_port.ip, 24, Some(subnet.gateway));

    // Refusals first (nothing boots): unknown port 404, a port in use 409 `port_in_use`, ports
    // of two VPCs 400.
    let body = |extra: Value| {
        let mut b = json!({"name": "vm1", "image": kernel, "flavor": "tiny"});
        if let (Some(m), Value::Object(e)) = (b.as_object_mut(), extra) {
            m.extend(e);
        }
        b
    };
    let (s, e) = c
        .try_call(
            Method::POST,
            "instances",
            Some(body(json!({"ports": [Uuid::new_v4()]}))),
        )
        .await;
    assert_eq!(s, http::StatusCode::NOT_FOUND, "{e}");
    let (s, e) = c
        .try_call(Method::POST, "instances", Some(body(json!({"ports": [probe_port.id]}))))
        .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (http::StatusCode::CONFLICT, Some("port_in_use")),
        "{e}"
    );

    // The tenant's key pair: only the public half goes to the API, the guest gets it from its
    // config drive.
    let keys = tempfile::tempdir().unwrap();
    let ssh_key = keys.path().join("id_ed25519");
    must(&format!(
        "ssh-keygen -q -t ed25519 -N '' -C tenant@rampart -f {}",
        ssh_key.display()
    ));
    let pubkey = std::fs::read_to_string(ssh_key.with_extension("pub")).unwrap();

    let t0 = Instant::now();
    let inst: Value = c
        .post(
            "instances",
            body(json!({"networks": [subnet.id], "security_groups": [web.id], "ssh_keys": [pubkey.trim()]})),
        )
        .await;
    let id: Uuid = inst["id"].as_str().unwrap().parse().unwrap();
    let port_id: Uuid = inst["ports"][0].as_str().expect("the instance's port").parse().unwrap();
    let port: Port =
        serde_json::from_value(c.call(Method::GET, &c.path(&format!("ports/{port_id}")), None).await).unwrap();
    assert_eq!(port.security_groups, vec![web.id]);
    let binding = port.binding.as_ref().expect("bound to the instance's node");
    assert_eq!(binding.node, c.node);
    assert_eq!(binding.device, rampart_api::network::PortDevice::Tap);
    // The port belongs to the instance until it is deleted.
    let (s, e) = c.try_call(Method::DELETE, &format!("ports/{port_id}"), None).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (http::StatusCode::CONFLICT, Some("port_in_use")),
        "{e}"
    );

    // The guest boots, takes the port's address from the VPC's DHCP and says so on its console.
    let marker = boot_marker(&c, id).await;
    eprintln!(
        "VM on a tenant port: API call to boot marker {:.1} s ({marker})",
        t0.elapsed().as_secs_f64()
    );
    assert!(
        marker.contains(&format!("ip={}", port.ip)),
        "DHCP gave the port's address: {marker}"
    );
    let inst: Value = c.call(Method::GET, &c.path(&format!("instances/{id}")), None).await;
    assert_eq!(inst["status"], "running", "{inst}");
    let uid = inst["vm_uid"].as_u64().expect("vm uid");
    assert_ne!(uid, 0);
    // The tap is the VM's own: QEMU (no capabilities) opened it, no other uid may.
    let tap = rampart_net::desired::names::port_dev(&port_id);
    let link = must(&format!("ip -n {} -d -j link show dev {tap}", c.vpc_ns(vpc.id)));
    let link: Value = serde_json::from_str(&link).unwrap();
    assert_eq!(link[0]["linkinfo"]["info_data"]["user"].as_u64(), Some(uid), "{link}");
    assert_eq!(
        link[0]["master"].as_str(),
        Some(rampart_net::desired::names::bridge(&subnet.id).as_str())
    );

    // 10.3-4: the guest answers its own group, not another one by default.
    assert!(
        time_until(Duration::from_secs(10), || peer.ping(port.ip)).is_some(),
        "the guest answers a member of its own group"
    );
    assert!(!probe.ping(port.ip), "group web must not answer group probe by default");
    // Configurable: web admits ICMP from probe.
    let rule: Value = c
        .post(
            &format!("security-groups/{}/rules", web.id),
            json!({"direction":"ingress","protocol":"icmp","remote_group": probe_group.id}),
        )
        .await;
    let took = time_until(Duration::from_secs(15), || probe.ping(port.ip));
    assert!(
        took.is_some(),
        "the guest answers once its group admits ICMP from the probe's group"
    );
    eprintln!("rule to first guest reply: {:?}", took.unwrap());
    // Only ICMP: the guest's SSH server (dropbear on 22) stays out of reach until TCP is admitted.
    assert!(!probe.can_connect(port.ip, 22), "only ICMP was admitted");
    let ssh_rule: Value = c
        .post(
            &format!("security-groups/{}/rules", web.id),
            json!({"direction":"ingress","protocol":"tcp","port_min":22,"port_max":22,"remote_group": probe_group.id}),
        )
        .await;
    assert!(
        time_until(Duration::from_secs(15), || probe.can_connect(port.ip, 22)).is_some(),
        "TCP/22 reaches the guest's SSH server once admitted"
    );
    // 12.1-2: the tenant logs in with the key given at create time.
    let ssh = |host: Ipv4Addr, command: &str| {
        sh(&format!(
            "ip netns exec {} ssh -i {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
             -o BatchMode=yes -o ConnectTimeout=10 -o LogLevel=ERROR rampart@{host} '{command}'",
            probe.0,
            ssh_key.display(),
        ))
    };
    let mut login = ssh(port.ip, "id -u");
    for _ in 0..10 {
        if login.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        login = ssh(port.ip, "id -u");
    }
    assert_eq!(
        (login.0, login.1.trim()),
        (true, "1000"),
        "SSH login with the key injected through the API"
    );
    // The rule goes: no reply any more.
    for r in [&rule, &ssh_rule] {
        c.call(
            Method::DELETE,
            &c.path(&format!(
                "security-groups/{}/rules/{}",
                web.id,
                r["id"].as_str().unwrap()
            )),
            None,
        )
        .await;
    }
    assert!(
        time_until(Duration::from_secs(15), || !probe.ping(port.ip)).is_some(),
        "no reply after the rule is removed"
    );
    assert!(!probe.ping(port.ip) && !probe.ping(port.ip), "still no reply");
    assert!(!probe.can_connect(port.ip, 22));

    // VM to VM: a second guest in the probe group cannot reach the first (group web) until it
    // joins web too. It is driven over SSH from the probe namespace (same group as it).
    let vm2: Value = c
        .post(
            "instances",
            json!({"name": "vm2", "image": kernel, "flavor": "tiny", "networks": [subnet.id],
                   "security_groups": [probe_group.id], "ssh_keys": [pubkey.trim()]}),
        )
        .await;
    let id2: Uuid = vm2["id"].as_str().unwrap().parse().unwrap();
    let port2_id: Uuid = vm2["ports"][0].as_str().unwrap().parse().unwrap();
    let port2: Port =
        serde_json::from_value(c.call(Method::GET, &c.path(&format!("ports/{port2_id}")), None).await).unwrap();
    boot_marker(&c, id2).await;
    let banner = format!("echo | nc -w 3 {} 22", port.ip);
    let banner_seen = || ssh(port2.ip, &banner).1.contains("SSH-2.0");
    assert!(
        ssh(port2.ip, "id -u").0,
        "the probe namespace logs in to the second guest (same group)"
    );
    assert!(
        !banner_seen() && !banner_seen(),
        "a VM in another group gets nothing from the guest"
    );
    c.call(
        Method::PATCH,
        &c.path(&format!("ports/{port2_id}")),
        Some(json!({"security_groups": [probe_group.id, web.id]})),
    )
    .await;
    c.applied().await;
    assert!(
        (0..10).any(|_| banner_seen() || {
            std::thread::sleep(Duration::from_millis(500));
            false
        }),
        "a VM of the guest's own group reaches it"
    );
    c.call(Method::DELETE, &c.path(&format!("instances/{id2}")), None).await;

    // Deleting the instance ends the VM, deletes the port it made and its tap.
    c.call(Method::DELETE, &c.path(&format!("instances/{id}")), None).await;
    let gone = time_until(Duration::from_secs(30), || {
        let (ok, _) = sh(&format!("ip -n {} link show dev {tap}", c.vpc_ns(vpc.id)));
        !ok
    });
    assert!(gone.is_some(), "the tap is removed with the instance");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (s, _) = c.try_call(Method::GET, &format!("instances/{id}"), None).await;
        if s == http::StatusCode::NOT_FOUND {
            break;
        }
        assert!(Instant::now() < deadline, "instance not gone: {s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (s, _) = c.try_call(Method::GET, &format!("ports/{port_id}"), None).await;
    assert_eq!(
        s,
        http::StatusCode::NOT_FOUND,
        "the port made for the instance is deleted with it"
    );
    assert!(
        std::fs::read_dir(&vm_dir.0).map(|d| d.count()).unwrap_or(0) == 0,
        "the VM's directory is gone"
    );
    drop((probe, peer));
    drop(c);
}
