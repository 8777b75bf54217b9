//! The network loop: converges the node's data plane on the `network` section of the desired
//! state through the host's network driver (observe → plan → apply, `rampart_net::exec`), on
//! every new generation and every `interval` to repair drift; between full passes it re-reads
//! the counters and flow logs each heartbeat interval. It publishes what it saw as the
//! node's [`NetworkStatus`] and the generation it applied without error.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rampart_api::agent::NodeConfig;
use rampart_api::network::{NetworkStatus, VpcNetworkStatus};
use rampart_net::desired::{NetNodeConfig, NodeNetwork};
use rampart_net::exec::{flow_records, reconcile, ruleset_counters};
use rampart_net::nft::ObservedRuleset;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::host::HostDriver;

/// Flow-log records reported per VPC (the busiest).
const MAX_FLOWS: usize = 500;
/// The controller refuses more, longer errors.
const MAX_ERRORS: usize = 50;
const MAX_ERROR_LEN: usize = 2000;

pub(crate) struct NetLoop {
    pub host: Arc<dyn HostDriver>,
    pub cfg: NetNodeConfig,
    pub interval: Duration,
    pub desired: watch::Receiver<Option<NodeConfig>>,
    pub applied: Arc<AtomicI64>,
    pub report: Arc<Mutex<Option<NetworkStatus>>>,
    pub wake: watch::Sender<()>,
    pub shutdown: CancellationToken,
}

fn vpc_status(
    cfg: &NetNodeConfig,
    net: &NodeNetwork,
    rulesets: &BTreeMap<String, ObservedRuleset>,
) -> Vec<VpcNetworkStatus> {
    net.vpcs
        .iter()
        .map(|v| {
            let r = rulesets.get(&cfg.vpc_netns(&v.vpc.id));
            VpcNetworkStatus {
                vpc: v.vpc.id,
                counters: r.map(ruleset_counters).unwrap_or_default(),
                flows: r.map(|r| flow_records(r, MAX_FLOWS)).unwrap_or_default(),
            }
        })
        .collect()
}

fn clip(errors: Vec<String>) -> Vec<String> {
    errors
        .into_iter()
        .take(MAX_ERRORS)
        .map(|mut e| {
            if e.len() > MAX_ERROR_LEN {
                let mut cut = MAX_ERROR_LEN;
                while !e.is_char_boundary(cut) {
                    cut -= 1;
                }
                e.truncate(cut);
            }
            e
        })
        .collect()
}

/// One full pass (blocking: the driver runs host tools).
fn full_pass(host: &dyn HostDriver, cfg: &NetNodeConfig, doc: &NodeConfig) -> (NetworkStatus, bool) {
    let started = std::time::Instant::now();
    let mut status = NetworkStatus::default();
    let mut errors = Vec::new();
    match reconcile(host.net(), cfg, &doc.network) {
        Ok((steps, report)) => {
            status.last_steps = steps.len() as u64;
            status.last_nft_ms = report.nft_times.iter().map(|(_, d)| d.as_millis() as u64).sum();
            if !steps.is_empty() {
                tracing::info!(
                    generation = doc.generation,
                    steps = steps.len(),
                    nft_ms = status.last_nft_ms,
                    fallbacks = report.nft_fallbacks,
                    errors = report.errors.len(),
                    took_ms = started.elapsed().as_millis() as u64,
                    "network converged"
                );
            }
            errors.extend(report.errors.into_iter().map(|e| format!("network: {e}")));
        }
        Err(e) => {
            tracing::warn!(error = %rampart_common::error::ErrorChain(&e), "cannot plan the network");
            errors.push(format!("network: {e}"));
        }
    }
    match host.net().rulesets(cfg) {
        Ok(r) => status.vpcs = vpc_status(cfg, &doc.network, &r),
        Err(e) => errors.push(format!("network: reading counters: {e}")),
    }
    let ok = errors.is_empty();
    status.errors = clip(errors);
    status.tunnel_ip = cfg.underlay.as_ref().map(|u| u.local_ip);
    (status, ok)
}

pub(crate) async fn run(l: NetLoop) {
    let NetLoop {
        host,
        cfg,
        interval,
        mut desired,
        applied,
        report,
        wake,
        shutdown,
    } = l;
    loop {
        let doc = desired.borrow_and_update().clone();
        let heartbeat = doc
            .as_ref()
            .map(|d| Duration::from_secs(d.heartbeat_interval_s.max(1)))
            .unwrap_or(Duration::from_secs(5));
        if let Some(doc) = doc.clone() {
            let (h, c) = (host.clone(), cfg.clone());
            match tokio::task::spawn_blocking(move || {
                let r = full_pass(&*h, &c, &doc);
                (r, doc.generation)
            })
            .await
            {
                Ok(((mut status, ok), generation)) => {
                    if ok {
                        applied.store(generation, Ordering::SeqCst);
                    }
                    status.applied_generation = applied.load(Ordering::SeqCst);
                    *report.lock().expect("report lock") = Some(status);
                    wake.send_replace(());
                }
                Err(e) => tracing::error!(error = %e, "network pass panicked"),
            }
        }
        // Until the next full pass: refresh counters and flow logs every heartbeat interval.
        let deadline = tokio::time::Instant::now() + interval;
        loop {
            let next = (tokio::time::Instant::now() + heartbeat).min(deadline);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = desired.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    break;
                }
                _ = tokio::time::sleep_until(next) => {
                    if tokio::time::Instant::now() >= deadline {
                        break;
                    }
                    let Some(doc) = doc.as_ref() else { continue };
                    if doc.network.is_empty() {
                        continue;
                    }
                    let (h, c, net) = (host.clone(), cfg.clone(), doc.network.clone());
                    if let Ok(Ok(r)) = tokio::task::spawn_blocking(move || {
                        h.net().rulesets(&c).map(|r| vpc_status(&c, &net, &r))
                    })
                    .await
                        && let Some(s) = report.lock().expect("report lock").as_mut()
                    {
                        s.vpcs = r;
                    }
                }
            }
        }
    }
}
