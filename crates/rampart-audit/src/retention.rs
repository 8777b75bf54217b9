//! Retention per log type (spec 13.4-6) and the pure purge planner.
//!
//! Defaults and bounds (days):
//!
//! | log type | default | minimum | maximum | why |
//! |---|---|---|---|---|
//! | operation (audit records) | 180 | 180 | 3650 | CSA 13.4-6 "at least a default time"; China CSL art. 21 / MLPS ask ≥ 6 months |
//! | security (auth failures, lockouts, alarms) | 365 | 180 | 3650 | investigations look back further than operations |
//! | run (tracing JSON) | 30 | 1 | 3650 | operational, voluminous |
//! | blackbox (crash dumps) | 90 | 7 | 3650 | rare, needed until the fault is understood |
//!
//! Only the auditor or security admin may change them (`PUT /v1/audit/retention`), and each
//! change is itself an audit record (`audit.retention.update`, details = old and new values).
//!
//! The planner drops the longest *prefix* of the chain whose records are all older than the
//! cutoff: a record with a skewed clock never makes a newer one disappear, and the kept records
//! stay one unbroken chain that a boundary checkpoint anchors.

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::checkpoint::{Checkpoint, CheckpointBody, CheckpointKind};
use crate::hash::Hash;
use crate::merkle::CompactRange;
use crate::record::{AuditRecord, compute_hash, truncate_ms};

pub const MAX_DAYS: u32 = 3650;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogType {
    Operation,
    Run,
    Blackbox,
    Security,
}

impl LogType {
    pub const ALL: [LogType; 4] = [LogType::Operation, LogType::Run, LogType::Blackbox, LogType::Security];

    pub fn min_days(self) -> u32 {
        match self {
            LogType::Operation | LogType::Security => 180,
            LogType::Run => 1,
            LogType::Blackbox => 7,
        }
    }

    pub fn field(self) -> &'static str {
        match self {
            LogType::Operation => "operation_days",
            LogType::Run => "run_days",
            LogType::Blackbox => "blackbox_days",
            LogType::Security => "security_days",
        }
    }
}

/// The body of `GET/PUT /v1/audit/retention`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetentionPolicy {
    pub operation_days: u32,
    pub run_days: u32,
    pub blackbox_days: u32,
    pub security_days: u32,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        RetentionPolicy {
            operation_days: 180,
            run_days: 30,
            blackbox_days: 90,
            security_days: 365,
        }
    }
}

/// One out-of-range value, named by its API field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionViolation {
    pub field: &'static str,
    pub min: u32,
    pub max: u32,
}

impl RetentionPolicy {
    pub fn days(&self, t: LogType) -> u32 {
        match t {
            LogType::Operation => self.operation_days,
            LogType::Run => self.run_days,
            LogType::Blackbox => self.blackbox_days,
            LogType::Security => self.security_days,
        }
    }

    /// Every violated bound (empty when acceptable); the API turns them into a 400
    /// `validation_failed` with `details.fields`.
    pub fn validate(&self) -> Vec<RetentionViolation> {
        LogType::ALL
            .iter()
            .filter(|t| !(t.min_days()..=MAX_DAYS).contains(&self.days(**t)))
            .map(|t| RetentionViolation {
                field: t.field(),
                min: t.min_days(),
                max: MAX_DAYS,
            })
            .collect()
    }

    /// Items older than this are expired.
    pub fn cutoff(&self, t: LogType, now: OffsetDateTime) -> OffsetDateTime {
        now - Duration::days(i64::from(self.days(t)))
    }
}

/// Where the chain that is still stored begins: the state a purge continues from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainStart {
    /// Merkle state over records 1..first_seq-1 (empty at genesis).
    pub tree: CompactRange,
    /// Hash of record first_seq-1 (zeros at genesis).
    pub last_hash: Hash,
}

impl ChainStart {
    pub fn genesis() -> Self {
        ChainStart {
            tree: CompactRange::new(),
            last_hash: Hash::ZERO,
        }
    }

    /// The start a boundary checkpoint attests.
    pub fn from_boundary(cp: &Checkpoint) -> Option<Self> {
        Some(ChainStart {
            tree: cp.body.tree()?,
            last_hash: cp.body.last_hash,
        })
    }

    pub fn first_seq(&self) -> u64 {
        self.tree.size + 1
    }
}

/// What the purge job does: drop records `first_seq..drop_before` and write the boundary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgePlan {
    /// First record kept; records below it are dropped.
    pub drop_before: u64,
    /// State after the last dropped record, to be signed as the boundary checkpoint.
    pub tree: CompactRange,
    pub last_hash: Hash,
}

impl PurgePlan {
    pub fn dropped(&self, start: &ChainStart) -> u64 {
        self.drop_before - start.first_seq()
    }

    /// The unsigned boundary checkpoint that follows `latest` (the newest checkpoint by number).
    pub fn boundary_body(&self, latest: Option<&Checkpoint>, now: OffsetDateTime, key_id: &str) -> CheckpointBody {
        CheckpointBody {
            version: 1,
            seq: latest.map_or(1, |c| c.body.seq + 1),
            kind: CheckpointKind::Boundary,
            tree_size: self.tree.size,
            root: self.tree.root(),
            last_hash: self.last_hash,
            compact_range: self.tree.nodes.clone(),
            time: truncate_ms(now),
            key_id: key_id.to_string(),
            prev: latest.map_or(Hash::ZERO, Checkpoint::digest),
        }
    }
}

/// The chain is damaged inside the range a purge would destroy: purging would erase the
/// evidence, so the planner refuses and the operator must verify first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit record {seq} fails verification; refusing to purge over it")]
pub struct PurgeRefused {
    pub seq: u64,
}

/// Streams records from the start of the stored chain and stops at the first unexpired one.
pub struct PurgePlanner {
    cutoff: OffsetDateTime,
    /// Cutoff of security events (authentication, refused calls), when it differs.
    security_cutoff: Option<OffsetDateTime>,
    /// Records after this seq are kept whatever their age.
    max_seq: u64,
    tree: CompactRange,
    last_hash: Hash,
    next: u64,
    done: bool,
}

impl PurgePlanner {
    pub fn new(start: ChainStart, cutoff: OffsetDateTime) -> Self {
        PurgePlanner {
            cutoff,
            security_cutoff: None,
            max_seq: u64::MAX,
            next: start.first_seq(),
            tree: start.tree,
            last_hash: start.last_hash,
            done: false,
        }
    }

    /// Security events ([`is_security_event`]) expire at this cutoff instead.
    pub fn with_security_cutoff(mut self, cutoff: OffsetDateTime) -> Self {
        self.security_cutoff = Some(cutoff);
        self
    }

    /// Never drops records after `max_seq`.
    pub fn up_to(mut self, max_seq: u64) -> Self {
        self.max_seq = max_seq;
        self
    }

    /// Feeds the next record; returns `Ok(false)` once the prefix ends (no more input needed).
    pub fn push(&mut self, r: &AuditRecord) -> Result<bool, PurgeRefused> {
        if self.done {
            return Ok(false);
        }
        let cutoff = match self.security_cutoff {
            Some(c) if is_security_event(r) => c,
            _ => self.cutoff,
        };
        if r.time >= cutoff || r.seq > self.max_seq {
            self.done = true;
            return Ok(false);
        }
        let intact = r.seq == self.next && r.prev_hash == self.last_hash && compute_hash(r).is_ok_and(|h| h == r.hash);
        if !intact {
            return Err(PurgeRefused {
                seq: r.seq.min(self.next),
            });
        }
        self.tree.push(&r.hash);
        self.last_hash = r.hash;
        self.next += 1;
        Ok(true)
    }

    /// The plan, or `None` when nothing has expired.
    pub fn finish(self, start_first_seq: u64) -> Option<PurgePlan> {
        (self.next > start_first_seq).then_some(PurgePlan {
            drop_before: self.next,
            tree: self.tree,
            last_hash: self.last_hash,
        })
    }
}

/// Security events keep the `security` retention: authentication events (`auth.*`), calls
/// refused for authentication or authorization (401, 403) and black-box dumps.
pub fn is_security_event(r: &AuditRecord) -> bool {
    r.operation.starts_with("auth.")
        || r.operation.starts_with("system.blackbox")
        || matches!(r.result.status, 401 | 403)
}

/// The whole planner over an in-memory slice (the store-backed job streams instead).
pub fn plan_purge(
    start: ChainStart,
    records: &[AuditRecord],
    policy: &RetentionPolicy,
    now: OffsetDateTime,
) -> Result<Option<PurgePlan>, PurgeRefused> {
    let first = start.first_seq();
    let mut p = PurgePlanner::new(start, policy.cutoff(LogType::Operation, now));
    for r in records {
        if !p.push(r)? {
            break;
        }
    }
    Ok(p.finish(first))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{ChainHead, seal, tests::sample};
    use time::macros::datetime;

    fn chain(times: &[OffsetDateTime]) -> Vec<AuditRecord> {
        let mut head = ChainHead::GENESIS;
        times
            .iter()
            .map(|t| {
                let r = seal(&head, sample(*t)).unwrap();
                head = ChainHead::of(&r);
                r
            })
            .collect()
    }

    #[test]
    fn spec_13_4_6_defaults_and_bounds_per_log_type() {
        let d = RetentionPolicy::default();
        assert!(d.validate().is_empty());
        assert!(d.operation_days >= 180);
        let bad = RetentionPolicy {
            operation_days: 90,
            run_days: 0,
            blackbox_days: 90,
            security_days: 4000,
        };
        let fields: Vec<&str> = bad.validate().iter().map(|v| v.field).collect();
        assert_eq!(fields, vec!["operation_days", "run_days", "security_days"]);
        let custom = RetentionPolicy {
            operation_days: 400,
            run_days: 7,
            blackbox_days: 30,
            security_days: 200,
        };
        assert!(custom.validate().is_empty());
        let now = datetime!(2026-11-29 0:00 UTC);
        assert_eq!(custom.cutoff(LogType::Run, now), datetime!(2026-11-22 0:00 UTC));
        assert_eq!(custom.cutoff(LogType::Operation, now), now - Duration::days(400));
        let err = serde_json::from_str::<RetentionPolicy>(
            r#"{"operation_days":180,"run_days":1,"blackbox_days":7,"security_days":180,"x":1}"#,
        );
        assert!(err.is_err(), "unknown fields are refused");
    }

    #[test]
    fn spec_13_4_6_planner_drops_only_the_expired_prefix() {
        let now = datetime!(2026-11-29 0:00 UTC);
        let old = now - Duration::days(200);
        let recent = now - Duration::days(10);
        // Record 3 carries a recent time (clock skew): 4 is old but must survive with it.
        let recs = chain(&[old, old, recent, old, recent]);
        let plan = plan_purge(ChainStart::genesis(), &recs, &RetentionPolicy::default(), now)
            .unwrap()
            .unwrap();
        assert_eq!(plan.drop_before, 3);
        assert_eq!(plan.last_hash, recs[1].hash);
        assert_eq!(plan.tree.size, 2);
        let mut expect = CompactRange::new();
        expect.push(&recs[0].hash);
        expect.push(&recs[1].hash);
        assert_eq!(plan.tree.root(), expect.root());

        let body = plan.boundary_body(None, now, "ed25519:k");
        assert_eq!((body.seq, body.kind, body.tree_size), (1, CheckpointKind::Boundary, 2));
        assert_eq!(body.prev, Hash::ZERO);

        let none = plan_purge(ChainStart::genesis(), &recs[3..], &RetentionPolicy::default(), now);
        assert!(
            matches!(none, Err(PurgeRefused { seq: 1 })),
            "a start that does not match the records is refused"
        );
        let fresh = chain(&[recent, recent]);
        assert_eq!(
            plan_purge(ChainStart::genesis(), &fresh, &RetentionPolicy::default(), now),
            Ok(None)
        );
    }

    #[test]
    fn spec_13_4_6_planner_refuses_to_purge_over_tampered_records() {
        let now = datetime!(2026-11-29 0:00 UTC);
        let old = now - Duration::days(365);
        let mut recs = chain(&[old, old, old]);
        recs[1].operation = "instance.delete".into();
        assert_eq!(
            plan_purge(ChainStart::genesis(), &recs, &RetentionPolicy::default(), now),
            Err(PurgeRefused { seq: 2 })
        );
    }
}
