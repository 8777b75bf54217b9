//! The part of a node's desired-state document that describes its networks: what the
//! controller renders per node and the agent hands to `rampart_net::plan`.
//!
//! A VPC is present on a node when at least one of its ports is bound there. The document
//! then carries the whole VPC (all subnets, all ports with their addresses and tags, the groups
//! and policies), because the sets on this node must name members that live elsewhere
//! (10.3-3: members of one group spread over hosts).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::network::model::{FloatingIp, Port, SecurityGroup, SegmentationPolicy, Subnet, Vpc};

/// The provider ("outside") network the VPC routers attach to for SNAT and floating IPs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalNetwork {
    pub cidr: Ipv4Net,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "kind", deny_unknown_fields)]
pub enum PortDevice {
    /// A tap created in the VPC namespace for QEMU (the compute driver opens it).
    Tap,
    /// A veth whose far end goes to `peer_netns` as `peer_name` with the port's MAC: how tests
    /// and containers stand in for a VM.
    Veth { peer_netns: String, peer_name: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalPort {
    pub port: Uuid,
    pub device: PortDevice,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VpcNetwork {
    pub vpc: Vpc,
    pub subnets: Vec<Subnet>,
    pub security_groups: Vec<SecurityGroup>,
    #[serde(default)]
    pub policies: Vec<SegmentationPolicy>,
    /// All ports of the VPC, on any node.
    pub ports: Vec<Port>,
    /// The ports bound to this node.
    pub local_ports: Vec<LocalPort>,
    #[serde(default)]
    pub floating_ips: Vec<FloatingIp>,
    /// This VPC router's address on the external network (its SNAT source). None: no outside
    /// access at all (10.4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_external_ip: Option<Ipv4Addr>,
    /// Ports bound to other nodes, with the tunnel address (VTEP) of their node: their
    /// subnets are joined to this node over VXLAN (VNI = the subnet's segment id).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub remote_ports: BTreeMap<Uuid, Ipv4Addr>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeNetwork {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalNetwork>,
    pub vpcs: Vec<VpcNetwork>,
}

impl NodeNetwork {
    /// Nothing to build on the node (documents leave the section out then).
    pub fn is_empty(&self) -> bool {
        self.vpcs.is_empty()
    }
}
