//! Domains, projects, users, role assignments and API tokens.

use rampart_common::time::{from_ms, to_ms};
use sqlx::AnyConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{DbError, Result, uuid_col};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    pub id: Uuid,
    pub name: String,
    pub enabled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    pub id: Uuid,
    pub domain_id: Uuid,
    pub name: String,
    pub enabled: bool,
}

/// A user row. `password_hash` is a PHC string (argon2id); never log it.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    pub id: Uuid,
    pub domain_id: Uuid,
    pub name: String,
    pub enabled: bool,
    pub password_hash: Option<String>,
    pub password_changed_at: Option<OffsetDateTime>,
    pub password_change_required: bool,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    System,
    Domain(Uuid),
    Project(Uuid),
}

impl Scope {
    fn parts(self) -> (&'static str, String) {
        match self {
            Scope::System => ("system", String::new()),
            Scope::Domain(id) => ("domain", id.to_string()),
            Scope::Project(id) => ("project", id.to_string()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleAssignment {
    pub role: String,
    pub scope: Scope,
}

pub async fn insert_domain(conn: &mut AnyConnection, name: &str, now: OffsetDateTime) -> Result<Domain> {
    let id = Uuid::new_v4();
    sqlx::query("INSERT INTO domains (id, name, enabled, created_at) VALUES ($1, $2, 1, $3)")
        .bind(id.to_string())
        .bind(name)
        .bind(to_ms(now))
        .execute(conn)
        .await
        .map_err(|e| conflict_on_unique(e, format!("a domain named {name:?} already exists")))?;
    Ok(Domain {
        id,
        name: name.into(),
        enabled: true,
    })
}

/// Finds a domain by name, or by id when `key` is a UUID.
pub async fn find_domain(conn: &mut AnyConnection, key: &str) -> Result<Option<Domain>> {
    let row: Option<(String, String, i64)> =
        sqlx::query_as("SELECT id, name, enabled FROM domains WHERE name = $1 OR id = $1")
            .bind(key)
            .fetch_optional(conn)
            .await?;
    row.map(|(id, name, enabled)| {
        Ok(Domain {
            id: uuid_col(&id)?,
            name,
            enabled: enabled != 0,
        })
    })
    .transpose()
}

pub async fn insert_project(
    conn: &mut AnyConnection,
    domain_id: Uuid,
    name: &str,
    now: OffsetDateTime,
) -> Result<Project> {
    let id = Uuid::new_v4();
    sqlx::query("INSERT INTO projects (id, domain_id, name, enabled, created_at) VALUES ($1, $2, $3, 1, $4)")
        .bind(id.to_string())
        .bind(domain_id.to_string())
        .bind(name)
        .bind(to_ms(now))
        .execute(conn)
        .await
        .map_err(|e| conflict_on_unique(e, format!("a project named {name:?} already exists in this domain")))?;
    Ok(Project {
        id,
        domain_id,
        name: name.into(),
        enabled: true,
    })
}

/// Finds a project of `domain_id` by name, or by id when `key` is a UUID.
pub async fn find_project(conn: &mut AnyConnection, domain_id: Uuid, key: &str) -> Result<Option<Project>> {
    let row: Option<(String, String, String, i64)> = sqlx::query_as(
        "SELECT id, domain_id, name, enabled FROM projects WHERE domain_id = $1 AND (name = $2 OR id = $2)",
    )
    .bind(domain_id.to_string())
    .bind(key)
    .fetch_optional(conn)
    .await?;
    row.map(|(id, d, name, enabled)| {
        Ok(Project {
            id: uuid_col(&id)?,
            domain_id: uuid_col(&d)?,
            name,
            enabled: enabled != 0,
        })
    })
    .transpose()
}

pub async fn project_by_id(conn: &mut AnyConnection, id: Uuid) -> Result<Option<Project>> {
    let row: Option<(String, String, String, i64)> =
        sqlx::query_as("SELECT id, domain_id, name, enabled FROM projects WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(conn)
            .await?;
    row.map(|(id, d, name, enabled)| {
        Ok(Project {
            id: uuid_col(&id)?,
            domain_id: uuid_col(&d)?,
            name,
            enabled: enabled != 0,
        })
    })
    .transpose()
}

pub struct NewUser<'a> {
    pub domain_id: Uuid,
    pub name: &'a str,
    pub password_hash: Option<&'a str>,
    pub password_change_required: bool,
}

pub async fn insert_user(conn: &mut AnyConnection, u: NewUser<'_>, now: OffsetDateTime) -> Result<User> {
    let id = Uuid::new_v4();
    let changed_at = u.password_hash.map(|_| to_ms(now));
    sqlx::query(
        "INSERT INTO users (id, domain_id, name, enabled, password_hash, password_changed_at, password_change_required, created_at) \
         VALUES ($1, $2, $3, 1, $4, $5, $6, $7)",
    )
    .bind(id.to_string())
    .bind(u.domain_id.to_string())
    .bind(u.name)
    .bind(u.password_hash)
    .bind(changed_at)
    .bind(i64::from(u.password_change_required))
    .bind(to_ms(now))
    .execute(conn)
    .await
    .map_err(|e| conflict_on_unique(e, format!("a user named {:?} already exists in this domain", u.name)))?;
    Ok(User {
        id,
        domain_id: u.domain_id,
        name: u.name.into(),
        enabled: true,
        password_hash: u.password_hash.map(str::to_string),
        password_changed_at: changed_at.map(from_ms),
        password_change_required: u.password_change_required,
    })
}

type UserRow = (String, String, String, i64, Option<String>, Option<i64>, i64);
macro_rules! user_columns {
    () => {
        "id, domain_id, name, enabled, password_hash, password_changed_at, password_change_required"
    };
}

fn user_from_row(r: UserRow) -> Result<User> {
    Ok(User {
        id: uuid_col(&r.0)?,
        domain_id: uuid_col(&r.1)?,
        name: r.2,
        enabled: r.3 != 0,
        password_hash: r.4,
        password_changed_at: r.5.map(from_ms),
        password_change_required: r.6 != 0,
    })
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
    row.map(user_from_row).transpose()
}

pub async fn user_by_id(conn: &mut AnyConnection, id: Uuid) -> Result<Option<User>> {
    let row: Option<UserRow> = sqlx::query_as(concat!("SELECT ", user_columns!(), " FROM users WHERE id = $1"))
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?;
    row.map(user_from_row).transpose()
}

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
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn assign_role(
    conn: &mut AnyConnection,
    user_id: Uuid,
    role: &str,
    scope: Scope,
    now: OffsetDateTime,
) -> Result<()> {
    let (kind, scope_id) = scope.parts();
    sqlx::query(
        "INSERT INTO role_assignments (id, user_id, role, scope_kind, scope_id, created_at) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (user_id, role, scope_kind, scope_id) DO NOTHING",
    )
    .bind(Uuid::new_v4().to_string())
    .bind(user_id.to_string())
    .bind(role)
    .bind(kind)
    .bind(scope_id)
    .bind(to_ms(now))
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn role_assignments(conn: &mut AnyConnection, user_id: Uuid) -> Result<Vec<RoleAssignment>> {
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT role, scope_kind, scope_id FROM role_assignments WHERE user_id = $1 ORDER BY role, scope_kind, scope_id")
            .bind(user_id.to_string())
            .fetch_all(conn)
            .await?;
    rows.into_iter()
        .map(|(role, kind, id)| {
            let scope = match kind.as_str() {
                "system" => Scope::System,
                "domain" => Scope::Domain(uuid_col(&id)?),
                "project" => Scope::Project(uuid_col(&id)?),
                other => return Err(DbError::Corrupt(format!("unknown scope kind {other:?}"))),
            };
            Ok(RoleAssignment { role, scope })
        })
        .collect()
}

/// An API token row; the token itself is never stored, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub id: Uuid,
    pub user_id: Uuid,
    pub project_id: Option<Uuid>,
    pub scope: String,
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
    pub expires_at: OffsetDateTime,
    pub source_ip: Option<&'a str>,
}

pub async fn insert_token(conn: &mut AnyConnection, t: NewToken<'_>, now: OffsetDateTime) -> Result<Uuid> {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO tokens (id, token_hash, user_id, project_id, scope, issued_at, expires_at, last_used_at, source_ip) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $6, $8)",
    )
    .bind(id.to_string())
    .bind(t.token_hash)
    .bind(t.user_id.to_string())
    .bind(t.project_id.map(|p| p.to_string()))
    .bind(t.scope)
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
    issued_at: i64,
    expires_at: i64,
    last_used_at: i64,
    revoked_at: Option<i64>,
}

pub async fn token_by_hash(conn: &mut AnyConnection, token_hash: &str) -> Result<Option<Token>> {
    let row: Option<TokenRow> = sqlx::query_as(
        "SELECT id, user_id, project_id, scope, issued_at, expires_at, last_used_at, revoked_at FROM tokens WHERE token_hash = $1",
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

/// Revokes every live token of a user (password change, disable, role removal).
pub async fn revoke_user_tokens(conn: &mut AnyConnection, user_id: Uuid, now: OffsetDateTime) -> Result<u64> {
    let r = sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL")
        .bind(to_ms(now))
        .bind(user_id.to_string())
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
