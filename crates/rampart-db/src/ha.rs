//! High availability (spec 14.1-3): what placement reserves for protected instances, nodes
//! lost and recovered, and the moves of protected instances to another node.

use rampart_common::time::{from_ms, to_ms};
use sqlx::AnyConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{Result, uuid_col};

/// A placed instance as admission control sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub node: Uuid,
    pub memory_mib: u64,
    pub protected: bool,
}

/// Every placed instance not being deleted, with its flavor's memory and whether it is
/// protected.
pub async fn placed(conn: &mut AnyConnection) -> Result<Vec<Placed>> {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT i.node_id, f.memory_mib, \
         CASE WHEN EXISTS (SELECT 1 FROM instance_ha h WHERE h.instance_id = i.id) THEN 1 ELSE 0 END \
         FROM instances i JOIN flavors f ON f.id = i.flavor_id \
         WHERE i.node_id IS NOT NULL AND i.status <> 'deleting'",
    )
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|(n, m, p)| {
            Ok(Placed {
                node: uuid_col(&n)?,
                memory_mib: m.max(0) as u64,
                protected: p != 0,
            })
        })
        .collect()
}

/// A node that has protected instances wanting to run and no heartbeat since `cutoff`:
/// `(id, name, last sign of life)`.
pub async fn silent_nodes_with_protected(
    conn: &mut AnyConnection,
    cutoff: OffsetDateTime,
) -> Result<Vec<(Uuid, String, OffsetDateTime)>> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT n.id, n.name, COALESCE(n.last_heartbeat, n.joined_at) FROM nodes n \
         WHERE COALESCE(n.last_heartbeat, n.joined_at) < $1 AND EXISTS (\
           SELECT 1 FROM instances i JOIN instance_ha h ON h.instance_id = i.id \
           WHERE i.node_id = n.id AND i.status <> 'deleting' AND i.desired_power = 'running') \
         ORDER BY n.name",
    )
    .bind(to_ms(cutoff))
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|(id, name, at)| Ok((uuid_col(&id)?, name, from_ms(at))))
        .collect()
}

/// The node's current loss (not yet over): `(id, last heartbeat, fenced_at)`.
pub async fn open_loss(
    conn: &mut AnyConnection,
    node: Uuid,
) -> Result<Option<(Uuid, OffsetDateTime, Option<OffsetDateTime>)>> {
    let row: Option<(String, i64, Option<i64>)> = sqlx::query_as(
        "SELECT id, last_heartbeat, fenced_at FROM node_losses \
         WHERE node_id = $1 AND returned_at IS NULL ORDER BY detected_at DESC LIMIT 1",
    )
    .bind(node.to_string())
    .fetch_optional(conn)
    .await?;
    row.map(|(id, hb, f)| Ok((uuid_col(&id)?, from_ms(hb), f.map(from_ms))))
        .transpose()
}

pub async fn insert_loss(
    conn: &mut AnyConnection,
    node: Uuid,
    last_heartbeat: OffsetDateTime,
    now: OffsetDateTime,
) -> Result<Uuid> {
    let id = Uuid::new_v4();
    sqlx::query("INSERT INTO node_losses (id, node_id, last_heartbeat, detected_at) VALUES ($1, $2, $3, $4)")
        .bind(id.to_string())
        .bind(node.to_string())
        .bind(to_ms(last_heartbeat))
        .bind(to_ms(now))
        .execute(conn)
        .await?;
    Ok(id)
}

pub async fn set_fenced(conn: &mut AnyConnection, loss: Uuid, now: OffsetDateTime) -> Result<()> {
    sqlx::query("UPDATE node_losses SET fenced_at = $1 WHERE id = $2 AND fenced_at IS NULL")
        .bind(to_ms(now))
        .bind(loss.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

/// Ends the open losses of nodes that reported since they were detected; returns the nodes.
pub async fn close_returned_losses(conn: &mut AnyConnection, now: OffsetDateTime) -> Result<Vec<Uuid>> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "UPDATE node_losses SET returned_at = $1 WHERE returned_at IS NULL AND EXISTS (\
           SELECT 1 FROM nodes n WHERE n.id = node_losses.node_id AND n.last_heartbeat > node_losses.last_heartbeat) \
         RETURNING node_id",
    )
    .bind(to_ms(now))
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(|(n,)| uuid_col(&n)).collect()
}

/// How many losses of `node` were detected since `since` (flapping).
pub async fn losses_since(conn: &mut AnyConnection, node: Uuid, since: OffsetDateTime) -> Result<u64> {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM node_losses WHERE node_id = $1 AND detected_at >= $2")
        .bind(node.to_string())
        .bind(to_ms(since))
        .fetch_one(conn)
        .await?;
    Ok(n.max(0) as u64)
}

/// Keeps a flapping node out of scheduling; true when it changed.
pub async fn quarantine(conn: &mut AnyConnection, node: Uuid, now: OffsetDateTime) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE nodes SET state = 'quarantined', state_changed_at = $1 WHERE id = $2 AND state <> 'quarantined'",
    )
    .bind(to_ms(now))
    .bind(node.to_string())
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Whether the node is still silent since `cutoff`, checked in the move's transaction (a node
/// that reported meanwhile keeps its instances).
pub async fn still_silent(conn: &mut AnyConnection, node: Uuid, cutoff: OffsetDateTime) -> Result<bool> {
    let row: Option<(i64,)> = sqlx::query_as("SELECT COALESCE(last_heartbeat, joined_at) FROM nodes WHERE id = $1")
        .bind(node.to_string())
        .fetch_optional(conn)
        .await?;
    Ok(row.is_some_and(|(at,)| at < to_ms(cutoff)))
}

/// Records why a protected instance cannot move; true the first time (the caller writes the
/// event once).
pub async fn set_not_recoverable(
    conn: &mut AnyConnection,
    instance: Uuid,
    reason: &str,
    now: OffsetDateTime,
) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE instance_ha SET not_recoverable = $1, updated_at = $2 WHERE instance_id = $3 AND not_recoverable IS NULL",
    )
    .bind(reason)
    .bind(to_ms(now))
    .bind(instance.to_string())
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// `(backend, node)` of every volume attached to the instance.
pub async fn instance_volume_backends(
    conn: &mut AnyConnection,
    instance: Uuid,
) -> Result<Vec<(String, Option<String>)>> {
    Ok(sqlx::query_as(
        "SELECT v.backend, v.node_id FROM volume_attachments a JOIN volumes v ON v.id = a.volume_id WHERE a.instance_id = $1",
    )
    .bind(instance.to_string())
    .fetch_all(conn)
    .await?)
}

/// Places a protected instance on `to` for a new boot there (same ports, hence same IPs and
/// MACs, same groups); only while it is still on `from`. True when it moved.
pub async fn move_instance(
    conn: &mut AnyConnection,
    instance: Uuid,
    from: Uuid,
    to: Uuid,
    now: OffsetDateTime,
) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE instances SET node_id = $1, boot_seq = boot_seq + 1, status = 'creating', failure_code = NULL, \
         failure_message = NULL, vm_uid = NULL, updated_at = $2 WHERE id = $3 AND node_id = $4 AND status <> 'deleting'",
    )
    .bind(to.to_string())
    .bind(to_ms(now))
    .bind(instance.to_string())
    .bind(from.to_string())
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Protected instances wanting to run that their (ready) node reports crashed, e.g. killed by
/// the node's own fence during a partition that healed before they were moved.
pub async fn crashed_protected_on_ready_nodes(conn: &mut AnyConnection) -> Result<Vec<Uuid>> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT i.id FROM instances i JOIN instance_ha h ON h.instance_id = i.id JOIN nodes n ON n.id = i.node_id \
         WHERE i.status = 'crashed' AND i.desired_power = 'running' AND n.state = 'ready' ORDER BY h.priority DESC, i.created_at",
    )
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(|(id,)| uuid_col(&id)).collect()
}
