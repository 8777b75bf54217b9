//! Harness of the privileged data-plane tests: throwaway namespaces with Drop guards, sockets
//! opened inside a namespace, real packets only between namespaces the test created.
#![allow(dead_code)]

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rampart_net::desired::{ExternalNetwork, NetNodeConfig, NodeNetwork};
use rampart_net::exec::{ApplyReport, IpNftDriver, NetDriver, reconcile};
use rampart_net::plan::{Observed, Step, plan};

/// True when the test may run. Without root it prints why it skips, unless
/// `RAMPART_TEST_REQUIRE_ROOT=1`, where it fails instead.
pub fn root_or_skip(_test: &str) -> bool {
    let ok = rampart_common::testing::is_root()
        && Command::new("nft")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    rampart_common::testing::require(rampart_common::testing::Need::Root, ok, "not root or nft missing")
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique short tag for names of this test run.
pub fn unique() -> String {
    format!(
        "{:x}{}",
        std::process::id() % 0xffff,
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

pub fn sh(cmd: &str) -> (bool, String) {
    let out = Command::new("timeout")
        .args(["20", "bash", "-c", cmd])
        .output()
        .expect("bash");
    let mut s = String::from_utf8_lossy(&out.stdout).to_string();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), s)
}

pub fn must(cmd: &str) -> String {
    let (ok, out) = sh(cmd);
    assert!(ok, "{cmd} failed: {out}");
    out
}

fn delete_netns(name: &str) {
    let _ = sh(&format!(
        "ip netns pids {name} 2>/dev/null | xargs -r kill -9; ip netns del {name} 2>/dev/null"
    ));
}

/// A namespace standing in for a VM or an outside host; deleted on drop.
pub struct Netns(pub String);

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!("rpt-{tag}-{}", unique());
        must(&format!("ip netns add {name} && ip -n {name} link set lo up"));
        Netns(name)
    }

    pub fn exec(&self, cmd: &str) -> (bool, String) {
        sh(&format!("ip netns exec {} {cmd}", self.0))
    }

    /// Brings the port device up inside like a guest OS would, with a static address.
    pub fn configure(&self, ip: Ipv4Addr, prefix: u8, gw: Option<Ipv4Addr>) {
        must(&format!(
            "ip -n {0} link set eth0 up && ip -n {0} addr add {ip}/{prefix} dev eth0",
            self.0
        ));
        if let Some(g) = gw {
            must(&format!("ip -n {} route add default via {g}", self.0));
        }
    }

    pub fn ping(&self, ip: Ipv4Addr) -> bool {
        self.exec(&format!("ping -c1 -W1 {ip}")).0
    }

    /// Runs `f` on a thread inside this namespace: sockets it opens stay in the namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("netns file");
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("netns thread")
    }

    /// A TCP server on `port` that accepts and keeps connections open until dropped.
    pub fn serve(&self, port: u16) -> Server {
        let held = Arc::new(Mutex::new(Vec::new()));
        let h = held.clone();
        let listener = self.run(move || TcpListener::bind(("0.0.0.0", port)).expect("bind"));
        listener.set_nonblocking(false).unwrap();
        let l2 = listener.try_clone().unwrap();
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

    /// Opens `n` TCP connections (each with `timeout` to connect) and keeps the ones that
    /// succeeded.
    pub fn connect_many(&self, ip: Ipv4Addr, port: u16, n: usize, timeout: Duration) -> Vec<TcpStream> {
        self.run(move || {
            (0..n)
                .filter_map(|_| TcpStream::connect_timeout(&SocketAddr::from((ip, port)), timeout).ok())
                .collect()
        })
    }

    pub fn can_connect(&self, ip: Ipv4Addr, port: u16) -> bool {
        !self.connect_many(ip, port, 1, Duration::from_millis(400)).is_empty()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete_netns(&self.0);
    }
}

pub struct Server {
    pub listener: TcpListener,
    pub held: Arc<Mutex<Vec<TcpStream>>>,
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

/// Echo check over an established connection: proves it still passes.
pub fn still_open(s: &mut TcpStream) -> bool {
    use std::io::Write;
    s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    if s.write_all(b"x").is_err() {
        return false;
    }
    let mut b = [0u8; 1];
    // The server never writes: a timeout means the path is alive, a reset or EOF that it died.
    match s.read(&mut b) {
        Ok(0) => false,
        Ok(_) => true,
        Err(e) => matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
    }
}

/// One simulated node: its agent config, the real driver, and cleanup of everything with its
/// prefix on drop.
pub struct Node {
    pub cfg: NetNodeConfig,
    pub driver: IpNftDriver,
    pub run_dir: tempfile_dir::Dir,
}

pub mod tempfile_dir {
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Node {
    pub fn new() -> Node {
        let tag = unique();
        let dir = std::env::temp_dir().join(format!("rampart-net-test-{tag}"));
        std::fs::create_dir_all(&dir).unwrap();
        Node {
            cfg: NetNodeConfig {
                netns_prefix: format!("rpn-{tag}-"),
                run_dir: dir.clone(),
                underlay: None,
            },
            driver: IpNftDriver::default(),
            run_dir: tempfile_dir::Dir(dir),
        }
    }

    pub fn apply(&self, desired: &NodeNetwork) -> (Vec<Step>, ApplyReport) {
        let (steps, report) = reconcile(&self.driver, &self.cfg, desired).expect("reconcile");
        assert!(report.errors.is_empty(), "apply failed: {:?}", report.errors);
        (steps, report)
    }

    pub fn observe(&self) -> Observed {
        self.driver.observe(&self.cfg).expect("observe")
    }

    /// Plans against the live state; must be empty right after an apply.
    pub fn pending(&self, desired: &NodeNetwork) -> Vec<Step> {
        plan(&self.cfg, desired, &self.observe()).expect("plan")
    }

    pub fn vpc_ns(&self, vpc: &uuid::Uuid) -> String {
        self.cfg.vpc_netns(vpc)
    }

    pub fn counter(&self, vpc: &uuid::Uuid, name: &str) -> u64 {
        let o = self.observe();
        let ns = &o.namespaces[&self.vpc_ns(vpc)];
        rampart_net::exec::counters(ns).get(name).copied().unwrap_or(0)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let prefix = self.cfg.netns_prefix.clone();
        if let Ok(dir) = std::fs::read_dir("/run/netns") {
            for e in dir.flatten() {
                let n = e.file_name().to_string_lossy().to_string();
                if n.starts_with(&prefix) {
                    delete_netns(&n);
                }
            }
        }
    }
}

pub fn external() -> ExternalNetwork {
    ExternalNetwork {
        cidr: "203.0.113.0/24".parse().unwrap(),
        gateway: None,
    }
}

pub fn random_seed() -> u64 {
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut b).unwrap();
    u64::from_le_bytes(b) | 1
}
