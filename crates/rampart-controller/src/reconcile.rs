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
const CERT_CHECK_EVERY: u64 = 3600;
const METRICS_PRUNE_EVERY: u64 = 300;

pub fn spawn(state: AppState) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks: u64 = 0;
        let mut leader = false;
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
                if let Err(e) = node_liveness(&state).await {
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
            if ticks % CERT_CHECK_EVERY == CERT_CHECK_EVERY - 1 {
                let days = state.config.tls.server_certificate_days;
                if let Err(e) = state.server_cert.renew_if_due(&state.ca, days, state.now()) {
                    tracing::error!(error = %rampart_common::error::ErrorChain(&e), "server certificate renewal failed");
                }
            }
            ticks += 1;
        }
        if leader && let Ok(mut conn) = state.db.conn().await {
            let _ = leases::release(&mut conn, LEASE, &state.instance_id).await;
        }
    })
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
        let doc = crate::render::node_document_json(&mut tx, &state.config, id, &name).await?;
        let after = nodes::publish_config(&mut tx, id, &doc).await?;
        rampart_db::Db::commit(tx).await?;
        changed |= before != Some(after);
    }
    if changed {
        state.notify_node_changes();
    }
    Ok(())
}
