//! The Compute API: trusted signing keys, per-project settings, flavors, images (metadata,
//! then the bytes streamed and verified), instances and their power actions, metrics, console
//! and events, and threshold alarms. Every handler authorizes before it acts; what the caller
//! may not see is 404, what it may see but not change is 403.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use futures::StreamExt;
use rampart_api::List;
use rampart_api::compute::*;
use rampart_common::error::ErrorBody;
use rampart_common::page::{PageParams, finish_page};
use rampart_common::quota::Resource;
use rampart_common::time::{from_ms, to_ms};
use rampart_common::{Error, names};
use rampart_compute::image::{self, Digest, ImageSignature, StreamingHasher, TrustedKey};
use rampart_compute::inspect;
use rampart_db::compute::{self as db, InstanceRow};
use rampart_iam::authz::Target;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use crate::auth::Principal;
use crate::compute::{self as logic, json_list};
use crate::http::{ApiJson, ApiPath, ApiQuery};
use crate::state::AppState;

fn image_dir(state: &AppState) -> std::path::PathBuf {
    state
        .config
        .compute
        .image_dir
        .clone()
        .unwrap_or_else(|| state.data_dir.join("images"))
}

// ---- signing keys ----

fn key_view(k: db::SigningKeyRow) -> SigningKey {
    SigningKey {
        id: k.id,
        name: k.name,
        project_id: k.project_id,
        key_id: k.key_id,
        public_key: k.public_key,
        created_at: k.created_at,
    }
}

/// Trust an Ed25519 image signing key: globally (system admins) or in one project (its admins).
#[utoipa::path(post, path = "/v1/signing-keys", tag = "compute", request_body = SigningKeyCreate, security(("bearer" = [])),
    responses((status = 201, body = SigningKey), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_signing_key(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(req): ApiJson<SigningKeyCreate>,
) -> Result<(StatusCode, axum::Json<SigningKey>), Error> {
    match req.project {
        Some(p) => {
            principal.project(&state, p, "project.admin").await?;
        }
        None => principal.require_system(&state, "system.manage")?,
    }
    names::validate_name("name", &req.name)?;
    if req.public_key.len() > 4096 {
        return Err(Error::field("public_key", "public_key is too long"));
    }
    let pk = image::PublicKey::parse(&req.public_key)
        .map_err(|e| Error::field("public_key", format!("not an Ed25519 public key: {e}")))?;
    let row = db::SigningKeyRow {
        id: Uuid::new_v4(),
        project_id: req.project,
        name: req.name,
        key_id: pk.key_id(),
        public_key: pk.to_text(),
        created_at: state.now(),
        revoked_at: None,
    };
    let mut tx = state.db.begin().await?;
    db::insert_signing_key(&mut tx, &row).await?;
    republish_project(&state, &mut tx, row.project_id).await?;
    rampart_db::Db::commit(tx).await?;
    state.notify_node_changes();
    tracing::info!(key = %row.key_id, name = %row.name, project = ?row.project_id, by = %principal.user.name, "signing key trusted");
    Ok((StatusCode::CREATED, axum::Json(key_view(row))))
}

fn key_visible(state: &AppState, principal: &Principal, k: &db::SigningKeyRow, domains: &BTreeMap<Uuid, Uuid>) -> bool {
    match k.project_id {
        None => true,
        Some(p) => domains.get(&p).is_some_and(|d| {
            principal.can(state, "project.read", Target::Project { id: p, domain: *d })
                || principal.can_in_domain(state, "identity.read", *d)
        }),
    }
}

async fn project_domains(state: &AppState, keys: &[db::SigningKeyRow]) -> Result<BTreeMap<Uuid, Uuid>, Error> {
    let mut conn = state.db.conn().await?;
    let mut out = BTreeMap::new();
    for p in keys.iter().filter_map(|k| k.project_id) {
        if let Some(proj) = rampart_db::identity::project_by_id(&mut conn, p).await? {
            out.insert(p, proj.domain_id);
        }
    }
    Ok(out)
}

/// Trusted signing keys you may see: the global ones and those of your projects.
#[utoipa::path(get, path = "/v1/signing-keys", tag = "compute", security(("bearer" = [])),
    responses((status = 200, body = List<SigningKey>), (status = 401, body = ErrorBody)))]
pub async fn list_signing_keys(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<axum::Json<List<SigningKey>>, Error> {
    let mut conn = state.db.conn().await?;
    let keys = db::list_signing_keys(&mut conn).await?;
    drop(conn);
    let domains = project_domains(&state, &keys).await?;
    let items = keys
        .into_iter()
        .filter(|k| key_visible(&state, &principal, k, &domains))
        .map(key_view)
        .collect();
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
    let mut conn = state.db.conn().await?;
    let key = db::get_signing_key(&mut conn, id).await?;
    drop(conn);
    let Some(key) = key else {
        return Err(Error::not_found("no such signing key"));
    };
    let domains = project_domains(&state, std::slice::from_ref(&key)).await?;
    if !key_visible(&state, &principal, &key, &domains) {
        return Err(Error::not_found("no such signing key"));
    }
    match key.project_id {
        Some(p) => {
            principal.project(&state, p, "project.admin").await?;
        }
        None => principal.require_system(&state, "system.manage")?,
    }
    let mut tx = state.db.begin().await?;
    db::revoke_signing_key(&mut tx, id, state.now()).await?;
    republish_project(&state, &mut tx, key.project_id).await?;
    rampart_db::Db::commit(tx).await?;
    state.notify_node_changes();
    tracing::info!(key = %key.key_id, by = %principal.user.name, "signing key revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// Re-renders the nodes that run instances of `project` (all nodes for a global change).
async fn republish_project(state: &AppState, tx: &mut rampart_db::Conn, project: Option<Uuid>) -> Result<(), Error> {
    for (node, _) in rampart_db::nodes::all_ids(tx).await? {
        let on_node = db::instances_on_node(tx, node).await?;
        if project.is_none_or(|p| on_node.iter().any(|i| i.project_id == p)) {
            crate::publish::node(&state.config, tx, node).await?;
        }
    }
    Ok(())
}

// ---- settings ----

/// The project's compute settings (image signature policy).
#[utoipa::path(get, path = "/v1/projects/{project}/compute-settings", tag = "compute", params(("project" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = ComputeSettings), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_settings(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(project): ApiPath<Uuid>,
) -> Result<axum::Json<ComputeSettings>, Error> {
    principal.project(&state, project, "project.read").await?;
    let mut conn = state.db.conn().await?;
    Ok(axum::Json(ComputeSettings {
        image_signature_policy: logic::policy(&mut conn, project).await?,
    }))
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
    principal.project(&state, project, "project.admin").await?;
    let mut tx = state.db.begin().await?;
    db::set_signature_policy(&mut tx, project, req.image_signature_policy.as_str(), state.now()).await?;
    republish_project(&state, &mut tx, Some(project)).await?;
    rampart_db::Db::commit(tx).await?;
    state.notify_node_changes();
    tracing::warn!(target: "rampart::audit", operation = "compute.settings", project = %project, policy = req.image_signature_policy.as_str(), by = %principal.user.name, "image signature policy set");
    Ok(axum::Json(req))
}

// ---- flavors ----

fn flavor_view(f: db::FlavorRow) -> Flavor {
    Flavor {
        id: f.id,
        name: f.name,
        vcpus: f.vcpus as u32,
        memory_mib: f.memory_mib as u64,
        root_disk_gib: f.root_disk_gib as u64,
    }
}

/// Flavors (every authenticated user may read them).
#[utoipa::path(get, path = "/v1/flavors", tag = "compute", params(PageParams), security(("bearer" = [])),
    responses((status = 200, body = List<Flavor>), (status = 401, body = ErrorBody)))]
pub async fn list_flavors(
    State(state): State<AppState>,
    _principal: Principal,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Result<axum::Json<List<Flavor>>, Error> {
    let page = page.validate()?;
    let mut conn = state.db.conn().await?;
    let rows = db::list_flavors(&mut conn, page.after.as_deref(), page.limit + 1).await?;
    let (items, next) = finish_page(rows, page.limit, |f| f.name.clone());
    Ok(axum::Json(List {
        items: items.into_iter().map(flavor_view).collect(),
        next,
    }))
}

/// Create a flavor (system admins).
#[utoipa::path(post, path = "/v1/flavors", tag = "compute", request_body = FlavorCreate, security(("bearer" = [])),
    responses((status = 201, body = Flavor), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_flavor(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(req): ApiJson<FlavorCreate>,
) -> Result<(StatusCode, axum::Json<Flavor>), Error> {
    principal.require_system(&state, "system.manage")?;
    names::validate_name("name", &req.name)?;
    if !(1..=64).contains(&req.vcpus) {
        return Err(Error::field("vcpus", "vcpus must be 1..=64"));
    }
    if !(64..=1 << 20).contains(&req.memory_mib) {
        return Err(Error::field("memory_mib", "memory_mib must be 64..=1048576"));
    }
    if req.root_disk_gib > 65_536 {
        return Err(Error::field("root_disk_gib", "root_disk_gib must be at most 65536"));
    }
    let row = db::FlavorRow {
        id: Uuid::new_v4(),
        name: req.name,
        vcpus: req.vcpus.into(),
        memory_mib: req.memory_mib as i64,
        root_disk_gib: req.root_disk_gib as i64,
    };
    let mut conn = state.db.conn().await?;
    db::insert_flavor(&mut conn, &row, state.now()).await?;
    tracing::info!(flavor = %row.name, by = %principal.user.name, "flavor created");
    Ok((StatusCode::CREATED, axum::Json(flavor_view(row))))
}

/// Delete a flavor no instance uses (system admins).
#[utoipa::path(delete, path = "/v1/flavors/{id}", tag = "compute", params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_flavor(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, Error> {
    principal.require_system(&state, "system.manage")?;
    let mut conn = state.db.conn().await?;
    if !db::delete_flavor(&mut conn, id).await? {
        return Err(Error::not_found("no such flavor"));
    }
    Ok(StatusCode::NO_CONTENT)
}

// ---- images ----

fn image_view(i: db::ImageRow) -> Image {
    Image {
        id: i.id,
        project_id: i.project_id,
        name: i.name,
        disk_format: DiskFormat::parse(&i.disk_format).unwrap_or(DiskFormat::Raw),
        status: ImageStatus::parse(&i.status).unwrap_or(ImageStatus::Queued),
        ramdisk_image: i.ramdisk_image_id,
        kernel_cmdline: i.kernel_cmdline,
        sha256: i.sha256,
        size_bytes: i.size_bytes.map(|s| s.max(0) as u64),
        signing_key: i.signing_key_id,
        signature_verified: i.signature_verified,
        created_at: i.created_at,
        warnings: vec![],
    }
}

fn check_cmdline(s: &str) -> Result<(), Error> {
    let ok = s.len() <= 1024
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b" ._=,:/+-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::field(
            "kernel_cmdline",
            "kernel_cmdline must be at most 1024 bytes of letters, digits, spaces and ._=,:/+-",
        ))
    }
}

/// A kernel may boot with `r` as its initrd only when `r` passed its upload checks (`active`)
/// and, under the `require` policy, its signature verified: what the node would refuse at boot
/// is refused here, with a reason, instead (422 `image_unavailable`).
fn usable_ramdisk(r: &db::ImageRow, policy: SignaturePolicy) -> Result<(), Error> {
    let why = if r.status != "active" {
        format!("the ramdisk image {:?} is {}, not active", r.name, r.status)
    } else if policy == SignaturePolicy::Require && !r.signature_verified {
        format!(
            "the ramdisk image {:?} has no verified signature and the project's policy is require",
            r.name
        )
    } else {
        return Ok(());
    };
    Err(Error::coded(StatusCode::UNPROCESSABLE_ENTITY, "image_unavailable", why))
}

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
    principal.project(&state, project, "project.write").await?;
    names::validate_name("name", &req.name)?;
    if let Some(c) = &req.kernel_cmdline {
        check_cmdline(c)?;
    }
    if req.disk_format != DiskFormat::Kernel && (req.ramdisk_image.is_some() || req.kernel_cmdline.is_some()) {
        return Err(Error::field(
            "ramdisk_image",
            "ramdisk_image and kernel_cmdline belong to kernel images",
        ));
    }
    match (&req.signature, &req.signing_key) {
        (Some(sig), Some(key)) => {
            if sig.len() > 512 || !image::ImageSignature::is_well_formed(sig) {
                return Err(Error::field("signature", "signature must be the base64 of 64 bytes"));
            }
            if key.len() != 16 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(Error::field(
                    "signing_key",
                    "signing_key must be a key id of 16 hex digits",
                ));
            }
        }
        (None, None) => {}
        _ => {
            return Err(Error::field(
                "signature",
                "give both signature and signing_key, or neither",
            ));
        }
    }
    let mut tx = state.db.begin().await?;
    let ramdisk = match &req.ramdisk_image {
        Some(key) => {
            let r = db::find_image(&mut tx, project, key)
                .await?
                .filter(|r| r.disk_format == "initrd")
                .ok_or_else(|| Error::field("ramdisk_image", "no initrd image of that id or name in this project"))?;
            let policy = logic::policy(&mut tx, project).await?;
            usable_ramdisk(&r, policy)?;
            Some(r.id)
        }
        None => None,
    };
    // A rejected upload keeps its record for the owner to see, but not its name.
    if let Some(old) = db::find_image(&mut tx, project, &req.name).await?
        && old.status == "rejected"
        && old.name == req.name
    {
        db::delete_image(&mut tx, old.id).await?;
    }
    crate::quota::enforce(&state, &mut tx, project, Resource::Images, 1).await?;
    let row = db::ImageRow {
        id: Uuid::new_v4(),
        project_id: project,
        name: req.name,
        disk_format: req.disk_format.as_str().into(),
        ramdisk_image_id: ramdisk,
        kernel_cmdline: req.kernel_cmdline,
        status: "queued".into(),
        size_bytes: None,
        sha256: None,
        signature: req.signature,
        signing_key_id: req.signing_key.map(|k| k.to_ascii_lowercase()),
        signature_verified: false,
        storage_key: None,
        created_at: state.now(),
    };
    db::insert_image(&mut tx, &row).await?;
    rampart_db::Db::commit(tx).await?;
    tracing::info!(image = %row.id, name = %row.name, project = %project, by = %principal.user.name, "image registered");
    Ok((StatusCode::CREATED, axum::Json(image_view(row))))
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
    principal.project(&state, project, "project.read").await?;
    let page = page.validate()?;
    let mut conn = state.db.conn().await?;
    let rows = db::list_images(&mut conn, project, page.after.as_deref(), page.limit + 1).await?;
    let (items, next) = finish_page(rows, page.limit, |i| i.name.clone());
    Ok(axum::Json(List {
        items: items.into_iter().map(image_view).collect(),
        next,
    }))
}

async fn project_image(
    state: &AppState,
    principal: &Principal,
    project: Uuid,
    id: Uuid,
    action: &str,
) -> Result<db::ImageRow, Error> {
    principal.project(state, project, action).await?;
    let mut conn = state.db.conn().await?;
    db::image_by_id(&mut conn, id)
        .await?
        .filter(|i| i.project_id == project)
        .ok_or_else(|| Error::not_found("no such image"))
}

/// One image.
#[utoipa::path(get, path = "/v1/projects/{project}/images/{id}", tag = "compute", params(("project" = Uuid, Path), ("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = Image), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_image(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((project, id)): ApiPath<(Uuid, Uuid)>,
) -> Result<axum::Json<Image>, Error> {
    Ok(axum::Json(image_view(
        project_image(&state, &principal, project, id, "project.read").await?,
    )))
}

/// Delete an image no instance uses.
#[utoipa::path(delete, path = "/v1/projects/{project}/images/{id}", tag = "compute", params(("project" = Uuid, Path), ("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_image(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((project, id)): ApiPath<(Uuid, Uuid)>,
) -> Result<StatusCode, Error> {
    let img = project_image(&state, &principal, project, id, "project.write").await?;
    let mut tx = state.db.begin().await?;
    db::delete_image(&mut tx, id).await?;
    let orphan = match &img.storage_key {
        Some(k) => !db::storage_key_used(&mut tx, k, id).await?,
        None => false,
    };
    rampart_db::Db::commit(tx).await?;
    if orphan && let Some(k) = &img.storage_key {
        let _ = std::fs::remove_file(image_dir(&state).join(k));
    }
    tracing::info!(image = %id, by = %principal.user.name, "image deleted");
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
    let img = project_image(&state, &principal, project, id, "project.write").await?;
    {
        let mut conn = state.db.conn().await?;
        if !db::begin_upload(&mut conn, id, state.now()).await? {
            return Err(Error::conflict(format!(
                "the image is {}: only a queued image takes data",
                img.status
            )));
        }
    }
    let dir = image_dir(&state);
    let tmp = dir.join(format!(".upload-{}", Uuid::new_v4()));
    let received = receive(&state, &dir, &tmp, body).await;
    let (digest, size) = match received {
        Ok(v) => v,
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            let mut conn = state.db.conn().await?;
            db::abort_upload(&mut conn, id, state.now()).await?;
            return Err(e);
        }
    };
    let sha = digest.to_string();
    let declared = if img.disk_format == "qcow2" {
        inspect::Declared::Qcow2
    } else {
        inspect::Declared::Opaque
    };
    if let Err(e) = inspect::check_upload(&tmp, declared, &state.config.compute.qemu_img).await {
        let _ = tokio::fs::remove_file(&tmp).await;
        let mut conn = state.db.conn().await?;
        mark_rejected(&mut conn, &state, id, size, &sha).await?;
        tracing::warn!(target: "rampart::audit", operation = "image.upload", outcome = "failure", code = inspect::CODE_IMAGE_FORMAT_INVALID, image = %id, project = %project, sha256 = %sha, reason = %e, by = %principal.user.name, "image rejected");
        return Err(Error::coded(
            StatusCode::UNPROCESSABLE_ENTITY,
            inspect::CODE_IMAGE_FORMAT_INVALID,
            format!("the image does not match its disk_format {}: {e}", img.disk_format),
        ));
    }
    let mut conn = state.db.conn().await?;
    let policy = logic::policy(&mut conn, project).await?;
    let trusted: Vec<TrustedKey> = db::trusted_keys(&mut conn, project)
        .await?
        .into_iter()
        .map(|(key_id, public_key)| TrustedKey { key_id, public_key })
        .collect();
    let verdict = match (&img.signature, &img.signing_key_id) {
        (Some(sig), Some(key_id)) => image::verify_signature(
            &digest,
            &ImageSignature {
                format: image::SIGNATURE_FORMAT.into(),
                hash_method: "sha256".into(),
                digest,
                key_type: "ed25519".into(),
                key_id: key_id.clone(),
                signature: sig.clone(),
            },
            &trusted,
        )
        .map(|_| ()),
        _ => Err(image::ImageError::Unsigned),
    };
    let mut view;
    match (verdict, policy) {
        (Err(e), SignaturePolicy::Require) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            mark_rejected(&mut conn, &state, id, size, &sha).await?;
            tracing::warn!(target: "rampart::audit", operation = "image.upload", outcome = "failure", code = IMAGE_SIGNATURE_INVALID, image = %id, project = %project, sha256 = %sha, reason = %e, by = %principal.user.name, "image rejected");
            return Err(Error::PolicyViolation {
                message: format!("the image failed its integrity check: {e}"),
                details: Some(serde_json::json!({ "code": IMAGE_SIGNATURE_INVALID })),
            });
        }
        (verdict, _) => {
            let verified = verdict.is_ok();
            let warning = match (verdict, policy) {
                (Err(e), SignaturePolicy::Warn) => Some(format!("signature not verified (policy warn): {e}")),
                _ => None,
            };
            // Stored by digest: identical bytes are kept once.
            let blob = dir.join(&sha);
            if tokio::fs::try_exists(&blob).await.unwrap_or(false) {
                let _ = tokio::fs::remove_file(&tmp).await;
            } else {
                tokio::fs::rename(&tmp, &blob)
                    .await
                    .map_err(|e| Error::internal("storing an image", e))?;
            }
            db::finish_upload(
                &mut conn,
                id,
                db::UploadResult {
                    status: "active",
                    size_bytes: size as i64,
                    sha256: &sha,
                    signature_verified: verified,
                    storage_key: Some(&sha),
                },
                state.now(),
            )
            .await?;
            view = image_view(
                db::image_by_id(&mut conn, id)
                    .await?
                    .ok_or_else(|| Error::not_found("no such image"))?,
            );
            if let Some(w) = warning {
                tracing::warn!(target: "rampart::audit", operation = "image.upload", outcome = "warning", code = IMAGE_SIGNATURE_INVALID, image = %id, project = %project, warning = %w, by = %principal.user.name, "image accepted without a valid signature");
                view.warnings.push(w);
            }
        }
    }
    tracing::info!(image = %id, sha256 = %sha, size, verified = view.signature_verified, by = %principal.user.name, "image uploaded");
    Ok(axum::Json(view))
}

/// Records a refused upload: the image stays visible as `rejected` (its name is free again for
/// the next registration), its bytes are not kept.
async fn mark_rejected(
    conn: &mut rampart_db::Conn,
    state: &AppState,
    id: Uuid,
    size: u64,
    sha: &str,
) -> Result<(), Error> {
    db::finish_upload(
        conn,
        id,
        db::UploadResult {
            status: "rejected",
            size_bytes: size as i64,
            sha256: sha,
            signature_verified: false,
            storage_key: None,
        },
        state.now(),
    )
    .await?;
    Ok(())
}

/// Streams the body into `tmp` (0600, in `dir`), hashing as it goes.
async fn receive(
    state: &AppState,
    dir: &std::path::Path,
    tmp: &std::path::Path,
    body: Body,
) -> Result<(Digest, u64), Error> {
    rampart_common::fsutil::ensure_private_dir(dir).map_err(|e| Error::internal("creating the image directory", e))?;
    let mut file = tokio::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(tmp)
        .await
        .map_err(|e| Error::internal("creating an image file", e))?;
    let max = state.config.compute.max_image_bytes;
    let mut hasher = StreamingHasher::new();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| Error::invalid("the upload was interrupted"))?;
        if hasher.len() + chunk.len() as u64 > max {
            return Err(Error::TooLarge(format!(
                "the image is larger than compute.max_image_bytes ({max})"
            )));
        }
        hasher.update(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(|e| Error::internal("writing an image", e))?;
    }
    file.sync_all()
        .await
        .map_err(|e| Error::internal("writing an image", e))?;
    let (digest, size) = hasher.finish();
    if size == 0 {
        return Err(Error::validation("the image is empty"));
    }
    Ok((digest, size))
}

// ---- instances ----

fn instance_view(i: InstanceRow) -> Instance {
    Instance {
        id: i.id,
        project_id: i.project_id,
        name: i.name,
        image_id: i.image_id,
        flavor_id: i.flavor_id,
        node_id: i.node_id,
        status: InstanceStatus::parse(&i.status).unwrap_or(InstanceStatus::Creating),
        desired_power: PowerState::parse(&i.desired_power).unwrap_or(PowerState::Stopped),
        failure: i.failure_code.map(|code| Failure {
            code,
            message: i.failure_message.unwrap_or_default(),
        }),
        user: i.login_user,
        ssh_keys: json_list(&i.ssh_keys),
        password_set: i.password_hash.is_some(),
        security_groups: json_list(&i.security_groups),
        ports: json_list(&i.ports),
        networks: json_list(&i.networks),
        tags: serde_json::from_str(&i.tags).unwrap_or_default(),
        anti_affinity: i.anti_affinity,
        vm_uid: i.vm_uid.map(|u| u as u32),
        launched_at: i.launched_at,
        created_at: i.created_at,
    }
}

/// NICs of one VM (ports plus networks).
const MAX_NICS: usize = 8;

fn check_instance(req: &InstanceCreate) -> Result<(), Error> {
    names::validate_name("name", &req.name)?;
    if req.ports.len() + req.networks.len() > MAX_NICS {
        return Err(Error::field(
            "ports",
            format!("at most {MAX_NICS} ports and networks together"),
        ));
    }
    if req.ports.iter().collect::<std::collections::BTreeSet<_>>().len() != req.ports.len() {
        return Err(Error::field("ports", "a port is named twice"));
    }
    if !req.volumes.is_empty() {
        return Err(Error::field(
            "volumes",
            "volumes are not available on this controller yet",
        ));
    }
    if req.ssh_keys.len() > 32 {
        return Err(Error::field("ssh_keys", "at most 32 keys"));
    }
    if req.security_groups.len() > 16 {
        return Err(Error::field("security_groups", "at most 16 security groups"));
    }
    if req.tags.len() > 50
        || req.tags.iter().any(|(k, v)| {
            k.is_empty()
                || k.len() > 64
                || v.len() > 256
                || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
                || v.chars().any(char::is_control)
        })
    {
        return Err(Error::field(
            "tags",
            "at most 50 tags; keys of 1..64 letters, digits and ._-/; values up to 256 printable characters",
        ));
    }
    if let Some(p) = &req.password {
        let n = p.expose().chars().count();
        if !(8..=256).contains(&n) || p.expose().chars().any(char::is_control) {
            return Err(Error::field(
                "password",
                "the password must be 8 to 256 printable characters",
            ));
        }
    }
    Ok(())
}

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
    principal.project(&state, project, "project.write").await?;
    check_instance(&req)?;
    let user = req.user.clone().unwrap_or_else(|| "rampart".into());
    // The guest config renderer is the one that checks keys, user and host name.
    rampart_compute::configdrive::render(&rampart_compute::configdrive::GuestConfig {
        instance_id: Uuid::nil(),
        hostname: req.name.clone(),
        user: user.clone(),
        ssh_authorized_keys: req.ssh_keys.clone(),
        password_hash: None,
        nics: vec![],
    })
    .map_err(|e| match e {
        rampart_compute::configdrive::ConfigDriveError::Invalid { field, reason } => Error::field(
            if field == "ssh_authorized_keys" {
                "ssh_keys"
            } else {
                field
            },
            reason,
        ),
        other => Error::internal("checking the guest configuration", other),
    })?;
    let password_hash = match &req.password {
        Some(p) => {
            let p = p.clone();
            Some(
                tokio::task::spawn_blocking(move || rampart_compute::configdrive::hash_guest_password(&p))
                    .await
                    .map_err(|e| Error::internal("hashing a guest password", e))?
                    .map_err(|e| Error::internal("hashing a guest password", e))?,
            )
        }
        None => None,
    };
    let mut tx = state.db.begin().await?;
    let image = db::find_image(&mut tx, project, &req.image)
        .await?
        .ok_or_else(|| Error::field("image", "no image of that id or name in this project"))?;
    if image.status != "active" {
        return Err(Error::field(
            "image",
            format!("the image is {}, not active", image.status),
        ));
    }
    if image.disk_format == "initrd" {
        return Err(Error::field(
            "image",
            "an initrd does not boot by itself: give its kernel image",
        ));
    }
    if let Some(rd) = image.ramdisk_image_id {
        let r = db::image_by_id(&mut tx, rd)
            .await?
            .filter(|r| r.project_id == project)
            .ok_or_else(|| {
                Error::coded(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "image_unavailable",
                    "the kernel's ramdisk image no longer exists",
                )
            })?;
        usable_ramdisk(&r, logic::policy(&mut tx, project).await?)?;
    }
    let flavor = db::find_flavor(&mut tx, &req.flavor)
        .await?
        .ok_or_else(|| Error::field("flavor", "no flavor of that id or name"))?;
    crate::quota::enforce(&state, &mut tx, project, Resource::Instances, 1).await?;
    // `networks` make a port each.
    crate::quota::enforce(&state, &mut tx, project, Resource::Ports, req.networks.len() as u64).await?;
    let nics = logic::plan_nics(&mut tx, project, &req, state.now()).await?;
    let node = logic::schedule(&mut tx, &nics.groups, req.anti_affinity, flavor.memory_mib as u64).await?;
    let start = req.start.unwrap_or(true);
    let row = InstanceRow {
        id: Uuid::new_v4(),
        project_id: project,
        name: req.name.clone(),
        image_id: image.id,
        flavor_id: flavor.id,
        node_id: Some(node),
        status: if start { "creating" } else { "stopped" }.into(),
        desired_power: if start { "running" } else { "stopped" }.into(),
        boot_seq: 1,
        failure_code: None,
        failure_message: None,
        password_hash,
        login_user: user,
        ssh_keys: serde_json::to_string(&req.ssh_keys).unwrap_or_else(|_| "[]".into()),
        tags: serde_json::to_string(&req.tags).unwrap_or_else(|_| "{}".into()),
        security_groups: serde_json::to_string(&nics.groups).unwrap_or_else(|_| "[]".into()),
        ports: "[]".into(),
        networks: serde_json::to_string(&req.networks).unwrap_or_else(|_| "[]".into()),
        anti_affinity: req.anti_affinity,
        vm_uid: None,
        launched_at: None,
        created_at: state.now(),
    };
    let before = crate::network::nodes_of_project(&mut tx, project).await?;
    db::insert_instance(&mut tx, &row).await?;
    let ports = logic::plug_nics(&mut tx, project, row.id, node, nics, state.now()).await?;
    db::set_instance_ports(
        &mut tx,
        row.id,
        &serde_json::to_string(&ports).unwrap_or_else(|_| "[]".into()),
    )
    .await?;
    let row = db::instance(&mut tx, row.id)
        .await?
        .ok_or_else(|| Error::internal("creating an instance", "row vanished"))?;
    // The node's document (its VMs and their taps) and those of every node holding the VPCs
    // (whose sets now name the new addresses), in the same transaction.
    let mut all = crate::network::nodes_of_project(&mut tx, project).await?;
    all.extend(before);
    crate::publish::nodes(&mut tx, &state.config, &all).await?;
    crate::publish::node(&state.config, &mut tx, node).await?;
    rampart_db::Db::commit(tx).await?;
    state.notify_node_changes();
    tracing::info!(instance = %row.id, name = %row.name, project = %project, node = %node, ports = ?ports, by = %principal.user.name, "instance created");
    Ok((StatusCode::ACCEPTED, axum::Json(instance_view(row))))
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
    principal.project(&state, project, "project.read").await?;
    let page = page.validate()?;
    let mut conn = state.db.conn().await?;
    let rows = db::list_instances(&mut conn, project, page.after.as_deref(), page.limit + 1).await?;
    let (items, next) = finish_page(rows, page.limit, |i| i.name.clone());
    Ok(axum::Json(List {
        items: items.into_iter().map(instance_view).collect(),
        next,
    }))
}

async fn project_instance(
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

/// One instance.
#[utoipa::path(get, path = "/v1/projects/{project}/instances/{id}", tag = "compute", params(("project" = Uuid, Path), ("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = Instance), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_instance(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((project, id)): ApiPath<(Uuid, Uuid)>,
) -> Result<axum::Json<Instance>, Error> {
    Ok(axum::Json(instance_view(
        project_instance(&state, &principal, project, id, "project.read").await?,
    )))
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
    let row = project_instance(&state, &principal, project, id, "project.write").await?;
    let mut tx = state.db.begin().await?;
    let before = crate::network::nodes_of_project(&mut tx, project).await?;
    // Unplugged at once: the node removes the taps with the VM, in the same document.
    logic::unplug_nics(&mut tx, id, state.now()).await?;
    match row.node_id {
        Some(node) => {
            db::mark_deleting(&mut tx, id, state.now()).await?;
            crate::publish::node(&state.config, &mut tx, node).await?;
        }
        None => db::delete_instance(&mut tx, id).await?,
    }
    let mut all = crate::network::nodes_of_project(&mut tx, project).await?;
    all.extend(before);
    crate::publish::nodes(&mut tx, &state.config, &all).await?;
    let after = db::instance(&mut tx, id).await?;
    rampart_db::Db::commit(tx).await?;
    state.notify_node_changes();
    tracing::info!(instance = %id, by = %principal.user.name, "instance deletion requested");
    let mut view = instance_view(row);
    view.status = after
        .map(|a| InstanceStatus::parse(&a.status).unwrap_or(InstanceStatus::Deleting))
        .unwrap_or(InstanceStatus::Deleting);
    Ok((StatusCode::ACCEPTED, axum::Json(view)))
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
    let row = project_instance(&state, &principal, project, id, "project.write").await?;
    if row.status == "deleting" {
        return Err(Error::conflict("the instance is being deleted"));
    }
    let Some(node) = row.node_id else {
        return Err(Error::conflict("the instance has no node (it was removed); delete it"));
    };
    let (power, bump, status) = match action {
        Action::Start => {
            let again = matches!(row.status.as_str(), "crashed" | "failed" | "stopped");
            ("running", again, again.then_some("creating"))
        }
        Action::Stop => ("stopped", false, None),
        Action::Reboot => ("running", true, Some("creating")),
    };
    let mut tx = state.db.begin().await?;
    db::set_desired_power(&mut tx, id, power, bump, status, state.now()).await?;
    crate::publish::node(&state.config, &mut tx, node).await?;
    let after = db::instance(&mut tx, id)
        .await?
        .ok_or_else(|| Error::not_found("no such instance"))?;
    rampart_db::Db::commit(tx).await?;
    state.notify_node_changes();
    tracing::info!(instance = %id, action = ?action, by = %principal.user.name, "instance power action");
    Ok((StatusCode::ACCEPTED, axum::Json(instance_view(after))))
}

/// The tail of the instance's serial console (what its node last reported).
#[utoipa::path(get, path = "/v1/projects/{project}/instances/{id}/console", tag = "compute", params(("project" = Uuid, Path), ("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = Console), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn console(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((project, id)): ApiPath<(Uuid, Uuid)>,
) -> Result<axum::Json<Console>, Error> {
    project_instance(&state, &principal, project, id, "project.read").await?;
    let mut conn = state.db.conn().await?;
    let c = db::console(&mut conn, id).await?;
    Ok(axum::Json(match c {
        Some((output, at)) => Console {
            output,
            updated_at: Some(at),
        },
        None => Console {
            output: String::new(),
            updated_at: None,
        },
    }))
}

/// The instance's events (boots, refusals, crashes), oldest first.
#[utoipa::path(get, path = "/v1/projects/{project}/instances/{id}/events", tag = "compute", params(("project" = Uuid, Path), ("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = List<InstanceEvent>), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn events(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((project, id)): ApiPath<(Uuid, Uuid)>,
) -> Result<axum::Json<List<InstanceEvent>>, Error> {
    project_instance(&state, &principal, project, id, "project.read").await?;
    let mut conn = state.db.conn().await?;
    let items = db::events(&mut conn, id, 1000)
        .await?
        .into_iter()
        .map(|(at, kind, detail)| InstanceEvent {
            kind,
            at,
            detail: serde_json::from_str(&detail).unwrap_or_default(),
        })
        .collect();
    Ok(axum::Json(List { items, next: None }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MetricsQuery {
    /// Only samples at or after this many seconds ago (default 3600).
    pub since_s: Option<u64>,
}

fn point(m: &db::MetricsRow) -> MetricsPoint {
    MetricsPoint {
        at: from_ms(m.at_ms),
        cpu_percent: m.cpu_percent,
        memory_bytes: m.memory_bytes.max(0) as u64,
        disk_read_bps: m.disk_read_bps,
        disk_write_bps: m.disk_write_bps,
        disk_write_iops: m.disk_write_iops,
        net_rx_bps: m.net_rx_bps,
        net_tx_bps: m.net_tx_bps,
    }
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
    project_instance(&state, &principal, project, id, "project.read").await?;
    let since = to_ms(state.now()) - q.since_s.unwrap_or(3600).min(366 * 86_400) as i64 * 1000;
    let mut conn = state.db.conn().await?;
    let rows = db::metrics(&mut conn, id, since, 5000).await?;
    let series: Vec<MetricsPoint> = rows.iter().map(point).collect();
    Ok(axum::Json(InstanceMetrics {
        latest: series.last().cloned(),
        series,
        totals: None,
    }))
}

/// How old the newest sample of an instance may be to appear in the Prometheus scrape: older
/// ones belong to stopped VMs or silent nodes, and a stale gauge would lie.
const SCRAPE_FRESH_S: i64 = 300;

/// The newest metrics of every instance in the Prometheus text format (spec 12.1-5), for the
/// operators' monitoring: `scrape_configs` with a bearer token of a system reader.
#[utoipa::path(get, path = "/v1/metrics", tag = "compute", security(("bearer" = [])),
    responses((status = 200, description = "Prometheus text exposition format 0.0.4", content_type = "text/plain", body = String),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn prometheus(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<impl axum::response::IntoResponse, Error> {
    principal.require_system(&state, "system.read")?;
    let mut conn = state.db.conn().await?;
    let rows = db::latest_metrics(&mut conn, to_ms(state.now()) - SCRAPE_FRESH_S * 1000).await?;
    let items: Vec<_> = rows
        .into_iter()
        .map(|(id, project, m)| {
            let metrics = rampart_compute::monitor::Metrics {
                at_ms: m.at_ms,
                cpu_percent: m.cpu_percent,
                memory_bytes: u64::try_from(m.memory_bytes).unwrap_or(0),
                disk_read_bps: m.disk_read_bps,
                disk_write_bps: m.disk_write_bps,
                disk_write_iops: m.disk_write_iops,
                net_rx_bps: m.net_rx_bps,
                net_tx_bps: m.net_tx_bps,
            };
            (id, project.to_string(), metrics)
        })
        .collect();
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        format!(
            "{}# HELP rampart_hsm_errors HSM failures seen by this controller since it started (retried ones included).\n\
             # TYPE rampart_hsm_errors gauge\nrampart_hsm_errors {}\n",
            rampart_compute::monitor::prometheus_text(&items),
            state.kms.service.error_count()
        ),
    ))
}

// ---- alarms ----

fn alarm_view(a: db::AlarmRow) -> Alarm {
    Alarm {
        id: a.id,
        project_id: a.project_id,
        name: a.name,
        instance: a.instance_id,
        metric: a.metric,
        comparison: a.comparison,
        threshold: a.threshold,
        periods: a.periods as u32,
        datapoints: a.datapoints as u32,
        period_s: a.period_s as u64,
        windows: serde_json::from_str(&a.windows).unwrap_or_default(),
        webhooks: json_list(&a.webhooks),
        state: AlarmState::parse(&a.state).unwrap_or(AlarmState::InsufficientData),
        state_since: a.state_since,
    }
}

/// Create a threshold alarm on one metric of an instance (spec 12.1-6).
#[utoipa::path(post, path = "/v1/projects/{project}/alarms", tag = "compute", params(("project" = Uuid, Path)), request_body = AlarmCreate, security(("bearer" = [])),
    responses((status = 201, body = Alarm), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_alarm(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(project): ApiPath<Uuid>,
    ApiJson(req): ApiJson<AlarmCreate>,
) -> Result<(StatusCode, axum::Json<Alarm>), Error> {
    principal.project(&state, project, "project.write").await?;
    names::validate_name("name", &req.name)?;
    if !rampart_compute::monitor::METRICS.contains(&req.metric.as_str()) {
        return Err(Error::field(
            "metric",
            format!("metric must be one of {}", rampart_compute::monitor::METRICS.join(", ")),
        ));
    }
    let comparison: rampart_compute::alarm::Comparison =
        serde_json::from_value(serde_json::Value::String(req.comparison.clone()))
            .map_err(|_| Error::field("comparison", "comparison must be >, >=, < or <="))?;
    let windows: Vec<rampart_compute::alarm::TimeWindow> = req
        .windows
        .iter()
        .map(|w| rampart_compute::alarm::TimeWindow {
            days: w.days.clone(),
            start_minute: w.start_minute,
            end_minute: w.end_minute,
            threshold: w.threshold,
        })
        .collect();
    let rule = rampart_compute::alarm::AlarmRule {
        metric: req.metric.clone(),
        comparison,
        threshold: req.threshold,
        period_s: req.period_s,
        periods: req.periods,
        datapoints: req.datapoints,
        windows: windows.clone(),
    };
    rule.validate().map_err(|e| Error::field("period_s", e.to_string()))?;
    if req.webhooks.len() > 8 || req.webhooks.iter().any(|u| u.len() > 2048) {
        return Err(Error::field("webhooks", "at most 8 webhooks of at most 2048 bytes"));
    }
    let policy = logic::webhook_policy(&state.config.compute)?;
    for u in &req.webhooks {
        policy.check_url(u).map_err(|e| {
            Error::field(
                "webhooks",
                format!(
                    "{e}: each webhook is an https:// URL under a prefix allowed by compute.alarm_webhook_prefixes"
                ),
            )
        })?;
    }
    let mut conn = state.db.conn().await?;
    db::instance(&mut conn, req.instance)
        .await?
        .filter(|i| i.project_id == project)
        .ok_or_else(|| Error::field("instance", "no such instance in this project"))?;
    let now = state.now();
    let row = db::AlarmRow {
        id: Uuid::new_v4(),
        project_id: project,
        name: req.name,
        instance_id: req.instance,
        metric: req.metric,
        comparison: req.comparison,
        threshold: req.threshold,
        period_s: req.period_s as i64,
        periods: req.periods.into(),
        datapoints: req.datapoints.into(),
        windows: serde_json::to_string(&windows).unwrap_or_else(|_| "[]".into()),
        webhooks: serde_json::to_string(&req.webhooks).unwrap_or_else(|_| "[]".into()),
        state: "INSUFFICIENT_DATA".into(),
        state_since: now,
        last_evaluated_at: None,
        created_at: now,
    };
    db::insert_alarm(&mut conn, &row).await?;
    tracing::info!(alarm = %row.id, name = %row.name, by = %principal.user.name, "alarm created");
    Ok((StatusCode::CREATED, axum::Json(alarm_view(row))))
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
    principal.project(&state, project, "project.read").await?;
    let page = page.validate()?;
    let mut conn = state.db.conn().await?;
    let rows = db::list_alarms(&mut conn, project, page.after.as_deref(), page.limit + 1).await?;
    let (items, next) = finish_page(rows, page.limit, |a| a.name.clone());
    Ok(axum::Json(List {
        items: items.into_iter().map(alarm_view).collect(),
        next,
    }))
}

async fn project_alarm(
    state: &AppState,
    principal: &Principal,
    project: Uuid,
    id: Uuid,
    action: &str,
) -> Result<db::AlarmRow, Error> {
    principal.project(state, project, action).await?;
    let mut conn = state.db.conn().await?;
    db::alarm(&mut conn, id)
        .await?
        .filter(|a| a.project_id == project)
        .ok_or_else(|| Error::not_found("no such alarm"))
}

/// One alarm.
#[utoipa::path(get, path = "/v1/projects/{project}/alarms/{id}", tag = "compute", params(("project" = Uuid, Path), ("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = Alarm), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_alarm(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((project, id)): ApiPath<(Uuid, Uuid)>,
) -> Result<axum::Json<Alarm>, Error> {
    Ok(axum::Json(alarm_view(
        project_alarm(&state, &principal, project, id, "project.read").await?,
    )))
}

/// Delete an alarm.
#[utoipa::path(delete, path = "/v1/projects/{project}/alarms/{id}", tag = "compute", params(("project" = Uuid, Path), ("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_alarm(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((project, id)): ApiPath<(Uuid, Uuid)>,
) -> Result<StatusCode, Error> {
    project_alarm(&state, &principal, project, id, "project.write").await?;
    let mut conn = state.db.conn().await?;
    db::delete_alarm(&mut conn, id).await?;
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
    project_alarm(&state, &principal, project, id, "project.read").await?;
    let mut conn = state.db.conn().await?;
    let items = db::alarm_transitions(&mut conn, id)
        .await?
        .into_iter()
        .map(|(at, from, to, reason)| AlarmTransition {
            at,
            from: AlarmState::parse(&from).unwrap_or(AlarmState::InsufficientData),
            to: AlarmState::parse(&to).unwrap_or(AlarmState::InsufficientData),
            reason,
        })
        .collect();
    Ok(axum::Json(List { items, next: None }))
}
