//! The controller ↔ agent protocol under `/agent/v1`. Agents pull: they long-poll for the full,
//! generation-numbered desired state of their node and push their status, which is also their
//! heartbeat. Everything but `join` needs the node's client certificate (mTLS).

use rampart_common::Sensitive;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::HostFacts;

pub mod network;

/// Prefix of join tokens, which read `rjt1.<id>.<secret>.<ca-sha256>`.
pub const JOIN_TOKEN_PREFIX: &str = "rjt1";

/// The parts of a join token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinTokenParts {
    pub id: Uuid,
    pub secret: String,
    pub ca_sha256: String,
}

impl JoinTokenParts {
    pub fn format(id: Uuid, secret: &str, ca_sha256: &str) -> String {
        format!("{JOIN_TOKEN_PREFIX}.{}.{secret}.{ca_sha256}", id.simple())
    }

    pub fn parse(token: &str) -> Option<JoinTokenParts> {
        let mut parts = token.trim().split('.');
        if parts.next()? != JOIN_TOKEN_PREFIX {
            return None;
        }
        let id = Uuid::try_parse(parts.next()?).ok()?;
        let secret = parts.next()?.to_string();
        let ca_sha256 = parts.next()?.to_ascii_lowercase();
        if parts.next().is_some()
            || secret.len() < 20
            || ca_sha256.len() != 64
            || !ca_sha256.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return None;
        }
        Some(JoinTokenParts { id, secret, ca_sha256 })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    pub token: Sensitive,
    /// PKCS#10 certificate signing request (PEM) for the agent's own key. Only the public key
    /// is used: the controller chooses the subject (the node id).
    pub csr: String,
    /// Node name to register (default: the agent's host name).
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JoinResponse {
    pub node_id: Uuid,
    pub node_name: String,
    /// The node's client certificate (PEM), signed by the controller's CA.
    pub certificate: String,
    /// The CA certificate (PEM).
    pub ca_certificate: String,
}

/// The full desired state of one node at one generation. Later capabilities add their
/// sections (networks, instances, volumes); an agent applies the whole document each time.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct NodeConfig {
    pub node_id: Uuid,
    pub node_name: String,
    pub generation: i64,
    /// How often the agent must send its status.
    pub heartbeat_interval_s: u64,
    /// Self fencing (spec 14.1-3): with no answer to its reports for this long, the agent kills
    /// its protected VMs and boots none until the controller answers again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence_after_s: Option<u64>,
    /// The VMs this node must run (left out when there is none).
    #[serde(default, skip_serializing_if = "crate::compute::NodeCompute::is_empty")]
    pub compute: crate::compute::NodeCompute,
    /// The tenant networks this node must build: every VPC with a port bound here, whole
    /// (see `rampart_net::desired`). Left out when there is none.
    #[serde(default, skip_serializing_if = "network::NodeNetwork::is_empty")]
    #[schema(value_type = Object)]
    pub network: network::NodeNetwork,
    /// The volumes and snapshots this node must hold (left out when there is none).
    #[serde(default, skip_serializing_if = "crate::storage::NodeStorage::is_empty")]
    pub storage: crate::storage::NodeStorage,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentStatus {
    /// Last generation fully applied on the node (0 before the first).
    pub applied_generation: i64,
    pub agent_version: String,
    pub host: HostFacts,
    /// Problems met while applying the desired state, one line each.
    #[serde(default)]
    pub errors: Vec<String>,
    /// The node's VMs: power state, failures, events, metrics, console.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute: Option<crate::compute::ComputeStatus>,
    /// The node's data plane: counters and flow logs per VPC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::network::NetworkStatus>,
    /// The node's pools and volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<crate::storage::StorageStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct StatusAck {
    /// Current generation of the node's desired state: when it is higher than the agent's,
    /// the agent fetches the new document at once.
    pub generation: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_tokens_round_trip_and_reject_garbage() {
        let id = Uuid::new_v4();
        let ca = "ab".repeat(32);
        let t = JoinTokenParts::format(id, "s3cretsecretsecretsecret", &ca);
        let p = JoinTokenParts::parse(&t).unwrap();
        assert_eq!(p.id, id);
        assert_eq!(p.ca_sha256, ca);
        for bad in [
            "",
            "rjt1",
            "rjt2.x.y.z",
            &format!("rjt1.{}.short.{ca}", id.simple()),
            &format!("{t}.extra"),
        ] {
            assert!(JoinTokenParts::parse(bad).is_none(), "{bad}");
        }
    }
}
