//! The pure half of the storage service: what the service knows of each volume ([`Have`]),
//! the planner ([`plan`]) and the mappings to the report and to stable error codes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use rampart_api::compute::Failure;
use rampart_api::storage::{
    DesiredPresence, DesiredSnapshot, DesiredVolume, NodeStorage, ObservedVolume, PoolHealthState, PoolReport,
    VolumeReport, VolumeSource, WipeReport,
};
use rampart_storage::{PoolHealth, PoolStatus, Redundancy, StorageError};
use uuid::Uuid;

use super::{RESUMED_BY, RETRY_AFTER, WIPE_RETRY_AFTER};

pub(crate) fn failure(code: &str, message: impl Into<String>) -> Failure {
    Failure {
        code: code.into(),
        message: message.into(),
    }
}

/// What the service knows of one volume or snapshot.
#[derive(Debug, Clone, PartialEq)]
pub enum Have {
    /// Not in the pool (probed).
    Absent,
    Creating {
        progress: Option<u8>,
    },
    Ready {
        size_bytes: u64,
        allocated_bytes: u64,
    },
    /// Out of service, being wiped (or a wipe to resume after a restart).
    Wiping,
    /// Wiped and released. `report` is `None` only when the pool never held it (a create that
    /// failed): there was nothing to wipe.
    Wiped {
        report: Option<WipeReport>,
    },
    Error {
        failure: Failure,
        /// When to look again; `None`: stay until the controller changes its mind (delete).
        retry_at: Option<Instant>,
    },
    /// In service at its old size: the last extend failed. Reported `ready` with the error
    /// (the volume stays usable; the controller sees the size it has); tried again later.
    NotExtended {
        size_bytes: u64,
        allocated_bytes: u64,
        failure: Failure,
        retry_at: Instant,
    },
}

impl Have {
    /// Usable: may be opened, snapshotted, attached.
    pub fn in_service(&self) -> bool {
        matches!(self, Have::Ready { .. } | Have::NotExtended { .. })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Slot {
    pub have: Have,
    /// An action of this volume is running.
    pub busy: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Volume,
    Snapshot,
}

/// One step of convergence.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Not known yet: ask the backend whether it exists.
    Probe {
        kind: Kind,
        id: Uuid,
    },
    Create(DesiredVolume),
    Extend {
        id: Uuid,
        size_bytes: u64,
        encrypted: bool,
    },
    Snapshot {
        snapshot: DesiredSnapshot,
        encrypted: bool,
    },
    Wipe {
        kind: Kind,
        id: Uuid,
        requested_by: String,
    },
    /// Left the document: drop the record (never the data: nothing is deleted without a wipe).
    Forget {
        kind: Kind,
        id: Uuid,
    },
}

/// The pure planner. Busy volumes are left alone; a volume from a snapshot waits for its
/// snapshot, a snapshot for its volume.
pub fn plan(
    desired: &NodeStorage,
    vols: &BTreeMap<Uuid, Slot>,
    snaps: &BTreeMap<Uuid, Slot>,
    now: Instant,
) -> Vec<Action> {
    let mut out = Vec::new();
    let due = |s: &Slot| match &s.have {
        Have::Error { retry_at: Some(t), .. } | Have::NotExtended { retry_at: t, .. } => *t <= now,
        _ => false,
    };
    for v in &desired.volumes {
        let Some(slot) = vols.get(&v.id) else {
            out.push(Action::Probe {
                kind: Kind::Volume,
                id: v.id,
            });
            continue;
        };
        if slot.busy {
            continue;
        }
        match (v.presence, &slot.have) {
            (_, _) if due(slot) => out.push(Action::Probe {
                kind: Kind::Volume,
                id: v.id,
            }),
            (DesiredPresence::Present, Have::Absent) => {
                let waits = match &v.source {
                    Some(VolumeSource::Snapshot { snapshot_id }) => {
                        // A snapshot this node is still to make: wait for it (or its failure).
                        let settled = snaps.get(snapshot_id).is_some_and(|s| {
                            !s.busy
                                && (s.have.in_service() || matches!(s.have, Have::Error { .. } | Have::Wiped { .. }))
                        });
                        !settled && desired.snapshots.iter().any(|d| d.id == *snapshot_id)
                    }
                    _ => false,
                };
                if !waits {
                    out.push(Action::Create(v.clone()));
                }
            }
            (DesiredPresence::Present, Have::Ready { size_bytes, .. }) if v.size_bytes > *size_bytes => {
                out.push(Action::Extend {
                    id: v.id,
                    size_bytes: v.size_bytes,
                    encrypted: v.encrypted,
                })
            }
            (DesiredPresence::Present, _) => {}
            (DesiredPresence::Wiped, Have::Wiped { .. }) => {}
            // A wipe that did not verify waits for its retry time.
            (DesiredPresence::Wiped, Have::Error { retry_at: Some(_), .. }) => {}
            (DesiredPresence::Wiped, _) => out.push(Action::Wipe {
                kind: Kind::Volume,
                id: v.id,
                requested_by: v.requested_by.clone().unwrap_or_else(|| "unknown".into()),
            }),
        }
    }
    for s in &desired.snapshots {
        let Some(slot) = snaps.get(&s.id) else {
            out.push(Action::Probe {
                kind: Kind::Snapshot,
                id: s.id,
            });
            continue;
        };
        if slot.busy {
            continue;
        }
        match (s.presence, &slot.have) {
            (_, _) if due(slot) => out.push(Action::Probe {
                kind: Kind::Snapshot,
                id: s.id,
            }),
            (DesiredPresence::Present, Have::Absent) => {
                let parent = vols.get(&s.volume_id);
                if parent.is_some_and(|p| !p.busy && p.have.in_service()) {
                    let encrypted = desired
                        .volumes
                        .iter()
                        .find(|v| v.id == s.volume_id)
                        .is_none_or(|v| v.encrypted);
                    out.push(Action::Snapshot {
                        snapshot: s.clone(),
                        encrypted,
                    });
                }
            }
            (DesiredPresence::Present, _) => {}
            (DesiredPresence::Wiped, Have::Wiped { .. }) => {}
            (DesiredPresence::Wiped, Have::Error { retry_at: Some(_), .. }) => {}
            (DesiredPresence::Wiped, _) => out.push(Action::Wipe {
                kind: Kind::Snapshot,
                id: s.id,
                requested_by: s.requested_by.clone().unwrap_or_else(|| "unknown".into()),
            }),
        }
    }
    let wanted_v: BTreeSet<Uuid> = desired.volumes.iter().map(|v| v.id).collect();
    let wanted_s: BTreeSet<Uuid> = desired.snapshots.iter().map(|s| s.id).collect();
    for (kind, map, wanted) in [(Kind::Volume, vols, &wanted_v), (Kind::Snapshot, snaps, &wanted_s)] {
        for (id, slot) in map {
            // A wipe to resume is finished whatever the document says.
            if !wanted.contains(id) && !slot.busy && slot.have != Have::Wiping {
                out.push(Action::Forget { kind, id: *id });
            }
        }
    }
    // Wipes resumed after a restart, for volumes the document does not name (yet).
    for (kind, map, wanted) in [(Kind::Volume, vols, &wanted_v), (Kind::Snapshot, snaps, &wanted_s)] {
        for (id, slot) in map {
            if !wanted.contains(id) && !slot.busy && slot.have == Have::Wiping {
                out.push(Action::Wipe {
                    kind,
                    id: *id,
                    requested_by: RESUMED_BY.into(),
                });
            }
        }
    }
    out
}

/// The stable code of a backend failure during `op` (`create_failed`, `extend_failed`, …).
pub fn code_of(e: &StorageError, op: &str) -> &'static str {
    match e {
        StorageError::InsufficientStorage { .. } => "insufficient_storage",
        StorageError::Unavailable(_) => "storage_unavailable",
        StorageError::WipeUnverified { .. } => "wipe_unverified",
        _ => match op {
            "extend" => "extend_failed",
            "wipe" => "wipe_failed",
            _ => "create_failed",
        },
    }
}

/// The message that goes to the controller: the backend's own words for the errors whose text
/// is meant for users; tool and I/O failures may name pool paths, so they stay in the log.
pub(crate) fn public_message(e: &StorageError, op: &str) -> String {
    match e {
        StorageError::InsufficientStorage { .. } | StorageError::Invalid(_) | StorageError::NotFound(_) => {
            format!("{op}: {e}")
        }
        StorageError::Unavailable(_) => format!("{op}: the storage pool cannot be reached"),
        StorageError::WipeUnverified { .. } => {
            format!("{op}: the wipe could not be verified; the space is kept for an operator")
        }
        StorageError::Exists(_) => format!("{op}: the volume exists already"),
        StorageError::Tool { .. } | StorageError::Io { .. } => {
            format!("{op}: the storage backend failed (see the node log)")
        }
    }
}

pub(crate) fn retry_for(code: &str, now: Instant) -> Option<Instant> {
    match code {
        "storage_unavailable" | "key_unavailable" | "image_unavailable" | "extend_failed" | "wipe_failed" => {
            Some(now + RETRY_AFTER)
        }
        "wipe_unverified" => Some(now + WIPE_RETRY_AFTER),
        _ => None,
    }
}

/// A pool as the controller's `GET /v1/storage/pools` shows it.
pub fn pool_report(name: &str, s: &PoolStatus) -> PoolReport {
    let (redundancy, copies) = match &s.redundancy {
        Redundancy::None => ("none", 1),
        Redundancy::BtrfsRaid1 { .. } => ("btrfs_raid1", 2),
        Redundancy::BtrfsMixed { .. } => ("btrfs_mixed", 1),
        Redundancy::CephReplicated { size } => ("ceph_replicated", *size),
    };
    PoolReport {
        name: name.into(),
        backend: s.backend.clone(),
        total_bytes: s.total_bytes,
        free_bytes: s.free_bytes,
        volumes: s.volumes,
        redundancy: redundancy.into(),
        copies,
        health: match s.health {
            PoolHealth::Ok => PoolHealthState::Ok,
            PoolHealth::Degraded => PoolHealthState::Degraded,
            PoolHealth::Unavailable => PoolHealthState::Unavailable,
        },
        problems: s.problems.clone(),
    }
}

pub(crate) fn report_of(id: Uuid, slot: &Slot) -> VolumeReport {
    let mut r = VolumeReport {
        id,
        state: ObservedVolume::Creating,
        size_bytes: 0,
        allocated_bytes: 0,
        progress: None,
        error: None,
        wipe_report: None,
    };
    match &slot.have {
        // Known to be missing and about to be made (the next pass creates it).
        Have::Absent => {}
        Have::Creating { progress } => r.progress = *progress,
        Have::Ready {
            size_bytes,
            allocated_bytes,
        } => {
            r.state = ObservedVolume::Ready;
            r.size_bytes = *size_bytes;
            r.allocated_bytes = *allocated_bytes;
        }
        Have::Wiping => r.state = ObservedVolume::Wiping,
        Have::Wiped { report } => {
            r.state = ObservedVolume::Wiped;
            r.wipe_report = report.clone();
        }
        Have::Error { failure, .. } => {
            r.state = ObservedVolume::Error;
            r.error = Some(failure.clone());
        }
        Have::NotExtended {
            size_bytes,
            allocated_bytes,
            failure,
            ..
        } => {
            r.state = ObservedVolume::Ready;
            r.size_bytes = *size_bytes;
            r.allocated_bytes = *allocated_bytes;
            r.error = Some(failure.clone());
        }
    }
    r
}
