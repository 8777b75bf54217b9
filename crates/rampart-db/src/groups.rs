//! User groups and their members; custom roles.

use rampart_common::time::{from_ms, to_ms};
use sqlx::AnyConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::identity::conflict_on_unique;
use crate::{DbError, Result, uuid_col};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub id: Uuid,
    pub domain_id: Uuid,
    pub name: String,
    pub description: String,
}

#[derive(sqlx::FromRow)]
struct GroupRow {
    id: String,
    domain_id: String,
    name: String,
    description: String,
}

impl TryFrom<GroupRow> for Group {
    type Error = DbError;
    fn try_from(r: GroupRow) -> Result<Group> {
        Ok(Group {
            id: uuid_col(&r.id)?,
            domain_id: uuid_col(&r.domain_id)?,
            name: r.name,
            description: r.description,
        })
    }
}

pub async fn create(
    conn: &mut AnyConnection,
    domain_id: Uuid,
    name: &str,
    description: &str,
    now: OffsetDateTime,
) -> Result<Group> {
    let id = Uuid::new_v4();
    sqlx::query("INSERT INTO user_groups (id, domain_id, name, description, created_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(id.to_string())
        .bind(domain_id.to_string())
        .bind(name)
        .bind(description)
        .bind(to_ms(now))
        .execute(conn)
        .await
        .map_err(|e| conflict_on_unique(e, format!("a group named {name:?} already exists in this domain")))?;
    Ok(Group {
        id,
        domain_id,
        name: name.into(),
        description: description.into(),
    })
}

pub async fn get(conn: &mut AnyConnection, id: Uuid) -> Result<Option<Group>> {
    let row: Option<GroupRow> =
        sqlx::query_as("SELECT id, domain_id, name, description FROM user_groups WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(conn)
            .await?;
    row.map(Group::try_from).transpose()
}

pub async fn list(
    conn: &mut AnyConnection,
    domain: Option<Uuid>,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<Group>> {
    let rows: Vec<GroupRow> = sqlx::query_as(
        "SELECT id, domain_id, name, description FROM user_groups WHERE id > $1 AND ($2 = '' OR domain_id = $2) ORDER BY id LIMIT $3",
    )
    .bind(after.unwrap_or(""))
    .bind(domain.map(|d| d.to_string()).unwrap_or_default())
    .bind(limit as i64)
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(Group::try_from).collect()
}

pub async fn update(conn: &mut AnyConnection, g: &Group) -> Result<()> {
    sqlx::query("UPDATE user_groups SET description = $1 WHERE id = $2")
        .bind(&g.description)
        .bind(g.id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn delete(conn: &mut AnyConnection, id: Uuid) -> Result<bool> {
    let r = sqlx::query("DELETE FROM user_groups WHERE id = $1")
        .bind(id.to_string())
        .execute(conn)
        .await?;
    Ok(r.rows_affected() == 1)
}

pub async fn add_member(conn: &mut AnyConnection, group_id: Uuid, user_id: Uuid, now: OffsetDateTime) -> Result<()> {
    sqlx::query("INSERT INTO group_members (group_id, user_id, created_at) VALUES ($1, $2, $3) ON CONFLICT (group_id, user_id) DO NOTHING")
        .bind(group_id.to_string())
        .bind(user_id.to_string())
        .bind(to_ms(now))
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn remove_member(conn: &mut AnyConnection, group_id: Uuid, user_id: Uuid) -> Result<bool> {
    let r = sqlx::query("DELETE FROM group_members WHERE group_id = $1 AND user_id = $2")
        .bind(group_id.to_string())
        .bind(user_id.to_string())
        .execute(conn)
        .await?;
    Ok(r.rows_affected() == 1)
}

pub async fn members(conn: &mut AnyConnection, group_id: Uuid) -> Result<Vec<Uuid>> {
    let ids: Vec<String> = sqlx::query_scalar("SELECT user_id FROM group_members WHERE group_id = $1 ORDER BY user_id")
        .bind(group_id.to_string())
        .fetch_all(conn)
        .await?;
    ids.iter().map(|i| uuid_col(i)).collect()
}

/// A custom role: a named bundle of built-in roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomRole {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    pub implies: Vec<String>,
    pub created_at: OffsetDateTime,
}

#[derive(sqlx::FromRow)]
struct RoleRow {
    id: String,
    name: String,
    description: String,
    implies: String,
    created_at: i64,
}

impl TryFrom<RoleRow> for CustomRole {
    type Error = DbError;
    fn try_from(r: RoleRow) -> Result<CustomRole> {
        Ok(CustomRole {
            id: uuid_col(&r.id)?,
            name: r.name,
            description: r.description,
            implies: serde_json::from_str(&r.implies).map_err(|e| DbError::Corrupt(e.to_string()))?,
            created_at: from_ms(r.created_at),
        })
    }
}

pub async fn create_role(
    conn: &mut AnyConnection,
    name: &str,
    description: &str,
    implies: &[String],
    now: OffsetDateTime,
) -> Result<CustomRole> {
    let id = Uuid::new_v4();
    sqlx::query("INSERT INTO roles (id, name, description, implies, created_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(id.to_string())
        .bind(name)
        .bind(description)
        .bind(serde_json::to_string(implies).expect("serialises"))
        .bind(to_ms(now))
        .execute(conn)
        .await
        .map_err(|e| conflict_on_unique(e, format!("a role named {name:?} already exists")))?;
    Ok(CustomRole {
        id,
        name: name.into(),
        description: description.into(),
        implies: implies.to_vec(),
        created_at: now,
    })
}

pub async fn roles(conn: &mut AnyConnection) -> Result<Vec<CustomRole>> {
    let rows: Vec<RoleRow> =
        sqlx::query_as("SELECT id, name, description, implies, created_at FROM roles ORDER BY name")
            .fetch_all(conn)
            .await?;
    rows.into_iter().map(CustomRole::try_from).collect()
}

pub async fn role(conn: &mut AnyConnection, key: &str) -> Result<Option<CustomRole>> {
    let row: Option<RoleRow> =
        sqlx::query_as("SELECT id, name, description, implies, created_at FROM roles WHERE id = $1 OR name = $1")
            .bind(key)
            .fetch_optional(conn)
            .await?;
    row.map(CustomRole::try_from).transpose()
}

pub async fn update_role(conn: &mut AnyConnection, r: &CustomRole) -> Result<()> {
    sqlx::query("UPDATE roles SET description = $1, implies = $2 WHERE id = $3")
        .bind(&r.description)
        .bind(serde_json::to_string(&r.implies).expect("serialises"))
        .bind(r.id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

/// How many assignments (of users and groups) use the role named `name`.
pub async fn role_assignment_count(conn: &mut AnyConnection, name: &str) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM role_assignments WHERE role = $1) + (SELECT COUNT(*) FROM group_role_assignments WHERE role = $1)",
    )
    .bind(name)
    .fetch_one(conn)
    .await?)
}

/// Deletes a custom role that no assignment uses.
pub async fn delete_role(conn: &mut AnyConnection, r: &CustomRole) -> Result<()> {
    if role_assignment_count(conn, &r.name).await? > 0 {
        return Err(DbError::Conflict(format!(
            "role {:?} is still assigned; remove its assignments first",
            r.name
        )));
    }
    sqlx::query("DELETE FROM roles WHERE id = $1")
        .bind(r.id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}
