//! The operation record (spec 13.4-1) and its hash chain.
//!
//! A record names who (actor, source IP, user agent), what (operation, target), when (time, with
//! millisecond precision, RFC 3339 UTC), with which result (outcome, HTTP status, error code) and
//! how long it took; `request_id` ties it to the `X-Request-Id` of the response and to the run
//! log. Its JSON is the item of `GET /v1/audit/events`.
//!
//! Chain: `hash = SHA-256(prev_hash || canonical(record without "hash"))` where `prev_hash` is the
//! 32 raw bytes of the previous record's hash (all zeros before seq 1) and `canonical` is
//! [`crate::canonical`]. `prev_hash` is also inside the canonical record; hashing it twice costs
//! nothing and keeps the formula readable for independent verifiers.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::canonical::{self, CanonicalError};
use crate::hash::Hash;
use crate::redact;

/// Longest user agent kept; the rest is cut (clients choose it, the store must not grow by it).
pub const MAX_USER_AGENT: usize = 512;
/// Longest value of the other free-text fields (names, ids, codes).
pub const MAX_FIELD: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// Nobody authenticated (a failed login, a call without a token).
    None,
    Password,
    /// Password plus a TOTP code.
    PasswordTotp,
    /// A bearer token issued earlier.
    Token,
    ApplicationCredential,
    /// A client certificate (node agents over mTLS).
    Certificate,
    /// Rampart itself: reconcilers, the retention job, the crash handler.
    System,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::None => "none",
            AuthMethod::Password => "password",
            AuthMethod::PasswordTotp => "password_totp",
            AuthMethod::Token => "token",
            AuthMethod::ApplicationCredential => "application_credential",
            AuthMethod::Certificate => "certificate",
            AuthMethod::System => "system",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        serde_json::from_value(Value::String(s.to_string())).ok()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Actor {
    pub id: Option<String>,
    pub name: Option<String>,
    pub domain: Option<String>,
    pub auth_method: AuthMethod,
}

impl Actor {
    pub fn anonymous() -> Self {
        Actor {
            id: None,
            name: None,
            domain: None,
            auth_method: AuthMethod::None,
        }
    }

    pub fn system(component: &str) -> Self {
        Actor {
            id: None,
            name: Some(component.to_string()),
            domain: None,
            auth_method: AuthMethod::System,
        }
    }

    pub fn user(id: impl Into<String>, name: impl Into<String>, domain: impl Into<String>, auth: AuthMethod) -> Self {
        Actor {
            id: Some(id.into()),
            name: Some(name.into()),
            domain: Some(domain.into()),
            auth_method: auth,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Target {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: Option<String>,
    pub project: Option<String>,
}

impl Target {
    pub fn new(kind: impl Into<String>, id: Option<String>, project: Option<String>) -> Self {
        Target {
            kind: kind.into(),
            id,
            project,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Failure,
    /// The write-ahead record of a state-changing call, sealed before its handler runs: the
    /// call is refused if it cannot be written, so no change happens without a record even
    /// when the completion record (same `request_id`) is lost to a crash or a failed write.
    Pending,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Pending => "pending",
        }
    }

    /// 2xx and 3xx are successes, everything else a failure.
    pub fn from_status(status: u16) -> Self {
        if (200..400).contains(&status) {
            Outcome::Success
        } else {
            Outcome::Failure
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditResult {
    pub outcome: Outcome,
    /// HTTP status of the response (or the equivalent for non-HTTP events: 200 / 500); 0 while
    /// `pending`.
    pub status: u16,
    /// The API error code (`invalid_credentials`, …) when it failed.
    pub code: Option<String>,
}

impl AuditResult {
    pub fn success(status: u16) -> Self {
        AuditResult {
            outcome: Outcome::Success,
            status,
            code: None,
        }
    }

    pub fn failure(status: u16, code: impl Into<String>) -> Self {
        AuditResult {
            outcome: Outcome::Failure,
            status,
            code: Some(code.into()),
        }
    }

    /// A call accepted and about to run: no status yet (0).
    pub fn pending() -> Self {
        AuditResult {
            outcome: Outcome::Pending,
            status: 0,
            code: None,
        }
    }

    /// From a response: the outcome follows the status.
    pub fn from_status(status: u16, code: Option<String>) -> Self {
        AuditResult {
            outcome: Outcome::from_status(status),
            status,
            code,
        }
    }
}

/// A sealed record, as stored, listed and exported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    pub id: Uuid,
    pub seq: u64,
    /// RFC 3339 UTC with milliseconds.
    #[serde(with = "ms_time")]
    #[schema(value_type = String, format = DateTime)]
    pub time: OffsetDateTime,
    pub actor: Actor,
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub operation: String,
    pub target: Target,
    pub result: AuditResult,
    pub duration_ms: u64,
    #[schema(value_type = Object)]
    pub details: Map<String, Value>,
    /// Hex SHA-256 of the previous record (zeros before seq 1).
    #[schema(value_type = String)]
    pub prev_hash: Hash,
    /// Hex `SHA-256(prev_hash || canonical JSON of this record without hash)`.
    #[schema(value_type = String)]
    pub hash: Hash,
}

/// What a caller knows about an event; [`seal`] turns it into an [`AuditRecord`].
#[derive(Debug, Clone, PartialEq)]
pub struct NewRecord {
    pub id: Uuid,
    pub time: OffsetDateTime,
    pub actor: Actor,
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub operation: String,
    pub target: Target,
    pub result: AuditResult,
    pub duration_ms: u64,
    pub details: Map<String, Value>,
}

impl NewRecord {
    pub fn new(
        time: OffsetDateTime,
        actor: Actor,
        operation: impl Into<String>,
        target: Target,
        result: AuditResult,
    ) -> Self {
        NewRecord {
            id: Uuid::new_v4(),
            time,
            actor,
            source_ip: None,
            user_agent: None,
            request_id: None,
            operation: operation.into(),
            target,
            result,
            duration_ms: 0,
            details: Map::new(),
        }
    }

    pub fn source_ip(mut self, ip: impl Into<String>) -> Self {
        self.source_ip = Some(ip.into());
        self
    }

    pub fn user_agent(mut self, ua: impl Into<String>) -> Self {
        self.user_agent = Some(ua.into());
        self
    }

    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into());
        self
    }

    pub fn duration_ms(mut self, ms: u64) -> Self {
        self.duration_ms = ms;
        self
    }

    /// Adds a detail. Sensitive names and credential-shaped values are redacted when sealed.
    pub fn detail(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.details.insert(key.into(), value.into());
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("operation must look like `resource.verb` (lowercase words joined by dots)")]
    Operation,
    #[error("target type must be a lowercase word")]
    TargetType,
    #[error("source_ip is not an IP address")]
    SourceIp,
    #[error("status {0} is not an HTTP status")]
    Status(u16),
    #[error("duration does not fit canonical JSON")]
    Duration,
    #[error("time is outside the years 1970..=9999")]
    Time,
    #[error(transparent)]
    Canonical(#[from] CanonicalError),
}

/// The tip of a chain: the last record's seq and hash (seq 0 and zeros when empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ChainHead {
    pub seq: u64,
    pub hash: Hash,
}

impl ChainHead {
    pub const GENESIS: ChainHead = ChainHead {
        seq: 0,
        hash: Hash::ZERO,
    };

    pub fn of(record: &AuditRecord) -> Self {
        ChainHead {
            seq: record.seq,
            hash: record.hash,
        }
    }
}

fn valid_operation(op: &str) -> bool {
    let parts: Vec<&str> = op.split('.').collect();
    op.len() <= 64
        && parts.len() >= 2
        && parts.iter().all(|p| {
            p.starts_with(|c: char| c.is_ascii_lowercase())
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        })
}

fn valid_word(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

fn field(v: Option<String>) -> Option<String> {
    v.map(|s| redact::scrub_text(&s, MAX_FIELD))
}

/// Truncates to whole milliseconds: the precision the record keeps and the database stores.
pub fn truncate_ms(t: OffsetDateTime) -> OffsetDateTime {
    let t = t.to_offset(time::UtcOffset::UTC);
    t.replace_nanosecond(t.nanosecond() / 1_000_000 * 1_000_000)
        .expect("a truncated nanosecond is valid")
}

/// Validates and cleans `new`, then chains it after `head`: the one way a record is created,
/// pure so that the same code runs in a database transaction and in tests.
pub fn seal(head: &ChainHead, new: NewRecord) -> Result<AuditRecord, RecordError> {
    if !valid_operation(&new.operation) {
        return Err(RecordError::Operation);
    }
    if !valid_word(&new.target.kind) {
        return Err(RecordError::TargetType);
    }
    if let Some(ip) = &new.source_ip
        && ip.parse::<std::net::IpAddr>().is_err()
    {
        return Err(RecordError::SourceIp);
    }
    let status_ok = match new.result.outcome {
        Outcome::Pending => new.result.status == 0,
        _ => (100..=599).contains(&new.result.status),
    };
    if !status_ok {
        return Err(RecordError::Status(new.result.status));
    }
    if new.duration_ms > canonical::MAX_SAFE_INTEGER as u64 {
        return Err(RecordError::Duration);
    }
    if !(1970..=9999).contains(&new.time.to_offset(time::UtcOffset::UTC).year()) {
        return Err(RecordError::Time);
    }
    let mut record = AuditRecord {
        id: new.id,
        seq: head.seq + 1,
        time: truncate_ms(new.time),
        actor: Actor {
            id: field(new.actor.id),
            name: field(new.actor.name),
            domain: field(new.actor.domain),
            auth_method: new.actor.auth_method,
        },
        source_ip: new.source_ip,
        user_agent: new.user_agent.map(|s| redact::scrub_text(&s, MAX_USER_AGENT)),
        request_id: field(new.request_id),
        operation: new.operation,
        target: Target {
            kind: new.target.kind,
            id: field(new.target.id),
            project: field(new.target.project),
        },
        result: AuditResult {
            outcome: new.result.outcome,
            status: new.result.status,
            code: field(new.result.code),
        },
        duration_ms: new.duration_ms,
        details: redact::normalise_details(new.details),
        prev_hash: head.hash,
        hash: Hash::ZERO,
    };
    record.hash = compute_hash(&record)?;
    Ok(record)
}

/// The canonical bytes a record's hash covers: the record without its `hash` member.
pub fn canonical_body(record: &AuditRecord) -> Result<Vec<u8>, CanonicalError> {
    let mut v = serde_json::to_value(record).expect("records serialise");
    if let Value::Object(m) = &mut v {
        m.remove("hash");
    }
    canonical::to_canonical(&v)
}

/// `SHA-256(prev_hash || canonical(record without hash))`, from the record's own `prev_hash`.
pub fn compute_hash(record: &AuditRecord) -> Result<Hash, CanonicalError> {
    let body = canonical_body(record)?;
    Ok(Hash::sha256(&[&record.prev_hash.0, &body]))
}

/// RFC 3339 UTC with exactly three fractional digits: one spelling per instant, so the canonical
/// form (and the hash) can be rebuilt from the database's millisecond column.
pub mod ms_time {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;
    use time::macros::format_description;

    pub fn format(t: &OffsetDateTime) -> String {
        let t = t.to_offset(time::UtcOffset::UTC);
        t.format(format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        ))
        .expect("years 1970..=9999 format")
    }

    pub fn serialize<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        let s = String::deserialize(d)?;
        OffsetDateTime::parse(&s, &Rfc3339).map_err(serde::de::Error::custom)
    }
}

/// The flat form of a record for SQL: one column per field, times in epoch milliseconds,
/// `details` as canonical JSON text. [`AuditRow::into_record`] rebuilds exactly the record that
/// was hashed, so verification reads the same columns the API lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub seq: i64,
    pub id: String,
    pub time_ms: i64,
    pub actor_id: Option<String>,
    pub actor_name: Option<String>,
    pub actor_domain: Option<String>,
    pub auth_method: String,
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub operation: String,
    pub target_type: String,
    pub target_id: Option<String>,
    pub target_project: Option<String>,
    pub outcome: String,
    pub status: i64,
    pub code: Option<String>,
    pub duration_ms: i64,
    pub details: String,
    pub prev_hash: String,
    pub hash: String,
}

/// A row that no longer decodes into a record: itself evidence of tampering.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit row {seq} does not decode: {field}")]
pub struct RowError {
    pub seq: i64,
    pub field: &'static str,
}

impl AuditRow {
    pub fn from_record(r: &AuditRecord) -> Self {
        AuditRow {
            seq: r.seq as i64,
            id: r.id.to_string(),
            time_ms: rampart_common::time::to_ms(r.time),
            actor_id: r.actor.id.clone(),
            actor_name: r.actor.name.clone(),
            actor_domain: r.actor.domain.clone(),
            auth_method: r.actor.auth_method.as_str().to_string(),
            source_ip: r.source_ip.clone(),
            user_agent: r.user_agent.clone(),
            request_id: r.request_id.clone(),
            operation: r.operation.clone(),
            target_type: r.target.kind.clone(),
            target_id: r.target.id.clone(),
            target_project: r.target.project.clone(),
            outcome: r.result.outcome.as_str().to_string(),
            status: i64::from(r.result.status),
            code: r.result.code.clone(),
            duration_ms: r.duration_ms as i64,
            details: String::from_utf8(
                canonical::to_canonical(&Value::Object(r.details.clone())).expect("sealed details are canonical"),
            )
            .expect("canonical JSON is UTF-8"),
            prev_hash: r.prev_hash.to_hex(),
            hash: r.hash.to_hex(),
        }
    }

    pub fn into_record(self) -> Result<AuditRecord, RowError> {
        let seq = self.seq;
        let err = |field| RowError { seq, field };
        Ok(AuditRecord {
            id: self.id.parse().map_err(|_| err("id"))?,
            seq: u64::try_from(self.seq).map_err(|_| err("seq"))?,
            time: rampart_common::time::from_ms(self.time_ms),
            actor: Actor {
                id: self.actor_id,
                name: self.actor_name,
                domain: self.actor_domain,
                auth_method: AuthMethod::parse(&self.auth_method).ok_or(err("auth_method"))?,
            },
            source_ip: self.source_ip,
            user_agent: self.user_agent,
            request_id: self.request_id,
            operation: self.operation,
            target: Target {
                kind: self.target_type,
                id: self.target_id,
                project: self.target_project,
            },
            result: AuditResult {
                outcome: match self.outcome.as_str() {
                    "success" => Outcome::Success,
                    "failure" => Outcome::Failure,
                    "pending" => Outcome::Pending,
                    _ => return Err(err("outcome")),
                },
                status: u16::try_from(self.status).map_err(|_| err("status"))?,
                code: self.code,
            },
            duration_ms: u64::try_from(self.duration_ms).map_err(|_| err("duration_ms"))?,
            details: serde_json::from_str(&self.details).map_err(|_| err("details"))?,
            prev_hash: Hash::from_hex(&self.prev_hash).ok_or(err("prev_hash"))?,
            hash: Hash::from_hex(&self.hash).ok_or(err("hash"))?,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::datetime;

    pub(crate) fn sample(time: OffsetDateTime) -> NewRecord {
        let mut r = NewRecord::new(
            time,
            Actor::user(
                "7d0c7f6e-7a51-4c1b-9a55-0d3c1f7b2a10",
                "alice",
                "default",
                AuthMethod::Token,
            ),
            "instance.create",
            Target::new(
                "instance",
                Some("0b7e1f0e-3c55-4f7e-8d2a-6a7d8c1e9f00".into()),
                Some("4f1d2c3b-5a6e-4b7c-8d9e-0f1a2b3c4d5e".into()),
            ),
            AuditResult::success(201),
        )
        .source_ip("192.0.2.10")
        .user_agent("rampart-cli/0.1")
        .request_id("5c3a8f6e-2d1b-4e7f-9a0c-1b2d3e4f5a6b")
        .duration_ms(42)
        .detail("name", "web-1")
        .detail("admin_password", "hunter2-canary");
        r.id = "a3bb189e-8bf9-3888-9912-ace4e6543002".parse().unwrap();
        r
    }

    #[test]
    fn spec_13_4_1_record_has_all_fields() {
        let rec = seal(&ChainHead::GENESIS, sample(datetime!(2026-11-29 04:17:41.123456 UTC))).unwrap();
        let v = serde_json::to_value(&rec).unwrap();
        for path in [
            "/id",
            "/seq",
            "/time",
            "/actor/id",
            "/actor/name",
            "/actor/domain",
            "/actor/auth_method",
            "/source_ip",
            "/user_agent",
            "/request_id",
            "/operation",
            "/target/type",
            "/target/id",
            "/target/project",
            "/result/outcome",
            "/result/status",
            "/result/code",
            "/duration_ms",
            "/details",
            "/prev_hash",
            "/hash",
        ] {
            assert!(v.pointer(path).is_some(), "{path} missing from {v}");
        }
        assert_eq!(v["time"], "2026-11-29T04:17:41.123Z");
        assert_eq!(v["seq"], 1);
        assert_eq!(v["result"]["outcome"], "success");
        assert_eq!(v["details"]["admin_password"], "[redacted]");
        assert_eq!(v["prev_hash"], "0".repeat(64));
        let back: AuditRecord = serde_json::from_value(v).unwrap();
        assert_eq!(back, rec);
    }

    #[test]
    fn spec_13_4_1_record_hash_golden() {
        let rec = seal(&ChainHead::GENESIS, sample(datetime!(2026-11-29 04:17:41.123 UTC))).unwrap();
        let body = String::from_utf8(canonical_body(&rec).unwrap()).unwrap();
        assert_eq!(
            body,
            r#"{"actor":{"auth_method":"token","domain":"default","id":"7d0c7f6e-7a51-4c1b-9a55-0d3c1f7b2a10","name":"alice"},"details":{"admin_password":"[redacted]","name":"web-1"},"duration_ms":42,"id":"a3bb189e-8bf9-3888-9912-ace4e6543002","operation":"instance.create","prev_hash":"0000000000000000000000000000000000000000000000000000000000000000","request_id":"5c3a8f6e-2d1b-4e7f-9a0c-1b2d3e4f5a6b","result":{"code":null,"outcome":"success","status":201},"seq":1,"source_ip":"192.0.2.10","target":{"id":"0b7e1f0e-3c55-4f7e-8d2a-6a7d8c1e9f00","project":"4f1d2c3b-5a6e-4b7c-8d9e-0f1a2b3c4d5e","type":"instance"},"time":"2026-11-29T04:17:41.123Z","user_agent":"rampart-cli/0.1"}"#
        );
        // Independent check of the formula: SHA-256(32 zero bytes || canonical body).
        let mut pre = vec![0u8; 32];
        pre.extend_from_slice(body.as_bytes());
        assert_eq!(rec.hash, Hash::sha256(&[&pre]));
        assert_eq!(rec.hash, compute_hash(&rec).unwrap());
    }

    #[test]
    fn spec_13_4_1_records_chain_by_prev_hash() {
        let t = datetime!(2026-11-29 04:17:41 UTC);
        let a = seal(&ChainHead::GENESIS, sample(t)).unwrap();
        let b = seal(&ChainHead::of(&a), sample(t)).unwrap();
        assert_eq!(b.seq, 2);
        assert_eq!(b.prev_hash, a.hash);
        assert_ne!(a.hash, b.hash);
    }

    #[test]
    fn spec_13_4_1_invalid_records_are_refused() {
        let t = datetime!(2026-11-29 04:17:41 UTC);
        let mut r = sample(t);
        r.operation = "Create".into();
        assert_eq!(seal(&ChainHead::GENESIS, r), Err(RecordError::Operation));
        let r = sample(t).source_ip("not-an-ip");
        assert_eq!(seal(&ChainHead::GENESIS, r), Err(RecordError::SourceIp));
        let mut r = sample(t);
        r.result.status = 42;
        assert_eq!(seal(&ChainHead::GENESIS, r), Err(RecordError::Status(42)));
        let mut r = sample(t);
        r.result = AuditResult::pending();
        assert!(
            seal(&ChainHead::GENESIS, r).is_ok(),
            "a pending record has no status yet"
        );
        let mut r = sample(t);
        r.result = AuditResult {
            status: 200,
            ..AuditResult::pending()
        };
        assert_eq!(seal(&ChainHead::GENESIS, r), Err(RecordError::Status(200)));
    }

    #[test]
    fn spec_13_4_1_row_round_trip_keeps_the_hash() {
        let rec = seal(
            &ChainHead::GENESIS,
            sample(datetime!(2026-11-29 04:17:41.5 UTC)).detail("nested", json!({"b": [1, 2], "a": "é"})),
        )
        .unwrap();
        let row = AuditRow::from_record(&rec);
        assert_eq!(row.time_ms, 1_795_925_861_500);
        assert_eq!(
            row.details,
            r#"{"admin_password":"[redacted]","name":"web-1","nested":{"a":"é","b":[1,2]}}"#
        );
        let back = row.clone().into_record().unwrap();
        assert_eq!(back, rec);
        assert_eq!(compute_hash(&back).unwrap(), rec.hash);
        let mut bad = row;
        bad.outcome = "maybe".into();
        assert_eq!(bad.into_record().unwrap_err().field, "outcome");
    }
}
