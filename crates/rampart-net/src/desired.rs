//! The part of a node's desired-state document that describes its networks: what the
//! controller renders per node and the agent hands to [`crate::plan`].
//!
//! A VPC is present on a node when at least one of its ports is bound there. The document
//! then carries the whole VPC (all subnets, all ports with their addresses and tags, the groups
//! and policies), because the sets on this node must name members that live elsewhere
//! (10.3-3: members of one group spread over hosts).
//!
//! The document's shapes are part of the agent protocol and live in
//! `rampart_api::agent::network` (re-exported here); this module adds what only the data plane
//! needs: the agent's node-local settings and the device names.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use rampart_api::agent::network::*;

use crate::model::short_id;

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
