//! `plan(desired, observed) -> Vec<Step>`: the level-triggered heart of the network driver.
//! Pure: the executor observes, this decides, the executor applies. Planning again right after
//! a successful apply yields no step, which is what the idempotency tests check.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::NetError;
use crate::compile::{CompiledVpc, DnsmasqSpec, FdbEntry, LinkKind, LinkSpec, compile_vpc, ext_sysctls};
use crate::desired::{NetNodeConfig, NodeNetwork, names};
use crate::model::MacAddr;
use crate::nft::{Family, NftOp, ObservedRuleset, diff, replace_ops};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedLink {
    pub name: String,
    /// `info_kind` from `ip -d`: bridge, veth, tun, vxlan, or "" for plain devices.
    pub kind: String,
    pub mac: Option<MacAddr>,
    pub master: Option<String>,
    pub up: bool,
    pub addrs: BTreeSet<Ipv4Net>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedDnsmasq {
    pub conf: String,
    pub hosts: String,
    pub running: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedNamespace {
    pub links: BTreeMap<String, ObservedLink>,
    pub sysctls: BTreeMap<String, String>,
    pub default_route: Option<Ipv4Addr>,
    pub nft: ObservedRuleset,
    pub dnsmasq: Option<ObservedDnsmasq>,
    /// Static forwarding entries of the VXLAN devices.
    pub fdb: BTreeSet<FdbEntry>,
}

/// What exists now in the namespaces whose names carry the configured prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub namespaces: BTreeMap<String, ObservedNamespace>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    CreateNamespace {
        netns: String,
    },
    /// Kills what runs inside first (dnsmasq), so nothing outlives it.
    DeleteNamespace {
        netns: String,
    },
    SetSysctls {
        netns: String,
        values: BTreeMap<String, String>,
    },
    CreateLink {
        netns: String,
        link: LinkSpec,
    },
    DeleteLink {
        netns: String,
        name: String,
    },
    SetMac {
        netns: String,
        name: String,
        mac: MacAddr,
    },
    SetMaster {
        netns: String,
        name: String,
        master: Option<String>,
    },
    AddAddr {
        netns: String,
        name: String,
        addr: Ipv4Net,
    },
    DelAddr {
        netns: String,
        name: String,
        addr: Ipv4Net,
    },
    LinkUp {
        netns: String,
        name: String,
    },
    SetDefaultRoute {
        netns: String,
        via: Option<Ipv4Addr>,
    },
    /// One atomic nft transaction; `replace` is the full-replace transaction the executor falls
    /// back to when the incremental one is refused (tables changed behind our back).
    Nft {
        netns: String,
        ops: Vec<NftOp>,
        replace: Vec<NftOp>,
    },
    /// Forget tracked connections of an address that left the namespace (hygiene: a reused
    /// address must not inherit its predecessor's flows).
    FlushConntrack {
        netns: String,
        addr: Ipv4Addr,
    },
    /// `restart` is false when only the static leases changed. `IpNftDriver` restarts dnsmasq
    /// either way (see its `Dnsmasq` step); the flag stays for drivers that can reload.
    Dnsmasq {
        netns: String,
        spec: DnsmasqSpec,
        restart: bool,
    },
    StopDnsmasq {
        netns: String,
    },
    FdbAdd {
        netns: String,
        entry: FdbEntry,
    },
    FdbDel {
        netns: String,
        entry: FdbEntry,
    },
}

impl Step {
    pub fn netns(&self) -> &str {
        match self {
            Step::CreateNamespace { netns }
            | Step::DeleteNamespace { netns }
            | Step::SetSysctls { netns, .. }
            | Step::CreateLink { netns, .. }
            | Step::DeleteLink { netns, .. }
            | Step::SetMac { netns, .. }
            | Step::SetMaster { netns, .. }
            | Step::AddAddr { netns, .. }
            | Step::DelAddr { netns, .. }
            | Step::LinkUp { netns, .. }
            | Step::SetDefaultRoute { netns, .. }
            | Step::Nft { netns, .. }
            | Step::FlushConntrack { netns, .. }
            | Step::Dnsmasq { netns, .. }
            | Step::StopDnsmasq { netns }
            | Step::FdbAdd { netns, .. }
            | Step::FdbDel { netns, .. } => netns,
        }
    }
}

/// Tables Rampart owns inside a VPC namespace.
pub const OWNED_TABLES: [(Family, &str); 3] = [
    (Family::Bridge, names::TABLE_GUARD),
    (Family::Inet, names::TABLE_FW),
    (Family::Ip, names::TABLE_NAT),
];

/// Compiles every VPC of the node's document.
pub fn compile_node(cfg: &NetNodeConfig, desired: &NodeNetwork) -> Result<Vec<CompiledVpc>, NetError> {
    let mut seen = BTreeSet::new();
    desired
        .vpcs
        .iter()
        .map(|v| {
            if !seen.insert(cfg.vpc_netns(&v.vpc.id)) {
                return Err(NetError::Inconsistent(format!("VPC {} listed twice", v.vpc.id)));
            }
            compile_vpc(cfg, desired.external.as_ref(), v)
        })
        .collect()
}

fn plan_links(netns: &str, want: &[LinkSpec], have: &ObservedNamespace, create_veths: bool, steps: &mut Vec<Step>) {
    let ns = || netns.to_string();
    let wanted: BTreeSet<&str> = want.iter().map(|l| l.name.as_str()).collect();
    for name in have.links.keys() {
        if name != "lo" && !wanted.contains(name.as_str()) {
            steps.push(Step::DeleteLink {
                netns: ns(),
                name: name.clone(),
            });
        }
    }
    // Bridges first so ports can join them.
    let mut ordered: Vec<&LinkSpec> = want.iter().collect();
    ordered.sort_by_key(|l| !matches!(l.kind, LinkKind::Bridge));
    for l in ordered {
        let current = have.links.get(&l.name).filter(|o| o.kind == l.kind.info_kind());
        let current = match (current, have.links.get(&l.name)) {
            (Some(c), _) => Some(c),
            (None, Some(_)) => {
                // Same name, wrong kind: someone else's device squatting our name.
                steps.push(Step::DeleteLink {
                    netns: ns(),
                    name: l.name.clone(),
                });
                None
            }
            (None, None) => None,
        };
        let (mac, master, up, addrs) = match current {
            Some(c) => (c.mac, c.master.clone(), c.up, c.addrs.clone()),
            None => {
                if matches!(l.kind, LinkKind::Veth { .. }) && !create_veths {
                    // The far side's namespace creates this pair; only attach it here.
                    (None, None, false, BTreeSet::new())
                } else {
                    steps.push(Step::CreateLink {
                        netns: ns(),
                        link: l.clone(),
                    });
                    (l.mac, None, false, BTreeSet::new())
                }
            }
        };
        if let Some(m) = l.mac
            && mac != Some(m)
        {
            steps.push(Step::SetMac {
                netns: ns(),
                name: l.name.clone(),
                mac: m,
            });
        }
        if master != l.master {
            steps.push(Step::SetMaster {
                netns: ns(),
                name: l.name.clone(),
                master: l.master.clone(),
            });
        }
        for a in addrs.difference(&l.addrs) {
            steps.push(Step::DelAddr {
                netns: ns(),
                name: l.name.clone(),
                addr: *a,
            });
        }
        for a in l.addrs.difference(&addrs) {
            steps.push(Step::AddAddr {
                netns: ns(),
                name: l.name.clone(),
                addr: *a,
            });
        }
        if !up {
            steps.push(Step::LinkUp {
                netns: ns(),
                name: l.name.clone(),
            });
        }
    }
}

fn plan_sysctls(netns: &str, want: &BTreeMap<String, String>, have: &ObservedNamespace, steps: &mut Vec<Step>) {
    let values: BTreeMap<String, String> = want
        .iter()
        .filter(|(k, v)| have.sysctls.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !values.is_empty() {
        steps.push(Step::SetSysctls {
            netns: netns.into(),
            values,
        });
    }
}

/// Addresses that have a port ingress chain in the observed ruleset.
fn port_addrs(nft: &ObservedRuleset) -> BTreeSet<Ipv4Addr> {
    nft.tables
        .get(&(Family::Inet, names::TABLE_FW.to_string()))
        .and_then(|t| t.sets.get("ingress_by_ip"))
        .map(|(_, elems)| {
            elems
                .iter()
                .filter_map(|e| e.split(" : ").next()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The steps that turn `observed` into `desired`.
pub fn plan(cfg: &NetNodeConfig, desired: &NodeNetwork, observed: &Observed) -> Result<Vec<Step>, NetError> {
    let compiled = compile_node(cfg, desired)?;
    let empty = ObservedNamespace::default();
    let mut steps = Vec::new();
    let ext = cfg.ext_netns();
    let wanted_ns: BTreeSet<String> = compiled.iter().map(|c| c.namespace.name.clone()).collect();
    let need_ext = compiled.iter().any(|c| !c.ext_links.is_empty());

    for name in observed.namespaces.keys() {
        if !(wanted_ns.contains(name) || (need_ext && *name == ext)) {
            steps.push(Step::DeleteNamespace { netns: name.clone() });
        }
    }

    let ext_have = observed.namespaces.get(&ext);
    if need_ext {
        let have = ext_have.unwrap_or(&empty);
        if ext_have.is_none() {
            steps.push(Step::CreateNamespace { netns: ext.clone() });
        }
        plan_sysctls(&ext, &ext_sysctls(), have, &mut steps);
        let bridge = LinkSpec {
            name: names::EXT_BRIDGE.into(),
            kind: LinkKind::Bridge,
            mac: None,
            master: None,
            addrs: BTreeSet::new(),
        };
        // Only the bridge here; the uplink ends come after the VPC sides created them.
        let mut only_bridge = have.clone();
        only_bridge.links.retain(|n, _| n == names::EXT_BRIDGE || n == "lo");
        plan_links(&ext, std::slice::from_ref(&bridge), &only_bridge, true, &mut steps);
    }

    for c in &compiled {
        let ns = &c.namespace;
        let have = observed.namespaces.get(&ns.name);
        if have.is_none() {
            steps.push(Step::CreateNamespace { netns: ns.name.clone() });
        }
        let have = have.unwrap_or(&empty);
        plan_sysctls(&ns.name, &ns.sysctls, have, &mut steps);
        plan_links(&ns.name, &ns.links, have, true, &mut steps);
        if have.default_route != ns.default_route {
            steps.push(Step::SetDefaultRoute {
                netns: ns.name.clone(),
                via: ns.default_route,
            });
        }
        // Entries of devices that go away go with them.
        let kept: BTreeSet<&str> = ns.links.iter().map(|l| l.name.as_str()).collect();
        for e in have.fdb.difference(&ns.fdb).filter(|e| kept.contains(e.dev.as_str())) {
            steps.push(Step::FdbDel {
                netns: ns.name.clone(),
                entry: e.clone(),
            });
        }
        for e in ns.fdb.difference(&have.fdb) {
            steps.push(Step::FdbAdd {
                netns: ns.name.clone(),
                entry: e.clone(),
            });
        }
        let ops = diff(&c.ruleset, &have.nft, &OWNED_TABLES);
        if !ops.is_empty() {
            steps.push(Step::Nft {
                netns: ns.name.clone(),
                ops,
                replace: replace_ops(&c.ruleset),
            });
        }
        let desired_addrs: BTreeSet<Ipv4Addr> = c
            .ruleset
            .tables
            .iter()
            .flat_map(|t| t.sets.iter())
            .filter(|s| s.name == "ingress_by_ip")
            .flat_map(|s| s.elements.iter())
            .filter_map(|e| e.split(" : ").next()?.parse().ok())
            .collect();
        for addr in port_addrs(&have.nft).difference(&desired_addrs) {
            steps.push(Step::FlushConntrack {
                netns: ns.name.clone(),
                addr: *addr,
            });
        }
        match (&c.dnsmasq, &have.dnsmasq) {
            (Some(want), Some(h)) if h.running && h.conf == want.conf => {
                if h.hosts != want.hosts {
                    steps.push(Step::Dnsmasq {
                        netns: ns.name.clone(),
                        spec: want.clone(),
                        restart: false,
                    });
                }
            }
            (Some(want), _) => steps.push(Step::Dnsmasq {
                netns: ns.name.clone(),
                spec: want.clone(),
                restart: true,
            }),
            (None, Some(h)) if h.running => steps.push(Step::StopDnsmasq { netns: ns.name.clone() }),
            (None, _) => {}
        }
    }

    if need_ext {
        let have = ext_have.unwrap_or(&empty);
        let uplinks: Vec<LinkSpec> = compiled.iter().flat_map(|c| c.ext_links.iter().cloned()).collect();
        let mut only_uplinks = have.clone();
        only_uplinks.links.retain(|n, _| n != names::EXT_BRIDGE);
        // Foreign devices in the external namespace (the operator's uplink, a test's "outside
        // host") are left alone: only stale uplink ends of our VPCs go.
        only_uplinks
            .links
            .retain(|n, l| n == "lo" || (n.starts_with("qg") && l.kind == "veth"));
        plan_links(&ext, &uplinks, &only_uplinks, false, &mut steps);
    }
    Ok(steps)
}

/// One line per step, for golden files and logs.
pub fn describe(steps: &[Step]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for s in steps {
        let _ = match s {
            Step::CreateNamespace { netns } => writeln!(out, "[{netns}] netns add"),
            Step::DeleteNamespace { netns } => writeln!(out, "[{netns}] netns del"),
            Step::SetSysctls { netns, values } => {
                let kv: Vec<String> = values.iter().map(|(k, v)| format!("{k}={v}")).collect();
                writeln!(out, "[{netns}] sysctl {}", kv.join(" "))
            }
            Step::CreateLink { netns, link } => writeln!(
                out,
                "[{netns}] link add {} {:?} mac={:?}",
                link.name, link.kind, link.mac
            ),
            Step::DeleteLink { netns, name } => writeln!(out, "[{netns}] link del {name}"),
            Step::SetMac { netns, name, mac } => writeln!(out, "[{netns}] link set {name} address {mac}"),
            Step::SetMaster { netns, name, master } => writeln!(out, "[{netns}] link set {name} master {master:?}"),
            Step::AddAddr { netns, name, addr } => writeln!(out, "[{netns}] addr add {addr} dev {name}"),
            Step::DelAddr { netns, name, addr } => writeln!(out, "[{netns}] addr del {addr} dev {name}"),
            Step::LinkUp { netns, name } => writeln!(out, "[{netns}] link set {name} up"),
            Step::SetDefaultRoute { netns, via } => writeln!(out, "[{netns}] route default via {via:?}"),
            Step::Nft { netns, ops, .. } => writeln!(out, "[{netns}] nft transaction of {} ops", ops.len()),
            Step::FlushConntrack { netns, addr } => writeln!(out, "[{netns}] conntrack -D {addr}"),
            Step::Dnsmasq { netns, restart, .. } => writeln!(out, "[{netns}] dnsmasq restart={restart}"),
            Step::StopDnsmasq { netns } => writeln!(out, "[{netns}] dnsmasq stop"),
            Step::FdbAdd { netns, entry } => {
                writeln!(
                    out,
                    "[{netns}] fdb add {} dev {} dst {}",
                    entry.mac, entry.dev, entry.dst
                )
            }
            Step::FdbDel { netns, entry } => {
                writeln!(
                    out,
                    "[{netns}] fdb del {} dev {} dst {}",
                    entry.mac, entry.dev, entry.dst
                )
            }
        };
    }
    out
}
