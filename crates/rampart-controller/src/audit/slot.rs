//! The audit record under construction for the current request: a task-local set by the
//! middleware, to which handlers and use cases add what only they know.

use std::sync::{Arc, Mutex};

use rampart_audit::record::{Actor, AuditResult, AuthMethod, Target};
use serde_json::{Map, Value};

use std::time::Instant;

use rampart_audit::record::NewRecord;
use time::OffsetDateTime;

use super::operations::Classified;

/// What the middleware knows of a call before it runs.
#[derive(Debug, Clone)]
pub(super) struct CallInfo {
    pub(super) now: OffsetDateTime,
    pub(super) start: Instant,
    pub(super) class: Classified,
    pub(super) client_ip: Option<String>,
    pub(super) user_agent: Option<String>,
    pub(super) request_id: Option<String>,
    /// A state-changing call: sealed as `pending` before its handler runs.
    pub(super) write_ahead: bool,
}

impl CallInfo {
    pub(super) fn record(&self, actor: &Actor, op: String, target: Target, result: AuditResult) -> NewRecord {
        let duration = self.start.elapsed().as_millis().min(u64::MAX as u128) as u64;
        let mut r = NewRecord::new(self.now, actor.clone(), op, target, result).duration_ms(duration);
        if let Some(ip) = &self.client_ip {
            r = r.source_ip(ip.clone());
        }
        if let Some(ua) = &self.user_agent {
            r = r.user_agent(ua.clone());
        }
        if let Some(id) = &self.request_id {
            r = r.request_id(id.clone());
        }
        r
    }
}

/// What the handler of a request adds to its audit record.
#[derive(Debug, Default)]
pub struct SlotData {
    pub(super) call: Option<CallInfo>,
    /// The seq of this call's `pending` record once written.
    pub(super) intent_seq: Option<u64>,
    pub actor: Option<Actor>,
    pub target_id: Option<String>,
    pub target_project: Option<String>,
    pub details: Map<String, Value>,
    /// Further events of the same request (a lockout after a failed login).
    pub events: Vec<(String, Target, AuditResult, Map<String, Value>)>,
    /// Answered 429 by the refusal limiter before it ran: not recorded one by one.
    pub(super) rate_limited: bool,
}

/// The audit record under construction for the current request.
#[derive(Debug, Clone, Default)]
pub struct AuditSlot(pub(super) Arc<Mutex<SlotData>>);

tokio::task_local! {
    pub(super) static SLOT: AuditSlot;
}

/// Adds to the current request's audit record (nothing outside a request).
pub fn note(f: impl FnOnce(&mut SlotData)) {
    let _ = SLOT.try_with(|s| f(&mut s.0.lock().expect("audit slot lock")));
}

/// Records the authenticated actor of this request (called by the token middleware; the first
/// one noted wins).
pub fn note_actor(actor: Actor) {
    note(|s| {
        if s.actor.is_none() {
            s.actor = Some(actor);
        }
    });
}

/// Records who a login attempt named, when it names an existing account.
pub fn note_login_actor(user_id: uuid::Uuid, name: &str, domain: &str, method: AuthMethod) {
    note(|s| s.actor = Some(Actor::user(user_id.to_string(), name, domain, method)));
}

pub fn note_detail(key: &str, value: impl Into<Value>) {
    let v = value.into();
    note(|s| {
        s.details.insert(key.to_string(), v);
    });
}
