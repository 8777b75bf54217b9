//! The Volumes API (issue 15): volumes of a project, their grants and wipe reports, attaching
//! them to instances, volume types, storage pools, the project's volume settings, and the
//! passphrase route of the agent protocol. Handlers parse, call [`crate::app::volumes`] (which
//! authorizes: what the caller may not see is 404, what it may see but not do is 403) and
//! render. A volume is named by id or, while not deleted, by name.

use axum::extract::State;
use axum::http::StatusCode;
use rampart_api::List;
use rampart_api::storage::*;
use rampart_common::Error;
use rampart_common::error::ErrorBody;
use rampart_common::page::PageParams;
use uuid::Uuid;

use crate::app::volumes::{access, attach, catalog, lifecycle, passphrase, snapshots};
use crate::auth::Principal;
use crate::http::{ApiJson, ApiPath, ApiQuery};
use crate::routes::agent::NodeIdentity;
use crate::state::AppState;

/// Create a volume (encrypted by default, 12.3.2-2): placed on the node with the most room,
/// `creating` until its node has made it.
#[utoipa::path(post, path = "/v1/projects/{project}/volumes", tag = "volumes", params(("project" = Uuid, Path)), request_body = VolumeCreate, security(("bearer" = [])),
    responses((status = 201, body = Volume), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "quota_exceeded"), (status = 413, body = ErrorBody, description = "quota_exceeded: larger than the whole quota"),
        (status = 422, body = ErrorBody, description = "policy_violation: an unencrypted type the project does not allow"),
        (status = 503, body = ErrorBody, description = "storage_unavailable"), (status = 507, body = ErrorBody, description = "insufficient_storage")))]
pub async fn create_volume(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(project): ApiPath<Uuid>,
    ApiJson(req): ApiJson<VolumeCreate>,
) -> Result<(StatusCode, axum::Json<Volume>), Error> {
    let v = lifecycle::create(&state, &principal, project, req).await?;
    Ok((StatusCode::CREATED, axum::Json(v)))
}

/// The project's volumes you may read (not deleted), by name.
#[utoipa::path(get, path = "/v1/projects/{project}/volumes", tag = "volumes", params(("project" = Uuid, Path), PageParams), security(("bearer" = [])),
    responses((status = 200, body = List<Volume>), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_volumes(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(project): ApiPath<Uuid>,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Result<axum::Json<List<Volume>>, Error> {
    Ok(axum::Json(lifecycle::list(&state, &principal, project, &page).await?))
}

/// One volume (a deleted one too, by id).
#[utoipa::path(get, path = "/v1/projects/{project}/volumes/{id}", tag = "volumes", params(("project" = Uuid, Path), ("id" = String, Path)), security(("bearer" = [])),
    responses((status = 200, body = Volume), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_volume(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((project, id)): ApiPath<(Uuid, String)>,
) -> Result<axum::Json<Volume>, Error> {
    Ok(axum::Json(lifecycle::get(&state, &principal, project, &id).await?))
}

/// Delete a volume: `deleting`, then its node wipes it (verified) and it is `deleted`
/// (12.3.4). 409 `volume_in_use` while attached.
#[utoipa::path(delete, path = "/v1/projects/{project}/volumes/{id}", tag = "volumes", params(("project" = Uuid, Path), ("id" = String, Path)), security(("bearer" = [])),
    responses((status = 202, body = Volume), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_volume(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((project, id)): ApiPath<(Uuid, String)>,
) -> Result<(StatusCode, axum::Json<Volume>), Error> {
    let v = lifecycle::delete(&state, &principal, project, &id).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(v)))
}

/// Grow a volume (never shrink).
#[utoipa::path(post, path = "/v1/projects/{project}/volumes/{id}/extend", tag = "volumes", params(("project" = Uuid, Path), ("id" = String, Path)), request_body = VolumeExtend, security(("bearer" = [])),
    responses((status = 200, body = Volume), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn extend_volume(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((project, id)): ApiPath<(Uuid, String)>,
    ApiJson(req): ApiJson<VolumeExtend>,
) -> Result<axum::Json<Volume>, Error> {
    Ok(axum::Json(
        lifecycle::extend(&state, &principal, project, &id, req).await?,
    ))
}

/// The volume's grants (12.3.3).
#[utoipa::path(get, path = "/v1/projects/{project}/volumes/{id}/access", tag = "volumes", params(("project" = Uuid, Path), ("id" = String, Path)), security(("bearer" = [])),
    responses((status = 200, body = VolumeAccess), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_access(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((project, id)): ApiPath<(Uuid, String)>,
) -> Result<axum::Json<VolumeAccess>, Error> {
    Ok(axum::Json(access::get(&state, &principal, project, &id).await?))
}

/// Replace the volume's grants (project admins): empty, the project roles decide; otherwise a
/// reader or member also needs a grant naming them or one of their groups.
#[utoipa::path(put, path = "/v1/projects/{project}/volumes/{id}/access", tag = "volumes", params(("project" = Uuid, Path), ("id" = String, Path)), request_body = VolumeAccess, security(("bearer" = [])),
    responses((status = 200, body = VolumeAccess), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody, description = "An unknown user or group")))]
pub async fn put_access(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((project, id)): ApiPath<(Uuid, String)>,
    ApiJson(req): ApiJson<VolumeAccess>,
) -> Result<axum::Json<VolumeAccess>, Error> {
    Ok(axum::Json(access::put(&state, &principal, project, &id, req).await?))
}

/// The verified wipe report of a deleted volume (12.3.4-1).
#[utoipa::path(get, path = "/v1/projects/{project}/volumes/{id}/wipe-report", tag = "volumes", params(("project" = Uuid, Path), ("id" = String, Path)), security(("bearer" = [])),
    responses((status = 200, body = WipeReport), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn wipe_report(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((project, id)): ApiPath<(Uuid, String)>,
) -> Result<axum::Json<WipeReport>, Error> {
    Ok(axum::Json(
        lifecycle::wipe_report(&state, &principal, project, &id).await?,
    ))
}

/// Snapshot a volume that is not attached (a full copy under the volume's key, made by its
/// node): `creating`, then `available`. 409 `volume_in_use` while attached.
#[utoipa::path(post, path = "/v1/projects/{project}/volumes/{id}/snapshots", tag = "volumes", params(("project" = Uuid, Path), ("id" = String, Path)), request_body = SnapshotCreate, security(("bearer" = [])),
    responses((status = 201, body = Snapshot), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "volume_in_use, quota_exceeded, conflict")))]
pub async fn create_snapshot(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((project, id)): ApiPath<(Uuid, String)>,
    ApiJson(req): ApiJson<SnapshotCreate>,
) -> Result<(StatusCode, axum::Json<Snapshot>), Error> {
    let s = snapshots::create(&state, &principal, project, &id, req).await?;
    Ok((StatusCode::CREATED, axum::Json(s)))
}

/// The volume's snapshots (not deleted), by name.
#[utoipa::path(get, path = "/v1/projects/{project}/volumes/{id}/snapshots", tag = "volumes", params(("project" = Uuid, Path), ("id" = String, Path), PageParams), security(("bearer" = [])),
    responses((status = 200, body = List<Snapshot>), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_snapshots(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((project, id)): ApiPath<(Uuid, String)>,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Result<axum::Json<List<Snapshot>>, Error> {
    Ok(axum::Json(
        snapshots::list(&state, &principal, project, &id, &page).await?,
    ))
}

/// One snapshot of the volume (by id or name; a deleted one by id).
#[utoipa::path(get, path = "/v1/projects/{project}/volumes/{id}/snapshots/{snapshot}", tag = "volumes", params(("project" = Uuid, Path), ("id" = String, Path), ("snapshot" = String, Path)), security(("bearer" = [])),
    responses((status = 200, body = Snapshot), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_snapshot(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((project, id, snapshot)): ApiPath<(Uuid, String, String)>,
) -> Result<axum::Json<Snapshot>, Error> {
    Ok(axum::Json(
        snapshots::get(&state, &principal, project, &id, &snapshot).await?,
    ))
}

/// Delete a snapshot: `deleting`, then its node wipes it (verified) and it is `deleted`.
/// 409 `snapshot_in_use` while a volume is being made from it.
#[utoipa::path(delete, path = "/v1/projects/{project}/volumes/{id}/snapshots/{snapshot}", tag = "volumes", params(("project" = Uuid, Path), ("id" = String, Path), ("snapshot" = String, Path)), security(("bearer" = [])),
    responses((status = 202, body = Snapshot), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_snapshot(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((project, id, snapshot)): ApiPath<(Uuid, String, String)>,
) -> Result<(StatusCode, axum::Json<Snapshot>), Error> {
    let s = snapshots::delete(&state, &principal, project, &id, &snapshot).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(s)))
}

/// The verified wipe report of a deleted snapshot (12.3.4-1).
#[utoipa::path(get, path = "/v1/projects/{project}/volumes/{id}/snapshots/{snapshot}/wipe-report", tag = "volumes", params(("project" = Uuid, Path), ("id" = String, Path), ("snapshot" = String, Path)), security(("bearer" = [])),
    responses((status = 200, body = WipeReport), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn snapshot_wipe_report(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((project, id, snapshot)): ApiPath<(Uuid, String, String)>,
) -> Result<axum::Json<WipeReport>, Error> {
    Ok(axum::Json(
        snapshots::wipe_report(&state, &principal, project, &id, &snapshot).await?,
    ))
}

/// Attach a volume to an instance of its node (hot-plugged; needs rights on both).
#[utoipa::path(post, path = "/v1/projects/{project}/instances/{id}/volumes", tag = "volumes", params(("project" = Uuid, Path), ("id" = Uuid, Path)), request_body = VolumeAttach, security(("bearer" = [])),
    responses((status = 200, body = Volume), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "volume_in_use, volume_on_another_node")))]
pub async fn attach_volume(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((project, id)): ApiPath<(Uuid, Uuid)>,
    ApiJson(req): ApiJson<VolumeAttach>,
) -> Result<axum::Json<Volume>, Error> {
    Ok(axum::Json(attach::attach(&state, &principal, project, id, req).await?))
}

/// Detach a volume from an instance (hot-unplugged).
#[utoipa::path(delete, path = "/v1/projects/{project}/instances/{id}/volumes/{volume}", tag = "volumes", params(("project" = Uuid, Path), ("id" = Uuid, Path), ("volume" = String, Path)), security(("bearer" = [])),
    responses((status = 200, body = Volume), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn detach_volume(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((project, id, volume)): ApiPath<(Uuid, Uuid, String)>,
) -> Result<axum::Json<Volume>, Error> {
    Ok(axum::Json(
        attach::detach(&state, &principal, project, id, &volume).await?,
    ))
}

/// Volume types (every authenticated user may read them).
#[utoipa::path(get, path = "/v1/volume-types", tag = "volumes", security(("bearer" = [])),
    responses((status = 200, body = List<VolumeType>), (status = 401, body = ErrorBody)))]
pub async fn list_volume_types(
    State(state): State<AppState>,
    _principal: Principal,
) -> Result<axum::Json<List<VolumeType>>, Error> {
    Ok(axum::Json(catalog::list_types(&state).await?))
}

/// Create a volume type (system admins).
#[utoipa::path(post, path = "/v1/volume-types", tag = "volumes", request_body = VolumeType, security(("bearer" = [])),
    responses((status = 201, body = VolumeType), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_volume_type(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(req): ApiJson<VolumeType>,
) -> Result<(StatusCode, axum::Json<VolumeType>), Error> {
    let t = catalog::create_type(&state, &principal, req).await?;
    Ok((StatusCode::CREATED, axum::Json(t)))
}

/// Delete a volume type no volume uses (system admins; `default` stays).
#[utoipa::path(delete, path = "/v1/volume-types/{name}", tag = "volumes", params(("name" = String, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_volume_type(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, Error> {
    catalog::delete_type(&state, &principal, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The storage pools nodes report: backend, redundancy, health, room (system readers).
#[utoipa::path(get, path = "/v1/storage/pools", tag = "volumes", security(("bearer" = [])),
    responses((status = 200, body = List<StoragePool>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_pools(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<axum::Json<List<StoragePool>>, Error> {
    Ok(axum::Json(catalog::pools(&state, &principal).await?))
}

/// The project's volume settings (whether unencrypted types are allowed; not by default).
#[utoipa::path(get, path = "/v1/projects/{project}/volume-settings", tag = "volumes", params(("project" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = VolumeSettings), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_volume_settings(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(project): ApiPath<Uuid>,
) -> Result<axum::Json<VolumeSettings>, Error> {
    Ok(axum::Json(catalog::settings(&state, &principal, project).await?))
}

/// Allow or refuse unencrypted volume types in the project (project admins, 12.3.2-2).
#[utoipa::path(put, path = "/v1/projects/{project}/volume-settings", tag = "volumes", params(("project" = Uuid, Path)), request_body = VolumeSettings, security(("bearer" = [])),
    responses((status = 200, body = VolumeSettings), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn put_volume_settings(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(project): ApiPath<Uuid>,
    ApiJson(req): ApiJson<VolumeSettings>,
) -> Result<axum::Json<VolumeSettings>, Error> {
    Ok(axum::Json(
        catalog::set_settings(&state, &principal, project, req).await?,
    ))
}

/// The passphrase of a volume placed on the calling node (mTLS); any other node gets 404.
#[utoipa::path(post, path = "/agent/v1/volumes/{id}/passphrase", tag = "agent", params(("id" = Uuid, Path)),
    responses((status = 200, body = VolumePassphrase), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn volume_passphrase(
    State(state): State<AppState>,
    NodeIdentity(node): NodeIdentity,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<axum::Json<VolumePassphrase>, Error> {
    Ok(axum::Json(passphrase::release(&state, node, id).await?))
}
