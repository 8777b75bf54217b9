//! The customer key lifecycle as pure functions over [`Key`] (13.3-1, 13.3-3, 13.3-8).
//!
//! States: `enabled ⇄ disabled`, either → `pending_deletion` (7–30 days) → `destroyed` when the
//! window has passed; `cancel-deletion` returns to `disabled` (never straight to use, so a
//! cancelled deletion is a deliberate re-enable). Versions only grow; rotation adds one and
//! makes it primary; `min_decryption_version` retires older versions for decryption.
//! Nothing here touches the HSM or the database: the service and the controller do, with
//! what these functions decide.

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::envelope::WrappedKey;
use crate::error::KmsError;

pub const MIN_PENDING_DAYS: u32 = 7;
pub const MAX_PENDING_DAYS: u32 = 30;
pub const DEFAULT_PENDING_DAYS: u32 = 30;
pub const MIN_ROTATION_DAYS: u32 = 1;
pub const MAX_ROTATION_DAYS: u32 = 3650;

/// Name of a key state, as stored (`state` column) and shown by the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyStateName {
    Enabled,
    Disabled,
    PendingDeletion,
    Destroyed,
}

impl KeyStateName {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStateName::Enabled => "enabled",
            KeyStateName::Disabled => "disabled",
            KeyStateName::PendingDeletion => "pending_deletion",
            KeyStateName::Destroyed => "destroyed",
        }
    }

    pub fn parse(s: &str) -> Option<KeyStateName> {
        Some(match s {
            "enabled" => KeyStateName::Enabled,
            "disabled" => KeyStateName::Disabled,
            "pending_deletion" => KeyStateName::PendingDeletion,
            "destroyed" => KeyStateName::Destroyed,
            _ => return None,
        })
    }
}

impl std::fmt::Display for KeyStateName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    Enabled,
    Disabled,
    PendingDeletion { delete_at: OffsetDateTime },
    Destroyed { destroyed_at: OffsetDateTime },
}

impl KeyState {
    pub fn name(&self) -> KeyStateName {
        match self {
            KeyState::Enabled => KeyStateName::Enabled,
            KeyState::Disabled => KeyStateName::Disabled,
            KeyState::PendingDeletion { .. } => KeyStateName::PendingDeletion,
            KeyState::Destroyed { .. } => KeyStateName::Destroyed,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    Aes256Gcm,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Aes256Gcm => "aes-256-gcm",
        }
    }

    pub fn parse(s: &str) -> Result<Algorithm, KmsError> {
        match s {
            "aes-256-gcm" => Ok(Algorithm::Aes256Gcm),
            _ => Err(KmsError::validation("algorithm", "the only algorithm is aes-256-gcm")),
        }
    }
}

/// One version of a customer key. `wrapped` is `None` once the key is destroyed
/// (crypto-shredding: without it no ciphertext of the version can ever be decrypted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyVersion {
    pub version: u32,
    pub wrapped: Option<WrappedKey>,
    pub created_at: OffsetDateTime,
}

/// A customer key with its versions: what the database rows hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub id: Uuid,
    pub project: Uuid,
    pub name: String,
    pub algorithm: Algorithm,
    pub state: KeyState,
    pub primary_version: u32,
    pub min_decryption_version: u32,
    pub rotation_period_days: Option<u32>,
    pub last_rotated_at: OffsetDateTime,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub versions: Vec<KeyVersion>,
}

pub fn validate_pending_days(days: Option<u32>) -> Result<u32, KmsError> {
    let days = days.unwrap_or(DEFAULT_PENDING_DAYS);
    if (MIN_PENDING_DAYS..=MAX_PENDING_DAYS).contains(&days) {
        Ok(days)
    } else {
        Err(KmsError::validation(
            "pending_days",
            format!("pending_days must be between {MIN_PENDING_DAYS} and {MAX_PENDING_DAYS}"),
        ))
    }
}

pub fn validate_rotation_period(days: Option<u32>) -> Result<Option<u32>, KmsError> {
    match days {
        Some(d) if !(MIN_ROTATION_DAYS..=MAX_ROTATION_DAYS).contains(&d) => Err(KmsError::validation(
            "rotation_period_days",
            format!("rotation_period_days must be between {MIN_ROTATION_DAYS} and {MAX_ROTATION_DAYS}"),
        )),
        other => Ok(other),
    }
}

/// What the periodic key reconciler must do with a key now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Maintenance {
    /// The deletion window has passed: destroy (drop all wrapped material).
    Destroy,
    /// The rotation period has passed: add a version.
    Rotate,
}

impl Key {
    /// A new enabled key whose version 1 is `wrapped`.
    pub fn new(
        id: Uuid,
        project: Uuid,
        name: String,
        rotation_period_days: Option<u32>,
        wrapped: WrappedKey,
        now: OffsetDateTime,
    ) -> Result<Key, KmsError> {
        rampart_common::names::validate_name("name", &name)
            .map_err(|_| KmsError::validation("name", "name must match [a-z][a-z0-9-]{0,62}"))?;
        let rotation_period_days = validate_rotation_period(rotation_period_days)?;
        Ok(Key {
            id,
            project,
            name,
            algorithm: Algorithm::Aes256Gcm,
            state: KeyState::Enabled,
            primary_version: 1,
            min_decryption_version: 1,
            rotation_period_days,
            last_rotated_at: now,
            created_at: now,
            updated_at: now,
            versions: vec![KeyVersion {
                version: 1,
                wrapped: Some(wrapped),
                created_at: now,
            }],
        })
    }

    fn refuse_unusable(&self) -> Result<(), KmsError> {
        match self.state {
            KeyState::Enabled => Ok(()),
            KeyState::Disabled => Err(KmsError::KeyDisabled),
            KeyState::PendingDeletion { .. } => Err(KmsError::KeyPendingDeletion),
            KeyState::Destroyed { .. } => Err(KmsError::KeyDestroyed),
        }
    }

    fn version(&self, version: u32) -> Result<&KeyVersion, KmsError> {
        self.versions
            .iter()
            .find(|v| v.version == version)
            .ok_or(KmsError::UnknownKeyVersion { version })
    }

    /// The version new ciphertexts are made with, if the key may encrypt.
    pub fn check_encrypt(&self) -> Result<&KeyVersion, KmsError> {
        self.refuse_unusable()?;
        self.version(self.primary_version)
    }

    /// The version a ciphertext names, if the key may decrypt it.
    pub fn check_decrypt(&self, version: u32) -> Result<&KeyVersion, KmsError> {
        self.refuse_unusable()?;
        if version < self.min_decryption_version {
            return Err(KmsError::VersionBelowMinimum {
                version,
                minimum: self.min_decryption_version,
            });
        }
        self.version(version)
    }

    /// The next version number, if the key may be rotated. Rotating a disabled key is allowed
    /// (an administrator may rotate before re-enabling); a key on its way out is not rotated.
    pub fn check_rotate(&self) -> Result<u32, KmsError> {
        match self.state {
            KeyState::Enabled | KeyState::Disabled => Ok(self.primary_version + 1),
            KeyState::PendingDeletion { .. } => Err(KmsError::KeyPendingDeletion),
            KeyState::Destroyed { .. } => Err(KmsError::KeyDestroyed),
        }
    }

    /// Adds `version` (from [`Key::check_rotate`]) as the primary version.
    pub fn rotate(&mut self, version: u32, wrapped: WrappedKey, now: OffsetDateTime) -> Result<(), KmsError> {
        let expected = self.check_rotate()?;
        if version != expected {
            // Another rotation got there first: the caller reloads and retries.
            return Err(KmsError::InvalidKeyState {
                operation: "rotate",
                state: self.state.name(),
            });
        }
        self.versions.push(KeyVersion {
            version,
            wrapped: Some(wrapped),
            created_at: now,
        });
        self.primary_version = version;
        self.last_rotated_at = now;
        self.updated_at = now;
        Ok(())
    }

    pub fn enable(&mut self, now: OffsetDateTime) -> Result<(), KmsError> {
        match self.state {
            KeyState::Enabled | KeyState::Disabled => {
                self.state = KeyState::Enabled;
                self.updated_at = now;
                Ok(())
            }
            other => Err(KmsError::InvalidKeyState {
                operation: "enable",
                state: other.name(),
            }),
        }
    }

    pub fn disable(&mut self, now: OffsetDateTime) -> Result<(), KmsError> {
        match self.state {
            KeyState::Enabled | KeyState::Disabled => {
                self.state = KeyState::Disabled;
                self.updated_at = now;
                Ok(())
            }
            other => Err(KmsError::InvalidKeyState {
                operation: "disable",
                state: other.name(),
            }),
        }
    }

    /// Schedules destruction after `pending_days` (7–30, default 30). Returns the date.
    pub fn schedule_deletion(
        &mut self,
        pending_days: Option<u32>,
        now: OffsetDateTime,
    ) -> Result<OffsetDateTime, KmsError> {
        let days = validate_pending_days(pending_days)?;
        match self.state {
            KeyState::Enabled | KeyState::Disabled => {
                let delete_at = now + Duration::days(days as i64);
                self.state = KeyState::PendingDeletion { delete_at };
                self.updated_at = now;
                Ok(delete_at)
            }
            other => Err(KmsError::InvalidKeyState {
                operation: "schedule deletion of",
                state: other.name(),
            }),
        }
    }

    pub fn cancel_deletion(&mut self, now: OffsetDateTime) -> Result<(), KmsError> {
        match self.state {
            KeyState::PendingDeletion { .. } => {
                self.state = KeyState::Disabled;
                self.updated_at = now;
                Ok(())
            }
            other => Err(KmsError::InvalidKeyState {
                operation: "cancel deletion of",
                state: other.name(),
            }),
        }
    }

    /// Destroys the key once its window has passed: every version's wrapped material is
    /// dropped, which makes all its ciphertexts undecryptable for good.
    pub fn destroy(&mut self, now: OffsetDateTime) -> Result<(), KmsError> {
        match self.state {
            KeyState::PendingDeletion { delete_at } if now >= delete_at => {
                for v in &mut self.versions {
                    v.wrapped = None;
                }
                self.state = KeyState::Destroyed { destroyed_at: now };
                self.updated_at = now;
                Ok(())
            }
            other => Err(KmsError::InvalidKeyState {
                operation: "destroy",
                state: other.name(),
            }),
        }
    }

    /// Retires versions below `minimum` for decryption (not for destruction: raising it back
    /// is allowed as long as the material still exists).
    pub fn set_min_decryption_version(&mut self, minimum: u32, now: OffsetDateTime) -> Result<(), KmsError> {
        if let KeyState::Destroyed { .. } = self.state {
            return Err(KmsError::KeyDestroyed);
        }
        if minimum == 0 || minimum > self.primary_version {
            return Err(KmsError::validation(
                "min_decryption_version",
                format!(
                    "min_decryption_version must be between 1 and the primary version {}",
                    self.primary_version
                ),
            ));
        }
        self.min_decryption_version = minimum;
        self.updated_at = now;
        Ok(())
    }

    pub fn set_rotation_period(&mut self, days: Option<u32>, now: OffsetDateTime) -> Result<(), KmsError> {
        self.rotation_period_days = validate_rotation_period(days)?;
        self.updated_at = now;
        Ok(())
    }

    /// When automatic rotation is next due, if it applies: enabled keys with a period only
    /// (a disabled key is not used, so rotating it protects nothing; it catches up when
    /// re-enabled because the due date is already past).
    pub fn next_rotation_at(&self) -> Option<OffsetDateTime> {
        match (self.state, self.rotation_period_days) {
            (KeyState::Enabled, Some(days)) => Some(self.last_rotated_at + Duration::days(days as i64)),
            _ => None,
        }
    }

    /// When the reconciler must look at this key again (the earlier of rotation and
    /// destruction), for the indexed `next_action_at` column.
    pub fn next_action_at(&self) -> Option<OffsetDateTime> {
        match self.state {
            KeyState::PendingDeletion { delete_at } => Some(delete_at),
            _ => self.next_rotation_at(),
        }
    }

    /// What the reconciler must do now, if anything.
    pub fn maintenance_due(&self, now: OffsetDateTime) -> Option<Maintenance> {
        match self.state {
            KeyState::PendingDeletion { delete_at } if now >= delete_at => Some(Maintenance::Destroy),
            _ => match self.next_rotation_at() {
                Some(at) if now >= at => Some(Maintenance::Rotate),
                _ => None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn t0() -> OffsetDateTime {
        datetime!(2026-01-01 0:00 UTC)
    }

    fn wrapped(n: u8) -> WrappedKey {
        WrappedKey::new(0x01, &[n; 12], &[n; 56])
    }

    fn key(period: Option<u32>) -> Key {
        Key::new(
            Uuid::from_u128(1),
            Uuid::from_u128(2),
            "disk-key".into(),
            period,
            wrapped(1),
            t0(),
        )
        .unwrap()
    }

    #[test]
    fn spec_13_3_1_new_key_is_enabled_with_version_one() {
        let k = key(None);
        assert_eq!(k.state, KeyState::Enabled);
        assert_eq!(k.check_encrypt().unwrap().version, 1);
        assert!(Key::new(Uuid::nil(), Uuid::nil(), "Bad Name".into(), None, wrapped(1), t0()).is_err());
        assert!(matches!(
            Key::new(Uuid::nil(), Uuid::nil(), "ok".into(), Some(0), wrapped(1), t0()),
            Err(KmsError::Validation {
                field: "rotation_period_days",
                ..
            })
        ));
    }

    #[test]
    fn spec_13_3_1_disabled_key_refuses_use_and_enable_restores_it() {
        let mut k = key(None);
        k.disable(t0()).unwrap();
        assert!(matches!(k.check_encrypt(), Err(KmsError::KeyDisabled)));
        assert!(matches!(k.check_decrypt(1), Err(KmsError::KeyDisabled)));
        k.enable(t0()).unwrap();
        assert!(k.check_encrypt().is_ok());
    }

    #[test]
    fn spec_13_3_1_deletion_window_must_be_7_to_30_days() {
        let mut k = key(None);
        for bad in [0, 6, 31, 365] {
            let e = k.schedule_deletion(Some(bad), t0()).unwrap_err();
            assert_eq!(e.code(), "validation_failed");
            assert_eq!(e.field(), Some("pending_days"));
        }
        assert_eq!(k.state, KeyState::Enabled, "a refused request changes nothing");
        let at = k.schedule_deletion(Some(7), t0()).unwrap();
        assert_eq!(at, t0() + Duration::days(7));
        let mut d = key(None);
        assert_eq!(d.schedule_deletion(None, t0()).unwrap(), t0() + Duration::days(30));
    }

    #[test]
    fn spec_13_3_1_pending_deletion_refuses_use_and_cancel_leaves_it_disabled() {
        let mut k = key(None);
        k.schedule_deletion(Some(10), t0()).unwrap();
        assert!(matches!(k.check_encrypt(), Err(KmsError::KeyPendingDeletion)));
        assert!(matches!(k.check_decrypt(1), Err(KmsError::KeyPendingDeletion)));
        assert!(matches!(k.enable(t0()), Err(KmsError::InvalidKeyState { .. })));
        assert!(matches!(k.check_rotate(), Err(KmsError::KeyPendingDeletion)));
        k.cancel_deletion(t0()).unwrap();
        assert_eq!(k.state, KeyState::Disabled);
        assert!(matches!(k.cancel_deletion(t0()), Err(KmsError::InvalidKeyState { .. })));
    }

    #[test]
    fn spec_13_3_1_destroy_only_after_the_window_and_drops_all_material() {
        let mut k = key(None);
        k.rotate(2, wrapped(2), t0()).unwrap();
        let at = k.schedule_deletion(Some(7), t0()).unwrap();
        assert_eq!(k.maintenance_due(at - Duration::seconds(1)), None);
        assert!(k.destroy(at - Duration::seconds(1)).is_err());
        assert_eq!(k.maintenance_due(at), Some(Maintenance::Destroy));
        k.destroy(at).unwrap();
        assert!(k.versions.iter().all(|v| v.wrapped.is_none()));
        assert!(matches!(k.check_decrypt(1), Err(KmsError::KeyDestroyed)));
        assert!(matches!(k.cancel_deletion(at), Err(KmsError::InvalidKeyState { .. })));
        assert!(matches!(k.enable(at), Err(KmsError::InvalidKeyState { .. })));
        assert_eq!(k.maintenance_due(at + Duration::days(400)), None);
    }

    #[test]
    fn spec_13_3_8_rotation_adds_a_primary_version_and_old_ones_still_decrypt() {
        let mut k = key(None);
        let v = k.check_rotate().unwrap();
        k.rotate(v, wrapped(2), t0() + Duration::days(1)).unwrap();
        assert_eq!(k.primary_version, 2);
        assert_eq!(k.check_encrypt().unwrap().version, 2);
        assert_eq!(k.check_decrypt(1).unwrap().version, 1);
        assert!(matches!(
            k.check_decrypt(3),
            Err(KmsError::UnknownKeyVersion { version: 3 })
        ));
        // A stale rotation (lost race) is refused rather than overwriting version 2.
        assert!(k.rotate(2, wrapped(9), t0()).is_err());
    }

    #[test]
    fn spec_13_3_8_min_decryption_version_retires_old_versions() {
        let mut k = key(None);
        k.rotate(2, wrapped(2), t0()).unwrap();
        k.set_min_decryption_version(2, t0()).unwrap();
        assert!(matches!(
            k.check_decrypt(1),
            Err(KmsError::VersionBelowMinimum { version: 1, minimum: 2 })
        ));
        assert!(k.check_decrypt(2).is_ok());
        assert!(k.set_min_decryption_version(3, t0()).is_err());
        assert!(k.set_min_decryption_version(0, t0()).is_err());
        k.set_min_decryption_version(1, t0()).unwrap();
        assert!(k.check_decrypt(1).is_ok());
    }

    #[test]
    fn spec_13_3_3_rotation_is_due_by_period_for_enabled_keys_only() {
        let mut k = key(Some(90));
        assert_eq!(k.next_rotation_at(), Some(t0() + Duration::days(90)));
        assert_eq!(k.maintenance_due(t0() + Duration::days(89)), None);
        assert_eq!(k.maintenance_due(t0() + Duration::days(90)), Some(Maintenance::Rotate));
        let now = t0() + Duration::days(95);
        k.rotate(2, wrapped(2), now).unwrap();
        assert_eq!(k.next_rotation_at(), Some(now + Duration::days(90)));
        assert_eq!(k.maintenance_due(now + Duration::days(1)), None);
        k.disable(now).unwrap();
        assert_eq!(k.next_rotation_at(), None);
        assert_eq!(k.maintenance_due(now + Duration::days(1000)), None);
        k.enable(now + Duration::days(1000)).unwrap();
        assert_eq!(
            k.maintenance_due(now + Duration::days(1000)),
            Some(Maintenance::Rotate),
            "a re-enabled key catches up at once"
        );
        assert_eq!(key(None).next_rotation_at(), None);
    }

    #[test]
    fn next_action_is_the_deletion_date_while_pending() {
        let mut k = key(Some(1));
        let at = k.schedule_deletion(Some(20), t0()).unwrap();
        assert_eq!(k.next_action_at(), Some(at));
        assert_eq!(
            k.maintenance_due(t0() + Duration::days(5)),
            None,
            "no rotation while pending"
        );
    }

    #[test]
    fn state_names_round_trip() {
        for s in [
            KeyStateName::Enabled,
            KeyStateName::Disabled,
            KeyStateName::PendingDeletion,
            KeyStateName::Destroyed,
        ] {
            assert_eq!(KeyStateName::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert_eq!(KeyStateName::parse("gone"), None);
        assert_eq!(Algorithm::parse("aes-256-gcm").unwrap().as_str(), "aes-256-gcm");
        assert!(Algorithm::parse("des").is_err());
    }
}
