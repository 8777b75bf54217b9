//! The Ceph backend's configuration and everything about it that is pure: the storage-plane
//! check (10.1: every monitor, and the node's own storage address, inside the configured
//! storage network), the client `ceph.conf` the agent renders, and the parsing of what the
//! `ceph`/`rbd` tools answer in JSON.
//!
//! Traffic to Ceph is storage-plane traffic: the rendered conf names only monitors inside the
//! storage network, speaks msgr2 only, in `secure` mode (AES-GCM on the wire), with cephx, and
//! bounds every wait on a monitor or an OSD, so an unreachable cluster is an error within
//! seconds, not a hang.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::backend::{PoolHealth, StorageError};

/// `[ceph]` of the agent's storage configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CephSettings {
    /// Monitor addresses (msgr2 port, normally 3300), e.g. `10.1.0.11:3300`.
    pub monitors: Vec<SocketAddr>,
    /// The RBD pool volumes live in (replicated, `size >= 2`; see [`create_pool`](crate::ceph::create_pool)).
    pub pool: String,
    /// The cephx user without `client.` (its caps: `mon 'profile rbd' osd 'profile rbd pool=<pool>'`).
    pub client_id: String,
    /// Keyring holding that user's key (0600, root). Only its path is ever passed to a tool.
    pub keyring: PathBuf,
    /// The storage network (10.1), e.g. `10.1.0.0/24`: monitors outside it are refused.
    pub storage_network: IpNet,
    /// This node's address on the storage network: Ceph client sockets bind to it.
    pub storage_address: IpAddr,
    /// The interface carrying the storage network (checked to hold `storage_address` at start).
    #[serde(default)]
    pub storage_interface: Option<String>,
}

/// Why a Ceph configuration is refused at start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CephConfigError {
    #[error(
        "ceph monitor {monitor} is outside the storage network {network} (10.1: storage traffic stays on the storage plane)"
    )]
    MonitorOutsideStorageNetwork { monitor: SocketAddr, network: IpNet },
    #[error("the node's storage address {address} is outside the storage network {network}")]
    AddressOutsideStorageNetwork { address: IpAddr, network: IpNet },
    #[error("no ceph monitor is configured")]
    NoMonitor,
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

fn ceph_name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !s.starts_with('.')
        && !s.starts_with('-')
}

impl CephSettings {
    /// The startup check: names a tool can take, and the storage plane (10.1).
    pub fn validate(&self) -> Result<(), CephConfigError> {
        if self.monitors.is_empty() {
            return Err(CephConfigError::NoMonitor);
        }
        for m in &self.monitors {
            if !self.storage_network.contains(&m.ip()) {
                return Err(CephConfigError::MonitorOutsideStorageNetwork {
                    monitor: *m,
                    network: self.storage_network,
                });
            }
        }
        if !self.storage_network.contains(&self.storage_address) {
            return Err(CephConfigError::AddressOutsideStorageNetwork {
                address: self.storage_address,
                network: self.storage_network,
            });
        }
        if !ceph_name_ok(&self.pool) {
            return Err(CephConfigError::Invalid {
                field: "pool",
                reason: "1 to 64 of A-Z a-z 0-9 - _ . (not starting with . or -)".into(),
            });
        }
        if !ceph_name_ok(&self.client_id) {
            return Err(CephConfigError::Invalid {
                field: "client_id",
                reason: "1 to 64 of A-Z a-z 0-9 - _ . (not starting with . or -)".into(),
            });
        }
        let keyring = self.keyring.to_str().unwrap_or("");
        if !self.keyring.is_absolute() || keyring.contains(['\n', ',', ';', '#', '=']) {
            return Err(CephConfigError::Invalid {
                field: "keyring",
                reason: "an absolute path without newline , ; # =".into(),
            });
        }
        Ok(())
    }
}

/// Bounds of one `ceph`/`rbd`/`rados` call: the client gives up on a monitor after
/// `mount_timeout`, on an OSD operation after `op_timeout`; the process is killed after
/// `tool_timeout` whatever it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub mount_timeout: Duration,
    pub op_timeout: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            mount_timeout: Duration::from_secs(10),
            op_timeout: Duration::from_secs(30),
        }
    }
}

/// The client `ceph.conf` (written 0600 under the agent's data dir). `log_file` is where the
/// client libraries log (never to the agent's stderr).
pub fn render_client_conf(s: &CephSettings, t: Timeouts, log_file: &str) -> String {
    let mons: Vec<String> = s.monitors.iter().map(|m| format!("v2:{m}")).collect();
    let mut out = String::new();
    out.push_str("# Rendered by rampart-agent (the Ceph backend); rewritten at each start.\n");
    out.push_str("[global]\n");
    out.push_str(&format!("mon host = {}\n", mons.join(",")));
    // 10.1: the address this client announces is its storage address. Ceph clients do not
    // bind their outgoing sockets to it (measured: `ms bind before connect` has no effect on
    // a client messenger); the kernel's route to the monitors, checked at agent start, picks
    // the storage interface and address.
    out.push_str(&format!("public network = {}\n", s.storage_network));
    out.push_str(&format!("public addr = {}\n", s.storage_address));
    let v6 = s.storage_address.is_ipv6();
    out.push_str(&format!("ms bind ipv4 = {}\n", !v6));
    out.push_str(&format!("ms bind ipv6 = {v6}\n"));
    out.push_str("ms bind msgr1 = false\n");
    out.push_str("ms bind msgr2 = true\n");
    // msgr2 secure mode: the storage plane is encrypted on the wire as well.
    out.push_str("ms client mode = secure\n");
    out.push_str("ms mon client mode = secure\n");
    out.push_str("auth client required = cephx\n");
    out.push_str("auth service required = cephx\n");
    out.push_str("auth cluster required = cephx\n");
    out.push_str(&format!(
        "client mount timeout = {}\n",
        t.mount_timeout.as_secs().max(1)
    ));
    out.push_str(&format!(
        "rados mon op timeout = {}\n",
        t.mount_timeout.as_secs().max(1)
    ));
    out.push_str(&format!("rados osd op timeout = {}\n", t.op_timeout.as_secs().max(1)));
    out.push_str("admin socket =\n");
    out.push_str(&format!("log file = {log_file}\n"));
    out.push_str("log to stderr = false\n");
    out.push_str("err to stderr = false\n");
    out.push_str(&format!("\n[client.{}]\n", s.client_id));
    out.push_str(&format!("keyring = {}\n", s.keyring.display()));
    out
}

/// `ceph health --format json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CephHealth {
    pub health: PoolHealth,
    /// One line per health check, `CODE: summary`.
    pub problems: Vec<String>,
}

fn bad_json(what: &str) -> impl FnOnce(serde_json::Error) -> StorageError + '_ {
    move |e| StorageError::Invalid(format!("unexpected answer of {what}: {e}"))
}

/// HEALTH_OK is `ok`; WARN and ERR are `degraded` with the checks as problems (the cluster
/// answers, so it is not `unavailable`: that is when it does not).
pub fn parse_health(json: &str) -> Result<CephHealth, StorageError> {
    #[derive(Deserialize)]
    struct Summary {
        message: String,
    }
    #[derive(Deserialize)]
    struct Check {
        summary: Summary,
    }
    #[derive(Deserialize)]
    struct H {
        status: String,
        #[serde(default)]
        checks: std::collections::BTreeMap<String, Check>,
    }
    let h: H = serde_json::from_str(json).map_err(bad_json("ceph health"))?;
    let problems = h
        .checks
        .iter()
        .map(|(code, c)| format!("{code}: {}", c.summary.message))
        .collect();
    let health = match h.status.as_str() {
        "HEALTH_OK" => PoolHealth::Ok,
        _ => PoolHealth::Degraded,
    };
    Ok(CephHealth { health, problems })
}

/// What `ceph df --format json` says of one pool: bytes stored (before replication) and the
/// bytes still writable (`max_avail`, which already divides by the replica count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSpace {
    pub stored: u64,
    pub max_avail: u64,
}

pub fn parse_df(json: &str, pool: &str) -> Result<PoolSpace, StorageError> {
    #[derive(Deserialize)]
    struct Stats {
        stored: u64,
        max_avail: u64,
    }
    #[derive(Deserialize)]
    struct P {
        name: String,
        stats: Stats,
    }
    #[derive(Deserialize)]
    struct Df {
        pools: Vec<P>,
    }
    let df: Df = serde_json::from_str(json).map_err(bad_json("ceph df"))?;
    df.pools
        .into_iter()
        .find(|p| p.name == pool)
        .map(|p| PoolSpace {
            stored: p.stats.stored,
            max_avail: p.stats.max_avail,
        })
        .ok_or_else(|| StorageError::Unavailable(format!("pool {pool} does not exist")))
}

/// `ceph osd pool get <pool> size --format json`: the replica count.
pub fn parse_pool_size(json: &str) -> Result<u32, StorageError> {
    #[derive(Deserialize)]
    struct S {
        size: u32,
    }
    let s: S = serde_json::from_str(json).map_err(bad_json("ceph osd pool get size"))?;
    Ok(s.size)
}

/// One image of `rbd du --format json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ImageUsage {
    pub name: String,
    pub provisioned_size: u64,
    pub used_size: u64,
}

pub fn parse_du(json: &str) -> Result<Vec<ImageUsage>, StorageError> {
    #[derive(Deserialize)]
    struct Du {
        #[serde(default)]
        images: Vec<ImageUsage>,
    }
    let d: Du = serde_json::from_str(json).map_err(bad_json("rbd du"))?;
    // `rbd du` lists snapshots of an image too (with `snapshot`); they are not volumes here.
    Ok(d.images)
}

/// `rbd info --format json`: what the wipe needs to find an image's RADOS objects.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ImageInfo {
    pub size: u64,
    pub order: u32,
    pub block_name_prefix: String,
}

pub fn parse_info(json: &str) -> Result<ImageInfo, StorageError> {
    serde_json::from_str(json).map_err(bad_json("rbd info"))
}

/// The RADOS objects holding `[offset, offset+len)` of an image (object `i` holds bytes
/// `[i << order, (i+1) << order)`), as `(object name, offset in the object, length)`.
pub fn objects_for(info: &ImageInfo, offset: u64, len: u64) -> Vec<(String, u64, u64)> {
    let osize = 1u64 << info.order;
    let mut out = Vec::new();
    let mut at = offset;
    let end = offset + len;
    while at < end {
        let idx = at / osize;
        let in_obj = at % osize;
        let n = (osize - in_obj).min(end - at);
        out.push((format!("{}.{idx:016x}", info.block_name_prefix), in_obj, n));
        at += n;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn settings() -> CephSettings {
        CephSettings {
            monitors: vec!["10.1.0.11:3300".parse().unwrap(), "10.1.0.12:3300".parse().unwrap()],
            pool: "rampart-volumes".into(),
            client_id: "rampart-node-1".into(),
            keyring: "/etc/rampart/ceph/client.rampart-node-1.keyring".into(),
            storage_network: "10.1.0.0/24".parse().unwrap(),
            storage_address: "10.1.0.21".parse().unwrap(),
            storage_interface: Some("stor0".into()),
        }
    }

    #[test]
    fn spec_10_1_the_client_conf_names_storage_plane_monitors_only_golden() {
        let s = settings();
        s.validate().unwrap();
        let conf = render_client_conf(&s, Timeouts::default(), "/var/lib/rampart-agent/ceph/client.log");
        rampart_common::testing::golden(
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/ceph-client.conf"),
            &conf,
        );
        assert!(conf.contains("mon host = v2:10.1.0.11:3300,v2:10.1.0.12:3300\n"));
        assert!(conf.contains("ms client mode = secure\n"));
        assert!(!conf.contains("key ="), "the key stays in its keyring");
    }

    #[test]
    fn spec_10_1_monitors_and_address_outside_the_storage_network_are_refused() {
        let mut s = settings();
        s.monitors.push("192.168.1.5:3300".parse().unwrap());
        let e = s.validate().unwrap_err();
        assert!(matches!(e, CephConfigError::MonitorOutsideStorageNetwork { .. }));
        assert_eq!(
            e.to_string(),
            "ceph monitor 192.168.1.5:3300 is outside the storage network 10.1.0.0/24 (10.1: storage traffic stays on the storage plane)"
        );
        let mut s = settings();
        s.storage_address = "10.2.0.1".parse().unwrap();
        assert!(matches!(
            s.validate().unwrap_err(),
            CephConfigError::AddressOutsideStorageNetwork { .. }
        ));
        let mut s = settings();
        s.monitors.clear();
        assert_eq!(s.validate().unwrap_err(), CephConfigError::NoMonitor);
        for (pool, client, keyring) in [
            ("a b", "x", "/k"),
            ("p", "x\ny", "/k"),
            ("p", "x", "relative"),
            ("p", "x", "/k\nkey = AAAA"),
            ("", "x", "/k"),
        ] {
            let mut s = settings();
            s.pool = pool.into();
            s.client_id = client.into();
            s.keyring = keyring.into();
            assert!(
                matches!(s.validate(), Err(CephConfigError::Invalid { .. })),
                "{pool:?} {client:?} {keyring:?}"
            );
        }
    }

    #[test]
    fn ceph_answers_parse() {
        let h = parse_health(r#"{"status":"HEALTH_WARN","checks":{"OSD_DOWN":{"severity":"HEALTH_WARN","summary":{"message":"1 osds down","count":1},"muted":false}},"mutes":[]}"#).unwrap();
        assert_eq!(h.health, PoolHealth::Degraded);
        assert_eq!(h.problems, vec!["OSD_DOWN: 1 osds down".to_string()]);
        assert_eq!(
            parse_health(r#"{"status":"HEALTH_OK","checks":{},"mutes":[]}"#)
                .unwrap()
                .health,
            PoolHealth::Ok
        );
        let df = r#"{"stats":{"total_bytes":4294967296},"pools":[{"name":"device_health_metrics","id":1,"stats":{"stored":0,"objects":0,"kb_used":0,"bytes_used":0,"percent_used":0,"max_avail":1735739776}},{"name":"exp1","id":2,"stats":{"stored":8,"objects":1,"kb_used":8,"bytes_used":8192,"percent_used":2.3e-06,"max_avail":1735739776}}]}"#;
        assert_eq!(
            parse_df(df, "exp1").unwrap(),
            PoolSpace {
                stored: 8,
                max_avail: 1735739776
            }
        );
        assert!(matches!(parse_df(df, "nope"), Err(StorageError::Unavailable(_))));
        assert_eq!(parse_pool_size(r#"{"pool":"exp1","pool_id":2,"size":2}"#).unwrap(), 2);
        let du = parse_du(r#"{"images":[{"name":"a","id":"1","provisioned_size":1024,"used_size":0}],"total_provisioned_size":1024,"total_used_size":0}"#).unwrap();
        assert_eq!(du[0].provisioned_size, 1024);
        let info = parse_info(r#"{"name":"a","id":"1","size":16777216,"objects":4,"order":22,"object_size":4194304,"snapshot_count":0,"block_name_prefix":"rbd_data.10a2b3c","format":2,"features":[],"op_features":[],"flags":[]}"#).unwrap();
        assert_eq!(
            objects_for(&info, 0x30000, 5 << 20),
            vec![
                (
                    "rbd_data.10a2b3c.0000000000000000".to_string(),
                    0x30000,
                    (4 << 20) - 0x30000
                ),
                ("rbd_data.10a2b3c.0000000000000001".to_string(), 0, (1 << 20) + 0x30000),
            ]
        );
    }
}
