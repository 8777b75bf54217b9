//! The controller's background work, one supervised task per job, each with its own period
//! and its own health (`GET /v1/health?verbose`): a slow pass of one (an HSM that takes its
//! time) no longer delays another (node liveness).
//!
//! Jobs that must run once per installation run only on the controller holding the
//! `reconcilers` lease ([`lease`]); each pass is idempotent and takes no input, so a restart or
//! a failover simply runs it again. A failed pass is logged and retried after the period (or
//! after a growing back-off where one is set); a task that panics is restarted by its
//! supervisor and the restart counted.

mod certificates;
mod ha;
mod housekeeping;
mod lease;
mod liveness;
pub mod registry;
pub mod system_backup;

use std::time::Duration;

use futures::future::BoxFuture;
use tokio::task::JoinHandle;

use crate::state::AppState;

pub use registry::Registry;

/// One pass of a job: `Err` carries the error for the run log.
type Job = fn(AppState) -> BoxFuture<'static, Result<(), String>>;

#[derive(Clone, Copy)]
struct Task {
    name: &'static str,
    leader_only: bool,
    period: Duration,
    /// After a failed pass wait this long, doubling up to the second value.
    backoff: Option<(Duration, Duration)>,
    run: Job,
}

fn seconds(s: u64) -> Duration {
    Duration::from_secs(s.max(1))
}

fn tasks(state: &AppState) -> Vec<Task> {
    let c = &state.config;
    let t = |name, leader_only, period, run| Task {
        name,
        leader_only,
        period,
        backoff: None,
        run,
    };
    let mut all = vec![
        t("reconciler_lease", false, seconds(1), |s| Box::pin(lease::renew(s))),
        t("node_liveness", true, seconds(1), |s| Box::pin(liveness::pass(s))),
        t("ha_recovery", true, seconds(1), |s| Box::pin(ha::pass(s))),
        t("audit_checkpoint", true, seconds(1), |s| {
            Box::pin(async move { crate::audit::retention::checkpoint(&s).await })
        }),
        t("audit_intents", true, seconds(60), |s| {
            Box::pin(async move {
                crate::audit::intents::reconcile_late(&s)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            })
        }),
        t("audit_retention", true, seconds(c.audit.purge_interval_s), |s| {
            Box::pin(async move {
                crate::audit::retention::purge(&s)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            })
        }),
        t("alarms", true, seconds(1), |s| {
            Box::pin(async move {
                crate::app::compute::evaluation::evaluate_alarms(&s)
                    .await
                    .map_err(|e| e.to_string())
            })
        }),
        t("metrics_prune", true, seconds(300), |s| {
            Box::pin(async move {
                crate::app::compute::monitoring::prune_metrics(&s)
                    .await
                    .map_err(|e| e.to_string())
            })
        }),
        t("token_purge", true, seconds(600), |s| {
            Box::pin(housekeeping::purge_tokens(s))
        }),
        t("key_maintenance", true, seconds(c.kms.maintenance_interval_s), |s| {
            Box::pin(async move { crate::app::keys::maintain(&s).await.map_err(|e| e.to_string()) })
        }),
        Task {
            backoff: Some((seconds(30), seconds(3600))),
            ..t("server_certificate", false, seconds(5), |s| {
                Box::pin(certificates::renew(s))
            })
        },
    ];
    if c.backup.system.passphrase_file.is_some() {
        all.push(t(
            system_backup::TASK,
            true,
            seconds(system_backup::period_s(&c.backup.system)),
            |s| Box::pin(system_backup::pass(s)),
        ));
    }
    all
}

/// Starts every task under its supervisor.
pub fn spawn_all(state: &AppState) -> Vec<JoinHandle<()>> {
    let mut handles: Vec<JoinHandle<()>> = tasks(state)
        .into_iter()
        .map(|t| {
            state.tasks.register(t.name, t.leader_only, t.period.as_secs());
            supervise(state.clone(), t)
        })
        .collect();
    handles.push(tokio::spawn(lease::release_on_shutdown(state.clone())));
    handles
}

fn supervise(state: AppState, task: Task) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match tokio::spawn(run(state.clone(), task)).await {
                Ok(()) => return,
                Err(e) if e.is_panic() => {
                    state.tasks.restarted(task.name);
                    tracing::error!(task = task.name, "background task panicked; restarting it");
                    tokio::select! {
                        _ = state.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
                Err(_) => return,
            }
        }
    })
}

async fn run(state: AppState, task: Task) {
    let mut wait = Duration::ZERO;
    let mut backoff: Option<Duration> = None;
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        if task.leader_only && !state.tasks.is_leader() {
            // Checked every second so that a new leader starts its jobs at once.
            wait = Duration::from_secs(1);
            continue;
        }
        match (task.run)(state.clone()).await {
            Ok(()) => {
                state.tasks.succeeded(task.name, state.now());
                backoff = None;
                wait = task.period;
            }
            Err(error) => {
                let failures = state.tasks.failed(task.name);
                wait = match task.backoff {
                    Some((first, max)) => {
                        let next = backoff.map_or(first, |b| (b * 2).min(max));
                        backoff = Some(next);
                        next
                    }
                    None => task.period,
                };
                tracing::warn!(task = task.name, %error, failures, retry_in_s = wait.as_secs(), "background task pass failed");
            }
        }
    }
}
