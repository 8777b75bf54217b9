//! Image records: registration (metadata first, status `queued`), listing, deletion. The bytes
//! arrive later through [`super::upload`].

use axum::http::StatusCode;
use rampart_api::List;
use rampart_api::compute::{DiskFormat, Image, ImageCreate, ImageStatus, SignaturePolicy};
use rampart_common::page::{PageParams, finish_page};
use rampart_common::quota::Resource;
use rampart_common::{Error, names};
use rampart_compute::image;
use rampart_db::compute::{self as db, ImageRow};
use uuid::Uuid;

use super::records;
use crate::audit::operations::Operation;
use crate::auth::Principal;
use crate::state::AppState;

pub(super) fn image_view(i: ImageRow) -> Image {
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
pub(super) fn usable_ramdisk(r: &ImageRow, policy: SignaturePolicy) -> Result<(), Error> {
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

/// The request's own rules (no database).
fn check_create(req: &ImageCreate) -> Result<(), Error> {
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
            Ok(())
        }
        (None, None) => Ok(()),
        _ => Err(Error::field(
            "signature",
            "give both signature and signing_key, or neither",
        )),
    }
}

pub const CREATE: Operation = Operation::new("image.create", "image");

/// Register an image (status `queued`). A kernel's `ramdisk_image` must be a usable initrd of
/// the project; the name of a `rejected` image is free (its record is replaced).
pub async fn create(state: &AppState, principal: &Principal, project: Uuid, req: ImageCreate) -> Result<Image, Error> {
    principal.project(state, project, "project.write").await?;
    check_create(&req)?;
    let mut tx = state.db.begin().await?;
    let ramdisk = match &req.ramdisk_image {
        Some(key) => {
            let r = db::find_image(&mut tx, project, key)
                .await?
                .filter(|r| r.disk_format == "initrd")
                .ok_or_else(|| Error::field("ramdisk_image", "no initrd image of that id or name in this project"))?;
            let policy = records::policy(&mut tx, project).await?;
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
    crate::quota::enforce(state, &mut tx, project, Resource::Images, 1).await?;
    let row = ImageRow {
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
    Ok(image_view(row))
}

pub const LIST: Operation = Operation::new("image.list", "image");

/// A page of the project's images, by name.
pub async fn list(
    state: &AppState,
    principal: &Principal,
    project: Uuid,
    page: &PageParams,
) -> Result<List<Image>, Error> {
    principal.project(state, project, "project.read").await?;
    let page = page.validate()?;
    let mut conn = state.db.conn().await?;
    let rows = db::list_images(&mut conn, project, page.after.as_deref(), page.limit + 1).await?;
    let (items, next) = finish_page(rows, page.limit, |i| i.name.clone());
    Ok(List {
        items: items.into_iter().map(image_view).collect(),
        next,
    })
}

pub const GET: Operation = Operation::new("image.get", "image").target("id");

/// One image.
pub async fn get(state: &AppState, principal: &Principal, project: Uuid, id: Uuid) -> Result<Image, Error> {
    Ok(image_view(
        super::image(state, principal, project, id, "project.read").await?,
    ))
}

pub const DELETE: Operation = Operation::new("image.delete", "image").target("id");

/// Delete an image no instance uses; its bytes go when no other image shares them.
pub async fn delete(state: &AppState, principal: &Principal, project: Uuid, id: Uuid) -> Result<(), Error> {
    let img = super::image(state, principal, project, id, "project.write").await?;
    let mut tx = state.db.begin().await?;
    db::delete_image(&mut tx, id).await?;
    let orphan = match &img.storage_key {
        Some(k) => !db::storage_key_used(&mut tx, k, id).await?,
        None => false,
    };
    rampart_db::Db::commit(tx).await?;
    if orphan && let Some(k) = &img.storage_key {
        let _ = std::fs::remove_file(super::image_dir(state).join(k));
    }
    tracing::info!(image = %id, by = %principal.user.name, "image deleted");
    Ok(())
}
