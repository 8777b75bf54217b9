//! The Network API (API.md "Network"): request bodies are the validated constructors of
//! [`model`] (re-exported here), responses are the views below.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Deserializer, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

pub mod model;

pub use crate::agent::network::PortDevice;
pub use model::{
    AddressPair, FloatingIpCreate, PortCreate, PortUpdate, Protocol, SecurityGroup, SecurityGroupCreate,
    SecurityGroupRule, SecurityGroupRuleCreate, SegmentationPolicy, SegmentationPolicyCreate, Subnet, SubnetCreate,
    VpcCreate,
};

// The answer of the static reachability analysis (`rampart_net::reach`). No doc comment: it
// would become the schema's description and change the OpenAPI document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Reachability {
    pub allowed: bool,
    /// What decided, in evaluation order: `policy:<id>`, `security_group_rule:<id>`,
    /// `egress_default_deny:<port>`, `ingress_default_deny:<port>`,
    /// `port_security_disabled:<port>`, `same_port`.
    pub because: Vec<String>,
}

/// One element of a flow log: `packets` packets from `src` to `dst` (`port` 0 for protocols
/// without ports) were accepted as new flows (`allowed`) or dropped.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
pub struct FlowRecord {
    #[schema(value_type = String)]
    pub src: Ipv4Addr,
    #[schema(value_type = String)]
    pub dst: Ipv4Addr,
    pub protocol: String,
    pub port: u16,
    pub packets: u64,
    pub allowed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Vpc {
    pub id: Uuid,
    pub project_id: Uuid,
    pub name: String,
    #[schema(value_type = String)]
    pub cidr: Ipv4Net,
    /// Connected to the external network: SNAT egress and floating IPs.
    pub external: bool,
    /// The router's SNAT address on the external network.
    #[schema(value_type = Option<String>)]
    pub router_external_ip: Option<Ipv4Addr>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VpcUpdate {
    /// Connect the VPC to the external network (or cut it off).
    #[serde(default)]
    pub external: Option<bool>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecurityGroupUpdate {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

/// Where a port is plugged in.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PortBinding {
    pub node: Uuid,
    pub device: PortDevice,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Port {
    pub id: Uuid,
    pub project_id: Uuid,
    pub vpc: Uuid,
    pub subnet: Uuid,
    #[schema(value_type = String)]
    pub mac: model::MacAddr,
    #[schema(value_type = String)]
    pub ip: Ipv4Addr,
    pub security_groups: Vec<Uuid>,
    pub tags: BTreeMap<String, String>,
    pub allowed_address_pairs: Vec<AddressPair>,
    pub port_security: bool,
    pub max_connections: Option<u32>,
    /// Set when the port is plugged into a node.
    pub binding: Option<PortBinding>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct FloatingIp {
    pub id: Uuid,
    #[schema(value_type = String)]
    pub address: Ipv4Addr,
    pub port: Option<Uuid>,
}

fn double_option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<Uuid>>, D::Error> {
    Option::<Uuid>::deserialize(d).map(Some)
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FloatingIpUpdate {
    /// The port to forward to; `null` takes the address off its port.
    #[serde(default, deserialize_with = "double_option")]
    pub port: Option<Option<Uuid>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct NetworkListParams {
    /// At most this many items (1 to 1000, default 100).
    pub limit: Option<u32>,
    /// The `next` of the previous page.
    pub cursor: Option<String>,
    /// Only the objects of this VPC (subnets, ports).
    pub vpc: Option<Uuid>,
    /// Only the ports of this subnet.
    pub subnet: Option<Uuid>,
}

#[derive(Debug, Clone, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReachabilityQuery {
    /// The port that opens the flow.
    pub from: Uuid,
    /// The port it is opened to.
    pub to: Uuid,
    /// `tcp`, `udp` or `icmp`.
    pub protocol: Protocol,
    /// Destination port (tcp and udp).
    pub port: Option<u16>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FlowsQuery {
    /// Only records reported by agents at or after this time (RFC 3339).
    pub since: Option<String>,
    /// `json` (default) or `dot` (Graphviz).
    pub format: Option<String>,
    /// Only the flows of this VPC.
    pub vpc: Option<Uuid>,
}

/// An endpoint of the flow graph: a port of the project, or an address outside it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct FlowNode {
    /// The port id, or the address for an endpoint that is not a port of the project.
    pub id: String,
    /// `port` or `external`.
    pub kind: String,
    #[schema(value_type = String)]
    pub ip: Ipv4Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc: Option<Uuid>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct FlowEdge {
    pub from: String,
    pub to: String,
    /// `tcp`, `udp`, `icmp` or the protocol number.
    pub protocol: String,
    /// Destination port, 0 for protocols without ports.
    pub port: u16,
    /// New flows accepted, or packets dropped, in the recording window (one hour per record).
    pub count: u64,
    /// `allowed` or `denied`.
    pub verdict: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct FlowGraph {
    pub nodes: Vec<FlowNode>,
    pub edges: Vec<FlowEdge>,
}

/// What an agent reports about one VPC on its node.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VpcNetworkStatus {
    pub vpc: Uuid,
    /// Named nft counters: `drop_ip_spoof`, `drop_arp_spoof`, `drop_dhcp_server`,
    /// `port_<id>_ct_drop` (connection allowance exceeded), `port_<id>_drop_in|out`, `pol_<id>`.
    pub counters: BTreeMap<String, u64>,
    /// Flow-log records, busiest first.
    pub flows: Vec<FlowRecord>,
}

/// The data plane of a node, as its agent last saw it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NetworkStatus {
    pub vpcs: Vec<VpcNetworkStatus>,
    /// Generation whose network section was applied without error.
    pub applied_generation: i64,
    /// Steps of the last reconcile pass and how long its nft transactions took.
    pub last_steps: u64,
    pub last_nft_ms: u64,
    /// Failures of the last pass, one line each (also in the agent's `errors`).
    #[serde(default)]
    pub errors: Vec<String>,
    /// The node's tenant-plane address, where other nodes send its VPCs' VXLAN traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub tunnel_ip: Option<Ipv4Addr>,
}

/// `GET /v1/nodes/{id}/network`: the latest data-plane report of a node.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct NodeNetworkReport {
    pub node: Uuid,
    pub status: NetworkStatus,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
}
