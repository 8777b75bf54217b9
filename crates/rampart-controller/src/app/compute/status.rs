//! What agents report about their VMs: node capability, instance status, events (the
//! audit records of refused boots), metrics and console; deleted instances are forgotten
//! once their node no longer has them.

use std::collections::{BTreeMap, BTreeSet};

use rampart_api::agent::AgentStatus;
use rampart_api::compute::{ComputeStatus, ObservedPower};
use rampart_common::Error;
use rampart_common::time::from_ms;
use rampart_db::compute::{self as db, InstanceRow};
use uuid::Uuid;

use super::records::to_column;
use crate::state::AppState;

/// Console output kept per instance.
pub const CONSOLE_MAX_BYTES: usize = 64 * 1024;

fn observed_status(p: ObservedPower, desired: &str, current: &str) -> Option<&'static str> {
    Some(match p {
        ObservedPower::Running | ObservedPower::Paused => "running",
        ObservedPower::Failed => "failed",
        ObservedPower::Crashed | ObservedPower::Panicked => "crashed",
        ObservedPower::Stopped if desired == "stopped" => "stopped",
        ObservedPower::Stopped | ObservedPower::Starting => {
            if current == "running" || current == "stopped" {
                return None;
            }
            "creating"
        }
    })
}

/// Applies what an agent reports about its VMs: node capability, instance status, events,
/// metrics, console; and forgets deleted instances the node no longer has.
pub async fn record_status(state: &AppState, node: Uuid, s: &AgentStatus, generation: i64) -> Result<(), Error> {
    let now = state.now();
    let mut conn = state.db.conn().await?;
    let Some(c) = &s.compute else {
        return Ok(());
    };
    check_report(c)?;
    db::set_node_compute(&mut conn, node, c.available, c.accel.as_deref(), &c.reason, now).await?;
    let rows: BTreeMap<Uuid, InstanceRow> = db::instances_on_node(&mut conn, node)
        .await?
        .into_iter()
        .map(|r| (r.id, r))
        .collect();
    let mut reported = BTreeSet::new();
    for r in &c.instances {
        reported.insert(r.id);
        let Some(row) = rows.get(&r.id) else {
            continue;
        };
        for e in &r.events {
            let detail = to_column(&e.detail, "{}");
            db::insert_event(&mut conn, r.id, from_ms(e.at_ms), &e.kind, &detail).await?;
            let (code, message) = (
                e.detail.get("code").and_then(|v| v.as_str()).unwrap_or(""),
                e.detail.get("message").and_then(|v| v.as_str()).unwrap_or(""),
            );
            match e.kind.as_str() {
                // The audit record of the refused boot (operation instance.boot, failure).
                "image_signature_invalid" | "start_failed" | "crashed" | "guest_panicked" => tracing::warn!(
                    target: "rampart::audit",
                    operation = "instance.boot",
                    outcome = "failure",
                    event = %e.kind,
                    code,
                    message,
                    instance = %r.id,
                    project = %row.project_id,
                    node = %node,
                    "instance event"
                ),
                _ => {
                    tracing::info!(target: "rampart::audit", operation = "instance.power", event = %e.kind, instance = %r.id, project = %row.project_id, node = %node, "instance event")
                }
            }
        }
        if let Some(m) = &r.metrics {
            db::insert_metrics(
                &mut conn,
                r.id,
                &db::MetricsRow {
                    at_ms: m.at_ms,
                    cpu_percent: m.cpu_percent,
                    memory_bytes: m.memory_bytes.min(i64::MAX as u64) as i64,
                    disk_read_bps: m.disk_read_bps,
                    disk_write_bps: m.disk_write_bps,
                    disk_write_iops: m.disk_write_iops,
                    net_rx_bps: m.net_rx_bps,
                    net_tx_bps: m.net_tx_bps,
                },
            )
            .await?;
        }
        if let Some(out) = &r.console {
            let mut start = out.len().saturating_sub(CONSOLE_MAX_BYTES);
            while !out.is_char_boundary(start) {
                start += 1;
            }
            db::set_console(&mut conn, r.id, &out[start..], now).await?;
        }
        if row.status == "deleting" {
            continue;
        }
        if let Some(status) = observed_status(r.power, &row.desired_power, &row.status) {
            let launched = (status == "running" && row.status != "running").then_some(now);
            let changed = db::record_observed(
                &mut conn,
                r.id,
                r.boot_seq,
                db::Observed {
                    status,
                    failure_code: r.error.as_ref().map(|e| e.code.as_str()),
                    failure_message: r.error.as_ref().map(|e| e.message.as_str()),
                    vm_uid: r.uid.map(i64::from),
                    launched_at: launched,
                },
                now,
            )
            .await?;
            if changed && status != row.status {
                tracing::info!(instance = %r.id, from = %row.status, to = status, node = %node, "instance status");
            }
        }
    }
    // A deleted instance is gone once the node applied a document without it and no longer
    // reports it.
    if s.applied_generation >= generation {
        for row in rows.values() {
            if row.status == "deleting" && !reported.contains(&row.id) {
                db::delete_instance(&mut conn, row.id).await?;
                tracing::info!(instance = %row.id, node = %node, "instance deleted");
            }
        }
    }
    Ok(())
}

fn check_report(c: &ComputeStatus) -> Result<(), Error> {
    let too_big = c.instances.len() > 10_000
        || c.reason.len() > 4096
        || c.instances.iter().any(|i| {
            i.events.len() > 1000
                || i.console.as_ref().is_some_and(|s| s.len() > 1 << 20)
                || i.error.as_ref().is_some_and(|e| e.message.len() > 4096)
        });
    if too_big {
        return Err(Error::field("compute", "the compute report is too large"));
    }
    Ok(())
}
