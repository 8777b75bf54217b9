//! Leases: one row per singleton job (the reconcilers). Several controllers may share one
//! PostgreSQL; only the holder of an unexpired lease runs the job.

use sqlx::AnyConnection;

use crate::Result;

/// Takes or renews `name` for `holder` until `expires_at_ms`; true when `holder` holds it.
pub async fn acquire(
    conn: &mut AnyConnection,
    name: &str,
    holder: &str,
    now_ms: i64,
    expires_at_ms: i64,
) -> Result<bool> {
    let result = sqlx::query(
        "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3) \
         ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
         WHERE leases.holder = excluded.holder OR leases.expires_at < $4",
    )
    .bind(name)
    .bind(holder)
    .bind(expires_at_ms)
    .bind(now_ms)
    .execute(conn)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Gives the lease up (on clean shutdown), so another controller takes over at once.
pub async fn release(conn: &mut AnyConnection, name: &str, holder: &str) -> Result<()> {
    sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
        .bind(name)
        .bind(holder)
        .execute(conn)
        .await?;
    Ok(())
}
