//! Volumes (issue 15): the pure domain (life cycle, validation, quotas, QoS and the QMP commands
//! that attach a volume, the verified-wipe plan and its report) and the node-side engine (the
//! [`backend::StorageBackend`] trait, the `local` qcow2+LUKS pool, btrfs RAID1 health and scrub,
//! and a fake for callers' tests). The controller API and the agent's wiring live elsewhere.
//!
//! Encryption at rest is QEMU's own LUKS driver: this platform has no device-mapper (see
//! `docs/storage.md`). A volume passphrase only ever travels as a [`rampart_common::Sensitive`]:
//! into a pipe for `qemu-img`, or base64 inside a QMP `object-add` for a running QEMU.

pub mod backend;
pub mod btrfs;
pub mod ceph;
pub mod ceph_conf;
pub mod fake;
pub mod local;
pub mod proc;
pub mod render;
pub mod state;
pub mod validate;
pub mod wipe;

pub use backend::{
    ImageFormat, PoolHealth, PoolStatus, Recovery, Redundancy, StorageBackend, StorageError, VolumeInfo, VolumeSpec,
};
pub use ceph::{CephBackend, CephConfig};
pub use ceph_conf::CephSettings;
pub use fake::FakeBackend;
pub use local::{LocalBackend, LocalConfig};
pub use render::{NodeNames, OpenSpec, QmpCommand, Qos, VolumeType};
pub use state::{Event, VolumeErrorCode, VolumeStatus, transition};
pub use wipe::{WipeMethod, WipeReport};
