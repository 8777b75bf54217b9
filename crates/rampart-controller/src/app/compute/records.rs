//! Typed reads and writes of the compute rows' text columns: the JSON lists and maps stored as
//! text, and the project's signature policy. Every use case goes through these, so a column's
//! format is known in one place. A leaf module: the node documents read it too, so it must not
//! reach back into the use cases (import cycle through `crate::publish`).

use std::collections::BTreeMap;

use rampart_api::compute::SignaturePolicy;
use rampart_db::compute::{self as db, AlarmRow, InstanceRow};
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

/// A JSON list column; a value that does not parse reads as empty (the rows are written by
/// this module, so that only happens to rows older than a column's format).
pub fn json_list<T: DeserializeOwned>(s: &str) -> Vec<T> {
    serde_json::from_str(s).unwrap_or_default()
}

/// `value` as a JSON text column, `empty` if it cannot be serialised.
pub fn to_column<T: Serialize + ?Sized>(value: &T, empty: &str) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| empty.into())
}

/// A JSON list column's text.
pub fn list_column<T: Serialize>(items: &[T]) -> String {
    to_column(items, "[]")
}

/// The JSON columns of an instance row.
pub struct InstanceLists {
    pub ssh_keys: Vec<String>,
    pub tags: BTreeMap<String, String>,
    pub security_groups: Vec<Uuid>,
    pub ports: Vec<Uuid>,
    pub networks: Vec<Uuid>,
}

impl InstanceLists {
    pub fn of(row: &InstanceRow) -> Self {
        Self {
            ssh_keys: json_list(&row.ssh_keys),
            tags: serde_json::from_str(&row.tags).unwrap_or_default(),
            security_groups: json_list(&row.security_groups),
            ports: json_list(&row.ports),
            networks: json_list(&row.networks),
        }
    }
}

/// The security groups of a placement (`rampart_db::compute::placements`).
pub fn placement_groups(column: &str) -> Vec<Uuid> {
    json_list(column)
}

/// The JSON columns of an alarm row.
pub struct AlarmLists<W> {
    pub windows: Vec<W>,
    pub webhooks: Vec<String>,
}

/// The alarm's columns; `W` is the window type the caller works with (the API's, or the
/// evaluator's: the stored form is the same).
pub fn alarm_lists<W: DeserializeOwned>(a: &AlarmRow) -> AlarmLists<W> {
    AlarmLists {
        windows: json_list(&a.windows),
        webhooks: json_list(&a.webhooks),
    }
}

/// An event's detail column (a JSON object).
pub fn event_detail(column: &str) -> serde_json::Value {
    serde_json::from_str(column).unwrap_or_default()
}

/// The project's image signature policy (default `require`).
pub async fn policy(conn: &mut rampart_db::Conn, project: Uuid) -> rampart_db::Result<SignaturePolicy> {
    Ok(db::signature_policy(conn, project)
        .await?
        .and_then(|p| SignaturePolicy::parse(&p))
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_column_that_does_not_parse_reads_as_empty() {
        assert!(json_list::<Uuid>("not json").is_empty());
        assert!(json_list::<Uuid>("{}").is_empty());
        let id = Uuid::new_v4();
        assert_eq!(json_list::<Uuid>(&list_column(&[id])), vec![id]);
        assert_eq!(event_detail("{\"a\":1}")["a"], 1);
        assert_eq!(event_detail("oops"), serde_json::Value::Null);
    }
}
