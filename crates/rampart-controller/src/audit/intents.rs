//! Write-ahead intents whose call never answered (a crash, a full disk): completed from the
//! database so the trail always says what became of a call.

use rampart_audit::record::{AuditResult, NewRecord, Target};
use rampart_audit::store::AuditError;
use rampart_common::Error;
use time::OffsetDateTime;

use crate::state::AppState;

/// The completion of an open intent whose call will never answer: `success` (status 200, with
/// what it created when known) if a transaction of the call committed, else `abandoned`
/// (outcome `failure`, status 500, code `abandoned`): nothing of it was committed.
pub fn intent_completion(intent: &rampart_db::intents::OpenIntent, now: OffsetDateTime) -> NewRecord {
    let p = &intent.pending;
    let target = Target::new(
        p.target.kind.clone(),
        p.target.id.clone().or(intent.target_id.clone()),
        p.target.project.clone(),
    );
    let result = if intent.committed {
        AuditResult::success(200)
    } else {
        AuditResult::failure(500, "abandoned")
    };
    let mut r = NewRecord::new(now, p.actor.clone(), p.operation.clone(), target, result)
        .detail("intent_seq", p.seq)
        .detail(
            "reconciled",
            "the call ended without a completion record (process stopped); completed at start-up from the database",
        );
    r.source_ip = p.source_ip.clone();
    r.user_agent = p.user_agent.clone();
    r.request_id = p.request_id.clone();
    r
}

/// Appends a completion for every open intent sealed before `before` (calls that cannot still
/// be running); returns how many. Runs at start-up and then on the leader, so that the trail
/// always says what became of a call.
pub async fn reconcile_intents(state: &AppState, before: OffsetDateTime) -> Result<u64, Error> {
    let mut completed = 0;
    loop {
        let page = {
            let mut conn = state.db.conn().await?;
            rampart_db::intents::open_intents(&mut conn, before, 500).await?
        };
        for intent in &page.open {
            let rec = intent_completion(intent, state.now());
            state.audit.log.append(rec).await.map_err(AuditError::into_public)?;
            tracing::warn!(
                intent_seq = intent.pending.seq,
                operation = %intent.pending.operation,
                committed = intent.committed,
                "open audit intent completed"
            );
            completed += 1;
        }
        let mut conn = state.db.conn().await?;
        rampart_db::intents::advance(&mut conn, page.watermark).await?;
        if page.done {
            break;
        }
    }
    if completed > 0 {
        state.audit.wake_pump.notify_one();
    }
    Ok(completed)
}

/// How long a call may run before an open intent of it is taken for dead when other
/// controllers may be serving it (PostgreSQL). Image uploads are not bounded by
/// `api.request_timeout_s`, hence the generous hour.
const INTENT_GRACE: time::Duration = time::Duration::hours(1);

/// The start-up pass over open intents, in the background (serving does not wait). On SQLite
/// this controller is the only one: every call begun before `started` died with the previous
/// process. On PostgreSQL, calls of other controllers may still run, so only old intents count.
pub fn spawn_intent_reconcile(state: AppState, started: OffsetDateTime) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let before = match state.db.backend() {
            rampart_db::Backend::Sqlite => started,
            rampart_db::Backend::Postgres => started - INTENT_GRACE,
        };
        match reconcile_intents(&state, before).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(completed = n, "open audit intents of the previous run completed"),
            Err(e) => tracing::error!(error = %e, "open audit intents not reconciled at start; the leader retries"),
        }
    })
}

/// Calls whose completion record failed (a full disk) while this process ran: leader work.
pub async fn reconcile_late(state: &AppState) -> Result<u64, Error> {
    reconcile_intents(state, state.now() - INTENT_GRACE).await
}
