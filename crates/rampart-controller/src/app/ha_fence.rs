//! Storage fencing of a lost node (spec 14.1-3): before a protected instance restarts on
//! another node, the lost node must no longer be able to write the shared volumes it had
//! open, even if its agent failed to kill its VMs (a hung kernel, a wedged agent).
//!
//! Node-local volumes need no fence: they never move (their instance is `not_recoverable`).
//! Shared volumes on Ceph are fenced with `ceph osd blocklist add <addr>` for every address of
//! the node, which makes the OSDs refuse that client until the entry expires.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use futures::future::BoxFuture;
use uuid::Uuid;

use crate::state::AppState;

/// A way to cut a lost node off shared storage; idempotent (the recovery retries it).
pub trait StorageFence: Send + Sync {
    fn name(&self) -> &'static str;
    fn fence<'a>(&'a self, node: Uuid, node_name: &'a str) -> BoxFuture<'a, Result<(), String>>;
}

/// The node-local backend: nothing shared, nothing to cut.
pub struct LocalFence;

impl StorageFence for LocalFence {
    fn name(&self) -> &'static str {
        "local"
    }

    fn fence<'a>(&'a self, _node: Uuid, _node_name: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

/// Ceph through its CLI: blocklists the node's client addresses.
pub struct CephBlocklist {
    pub ceph: PathBuf,
    /// `--conf` (default: the CLI's own default).
    pub conf: Option<PathBuf>,
    /// `--id` of a client allowed to change the OSD map.
    pub client_id: Option<String>,
    /// How long the entry lasts; longer than any partition a node can come back from without
    /// its agent having learnt that its instances moved.
    pub expire: Duration,
    /// The node's addresses as the Ceph cluster sees them.
    pub addresses: fn(Uuid) -> BoxFuture<'static, Vec<IpAddr>>,
}

/// `ceph osd blocklist add <addr> <expire>` with the connection options (no shell).
pub fn blocklist_args(
    conf: Option<&std::path::Path>,
    client_id: Option<&str>,
    addr: IpAddr,
    expire: Duration,
) -> Vec<String> {
    let mut args = Vec::new();
    if let Some(c) = conf {
        args.extend(["--conf".to_string(), c.display().to_string()]);
    }
    if let Some(id) = client_id {
        args.extend(["--id".to_string(), id.to_string()]);
    }
    args.extend([
        "osd".into(),
        "blocklist".into(),
        "add".into(),
        // Every client instance of that address (`addr:0/0` would be one nonce only).
        match addr {
            IpAddr::V4(a) => format!("{a}:0/0"),
            IpAddr::V6(a) => format!("[{a}]:0/0"),
        },
        expire.as_secs().max(1).to_string(),
    ]);
    args
}

impl StorageFence for CephBlocklist {
    fn name(&self) -> &'static str {
        "ceph"
    }

    fn fence<'a>(&'a self, node: Uuid, node_name: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let addresses = (self.addresses)(node).await;
            if addresses.is_empty() {
                return Err(format!("no address of node {node_name} is known to blocklist"));
            }
            for addr in addresses {
                let args = blocklist_args(self.conf.as_deref(), self.client_id.as_deref(), addr, self.expire);
                let out = tokio::time::timeout(
                    Duration::from_secs(30),
                    tokio::process::Command::new(&self.ceph)
                        .args(&args)
                        .kill_on_drop(true)
                        .output(),
                )
                .await
                .map_err(|_| "ceph osd blocklist add timed out".to_string())?
                .map_err(|e| format!("cannot run {}: {e}", self.ceph.display()))?;
                if !out.status.success() {
                    return Err(format!(
                        "ceph osd blocklist add {addr} failed ({}): {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
                tracing::warn!(node = %node, name = node_name, %addr, "node blocklisted on the Ceph cluster");
            }
            Ok(())
        })
    }
}

/// The fences applied to a lost node before its protected instances restart elsewhere. Only
/// the node-local backend is configured today; the Ceph backend adds its blocklist here.
pub fn fences(_state: &AppState) -> Vec<Box<dyn StorageFence>> {
    vec![Box::new(LocalFence)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_14_1_3_ceph_fence_blocklists_every_client_of_the_node_address() {
        let args = blocklist_args(
            Some(std::path::Path::new("/etc/ceph/ceph.conf")),
            Some("rampart"),
            "10.0.0.7".parse().unwrap(),
            Duration::from_secs(3600),
        );
        assert_eq!(
            args.join(" "),
            "--conf /etc/ceph/ceph.conf --id rampart osd blocklist add 10.0.0.7:0/0 3600"
        );
        let v6 = blocklist_args(None, None, "fd00::7".parse().unwrap(), Duration::ZERO);
        assert_eq!(v6.join(" "), "osd blocklist add [fd00::7]:0/0 1");
    }
}
