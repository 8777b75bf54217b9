//! Volumes (issue 15): volume types, volumes (with their wrapped data key and, once deleted,
//! their wipe report), attachments, per-volume grants, the pools nodes report, and each
//! project's leave for unencrypted types. Statuses are written as the domain names them
//! (`rampart_storage::VolumeStatus::as_str`); this module only stores them.

use rampart_common::time::{from_ms, to_ms};
use sqlx::AnyConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::identity::conflict_on_unique;
use crate::{DbError, Result, uuid_col};

fn opt_uuid(s: Option<String>) -> Result<Option<Uuid>> {
    s.as_deref().map(uuid_col).transpose()
}

// ---- volume types ----

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeTypeRow {
    pub name: String,
    pub encrypted: bool,
    pub multi_attach: bool,
    /// The QoS as JSON (`rampart_api::storage::Qos`).
    pub qos: String,
}

type TypeTuple = (String, i64, i64, String);

fn type_row(r: TypeTuple) -> VolumeTypeRow {
    VolumeTypeRow {
        name: r.0,
        encrypted: r.1 != 0,
        multi_attach: r.2 != 0,
        qos: r.3,
    }
}

pub async fn list_types(conn: &mut AnyConnection) -> Result<Vec<VolumeTypeRow>> {
    let rows: Vec<TypeTuple> =
        sqlx::query_as("SELECT name, encrypted, multi_attach, qos FROM volume_types ORDER BY name")
            .fetch_all(conn)
            .await?;
    Ok(rows.into_iter().map(type_row).collect())
}

pub async fn get_type(conn: &mut AnyConnection, name: &str) -> Result<Option<VolumeTypeRow>> {
    let row: Option<TypeTuple> =
        sqlx::query_as("SELECT name, encrypted, multi_attach, qos FROM volume_types WHERE name = $1")
            .bind(name)
            .fetch_optional(conn)
            .await?;
    Ok(row.map(type_row))
}

pub async fn insert_type(conn: &mut AnyConnection, t: &VolumeTypeRow, now: OffsetDateTime) -> Result<()> {
    sqlx::query(
        "INSERT INTO volume_types (name, encrypted, multi_attach, qos, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&t.name)
    .bind(i64::from(t.encrypted))
    .bind(i64::from(t.multi_attach))
    .bind(&t.qos)
    .bind(to_ms(now))
    .execute(conn)
    .await
    .map_err(|e| conflict_on_unique(e, format!("a volume type named {:?} already exists", t.name)))?;
    Ok(())
}

/// Deletes a type no volume still holding data uses; false when there is no such type.
pub async fn delete_type(conn: &mut AnyConnection, name: &str) -> Result<bool> {
    let used: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM volumes WHERE volume_type = $1 AND status <> 'deleted'")
        .bind(name)
        .fetch_one(&mut *conn)
        .await?;
    if used > 0 {
        return Err(DbError::Conflict(format!(
            "{used} volumes of type {name:?} still exist; delete them first"
        )));
    }
    let r = sqlx::query("DELETE FROM volume_types WHERE name = $1")
        .bind(name)
        .execute(conn)
        .await?;
    Ok(r.rows_affected() == 1)
}

// ---- volumes ----

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeRow {
    pub id: Uuid,
    pub project_id: Uuid,
    pub name: String,
    pub size_gib: i64,
    pub status: String,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub volume_type: String,
    pub encrypted: bool,
    pub multi_attach: bool,
    pub qos: String,
    pub backend: String,
    pub node_id: Option<Uuid>,
    pub source_image: Option<Uuid>,
    pub source_snapshot: Option<Uuid>,
    pub kms_key_id: Option<Uuid>,
    /// The data key, encrypted under `kms_key_id` (never the plaintext).
    pub wrapped_key: Option<String>,
    pub requested_by: Option<String>,
    /// The verified wipe report (JSON), once the volume is `deleted`.
    pub wipe_report: Option<String>,
    pub progress: Option<i64>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

#[derive(sqlx::FromRow)]
struct VolumeDb {
    id: String,
    project_id: String,
    name: String,
    size_gib: i64,
    status: String,
    error_code: Option<String>,
    error_message: Option<String>,
    volume_type: String,
    encrypted: i64,
    multi_attach: i64,
    qos: String,
    backend: String,
    node_id: Option<String>,
    source_image: Option<String>,
    source_snapshot: Option<String>,
    kms_key_id: Option<String>,
    wrapped_key: Option<String>,
    requested_by: Option<String>,
    wipe_report: Option<String>,
    progress: Option<i64>,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<VolumeDb> for VolumeRow {
    type Error = DbError;
    fn try_from(r: VolumeDb) -> Result<VolumeRow> {
        Ok(VolumeRow {
            id: uuid_col(&r.id)?,
            project_id: uuid_col(&r.project_id)?,
            name: r.name,
            size_gib: r.size_gib,
            status: r.status,
            error_code: r.error_code,
            error_message: r.error_message,
            volume_type: r.volume_type,
            encrypted: r.encrypted != 0,
            multi_attach: r.multi_attach != 0,
            qos: r.qos,
            backend: r.backend,
            node_id: opt_uuid(r.node_id)?,
            source_image: opt_uuid(r.source_image)?,
            source_snapshot: opt_uuid(r.source_snapshot)?,
            kms_key_id: opt_uuid(r.kms_key_id)?,
            wrapped_key: r.wrapped_key,
            requested_by: r.requested_by,
            wipe_report: r.wipe_report,
            progress: r.progress,
            created_at: from_ms(r.created_at),
            updated_at: from_ms(r.updated_at),
        })
    }
}

const COLS: &str = "id, project_id, name, size_gib, status, error_code, error_message, volume_type, encrypted, \
    multi_attach, qos, backend, node_id, source_image, source_snapshot, kms_key_id, wrapped_key, requested_by, \
    wipe_report, progress, created_at, updated_at";

pub async fn insert_volume(conn: &mut AnyConnection, v: &VolumeRow) -> Result<()> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO volumes ({COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
         $17, $18, $19, $20, $21, $22)"
    )))
    .bind(v.id.to_string())
    .bind(v.project_id.to_string())
    .bind(&v.name)
    .bind(v.size_gib)
    .bind(&v.status)
    .bind(v.error_code.as_deref())
    .bind(v.error_message.as_deref())
    .bind(&v.volume_type)
    .bind(i64::from(v.encrypted))
    .bind(i64::from(v.multi_attach))
    .bind(&v.qos)
    .bind(&v.backend)
    .bind(v.node_id.map(|x| x.to_string()))
    .bind(v.source_image.map(|x| x.to_string()))
    .bind(v.source_snapshot.map(|x| x.to_string()))
    .bind(v.kms_key_id.map(|x| x.to_string()))
    .bind(v.wrapped_key.as_deref())
    .bind(v.requested_by.as_deref())
    .bind(v.wipe_report.as_deref())
    .bind(v.progress)
    .bind(to_ms(v.created_at))
    .bind(to_ms(v.updated_at))
    .execute(conn)
    .await
    .map_err(|e| conflict_on_unique(e, format!("a volume named {:?} already exists in this project", v.name)))?;
    Ok(())
}

/// A volume of `project` by id (deleted ones too: their wipe report stays readable) or by the
/// name of a volume not deleted.
pub async fn find_volume(conn: &mut AnyConnection, project: Uuid, key: &str) -> Result<Option<VolumeRow>> {
    let row: Option<VolumeDb> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLS} FROM volumes WHERE project_id = $1 AND (id = $2 OR (name = $2 AND status <> 'deleted'))"
    )))
    .bind(project.to_string())
    .bind(key)
    .fetch_optional(conn)
    .await?;
    row.map(VolumeRow::try_from).transpose()
}

pub async fn volume_by_id(conn: &mut AnyConnection, id: Uuid) -> Result<Option<VolumeRow>> {
    let row: Option<VolumeDb> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {COLS} FROM volumes WHERE id = $1")))
            .bind(id.to_string())
            .fetch_optional(conn)
            .await?;
    row.map(VolumeRow::try_from).transpose()
}

/// The project's volumes not deleted, by name after `after`.
pub async fn list_volumes(
    conn: &mut AnyConnection,
    project: Uuid,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<VolumeRow>> {
    let rows: Vec<VolumeDb> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLS} FROM volumes WHERE project_id = $1 AND status <> 'deleted' AND name > $2 ORDER BY name LIMIT $3"
    )))
    .bind(project.to_string())
    .bind(after.unwrap_or(""))
    .bind(i64::from(limit))
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(VolumeRow::try_from).collect()
}

/// The volumes placed on `node` that still hold data.
pub async fn volumes_on_node(conn: &mut AnyConnection, node: Uuid) -> Result<Vec<VolumeRow>> {
    let rows: Vec<VolumeDb> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLS} FROM volumes WHERE node_id = $1 AND status <> 'deleted' ORDER BY id"
    )))
    .bind(node.to_string())
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(VolumeRow::try_from).collect()
}

/// `(volumes, GiB)` a project holds: every status but `deleted` (a volume being wiped still
/// occupies its space).
pub async fn usage(conn: &mut AnyConnection, project: Uuid) -> Result<(u64, u64)> {
    // SUM is NUMERIC on PostgreSQL, which the Any driver cannot read: cast it.
    let (n, gib): (i64, Option<i64>) = sqlx::query_as(
        "SELECT COUNT(*), CAST(COALESCE(SUM(size_gib), 0) AS BIGINT) FROM volumes WHERE project_id = $1 AND status <> 'deleted'",
    )
            .bind(project.to_string())
            .fetch_one(conn)
            .await?;
    Ok((n.max(0) as u64, gib.unwrap_or(0).max(0) as u64))
}

/// How many volumes are being made from snapshot `snapshot` (it must stay until they are).
pub async fn creating_from_snapshot(conn: &mut AnyConnection, snapshot: Uuid) -> Result<u64> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM volumes WHERE source_snapshot = $1 AND status = 'creating'")
        .bind(snapshot.to_string())
        .fetch_one(conn)
        .await?;
    Ok(n.max(0) as u64)
}

/// Moves a volume to `status` (with an error code and message for `error`, cleared otherwise).
pub async fn set_status(
    conn: &mut AnyConnection,
    id: Uuid,
    status: &str,
    error: Option<(&str, &str)>,
    now: OffsetDateTime,
) -> Result<()> {
    sqlx::query("UPDATE volumes SET status = $1, error_code = $2, error_message = $3, updated_at = $4 WHERE id = $5")
        .bind(status)
        .bind(error.map(|e| e.0))
        .bind(error.map(|e| e.1))
        .bind(to_ms(now))
        .bind(id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn set_size(conn: &mut AnyConnection, id: Uuid, size_gib: i64, now: OffsetDateTime) -> Result<()> {
    sqlx::query("UPDATE volumes SET size_gib = $1, updated_at = $2 WHERE id = $3")
        .bind(size_gib)
        .bind(to_ms(now))
        .bind(id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn set_requested_by(conn: &mut AnyConnection, id: Uuid, who: &str) -> Result<()> {
    sqlx::query("UPDATE volumes SET requested_by = $1 WHERE id = $2")
        .bind(who)
        .bind(id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn set_progress(conn: &mut AnyConnection, id: Uuid, progress: Option<i64>) -> Result<()> {
    sqlx::query("UPDATE volumes SET progress = $1 WHERE id = $2")
        .bind(progress)
        .bind(id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

/// Stores the verified wipe report and marks the volume `deleted`; its wrapped key goes (the
/// volume's bytes are gone, and so is any use for the key).
pub async fn finish_wipe(conn: &mut AnyConnection, id: Uuid, report: &str, now: OffsetDateTime) -> Result<()> {
    sqlx::query(
        "UPDATE volumes SET status = 'deleted', wipe_report = $1, wrapped_key = NULL, progress = NULL, \
         error_code = NULL, error_message = NULL, updated_at = $2 WHERE id = $3",
    )
    .bind(report)
    .bind(to_ms(now))
    .bind(id.to_string())
    .execute(conn)
    .await?;
    Ok(())
}

// ---- attachments ----

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentRow {
    pub volume_id: Uuid,
    pub instance_id: Uuid,
    pub read_only: bool,
    pub serial: String,
}

type AttachTuple = (String, String, i64, String);

fn attach_row(r: AttachTuple) -> Result<AttachmentRow> {
    Ok(AttachmentRow {
        volume_id: uuid_col(&r.0)?,
        instance_id: uuid_col(&r.1)?,
        read_only: r.2 != 0,
        serial: r.3,
    })
}

pub async fn insert_attachment(conn: &mut AnyConnection, a: &AttachmentRow, now: OffsetDateTime) -> Result<()> {
    sqlx::query(
        "INSERT INTO volume_attachments (volume_id, instance_id, read_only, serial, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(a.volume_id.to_string())
    .bind(a.instance_id.to_string())
    .bind(i64::from(a.read_only))
    .bind(&a.serial)
    .bind(to_ms(now))
    .execute(conn)
    .await
    .map_err(|e| conflict_on_unique(e, "the volume is attached to this instance already".into()))?;
    Ok(())
}

pub async fn delete_attachment(conn: &mut AnyConnection, volume: Uuid, instance: Uuid) -> Result<bool> {
    let r = sqlx::query("DELETE FROM volume_attachments WHERE volume_id = $1 AND instance_id = $2")
        .bind(volume.to_string())
        .bind(instance.to_string())
        .execute(conn)
        .await?;
    Ok(r.rows_affected() == 1)
}

pub async fn attachments_of_volume(conn: &mut AnyConnection, volume: Uuid) -> Result<Vec<AttachmentRow>> {
    let rows: Vec<AttachTuple> = sqlx::query_as(
        "SELECT volume_id, instance_id, read_only, serial FROM volume_attachments WHERE volume_id = $1 ORDER BY created_at, instance_id",
    )
    .bind(volume.to_string())
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(attach_row).collect()
}

pub async fn attachments_of_instance(conn: &mut AnyConnection, instance: Uuid) -> Result<Vec<AttachmentRow>> {
    let rows: Vec<AttachTuple> = sqlx::query_as(
        "SELECT volume_id, instance_id, read_only, serial FROM volume_attachments WHERE instance_id = $1 ORDER BY created_at, volume_id",
    )
    .bind(instance.to_string())
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(attach_row).collect()
}

// ---- grants ----

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRow {
    /// `user` or `group`.
    pub kind: String,
    pub principal_id: Uuid,
    /// JSON array of action names.
    pub actions: String,
}

pub async fn grants(conn: &mut AnyConnection, volume: Uuid) -> Result<Vec<GrantRow>> {
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT principal_kind, principal_id, actions FROM volume_grants WHERE volume_id = $1 ORDER BY principal_kind, principal_id",
    )
    .bind(volume.to_string())
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|(kind, id, actions)| {
            Ok(GrantRow {
                kind,
                principal_id: uuid_col(&id)?,
                actions,
            })
        })
        .collect()
}

/// Replaces the volume's grants with `grants`.
pub async fn replace_grants(conn: &mut AnyConnection, volume: Uuid, grants: &[GrantRow]) -> Result<()> {
    sqlx::query("DELETE FROM volume_grants WHERE volume_id = $1")
        .bind(volume.to_string())
        .execute(&mut *conn)
        .await?;
    for g in grants {
        sqlx::query(
            "INSERT INTO volume_grants (volume_id, principal_kind, principal_id, actions) VALUES ($1, $2, $3, $4)",
        )
        .bind(volume.to_string())
        .bind(&g.kind)
        .bind(g.principal_id.to_string())
        .bind(&g.actions)
        .execute(&mut *conn)
        .await
        .map_err(|e| conflict_on_unique(e, "a user or group is named twice in the grants".into()))?;
    }
    Ok(())
}

/// The groups `user` is a member of.
pub async fn groups_of_user(conn: &mut AnyConnection, user: Uuid) -> Result<Vec<Uuid>> {
    let rows: Vec<String> = sqlx::query_scalar("SELECT group_id FROM group_members WHERE user_id = $1")
        .bind(user.to_string())
        .fetch_all(conn)
        .await?;
    rows.iter().map(|s| uuid_col(s)).collect()
}

// ---- pools ----

/// Replaces what `node` reported of its pools: `(name, report JSON, free bytes)`.
pub async fn record_pools(
    conn: &mut AnyConnection,
    node: Uuid,
    pools: &[(String, String, u64)],
    now: OffsetDateTime,
) -> Result<()> {
    sqlx::query("DELETE FROM storage_pools WHERE node_id = $1")
        .bind(node.to_string())
        .execute(&mut *conn)
        .await?;
    for (name, report, free) in pools {
        sqlx::query(
            "INSERT INTO storage_pools (node_id, name, report, free_bytes, updated_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(node.to_string())
        .bind(name)
        .bind(report)
        .bind(i64::try_from(*free).unwrap_or(i64::MAX))
        .bind(to_ms(now))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Every reported pool: `(node id, node name, node state, report JSON)`.
pub async fn pools(conn: &mut AnyConnection) -> Result<Vec<(Uuid, String, String, String)>> {
    let rows: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT p.node_id, n.name, n.state, p.report FROM storage_pools p JOIN nodes n ON n.id = p.node_id ORDER BY n.name, p.name",
    )
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|(id, name, state, report)| Ok((uuid_col(&id)?, name, state, report)))
        .collect()
}

// ---- project settings ----

pub async fn allow_unencrypted(conn: &mut AnyConnection, project: Uuid) -> Result<bool> {
    let v: Option<i64> =
        sqlx::query_scalar("SELECT allow_unencrypted FROM project_volume_settings WHERE project_id = $1")
            .bind(project.to_string())
            .fetch_optional(conn)
            .await?;
    Ok(v.unwrap_or(0) != 0)
}

pub async fn set_allow_unencrypted(
    conn: &mut AnyConnection,
    project: Uuid,
    allow: bool,
    now: OffsetDateTime,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO project_volume_settings (project_id, allow_unencrypted, updated_at) VALUES ($1, $2, $3) \
         ON CONFLICT (project_id) DO UPDATE SET allow_unencrypted = excluded.allow_unencrypted, updated_at = excluded.updated_at",
    )
    .bind(project.to_string())
    .bind(i64::from(allow))
    .bind(to_ms(now))
    .execute(conn)
    .await?;
    Ok(())
}
