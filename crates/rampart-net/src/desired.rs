//! The part of a node's desired-state document that describes its networks: what the
//! controller renders per node and the agent hands to [`crate::plan`].
//!
//! A VPC is present on a node when at least one of its ports is bound there. The document
//! then carries the whole VPC (all subnets, all ports with their addresses and tags, the groups
//! and policies), because the sets on this node must name members that live elsewhere
//! (10.3-3: members of one group spread over hosts).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::model::{FloatingIp, Port, SecurityGroup, SegmentationPolicy, Subnet, Vpc, short_id};

/// Node-local settings of the agent (its configuration file, not the controller).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetNodeConfig {
    /// Prefix of every network namespace the agent owns; it deletes stale ones with it.
    pub netns_prefix: String,
    /// Where per-VPC dnsmasq files live (`<run_dir>/<netns>/`).
    pub run_dir: PathBuf,
    /// The tenant plane: where VXLAN tunnels to other nodes start. None: this node's VPCs
    /// reach no port on another node.
    #[serde(default)]
    pub underlay: Option<Underlay>,
}

/// The tenant-plane interface of a node (VXLAN underlay, 10.1/10.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Underlay {
    /// Device in the agent's own network namespace (e.g. `eth1`).
    pub device: String,
    /// This node's address on it: the VXLAN source (VTEP) other nodes send to.
    pub local_ip: Ipv4Addr,
}

impl NetNodeConfig {
    pub fn vpc_netns(&self, vpc: &Uuid) -> String {
        format!("{}vpc-{}", self.netns_prefix, vpc.simple())
    }

    pub fn ext_netns(&self) -> String {
        format!("{}ext", self.netns_prefix)
    }
}

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

/// Device names are per namespace and at most 15 bytes.
pub mod names {
    use super::*;

    pub const QG: &str = "qg0";
    pub const EXT_BRIDGE: &str = "brext";
    pub const TABLE_GUARD: &str = "rampart_guard";
    pub const TABLE_FW: &str = "rampart_fw";
    pub const TABLE_NAT: &str = "rampart_nat";
    pub const FLOWS_ALLOWED: &str = "flows_allowed";
    pub const FLOWS_DENIED: &str = "flows_denied";

    pub fn bridge(subnet: &Uuid) -> String {
        format!("rb{}", short_id(subnet))
    }

    pub fn port_dev(port: &Uuid) -> String {
        format!("tp{}", short_id(port))
    }

    /// The VXLAN device of a subnet (its VNI is the subnet's segment id).
    pub fn vxlan(subnet: &Uuid) -> String {
        format!("vx{}", short_id(subnet))
    }

    /// The external end of a VPC router's uplink, in the external namespace shared by all
    /// VPCs of the node: 12 hex digits of a hash of the whole id, so ids that differ anywhere
    /// give different names.
    pub fn qg_peer(vpc: &Uuid) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in vpc.as_bytes() {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("qg{:012x}", h & 0xffff_ffff_ffff)
    }
}
