//! The compute capability: trusted signing keys and the signature policy, flavors, images
//! (registered, then their bytes streamed and verified), instances and their power actions,
//! console, events and metrics, threshold alarms; and what the rest of the controller needs of
//! compute (the compute section of node documents, NIC planning, placement, what agents report,
//! alarm evaluation and webhooks, metric pruning).
//!
//! Import rule: the modules the node documents and the background tasks reach
//! ([`desired`], [`records`], [`nics`], [`scheduling`], [`status`], [`evaluation`],
//! [`webhooks`], [`monitoring`]'s pruning) never use [`crate::publish`] or the use-case
//! modules that do, since `crate::publish` reads [`desired`].

pub mod alarms;
pub mod desired;
pub mod evaluation;
pub mod flavors;
pub mod images;
pub mod instances;
pub mod monitoring;
pub mod nics;
pub mod records;
pub mod scheduling;
pub mod signing_keys;
pub mod status;
pub mod upload;
pub mod webhooks;

use rampart_common::Error;
use rampart_db::compute::{self as db, AlarmRow, ImageRow, InstanceRow};
use uuid::Uuid;

use crate::auth::Principal;
use crate::state::AppState;

/// The instance `id` of `project`, for `action` on the project: 404 when the caller may not see
/// the project or the instance is not in it, 403 when it may see but not do `action`.
pub async fn instance(
    state: &AppState,
    principal: &Principal,
    project: Uuid,
    id: Uuid,
    action: &str,
) -> Result<InstanceRow, Error> {
    principal.project(state, project, action).await?;
    let mut conn = state.db.conn().await?;
    db::instance(&mut conn, id)
        .await?
        .filter(|i| i.project_id == project)
        .ok_or_else(|| Error::not_found("no such instance"))
}

/// The image `id` of `project`, for `action` (as [`instance`]).
pub async fn image(
    state: &AppState,
    principal: &Principal,
    project: Uuid,
    id: Uuid,
    action: &str,
) -> Result<ImageRow, Error> {
    principal.project(state, project, action).await?;
    let mut conn = state.db.conn().await?;
    db::image_by_id(&mut conn, id)
        .await?
        .filter(|i| i.project_id == project)
        .ok_or_else(|| Error::not_found("no such image"))
}

/// The alarm `id` of `project`, for `action` (as [`instance`]).
pub async fn alarm(
    state: &AppState,
    principal: &Principal,
    project: Uuid,
    id: Uuid,
    action: &str,
) -> Result<AlarmRow, Error> {
    principal.project(state, project, action).await?;
    let mut conn = state.db.conn().await?;
    db::alarm(&mut conn, id)
        .await?
        .filter(|a| a.project_id == project)
        .ok_or_else(|| Error::not_found("no such alarm"))
}

/// Where image bytes are kept (by digest).
fn image_dir(state: &AppState) -> std::path::PathBuf {
    state
        .config
        .compute
        .image_dir
        .clone()
        .unwrap_or_else(|| state.data_dir.join("images"))
}
