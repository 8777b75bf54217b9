//! Tenant networks on the controller side: the `network` section of each node's document, the
//! publication of every change to the nodes concerned (in the caller's transaction), the
//! external address pool, and the flow graph built from what agents report.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use rampart_api::network::{FlowEdge, FlowGraph, FlowNode, NetworkStatus};
use rampart_common::Error;
use rampart_common::config::Config;
use rampart_db::{Conn, network as db};
use rampart_net::desired::{ExternalNetwork, LocalPort, NodeNetwork, VpcNetwork};
use uuid::Uuid;

/// The external network of the configuration (validated at start).
pub fn external(config: &Config) -> Option<ExternalNetwork> {
    let cidr: Ipv4Net = config.network.external_cidr.as_deref()?.parse().ok()?;
    Some(ExternalNetwork {
        cidr,
        gateway: config.network.external_gateway.as_deref().and_then(|g| g.parse().ok()),
    })
}

/// One VPC as the agents see it: everything in it, and as local ports those bound to `node`.
pub async fn vpc_network(conn: &mut Conn, vpc: Uuid, node: Option<Uuid>) -> rampart_db::Result<Option<VpcNetwork>> {
    let Some(row) = db::vpc_by_id(conn, vpc).await? else {
        return Ok(None);
    };
    let subnets = db::subnets_of_vpc(conn, vpc).await?;
    let ports = db::ports_of_vpc(conn, vpc).await?;
    let mut wanted: BTreeSet<Uuid> = ports
        .iter()
        .flat_map(|p| p.port.security_groups.iter().copied())
        .collect();
    // Remote groups named by the rules of used groups: their sets are compiled too.
    let used = db::groups(conn, row.vpc.project, Some(&wanted)).await?;
    wanted.extend(used.iter().flat_map(|g| g.rules.iter().filter_map(|r| r.remote_group)));
    let security_groups = db::groups(conn, row.vpc.project, Some(&wanted)).await?;
    let policies = db::policies_of_project(conn, row.vpc.project).await?;
    let floating_ips = db::floating_ips_of_vpc(conn, vpc).await?;
    let local_ports = match node {
        Some(n) => ports
            .iter()
            .filter(|p| p.node == Some(n))
            .filter_map(|p| {
                p.device.clone().map(|device| LocalPort {
                    port: p.port.id,
                    device,
                })
            })
            .collect(),
        None => vec![],
    };
    Ok(Some(VpcNetwork {
        vpc: row.vpc,
        subnets,
        security_groups,
        policies,
        ports: ports.into_iter().map(|p| p.port).collect(),
        local_ports,
        floating_ips,
        router_external_ip: row.router_external_ip,
        remote_ports: Default::default(),
    }))
}

/// The `network` section of a node's document.
///
/// A VPC spanning several nodes is joined over VXLAN: the document lists the ports bound
/// elsewhere with their node's tunnel address. Its outside access (SNAT address, floating
/// IPs) lives on one node, the VPC's holder with the lowest id, for its own ports there: two
/// routers must never claim one external address.
pub async fn node_network(conn: &mut Conn, config: &Config, node: Uuid) -> rampart_db::Result<NodeNetwork> {
    let external = external(config);
    let tunnels = db::tunnel_ips(conn).await?;
    let mut vpcs = Vec::new();
    for vpc in db::vpcs_on_node(conn, node).await? {
        let ports = db::ports_of_vpc(conn, vpc).await?;
        let Some(mut v) = vpc_network(conn, vpc, Some(node)).await? else {
            continue;
        };
        let holders: BTreeSet<Uuid> = ports.iter().filter_map(|p| p.node).collect();
        let uplink_node = holders.iter().next().copied();
        let local: BTreeSet<Uuid> = v.local_ports.iter().map(|l| l.port).collect();
        if external.is_none() || uplink_node != Some(node) {
            v.router_external_ip = None;
        }
        if v.router_external_ip.is_none() {
            v.floating_ips.clear();
        }
        v.floating_ips.retain(|f| f.port.is_some_and(|p| local.contains(&p)));
        v.remote_ports = ports
            .iter()
            .filter(|p| p.node.is_some_and(|n| n != node) && p.device.is_some())
            .filter_map(|p| Some((p.port.id, *tunnels.get(&p.node?)?)))
            .collect();
        vpcs.push(v);
    }
    if vpcs.is_empty() {
        return Ok(NodeNetwork::default());
    }
    Ok(NodeNetwork { external, vpcs })
}

/// The nodes whose documents a change in `project` may touch.
pub async fn nodes_of_project(conn: &mut Conn, project: Uuid) -> rampart_db::Result<BTreeSet<(Uuid, String)>> {
    Ok(db::nodes_of_project(conn, project).await?.into_iter().collect())
}

/// The next free address of the external pool (the gateway, the network and broadcast
/// addresses, router addresses and floating IPs excluded).
pub async fn allocate_external(conn: &mut Conn, config: &Config) -> Result<Ipv4Addr, Error> {
    let ext = external(config).ok_or_else(|| {
        rampart_net::model::invalid(
            "external",
            "no_external_network",
            "this cloud has no external network (network.external_cidr is not configured)",
        )
    })?;
    let used = db::external_addresses_in_use(conn).await?;
    let reserved: BTreeSet<Ipv4Addr> = ext.gateway.into_iter().collect();
    rampart_net::model::allocate_floating_ip(&ext.cidr, &reserved, &used)
}

/// The flow graph of a project from the flow logs agents reported (10.9-2). A flow seen on two
/// nodes (egress on one, ingress on the other) is counted once: the larger count wins.
pub fn flow_graph(
    reports: &[(Uuid, NetworkStatus)],
    vpcs: &BTreeMap<Uuid, Vec<rampart_db::network::PortRow>>,
) -> FlowGraph {
    // Address → port, per VPC (addresses repeat across VPCs).
    let mut owner: BTreeMap<(Uuid, Ipv4Addr), &rampart_db::network::PortRow> = BTreeMap::new();
    for (vpc, ports) in vpcs {
        for p in ports {
            for (_, ip) in p.port.bindings() {
                owner.entry((*vpc, ip)).or_insert(p);
            }
        }
    }
    let mut nodes: BTreeMap<String, FlowNode> = BTreeMap::new();
    let mut edges: BTreeMap<(String, String, String, u16, bool), u64> = BTreeMap::new();
    let endpoint = |vpc: Uuid, ip: Ipv4Addr, nodes: &mut BTreeMap<String, FlowNode>| -> String {
        match owner.get(&(vpc, ip)) {
            Some(p) => {
                let id = p.port.id.to_string();
                nodes.entry(id.clone()).or_insert_with(|| FlowNode {
                    id: id.clone(),
                    kind: "port".into(),
                    ip: p.port.ip,
                    vpc: Some(vpc),
                    tags: p.port.tags.clone(),
                });
                id
            }
            None => {
                let id = ip.to_string();
                nodes.entry(id.clone()).or_insert_with(|| FlowNode {
                    id: id.clone(),
                    kind: "external".into(),
                    ip,
                    vpc: None,
                    tags: BTreeMap::new(),
                });
                id
            }
        }
    };
    for (_, status) in reports {
        for v in status.vpcs.iter().filter(|v| vpcs.contains_key(&v.vpc)) {
            for f in &v.flows {
                let from = endpoint(v.vpc, f.src, &mut nodes);
                let to = endpoint(v.vpc, f.dst, &mut nodes);
                let e = edges
                    .entry((from, to, f.protocol.clone(), f.port, f.allowed))
                    .or_default();
                *e = (*e).max(f.packets);
            }
        }
    }
    FlowGraph {
        nodes: nodes.into_values().collect(),
        edges: edges
            .into_iter()
            .map(|((from, to, protocol, port, allowed), count)| FlowEdge {
                from,
                to,
                protocol,
                port,
                count,
                verdict: if allowed { "allowed" } else { "denied" }.into(),
            })
            .collect(),
    }
}

/// The graph in Graphviz DOT: ports labelled with their address and tags, allowed edges solid,
/// denied ones dashed red.
pub fn flow_dot(g: &FlowGraph) -> String {
    use std::fmt::Write as _;
    let quote = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let mut out = String::from("digraph flows {\n  rankdir=LR;\n  node [shape=box];\n");
    for n in &g.nodes {
        let mut label = format!("{}\\n{}", &n.id[..n.id.len().min(8)], n.ip);
        if n.kind == "external" {
            label = n.ip.to_string();
        }
        for (k, v) in &n.tags {
            let _ = write!(label, "\\n{}={}", quote(k), quote(v));
        }
        let _ = writeln!(
            out,
            "  \"{}\" [label=\"{label}\"{}];",
            quote(&n.id),
            if n.kind == "external" { ", shape=ellipse" } else { "" }
        );
    }
    for e in &g.edges {
        let what = if e.port == 0 {
            e.protocol.clone()
        } else {
            format!("{}/{}", e.protocol, e.port)
        };
        let style = if e.verdict == "allowed" {
            "color=darkgreen"
        } else {
            "color=red, style=dashed"
        };
        let _ = writeln!(
            out,
            "  \"{}\" -> \"{}\" [label=\"{what} x{} {}\", {style}];",
            quote(&e.from),
            quote(&e.to),
            e.count,
            e.verdict
        );
    }
    out.push_str("}\n");
    out
}
