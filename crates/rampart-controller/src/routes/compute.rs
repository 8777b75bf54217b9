//! The Compute API: trusted signing keys, per-project settings, flavors, images (metadata,
//! then the bytes streamed and verified), instances and their power actions, metrics, console
//! and events, and threshold alarms. Handlers parse, call the use case of
//! [`crate::app::compute`] (which authorizes before it acts: what the caller may not see is
//! 404, what it may see but not change is 403) and render.

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use rampart_api::List;
use rampart_api::compute::*;
use rampart_common::Error;
use rampart_common::error::ErrorBody;
use rampart_common::page::PageParams;
use serde::Deserialize;
use uuid::Uuid;

use crate::app::compute::instances::PowerAction;
use crate::app::compute::{alarms, flavors, images, instances, monitoring, signing_keys, upload};
use crate::auth::Principal;
use crate::http::{ApiJson, ApiPath, ApiQuery};
use crate::state::AppState;

// ---- signing keys and settings ----

/// Trust an Ed25519 image signing key: globally (system admins) or in one project (its admins).
#[utoipa::path(post, path = "/v1/signing-keys", tag = "compute", request_body = SigningKeyCreate, security(("bearer" = [])),
    responses((status = 201, body = SigningKey), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_signing_key(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(req): ApiJson<SigningKeyCreate>,
) -> Result<(StatusCode, axum::Json<SigningKey>), Error> {
    let key = signing_keys::create(&state, &principal, req).await?;
    Ok((StatusCode::CREATED, axum::Json(key)))
}

/// Trusted signing keys you may see: the global ones and those of your projects.
#[utoipa::path(get, path = "/v1/signing-keys", tag = "compute", security(("bearer" = [])),
    responses((status = 200, body = List<SigningKey>), (status = 401, body = ErrorBody)))]
pub async fn list_signing_keys(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<axum::Json<List<SigningKey>>, Error> {
    let items = signing_keys::list(&state, &principal).await?;
    Ok(axum::Json(List { items, next: None }))
}

/// Stop trusting a key (images it signed no longer boot under `require`).
#[utoipa::path(delete, path = "/v1/signing-keys/{id}", tag = "compute", params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Revoked"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_signing_key(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, Error> {
    signing_keys::revoke(&state, &principal, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The project's compute settings (image signature policy).
#[utoipa::path(get, path = "/v1/projects/{project}/compute-settings", tag = "compute", params(("project" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = ComputeSettings), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_settings(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(project): ApiPath<Uuid>,
) -> Result<axum::Json<ComputeSettings>, Error> {
    Ok(axum::Json(signing_keys::settings(&state, &principal, project).await?))
}

/// Set the image signature policy: `require` (default), `warn` or `off` (project admins).
#[utoipa::path(put, path = "/v1/projects/{project}/compute-settings", tag = "compute", params(("project" = Uuid, Path)), request_body = ComputeSettings, security(("bearer" = [])),
    responses((status = 200, body = ComputeSettings), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn put_settings(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(project): ApiPath<Uuid>,
    ApiJson(req): ApiJson<ComputeSettings>,
) -> Result<axum::Json<ComputeSettings>, Error> {
    Ok(axum::Json(
        signing_keys::set_settings(&state, &principal, project, req).await?,
    ))
}

// ---- flavors ----

/// Flavors (every authenticated user may read them).
#[utoipa::path(get, path = "/v1/flavors", tag = "compute", params(PageParams), security(("bearer" = [])),
    responses((status = 200, body = List<Flavor>), (status = 401, body = ErrorBody)))]
pub async fn list_flavors(
    State(state): State<AppState>,
    _principal: Principal,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Result<axum::Json<List<Flavor>>, Error> {
    Ok(axum::Json(flavors::list(&state, &page).await?))
}

/// Create a flavor (system admins).
#[utoipa::path(post, path = "/v1/flavors", tag = "compute", request_body = FlavorCreate, security(("bearer" = [])),
    responses((status = 201, body = Flavor), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_flavor(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(req): ApiJson<FlavorCreate>,
) -> Result<(StatusCode, axum::Json<Flavor>), Error> {
    let flavor = flavors::create(&state, &principal, req).await?;
    Ok((StatusCode::CREATED, axum::Json(flavor)))
}

/// Delete a flavor no instance uses (system admins).
#[utoipa::path(delete, path = "/v1/flavors/{id}", tag = "compute", params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_flavor(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, Error> {
    flavors::delete(&state, &principal, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- images ----

/// Register an image (status `queued`); then upload its bytes with `PUT …/{id}/data`. A
/// kernel's `ramdisk_image` must be an `active` initrd of the project (signature verified
/// under the `require` policy), else 422 `image_unavailable`. The name of a `rejected` image
/// is free: registering it again replaces the rejected record.
#[utoipa::path(post, path = "/v1/projects/{project}/images", tag = "compute", params(("project" = Uuid, Path)), request_body = ImageCreate, security(("bearer" = [])),
    responses((status = 201, body = Image), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody, description = "image_unavailable: the ramdisk image is not active and verified")))]
pub async fn create_image(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(project): ApiPath<Uuid>,
    ApiJson(req): ApiJson<ImageCreate>,
) -> Result<(StatusCode, axum::Json<Image>), Error> {
    let image = images::create(&state, &principal, project, req).await?;
    Ok((StatusCode::CREATED, axum::Json(image)))
}

/// Images of the project.
#[utoipa::path(get, path = "/v1/projects/{project}/images", tag = "compute", params(("project" = Uuid, Path), PageParams), security(("bearer" = [])),
    responses((status = 200, body = List<Image>), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_images(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(project): ApiPath<Uuid>,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Result<axum::Json<List<Image>>, Error> {
    Ok(axum::Json(images::list(&state, &principal, project, &page).await?))
}

/// One image.
#[utoipa::path(get, path = "/v1/projects/{project}/images/{id}", tag = "compute", params(("project" = Uuid, Path), ("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = Image), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_image(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((project, id)): ApiPath<(Uuid, Uuid)>,
) -> Result<axum::Json<Image>, Error> {
    Ok(axum::Json(images::get(&state, &principal, project, id).await?))
}

/// Delete an image no instance uses.
#[utoipa::path(delete, path = "/v1/projects/{project}/images/{id}", tag = "compute", params(("project" = Uuid, Path), ("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_image(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((project, id)): ApiPath<(Uuid, Uuid)>,
) -> Result<StatusCode, Error> {
    images::delete(&state, &principal, project, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Upload the image's bytes (raw body, streamed to disk and hashed with SHA-256 on the way).
/// The digest's signature is then checked against the trusted keys under the project's
/// policy: under `require` a missing, untrusted or bad signature leaves the image `rejected`
/// and answers 422 `policy_violation` with `details.code = image_signature_invalid`. Before
/// that, the bytes must match the `disk_format`: a qcow2 naming a backing file or an external
/// data file, a raw/kernel/initrd image starting with a qcow2, VMDK, VHD(X) or other container
/// header, or a qcow2 that is none leaves the image `rejected` with 422 `image_format_invalid`.
#[utoipa::path(put, path = "/v1/projects/{project}/images/{id}/data", tag = "compute", params(("project" = Uuid, Path), ("id" = Uuid, Path)),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"), security(("bearer" = [])),
    responses((status = 200, body = Image), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn upload_image_data(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((project, id)): ApiPath<(Uuid, Uuid)>,
    body: Body,
) -> Result<axum::Json<Image>, Error> {
    Ok(axum::Json(upload::upload(&state, &principal, project, id, body).await?))
}

// ---- instances ----

/// Launch an instance: validated, placed on a ready node (members of a security group spread
/// over nodes), and published to that node in one transaction. The node verifies the image
/// before it boots it.
#[utoipa::path(post, path = "/v1/projects/{project}/instances", tag = "compute", params(("project" = Uuid, Path)), request_body = InstanceCreate, security(("bearer" = [])),
    responses((status = 202, body = Instance), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody, description = "image_unavailable: the kernel's ramdisk image is not active and verified"), (status = 503, body = ErrorBody)))]
pub async fn create_instance(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(project): ApiPath<Uuid>,
    ApiJson(req): ApiJson<InstanceCreate>,
) -> Result<(StatusCode, axum::Json<Instance>), Error> {
    let instance = instances::create(&state, &principal, project, req).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(instance)))
}

/// Instances of the project.
#[utoipa::path(get, path = "/v1/projects/{project}/instances", tag = "compute", params(("project" = Uuid, Path), PageParams), security(("bearer" = [])),
    responses((status = 200, body = List<Instance>), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_instances(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(project): ApiPath<Uuid>,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Result<axum::Json<List<Instance>>, Error> {
    Ok(axum::Json(instances::list(&state, &principal, project, &page).await?))
}

/// One instance.
#[utoipa::path(get, path = "/v1/projects/{project}/instances/{id}", tag = "compute", params(("project" = Uuid, Path), ("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = Instance), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_instance(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((project, id)): ApiPath<(Uuid, Uuid)>,
) -> Result<axum::Json<Instance>, Error> {
    Ok(axum::Json(instances::get(&state, &principal, project, id).await?))
}

/// Delete an instance: its node stops it and removes everything it had; the instance is gone
/// once the node confirms.
#[utoipa::path(delete, path = "/v1/projects/{project}/instances/{id}", tag = "compute", params(("project" = Uuid, Path), ("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 202, body = Instance), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_instance(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((project, id)): ApiPath<(Uuid, Uuid)>,
) -> Result<(StatusCode, axum::Json<Instance>), Error> {
    let instance = instances::delete(&state, &principal, project, id).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(instance)))
}

#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Start,
    Stop,
    Reboot,
}

/// `start`, `stop` or `reboot` (a reboot is a stop and a new boot, so the image is verified
/// again). Starting a crashed or failed instance boots it again.
#[utoipa::path(post, path = "/v1/projects/{project}/instances/{id}/{action}", tag = "compute",
    params(("project" = Uuid, Path), ("id" = Uuid, Path), ("action" = Action, Path)), security(("bearer" = [])),
    responses((status = 202, body = Instance), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn instance_action(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((project, id, action)): ApiPath<(Uuid, Uuid, Action)>,
) -> Result<(StatusCode, axum::Json<Instance>), Error> {
    let action = match action {
        Action::Start => PowerAction::Start,
        Action::Stop => PowerAction::Stop,
        Action::Reboot => PowerAction::Reboot,
    };
    let instance = instances::power(&state, &principal, project, id, action).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(instance)))
}

/// The tail of the instance's serial console (what its node last reported).
#[utoipa::path(get, path = "/v1/projects/{project}/instances/{id}/console", tag = "compute", params(("project" = Uuid, Path), ("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = Console), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn console(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((project, id)): ApiPath<(Uuid, Uuid)>,
) -> Result<axum::Json<Console>, Error> {
    Ok(axum::Json(instances::console(&state, &principal, project, id).await?))
}

/// The instance's events (boots, refusals, crashes), oldest first.
#[utoipa::path(get, path = "/v1/projects/{project}/instances/{id}/events", tag = "compute", params(("project" = Uuid, Path), ("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = List<InstanceEvent>), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn events(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((project, id)): ApiPath<(Uuid, Uuid)>,
) -> Result<axum::Json<List<InstanceEvent>>, Error> {
    Ok(axum::Json(instances::events(&state, &principal, project, id).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MetricsQuery {
    /// Only samples at or after this many seconds ago (default 3600).
    pub since_s: Option<u64>,
}

/// CPU, memory, disk and network rates of the instance (spec 12.1-5), oldest first.
#[utoipa::path(get, path = "/v1/projects/{project}/instances/{id}/metrics", tag = "compute", params(("project" = Uuid, Path), ("id" = Uuid, Path), MetricsQuery), security(("bearer" = [])),
    responses((status = 200, body = InstanceMetrics), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn metrics(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((project, id)): ApiPath<(Uuid, Uuid)>,
    ApiQuery(q): ApiQuery<MetricsQuery>,
) -> Result<axum::Json<InstanceMetrics>, Error> {
    let metrics = monitoring::instance_metrics(&state, &principal, project, id, q.since_s).await?;
    Ok(axum::Json(metrics))
}

/// The newest metrics of every instance in the Prometheus text format (spec 12.1-5), for the
/// operators' monitoring: `scrape_configs` with a bearer token of a system reader.
#[utoipa::path(get, path = "/v1/metrics", tag = "compute", security(("bearer" = [])),
    responses((status = 200, description = "Prometheus text exposition format 0.0.4", content_type = "text/plain", body = String),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn prometheus(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<impl axum::response::IntoResponse, Error> {
    let text = monitoring::prometheus(&state, &principal).await?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    ))
}

// ---- alarms ----

/// Create a threshold alarm on one metric of an instance (spec 12.1-6).
#[utoipa::path(post, path = "/v1/projects/{project}/alarms", tag = "compute", params(("project" = Uuid, Path)), request_body = AlarmCreate, security(("bearer" = [])),
    responses((status = 201, body = Alarm), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_alarm(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(project): ApiPath<Uuid>,
    ApiJson(req): ApiJson<AlarmCreate>,
) -> Result<(StatusCode, axum::Json<Alarm>), Error> {
    let alarm = alarms::create(&state, &principal, project, req).await?;
    Ok((StatusCode::CREATED, axum::Json(alarm)))
}

/// Alarms of the project.
#[utoipa::path(get, path = "/v1/projects/{project}/alarms", tag = "compute", params(("project" = Uuid, Path), PageParams), security(("bearer" = [])),
    responses((status = 200, body = List<Alarm>), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_alarms(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(project): ApiPath<Uuid>,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Result<axum::Json<List<Alarm>>, Error> {
    Ok(axum::Json(alarms::list(&state, &principal, project, &page).await?))
}

/// One alarm.
#[utoipa::path(get, path = "/v1/projects/{project}/alarms/{id}", tag = "compute", params(("project" = Uuid, Path), ("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = Alarm), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_alarm(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((project, id)): ApiPath<(Uuid, Uuid)>,
) -> Result<axum::Json<Alarm>, Error> {
    Ok(axum::Json(alarms::get(&state, &principal, project, id).await?))
}

/// Delete an alarm.
#[utoipa::path(delete, path = "/v1/projects/{project}/alarms/{id}", tag = "compute", params(("project" = Uuid, Path), ("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_alarm(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((project, id)): ApiPath<(Uuid, Uuid)>,
) -> Result<StatusCode, Error> {
    alarms::delete(&state, &principal, project, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The alarm's state transitions, oldest first.
#[utoipa::path(get, path = "/v1/projects/{project}/alarms/{id}/history", tag = "compute", params(("project" = Uuid, Path), ("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = List<AlarmTransition>), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn alarm_history(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((project, id)): ApiPath<(Uuid, Uuid)>,
) -> Result<axum::Json<List<AlarmTransition>>, Error> {
    Ok(axum::Json(alarms::history(&state, &principal, project, id).await?))
}
