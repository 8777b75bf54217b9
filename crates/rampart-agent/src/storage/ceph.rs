//! The node's Ceph backend (`rampart agent --ceph-config FILE`): the `[ceph]` section of that
//! file, the startup checks that refuse a node whose storage plane is wrong (10.1), and the
//! backend under `<data dir>/ceph`.
//!
//! ```toml
//! [ceph]
//! monitors = ["10.1.0.11:3300", "10.1.0.12:3300", "10.1.0.13:3300"]
//! pool = "rampart-volumes"
//! client_id = "rampart-node-1"
//! keyring = "/etc/rampart/ceph/client.rampart-node-1.keyring"
//! storage_network = "10.1.0.0/24"
//! storage_address = "10.1.0.21"
//! storage_interface = "stor0"
//! ```

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

pub use rampart_storage::ceph_conf::CephSettings;
use rampart_storage::{CephBackend, CephConfig, StorageBackend};
use serde::Deserialize;

/// The agent's Ceph configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CephFile {
    pub ceph: CephSettings,
}

/// The addresses `ip -j addr show dev IF` lists.
pub fn addresses_in(ip_json: &str) -> Vec<IpAddr> {
    let v: serde_json::Value = serde_json::from_str(ip_json).unwrap_or_default();
    v.as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a["local"].as_str().and_then(|s| s.parse().ok()))
        .collect()
}

/// `(dev, prefsrc)` of `ip -j route get IP`: the interface and source address the kernel
/// uses for a connection to that address.
pub fn route_in(ip_json: &str) -> Option<(String, Option<IpAddr>)> {
    let v: serde_json::Value = serde_json::from_str(ip_json).ok()?;
    let r = v.as_array()?.first()?;
    Some((
        r["dev"].as_str()?.to_string(),
        r["prefsrc"].as_str().and_then(|s| s.parse().ok()),
    ))
}

fn ip(args: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    rampart_storage::proc::run(cmd, None, Duration::from_secs(10))
        .map(|o| o.stdout)
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))
}

/// The startup check of the storage interface: it holds the storage address, and the kernel
/// routes every monitor through it from that address (Ceph clients do not bind their sockets:
/// the route is what keeps their traffic on the storage plane).
fn check_interface(ifname: &str, address: IpAddr, monitors: &[std::net::SocketAddr]) -> Result<(), String> {
    let out = ip(&["-j", "addr", "show", "dev", ifname]).map_err(|e| format!("storage interface {ifname}: {e}"))?;
    if !addresses_in(&out).contains(&address) {
        return Err(format!(
            "the storage address {address} is not on the storage interface {ifname}"
        ));
    }
    for m in monitors {
        let route = route_in(&ip(&["-j", "route", "get", &m.ip().to_string()])?);
        match route {
            Some((dev, src)) if dev == ifname && src.is_none_or(|s| s == address) => {}
            other => {
                return Err(format!(
                    "ceph monitor {m} is not routed through the storage interface {ifname} from {address} \
                     (the kernel would use {other:?})"
                ));
            }
        }
    }
    Ok(())
}

/// The backend, or the reason the agent must not start (a monitor outside the storage
/// network, an address not on the storage interface, a bad name).
pub fn open(settings: CephSettings, data_dir: &Path) -> Result<Arc<dyn StorageBackend>, String> {
    settings.validate().map_err(|e| e.to_string())?;
    if let Some(ifname) = &settings.storage_interface {
        check_interface(ifname, settings.storage_address, &settings.monitors)?;
    }
    let backend = CephBackend::open(CephConfig::new(settings, data_dir.join("ceph"))).map_err(|e| e.to_string())?;
    Ok(Arc::new(backend))
}

/// Reads and checks `--ceph-config FILE` (TOML text already read by the caller).
pub fn parse(text: &str) -> Result<CephSettings, String> {
    let f: CephFile = toml_like(text)?;
    f.ceph.validate().map_err(|e| e.to_string())?;
    Ok(f.ceph)
}

fn toml_like(text: &str) -> Result<CephFile, String> {
    // JSON is accepted as well as the binary's TOML (the binary parses TOML itself and hands
    // the value over as JSON).
    serde_json::from_str(text).map_err(|e| format!("ceph configuration: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_10_1_the_agent_refuses_a_monitor_outside_the_storage_network() {
        let ok = r#"{"ceph":{"monitors":["10.1.0.11:3300"],"pool":"v","client_id":"n1","keyring":"/k","storage_network":"10.1.0.0/24","storage_address":"10.1.0.21"}}"#;
        assert_eq!(parse(ok).unwrap().pool, "v");
        let bad = ok.replace("10.1.0.11:3300", "10.9.0.11:3300");
        let e = parse(&bad).unwrap_err();
        assert!(
            e.contains("ceph monitor 10.9.0.11:3300 is outside the storage network 10.1.0.0/24"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let s: CephFile = serde_json::from_str(&bad).unwrap();
        assert!(open(s.ceph, dir.path()).is_err());
        assert!(
            !dir.path().join("ceph").exists(),
            "nothing made for a refused configuration"
        );
        assert!(
            parse(&ok.replace("\"pool\"", "\"pooll\"")).is_err(),
            "unknown fields are refused"
        );
    }

    #[test]
    fn spec_10_1_the_storage_interface_must_hold_the_address_and_route_the_monitors() {
        let json = r#"[{"ifindex":1,"ifname":"lo","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8},{"family":"inet6","local":"::1","prefixlen":128}]}]"#;
        assert_eq!(
            addresses_in(json),
            vec!["127.0.0.1".parse::<IpAddr>().unwrap(), "::1".parse().unwrap()]
        );
        assert!(addresses_in("not json").is_empty());
        let mon: Vec<std::net::SocketAddr> = vec!["127.0.0.1:3300".parse().unwrap()];
        assert!(check_interface("lo", "127.0.0.1".parse().unwrap(), &mon).is_ok());
        let e = check_interface("lo", "10.1.0.21".parse().unwrap(), &mon).unwrap_err();
        assert!(e.contains("not on the storage interface lo"), "{e}");
        // A monitor the kernel reaches through another interface is refused.
        let far: Vec<std::net::SocketAddr> = vec!["192.0.2.77:3300".parse().unwrap()];
        if let Err(e) = check_interface("lo", "127.0.0.1".parse().unwrap(), &far) {
            assert!(
                e.contains("is not routed through the storage interface lo") || e.contains("ip -j route"),
                "{e}"
            );
        } else {
            panic!("a monitor routed elsewhere passed");
        }
        assert_eq!(
            route_in(r#"[{"dst":"10.1.0.5","gateway":"192.0.2.1","dev":"eth0","prefsrc":"192.0.2.2","flags":[]}]"#),
            Some(("eth0".to_string(), Some("192.0.2.2".parse().unwrap())))
        );
        assert_eq!(route_in("[]"), None);
    }
}
