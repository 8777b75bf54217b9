//! An image's bytes: streamed to a private temporary file and hashed on the way (never held in
//! memory), checked against the declared disk format, the digest's signature verified under the
//! project's policy, then kept by digest or the image marked `rejected`.

use axum::body::Body;
use axum::http::StatusCode;
use futures::StreamExt;
use rampart_api::compute::{IMAGE_SIGNATURE_INVALID, Image, SignaturePolicy};
use rampart_common::Error;
use rampart_compute::image::{self, Digest, ImageSignature, StreamingHasher, TrustedKey};
use rampart_compute::inspect;
use rampart_db::compute::{self as db, ImageRow};
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use super::images::image_view;
use super::records;
use crate::audit::operations::Operation;
use crate::auth::Principal;
use crate::state::AppState;

pub const UPLOAD: Operation = Operation::new("image.data", "image").target("id");

/// Upload the bytes of the queued image `id` (see the route for the refusals).
pub async fn upload(
    state: &AppState,
    principal: &Principal,
    project: Uuid,
    id: Uuid,
    body: Body,
) -> Result<Image, Error> {
    let img = super::image(state, principal, project, id, "project.write").await?;
    {
        let mut conn = state.db.conn().await?;
        if !db::begin_upload(&mut conn, id, state.now()).await? {
            return Err(Error::conflict(format!(
                "the image is {}: only a queued image takes data",
                img.status
            )));
        }
    }
    let dir = super::image_dir(state);
    let tmp = dir.join(format!(".upload-{}", Uuid::new_v4()));
    let (digest, size) = match receive(state, &dir, &tmp, body).await {
        Ok(v) => v,
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            let mut conn = state.db.conn().await?;
            db::abort_upload(&mut conn, id, state.now()).await?;
            return Err(e);
        }
    };
    let sha = digest.to_string();
    let received = Received {
        img: &img,
        project,
        tmp: &tmp,
        size,
        sha: &sha,
    };
    check_format(state, principal, &received).await?;
    let mut conn = state.db.conn().await?;
    let policy = records::policy(&mut conn, project).await?;
    let verdict = verify(&mut conn, &img, project, digest).await?;
    let (verified, warning) = match (verdict, policy) {
        (Err(e), SignaturePolicy::Require) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            mark_rejected(&mut conn, state, id, size, &sha).await?;
            tracing::warn!(target: "rampart::audit", operation = "image.upload", outcome = "failure", code = IMAGE_SIGNATURE_INVALID, image = %id, project = %project, sha256 = %sha, reason = %e, by = %principal.user.name, "image rejected");
            return Err(Error::PolicyViolation {
                message: format!("the image failed its integrity check: {e}"),
                details: Some(serde_json::json!({ "code": IMAGE_SIGNATURE_INVALID })),
            });
        }
        (Ok(()), _) => (true, None),
        (Err(e), SignaturePolicy::Warn) => (false, Some(format!("signature not verified (policy warn): {e}"))),
        (Err(_), _) => (false, None),
    };
    let mut view = keep(state, &mut conn, &received, verified).await?;
    if let Some(w) = warning {
        tracing::warn!(target: "rampart::audit", operation = "image.upload", outcome = "warning", code = IMAGE_SIGNATURE_INVALID, image = %id, project = %project, warning = %w, by = %principal.user.name, "image accepted without a valid signature");
        view.warnings.push(w);
    }
    tracing::info!(image = %id, sha256 = %sha, size, verified = view.signature_verified, by = %principal.user.name, "image uploaded");
    Ok(view)
}

/// The bytes received, in their temporary file.
struct Received<'a> {
    img: &'a ImageRow,
    project: Uuid,
    tmp: &'a std::path::Path,
    size: u64,
    sha: &'a str,
}

/// The bytes must be what the `disk_format` says (no qcow2 with a backing or data file, no
/// container header in a raw image), else the image is `rejected` (422 `image_format_invalid`).
async fn check_format(state: &AppState, principal: &Principal, r: &Received<'_>) -> Result<(), Error> {
    let declared = if r.img.disk_format == "qcow2" {
        inspect::Declared::Qcow2
    } else {
        inspect::Declared::Opaque
    };
    let Err(e) = inspect::check_upload(r.tmp, declared, &state.config.compute.qemu_img).await else {
        return Ok(());
    };
    let _ = tokio::fs::remove_file(r.tmp).await;
    let mut conn = state.db.conn().await?;
    mark_rejected(&mut conn, state, r.img.id, r.size, r.sha).await?;
    tracing::warn!(target: "rampart::audit", operation = "image.upload", outcome = "failure", code = inspect::CODE_IMAGE_FORMAT_INVALID, image = %r.img.id, project = %r.project, sha256 = %r.sha, reason = %e, by = %principal.user.name, "image rejected");
    Err(Error::coded(
        StatusCode::UNPROCESSABLE_ENTITY,
        inspect::CODE_IMAGE_FORMAT_INVALID,
        format!("the image does not match its disk_format {}: {e}", r.img.disk_format),
    ))
}

/// The signature of `digest` checked against the project's trusted keys (and the global ones).
async fn verify(
    conn: &mut rampart_db::Conn,
    img: &ImageRow,
    project: Uuid,
    digest: Digest,
) -> Result<Result<(), image::ImageError>, Error> {
    let trusted: Vec<TrustedKey> = db::trusted_keys(conn, project)
        .await?
        .into_iter()
        .map(|(key_id, public_key)| TrustedKey { key_id, public_key })
        .collect();
    Ok(match (&img.signature, &img.signing_key_id) {
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
    })
}

/// Keeps the bytes (by digest: identical bytes are kept once) and marks the image `active`.
async fn keep(state: &AppState, conn: &mut rampart_db::Conn, r: &Received<'_>, verified: bool) -> Result<Image, Error> {
    let blob = super::image_dir(state).join(r.sha);
    if tokio::fs::try_exists(&blob).await.unwrap_or(false) {
        let _ = tokio::fs::remove_file(r.tmp).await;
    } else {
        tokio::fs::rename(r.tmp, &blob)
            .await
            .map_err(|e| Error::internal("storing an image", e))?;
    }
    db::finish_upload(
        conn,
        r.img.id,
        db::UploadResult {
            status: "active",
            size_bytes: r.size as i64,
            sha256: r.sha,
            signature_verified: verified,
            storage_key: Some(r.sha),
        },
        state.now(),
    )
    .await?;
    Ok(image_view(
        db::image_by_id(conn, r.img.id)
            .await?
            .ok_or_else(|| Error::not_found("no such image"))?,
    ))
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
