//! Answers kept for `Idempotency-Key` retries (issue 13): one row per principal and key.

use rampart_common::time::{from_ms, to_ms};
use sqlx::AnyConnection;
use time::OffsetDateTime;

use crate::Result;

/// What is kept of the first call with a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    /// Hash of the method, path and body of the first call.
    pub request_hash: String,
    /// `None` while the first call is still running.
    pub answer: Option<Answer>,
    pub created_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub content_type: Option<String>,
    /// The body, sealed by the caller.
    pub sealed_body: String,
}

/// `request_hash, status, content_type, sealed_body, created_at`.
type KeptRow = (String, Option<i64>, Option<String>, Option<String>, i64);

/// Claims `key` for a first call, or returns what the first call left. Keys older than
/// `expired_before` are forgotten first.
pub async fn claim(
    conn: &mut AnyConnection,
    principal: &str,
    key: &str,
    request_hash: &str,
    now: OffsetDateTime,
    expired_before: OffsetDateTime,
) -> Result<Option<Kept>> {
    sqlx::query("DELETE FROM idempotency_keys WHERE principal = $1 AND idem_key = $2 AND created_at < $3")
        .bind(principal)
        .bind(key)
        .bind(to_ms(expired_before))
        .execute(&mut *conn)
        .await?;
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (principal, idem_key, request_hash, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (principal, idem_key) DO NOTHING",
    )
    .bind(principal)
    .bind(key)
    .bind(request_hash)
    .bind(to_ms(now))
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(None);
    }
    let row: Option<KeptRow> = sqlx::query_as(
        "SELECT request_hash, status, content_type, sealed_body, created_at FROM idempotency_keys \
         WHERE principal = $1 AND idem_key = $2",
    )
    .bind(principal)
    .bind(key)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(
        row.map(|(request_hash, status, content_type, sealed_body, created_at)| Kept {
            request_hash,
            answer: status.zip(sealed_body).map(|(status, sealed_body)| Answer {
                status: u16::try_from(status).unwrap_or(500),
                content_type,
                sealed_body,
            }),
            created_at: from_ms(created_at),
        }),
    )
}

/// Keeps the answer of the first call.
pub async fn keep(conn: &mut AnyConnection, principal: &str, key: &str, answer: &Answer) -> Result<()> {
    sqlx::query(
        "UPDATE idempotency_keys SET status = $1, content_type = $2, sealed_body = $3 WHERE principal = $4 AND idem_key = $5",
    )
    .bind(i64::from(answer.status))
    .bind(answer.content_type.as_deref())
    .bind(&answer.sealed_body)
    .bind(principal)
    .bind(key)
    .execute(conn)
    .await?;
    Ok(())
}

/// Forgets a key whose first call failed on the server's side: a retry runs again.
pub async fn release(conn: &mut AnyConnection, principal: &str, key: &str) -> Result<()> {
    sqlx::query("DELETE FROM idempotency_keys WHERE principal = $1 AND idem_key = $2")
        .bind(principal)
        .bind(key)
        .execute(conn)
        .await?;
    Ok(())
}

/// Drops the keys created before `before`; returns how many.
pub async fn purge(conn: &mut AnyConnection, before: OffsetDateTime) -> Result<u64> {
    Ok(sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
        .bind(to_ms(before))
        .execute(conn)
        .await?
        .rows_affected())
}
