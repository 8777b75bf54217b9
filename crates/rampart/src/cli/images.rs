//! `rampart image ...`: image signing keys made and used on the user's machine (the private half
//! never leaves it), trusting their public halves, and the images API. `upload` registers the image with its signature, then
//! streams the file from disk; the controller hashes it as it arrives and checks the signature
//! against its trusted keys (`/v1/signing-keys`) under the project's policy.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Subcommand;
use rampart_api::compute::{DiskFormat, Image, ImageCreate, SigningKeyCreate};
use rampart_compute::image::{self, ImageSignature};
use uuid::Uuid;

use super::print;
use super::session::client;

/// A whole upload (the bytes go through the controller's hash as they stream).
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

#[derive(Subcommand)]
pub enum ImageCmd {
    /// A new Ed25519 signing key pair: the private half written 0600 (PKCS#8 PEM), the public
    /// half (SPKI PEM) to trust with `POST /v1/signing-keys`.
    Keygen { private: PathBuf, public: PathBuf },
    /// Sign an image file with a private key: writes FILE.sig beside it.
    Sign {
        file: PathBuf,
        #[arg(long)]
        key: PathBuf,
    },
    /// Trust a public key for image signatures (`POST /v1/signing-keys`): in one project, or in
    /// every project without --project (system admins).
    Trust {
        public: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long)]
        project: Option<Uuid>,
    },
    /// Register an image and stream its bytes. The signature is FILE.sig when it exists (or
    /// --signature); without one the project's policy decides (`require` refuses).
    Upload {
        file: PathBuf,
        #[arg(long)]
        project: Uuid,
        #[arg(long)]
        name: String,
        #[arg(long, value_parser = ["kernel", "initrd", "raw", "qcow2"])]
        format: String,
        /// A signature file made by `rampart image sign` [default: FILE.sig if present].
        #[arg(long)]
        signature: Option<PathBuf>,
        /// For a kernel: its initramfs image (id or name).
        #[arg(long)]
        ramdisk: Option<String>,
        /// For a kernel: extra kernel command-line words.
        #[arg(long)]
        kernel_cmdline: Option<String>,
    },
    /// The project's images.
    List {
        #[arg(long)]
        project: Uuid,
    },
    /// One image: status, digest, signing key, whether its signature verified.
    Show {
        id: Uuid,
        #[arg(long)]
        project: Uuid,
    },
    /// Delete an image (its bytes go when no other image shares them).
    Delete {
        id: Uuid,
        #[arg(long)]
        project: Uuid,
    },
}

fn disk_format(s: &str) -> DiskFormat {
    match s {
        "kernel" => DiskFormat::Kernel,
        "initrd" => DiskFormat::Initrd,
        "qcow2" => DiskFormat::Qcow2,
        _ => DiskFormat::Raw,
    }
}

fn read_signature(path: &Path) -> anyhow::Result<ImageSignature> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(ImageSignature::from_json(&text)?)
}

pub async fn image(cmd: ImageCmd) -> anyhow::Result<()> {
    match cmd {
        ImageCmd::Keygen { private, public } => {
            let pk = image::write_new_keypair(&private, &public)?;
            print(&serde_json::json!({"key_id": pk.key_id(), "public_key": pk.to_text()}))
        }
        ImageCmd::Sign { file, key } => {
            let (sig, out) = image::sign_image_file(&key, &file)?;
            print(&serde_json::json!({"signature_file": out, "sha256": sig.digest.to_string(), "key_id": sig.key_id}))
        }
        ImageCmd::Trust { public, name, project } => {
            let text = std::fs::read_to_string(&public).map_err(|e| anyhow::anyhow!("{}: {e}", public.display()))?;
            let body = SigningKeyCreate {
                name,
                public_key: image::PublicKey::parse(&text)?.to_text(),
                project,
            };
            print(
                &client()?
                    .post::<_, serde_json::Value>("/v1/signing-keys", &body)
                    .await?,
            )
        }
        ImageCmd::Upload {
            file,
            project,
            name,
            format,
            signature,
            ramdisk,
            kernel_cmdline,
        } => {
            let sig_path = signature.or_else(|| {
                let mut p = file.as_os_str().to_owned();
                p.push(".sig");
                Some(PathBuf::from(p)).filter(|p| p.exists())
            });
            let sig = sig_path.as_deref().map(read_signature).transpose()?;
            if !file.is_file() {
                anyhow::bail!("{}: not a file", file.display());
            }
            let c = client()?;
            let created: Image = c
                .post(
                    &format!("/v1/projects/{project}/images"),
                    &ImageCreate {
                        name,
                        disk_format: disk_format(&format),
                        ramdisk_image: ramdisk,
                        kernel_cmdline,
                        signature: sig.as_ref().map(|s| s.signature.clone()),
                        signing_key: sig.as_ref().map(|s| s.key_id.clone()),
                    },
                )
                .await?;
            let done: Image = c
                .put_file(
                    &format!("/v1/projects/{project}/images/{}/data", created.id),
                    &file,
                    UPLOAD_TIMEOUT,
                )
                .await?;
            print(&done)
        }
        ImageCmd::List { project } => print(
            &client()?
                .get::<serde_json::Value>(&format!("/v1/projects/{project}/images"))
                .await?,
        ),
        ImageCmd::Show { id, project } => print(
            &client()?
                .get::<Image>(&format!("/v1/projects/{project}/images/{id}"))
                .await?,
        ),
        ImageCmd::Delete { id, project } => Ok(client()?
            .send::<()>(
                http::Method::DELETE,
                &format!("/v1/projects/{project}/images/{id}"),
                None,
            )
            .await
            .map(|_| ())?),
    }
}
