//! Pure renderers of desired state.

use rampart_api::agent::NodeConfig;
use rampart_common::config::NodesConfig;
use uuid::Uuid;

/// The desired-state document of a node, as stored (generation 0: the database row carries
/// the real one and it is filled in when served).
pub fn node_config(node_id: Uuid, node_name: &str, nodes: &NodesConfig) -> NodeConfig {
    NodeConfig {
        node_id,
        node_name: node_name.to_string(),
        generation: 0,
        heartbeat_interval_s: nodes.heartbeat_interval_s,
        fence_after_s: None,
        compute: Default::default(),
        network: Default::default(),
        storage: Default::default(),
    }
}

pub fn node_config_json(node_id: Uuid, node_name: &str, nodes: &NodesConfig) -> String {
    serde_json::to_string(&node_config(node_id, node_name, nodes)).expect("node config serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_document_golden() {
        let id = Uuid::parse_str("6f1c1c8e-3f44-4d7a-9a53-2d0f0b5c9a11").unwrap();
        let json = node_config_json(id, "node-1", &NodesConfig::default());
        assert_eq!(
            json,
            r#"{"node_id":"6f1c1c8e-3f44-4d7a-9a53-2d0f0b5c9a11","node_name":"node-1","generation":0,"heartbeat_interval_s":5}"#
        );
    }
}
