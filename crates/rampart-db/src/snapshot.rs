//! Consistent copies of the database for the control-plane backup (spec 14.2-1), taken while
//! the controller writes: SQLite through `VACUUM INTO` (a read transaction: one consistent
//! state, checkpointed, without the WAL), PostgreSQL through `pg_dump` (one snapshot
//! transaction). Each also answers the schema version, the highest applied migration.

use std::path::Path;

use sqlx::{AnyConnection, Connection, Executor};

use crate::{Backend, Db, DbError, Result, sqlite_path};

const SCHEMA_VERSION_SQL: &str = "SELECT MAX(version) FROM _sqlx_migrations WHERE success = TRUE";

impl Db {
    /// Writes a consistent copy of this SQLite database to `out` (which must not exist) and
    /// returns the schema version. PostgreSQL: see [`pg_dump`].
    pub async fn sqlite_copy(&self, out: &Path) -> Result<i64> {
        if self.backend != Backend::Sqlite {
            return Err(DbError::Config(
                "a file copy is for SQLite; use pg_dump for PostgreSQL".into(),
            ));
        }
        let mut conn = self.conn().await?;
        vacuum_into(&mut conn, out).await
    }
}

async fn vacuum_into(conn: &mut AnyConnection, out: &Path) -> Result<i64> {
    let version: Option<i64> = sqlx::query_scalar(SCHEMA_VERSION_SQL).fetch_one(&mut *conn).await?;
    let target = out
        .to_str()
        .ok_or_else(|| DbError::Config(format!("{} is not a UTF-8 path", out.display())))?;
    sqlx::query("VACUUM INTO $1").bind(target).execute(&mut *conn).await?;
    Ok(version.unwrap_or(0))
}

/// The SQLite file of a `sqlite:` URL.
pub fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    sqlite_path(url)
}

/// Copies the SQLite database of `url` to `out` over a connection of its own (the controller
/// may be running: WAL readers do not block its writers).
pub async fn sqlite_copy_url(url: &str, out: &Path) -> Result<i64> {
    sqlx::any::install_default_drivers();
    let Some(path) = sqlite_path(url) else {
        return Err(DbError::UnsupportedUrl(rampart_common::redact_url(url)));
    };
    if !path.exists() {
        return Err(DbError::Config(format!("no database at {}", path.display())));
    }
    let mut conn = AnyConnection::connect(url).await.map_err(|source| DbError::Connect {
        url: rampart_common::redact_url(url),
        source,
    })?;
    conn.execute("PRAGMA busy_timeout = 10000").await?;
    let r = vacuum_into(&mut conn, out).await;
    let _ = conn.close().await;
    r
}

/// `pg_dump --format=custom` of the database of `url` into `out`, and its schema version. The
/// password (from the URL or `password_file`) goes to `pg_dump` through its environment,
/// never its command line; TLS settings of the URL (`sslmode`, `sslrootcert`) apply as given.
pub async fn pg_dump(url: &str, password_file: Option<&Path>, out: &Path) -> Result<i64> {
    crate::check_postgres_tls(url)?;
    let (bare, mut password) = split_password(url);
    if let Some(f) = password_file {
        let p = std::fs::read_to_string(f).map_err(|source| DbError::PasswordFile {
            path: f.to_path_buf(),
            source,
        })?;
        password = Some(p.trim_end_matches(['\r', '\n']).to_string());
    }
    let version = {
        sqlx::any::install_default_drivers();
        let full = match &password {
            Some(p) => crate::with_password(&bare, p),
            None => bare.clone(),
        };
        let mut conn = AnyConnection::connect(&full).await.map_err(|source| DbError::Connect {
            url: rampart_common::redact_url(&bare),
            source,
        })?;
        let v: Option<i64> = sqlx::query_scalar(SCHEMA_VERSION_SQL).fetch_one(&mut conn).await?;
        let _ = conn.close().await;
        v.unwrap_or(0)
    };
    let mut cmd = tokio::process::Command::new("pg_dump");
    cmd.arg("--format=custom")
        .arg("--no-owner")
        .arg("--no-privileges")
        .arg("--file")
        .arg(out)
        .arg("--dbname")
        .arg(&bare)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Some(p) = &password {
        cmd.env("PGPASSWORD", p);
    }
    let output = cmd
        .output()
        .await
        .map_err(|e| DbError::Config(format!("cannot run pg_dump (is the PostgreSQL client installed?): {e}")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(DbError::Config(format!(
            "pg_dump of {} failed: {}",
            rampart_common::redact_url(&bare),
            stderr.trim()
        )));
    }
    Ok(version)
}

/// The URL without the password of its userinfo, and that password percent-decoded.
fn split_password(url: &str) -> (String, Option<String>) {
    let Some(scheme_end) = url.find("://") else {
        return (url.to_string(), None);
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return (url.to_string(), None);
    };
    let userinfo = &authority[..at];
    let Some(colon) = userinfo.find(':') else {
        return (url.to_string(), None);
    };
    let bare = format!("{}://{}@{}", &url[..scheme_end], &userinfo[..colon], &rest[at + 1..]);
    (bare, Some(percent_decode(&userinfo[colon + 1..])))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_14_2_1_pg_dump_url_loses_its_password_to_the_environment() {
        assert_eq!(
            split_password("postgres://rampart:s%40cret@db:5432/r?sslmode=verify-full"),
            (
                "postgres://rampart@db:5432/r?sslmode=verify-full".to_string(),
                Some("s@cret".to_string())
            )
        );
        assert_eq!(
            split_password("postgres://u@h/d"),
            ("postgres://u@h/d".to_string(), None)
        );
    }

    #[tokio::test]
    async fn spec_14_2_1_sqlite_copy_is_consistent_while_writes_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("live.db").display());
        let db = Db::connect(&url, &crate::ConnectOptions::default()).await.unwrap();
        sqlx::query("CREATE TABLE t (n INTEGER NOT NULL)")
            .execute(db.pool())
            .await
            .unwrap();
        let writer = {
            let pool = db.pool().clone();
            tokio::spawn(async move {
                for n in 0..400i64 {
                    // Two rows per transaction: a torn copy would hold an odd count.
                    let mut tx = pool.begin().await.unwrap();
                    sqlx::query("INSERT INTO t (n) VALUES ($1)")
                        .bind(n)
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                    sqlx::query("INSERT INTO t (n) VALUES ($1)")
                        .bind(n)
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                    tx.commit().await.unwrap();
                }
            })
        };
        let out = dir.path().join("copy.db");
        let version = sqlite_copy_url(&url, &out).await.unwrap();
        writer.await.unwrap();
        assert!(version > 0, "the migrations' version is read");
        let copy = format!("sqlite://{}", out.display());
        let mut c = AnyConnection::connect(&copy).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM t")
            .fetch_one(&mut c)
            .await
            .unwrap();
        assert_eq!(n % 2, 0, "a consistent state, not a torn one ({n} rows)");
        let v: i64 = sqlx::query_scalar(SCHEMA_VERSION_SQL).fetch_one(&mut c).await.unwrap();
        assert_eq!(v, version);
        let out2 = dir.path().join("copy2.db");
        assert_eq!(db.sqlite_copy(&out2).await.unwrap(), version);
        db.close().await;
    }
}
