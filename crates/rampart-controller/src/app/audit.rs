//! The audit API (spec 13.4): the records, verification of the trail, retention per log type
//! and forwarding to an external log manager. Reading needs `audit.read` (system admin,
//! security admin, auditor), verifying `audit.verify`, changing retention or forwarding
//! `audit.manage` (security admin and auditor only: the system administrator whose actions
//! are recorded cannot shorten or redirect the record). Every call here is itself audited.

use crate::audit::operations::Operation;
use crate::audit::{FORWARDING_KEY, ForwardingSettings, ForwardingState, note_detail};
use crate::auth::Principal;
use crate::state::AppState;
use rampart_api::List;
use rampart_audit::record::AuditRecord;
use rampart_audit::retention::RetentionPolicy;
use rampart_audit::verify::{VerifyOptions, VerifyReport};
use rampart_common::Error;
use rampart_common::page::{PageParams, encode_cursor};
use rampart_db::audit::EventFilter;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Filters and paging of `GET /v1/audit/events`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventQuery {
    /// Records at or after this time (RFC 3339).
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[param(value_type = Option<String>, format = DateTime)]
    pub since: Option<OffsetDateTime>,
    /// Records before this time (RFC 3339).
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[param(value_type = Option<String>, format = DateTime)]
    pub until: Option<OffsetDateTime>,
    /// Actor id or name.
    pub actor: Option<String>,
    /// Operation, exact (`user.create`) or a prefix ending in `*` (`auth.*`).
    pub operation: Option<String>,
    /// `success` or `failure`.
    pub result: Option<String>,
    /// Project id of the target.
    pub project: Option<String>,
    /// `asc` (oldest first, the default) or `desc` (newest first).
    pub order: Option<String>,
    /// Number of records, 1 to 1000 (default 100).
    pub limit: Option<u32>,
    /// The `next` value of the previous page.
    pub cursor: Option<String>,
}

pub const LIST_EVENTS: Operation = Operation::new("audit.events.list", "audit_trail").sensitive_read();

/// Audit records, filtered, oldest first unless `order=desc`.
pub async fn list_events(state: &AppState, principal: &Principal, q: EventQuery) -> Result<List<AuditRecord>, Error> {
    principal.require_system(state, "audit.read")?;
    let page = PageParams {
        limit: q.limit,
        cursor: q.cursor.clone(),
    }
    .validate()?;
    let after = match page.after {
        Some(a) => Some(
            a.parse::<i64>()
                .map_err(|_| Error::field("cursor", "cursor is not a value returned as `next` by this list"))?,
        ),
        None => None,
    };
    if let Some(r) = &q.result
        && !matches!(r.as_str(), "success" | "failure" | "pending")
    {
        return Err(Error::field("result", "result is `success`, `failure` or `pending`"));
    }
    let descending = match q.order.as_deref() {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(_) => return Err(Error::field("order", "order is `asc` or `desc`")),
    };
    for (field, v) in [
        ("actor", &q.actor),
        ("operation", &q.operation),
        ("project", &q.project),
    ] {
        if v.as_ref().is_some_and(|v| v.is_empty() || v.len() > 256) {
            return Err(Error::field(field, format!("{field} must be 1 to 256 characters")));
        }
    }
    let filter = EventFilter {
        since: q.since,
        until: q.until,
        actor: q.actor.clone(),
        operation: q.operation.clone(),
        outcome: q.result.clone(),
        project: q.project.clone(),
        descending,
    };
    let mut conn = state.db.conn().await?;
    let rows = rampart_db::audit::list_events(&mut conn, &filter, after, page.limit + 1).await?;
    let mut items = Vec::with_capacity(rows.len());
    // Every reader here holds a system role: tenants' encryption contexts become digests, and a
    // reader who is not an auditor (the system admin) sees no tenant key ids either.
    let hide_key_ids = !principal.can(state, "audit.verify", rampart_iam::authz::Target::System);
    for row in rows {
        match row {
            Ok(mut r) => {
                rampart_audit::redact::for_system_readers(&mut r, hide_key_ids);
                items.push(r)
            }
            Err(e) => {
                // Shown by verification; a listing must not fail on it.
                tracing::error!(
                    seq = e.seq,
                    field = e.field,
                    "an audit row does not decode; left out of the listing"
                );
            }
        }
    }
    let next = if items.len() > page.limit as usize {
        items.truncate(page.limit as usize);
        items.last().map(|r| encode_cursor(&r.seq.to_string()))
    } else {
        None
    };
    note_detail("returned", items.len());
    Ok(List { items, next })
}

pub const VERIFY: Operation = Operation::new("audit.verify", "audit_trail");

/// Verifies the whole trail: every record's hash, the chain links, the Merkle roots and the
/// signatures of the checkpoints. Each problem names the record's seq and its kind
/// (`modified`, `missing`, `truncated`, `bad_signature`).
pub async fn verify(state: &AppState, principal: &Principal) -> Result<VerifyReport, Error> {
    principal.require_system(state, "audit.verify")?;
    let keys = {
        let mut conn = state.db.conn().await?;
        rampart_db::audit::keys(&mut conn).await?
    };
    let report = rampart_audit::store::verify_store(&state.audit.store, &keys, VerifyOptions::default())
        .await
        .map_err(|e| e.into_public())?;
    if !report.ok {
        tracing::error!(problems = report.problems.len(), first = ?report.problems.first().map(|p| (p.seq, p.kind)), "audit trail verification found problems");
    }
    note_detail("ok", report.ok);
    note_detail("checked", report.checked);
    note_detail("problems", report.problems.len() as u64 + report.problems_omitted);
    Ok(report)
}

pub const GET_RETENTION: Operation = Operation::new("audit.retention.get", "audit_retention").sensitive_read();

/// The retention of each log type, in days.
pub async fn get_retention(state: &AppState, principal: &Principal) -> Result<RetentionPolicy, Error> {
    principal.require_system(state, "audit.read")?;
    let mut conn = state.db.conn().await?;
    Ok(rampart_db::audit::retention(&mut conn).await?)
}

pub const PUT_RETENTION: Operation = Operation::new("audit.retention.update", "audit_retention");

/// Changes the retention (auditor or security admin). Operation and security records are kept
/// at least 180 days; the change itself is recorded with the old and new values.
pub async fn put_retention(
    state: &AppState,
    principal: &Principal,
    policy: RetentionPolicy,
) -> Result<RetentionPolicy, Error> {
    principal.require_system(state, "audit.manage")?;
    let violations = policy.validate();
    if !violations.is_empty() {
        return Err(Error::Validation {
            message: "retention out of range".into(),
            details: Some(serde_json::json!({ "fields": violations })),
        });
    }
    let mut tx = state.db.begin().await?;
    let old = rampart_db::audit::retention(&mut tx).await?;
    rampart_db::audit::set_retention(&mut tx, &policy, &principal.user.id.to_string(), state.now()).await?;
    rampart_db::Db::commit(tx).await?;
    note_detail("old", serde_json::to_value(old).unwrap_or_default());
    note_detail("new", serde_json::to_value(policy).unwrap_or_default());
    tracing::info!(user = %principal.user.name, ?old, new = ?policy, "audit retention changed");
    Ok(policy)
}

/// Forwarding settings and the forwarder's state.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Forwarding {
    pub settings: ForwardingSettings,
    pub status: ForwardingState,
}

pub const GET_FORWARDING: Operation = Operation::new("audit.forwarding.get", "audit_forwarding").sensitive_read();

/// Where records and checkpoints are forwarded (RFC 5425 syslog over TLS) and how that goes:
/// `status.degraded` is the "forwarding degraded" alarm.
pub async fn get_forwarding(state: &AppState, principal: &Principal) -> Result<Forwarding, Error> {
    principal.require_system(state, "audit.read")?;
    let settings = crate::audit::load_forwarding(&state.db).await?;
    Ok(Forwarding {
        settings,
        status: state.audit.forwarding_state(),
    })
}

pub const PUT_FORWARDING: Operation = Operation::new("audit.forwarding.update", "audit_forwarding");

/// Sets the forwarding target (auditor or security admin). The receiver's certificate is
/// verified against `ca_pem` and `server_name`; a client certificate is given as file paths
/// the controller reads.
pub async fn put_forwarding(
    state: &AppState,
    principal: &Principal,
    settings: ForwardingSettings,
) -> Result<Forwarding, Error> {
    principal.require_system(state, "audit.manage")?;
    if settings.enabled {
        settings.forwarder_config()?;
    }
    let json = serde_json::to_string(&settings).map_err(|e| Error::internal("encoding forwarding settings", e))?;
    let old = crate::audit::load_forwarding(&state.db).await?;
    {
        let mut conn = state.db.conn().await?;
        rampart_db::meta::set(&mut conn, FORWARDING_KEY, &json).await?;
    }
    note_detail(
        "old",
        serde_json::json!({"enabled": old.enabled, "address": old.address, "format": old.format}),
    );
    note_detail(
        "new",
        serde_json::json!({"enabled": settings.enabled, "address": settings.address, "format": settings.format}),
    );
    state.audit.settings_changed();
    tracing::info!(user = %principal.user.name, enabled = settings.enabled, address = %settings.address, "audit forwarding changed");
    Ok(Forwarding {
        settings,
        status: state.audit.forwarding_state(),
    })
}
