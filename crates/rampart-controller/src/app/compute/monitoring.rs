//! Instance metrics (spec 12.1-5): an instance's series, the Prometheus scrape of every
//! instance, and their retention.

use rampart_api::compute::{InstanceMetrics, MetricsPoint};
use rampart_common::Error;
use rampart_common::time::{from_ms, to_ms};
use rampart_compute::monitor;
use rampart_db::compute::{self as db, MetricsRow};
use uuid::Uuid;

use crate::audit::operations::Operation;
use crate::auth::Principal;
use crate::state::AppState;

fn point(m: &MetricsRow) -> MetricsPoint {
    MetricsPoint {
        at: from_ms(m.at_ms),
        cpu_percent: m.cpu_percent,
        memory_bytes: m.memory_bytes.max(0) as u64,
        disk_read_bps: m.disk_read_bps,
        disk_write_bps: m.disk_write_bps,
        disk_write_iops: m.disk_write_iops,
        net_rx_bps: m.net_rx_bps,
        net_tx_bps: m.net_tx_bps,
    }
}

pub const INSTANCE_METRICS: Operation = Operation::new("metric.list", "metric").target("id");

/// The instance's samples of the last `since_s` seconds (default 3600, at most a year),
/// oldest first.
pub async fn instance_metrics(
    state: &AppState,
    principal: &Principal,
    project: Uuid,
    id: Uuid,
    since_s: Option<u64>,
) -> Result<InstanceMetrics, Error> {
    super::instance(state, principal, project, id, "project.read").await?;
    let since = to_ms(state.now()) - since_s.unwrap_or(3600).min(366 * 86_400) as i64 * 1000;
    let mut conn = state.db.conn().await?;
    let rows = db::metrics(&mut conn, id, since, 5000).await?;
    let series: Vec<MetricsPoint> = rows.iter().map(point).collect();
    Ok(InstanceMetrics {
        latest: series.last().cloned(),
        series,
        totals: None,
    })
}

/// How old the newest sample of an instance may be to appear in the Prometheus scrape: older
/// ones belong to stopped VMs or silent nodes, and a stale gauge would lie.
const SCRAPE_FRESH_S: i64 = 300;

pub const PROMETHEUS: Operation = Operation::new("metric.list", "metric");

/// The newest metrics of every instance, and the controller's HSM error count, in the
/// Prometheus text format 0.0.4 (system readers).
pub async fn prometheus(state: &AppState, principal: &Principal) -> Result<String, Error> {
    principal.require_system(state, "system.read")?;
    let mut conn = state.db.conn().await?;
    let rows = db::latest_metrics(&mut conn, to_ms(state.now()) - SCRAPE_FRESH_S * 1000).await?;
    let items: Vec<_> = rows
        .into_iter()
        .map(|(id, project, m)| {
            let metrics = monitor::Metrics {
                at_ms: m.at_ms,
                cpu_percent: m.cpu_percent,
                memory_bytes: u64::try_from(m.memory_bytes).unwrap_or(0),
                disk_read_bps: m.disk_read_bps,
                disk_write_bps: m.disk_write_bps,
                disk_write_iops: m.disk_write_iops,
                net_rx_bps: m.net_rx_bps,
                net_tx_bps: m.net_tx_bps,
            };
            (id, project.to_string(), metrics)
        })
        .collect();
    Ok(format!(
        "{}# HELP rampart_hsm_errors HSM failures seen by this controller since it started (retried ones included).\n\
         # TYPE rampart_hsm_errors gauge\nrampart_hsm_errors {}\n",
        monitor::prometheus_text(&items),
        state.kms.service.error_count()
    ))
}

/// Drops metrics older than `compute.metrics_retention_s`.
pub async fn prune_metrics(state: &AppState) -> Result<(), Error> {
    let cutoff = to_ms(state.now()) - state.config.compute.metrics_retention_s as i64 * 1000;
    let mut conn = state.db.conn().await?;
    let n = db::prune_metrics(&mut conn, cutoff).await?;
    if n > 0 {
        tracing::debug!(rows = n, "pruned instance metrics");
    }
    Ok(())
}
