//! Volumes (the volumes issue): the public API shapes (`/v1/projects/{p}/volumes`, snapshots,
//! per-volume access, volume types, storage pools, wipe reports) and the storage sections of
//! the controller ↔ agent protocol.
//!
//! The node protocol is declarative like the rest of it: the controller publishes in each node's
//! document the volumes that must exist there ([`NodeStorage`]) and, on each instance, the
//! volumes attached to it ([`DesiredAttachment`]); the agent converges and reports what it
//! observes ([`StorageStatus`]). A volume's passphrase is never in a document: the agent asks
//! for it over mTLS (`POST /agent/v1/volumes/{id}/passphrase` → [`VolumePassphrase`]) when it
//! must open the volume, and the controller answers only the node the volume is placed on.

use rampart_common::Sensitive;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::compute::Failure;

// ---- public API ----

/// `POST /v1/projects/{p}/volumes`. At most one of `image` and `snapshot` (name or id).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeCreate {
    pub name: String,
    pub size_gib: u64,
    /// An `active`, verified image of the project (or public): the volume starts as its copy.
    #[serde(default)]
    pub image: Option<String>,
    /// A snapshot of a volume of the same project.
    #[serde(default)]
    pub snapshot: Option<String>,
    /// Default: `default` (encrypted, no limits).
    #[serde(default)]
    pub volume_type: Option<String>,
    /// A key of the project (name or id) to wrap the volume's passphrase, for which the caller
    /// needs `key-user`. Default: the project's service-managed key `volumes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key: Option<String>,
}

/// `GET/PUT /v1/projects/{p}/volume-settings`: the project's leave for unencrypted volume
/// types (12.3.2-2; refused by default).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VolumeSettings {
    pub allow_unencrypted: bool,
}

/// `status` of a volume, spelled as in API.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum VolumeState {
    Creating,
    Available,
    InUse,
    Deleting,
    Wiping,
    Deleted,
    Error,
}

impl VolumeState {
    pub const ALL: [VolumeState; 7] = [
        VolumeState::Creating,
        VolumeState::Available,
        VolumeState::InUse,
        VolumeState::Deleting,
        VolumeState::Wiping,
        VolumeState::Deleted,
        VolumeState::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            VolumeState::Creating => "creating",
            VolumeState::Available => "available",
            VolumeState::InUse => "in-use",
            VolumeState::Deleting => "deleting",
            VolumeState::Wiping => "wiping",
            VolumeState::Deleted => "deleted",
            VolumeState::Error => "error",
        }
    }

    /// Whether the volume still holds (or may hold) tenant data on a disk.
    pub fn holds_data(self) -> bool {
        self != VolumeState::Deleted
    }
}

impl std::fmt::Display for VolumeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct VolumeAttachment {
    pub instance: Uuid,
    pub read_only: bool,
    /// The guest-visible serial of the disk (`/dev/disk/by-id/virtio-<serial>`).
    pub serial: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Volume {
    pub id: Uuid,
    pub project_id: Uuid,
    pub name: String,
    pub size_gib: u64,
    pub status: VolumeState,
    /// Why the volume is in `error` (stable code, message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Failure>,
    pub encrypted: bool,
    /// `local` or `ceph`.
    pub backend: String,
    pub volume_type: String,
    /// The node holding a `local` volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Uuid>,
    pub attachments: Vec<VolumeAttachment>,
    /// Percent done of a long create (from an image) or wipe, as the node last reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_image: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_snapshot: Option<Uuid>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
}

/// `POST /v1/projects/{p}/volumes/{id}/extend`: grow only.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeExtend {
    pub size_gib: u64,
}

/// `POST /v1/projects/{p}/instances/{id}/volumes`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeAttach {
    /// Name or id of a volume of the same project.
    pub volume: String,
    #[serde(default)]
    pub read_only: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreate {
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SnapshotState {
    Creating,
    Available,
    Deleting,
    Wiping,
    Deleted,
    Error,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Snapshot {
    pub id: Uuid,
    pub volume: Uuid,
    pub name: String,
    pub size_gib: u64,
    pub status: SnapshotState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Failure>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
}

/// What a per-volume grant allows (12.3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VolumeAction {
    /// Read the volume's metadata (show, list entry, wipe report).
    Read,
    Attach,
    Detach,
    Snapshot,
    Extend,
    Delete,
}

/// One grant of `PUT /v1/projects/{p}/volumes/{id}/access`: exactly one of `user`, `group`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VolumeGrant {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub actions: Vec<VolumeAction>,
}

/// The per-volume access list. Empty: the project's roles decide alone. Not empty: a caller
/// needs both its project role's right and a grant naming it (or one of its groups) for the
/// action; project and system administrators keep every right.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VolumeAccess {
    pub grants: Vec<VolumeGrant>,
}

/// A storage pool of `GET /v1/storage/pools`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct StoragePool {
    pub node: Uuid,
    pub node_name: String,
    #[serde(flatten)]
    pub status: PoolReport,
}

// ---- volume types (`/v1/volume-types`) ----

/// QoS of a volume type. `None` is "no limit". Bursts are QEMU's `*-max` over one second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Qos {
    pub iops_total: Option<u64>,
    pub iops_read: Option<u64>,
    pub iops_write: Option<u64>,
    pub bps_total: Option<u64>,
    pub bps_read: Option<u64>,
    pub bps_write: Option<u64>,
    pub iops_total_max: Option<u64>,
    pub bps_total_max: Option<u64>,
}

impl Qos {
    pub fn is_unlimited(&self) -> bool {
        *self == Qos::default()
    }

    /// QEMU refuses a total limit beside a read or write one of the same kind, and a burst
    /// without its base rate; say so before the VM does.
    pub fn validate(&self) -> Result<(), rampart_common::Error> {
        let both = |t: Option<u64>, r: Option<u64>, w: Option<u64>| t.is_some() && (r.is_some() || w.is_some());
        if both(self.iops_total, self.iops_read, self.iops_write) || both(self.bps_total, self.bps_read, self.bps_write)
        {
            return Err(rampart_common::Error::field(
                "qos",
                "a total limit cannot be combined with a read or write limit of the same kind",
            ));
        }
        let zero = [
            self.iops_total,
            self.iops_read,
            self.iops_write,
            self.bps_total,
            self.bps_read,
            self.bps_write,
            self.iops_total_max,
            self.bps_total_max,
        ]
        .contains(&Some(0));
        if zero {
            return Err(rampart_common::Error::field(
                "qos",
                "a limit is at least 1 (leave it out for none)",
            ));
        }
        let burst_ok = |base: Option<u64>, max: Option<u64>| match (base, max) {
            (_, None) => true,
            (Some(b), Some(m)) => m >= b,
            (None, Some(_)) => false,
        };
        if !burst_ok(self.iops_total, self.iops_total_max) || !burst_ok(self.bps_total, self.bps_total_max) {
            return Err(rampart_common::Error::field(
                "qos",
                "a burst (`*_max`) needs its total limit and must not be below it",
            ));
        }
        Ok(())
    }
}

/// A volume type (`/v1/volume-types`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeType {
    pub name: String,
    /// LUKS through QEMU (12.3.2-2). `false` only where the project policy allows it.
    #[serde(default = "yes")]
    pub encrypted: bool,
    #[serde(default)]
    pub multi_attach: bool,
    #[serde(default)]
    pub qos: Qos,
}

fn yes() -> bool {
    true
}

impl VolumeType {
    /// The built-in default: encrypted, no limits.
    pub fn default_type() -> VolumeType {
        VolumeType {
            name: "default".into(),
            encrypted: true,
            multi_attach: false,
            qos: Qos::default(),
        }
    }
}

// ---- wipe reports (`GET /v1/projects/{p}/volumes/{id}/wipe-report`) ----

/// `method` of a wipe report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WipeMethod {
    /// LUKS header and keyslots overwritten and read back, then the data area zeroed and
    /// verified by sampled reads.
    CryptoEraseAndZero,
    /// Every byte zeroed and read back (unencrypted volumes).
    ZeroFullVerify,
    /// Ceph: LUKS header and keyslots overwritten and read back from the OSDs, then every
    /// RADOS object of the image removed (shrunk to nothing) and checked gone.
    CryptoEraseAndDiscard,
}

/// The wipe report of API.md: `{"volume","method","verified","bytes","started_at","finished_at",
/// "requested_by"}`. `bytes` counts the bytes overwritten (the allocated extents of the volume
/// file); holes were never written and read as zeros by construction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WipeReport {
    pub volume: Uuid,
    pub method: WipeMethod,
    pub verified: bool,
    pub bytes: u64,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub finished_at: OffsetDateTime,
    pub requested_by: String,
}

// ---- agent protocol: the storage section of a node's desired state ----

/// The volumes and snapshots a node must hold. Left out of the document when there is none.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NodeStorage {
    #[serde(default)]
    pub volumes: Vec<DesiredVolume>,
    #[serde(default)]
    pub snapshots: Vec<DesiredSnapshot>,
}

impl NodeStorage {
    pub fn is_empty(&self) -> bool {
        self.volumes.is_empty() && self.snapshots.is_empty()
    }
}

/// Where a new volume's first bytes come from.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum VolumeSource {
    /// A copy of an image the node fetches (`/agent/v1/images/{id}/data`) and verifies against
    /// `sha256` before copying; `format` is `raw` or `qcow2`, never probed.
    Image {
        image_id: Uuid,
        sha256: String,
        size: u64,
        format: String,
    },
    /// A copy of a snapshot held by the same node, under the snapshot's passphrase.
    Snapshot { snapshot_id: Uuid },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DesiredPresence {
    /// Must exist with `size_bytes` (grown when it grows).
    Present,
    /// Must be wiped (verified), then its space released.
    Wiped,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DesiredVolume {
    pub id: Uuid,
    pub project_id: Uuid,
    pub size_bytes: u64,
    /// LUKS through QEMU; the passphrase is fetched from the controller.
    pub encrypted: bool,
    pub presence: DesiredPresence,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<VolumeSource>,
    /// Who asked for the deletion (the wipe report's `requested_by`), when `wiped`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DesiredSnapshot {
    pub id: Uuid,
    pub volume_id: Uuid,
    pub project_id: Uuid,
    pub presence: DesiredPresence,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
}

/// A volume attached to an instance (on [`crate::compute::DesiredInstance`]): hot-plugged
/// into the running VM over QMP (`blockdev-add` + `device_add`), plugged before the guest
/// starts at boot, unplugged when it leaves this list.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DesiredAttachment {
    pub volume_id: Uuid,
    pub read_only: bool,
    pub encrypted: bool,
    #[serde(default)]
    pub qos: Qos,
}

/// The answer to `POST /agent/v1/volumes/{id}/passphrase`: the volume's data key, unwrapped by
/// the project's KMS key, for the node holding the volume only.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumePassphrase {
    pub passphrase: Sensitive,
}

// ---- agent protocol: what the node reports ----

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StorageStatus {
    /// The node's pools (today one `local` pool).
    #[serde(default)]
    pub pools: Vec<PoolReport>,
    #[serde(default)]
    pub volumes: Vec<VolumeReport>,
    #[serde(default)]
    pub snapshots: Vec<VolumeReport>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ObservedVolume {
    Creating,
    Ready,
    Wiping,
    /// Wiped, verified, space released: `wipe_report` carries the proof (sent until the
    /// controller drops the volume from the document).
    Wiped,
    Error,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VolumeReport {
    pub id: Uuid,
    pub state: ObservedVolume,
    #[serde(default)]
    pub size_bytes: u64,
    #[serde(default)]
    pub allocated_bytes: u64,
    /// Percent done of a long create (from image) or wipe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Failure>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wipe_report: Option<WipeReport>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PoolHealthState {
    Ok,
    Degraded,
    Unavailable,
}

/// One pool as its node sees it (14.1-2: redundancy and health are shown, degraded raises an
/// alarm).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PoolReport {
    pub name: String,
    pub backend: String,
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub volumes: u64,
    /// `none`, `btrfs_raid1`, `btrfs_mixed`, `ceph_replicated`.
    pub redundancy: String,
    /// Copies of each block (1 without redundancy).
    pub copies: u32,
    pub health: PoolHealthState,
    #[serde(default)]
    pub problems: Vec<String>,
}
