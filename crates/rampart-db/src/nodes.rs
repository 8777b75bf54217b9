//! Nodes, their desired-state documents and the join tokens that admit them.
//!
//! A node's desired state is stored rendered (`config`, JSON without the generation). Whoever
//! changes something a node must apply calls [`publish_config`] in the same transaction: the
//! generation moves only when the document really changed, and an agent reading generation N
//! always gets exactly what was committed for N.

use rampart_api::{HostFacts, Node, NodeState};
use rampart_common::time::{from_ms, to_ms};
use sqlx::AnyConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::identity::conflict_on_unique;
use crate::{DbError, Result, uuid_col};

pub struct NewNode<'a> {
    pub id: Uuid,
    pub name: &'a str,
    pub cert_sha256: &'a str,
    pub cert_not_after: OffsetDateTime,
    pub config: &'a str,
}

pub async fn insert_node(conn: &mut AnyConnection, n: NewNode<'_>, now: OffsetDateTime) -> Result<()> {
    sqlx::query(
        "INSERT INTO nodes (id, name, state, cert_sha256, cert_not_after, generation, config, joined_at, state_changed_at) \
         VALUES ($1, $2, 'joining', $3, $4, 1, $5, $6, $6)",
    )
    .bind(n.id.to_string())
    .bind(n.name)
    .bind(n.cert_sha256)
    .bind(to_ms(n.cert_not_after))
    .bind(n.config)
    .bind(to_ms(now))
    .execute(conn)
    .await
    .map_err(|e| conflict_on_unique(e, format!("a node named {:?} already exists; delete it before joining again", n.name)))?;
    Ok(())
}

macro_rules! node_columns {
    () => {
        "id, name, state, cert_not_after, generation, applied_generation, last_heartbeat, agent_version, host, joined_at"
    };
}
type NodeRow = (
    String,
    String,
    String,
    i64,
    i64,
    i64,
    Option<i64>,
    Option<String>,
    Option<String>,
    i64,
);

fn node_from_row(r: NodeRow) -> Result<Node> {
    Ok(Node {
        id: uuid_col(&r.0)?,
        name: r.1,
        state: NodeState::parse(&r.2).ok_or_else(|| DbError::Corrupt(format!("node state {:?}", r.2)))?,
        certificate_expires_at: from_ms(r.3),
        generation: r.4,
        applied_generation: r.5,
        last_heartbeat: r.6.map(from_ms),
        agent_version: r.7,
        host: r.8.as_deref().and_then(|h| serde_json::from_str::<HostFacts>(h).ok()),
        joined_at: from_ms(r.9),
    })
}

/// Nodes ordered by name, after the name `after`.
pub async fn list(conn: &mut AnyConnection, after: Option<&str>, limit: u32) -> Result<Vec<Node>> {
    let rows: Vec<NodeRow> = sqlx::query_as(concat!(
        "SELECT ",
        node_columns!(),
        " FROM nodes WHERE name > $1 ORDER BY name LIMIT $2"
    ))
    .bind(after.unwrap_or(""))
    .bind(limit as i64)
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(node_from_row).collect()
}

pub async fn get(conn: &mut AnyConnection, id: Uuid) -> Result<Option<Node>> {
    let row: Option<NodeRow> = sqlx::query_as(concat!("SELECT ", node_columns!(), " FROM nodes WHERE id = $1"))
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?;
    row.map(node_from_row).transpose()
}

/// The node a client certificate (by SHA-256 of its DER) belongs to.
pub async fn id_by_certificate(conn: &mut AnyConnection, cert_sha256: &str) -> Result<Option<Uuid>> {
    let id: Option<String> = sqlx::query_scalar("SELECT id FROM nodes WHERE cert_sha256 = $1")
        .bind(cert_sha256)
        .fetch_optional(conn)
        .await?;
    id.as_deref().map(uuid_col).transpose()
}

/// Current generation and stored document of a node.
pub async fn config(conn: &mut AnyConnection, id: Uuid) -> Result<Option<(i64, String)>> {
    Ok(sqlx::query_as("SELECT generation, config FROM nodes WHERE id = $1")
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?)
}

pub async fn generation(conn: &mut AnyConnection, id: Uuid) -> Result<Option<i64>> {
    Ok(sqlx::query_scalar("SELECT generation FROM nodes WHERE id = $1")
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?)
}

/// Stores a newly rendered document; bumps the generation only if it differs. Returns the
/// generation now current.
pub async fn publish_config(conn: &mut AnyConnection, id: Uuid, config: &str) -> Result<i64> {
    sqlx::query("UPDATE nodes SET config = $1, generation = generation + 1 WHERE id = $2 AND config <> $1")
        .bind(config)
        .bind(id.to_string())
        .execute(&mut *conn)
        .await?;
    generation(conn, id)
        .await?
        .ok_or_else(|| DbError::Corrupt(format!("node {id} vanished")))
}

/// Ids and names of all nodes.
pub async fn all_ids(conn: &mut AnyConnection) -> Result<Vec<(Uuid, String)>> {
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT id, name FROM nodes ORDER BY name")
        .fetch_all(conn)
        .await?;
    rows.into_iter().map(|(id, name)| Ok((uuid_col(&id)?, name))).collect()
}

pub struct Status<'a> {
    pub applied_generation: i64,
    pub agent_version: &'a str,
    pub host_json: &'a str,
    pub errors_json: &'a str,
}

/// Records a heartbeat. A joining or unreachable node becomes ready; a quarantined one stays.
/// Returns the node's generation and the state it had before, or `None` for an unknown node.
pub async fn record_status(
    conn: &mut AnyConnection,
    id: Uuid,
    s: Status<'_>,
    now: OffsetDateTime,
) -> Result<Option<(i64, NodeState)>> {
    let before: Option<(String, i64)> = sqlx::query_as("SELECT state, generation FROM nodes WHERE id = $1")
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    let Some((state, generation)) = before else {
        return Ok(None);
    };
    let state = NodeState::parse(&state).ok_or_else(|| DbError::Corrupt(format!("node state {state:?}")))?;
    let now = to_ms(now);
    sqlx::query(
        "UPDATE nodes SET last_heartbeat = $1, applied_generation = $2, agent_version = $3, host = $4, errors = $5, \
         state = CASE WHEN state = 'quarantined' THEN state ELSE 'ready' END, \
         state_changed_at = CASE WHEN state IN ('joining', 'unreachable') THEN $1 ELSE state_changed_at END \
         WHERE id = $6",
    )
    .bind(now)
    .bind(s.applied_generation)
    .bind(s.agent_version)
    .bind(s.host_json)
    .bind(s.errors_json)
    .bind(id.to_string())
    .execute(conn)
    .await?;
    Ok(Some((generation, state)))
}

/// Marks ready or joining nodes whose last sign of life is older than `cutoff` unreachable;
/// returns those that changed.
pub async fn mark_unreachable(
    conn: &mut AnyConnection,
    cutoff: OffsetDateTime,
    now: OffsetDateTime,
) -> Result<Vec<(Uuid, String)>> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "UPDATE nodes SET state = 'unreachable', state_changed_at = $1 \
         WHERE state IN ('ready', 'joining') AND COALESCE(last_heartbeat, joined_at) < $2 RETURNING id, name",
    )
    .bind(to_ms(now))
    .bind(to_ms(cutoff))
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(|(id, name)| Ok((uuid_col(&id)?, name))).collect()
}

pub async fn counts(conn: &mut AnyConnection) -> Result<(u64, u64)> {
    let (ready, total): (i64, i64) =
        sqlx::query_as("SELECT COALESCE(SUM(CASE WHEN state = 'ready' THEN 1 ELSE 0 END), 0), COUNT(*) FROM nodes")
            .fetch_one(conn)
            .await?;
    Ok((ready as u64, total as u64))
}

pub async fn delete(conn: &mut AnyConnection, id: Uuid) -> Result<bool> {
    let r = sqlx::query("DELETE FROM nodes WHERE id = $1")
        .bind(id.to_string())
        .execute(conn)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// A join token row; the secret is stored only as its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinTokenRow {
    pub id: Uuid,
    pub secret_hash: String,
    pub node_name: Option<String>,
    pub expires_at: OffsetDateTime,
    pub used_at: Option<OffsetDateTime>,
}

pub async fn insert_join_token(
    conn: &mut AnyConnection,
    id: Uuid,
    secret_hash: &str,
    node_name: Option<&str>,
    created_by: Option<Uuid>,
    expires_at: OffsetDateTime,
    now: OffsetDateTime,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO join_tokens (id, secret_hash, node_name, created_by, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id.to_string())
    .bind(secret_hash)
    .bind(node_name)
    .bind(created_by.map(|u| u.to_string()))
    .bind(to_ms(now))
    .bind(to_ms(expires_at))
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct JoinTokenDbRow {
    id: String,
    secret_hash: String,
    node_name: Option<String>,
    expires_at: i64,
    used_at: Option<i64>,
}

pub async fn join_token(conn: &mut AnyConnection, id: Uuid) -> Result<Option<JoinTokenRow>> {
    let row: Option<JoinTokenDbRow> =
        sqlx::query_as("SELECT id, secret_hash, node_name, expires_at, used_at FROM join_tokens WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(conn)
            .await?;
    row.map(|r| {
        Ok(JoinTokenRow {
            id: uuid_col(&r.id)?,
            secret_hash: r.secret_hash,
            node_name: r.node_name,
            expires_at: from_ms(r.expires_at),
            used_at: r.used_at.map(from_ms),
        })
    })
    .transpose()
}

/// Marks a join token used; false when someone used it first.
pub async fn consume_join_token(conn: &mut AnyConnection, id: Uuid, node: Uuid, now: OffsetDateTime) -> Result<bool> {
    let r = sqlx::query("UPDATE join_tokens SET used_at = $1, used_by_node = $2 WHERE id = $3 AND used_at IS NULL")
        .bind(to_ms(now))
        .bind(node.to_string())
        .bind(id.to_string())
        .execute(conn)
        .await?;
    Ok(r.rows_affected() == 1)
}
