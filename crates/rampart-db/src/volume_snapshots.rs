//! Volume snapshots (issue 15): one row per snapshot, kept after `deleted` with its verified
//! wipe report (12.3.4-1). A snapshot lives on its volume's node and opens with its volume's
//! passphrase, so it carries no key of its own. Statuses are written as the domain names them.

use rampart_common::time::{from_ms, to_ms};
use sqlx::AnyConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::identity::conflict_on_unique;
use crate::{DbError, Result, uuid_col};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRow {
    pub id: Uuid,
    pub volume_id: Uuid,
    pub project_id: Uuid,
    pub name: String,
    /// The volume's size when the snapshot was taken: a volume made from it is at least this.
    pub size_gib: i64,
    pub status: String,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub node_id: Option<Uuid>,
    pub requested_by: Option<String>,
    pub wipe_report: Option<String>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

#[derive(sqlx::FromRow)]
struct SnapshotDb {
    id: String,
    volume_id: String,
    project_id: String,
    name: String,
    size_gib: i64,
    status: String,
    error_code: Option<String>,
    error_message: Option<String>,
    node_id: Option<String>,
    requested_by: Option<String>,
    wipe_report: Option<String>,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<SnapshotDb> for SnapshotRow {
    type Error = DbError;
    fn try_from(r: SnapshotDb) -> Result<SnapshotRow> {
        Ok(SnapshotRow {
            id: uuid_col(&r.id)?,
            volume_id: uuid_col(&r.volume_id)?,
            project_id: uuid_col(&r.project_id)?,
            name: r.name,
            size_gib: r.size_gib,
            status: r.status,
            error_code: r.error_code,
            error_message: r.error_message,
            node_id: r.node_id.as_deref().map(uuid_col).transpose()?,
            requested_by: r.requested_by,
            wipe_report: r.wipe_report,
            created_at: from_ms(r.created_at),
            updated_at: from_ms(r.updated_at),
        })
    }
}

const COLS: &str = "id, volume_id, project_id, name, size_gib, status, error_code, error_message, node_id, \
    requested_by, wipe_report, created_at, updated_at";

pub async fn insert(conn: &mut AnyConnection, s: &SnapshotRow) -> Result<()> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO volume_snapshots ({COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
    )))
    .bind(s.id.to_string())
    .bind(s.volume_id.to_string())
    .bind(s.project_id.to_string())
    .bind(&s.name)
    .bind(s.size_gib)
    .bind(&s.status)
    .bind(s.error_code.as_deref())
    .bind(s.error_message.as_deref())
    .bind(s.node_id.map(|x| x.to_string()))
    .bind(s.requested_by.as_deref())
    .bind(s.wipe_report.as_deref())
    .bind(to_ms(s.created_at))
    .bind(to_ms(s.updated_at))
    .execute(conn)
    .await
    .map_err(|e| {
        conflict_on_unique(
            e,
            format!("a snapshot named {:?} already exists in this project", s.name),
        )
    })?;
    Ok(())
}

/// A snapshot of `project` by id (deleted ones too: the wipe report stays readable) or by the
/// name of one not deleted.
pub async fn find(conn: &mut AnyConnection, project: Uuid, key: &str) -> Result<Option<SnapshotRow>> {
    let row: Option<SnapshotDb> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLS} FROM volume_snapshots WHERE project_id = $1 AND (id = $2 OR (name = $2 AND status <> 'deleted'))"
    )))
    .bind(project.to_string())
    .bind(key)
    .fetch_optional(conn)
    .await?;
    row.map(SnapshotRow::try_from).transpose()
}

pub async fn by_id(conn: &mut AnyConnection, id: Uuid) -> Result<Option<SnapshotRow>> {
    let row: Option<SnapshotDb> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLS} FROM volume_snapshots WHERE id = $1"
    )))
    .bind(id.to_string())
    .fetch_optional(conn)
    .await?;
    row.map(SnapshotRow::try_from).transpose()
}

/// The snapshots of `volume` not deleted, by name after `after`.
pub async fn of_volume(
    conn: &mut AnyConnection,
    volume: Uuid,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<SnapshotRow>> {
    let rows: Vec<SnapshotDb> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLS} FROM volume_snapshots WHERE volume_id = $1 AND status <> 'deleted' AND name > $2 \
         ORDER BY name LIMIT $3"
    )))
    .bind(volume.to_string())
    .bind(after.unwrap_or(""))
    .bind(i64::from(limit))
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(SnapshotRow::try_from).collect()
}

/// The snapshots placed on `node` that still hold data.
pub async fn on_node(conn: &mut AnyConnection, node: Uuid) -> Result<Vec<SnapshotRow>> {
    let rows: Vec<SnapshotDb> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLS} FROM volume_snapshots WHERE node_id = $1 AND status <> 'deleted' ORDER BY id"
    )))
    .bind(node.to_string())
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(SnapshotRow::try_from).collect()
}

/// How many snapshots of `volume` still hold data (a volume with any cannot be deleted).
pub async fn live_of_volume(conn: &mut AnyConnection, volume: Uuid) -> Result<u64> {
    let n: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM volume_snapshots WHERE volume_id = $1 AND status <> 'deleted'")
            .bind(volume.to_string())
            .fetch_one(conn)
            .await?;
    Ok(n.max(0) as u64)
}

/// How many snapshots of `volume` are being made (the volume must not be opened meanwhile).
pub async fn creating_of_volume(conn: &mut AnyConnection, volume: Uuid) -> Result<u64> {
    let n: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM volume_snapshots WHERE volume_id = $1 AND status = 'creating'")
            .bind(volume.to_string())
            .fetch_one(conn)
            .await?;
    Ok(n.max(0) as u64)
}

/// Snapshots a project holds (every status but `deleted`).
pub async fn usage(conn: &mut AnyConnection, project: Uuid) -> Result<u64> {
    let n: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM volume_snapshots WHERE project_id = $1 AND status <> 'deleted'")
            .bind(project.to_string())
            .fetch_one(conn)
            .await?;
    Ok(n.max(0) as u64)
}

/// Moves a snapshot to `status` (with an error code and message for `error`, cleared otherwise).
pub async fn set_status(
    conn: &mut AnyConnection,
    id: Uuid,
    status: &str,
    error: Option<(&str, &str)>,
    now: OffsetDateTime,
) -> Result<()> {
    sqlx::query(
        "UPDATE volume_snapshots SET status = $1, error_code = $2, error_message = $3, updated_at = $4 WHERE id = $5",
    )
    .bind(status)
    .bind(error.map(|e| e.0))
    .bind(error.map(|e| e.1))
    .bind(to_ms(now))
    .bind(id.to_string())
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn set_requested_by(conn: &mut AnyConnection, id: Uuid, who: &str) -> Result<()> {
    sqlx::query("UPDATE volume_snapshots SET requested_by = $1 WHERE id = $2")
        .bind(who)
        .bind(id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

/// Stores the verified wipe report and marks the snapshot `deleted`.
pub async fn finish_wipe(conn: &mut AnyConnection, id: Uuid, report: &str, now: OffsetDateTime) -> Result<()> {
    sqlx::query(
        "UPDATE volume_snapshots SET status = 'deleted', wipe_report = $1, error_code = NULL, error_message = NULL, \
         updated_at = $2 WHERE id = $3",
    )
    .bind(report)
    .bind(to_ms(now))
    .bind(id.to_string())
    .execute(conn)
    .await?;
    Ok(())
}

/// Volumes and snapshots of `project` that still hold data (a project with any cannot go).
pub async fn project_holds_data(conn: &mut AnyConnection, project: Uuid) -> Result<(u64, u64)> {
    let (v, s): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM volumes WHERE project_id = $1 AND status <> 'deleted'), \
         (SELECT COUNT(*) FROM volume_snapshots WHERE project_id = $1 AND status <> 'deleted')",
    )
    .bind(project.to_string())
    .fetch_one(conn)
    .await?;
    Ok((v.max(0) as u64, s.max(0) as u64))
}
