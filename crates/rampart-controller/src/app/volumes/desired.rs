//! The storage section of a node's document: the volumes placed there that still hold data
//! (`present` while in service, `wiped` from the deletion request until the verified wipe is
//! in), and the attachments of each instance. No passphrase is ever here: a node asks for it
//! (`POST /agent/v1/volumes/{id}/passphrase`).

use rampart_api::storage::{
    DesiredAttachment, DesiredPresence, DesiredSnapshot, DesiredVolume, NodeStorage, Qos, VolumeSource,
};
use rampart_db::compute as cdb;
use rampart_db::volume_snapshots as sdb;
use rampart_db::volumes::{self as db, VolumeRow};
use rampart_storage::validate::GIB;
use rampart_storage::{VolumeErrorCode, VolumeStatus};
use uuid::Uuid;

/// What the node must do with a volume in `status` (`error_code` for `error`).
pub fn presence(status: VolumeStatus, error_code: Option<&str>) -> DesiredPresence {
    let wipe_failed = serde_json::to_value(VolumeErrorCode::WipeUnverified)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string));
    match status {
        VolumeStatus::Deleting | VolumeStatus::Wiping | VolumeStatus::Deleted => DesiredPresence::Wiped,
        // A wipe that could not be verified is tried again, never given back to service.
        VolumeStatus::Error if error_code.is_some() && error_code.map(str::to_string) == wipe_failed => {
            DesiredPresence::Wiped
        }
        _ => DesiredPresence::Present,
    }
}

async fn source(conn: &mut rampart_db::Conn, v: &VolumeRow) -> rampart_db::Result<Option<VolumeSource>> {
    if let Some(s) = v.source_snapshot {
        return Ok(Some(VolumeSource::Snapshot { snapshot_id: s }));
    }
    let Some(id) = v.source_image else {
        return Ok(None);
    };
    let Some(image) = cdb::image_by_id(conn, id).await? else {
        return Ok(None);
    };
    Ok(image.sha256.map(|sha256| VolumeSource::Image {
        image_id: image.id,
        sha256,
        size: image.size_bytes.unwrap_or(0).max(0) as u64,
        format: image.disk_format.clone(),
    }))
}

/// The volumes `node` must hold.
pub async fn node_storage(conn: &mut rampart_db::Conn, node: Uuid) -> rampart_db::Result<NodeStorage> {
    let mut out = NodeStorage::default();
    for v in db::volumes_on_node(conn, node).await? {
        let status = super::status_of(&v);
        let presence = presence(status, v.error_code.as_deref());
        // Only a volume still being created needs its first bytes.
        let source = if status == VolumeStatus::Creating {
            source(conn, &v).await?
        } else {
            None
        };
        out.volumes.push(DesiredVolume {
            id: v.id,
            project_id: v.project_id,
            size_bytes: (v.size_gib.max(0) as u64).saturating_mul(GIB),
            encrypted: v.encrypted,
            presence,
            source,
            requested_by: (presence == DesiredPresence::Wiped)
                .then(|| v.requested_by.clone())
                .flatten(),
        });
    }
    // Snapshots follow the same presence rule: `present` while in service, `wiped` from the
    // deletion request until the verified wipe is in.
    for snap in sdb::on_node(conn, node).await? {
        let status = VolumeStatus::ALL
            .into_iter()
            .find(|s| s.as_str() == snap.status)
            .unwrap_or(VolumeStatus::Error);
        let presence = presence(status, snap.error_code.as_deref());
        out.snapshots.push(DesiredSnapshot {
            id: snap.id,
            volume_id: snap.volume_id,
            project_id: snap.project_id,
            presence,
            requested_by: (presence == DesiredPresence::Wiped)
                .then(|| snap.requested_by.clone())
                .flatten(),
        });
    }
    Ok(out)
}

/// The volumes attached to `instance`, for its entry in the node's document.
pub async fn instance_attachments(
    conn: &mut rampart_db::Conn,
    instance: Uuid,
) -> rampart_db::Result<Vec<DesiredAttachment>> {
    let mut out = Vec::new();
    for a in db::attachments_of_instance(conn, instance).await? {
        let Some(v) = db::volume_by_id(conn, a.volume_id).await? else {
            continue;
        };
        out.push(DesiredAttachment {
            volume_id: v.id,
            read_only: a.read_only,
            encrypted: v.encrypted,
            qos: serde_json::from_str::<Qos>(&v.qos).unwrap_or_default(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_12_3_4_3_a_volume_is_wiped_from_the_deletion_request_on_and_never_revived() {
        assert_eq!(presence(VolumeStatus::Creating, None), DesiredPresence::Present);
        assert_eq!(presence(VolumeStatus::InUse, None), DesiredPresence::Present);
        assert_eq!(presence(VolumeStatus::Deleting, None), DesiredPresence::Wiped);
        assert_eq!(presence(VolumeStatus::Wiping, None), DesiredPresence::Wiped);
        assert_eq!(
            presence(VolumeStatus::Error, Some("wipe_unverified")),
            DesiredPresence::Wiped
        );
        assert_eq!(
            presence(VolumeStatus::Error, Some("create_failed")),
            DesiredPresence::Present
        );
    }
}
