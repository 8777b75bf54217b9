//! The storage boundary: the rows the controller keeps for customer keys, their DDL for both
//! database backends, and the conversions to and from [`Key`]. Conventions of rampart-db:
//! ids TEXT (UUID), times BIGINT milliseconds, no BOOLEAN columns. Wrapped key material is
//! TEXT base64 and becomes NULL when a key is destroyed; no column ever holds plaintext key
//! material (13.3-5), which the dump tests check.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use rampart_common::time::{from_ms, to_ms};

use crate::envelope::WrappedKey;
use crate::lifecycle::{Algorithm, Key, KeyState, KeyStateName, KeyVersion};

/// DDL of the key tables; the same text serves SQLite and PostgreSQL (portable types only).
/// To go into `migrations/{sqlite,postgres}/NNNN_kms.sql`.
pub const SQLITE_DDL: &str = DDL;
pub const POSTGRES_DDL: &str = DDL;

const DDL: &str = "\
CREATE TABLE kms_keys (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects (id),
    name TEXT NOT NULL,
    algorithm TEXT NOT NULL CHECK (algorithm IN ('aes-256-gcm')),
    state TEXT NOT NULL CHECK (state IN ('enabled', 'disabled', 'pending_deletion', 'destroyed')),
    primary_version BIGINT NOT NULL CHECK (primary_version >= 1),
    min_decryption_version BIGINT NOT NULL CHECK (min_decryption_version >= 1),
    rotation_period_days BIGINT,
    last_rotated_at BIGINT NOT NULL,
    deletion_at BIGINT,
    destroyed_at BIGINT,
    next_action_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (project_id, name)
);

CREATE INDEX kms_keys_next_action ON kms_keys (next_action_at);

CREATE TABLE kms_key_versions (
    key_id TEXT NOT NULL REFERENCES kms_keys (id),
    version BIGINT NOT NULL CHECK (version >= 1),
    wrapped_material TEXT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (key_id, version)
);
";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRow {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub algorithm: String,
    pub state: String,
    pub primary_version: i64,
    pub min_decryption_version: i64,
    pub rotation_period_days: Option<i64>,
    pub last_rotated_at: i64,
    pub deletion_at: Option<i64>,
    pub destroyed_at: Option<i64>,
    /// When the reconciler must look at the key (rotation or destruction), indexed.
    pub next_action_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyVersionRow {
    pub key_id: String,
    pub version: i64,
    /// Base64 of [`WrappedKey`]; NULL once destroyed.
    pub wrapped_material: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("stored key row has an invalid {field}")]
    Invalid { field: &'static str },
}

fn invalid(field: &'static str) -> StorageError {
    StorageError::Invalid { field }
}

pub fn to_rows(key: &Key) -> (KeyRow, Vec<KeyVersionRow>) {
    let (deletion_at, destroyed_at) = match key.state {
        KeyState::PendingDeletion { delete_at } => (Some(to_ms(delete_at)), None),
        KeyState::Destroyed { destroyed_at } => (None, Some(to_ms(destroyed_at))),
        _ => (None, None),
    };
    let row = KeyRow {
        id: key.id.to_string(),
        project_id: key.project.to_string(),
        name: key.name.clone(),
        algorithm: key.algorithm.as_str().to_string(),
        state: key.state.name().as_str().to_string(),
        primary_version: key.primary_version as i64,
        min_decryption_version: key.min_decryption_version as i64,
        rotation_period_days: key.rotation_period_days.map(i64::from),
        last_rotated_at: to_ms(key.last_rotated_at),
        deletion_at,
        destroyed_at,
        next_action_at: key.next_action_at().map(to_ms),
        created_at: to_ms(key.created_at),
        updated_at: to_ms(key.updated_at),
    };
    let versions = key
        .versions
        .iter()
        .map(|v| KeyVersionRow {
            key_id: row.id.clone(),
            version: v.version as i64,
            wrapped_material: v.wrapped.as_ref().map(WrappedKey::to_base64),
            created_at: to_ms(v.created_at),
        })
        .collect();
    (row, versions)
}

fn version_u32(v: i64, field: &'static str) -> Result<u32, StorageError> {
    u32::try_from(v).ok().filter(|v| *v >= 1).ok_or(invalid(field))
}

pub fn from_rows(row: &KeyRow, versions: &[KeyVersionRow]) -> Result<Key, StorageError> {
    let state = match KeyStateName::parse(&row.state).ok_or(invalid("state"))? {
        KeyStateName::Enabled => KeyState::Enabled,
        KeyStateName::Disabled => KeyState::Disabled,
        KeyStateName::PendingDeletion => KeyState::PendingDeletion {
            delete_at: from_ms(row.deletion_at.ok_or(invalid("deletion_at"))?),
        },
        KeyStateName::Destroyed => KeyState::Destroyed {
            destroyed_at: from_ms(row.destroyed_at.ok_or(invalid("destroyed_at"))?),
        },
    };
    let id = Uuid::parse_str(&row.id).map_err(|_| invalid("id"))?;
    let mut vs = versions
        .iter()
        .map(|v| {
            if v.key_id != row.id {
                return Err(invalid("key_id"));
            }
            Ok(KeyVersion {
                version: version_u32(v.version, "version")?,
                wrapped: v
                    .wrapped_material
                    .as_deref()
                    .map(WrappedKey::from_base64)
                    .transpose()
                    .map_err(|_| invalid("wrapped_material"))?,
                created_at: from_ms(v.created_at),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    vs.sort_by_key(|v| v.version);
    Ok(Key {
        id,
        project: Uuid::parse_str(&row.project_id).map_err(|_| invalid("project_id"))?,
        name: row.name.clone(),
        algorithm: Algorithm::parse(&row.algorithm).map_err(|_| invalid("algorithm"))?,
        state,
        primary_version: version_u32(row.primary_version, "primary_version")?,
        min_decryption_version: version_u32(row.min_decryption_version, "min_decryption_version")?,
        rotation_period_days: row
            .rotation_period_days
            .map(|d| u32::try_from(d).map_err(|_| invalid("rotation_period_days")))
            .transpose()?,
        last_rotated_at: from_ms(row.last_rotated_at),
        created_at: from_ms(row.created_at),
        updated_at: from_ms(row.updated_at),
        versions: vs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn rows_round_trip_in_every_state() {
        let t = datetime!(2026-03-01 12:00:00.123 UTC);
        let mut k = Key::new(
            Uuid::from_u128(7),
            Uuid::from_u128(8),
            "k".into(),
            Some(30),
            WrappedKey::new(1, &[1; 12], &[2; 56]),
            t,
        )
        .unwrap();
        k.rotate(2, WrappedKey::new(1, &[3; 12], &[4; 56]), t).unwrap();
        let (row, vs) = to_rows(&k);
        assert_eq!(row.state, "enabled");
        assert_eq!(row.next_action_at, Some(to_ms(t) + 30 * 86_400_000));
        assert_eq!(from_rows(&row, &vs).unwrap(), k);
        k.schedule_deletion(Some(7), t).unwrap();
        let (row, vs) = to_rows(&k);
        assert_eq!(row.deletion_at, row.next_action_at);
        assert_eq!(from_rows(&row, &vs).unwrap(), k);
        k.destroy(t + time::Duration::days(7)).unwrap();
        let (row, vs) = to_rows(&k);
        assert!(vs.iter().all(|v| v.wrapped_material.is_none()));
        assert_eq!(from_rows(&row, &vs).unwrap(), k);
    }

    #[test]
    fn corrupt_rows_are_refused() {
        let t = datetime!(2026-03-01 0:00 UTC);
        let k = Key::new(
            Uuid::from_u128(7),
            Uuid::from_u128(8),
            "k".into(),
            None,
            WrappedKey::new(1, &[1; 12], &[2; 56]),
            t,
        )
        .unwrap();
        let (row, vs) = to_rows(&k);
        let bad_state = KeyRow {
            state: "pending_deletion".into(),
            ..row.clone()
        };
        assert!(from_rows(&bad_state, &vs).is_err(), "pending without a date");
        let bad_version = KeyVersionRow {
            version: 0,
            ..vs[0].clone()
        };
        assert!(from_rows(&row, &[bad_version]).is_err());
        let other_key = KeyVersionRow {
            key_id: Uuid::nil().to_string(),
            ..vs[0].clone()
        };
        assert!(from_rows(&row, &[other_key]).is_err());
    }
}
