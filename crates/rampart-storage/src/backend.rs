//! The storage-backend trait the node agent drives, and what it returns. Operations are
//! blocking (they run `qemu-img` or write gigabytes): async callers use `spawn_blocking`.

use std::path::PathBuf;

use rampart_common::{Error, Sensitive};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::render::OpenSpec;
use crate::wipe::WipeReport;

/// A new volume (or snapshot: same file kind, its own id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpec {
    pub id: Uuid,
    pub size_bytes: u64,
    /// LUKS through QEMU; then a passphrase must be given.
    pub encrypted: bool,
    /// `uid:gid` that owns the file (the VM's confinement uid); root when `None`.
    pub owner: Option<(u32, u32)>,
}

/// A source image for create-from-image. Its format is given, never probed (a probed "raw"
/// file could claim to be qcow2 with a backing file on the host).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageFormat {
    Raw,
    Qcow2,
}

impl ImageFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
        }
    }
}

/// A volume as the backend sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    pub id: Uuid,
    pub size_bytes: u64,
    /// Bytes the volume occupies in the pool.
    pub allocated_bytes: u64,
    pub encrypted: bool,
    pub path: PathBuf,
}

/// `redundancy` of a pool in `GET /v1/storage/pools`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Redundancy {
    /// One copy: a disk failure loses the pool.
    None,
    /// btrfs RAID1 (data and metadata on two devices; 14.1-2).
    BtrfsRaid1 { devices: u32 },
    /// A btrfs pool whose profiles are not all RAID1 (e.g. after a conversion half done).
    BtrfsMixed { data: String, metadata: String },
    /// A Ceph replicated pool keeping `size` copies of each object (14.1-2).
    CephReplicated { size: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolHealth {
    Ok,
    /// Serving, but redundancy is lost or errors were counted (an alarm's input).
    Degraded,
    Unavailable,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStatus {
    pub backend: String,
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub volumes: u64,
    pub redundancy: Redundancy,
    pub health: PoolHealth,
    /// Why the health is not `ok`, for operators (no secret, no tenant data).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// What [`StorageBackend::recover`] found after a crash, and what the agent must do about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Recovery {
    /// A create or snapshot never finished: its temporary file is rolled back (wiped, deleted)
    /// with [`StorageBackend::roll_back`]; the volume goes `error` (`create_failed`).
    RollBackCreate { id: Uuid },
    /// A wipe started and has no verified report: run [`StorageBackend::wipe`] again; the
    /// volume stays `wiping` until it passes.
    ResumeWipe { id: Uuid },
    /// A verified wipe finished; only the release is left. The report is carried so that the
    /// agent can hand it to the controller if it never got there.
    ReleasePending { report: WipeReport },
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("the pool has {free} bytes free and {needed} are needed")]
    InsufficientStorage { needed: u64, free: u64 },
    #[error("volume {0} not found in the pool")]
    NotFound(Uuid),
    #[error("volume {0} exists already")]
    Exists(Uuid),
    #[error("{0}")]
    Invalid(String),
    #[error("the pool is unavailable: {0}")]
    Unavailable(String),
    /// A wipe whose read-back found data: the space is kept and an operator must look.
    #[error("the wipe of {volume} could not be verified: {reason}")]
    WipeUnverified { volume: Uuid, reason: String },
    #[error("{context}")]
    Tool {
        context: String,
        #[source]
        source: crate::proc::ProcError,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl StorageError {
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StorageError {
        let context = context.into();
        move |source| StorageError::Io { context, source }
    }

    /// The public error: 507, 404, 409, 400 and 503 carry their own messages; tool and I/O
    /// failures are internal (their text may hold pool paths) and go to the run log only.
    pub fn to_api(self) -> Error {
        match self {
            StorageError::InsufficientStorage { needed, free } => crate::validate::insufficient_storage(needed, free),
            StorageError::NotFound(_) => Error::not_found("volume not found"),
            StorageError::Exists(_) => Error::conflict("the volume exists already"),
            StorageError::Invalid(m) => Error::validation(m),
            StorageError::Unavailable(_) => crate::validate::storage_unavailable("the storage pool cannot be reached"),
            e @ (StorageError::WipeUnverified { .. } | StorageError::Tool { .. } | StorageError::Io { .. }) => {
                Error::internal("a storage operation", e)
            }
        }
    }
}

/// A place volumes live. Every method is idempotent where that makes sense (a second `release`
/// of a released volume is `Ok`), so the agent may retry after a crash.
pub trait StorageBackend: Send + Sync {
    /// `local`, `ceph`, `fake`: the `backend` field of a volume.
    fn kind(&self) -> &'static str;

    /// An empty volume (reads zeros). `passphrase` is required iff `spec.encrypted`.
    fn create(&self, spec: &VolumeSpec, passphrase: Option<&Sensitive>) -> Result<VolumeInfo, StorageError>;

    /// A volume holding a copy of `image` (its virtual size must fit in `spec.size_bytes`).
    fn create_from_image(
        &self,
        spec: &VolumeSpec,
        image: &std::path::Path,
        format: ImageFormat,
        passphrase: Option<&Sensitive>,
    ) -> Result<VolumeInfo, StorageError>;

    /// A point-in-time copy of a volume that is not attached, under the volume's passphrase
    /// (snapshots inherit the volume's key, as in EBS and Cinder). Its id names a new file.
    fn snapshot(
        &self,
        volume: Uuid,
        snapshot: Uuid,
        passphrase: Option<&Sensitive>,
    ) -> Result<VolumeInfo, StorageError>;

    /// A new volume from a snapshot, under the snapshot's passphrase.
    fn create_from_snapshot(
        &self,
        spec: &VolumeSpec,
        snapshot: Uuid,
        passphrase: Option<&Sensitive>,
    ) -> Result<VolumeInfo, StorageError>;

    /// Grows a volume to `new_size_bytes` (never shrinks).
    fn extend(
        &self,
        volume: Uuid,
        new_size_bytes: u64,
        passphrase: Option<&Sensitive>,
    ) -> Result<VolumeInfo, StorageError>;

    /// Gives the volume file to the VM's uid (11.4), mode 0600.
    fn set_owner(&self, volume: Uuid, uid: u32, gid: u32) -> Result<(), StorageError>;

    /// How QEMU opens it (the `blockdev-add` of [`crate::render::blockdev_add`]).
    fn open(&self, volume: Uuid, read_only: bool) -> Result<OpenSpec, StorageError>;

    fn info(&self, volume: Uuid) -> Result<VolumeInfo, StorageError>;

    /// The verified wipe. From here on the volume cannot be opened or attached. Returns the
    /// report (also kept by the backend until [`StorageBackend::release`]); an unverifiable wipe
    /// is an error and keeps the space.
    fn wipe(&self, volume: Uuid, requested_by: &str) -> Result<WipeReport, StorageError>;

    /// Frees the space of a wiped volume. Refused without a verified wipe report.
    fn release(&self, volume: Uuid) -> Result<(), StorageError>;

    /// Rolls back an unfinished create (see [`Recovery::RollBackCreate`]).
    fn roll_back(&self, id: Uuid) -> Result<(), StorageError>;

    fn pool_status(&self) -> Result<PoolStatus, StorageError>;

    /// Leftovers of operations a crash interrupted.
    fn recover(&self) -> Result<Vec<Recovery>, StorageError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_the_api_codes_and_hide_paths() {
        let e = StorageError::InsufficientStorage {
            needed: 2 << 30,
            free: 1 << 30,
        }
        .to_api();
        assert_eq!((e.status().as_u16(), e.code()), (507, "insufficient_storage"));
        let e = StorageError::Unavailable("/srv/pool not mounted".into()).to_api();
        assert_eq!((e.status().as_u16(), e.code()), (503, "storage_unavailable"));
        assert!(!e.public_message().contains("/srv"));
        let e = StorageError::Io {
            context: "writing /srv/pool/x".into(),
            source: std::io::Error::other("boom"),
        }
        .to_api();
        assert_eq!(e.code(), "internal_error");
        assert!(!e.public_message().contains("/srv"));
        assert_eq!(StorageError::NotFound(Uuid::nil()).to_api().code(), "not_found");
        let r = Recovery::ResumeWipe { id: Uuid::nil() };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"action":"resume_wipe","id":"00000000-0000-0000-0000-000000000000"}"#
        );
        assert_eq!(
            serde_json::to_string(&Redundancy::BtrfsRaid1 { devices: 2 }).unwrap(),
            r#"{"kind":"btrfs_raid1","devices":2}"#
        );
    }
}

/// Pool space held by the creates under way, so two creates racing for the last free bytes
/// cannot both pass the check (a full pool is refused on the request, never mid-write).
#[derive(Debug, Default)]
pub(crate) struct Reservations(std::sync::Mutex<u64>);

/// Space held for one create until it drops.
pub(crate) struct Reservation<'a> {
    held: &'a std::sync::Mutex<u64>,
    bytes: u64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut r = self.held.lock().expect("reservation lock");
        *r = r.saturating_sub(self.bytes);
    }
}

impl Reservations {
    /// Holds `needed` bytes if they fit in `available` (the pool's free space less its reserve)
    /// beside the growth `committed` to existing volumes and the creates under way; 507
    /// `insufficient_storage` otherwise.
    pub(crate) fn take(
        &self,
        needed: u64,
        available: u64,
        committed: u64,
    ) -> Result<Reservation<'_>, crate::StorageError> {
        let mut r = self.0.lock().expect("reservation lock");
        let usable = available.saturating_sub(committed).saturating_sub(*r);
        if needed > usable {
            tracing::warn!(needed, usable, committed, "storage pool full: refused");
            return Err(crate::StorageError::InsufficientStorage { needed, free: usable });
        }
        *r += needed;
        Ok(Reservation {
            held: &self.0,
            bytes: needed,
        })
    }
}
