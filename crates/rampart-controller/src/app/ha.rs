//! High availability of protected instances (spec 14.1-3): the policy given at launch,
//! admission control, and the recovery of a lost node's protected instances on other nodes.
//!
//! Recovery never runs two copies: a node's agent kills its protected VMs itself once it has
//! had no answer for `ha.fence_after_s` (counted from a report it sent, which the controller
//! recorded no earlier), and boots none again before the controller has answered. The
//! controller restarts them elsewhere only `ha.fence_margin_s` after that, once the storage
//! fence ([`super::ha_fence`]) has cut the node off shared volumes, and only while the node is
//! still silent, checked in the transaction that moves the instance.

use axum::http::StatusCode;
use rampart_api::compute::HaPolicy;
use rampart_audit::record::{Actor, AuditResult, NewRecord, Target};
use rampart_common::Error;
use rampart_common::config::Config;
use rampart_common::time::to_ms;
use rampart_compute::ha::{self as pure, NodeLoad};
use rampart_db::compute as db;
use rampart_db::ha as hadb;
use rampart_db::nodes;
use rampart_net::desired::PortDevice;
use uuid::Uuid;

use super::compute::{records, scheduling};
use crate::state::AppState;

/// The priority of a protected instance, `None` when it is not protected.
pub fn check_policy(policy: Option<HaPolicy>) -> Result<Option<i64>, Error> {
    match policy {
        Some(p) if p.enabled => {
            if p.priority > 100 {
                return Err(Error::field("ha.priority", "must be between 0 and 100"));
            }
            Ok(Some(i64::from(p.priority)))
        }
        _ => Ok(None),
    }
}

fn ha_capacity(message: String) -> Error {
    Error::coded(StatusCode::CONFLICT, "ha_capacity", message)
}

/// Admission control: with the new instance on `target`, the ready nodes must still be able to
/// restart the protected instances of the `ha.failures_to_tolerate` nodes with the most of
/// them; otherwise 409 `ha_capacity` rather than an overcommitted cluster.
pub async fn admit(
    tx: &mut rampart_db::Conn,
    config: &Config,
    target: Uuid,
    memory_mib: u64,
    protected: bool,
) -> Result<(), Error> {
    let mut loads = Vec::new();
    let placed = hadb::placed(tx).await?;
    if !protected && !placed.iter().any(|p| p.protected) {
        return Ok(());
    }
    for (id, _) in db::schedulable_nodes(tx).await? {
        let capacity_mib = nodes::get(tx, id)
            .await?
            .and_then(|n| n.host)
            .map(|h| h.memory_bytes >> 20)
            .unwrap_or(0);
        let mut instances: Vec<(u64, bool)> = placed
            .iter()
            .filter(|p| p.node == id)
            .map(|p| (p.memory_mib, p.protected))
            .collect();
        if id == target {
            instances.push((memory_mib, protected));
        }
        loads.push(NodeLoad {
            node: id,
            capacity_mib,
            instances,
        });
    }
    pure::admit(&loads, config.ha.failures_to_tolerate).map_err(|s| {
        ha_capacity(format!(
            "not enough room to keep protected instances available (ha.failures_to_tolerate = {}): {s}; add a node or launch without \"ha\"",
            config.ha.failures_to_tolerate
        ))
    })
}

async fn audit(state: &AppState, operation: &str, target: Target, details: &[(&str, String)]) {
    let mut rec = NewRecord::new(
        state.now(),
        Actor::system("ha"),
        operation,
        target,
        AuditResult::success(200),
    );
    for (k, v) in details {
        rec = rec.detail(*k, v.as_str());
    }
    // A failed write is in the run log (append_system); recovery goes on.
    let _ = state.audit.append_system(rec).await;
}

fn instance_target(i: &db::InstanceRow) -> Target {
    Target::new("instance", Some(i.id.to_string()), Some(i.project_id.to_string()))
}

async fn event(
    conn: &mut rampart_db::Conn,
    state: &AppState,
    instance: Uuid,
    kind: &str,
    detail: serde_json::Value,
) -> Result<(), Error> {
    db::insert_event(conn, instance, state.now(), kind, &detail.to_string()).await?;
    Ok(())
}

/// The protected instances of `node` that want to run, in recovery order.
async fn protected_on(conn: &mut rampart_db::Conn, node: Uuid) -> Result<Vec<db::InstanceRow>, Error> {
    let rows = db::instances_on_node(conn, node)
        .await?
        .into_iter()
        .filter(|i| i.ha_priority.is_some() && i.status != "deleting" && i.desired_power == "running")
        .map(|i| {
            let p = i.ha_priority.unwrap_or(0).clamp(0, 100) as u8;
            (p, to_ms(i.created_at), i.id, i)
        })
        .collect();
    Ok(pure::recovery_order(rows))
}

/// One pass of the recovery (leader only): returned nodes close their loss, newly silent ones
/// open one (and may be quarantined for flapping), and the protected instances of nodes silent
/// past their fence are fenced off storage and restarted elsewhere.
pub async fn recover(state: &AppState) -> Result<(), Error> {
    let now = state.now();
    let mut conn = state.db.conn().await?;
    for node in hadb::close_returned_losses(&mut conn, now).await? {
        tracing::info!(node = %node, "a lost node reports again; it keeps none of the instances restarted elsewhere");
        audit(
            state,
            "ha.node_returned",
            Target::new("node", Some(node.to_string()), None),
            &[],
        )
        .await;
    }
    let cutoff = now - time::Duration::seconds(state.config.nodes.heartbeat_timeout_s as i64);
    let silent = hadb::silent_nodes_with_protected(&mut conn, cutoff).await?;
    let crashed = hadb::crashed_protected_on_ready_nodes(&mut conn).await?;
    drop(conn);
    for id in crashed {
        if let Err(e) = restart_in_place(state, id).await {
            tracing::warn!(instance = %id, error = %rampart_common::error::ErrorChain(&e), "cannot restart a crashed protected instance; retrying");
        }
    }
    for (node, name, last_heartbeat) in silent {
        if let Err(e) = recover_node(state, node, &name, last_heartbeat, cutoff).await {
            tracing::warn!(node = %node, error = %rampart_common::error::ErrorChain(&e), "recovery of a lost node's instances failed; retrying");
        }
    }
    Ok(())
}

async fn recover_node(
    state: &AppState,
    node: Uuid,
    name: &str,
    last_heartbeat: time::OffsetDateTime,
    cutoff: time::OffsetDateTime,
) -> Result<(), Error> {
    let ha = &state.config.ha;
    let now = state.now();
    let mut conn = state.db.conn().await?;
    let (loss, fenced_at) = match hadb::open_loss(&mut conn, node).await? {
        Some((id, _, fenced)) => (id, fenced),
        None => {
            let id = hadb::insert_loss(&mut conn, node, last_heartbeat, now).await?;
            tracing::warn!(node = %node, name, "node lost with protected instances: waiting for it to fence itself");
            audit(
                state,
                "ha.node_lost",
                Target::new("node", Some(node.to_string()), None),
                &[
                    ("name", name.to_string()),
                    ("last_heartbeat_ms", to_ms(last_heartbeat).to_string()),
                ],
            )
            .await;
            for i in protected_on(&mut conn, node).await? {
                event(&mut conn, state, i.id, "node_lost", serde_json::json!({"node": name})).await?;
                audit(
                    state,
                    "ha.instance_node_lost",
                    instance_target(&i),
                    &[("node", name.to_string())],
                )
                .await;
            }
            let window = now - time::Duration::seconds(ha.flap_window_s as i64);
            if hadb::losses_since(&mut conn, node, window).await? >= u64::from(ha.flap_losses)
                && hadb::quarantine(&mut conn, node, now).await?
            {
                tracing::error!(node = %node, name, losses = ha.flap_losses, window_s = ha.flap_window_s, "node flaps: quarantined (no scheduling) until an operator puts it back");
                audit(
                    state,
                    "node.quarantined",
                    Target::new("node", Some(node.to_string()), None),
                    &[("name", name.to_string()), ("reason", "flapping".to_string())],
                )
                .await;
            }
            (id, None)
        }
    };
    if to_ms(now) < pure::restart_after(to_ms(last_heartbeat), ha.fence_after_s, ha.fence_margin_s) {
        return Ok(());
    }
    if fenced_at.is_none() {
        for fence in super::ha_fence::fences(state) {
            fence
                .fence(node, name)
                .await
                .map_err(|e| Error::Unavailable(format!("storage fence {} of node {name}: {e}", fence.name())))?;
        }
        hadb::set_fenced(&mut conn, loss, now).await?;
        tracing::warn!(node = %node, name, "node fenced: its agent has killed its protected VMs, its storage access is cut");
        audit(
            state,
            "ha.node_fenced",
            Target::new("node", Some(node.to_string()), None),
            &[("name", name.to_string())],
        )
        .await;
        for i in protected_on(&mut conn, node).await? {
            event(&mut conn, state, i.id, "fenced", serde_json::json!({"node": name})).await?;
        }
    }
    let protected = protected_on(&mut conn, node).await?;
    drop(conn);
    for i in protected {
        restart_elsewhere(state, &i, node, name, cutoff).await?;
    }
    Ok(())
}

/// Why an instance cannot leave its node: a volume on a node-local backend.
async fn not_movable(conn: &mut rampart_db::Conn, instance: Uuid) -> Result<Option<String>, Error> {
    for (backend, _) in hadb::instance_volume_backends(conn, instance).await? {
        if !pure::backend_is_shared(&backend) {
            return Ok(Some(format!(
                "a volume on the node-local backend {backend:?} cannot move to another node"
            )));
        }
    }
    Ok(None)
}

async fn restart_elsewhere(
    state: &AppState,
    i: &db::InstanceRow,
    from: Uuid,
    from_name: &str,
    cutoff: time::OffsetDateTime,
) -> Result<(), Error> {
    let now = state.now();
    let mut tx = state.db.begin().await?;
    if !hadb::still_silent(&mut tx, from, cutoff).await? {
        return Ok(());
    }
    if let Some(reason) = not_movable(&mut tx, i.id).await? {
        if hadb::set_not_recoverable(&mut tx, i.id, &reason, now).await? {
            event(
                &mut tx,
                state,
                i.id,
                "not_recoverable",
                serde_json::json!({"reason": reason}),
            )
            .await?;
            rampart_db::Db::commit(tx).await?;
            tracing::warn!(instance = %i.id, reason, "protected instance not recoverable");
            audit(
                state,
                "ha.instance_not_recoverable",
                instance_target(i),
                &[("reason", reason)],
            )
            .await;
        }
        return Ok(());
    }
    let Some(flavor) = db::find_flavor(&mut tx, &i.flavor_id.to_string()).await? else {
        return Ok(());
    };
    let groups = records::placement_groups(&i.security_groups);
    let target =
        match scheduling::schedule(&mut tx, &groups, i.anti_affinity, flavor.memory_mib as u64, Some(from)).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(instance = %i.id, error = %e, "no node to restart a protected instance on yet");
                return Ok(());
            }
        };
    let target_name = nodes::get(&mut tx, target).await?.map(|n| n.name).unwrap_or_default();
    let before = crate::app::network::desired::nodes_of_project(&mut tx, i.project_id).await?;
    if !hadb::move_instance(&mut tx, i.id, from, target, now).await? {
        return Ok(());
    }
    for (port, _) in db::instance_ports(&mut tx, i.id).await? {
        rampart_db::network::bind_port(&mut tx, port, Some((target, &PortDevice::Tap)), now).await?;
    }
    event(
        &mut tx,
        state,
        i.id,
        "restarted",
        serde_json::json!({"node": target_name, "from": from_name}),
    )
    .await?;
    let mut all = crate::app::network::desired::nodes_of_project(&mut tx, i.project_id).await?;
    all.extend(before);
    crate::publish::nodes(&mut tx, &state.config, &all).await?;
    crate::publish::node(&state.config, &mut tx, from).await?;
    crate::publish::node(&state.config, &mut tx, target).await?;
    rampart_db::Db::commit(tx).await?;
    state.notify_node_changes();
    tracing::warn!(instance = %i.id, from = from_name, to = %target_name, "protected instance restarted on another node");
    audit(
        state,
        "ha.instance_restarted",
        instance_target(i),
        &[("from", from_name.to_string()), ("node", target_name)],
    )
    .await;
    Ok(())
}

/// Restarts of one protected instance within [`CRASH_WINDOW_S`] after which a crashed one is
/// left crashed (a guest that dies at every boot is not restarted forever).
const MAX_CRASH_RESTARTS: usize = 3;
const CRASH_WINDOW_S: i64 = 600;

/// A protected instance its ready node reports crashed (a guest crash, or killed by the node's
/// fence in a partition that healed before it moved) boots again there: a new boot sequence in
/// the node's document, in one transaction that checks it is still crashed.
async fn restart_in_place(state: &AppState, id: Uuid) -> Result<(), Error> {
    let now = state.now();
    let mut tx = state.db.begin().await?;
    let Some(i) = db::instance(&mut tx, id).await? else {
        return Ok(());
    };
    let Some(node) = i
        .node_id
        .filter(|_| i.status == "crashed" && i.desired_power == "running")
    else {
        return Ok(());
    };
    let since = now - time::Duration::seconds(CRASH_WINDOW_S);
    let recent = db::events(&mut tx, id, 1000)
        .await?
        .into_iter()
        .filter(|(at, kind, _)| *at >= since && kind == "restarted")
        .count();
    if recent >= MAX_CRASH_RESTARTS {
        return Ok(());
    }
    db::set_desired_power(&mut tx, id, "running", true, Some("creating"), now).await?;
    let node_name = nodes::get(&mut tx, node).await?.map(|n| n.name).unwrap_or_default();
    event(
        &mut tx,
        state,
        id,
        "restarted",
        serde_json::json!({"node": node_name, "reason": "crashed"}),
    )
    .await?;
    crate::publish::node(&state.config, &mut tx, node).await?;
    rampart_db::Db::commit(tx).await?;
    state.notify_node_changes();
    tracing::warn!(instance = %id, node = %node_name, "crashed protected instance restarted on its node");
    audit(
        state,
        "ha.instance_restarted",
        instance_target(&i),
        &[("node", node_name), ("reason", "crashed".to_string())],
    )
    .await;
    Ok(())
}
