//! The pure compiler: one VPC of a node's desired state → the namespace layout (bridges, port
//! devices, uplink, addresses, sysctls), the nftables ruleset and the dnsmasq files.
//!
//! Packet path inside a VPC namespace (checked to work on the CI kernel, see the network note):
//!
//! * `bridge rampart_guard` / `prerouting`: frames from VM ports (`@vm_ports`) go through
//!   `port_guard`: 802.1Q dropped (10.2), source MAC bound to the port, ARP sender and IPv4
//!   source bound to (port, MAC) (10.5), DHCP and RA server traffic dropped (10.7), then the
//!   port identity is stamped into `meta mark` for the inet family, where the input interface
//!   is the bridge and not the port.
//! * `bridge rampart_guard` / `postrouting`: IPv4 delivered to a VM port must be addressed to
//!   one of its addresses, so the inet ingress lookup by destination address is sound.
//! * `inet rampart_fw` / `forward` (bridged traffic arrives through br_netfilter, routed traffic
//!   natively): established flows pass; new flows meet the per-port `ct count` limits (10.8),
//!   then the segmentation policies (10.9-1, admin tier: deny wins, allow skips the groups), then
//!   the sender's egress groups, then the receiver's ingress groups (10.3, 11.3). Group and tag
//!   membership live in named sets, so membership changes are element updates.
//! * `ip rampart_nat`: floating-IP DNAT/SNAT by maps and SNAT of the rest to the router's
//!   external address (10.4); from outside only DNAT-ed flows are forwarded.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::NetError;
use crate::desired::{ExternalNetwork, LocalPort, NetNodeConfig, PortDevice, VpcNetwork, names};
use crate::model::{Action, Direction, MacAddr, Port, Protocol, SecurityGroupRule, short_id};
use crate::nft::{Chain, Family, Ruleset, Set, Table, elem};

/// `meta mark` of a port: a tag in the high half so unmarked traffic (0) never matches.
pub const MARK_BASE: u32 = 0x0001_0000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkKind {
    Bridge,
    Veth {
        peer_netns: String,
        peer_name: String,
        peer_mac: Option<MacAddr>,
    },
    Tap,
    /// A VXLAN device created in the agent's own namespace on the underlay `device` (so its
    /// UDP socket lives there) and moved into the VPC namespace.
    Vxlan {
        vni: u32,
        local: Ipv4Addr,
        device: String,
    },
}

impl LinkKind {
    /// The `info_kind` that `ip -d -j link` reports.
    pub fn info_kind(&self) -> &'static str {
        match self {
            LinkKind::Bridge => "bridge",
            LinkKind::Veth { .. } => "veth",
            LinkKind::Tap => "tun",
            LinkKind::Vxlan { .. } => "vxlan",
        }
    }
}

/// VXLAN UDP port (IANA).
pub const VXLAN_PORT: u16 = 4789;

/// A static forwarding entry of a VXLAN device: frames for `mac` go to the node at `dst`
/// (the all-zero MAC: broadcast and unknown destinations, head-end replicated to each node).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FdbEntry {
    pub dev: String,
    pub mac: MacAddr,
    pub dst: Ipv4Addr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSpec {
    pub name: String,
    pub kind: LinkKind,
    pub mac: Option<MacAddr>,
    pub master: Option<String>,
    /// Addresses with their prefix (`10.0.1.1/24`).
    pub addrs: BTreeSet<Ipv4Net>,
}

/// Desired content of one network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceSpec {
    pub name: String,
    pub sysctls: BTreeMap<String, String>,
    pub links: Vec<LinkSpec>,
    pub default_route: Option<Ipv4Addr>,
    /// Static VXLAN forwarding entries.
    pub fdb: BTreeSet<FdbEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsmasqSpec {
    /// `dnsmasq.conf`: ranges and options; a change needs a restart.
    pub conf: String,
    /// `dhcp-hosts`: static leases; a change needs only SIGHUP.
    pub hosts: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledVpc {
    pub namespace: NamespaceSpec,
    /// Links the VPC needs in the external namespace (the uplink's far end).
    pub ext_links: Vec<LinkSpec>,
    pub ruleset: Ruleset,
    pub dnsmasq: Option<DnsmasqSpec>,
}

fn sysctls(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Sysctls of a VPC namespace. Routing happens here and only here: the root namespace keeps
/// `ip_forward=0` (9.1-1c).
pub fn vpc_sysctls() -> BTreeMap<String, String> {
    sysctls(&[
        ("net.ipv4.ip_forward", "1"),
        // br_netfilter is per namespace; the stateful groups depend on it seeing bridged IPv4.
        ("net.bridge.bridge-nf-call-iptables", "1"),
        ("net.ipv4.conf.all.send_redirects", "0"),
        ("net.ipv4.conf.default.send_redirects", "0"),
        ("net.ipv4.conf.all.accept_redirects", "0"),
        ("net.ipv4.icmp_echo_ignore_broadcasts", "1"),
        // No IPv6 in tenant networks yet: no link-local addresses, no autoconf on the bridges.
        ("net.ipv6.conf.all.disable_ipv6", "1"),
        ("net.ipv6.conf.default.disable_ipv6", "1"),
    ])
}

/// Sysctls of the external namespace: a plain L2 switch.
pub fn ext_sysctls() -> BTreeMap<String, String> {
    sysctls(&[
        ("net.ipv4.ip_forward", "0"),
        ("net.ipv6.conf.all.disable_ipv6", "1"),
        ("net.ipv6.conf.default.disable_ipv6", "1"),
    ])
}

/// The gateway MAC of a subnet, derived from its id so that it is the same on every node
/// and across agent restarts (VM ARP caches stay valid).
pub fn gateway_mac(subnet: &uuid::Uuid) -> MacAddr {
    let b = subnet.as_bytes();
    MacAddr([0x02, 0xfe, b[12], b[13], b[14], b[15]])
}

struct Ctx<'a> {
    net: &'a VpcNetwork,
    /// Local ports with port security, sorted by id, with their mark.
    secure: Vec<(&'a Port, &'a LocalPort, u32)>,
}

fn check(net: &VpcNetwork) -> Result<(), NetError> {
    let bad = |m: String| Err(NetError::Inconsistent(m));
    let mut shorts = BTreeMap::new();
    let objects = std::iter::once(net.vpc.id)
        .chain(net.subnets.iter().map(|s| s.id))
        .chain(net.ports.iter().map(|p| p.id))
        .chain(net.security_groups.iter().map(|g| g.id))
        .chain(net.policies.iter().map(|p| p.id));
    for id in objects {
        if let Some(other) = shorts.insert(short_id(&id), id)
            && other != id
        {
            return bad(format!("ids {other} and {id} share their last 12 hex digits"));
        }
    }
    for s in &net.subnets {
        if s.vpc != net.vpc.id || !s.cidr.contains(&s.gateway) {
            return bad(format!("subnet {} is inconsistent", s.id));
        }
    }
    for p in &net.ports {
        let Some(s) = net.subnets.iter().find(|s| s.id == p.subnet) else {
            return bad(format!("port {} names unknown subnet {}", p.id, p.subnet));
        };
        if !s.cidr.contains(&p.ip) {
            return bad(format!("port {} address {} is outside {}", p.id, p.ip, s.cidr));
        }
        for g in &p.security_groups {
            if !net.security_groups.iter().any(|x| x.id == *g) {
                return bad(format!("port {} names unknown security group {g}", p.id));
            }
        }
    }
    let mut seen = BTreeSet::new();
    for l in &net.local_ports {
        if !net.ports.iter().any(|p| p.id == l.port) || !seen.insert(l.port) {
            return bad(format!("local port {} is unknown or listed twice", l.port));
        }
    }
    for r in net.remote_ports.keys() {
        if !net.ports.iter().any(|p| p.id == *r) || seen.contains(r) {
            return bad(format!("remote port {r} is unknown or also local"));
        }
    }
    if seen.len() >= 0xffff {
        return bad("too many local ports in one VPC".into());
    }
    Ok(())
}

/// Compiles one VPC of the node's desired state.
pub fn compile_vpc(
    cfg: &NetNodeConfig,
    external: Option<&ExternalNetwork>,
    net: &VpcNetwork,
) -> Result<CompiledVpc, NetError> {
    check(net)?;
    let mut local: Vec<(&Port, &LocalPort)> = net
        .local_ports
        .iter()
        .filter_map(|l| net.ports.iter().find(|p| p.id == l.port).map(|p| (p, l)))
        .collect();
    local.sort_by_key(|(p, _)| p.id);
    let secure = local
        .iter()
        .filter(|(p, _)| p.port_security)
        .enumerate()
        .map(|(i, (p, l))| (*p, *l, MARK_BASE | (i as u32 + 1)))
        .collect();
    let ctx = Ctx { net, secure };
    let uplink = match (external, net.router_external_ip) {
        (Some(ext), Some(ip)) => Some((ext, ip)),
        _ => None,
    };

    let mut tables = vec![
        guard_table(&ctx, &tunnel_names(cfg, net)),
        fw_table(&ctx, uplink.is_some()),
    ];
    if let Some((_, ip)) = uplink {
        tables.push(nat_table(&ctx, ip));
    }

    // Namespace layout.
    let mut links = Vec::new();
    let mut subnets: Vec<_> = net.subnets.iter().collect();
    subnets.sort_by_key(|s| s.id);
    for s in &subnets {
        links.push(LinkSpec {
            name: names::bridge(&s.id),
            kind: LinkKind::Bridge,
            mac: Some(gateway_mac(&s.id)),
            master: None,
            addrs: BTreeSet::from([Ipv4Net::new(s.gateway, s.cidr.prefix_len()).expect("prefix checked")]),
        });
    }
    for (p, l) in &local {
        let kind = match &l.device {
            PortDevice::Tap => LinkKind::Tap,
            PortDevice::Veth { peer_netns, peer_name } => LinkKind::Veth {
                peer_netns: peer_netns.clone(),
                peer_name: peer_name.clone(),
                peer_mac: Some(p.mac),
            },
        };
        links.push(LinkSpec {
            name: names::port_dev(&p.id),
            kind,
            mac: None,
            master: Some(names::bridge(&p.subnet)),
            addrs: BTreeSet::new(),
        });
    }
    // Subnets with ports on other nodes are joined to them over VXLAN.
    let mut fdb = BTreeSet::new();
    let mut tunnels = Vec::new();
    if let Some(u) = &cfg.underlay {
        for s in &subnets {
            let remote: Vec<(&Port, Ipv4Addr)> = net
                .ports
                .iter()
                .filter(|p| p.subnet == s.id)
                .filter_map(|p| net.remote_ports.get(&p.id).map(|v| (p, *v)))
                .filter(|(_, v)| *v != u.local_ip)
                .collect();
            if remote.is_empty() {
                continue;
            }
            let dev = names::vxlan(&s.id);
            for (p, vtep) in &remote {
                fdb.insert(FdbEntry {
                    dev: dev.clone(),
                    mac: MacAddr([0; 6]),
                    dst: *vtep,
                });
                for (mac, _) in p.bindings() {
                    fdb.insert(FdbEntry {
                        dev: dev.clone(),
                        mac,
                        dst: *vtep,
                    });
                }
            }
            tunnels.push(dev.clone());
            links.push(LinkSpec {
                name: dev,
                kind: LinkKind::Vxlan {
                    vni: s.segment_id,
                    local: u.local_ip,
                    device: u.device.clone(),
                },
                mac: None,
                master: Some(names::bridge(&s.id)),
                addrs: BTreeSet::new(),
            });
        }
    }
    let mut ext_links = Vec::new();
    let mut default_route = None;
    if let Some((ext, ip)) = uplink {
        let mut addrs = BTreeSet::from([Ipv4Net::new(ip, ext.cidr.prefix_len()).expect("prefix")]);
        // Floating IPs are /32s on the uplink so the router answers ARP for them.
        for f in net.floating_ips.iter().filter(|f| f.port.is_some()) {
            addrs.insert(Ipv4Net::new(f.address, 32).expect("32"));
        }
        links.push(LinkSpec {
            name: names::QG.into(),
            kind: LinkKind::Veth {
                peer_netns: cfg.ext_netns(),
                peer_name: names::qg_peer(&net.vpc.id),
                peer_mac: None,
            },
            mac: None,
            master: None,
            addrs,
        });
        ext_links.push(LinkSpec {
            name: names::qg_peer(&net.vpc.id),
            kind: LinkKind::Veth {
                peer_netns: cfg.vpc_netns(&net.vpc.id),
                peer_name: names::QG.into(),
                peer_mac: None,
            },
            mac: None,
            master: Some(names::EXT_BRIDGE.into()),
            addrs: BTreeSet::new(),
        });
        default_route = ext.gateway;
    }

    Ok(CompiledVpc {
        namespace: NamespaceSpec {
            name: cfg.vpc_netns(&net.vpc.id),
            sysctls: vpc_sysctls(),
            links,
            default_route,
            fdb,
        },
        ext_links,
        ruleset: Ruleset { tables },
        dnsmasq: dnsmasq(net, &local),
    })
}

fn s(x: &str) -> String {
    x.to_string()
}

/// The VXLAN devices [`compile_vpc`] creates (the guard treats them as tunnel ports).
fn tunnel_names(cfg: &NetNodeConfig, net: &VpcNetwork) -> Vec<String> {
    let Some(u) = &cfg.underlay else {
        return vec![];
    };
    let mut v: Vec<String> = net
        .subnets
        .iter()
        .filter(|s| {
            net.ports
                .iter()
                .any(|p| p.subnet == s.id && net.remote_ports.get(&p.id).is_some_and(|v| *v != u.local_ip))
        })
        .map(|s| names::vxlan(&s.id))
        .collect();
    v.sort();
    v
}

fn guard_table(ctx: &Ctx, tunnels: &[String]) -> Table {
    let mut t = Table::new(Family::Bridge, names::TABLE_GUARD);
    t.counters = [
        "drop_vlan",
        "drop_mac_spoof",
        "drop_arp_spoof",
        "drop_ip_spoof",
        "drop_dhcp_server",
        "drop_ra",
        "drop_ipv6",
        "drop_ethertype",
        "drop_misdelivered",
        "drop_tunnel",
    ]
    .iter()
    .map(|c| s(c))
    .collect();
    let mut vm_ports = Set::plain("vm_ports", "ifname");
    let mut bind_mac = Set::plain("bind_mac", "ifname . ether_addr");
    let mut bind_ip4 = Set::plain("bind_ip4", "ifname . ether_addr . ipv4_addr");
    let mut bind_dst4 = Set::plain("bind_dst4", "ifname . ipv4_addr");
    let mut port_mark = Set::map("port_mark", "ifname", "mark");
    for (p, _, mark) in &ctx.secure {
        let dev = elem::ifname(&names::port_dev(&p.id));
        vm_ports.elements.insert(dev.clone());
        port_mark.elements.insert(elem::map(dev.clone(), elem::mark(*mark)));
        for (mac, ip) in p.bindings() {
            bind_mac.elements.insert(elem::concat(&[dev.clone(), mac.to_string()]));
            bind_ip4
                .elements
                .insert(elem::concat(&[dev.clone(), mac.to_string(), ip.to_string()]));
            bind_dst4.elements.insert(elem::concat(&[dev.clone(), ip.to_string()]));
        }
    }
    let mut tunnel_ports = Set::plain("tunnel_ports", "ifname");
    tunnel_ports.elements.extend(tunnels.iter().map(|t| elem::ifname(t)));
    let mut gateways = Set::plain("gateways", "ipv4_addr");
    gateways
        .elements
        .extend(ctx.net.subnets.iter().map(|s| s.gateway.to_string()));
    t.sets = vec![
        vm_ports,
        bind_mac,
        bind_ip4,
        bind_dst4,
        port_mark,
        tunnel_ports,
        gateways,
    ];
    t.chains = vec![
        Chain {
            name: s("prerouting"),
            base: Some(s("type filter hook prerouting priority -200; policy accept;")),
            rules: vec![
                s("iifname @vm_ports jump port_guard"),
                s("iifname @tunnel_ports jump from_tunnel"),
            ],
        },
        // Frames from other nodes were guarded at their source port. Each node's router is the
        // gateway of its own ports (distributed router): ARP for a gateway address that
        // arrives over a tunnel is not answered here, and 802.1Q frames never enter.
        Chain::regular(
            "from_tunnel",
            vec![
                s("ether type vlan counter name \"drop_tunnel\" drop"),
                s("ether type arp arp daddr ip @gateways counter name \"drop_tunnel\" drop"),
            ],
        ),
        Chain::regular(
            "port_guard",
            vec![
                s("ether type vlan counter name \"drop_vlan\" drop comment \"802.1Q from a VM port\""),
                s("iifname . ether saddr != @bind_mac counter name \"drop_mac_spoof\" drop"),
                s("ether type arp arp saddr ip 0.0.0.0 accept comment \"ARP probe\""),
                s(
                    "ether type arp iifname . arp saddr ether . arp saddr ip != @bind_ip4 counter name \"drop_arp_spoof\" drop",
                ),
                s("ether type arp accept"),
                s("icmpv6 type nd-router-advert counter name \"drop_ra\" drop"),
                s("ether type ip6 udp sport 547 counter name \"drop_dhcp_server\" drop"),
                s("ether type ip6 counter name \"drop_ipv6\" drop"),
                s("ether type != ip counter name \"drop_ethertype\" drop"),
                s(
                    "ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 meta mark set iifname map @port_mark accept comment \"DHCP discover\"",
                ),
                s("iifname . ether saddr . ip saddr != @bind_ip4 counter name \"drop_ip_spoof\" drop"),
                s("udp sport 67 counter name \"drop_dhcp_server\" drop comment \"DHCP server in a VM\""),
                s("meta mark set iifname map @port_mark"),
            ],
        ),
        Chain {
            name: s("postrouting"),
            base: Some(s("type filter hook postrouting priority 0; policy accept;")),
            rules: vec![s("oifname @vm_ports jump port_deliver")],
        },
        Chain::regular(
            "port_deliver",
            vec![s(
                "ether type ip ip daddr != 255.255.255.255 oifname . ip daddr != @bind_dst4 counter name \"drop_misdelivered\" drop",
            )],
        ),
    ];
    t
}

fn port_match(protocol: Protocol, ports: &[(u16, u16)]) -> Option<String> {
    let list = |v: &[(u16, u16)]| {
        let items: Vec<String> = v
            .iter()
            .map(|(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") })
            .collect();
        if items.len() == 1 {
            items[0].clone()
        } else {
            format!("{{ {} }}", items.join(", "))
        }
    };
    match protocol {
        Protocol::Any => None,
        Protocol::Icmp => Some(s("meta l4proto icmp")),
        Protocol::Tcp | Protocol::Udp if !ports.is_empty() => {
            Some(format!("{} dport {}", protocol.as_str(), list(ports)))
        }
        Protocol::Tcp | Protocol::Udp => Some(format!("meta l4proto {}", protocol.as_str())),
    }
}

fn sg_rule(rule: &SecurityGroupRule) -> String {
    let (addr, verdict) = match rule.direction {
        Direction::Ingress => ("ip saddr", "accept"),
        Direction::Egress => ("ip daddr", "goto to_port"),
    };
    let mut parts = Vec::new();
    if let Some(g) = rule.remote_group {
        parts.push(format!("{addr} @sg_{}", short_id(&g)));
    }
    if let Some(c) = rule.remote_cidr
        && c.prefix_len() > 0
    {
        parts.push(format!("{addr} {c}"));
    }
    let range: Vec<(u16, u16)> = rule.port_range().map(|r| (r.min, r.max)).into_iter().collect();
    if let Some(m) = port_match(rule.protocol, &range) {
        parts.push(m);
    }
    parts.push(s(verdict));
    parts.push(format!("comment \"rule {}\"", short_id(&rule.id)));
    parts.join(" ")
}

fn fw_table(ctx: &Ctx, uplink: bool) -> Table {
    let net = ctx.net;
    let mut t = Table::new(Family::Inet, names::TABLE_FW);
    let mut counters = vec![
        s("drop_invalid"),
        s("drop_outside"),
        s("drop_router_input"),
        s("drop_flood"),
    ];

    // Groups that need chains (used by local ports) and sets (those plus remote groups).
    let used: BTreeSet<uuid::Uuid> = ctx
        .secure
        .iter()
        .flat_map(|(p, _, _)| p.security_groups.iter().copied())
        .collect();
    let mut with_set = used.clone();
    for g in net.security_groups.iter().filter(|g| used.contains(&g.id)) {
        with_set.extend(g.rules.iter().filter_map(|r| r.remote_group));
    }
    let mut sets = Vec::new();
    for g in &with_set {
        let mut set = Set::plain(format!("sg_{}", short_id(g)), "ipv4_addr");
        for p in net.ports.iter().filter(|p| p.security_groups.contains(g)) {
            set.elements.extend(p.bindings().iter().map(|(_, ip)| ip.to_string()));
        }
        sets.push(set);
    }
    let mut policies: Vec<_> = net.policies.iter().collect();
    // Deny wins: all deny policies are evaluated before any allow.
    policies.sort_by_key(|p| (p.action == Action::Allow, p.id));
    let mut policy_rules = Vec::new();
    for pol in &policies {
        let id = short_id(&pol.id);
        for (side, sel) in [("from", &pol.from), ("to", &pol.to)] {
            let mut set = Set::plain(format!("pol_{id}_{side}"), "ipv4_addr");
            for p in net.ports.iter().filter(|p| sel.matches(&p.tags)) {
                set.elements.insert(p.ip.to_string());
            }
            sets.push(set);
        }
        counters.push(format!("pol_{id}"));
        let ranges: Vec<(u16, u16)> = pol.ports.iter().map(|r| (r.min, r.max)).collect();
        let mut parts = vec![format!("ip saddr @pol_{id}_from ip daddr @pol_{id}_to")];
        parts.extend(port_match(pol.protocol, &ranges));
        parts.push(format!("counter name \"pol_{id}\""));
        parts.push(s(match pol.action {
            Action::Allow => "accept",
            Action::Deny => "goto deny",
        }));
        parts.push(format!("comment \"policy {}\"", pol.name));
        policy_rules.push(parts.join(" "));
    }

    let mut limit_by_mark = Set::map("limit_by_mark", "mark", "verdict");
    let mut limit_by_ip = Set::map("limit_by_ip", "ipv4_addr", "verdict");
    let mut egress_by_mark = Set::map("egress_by_mark", "mark", "verdict");
    let mut ingress_by_ip = Set::map("ingress_by_ip", "ipv4_addr", "verdict");
    let mut port_chains = Vec::new();
    let mut ingress_owner: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
    for (p, _, mark) in &ctx.secure {
        let id = short_id(&p.id);
        let ips: BTreeSet<Ipv4Addr> = p.bindings().iter().map(|(_, ip)| *ip).collect();
        if let Some(n) = p.max_connections {
            counters.push(format!("port_{id}_ct_drop"));
            port_chains.push(Chain::regular(
                format!("port_{id}_ct"),
                vec![format!(
                    "ct count over {n} counter name \"port_{id}_ct_drop\" goto deny"
                )],
            ));
            limit_by_mark
                .elements
                .insert(elem::map(elem::mark(*mark), format!("jump port_{id}_ct")));
            for ip in &ips {
                limit_by_ip
                    .elements
                    .insert(elem::map(ip.to_string(), format!("jump port_{id}_ct")));
            }
        }
        counters.push(format!("port_{id}_drop_in"));
        counters.push(format!("port_{id}_drop_out"));
        let mut groups = p.security_groups.clone();
        groups.sort();
        let mut out_rules: Vec<String> = groups.iter().map(|g| format!("jump sg_{}_out", short_id(g))).collect();
        out_rules.push(format!("counter name \"port_{id}_drop_out\" goto deny"));
        let mut in_rules: Vec<String> = groups.iter().map(|g| format!("jump sg_{}_in", short_id(g))).collect();
        in_rules.push(format!("counter name \"port_{id}_drop_in\" goto deny"));
        port_chains.push(Chain::regular(format!("port_{id}_out"), out_rules));
        port_chains.push(Chain::regular(format!("port_{id}_in"), in_rules));
        egress_by_mark
            .elements
            .insert(elem::map(elem::mark(*mark), format!("jump port_{id}_out")));
        for ip in ips {
            // A shared VIP (allowed address pair on two ports) is filtered by the first port's
            // groups; such ports are expected to share their groups.
            ingress_owner.entry(ip).or_insert_with(|| format!("jump port_{id}_in"));
        }
    }
    for (ip, v) in ingress_owner {
        ingress_by_ip.elements.insert(elem::map(ip.to_string(), v));
    }
    let mut sg_chains = Vec::new();
    for g in net.security_groups.iter().filter(|g| used.contains(&g.id)) {
        let id = short_id(&g.id);
        let rules = |d: Direction| g.rules.iter().filter(|r| r.direction == d).map(sg_rule).collect();
        sg_chains.push(Chain::regular(format!("sg_{id}_in"), rules(Direction::Ingress)));
        sg_chains.push(Chain::regular(format!("sg_{id}_out"), rules(Direction::Egress)));
    }
    sets.extend([limit_by_mark, limit_by_ip, egress_by_mark, ingress_by_ip]);
    // Flow logs (10.9-2): the data path records each new accepted flow and each denied
    // attempt, keyed by addresses, protocol and destination port, with a packet counter.
    sets.push(Set::flow_log(names::FLOWS_ALLOWED, FLOW_KEY));
    sets.push(Set::flow_log(names::FLOWS_DENIED, FLOW_KEY));
    t.sets = sets;
    counters.sort();
    t.counters = counters;

    let qg = names::QG;
    let mut input = vec![
        s("iif \"lo\" accept"),
        s("ct state established,related accept"),
        s("ct state invalid counter name \"drop_invalid\" drop"),
    ];
    if uplink {
        input.push(format!("iifname \"{qg}\" counter name \"drop_router_input\" drop"));
    }
    input.extend([
        s("udp sport 68 udp dport 67 accept comment \"platform DHCP\""),
        s("icmp type echo-request limit rate 10/second accept"),
        s("counter name \"drop_router_input\" drop"),
    ]);
    let mut forward = vec![
        s("ct state established,related accept"),
        s("ct state invalid counter name \"drop_invalid\" drop"),
    ];
    if uplink {
        forward.push(format!("iifname \"{qg}\" jump from_outside"));
    }
    forward.extend([
        s("meta mark vmap @limit_by_mark"),
        s("ip daddr vmap @limit_by_ip"),
        s("jump policies"),
        s("meta mark vmap @egress_by_mark"),
        s("goto to_port"),
    ]);
    let mut chains = vec![
        Chain {
            name: s("input"),
            base: Some(s("type filter hook input priority filter; policy drop;")),
            rules: input,
        },
        Chain {
            name: s("forward"),
            base: Some(s("type filter hook forward priority filter; policy drop;")),
            rules: forward,
        },
        Chain::regular(
            "from_outside",
            vec![s("ct status dnat return"), s("counter name \"drop_outside\" drop")],
        ),
        Chain {
            // Runs after `forward` has accepted a packet (a drop there is final).
            name: s("flows"),
            base: Some(s("type filter hook forward priority 10; policy accept;")),
            rules: flow_log_rules("ct state new ", names::FLOWS_ALLOWED, ""),
        },
        Chain::regular("deny", {
            let mut r = flow_log_rules("", names::FLOWS_DENIED, " drop");
            r.push(s("drop"));
            r
        }),
        Chain::regular("policies", policy_rules),
        Chain::regular(
            "to_port",
            vec![
                s("meta pkttype { broadcast, multicast } counter name \"drop_flood\" drop"),
                s("ip daddr vmap @ingress_by_ip"),
                s("accept"),
            ],
        ),
    ];
    chains.extend(port_chains);
    chains.extend(sg_chains);
    t.chains = chains;
    t
}

/// Key of the flow-log sets: source, destination, protocol, destination port (0 without ports).
pub const FLOW_KEY: &str = "ipv4_addr . ipv4_addr . inet_proto . inet_service";

fn flow_log_rules(prefix: &str, set: &str, verdict: &str) -> Vec<String> {
    vec![
        format!(
            "{prefix}meta l4proto {{ tcp, udp }} add @{set} {{ ip saddr . ip daddr . meta l4proto . th dport }}{verdict}"
        ),
        format!(
            "{prefix}meta l4proto != {{ tcp, udp }} add @{set} {{ ip saddr . ip daddr . meta l4proto . 0 }}{verdict}"
        ),
    ]
}

fn nat_table(ctx: &Ctx, router_ip: Ipv4Addr) -> Table {
    let mut t = Table::new(Family::Ip, names::TABLE_NAT);
    let mut dnat = Set::map("fip_dnat", "ipv4_addr", "ipv4_addr");
    let mut snat = Set::map("fip_snat", "ipv4_addr", "ipv4_addr");
    for f in &ctx.net.floating_ips {
        if let Some(p) = f.port.and_then(|id| ctx.net.ports.iter().find(|p| p.id == id)) {
            dnat.elements.insert(elem::map(f.address.to_string(), p.ip.to_string()));
            snat.elements.insert(elem::map(p.ip.to_string(), f.address.to_string()));
        }
    }
    t.sets = vec![dnat, snat];
    let qg = names::QG;
    t.chains = vec![
        Chain {
            name: s("prerouting"),
            base: Some(s("type nat hook prerouting priority dstnat; policy accept;")),
            rules: vec![format!("iifname \"{qg}\" dnat to ip daddr map @fip_dnat")],
        },
        Chain {
            name: s("postrouting"),
            base: Some(s("type nat hook postrouting priority srcnat; policy accept;")),
            rules: vec![
                format!("oifname \"{qg}\" snat to ip saddr map @fip_snat"),
                format!("oifname \"{qg}\" snat to {router_ip}"),
            ],
        },
    ];
    t
}

fn dnsmasq(net: &VpcNetwork, local: &[(&Port, &LocalPort)]) -> Option<DnsmasqSpec> {
    let mut subnets: Vec<_> = net.subnets.iter().filter(|s| s.dhcp).collect();
    subnets.sort_by_key(|s| s.id);
    let serving: Vec<_> = subnets
        .into_iter()
        .filter(|s| local.iter().any(|(p, _)| p.subnet == s.id))
        .collect();
    if serving.is_empty() {
        return None;
    }
    let mut conf = String::from(
        "# Rendered by rampart-net: platform DHCP, static leases only (10.7).\n\
         port=0\n\
         bind-interfaces\n\
         except-interface=lo\n\
         no-resolv\n\
         no-hosts\n\
         dhcp-authoritative\n\
         leasefile-ro\n",
    );
    for s in &serving {
        let tag = short_id(&s.id);
        conf.push_str(&format!("interface={}\n", names::bridge(&s.id)));
        conf.push_str(&format!(
            "dhcp-range=set:s{tag},{},static,{},1h\n",
            s.cidr.network(),
            s.cidr.netmask()
        ));
        conf.push_str(&format!("dhcp-option=tag:s{tag},option:router,{}\n", s.gateway));
    }
    let mut hosts = String::new();
    for (p, _) in local {
        if serving.iter().any(|s| s.id == p.subnet) {
            hosts.push_str(&format!("{},{}\n", p.mac, p.ip));
        }
    }
    Some(DnsmasqSpec { conf, hosts })
}

#[cfg(test)]
mod tests;
