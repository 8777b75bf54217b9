//! Keys and certificates: customer key rows and their versions (material only wrapped), the
//! certificate inventory, and the certificate side of nodes (renewal, revocation).
//!
//! Key rows carry a `revision` that every update checks and bumps, so two controllers (or two
//! requests) changing the same key cannot overwrite each other: the loser reloads and retries.

use rampart_common::time::{from_ms, to_ms};
use rampart_kms::envelope::WrappedKey;
use rampart_kms::lifecycle::{Algorithm, Key, KeyState, KeyStateName, KeyVersion};
use rampart_kms::storage::{KeyStore, StoredKey};
use sqlx::AnyConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::identity::conflict_on_unique;
use crate::{DbError, Result, uuid_col};

/// A row of `kms_keys`. Ids are TEXT (UUID), times BIGINT milliseconds.
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
    /// When the reconciler must look at the key (rotation or destruction), indexed.
    pub next_action_at: Option<i64>,
    /// Optimistic concurrency: every update checks and bumps it.
    pub revision: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A row of `kms_key_versions` (deleted with its key).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct KeyVersionRow {
    pub key_id: String,
    pub version: i64,
    /// Base64 of the wrapped material; NULL once destroyed. Never plaintext (13.3-5).
    pub wrapped_material: Option<String>,
    pub created_at: i64,
}

// ---- the one mapping between the kms domain and the rows ----

/// The rows of `key` at `revision`.
pub fn key_to_rows(key: &Key, revision: i64) -> (KeyRow, Vec<KeyVersionRow>) {
    let (deletion_at, destroyed_at) = match key.state {
        KeyState::PendingDeletion { delete_at } => (Some(to_ms(delete_at)), None),
        KeyState::Destroyed { destroyed_at } => (None, Some(to_ms(destroyed_at))),
        _ => (None, None),
    };
    let row = KeyRow {
        id: key.id.to_string(),
        project_id: key.project.to_string(),
        name: key.name.clone(),
        algorithm: key.algorithm.as_str().to_string(),
        state: key.state.name().as_str().to_string(),
        primary_version: key.primary_version as i64,
        min_decryption_version: key.min_decryption_version as i64,
        rotation_period_days: key.rotation_period_days.map(i64::from),
        last_rotated_at: to_ms(key.last_rotated_at),
        deletion_at,
        destroyed_at,
        next_action_at: key.next_action_at().map(to_ms),
        revision,
        created_at: to_ms(key.created_at),
        updated_at: to_ms(key.updated_at),
    };
    let versions = key
        .versions
        .iter()
        .map(|v| KeyVersionRow {
            key_id: row.id.clone(),
            version: v.version as i64,
            wrapped_material: v.wrapped.as_ref().map(WrappedKey::to_base64),
            created_at: to_ms(v.created_at),
        })
        .collect();
    (row, versions)
}

fn corrupt(field: &str) -> DbError {
    DbError::Corrupt(format!("stored key row has an invalid {field}"))
}

fn version_u32(v: i64, field: &str) -> Result<u32> {
    u32::try_from(v).ok().filter(|v| *v >= 1).ok_or_else(|| corrupt(field))
}

/// The key the rows hold; rows that contradict themselves are refused, never half read.
pub fn key_from_rows(row: &KeyRow, versions: &[KeyVersionRow]) -> Result<StoredKey> {
    let state = match KeyStateName::parse(&row.state).ok_or_else(|| corrupt("state"))? {
        KeyStateName::Enabled => KeyState::Enabled,
        KeyStateName::Disabled => KeyState::Disabled,
        KeyStateName::PendingDeletion => KeyState::PendingDeletion {
            delete_at: from_ms(row.deletion_at.ok_or_else(|| corrupt("deletion_at"))?),
        },
        KeyStateName::Destroyed => KeyState::Destroyed {
            destroyed_at: from_ms(row.destroyed_at.ok_or_else(|| corrupt("destroyed_at"))?),
        },
    };
    let mut vs = versions
        .iter()
        .map(|v| {
            if v.key_id != row.id {
                return Err(corrupt("key_id"));
            }
            Ok(KeyVersion {
                version: version_u32(v.version, "version")?,
                wrapped: v
                    .wrapped_material
                    .as_deref()
                    .map(WrappedKey::from_base64)
                    .transpose()
                    .map_err(|_| corrupt("wrapped_material"))?,
                created_at: from_ms(v.created_at),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    vs.sort_by_key(|v| v.version);
    let key = Key {
        id: Uuid::parse_str(&row.id).map_err(|_| corrupt("id"))?,
        project: Uuid::parse_str(&row.project_id).map_err(|_| corrupt("project_id"))?,
        name: row.name.clone(),
        algorithm: Algorithm::parse(&row.algorithm).map_err(|_| corrupt("algorithm"))?,
        state,
        primary_version: version_u32(row.primary_version, "primary_version")?,
        min_decryption_version: version_u32(row.min_decryption_version, "min_decryption_version")?,
        rotation_period_days: row
            .rotation_period_days
            .map(|d| u32::try_from(d).map_err(|_| corrupt("rotation_period_days")))
            .transpose()?,
        last_rotated_at: from_ms(row.last_rotated_at),
        created_at: from_ms(row.created_at),
        updated_at: from_ms(row.updated_at),
        versions: vs,
    };
    Ok(StoredKey {
        key,
        revision: row.revision,
    })
}

// ---- SQL ----

macro_rules! key_columns {
    () => {
        "id, project_id, name, algorithm, state, primary_version, min_decryption_version, rotation_period_days, \
         last_rotated_at, deletion_at, destroyed_at, next_action_at, created_at, updated_at, revision"
    };
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

async fn insert_key(conn: &mut AnyConnection, row: &KeyRow, versions: &[KeyVersionRow]) -> Result<()> {
    sqlx::query(
        "INSERT INTO kms_keys (id, project_id, name, algorithm, state, primary_version, min_decryption_version, \
         rotation_period_days, last_rotated_at, deletion_at, destroyed_at, next_action_at, revision, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
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
    .bind(row.revision)
    .bind(row.created_at)
    .bind(row.updated_at)
    .execute(&mut *conn)
    .await
    .map_err(|e| conflict_on_unique(e, format!("a key named {:?} already exists in this project", row.name)))?;
    upsert_versions(conn, versions).await
}

async fn save_key(conn: &mut AnyConnection, row: &KeyRow, versions: &[KeyVersionRow]) -> Result<bool> {
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
    .bind(row.revision)
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

async fn get_key(conn: &mut AnyConnection, project: Uuid, id: Uuid) -> Result<Option<StoredKey>> {
    let found: Option<KeyRow> = sqlx::query_as(concat!(
        "SELECT ",
        key_columns!(),
        " FROM kms_keys WHERE id = $1 AND project_id = $2"
    ))
    .bind(id.to_string())
    .bind(project.to_string())
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = found else {
        return Ok(None);
    };
    let versions = versions_of(conn, &row.id).await?;
    key_from_rows(&row, &versions).map(Some)
}

async fn list_keys(conn: &mut AnyConnection, project: Uuid, after: Option<&str>, limit: u32) -> Result<Vec<StoredKey>> {
    let rows: Vec<KeyRow> = sqlx::query_as(concat!(
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
    for row in rows {
        let versions = versions_of(conn, &row.id).await?;
        out.push(key_from_rows(&row, &versions)?);
    }
    Ok(out)
}

async fn due_keys(conn: &mut AnyConnection, now: OffsetDateTime, limit: u32) -> Result<Vec<(Uuid, Uuid)>> {
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

/// The customer keys of the database, inside the connection or transaction it was made from.
pub struct Keys<'c>(pub &'c mut AnyConnection);

/// The key store over `conn` (a connection, or a transaction to change keys with other rows).
pub fn keys(conn: &mut AnyConnection) -> Keys<'_> {
    Keys(conn)
}

impl KeyStore for Keys<'_> {
    type Error = DbError;

    async fn get(&mut self, project: Uuid, id: Uuid) -> Result<Option<StoredKey>> {
        get_key(self.0, project, id).await
    }

    async fn list(&mut self, project: Uuid, after: Option<&str>, limit: u32) -> Result<Vec<StoredKey>> {
        list_keys(self.0, project, after, limit).await
    }

    async fn insert(&mut self, key: &Key) -> Result<()> {
        let (row, versions) = key_to_rows(key, 0);
        insert_key(self.0, &row, &versions).await
    }

    async fn save(&mut self, key: &Key, revision: i64) -> Result<bool> {
        let (row, versions) = key_to_rows(key, revision);
        save_key(self.0, &row, &versions).await
    }

    async fn due(&mut self, now: OffsetDateTime, limit: u32) -> Result<Vec<(Uuid, Uuid)>> {
        due_keys(self.0, now, limit).await
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn rows_round_trip_in_every_state() {
        let t = datetime!(2026-03-01 12:00:00.123 UTC);
        let mut k = Key::new(
            Uuid::from_u128(7),
            Uuid::from_u128(8),
            "k".into(),
            Some(30),
            WrappedKey::new(1, &[1; 12], &[2; 56]),
            t,
        )
        .unwrap();
        k.rotate(2, WrappedKey::new(1, &[3; 12], &[4; 56]), t).unwrap();
        let (row, vs) = key_to_rows(&k, 3);
        assert_eq!((row.state.as_str(), row.revision), ("enabled", 3));
        assert_eq!(row.next_action_at, Some(to_ms(t) + 30 * 86_400_000));
        assert_eq!(
            key_from_rows(&row, &vs).unwrap(),
            StoredKey {
                key: k.clone(),
                revision: 3
            }
        );
        k.schedule_deletion(Some(7), t).unwrap();
        let (row, vs) = key_to_rows(&k, 4);
        assert_eq!(row.deletion_at, row.next_action_at);
        assert_eq!(key_from_rows(&row, &vs).unwrap().key, k);
        k.destroy(t + time::Duration::days(7)).unwrap();
        let (row, vs) = key_to_rows(&k, 5);
        assert!(vs.iter().all(|v| v.wrapped_material.is_none()));
        assert_eq!(key_from_rows(&row, &vs).unwrap().key, k);
    }

    #[test]
    fn corrupt_rows_are_refused() {
        let t = datetime!(2026-03-01 0:00 UTC);
        let k = Key::new(
            Uuid::from_u128(7),
            Uuid::from_u128(8),
            "k".into(),
            None,
            WrappedKey::new(1, &[1; 12], &[2; 56]),
            t,
        )
        .unwrap();
        let (row, vs) = key_to_rows(&k, 0);
        let bad_state = KeyRow {
            state: "pending_deletion".into(),
            ..row.clone()
        };
        assert!(key_from_rows(&bad_state, &vs).is_err(), "pending without a date");
        let bad_version = KeyVersionRow {
            version: 0,
            ..vs[0].clone()
        };
        assert!(key_from_rows(&row, &[bad_version]).is_err());
        let other_key = KeyVersionRow {
            key_id: Uuid::nil().to_string(),
            ..vs[0].clone()
        };
        assert!(key_from_rows(&row, &[other_key]).is_err());
    }
}
