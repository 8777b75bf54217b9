//! Volumes into running VMs over QMP (`DesiredInstance.volumes`).
//!
//! The volume file is opened by the agent and handed to QEMU as a descriptor (`add-fd` with
//! SCM_RIGHTS, then `filename: /dev/fdset/N`): the confined QEMU (own uid, own mount namespace
//! that shows no pool) never needs a path into the pool, and a `blockdev-add` naming another
//! VM's volume file fails there (11.4). The file is also given to the VM's uid while attached
//! and back to root when detached.
//!
//! What is attached is read back from QEMU itself (`query-named-block-nodes`: the node names
//! of [`NodeNames::for_volume`]), so an agent restart re-adopts the attachments it made.

use std::collections::BTreeSet;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

use rampart_api::storage::DesiredAttachment;
use rampart_common::Sensitive;
use rampart_compute::qmp::{QmpClient, QmpError};
use rampart_storage::render::{self, NodeNames, OpenSpec};
use rampart_storage::{StorageBackend, StorageError};
use serde_json::{Value, json};
use uuid::Uuid;

pub use rampart_compute::qemu::HOTPLUG_PORTS;
/// How long a guest may take to let go of an unplugged disk.
const UNPLUG_WAIT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(transparent)]
    Qmp(#[from] QmpError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("opening the volume file: {0}")]
    Open(#[source] std::io::Error),
    #[error("the VM has no free hot-plug slot (at most {HOTPLUG_PORTS} volumes)")]
    NoSlot,
    #[error("the guest did not release the disk within {0:?}")]
    UnplugTimeout(Duration),
}

impl AttachError {
    pub fn code(&self) -> &'static str {
        match self {
            AttachError::Storage(StorageError::NotFound(_)) => "volume_not_found",
            AttachError::Storage(StorageError::Unavailable(_)) => "storage_unavailable",
            AttachError::NoSlot => "no_hotplug_slot",
            AttachError::UnplugTimeout(_) => "detach_timeout",
            _ => "attach_failed",
        }
    }
}

/// The 16 hex digits that name a volume's QMP objects.
pub fn short_of(volume: Uuid) -> String {
    volume.simple().to_string()[..16].to_string()
}

/// What a VM has: the short ids of its plugged volumes (node and device), of volumes whose
/// plug stopped half-way (nodes without a device: an agent killed mid-attach), and which are
/// throttled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attached {
    pub volumes: BTreeSet<String>,
    pub half: BTreeSet<String>,
    pub throttled: BTreeSet<String>,
}

/// From QEMU's block node names and its user-created device ids (`/machine/peripheral`).
pub fn attached_from(nodes: &[String], devices: &[String]) -> Attached {
    let mut a = Attached::default();
    for n in nodes {
        if let Some(s) = n.strip_prefix("vol-").filter(|s| s.len() == 16) {
            if devices.iter().any(|d| d.strip_prefix("dev-") == Some(s)) {
                a.volumes.insert(s.to_string());
            } else {
                a.half.insert(s.to_string());
            }
        } else if let Some(s) = n.strip_prefix("thr-").filter(|s| s.len() == 16) {
            a.throttled.insert(s.to_string());
        }
    }
    a
}

/// Pure: the desired attachments missing from the VM, and what to unplug: the VM's volumes no
/// longer desired and every half-made plug (it is made again on a later pass).
pub fn diff<'a>(desired: &'a [DesiredAttachment], have: &Attached) -> (Vec<&'a DesiredAttachment>, Vec<String>) {
    let want: BTreeSet<String> = desired.iter().map(|d| short_of(d.volume_id)).collect();
    let plug = desired
        .iter()
        .filter(|d| {
            let s = short_of(d.volume_id);
            !have.volumes.contains(&s) && !have.half.contains(&s)
        })
        .collect();
    let unplug = have
        .volumes
        .iter()
        .filter(|s| !want.contains(*s))
        .chain(&have.half)
        .cloned()
        .collect();
    (plug, unplug)
}

pub async fn attached(qmp: &mut QmpClient) -> Result<Attached, QmpError> {
    let nodes = qmp.block_node_names().await?;
    let devices = qmp
        .execute("qom-list", Some(json!({"path": "/machine/peripheral"})))
        .await?;
    let devices: Vec<String> = devices
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["name"].as_str().map(str::to_string))
        .collect();
    Ok(attached_from(&nodes, &devices))
}

async fn run(qmp: &mut QmpClient, c: &render::QmpCommand) -> Result<Value, QmpError> {
    qmp.execute(c.execute, Some(c.arguments.clone())).await
}

/// Hands an open file to QEMU; the fd set is tagged with the volume's node name so that it
/// can be found and removed on detach.
async fn add_fd(qmp: &mut QmpClient, file: &std::fs::File, opaque: &str) -> Result<u64, AttachError> {
    let r = qmp
        .execute_with_fd("add-fd", Some(json!({"opaque": opaque})), file.as_fd())
        .await?;
    r["fdset-id"]
        .as_u64()
        .ok_or_else(|| AttachError::Qmp(QmpError::Protocol(format!("add-fd answered {r}"))))
}

async fn remove_fdsets(qmp: &mut QmpClient, opaque: &str) {
    let Ok(sets) = qmp.execute("query-fdsets", None).await else {
        return;
    };
    for set in sets.as_array().into_iter().flatten() {
        let tagged = set["fds"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|f| f["opaque"].as_str() == Some(opaque));
        if tagged && let Some(id) = set["fdset-id"].as_u64() {
            let _ = qmp.execute("remove-fd", Some(json!({"fdset-id": id}))).await;
        }
    }
}

/// Plugs one volume into a VM whose QEMU answers on `qmp` and runs as `uid`. `bus`: the
/// VM's hot-plug ports (q35), tried in turn; empty: the machine's own bus. On any failure what
/// was added is removed again.
pub async fn attach(
    qmp: &mut QmpClient,
    backend: &dyn StorageBackend,
    a: &DesiredAttachment,
    uid: u32,
    passphrase: Option<&Sensitive>,
    buses: &[String],
) -> Result<(), AttachError> {
    let names = NodeNames::for_volume(a.volume_id, !a.qos.is_unlimited());
    let open = backend.open(a.volume_id, a.read_only)?;
    backend.set_owner(a.volume_id, uid, uid)?;
    // O_DIRECT: the nodes are `cache.direct`, and QEMU only takes an fd-set member whose
    // flags match what it would have opened.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(!a.read_only)
        .custom_flags(nix::libc::O_CLOEXEC | nix::libc::O_NOFOLLOW | nix::libc::O_DIRECT)
        .open(&open.path)
        .map_err(AttachError::Open)?;
    let fdset = add_fd(qmp, &file, &names.format).await?;
    drop(file);
    let result = plug(qmp, &names, &open, fdset, a, passphrase, buses).await;
    if result.is_err() {
        unplug_objects(qmp, &names, !a.qos.is_unlimited()).await;
        remove_fdsets(qmp, &names.format).await;
        let _ = backend.set_owner(a.volume_id, 0, 0);
    }
    result
}

async fn plug(
    qmp: &mut QmpClient,
    names: &NodeNames,
    open: &OpenSpec,
    fdset: u64,
    a: &DesiredAttachment,
    passphrase: Option<&Sensitive>,
    buses: &[String],
) -> Result<(), AttachError> {
    if let Some(p) = passphrase {
        let cmd = render::secret_object_add(names, p);
        let v: Value = serde_json::from_str(cmd.expose()).expect("rendered JSON");
        // QEMU's error text never echoes the secret's data; ours carries only the command name.
        qmp.execute("object-add", Some(v["arguments"].clone())).await?;
    }
    let open = OpenSpec {
        path: format!("/dev/fdset/{fdset}"),
        ..open.clone()
    };
    let cmds = render::attach_commands(names, &open, &a.qos, None);
    let (device, nodes) = cmds.split_last().expect("attach ends with device_add");
    for c in nodes {
        run(qmp, c).await?;
    }
    if buses.is_empty() {
        run(qmp, device).await?;
        return Ok(());
    }
    for bus in buses {
        let c = render::device_add(names, Some(bus));
        match run(qmp, &c).await {
            Ok(_) => return Ok(()),
            // Taken by another volume: the next port.
            Err(QmpError::Command { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(AttachError::NoSlot)
}

/// Removes the block nodes and objects (after the device is gone); errors are ignored: a
/// node never added cannot be removed.
async fn unplug_objects(qmp: &mut QmpClient, names: &NodeNames, throttled: bool) {
    for c in render::detach_commands(names, throttled).iter().skip(1) {
        let _ = run(qmp, c).await;
    }
}

/// Unplugs a volume by its short id: the device (the guest lets go: `DEVICE_DELETED`), then
/// its nodes, objects and fd set.
pub async fn detach(qmp: &mut QmpClient, short: &str, throttled: bool) -> Result<(), AttachError> {
    let names = NodeNames::for_short(short, throttled);
    match qmp.execute("device_del", Some(json!({"id": names.device}))).await {
        Ok(_) => {
            let deadline = tokio::time::Instant::now() + UNPLUG_WAIT;
            loop {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match qmp.wait_event("DEVICE_DELETED", left).await? {
                    Some(e) if e.data["device"].as_str() == Some(names.device.as_str()) => break,
                    Some(_) => continue,
                    None => return Err(AttachError::UnplugTimeout(UNPLUG_WAIT)),
                }
            }
        }
        // No such device (a plug that stopped half-way): only the nodes are left.
        Err(QmpError::Command { class, .. }) if class == "DeviceNotFound" => {}
        Err(e) => return Err(e.into()),
    }
    unplug_objects(qmp, &names, throttled).await;
    remove_fdsets(qmp, &names.format).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_12_3_2_2_attachments_are_diffed_by_the_names_qemu_reports() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let want = |id| DesiredAttachment {
            volume_id: id,
            read_only: false,
            encrypted: true,
            qos: Default::default(),
        };
        let c = Uuid::new_v4();
        let nodes = vec![
            "root".to_string(),
            "cidata".into(),
            format!("vol-{}", short_of(b)),
            format!("thr-{}", short_of(b)),
            "vol-0123456789abcdef".into(),
            // A plug cut before its device_add.
            format!("vol-{}", short_of(c)),
        ];
        let devices = vec![
            "hp0".to_string(),
            format!("dev-{}", short_of(b)),
            "dev-0123456789abcdef".into(),
        ];
        let have = attached_from(&nodes, &devices);
        assert!(have.throttled.contains(&short_of(b)));
        assert_eq!(have.half, BTreeSet::from([short_of(c)]));
        let desired = [want(a), want(b), want(c)];
        let (plug, unplug) = diff(&desired, &have);
        assert_eq!(
            plug,
            vec![&desired[0]],
            "c is cleaned up first, plugged on a later pass"
        );
        let mut unplug = unplug;
        unplug.sort();
        let mut expect = vec!["0123456789abcdef".to_string(), short_of(c)];
        expect.sort();
        assert_eq!(unplug, expect);
        // The names found again are the ones the attach used.
        assert_eq!(NodeNames::for_short(&short_of(b), true), NodeNames::for_volume(b, true));
        assert_eq!(
            NodeNames::for_short(&short_of(a), false),
            NodeNames::for_volume(a, false)
        );
    }
}
