//! Application credentials: project-bound secrets for automation, stored as argon2 hashes.

use rampart_common::time::{from_ms, to_ms};
use sqlx::AnyConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::identity::conflict_on_unique;
use crate::{DbError, Result, uuid_col};

#[derive(Clone, PartialEq, Eq)]
pub struct AppCredential {
    pub id: Uuid,
    pub user_id: Uuid,
    pub project_id: Uuid,
    pub name: String,
    pub secret_hash: String,
    pub roles: Vec<String>,
    pub expires_at: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
    pub last_used_at: Option<OffsetDateTime>,
}

impl std::fmt::Debug for AppCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppCredential")
            .field("id", &self.id)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    id: String,
    user_id: String,
    project_id: String,
    name: String,
    secret_hash: String,
    roles: String,
    expires_at: Option<i64>,
    created_at: i64,
    last_used_at: Option<i64>,
}

impl TryFrom<Row> for AppCredential {
    type Error = DbError;
    fn try_from(r: Row) -> Result<AppCredential> {
        Ok(AppCredential {
            id: uuid_col(&r.id)?,
            user_id: uuid_col(&r.user_id)?,
            project_id: uuid_col(&r.project_id)?,
            name: r.name,
            secret_hash: r.secret_hash,
            roles: serde_json::from_str(&r.roles).map_err(|e| DbError::Corrupt(e.to_string()))?,
            expires_at: r.expires_at.map(from_ms),
            created_at: from_ms(r.created_at),
            last_used_at: r.last_used_at.map(from_ms),
        })
    }
}

macro_rules! columns {
    () => {
        "id, user_id, project_id, name, secret_hash, roles, expires_at, created_at, last_used_at"
    };
}

pub async fn create(conn: &mut AnyConnection, c: &AppCredential) -> Result<()> {
    sqlx::query(concat!(
        "INSERT INTO application_credentials (",
        columns!(),
        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL)"
    ))
    .bind(c.id.to_string())
    .bind(c.user_id.to_string())
    .bind(c.project_id.to_string())
    .bind(&c.name)
    .bind(&c.secret_hash)
    .bind(serde_json::to_string(&c.roles).expect("serialises"))
    .bind(c.expires_at.map(to_ms))
    .bind(to_ms(c.created_at))
    .execute(conn)
    .await
    .map_err(|e| {
        conflict_on_unique(
            e,
            format!("you already have an application credential named {:?}", c.name),
        )
    })?;
    Ok(())
}

pub async fn get(conn: &mut AnyConnection, id: Uuid) -> Result<Option<AppCredential>> {
    let row: Option<Row> = sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM application_credentials WHERE id = $1"
    ))
    .bind(id.to_string())
    .fetch_optional(conn)
    .await?;
    row.map(AppCredential::try_from).transpose()
}

pub async fn list_for_user(
    conn: &mut AnyConnection,
    user_id: Uuid,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<AppCredential>> {
    let rows: Vec<Row> = sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM application_credentials WHERE user_id = $1 AND id > $2 ORDER BY id LIMIT $3"
    ))
    .bind(user_id.to_string())
    .bind(after.unwrap_or(""))
    .bind(limit as i64)
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(AppCredential::try_from).collect()
}

pub async fn delete(conn: &mut AnyConnection, id: Uuid) -> Result<bool> {
    let r = sqlx::query("DELETE FROM application_credentials WHERE id = $1")
        .bind(id.to_string())
        .execute(conn)
        .await?;
    Ok(r.rows_affected() == 1)
}

pub async fn touch(conn: &mut AnyConnection, id: Uuid, now: OffsetDateTime) -> Result<()> {
    sqlx::query("UPDATE application_credentials SET last_used_at = $1 WHERE id = $2")
        .bind(to_ms(now))
        .bind(id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}
