//! Publishing desired state: a change that alters what a node must apply re-renders that
//! node's whole document in the same transaction (the generation moves only when the
//! document changed); the caller commits, then wakes the long polls with
//! [`crate::state::AppState::notify_node_changes`]. The sections come from the capabilities
//! ([`crate::app::compute::desired::node_compute`], [`crate::app::network::desired::node_network`]); the frame from the
//! pure [`crate::render`].

use std::collections::BTreeSet;

use rampart_common::config::Config;
use rampart_db::{Conn, nodes};
use uuid::Uuid;

/// The whole document of a node with every section read from the database, as
/// [`rampart_db::nodes::publish_config`] stores it.
pub async fn node_document_json(
    conn: &mut Conn,
    config: &Config,
    node_id: Uuid,
    node_name: &str,
) -> rampart_db::Result<String> {
    let mut doc = crate::render::node_config(node_id, node_name, &config.nodes);
    doc.compute = crate::app::compute::desired::node_compute(conn, node_id).await?;
    doc.network = crate::app::network::desired::node_network(conn, config, node_id).await?;
    doc.storage = crate::app::volumes::desired::node_storage(conn, node_id).await?;
    // Only a node running protected instances fences itself (and documents of the others stay
    // as they were).
    if doc.compute.instances.iter().any(|i| i.ha) {
        doc.fence_after_s = Some(config.ha.fence_after_s);
    }
    Ok(serde_json::to_string(&doc).expect("node config serialises"))
}

/// Re-renders `node`'s document in the caller's transaction.
pub async fn node(config: &Config, tx: &mut Conn, node: Uuid) -> rampart_db::Result<()> {
    let Some(n) = nodes::get(tx, node).await? else {
        return Ok(());
    };
    let doc = node_document_json(tx, config, node, &n.name).await?;
    nodes::publish_config(tx, node, &doc).await?;
    Ok(())
}

/// Re-renders the documents of `nodes` in the caller's transaction; true when a generation
/// moved.
pub async fn nodes(
    conn: &mut Conn,
    config: &Config,
    nodes_to_do: &BTreeSet<(Uuid, String)>,
) -> rampart_db::Result<bool> {
    let mut changed = false;
    for (id, name) in nodes_to_do {
        let before = nodes::generation(conn, *id).await?;
        let doc = node_document_json(conn, config, *id, name).await?;
        let after = nodes::publish_config(conn, *id, &doc).await?;
        changed |= before != Some(after);
    }
    Ok(changed)
}

/// Re-renders every node's document (after an upgrade or a configuration change), one
/// transaction per node; true when a generation moved (the caller wakes the long polls).
pub async fn all(db: &rampart_db::Db, config: &Config) -> rampart_db::Result<bool> {
    let all = {
        let mut conn = db.conn().await?;
        nodes::all_ids(&mut conn).await?
    };
    let mut changed = false;
    for (id, name) in all {
        let mut tx = db.begin().await?;
        let before = nodes::generation(&mut tx, id).await?;
        let doc = node_document_json(&mut tx, config, id, &name).await?;
        let after = nodes::publish_config(&mut tx, id, &doc).await?;
        rampart_db::Db::commit(tx).await?;
        changed |= before != Some(after);
    }
    Ok(changed)
}
