//! Executors of [`crate::plan::Step`]s.
//!
//! [`IpNftDriver`] drives the host tools: `ip` (batched per namespace, `-force` so one broken
//! port does not stop the others), `nft -f -` (one transaction per VPC), `sysctl`, `conntrack`
//! and `dnsmasq` inside namespaces through `ip netns exec`. Shelling out keeps the build small
//! and matches what the rules were checked with; every call has a timeout.
//!
//! [`FakeNet`] keeps an in-memory [`Observed`] and applies steps to it, so the agent's
//! reconcile loop runs unchanged in fast tests.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use serde_json::Value;

use crate::NetError;
use crate::compile::{FdbEntry, LinkKind, VXLAN_PORT, ext_sysctls, vpc_sysctls};
use crate::desired::{NetNodeConfig, NodeNetwork};
use crate::nft::{ObservedRuleset, render_ops};
use crate::plan::{Observed, ObservedDnsmasq, ObservedLink, ObservedNamespace, Step, plan};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub steps: usize,
    /// One line per failed step; the rest of the plan was still applied.
    pub errors: Vec<String>,
    /// Wall time of each nft transaction, per namespace.
    pub nft_times: Vec<(String, Duration)>,
    /// Incremental transactions that were refused and replaced by a full reload.
    pub nft_fallbacks: usize,
}

pub trait NetDriver: Send + Sync {
    fn observe(&self, cfg: &NetNodeConfig) -> Result<Observed, NetError>;
    fn apply(&self, cfg: &NetNodeConfig, steps: &[Step]) -> ApplyReport;

    /// Only the nft rulesets of the namespaces (counters, flow logs): the cheap read behind
    /// the agent's metrics, between two full observations.
    fn rulesets(&self, cfg: &NetNodeConfig) -> Result<BTreeMap<String, ObservedRuleset>, NetError> {
        Ok(self
            .observe(cfg)?
            .namespaces
            .into_iter()
            .map(|(n, ns)| (n, ns.nft))
            .collect())
    }
}

/// Observe, plan, apply: one pass of the agent's network reconciler.
pub fn reconcile(
    driver: &dyn NetDriver,
    cfg: &NetNodeConfig,
    desired: &NodeNetwork,
) -> Result<(Vec<Step>, ApplyReport), NetError> {
    let observed = driver.observe(cfg)?;
    let steps = plan(cfg, desired, &observed)?;
    let report = driver.apply(cfg, &steps);
    if !report.errors.is_empty() {
        tracing::warn!(errors = ?report.errors, "network apply had failures; the next pass retries");
    }
    Ok((steps, report))
}

/// Named counters of every table in a namespace (drop counters, per-policy hits), for the
/// metrics the agent reports (`port_<id>_ct_drop` is the 10.8 "connection allowance exceeded").
pub fn counters(ns: &ObservedNamespace) -> BTreeMap<String, u64> {
    ruleset_counters(&ns.nft)
}

pub fn ruleset_counters(nft: &ObservedRuleset) -> BTreeMap<String, u64> {
    nft.tables
        .values()
        .flat_map(|t| t.counters.iter().map(|(n, (p, _))| (n.clone(), *p)))
        .collect()
}

pub use rampart_api::network::FlowRecord;

/// The flow logs of a VPC namespace's ruleset (10.9-2), at most `limit` records, the busiest
/// first.
pub fn flow_records(nft: &ObservedRuleset, limit: usize) -> Vec<FlowRecord> {
    let Some(t) = nft
        .tables
        .get(&(crate::nft::Family::Inet, crate::desired::names::TABLE_FW.to_string()))
    else {
        return vec![];
    };
    let mut out = Vec::new();
    for (set, allowed) in [
        (crate::desired::names::FLOWS_ALLOWED, true),
        (crate::desired::names::FLOWS_DENIED, false),
    ] {
        for (e, packets) in t.element_counters.get(set).into_iter().flatten() {
            let parts: Vec<&str> = e.split(" . ").collect();
            if let [src, dst, proto, port] = parts[..]
                && let (Ok(src), Ok(dst), Ok(port)) = (src.parse(), dst.parse(), port.parse())
            {
                out.push(FlowRecord {
                    src,
                    dst,
                    protocol: proto.to_string(),
                    port,
                    packets: *packets,
                    allowed,
                });
            }
        }
    }
    out.sort_by(|a, b| b.packets.cmp(&a.packets).then_with(|| a.cmp(b)));
    out.truncate(limit);
    out
}

// ---------------------------------------------------------------------------------------------
// Real driver
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct IpNftDriver {
    pub timeout: Duration,
    /// Where named namespaces live (`ip netns` uses /run/netns).
    pub netns_dir: PathBuf,
}

impl Default for IpNftDriver {
    fn default() -> Self {
        IpNftDriver {
            timeout: Duration::from_secs(20),
            netns_dir: PathBuf::from("/run/netns"),
        }
    }
}

pub struct Output {
    pub stdout: String,
    pub stderr: String,
    pub ok: bool,
}

/// Runs a program with optional stdin and a timeout; kills it when the timeout passes.
pub fn run(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
    netns: &str,
    timeout: Duration,
) -> Result<Output, NetError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| NetError::Spawn {
            program: program.into(),
            source,
        })?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped");
        let input = input.to_string();
        // A writer thread, so a child that stops reading cannot block us past the timeout.
        std::thread::spawn(move || {
            let _ = pipe.write_all(input.as_bytes());
        });
    }
    let out_pipe = child.stdout.take().expect("piped");
    let err_pipe = child.stderr.take().expect("piped");
    let read = |mut p: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = p.read_to_string(&mut s);
            s
        })
    };
    let out_t = read(Box::new(out_pipe));
    let err_t = read(Box::new(err_pipe));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(NetError::Timeout {
                    program: program.into(),
                    netns: netns.into(),
                    seconds: timeout.as_secs(),
                });
            }
            Err(source) => {
                return Err(NetError::Spawn {
                    program: program.into(),
                    source,
                });
            }
        }
    };
    Ok(Output {
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
        ok: status.success(),
    })
}

impl IpNftDriver {
    fn run_ok(&self, program: &str, args: &[&str], stdin: Option<&str>, netns: &str) -> Result<String, NetError> {
        let out = run(program, args, stdin, netns, self.timeout)?;
        if out.ok {
            Ok(out.stdout)
        } else {
            Err(NetError::Command {
                program: program.into(),
                netns: netns.into(),
                stderr: out.stderr.trim().to_string(),
            })
        }
    }

    fn exec_ok(&self, netns: &str, args: &[&str], stdin: Option<&str>) -> Result<String, NetError> {
        let mut full = vec!["netns", "exec", netns];
        full.extend_from_slice(args);
        self.run_ok("ip", &full, stdin, netns).map_err(|e| match e {
            NetError::Command { netns, stderr, .. } => NetError::Command {
                program: args[0].into(),
                netns,
                stderr,
            },
            other => other,
        })
    }

    fn list_namespaces(&self, prefix: &str) -> Result<Vec<String>, NetError> {
        let dir = match std::fs::read_dir(&self.netns_dir) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(source) => {
                return Err(NetError::Io {
                    path: self.netns_dir.display().to_string(),
                    source,
                });
            }
        };
        let mut v: Vec<String> = dir
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with(prefix))
            .collect();
        v.sort();
        Ok(v)
    }

    fn observe_ns(&self, cfg: &NetNodeConfig, ns: &str) -> Result<ObservedNamespace, NetError> {
        let parse_err = |program: &str, e: serde_json::Error| NetError::Parse {
            program: program.into(),
            source: Box::new(e),
        };
        let links_json = self.run_ok("ip", &["-n", ns, "-j", "-d", "addr", "show"], None, ns)?;
        let links = parse_links(&serde_json::from_str(&links_json).map_err(|e| parse_err("ip addr", e))?);
        let route_json = self.run_ok("ip", &["-n", ns, "-j", "route", "show", "default"], None, ns)?;
        let routes: Value = serde_json::from_str(&route_json).map_err(|e| parse_err("ip route", e))?;
        let default_route = routes
            .as_array()
            .and_then(|a| a.first())
            .and_then(|r| r.get("gateway")?.as_str()?.parse().ok());
        let keys: BTreeSet<String> = vpc_sysctls().into_keys().chain(ext_sysctls().into_keys()).collect();
        let mut args = vec!["sysctl", "-e"];
        args.extend(keys.iter().map(String::as_str));
        let sysctls = self
            .exec_ok(ns, &args, None)?
            .lines()
            .filter_map(|l| l.split_once(" = "))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let nft = self.observe_nft(ns)?;
        let fdb_json = self.run_ok("bridge", &["-n", ns, "-j", "fdb", "show"], None, ns)?;
        let fdb = parse_fdb(&serde_json::from_str(&fdb_json).map_err(|e| parse_err("bridge fdb", e))?);
        Ok(ObservedNamespace {
            fdb,
            links,
            sysctls,
            default_route,
            nft,
            dnsmasq: observe_dnsmasq(&dnsmasq_dir(cfg, ns)),
        })
    }

    fn observe_nft(&self, ns: &str) -> Result<ObservedRuleset, NetError> {
        let nft_json = self.exec_ok(ns, &["nft", "-j", "list", "ruleset"], None)?;
        if nft_json.trim().is_empty() {
            return Ok(ObservedRuleset::default());
        }
        let v: Value = serde_json::from_str(&nft_json).map_err(|e| NetError::Parse {
            program: "nft".into(),
            source: Box::new(e),
        })?;
        ObservedRuleset::from_json(&v).map_err(|e| NetError::Parse {
            program: "nft".into(),
            source: e.into(),
        })
    }

    fn ip_batch(&self, netns: &str, lines: &[String], report: &mut ApplyReport) {
        if lines.is_empty() {
            return;
        }
        let script = lines.join("\n") + "\n";
        match run(
            "ip",
            &["-n", netns, "-force", "-batch", "-"],
            Some(&script),
            netns,
            self.timeout,
        ) {
            Ok(out) if out.ok => {}
            Ok(out) => report.errors.push(format!("ip in {netns}: {}", out.stderr.trim())),
            Err(e) => report.errors.push(e.to_string()),
        }
    }

    fn apply_step(&self, cfg: &NetNodeConfig, step: &Step, report: &mut ApplyReport) -> Result<(), NetError> {
        match step {
            Step::CreateNamespace { netns } => {
                self.run_ok("ip", &["netns", "add", netns], None, netns)?;
                self.run_ok("ip", &["-n", netns, "link", "set", "lo", "up"], None, netns)?;
            }
            Step::DeleteNamespace { netns } => {
                let pids = self
                    .run_ok("ip", &["netns", "pids", netns], None, netns)
                    .unwrap_or_default();
                for pid in pids.split_whitespace() {
                    let _ = run("kill", &["-KILL", pid], None, netns, self.timeout);
                }
                self.run_ok("ip", &["netns", "del", netns], None, netns)?;
                let dir = dnsmasq_dir(cfg, netns);
                if dir.exists() {
                    std::fs::remove_dir_all(&dir).map_err(|source| NetError::Io {
                        path: dir.display().to_string(),
                        source,
                    })?;
                }
            }
            Step::SetSysctls { netns, values } => {
                let kv: Vec<String> = values.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let mut args = vec!["sysctl", "-q", "-w"];
                args.extend(kv.iter().map(String::as_str));
                self.exec_ok(netns, &args, None)?;
            }
            Step::Nft { netns, ops, replace } => {
                let started = Instant::now();
                let script = render_ops(ops);
                if let Err(e) = self.exec_ok(netns, &["nft", "-f", "-"], Some(&script)) {
                    tracing::warn!(netns = %netns, error = %e, "incremental nft transaction refused; reloading the tables");
                    report.nft_fallbacks += 1;
                    self.exec_ok(netns, &["nft", "-f", "-"], Some(&render_ops(replace)))?;
                }
                report.nft_times.push((netns.clone(), started.elapsed()));
            }
            Step::FlushConntrack { netns, addr } => {
                let a = addr.to_string();
                for dir in ["-s", "-d"] {
                    // Exit status 1 only says "no entry matched".
                    let _ = run(
                        "ip",
                        &["netns", "exec", netns, "conntrack", "-D", dir, &a],
                        None,
                        netns,
                        self.timeout,
                    )?;
                }
            }
            Step::Dnsmasq { netns, spec, .. } => {
                let dir = dnsmasq_dir(cfg, netns);
                let io = |path: &Path, source| NetError::Io {
                    path: path.display().to_string(),
                    source,
                };
                std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
                let hosts = dir.join("dhcp-hosts");
                let conf = dir.join("dnsmasq.conf");
                std::fs::write(&hosts, &spec.hosts).map_err(|e| io(&hosts, e))?;
                // dnsmasq reads `--dhcp-hostsfile` (at start and on SIGHUP) after dropping to
                // `nobody`, who cannot traverse the agent's private data directory. The
                // static leases therefore go into the file it reads as root at start, and a
                // change of leases restarts it (milliseconds; clients retry). `dnsmasq.conf`
                // and `dhcp-hosts` stay as rendered: they are what `observe` compares.
                let run_conf = dir.join("dnsmasq.run.conf");
                let mut text = spec.conf.clone();
                for line in spec.hosts.lines().filter(|l| !l.trim().is_empty()) {
                    text.push_str(&format!("dhcp-host={line}\n"));
                }
                let pid = dir.join("dnsmasq.pid");
                stop_dnsmasq(&dir);
                std::fs::write(&conf, &spec.conf).map_err(|e| io(&conf, e))?;
                std::fs::write(&run_conf, &text).map_err(|e| io(&run_conf, e))?;
                let (c, p) = (
                    format!("--conf-file={}", run_conf.display()),
                    format!("--pid-file={}", pid.display()),
                );
                self.exec_ok(netns, &["dnsmasq", &c, &p], None)?;
            }
            Step::StopDnsmasq { netns } => stop_dnsmasq(&dnsmasq_dir(cfg, netns)),
            Step::CreateLink { netns, link } => {
                let LinkKind::Vxlan { vni, local, device } = &link.kind else {
                    unreachable!("other links are batched")
                };
                // In the agent's own namespace, where the underlay device is, so the tunnel's
                // UDP socket stays there; then into the VPC namespace.
                let _ = run("ip", &["link", "del", &link.name], None, netns, self.timeout);
                let (vni, local, port) = (vni.to_string(), local.to_string(), VXLAN_PORT.to_string());
                self.run_ok(
                    "ip",
                    &[
                        "link",
                        "add",
                        &link.name,
                        "type",
                        "vxlan",
                        "id",
                        &vni,
                        "local",
                        &local,
                        "dev",
                        device,
                        "dstport",
                        &port,
                        "nolearning",
                    ],
                    None,
                    netns,
                )?;
                self.run_ok("ip", &["link", "set", &link.name, "netns", netns], None, netns)?;
            }
            Step::FdbAdd { netns, entry } | Step::FdbDel { netns, entry } => {
                let verb = if matches!(step, Step::FdbAdd { .. }) {
                    "append"
                } else {
                    "del"
                };
                let (mac, dst) = (entry.mac.to_string(), entry.dst.to_string());
                self.run_ok(
                    "bridge",
                    &["-n", netns, "fdb", verb, &mac, "dev", &entry.dev, "dst", &dst],
                    None,
                    netns,
                )?;
            }
            _ => unreachable!("link steps are batched"),
        }
        Ok(())
    }
}

fn ip_line(step: &Step) -> Option<String> {
    Some(match step {
        Step::CreateLink { link, .. } => match &link.kind {
            LinkKind::Bridge => match link.mac {
                Some(m) => format!("link add {} address {m} type bridge", link.name),
                None => format!("link add {} type bridge", link.name),
            },
            LinkKind::Veth {
                peer_netns,
                peer_name,
                peer_mac,
            } => {
                let mut s = format!(
                    "link add {} type veth peer name {peer_name} netns {peer_netns}",
                    link.name
                );
                if let Some(m) = peer_mac {
                    s.push_str(&format!(" address {m}"));
                }
                s
            }
            LinkKind::Tap => format!("tuntap add dev {} mode tap", link.name),
            // Created outside the namespace: see `apply_step`.
            LinkKind::Vxlan { .. } => return None,
        },
        Step::DeleteLink { name, .. } => format!("link del {name}"),
        Step::SetMac { name, mac, .. } => format!("link set dev {name} address {mac}"),
        Step::SetMaster { name, master, .. } => match master {
            Some(m) => format!("link set dev {name} master {m}"),
            None => format!("link set dev {name} nomaster"),
        },
        Step::AddAddr { name, addr, .. } => format!("addr replace {addr} dev {name}"),
        Step::DelAddr { name, addr, .. } => format!("addr del {addr} dev {name}"),
        Step::LinkUp { name, .. } => format!("link set dev {name} up"),
        Step::SetDefaultRoute { via, .. } => match via {
            Some(v) => format!("route replace default via {v}"),
            None => "route del default".to_string(),
        },
        _ => return None,
    })
}

impl NetDriver for IpNftDriver {
    fn observe(&self, cfg: &NetNodeConfig) -> Result<Observed, NetError> {
        let mut namespaces = BTreeMap::new();
        for ns in self.list_namespaces(&cfg.netns_prefix)? {
            namespaces.insert(ns.clone(), self.observe_ns(cfg, &ns)?);
        }
        Ok(Observed { namespaces })
    }

    fn rulesets(&self, cfg: &NetNodeConfig) -> Result<BTreeMap<String, ObservedRuleset>, NetError> {
        let mut out = BTreeMap::new();
        for ns in self.list_namespaces(&cfg.netns_prefix)? {
            out.insert(ns.clone(), self.observe_nft(&ns)?);
        }
        Ok(out)
    }

    fn apply(&self, cfg: &NetNodeConfig, steps: &[Step]) -> ApplyReport {
        let mut report = ApplyReport {
            steps: steps.len(),
            ..Default::default()
        };
        let mut batch: Vec<String> = Vec::new();
        let mut batch_ns = String::new();
        let mut failed_ns: BTreeSet<String> = BTreeSet::new();
        for step in steps {
            if failed_ns.contains(step.netns()) {
                continue;
            }
            if let Some(line) = ip_line(step) {
                if batch_ns != step.netns() {
                    self.ip_batch(&batch_ns, &batch, &mut report);
                    batch.clear();
                    batch_ns = step.netns().to_string();
                }
                batch.push(line);
                continue;
            }
            self.ip_batch(&batch_ns, &batch, &mut report);
            batch.clear();
            if let Err(e) = self.apply_step(cfg, step, &mut report) {
                report.errors.push(e.to_string());
                if matches!(step, Step::CreateNamespace { .. }) {
                    // Nothing else can work in a namespace that does not exist.
                    failed_ns.insert(step.netns().to_string());
                }
            }
        }
        self.ip_batch(&batch_ns, &batch, &mut report);
        report
    }
}

fn dnsmasq_dir(cfg: &NetNodeConfig, netns: &str) -> PathBuf {
    cfg.run_dir.join(netns)
}

fn read_pid(path: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    (comm.trim() == "dnsmasq").then_some(pid)
}

fn stop_dnsmasq(dir: &Path) {
    let pidfile = dir.join("dnsmasq.pid");
    if let Some(pid) = read_pid(&pidfile) {
        let _ = run("kill", &["-TERM", &pid.to_string()], None, "", Duration::from_secs(5));
        let deadline = Instant::now() + Duration::from_secs(5);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let _ = std::fs::remove_file(pidfile);
    let _ = std::fs::remove_file(dir.join("dnsmasq.conf"));
    let _ = std::fs::remove_file(dir.join("dnsmasq.run.conf"));
}

fn observe_dnsmasq(dir: &Path) -> Option<ObservedDnsmasq> {
    let conf = std::fs::read_to_string(dir.join("dnsmasq.conf")).ok()?;
    Some(ObservedDnsmasq {
        conf,
        hosts: std::fs::read_to_string(dir.join("dhcp-hosts")).unwrap_or_default(),
        running: read_pid(&dir.join("dnsmasq.pid")).is_some(),
    })
}

/// Parses `bridge -j fdb show`: the static entries of our VXLAN devices (those with a `dst`).
pub fn parse_fdb(v: &Value) -> BTreeSet<FdbEntry> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let dev = e.get("ifname")?.as_str()?;
            if !dev.starts_with("vx") {
                return None;
            }
            Some(FdbEntry {
                dev: dev.to_string(),
                mac: e.get("mac")?.as_str()?.parse().ok()?,
                dst: e.get("dst")?.as_str()?.parse().ok()?,
            })
        })
        .collect()
}

/// Parses `ip -j -d addr show`.
pub fn parse_links(v: &Value) -> BTreeMap<String, ObservedLink> {
    let mut out = BTreeMap::new();
    for l in v.as_array().into_iter().flatten() {
        let Some(name) = l.get("ifname").and_then(Value::as_str) else {
            continue;
        };
        let up = l
            .get("flags")
            .and_then(Value::as_array)
            .is_some_and(|f| f.iter().any(|x| x == "UP"));
        let kind = l
            .get("linkinfo")
            .and_then(|i| i.get("info_kind"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let addrs = l
            .get("addr_info")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|a| a.get("family").and_then(Value::as_str) == Some("inet"))
            .filter_map(|a| {
                let ip: Ipv4Addr = a.get("local")?.as_str()?.parse().ok()?;
                Ipv4Net::new(ip, a.get("prefixlen")?.as_u64()? as u8).ok()
            })
            .collect();
        out.insert(
            name.to_string(),
            ObservedLink {
                name: name.to_string(),
                kind,
                mac: l.get("address").and_then(Value::as_str).and_then(|m| m.parse().ok()),
                master: l.get("master").and_then(Value::as_str).map(str::to_string),
                up,
                addrs,
            },
        );
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Fake driver
// ---------------------------------------------------------------------------------------------

/// An in-memory host. Applies steps to its [`Observed`] model, including nft transactions
/// (all-or-nothing, like the kernel), and records every step it was given.
#[derive(Debug, Default)]
pub struct FakeNet {
    pub state: Mutex<Observed>,
    pub applied: Mutex<Vec<Step>>,
    /// Link names whose creation fails, as when the kernel refuses a device (fault injection).
    pub refuse: Mutex<BTreeSet<String>>,
    peers: Mutex<Vec<Peer>>,
}

type Peer = ((String, String), (String, String));

impl FakeNet {
    fn apply_one(
        state: &mut Observed,
        peers: &mut Vec<Peer>,
        refuse: &BTreeSet<String>,
        step: &Step,
    ) -> Result<(), String> {
        match step {
            Step::CreateLink { link, .. } if refuse.contains(&link.name) => {
                return Err(format!("Cannot create {}: Operation not permitted", link.name));
            }
            Step::CreateNamespace { netns } => {
                if state.namespaces.contains_key(netns) {
                    return Err(format!("namespace {netns} exists"));
                }
                let mut ns = ObservedNamespace::default();
                ns.links.insert(
                    "lo".into(),
                    ObservedLink {
                        name: "lo".into(),
                        kind: String::new(),
                        mac: None,
                        master: None,
                        up: true,
                        addrs: BTreeSet::new(),
                    },
                );
                state.namespaces.insert(netns.clone(), ns);
            }
            Step::DeleteNamespace { netns } => {
                state.namespaces.remove(netns).ok_or("no such namespace")?;
                // Veth pairs die with either end.
                let dead: Vec<(String, String)> = peers
                    .iter()
                    .filter(|(a, b)| a.0 == *netns || b.0 == *netns)
                    .flat_map(|(a, b)| [a.clone(), b.clone()])
                    .collect();
                for (ns, name) in &dead {
                    if let Some(n) = state.namespaces.get_mut(ns) {
                        n.links.remove(name);
                    }
                }
                peers.retain(|(a, b)| a.0 != *netns && b.0 != *netns);
            }
            Step::SetSysctls { netns, values } => {
                let ns = state.namespaces.get_mut(netns).ok_or("no namespace")?;
                ns.sysctls.extend(values.clone());
            }
            Step::CreateLink { netns, link } => {
                let ns = state.namespaces.get_mut(netns).ok_or("no namespace")?;
                if ns.links.contains_key(&link.name) {
                    return Err(format!("{} exists", link.name));
                }
                ns.links.insert(
                    link.name.clone(),
                    ObservedLink {
                        name: link.name.clone(),
                        kind: link.kind.info_kind().into(),
                        mac: link.mac,
                        master: None,
                        up: false,
                        addrs: BTreeSet::new(),
                    },
                );
                if let LinkKind::Veth {
                    peer_netns, peer_name, ..
                } = &link.kind
                {
                    peers.push((
                        (netns.clone(), link.name.clone()),
                        (peer_netns.clone(), peer_name.clone()),
                    ));
                }
                if let LinkKind::Veth {
                    peer_netns,
                    peer_name,
                    peer_mac,
                } = &link.kind
                    && let Some(peer) = state.namespaces.get_mut(peer_netns)
                {
                    peer.links.insert(
                        peer_name.clone(),
                        ObservedLink {
                            name: peer_name.clone(),
                            kind: "veth".into(),
                            mac: *peer_mac,
                            master: None,
                            up: false,
                            addrs: BTreeSet::new(),
                        },
                    );
                }
            }
            Step::DeleteLink { netns, name } => {
                let ns = state.namespaces.get_mut(netns).ok_or("no namespace")?;
                ns.links.remove(name).ok_or("no such link")?;
                ns.fdb.retain(|e| e.dev != *name);
            }
            Step::FdbAdd { netns, entry } => {
                let ns = state.namespaces.get_mut(netns).ok_or("no namespace")?;
                if !ns.links.contains_key(&entry.dev) {
                    return Err(format!("no device {}", entry.dev));
                }
                ns.fdb.insert(entry.clone());
            }
            Step::FdbDel { netns, entry } => {
                let ns = state.namespaces.get_mut(netns).ok_or("no namespace")?;
                if !ns.fdb.remove(entry) {
                    return Err("no such fdb entry".into());
                }
            }
            Step::SetMac { netns, name, mac } => link_mut(state, netns, name)?.mac = Some(*mac),
            Step::SetMaster { netns, name, master } => link_mut(state, netns, name)?.master = master.clone(),
            Step::AddAddr { netns, name, addr } => {
                link_mut(state, netns, name)?.addrs.insert(*addr);
            }
            Step::DelAddr { netns, name, addr } => {
                link_mut(state, netns, name)?.addrs.remove(addr);
            }
            Step::LinkUp { netns, name } => link_mut(state, netns, name)?.up = true,
            Step::SetDefaultRoute { netns, via } => {
                state.namespaces.get_mut(netns).ok_or("no namespace")?.default_route = *via;
            }
            Step::Nft { netns, ops, replace } => {
                let ns = state.namespaces.get_mut(netns).ok_or("no namespace")?;
                if ns.nft.apply_ops(ops).is_err() {
                    ns.nft.apply_ops(replace)?;
                }
            }
            Step::FlushConntrack { .. } => {}
            Step::Dnsmasq { netns, spec, .. } => {
                state.namespaces.get_mut(netns).ok_or("no namespace")?.dnsmasq = Some(ObservedDnsmasq {
                    conf: spec.conf.clone(),
                    hosts: spec.hosts.clone(),
                    running: true,
                });
            }
            Step::StopDnsmasq { netns } => {
                state.namespaces.get_mut(netns).ok_or("no namespace")?.dnsmasq = None;
            }
        }
        Ok(())
    }
}

fn link_mut<'a>(state: &'a mut Observed, netns: &str, name: &str) -> Result<&'a mut ObservedLink, String> {
    state
        .namespaces
        .get_mut(netns)
        .ok_or_else(|| format!("no namespace {netns}"))?
        .links
        .get_mut(name)
        .ok_or_else(|| format!("no link {name} in {netns}"))
}

impl NetDriver for FakeNet {
    fn observe(&self, cfg: &NetNodeConfig) -> Result<Observed, NetError> {
        let mut o = self.state.lock().expect("fake state").clone();
        o.namespaces.retain(|n, _| n.starts_with(&cfg.netns_prefix));
        Ok(o)
    }

    fn apply(&self, _cfg: &NetNodeConfig, steps: &[Step]) -> ApplyReport {
        let mut state = self.state.lock().expect("fake state");
        let mut peers = self.peers.lock().expect("fake peers");
        let mut report = ApplyReport {
            steps: steps.len(),
            ..Default::default()
        };
        let refuse = self.refuse.lock().expect("fake refuse").clone();
        for s in steps {
            if let Err(e) = Self::apply_one(&mut state, &mut peers, &refuse, s) {
                report.errors.push(format!("{}: {e}", s.netns()));
            }
        }
        self.applied.lock().expect("fake log").extend(steps.iter().cloned());
        report
    }
}
