//! analysis

use super::desired as network;
use crate::audit::operations::Operation;
use crate::auth::Principal;
use crate::state::AppState;
use rampart_api::network::*;
use rampart_common::Error;
use rampart_db::network::{self as db, PortRow};
use rampart_net::model::invalid;
use std::collections::BTreeMap;
use uuid::Uuid;

use super::*;

pub const REACHABILITY: Operation = Operation::new("project.reachability.get", "project").target("p");

/// Whether port `from` can open `protocol`/`port` to port `to`, from the model alone, and which
/// policies or rules decide it (10.9-1, 11.3-3).
pub async fn reachability(
    state: &AppState,
    principal: &Principal,
    p: Uuid,
    q: ReachabilityQuery,
) -> Result<Reachability, Error> {
    read(state, principal, p).await?;
    match (q.protocol, q.port) {
        (Protocol::Any, _) => {
            return Err(invalid(
                "protocol",
                "protocol_any",
                "ask about one protocol: tcp, udp or icmp",
            ));
        }
        (Protocol::Tcp | Protocol::Udp, None) => {
            return Err(invalid("port", "port_required", "tcp and udp need a destination port"));
        }
        (Protocol::Icmp, Some(_)) => {
            return Err(invalid("port", "ports_require_tcp_or_udp", "icmp has no ports"));
        }
        (_, Some(0)) => return Err(invalid("port", "port_out_of_range", "ports are 1-65535")),
        _ => {}
    }
    let mut conn = state.db.conn().await?;
    let from = db::get_port(&mut conn, p, q.from)
        .await?
        .ok_or_else(|| Error::not_found("no such port (from)"))?;
    let to = db::get_port(&mut conn, p, q.to)
        .await?
        .ok_or_else(|| Error::not_found("no such port (to)"))?;
    if from.port.vpc != to.port.vpc {
        return Err(invalid(
            "to",
            "different_vpc",
            "the ports are in different VPCs, which are never connected to each other",
        ));
    }
    let net = network::vpc_network(&mut conn, from.port.vpc, None)
        .await?
        .ok_or_else(|| Error::internal("reading a VPC", "port without VPC"))?;
    rampart_net::reach::reachable(&net, &q.from, &q.to, q.protocol, q.port)
        .ok_or_else(|| Error::internal("analysing reachability", "port missing from its VPC"))
}

pub const NODE_NETWORK: Operation = Operation::new("node.network.get", "node").target("id");

/// The latest data-plane report of a node: per VPC, the drop counters (spoofing, DHCP
/// quarantine, connection allowance exceeded per port, per-policy hits) and flow logs.
pub async fn node_network(state: &AppState, principal: &Principal, id: Uuid) -> Result<NodeNetworkReport, Error> {
    principal.require_system(state, "system.read")?;
    let mut conn = state.db.conn().await?;
    let (_, json, updated_at) = db::node_statuses(&mut conn, &[id])
        .await?
        .pop()
        .ok_or_else(|| Error::not_found("no network report from this node yet"))?;
    let status: NetworkStatus =
        serde_json::from_str(&json).map_err(|e| Error::internal("reading a node's network report", e))?;
    Ok(NodeNetworkReport {
        node: id,
        status,
        updated_at,
    })
}

/// The flow graph in the format asked for.
pub enum Flows {
    Json(FlowGraph),
    /// Graphviz DOT.
    Dot(String),
}

pub const FLOWS: Operation = Operation::new("flow.list", "flow");

/// The flow graph of the project's VPCs from the nodes' latest reports (`?since=` to ignore
/// older ones, `?vpc=` for one VPC).
pub async fn flows(state: &AppState, principal: &Principal, p: Uuid, q: FlowsQuery) -> Result<Flows, Error> {
    read(state, principal, p).await?;
    let dot = match q.format.as_deref() {
        None | Some("json") => false,
        Some("dot") => true,
        Some(_) => return Err(invalid("format", "invalid_format", "format is json or dot")),
    };
    let since = match &q.since {
        Some(s) => Some(
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .map_err(|_| invalid("since", "invalid_time", "since is an RFC 3339 time"))?,
        ),
        None => None,
    };
    let mut conn = state.db.conn().await?;
    let mut vpcs: BTreeMap<Uuid, Vec<PortRow>> = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let rows = db::list_vpcs(&mut conn, p, after.as_deref(), 1000).await?;
        let done = rows.len() < 1000;
        after = rows.last().map(|r| r.vpc.name.clone());
        for r in rows {
            if q.vpc.is_none_or(|v| v == r.vpc.id) {
                vpcs.insert(r.vpc.id, db::ports_of_vpc(&mut conn, r.vpc.id).await?);
            }
        }
        if done {
            break;
        }
    }
    let nodes: Vec<Uuid> = network::nodes_of_project(&mut conn, p)
        .await?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let reports: Vec<(Uuid, NetworkStatus)> = db::node_statuses(&mut conn, &nodes)
        .await?
        .into_iter()
        .filter(|(_, _, at)| since.is_none_or(|s| *at >= s))
        .filter_map(|(n, json, _)| serde_json::from_str(&json).ok().map(|s| (n, s)))
        .collect();
    let graph = network::flow_graph(&reports, &vpcs);
    Ok(if dot {
        Flows::Dot(network::flow_dot(&graph))
    } else {
        Flows::Json(graph)
    })
}
