//! Keys and certificates: customer key rows and their versions (material only wrapped), the
//! certificate inventory, and the certificate side of nodes (renewal, revocation).
//!
//! Key rows carry a `revision` that every update checks and bumps, so two controllers (or two
//! requests) changing the same key cannot overwrite each other: the loser reloads and retries.

use rampart_common::time::to_ms;
use sqlx::AnyConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::identity::conflict_on_unique;
use crate::{Result, uuid_col};

/// A customer key row (see `rampart_kms::storage::KeyRow`, which has the same fields).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct KeyRow {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub algorithm: String,
    pub state: String,
    pub primary_version: i64,
    pub min_decryption_version: i64,
    pub rotation_period_days: Option<i64>,
    pub last_rotated_at: i64,
    pub deletion_at: Option<i64>,
    pub destroyed_at: Option<i64>,
    pub next_action_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct KeyVersionRow {
    pub key_id: String,
    pub version: i64,
    /// Base64 of the wrapped material; NULL once destroyed.
    pub wrapped_material: Option<String>,
    pub created_at: i64,
}

/// A key as stored: its row, its versions (ascending) and its revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub row: KeyRow,
    pub versions: Vec<KeyVersionRow>,
    pub revision: i64,
}

macro_rules! key_columns {
    () => {
        "id, project_id, name, algorithm, state, primary_version, min_decryption_version, rotation_period_days, \
         last_rotated_at, deletion_at, destroyed_at, next_action_at, created_at, updated_at, revision"
    };
}

#[derive(sqlx::FromRow)]
struct KeyRowWithRevision {
    #[sqlx(flatten)]
    row: KeyRow,
    revision: i64,
}

async fn upsert_versions(conn: &mut AnyConnection, versions: &[KeyVersionRow]) -> Result<()> {
    for v in versions {
        sqlx::query(
            "INSERT INTO kms_key_versions (key_id, version, wrapped_material, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (key_id, version) DO UPDATE SET wrapped_material = excluded.wrapped_material",
        )
        .bind(&v.key_id)
        .bind(v.version)
        .bind(v.wrapped_material.as_deref())
        .bind(v.created_at)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Inserts a new key and its versions; a second key of the same name in the project is a conflict.
pub async fn insert_key(conn: &mut AnyConnection, row: &KeyRow, versions: &[KeyVersionRow]) -> Result<()> {
    sqlx::query(
        "INSERT INTO kms_keys (id, project_id, name, algorithm, state, primary_version, min_decryption_version, \
         rotation_period_days, last_rotated_at, deletion_at, destroyed_at, next_action_at, revision, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 0, $13, $14)",
    )
    .bind(&row.id)
    .bind(&row.project_id)
    .bind(&row.name)
    .bind(&row.algorithm)
    .bind(&row.state)
    .bind(row.primary_version)
    .bind(row.min_decryption_version)
    .bind(row.rotation_period_days)
    .bind(row.last_rotated_at)
    .bind(row.deletion_at)
    .bind(row.destroyed_at)
    .bind(row.next_action_at)
    .bind(row.created_at)
    .bind(row.updated_at)
    .execute(&mut *conn)
    .await
    .map_err(|e| conflict_on_unique(e, format!("a key named {:?} already exists in this project", row.name)))?;
    upsert_versions(conn, versions).await
}

/// Stores a changed key if nobody changed it since `revision` was read; false otherwise (the
/// caller reloads and retries). Versions are inserted or their material updated (destroyed).
pub async fn save_key(
    conn: &mut AnyConnection,
    row: &KeyRow,
    versions: &[KeyVersionRow],
    revision: i64,
) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE kms_keys SET state = $1, primary_version = $2, min_decryption_version = $3, rotation_period_days = $4, \
         last_rotated_at = $5, deletion_at = $6, destroyed_at = $7, next_action_at = $8, updated_at = $9, \
         revision = revision + 1 WHERE id = $10 AND revision = $11",
    )
    .bind(&row.state)
    .bind(row.primary_version)
    .bind(row.min_decryption_version)
    .bind(row.rotation_period_days)
    .bind(row.last_rotated_at)
    .bind(row.deletion_at)
    .bind(row.destroyed_at)
    .bind(row.next_action_at)
    .bind(row.updated_at)
    .bind(&row.id)
    .bind(revision)
    .execute(&mut *conn)
    .await?;
    if r.rows_affected() != 1 {
        return Ok(false);
    }
    upsert_versions(conn, versions).await?;
    Ok(true)
}

async fn versions_of(conn: &mut AnyConnection, key_id: &str) -> Result<Vec<KeyVersionRow>> {
    Ok(sqlx::query_as(
        "SELECT key_id, version, wrapped_material, created_at FROM kms_key_versions WHERE key_id = $1 ORDER BY version",
    )
    .bind(key_id)
    .fetch_all(conn)
    .await?)
}

/// The key `id` of `project`.
pub async fn get_key(conn: &mut AnyConnection, project: Uuid, id: Uuid) -> Result<Option<StoredKey>> {
    let found: Option<KeyRowWithRevision> = sqlx::query_as(concat!(
        "SELECT ",
        key_columns!(),
        " FROM kms_keys WHERE id = $1 AND project_id = $2"
    ))
    .bind(id.to_string())
    .bind(project.to_string())
    .fetch_optional(&mut *conn)
    .await?;
    let Some(KeyRowWithRevision { row, revision }) = found else {
        return Ok(None);
    };
    let versions = versions_of(conn, &row.id).await?;
    Ok(Some(StoredKey {
        row,
        versions,
        revision,
    }))
}

/// Keys of `project` ordered by name, after the name `after`.
pub async fn list_keys(
    conn: &mut AnyConnection,
    project: Uuid,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<StoredKey>> {
    let rows: Vec<KeyRowWithRevision> = sqlx::query_as(concat!(
        "SELECT ",
        key_columns!(),
        " FROM kms_keys WHERE project_id = $1 AND name > $2 ORDER BY name LIMIT $3"
    ))
    .bind(project.to_string())
    .bind(after.unwrap_or(""))
    .bind(limit as i64)
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for KeyRowWithRevision { row, revision } in rows {
        let versions = versions_of(conn, &row.id).await?;
        out.push(StoredKey {
            row,
            versions,
            revision,
        });
    }
    Ok(out)
}

/// Keys whose next action (rotation, destruction) is due at `now`: `(project, key)`.
pub async fn due_keys(conn: &mut AnyConnection, now: OffsetDateTime, limit: u32) -> Result<Vec<(Uuid, Uuid)>> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT project_id, id FROM kms_keys WHERE next_action_at IS NOT NULL AND next_action_at <= $1 \
         ORDER BY next_action_at LIMIT $2",
    )
    .bind(to_ms(now))
    .bind(limit as i64)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|(p, k)| Ok((uuid_col(&p)?, uuid_col(&k)?)))
        .collect()
}

/// Keys of `project` that are not destroyed.
pub async fn count_live_keys(conn: &mut AnyConnection, project: Uuid) -> Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT COUNT(*) FROM kms_keys WHERE project_id = $1 AND state <> 'destroyed'")
            .bind(project.to_string())
            .fetch_one(conn)
            .await?,
    )
}

/// Removes the (destroyed) keys of a project being deleted.
pub async fn delete_project_keys(conn: &mut AnyConnection, project: Uuid) -> Result<u64> {
    sqlx::query("DELETE FROM kms_key_versions WHERE key_id IN (SELECT id FROM kms_keys WHERE project_id = $1)")
        .bind(project.to_string())
        .execute(&mut *conn)
        .await?;
    let r = sqlx::query("DELETE FROM kms_keys WHERE project_id = $1")
        .bind(project.to_string())
        .execute(conn)
        .await?;
    Ok(r.rows_affected())
}

/// Every project id (to give each its root keys at start).
pub async fn all_project_ids(conn: &mut AnyConnection) -> Result<Vec<Uuid>> {
    let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM projects ORDER BY id")
        .fetch_all(conn)
        .await?;
    ids.iter().map(|s| uuid_col(s)).collect()
}

// ---- certificates ----

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CertRow {
    pub id: String,
    /// `ca`, `server`, `agent`, `tenant` or `imported`.
    pub kind: String,
    /// `infrastructure` or `tenant` for certificates of the internal CAs; NULL for imports.
    pub issuer_ca: Option<String>,
    pub project_id: Option<String>,
    pub node_id: Option<String>,
    pub serial: String,
    pub sha256: String,
    pub subject: String,
    pub issuer: String,
    /// JSON list of DNS names and addresses.
    pub names: String,
    pub not_before: i64,
    pub not_after: i64,
    pub pem: String,
    pub chain_pem: String,
    pub chain_trust: Option<String>,
    pub revoked_at: Option<i64>,
    pub revocation_reason: Option<String>,
    pub expiry_alarm_at: Option<i64>,
    pub created_by: Option<String>,
    pub created_at: i64,
}

macro_rules! cert_columns {
    () => {
        "id, kind, issuer_ca, project_id, node_id, serial, sha256, subject, issuer, names, not_before, not_after, pem, \
         chain_pem, chain_trust, revoked_at, revocation_reason, expiry_alarm_at, created_by, created_at"
    };
}

macro_rules! insert_cert {
    ($tail:literal) => {
        concat!(
            "INSERT INTO certificates (",
            cert_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)",
            $tail
        )
    };
}

async fn insert_cert_sql(conn: &mut AnyConnection, c: &CertRow, skip_known: bool) -> Result<u64> {
    let sql = if skip_known {
        insert_cert!(" ON CONFLICT (sha256) DO NOTHING")
    } else {
        insert_cert!("")
    };
    let r = sqlx::query(sql)
        .bind(&c.id)
        .bind(&c.kind)
        .bind(c.issuer_ca.as_deref())
        .bind(c.project_id.as_deref())
        .bind(c.node_id.as_deref())
        .bind(&c.serial)
        .bind(&c.sha256)
        .bind(&c.subject)
        .bind(&c.issuer)
        .bind(&c.names)
        .bind(c.not_before)
        .bind(c.not_after)
        .bind(&c.pem)
        .bind(&c.chain_pem)
        .bind(c.chain_trust.as_deref())
        .bind(c.revoked_at)
        .bind(c.revocation_reason.as_deref())
        .bind(c.expiry_alarm_at)
        .bind(c.created_by.as_deref())
        .bind(c.created_at)
        .execute(conn)
        .await
        .map_err(|e| conflict_on_unique(e, "this certificate is already recorded".into()))?;
    Ok(r.rows_affected())
}

/// Records a certificate; the same certificate (SHA-256) twice is a conflict.
pub async fn insert_certificate(conn: &mut AnyConnection, c: &CertRow) -> Result<()> {
    insert_cert_sql(conn, c, false).await.map(|_| ())
}

/// Records a certificate unless the same one (SHA-256) is recorded; true when inserted.
pub async fn record_certificate(conn: &mut AnyConnection, c: &CertRow) -> Result<bool> {
    insert_cert_sql(conn, c, true).await.map(|n| n == 1)
}

pub async fn get_certificate(conn: &mut AnyConnection, id: Uuid) -> Result<Option<CertRow>> {
    Ok(
        sqlx::query_as(concat!("SELECT ", cert_columns!(), " FROM certificates WHERE id = $1"))
            .bind(id.to_string())
            .fetch_optional(conn)
            .await?,
    )
}

pub async fn certificate_by_sha256(conn: &mut AnyConnection, sha256: &str) -> Result<Option<CertRow>> {
    Ok(sqlx::query_as(concat!(
        "SELECT ",
        cert_columns!(),
        " FROM certificates WHERE sha256 = $1"
    ))
    .bind(sha256)
    .fetch_optional(conn)
    .await?)
}

/// Which certificates a list returns.
#[derive(Debug, Clone, Copy, Default)]
pub enum CertScope {
    /// Every certificate.
    #[default]
    All,
    /// Certificates of no project (the platform's).
    System,
    /// Certificates of one project.
    Project(Uuid),
}

/// Certificates of `scope` ordered by id, after `after`.
pub async fn list_certificates(
    conn: &mut AnyConnection,
    scope: CertScope,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<CertRow>> {
    // $2 selects the scope: '*' every certificate, '' those of no project, else a project id.
    let project = match scope {
        CertScope::All => "*".to_string(),
        CertScope::System => String::new(),
        CertScope::Project(p) => p.to_string(),
    };
    Ok(sqlx::query_as(concat!(
        "SELECT ",
        cert_columns!(),
        " FROM certificates WHERE id > $1 AND ($2 = '*' OR ($2 = '' AND project_id IS NULL) OR project_id = $2) \
         ORDER BY id LIMIT $3"
    ))
    .bind(after.unwrap_or(""))
    .bind(project)
    .bind(limit as i64)
    .fetch_all(conn)
    .await?)
}

/// Marks a certificate revoked; false when it already was (or does not exist).
pub async fn revoke_certificate(conn: &mut AnyConnection, id: Uuid, reason: &str, now: OffsetDateTime) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE certificates SET revoked_at = $1, revocation_reason = $2 WHERE id = $3 AND revoked_at IS NULL",
    )
    .bind(to_ms(now))
    .bind(reason)
    .bind(id.to_string())
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Whether the certificate with this SHA-256 is recorded as revoked.
pub async fn is_revoked(conn: &mut AnyConnection, sha256: &str) -> Result<bool> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM certificates WHERE sha256 = $1 AND revoked_at IS NOT NULL")
        .bind(sha256)
        .fetch_one(conn)
        .await?;
    Ok(n > 0)
}

/// Revoked, unexpired certificates issued by the internal CA `issuer_ca`: `(serial,
/// revoked_at ms, reason)`, what its CRL lists.
pub async fn revoked_serials(
    conn: &mut AnyConnection,
    issuer_ca: &str,
    now: OffsetDateTime,
) -> Result<Vec<(String, i64, Option<String>)>> {
    Ok(sqlx::query_as(
        "SELECT serial, revoked_at, revocation_reason FROM certificates \
         WHERE issuer_ca = $1 AND revoked_at IS NOT NULL AND not_after > $2 ORDER BY revoked_at",
    )
    .bind(issuer_ca)
    .bind(to_ms(now))
    .fetch_all(conn)
    .await?)
}

/// Unrevoked certificates that expire before `before` and have not raised their alarm yet.
pub async fn expiring_without_alarm(conn: &mut AnyConnection, before: OffsetDateTime) -> Result<Vec<CertRow>> {
    Ok(sqlx::query_as(concat!(
        "SELECT ",
        cert_columns!(),
        " FROM certificates WHERE not_after < $1 AND revoked_at IS NULL AND expiry_alarm_at IS NULL ORDER BY not_after"
    ))
    .bind(to_ms(before))
    .fetch_all(conn)
    .await?)
}

pub async fn mark_expiry_alarm(conn: &mut AnyConnection, id: &str, now: OffsetDateTime) -> Result<()> {
    sqlx::query("UPDATE certificates SET expiry_alarm_at = $1 WHERE id = $2")
        .bind(to_ms(now))
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Certificates of a project being deleted: revoked (`cessation_of_operation`) if they were
/// not, and detached from it (kept for the CRL and the inventory).
pub async fn detach_project_certificates(conn: &mut AnyConnection, project: Uuid, now: OffsetDateTime) -> Result<u64> {
    sqlx::query(
        "UPDATE certificates SET revoked_at = $1, revocation_reason = 'cessation_of_operation' \
         WHERE project_id = $2 AND revoked_at IS NULL",
    )
    .bind(to_ms(now))
    .bind(project.to_string())
    .execute(&mut *conn)
    .await?;
    let r = sqlx::query("UPDATE certificates SET project_id = NULL WHERE project_id = $1")
        .bind(project.to_string())
        .execute(conn)
        .await?;
    Ok(r.rows_affected())
}

/// Revokes the certificates of a removed node (`cessation_of_operation`).
pub async fn revoke_node_certificates(conn: &mut AnyConnection, node: Uuid, now: OffsetDateTime) -> Result<u64> {
    let r = sqlx::query(
        "UPDATE certificates SET revoked_at = $1, revocation_reason = 'cessation_of_operation' \
         WHERE node_id = $2 AND revoked_at IS NULL",
    )
    .bind(to_ms(now))
    .bind(node.to_string())
    .execute(conn)
    .await?;
    Ok(r.rows_affected())
}

// ---- node certificates ----

/// Which certificate of a node a client presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeCert {
    /// The node's current certificate.
    Current,
    /// The renewed certificate, not used yet.
    Next,
}

/// The node whose current or renewed certificate has this SHA-256, unless it is revoked.
pub async fn node_by_certificate(conn: &mut AnyConnection, sha256: &str) -> Result<Option<(Uuid, NodeCert)>> {
    let row: Option<(String, i64)> = sqlx::query_as(
        "SELECT id, CAST(CASE WHEN cert_sha256 = $1 THEN 0 ELSE 1 END AS BIGINT) FROM nodes WHERE cert_sha256 = $1 OR next_cert_sha256 = $1",
    )
    .bind(sha256)
    .fetch_optional(conn)
    .await?;
    row.map(|(id, which)| {
        Ok((
            uuid_col(&id)?,
            if which == 0 { NodeCert::Current } else { NodeCert::Next },
        ))
    })
    .transpose()
}

/// Records a renewed certificate; the current one stays valid until the new one is used.
pub async fn set_next_certificate(
    conn: &mut AnyConnection,
    node: Uuid,
    sha256: &str,
    not_after: OffsetDateTime,
) -> Result<bool> {
    let r = sqlx::query("UPDATE nodes SET next_cert_sha256 = $1, next_cert_not_after = $2 WHERE id = $3")
        .bind(sha256)
        .bind(to_ms(not_after))
        .bind(node.to_string())
        .execute(conn)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// The renewed certificate was used: it becomes the only one; the previous one is refused
/// from now on. Returns the SHA-256 of the previous certificate.
pub async fn promote_next_certificate(conn: &mut AnyConnection, node: Uuid, sha256: &str) -> Result<Option<String>> {
    let old: Option<String> =
        sqlx::query_scalar("SELECT cert_sha256 FROM nodes WHERE id = $1 AND next_cert_sha256 = $2")
            .bind(node.to_string())
            .bind(sha256)
            .fetch_optional(&mut *conn)
            .await?;
    if old.is_none() {
        return Ok(None);
    }
    let r = sqlx::query(
        "UPDATE nodes SET cert_sha256 = next_cert_sha256, cert_not_after = next_cert_not_after, \
         next_cert_sha256 = NULL, next_cert_not_after = NULL WHERE id = $1 AND next_cert_sha256 = $2",
    )
    .bind(node.to_string())
    .bind(sha256)
    .execute(conn)
    .await?;
    Ok(if r.rows_affected() == 1 { old } else { None })
}
