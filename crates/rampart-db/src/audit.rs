//! The audit trail on SQL (spec 13.4): [`SqlAuditStore`] implements
//! [`rampart_audit::AuditStore`] on both backends, plus the queries of the audit API (filtered
//! listing, retention per log type, the public checkpoint keys) and a query-only opening of the
//! database for the offline verifier.
//!
//! Records are append-only. Nothing here updates a record; the only delete is the retention
//! purge, which writes its boundary checkpoint in the same transaction (the triggers of
//! `migrations/*/0003_audit.sql` refuse any other UPDATE or DELETE).

use std::str::FromStr;

use rampart_audit::checkpoint::{Checkpoint, CheckpointKind, TrustedKey};
use rampart_audit::record::{AuditRecord, AuditRow, ChainHead, RowError};
use rampart_audit::retention::RetentionPolicy;
use rampart_audit::store::{AuditStore, StoreError};
use rampart_audit::{Hash, KeyRing};
use rampart_common::time::to_ms;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyConnection, Executor, Row};
use time::OffsetDateTime;

use crate::{Backend, Db, DbError, Result};

pub(crate) const RECORD_COLUMNS: &str = "seq, id, time_ms, actor_id, actor_name, actor_domain, auth_method, source_ip, \
     user_agent, request_id, operation, target_type, target_id, target_project, outcome, status, code, duration_ms, \
     details, prev_hash, hash";

/// The audit store of a controller: records and checkpoints in the controller's database.
#[derive(Clone, Debug)]
pub struct SqlAuditStore {
    db: Db,
}

impl SqlAuditStore {
    pub fn new(db: Db) -> Self {
        SqlAuditStore { db }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Every call writes the trail before anything else, so its appends tell first when the
    /// database stops taking writes (and when it takes them again).
    fn noted<T>(&self, r: std::result::Result<T, StoreError>) -> std::result::Result<T, StoreError> {
        match &r {
            Ok(_) => self.db.note_write(Ok(())),
            Err(StoreError::Backend { source, .. }) => {
                let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
                while let Some(e) = cause {
                    if let Some(sqlx) = e.downcast_ref::<sqlx::Error>() {
                        self.db.note_write(Err(sqlx));
                        break;
                    }
                    cause = e.source();
                }
            }
            Err(StoreError::Conflict(_)) => {}
        }
        r
    }
}

fn backend_err(context: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |e| StoreError::Backend {
        context,
        source: Box::new(e),
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// A stored row as [`AuditRow`]; a column that does not decode (an attacker with database
/// access changed its type) makes the row an error the verifier reports, never a failed call.
fn row_of(r: &AnyRow) -> std::result::Result<AuditRow, RowError> {
    let seq: i64 = r.try_get("seq").map_err(|_| RowError { seq: 0, field: "seq" })?;
    let err = |field| RowError { seq, field };
    macro_rules! col {
        ($name:literal) => {
            r.try_get($name).map_err(|_| err($name))?
        };
    }
    Ok(AuditRow {
        seq,
        id: col!("id"),
        time_ms: col!("time_ms"),
        actor_id: col!("actor_id"),
        actor_name: col!("actor_name"),
        actor_domain: col!("actor_domain"),
        auth_method: col!("auth_method"),
        source_ip: col!("source_ip"),
        user_agent: col!("user_agent"),
        request_id: col!("request_id"),
        operation: col!("operation"),
        target_type: col!("target_type"),
        target_id: col!("target_id"),
        target_project: col!("target_project"),
        outcome: col!("outcome"),
        status: col!("status"),
        code: col!("code"),
        duration_ms: col!("duration_ms"),
        details: col!("details"),
        prev_hash: col!("prev_hash"),
        hash: col!("hash"),
    })
}

pub(crate) fn record_of(r: &AnyRow) -> std::result::Result<AuditRecord, RowError> {
    row_of(r)?.into_record()
}

async fn boundary_head(conn: &mut AnyConnection) -> std::result::Result<Option<ChainHead>, StoreError> {
    let text: Option<String> = sqlx::query_scalar(
        "SELECT checkpoint FROM audit_checkpoints WHERE kind = 'boundary' ORDER BY tree_size DESC LIMIT 1",
    )
    .fetch_optional(&mut *conn)
    .await
    .map_err(backend_err("reading the purge boundary"))?;
    Ok(text
        .and_then(|t| serde_json::from_str::<Checkpoint>(&t).ok())
        .map(|c| ChainHead {
            seq: c.body.tree_size,
            hash: c.body.last_hash,
        }))
}

async fn insert_checkpoint(conn: &mut AnyConnection, cp: &Checkpoint) -> std::result::Result<(), StoreError> {
    let json = serde_json::to_string(cp).map_err(|e| StoreError::Backend {
        context: "encoding a checkpoint",
        source: Box::new(e),
    })?;
    let kind = match cp.body.kind {
        CheckpointKind::Periodic => "periodic",
        CheckpointKind::Boundary => "boundary",
    };
    sqlx::query(
        "INSERT INTO audit_checkpoints (seq, kind, tree_size, time_ms, key_id, checkpoint) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(cp.body.seq as i64)
    .bind(kind)
    .bind(cp.body.tree_size as i64)
    .bind(to_ms(cp.body.time))
    .bind(cp.body.key_id.clone())
    .bind(json)
    .execute(&mut *conn)
    .await
    .map_err(|e| {
        if is_unique_violation(&e) {
            StoreError::Conflict(format!("checkpoint {} exists", cp.body.seq))
        } else {
            backend_err("storing a checkpoint")(e)
        }
    })?;
    Ok(())
}

/// Inserts one sealed record at the next seq: after the newest record, or after the purge
/// boundary when every record was purged. Two writers with the same seq: the primary key decides.
async fn insert_record(conn: &mut AnyConnection, record: &AuditRecord) -> std::result::Result<(), StoreError> {
    let r = AuditRow::from_record(record);
    let done = sqlx::query(
        "INSERT INTO audit_records (seq, id, time_ms, actor_id, actor_name, actor_domain, auth_method, source_ip, \
         user_agent, request_id, operation, target_type, target_id, target_project, outcome, status, code, \
         duration_ms, details, prev_hash, hash) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21 \
         WHERE $1 = 1 + COALESCE((SELECT MAX(seq) FROM audit_records), \
             (SELECT MAX(tree_size) FROM audit_checkpoints WHERE kind = 'boundary'), 0)",
    )
    .bind(r.seq)
    .bind(r.id)
    .bind(r.time_ms)
    .bind(r.actor_id)
    .bind(r.actor_name)
    .bind(r.actor_domain)
    .bind(r.auth_method)
    .bind(r.source_ip)
    .bind(r.user_agent)
    .bind(r.request_id)
    .bind(r.operation)
    .bind(r.target_type)
    .bind(r.target_id)
    .bind(r.target_project)
    .bind(r.outcome)
    .bind(r.status)
    .bind(r.code)
    .bind(r.duration_ms)
    .bind(r.details)
    .bind(r.prev_hash)
    .bind(r.hash)
    .execute(&mut *conn)
    .await;
    match done {
        Ok(res) if res.rows_affected() == 1 => Ok(()),
        Ok(_) => Err(StoreError::Conflict(format!("seq {} is not the next seq", record.seq))),
        Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict(format!("seq {} is taken", record.seq))),
        Err(e) => Err(backend_err("appending an audit record")(e)),
    }
}

impl AuditStore for SqlAuditStore {
    async fn head(&self) -> std::result::Result<ChainHead, StoreError> {
        let mut conn = self.db.pool().acquire().await.map_err(backend_err("connecting"))?;
        let row: Option<(i64, String)> =
            sqlx::query_as("SELECT seq, hash FROM audit_records ORDER BY seq DESC LIMIT 1")
                .fetch_optional(&mut *conn)
                .await
                .map_err(backend_err("reading the chain head"))?;
        Ok(match row {
            Some((seq, hash)) => ChainHead {
                seq: seq as u64,
                hash: Hash::from_hex(&hash).unwrap_or(Hash::ZERO),
            },
            None => boundary_head(&mut conn).await?.unwrap_or(ChainHead::GENESIS),
        })
    }

    async fn append(&self, record: &AuditRecord) -> std::result::Result<(), StoreError> {
        self.noted(
            async {
                let mut conn = self.db.pool().acquire().await.map_err(backend_err("connecting"))?;
                insert_record(&mut conn, record).await
            }
            .await,
        )
    }

    async fn append_batch(&self, records: &[AuditRecord]) -> std::result::Result<(), StoreError> {
        if let [one] = records {
            return self.append(one).await;
        }
        // One transaction, so one durable commit (fsync) for the whole group, all or nothing.
        self.noted(
            async {
                let mut tx = self.db.begin().await.map_err(|e| StoreError::Backend {
                    context: "starting an audit append",
                    source: Box::new(e),
                })?;
                for r in records {
                    insert_record(&mut tx, r).await?;
                }
                tx.commit().await.map_err(backend_err("committing audit records"))
            }
            .await,
        )
    }

    async fn read(
        &self,
        from: u64,
        limit: usize,
    ) -> std::result::Result<Vec<std::result::Result<AuditRecord, RowError>>, StoreError> {
        let sql = format!("SELECT {RECORD_COLUMNS} FROM audit_records WHERE seq >= $1 ORDER BY seq LIMIT $2");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(from.min(i64::MAX as u64) as i64)
            .bind(limit.min(100_000) as i64)
            .fetch_all(self.db.pool())
            .await
            .map_err(backend_err("reading audit records"))?;
        Ok(rows.iter().map(record_of).collect())
    }

    async fn append_checkpoint(&self, cp: &Checkpoint) -> std::result::Result<(), StoreError> {
        self.noted(
            async {
                let mut conn = self.db.pool().acquire().await.map_err(backend_err("connecting"))?;
                insert_checkpoint(&mut conn, cp).await
            }
            .await,
        )
    }

    async fn checkpoints(&self) -> std::result::Result<Vec<Checkpoint>, StoreError> {
        let rows: Vec<(i64, String)> = sqlx::query_as("SELECT seq, checkpoint FROM audit_checkpoints ORDER BY seq")
            .fetch_all(self.db.pool())
            .await
            .map_err(backend_err("reading audit checkpoints"))?;
        let mut out = Vec::with_capacity(rows.len());
        for (seq, text) in rows {
            match serde_json::from_str::<Checkpoint>(&text) {
                Ok(c) if c.body.seq as i64 == seq => out.push(c),
                // Left out, the verifier reports the gap in checkpoint numbers.
                _ => tracing::error!(checkpoint = seq, "stored audit checkpoint does not decode"),
            }
        }
        Ok(out)
    }

    async fn purge(&self, boundary: &Checkpoint) -> std::result::Result<u64, StoreError> {
        let mut tx = self.db.begin().await.map_err(|e| StoreError::Backend {
            context: "starting the purge",
            source: Box::new(e),
        })?;
        insert_checkpoint(&mut tx, boundary).await?;
        let size = boundary.body.tree_size as i64;
        let removed = sqlx::query("DELETE FROM audit_records WHERE seq <= $1")
            .bind(size)
            .execute(&mut *tx)
            .await
            .map_err(backend_err("purging audit records"))?
            .rows_affected();
        // Checkpoints link to their predecessor, so only a prefix of them may go: those older
        // than the first one attesting a kept record (an older boundary can attest fewer
        // records than a periodic checkpoint after it).
        sqlx::query(
            "DELETE FROM audit_checkpoints WHERE seq < (SELECT MIN(seq) FROM audit_checkpoints WHERE tree_size >= $1)",
        )
        .bind(size)
        .execute(&mut *tx)
        .await
        .map_err(backend_err("purging audit checkpoints"))?;
        tx.commit().await.map_err(backend_err("committing the purge"))?;
        Ok(removed)
    }
}

/// Filters of `GET /v1/audit/events`.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub since: Option<OffsetDateTime>,
    pub until: Option<OffsetDateTime>,
    /// Actor id or name.
    pub actor: Option<String>,
    /// Exact operation, or a prefix when it ends with `*` (`auth.*`).
    pub operation: Option<String>,
    /// `success` or `failure`.
    pub outcome: Option<String>,
    /// Target project id.
    pub project: Option<String>,
    /// Newest first.
    pub descending: bool,
}

fn like_prefix(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '\\' | '%' | '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

/// One page of records matching `f`, after (or, descending, before) seq `after`.
pub async fn list_events(
    conn: &mut AnyConnection,
    f: &EventFilter,
    after: Option<i64>,
    limit: u32,
) -> Result<Vec<std::result::Result<AuditRecord, RowError>>> {
    let (exact, prefix) = match f.operation.as_deref() {
        Some(op) => match op.strip_suffix('*') {
            Some(p) => (None, Some(like_prefix(p))),
            None => (Some(op.to_string()), None),
        },
        None => (None, None),
    };
    let order = if f.descending {
        "($7 IS NULL OR seq < $7) ORDER BY seq DESC"
    } else {
        "($7 IS NULL OR seq > $7) ORDER BY seq"
    };
    // Static text apart from the column list and the order: every value is a bound parameter.
    let sql = format!(
        "SELECT {RECORD_COLUMNS} FROM audit_records WHERE \
         ($1 IS NULL OR time_ms >= $1) AND ($2 IS NULL OR time_ms < $2) \
         AND ($3 IS NULL OR actor_id = $3 OR actor_name = $3) \
         AND ($4 IS NULL OR operation = $4) AND ($5 IS NULL OR operation LIKE $5 ESCAPE '\\') \
         AND ($6 IS NULL OR outcome = $6) AND ($8 IS NULL OR target_project = $8) AND {order} LIMIT $9"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(f.since.map(to_ms))
        .bind(f.until.map(to_ms))
        .bind(f.actor.clone())
        .bind(exact)
        .bind(prefix)
        .bind(f.outcome.clone())
        .bind(after)
        .bind(f.project.clone())
        .bind(i64::from(limit))
        .fetch_all(conn)
        .await?;
    Ok(rows.iter().map(record_of).collect())
}

/// Number of stored records (for the status of the audit API and benchmarks).
pub async fn count(conn: &mut AnyConnection) -> Result<i64> {
    Ok(sqlx::query_scalar("SELECT COUNT(*) FROM audit_records")
        .fetch_one(conn)
        .await?)
}

/// The retention policy (defaults inserted by the migration).
pub async fn retention(conn: &mut AnyConnection) -> Result<RetentionPolicy> {
    let rows: Vec<(String, i64)> = sqlx::query_as("SELECT log_type, days FROM audit_retention")
        .fetch_all(conn)
        .await?;
    let mut p = RetentionPolicy::default();
    for (t, d) in rows {
        let d = u32::try_from(d).map_err(|_| DbError::Corrupt(format!("retention of {t}: {d}")))?;
        match t.as_str() {
            "operation" => p.operation_days = d,
            "run" => p.run_days = d,
            "blackbox" => p.blackbox_days = d,
            "security" => p.security_days = d,
            other => return Err(DbError::Corrupt(format!("unknown log type {other:?}"))),
        }
    }
    Ok(p)
}

/// Stores a (validated) retention policy, naming who changed it.
pub async fn set_retention(conn: &mut AnyConnection, p: &RetentionPolicy, by: &str, now: OffsetDateTime) -> Result<()> {
    for (t, d) in [
        ("operation", p.operation_days),
        ("run", p.run_days),
        ("blackbox", p.blackbox_days),
        ("security", p.security_days),
    ] {
        sqlx::query(
            "INSERT INTO audit_retention (log_type, days, updated_at, updated_by) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (log_type) DO UPDATE SET days = excluded.days, updated_at = excluded.updated_at, \
             updated_by = excluded.updated_by",
        )
        .bind(t)
        .bind(i64::from(d))
        .bind(to_ms(now))
        .bind(by)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Records a checkpoint public key (idempotent), so any controller and the offline verifier
/// trust checkpoints it signed.
pub async fn register_key(conn: &mut AnyConnection, key: &TrustedKey, now: OffsetDateTime) -> Result<()> {
    let public = serde_json::to_string(key).map_err(|e| DbError::Corrupt(e.to_string()))?;
    sqlx::query(
        "INSERT INTO audit_signing_keys (key_id, public_key, created_at) VALUES ($1, $2, $3) ON CONFLICT (key_id) DO NOTHING",
    )
    .bind(key.key_id.clone())
    .bind(public)
    .bind(to_ms(now))
    .execute(conn)
    .await?;
    Ok(())
}

/// Every recorded checkpoint key.
pub async fn keys(conn: &mut AnyConnection) -> Result<KeyRing> {
    let rows: Vec<String> = sqlx::query_scalar("SELECT public_key FROM audit_signing_keys")
        .fetch_all(conn)
        .await?;
    let mut keys = Vec::new();
    for text in rows {
        match serde_json::from_str::<TrustedKey>(&text) {
            Ok(k) if k.key_id == rampart_audit::checkpoint::key_id_of(&k.public_key) => keys.push(k),
            _ => tracing::error!("a stored checkpoint key does not decode or does not match its id; ignored"),
        }
    }
    Ok(KeyRing::new(keys))
}

/// Opens the database for reading only, without migrations (`rampart audit verify`): every
/// connection is `query_only` on SQLite and `default_transaction_read_only` on PostgreSQL.
pub async fn connect_query_only(url: &str, password_file: Option<&std::path::Path>) -> Result<Db> {
    sqlx::any::install_default_drivers();
    let backend = if url.starts_with("sqlite:") {
        Backend::Sqlite
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Backend::Postgres
    } else {
        return Err(DbError::UnsupportedUrl(rampart_common::redact_url(url)));
    };
    if backend == Backend::Postgres {
        crate::check_postgres_tls(url)?;
    }
    let mut url = url.to_string();
    if let Some(file) = password_file {
        let password = std::fs::read_to_string(file).map_err(|source| DbError::PasswordFile {
            path: file.to_path_buf(),
            source,
        })?;
        url = crate::with_password(&url, password.trim_end_matches(['\r', '\n']));
    }
    if backend == Backend::Sqlite
        && let Some(path) = crate::sqlite_path(&url)
        && !path.exists()
    {
        return Err(DbError::SqliteFile {
            path,
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
    }
    let redacted = rampart_common::redact_url(&url);
    let options = AnyConnectOptions::from_str(&url).map_err(|source| DbError::Connect {
        url: redacted.clone(),
        source,
    })?;
    let pool = AnyPoolOptions::new()
        .max_connections(2)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                match backend {
                    Backend::Sqlite => {
                        conn.execute("PRAGMA query_only = ON; PRAGMA busy_timeout = 10000;")
                            .await?;
                    }
                    Backend::Postgres => {
                        conn.execute("SET default_transaction_read_only = on").await?;
                    }
                }
                Ok(())
            })
        })
        .connect_with(options)
        .await
        .map_err(|source| DbError::Connect { url: redacted, source })?;
    Ok(Db {
        pool,
        backend,
        writes: Default::default(),
    })
}
