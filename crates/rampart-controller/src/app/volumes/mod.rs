//! The volumes capability (issue 15): volumes of a project (create, list, show, extend,
//! delete), attaching them to instances, per-volume grants (12.3.3), volume types and the
//! project's leave for unencrypted ones (12.3.2-2), the pools nodes report, the storage
//! section of node documents, what agents report (creation, verified wipes, 12.3.4) and the
//! passphrase a node fetches for a volume placed on it.
//!
//! Every state change goes through `rampart_storage::transition`, the one table of legal moves.
//!
//! Import rule: [`desired`] (read by the node documents) uses neither `crate::publish` nor the
//! modules that do.

pub mod access;
pub mod attach;
pub mod catalog;
pub mod desired;
pub mod lifecycle;
pub mod passphrase;
pub mod report;
pub mod snapshots;

use rampart_api::compute::Failure;
use rampart_api::storage::{Volume, VolumeAttachment};
use rampart_common::Error;
use rampart_db::volumes::{self as db, VolumeRow};
use rampart_iam::authz::{Target, action, volume_grant_bit};
use rampart_storage::{Event, VolumeStatus};
use uuid::Uuid;

use crate::auth::Principal;
use crate::state::AppState;

/// The status column as the domain names it (an unknown value reads as `error`: it holds data).
pub fn status_of(row: &VolumeRow) -> VolumeStatus {
    VolumeStatus::ALL
        .into_iter()
        .find(|s| s.as_str() == row.status)
        .unwrap_or(VolumeStatus::Error)
}

/// The next status of `row` on `event`, or 409 saying why not (`volume_in_use` for an attached
/// volume asked to go).
pub fn next(row: &VolumeRow, event: Event) -> Result<(VolumeStatus, Option<rampart_storage::VolumeErrorCode>), Error> {
    rampart_storage::transition(status_of(row), event, row.multi_attach).map_err(|e| {
        if e.from == VolumeStatus::InUse && matches!(event, Event::DeleteRequested) {
            Error::coded(
                http::StatusCode::CONFLICT,
                "volume_in_use",
                "the volume is attached to an instance; detach it first",
            )
        } else if e.from == VolumeStatus::InUse && matches!(event, Event::Attached) {
            Error::coded(
                http::StatusCode::CONFLICT,
                "volume_in_use",
                "the volume is attached to another instance and its type is not multi-attach",
            )
        } else {
            e.to_api()
        }
    })
}

/// The API view of a volume with its attachments.
pub async fn view(conn: &mut rampart_db::Conn, row: VolumeRow) -> Result<Volume, Error> {
    let attachments = db::attachments_of_volume(conn, row.id)
        .await?
        .into_iter()
        .map(|a| VolumeAttachment {
            instance: a.instance_id,
            read_only: a.read_only,
            serial: a.serial,
        })
        .collect();
    let status = status_of(&row);
    Ok(Volume {
        id: row.id,
        project_id: row.project_id,
        name: row.name,
        size_gib: row.size_gib.max(0) as u64,
        status,
        error: row.error_code.map(|code| Failure {
            code,
            message: row.error_message.unwrap_or_default(),
        }),
        encrypted: row.encrypted,
        backend: row.backend,
        volume_type: row.volume_type,
        node: row.node_id,
        attachments,
        progress: row.progress.map(|p| p.clamp(0, 100) as u8),
        source_image: row.source_image,
        source_snapshot: row.source_snapshot,
        created_at: row.created_at,
    })
}

/// The Cedar resource of a volume for `principal`: its project, whether it has grants, and the
/// actions those grants give the caller (directly or through a group).
pub async fn target(
    conn: &mut rampart_db::Conn,
    principal: &Principal,
    row: &VolumeRow,
    domain: Uuid,
) -> Result<Target, Error> {
    let grants = db::grants(conn, row.id).await?;
    let mut granted = 0u8;
    if !grants.is_empty() {
        let groups = db::groups_of_user(conn, principal.user.id).await?;
        for g in &grants {
            let mine = match g.kind.as_str() {
                "user" => g.principal_id == principal.user.id,
                "group" => groups.contains(&g.principal_id),
                _ => false,
            };
            if mine {
                let actions: Vec<String> = serde_json::from_str(&g.actions).unwrap_or_default();
                granted |= actions.iter().filter_map(|a| volume_grant_bit(a)).fold(0, |a, b| a | b);
            }
        }
    }
    Ok(Target::Volume {
        id: row.id,
        project: row.project_id,
        domain,
        restricted: !grants.is_empty(),
        granted,
    })
}

/// The volume `key` (id or name) of `project`, for the volume action `action`: 404 when the
/// caller may not see the project or the volume (another project's volumes are never found;
/// a volume whose grants leave the caller out is not found either), 403 when it may read the
/// volume but not do `action`.
pub async fn volume(
    state: &AppState,
    principal: &Principal,
    project: Uuid,
    key: &str,
    action: &str,
) -> Result<VolumeRow, Error> {
    let p = principal.project(state, project, action::PROJECT_READ).await?;
    let mut conn = state.db.conn().await?;
    let row = db::find_volume(&mut conn, project, key)
        .await?
        .ok_or_else(|| Error::not_found("no such volume"))?;
    let t = target(&mut conn, principal, &row, p.domain_id).await?;
    if principal.can(state, action, t) {
        Ok(row)
    } else if principal.can(state, action::VOLUME_READ, t) {
        Err(Error::forbidden(format!(
            "your rights on this volume do not allow {action}"
        )))
    } else {
        Err(Error::not_found("no such volume"))
    }
}

/// How the person asking appears in a wipe report (`requested_by`).
pub fn who(principal: &Principal) -> String {
    format!("{}@{}", principal.user.name, principal.user.domain)
}

/// The 20-character guest-visible serial of a volume's disk.
pub fn serial(volume: Uuid) -> String {
    volume.simple().to_string()[..20].to_string()
}
