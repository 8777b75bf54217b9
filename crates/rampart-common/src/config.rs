//! The configuration file (TOML). Every option is documented in `docs/configuration.md` with
//! its default; an unknown key or a bad value stops start-up with a message naming it.
//! Secrets are never inline: they are given as file paths.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config: `{key}` {message}")]
    Invalid { key: &'static str, message: String },
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the controller keeps its state (database, CA, logs). `--data-dir` overrides it.
    pub data_dir: Option<PathBuf>,
    pub api: ApiConfig,
    pub database: DatabaseConfig,
    pub nodes: NodesConfig,
    pub tls: TlsConfig,
    pub log: LogConfig,
    pub local_agent: LocalAgentConfig,
    pub authz: AuthzConfig,
    pub audit: AuditConfig,
    pub compute: ComputeConfig,
    pub network: NetworkConfig,
    pub kms: KmsConfig,
    /// Default per-project quotas.
    pub quotas: crate::quota::QuotaConfig,
    /// High availability of protected instances (spec 14.1-3).
    pub ha: HaConfig,
    pub backup: BackupConfig,
}

/// High availability (spec 14.1-3): self-fencing of nodes, recovery of protected instances,
/// admission control, flapping nodes.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HaConfig {
    /// Node failures the placement of protected instances keeps room for (0: no admission
    /// control).
    pub failures_to_tolerate: u32,
    /// An agent that has had no answer to its reports for this long kills the QEMU of its
    /// protected instances and boots none until the controller answers again.
    pub fence_after_s: u64,
    /// Added to `fence_after_s` after a node's last heartbeat before its protected instances
    /// are restarted elsewhere (clock rates, the kill itself).
    pub fence_margin_s: u64,
    /// A node lost this many times within `flap_window_s` is quarantined (kept out of
    /// scheduling, an alarm in the trail) until an operator puts it back.
    pub flap_losses: u32,
    pub flap_window_s: u64,
}

impl Default for HaConfig {
    fn default() -> Self {
        HaConfig {
            failures_to_tolerate: 1,
            fence_after_s: 20,
            fence_margin_s: 10,
            flap_losses: 3,
            flap_window_s: 3600,
        }
    }
}

/// Backups (`[backup]`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BackupConfig {
    pub system: SystemBackupConfig,
}

/// The controller's periodic backup of its own state (`[backup.system]`, spec 14.2-1/14.2-2),
/// run by the leader. Off until `passphrase_file` is set: the archive is encrypted to it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SystemBackupConfig {
    /// File whose first line is the passphrase the backups are encrypted to.
    pub passphrase_file: Option<PathBuf>,
    /// Seconds between backups.
    pub interval_s: u64,
    /// Backups kept in `dir` (and in `copy_to`); older ones are deleted.
    pub keep: usize,
    /// Where backups are written [default: DATA_DIR/system-backups].
    pub dir: Option<PathBuf>,
    /// A second directory, on other storage (a mounted remote file system), each backup is
    /// copied to.
    pub copy_to: Option<PathBuf>,
}

impl Default for SystemBackupConfig {
    fn default() -> Self {
        SystemBackupConfig {
            passphrase_file: None,
            interval_s: 6 * 3600,
            keep: 14,
            dir: None,
            copy_to: None,
        }
    }
}

/// The audit trail (spec 13.4): checkpoints, purge cadence, forwarding queue, black box.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// A signed checkpoint after this many records.
    pub checkpoint_every_records: u64,
    /// A signed checkpoint at least this often while records come in.
    pub checkpoint_interval_s: u64,
    /// How often the retention purge runs (records, run logs, black-box dumps).
    pub purge_interval_s: u64,
    /// Undelivered bytes the forwarding queue holds before new messages wait in the database.
    pub forward_queue_max_bytes: u64,
    /// How often an idle receiver is probed, so a dead one raises the degraded state.
    pub forward_probe_interval_s: u64,
    /// Longest pause between delivery attempts while the receiver is down.
    pub forward_retry_max_s: u64,
    /// IANA private enterprise number of the syslog structured-data ids (`audit@N`).
    pub syslog_enterprise_id: u32,
    /// Run-log events the flight recorder keeps for black-box dumps.
    pub blackbox_events: usize,
    /// Refused state-changing calls (each one audited) one principal may make from one source
    /// address per minute; past it, its calls get 429 before they run. 0: no limit.
    pub refused_calls_per_minute: u32,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            checkpoint_every_records: 1000,
            checkpoint_interval_s: 60,
            purge_interval_s: 3600,
            forward_queue_max_bytes: 1 << 30,
            forward_probe_interval_s: 30,
            forward_retry_max_s: 30,
            syslog_enterprise_id: 32473,
            blackbox_events: 500,
            refused_calls_per_minute: 60,
        }
    }
}

/// Tenant networking (`[network]`): the external network VPC routers may reach, and how the
/// local agent of `rampart up` runs its data plane.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// The external (provider) network of SNAT egress and floating IPs, an IPv4 CIDR. Unset:
    /// no VPC reaches anything outside itself.
    pub external_cidr: Option<String>,
    /// Default route of VPC routers on the external network (inside `external_cidr`).
    pub external_gateway: Option<String>,
    /// Prefix of the network namespaces the local agent owns (it deletes stale ones with it).
    pub netns_prefix: String,
    /// How often the local agent checks its data plane against the desired state.
    pub reconcile_interval_s: u64,
    /// The management plane's interface: non-loopback API listeners are pinned to it
    /// (`SO_BINDTODEVICE`), so the API cannot be reached through another plane's interface.
    pub management_interface: Option<String>,
    /// Source ranges admitted to the API ports by a host input filter (nftables); empty: no
    /// filter.
    pub management_sources: Vec<String>,
    /// The tenant plane's interface of this machine (VXLAN underlay of the local agent).
    pub tunnel_interface: Option<String>,
    /// This machine's address on the tenant plane (the local agent's VXLAN source).
    pub tunnel_ip: Option<String>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            external_cidr: None,
            external_gateway: None,
            netns_prefix: "rp-".into(),
            reconcile_interval_s: 30,
            management_interface: None,
            management_sources: vec![],
            tunnel_interface: None,
            tunnel_ip: None,
        }
    }
}

/// `[compute]`: images, VMs, monitoring and alarms.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ComputeConfig {
    /// Where the controller keeps uploaded image blobs. Empty: `<data_dir>/images`.
    pub image_dir: Option<PathBuf>,
    /// Largest image upload accepted.
    pub max_image_bytes: u64,
    /// How long instance metrics are kept.
    pub metrics_retention_s: u64,
    /// State directory of the VMs of the local agent (`rampart up`): one directory per VM,
    /// owned by its uid. Must not be under the data directory (0700), which VM uids cannot
    /// traverse.
    pub vm_state_dir: PathBuf,
    /// Accelerator of the local agent: `auto` (KVM only with hardware virtualization and a
    /// passing probe boot, otherwise TCG), `kvm` or `tcg`.
    pub accel: String,
    /// URL prefixes alarm webhooks may use (HTTPS only). Empty: no webhooks. A webhook must
    /// have a prefix's scheme, host and port exactly and a path under its path.
    pub alarm_webhook_prefixes: Vec<String>,
    /// Networks (CIDRs) of loopback, private, link-local or other special-purpose addresses that
    /// webhooks may nevertheless reach. Empty: webhooks reach public addresses only.
    pub alarm_webhook_allowed_networks: Vec<String>,
    /// The `qemu-img` the controller runs (with `-f qcow2`, never probing) to inspect qcow2
    /// uploads for backing and data files (12.1-1).
    pub qemu_img: PathBuf,
}

impl Default for ComputeConfig {
    fn default() -> Self {
        ComputeConfig {
            image_dir: None,
            max_image_bytes: 16 << 30,
            metrics_retention_s: 86_400,
            vm_state_dir: PathBuf::from("/var/lib/rampart-vms"),
            accel: "auto".into(),
            alarm_webhook_prefixes: vec![],
            alarm_webhook_allowed_networks: vec![],
            qemu_img: PathBuf::from("qemu-img"),
        }
    }
}

impl ComputeConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, message: &str| {
            Err(ConfigError::Invalid {
                key,
                message: message.into(),
            })
        };
        if !["auto", "kvm", "tcg"].contains(&self.accel.as_str()) {
            return invalid("compute.accel", "must be auto, kvm or tcg");
        }
        if self.max_image_bytes < 1 << 20 {
            return invalid("compute.max_image_bytes", "must be at least 1048576");
        }
        if !(60..=366 * 86_400).contains(&self.metrics_retention_s) {
            return invalid("compute.metrics_retention_s", "must be between 60 and 31622400");
        }
        if !self.vm_state_dir.is_absolute() {
            return invalid("compute.vm_state_dir", "must be an absolute path");
        }
        if self
            .alarm_webhook_prefixes
            .iter()
            .any(|p| !p.starts_with("https://") || p.len() < 9)
        {
            return invalid("compute.alarm_webhook_prefixes", "must be https:// URL prefixes");
        }
        if self.alarm_webhook_allowed_networks.iter().any(|n| !is_cidr(n)) {
            return invalid(
                "compute.alarm_webhook_allowed_networks",
                "must be CIDRs such as 10.20.0.0/16 or fd00::/8",
            );
        }
        Ok(())
    }
}

/// Whether `name` is a network interface name (1 to 15 of letters, digits, `-`, `_`, `.`).
pub fn valid_ifname(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// `a.b.c.d/len` with no host bits set.
fn ipv4_network(s: &str) -> Option<(std::net::Ipv4Addr, u8)> {
    let (addr, len) = s.split_once('/')?;
    let ip: std::net::Ipv4Addr = addr.parse().ok()?;
    let len: u8 = len.parse().ok().filter(|l| *l <= 32)?;
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    (u32::from(ip) & !mask == 0).then_some((ip, len))
}

/// Whether `name` may prefix network namespace names: 1 to 12 of `a-z`, `0-9`, `-`.
pub fn valid_netns_prefix(name: &str) -> bool {
    (1..=12).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthzConfig {
    /// Extra Cedar policies (e.g. `forbid` rules on time windows or source ranges), validated
    /// against Rampart's schema at start.
    pub policy_file: Option<PathBuf>,
}

/// Which HSM holds the keys.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HsmKind {
    /// A SoftHSM2 token under `<data_dir>/hsm/`, initialised on first start.
    Embedded,
    /// An initialised token of any PKCS#11 module (`kms.module`, `kms.token_label`, `kms.pin_file`).
    Pkcs11,
}

/// Where the internal CAs keep their private keys.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CaKeyCustody {
    /// In the HSM when it is available, otherwise in a 0600 key file.
    Auto,
    /// In the HSM; start-up fails without it.
    Hsm,
    /// In a 0600 key file.
    File,
}

/// The key service, its HSM and the certificate service (`[kms]`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KmsConfig {
    pub hsm: HsmKind,
    /// Path of the PKCS#11 module.
    pub module: PathBuf,
    /// Label of the token (`pkcs11` only; the embedded token is `rampart`).
    pub token_label: String,
    /// File holding the token's user PIN (`pkcs11` only).
    pub pin_file: Option<PathBuf>,
    /// Refuse to start when the HSM cannot be opened. With `false` the controller starts and
    /// every key operation answers 503 `hsm_unavailable`.
    pub required: bool,
    /// PKCS#11 sessions kept open for concurrent operations.
    pub sessions: usize,
    /// Where new internal CAs keep their keys.
    pub ca_key: CaKeyCustody,
    /// How often the key and certificate reconciler runs (rotation, destruction, expiry alarms).
    pub maintenance_interval_s: u64,
    /// Default lifetime of certificates issued from tenants' CSRs.
    pub certificate_days: u32,
    /// DNS suffix of the projects' certificate zones: a project's tenant certificates name
    /// hosts under `<project>.<domain>.<suffix>` or `<project id>.<suffix>` only (13.3-2).
    pub tenant_certificate_domain: String,
    /// Certificates expiring within this many days raise the expiry alarm.
    pub certificate_warning_days: u32,
    /// Validity of the published CRLs.
    pub crl_validity_hours: u32,
}

impl Default for KmsConfig {
    fn default() -> Self {
        KmsConfig {
            hsm: HsmKind::Embedded,
            module: PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"),
            token_label: "rampart".into(),
            pin_file: None,
            required: true,
            sessions: 4,
            ca_key: CaKeyCustody::Auto,
            maintenance_interval_s: 60,
            certificate_days: 90,
            tenant_certificate_domain: "rampart.internal".into(),
            certificate_warning_days: 30,
            crl_validity_hours: 24,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Addresses the HTTPS API listens on.
    pub listen: Vec<SocketAddr>,
    /// Extra DNS names and IP addresses for the server certificate.
    pub tls_names: Vec<String>,
    /// `Strict-Transport-Security: max-age=` value.
    pub hsts_max_age_s: u64,
    /// Largest accepted request body.
    pub request_body_limit_bytes: usize,
    /// Upper bound of one request (agent long polls excepted).
    pub request_timeout_s: u64,
    /// Proxies whose `X-Forwarded-For` is believed (CIDRs); from anyone else the header is ignored.
    pub trusted_proxies: Vec<String>,
    /// Web origins (`https://host[:port]`) whose pages may make state-changing calls with the
    /// session cookie. Empty: each name of the API's certificate with each listening port.
    pub origins: Vec<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 8443))],
            tls_names: vec![],
            hsts_max_age_s: 31_536_000,
            request_body_limit_bytes: 1 << 20,
            request_timeout_s: 60,
            trusted_proxies: vec![],
            origins: vec![],
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` or `postgres://USER@HOST/DB?sslmode=verify-full&sslrootcert=FILE`.
    /// Empty: SQLite at `<data_dir>/rampart.db`. `--database-url` overrides it.
    pub url: String,
    /// File holding the database password, when the URL has none.
    pub password_file: Option<PathBuf>,
    /// PostgreSQL: a URL of the role that owns the schema, used only to migrate at start; the
    /// controller then works through `database.url`, whose role needs no DDL rights.
    pub migration_url: String,
    /// File holding the password of `database.migration_url`.
    pub migration_password_file: Option<PathBuf>,
    /// PostgreSQL: role given, after migrations, exactly the data rights the controller needs.
    pub runtime_role: String,
    pub max_connections: u32,
    pub connect_timeout_s: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: String::new(),
            password_file: None,
            migration_url: String::new(),
            migration_password_file: None,
            runtime_role: String::new(),
            max_connections: 8,
            connect_timeout_s: 10,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NodesConfig {
    /// How often agents report status (their heartbeat).
    pub heartbeat_interval_s: u64,
    /// A node with no heartbeat for this long becomes `unreachable`.
    pub heartbeat_timeout_s: u64,
    /// Lifetime of a join token.
    pub join_token_ttl_s: u64,
    /// How long `GET /agent/v1/config` waits for a new generation before answering 204.
    pub long_poll_timeout_s: u64,
    /// Lifetime of the certificate an agent receives when it joins.
    pub agent_certificate_days: u32,
}

impl Default for NodesConfig {
    fn default() -> Self {
        NodesConfig {
            heartbeat_interval_s: 5,
            heartbeat_timeout_s: 15,
            join_token_ttl_s: 3600,
            long_poll_timeout_s: 30,
            agent_certificate_days: 90,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Lifetime of the internal CA created on first start.
    pub ca_days: u32,
    /// Lifetime of the API server certificate.
    pub server_certificate_days: u32,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            ca_days: 3650,
            server_certificate_days: 90,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `tracing` filter: a level (`info`) or directives (`info,rampart_db=debug`).
    pub level: String,
    /// Directory of the JSON run log files. Empty: `<data_dir>/logs`.
    pub dir: Option<PathBuf>,
    /// Also write the run log to standard error.
    pub stderr: bool,
    /// Number of log files kept.
    pub max_files: usize,
    /// A log file is rotated when it reaches this size (and at midnight UTC).
    pub max_file_bytes: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            dir: None,
            stderr: true,
            max_files: 14,
            max_file_bytes: 64 << 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LocalAgentConfig {
    /// Whether `rampart up` runs an agent for this machine.
    pub enabled: bool,
    /// Node name of the local agent. Empty: the host name.
    pub name: String,
    /// Directory of the local agent's `local` volume pool. `None`: `<data dir>/agent/volumes`.
    /// On a btrfs RAID1 filesystem over two devices the pool is redundant (14.1-2).
    pub storage_pool: Option<std::path::PathBuf>,
    /// Seconds between scrubs of the pool when it is on btrfs; 0: never.
    pub scrub_interval_s: u64,
}

impl Default for LocalAgentConfig {
    fn default() -> Self {
        LocalAgentConfig {
            enabled: true,
            name: String::new(),
            storage_pool: None,
            scrub_interval_s: 86_400,
        }
    }
}

fn is_cidr(s: &str) -> bool {
    let Some((addr, len)) = s.split_once('/') else {
        return false;
    };
    let Ok(ip) = addr.parse::<std::net::IpAddr>() else {
        return false;
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    len.parse::<u8>().is_ok_and(|l| l <= max)
}

impl Config {
    pub fn from_toml(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(path, &text)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(key: &'static str, message: impl Into<String>) -> Result<(), ConfigError> {
            Err(ConfigError::Invalid {
                key,
                message: message.into(),
            })
        }
        if self.api.listen.is_empty() {
            return invalid("api.listen", "must name at least one address");
        }
        if self.api.request_body_limit_bytes < 1024 {
            return invalid("api.request_body_limit_bytes", "must be at least 1024");
        }
        for p in &self.api.trusted_proxies {
            if p.parse::<std::net::IpAddr>().is_err() && !is_cidr(p) {
                return invalid(
                    "api.trusted_proxies",
                    format!("{p:?} is not an address range like 10.0.0.0/8"),
                );
            }
        }
        for o in &self.api.origins {
            if let Err(e) = crate::origin::https_origin(o) {
                return invalid("api.origins", e);
            }
        }
        if self.api.request_timeout_s == 0 {
            return invalid("api.request_timeout_s", "must be at least 1");
        }
        if !self.database.url.is_empty()
            && !["sqlite:", "postgres://", "postgresql://"]
                .iter()
                .any(|p| self.database.url.starts_with(p))
        {
            return invalid("database.url", "must start with sqlite:, postgres:// or postgresql://");
        }
        if !self.database.migration_url.is_empty()
            && !["postgres://", "postgresql://"]
                .iter()
                .any(|p| self.database.migration_url.starts_with(p))
        {
            return invalid("database.migration_url", "must be a postgres:// URL");
        }
        if !self.database.runtime_role.is_empty() && self.database.migration_url.is_empty() {
            return invalid(
                "database.runtime_role",
                "needs database.migration_url (the owner grants the rights)",
            );
        }
        if self.database.max_connections == 0 {
            return invalid("database.max_connections", "must be at least 1");
        }
        if self.database.connect_timeout_s == 0 {
            return invalid("database.connect_timeout_s", "must be at least 1");
        }
        let n = &self.nodes;
        if n.heartbeat_interval_s == 0 {
            return invalid("nodes.heartbeat_interval_s", "must be at least 1");
        }
        if n.heartbeat_timeout_s < 2 * n.heartbeat_interval_s {
            return invalid(
                "nodes.heartbeat_timeout_s",
                format!(
                    "must be at least twice nodes.heartbeat_interval_s ({}), so one lost heartbeat does not mark a node unreachable",
                    n.heartbeat_interval_s
                ),
            );
        }
        if !(60..=7 * 86_400).contains(&n.join_token_ttl_s) {
            return invalid("nodes.join_token_ttl_s", "must be between 60 and 604800 seconds");
        }
        if !(1..=300).contains(&n.long_poll_timeout_s) {
            return invalid("nodes.long_poll_timeout_s", "must be between 1 and 300 seconds");
        }
        if self.ha.fence_after_s < 2 * n.heartbeat_interval_s || self.ha.fence_after_s > 3600 {
            return invalid(
                "ha.fence_after_s",
                format!(
                    "must be between twice nodes.heartbeat_interval_s ({}) and 3600, so one lost heartbeat does not fence a node",
                    n.heartbeat_interval_s
                ),
            );
        }
        if !(1..=3600).contains(&self.ha.fence_margin_s) {
            return invalid("ha.fence_margin_s", "must be between 1 and 3600 seconds");
        }
        if self.ha.failures_to_tolerate > 16 {
            return invalid("ha.failures_to_tolerate", "must be at most 16");
        }
        if self.ha.flap_losses == 0 || self.ha.flap_window_s == 0 {
            return invalid(
                "ha.flap_losses",
                "ha.flap_losses and ha.flap_window_s must be at least 1",
            );
        }
        if !(1..=825).contains(&n.agent_certificate_days) {
            return invalid("nodes.agent_certificate_days", "must be between 1 and 825");
        }
        if !(1..=825).contains(&self.tls.server_certificate_days) {
            return invalid("tls.server_certificate_days", "must be between 1 and 825");
        }
        if self.tls.ca_days < 30 || self.tls.ca_days > 36_500 {
            return invalid("tls.ca_days", "must be between 30 and 36500");
        }
        if self.log.level.trim().is_empty() {
            return invalid("log.level", "must not be empty");
        }
        if self.log.max_files == 0 {
            return invalid("log.max_files", "must be at least 1");
        }
        if self.log.max_file_bytes < 4096 {
            return invalid("log.max_file_bytes", "must be at least 4096");
        }
        let a = &self.audit;
        if a.checkpoint_every_records == 0 {
            return invalid("audit.checkpoint_every_records", "must be at least 1");
        }
        if a.checkpoint_interval_s == 0 {
            return invalid("audit.checkpoint_interval_s", "must be at least 1");
        }
        if a.purge_interval_s == 0 {
            return invalid("audit.purge_interval_s", "must be at least 1");
        }
        if a.forward_queue_max_bytes < 1 << 20 {
            return invalid("audit.forward_queue_max_bytes", "must be at least 1048576");
        }
        if a.forward_probe_interval_s == 0 {
            return invalid("audit.forward_probe_interval_s", "must be at least 1");
        }
        if a.forward_retry_max_s == 0 {
            return invalid("audit.forward_retry_max_s", "must be at least 1");
        }
        if !(10..=100_000).contains(&a.blackbox_events) {
            return invalid("audit.blackbox_events", "must be between 10 and 100000");
        }
        self.compute.validate()?;
        let b = &self.backup.system;
        if !(1..=31 * 86_400).contains(&b.interval_s) {
            return invalid("backup.system.interval_s", "must be between 1 and 2678400");
        }
        if !(1..=10_000).contains(&b.keep) {
            return invalid("backup.system.keep", "must be between 1 and 10000");
        }
        for (key, dir) in [("backup.system.dir", &b.dir), ("backup.system.copy_to", &b.copy_to)] {
            if dir.as_ref().is_some_and(|d| !d.is_absolute()) {
                return invalid(key, "must be an absolute path");
            }
        }
        if let Some(r) = self.quotas.too_large() {
            return Err(ConfigError::Invalid {
                key: "quotas",
                message: format!("{} must be at most {}", r.as_str(), crate::quota::MAX_LIMIT),
            });
        }
        let net = &self.network;
        let external = match &net.external_cidr {
            Some(c) => match ipv4_network(c) {
                Some((ip, len)) if (8..=30).contains(&len) => Some((ip, len)),
                _ => {
                    return invalid(
                        "network.external_cidr",
                        format!("{c:?} is not an IPv4 network between /8 and /30 like 203.0.113.0/24"),
                    );
                }
            },
            None => None,
        };
        if let Some(g) = &net.external_gateway {
            let inside = match (g.parse::<std::net::Ipv4Addr>(), external) {
                (Ok(gw), Some((ip, len))) => {
                    let mask = u32::MAX << (32 - len);
                    u32::from(gw) & mask == u32::from(ip) && u32::from(gw) != u32::from(ip)
                }
                _ => false,
            };
            if !inside {
                return invalid(
                    "network.external_gateway",
                    "must be an address inside network.external_cidr (which must be set)",
                );
            }
        }
        if !valid_netns_prefix(&net.netns_prefix) {
            return invalid("network.netns_prefix", "must be 1 to 12 of a-z, 0-9 and '-'");
        }
        if !(1..=3600).contains(&net.reconcile_interval_s) {
            return invalid("network.reconcile_interval_s", "must be between 1 and 3600");
        }
        if net.management_interface.as_deref().is_some_and(|i| !valid_ifname(i)) {
            return invalid("network.management_interface", "must be an interface name like eth0");
        }
        for p in &net.management_sources {
            if !is_cidr(p) {
                return invalid(
                    "network.management_sources",
                    format!("{p:?} is not an address range like 10.20.0.0/24"),
                );
            }
        }
        match (&net.tunnel_interface, &net.tunnel_ip) {
            (None, None) => {}
            (Some(i), Some(ip)) if valid_ifname(i) && ip.parse::<std::net::Ipv4Addr>().is_ok() => {}
            _ => {
                return invalid(
                    "network.tunnel_interface",
                    "network.tunnel_interface (an interface name) and network.tunnel_ip (its IPv4 address) go together",
                );
            }
        }
        let k = &self.kms;
        if k.hsm == HsmKind::Pkcs11 && k.pin_file.is_none() {
            return invalid("kms.pin_file", "is needed with kms.hsm = \"pkcs11\"");
        }
        if k.token_label.is_empty() || k.token_label.len() > 32 {
            return invalid(
                "kms.token_label",
                "must be 1 to 32 bytes (PKCS#11 token labels are 32 bytes)",
            );
        }
        if !(1..=64).contains(&k.sessions) {
            return invalid("kms.sessions", "must be between 1 and 64");
        }
        if !(1..=86_400).contains(&k.maintenance_interval_s) {
            return invalid("kms.maintenance_interval_s", "must be between 1 and 86400");
        }
        if !(1..=397).contains(&k.certificate_days) {
            return invalid("kms.certificate_days", "must be between 1 and 397");
        }
        let suffix = &k.tenant_certificate_domain;
        if suffix.is_empty()
            || suffix.len() > 180
            || suffix.split('.').any(|l| {
                l.is_empty()
                    || l.starts_with('-')
                    || !l
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            })
        {
            return invalid(
                "kms.tenant_certificate_domain",
                "must be a lowercase DNS name such as rampart.internal",
            );
        }
        if !(1..=365).contains(&k.certificate_warning_days) {
            return invalid("kms.certificate_warning_days", "must be between 1 and 365");
        }
        if !(1..=720).contains(&k.crl_validity_hours) {
            return invalid("kms.crl_validity_hours", "must be between 1 and 720");
        }
        if !self.local_agent.name.is_empty() {
            crate::names::validate_node_name(&self.local_agent.name).map_err(|e| ConfigError::Invalid {
                key: "local_agent.name",
                message: e.to_string(),
            })?;
        }
        Ok(())
    }

    /// The database URL to use, given the data directory.
    pub fn database_url(&self, data_dir: &Path) -> String {
        if self.database.url.is_empty() {
            format!("sqlite://{}", data_dir.join("rampart.db").display())
        } else {
            self.database.url.clone()
        }
    }

    pub fn log_dir(&self, data_dir: &Path) -> PathBuf {
        self.log.dir.clone().unwrap_or_else(|| data_dir.join("logs"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::from_toml(Path::new("test.toml"), s)
    }

    #[test]
    fn empty_file_is_the_default() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse("[api]\nlisten = [\"127.0.0.1:1\"]\nlisten_port = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("listen_port"), "{err}");
        assert!(err.contains("test.toml"), "{err}");
        let err = parse("[nodez]\n").unwrap_err().to_string();
        assert!(err.contains("nodez"), "{err}");
    }

    #[test]
    fn bad_value_is_named() {
        let err = parse("[api]\nlisten = [\"not an address\"]\n").unwrap_err().to_string();
        assert!(err.contains("listen"), "{err}");
        let err = parse("[nodes]\nheartbeat_interval_s = 10\nheartbeat_timeout_s = 15\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("nodes.heartbeat_timeout_s"), "{err}");
        let err = parse("[database]\nurl = \"mysql://x\"\n").unwrap_err().to_string();
        assert!(err.contains("database.url"), "{err}");
        let err = parse("[nodes]\nheartbeat_interval_s = -1\n").unwrap_err().to_string();
        assert!(err.contains("heartbeat_interval_s"), "{err}");
    }

    #[test]
    fn kms_section_is_checked() {
        let c = parse("[kms]\nhsm = \"pkcs11\"\npin_file = \"/etc/rampart/pin\"\nrequired = false\n").unwrap();
        assert_eq!(c.kms.hsm, HsmKind::Pkcs11);
        assert!(!c.kms.required);
        let err = parse("[kms]\nhsm = \"pkcs11\"\n").unwrap_err().to_string();
        assert!(err.contains("kms.pin_file"), "{err}");
        let err = parse("[kms]\nhsm = \"software\"\n").unwrap_err().to_string();
        assert!(err.contains("hsm"), "{err}");
        let err = parse("[kms]\ncertificate_days = 900\n").unwrap_err().to_string();
        assert!(err.contains("kms.certificate_days"), "{err}");
    }

    #[test]
    fn default_database_is_sqlite_in_the_data_dir() {
        let c = Config::default();
        assert_eq!(c.database_url(Path::new("/d")), "sqlite:///d/rampart.db");
    }
}

#[cfg(test)]
mod doc_tests {
    use super::*;

    /// Every option has a row in docs/configuration.md (`section.key`).
    #[test]
    fn every_option_is_documented() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/configuration.md")).unwrap();
        let value = toml::Value::try_from(Config {
            data_dir: Some("/x".into()),
            ..Config::default()
        })
        .unwrap();
        let mut missing = Vec::new();
        for (key, v) in value.as_table().unwrap() {
            match v.as_table() {
                Some(section) => {
                    for sub in section.keys() {
                        let name = format!("`{key}.{sub}`");
                        if !doc.contains(&name) {
                            missing.push(name);
                        }
                    }
                }
                None => {
                    if !doc.contains(&format!("`{key}`")) {
                        missing.push(key.clone());
                    }
                }
            }
        }
        // Options that default to "unset" do not serialise; list them by hand.
        for name in [
            "`database.password_file`",
            "`database.migration_password_file`",
            "`log.dir`",
            "`authz.policy_file`",
            "`network.external_cidr`",
            "`network.external_gateway`",
            "`network.management_interface`",
            "`network.tunnel_interface`",
            "`network.tunnel_ip`",
            "`kms.pin_file`",
        ] {
            if !doc.contains(name) {
                missing.push(name.to_string());
            }
        }
        assert!(missing.is_empty(), "undocumented options: {missing:?}");
    }
}
