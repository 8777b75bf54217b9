//! A volume's life through the API: create (validated, within quota, placed on the node whose
//! pool has the most room, its passphrase wrapped by the project's key, published to that
//! node, all in one transaction), list, show, extend (grow only), delete (`deleting`: the node
//! wipes it, see [`super::report`]) and the wipe report once it is gone.

use rampart_api::List;
use rampart_api::storage::{PoolReport, Volume, VolumeCreate, VolumeExtend, WipeReport};
use rampart_common::page::{PageParams, finish_page};
use rampart_common::{Error, names};
use rampart_db::compute as cdb;
use rampart_db::volumes::{self as db, VolumeRow};
use rampart_iam::authz::action;
use rampart_storage::validate::{self, GIB, VolumeQuota, VolumeUsage};
use rampart_storage::{Event, VolumeStatus};
use uuid::Uuid;

use super::{catalog, passphrase, snapshots, view};
use crate::auth::Principal;
use crate::state::AppState;

use crate::audit::operations::Operation;

/// Where a new volume of `needed` bytes goes: the pool with the most free bytes among `pools`
/// (reported by reachable nodes), `local` or `ceph`; an unencrypted volume only on a `local`
/// pool (a Ceph backend keeps encrypted volumes only: a removed RADOS object is freed, not
/// overwritten, so only the crypto-erase protects it). None reporting: 503
/// `storage_unavailable`; none with room: 507 `insufficient_storage`.
pub fn place(pools: &[(Uuid, PoolReport)], needed: u64, encrypted: bool) -> Result<(Uuid, String), Error> {
    let usable: Vec<&(Uuid, PoolReport)> = pools
        .iter()
        .filter(|(_, p)| p.health != rampart_api::storage::PoolHealthState::Unavailable)
        .filter(|(_, p)| p.backend == "local" || (encrypted && p.backend == "ceph"))
        .collect();
    let Some(best) = usable
        .iter()
        .max_by_key(|(id, p)| (p.free_bytes, std::cmp::Reverse(*id)))
    else {
        return Err(validate::storage_unavailable(
            "no ready node reports a storage pool that can hold this volume",
        ));
    };
    if best.1.free_bytes < needed {
        return Err(validate::insufficient_storage(needed, best.1.free_bytes));
    }
    Ok((best.0, best.1.backend.clone()))
}

/// The node for a copy of a snapshot: the snapshot's own node (a local snapshot is a file in
/// its pool), if it is ready and has room.
pub fn place_with(
    pools: &[(Uuid, PoolReport)],
    node: Option<Uuid>,
    needed: u64,
    encrypted: bool,
) -> Result<(Uuid, String), Error> {
    let Some(node) = node else {
        return Err(validate::storage_unavailable("the snapshot has no node"));
    };
    let mine: Vec<(Uuid, PoolReport)> = pools.iter().filter(|(n, _)| *n == node).cloned().collect();
    place(&mine, needed, encrypted).map_err(|e| {
        if e.code() == "storage_unavailable" {
            validate::storage_unavailable("the node holding the snapshot is not ready")
        } else {
            e
        }
    })
}

async fn ready_pools(conn: &mut rampart_db::Conn) -> Result<Vec<(Uuid, PoolReport)>, Error> {
    Ok(db::pools(conn)
        .await?
        .into_iter()
        .filter(|(_, _, state, _)| state == "ready")
        .filter_map(|(node, _, _, report)| serde_json::from_str(&report).ok().map(|r| (node, r)))
        .collect())
}

/// The project's volume limits in force: its own (`PUT /v1/projects/{p}/quotas`) over the
/// configured `[quotas]` defaults.
async fn quota(state: &AppState, conn: &mut rampart_db::Conn, project: Uuid) -> Result<VolumeQuota, Error> {
    let limits = rampart_db::quotas::overrides(conn, project)
        .await?
        .effective(&state.config.quotas);
    Ok(VolumeQuota {
        volumes: limits.volumes,
        gib: u64::from(limits.volume_gib),
        ..VolumeQuota::default()
    })
}

async fn usage(conn: &mut rampart_db::Conn, project: Uuid) -> Result<VolumeUsage, Error> {
    let (volumes, gib) = db::usage(conn, project).await?;
    Ok(VolumeUsage {
        volumes,
        gib,
        snapshots: 0,
    })
}

/// The image a volume starts from: active, a disk (not a kernel or initrd), and no larger than
/// the volume.
async fn source_image(
    conn: &mut rampart_db::Conn,
    project: Uuid,
    key: &str,
    size_gib: u64,
) -> Result<cdb::ImageRow, Error> {
    let image = cdb::find_image(conn, project, key)
        .await?
        .ok_or_else(|| Error::field("image", "no image of that id or name in this project"))?;
    if image.status != "active" || image.sha256.is_none() {
        return Err(Error::field(
            "image",
            format!("the image is {}, not active", image.status),
        ));
    }
    if !matches!(image.disk_format.as_str(), "raw" | "qcow2") {
        return Err(Error::field(
            "image",
            "only raw and qcow2 disk images can fill a volume",
        ));
    }
    let bytes = image.size_bytes.unwrap_or(0).max(0) as u64;
    if image.disk_format == "raw" && bytes > size_gib * GIB {
        return Err(Error::field(
            "size_gib",
            format!(
                "the image holds {} MiB: the volume must be at least that large",
                bytes.div_ceil(1 << 20)
            ),
        ));
    }
    Ok(image)
}

pub const CREATE: Operation = Operation::new("volume.create", "volume");

/// Create a volume.
pub async fn create(
    state: &AppState,
    principal: &Principal,
    project: Uuid,
    req: VolumeCreate,
) -> Result<Volume, Error> {
    let p = principal.project(state, project, action::PROJECT_WRITE).await?;
    names::validate_name("name", &req.name)?;
    let bytes = validate::validate_size(req.size_gib, validate::MAX_SIZE_GIB)?;
    if req.image.is_some() && req.snapshot.is_some() {
        return Err(Error::field("snapshot", "give an image or a snapshot, not both"));
    }
    let (vtype, image, snapshot) = {
        let mut conn = state.db.conn().await?;
        let snapshot = match &req.snapshot {
            Some(k) => Some(snapshots::source(&mut conn, project, k, req.size_gib).await?),
            None => None,
        };
        // A copy of a snapshot keeps its encryption: without a type named, the snapshot's
        // volume's type (if it still exists) is the default.
        let type_name = match (&req.volume_type, &snapshot) {
            (Some(t), _) => Some(t.clone()),
            (None, Some((_, v))) => catalog::resolve_type(&mut conn, Some(&v.volume_type))
                .await
                .ok()
                .map(|t| t.name),
            (None, None) => None,
        };
        let vtype = catalog::resolve_type(&mut conn, type_name.as_deref()).await?;
        if let Some((_, v)) = &snapshot
            && v.encrypted != vtype.encrypted
        {
            return Err(Error::field(
                "volume_type",
                "a volume from a snapshot keeps the snapshot's encryption: choose a type that matches it",
            ));
        }
        validate::check_encryption_policy(vtype.encrypted, db::allow_unencrypted(&mut conn, project).await?)?;
        let image = match &req.image {
            Some(k) => Some(source_image(&mut conn, project, k, req.size_gib).await?),
            None => None,
        };
        validate::check_create_quota(
            &quota(state, &mut conn, project).await?,
            &usage(&mut conn, project).await?,
            req.size_gib,
        )?;
        match &snapshot {
            Some((s, _)) => place_with(&ready_pools(&mut conn).await?, s.node_id, bytes, vtype.encrypted)?,
            None => place(&ready_pools(&mut conn).await?, bytes, vtype.encrypted)?,
        };
        (vtype, image, snapshot)
    };
    let id = Uuid::new_v4();
    // The HSM is asked outside the transaction; a refused request below leaves only an unused
    // wrapped key behind, never a volume.
    let (kms_key_id, wrapped_key) = match (&snapshot, vtype.encrypted) {
        (_, false) => (None, None),
        (Some((_, source)), true) => {
            // The copy opens with the snapshot's passphrase, wrapped anew for this volume.
            let named = match req.kms_key.as_deref() {
                Some(k) => Some(passphrase::wrapping_key(state, principal, project, p.domain_id, Some(k)).await?),
                None => None,
            };
            let (key_id, wrapped) = passphrase::rewrap_for_copy(state, source, named, id).await?;
            (Some(key_id), Some(wrapped))
        }
        (None, true) => {
            let key = passphrase::wrapping_key(state, principal, project, p.domain_id, req.kms_key.as_deref()).await?;
            let key_id = key.id;
            (
                Some(key_id),
                Some(passphrase::new_wrapped(state, key, id, project).await?),
            )
        }
    };
    let now = state.now();
    let mut tx = state.db.begin().await?;
    validate::check_create_quota(
        &quota(state, &mut tx, project).await?,
        &usage(&mut tx, project).await?,
        req.size_gib,
    )?;
    let (node, backend) = match &snapshot {
        Some((s, _)) => {
            // Re-read: the snapshot must still be there when the volume is.
            snapshots::source(&mut tx, project, &s.id.to_string(), req.size_gib).await?;
            place_with(&ready_pools(&mut tx).await?, s.node_id, bytes, vtype.encrypted)?
        }
        None => place(&ready_pools(&mut tx).await?, bytes, vtype.encrypted)?,
    };
    let row = VolumeRow {
        id,
        project_id: project,
        name: req.name.clone(),
        size_gib: req.size_gib as i64,
        status: VolumeStatus::Creating.as_str().into(),
        error_code: None,
        error_message: None,
        volume_type: vtype.name.clone(),
        encrypted: vtype.encrypted,
        multi_attach: vtype.multi_attach,
        qos: vtype.qos.clone(),
        backend,
        node_id: Some(node),
        source_image: image.as_ref().map(|i| i.id),
        source_snapshot: snapshot.as_ref().map(|(s, _)| s.id),
        kms_key_id,
        wrapped_key,
        requested_by: None,
        wipe_report: None,
        progress: None,
        created_at: now,
        updated_at: now,
    };
    db::insert_volume(&mut tx, &row).await?;
    crate::publish::node(&state.config, &mut tx, node).await?;
    let out = view(&mut tx, row).await?;
    rampart_db::Db::commit(tx).await?;
    state.notify_node_changes();
    crate::audit::note_detail("node", node.to_string());
    crate::audit::note_detail("encrypted", out.encrypted);
    tracing::info!(volume = %id, name = %out.name, %project, %node, size_gib = out.size_gib, by = %principal.user.name, "volume created");
    Ok(out)
}

pub const LIST: Operation = Operation::new("volume.list", "volume");

/// The project's volumes the caller may read, by name.
pub async fn list(
    state: &AppState,
    principal: &Principal,
    project: Uuid,
    page: &PageParams,
) -> Result<List<Volume>, Error> {
    let p = principal.project(state, project, action::PROJECT_READ).await?;
    let page = page.validate()?;
    let mut conn = state.db.conn().await?;
    let rows = db::list_volumes(&mut conn, project, page.after.as_deref(), page.limit + 1).await?;
    let (rows, next) = finish_page(rows, page.limit, |v| v.name.clone());
    let mut items = Vec::new();
    for row in rows {
        let t = super::target(&mut conn, principal, &row, p.domain_id).await?;
        if principal.can(state, action::VOLUME_READ, t) {
            items.push(view(&mut conn, row).await?);
        }
    }
    Ok(List { items, next })
}

pub const GET: Operation = Operation::new("volume.get", "volume").target("id");

pub async fn get(state: &AppState, principal: &Principal, project: Uuid, key: &str) -> Result<Volume, Error> {
    let row = super::volume(state, principal, project, key, action::VOLUME_READ).await?;
    let mut conn = state.db.conn().await?;
    view(&mut conn, row).await
}

pub const EXTEND: Operation = Operation::new("volume.extend", "volume").target("id");

/// Grow a volume that is `available` (its node grows the file). An attached volume is refused
/// with 409 `volume_in_use`: its node grows files with `qemu-img`, which cannot take the lock
/// a running QEMU holds, and live growth (QMP `block_resize`) is not built yet.
pub async fn extend(
    state: &AppState,
    principal: &Principal,
    project: Uuid,
    key: &str,
    req: VolumeExtend,
) -> Result<Volume, Error> {
    let row = super::volume(state, principal, project, key, action::VOLUME_EXTEND).await?;
    let mut tx = state.db.begin().await?;
    let row = db::volume_by_id(&mut tx, row.id)
        .await?
        .ok_or_else(|| Error::not_found("no such volume"))?;
    let status = super::status_of(&row);
    if status == VolumeStatus::InUse {
        return Err(Error::coded(
            http::StatusCode::CONFLICT,
            "volume_in_use",
            "the volume is attached; detach it to grow it (live growth is not supported yet)",
        ));
    }
    if status != VolumeStatus::Available {
        return Err(Error::conflict(format!(
            "the volume is {status}; only an available volume grows"
        )));
    }
    snapshots::check_not_being_copied(&mut tx, row.id).await?;
    let current = row.size_gib.max(0) as u64;
    validate::validate_extend(current, req.size_gib, validate::MAX_SIZE_GIB)?;
    let q = quota(state, &mut tx, project).await?;
    validate::check_extend_quota(&q, &usage(&mut tx, project).await?, req.size_gib - current)?;
    db::set_size(&mut tx, row.id, req.size_gib as i64, state.now()).await?;
    let out = commit_and_publish(state, tx, row.id, row.node_id).await?;
    crate::audit::note_detail("size_gib", req.size_gib);
    tracing::info!(volume = %row.id, from = current, to = req.size_gib, by = %principal.user.name, "volume extended");
    Ok(out)
}

pub const DELETE: Operation = Operation::new("volume.delete", "volume").target("id");

/// Ask for a volume's deletion: 409 `volume_in_use` while attached. It goes `deleting`, its
/// node wipes it and reports a verified wipe, and only then is it `deleted` (12.3.4).
pub async fn delete(state: &AppState, principal: &Principal, project: Uuid, key: &str) -> Result<Volume, Error> {
    let row = super::volume(state, principal, project, key, action::VOLUME_DELETE).await?;
    let mut tx = state.db.begin().await?;
    let row = db::volume_by_id(&mut tx, row.id)
        .await?
        .ok_or_else(|| Error::not_found("no such volume"))?;
    let (to, _) = super::next(&row, Event::DeleteRequested)?;
    snapshots::check_no_snapshots(&mut tx, row.id).await?;
    let now = state.now();
    db::set_status(&mut tx, row.id, to.as_str(), None, now).await?;
    db::set_requested_by(&mut tx, row.id, &super::who(principal)).await?;
    let out = commit_and_publish(state, tx, row.id, row.node_id).await?;
    tracing::info!(volume = %row.id, by = %principal.user.name, "volume deletion requested; its node wipes it");
    Ok(out)
}

pub const WIPE_REPORT: Operation = Operation::new("volume.wipe_report.get", "volume").target("id");

/// The verified wipe report of a deleted volume (12.3.4-1), served after deletion.
pub async fn wipe_report(
    state: &AppState,
    principal: &Principal,
    project: Uuid,
    key: &str,
) -> Result<WipeReport, Error> {
    let row = super::volume(state, principal, project, key, action::VOLUME_READ).await?;
    let Some(json) = row.wipe_report else {
        return Err(Error::not_found(format!(
            "the volume has no wipe report: it is {} (a report exists once it is deleted)",
            row.status
        )));
    };
    serde_json::from_str(&json).map_err(|e| Error::internal("reading a wipe report", e))
}

/// A project that still holds volumes or snapshots (in any status but `deleted`, so a wipe
/// under way counts) cannot be deleted: 409 `project_has_volumes`. Deleting them is the
/// tenant's act, each through its verified wipe; a cascade would hide 12.3.4 work behind one
/// call, and the other resources of a project are refused the same way.
pub async fn before_project_delete(conn: &mut rampart_db::Conn, project: Uuid) -> Result<(), Error> {
    let (volumes, snapshots) = rampart_db::volume_snapshots::project_holds_data(conn, project).await?;
    if volumes == 0 && snapshots == 0 {
        return Ok(());
    }
    Err(Error::coded(
        http::StatusCode::CONFLICT,
        "project_has_volumes",
        format!(
            "the project still holds {volumes} volume(s) and {snapshots} snapshot(s) (including ones being wiped); delete them first and wait for their wipes"
        ),
    ))
}

/// Ends a change of volume `id` in `tx`: republishes its node's document (if it has a node),
/// reads the volume back as the API shows it, commits and wakes the node.
pub async fn commit_and_publish(
    state: &AppState,
    mut tx: rampart_db::Tx,
    id: Uuid,
    node: Option<Uuid>,
) -> Result<Volume, Error> {
    if let Some(node) = node {
        crate::publish::node(&state.config, &mut tx, node).await?;
    }
    let after = db::volume_by_id(&mut tx, id)
        .await?
        .ok_or_else(|| Error::not_found("no such volume"))?;
    let out = view(&mut tx, after).await?;
    rampart_db::Db::commit(tx).await?;
    state.notify_node_changes();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rampart_api::storage::PoolHealthState;

    fn pool(free: u64, backend: &str, health: PoolHealthState) -> PoolReport {
        PoolReport {
            name: "local".into(),
            backend: backend.into(),
            total_bytes: 100 * GIB,
            free_bytes: free,
            volumes: 0,
            redundancy: "none".into(),
            copies: 1,
            health,
            problems: vec![],
        }
    }

    #[test]
    fn placement_takes_the_pool_with_most_room_and_says_why_it_cannot() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let pools = vec![
            (a, pool(5 * GIB, "local", PoolHealthState::Ok)),
            (b, pool(9 * GIB, "local", PoolHealthState::Degraded)),
        ];
        assert_eq!(place(&pools, GIB, true).unwrap(), (b, "local".into()));
        let e = place(&pools, 10 * GIB, true).unwrap_err();
        assert_eq!((e.status().as_u16(), e.code()), (507, "insufficient_storage"));
        let e = place(&[], GIB, true).unwrap_err();
        assert_eq!((e.status().as_u16(), e.code()), (503, "storage_unavailable"));
        let gone = vec![(a, pool(50 * GIB, "local", PoolHealthState::Unavailable))];
        assert_eq!(place(&gone, GIB, true).unwrap_err().code(), "storage_unavailable");
        // A Ceph pool takes encrypted volumes only.
        let ceph = vec![(a, pool(50 * GIB, "ceph", PoolHealthState::Ok))];
        assert_eq!(place(&ceph, GIB, true).unwrap(), (a, "ceph".into()));
        assert_eq!(place(&ceph, GIB, false).unwrap_err().code(), "storage_unavailable");
    }
}
