//! Threshold alarms on an instance's metrics (spec 12.1-6): create, list, read, delete, and
//! their state history. The evaluation is [`super::evaluation`].

use rampart_api::List;
use rampart_api::compute::{Alarm, AlarmCreate, AlarmState, AlarmTransition};
use rampart_common::page::{PageParams, finish_page};
use rampart_common::{Error, names};
use rampart_compute::alarm::{AlarmRule, Comparison, TimeWindow};
use rampart_compute::monitor;
use rampart_db::compute::{self as db, AlarmRow};
use uuid::Uuid;

use super::records::{self, list_column};
use crate::audit::operations::Operation;
use crate::auth::Principal;
use crate::state::AppState;

fn alarm_view(a: AlarmRow) -> Alarm {
    let lists = records::alarm_lists(&a);
    Alarm {
        id: a.id,
        project_id: a.project_id,
        name: a.name,
        instance: a.instance_id,
        metric: a.metric,
        comparison: a.comparison,
        threshold: a.threshold,
        periods: a.periods as u32,
        datapoints: a.datapoints as u32,
        period_s: a.period_s as u64,
        windows: lists.windows,
        webhooks: lists.webhooks,
        state: state_of(&a.state),
        state_since: a.state_since,
    }
}

fn state_of(s: &str) -> AlarmState {
    AlarmState::parse(s).unwrap_or(AlarmState::InsufficientData)
}

/// The request's rule, checked, and its windows in the stored form.
fn check(state: &AppState, req: &AlarmCreate) -> Result<Vec<TimeWindow>, Error> {
    names::validate_name("name", &req.name)?;
    if !monitor::METRICS.contains(&req.metric.as_str()) {
        return Err(Error::field(
            "metric",
            format!("metric must be one of {}", monitor::METRICS.join(", ")),
        ));
    }
    let comparison: Comparison = serde_json::from_value(serde_json::Value::String(req.comparison.clone()))
        .map_err(|_| Error::field("comparison", "comparison must be >, >=, < or <="))?;
    let windows: Vec<TimeWindow> = req
        .windows
        .iter()
        .map(|w| TimeWindow {
            days: w.days.clone(),
            start_minute: w.start_minute,
            end_minute: w.end_minute,
            threshold: w.threshold,
        })
        .collect();
    let rule = AlarmRule {
        metric: req.metric.clone(),
        comparison,
        threshold: req.threshold,
        period_s: req.period_s,
        periods: req.periods,
        datapoints: req.datapoints,
        windows: windows.clone(),
    };
    rule.validate().map_err(|e| Error::field("period_s", e.to_string()))?;
    if req.webhooks.len() > 8 || req.webhooks.iter().any(|u| u.len() > 2048) {
        return Err(Error::field("webhooks", "at most 8 webhooks of at most 2048 bytes"));
    }
    let policy = super::webhooks::webhook_policy(&state.config.compute)?;
    for u in &req.webhooks {
        policy.check_url(u).map_err(|e| {
            Error::field(
                "webhooks",
                format!(
                    "{e}: each webhook is an https:// URL under a prefix allowed by compute.alarm_webhook_prefixes"
                ),
            )
        })?;
    }
    Ok(windows)
}

pub const CREATE: Operation = Operation::new("alarm.create", "alarm");

/// Create a threshold alarm on one metric of an instance of the project.
pub async fn create(state: &AppState, principal: &Principal, project: Uuid, req: AlarmCreate) -> Result<Alarm, Error> {
    principal.project(state, project, "project.write").await?;
    let windows = check(state, &req)?;
    let mut conn = state.db.conn().await?;
    db::instance(&mut conn, req.instance)
        .await?
        .filter(|i| i.project_id == project)
        .ok_or_else(|| Error::field("instance", "no such instance in this project"))?;
    let now = state.now();
    let row = AlarmRow {
        id: Uuid::new_v4(),
        project_id: project,
        name: req.name,
        instance_id: req.instance,
        metric: req.metric,
        comparison: req.comparison,
        threshold: req.threshold,
        period_s: req.period_s as i64,
        periods: req.periods.into(),
        datapoints: req.datapoints.into(),
        windows: list_column(&windows),
        webhooks: list_column(&req.webhooks),
        state: "INSUFFICIENT_DATA".into(),
        state_since: now,
        last_evaluated_at: None,
        created_at: now,
    };
    db::insert_alarm(&mut conn, &row).await?;
    tracing::info!(alarm = %row.id, name = %row.name, by = %principal.user.name, "alarm created");
    Ok(alarm_view(row))
}

pub const LIST: Operation = Operation::new("alarm.list", "alarm");

/// A page of the project's alarms, by name.
pub async fn list(
    state: &AppState,
    principal: &Principal,
    project: Uuid,
    page: &PageParams,
) -> Result<List<Alarm>, Error> {
    principal.project(state, project, "project.read").await?;
    let page = page.validate()?;
    let mut conn = state.db.conn().await?;
    let rows = db::list_alarms(&mut conn, project, page.after.as_deref(), page.limit + 1).await?;
    let (items, next) = finish_page(rows, page.limit, |a| a.name.clone());
    Ok(List {
        items: items.into_iter().map(alarm_view).collect(),
        next,
    })
}

pub const GET: Operation = Operation::new("alarm.get", "alarm").target("id");

/// One alarm.
pub async fn get(state: &AppState, principal: &Principal, project: Uuid, id: Uuid) -> Result<Alarm, Error> {
    Ok(alarm_view(
        super::alarm(state, principal, project, id, "project.read").await?,
    ))
}

pub const DELETE: Operation = Operation::new("alarm.delete", "alarm").target("id");

/// Delete an alarm.
pub async fn delete(state: &AppState, principal: &Principal, project: Uuid, id: Uuid) -> Result<(), Error> {
    super::alarm(state, principal, project, id, "project.write").await?;
    let mut conn = state.db.conn().await?;
    db::delete_alarm(&mut conn, id).await?;
    Ok(())
}

pub const HISTORY: Operation = Operation::new("alarm.history.get", "alarm").target("id");

/// The alarm's state transitions, oldest first.
pub async fn history(
    state: &AppState,
    principal: &Principal,
    project: Uuid,
    id: Uuid,
) -> Result<List<AlarmTransition>, Error> {
    super::alarm(state, principal, project, id, "project.read").await?;
    let mut conn = state.db.conn().await?;
    let items = db::alarm_transitions(&mut conn, id)
        .await?
        .into_iter()
        .map(|(at, from, to, reason)| AlarmTransition {
            at,
            from: state_of(&from),
            to: state_of(&to),
            reason,
        })
        .collect();
    Ok(List { items, next: None })
}
