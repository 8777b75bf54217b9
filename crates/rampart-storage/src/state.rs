//! The life of a volume: `creating → available ⇄ in-use`, then `deleting → wiping → deleted`,
//! and `error` (with a code saying what failed) from any working state. The one rule that
//! matters most for 12.3.4: `deleted` is reachable only from `wiping`, and only with a verified
//! wipe report, so a volume never counts as gone while its bits may still be on a disk.

use serde::{Deserialize, Serialize};

/// `status` of a volume, spelled as in API.md: the API's own type, so that the state machine
/// and the answers cannot drift apart.
pub use rampart_api::storage::VolumeState as VolumeStatus;

/// Why a volume is in `error`: stable snake_case codes the API shows beside the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VolumeErrorCode {
    /// Creating failed (the backend refused or crashed); nothing usable was made.
    CreateFailed,
    /// The pool had no room (507 `insufficient_storage` at the time of the request).
    InsufficientStorage,
    /// Extending failed; the volume keeps its old size.
    ExtendFailed,
    /// The wipe could not be verified: the volume's space is NOT released and an operator must
    /// look (the data may still be readable on the disk).
    WipeUnverified,
    /// The backend (pool, Ceph cluster) could not be reached.
    StorageUnavailable,
}

/// What moves a volume from one status to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// The backend finished creating the volume.
    Created,
    Attached,
    /// The last attachment went away.
    Detached,
    /// A user asked for deletion.
    DeleteRequested,
    /// The node started wiping.
    WipeStarted,
    /// The wipe finished and its read-back verification passed.
    WipeVerified,
    /// An operation failed; the code says which.
    Failed(VolumeErrorCode),
    /// An operator retried a failed volume's wipe, or a failed create is cleaned up.
    Retry,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a volume that is {from} cannot take {event:?}")]
pub struct IllegalTransition {
    pub from: VolumeStatus,
    pub event: Event,
}

impl IllegalTransition {
    /// 409 `conflict`: the request is well formed but the volume's state forbids it (deleting an
    /// `in-use` volume, attaching one that is being wiped).
    pub fn to_api(&self) -> rampart_common::Error {
        let hint = match (self.from, self.event) {
            (VolumeStatus::InUse, Event::DeleteRequested) => "; detach it from its instances first",
            (VolumeStatus::InUse, Event::Attached) => "; it is attached already (its type is not multi-attach)",
            _ => "",
        };
        rampart_common::Error::conflict(format!("the volume is {}{hint}", self.from))
    }
}

/// The one transition function. `multi_attach` lets an `in-use` volume take another attachment.
/// A failed wipe goes to `error` with `wipe_unverified` and may only go back to `wiping`: never
/// to `deleted` and never back into service.
pub fn transition(
    from: VolumeStatus,
    event: Event,
    multi_attach: bool,
) -> Result<(VolumeStatus, Option<VolumeErrorCode>), IllegalTransition> {
    use Event as E;
    use VolumeStatus as S;
    let to = match (from, event) {
        (S::Creating, E::Created) => S::Available,
        (S::Available, E::Attached) => S::InUse,
        (S::InUse, E::Attached) if multi_attach => S::InUse,
        (S::InUse, E::Detached) => S::Available,
        (S::Available, E::DeleteRequested) => S::Deleting,
        (S::Deleting, E::WipeStarted) => S::Wiping,
        (S::Wiping, E::WipeVerified) => S::Deleted,
        (S::Creating | S::Available | S::InUse | S::Deleting | S::Wiping, E::Failed(code)) => {
            return Ok((S::Error, Some(code)));
        }
        (S::Error, E::Retry) => S::Deleting,
        (S::Error, E::DeleteRequested) => S::Deleting,
        _ => return Err(IllegalTransition { from, event }),
    };
    Ok((to, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_events() -> Vec<Event> {
        let mut v = vec![
            Event::Created,
            Event::Attached,
            Event::Detached,
            Event::DeleteRequested,
            Event::WipeStarted,
            Event::WipeVerified,
            Event::Retry,
        ];
        v.push(Event::Failed(VolumeErrorCode::CreateFailed));
        v
    }

    /// The whole table, as text, so that a change to the life cycle is a reviewed diff.
    #[test]
    fn transition_table_golden() {
        let mut out = String::new();
        for from in VolumeStatus::ALL {
            for event in all_events() {
                for multi in [false, true] {
                    let r = match transition(from, event, multi) {
                        Ok((to, code)) => format!("{to}{}", code.map(|c| format!(" ({c:?})")).unwrap_or_default()),
                        Err(_) => "-".into(),
                    };
                    out.push_str(&format!("{from} {event:?} multi={multi} -> {r}\n"));
                }
            }
        }
        let golden = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/transitions.txt");
        rampart_common::testing::golden(golden, &out);
    }

    #[test]
    fn spec_12_3_4_3_deleted_only_after_a_verified_wipe() {
        for from in VolumeStatus::ALL {
            for event in all_events() {
                for multi in [false, true] {
                    if let Ok((VolumeStatus::Deleted, _)) = transition(from, event, multi) {
                        assert_eq!((from, event), (VolumeStatus::Wiping, Event::WipeVerified));
                    }
                }
            }
        }
        // A failed wipe is never a way back into service.
        let (s, code) = transition(
            VolumeStatus::Wiping,
            Event::Failed(VolumeErrorCode::WipeUnverified),
            false,
        )
        .unwrap();
        assert_eq!((s, code), (VolumeStatus::Error, Some(VolumeErrorCode::WipeUnverified)));
        assert!(transition(s, Event::Attached, true).is_err());
        assert!(transition(s, Event::Created, true).is_err());
        assert_eq!(transition(s, Event::Retry, false).unwrap().0, VolumeStatus::Deleting);
    }

    #[test]
    fn in_use_refuses_delete_and_a_second_attachment_unless_multi_attach() {
        let e = transition(VolumeStatus::InUse, Event::DeleteRequested, true).unwrap_err();
        let api = e.to_api();
        assert_eq!(api.status(), http::StatusCode::CONFLICT);
        assert!(api.to_string().contains("detach"), "{api}");
        assert!(transition(VolumeStatus::InUse, Event::Attached, false).is_err());
        assert_eq!(
            transition(VolumeStatus::InUse, Event::Attached, true).unwrap().0,
            VolumeStatus::InUse
        );
        assert_eq!(serde_json::to_string(&VolumeStatus::InUse).unwrap(), "\"in-use\"");
    }
}
