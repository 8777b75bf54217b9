//! Attaching volumes to instances: the attachment is desired state (the volume is `in-use` at
//! once; its node hot-plugs it over QMP). Attaching needs the right on both the volume and the
//! instance; a `local` volume only reaches an instance on its own node (409
//! `volume_on_another_node`).

use rampart_api::storage::{Volume, VolumeAttach};
use rampart_common::Error;
use rampart_db::compute::InstanceRow;
use rampart_db::volumes::{self as db, AttachmentRow, VolumeRow};
use rampart_iam::authz::action;
use rampart_storage::{Event, VolumeStatus};
use uuid::Uuid;

use crate::auth::Principal;
use crate::state::AppState;

use crate::audit::operations::Operation;

fn another_node() -> Error {
    Error::coded(
        http::StatusCode::CONFLICT,
        "volume_on_another_node",
        "the volume lives on another node than the instance; a local volume attaches only to instances of its node",
    )
}

/// Adds the attachment of `volume` (re-read in `tx`) to `instance` and moves the volume.
async fn add(
    tx: &mut rampart_db::Conn,
    volume: Uuid,
    instance: &InstanceRow,
    read_only: bool,
    now: time::OffsetDateTime,
) -> Result<VolumeRow, Error> {
    let row = db::volume_by_id(tx, volume)
        .await?
        .ok_or_else(|| Error::not_found("no such volume"))?;
    if row.node_id.is_none() || row.node_id != instance.node_id {
        return Err(another_node());
    }
    let (to, _) = super::next(&row, Event::Attached)?;
    super::snapshots::check_not_being_copied(tx, row.id).await?;
    db::insert_attachment(
        tx,
        &AttachmentRow {
            volume_id: row.id,
            instance_id: instance.id,
            read_only,
            serial: super::serial(row.id),
        },
        now,
    )
    .await?;
    db::set_status(tx, row.id, to.as_str(), None, now).await?;
    Ok(row)
}

pub const ATTACH: Operation = Operation::new("volume.attach", "instance").target("id");

/// `POST /v1/projects/{p}/instances/{id}/volumes`.
pub async fn attach(
    state: &AppState,
    principal: &Principal,
    project: Uuid,
    instance: Uuid,
    req: VolumeAttach,
) -> Result<Volume, Error> {
    let inst = crate::app::compute::instance(state, principal, project, instance, action::PROJECT_WRITE).await?;
    let vol = super::volume(state, principal, project, &req.volume, action::VOLUME_ATTACH).await?;
    if inst.status == "deleting" {
        return Err(Error::conflict("the instance is being deleted"));
    }
    let mut tx = state.db.begin().await?;
    add(&mut tx, vol.id, &inst, req.read_only.unwrap_or(false), state.now()).await?;
    let out = super::lifecycle::commit_and_publish(state, tx, vol.id, inst.node_id).await?;
    crate::audit::note_detail("volume", vol.id.to_string());
    tracing::info!(volume = %vol.id, %instance, by = %principal.user.name, "volume attached");
    Ok(out)
}

/// Removes the attachment of `volume` to `instance`; the volume is `available` again when none
/// is left. False when there was no such attachment.
async fn remove(
    tx: &mut rampart_db::Conn,
    volume: Uuid,
    instance: Uuid,
    now: time::OffsetDateTime,
) -> Result<bool, Error> {
    if !db::delete_attachment(tx, volume, instance).await? {
        return Ok(false);
    }
    if db::attachments_of_volume(tx, volume).await?.is_empty()
        && let Some(row) = db::volume_by_id(tx, volume).await?
        && super::status_of(&row) == VolumeStatus::InUse
    {
        let (to, _) = super::next(&row, Event::Detached)?;
        db::set_status(tx, volume, to.as_str(), None, now).await?;
    }
    Ok(true)
}

pub const DETACH: Operation = Operation::new("volume.detach", "volume").target("volume");

/// `DELETE /v1/projects/{p}/instances/{id}/volumes/{vol}`.
pub async fn detach(
    state: &AppState,
    principal: &Principal,
    project: Uuid,
    instance: Uuid,
    volume: &str,
) -> Result<Volume, Error> {
    let inst = crate::app::compute::instance(state, principal, project, instance, action::PROJECT_WRITE).await?;
    let vol = super::volume(state, principal, project, volume, action::VOLUME_DETACH).await?;
    let mut tx = state.db.begin().await?;
    if !remove(&mut tx, vol.id, instance, state.now()).await? {
        return Err(Error::not_found("the volume is not attached to this instance"));
    }
    let out = super::lifecycle::commit_and_publish(state, tx, vol.id, inst.node_id).await?;
    crate::audit::note_detail("instance", instance.to_string());
    tracing::info!(volume = %vol.id, %instance, by = %principal.user.name, "volume detached");
    Ok(out)
}

/// The volumes an instance is created with: each readable and attachable by the caller, and
/// all on one node, which the instance is pinned to (409 `volumes_on_different_nodes`).
pub async fn check_for_new_instance(
    state: &AppState,
    principal: &Principal,
    project: Uuid,
    volumes: &[Uuid],
) -> Result<Option<Uuid>, Error> {
    let mut node = None;
    for v in volumes {
        let row = super::volume(state, principal, project, &v.to_string(), action::VOLUME_ATTACH).await?;
        super::next(&row, Event::Attached)?;
        match (node, row.node_id) {
            (_, None) => return Err(another_node()),
            (None, Some(n)) => node = Some(n),
            (Some(a), Some(b)) if a != b => {
                return Err(Error::coded(
                    http::StatusCode::CONFLICT,
                    "volumes_on_different_nodes",
                    "the volumes live on different nodes; an instance can only use local volumes of one node",
                ));
            }
            _ => {}
        }
    }
    Ok(node)
}

/// Attaches `volumes` to the instance being created, in its transaction.
pub async fn attach_to_new_instance(
    tx: &mut rampart_db::Conn,
    instance: &InstanceRow,
    volumes: &[Uuid],
    now: time::OffsetDateTime,
) -> Result<(), Error> {
    for v in volumes {
        add(tx, *v, instance, false, now).await?;
    }
    Ok(())
}

/// Detaches every volume of an instance being deleted, in its transaction.
pub async fn release_instance(
    tx: &mut rampart_db::Conn,
    instance: Uuid,
    now: time::OffsetDateTime,
) -> Result<(), Error> {
    for a in db::attachments_of_instance(tx, instance).await? {
        remove(tx, a.volume_id, instance, now).await?;
    }
    Ok(())
}
