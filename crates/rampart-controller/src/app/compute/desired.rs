//! The compute section of a node's desired state: every instance placed there (not being
//! deleted), with its images, the project's signature policy and trusted keys, its NICs and
//! its guest configuration.

use std::collections::BTreeMap;

use rampart_api::compute::{
    DesiredImage, DesiredInstance, DesiredPort, GuestDoc, ImageRole, ImageSignatureDoc, NodeCompute, PowerState,
    SignaturePolicy, TrustedKeyDoc,
};
use rampart_compute::image::SIGNATURE_FORMAT;
use rampart_db::compute as db;
use rampart_db::network as netdb;
use uuid::Uuid;

use super::records::{self, InstanceLists};

fn signature_doc(sha256: &str, key_id: Option<&str>, signature: Option<&str>) -> Option<ImageSignatureDoc> {
    Some(ImageSignatureDoc {
        format: SIGNATURE_FORMAT.into(),
        hash_method: "sha256".into(),
        digest: sha256.into(),
        key_type: "ed25519".into(),
        key_id: key_id?.into(),
        signature: signature?.into(),
    })
}

fn desired_image(role: ImageRole, i: &db::ImageRow) -> Option<DesiredImage> {
    let sha = i.sha256.as_deref()?;
    Some(DesiredImage {
        role,
        image_id: i.id,
        sha256: sha.into(),
        size: i.size_bytes.unwrap_or(0).max(0) as u64,
        signature: signature_doc(sha, i.signing_key_id.as_deref(), i.signature.as_deref()),
        // A disk is opened as what it was uploaded and checked as (12.1-1): a qcow2 read as
        // raw would show the guest its container, not its disk.
        format: (role == ImageRole::Disk)
            .then(|| rampart_api::compute::DiskFormat::parse(&i.disk_format))
            .flatten(),
    })
}

/// The compute section of `node`'s document: every instance placed there and not being
/// deleted (a deleted instance is absent, so the node destroys it).
pub async fn node_compute(conn: &mut rampart_db::Conn, node: Uuid) -> rampart_db::Result<NodeCompute> {
    let mut out = NodeCompute::default();
    let mut policies: BTreeMap<Uuid, (SignaturePolicy, Vec<TrustedKeyDoc>)> = BTreeMap::new();
    for inst in db::instances_on_node(conn, node).await? {
        if inst.status == "deleting" {
            continue;
        }
        let Some(image) = db::image_by_id(conn, inst.image_id).await? else {
            continue;
        };
        let Some(flavor) = db::find_flavor(conn, &inst.flavor_id.to_string()).await? else {
            continue;
        };
        let mut images = Vec::new();
        if image.disk_format == "kernel" {
            images.extend(desired_image(ImageRole::Kernel, &image));
            if let Some(rd) = image.ramdisk_image_id
                && let Some(rd) = db::image_by_id(conn, rd).await?
            {
                images.extend(desired_image(ImageRole::Initrd, &rd));
            }
        } else {
            images.extend(desired_image(ImageRole::Disk, &image));
        }
        if let std::collections::btree_map::Entry::Vacant(slot) = policies.entry(inst.project_id) {
            let p = records::policy(conn, inst.project_id).await?;
            let keys = db::trusted_keys(conn, inst.project_id)
                .await?
                .into_iter()
                .map(|(key_id, public_key)| TrustedKeyDoc { key_id, public_key })
                .collect();
            slot.insert((p, keys));
        }
        let (signature_policy, trusted_keys) = policies[&inst.project_id].clone();
        out.instances.push(DesiredInstance {
            id: inst.id,
            ha: inst.ha_priority.is_some(),
            project_id: inst.project_id,
            name: inst.name.clone(),
            power: PowerState::parse(&inst.desired_power).unwrap_or(PowerState::Stopped),
            boot_seq: inst.boot_seq,
            vcpus: flavor.vcpus.max(1) as u32,
            memory_mib: flavor.memory_mib.max(32) as u64,
            images,
            kernel_cmdline_extra: image.kernel_cmdline.clone().unwrap_or_default(),
            signature_policy,
            trusted_keys,
            ports: desired_ports(conn, inst.project_id, inst.id).await?,
            guest: GuestDoc {
                hostname: inst.name.clone(),
                user: inst.login_user.clone(),
                ssh_authorized_keys: InstanceLists::of(&inst).ssh_keys,
                password_hash: inst.password_hash.clone(),
            },
            volumes: crate::app::volumes::desired::instance_attachments(conn, inst.id).await?,
        });
    }
    Ok(out)
}

/// The NICs of an instance for its node: each port's tap (named as the network driver names
/// the port's device) and MAC. The node fills in the VPC namespace, whose name is its own
/// setting.
async fn desired_ports(
    conn: &mut rampart_db::Conn,
    project: Uuid,
    instance: Uuid,
) -> rampart_db::Result<Vec<DesiredPort>> {
    let mut out = Vec::new();
    for (id, _) in db::instance_ports(conn, instance).await? {
        if let Some(p) = netdb::get_port(conn, project, id).await? {
            out.push(DesiredPort {
                port_id: id,
                tap: rampart_net::desired::names::port_dev(&id),
                mac: p.port.mac.to_string(),
                ip: Some(p.port.ip.to_string()),
                netns: None,
            });
        }
    }
    Ok(out)
}
