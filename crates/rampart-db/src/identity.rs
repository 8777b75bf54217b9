//! Domains, projects, users (with their security state), role assignments and API tokens.

use rampart_common::time::{from_ms, to_ms};
use sqlx::AnyConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{DbError, Result, uuid_col};

fn json_list(s: &str) -> Vec<String> {
    serde_json::from_str(s).unwrap_or_default()
}

fn to_json(v: &[String]) -> String {
    serde_json::to_string(v).expect("a list of strings serialises")
}

const COMPLIANCE_KEY: &str = "security_compliance";

/// The stored security-compliance policy, or the defaults when none was ever set.
pub async fn load_compliance(conn: &mut AnyConnection) -> Result<rampart_api::SecurityCompliance> {
    Ok(match crate::meta::get(conn, COMPLIANCE_KEY).await? {
        Some(json) => serde_json::from_str(&json)
            .map_err(|e| DbError::Corrupt(format!("the stored security-compliance policy does not parse: {e}")))?,
        None => rampart_api::SecurityCompliance::default(),
    })
}

/// Replaces the stored security-compliance policy.
pub async fn store_compliance(conn: &mut AnyConnection, p: &rampart_api::SecurityCompliance) -> Result<()> {
    let json = serde_json::to_string(p)
        .map_err(|e| DbError::Corrupt(format!("the security-compliance policy does not encode: {e}")))?;
    crate::meta::set(conn, COMPLIANCE_KEY, &json).await
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    pub enabled: bool,
    pub allowed_source_cidrs: Vec<String>,
}

#[derive(sqlx::FromRow)]
struct DomainRow {
    id: String,
    name: String,
    description: String,
    enabled: i64,
    allowed_source_cidrs: String,
}

impl TryFrom<DomainRow> for Domain {
    type Error = DbError;
    fn try_from(r: DomainRow) -> Result<Domain> {
        Ok(Domain {
            id: uuid_col(&r.id)?,
            name: r.name,
            description: r.description,
            enabled: r.enabled != 0,
            allowed_source_cidrs: json_list(&r.allowed_source_cidrs),
        })
    }
}

pub async fn insert_domain(conn: &mut AnyConnection, name: &str, now: OffsetDateTime) -> Result<Domain> {
    create_domain(conn, name, "", true, &[], now).await
}

pub async fn create_domain(
    conn: &mut AnyConnection,
    name: &str,
    description: &str,
    enabled: bool,
    cidrs: &[String],
    now: OffsetDateTime,
) -> Result<Domain> {
    let id = Uuid::new_v4();
    sqlx::query("INSERT INTO domains (id, name, description, enabled, allowed_source_cidrs, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(id.to_string())
        .bind(name)
        .bind(description)
        .bind(i64::from(enabled))
        .bind(to_json(cidrs))
        .bind(to_ms(now))
        .execute(conn)
        .await
        .map_err(|e| conflict_on_unique(e, format!("a domain named {name:?} already exists")))?;
    Ok(Domain {
        id,
        name: name.into(),
        description: description.into(),
        enabled,
        allowed_source_cidrs: cidrs.to_vec(),
    })
}

/// Finds a domain by name, or by id when `key` is a UUID.
pub async fn find_domain(conn: &mut AnyConnection, key: &str) -> Result<Option<Domain>> {
    let row: Option<DomainRow> = sqlx::query_as(
        "SELECT id, name, description, enabled, allowed_source_cidrs FROM domains WHERE name = $1 OR id = $1",
    )
    .bind(key)
    .fetch_optional(conn)
    .await?;
    row.map(Domain::try_from).transpose()
}

pub async fn list_domains(conn: &mut AnyConnection, after: Option<&str>, limit: u32) -> Result<Vec<Domain>> {
    let rows: Vec<DomainRow> = sqlx::query_as(
        "SELECT id, name, description, enabled, allowed_source_cidrs FROM domains WHERE name > $1 ORDER BY name LIMIT $2",
    )
    .bind(after.unwrap_or(""))
    .bind(limit as i64)
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(Domain::try_from).collect()
}

pub async fn update_domain(conn: &mut AnyConnection, d: &Domain) -> Result<()> {
    sqlx::query("UPDATE domains SET description = $1, enabled = $2, allowed_source_cidrs = $3 WHERE id = $4")
        .bind(&d.description)
        .bind(i64::from(d.enabled))
        .bind(to_json(&d.allowed_source_cidrs))
        .bind(d.id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

/// Deletes an empty domain; a domain that still has projects, users or groups is a conflict.
pub async fn delete_domain(conn: &mut AnyConnection, id: Uuid) -> Result<bool> {
    let in_use: i64 = sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM projects WHERE domain_id = $1) + (SELECT COUNT(*) FROM users WHERE domain_id = $1) + (SELECT COUNT(*) FROM user_groups WHERE domain_id = $1)",
    )
    .bind(id.to_string())
    .fetch_one(&mut *conn)
    .await?;
    if in_use > 0 {
        return Err(DbError::Conflict(
            "the domain still has projects, users or groups; delete them first".into(),
        ));
    }
    let r = sqlx::query("DELETE FROM domains WHERE id = $1")
        .bind(id.to_string())
        .execute(conn)
        .await?;
    Ok(r.rows_affected() == 1)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    pub id: Uuid,
    pub domain_id: Uuid,
    pub name: String,
    pub description: String,
    pub enabled: bool,
}

#[derive(sqlx::FromRow)]
struct ProjectRow {
    id: String,
    domain_id: String,
    name: String,
    description: String,
    enabled: i64,
}

impl TryFrom<ProjectRow> for Project {
    type Error = DbError;
    fn try_from(r: ProjectRow) -> Result<Project> {
        Ok(Project {
            id: uuid_col(&r.id)?,
            domain_id: uuid_col(&r.domain_id)?,
            name: r.name,
            description: r.description,
            enabled: r.enabled != 0,
        })
    }
}

pub async fn insert_project(
    conn: &mut AnyConnection,
    domain_id: Uuid,
    name: &str,
    now: OffsetDateTime,
) -> Result<Project> {
    create_project(conn, domain_id, name, "", true, now).await
}

pub async fn create_project(
    conn: &mut AnyConnection,
    domain_id: Uuid,
    name: &str,
    description: &str,
    enabled: bool,
    now: OffsetDateTime,
) -> Result<Project> {
    let id = Uuid::new_v4();
    // One transaction with the intent marker: after a crash the trail can say what was made.
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    sqlx::query(
        "INSERT INTO projects (id, domain_id, name, description, enabled, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id.to_string())
    .bind(domain_id.to_string())
    .bind(name)
    .bind(description)
    .bind(i64::from(enabled))
    .bind(to_ms(now))
    .execute(&mut *tx)
    .await
    .map_err(|e| conflict_on_unique(e, format!("a project named {name:?} already exists in this domain")))?;
    crate::intents::created(&mut tx, &id.to_string()).await?;
    tx.commit().await?;
    Ok(Project {
        id,
        domain_id,
        name: name.into(),
        description: description.into(),
        enabled,
    })
}

/// Finds a project of `domain_id` by name, or by id when `key` is a UUID.
pub async fn find_project(conn: &mut AnyConnection, domain_id: Uuid, key: &str) -> Result<Option<Project>> {
    let row: Option<ProjectRow> = sqlx::query_as(
        "SELECT id, domain_id, name, description, enabled FROM projects WHERE domain_id = $1 AND (name = $2 OR id = $2)",
    )
    .bind(domain_id.to_string())
    .bind(key)
    .fetch_optional(conn)
    .await?;
    row.map(Project::try_from).transpose()
}

pub async fn project_by_id(conn: &mut AnyConnection, id: Uuid) -> Result<Option<Project>> {
    let row: Option<ProjectRow> =
        sqlx::query_as("SELECT id, domain_id, name, description, enabled FROM projects WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(conn)
            .await?;
    row.map(Project::try_from).transpose()
}

/// Projects ordered by id, after `after`; only those of `domains` when given.
pub async fn list_projects(
    conn: &mut AnyConnection,
    domain: Option<Uuid>,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<Project>> {
    let rows: Vec<ProjectRow> = sqlx::query_as(
        "SELECT id, domain_id, name, description, enabled FROM projects WHERE id > $1 AND ($2 = '' OR domain_id = $2) ORDER BY id LIMIT $3",
    )
    .bind(after.unwrap_or(""))
    .bind(domain.map(|d| d.to_string()).unwrap_or_default())
    .bind(limit as i64)
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(Project::try_from).collect()
}

pub async fn update_project(conn: &mut AnyConnection, p: &Project) -> Result<()> {
    sqlx::query("UPDATE projects SET description = $1, enabled = $2 WHERE id = $3")
        .bind(&p.description)
        .bind(i64::from(p.enabled))
        .bind(p.id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn delete_project(conn: &mut AnyConnection, id: Uuid) -> Result<bool> {
    sqlx::query("DELETE FROM role_assignments WHERE scope_kind = 'project' AND scope_id = $1")
        .bind(id.to_string())
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM group_role_assignments WHERE scope_kind = 'project' AND scope_id = $1")
        .bind(id.to_string())
        .execute(&mut *conn)
        .await?;
    let r = sqlx::query("DELETE FROM projects WHERE id = $1")
        .bind(id.to_string())
        .execute(conn)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(d) if d.is_foreign_key_violation() => {
                DbError::Conflict("the project still has resources (networks, ...); delete them first".into())
            }
            _ => DbError::Sqlx(e),
        })?;
    Ok(r.rows_affected() == 1)
}

/// A user row. `password_hash` is a PHC string (argon2id) and the TOTP fields are sealed with
/// the credential key; never log them.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct User {
    pub id: Uuid,
    pub domain_id: Uuid,
    pub name: String,
    pub email: Option<String>,
    pub description: String,
    pub enabled: bool,
    pub password_hash: Option<String>,
    pub password_changed_at: Option<OffsetDateTime>,
    pub password_change_required: bool,
    pub valid_from: Option<OffsetDateTime>,
    pub valid_until: Option<OffsetDateTime>,
    pub allowed_source_cidrs: Vec<String>,
    pub failed_attempts: i64,
    pub locked_until: Option<OffsetDateTime>,
    pub last_login_at: Option<OffsetDateTime>,
    pub totp_secret: Option<String>,
    pub totp_pending_secret: Option<String>,
    pub totp_last_counter: i64,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl User {
    pub fn mfa_enrolled(&self) -> bool {
        self.totp_secret.is_some()
    }
}

macro_rules! user_columns {
    () => {
        "id, domain_id, name, email, description, enabled, password_hash, password_changed_at, password_change_required, valid_from, valid_until, allowed_source_cidrs, failed_attempts, locked_until, last_login_at, totp_secret, totp_pending_secret, totp_last_counter"
    };
}

#[derive(sqlx::FromRow)]
struct UserRow {
    id: String,
    domain_id: String,
    name: String,
    email: Option<String>,
    description: String,
    enabled: i64,
    password_hash: Option<String>,
    password_changed_at: Option<i64>,
    password_change_required: i64,
    valid_from: Option<i64>,
    valid_until: Option<i64>,
    allowed_source_cidrs: String,
    failed_attempts: i64,
    locked_until: Option<i64>,
    last_login_at: Option<i64>,
    totp_secret: Option<String>,
    totp_pending_secret: Option<String>,
    totp_last_counter: i64,
}

impl TryFrom<UserRow> for User {
    type Error = DbError;
    fn try_from(r: UserRow) -> Result<User> {
        Ok(User {
            id: uuid_col(&r.id)?,
            domain_id: uuid_col(&r.domain_id)?,
            name: r.name,
            email: r.email,
            description: r.description,
            enabled: r.enabled != 0,
            password_hash: r.password_hash,
            password_changed_at: r.password_changed_at.map(from_ms),
            password_change_required: r.password_change_required != 0,
            valid_from: r.valid_from.map(from_ms),
            valid_until: r.valid_until.map(from_ms),
            allowed_source_cidrs: json_list(&r.allowed_source_cidrs),
            failed_attempts: r.failed_attempts,
            locked_until: r.locked_until.map(from_ms),
            last_login_at: r.last_login_at.map(from_ms),
            totp_secret: r.totp_secret,
            totp_pending_secret: r.totp_pending_secret,
            totp_last_counter: r.totp_last_counter,
        })
    }
}

pub struct NewUser<'a> {
    pub domain_id: Uuid,
    pub name: &'a str,
    pub password_hash: Option<&'a str>,
    pub password_change_required: bool,
}

pub async fn insert_user(conn: &mut AnyConnection, u: NewUser<'_>, now: OffsetDateTime) -> Result<User> {
    let user = User {
        id: Uuid::new_v4(),
        domain_id: u.domain_id,
        name: u.name.into(),
        enabled: true,
        password_hash: u.password_hash.map(str::to_string),
        password_changed_at: u.password_hash.map(|_| now),
        password_change_required: u.password_change_required,
        ..Default::default()
    };
    create_user(conn, &user, now).await?;
    Ok(user)
}

/// Inserts a full user row (its password, if any, also goes to the history).
pub async fn create_user(conn: &mut AnyConnection, u: &User, now: OffsetDateTime) -> Result<()> {
    sqlx::query(
        "INSERT INTO users (id, domain_id, name, email, description, enabled, password_hash, password_changed_at, password_change_required, valid_from, valid_until, allowed_source_cidrs, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(u.id.to_string())
    .bind(u.domain_id.to_string())
    .bind(&u.name)
    .bind(u.email.as_deref())
    .bind(&u.description)
    .bind(i64::from(u.enabled))
    .bind(u.password_hash.as_deref())
    .bind(u.password_changed_at.map(to_ms))
    .bind(i64::from(u.password_change_required))
    .bind(u.valid_from.map(to_ms))
    .bind(u.valid_until.map(to_ms))
    .bind(to_json(&u.allowed_source_cidrs))
    .bind(to_ms(now))
    .execute(&mut *conn)
    .await
    .map_err(|e| conflict_on_unique(e, format!("a user named {:?} already exists in this domain", u.name)))?;
    if let Some(h) = &u.password_hash {
        add_password_history(conn, u.id, h, now).await?;
    }
    Ok(())
}

pub async fn find_user(conn: &mut AnyConnection, domain_id: Uuid, name: &str) -> Result<Option<User>> {
    let row: Option<UserRow> = sqlx::query_as(concat!(
        "SELECT ",
        user_columns!(),
        " FROM users WHERE domain_id = $1 AND name = $2"
    ))
    .bind(domain_id.to_string())
    .bind(name)
    .fetch_optional(conn)
    .await?;
    row.map(User::try_from).transpose()
}

pub async fn user_by_id(conn: &mut AnyConnection, id: Uuid) -> Result<Option<User>> {
    let row: Option<UserRow> = sqlx::query_as(concat!("SELECT ", user_columns!(), " FROM users WHERE id = $1"))
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?;
    row.map(User::try_from).transpose()
}

/// Users ordered by id, after `after`; only those of `domain` when given.
pub async fn list_users(
    conn: &mut AnyConnection,
    domain: Option<Uuid>,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<User>> {
    let rows: Vec<UserRow> = sqlx::query_as(concat!(
        "SELECT ",
        user_columns!(),
        " FROM users WHERE id > $1 AND ($2 = '' OR domain_id = $2) ORDER BY id LIMIT $3"
    ))
    .bind(after.unwrap_or(""))
    .bind(domain.map(|d| d.to_string()).unwrap_or_default())
    .bind(limit as i64)
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(User::try_from).collect()
}

/// Writes the profile fields (not the password or the security state).
pub async fn update_user_profile(conn: &mut AnyConnection, u: &User) -> Result<()> {
    sqlx::query(
        "UPDATE users SET email = $1, description = $2, enabled = $3, valid_from = $4, valid_until = $5, allowed_source_cidrs = $6, password_change_required = $7 WHERE id = $8",
    )
    .bind(u.email.as_deref())
    .bind(&u.description)
    .bind(i64::from(u.enabled))
    .bind(u.valid_from.map(to_ms))
    .bind(u.valid_until.map(to_ms))
    .bind(to_json(&u.allowed_source_cidrs))
    .bind(i64::from(u.password_change_required))
    .bind(u.id.to_string())
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn delete_user(conn: &mut AnyConnection, id: Uuid) -> Result<bool> {
    let r = sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(id.to_string())
        .execute(conn)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// Sets a new password and records it in the history.
pub async fn set_password(
    conn: &mut AnyConnection,
    user_id: Uuid,
    hash: &str,
    change_required: bool,
    now: OffsetDateTime,
) -> Result<()> {
    sqlx::query(
        "UPDATE users SET password_hash = $1, password_changed_at = $2, password_change_required = $3 WHERE id = $4",
    )
    .bind(hash)
    .bind(to_ms(now))
    .bind(i64::from(change_required))
    .bind(user_id.to_string())
    .execute(&mut *conn)
    .await?;
    add_password_history(conn, user_id, hash, now).await
}

async fn add_password_history(conn: &mut AnyConnection, user_id: Uuid, hash: &str, now: OffsetDateTime) -> Result<()> {
    sqlx::query("INSERT INTO password_history (id, user_id, password_hash, created_at) VALUES ($1, $2, $3, $4)")
        .bind(Uuid::new_v4().to_string())
        .bind(user_id.to_string())
        .bind(hash)
        .bind(to_ms(now))
        .execute(&mut *conn)
        .await?;
    // Keep at most 24 (the largest `unique_last_password_count`).
    sqlx::query(
        "DELETE FROM password_history WHERE user_id = $1 AND id NOT IN (SELECT id FROM password_history WHERE user_id = $1 ORDER BY created_at DESC, id DESC LIMIT 24)",
    )
    .bind(user_id.to_string())
    .execute(conn)
    .await?;
    Ok(())
}

/// The last `n` password hashes of a user, newest first.
pub async fn password_history(conn: &mut AnyConnection, user_id: Uuid, n: u32) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT password_hash FROM password_history WHERE user_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2",
    )
    .bind(user_id.to_string())
    .bind(n as i64)
    .fetch_all(conn)
    .await?)
}

/// Counts a failed authentication that was not reserved first (a wrong code at second-factor
/// enrolment); reaching `threshold` (when non-zero) locks the account until `lock_until`.
/// Returns whether this failure locked it.
pub async fn record_failure(
    conn: &mut AnyConnection,
    user_id: Uuid,
    threshold: u32,
    lock_until: OffsetDateTime,
) -> Result<bool> {
    let locked: Option<i64> = sqlx::query_scalar(
        "UPDATE users SET \
           locked_until = CASE WHEN $1 > 0 AND failed_attempts + 1 >= $1 THEN $2 ELSE locked_until END, \
           failed_attempts = CASE WHEN $1 > 0 AND failed_attempts + 1 >= $1 THEN 0 ELSE failed_attempts + 1 END \
         WHERE id = $3 RETURNING locked_until",
    )
    .bind(threshold as i64)
    .bind(to_ms(lock_until))
    .bind(user_id.to_string())
    .fetch_optional(conn)
    .await?
    .flatten();
    Ok(locked == Some(to_ms(lock_until)))
}

/// Reserves one authentication attempt before its secret is checked (spec 13.2-6): the
/// reservation counts as a failure until [`finish_attempt`] says otherwise, so a burst of
/// parallel guesses can never evaluate more than `threshold` secrets. Refused (false) while
/// the account is locked or every remaining attempt is already in flight; an expired lock
/// starts a fresh count. With `threshold` 0 (no lockout) every attempt is granted.
pub async fn reserve_attempt(
    conn: &mut AnyConnection,
    user_id: Uuid,
    threshold: u32,
    now: OffsetDateTime,
) -> Result<bool> {
    let now = to_ms(now);
    let r = sqlx::query(
        "UPDATE users SET \
           failed_attempts = CASE WHEN locked_until IS NOT NULL AND locked_until <= $1 THEN 1 ELSE failed_attempts + 1 END, \
           locked_until = CASE WHEN locked_until IS NOT NULL AND locked_until <= $1 THEN NULL ELSE locked_until END \
         WHERE id = $2 AND ($3 = 0 OR ((locked_until IS NULL OR locked_until <= $1) \
           AND (failed_attempts < $3 OR locked_until IS NOT NULL)))",
    )
    .bind(now)
    .bind(user_id.to_string())
    .bind(threshold as i64)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Ends a reserved attempt that failed: once the reserved count reaches `threshold` the account
/// locks until `lock_until` (every later attempt is refused, including those still in
/// flight). Returns whether this failure locked it.
pub async fn fail_attempt(
    conn: &mut AnyConnection,
    user_id: Uuid,
    threshold: u32,
    lock_until: OffsetDateTime,
) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE users SET locked_until = $1 \
         WHERE id = $2 AND $3 > 0 AND failed_attempts >= $3 AND locked_until IS NULL",
    )
    .bind(to_ms(lock_until))
    .bind(user_id.to_string())
    .bind(threshold as i64)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Ends a reserved attempt that succeeded: the failure count restarts, unless a parallel
/// failure locked the account meanwhile, in which case the success is refused (false).
pub async fn succeed_attempt(conn: &mut AnyConnection, user_id: Uuid, now: OffsetDateTime) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE users SET failed_attempts = 0 WHERE id = $1 AND (locked_until IS NULL OR locked_until <= $2)",
    )
    .bind(user_id.to_string())
    .bind(to_ms(now))
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Ends a reserved attempt that proved nothing either way (the password was right but the
/// account is disabled, or a second factor is still to come): it no longer counts.
pub async fn release_attempt(conn: &mut AnyConnection, user_id: Uuid) -> Result<()> {
    sqlx::query(
        "UPDATE users SET failed_attempts = failed_attempts - 1 WHERE id = $1 AND failed_attempts > 0 AND locked_until IS NULL",
    )
    .bind(user_id.to_string())
    .execute(conn)
    .await?;
    Ok(())
}

/// A successful authentication: the failure count restarts.
pub async fn record_success(conn: &mut AnyConnection, user_id: Uuid, now: OffsetDateTime) -> Result<()> {
    sqlx::query("UPDATE users SET failed_attempts = 0, last_login_at = $1 WHERE id = $2")
        .bind(to_ms(now))
        .bind(user_id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn unlock(conn: &mut AnyConnection, user_id: Uuid) -> Result<()> {
    sqlx::query("UPDATE users SET failed_attempts = 0, locked_until = NULL WHERE id = $1")
        .bind(user_id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn set_totp_pending(conn: &mut AnyConnection, user_id: Uuid, sealed: Option<&str>) -> Result<()> {
    sqlx::query("UPDATE users SET totp_pending_secret = $1 WHERE id = $2")
        .bind(sealed)
        .bind(user_id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

/// Makes the pending TOTP secret the enrolled one, recording the step that confirmed it.
pub async fn confirm_totp(conn: &mut AnyConnection, user_id: Uuid, step: i64) -> Result<()> {
    sqlx::query(
        "UPDATE users SET totp_secret = totp_pending_secret, totp_pending_secret = NULL, totp_last_counter = $1 WHERE id = $2 AND totp_pending_secret IS NOT NULL",
    )
    .bind(step)
    .bind(user_id.to_string())
    .execute(conn)
    .await?;
    Ok(())
}

/// Consumes a TOTP time step; false when it (or a later one) was already used: a replay.
pub async fn use_totp_step(conn: &mut AnyConnection, user_id: Uuid, step: i64) -> Result<bool> {
    let r = sqlx::query("UPDATE users SET totp_last_counter = $1 WHERE id = $2 AND totp_last_counter < $1")
        .bind(step)
        .bind(user_id.to_string())
        .execute(conn)
        .await?;
    Ok(r.rows_affected() == 1)
}

pub async fn remove_totp(conn: &mut AnyConnection, user_id: Uuid) -> Result<()> {
    sqlx::query("UPDATE users SET totp_secret = NULL, totp_pending_secret = NULL WHERE id = $1")
        .bind(user_id.to_string())
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
        .bind(user_id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

/// Replaces a user's recovery codes (stored as SHA-256 of the normalised code).
pub async fn replace_recovery_codes(
    conn: &mut AnyConnection,
    user_id: Uuid,
    hashes: &[String],
    now: OffsetDateTime,
) -> Result<()> {
    sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
        .bind(user_id.to_string())
        .execute(&mut *conn)
        .await?;
    for h in hashes {
        sqlx::query("INSERT INTO recovery_codes (id, user_id, code_hash, created_at) VALUES ($1, $2, $3, $4)")
            .bind(Uuid::new_v4().to_string())
            .bind(user_id.to_string())
            .bind(h)
            .bind(to_ms(now))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Uses a recovery code once; false when unknown or already used.
pub async fn use_recovery_code(
    conn: &mut AnyConnection,
    user_id: Uuid,
    hash: &str,
    now: OffsetDateTime,
) -> Result<bool> {
    let r =
        sqlx::query("UPDATE recovery_codes SET used_at = $1 WHERE user_id = $2 AND code_hash = $3 AND used_at IS NULL")
            .bind(to_ms(now))
            .bind(user_id.to_string())
            .bind(hash)
            .execute(conn)
            .await?;
    Ok(r.rows_affected() == 1)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    System,
    Domain(Uuid),
    Project(Uuid),
}

impl Scope {
    pub fn parts(self) -> (&'static str, String) {
        match self {
            Scope::System => ("system", String::new()),
            Scope::Domain(id) => ("domain", id.to_string()),
            Scope::Project(id) => ("project", id.to_string()),
        }
    }

    fn from_parts(kind: &str, id: &str) -> Result<Scope> {
        Ok(match kind {
            "system" => Scope::System,
            "domain" => Scope::Domain(uuid_col(id)?),
            "project" => Scope::Project(uuid_col(id)?),
            other => return Err(DbError::Corrupt(format!("unknown scope kind {other:?}"))),
        })
    }
}

/// Who holds a role assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    User(Uuid),
    Group(Uuid),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleAssignment {
    pub id: Uuid,
    pub holder: Holder,
    pub role: String,
    pub scope: Scope,
}

pub async fn assign_role(
    conn: &mut AnyConnection,
    user_id: Uuid,
    role: &str,
    scope: Scope,
    now: OffsetDateTime,
) -> Result<()> {
    create_assignment(conn, Holder::User(user_id), role, scope, now)
        .await
        .map(|_| ())
}

/// Creates an assignment (idempotent: an existing identical one is returned).
pub async fn create_assignment(
    conn: &mut AnyConnection,
    holder: Holder,
    role: &str,
    scope: Scope,
    now: OffsetDateTime,
) -> Result<Uuid> {
    let (kind, scope_id) = scope.parts();
    let holder_id = match holder {
        Holder::User(u) | Holder::Group(u) => u,
    };
    let id = Uuid::new_v4();
    let insert = match holder {
        Holder::User(_) => {
            "INSERT INTO role_assignments (id, user_id, role, scope_kind, scope_id, created_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (user_id, role, scope_kind, scope_id) DO NOTHING"
        }
        Holder::Group(_) => {
            "INSERT INTO group_role_assignments (id, group_id, role, scope_kind, scope_id, created_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (group_id, role, scope_kind, scope_id) DO NOTHING"
        }
    };
    sqlx::query(insert)
        .bind(id.to_string())
        .bind(holder_id.to_string())
        .bind(role)
        .bind(kind)
        .bind(&scope_id)
        .bind(to_ms(now))
        .execute(&mut *conn)
        .await?;
    let existing: String = match holder {
        Holder::User(_) => sqlx::query_scalar("SELECT id FROM role_assignments WHERE user_id = $1 AND role = $2 AND scope_kind = $3 AND scope_id = $4"),
        Holder::Group(_) => sqlx::query_scalar("SELECT id FROM group_role_assignments WHERE group_id = $1 AND role = $2 AND scope_kind = $3 AND scope_id = $4"),
    }
    .bind(holder_id.to_string())
    .bind(role)
    .bind(kind)
    .bind(&scope_id)
    .fetch_one(conn)
    .await?;
    uuid_col(&existing)
}

#[derive(sqlx::FromRow)]
struct AssignmentRow {
    id: String,
    holder: String,
    is_group: i64,
    role: String,
    scope_kind: String,
    scope_id: String,
}

impl TryFrom<AssignmentRow> for RoleAssignment {
    type Error = DbError;
    fn try_from(r: AssignmentRow) -> Result<RoleAssignment> {
        let h = uuid_col(&r.holder)?;
        Ok(RoleAssignment {
            id: uuid_col(&r.id)?,
            holder: if r.is_group != 0 {
                Holder::Group(h)
            } else {
                Holder::User(h)
            },
            role: r.role,
            scope: Scope::from_parts(&r.scope_kind, &r.scope_id)?,
        })
    }
}

macro_rules! all_assignments {
    () => {
        "SELECT id, user_id AS holder, 0 AS is_group, role, scope_kind, scope_id FROM role_assignments \
         UNION ALL SELECT id, group_id AS holder, 1 AS is_group, role, scope_kind, scope_id FROM group_role_assignments"
    };
}

/// Every assignment that reaches a user: its own and those of its groups.
pub async fn role_assignments(conn: &mut AnyConnection, user_id: Uuid) -> Result<Vec<RoleAssignment>> {
    let rows: Vec<AssignmentRow> = sqlx::query_as(
        "SELECT id, user_id AS holder, 0 AS is_group, role, scope_kind, scope_id FROM role_assignments WHERE user_id = $1 \
         UNION ALL SELECT a.id, a.group_id AS holder, 1 AS is_group, a.role, a.scope_kind, a.scope_id FROM group_role_assignments a \
         JOIN group_members m ON m.group_id = a.group_id WHERE m.user_id = $1 ORDER BY role, scope_kind, scope_id",
    )
    .bind(user_id.to_string())
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(RoleAssignment::try_from).collect()
}

/// Every assignment a group holds.
pub async fn group_assignments(conn: &mut AnyConnection, group_id: Uuid) -> Result<Vec<RoleAssignment>> {
    let rows: Vec<AssignmentRow> = sqlx::query_as(
        "SELECT id, group_id AS holder, 1 AS is_group, role, scope_kind, scope_id FROM group_role_assignments \
         WHERE group_id = $1 ORDER BY role, scope_kind, scope_id",
    )
    .bind(group_id.to_string())
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(RoleAssignment::try_from).collect()
}

/// Every assignment held at one scope, by users and groups.
pub async fn assignments_at(conn: &mut AnyConnection, scope: Scope) -> Result<Vec<RoleAssignment>> {
    let (kind, scope_id) = scope.parts();
    let rows: Vec<AssignmentRow> = sqlx::query_as(concat!(
        "SELECT * FROM (",
        all_assignments!(),
        ") a WHERE scope_kind = $1 AND scope_id = $2 ORDER BY id"
    ))
    .bind(kind)
    .bind(scope_id)
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(RoleAssignment::try_from).collect()
}

/// Assignments filtered by holder and scope, ordered by id, after `after`.
pub async fn list_assignments(
    conn: &mut AnyConnection,
    holder: Option<Holder>,
    scope: Option<Scope>,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<RoleAssignment>> {
    let (holder_id, is_group) = match holder {
        None => (String::new(), -1),
        Some(Holder::User(u)) => (u.to_string(), 0),
        Some(Holder::Group(g)) => (g.to_string(), 1),
    };
    let (kind, scope_id) = scope.map(|s| s.parts()).unwrap_or(("", String::new()));
    let rows: Vec<AssignmentRow> = sqlx::query_as(concat!(
        "SELECT * FROM (",
        all_assignments!(),
        ") a WHERE id > $1 AND ($2 = '' OR (holder = $2 AND is_group = $3)) AND ($4 = '' OR (scope_kind = $4 AND scope_id = $5)) ORDER BY id LIMIT $6"
    ))
    .bind(after.unwrap_or(""))
    .bind(holder_id)
    .bind(is_group)
    .bind(kind)
    .bind(scope_id)
    .bind(limit as i64)
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(RoleAssignment::try_from).collect()
}

pub async fn assignment_by_id(conn: &mut AnyConnection, id: Uuid) -> Result<Option<RoleAssignment>> {
    let row: Option<AssignmentRow> =
        sqlx::query_as(concat!("SELECT * FROM (", all_assignments!(), ") a WHERE id = $1"))
            .bind(id.to_string())
            .fetch_optional(conn)
            .await?;
    row.map(RoleAssignment::try_from).transpose()
}

pub async fn delete_assignment(conn: &mut AnyConnection, a: &RoleAssignment) -> Result<()> {
    let q = match a.holder {
        Holder::User(_) => "DELETE FROM role_assignments WHERE id = $1",
        Holder::Group(_) => "DELETE FROM group_role_assignments WHERE id = $1",
    };
    sqlx::query(q).bind(a.id.to_string()).execute(conn).await?;
    Ok(())
}

/// An API token row; the token itself is never stored, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub id: Uuid,
    pub user_id: Uuid,
    pub project_id: Option<Uuid>,
    pub scope: String,
    pub methods: Vec<String>,
    pub application_credential_id: Option<Uuid>,
    pub issued_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub last_used_at: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
}

pub struct NewToken<'a> {
    pub token_hash: &'a str,
    pub user_id: Uuid,
    pub project_id: Option<Uuid>,
    pub scope: &'a str,
    pub methods: &'a [String],
    pub application_credential_id: Option<Uuid>,
    pub expires_at: OffsetDateTime,
    pub source_ip: Option<&'a str>,
}

pub async fn insert_token(conn: &mut AnyConnection, t: NewToken<'_>, now: OffsetDateTime) -> Result<Uuid> {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO tokens (id, token_hash, user_id, project_id, scope, methods, application_credential_id, issued_at, expires_at, last_used_at, source_ip) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $8, $10)",
    )
    .bind(id.to_string())
    .bind(t.token_hash)
    .bind(t.user_id.to_string())
    .bind(t.project_id.map(|p| p.to_string()))
    .bind(t.scope)
    .bind(to_json(t.methods))
    .bind(t.application_credential_id.map(|a| a.to_string()))
    .bind(to_ms(now))
    .bind(to_ms(t.expires_at))
    .bind(t.source_ip)
    .execute(conn)
    .await?;
    Ok(id)
}

#[derive(sqlx::FromRow)]
struct TokenRow {
    id: String,
    user_id: String,
    project_id: Option<String>,
    scope: String,
    methods: String,
    application_credential_id: Option<String>,
    issued_at: i64,
    expires_at: i64,
    last_used_at: i64,
    revoked_at: Option<i64>,
}

pub async fn token_by_hash(conn: &mut AnyConnection, token_hash: &str) -> Result<Option<Token>> {
    let row: Option<TokenRow> = sqlx::query_as(
        "SELECT id, user_id, project_id, scope, methods, application_credential_id, issued_at, expires_at, last_used_at, revoked_at FROM tokens WHERE token_hash = $1",
    )
    .bind(token_hash)
    .fetch_optional(conn)
    .await?;
    row.map(|r| {
        Ok(Token {
            id: uuid_col(&r.id)?,
            user_id: uuid_col(&r.user_id)?,
            project_id: r.project_id.as_deref().map(uuid_col).transpose()?,
            scope: r.scope,
            methods: json_list(&r.methods),
            application_credential_id: r.application_credential_id.as_deref().map(uuid_col).transpose()?,
            issued_at: from_ms(r.issued_at),
            expires_at: from_ms(r.expires_at),
            last_used_at: from_ms(r.last_used_at),
            revoked_at: r.revoked_at.map(from_ms),
        })
    })
    .transpose()
}

/// Records a use of the token, at most once per `granularity_ms` so reads stay cheap.
pub async fn touch_token(conn: &mut AnyConnection, id: Uuid, now: OffsetDateTime, granularity_ms: i64) -> Result<()> {
    let now = to_ms(now);
    sqlx::query("UPDATE tokens SET last_used_at = $1 WHERE id = $2 AND last_used_at < $3")
        .bind(now)
        .bind(id.to_string())
        .bind(now - granularity_ms)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn revoke_token(conn: &mut AnyConnection, id: Uuid, now: OffsetDateTime) -> Result<()> {
    sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
        .bind(to_ms(now))
        .bind(id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

/// Revokes every live token and application credential of a user (password change or reset,
/// second-factor reset, forced change, disable, role removal): a credential minted from a
/// session must not outlive the event that ended the session.
pub async fn revoke_user_tokens(conn: &mut AnyConnection, user_id: Uuid, now: OffsetDateTime) -> Result<u64> {
    let r = sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL")
        .bind(to_ms(now))
        .bind(user_id.to_string())
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM application_credentials WHERE user_id = $1")
        .bind(user_id.to_string())
        .execute(conn)
        .await?;
    Ok(r.rows_affected())
}

/// Revokes the live tokens and application credentials of every member of a group.
pub async fn revoke_group_tokens(conn: &mut AnyConnection, group_id: Uuid, now: OffsetDateTime) -> Result<u64> {
    let r = sqlx::query(
        "UPDATE tokens SET revoked_at = $1 WHERE revoked_at IS NULL AND user_id IN (SELECT user_id FROM group_members WHERE group_id = $2)",
    )
    .bind(to_ms(now))
    .bind(group_id.to_string())
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "DELETE FROM application_credentials WHERE user_id IN (SELECT user_id FROM group_members WHERE group_id = $1)",
    )
    .bind(group_id.to_string())
    .execute(conn)
    .await?;
    Ok(r.rows_affected())
}

pub async fn revoke_credential_tokens(
    conn: &mut AnyConnection,
    credential_id: Uuid,
    now: OffsetDateTime,
) -> Result<u64> {
    let r =
        sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE application_credential_id = $2 AND revoked_at IS NULL")
            .bind(to_ms(now))
            .bind(credential_id.to_string())
            .execute(conn)
            .await?;
    Ok(r.rows_affected())
}

/// Deletes tokens that expired before `before` (they can never be used again).
pub async fn purge_expired_tokens(conn: &mut AnyConnection, before: OffsetDateTime) -> Result<u64> {
    let r = sqlx::query("DELETE FROM tokens WHERE expires_at < $1")
        .bind(to_ms(before))
        .execute(conn)
        .await?;
    Ok(r.rows_affected())
}

pub(crate) fn conflict_on_unique(e: sqlx::Error, message: String) -> DbError {
    match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => DbError::Conflict(message),
        _ => DbError::Sqlx(e),
    }
}
