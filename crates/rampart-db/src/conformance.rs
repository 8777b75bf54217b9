//! Aggregate reads for the live conformance probes: counts over the whole cloud, never a
//! secret (a password hash is reduced to its scheme before it leaves the database).

use sqlx::AnyConnection;

use crate::Result;

/// How many users have a password hash of each scheme (`$argon2id$`, …), by the hash's
/// first `$`-delimited field.
pub async fn password_schemes(conn: &mut AnyConnection) -> Result<Vec<(String, i64)>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT CASE WHEN password_hash LIKE '$argon2id$%' THEN 'argon2id' ELSE 'other' END AS scheme, COUNT(*) \
         FROM users WHERE password_hash IS NOT NULL GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(conn)
    .await?;
    Ok(rows)
}

/// Active images, and those of them without a verified signature.
pub async fn image_signatures(conn: &mut AnyConnection) -> Result<(i64, i64)> {
    let (active, unverified): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COALESCE(SUM(CASE WHEN signature_verified = 0 THEN 1 ELSE 0 END), 0) \
         FROM images WHERE status = 'active'",
    )
    .fetch_one(conn)
    .await?;
    Ok((active, unverified))
}

/// Volumes that hold data, and those of them stored unencrypted.
pub async fn volume_encryption(conn: &mut AnyConnection) -> Result<(i64, i64)> {
    let (live, plain): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COALESCE(SUM(CASE WHEN encrypted = 0 THEN 1 ELSE 0 END), 0) \
         FROM volumes WHERE status NOT IN ('deleted', 'error')",
    )
    .fetch_one(conn)
    .await?;
    Ok((live, plain))
}

/// Volume types that allow unencrypted volumes.
pub async fn unencrypted_volume_types(conn: &mut AnyConnection) -> Result<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as("SELECT name FROM volume_types WHERE encrypted = 0 ORDER BY name")
        .fetch_all(conn)
        .await?;
    Ok(rows.into_iter().map(|(n,)| n).collect())
}
