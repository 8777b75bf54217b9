//! Volume snapshots: point-in-time full copies of a volume, made by its node under the volume's
//! passphrase (as EBS and Cinder snapshots inherit the volume key), listed under the volume,
//! deleted through the same verified wipe as volumes (12.3.4-1/3), and the source of new
//! volumes (`"snapshot"` at volume create, see [`source`]).
//!
//! A snapshot moves through the volumes' own life-cycle table (`rampart_storage::transition`;
//! its states are the volume's without `in-use`) and its node's reports go through the same
//! [`super::report::decide`]. Only a volume that is `available` is snapshotted: the local
//! backend copies the file with `qemu-img`, which cannot take the lock a running QEMU holds, so
//! an attached volume is refused with 409 `volume_in_use` (live snapshots through QMP are not
//! built). A volume with snapshots cannot be deleted (409 `volume_has_snapshots`): they open
//! with its passphrase.
//!
//! Kept reusable for backups: [`take`] and [`remove`] work in the caller's transaction.

use rampart_api::List;
use rampart_api::storage::{Snapshot, SnapshotCreate, SnapshotState, VolumeReport, WipeReport};
use rampart_audit::record::{Actor, AuditResult, AuthMethod, NewRecord, Target};
use rampart_common::page::{PageParams, finish_page};
use rampart_common::{Error, names};
use rampart_db::volume_snapshots::{self as sdb, SnapshotRow};
use rampart_db::volumes::{self as db, VolumeRow};
use rampart_iam::authz::action;
use rampart_storage::validate::{self, GIB, VolumeQuota, VolumeUsage};
use rampart_storage::{Event, VolumeStatus};
use uuid::Uuid;

use super::report::{Change, code_str, decide, node_error};
use crate::audit::operations::Operation;
use crate::auth::Principal;
use crate::state::AppState;

/// The status column as the life-cycle table names it (an unknown value reads as `error`).
pub fn status_of(row: &SnapshotRow) -> VolumeStatus {
    VolumeStatus::ALL
        .into_iter()
        .find(|s| s.as_str() == row.status)
        .unwrap_or(VolumeStatus::Error)
}

/// The API's name of a snapshot status (`in-use` never happens to a snapshot).
pub fn api_state(s: VolumeStatus) -> SnapshotState {
    match s {
        VolumeStatus::Creating => SnapshotState::Creating,
        VolumeStatus::Available | VolumeStatus::InUse => SnapshotState::Available,
        VolumeStatus::Deleting => SnapshotState::Deleting,
        VolumeStatus::Wiping => SnapshotState::Wiping,
        VolumeStatus::Deleted => SnapshotState::Deleted,
        VolumeStatus::Error => SnapshotState::Error,
    }
}

pub fn view(row: SnapshotRow) -> Snapshot {
    let status = api_state(status_of(&row));
    Snapshot {
        id: row.id,
        volume: row.volume_id,
        name: row.name,
        size_gib: row.size_gib.max(0) as u64,
        status,
        error: row.error_code.map(|code| rampart_api::compute::Failure {
            code,
            message: row.error_message.unwrap_or_default(),
        }),
        created_at: row.created_at,
    }
}

fn in_use() -> Error {
    Error::coded(
        http::StatusCode::CONFLICT,
        "volume_in_use",
        "the volume is attached; detach it to snapshot it (snapshots of attached volumes are not supported yet)",
    )
}

/// 409 `volume_has_snapshots`: a volume whose snapshots still hold data cannot go (they open
/// with its passphrase).
pub async fn check_no_snapshots(conn: &mut rampart_db::Conn, volume: Uuid) -> Result<(), Error> {
    let n = sdb::live_of_volume(conn, volume).await?;
    if n == 0 {
        return Ok(());
    }
    Err(Error::coded(
        http::StatusCode::CONFLICT,
        "volume_has_snapshots",
        format!("the volume has {n} snapshot(s); delete them first (they open with this volume's key)"),
    ))
}

/// 409 `snapshot_in_progress`: a volume being copied is not opened by anything else.
pub async fn check_not_being_copied(conn: &mut rampart_db::Conn, volume: Uuid) -> Result<(), Error> {
    if sdb::creating_of_volume(conn, volume).await? == 0 {
        return Ok(());
    }
    Err(Error::coded(
        http::StatusCode::CONFLICT,
        "snapshot_in_progress",
        "a snapshot of the volume is being made; retry when it is available",
    ))
}

async fn quota(conn: &mut rampart_db::Conn, project: Uuid) -> Result<(VolumeQuota, VolumeUsage), Error> {
    let used = VolumeUsage {
        snapshots: sdb::usage(conn, project).await?,
        ..VolumeUsage::default()
    };
    Ok((VolumeQuota::default(), used))
}

/// Adds a `creating` snapshot of `volume` (re-read in `tx`) named `name`, placed on the
/// volume's node; the caller publishes that node and commits. For backups as well.
pub async fn take(
    tx: &mut rampart_db::Conn,
    volume: Uuid,
    name: &str,
    now: time::OffsetDateTime,
) -> Result<SnapshotRow, Error> {
    names::validate_name("name", name)?;
    let v = db::volume_by_id(tx, volume)
        .await?
        .ok_or_else(|| Error::not_found("no such volume"))?;
    match super::status_of(&v) {
        VolumeStatus::Available => {}
        VolumeStatus::InUse => return Err(in_use()),
        s => {
            return Err(Error::conflict(format!(
                "the volume is {s}; only an available volume is snapshotted"
            )));
        }
    }
    let (q, used) = quota(tx, v.project_id).await?;
    validate::check_snapshot_quota(&q, &used)?;
    let row = SnapshotRow {
        id: Uuid::new_v4(),
        volume_id: v.id,
        project_id: v.project_id,
        name: name.to_string(),
        size_gib: v.size_gib,
        status: VolumeStatus::Creating.as_str().into(),
        error_code: None,
        error_message: None,
        node_id: v.node_id,
        requested_by: None,
        wipe_report: None,
        created_at: now,
        updated_at: now,
    };
    sdb::insert(tx, &row).await?;
    Ok(row)
}

/// Asks for the deletion of snapshot `id` (re-read in `tx`): `deleting`, then its node wipes
/// it. A snapshot a volume is being made from waits (409 `snapshot_in_use`).
pub async fn remove(
    tx: &mut rampart_db::Conn,
    id: Uuid,
    requested_by: &str,
    now: time::OffsetDateTime,
) -> Result<SnapshotRow, Error> {
    let row = sdb::by_id(tx, id)
        .await?
        .ok_or_else(|| Error::not_found("no such snapshot"))?;
    if db::creating_from_snapshot(tx, id).await? > 0 {
        return Err(Error::coded(
            http::StatusCode::CONFLICT,
            "snapshot_in_use",
            "a volume is being made from this snapshot; retry when it is available",
        ));
    }
    let (to, _) =
        rampart_storage::transition(status_of(&row), Event::DeleteRequested, false).map_err(|e| e.to_api())?;
    sdb::set_status(tx, id, to.as_str(), None, now).await?;
    sdb::set_requested_by(tx, id, requested_by).await?;
    Ok(row)
}

async fn commit(state: &AppState, mut tx: rampart_db::Tx, id: Uuid, node: Option<Uuid>) -> Result<Snapshot, Error> {
    if let Some(node) = node {
        crate::publish::node(&state.config, &mut tx, node).await?;
    }
    let row = sdb::by_id(&mut tx, id)
        .await?
        .ok_or_else(|| Error::not_found("no such snapshot"))?;
    rampart_db::Db::commit(tx).await?;
    state.notify_node_changes();
    Ok(view(row))
}

pub const CREATE: Operation = Operation::new("volume.snapshot.create", "volume").target("id");

/// `POST /v1/projects/{p}/volumes/{id}/snapshots`.
pub async fn create(
    state: &AppState,
    principal: &Principal,
    project: Uuid,
    volume: &str,
    req: SnapshotCreate,
) -> Result<Snapshot, Error> {
    let v = super::volume(state, principal, project, volume, action::VOLUME_SNAPSHOT).await?;
    let mut tx = state.db.begin().await?;
    let row = take(&mut tx, v.id, &req.name, state.now()).await?;
    let out = commit(state, tx, row.id, row.node_id).await?;
    crate::audit::note_detail("snapshot", out.id.to_string());
    tracing::info!(volume = %v.id, snapshot = %out.id, by = %principal.user.name, "snapshot requested");
    Ok(out)
}

pub const LIST: Operation = Operation::new("volume.snapshot.list", "volume").target("id");

/// The volume's snapshots (not deleted), by name.
pub async fn list(
    state: &AppState,
    principal: &Principal,
    project: Uuid,
    volume: &str,
    page: &PageParams,
) -> Result<List<Snapshot>, Error> {
    let v = super::volume(state, principal, project, volume, action::VOLUME_READ).await?;
    let page = page.validate()?;
    let mut conn = state.db.conn().await?;
    let rows = sdb::of_volume(&mut conn, v.id, page.after.as_deref(), page.limit + 1).await?;
    let (rows, next) = finish_page(rows, page.limit, |s| s.name.clone());
    Ok(List {
        items: rows.into_iter().map(view).collect(),
        next,
    })
}

/// Snapshot `key` (id or name) of volume `volume`, for the volume action `action`.
async fn snapshot(
    state: &AppState,
    principal: &Principal,
    project: Uuid,
    volume: &str,
    key: &str,
    action: &str,
) -> Result<SnapshotRow, Error> {
    let v = super::volume(state, principal, project, volume, action).await?;
    let mut conn = state.db.conn().await?;
    sdb::find(&mut conn, project, key)
        .await?
        .filter(|s| s.volume_id == v.id)
        .ok_or_else(|| Error::not_found("no such snapshot of this volume"))
}

pub const GET: Operation = Operation::new("volume.snapshot.get", "snapshot").target("snapshot");

pub async fn get(
    state: &AppState,
    principal: &Principal,
    project: Uuid,
    volume: &str,
    key: &str,
) -> Result<Snapshot, Error> {
    Ok(view(
        snapshot(state, principal, project, volume, key, action::VOLUME_READ).await?,
    ))
}

pub const DELETE: Operation = Operation::new("volume.snapshot.delete", "snapshot").target("snapshot");

/// `DELETE …/snapshots/{snap}`: `deleting`; its node wipes it (verified) and it is `deleted`.
pub async fn delete(
    state: &AppState,
    principal: &Principal,
    project: Uuid,
    volume: &str,
    key: &str,
) -> Result<Snapshot, Error> {
    let s = snapshot(state, principal, project, volume, key, action::VOLUME_SNAPSHOT).await?;
    let mut tx = state.db.begin().await?;
    let row = remove(&mut tx, s.id, &super::who(principal), state.now()).await?;
    let out = commit(state, tx, row.id, row.node_id).await?;
    tracing::info!(snapshot = %s.id, by = %principal.user.name, "snapshot deletion requested; its node wipes it");
    Ok(out)
}

pub const WIPE_REPORT: Operation = Operation::new("volume.snapshot.wipe_report.get", "snapshot").target("snapshot");

/// The verified wipe report of a deleted snapshot.
pub async fn wipe_report(
    state: &AppState,
    principal: &Principal,
    project: Uuid,
    volume: &str,
    key: &str,
) -> Result<WipeReport, Error> {
    let s = snapshot(state, principal, project, volume, key, action::VOLUME_READ).await?;
    let Some(json) = s.wipe_report else {
        return Err(Error::not_found(format!(
            "the snapshot has no wipe report: it is {} (a report exists once it is deleted)",
            s.status
        )));
    };
    serde_json::from_str(&json).map_err(|e| Error::internal("reading a wipe report", e))
}

/// The source of a volume made from snapshot `key` of `project`: the snapshot (available, no
/// larger than the new volume) and the volume it was taken of (whose passphrase opens it). A
/// snapshot of another project is not found (404).
pub async fn source(
    conn: &mut rampart_db::Conn,
    project: Uuid,
    key: &str,
    size_gib: u64,
) -> Result<(SnapshotRow, VolumeRow), Error> {
    let s = sdb::find(conn, project, key)
        .await?
        .filter(|s| status_of(s) != VolumeStatus::Deleted)
        .ok_or_else(|| Error::not_found("no such snapshot in this project"))?;
    if status_of(&s) != VolumeStatus::Available {
        return Err(Error::conflict(format!(
            "the snapshot is {}; only an available snapshot can fill a volume",
            s.status
        )));
    }
    let snap_gib = s.size_gib.max(0) as u64;
    if size_gib < snap_gib {
        return Err(Error::field(
            "size_gib",
            format!("the snapshot holds {snap_gib} GiB: the volume must be at least that large"),
        ));
    }
    let v = db::volume_by_id(conn, s.volume_id)
        .await?
        .ok_or_else(|| Error::internal("reading a snapshot's volume", "the volume row is gone"))?;
    Ok((s, v))
}

/// The bytes a volume from a snapshot needs on its node (the snapshot's node).
pub fn needed_bytes(size_gib: u64) -> u64 {
    size_gib.saturating_mul(GIB)
}

fn node_actor(node: Uuid) -> Actor {
    Actor {
        id: Some(node.to_string()),
        name: None,
        domain: None,
        auth_method: AuthMethod::Certificate,
    }
}

/// Takes in what `node` reports of its snapshots; true when the node's document changed.
/// A verified wipe writes the `volume.snapshot.wipe` audit event before the snapshot is
/// `deleted` (as for volumes).
pub async fn record(state: &AppState, node: Uuid, reports: &[VolumeReport]) -> Result<bool, Error> {
    if reports.is_empty() {
        return Ok(false);
    }
    let now = state.now();
    let wipe_failed = code_str(rampart_storage::VolumeErrorCode::WipeUnverified);
    let decide_for = |row: &SnapshotRow, r: &VolumeReport| {
        decide(
            status_of(row),
            row.error_code.as_deref() == Some(wipe_failed.as_str()),
            false,
            r,
        )
    };
    let mut wiped = Vec::new();
    {
        let mut conn = state.db.conn().await?;
        for r in reports {
            if let Some(row) = sdb::by_id(&mut conn, r.id).await?.filter(|s| s.node_id == Some(node))
                && decide_for(&row, r) == Change::Wiped
                && let Some(report) = &r.wipe_report
            {
                let details = serde_json::to_value(report).map_err(|e| Error::internal("encoding a wipe report", e))?;
                let rec = NewRecord::new(
                    now,
                    node_actor(node),
                    "volume.snapshot.wipe",
                    Target::new("snapshot", Some(row.id.to_string()), Some(row.project_id.to_string())),
                    AuditResult::success(200),
                )
                .detail("volume", row.volume_id.to_string())
                .detail("requested_by", row.requested_by.clone().unwrap_or_default())
                .detail("report", details);
                wiped.push((row.id, rec));
            }
        }
    }
    let wiped: Vec<Uuid> = {
        let mut ids = Vec::new();
        for (id, rec) in wiped {
            state.audit.append_system(rec).await?;
            ids.push(id);
        }
        ids
    };
    let mut tx = state.db.begin().await?;
    let mut republish = false;
    for r in reports {
        let Some(row) = sdb::by_id(&mut tx, r.id).await?.filter(|s| s.node_id == Some(node)) else {
            continue;
        };
        let from = status_of(&row);
        match decide_for(&row, r) {
            Change::None | Change::Progress => {}
            Change::To(to, code) => {
                let error = node_error(r, code);
                sdb::set_status(
                    &mut tx,
                    row.id,
                    to.as_str(),
                    error.as_ref().map(|(c, m)| (c.as_str(), m.as_str())),
                    now,
                )
                .await?;
                // A snapshot made lets the volumes waiting for it start on the next document.
                republish = true;
                tracing::info!(snapshot = %row.id, %node, from = %from, to = %to, "snapshot status from its node");
            }
            Change::Wiped if wiped.contains(&row.id) => {
                let report = r.wipe_report.as_ref().expect("decide checked the report");
                let json = serde_json::to_string(report).map_err(|e| Error::internal("encoding a wipe report", e))?;
                sdb::finish_wipe(&mut tx, row.id, &json, now).await?;
                republish = true;
                tracing::info!(snapshot = %row.id, %node, "snapshot wiped (verified) and deleted");
            }
            Change::Wiped => {}
        }
    }
    if republish {
        crate::publish::node(&state.config, &mut tx, node).await?;
    }
    rampart_db::Db::commit(tx).await?;
    if republish {
        state.notify_node_changes();
    }
    Ok(republish)
}
