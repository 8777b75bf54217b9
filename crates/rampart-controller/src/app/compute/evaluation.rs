//! The alarm evaluator (spec 12.1-6; leader only): each due alarm is evaluated over its
//! instance's metrics by the pure [`rampart_compute::alarm`]; a state change is audited first,
//! then recorded as a transition and sent to the alarm's webhooks.

use rampart_common::Error;
use rampart_common::time::to_ms;
use rampart_compute::alarm::{self, AlarmRule, Comparison, TimeWindow};
use rampart_db::compute::{self as db, AlarmRow};

use super::records;
use super::webhooks::{send_webhooks, system_roots, webhook_policy};
use crate::state::AppState;

/// The alarm rule of a stored alarm.
pub fn rule_of(a: &AlarmRow) -> Result<AlarmRule, Error> {
    let comparison: Comparison = serde_json::from_value(serde_json::Value::String(a.comparison.clone()))
        .map_err(|_| Error::internal("reading an alarm", "bad comparison"))?;
    let windows: Vec<TimeWindow> = records::alarm_lists(a).windows;
    Ok(AlarmRule {
        metric: a.metric.clone(),
        comparison,
        threshold: a.threshold,
        period_s: a.period_s.max(1) as u64,
        periods: a.periods.max(1) as u32,
        datapoints: a.datapoints.max(1) as u32,
        windows,
    })
}

fn metric_value(m: &db::MetricsRow, name: &str) -> Option<f64> {
    Some(match name {
        "cpu_percent" => m.cpu_percent,
        "memory_bytes" => m.memory_bytes as f64,
        "disk_read_bps" => m.disk_read_bps,
        "disk_write_bps" => m.disk_write_bps,
        "disk_write_iops" => m.disk_write_iops,
        "net_rx_bps" => m.net_rx_bps,
        "net_tx_bps" => m.net_tx_bps,
        _ => return None,
    })
}

/// One pass of the alarm evaluator (leader only): each enabled alarm whose period has passed
/// since its last evaluation is evaluated over its instance's metrics; a state change is
/// recorded as a transition, logged as an audit event and sent to the alarm's webhooks.
pub async fn evaluate_alarms(state: &AppState) -> Result<(), Error> {
    let now = state.now();
    let now_ms = to_ms(now);
    let mut conn = state.db.conn().await?;
    for a in db::enabled_alarms(&mut conn).await? {
        if a.last_evaluated_at.is_some_and(|t| now_ms - t < a.period_s * 1000) {
            continue;
        }
        let rule = rule_of(&a)?;
        let span = a.period_s * 1000 * a.periods;
        let points: Vec<alarm::Datapoint> = db::metrics(&mut conn, a.instance_id, now_ms - span, 100_000)
            .await?
            .iter()
            .filter_map(|m| metric_value(m, &a.metric).map(|value| alarm::Datapoint { at_ms: m.at_ms, value }))
            .collect();
        let e = alarm::evaluate(&rule, &points, now_ms);
        db::mark_evaluated(&mut conn, a.id, now_ms).await?;
        let to = match e.state {
            alarm::AlarmState::Ok => "OK",
            alarm::AlarmState::Alarm => "ALARM",
            alarm::AlarmState::InsufficientData => "INSUFFICIENT_DATA",
        };
        if to == a.state {
            continue;
        }
        let reason = format!(
            "{} of the last {} periods of {} s breached {} {} (need {}); {} had data",
            e.breaching, a.periods, a.period_s, a.comparison, a.threshold, a.datapoints, e.present
        );
        // Write-ahead: the audit record exists before the new state does; if it cannot be
        // written the state stays and the next pass tries again.
        state
            .audit
            .append_system(
                rampart_audit::record::NewRecord::new(
                    now,
                    rampart_audit::record::Actor::system("alarms"),
                    "alarm.transition",
                    rampart_audit::record::Target::new("alarm", Some(a.id.to_string()), Some(a.project_id.to_string())),
                    rampart_audit::record::AuditResult::success(200),
                )
                .detail("name", a.name.clone())
                .detail("instance", a.instance_id.to_string())
                .detail("metric", a.metric.clone())
                .detail("from", a.state.clone())
                .detail("to", to)
                .detail("reason", reason.clone()),
            )
            .await?;
        if db::transition_alarm(&mut conn, a.id, &a.state, to, &reason, now).await? {
            tracing::warn!(
                target: "rampart::audit",
                operation = "alarm.transition",
                alarm = %a.id,
                name = %a.name,
                project = %a.project_id,
                instance = %a.instance_id,
                from = %a.state,
                to,
                reason = %reason,
                "alarm state changed"
            );
            let hooks = records::alarm_lists::<TimeWindow>(&a).webhooks;
            if !hooks.is_empty() {
                let body = serde_json::json!({
                    "alarm": a.id, "name": a.name, "project": a.project_id, "instance": a.instance_id,
                    "metric": a.metric, "from": a.state, "to": to, "reason": reason,
                    "at": rampart_common::time::rfc3339(now),
                });
                match webhook_policy(&state.config.compute) {
                    Ok(policy) => {
                        tokio::spawn(send_webhooks(hooks, policy, system_roots(), body));
                    }
                    Err(e) => tracing::error!(error = %e, "alarm webhooks not sent"),
                }
            }
        }
    }
    Ok(())
}
