//! Live conformance (`GET /v1/conformance`, `rampart conformance`): every clause of the spec
//! with its mechanism, its tests and, where a live probe exists, what the probe found in the
//! running cloud.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ConformanceReport {
    pub clauses: Vec<ClauseConformance>,
    /// Clauses with at least one live probe.
    pub probed: u32,
    /// Probed clauses whose probes all passed (or were not applicable, with one pass).
    pub passed: u32,
    pub failed: u32,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub generated_at: OffsetDateTime,
    /// How long the probes took together.
    pub duration_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClauseConformance {
    /// The clause id of `shared/REQUIREMENTS.md` (`9.3-4`, `12.3.4-1`).
    pub id: String,
    pub requirement: String,
    /// `pass` | `fail` | `not_applicable` | `not_probed`.
    pub status: String,
    /// Whether a live probe ran for this clause.
    pub probe: bool,
    /// What the probes saw (one line per probe), or the documented status without a probe.
    pub evidence: String,
    /// The tests of the suite that prove the mechanism (names carry the clause id).
    pub tests: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<ProbeResult>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProbeResult {
    /// Stable probe name, e.g. `tls_1_1_refused`.
    pub name: String,
    /// `pass` | `fail` | `not_applicable`.
    pub status: String,
    pub evidence: String,
}
