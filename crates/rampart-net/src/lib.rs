//! Rampart tenant networking (CSA Cloud OS Security Spec v2.0 §10, §11.3).
//!
//! * [`model`]: VPCs, subnets, ports, security groups, segmentation policies, floating IPs, the
//!   API request bodies with their validation, IPAM and MAC allocation.
//! * [`desired`]: the network part of a node's desired-state document.
//! * [`compile`]: pure compiler from one VPC of that document to a namespace layout, an
//!   nftables ruleset and dnsmasq files; [`nft`] models, renders, observes and diffs rulesets.
//! * [`plan`]: pure `plan(desired, observed) -> steps`.
//! * [`exec`]: the [`exec::NetDriver`] trait with the real driver (`ip`, `nft`, `conntrack`,
//!   `dnsmasq` in network namespaces) and a fake for fast agent tests.
//! * [`reach`]: static reachability analysis over the model.
//! * [`host`]: the host's own input filter in front of the controller's API listeners.

pub mod compile;
pub mod desired;
pub mod exec;
pub mod host;
/// The model is part of the API (`rampart_api::network::model`); the data plane compiles it.
pub use rampart_api::network::model;
pub mod nft;
pub mod plan;
pub mod reach;
pub mod testing;

/// Failures of the data plane side (compiling a node document, running host tools).
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The desired-state document contradicts itself (a port in an unknown subnet, ...): a
    /// controller bug, never applied partially.
    #[error("inconsistent network state: {0}")]
    Inconsistent(String),
    #[error("could not run {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} failed in {netns}: {stderr}")]
    Command {
        program: String,
        netns: String,
        stderr: String,
    },
    #[error("{program} timed out after {seconds} s in {netns}")]
    Timeout {
        program: String,
        netns: String,
        seconds: u64,
    },
    #[error("unexpected output of {program}")]
    Parse {
        program: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("file operation on {path} failed")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl From<NetError> for rampart_common::Error {
    fn from(e: NetError) -> Self {
        rampart_common::Error::internal("applying the network state", e)
    }
}
