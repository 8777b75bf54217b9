//! Background work. Jobs that must run once per installation (node liveness, token purge)
//! run only on the controller holding the `reconcilers` lease; each pass is idempotent and
//! takes no input, so a restart or a failover simply runs it again. The server certificate
//! renewal runs on every controller (each has its own certificate).

use std::time::Duration;

use rampart_common::time::to_ms;
use rampart_db::{identity, leases, nodes};
use tokio::task::JoinHandle;

use crate::state::AppState;

const LEASE: &str = "reconcilers";
const LEASE_TTL: time::Duration = time::Duration::seconds(15);
const TICK: Duration = Duration::from_secs(1);
const TOKEN_PURGE_EVERY: u64 = 600;
/// How often the server certificate's renewal time is compared with the clock (cheap).
const CERT_CHECK_EVERY: u64 = 5;
/// After a failed renewal: wait this many ticks, doubling up to an hour.
const CERT_RETRY_FIRST: u64 = 30;
const CERT_RETRY_MAX: u64 = 3600;
const METRICS_PRUNE_EVERY: u64 = 300;

pub fn spawn(state: AppState) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks: u64 = 0;
        let mut leader = false;
        // When this controller became the leader: node liveness waits a heartbeat timeout
        // after it, so agents that kept running through a controller restart (or failover)
        // have time to report before they are declared unreachable.
        let mut leader_since = std::time::Instant::now();
        let mut cert_retry = CertRetry::default();
        let mut interval = tokio::time::interval(TICK);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = state.shutdown.cancelled() => break,
                _ = interval.tick() => {}
            }
            leader = match take_lease(&state).await {
                Ok(now_leader) => {
                    if now_leader != leader {
                        tracing::info!(instance = %state.instance_id, leader = now_leader, "reconciler lease changed hands");
                        leader_since = std::time::Instant::now();
                    }
                    now_leader
                }
                Err(e) => {
                    tracing::warn!(error = %rampart_common::error::ErrorChain(&e), "cannot renew the reconciler lease");
                    false
                }
            };
            state.audit.set_leader(leader);
            if leader {
                crate::audit::leader_tick(&state, ticks).await;
                let grace = Duration::from_secs(state.config.nodes.heartbeat_timeout_s);
                if leader_since.elapsed() >= grace
                    && let Err(e) = node_liveness(&state).await
                {
                    tracing::warn!(error = %rampart_common::error::ErrorChain(&e), "node liveness pass failed");
                }
                if let Err(e) = crate::compute::evaluate_alarms(&state).await {
                    tracing::warn!(error = %rampart_common::error::ErrorChain(&e), "alarm evaluation failed");
                }
                if ticks % METRICS_PRUNE_EVERY == 7
                    && let Err(e) = crate::compute::prune_metrics(&state).await
                {
                    tracing::warn!(error = %rampart_common::error::ErrorChain(&e), "metrics pruning failed");
                }
                if ticks.is_multiple_of(TOKEN_PURGE_EVERY)
                    && let Err(e) = purge_tokens(&state).await
                {
                    tracing::warn!(error = %rampart_common::error::ErrorChain(&e), "token purge failed");
                }
                if ticks.is_multiple_of(state.config.kms.maintenance_interval_s)
                    && let Err(e) = crate::kms::maintain(&state).await
                {
                    tracing::warn!(error = %e, "key and certificate maintenance failed");
                }
            }
            if ticks % CERT_CHECK_EVERY == CERT_CHECK_EVERY - 1 && ticks >= cert_retry.next_tick {
                renew_server_certificate(&state, ticks, &mut cert_retry).await;
            }
            ticks += 1;
        }
        if leader && let Ok(mut conn) = state.db.conn().await {
            let _ = leases::release(&mut conn, LEASE, &state.instance_id).await;
        }
    })
}

#[derive(Debug, Default)]
struct CertRetry {
    next_tick: u64,
    wait: u64,
}

/// Renews the API server certificate once two thirds of its lifetime are gone (spec 13.3-2,
/// 12.3.1), in place: the listener stays up and new handshakes get the new certificate. On
/// failure the current certificate is kept (it is still valid for a third of its lifetime)
/// and the renewal is retried with a growing wait.
async fn renew_server_certificate(state: &AppState, ticks: u64, retry: &mut CertRetry) {
    let now = state.now();
    if now < state.server_cert.renewal_due() {
        return;
    }
    let (cert, ca) = (state.server_cert.clone(), state.ca.clone());
    let days = state.config.tls.server_certificate_days;
    let result = crate::kms::blocking(move || cert.renew_if_due(&ca, days, now)).await;
    match result {
        Ok(Ok(renewed)) => {
            *retry = CertRetry::default();
            if renewed
                && let Ok(mut conn) = state.db.conn().await
                && let Err(e) = crate::kms::record_server_certificate(state, &mut conn).await
            {
                tracing::warn!(error = %rampart_common::error::ErrorChain(&e), "cannot put the renewed server certificate in the inventory");
            }
        }
        Ok(Err(e)) => {
            retry.wait = (retry.wait * 2).clamp(CERT_RETRY_FIRST, CERT_RETRY_MAX);
            retry.next_tick = ticks + retry.wait;
            tracing::error!(
                error = %rampart_common::error::ErrorChain(&e),
                not_after = %rampart_common::time::rfc3339(state.server_cert.not_after()),
                retry_in_s = retry.wait,
                "server certificate renewal failed; the current certificate stays in use"
            );
        }
        Err(e) => {
            retry.wait = (retry.wait * 2).clamp(CERT_RETRY_FIRST, CERT_RETRY_MAX);
            retry.next_tick = ticks + retry.wait;
            tracing::error!(error = %rampart_common::error::ErrorChain(&e), "server certificate renewal failed");
        }
    }
}

async fn take_lease(state: &AppState) -> rampart_db::Result<bool> {
    let now = state.now();
    let mut conn = state.db.conn().await?;
    leases::acquire(&mut conn, LEASE, &state.instance_id, to_ms(now), to_ms(now + LEASE_TTL)).await
}

/// Nodes silent for longer than `nodes.heartbeat_timeout_s` become unreachable.
pub async fn node_liveness(state: &AppState) -> rampart_db::Result<()> {
    let now = state.now();
    let cutoff = now - time::Duration::seconds(state.config.nodes.heartbeat_timeout_s as i64);
    let mut conn = state.db.conn().await?;
    let lost = nodes::mark_unreachable(&mut conn, cutoff, now).await?;
    drop(conn);
    for (id, name) in lost {
        tracing::warn!(node = %id, name = %name, timeout_s = state.config.nodes.heartbeat_timeout_s, "node is unreachable: no heartbeat");
        // A failed write is in the run log (append_system); liveness goes on.
        let _ = crate::audit::node_state_event(state, &id.to_string(), &name, "node.unreachable").await;
    }
    Ok(())
}

async fn purge_tokens(state: &AppState) -> rampart_db::Result<()> {
    let mut conn = state.db.conn().await?;
    let n = identity::purge_expired_tokens(&mut conn, state.now()).await?;
    if n > 0 {
        tracing::info!(count = n, "purged expired tokens");
    }
    let n = rampart_db::idempotency::purge(&mut conn, state.now() - crate::idempotency::TTL).await?;
    if n > 0 {
        tracing::info!(count = n, "forgot idempotency keys older than 24 h");
    }
    Ok(())
}

/// Re-renders every node's document (after an upgrade or a configuration change) and bumps
/// the generation of those that changed.
pub async fn republish_all(state: &AppState) -> rampart_db::Result<()> {
    let mut conn = state.db.conn().await?;
    let all = nodes::all_ids(&mut conn).await?;
    drop(conn);
    let mut changed = false;
    for (id, name) in all {
        let mut tx = state.db.begin().await?;
        let before = nodes::generation(&mut tx, id).await?;
        let doc = crate::publish::node_document_json(&mut tx, &state.config, id, &name).await?;
        let after = nodes::publish_config(&mut tx, id, &doc).await?;
        rampart_db::Db::commit(tx).await?;
        changed |= before != Some(after);
    }
    if changed {
        state.notify_node_changes();
    }
    Ok(())
}
