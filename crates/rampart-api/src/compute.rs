//! Compute API bodies (`/v1/signing-keys`, `/v1/flavors`, `/v1/projects/{p}/images`,
//! `/v1/projects/{p}/instances`, `/v1/projects/{p}/alarms`, `/v1/projects/{p}/compute-settings`)
//! and the compute sections of the agent protocol (desired state and status).

use std::collections::BTreeMap;

use rampart_common::Sensitive;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

/// The error code every image integrity failure carries (upload and boot).
pub const IMAGE_SIGNATURE_INVALID: &str = "image_signature_invalid";

// ---- signing keys ----

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SigningKeyCreate {
    pub name: String,
    /// Ed25519 public key: SPKI PEM (`-----BEGIN PUBLIC KEY-----`) or `ed25519:<base64>`.
    pub public_key: String,
    /// Trust the key in this project only (project admins); absent: every project
    /// (system admins).
    #[serde(default)]
    pub project: Option<Uuid>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SigningKey {
    pub id: Uuid,
    pub name: String,
    /// None: trusted in every project.
    pub project_id: Option<Uuid>,
    /// What signatures name: the first 16 hex digits of SHA-256 over the raw public key.
    pub key_id: String,
    /// `ed25519:<base64>`.
    pub public_key: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
}

// ---- per-project settings ----

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SignaturePolicy {
    /// Only images with a valid signature from a trusted key are accepted and booted.
    #[default]
    Require,
    /// Accepted and booted anyway; the failed check is recorded as an event.
    Warn,
    /// Signatures are not checked (the SHA-256 digest still is, before every boot).
    Off,
}

impl SignaturePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            SignaturePolicy::Require => "require",
            SignaturePolicy::Warn => "warn",
            SignaturePolicy::Off => "off",
        }
    }

    pub fn parse(s: &str) -> Option<SignaturePolicy> {
        Some(match s {
            "require" => SignaturePolicy::Require,
            "warn" => SignaturePolicy::Warn,
            "off" => SignaturePolicy::Off,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ComputeSettings {
    /// `require` (default), `warn` or `off`.
    pub image_signature_policy: SignaturePolicy,
}

// ---- images ----

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    /// A Linux kernel for direct boot (an uncompressed `vmlinux` boots fastest, on microvm).
    Kernel,
    /// An initramfs, named by a kernel image's `ramdisk_image`.
    Initrd,
    Raw,
    Qcow2,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Kernel => "kernel",
            DiskFormat::Initrd => "initrd",
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }

    pub fn parse(s: &str) -> Option<DiskFormat> {
        Some(match s {
            "kernel" => DiskFormat::Kernel,
            "initrd" => DiskFormat::Initrd,
            "raw" => DiskFormat::Raw,
            "qcow2" => DiskFormat::Qcow2,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ImageStatus {
    /// Metadata only; upload the bytes with `PUT …/data`.
    Queued,
    /// An upload is in progress.
    Saving,
    Active,
    /// The bytes did not pass the integrity checks; the blob was discarded.
    Rejected,
}

impl ImageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageStatus::Queued => "queued",
            ImageStatus::Saving => "saving",
            ImageStatus::Active => "active",
            ImageStatus::Rejected => "rejected",
        }
    }

    pub fn parse(s: &str) -> Option<ImageStatus> {
        Some(match s {
            "queued" => ImageStatus::Queued,
            "saving" => ImageStatus::Saving,
            "active" => ImageStatus::Active,
            "rejected" => ImageStatus::Rejected,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageCreate {
    pub name: String,
    pub disk_format: DiskFormat,
    /// For a `kernel` image: the `initrd` image booted with it (id or name, same project).
    #[serde(default)]
    pub ramdisk_image: Option<String>,
    /// For a `kernel` image: extra kernel command-line words (appended to Rampart's own).
    #[serde(default)]
    pub kernel_cmdline: Option<String>,
    /// Base64 Ed25519 signature over the image's SHA-256 digest (`rampart image sign`).
    #[serde(default)]
    pub signature: Option<String>,
    /// Key id (16 hex digits) of the key that made `signature`.
    #[serde(default)]
    pub signing_key: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Image {
    pub id: Uuid,
    pub project_id: Uuid,
    pub name: String,
    pub disk_format: DiskFormat,
    pub status: ImageStatus,
    pub ramdisk_image: Option<Uuid>,
    pub kernel_cmdline: Option<String>,
    /// Hex SHA-256 of the bytes, once uploaded.
    pub sha256: Option<String>,
    pub size_bytes: Option<u64>,
    pub signing_key: Option<String>,
    /// Whether the signature verified against a trusted key at upload.
    pub signature_verified: bool,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// Problems tolerated by the `warn` policy (upload answer only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

// ---- flavors ----

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FlavorCreate {
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub root_disk_gib: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Flavor {
    pub id: Uuid,
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub root_disk_gib: u64,
}

// ---- instances ----

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceCreate {
    pub name: String,
    /// Image id or name (a `kernel` image, booted with its `ramdisk_image`).
    pub image: String,
    /// Flavor id or name.
    pub flavor: String,
    /// Existing ports (tenant networking) to plug the VM into.
    #[serde(default)]
    pub ports: Vec<Uuid>,
    /// Subnets to create a port on for the VM (tenant networking).
    #[serde(default)]
    pub networks: Vec<Uuid>,
    /// Security groups of the VM (its ports' groups); members of one group are spread over
    /// nodes (spec 10.3-3).
    #[serde(default)]
    pub security_groups: Vec<Uuid>,
    /// OpenSSH public key lines installed for the login user.
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    /// Password of the login user; only its crypt(3) SHA-512 hash is stored and sent to the
    /// guest. Without it, password login is locked.
    #[serde(default)]
    pub password: Option<Sensitive>,
    /// Guest login user (default `rampart`; never `root`).
    #[serde(default)]
    pub user: Option<String>,
    /// Volumes to attach (storage).
    #[serde(default)]
    pub volumes: Vec<Uuid>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Hard anti-affinity: never on a node that runs another member of its security groups
    /// (otherwise spreading is best effort).
    #[serde(default)]
    pub anti_affinity: bool,
    /// Start the VM (default true).
    #[serde(default)]
    pub start: Option<bool>,
    /// High availability (spec 14.1-3): restarted on another node when its node is lost.
    #[serde(default)]
    pub ha: Option<HaPolicy>,
}

/// An instance's high-availability policy: when its node is lost (no heartbeat, fenced), the
/// controller restarts it on another ready node, highest `priority` first. Placement of a
/// protected instance keeps room to restart the protected instances of the largest node
/// (`ha.failures_to_tolerate`), else 409 `ha_capacity`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HaPolicy {
    pub enabled: bool,
    /// 0..=100, higher restarted first (default 0).
    #[serde(default)]
    pub priority: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum InstanceStatus {
    /// Placed; the node has not reported it running yet.
    Creating,
    Running,
    Stopped,
    /// Could not boot (see `failure`), e.g. `image_signature_invalid`.
    Failed,
    /// Died without being asked; not restarted until `start`.
    Crashed,
    Deleting,
}

impl InstanceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceStatus::Creating => "creating",
            InstanceStatus::Running => "running",
            InstanceStatus::Stopped => "stopped",
            InstanceStatus::Failed => "failed",
            InstanceStatus::Crashed => "crashed",
            InstanceStatus::Deleting => "deleting",
        }
    }

    pub fn parse(s: &str) -> Option<InstanceStatus> {
        Some(match s {
            "creating" => InstanceStatus::Creating,
            "running" => InstanceStatus::Running,
            "stopped" => InstanceStatus::Stopped,
            "failed" => InstanceStatus::Failed,
            "crashed" => InstanceStatus::Crashed,
            "deleting" => InstanceStatus::Deleting,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PowerState {
    Running,
    Stopped,
}

impl PowerState {
    pub fn as_str(self) -> &'static str {
        match self {
            PowerState::Running => "running",
            PowerState::Stopped => "stopped",
        }
    }

    pub fn parse(s: &str) -> Option<PowerState> {
        match s {
            "running" => Some(PowerState::Running),
            "stopped" => Some(PowerState::Stopped),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Failure {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Instance {
    pub id: Uuid,
    pub project_id: Uuid,
    pub name: String,
    pub image_id: Uuid,
    pub flavor_id: Uuid,
    pub node_id: Option<Uuid>,
    pub status: InstanceStatus,
    /// What was asked: `running` or `stopped`.
    pub desired_power: PowerState,
    pub failure: Option<Failure>,
    pub user: String,
    pub ssh_keys: Vec<String>,
    /// A password hash is set (the hash itself is never returned).
    pub password_set: bool,
    pub security_groups: Vec<Uuid>,
    pub ports: Vec<Uuid>,
    pub networks: Vec<Uuid>,
    pub tags: BTreeMap<String, String>,
    pub anti_affinity: bool,
    /// Its high-availability policy (absent: not protected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha: Option<HaPolicy>,
    /// The unprivileged uid its QEMU runs as on the node.
    pub vm_uid: Option<u32>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub launched_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InstanceEvent {
    /// `started`, `stopped`, `crashed`, `guest_panicked`, `image_signature_invalid`,
    /// `image_signature_warning`, `start_failed`.
    pub kind: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Console {
    /// The tail of the serial console (at most 64 KiB), as the node last reported it.
    pub output: String,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub updated_at: Option<OffsetDateTime>,
}

/// Rates over one sampling interval (spec 12.1-5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MetricsPoint {
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
    /// 100 = one host CPU fully used by the VM.
    pub cpu_percent: f64,
    pub memory_bytes: u64,
    pub disk_read_bps: f64,
    pub disk_write_bps: f64,
    pub disk_write_iops: f64,
    pub net_rx_bps: f64,
    pub net_tx_bps: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InstanceMetrics {
    pub latest: Option<MetricsPoint>,
    /// Oldest first.
    pub series: Vec<MetricsPoint>,
    /// Totals since the VM started (counters), when known.
    pub totals: Option<MetricTotals>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MetricTotals {
    pub cpu_usage_ns: u64,
    pub disk_read_bytes: u64,
    pub disk_write_bytes: u64,
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
}

// ---- alarms ----

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AlarmWindow {
    /// 0 = Monday … 6 = Sunday; empty: every day.
    #[serde(default)]
    pub days: Vec<u8>,
    /// UTC minute of the day, inclusive.
    pub start_minute: u16,
    /// UTC minute of the day, exclusive (≤ start: wraps past midnight).
    pub end_minute: u16,
    pub threshold: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AlarmCreate {
    pub name: String,
    pub instance: Uuid,
    /// `cpu_percent`, `memory_bytes`, `disk_read_bps`, `disk_write_bps`, `disk_write_iops`,
    /// `net_rx_bps` or `net_tx_bps`.
    pub metric: String,
    /// `>`, `>=`, `<` or `<=`.
    pub comparison: String,
    pub threshold: f64,
    /// N periods looked at.
    pub periods: u32,
    /// M breaching periods out of N to alarm.
    pub datapoints: u32,
    pub period_s: u64,
    /// Parts of the week with thresholds of their own.
    #[serde(default)]
    pub windows: Vec<AlarmWindow>,
    /// HTTPS URLs that receive each state transition: each with the scheme, host and port of a
    /// prefix in `compute.alarm_webhook_prefixes` and a path under its path, no user info; a
    /// host resolving to a loopback, private or link-local address not listed in
    /// `compute.alarm_webhook_allowed_networks` receives nothing, and redirects are not followed.
    #[serde(default)]
    pub webhooks: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AlarmState {
    Ok,
    Alarm,
    InsufficientData,
}

impl AlarmState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlarmState::Ok => "OK",
            AlarmState::Alarm => "ALARM",
            AlarmState::InsufficientData => "INSUFFICIENT_DATA",
        }
    }

    pub fn parse(s: &str) -> Option<AlarmState> {
        Some(match s {
            "OK" => AlarmState::Ok,
            "ALARM" => AlarmState::Alarm,
            "INSUFFICIENT_DATA" => AlarmState::InsufficientData,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Alarm {
    pub id: Uuid,
    pub project_id: Uuid,
    pub name: String,
    pub instance: Uuid,
    pub metric: String,
    pub comparison: String,
    pub threshold: f64,
    pub periods: u32,
    pub datapoints: u32,
    pub period_s: u64,
    pub windows: Vec<AlarmWindow>,
    pub webhooks: Vec<String>,
    pub state: AlarmState,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub state_since: OffsetDateTime,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AlarmTransition {
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
    pub from: AlarmState,
    pub to: AlarmState,
    pub reason: String,
}

// ---- agent protocol: the compute section of a node's desired state ----

/// The VMs a node must run. Left out of the document when there is none.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NodeCompute {
    pub instances: Vec<DesiredInstance>,
}

impl NodeCompute {
    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DesiredInstance {
    pub id: Uuid,
    /// Protected by HA: the node kills it when it loses its lease with the controller (self
    /// fencing) and never boots it before the controller has confirmed it is still its own.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ha: bool,
    pub project_id: Uuid,
    pub name: String,
    pub power: PowerState,
    /// The node boots again (verifying the images again) when this grows.
    pub boot_seq: i64,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// The image files booted, each verified on the node before every boot.
    pub images: Vec<DesiredImage>,
    /// Extra kernel command-line words from the kernel image.
    pub kernel_cmdline_extra: String,
    pub signature_policy: SignaturePolicy,
    /// Global keys and the project's keys, not revoked.
    pub trusted_keys: Vec<TrustedKeyDoc>,
    /// Tenant-network ports (from the networking service): taps in VPC namespaces.
    #[serde(default)]
    pub ports: Vec<DesiredPort>,
    pub guest: GuestDoc,
    /// Volumes attached to this VM, in attachment order.
    #[serde(default)]
    pub volumes: Vec<crate::storage::DesiredAttachment>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ImageRole {
    Kernel,
    Initrd,
    Disk,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DesiredImage {
    pub role: ImageRole,
    pub image_id: Uuid,
    /// Hex SHA-256 recorded at upload: the node's copy must hash to it.
    pub sha256: String,
    pub size: u64,
    pub signature: Option<ImageSignatureDoc>,
    /// The container format of a disk image (`raw` or `qcow2`), what QEMU opens it as;
    /// absent from older controllers, which meant raw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<DiskFormat>,
}

/// A detached image signature (`IMAGE.sig`, format `rampart-image-signature-v1`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ImageSignatureDoc {
    pub format: String,
    pub hash_method: String,
    pub digest: String,
    pub key_type: String,
    pub key_id: String,
    pub signature: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TrustedKeyDoc {
    pub key_id: String,
    pub public_key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DesiredPort {
    pub port_id: Uuid,
    pub tap: String,
    pub mac: String,
    pub ip: Option<String>,
    pub netns: Option<String>,
}

#[derive(Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GuestDoc {
    pub hostname: String,
    pub user: String,
    pub ssh_authorized_keys: Vec<String>,
    /// crypt(3) hash; never the password.
    pub password_hash: Option<String>,
}

impl std::fmt::Debug for GuestDoc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestDoc")
            .field("hostname", &self.hostname)
            .field("user", &self.user)
            .field("ssh_authorized_keys", &self.ssh_authorized_keys.len())
            .field("password_hash", &self.password_hash.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

// ---- agent protocol: what the node reports ----

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ComputeStatus {
    /// Whether this node can run VMs (QEMU present, running as root, cgroups usable).
    pub available: bool,
    /// `kvm` or `tcg` once chosen.
    #[serde(default)]
    pub accel: Option<String>,
    /// Why not available, or why this accelerator.
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub instances: Vec<InstanceReport>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ObservedPower {
    Running,
    Paused,
    Panicked,
    Stopped,
    /// Could not boot this boot_seq (see `error`).
    Failed,
    /// Died by itself; not restarted until the boot_seq grows.
    Crashed,
    /// Being prepared (image download, staging).
    Starting,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InstanceReport {
    pub id: Uuid,
    pub power: ObservedPower,
    /// The boot_seq of the current (or failed) boot.
    pub boot_seq: i64,
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub uid: Option<u32>,
    #[serde(default)]
    pub error: Option<Failure>,
    /// Events since the last report that reached the controller.
    #[serde(default)]
    pub events: Vec<InstanceEventReport>,
    /// The latest rates, when a new sample was taken.
    #[serde(default)]
    pub metrics: Option<MetricsReport>,
    /// The console tail, when it changed since the last report.
    #[serde(default)]
    pub console: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InstanceEventReport {
    pub kind: String,
    pub at_ms: i64,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetricsReport {
    pub at_ms: i64,
    pub cpu_percent: f64,
    pub memory_bytes: u64,
    pub disk_read_bps: f64,
    pub disk_write_bps: f64,
    pub disk_write_iops: f64,
    pub net_rx_bps: f64,
    pub net_tx_bps: f64,
    #[serde(default)]
    pub totals: Option<MetricTotals>,
}
