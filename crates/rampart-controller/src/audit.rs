//! The audit trail of the controller (spec 13.4, 9.2-5, 9.3-3): one [`Audit`] service per
//! controller holding the appender over the SQL store, and the middleware that writes an
//! operation record for every state-changing call, every authentication event, every refused
//! call (401/403) and every read of audit data or key metadata, **before the response leaves**:
//! when the record cannot be written the caller gets 503 `unavailable` instead.
//!
//! No unaudited changes: a state-changing call is first sealed as a `pending` write-ahead record
//! (Vault's rule: a request that cannot be logged is not served) by [`write_ahead`], which runs
//! after authentication and before the handler. If it cannot be written the call is refused
//! before anything changes. The completion record follows with the result and `intent_seq`
//! naming the pending record; if that second write fails, the caller gets 503 but the change is
//! already covered by the pending record of the same `request_id`.
//!
//! Handlers add what only they know through the request's [`AuditSlot`] (a task-local set by the
//! middleware): who tried to log in, why it failed, an extra event such as a lockout, details
//! such as the old and new retention. Nothing from request bodies is recorded except names and
//! ids the handler chooses; the record builder redacts anything credential-shaped anyway.
//!
//! Background work: checkpoints every second when due, the retention purge and the forwarding
//! to an RFC 5425 syslog receiver run on the controller holding the reconciler lease.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::Method;
use rampart_audit::checkpoint::{CheckpointSigner, Ed25519Signer};
use rampart_audit::flood::{Caller, RefusalLimiter};
use rampart_audit::formats::{Format, SyslogOptions};
use rampart_audit::forward::{Forwarder, ForwarderConfig, ForwardingStatus, pump};
use rampart_audit::queue::{PersistentQueue, QueueOptions};
use rampart_audit::record::{Actor, AuditResult, AuthMethod, NewRecord, Target};
use rampart_audit::store::{AuditError, AuditLog, CheckpointPolicy};
use rampart_common::config::AuditConfig;
use rampart_common::error::{ErrorChain, ErrorCode};
use rampart_common::time::SharedClock;
use rampart_common::{Error, Sensitive};
use rampart_db::Db;
use rampart_db::audit::SqlAuditStore;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::auth::{ClientIp, Principal};
use crate::state::AppState;

pub const FORWARDING_KEY: &str = "audit_forwarding";

#[derive(Debug, thiserror::Error)]
pub enum AuditSetupError {
    #[error("the audit checkpoint key")]
    Key(#[from] rampart_audit::checkpoint::SignError),
    #[error("the audit trail")]
    Log(#[from] rampart_audit::AuditError),
    #[error("the audit forwarding queue")]
    Queue(#[from] rampart_audit::queue::QueueError),
    #[error(transparent)]
    Db(#[from] rampart_db::DbError),
}

/// Where the syslog receiver is and how to reach it (`GET/PUT /v1/audit/forwarding`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForwardingSettings {
    /// Forward records and checkpoints to the receiver.
    #[serde(default)]
    pub enabled: bool,
    /// `host:port` of an RFC 5425 syslog-over-TLS receiver (port 6514 by convention).
    #[serde(default)]
    pub address: String,
    /// DNS name or IP address the receiver's certificate must carry.
    #[serde(default)]
    pub server_name: String,
    /// PEM of the CA(s) that sign the receiver's certificate.
    #[serde(default)]
    pub ca_pem: String,
    /// PEM file of a client certificate chain, for receivers that require one.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub client_cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key (read by the controller; never shown).
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub client_key_file: Option<PathBuf>,
    /// MSG of each syslog message: `syslog` (canonical record JSON, re-hashable), `ocsf`,
    /// `cadf` or `cef`. The structured data carries the audit fields in every case.
    #[serde(default = "default_format")]
    pub format: Format,
}

fn default_format() -> Format {
    Format::Syslog
}

impl Default for ForwardingSettings {
    fn default() -> Self {
        ForwardingSettings {
            enabled: false,
            address: String::new(),
            server_name: String::new(),
            ca_pem: String::new(),
            client_cert_file: None,
            client_key_file: None,
            format: Format::Syslog,
        }
    }
}

impl ForwardingSettings {
    /// The forwarder configuration, reading the client certificate files. Errors name the field.
    pub fn forwarder_config(&self) -> Result<ForwarderConfig, Error> {
        if self.address.parse::<std::net::SocketAddr>().is_err()
            && !self
                .address
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        {
            return Err(Error::field("address", "address must be host:port"));
        }
        if self.server_name.is_empty() {
            return Err(Error::field("server_name", "server_name is required"));
        }
        let mut cfg = ForwarderConfig::new(
            self.address.clone(),
            self.server_name.clone(),
            self.ca_pem.clone().into_bytes(),
        );
        match (&self.client_cert_file, &self.client_key_file) {
            (Some(c), Some(k)) => {
                cfg.client_cert_pem =
                    Some(std::fs::read(c).map_err(|_| {
                        Error::field("client_cert_file", "the controller cannot read client_cert_file")
                    })?);
                cfg.client_key_pem =
                    Some(Sensitive::new(std::fs::read_to_string(k).map_err(|_| {
                        Error::field("client_key_file", "the controller cannot read client_key_file")
                    })?));
            }
            (None, None) => {}
            _ => {
                return Err(Error::field(
                    "client_key_file",
                    "give both client_cert_file and client_key_file, or neither",
                ));
            }
        }
        rampart_audit::forward::client_tls_config(&cfg).map_err(|e| match e {
            rampart_audit::forward::ForwardError::NoCa => {
                Error::field("ca_pem", "ca_pem holds no usable PEM certificate")
            }
            rampart_audit::forward::ForwardError::ServerName(_) => {
                Error::field("server_name", "server_name is not a valid DNS name or IP address")
            }
            other => Error::field("client_cert_file", other.to_string()),
        })?;
        Ok(cfg)
    }
}

/// The forwarding state of `GET /v1/audit/forwarding`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ForwardingState {
    /// This controller runs the forwarder (it holds the reconciler lease and forwarding is on).
    pub active: bool,
    /// The receiver could not be reached or did not confirm since `degraded_since`: the
    /// "forwarding degraded" alarm. Records wait in the persistent queue meanwhile.
    pub degraded: bool,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub degraded_since: Option<OffsetDateTime>,
    pub last_error: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_delivery: Option<OffsetDateTime>,
    /// Messages waiting in the queue.
    pub pending: u64,
    /// Messages the receiver confirmed since this controller started.
    pub delivered: u64,
    pub failed_attempts: u64,
}

impl ForwardingState {
    fn of(active: bool, s: ForwardingStatus) -> Self {
        ForwardingState {
            active,
            degraded: s.degraded,
            degraded_since: s.degraded_since,
            last_error: s.last_error,
            last_delivery: s.last_delivery,
            pending: s.pending,
            delivered: s.delivered,
            failed_attempts: s.failed_attempts,
        }
    }
}

struct Running {
    settings: ForwardingSettings,
    forwarder: Forwarder,
}

/// The audit service of one controller.
pub struct Audit {
    pub log: AuditLog<SqlAuditStore>,
    pub store: SqlAuditStore,
    pub queue: PersistentQueue,
    pub config: AuditConfig,
    pub key_id: String,
    /// Wakes the forwarding pump after an append.
    pub wake_pump: tokio::sync::Notify,
    leader: AtomicBool,
    /// Bumped when the forwarding settings change, so the pump reloads them.
    settings_generation: AtomicU64,
    running: Mutex<Option<Running>>,
    hostname: String,
    clock: SharedClock,
    /// Refused calls per principal and source (13.4-1: nobody fills the trail in a loop).
    refusals: RefusalLimiter,
}

impl Audit {
    pub async fn open(
        db: &Db,
        data_dir: &Path,
        clock: SharedClock,
        config: AuditConfig,
    ) -> Result<Audit, AuditSetupError> {
        let dir = data_dir.join("audit");
        rampart_common::fsutil::ensure_private_dir(&dir)
            .map_err(|e| AuditSetupError::Key(rampart_audit::checkpoint::SignError::Io(e)))?;
        let signer = Arc::new(Ed25519Signer::load_or_create(&dir.join("checkpoint.key"))?);
        let key_id = signer.key_id().to_string();
        {
            let mut conn = db.conn().await?;
            rampart_db::audit::register_key(&mut conn, &signer.public_key(), clock.now()).await?;
        }
        let store = SqlAuditStore::new(db.clone());
        let log = AuditLog::open(
            store.clone(),
            signer,
            clock.clone(),
            CheckpointPolicy {
                every_records: config.checkpoint_every_records,
                every: time::Duration::seconds(config.checkpoint_interval_s as i64),
            },
        )
        .await?;
        let queue = PersistentQueue::open(
            &dir.join("forward-queue"),
            QueueOptions {
                max_bytes: config.forward_queue_max_bytes,
                ..QueueOptions::default()
            },
        )?;
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "-".into());
        Ok(Audit {
            log,
            store,
            queue,
            config: config.clone(),
            key_id,
            wake_pump: tokio::sync::Notify::new(),
            leader: AtomicBool::new(false),
            settings_generation: AtomicU64::new(1),
            running: Mutex::new(None),
            hostname,
            clock,
            refusals: RefusalLimiter::new(config.refused_calls_per_minute),
        })
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.store(leader, Ordering::SeqCst);
    }

    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::SeqCst)
    }

    pub fn settings_changed(&self) {
        self.settings_generation.fetch_add(1, Ordering::SeqCst);
        self.wake_pump.notify_one();
    }

    /// Status of the forwarder run by this controller.
    pub fn forwarding_state(&self) -> ForwardingState {
        match self.running.lock().expect("forwarder lock").as_ref() {
            Some(r) => ForwardingState::of(true, r.forwarder.status()),
            None => ForwardingState::of(
                false,
                ForwardingStatus {
                    pending: self.queue.pending(),
                    ..ForwardingStatus::default()
                },
            ),
        }
    }

    /// Appends a record from outside a request (system events such as black-box dumps).
    pub async fn append_system(&self, rec: NewRecord) -> Result<(), Error> {
        self.log.append(rec).await.map_err(|e| {
            tracing::error!(error = %ErrorChain(&e), "cannot write a system audit record");
            e.into_public()
        })?;
        self.wake_pump.notify_one();
        Ok(())
    }

    pub fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    /// Stops forwarding (shutdown).
    pub fn stop_forwarding(&self) {
        if let Some(r) = self.running.lock().expect("forwarder lock").take() {
            r.forwarder.stop();
        }
    }
}

/// A node's state change seen by the controller (joined and ready, unreachable, back): host
/// events belong in the trail beside the API calls that caused them.
pub async fn node_state_event(state: &AppState, node_id: &str, name: &str, operation: &str) -> Result<(), Error> {
    let rec = NewRecord::new(
        state.now(),
        Actor::system("node-liveness"),
        operation,
        Target::new("node", Some(node_id.to_string()), None),
        AuditResult::success(200),
    )
    .detail("name", name);
    state.audit.append_system(rec).await
}

/// What the middleware knows of a call before it runs.
#[derive(Debug, Clone)]
struct CallInfo {
    now: OffsetDateTime,
    start: Instant,
    class: Classified,
    client_ip: Option<String>,
    user_agent: Option<String>,
    request_id: Option<String>,
    /// A state-changing call: sealed as `pending` before its handler runs.
    write_ahead: bool,
}

impl CallInfo {
    fn record(&self, actor: &Actor, op: String, target: Target, result: AuditResult) -> NewRecord {
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
    call: Option<CallInfo>,
    /// The seq of this call's `pending` record once written.
    intent_seq: Option<u64>,
    pub actor: Option<Actor>,
    pub target_id: Option<String>,
    pub target_project: Option<String>,
    pub details: Map<String, Value>,
    /// Further events of the same request (a lockout after a failed login).
    pub events: Vec<(String, Target, AuditResult, Map<String, Value>)>,
    /// Answered 429 by the refusal limiter before it ran: not recorded one by one.
    rate_limited: bool,
}

/// The audit record under construction for the current request.
#[derive(Debug, Clone, Default)]
pub struct AuditSlot(Arc<Mutex<SlotData>>);

tokio::task_local! {
    static SLOT: AuditSlot;
}

/// Adds to the current request's audit record (nothing outside a request).
pub fn note(f: impl FnOnce(&mut SlotData)) {
    let _ = SLOT.try_with(|s| f(&mut s.0.lock().expect("audit slot lock")));
}

/// The actor of an authenticated session.
pub fn actor_of(p: &Principal) -> Actor {
    Actor::user(
        p.user.id.to_string(),
        p.user.name.clone(),
        p.user.domain.clone(),
        if p.application_credential.is_some() {
            AuthMethod::ApplicationCredential
        } else {
            AuthMethod::Token
        },
    )
}

/// Records the authenticated principal of this request (called by the token middleware).
pub fn note_principal(p: &Principal) {
    let actor = actor_of(p);
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

/// How a call is named in the trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    pub operation: String,
    pub target_type: String,
    pub target_id: Option<String>,
    pub project: Option<String>,
    /// Audited even when it changes nothing (reads of audit data and key metadata).
    pub sensitive_read: bool,
}

fn singular(word: &str) -> String {
    let w = word.replace('-', "_");
    if let Some(stem) = w.strip_suffix("ies") {
        format!("{stem}y")
    } else if w.ends_with("sses") || w.ends_with("xes") {
        w[..w.len() - 2].to_string()
    } else if w.ends_with('s') && !w.ends_with("ss") {
        w[..w.len() - 1].to_string()
    } else {
        w
    }
}

fn is_param(seg: &str) -> bool {
    seg.starts_with('{') && seg.ends_with('}')
}

/// Names the operation of `method` on the route `matched` (as registered, `{id}` for
/// parameters), reading parameter values from `path`. Routes added later are named by the
/// same rule: `/v1/projects/{p}/keys/{id}/rotate` is `key.rotate` on target `key` in project
/// `p`, a `POST` to a collection is `.create`, and so on.
pub fn classify(method: &Method, matched: &str, path: &str) -> Classified {
    let (rest, actual) = match (matched.strip_prefix("/v1/"), path.strip_prefix("/v1/")) {
        (Some(r), Some(a)) => (r, a),
        _ => match (matched.strip_prefix("/agent/v1/"), path.strip_prefix("/agent/v1/")) {
            (Some(r), Some(a)) => (r, a),
            _ => (matched.trim_start_matches('/'), path.trim_start_matches('/')),
        },
    };
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let vals: Vec<&str> = actual.split('/').filter(|s| !s.is_empty()).collect();
    let value = |i: usize| vals.get(i).map(|v| v.to_string());
    let project = (segs.first() == Some(&"projects") && segs.get(1).is_some_and(|s| is_param(s)))
        .then(|| value(1))
        .flatten();
    let named = |op: &str, ty: &str, sensitive: bool| Classified {
        operation: op.to_string(),
        target_type: ty.to_string(),
        target_id: None,
        project: None,
        sensitive_read: sensitive,
    };
    let m = method.as_str();
    // The routes whose names do not follow the rule.
    match (m, matched) {
        // A browser session is a login whose token lands in a cookie (details say so).
        ("POST", "/v1/auth/tokens" | "/v1/auth/sessions") => return named("auth.login", "user", false),
        ("DELETE", "/v1/auth/tokens/current") => return named("auth.logout", "token", false),
        ("GET", "/v1/auth/tokens/current") => return named("auth.token.get", "token", false),
        ("POST", "/v1/auth/password") => return named("auth.password.change", "user", false),
        ("POST", "/v1/auth/mfa/totp") => return named("auth.mfa.enroll", "user", false),
        ("POST", "/v1/auth/mfa/totp/confirm") => return named("auth.mfa.confirm", "user", false),
        ("POST", "/v1/auth/mfa/recovery-codes") => return named("auth.recovery_codes.create", "user", false),
        ("POST", "/agent/v1/join") => return named("node.join", "node", false),
        ("POST", "/agent/v1/renew") => return named("node.certificate.renew", "node", false),
        ("PUT", "/agent/v1/status") => return named("node.status.report", "node", false),
        ("GET", "/agent/v1/config") => return named("node.config.get", "node", false),
        ("GET", "/v1/audit/events") => return named("audit.events.list", "audit_trail", true),
        ("POST", "/v1/audit/verify") => return named("audit.verify", "audit_trail", true),
        ("GET", "/v1/audit/retention") => return named("audit.retention.get", "audit_retention", true),
        ("PUT", "/v1/audit/retention") => return named("audit.retention.update", "audit_retention", true),
        ("GET", "/v1/audit/forwarding") => return named("audit.forwarding.get", "audit_forwarding", true),
        ("PUT", "/v1/audit/forwarding") => return named("audit.forwarding.update", "audit_forwarding", true),
        // Membership is a change of the group (its roles reach one more or one fewer user).
        ("PUT" | "DELETE", "/v1/groups/{id}/users/{user}") => {
            let op = if m == "PUT" {
                "group.member.add"
            } else {
                "group.member.remove"
            };
            return Classified {
                target_id: value(1),
                ..named(op, "group", false)
            };
        }
        // `instance.start`, `instance.stop`, `instance.reboot`: the action is a path value.
        ("POST", "/v1/projects/{project}/instances/{id}/{action}") => {
            let action = value(4)
                .filter(|a| (1..=32).contains(&a.len()) && a.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
            return Classified {
                target_id: value(3),
                project,
                ..named(
                    &format!("instance.{}", action.as_deref().unwrap_or("action")),
                    "instance",
                    false,
                )
            };
        }
        _ => {}
    }
    let sensitive_read = segs
        .iter()
        .any(|s| matches!(*s, "keys" | "signing-keys" | "certificates" | "audit"));
    let Some(last) = segs.last() else {
        return named("api.call", "api", false);
    };
    let (resource, verb, id) = if is_param(last) {
        let res = segs.get(segs.len().wrapping_sub(2)).copied().unwrap_or("api");
        let verb = match m {
            "GET" | "HEAD" => "get",
            "PUT" | "PATCH" => "update",
            "DELETE" => "delete",
            _ => "create",
        };
        (singular(res), verb.to_string(), value(segs.len() - 1))
    } else if segs.len() >= 2 && is_param(segs[segs.len() - 2]) && (!last.ends_with('s') || last.ends_with("ss")) {
        // `/things/{id}/verb`: an action on the thing.
        let res = segs.get(segs.len().wrapping_sub(3)).copied().unwrap_or("api");
        let verb = if m == "GET" {
            format!("{}.get", last.replace('-', "_"))
        } else {
            last.replace('-', "_")
        };
        (singular(res), verb, value(segs.len() - 2))
    } else {
        // A collection (`/things`, `/things/{id}/members`) or a singleton (`/security-compliance`).
        let plural = last.ends_with('s') && !last.ends_with("ss");
        let verb = match (m, plural) {
            ("GET" | "HEAD", true) => "list",
            ("GET" | "HEAD", false) => "get",
            ("POST", _) => "create",
            ("PUT" | "PATCH", _) => "update",
            ("DELETE", _) => "delete",
            _ => "call",
        };
        // The parent of a sub-collection is its target (`/groups/{id}/members`); a project's
        // own collections already carry the project.
        let under_project = segs.len() == 3 && project.is_some();
        let parent = (segs.len() >= 2 && is_param(segs[segs.len() - 2]) && !under_project)
            .then(|| value(segs.len() - 2))
            .flatten();
        (singular(last), verb.to_string(), parent)
    };
    let resource: String = resource
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let resource = if resource.starts_with(|c: char| c.is_ascii_lowercase()) {
        resource
    } else {
        format!("r{resource}")
    };
    let project = if resource == "project" && project.is_none() {
        id.clone()
    } else {
        project
    };
    Classified {
        operation: format!("{resource}.{verb}"),
        target_type: resource,
        target_id: id,
        project,
        sensitive_read,
    }
}

/// Whether a call is recorded: every state change, every refused authentication or
/// authorization, reads of audit data and key metadata. Agent heartbeats and long polls are
/// telemetry (a node's state changes are visible on the node); only refusals of them count.
pub fn is_audited(method: &Method, c: &Classified, status: u16) -> bool {
    if matches!(status, 401 | 403) {
        return true;
    }
    if matches!(
        c.operation.as_str(),
        "node.status.report" | "node.config.get" | "auth.token.get"
    ) {
        return false;
    }
    let mutating = matches!(*method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE);
    mutating || c.sensitive_read
}

/// The id of what a `201 Created` made, from its JSON body (`id`, or `node_id`).
fn created_id(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let id = v.get("id").or_else(|| v.get("node_id"))?;
    id.as_str().map(str::to_string)
}

/// The middleware: see the module documentation.
pub async fn record_calls(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let Some(matched) = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string()) else {
        // No route: 404 or 405 from the fallbacks, nothing happened.
        return next.run(req).await;
    };
    let (user_agent, request_id) = {
        let header = |name| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        (header(http::header::USER_AGENT), header(crate::http::REQUEST_ID))
    };
    let class = classify(&method, &matched, req.uri().path());
    let mutating = matches!(method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE);
    let info = CallInfo {
        now: state.now(),
        start,
        write_ahead: mutating && is_audited(&method, &class, 200),
        class,
        client_ip: req.extensions().get::<ClientIp>().map(|c| c.0.to_string()),
        user_agent,
        request_id,
    };
    let slot = AuditSlot(Arc::new(Mutex::new(SlotData {
        call: Some(info.clone()),
        ..SlotData::default()
    })));
    let response = SLOT.scope(slot.clone(), next.run(req)).await;
    let status = response.status().as_u16();
    if !is_audited(&method, &info.class, status) {
        return response;
    }
    let caller = {
        let data = slot.0.lock().expect("audit slot lock");
        if data.rate_limited {
            return response;
        }
        authenticated_caller(data.actor.as_ref(), &info)
    };
    if let Some(caller) = caller
        && (400..500).contains(&status)
        && state.audit.refusals.refused(&caller, Instant::now())
    {
        tracing::warn!(principal = ?caller.principal, source = ?caller.source, limit = state.audit.config.refused_calls_per_minute, operation = %info.class.operation, "refused-call limit reached: further calls of this principal from this address get 429 for the rest of the minute");
    }
    let code = response.extensions().get::<ErrorCode>().map(|c| c.0.to_string());
    let (response, created) = if status == 201 {
        let (parts, body) = response.into_parts();
        match axum::body::to_bytes(body, 4 << 20).await {
            Ok(bytes) => {
                let id = created_id(&bytes);
                (Response::from_parts(parts, Body::from(bytes)), id)
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read a response body for its audit record");
                return Error::internal("auditing the call", "response body unreadable").into_response();
            }
        }
    } else {
        (response, None)
    };
    let mut data = std::mem::take(&mut *slot.0.lock().expect("audit slot lock"));
    let actor = data.actor.take().unwrap_or_else(Actor::anonymous);
    let class = &info.class;
    let target = Target::new(
        class.target_type.clone(),
        data.target_id.or(created).or(class.target_id.clone()),
        data.target_project.or(class.project.clone()),
    );
    if let Some(seq) = data.intent_seq {
        data.details.insert("intent_seq".into(), seq.into());
    }
    let result = AuditResult::from_status(status, code);
    let mut main = info.record(&actor, class.operation.clone(), target, result);
    main.details = data.details;
    let mut records = vec![main];
    for (op, target, result, details) in data.events {
        let mut r = info.record(&actor, op, target, result);
        r.details = details;
        records.push(r);
    }
    for rec in records {
        if let Err(e) = state.audit.log.append(rec).await {
            tracing::error!(error = %ErrorChain(&e), operation = %class.operation, status, intent_seq = ?data.intent_seq, "audit record not written; the call fails");
            return match data.intent_seq {
                // The handler ran: say so, so that nobody retries blindly.
                Some(seq) if (200..400).contains(&status) => Error::Unavailable(format!(
                    "the operation was performed, but its completion record could not be written; the audit trail holds it as pending record {seq}"
                ))
                .into_response(),
                _ => e.into_public().into_response(),
            };
        }
    }
    state.audit.wake_pump.notify_one();
    response
}

/// Whom the refusal limiter counts a call against: authenticated principals only (an
/// unauthenticated refusal names nobody and carries nothing from the request but its address).
fn authenticated_caller(actor: Option<&Actor>, info: &CallInfo) -> Option<Caller> {
    let principal = actor?.id.clone()?;
    Some(Caller {
        principal: Some(principal),
        source: info.client_ip.clone(),
    })
}

/// The write-ahead step of a state-changing call (see the module documentation): the innermost
/// layer of every route group, so the pending record names the authenticated actor and a call
/// refused by authentication changes nothing and needs none.
pub async fn write_ahead(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let limited = SLOT
        .try_with(|s| {
            let mut d = s.0.lock().expect("audit slot lock");
            let caller = authenticated_caller(d.actor.as_ref(), d.call.as_ref()?)?;
            let wait = state.audit.refusals.retry_after(&caller, Instant::now())?;
            d.rate_limited = true;
            Some(wait)
        })
        .ok()
        .flatten();
    if let Some(retry_after_s) = limited {
        return Error::RateLimited { retry_after_s }.into_response();
    }
    let due = SLOT
        .try_with(|s| {
            let d = s.0.lock().expect("audit slot lock");
            let info = d.call.as_ref().filter(|c| c.write_ahead && d.intent_seq.is_none())?;
            let actor = d.actor.clone().unwrap_or_else(Actor::anonymous);
            let c = &info.class;
            let target = Target::new(c.target_type.clone(), c.target_id.clone(), c.project.clone());
            Some(info.record(&actor, c.operation.clone(), target, AuditResult::pending()))
        })
        .ok()
        .flatten();
    if let Some(rec) = due {
        let op = rec.operation.clone();
        match state.audit.log.append(rec).await {
            Ok(r) => {
                note(|s| s.intent_seq = Some(r.seq));
                // Its transactions mark the intent as committed (see `reconcile_intents`).
                return rampart_db::intents::scope(r.seq, next.run(req)).await;
            }
            Err(e) => {
                tracing::error!(error = %ErrorChain(&e), operation = %op, "write-ahead audit record not written; the call is refused before it runs");
                return e.into_public().into_response();
            }
        }
    }
    next.run(req).await
}

/// The completion of an open intent whose call will never answer: `success` (status 200, with
/// what it created when known) if a transaction of the call committed, else `abandoned`
/// (outcome `failure`, status 500, code `abandoned`): nothing of it was committed.
pub fn intent_completion(intent: &rampart_db::intents::OpenIntent, now: OffsetDateTime) -> NewRecord {
    let p = &intent.pending;
    let target = Target::new(
        p.target.kind.clone(),
        p.target.id.clone().or(intent.target_id.clone()),
        p.target.project.clone(),
    );
    let result = if intent.committed {
        AuditResult::success(200)
    } else {
        AuditResult::failure(500, "abandoned")
    };
    let mut r = NewRecord::new(now, p.actor.clone(), p.operation.clone(), target, result)
        .detail("intent_seq", p.seq)
        .detail(
            "reconciled",
            "the call ended without a completion record (process stopped); completed at start-up from the database",
        );
    r.source_ip = p.source_ip.clone();
    r.user_agent = p.user_agent.clone();
    r.request_id = p.request_id.clone();
    r
}

/// Appends a completion for every open intent sealed before `before` (calls that cannot still
/// be running); returns how many. Runs at start-up and then on the leader, so that the trail
/// always says what became of a call.
pub async fn reconcile_intents(state: &AppState, before: OffsetDateTime) -> Result<u64, Error> {
    let mut completed = 0;
    loop {
        let page = {
            let mut conn = state.db.conn().await?;
            rampart_db::intents::open_intents(&mut conn, before, 500).await?
        };
        for intent in &page.open {
            let rec = intent_completion(intent, state.now());
            state.audit.log.append(rec).await.map_err(AuditError::into_public)?;
            tracing::warn!(
                intent_seq = intent.pending.seq,
                operation = %intent.pending.operation,
                committed = intent.committed,
                "open audit intent completed"
            );
            completed += 1;
        }
        let mut conn = state.db.conn().await?;
        rampart_db::intents::advance(&mut conn, page.watermark).await?;
        if page.done {
            break;
        }
    }
    if completed > 0 {
        state.audit.wake_pump.notify_one();
    }
    Ok(completed)
}

/// The syslog header fields of this controller.
fn syslog_options(audit: &Audit, format: Format) -> SyslogOptions {
    SyslogOptions {
        hostname: audit.hostname.clone(),
        procid: Some(std::process::id()),
        enterprise_id: audit.config.syslog_enterprise_id,
        payload: format,
        ..SyslogOptions::default()
    }
}

pub async fn load_forwarding(db: &Db) -> Result<ForwardingSettings, Error> {
    let mut conn = db.conn().await?;
    Ok(match rampart_db::meta::get(&mut conn, FORWARDING_KEY).await? {
        Some(text) => serde_json::from_str(&text).map_err(|e| Error::internal("reading the forwarding settings", e))?,
        None => ForwardingSettings::default(),
    })
}

/// The forwarding loop of every controller: on the reconciler-lease holder with forwarding
/// enabled it runs the forwarder and moves new records and checkpoints into its queue.
pub fn spawn_forwarding(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut seen_generation = 0;
        let mut settings = ForwardingSettings::default();
        let mut failed_config: Option<ForwardingSettings> = None;
        loop {
            tokio::select! {
                _ = state.shutdown.cancelled() => break,
                _ = state.audit.wake_pump.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            let generation = state.audit.settings_generation.load(Ordering::SeqCst);
            if generation != seen_generation {
                match load_forwarding(&state.db).await {
                    Ok(s) => {
                        settings = s;
                        seen_generation = generation;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the forwarding settings");
                        continue;
                    }
                }
            }
            let wanted = settings.enabled && state.audit.is_leader();
            let mut running = state.audit.running.lock().expect("forwarder lock").take();
            if running.as_ref().is_some_and(|r| !wanted || r.settings != settings)
                && let Some(r) = running.take()
            {
                tracing::info!("log forwarding stopped");
                r.forwarder.stop();
            }
            if wanted && running.is_none() && failed_config.as_ref() != Some(&settings) {
                match settings.forwarder_config() {
                    Ok(mut cfg) => {
                        cfg.idle_probe = Some(Duration::from_secs(state.audit.config.forward_probe_interval_s.max(1)));
                        cfg.backoff_max = Duration::from_secs(state.audit.config.forward_retry_max_s.max(1));
                        match Forwarder::start(state.audit.queue.clone(), cfg, state.clock.clone()) {
                            Ok(f) => {
                                tracing::info!(address = %settings.address, "log forwarding started");
                                failed_config = None;
                                running = Some(Running {
                                    settings: settings.clone(),
                                    forwarder: f,
                                });
                            }
                            Err(e) => {
                                tracing::error!(error = %ErrorChain(&e), "log forwarding cannot start");
                                failed_config = Some(settings.clone());
                            }
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "log forwarding settings are unusable");
                        failed_config = Some(settings.clone());
                    }
                }
            }
            let active = running.is_some();
            *state.audit.running.lock().expect("forwarder lock") = running;
            if active {
                let opts = syslog_options(&state.audit, settings.format);
                loop {
                    match pump(&state.audit.store, &state.audit.queue, &opts, 1000).await {
                        Ok(n) if n >= 1000 => continue,
                        Ok(_) => break,
                        Err(e) => {
                            tracing::warn!(error = %ErrorChain(&e), "cannot queue audit records for forwarding");
                            break;
                        }
                    }
                }
            }
        }
        state.audit.stop_forwarding();
    })
}

/// How long a call may run before an open intent of it is taken for dead when other
/// controllers may be serving it (PostgreSQL). Image uploads are not bounded by
/// `api.request_timeout_s`, hence the generous hour.
const INTENT_GRACE: time::Duration = time::Duration::hours(1);

/// The start-up pass over open intents, in the background (serving does not wait). On SQLite
/// this controller is the only one: every call begun before `started` died with the previous
/// process. On PostgreSQL, calls of other controllers may still run, so only old intents count.
pub fn spawn_intent_reconcile(state: AppState, started: OffsetDateTime) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let before = match state.db.backend() {
            rampart_db::Backend::Sqlite => started,
            rampart_db::Backend::Postgres => started - INTENT_GRACE,
        };
        match reconcile_intents(&state, before).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(completed = n, "open audit intents of the previous run completed"),
            Err(e) => tracing::error!(error = %e, "open audit intents not reconciled at start; the leader retries"),
        }
    })
}

/// Leader work, called by the reconciler every second: checkpoints when due, and every
/// `audit.purge_interval_s` the retention purge of records, run logs and black-box dumps.
pub async fn leader_tick(state: &AppState, tick: u64) {
    if let Err(e) = state.audit.log.tick().await {
        tracing::error!(error = %ErrorChain(&e), "audit checkpoint failed");
    }
    // Calls whose completion record failed (a full disk) while this process ran.
    if tick % 60 == 30
        && let Err(e) = reconcile_intents(state, state.now() - INTENT_GRACE).await
    {
        tracing::error!(error = %e, "open audit intents not reconciled");
    }
    let every = state.audit.config.purge_interval_s.max(1);
    if tick % every == every - 1
        && let Err(e) = purge(state).await
    {
        tracing::error!(error = %e, "audit retention purge failed");
    }
}

/// The retention purge: expired operation and security records (keeping the chain
/// verifiable with a boundary checkpoint, never dropping what the forwarder has not taken),
/// run-log files and black-box dumps older than their retention.
pub async fn purge(state: &AppState) -> Result<u64, Error> {
    let policy = {
        let mut conn = state.db.conn().await?;
        rampart_db::audit::retention(&mut conn).await?
    };
    let forwarding = load_forwarding(&state.db).await?;
    let max_seq = if forwarding.enabled {
        state.audit.queue.last_meta()[0]
    } else {
        u64::MAX
    };
    let removed = match state.audit.log.purge_expired_up_to(&policy, max_seq).await {
        Ok(Some((cp, n))) => {
            tracing::info!(
                removed = n,
                boundary = cp.body.tree_size,
                "audit records past retention purged"
            );
            state
                .audit
                .append_system(
                    NewRecord::new(
                        state.now(),
                        Actor::system("retention"),
                        "audit.records.purge",
                        Target::new("audit_trail", None, None),
                        AuditResult::success(200),
                    )
                    .detail("removed", n)
                    .detail("boundary_checkpoint", cp.body.seq)
                    .detail("first_kept_seq", cp.body.tree_size + 1),
                )
                .await?;
            n
        }
        Ok(None) => 0,
        Err(e) => {
            tracing::error!(error = %ErrorChain(&e), "audit retention purge refused");
            return Err(e.into_public());
        }
    };
    let now: std::time::SystemTime = state.now().into();
    let log_dir = state.config.log_dir(&state.data_dir);
    purge_files(&log_dir, "rampart.", policy.run_days, now, Some("rampart.log"));
    purge_files(&state.data_dir.join("blackbox"), "", policy.blackbox_days, now, None);
    Ok(removed)
}

/// Deletes files in `dir` whose name starts with `prefix` and that were last written more
/// than `days` ago (never `keep`, the file being written).
fn purge_files(dir: &Path, prefix: &str, days: u32, now: std::time::SystemTime, keep: Option<&str>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let limit = Duration::from_secs(u64::from(days) * 86_400);
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !name.starts_with(prefix) || Some(name.as_str()) == keep {
            continue;
        }
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age > limit);
        if old {
            match std::fs::remove_file(e.path()) {
                Ok(()) => tracing::info!(file = %e.path().display(), days, "removed a file past its retention"),
                Err(err) => tracing::warn!(file = %e.path().display(), error = %err, "cannot remove an expired file"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(m: Method, matched: &str, path: &str) -> (String, String, Option<String>, Option<String>) {
        let c = classify(&m, matched, path);
        (c.operation, c.target_type, c.target_id, c.project)
    }

    #[test]
    fn spec_13_4_1_operations_are_named_from_the_routes() {
        let id = "0b7e1f0e-3c55-4f7e-8d2a-6a7d8c1e9f00";
        let p = "4f1d2c3b-5a6e-4b7c-8d9e-0f1a2b3c4d5e";
        assert_eq!(op(Method::POST, "/v1/users", "/v1/users").0, "user.create");
        assert_eq!(op(Method::GET, "/v1/users", "/v1/users").0, "user.list");
        assert_eq!(
            op(Method::DELETE, "/v1/users/{id}", &format!("/v1/users/{id}")),
            ("user.delete".into(), "user".into(), Some(id.into()), None)
        );
        assert_eq!(
            op(Method::POST, "/v1/users/{id}/unlock", &format!("/v1/users/{id}/unlock")).0,
            "user.unlock"
        );
        assert_eq!(
            op(
                Method::POST,
                "/v1/users/{id}/reset-password",
                &format!("/v1/users/{id}/reset-password")
            )
            .0,
            "user.reset_password"
        );
        assert_eq!(
            op(Method::POST, "/v1/role-assignments", "/v1/role-assignments").0,
            "role_assignment.create"
        );
        assert_eq!(
            op(Method::PUT, "/v1/security-compliance", "/v1/security-compliance").0,
            "security_compliance.update"
        );
        assert_eq!(
            op(Method::POST, "/v1/nodes/join-tokens", "/v1/nodes/join-tokens").0,
            "join_token.create"
        );
        assert_eq!(
            op(
                Method::POST,
                "/v1/projects/{p}/keys/{id}/schedule-deletion",
                &format!("/v1/projects/{p}/keys/{id}/schedule-deletion")
            ),
            (
                "key.schedule_deletion".into(),
                "key".into(),
                Some(id.into()),
                Some(p.into())
            )
        );
        assert_eq!(
            op(
                Method::POST,
                "/v1/projects/{p}/security-groups",
                &format!("/v1/projects/{p}/security-groups")
            ),
            (
                "security_group.create".into(),
                "security_group".into(),
                None,
                Some(p.into())
            )
        );
        assert_eq!(
            op(Method::PATCH, "/v1/projects/{id}", &format!("/v1/projects/{id}")),
            (
                "project.update".into(),
                "project".into(),
                Some(id.into()),
                Some(id.into())
            )
        );
        let g = "9d3c2b1a-0f9e-4d8c-b7a6-5e4d3c2b1a09";
        assert_eq!(
            op(
                Method::PUT,
                "/v1/groups/{id}/users/{user}",
                &format!("/v1/groups/{g}/users/{id}")
            ),
            ("group.member.add".into(), "group".into(), Some(g.into()), None)
        );
        assert_eq!(
            op(
                Method::DELETE,
                "/v1/groups/{id}/users/{user}",
                &format!("/v1/groups/{g}/users/{id}")
            )
            .0,
            "group.member.remove"
        );
        for action in ["start", "stop", "reboot"] {
            assert_eq!(
                op(
                    Method::POST,
                    "/v1/projects/{project}/instances/{id}/{action}",
                    &format!("/v1/projects/{p}/instances/{id}/{action}")
                ),
                (
                    format!("instance.{action}"),
                    "instance".into(),
                    Some(id.into()),
                    Some(p.into())
                )
            );
        }
        assert_eq!(op(Method::POST, "/v1/auth/tokens", "/v1/auth/tokens").0, "auth.login");
        assert_eq!(
            op(Method::POST, "/v1/auth/sessions", "/v1/auth/sessions").0,
            "auth.login"
        );
        assert_eq!(op(Method::POST, "/agent/v1/join", "/agent/v1/join").0, "node.join");
        assert_eq!(
            op(Method::POST, "/agent/v1/renew", "/agent/v1/renew").0,
            "node.certificate.renew"
        );
        assert_eq!(
            op(Method::GET, "/v1/audit/events", "/v1/audit/events").0,
            "audit.events.list"
        );
        for (m, p) in [
            (Method::POST, "/v1/groups/{id}/members"),
            (Method::GET, "/v1/projects/{p}/policies"),
            (Method::POST, "/v1/projects/{p}/instances/{id}/start"),
        ] {
            let c = classify(&m, p, p);
            let rec = rampart_audit::record::seal(
                &rampart_audit::record::ChainHead::GENESIS,
                NewRecord::new(
                    OffsetDateTime::UNIX_EPOCH,
                    Actor::anonymous(),
                    c.operation.clone(),
                    Target::new(c.target_type.clone(), None, None),
                    AuditResult::success(200),
                ),
            );
            assert!(rec.is_ok(), "{p}: {} is a valid operation name", c.operation);
        }
    }

    #[test]
    fn spec_9_2_5_what_is_audited() {
        let c = |m: Method, p: &str| classify(&m, p, p);
        assert!(is_audited(&Method::POST, &c(Method::POST, "/v1/users"), 201));
        assert!(is_audited(&Method::POST, &c(Method::POST, "/v1/users"), 400));
        assert!(is_audited(
            &Method::DELETE,
            &c(Method::DELETE, "/v1/auth/tokens/current"),
            204
        ));
        assert!(!is_audited(&Method::GET, &c(Method::GET, "/v1/users"), 200));
        assert!(is_audited(&Method::GET, &c(Method::GET, "/v1/users"), 403));
        assert!(is_audited(&Method::GET, &c(Method::GET, "/v1/nodes"), 401));
        assert!(is_audited(&Method::GET, &c(Method::GET, "/v1/audit/events"), 200));
        assert!(is_audited(&Method::GET, &c(Method::GET, "/v1/projects/{p}/keys"), 200));
        assert!(!is_audited(&Method::PUT, &c(Method::PUT, "/agent/v1/status"), 200));
        assert!(is_audited(&Method::PUT, &c(Method::PUT, "/agent/v1/status"), 401));
    }
}
