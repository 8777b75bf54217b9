//! Compute: signing keys, per-project settings, images, flavors, instances (with their events,
//! metrics and console), alarms, and what nodes say about their ability to run VMs.

use rampart_common::time::{from_ms, to_ms};
use sqlx::AnyConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::identity::conflict_on_unique;
use crate::{Result, uuid_col};

fn opt_uuid(s: Option<String>) -> Result<Option<Uuid>> {
    s.as_deref().map(uuid_col).transpose()
}

// ---- signing keys ----

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKeyRow {
    pub id: Uuid,
    pub project_id: Option<Uuid>,
    pub name: String,
    pub key_id: String,
    pub public_key: String,
    pub created_at: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
}

type KeyTuple = (String, Option<String>, String, String, String, i64, Option<i64>);

fn key_row(r: KeyTuple) -> Result<SigningKeyRow> {
    Ok(SigningKeyRow {
        id: uuid_col(&r.0)?,
        project_id: opt_uuid(r.1)?,
        name: r.2,
        key_id: r.3,
        public_key: r.4,
        created_at: from_ms(r.5),
        revoked_at: r.6.map(from_ms),
    })
}

const KEY_COLS: &str = "id, project_id, name, key_id, public_key, created_at, revoked_at";

pub async fn insert_signing_key(conn: &mut AnyConnection, k: &SigningKeyRow) -> Result<()> {
    // NULLs are distinct in UNIQUE: global names are checked here.
    if k.project_id.is_none() {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM signing_keys WHERE project_id IS NULL AND name = $1 AND revoked_at IS NULL",
        )
        .bind(&k.name)
        .fetch_one(&mut *conn)
        .await?;
        if n > 0 {
            return Err(crate::DbError::Conflict(format!(
                "a global signing key named {:?} already exists",
                k.name
            )));
        }
    }
    sqlx::query("INSERT INTO signing_keys (id, project_id, name, key_id, public_key, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(k.id.to_string())
        .bind(k.project_id.map(|p| p.to_string()))
        .bind(&k.name)
        .bind(&k.key_id)
        .bind(&k.public_key)
        .bind(to_ms(k.created_at))
        .execute(conn)
        .await
        .map_err(|e| conflict_on_unique(e, format!("a signing key named {:?} already exists here", k.name)))?;
    Ok(())
}

/// Keys not revoked: global ones and those of `projects`.
pub async fn list_signing_keys(conn: &mut AnyConnection) -> Result<Vec<SigningKeyRow>> {
    let rows: Vec<KeyTuple> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {KEY_COLS} FROM signing_keys WHERE revoked_at IS NULL ORDER BY name, id"
    )))
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(key_row).collect()
}

pub async fn get_signing_key(conn: &mut AnyConnection, id: Uuid) -> Result<Option<SigningKeyRow>> {
    let row: Option<KeyTuple> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {KEY_COLS} FROM signing_keys WHERE id = $1 AND revoked_at IS NULL"
    )))
    .bind(id.to_string())
    .fetch_optional(conn)
    .await?;
    row.map(key_row).transpose()
}

pub async fn revoke_signing_key(conn: &mut AnyConnection, id: Uuid, now: OffsetDateTime) -> Result<bool> {
    let r = sqlx::query("UPDATE signing_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
        .bind(to_ms(now))
        .bind(id.to_string())
        .execute(conn)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// `(key_id, public_key)` of the keys trusted in `project`: global ones and its own, not revoked.
pub async fn trusted_keys(conn: &mut AnyConnection, project: Uuid) -> Result<Vec<(String, String)>> {
    Ok(sqlx::query_as(
        "SELECT key_id, public_key FROM signing_keys WHERE revoked_at IS NULL AND (project_id IS NULL OR project_id = $1) ORDER BY key_id, id",
    )
    .bind(project.to_string())
    .fetch_all(conn)
    .await?)
}

// ---- settings ----

pub async fn signature_policy(conn: &mut AnyConnection, project: Uuid) -> Result<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT image_signature_policy FROM project_compute_settings WHERE project_id = $1")
            .bind(project.to_string())
            .fetch_optional(conn)
            .await?,
    )
}

pub async fn set_signature_policy(
    conn: &mut AnyConnection,
    project: Uuid,
    policy: &str,
    now: OffsetDateTime,
) -> Result<()> {
    let r = sqlx::query(
        "UPDATE project_compute_settings SET image_signature_policy = $1, updated_at = $2 WHERE project_id = $3",
    )
    .bind(policy)
    .bind(to_ms(now))
    .bind(project.to_string())
    .execute(&mut *conn)
    .await?;
    if r.rows_affected() == 0 {
        sqlx::query(
            "INSERT INTO project_compute_settings (project_id, image_signature_policy, updated_at) VALUES ($1, $2, $3)",
        )
        .bind(project.to_string())
        .bind(policy)
        .bind(to_ms(now))
        .execute(conn)
        .await?;
    }
    Ok(())
}

// ---- images ----

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRow {
    pub id: Uuid,
    pub project_id: Uuid,
    pub name: String,
    pub disk_format: String,
    pub ramdisk_image_id: Option<Uuid>,
    pub kernel_cmdline: Option<String>,
    pub status: String,
    pub size_bytes: Option<i64>,
    pub sha256: Option<String>,
    pub signature: Option<String>,
    pub signing_key_id: Option<String>,
    pub signature_verified: bool,
    pub storage_key: Option<String>,
    pub created_at: OffsetDateTime,
}

#[derive(sqlx::FromRow)]
struct ImageDb {
    id: String,
    project_id: String,
    name: String,
    disk_format: String,
    ramdisk_image_id: Option<String>,
    kernel_cmdline: Option<String>,
    status: String,
    size_bytes: Option<i64>,
    sha256: Option<String>,
    signature: Option<String>,
    signing_key_id: Option<String>,
    signature_verified: i64,
    storage_key: Option<String>,
    created_at: i64,
}

impl TryFrom<ImageDb> for ImageRow {
    type Error = crate::DbError;
    fn try_from(r: ImageDb) -> Result<ImageRow> {
        Ok(ImageRow {
            id: uuid_col(&r.id)?,
            project_id: uuid_col(&r.project_id)?,
            name: r.name,
            disk_format: r.disk_format,
            ramdisk_image_id: opt_uuid(r.ramdisk_image_id)?,
            kernel_cmdline: r.kernel_cmdline,
            status: r.status,
            size_bytes: r.size_bytes,
            sha256: r.sha256,
            signature: r.signature,
            signing_key_id: r.signing_key_id,
            signature_verified: r.signature_verified != 0,
            storage_key: r.storage_key,
            created_at: from_ms(r.created_at),
        })
    }
}

const IMAGE_COLS: &str = "id, project_id, name, disk_format, ramdisk_image_id, kernel_cmdline, status, size_bytes, sha256, signature, signing_key_id, signature_verified, storage_key, created_at";

pub async fn insert_image(conn: &mut AnyConnection, i: &ImageRow) -> Result<()> {
    sqlx::query(
        "INSERT INTO images (id, project_id, name, disk_format, ramdisk_image_id, kernel_cmdline, status, signature, signing_key_id, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)",
    )
    .bind(i.id.to_string())
    .bind(i.project_id.to_string())
    .bind(&i.name)
    .bind(&i.disk_format)
    .bind(i.ramdisk_image_id.map(|r| r.to_string()))
    .bind(&i.kernel_cmdline)
    .bind(&i.status)
    .bind(&i.signature)
    .bind(&i.signing_key_id)
    .bind(to_ms(i.created_at))
    .execute(conn)
    .await
    .map_err(|e| conflict_on_unique(e, format!("an image named {:?} already exists in this project", i.name)))?;
    Ok(())
}

/// An image of `project` by id, or by name when `key` is not a UUID.
pub async fn find_image(conn: &mut AnyConnection, project: Uuid, key: &str) -> Result<Option<ImageRow>> {
    let row: Option<ImageDb> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {IMAGE_COLS} FROM images WHERE project_id = $1 AND (id = $2 OR name = $2)"
    )))
    .bind(project.to_string())
    .bind(key)
    .fetch_optional(conn)
    .await?;
    row.map(ImageRow::try_from).transpose()
}

pub async fn image_by_id(conn: &mut AnyConnection, id: Uuid) -> Result<Option<ImageRow>> {
    let row: Option<ImageDb> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {IMAGE_COLS} FROM images WHERE id = $1"
    )))
    .bind(id.to_string())
    .fetch_optional(conn)
    .await?;
    row.map(ImageRow::try_from).transpose()
}

pub async fn list_images(
    conn: &mut AnyConnection,
    project: Uuid,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<ImageRow>> {
    let rows: Vec<ImageDb> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {IMAGE_COLS} FROM images WHERE project_id = $1 AND name > $2 ORDER BY name LIMIT $3"
    )))
    .bind(project.to_string())
    .bind(after.unwrap_or(""))
    .bind(limit as i64)
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(ImageRow::try_from).collect()
}

/// Takes the upload slot: `queued` → `saving`. False when the image is not queued (another
/// upload runs, or the bytes are already there).
pub async fn begin_upload(conn: &mut AnyConnection, id: Uuid, now: OffsetDateTime) -> Result<bool> {
    let r = sqlx::query("UPDATE images SET status = 'saving', updated_at = $1 WHERE id = $2 AND status = 'queued'")
        .bind(to_ms(now))
        .bind(id.to_string())
        .execute(conn)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// An upload that ended without a verdict (I/O error, client gone): back to `queued`.
pub async fn abort_upload(conn: &mut AnyConnection, id: Uuid, now: OffsetDateTime) -> Result<()> {
    sqlx::query("UPDATE images SET status = 'queued', updated_at = $1 WHERE id = $2 AND status = 'saving'")
        .bind(to_ms(now))
        .bind(id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

pub struct UploadResult<'a> {
    pub status: &'a str,
    pub size_bytes: i64,
    pub sha256: &'a str,
    pub signature_verified: bool,
    pub storage_key: Option<&'a str>,
}

pub async fn finish_upload(conn: &mut AnyConnection, id: Uuid, u: UploadResult<'_>, now: OffsetDateTime) -> Result<()> {
    sqlx::query(
        "UPDATE images SET status = $1, size_bytes = $2, sha256 = $3, signature_verified = $4, storage_key = $5, updated_at = $6 WHERE id = $7",
    )
    .bind(u.status)
    .bind(u.size_bytes)
    .bind(u.sha256)
    .bind(i64::from(u.signature_verified))
    .bind(u.storage_key)
    .bind(to_ms(now))
    .bind(id.to_string())
    .execute(conn)
    .await?;
    Ok(())
}

/// Deletes an image no instance or kernel image uses.
pub async fn delete_image(conn: &mut AnyConnection, id: Uuid) -> Result<bool> {
    let users: i64 = sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM instances WHERE image_id = $1) + (SELECT COUNT(*) FROM images WHERE ramdisk_image_id = $1)",
    )
    .bind(id.to_string())
    .fetch_one(&mut *conn)
    .await?;
    if users > 0 {
        return Err(crate::DbError::Conflict(
            "the image is used by an instance or a kernel image; delete those first".into(),
        ));
    }
    let r = sqlx::query("DELETE FROM images WHERE id = $1")
        .bind(id.to_string())
        .execute(conn)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// Whether any blob other than the image `except` is stored under `storage_key`.
pub async fn storage_key_used(conn: &mut AnyConnection, storage_key: &str, except: Uuid) -> Result<bool> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM images WHERE storage_key = $1 AND id <> $2")
        .bind(storage_key)
        .bind(except.to_string())
        .fetch_one(conn)
        .await?;
    Ok(n > 0)
}

/// Whether `node` runs (or must run) an instance booting `image` (directly or as its initrd):
/// only then may its agent download the bytes.
pub async fn image_needed_on_node(conn: &mut AnyConnection, image: Uuid, node: Uuid) -> Result<bool> {
    // Booted by an instance there, or copied into a volume being created there.
    let n: i64 = sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM instances i JOIN images k ON k.id = i.image_id \
         WHERE i.node_id = $2 AND (i.image_id = $1 OR k.ramdisk_image_id = $1)) + \
         (SELECT COUNT(*) FROM volumes v WHERE v.node_id = $2 AND v.source_image = $1 AND v.status = 'creating')",
    )
    .bind(image.to_string())
    .bind(node.to_string())
    .fetch_one(conn)
    .await?;
    Ok(n > 0)
}

// ---- flavors ----

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlavorRow {
    pub id: Uuid,
    pub name: String,
    pub vcpus: i64,
    pub memory_mib: i64,
    pub root_disk_gib: i64,
}

type FlavorTuple = (String, String, i64, i64, i64);

fn flavor_row(r: FlavorTuple) -> Result<FlavorRow> {
    Ok(FlavorRow {
        id: uuid_col(&r.0)?,
        name: r.1,
        vcpus: r.2,
        memory_mib: r.3,
        root_disk_gib: r.4,
    })
}

pub async fn insert_flavor(conn: &mut AnyConnection, f: &FlavorRow, now: OffsetDateTime) -> Result<()> {
    sqlx::query(
        "INSERT INTO flavors (id, name, vcpus, memory_mib, root_disk_gib, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(f.id.to_string())
    .bind(&f.name)
    .bind(f.vcpus)
    .bind(f.memory_mib)
    .bind(f.root_disk_gib)
    .bind(to_ms(now))
    .execute(conn)
    .await
    .map_err(|e| conflict_on_unique(e, format!("a flavor named {:?} already exists", f.name)))?;
    Ok(())
}

pub async fn list_flavors(conn: &mut AnyConnection, after: Option<&str>, limit: u32) -> Result<Vec<FlavorRow>> {
    let rows: Vec<FlavorTuple> = sqlx::query_as(
        "SELECT id, name, vcpus, memory_mib, root_disk_gib FROM flavors WHERE name > $1 ORDER BY name LIMIT $2",
    )
    .bind(after.unwrap_or(""))
    .bind(limit as i64)
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(flavor_row).collect()
}

/// A flavor by id, or by name.
pub async fn find_flavor(conn: &mut AnyConnection, key: &str) -> Result<Option<FlavorRow>> {
    let row: Option<FlavorTuple> =
        sqlx::query_as("SELECT id, name, vcpus, memory_mib, root_disk_gib FROM flavors WHERE id = $1 OR name = $1")
            .bind(key)
            .fetch_optional(conn)
            .await?;
    row.map(flavor_row).transpose()
}

pub async fn delete_flavor(conn: &mut AnyConnection, id: Uuid) -> Result<bool> {
    let users: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM instances WHERE flavor_id = $1")
        .bind(id.to_string())
        .fetch_one(&mut *conn)
        .await?;
    if users > 0 {
        return Err(crate::DbError::Conflict("instances use this flavor".into()));
    }
    let r = sqlx::query("DELETE FROM flavors WHERE id = $1")
        .bind(id.to_string())
        .execute(conn)
        .await?;
    Ok(r.rows_affected() == 1)
}

// ---- instances ----

#[derive(Clone, PartialEq, Eq)]
pub struct InstanceRow {
    pub id: Uuid,
    pub project_id: Uuid,
    pub name: String,
    pub image_id: Uuid,
    pub flavor_id: Uuid,
    pub node_id: Option<Uuid>,
    pub status: String,
    pub desired_power: String,
    pub boot_seq: i64,
    pub failure_code: Option<String>,
    pub failure_message: Option<String>,
    pub password_hash: Option<String>,
    pub login_user: String,
    /// JSON list of OpenSSH key lines.
    pub ssh_keys: String,
    /// JSON object.
    pub tags: String,
    /// JSON lists of ids.
    pub security_groups: String,
    pub ports: String,
    pub networks: String,
    pub anti_affinity: bool,
    /// HA priority (0..=100) of a protected instance (`instance_ha`); `None`: not protected.
    pub ha_priority: Option<i64>,
    pub vm_uid: Option<i64>,
    pub launched_at: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
}

impl std::fmt::Debug for InstanceRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceRow")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("status", &self.status)
            .field("node_id", &self.node_id)
            .field("password_hash", &self.password_hash.as_ref().map(|_| "[redacted]"))
            .finish_non_exhaustive()
    }
}

#[derive(sqlx::FromRow)]
struct InstanceDb {
    id: String,
    project_id: String,
    name: String,
    image_id: String,
    flavor_id: String,
    node_id: Option<String>,
    status: String,
    desired_power: String,
    boot_seq: i64,
    failure_code: Option<String>,
    failure_message: Option<String>,
    password_hash: Option<String>,
    login_user: String,
    ssh_keys: String,
    tags: String,
    security_groups: String,
    ports: String,
    networks: String,
    anti_affinity: i64,
    ha_priority: Option<i64>,
    vm_uid: Option<i64>,
    launched_at: Option<i64>,
    created_at: i64,
}

impl TryFrom<InstanceDb> for InstanceRow {
    type Error = crate::DbError;
    fn try_from(r: InstanceDb) -> Result<InstanceRow> {
        Ok(InstanceRow {
            id: uuid_col(&r.id)?,
            project_id: uuid_col(&r.project_id)?,
            name: r.name,
            image_id: uuid_col(&r.image_id)?,
            flavor_id: uuid_col(&r.flavor_id)?,
            node_id: opt_uuid(r.node_id)?,
            status: r.status,
            desired_power: r.desired_power,
            boot_seq: r.boot_seq,
            failure_code: r.failure_code,
            failure_message: r.failure_message,
            password_hash: r.password_hash,
            login_user: r.login_user,
            ssh_keys: r.ssh_keys,
            tags: r.tags,
            security_groups: r.security_groups,
            ports: r.ports,
            networks: r.networks,
            anti_affinity: r.anti_affinity != 0,
            ha_priority: r.ha_priority,
            vm_uid: r.vm_uid,
            launched_at: r.launched_at.map(from_ms),
            created_at: from_ms(r.created_at),
        })
    }
}

const INSTANCE_COLS: &str = "id, project_id, name, image_id, flavor_id, node_id, status, desired_power, boot_seq, failure_code, failure_message, password_hash, login_user, ssh_keys, tags, security_groups, ports, networks, anti_affinity, \
    (SELECT h.priority FROM instance_ha h WHERE h.instance_id = instances.id) AS ha_priority, vm_uid, launched_at, created_at";

pub async fn insert_instance(conn: &mut AnyConnection, i: &InstanceRow) -> Result<()> {
    sqlx::query(
        "INSERT INTO instances (id, project_id, name, image_id, flavor_id, node_id, status, desired_power, boot_seq, password_hash, login_user, ssh_keys, tags, security_groups, ports, networks, anti_affinity, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $18)",
    )
    .bind(i.id.to_string())
    .bind(i.project_id.to_string())
    .bind(&i.name)
    .bind(i.image_id.to_string())
    .bind(i.flavor_id.to_string())
    .bind(i.node_id.map(|n| n.to_string()))
    .bind(&i.status)
    .bind(&i.desired_power)
    .bind(i.boot_seq)
    .bind(&i.password_hash)
    .bind(&i.login_user)
    .bind(&i.ssh_keys)
    .bind(&i.tags)
    .bind(&i.security_groups)
    .bind(&i.ports)
    .bind(&i.networks)
    .bind(i64::from(i.anti_affinity))
    .bind(to_ms(i.created_at))
    .execute(&mut *conn)
    .await
    .map_err(|e| conflict_on_unique(e, format!("an instance named {:?} already exists in this project", i.name)))?;
    if let Some(priority) = i.ha_priority {
        sqlx::query("INSERT INTO instance_ha (instance_id, priority, updated_at) VALUES ($1, $2, $3)")
            .bind(i.id.to_string())
            .bind(priority)
            .bind(to_ms(i.created_at))
            .execute(conn)
            .await?;
    }
    Ok(())
}

pub async fn instance(conn: &mut AnyConnection, id: Uuid) -> Result<Option<InstanceRow>> {
    let row: Option<InstanceDb> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {INSTANCE_COLS} FROM instances WHERE id = $1"
    )))
    .bind(id.to_string())
    .fetch_optional(conn)
    .await?;
    row.map(InstanceRow::try_from).transpose()
}

pub async fn list_instances(
    conn: &mut AnyConnection,
    project: Uuid,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<InstanceRow>> {
    let rows: Vec<InstanceDb> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {INSTANCE_COLS} FROM instances WHERE project_id = $1 AND name > $2 ORDER BY name LIMIT $3"
    )))
    .bind(project.to_string())
    .bind(after.unwrap_or(""))
    .bind(limit as i64)
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(InstanceRow::try_from).collect()
}

/// Every instance placed on `node` (including those being deleted).
pub async fn instances_on_node(conn: &mut AnyConnection, node: Uuid) -> Result<Vec<InstanceRow>> {
    let rows: Vec<InstanceDb> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {INSTANCE_COLS} FROM instances WHERE node_id = $1 ORDER BY id"
    )))
    .bind(node.to_string())
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(InstanceRow::try_from).collect()
}

/// `(node_id, security_groups JSON)` of every placed instance not being deleted: what the
/// scheduler spreads against.
pub async fn placements(conn: &mut AnyConnection) -> Result<Vec<(Uuid, String)>> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT node_id, security_groups FROM instances WHERE node_id IS NOT NULL AND status <> 'deleting'",
    )
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(|(n, g)| Ok((uuid_col(&n)?, g))).collect()
}

/// Sets what the user asked for; `bump_boot` makes the node boot again.
pub async fn set_desired_power(
    conn: &mut AnyConnection,
    id: Uuid,
    power: &str,
    bump_boot: bool,
    status: Option<&str>,
    now: OffsetDateTime,
) -> Result<()> {
    sqlx::query(
        "UPDATE instances SET desired_power = $1, boot_seq = boot_seq + $2, status = COALESCE($3, status), \
         failure_code = CASE WHEN $2 = 1 THEN NULL ELSE failure_code END, \
         failure_message = CASE WHEN $2 = 1 THEN NULL ELSE failure_message END, updated_at = $4 WHERE id = $5",
    )
    .bind(power)
    .bind(i64::from(bump_boot))
    .bind(status)
    .bind(to_ms(now))
    .bind(id.to_string())
    .execute(conn)
    .await?;
    Ok(())
}

/// What the node observed, applied to the row (only for the boot_seq it reports on).
pub struct Observed<'a> {
    pub status: &'a str,
    pub failure_code: Option<&'a str>,
    pub failure_message: Option<&'a str>,
    pub vm_uid: Option<i64>,
    pub launched_at: Option<OffsetDateTime>,
}

pub async fn record_observed(
    conn: &mut AnyConnection,
    id: Uuid,
    boot_seq: i64,
    o: Observed<'_>,
    now: OffsetDateTime,
) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE instances SET status = $1, failure_code = $2, failure_message = $3, vm_uid = COALESCE($4, vm_uid), \
         launched_at = COALESCE($5, launched_at), updated_at = $6 \
         WHERE id = $7 AND boot_seq = $8 AND status <> 'deleting' AND (status <> $1 OR COALESCE(failure_code, '') <> COALESCE($2, '') OR $4 IS NOT NULL)",
    )
    .bind(o.status)
    .bind(o.failure_code)
    .bind(o.failure_message)
    .bind(o.vm_uid)
    .bind(o.launched_at.map(to_ms))
    .bind(to_ms(now))
    .bind(id.to_string())
    .bind(boot_seq)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

pub async fn mark_deleting(conn: &mut AnyConnection, id: Uuid, now: OffsetDateTime) -> Result<()> {
    sqlx::query("UPDATE instances SET status = 'deleting', desired_power = 'stopped', updated_at = $1 WHERE id = $2")
        .bind(to_ms(now))
        .bind(id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn delete_instance(conn: &mut AnyConnection, id: Uuid) -> Result<()> {
    for table in [
        "alarms",
        "instance_metrics",
        "instance_events",
        "instance_consoles",
        "instance_ports",
        "instance_ha",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE instance_id = $1"
        )))
        .bind(id.to_string())
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query("DELETE FROM instances WHERE id = $1")
        .bind(id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

// ---- ports ----

/// Plugs `port` into `instance` as its NIC number `position`; `auto_delete`: the instance made
/// the port and deletes it with itself. A port already in an instance is a conflict.
pub async fn attach_port(
    conn: &mut AnyConnection,
    instance: Uuid,
    port: Uuid,
    position: i64,
    auto_delete: bool,
) -> Result<()> {
    sqlx::query("INSERT INTO instance_ports (port_id, instance_id, position, auto_delete) VALUES ($1, $2, $3, $4)")
        .bind(port.to_string())
        .bind(instance.to_string())
        .bind(position)
        .bind(i64::from(auto_delete))
        .execute(conn)
        .await
        .map_err(|e| conflict_on_unique(e, format!("port {port} is already plugged into an instance")))?;
    Ok(())
}

/// Records the instance's port ids (JSON list) for its view.
pub async fn set_instance_ports(conn: &mut AnyConnection, instance: Uuid, ports_json: &str) -> Result<()> {
    sqlx::query("UPDATE instances SET ports = $1 WHERE id = $2")
        .bind(ports_json)
        .bind(instance.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

/// The ports of an instance in NIC order, with their `auto_delete` flag.
pub async fn instance_ports(conn: &mut AnyConnection, instance: Uuid) -> Result<Vec<(Uuid, bool)>> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT port_id, auto_delete FROM instance_ports WHERE instance_id = $1 ORDER BY position")
            .bind(instance.to_string())
            .fetch_all(conn)
            .await?;
    rows.into_iter().map(|(p, a)| Ok((uuid_col(&p)?, a != 0))).collect()
}

/// The instance a port is plugged into, if any.
pub async fn port_instance(conn: &mut AnyConnection, port: Uuid) -> Result<Option<Uuid>> {
    let id: Option<String> = sqlx::query_scalar("SELECT instance_id FROM instance_ports WHERE port_id = $1")
        .bind(port.to_string())
        .fetch_optional(conn)
        .await?;
    id.as_deref().map(uuid_col).transpose()
}

/// Unplugs every port of an instance; returns them as [`instance_ports`] does.
pub async fn detach_ports(conn: &mut AnyConnection, instance: Uuid) -> Result<Vec<(Uuid, bool)>> {
    let ports = instance_ports(conn, instance).await?;
    sqlx::query("DELETE FROM instance_ports WHERE instance_id = $1")
        .bind(instance.to_string())
        .execute(conn)
        .await?;
    Ok(ports)
}

// ---- events, console, metrics ----

pub async fn insert_event(
    conn: &mut AnyConnection,
    instance: Uuid,
    at: OffsetDateTime,
    kind: &str,
    detail: &str,
) -> Result<()> {
    sqlx::query("INSERT INTO instance_events (id, instance_id, at, kind, detail) VALUES ($1, $2, $3, $4, $5)")
        .bind(Uuid::new_v4().to_string())
        .bind(instance.to_string())
        .bind(to_ms(at))
        .bind(kind)
        .bind(detail)
        .execute(conn)
        .await?;
    Ok(())
}

/// `(at, kind, detail JSON)`, oldest first, the last `limit`.
pub async fn events(
    conn: &mut AnyConnection,
    instance: Uuid,
    limit: u32,
) -> Result<Vec<(OffsetDateTime, String, String)>> {
    let mut rows: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT at, kind, detail FROM instance_events WHERE instance_id = $1 ORDER BY at DESC, id DESC LIMIT $2",
    )
    .bind(instance.to_string())
    .bind(limit as i64)
    .fetch_all(conn)
    .await?;
    rows.reverse();
    Ok(rows.into_iter().map(|(a, k, d)| (from_ms(a), k, d)).collect())
}

pub async fn set_console(conn: &mut AnyConnection, instance: Uuid, output: &str, now: OffsetDateTime) -> Result<()> {
    let r = sqlx::query("UPDATE instance_consoles SET output = $1, updated_at = $2 WHERE instance_id = $3")
        .bind(output)
        .bind(to_ms(now))
        .bind(instance.to_string())
        .execute(&mut *conn)
        .await?;
    if r.rows_affected() == 0 {
        sqlx::query("INSERT INTO instance_consoles (instance_id, output, updated_at) VALUES ($1, $2, $3)")
            .bind(instance.to_string())
            .bind(output)
            .bind(to_ms(now))
            .execute(conn)
            .await?;
    }
    Ok(())
}

pub async fn console(conn: &mut AnyConnection, instance: Uuid) -> Result<Option<(String, OffsetDateTime)>> {
    let row: Option<(String, i64)> =
        sqlx::query_as("SELECT output, updated_at FROM instance_consoles WHERE instance_id = $1")
            .bind(instance.to_string())
            .fetch_optional(conn)
            .await?;
    Ok(row.map(|(o, t)| (o, from_ms(t))))
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsRow {
    pub at_ms: i64,
    pub cpu_percent: f64,
    pub memory_bytes: i64,
    pub disk_read_bps: f64,
    pub disk_write_bps: f64,
    pub disk_write_iops: f64,
    pub net_rx_bps: f64,
    pub net_tx_bps: f64,
}

type MetricsTuple = (i64, f64, i64, f64, f64, f64, f64, f64);

pub async fn insert_metrics(conn: &mut AnyConnection, instance: Uuid, m: &MetricsRow) -> Result<()> {
    let r = sqlx::query(
        "INSERT INTO instance_metrics (instance_id, at, cpu_percent, memory_bytes, disk_read_bps, disk_write_bps, disk_write_iops, net_rx_bps, net_tx_bps) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(instance.to_string())
    .bind(m.at_ms)
    .bind(m.cpu_percent)
    .bind(m.memory_bytes)
    .bind(m.disk_read_bps)
    .bind(m.disk_write_bps)
    .bind(m.disk_write_iops)
    .bind(m.net_rx_bps)
    .bind(m.net_tx_bps)
    .execute(conn)
    .await;
    match r {
        // The same sample reported twice (a retried status) is kept once.
        Err(sqlx::Error::Database(d)) if d.is_unique_violation() => Ok(()),
        Err(e) => Err(e.into()),
        Ok(_) => Ok(()),
    }
}

/// Samples of `instance` at or after `since_ms`, oldest first, at most `limit` (the latest).
pub async fn metrics(conn: &mut AnyConnection, instance: Uuid, since_ms: i64, limit: u32) -> Result<Vec<MetricsRow>> {
    let mut rows: Vec<MetricsTuple> = sqlx::query_as(
        "SELECT at, cpu_percent, memory_bytes, disk_read_bps, disk_write_bps, disk_write_iops, net_rx_bps, net_tx_bps \
         FROM instance_metrics WHERE instance_id = $1 AND at >= $2 ORDER BY at DESC LIMIT $3",
    )
    .bind(instance.to_string())
    .bind(since_ms)
    .bind(limit as i64)
    .fetch_all(conn)
    .await?;
    rows.reverse();
    Ok(rows
        .into_iter()
        .map(|r| MetricsRow {
            at_ms: r.0,
            cpu_percent: r.1,
            memory_bytes: r.2,
            disk_read_bps: r.3,
            disk_write_bps: r.4,
            disk_write_iops: r.5,
            net_rx_bps: r.6,
            net_tx_bps: r.7,
        })
        .collect())
}

/// The newest sample of every instance taken at or after `since_ms`, with its project: what an
/// operator's Prometheus scrape shows.
pub async fn latest_metrics(conn: &mut AnyConnection, since_ms: i64) -> Result<Vec<(Uuid, Uuid, MetricsRow)>> {
    type Row = (String, String, i64, f64, i64, f64, f64, f64, f64, f64);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT m.instance_id, i.project_id, m.at, m.cpu_percent, m.memory_bytes, m.disk_read_bps, m.disk_write_bps, \
         m.disk_write_iops, m.net_rx_bps, m.net_tx_bps \
         FROM instance_metrics m JOIN instances i ON i.id = m.instance_id \
         WHERE m.at >= $1 AND m.at = (SELECT MAX(at) FROM instance_metrics n WHERE n.instance_id = m.instance_id) \
         ORDER BY m.instance_id",
    )
    .bind(since_ms)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|r| {
            let id = |s: &str| Uuid::parse_str(s).map_err(|_| crate::DbError::Corrupt(format!("metrics row id {s:?}")));
            Ok((
                id(&r.0)?,
                id(&r.1)?,
                MetricsRow {
                    at_ms: r.2,
                    cpu_percent: r.3,
                    memory_bytes: r.4,
                    disk_read_bps: r.5,
                    disk_write_bps: r.6,
                    disk_write_iops: r.7,
                    net_rx_bps: r.8,
                    net_tx_bps: r.9,
                },
            ))
        })
        .collect()
}

pub async fn prune_metrics(conn: &mut AnyConnection, before_ms: i64) -> Result<u64> {
    Ok(sqlx::query("DELETE FROM instance_metrics WHERE at < $1")
        .bind(before_ms)
        .execute(conn)
        .await?
        .rows_affected())
}

// ---- node capability ----

pub async fn set_node_compute(
    conn: &mut AnyConnection,
    node: Uuid,
    available: bool,
    accel: Option<&str>,
    reason: &str,
    now: OffsetDateTime,
) -> Result<()> {
    let r = sqlx::query(
        "UPDATE node_compute SET available = $1, accel = $2, reason = $3, updated_at = $4 WHERE node_id = $5",
    )
    .bind(i64::from(available))
    .bind(accel)
    .bind(reason)
    .bind(to_ms(now))
    .bind(node.to_string())
    .execute(&mut *conn)
    .await?;
    if r.rows_affected() == 0 {
        sqlx::query(
            "INSERT INTO node_compute (node_id, available, accel, reason, updated_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(node.to_string())
        .bind(i64::from(available))
        .bind(accel)
        .bind(reason)
        .bind(to_ms(now))
        .execute(conn)
        .await?;
    }
    Ok(())
}

/// Ready nodes whose agent says it can run VMs: `(id, name)`.
pub async fn schedulable_nodes(conn: &mut AnyConnection) -> Result<Vec<(Uuid, String)>> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT n.id, n.name FROM nodes n JOIN node_compute c ON c.node_id = n.id \
         WHERE n.state = 'ready' AND c.available = 1 ORDER BY n.name",
    )
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(|(i, n)| Ok((uuid_col(&i)?, n))).collect()
}

// ---- alarms ----

#[derive(Debug, Clone, PartialEq)]
pub struct AlarmRow {
    pub id: Uuid,
    pub project_id: Uuid,
    pub name: String,
    pub instance_id: Uuid,
    pub metric: String,
    pub comparison: String,
    pub threshold: f64,
    pub period_s: i64,
    pub periods: i64,
    pub datapoints: i64,
    pub windows: String,
    pub webhooks: String,
    pub state: String,
    pub state_since: OffsetDateTime,
    pub last_evaluated_at: Option<i64>,
    pub created_at: OffsetDateTime,
}

#[derive(sqlx::FromRow)]
struct AlarmDb {
    id: String,
    project_id: String,
    name: String,
    instance_id: String,
    metric: String,
    comparison: String,
    threshold: f64,
    period_s: i64,
    periods: i64,
    datapoints: i64,
    windows: String,
    webhooks: String,
    state: String,
    state_since: i64,
    last_evaluated_at: Option<i64>,
    created_at: i64,
}

impl TryFrom<AlarmDb> for AlarmRow {
    type Error = crate::DbError;
    fn try_from(r: AlarmDb) -> Result<AlarmRow> {
        Ok(AlarmRow {
            id: uuid_col(&r.id)?,
            project_id: uuid_col(&r.project_id)?,
            name: r.name,
            instance_id: uuid_col(&r.instance_id)?,
            metric: r.metric,
            comparison: r.comparison,
            threshold: r.threshold,
            period_s: r.period_s,
            periods: r.periods,
            datapoints: r.datapoints,
            windows: r.windows,
            webhooks: r.webhooks,
            state: r.state,
            state_since: from_ms(r.state_since),
            last_evaluated_at: r.last_evaluated_at,
            created_at: from_ms(r.created_at),
        })
    }
}

const ALARM_COLS: &str = "id, project_id, name, instance_id, metric, comparison, threshold, period_s, periods, datapoints, windows, webhooks, state, state_since, last_evaluated_at, created_at";

pub async fn insert_alarm(conn: &mut AnyConnection, a: &AlarmRow) -> Result<()> {
    sqlx::query(
        "INSERT INTO alarms (id, project_id, name, instance_id, metric, comparison, threshold, period_s, periods, datapoints, windows, webhooks, state, state_since, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
    )
    .bind(a.id.to_string())
    .bind(a.project_id.to_string())
    .bind(&a.name)
    .bind(a.instance_id.to_string())
    .bind(&a.metric)
    .bind(&a.comparison)
    .bind(a.threshold)
    .bind(a.period_s)
    .bind(a.periods)
    .bind(a.datapoints)
    .bind(&a.windows)
    .bind(&a.webhooks)
    .bind(&a.state)
    .bind(to_ms(a.state_since))
    .bind(to_ms(a.created_at))
    .execute(conn)
    .await
    .map_err(|e| conflict_on_unique(e, format!("an alarm named {:?} already exists in this project", a.name)))?;
    Ok(())
}

pub async fn alarm(conn: &mut AnyConnection, id: Uuid) -> Result<Option<AlarmRow>> {
    let row: Option<AlarmDb> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ALARM_COLS} FROM alarms WHERE id = $1"
    )))
    .bind(id.to_string())
    .fetch_optional(conn)
    .await?;
    row.map(AlarmRow::try_from).transpose()
}

pub async fn list_alarms(
    conn: &mut AnyConnection,
    project: Uuid,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<AlarmRow>> {
    let rows: Vec<AlarmDb> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ALARM_COLS} FROM alarms WHERE project_id = $1 AND name > $2 ORDER BY name LIMIT $3"
    )))
    .bind(project.to_string())
    .bind(after.unwrap_or(""))
    .bind(limit as i64)
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(AlarmRow::try_from).collect()
}

pub async fn enabled_alarms(conn: &mut AnyConnection) -> Result<Vec<AlarmRow>> {
    let rows: Vec<AlarmDb> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ALARM_COLS} FROM alarms WHERE enabled = 1 ORDER BY id"
    )))
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(AlarmRow::try_from).collect()
}

pub async fn delete_alarm(conn: &mut AnyConnection, id: Uuid) -> Result<bool> {
    let r = sqlx::query("DELETE FROM alarms WHERE id = $1")
        .bind(id.to_string())
        .execute(conn)
        .await?;
    Ok(r.rows_affected() == 1)
}

pub async fn mark_evaluated(conn: &mut AnyConnection, id: Uuid, at_ms: i64) -> Result<()> {
    sqlx::query("UPDATE alarms SET last_evaluated_at = $1 WHERE id = $2")
        .bind(at_ms)
        .bind(id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

/// Moves the alarm from `from` to `to` (only if it is still in `from`) and records why.
pub async fn transition_alarm(
    conn: &mut AnyConnection,
    id: Uuid,
    from: &str,
    to: &str,
    reason: &str,
    at: OffsetDateTime,
) -> Result<bool> {
    let r = sqlx::query("UPDATE alarms SET state = $1, state_since = $2 WHERE id = $3 AND state = $4")
        .bind(to)
        .bind(to_ms(at))
        .bind(id.to_string())
        .bind(from)
        .execute(&mut *conn)
        .await?;
    if r.rows_affected() != 1 {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO alarm_transitions (id, alarm_id, at, from_state, to_state, reason) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(Uuid::new_v4().to_string())
    .bind(id.to_string())
    .bind(to_ms(at))
    .bind(from)
    .bind(to)
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(true)
}

/// `(at, from, to, reason)`, oldest first.
pub async fn alarm_transitions(
    conn: &mut AnyConnection,
    id: Uuid,
) -> Result<Vec<(OffsetDateTime, String, String, String)>> {
    let rows: Vec<(i64, String, String, String)> = sqlx::query_as(
        "SELECT at, from_state, to_state, reason FROM alarm_transitions WHERE alarm_id = $1 ORDER BY at, id",
    )
    .bind(id.to_string())
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|(a, f, t, r)| (from_ms(a), f, t, r)).collect())
}
