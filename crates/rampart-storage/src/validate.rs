//! Checks of a volume request and the refusals the API gives, each with its status and code:
//!
//! | refusal | status | code |
//! |---|---|---|
//! | size 0, over the per-volume maximum, a bad name | 400 | `validation_failed` |
//! | one volume larger than the project's whole GiB quota (it can never fit) | 413 | `quota_exceeded` |
//! | over the remaining GiB quota, or the volume count quota | 409 | `quota_exceeded` |
//! | an unencrypted volume type the project policy does not allow | 422 | `policy_violation` |
//! | the pool has no room | 507 | `insufficient_storage` |
//! | the backend cannot be reached | 503 | `storage_unavailable` |

use http::StatusCode;
use rampart_common::Error;
use serde::{Deserialize, Serialize};

/// Largest volume the API accepts, whatever the quota (64 TiB, the qcow2 practical limit is far
/// above; this is a sanity bound that keeps size arithmetic in bytes far from overflow).
pub const MAX_SIZE_GIB: u64 = 65_536;

pub const GIB: u64 = 1 << 30;

/// `size_gib` of a create or extend: 1..=`max_gib`.
pub fn validate_size(size_gib: u64, max_gib: u64) -> Result<u64, Error> {
    let max = max_gib.min(MAX_SIZE_GIB);
    if size_gib == 0 || size_gib > max {
        return Err(Error::field(
            "size_gib",
            format!("size_gib must be between 1 and {max} (GiB)"),
        ));
    }
    Ok(size_gib * GIB)
}

/// Extending only grows: shrinking a volume would cut off what the guest wrote.
pub fn validate_extend(current_gib: u64, new_gib: u64, max_gib: u64) -> Result<u64, Error> {
    validate_size(new_gib, max_gib)?;
    if new_gib <= current_gib {
        return Err(Error::field(
            "size_gib",
            format!("a volume only grows: size_gib must be more than its current {current_gib}"),
        ));
    }
    Ok(new_gib * GIB)
}

pub fn validate_volume_name(name: &str) -> Result<(), Error> {
    rampart_common::names::validate_name("name", name)
}

/// A project's volume quotas (`[quotas]` defaults in the controller's configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VolumeQuota {
    pub volumes: u32,
    pub gib: u64,
    pub snapshots: u32,
}

impl Default for VolumeQuota {
    fn default() -> Self {
        VolumeQuota {
            volumes: 20,
            gib: 1_000,
            snapshots: 50,
        }
    }
}

/// What a project holds now (volumes in every status but `deleted`: a volume being wiped still
/// occupies its space).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VolumeUsage {
    pub volumes: u64,
    pub gib: u64,
    pub snapshots: u64,
}

fn quota_error(status: StatusCode, message: String) -> Error {
    Error::coded(status, "quota_exceeded", message)
}

/// Whether a new volume of `size_gib` fits the project's quota.
pub fn check_create_quota(q: &VolumeQuota, used: &VolumeUsage, size_gib: u64) -> Result<(), Error> {
    if size_gib > q.gib {
        return Err(quota_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "a volume of {size_gib} GiB is larger than the project's whole volume quota of {} GiB; ask a system admin to raise it",
                q.gib
            ),
        ));
    }
    if used.volumes.saturating_add(1) > u64::from(q.volumes) {
        return Err(quota_error(
            StatusCode::CONFLICT,
            format!(
                "the project's quota of {} volumes is used up ({} in use, including volumes being wiped); delete some or ask a system admin to raise it",
                q.volumes, used.volumes
            ),
        ));
    }
    check_gib(q, used, size_gib)
}

/// Whether growing a volume by `more_gib` fits.
pub fn check_extend_quota(q: &VolumeQuota, used: &VolumeUsage, more_gib: u64) -> Result<(), Error> {
    check_gib(q, used, more_gib)
}

pub fn check_snapshot_quota(q: &VolumeQuota, used: &VolumeUsage) -> Result<(), Error> {
    if used.snapshots.saturating_add(1) > u64::from(q.snapshots) {
        return Err(quota_error(
            StatusCode::CONFLICT,
            format!(
                "the project's quota of {} snapshots is used up; delete some or ask a system admin to raise it",
                q.snapshots
            ),
        ));
    }
    Ok(())
}

fn check_gib(q: &VolumeQuota, used: &VolumeUsage, adding: u64) -> Result<(), Error> {
    if used.gib.saturating_add(adding) > q.gib {
        return Err(quota_error(
            StatusCode::CONFLICT,
            format!(
                "the project's volume quota of {} GiB would be exceeded ({} GiB in use, {adding} GiB asked); delete volumes or ask a system admin to raise it",
                q.gib, used.gib
            ),
        ));
    }
    Ok(())
}

/// 12.3.2-2: encryption is the default; an unencrypted type needs the project's explicit leave.
pub fn check_encryption_policy(type_encrypted: bool, project_allows_unencrypted: bool) -> Result<(), Error> {
    if type_encrypted || project_allows_unencrypted {
        return Ok(());
    }
    Err(Error::PolicyViolation {
        message: "this volume type is not encrypted and the project's policy requires encrypted volumes (spec 12.3.2-2); choose an encrypted type".into(),
        details: Some(serde_json::json!({ "field": "volume_type", "clause": "12.3.2-2" })),
    })
}

/// 507: the pool cannot hold the volume. The message names sizes, never paths.
pub fn insufficient_storage(needed: u64, free: u64) -> Error {
    Error::coded(
        StatusCode::INSUFFICIENT_STORAGE,
        "insufficient_storage",
        format!(
            "the storage pool has {} MiB free and this volume needs {} MiB; nothing was created",
            free >> 20,
            needed.div_ceil(1 << 20)
        ),
    )
}

/// 503: the backend cannot be reached (Ceph monitors down, pool directory unmounted).
pub fn storage_unavailable(what: &str) -> Error {
    Error::coded(
        StatusCode::SERVICE_UNAVAILABLE,
        "storage_unavailable",
        format!("the storage backend is unavailable ({what}); retry later"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_one_to_max_gib() {
        assert_eq!(validate_size(1, 100).unwrap(), GIB);
        for bad in [0, 101] {
            let e = validate_size(bad, 100).unwrap_err();
            assert_eq!((e.status(), e.code()), (StatusCode::BAD_REQUEST, "validation_failed"));
            assert_eq!(e.details().unwrap()["field"], "size_gib");
        }
        assert!(
            validate_size(MAX_SIZE_GIB + 1, u64::MAX).is_err(),
            "the hard bound holds"
        );
        assert!(validate_extend(10, 10, 100).is_err(), "no same size");
        assert!(validate_extend(10, 9, 100).is_err(), "no shrink");
        assert_eq!(validate_extend(10, 11, 100).unwrap(), 11 * GIB);
        assert!(validate_volume_name("data-1").is_ok());
        assert!(validate_volume_name("Data").is_err());
    }

    #[test]
    fn quotas_refuse_with_413_when_it_can_never_fit_and_409_when_full() {
        let q = VolumeQuota {
            volumes: 2,
            gib: 100,
            snapshots: 1,
        };
        let none = VolumeUsage::default();
        assert!(check_create_quota(&q, &none, 100).is_ok());
        let e = check_create_quota(&q, &none, 101).unwrap_err();
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::PAYLOAD_TOO_LARGE, "quota_exceeded")
        );
        let half = VolumeUsage {
            volumes: 1,
            gib: 60,
            snapshots: 1,
        };
        let e = check_create_quota(&q, &half, 41).unwrap_err();
        assert_eq!((e.status(), e.code()), (StatusCode::CONFLICT, "quota_exceeded"));
        assert!(e.to_string().contains("60 GiB in use"), "{e}");
        assert!(check_create_quota(&q, &half, 40).is_ok());
        let full = VolumeUsage { volumes: 2, ..half };
        let e = check_create_quota(&q, &full, 1).unwrap_err();
        assert!(e.to_string().contains("quota of 2 volumes"), "{e}");
        assert!(check_extend_quota(&q, &half, 41).is_err());
        assert!(check_extend_quota(&q, &half, 40).is_ok());
        assert_eq!(check_snapshot_quota(&q, &half).unwrap_err().code(), "quota_exceeded");
    }

    #[test]
    fn spec_12_3_2_2_unencrypted_types_need_the_projects_leave() {
        let e = check_encryption_policy(false, false).unwrap_err();
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::UNPROCESSABLE_ENTITY, "policy_violation")
        );
        assert!(check_encryption_policy(false, true).is_ok());
        assert!(check_encryption_policy(true, false).is_ok());
    }

    #[test]
    fn pool_full_and_unreachable_have_their_codes() {
        let e = insufficient_storage(3 << 30, 1 << 30);
        assert_eq!((e.status().as_u16(), e.code()), (507, "insufficient_storage"));
        assert!(e.to_string().contains("1024 MiB free"), "{e}");
        let e = storage_unavailable("pool not mounted");
        assert_eq!((e.status().as_u16(), e.code()), (503, "storage_unavailable"));
    }
}
