//! What became of write-ahead intents (issue 13). A state-changing call is sealed as a
//! `pending` audit record before it runs; if the process dies before its completion record,
//! the trail alone cannot tell whether the change happened. So the call runs inside an intent
//! [`scope`], and every transaction it commits through [`crate::Db::commit`] (or a create that
//! calls [`created`]) leaves a row in `audit_intents` in the same transaction: a row means the
//! change committed. The reconciler reads the open intents with [`open_intents`] and appends
//! their completions.

use std::future::Future;

use rampart_audit::record::AuditRecord;
use rampart_common::time::to_ms;
use sqlx::AnyConnection;
use time::OffsetDateTime;

use crate::audit::{RECORD_COLUMNS, record_of};
use crate::{DbError, Result};

tokio::task_local! {
    static INTENT: u64;
}

/// Meta key: every pending record up to this seq has a completion.
const WATERMARK: &str = "audit_intents_reconciled_seq";

/// Runs `f` (a call's handler) as the call whose pending record is `seq`.
pub async fn scope<F: Future>(seq: u64, f: F) -> F::Output {
    INTENT.scope(seq, f).await
}

/// The pending record's seq of the call running on this task, if any.
pub fn current() -> Option<u64> {
    INTENT.try_with(|s| *s).ok()
}

/// Records, inside the transaction of the change, that the current call's change committed.
pub(crate) async fn mark(conn: &mut AnyConnection, target_id: Option<&str>) -> Result<()> {
    let Some(seq) = current() else {
        return Ok(());
    };
    sqlx::query(
        "INSERT INTO audit_intents (intent_seq, target_id, committed_at) VALUES ($1, $2, $3) \
         ON CONFLICT (intent_seq) DO UPDATE SET target_id = COALESCE(excluded.target_id, audit_intents.target_id)",
    )
    .bind(i64::try_from(seq).map_err(|_| DbError::Corrupt(format!("intent seq {seq}")))?)
    .bind(target_id)
    .bind(to_ms(OffsetDateTime::now_utc()))
    .execute(conn)
    .await?;
    Ok(())
}

/// Records, inside the transaction that created it, the id of what the current call created.
pub async fn created(conn: &mut AnyConnection, target_id: &str) -> Result<()> {
    mark(conn, Some(target_id)).await
}

/// A pending record without a completion, and what the database says happened.
#[derive(Debug, Clone)]
pub struct OpenIntent {
    pub pending: AuditRecord,
    /// A transaction of the call committed.
    pub committed: bool,
    /// What the call created, when it said.
    pub target_id: Option<String>,
}

/// One page of the reconciler's walk over pending records.
#[derive(Debug, Default)]
pub struct IntentPage {
    pub open: Vec<OpenIntent>,
    /// Every pending record up to this seq is resolved once `open` is completed.
    pub watermark: u64,
    /// No pending record after `watermark` is older than the cut-off.
    pub done: bool,
}

/// Pending records after the watermark, sealed before `before` (calls that cannot still be
/// running), whose request has no other record: the open intents, in seq order.
pub async fn open_intents(conn: &mut AnyConnection, before: OffsetDateTime, limit: u32) -> Result<IntentPage> {
    let from: i64 = crate::meta::get(conn, WATERMARK)
        .await?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let sql = format!(
        "SELECT {RECORD_COLUMNS} FROM audit_records WHERE outcome = 'pending' AND seq > $1 ORDER BY seq LIMIT $2"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(from)
        .bind(i64::from(limit))
        .fetch_all(&mut *conn)
        .await?;
    let mut page = IntentPage {
        watermark: u64::try_from(from).unwrap_or(0),
        done: (rows.len() as u64) < u64::from(limit),
        ..IntentPage::default()
    };
    for row in &rows {
        let pending = record_of(row).map_err(|e| DbError::Corrupt(format!("audit record {}: {}", e.seq, e.field)))?;
        if pending.time >= before {
            page.done = true;
            break;
        }
        let completed = match &pending.request_id {
            Some(id) => sqlx::query_scalar::<_, i64>(
                "SELECT seq FROM audit_records WHERE request_id = $1 AND outcome <> 'pending' LIMIT 1",
            )
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?
            .is_some(),
            // Not from a request: nothing can complete it by request id; it is completed here.
            None => false,
        };
        if !completed {
            let marker: Option<(Option<String>,)> =
                sqlx::query_as("SELECT target_id FROM audit_intents WHERE intent_seq = $1")
                    .bind(pending.seq as i64)
                    .fetch_optional(&mut *conn)
                    .await?;
            page.open.push(OpenIntent {
                committed: marker.is_some(),
                target_id: marker.and_then(|m| m.0),
                pending: pending.clone(),
            });
        }
        page.watermark = pending.seq;
    }
    Ok(page)
}

/// Moves the watermark once the open intents up to it are completed, and drops the markers
/// it covers (the table stays as small as the calls in flight).
pub async fn advance(conn: &mut AnyConnection, watermark: u64) -> Result<()> {
    let w = i64::try_from(watermark).map_err(|_| DbError::Corrupt(format!("watermark {watermark}")))?;
    crate::meta::set(conn, WATERMARK, &w.to_string()).await?;
    sqlx::query("DELETE FROM audit_intents WHERE intent_seq <= $1")
        .bind(w)
        .execute(conn)
        .await?;
    Ok(())
}
