//! The audit facts of key operations (13.3-4) and who did them.

use rampart_kms::{KeyAuditFacts, KeyOperation};
use uuid::Uuid;

/// Who did a key operation, for its audit record.
#[derive(Debug, Clone)]
pub struct Actor {
    pub id: Option<Uuid>,
    pub name: String,
    pub source_ip: Option<std::net::IpAddr>,
}

impl Actor {
    pub fn system() -> Actor {
        Actor {
            id: None,
            name: "system:reconciler".into(),
            source_ip: None,
        }
    }
}

/// Writes the audit facts of a key operation (13.3-4): operation, key, version, context,
/// outcome and error code, with the actor. Never plaintext, key material or a data key: the
/// facts cannot hold them. They go to the run log under the `rampart::audit` target (and into
/// the response's extensions, where the audit trail picks them up).
pub fn audit(actor: &Actor, facts: &KeyAuditFacts) {
    let context = serde_json::to_string(&facts.context).unwrap_or_default();
    let operation = serde_json::to_value(facts.operation)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    tracing::info!(
        target: "rampart::audit",
        operation = %operation,
        project = %facts.project,
        key_id = %facts.key_id,
        key_version = ?facts.key_version,
        source_key_id = ?facts.source_key_id,
        source_key_version = ?facts.source_key_version,
        context = %context,
        outcome = facts.outcome,
        error_code = ?facts.error_code,
        actor = %actor.name,
        actor_id = ?actor.id,
        source_ip = ?actor.source_ip,
        "key operation"
    );
}

/// The empty facts of an operation on `key_id` (filled as the operation goes).
pub fn facts(operation: KeyOperation, project: Uuid, key_id: Uuid) -> KeyAuditFacts {
    KeyAuditFacts {
        operation,
        project,
        key_id,
        key_version: None,
        source_key_id: None,
        source_key_version: None,
        context: Default::default(),
        outcome: "success",
        error_code: None,
    }
}
