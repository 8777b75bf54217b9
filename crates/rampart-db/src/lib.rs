//! Persistence of the controller: the only crate that speaks SQL.
//!
//! One code path serves SQLite (the embedded default: WAL, foreign keys on, busy timeout,
//! `synchronous=FULL` so an acknowledged write survives `kill -9` and power loss) and
//! PostgreSQL (several controllers, TLS with `sslmode=verify-full`). Queries are portable SQL
//! run through sqlx's `Any` driver with `$n` placeholders, which both backends accept; the
//! migrations of both live in `migrations/{sqlite,postgres}` and are embedded in the binary.

pub mod audit;
pub mod compute;
pub mod conformance;
pub mod credentials;
pub mod groups;
pub mod ha;
pub mod idempotency;
pub mod identity;
pub mod intents;
pub mod kms;
pub mod leases;
pub mod meta;
pub mod network;
pub mod nodes;
pub mod quotas;
pub mod snapshot;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod volume_snapshots;
pub mod volumes;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rampart_common::redact_url;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyConnection, AnyPool, Connection, Executor};

pub use sqlx::AnyConnection as Conn;

pub type Tx = sqlx::Transaction<'static, sqlx::Any>;

/// Columns of a table: `(name, type, not_null)`.
pub type Columns = Vec<(String, String, bool)>;
/// Tables and their columns, sorted.
pub type Schema = Vec<(String, Columns)>;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/postgres");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot connect to the database at {url}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("unsupported database URL {0} (use sqlite:// or postgres://)")]
    UnsupportedUrl(String),
    #[error("cannot prepare the SQLite file {path}")]
    SqliteFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the database password file {path}")]
    PasswordFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("database migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Config(String),
    #[error("stored data is not valid: {0}")]
    Corrupt(String),
    #[error("database error")]
    Sqlx(#[from] sqlx::Error),
}

impl DbError {
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, DbError::Sqlx(sqlx::Error::Database(e)) if e.is_unique_violation())
    }
}

impl From<DbError> for rampart_common::Error {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Conflict(m) => rampart_common::Error::Conflict(m),
            DbError::Connect { .. } | DbError::Sqlx(sqlx::Error::PoolTimedOut) => {
                tracing::error!(error = %rampart_common::error::ErrorChain(&e), "database unavailable");
                rampart_common::Error::Unavailable("the database is not reachable; try again later".into())
            }
            other => rampart_common::Error::internal("accessing the database", other),
        }
    }
}

pub type Result<T, E = DbError> = std::result::Result<T, E>;

#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub max_connections: u32,
    pub connect_timeout: Duration,
    /// File holding the password, for URLs without one.
    pub password_file: Option<PathBuf>,
    /// PostgreSQL least privilege (spec 9.2-4): migrations run through this URL (a role that
    /// owns the schema), the controller itself through the main URL (a role without DDL).
    pub migration_url: Option<String>,
    pub migration_password_file: Option<PathBuf>,
    /// Role granted exactly the data rights the controller needs, after migrations.
    pub runtime_role: Option<String>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            max_connections: 8,
            connect_timeout: Duration::from_secs(10),
            password_file: None,
            migration_url: None,
            migration_password_file: None,
            runtime_role: None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
    writes: Arc<WriteHealth>,
}

/// Whether writes reach the database, as the last write seen says: what `/v1/health` and
/// `/readyz` report while a full disk (or a lost server) refuses them.
#[derive(Debug, Default)]
pub struct WriteHealth {
    /// Since when and why writes fail; `None` while they succeed.
    failing: Mutex<Option<(Instant, String)>>,
    last_probe: Mutex<Option<Instant>>,
}

impl WriteHealth {
    fn note(&self, outcome: Result<(), &sqlx::Error>) {
        let mut failing = self.failing.lock().expect("write health lock");
        match outcome {
            Ok(()) => {
                if let Some((since, reason)) = failing.take() {
                    tracing::warn!(after_s = since.elapsed().as_secs(), %reason, "database writes succeed again");
                }
            }
            Err(e) if is_outage(e) => {
                if failing.is_none() {
                    tracing::error!(error = %e, "database writes fail");
                    *failing = Some((Instant::now(), e.to_string()));
                }
            }
            // A constraint or conflict says nothing about the database's health.
            Err(_) => {}
        }
    }

    /// Why writes fail, while they do.
    pub fn failure(&self) -> Option<String> {
        self.failing
            .lock()
            .expect("write health lock")
            .as_ref()
            .map(|(_, r)| r.clone())
    }
}

/// An error that means the database cannot take writes at all (disk full, I/O error, server
/// gone) rather than a refusal of this one statement.
fn is_outage(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => matches!(d.kind(), sqlx::error::ErrorKind::Other),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

/// Refuses a PostgreSQL URL whose connection could be read or redirected on the way (spec
/// 9.2-1): unless it stays on this host (a Unix socket, `localhost` or a loopback address),
/// it must be TLS with the server's certificate and name verified, `sslmode=verify-full`.
/// `require` and `verify-ca` encrypt but accept any server holding a certificate of the CA
/// (or any at all), and the lower modes may fall back to plain text.
pub fn check_postgres_tls(url: &str) -> Result<()> {
    use sqlx::postgres::{PgConnectOptions, PgSslMode};
    let opts = PgConnectOptions::from_str(url)
        .map_err(|e| DbError::Config(format!("{} is not a PostgreSQL URL: {e}", redact_url(url))))?;
    if matches!(opts.get_ssl_mode(), PgSslMode::VerifyFull) || opts.get_socket().is_some() {
        return Ok(());
    }
    let host = opts.get_host().trim_start_matches('[').trim_end_matches(']');
    let local =
        host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if local {
        return Ok(());
    }
    Err(DbError::Config(format!(
        "refusing to connect to the database at {host} without sslmode=verify-full ({}): a \
         connection that leaves this host must be TLS with the server's certificate and name \
         verified (add sslrootcert=FILE for a private CA)",
        redact_url(url)
    )))
}

/// Path of the SQLite file of a `sqlite:` URL.
pub(crate) fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or(rest);
    if path.is_empty() || path == ":memory:" {
        None
    } else {
        Some(PathBuf::from(path))
    }
}

impl Db {
    /// Connects, prepares the backend and brings the schema up to date: through the migration
    /// URL when one is given (then the main connection must not need DDL), else directly.
    pub async fn connect(url: &str, opts: &ConnectOptions) -> Result<Db> {
        let Some(migration_url) = &opts.migration_url else {
            let db = Self::open(url, opts).await?;
            db.migrate().await?;
            return Ok(db);
        };
        let owner_opts = ConnectOptions {
            max_connections: 1,
            password_file: opts.migration_password_file.clone(),
            ..opts.clone()
        };
        let owner = Self::open(migration_url, &owner_opts).await?;
        owner.migrate().await?;
        if let Some(role) = &opts.runtime_role {
            owner.grant_runtime(role).await?;
        }
        owner.close().await;
        let db = Self::open(url, opts).await?;
        db.check_schema_current().await?;
        Ok(db)
    }

    /// Gives `role` the data rights of the controller and nothing else: no DDL, no rights on
    /// the migration history.
    async fn grant_runtime(&self, role: &str) -> Result<()> {
        if self.backend != Backend::Postgres {
            return Err(DbError::Config(
                "database.runtime_role applies to PostgreSQL only".into(),
            ));
        }
        let valid = !role.is_empty()
            && role.len() <= 63
            && role.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
            && role
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            return Err(DbError::Config(format!(
                "database.runtime_role {role:?} is not a plain role name"
            )));
        }
        // The role name is validated above: safe to place in DDL (GRANT takes no parameters).
        // The audit trail is append-only for the controller: no UPDATE of records, checkpoints
        // or their keys even if its triggers were gone (DELETE stays for the retention purge,
        // which the triggers bound).
        let sql = format!(
            "GRANT USAGE ON SCHEMA public TO {role}; \
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}; \
             GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}; \
             REVOKE ALL ON _sqlx_migrations FROM {role}; \
             GRANT SELECT ON _sqlx_migrations TO {role}; \
             REVOKE UPDATE ON audit_records, audit_checkpoints, audit_signing_keys FROM {role};"
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&self.pool).await?;
        tracing::info!(role, "granted the runtime role its data rights");
        Ok(())
    }

    /// Refuses to run on a schema older than this binary's migrations.
    async fn check_schema_current(&self) -> Result<()> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        let want = migrator.iter().map(|m| m.version).max().unwrap_or(0);
        let have: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success = TRUE")
            .fetch_one(&self.pool)
            .await
            .unwrap_or(None);
        if have.unwrap_or(0) < want {
            return Err(DbError::Config(format!(
                "the database schema is at migration {} but this binary needs {want}; run with database.migration_url",
                have.unwrap_or(0)
            )));
        }
        Ok(())
    }

    /// Connects without touching the schema.
    async fn open(url: &str, opts: &ConnectOptions) -> Result<Db> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(DbError::UnsupportedUrl(redact_url(url)));
        };
        if backend == Backend::Postgres {
            check_postgres_tls(url)?;
        }
        let mut url = url.to_string();
        if let Some(file) = &opts.password_file {
            let password = std::fs::read_to_string(file).map_err(|source| DbError::PasswordFile {
                path: file.clone(),
                source,
            })?;
            url = with_password(&url, password.trim_end_matches(['\r', '\n']));
        }
        let redacted = redact_url(&url);
        let connect_err = |source| DbError::Connect {
            url: redacted.clone(),
            source,
        };

        if backend == Backend::Sqlite
            && let Some(path) = sqlite_path(&url)
        {
            prepare_sqlite_file(&path).map_err(|source| DbError::SqliteFile {
                path: path.clone(),
                source,
            })?;
            // journal_mode=WAL is stored in the file: set it once, on a connection of its own,
            // because it cannot be changed inside the pool's busy-timeout handling.
            let mut c = AnyConnection::connect(&url).await.map_err(connect_err)?;
            c.execute("PRAGMA journal_mode = WAL").await?;
            c.close().await?;
        }

        let options = AnyConnectOptions::from_str(&url).map_err(connect_err)?;
        let pool = AnyPoolOptions::new()
            .max_connections(opts.max_connections)
            .acquire_timeout(opts.connect_timeout)
            // A commit that failed (SQLITE_FULL) may leave the driver counting a transaction
            // that SQLite already rolled back; the rollback queued on drop then fails too and
            // every later `BEGIN` on that connection is refused ("begin_with at non-zero
            // transaction depth"). Such a connection is closed instead of handed out again;
            // the pool opens a fresh one.
            .before_acquire(|conn, _meta| {
                Box::pin(async move {
                    let stuck = conn.is_in_transaction();
                    if stuck {
                        tracing::warn!("a database connection left inside a transaction is discarded");
                    }
                    Ok(!stuck)
                })
            })
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute(
                            "PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000; PRAGMA synchronous = FULL;",
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(connect_err)?;
        let db = Db {
            pool,
            backend,
            writes: Arc::default(),
        };
        tracing::info!(url = %redacted, backend = ?backend, "database connected");
        Ok(db)
    }

    async fn migrate(&self) -> Result<()> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator.run(&self.pool).await?;
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// A write transaction. On SQLite it takes the write lock at once (`BEGIN IMMEDIATE`), so
    /// two writers queue on the busy timeout instead of failing when a read upgrades to a write.
    pub async fn begin(&self) -> Result<Tx> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// Commits a transaction from [`Db::begin`], recording in it that the current call's
    /// change committed (see [`intents`]).
    pub async fn commit(mut tx: Tx) -> Result<()> {
        intents::mark(&mut tx, None).await?;
        Ok(tx.commit().await?)
    }

    /// Records the outcome of a write for [`Db::write_failure`].
    pub fn note_write(&self, outcome: std::result::Result<(), &sqlx::Error>) {
        self.writes.note(outcome);
    }

    /// Why writes fail, if the last write failed for want of a working database. While they
    /// fail, a small write is tried (at most once a second) so that the state clears as soon as
    /// space returns, even when no client writes.
    pub async fn write_failure(&self) -> Option<String> {
        self.writes.failure()?;
        let due = {
            let mut last = self.writes.last_probe.lock().expect("probe lock");
            let due = last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if due {
            let _ = self.probe_write().await;
        }
        self.writes.failure()
    }

    /// One small durable write (a heartbeat in `meta`).
    async fn probe_write(&self) -> Result<()> {
        let outcome = async {
            let mut tx = match self.backend {
                Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
                Backend::Postgres => self.pool.begin().await?,
            };
            sqlx::query(
                "INSERT INTO meta (key, value) VALUES ('write_probe', $1) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .bind(uuid::Uuid::new_v4().to_string())
            .execute(&mut *tx)
            .await?;
            tx.commit().await
        }
        .await;
        self.note_write(outcome.as_ref().map(|_| ()));
        Ok(outcome?)
    }

    pub async fn conn(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Any>> {
        Ok(self.pool.acquire().await?)
    }

    /// Round trip to the database, for health checks.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Tables and their columns `(name, type, not_null)`, sorted: what the parity test compares.
    pub async fn schema(&self) -> Result<Schema> {
        let mut conn = self.conn().await?;
        let tables: Vec<String> = match self.backend {
            Backend::Sqlite => sqlx::query_scalar(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '\\_sqlx%' ESCAPE '\\' ORDER BY name",
            )
            .fetch_all(&mut *conn)
            .await?,
            Backend::Postgres => sqlx::query_scalar(
                "SELECT table_name::text FROM information_schema.tables WHERE table_schema = current_schema() AND table_name NOT LIKE '\\_sqlx%' ORDER BY table_name",
            )
            .fetch_all(&mut *conn)
            .await?,
        };
        let mut out = Vec::new();
        for table in tables {
            let mut cols: Columns = match self.backend {
                Backend::Sqlite => {
                    // pragma_table_info is a table-valued function; the table name is a bound value.
                    let rows: Vec<(String, String, i64, i64)> =
                        sqlx::query_as("SELECT name, type, \"notnull\", pk FROM pragma_table_info($1)")
                            .bind(&table)
                            .fetch_all(&mut *conn)
                            .await?;
                    rows.into_iter()
                        .map(|(n, t, nn, pk)| (n, t.to_ascii_lowercase(), nn != 0 || pk != 0))
                        .collect()
                }
                Backend::Postgres => {
                    let rows: Vec<(String, String, String)> = sqlx::query_as(
                        "SELECT column_name::text, data_type::text, is_nullable::text FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = $1",
                    )
                    .bind(&table)
                    .fetch_all(&mut *conn)
                    .await?;
                    rows.into_iter()
                        .map(|(n, t, nullable)| (n, t, nullable == "NO"))
                        .collect()
                }
            };
            cols.sort();
            out.push((table, cols));
        }
        Ok(out)
    }
}

/// Creates the SQLite file with mode 0600 before SQLite does (it would use the umask), in a
/// 0700 directory; SQLite gives its -wal and -shm files the mode of the database file.
fn prepare_sqlite_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        rampart_common::fsutil::ensure_private_dir(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

/// Puts `password` into the userinfo of `url`, percent-encoded.
pub(crate) fn with_password(url: &str, password: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (user, host) = match authority.rfind('@') {
        Some(at) => (authority[..at].split(':').next().unwrap_or(""), &authority[at + 1..]),
        None => ("", authority),
    };
    let encoded: String = password
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!("{}://{}:{}@{}{}", &url[..scheme_end], user, encoded, host, tail)
}

/// Parses a UUID stored as text.
pub(crate) fn uuid_col(s: &str) -> Result<uuid::Uuid> {
    uuid::Uuid::try_parse(s).map_err(|_| DbError::Corrupt(format!("not a UUID: {s:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_9_2_1_postgres_needs_verify_full_unless_it_stays_on_this_host() {
        for ok in [
            "postgres://rampart@db.example.com/rampart?sslmode=verify-full",
            "postgres://rampart@db.example.com/rampart?sslmode=verify-full&sslrootcert=/etc/rampart/db-ca.pem",
            "postgres://rampart@localhost/rampart",
            "postgres://rampart@127.0.0.1:5432/rampart?sslmode=disable",
            "postgres://rampart@127.8.9.10/rampart?sslmode=prefer",
            "postgres://rampart@[::1]:5432/rampart",
            "postgres:///rampart?host=/var/run/postgresql",
            "postgres://rampart@%2Fvar%2Frun%2Fpostgresql/rampart",
        ] {
            check_postgres_tls(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for refused in [
            "postgres://rampart:secret@db.example.com/rampart",
            "postgres://rampart:secret@db.example.com/rampart?sslmode=disable",
            "postgres://rampart:secret@db.example.com/rampart?sslmode=prefer",
            "postgres://rampart:secret@db.example.com/rampart?sslmode=require",
            "postgres://rampart:secret@db.example.com/rampart?sslmode=verify-ca",
            "postgres://rampart:secret@10.0.0.5/rampart?sslmode=require",
            "postgres://rampart:secret@[2001:db8::5]/rampart?sslmode=require",
        ] {
            let e = check_postgres_tls(refused).unwrap_err().to_string();
            assert!(e.contains("sslmode=verify-full"), "{refused}: {e}");
            assert!(!e.contains("secret"), "no password in the error: {e}");
        }
    }

    /// The refusal comes before any connection attempt: nothing is sent to the address.
    #[tokio::test]
    async fn spec_9_2_1_controller_database_without_verify_full_is_refused_before_connecting() {
        for url in [
            "postgres://rampart@192.0.2.10/rampart?sslmode=require",
            "postgres://rampart@192.0.2.10/rampart?sslmode=prefer",
        ] {
            let e = Db::connect(url, &ConnectOptions::default()).await.unwrap_err();
            assert!(matches!(e, DbError::Config(_)), "{url}: {e:?}");
            let e = crate::audit::connect_query_only(url, None).await.unwrap_err();
            assert!(matches!(e, DbError::Config(_)), "{url}: {e:?}");
        }
    }

    #[test]
    fn password_goes_into_the_url_encoded() {
        assert_eq!(
            with_password("postgres://rampart@db:5432/rampart?sslmode=verify-full", "p@ss word"),
            "postgres://rampart:p%40ss%20word@db:5432/rampart?sslmode=verify-full"
        );
        assert_eq!(with_password("postgres://u:old@h/d", "new"), "postgres://u:new@h/d");
    }

    #[test]
    fn sqlite_paths() {
        assert_eq!(sqlite_path("sqlite:///a/b.db?mode=rwc"), Some(PathBuf::from("/a/b.db")));
        assert_eq!(sqlite_path("sqlite::memory:"), None);
    }
}
