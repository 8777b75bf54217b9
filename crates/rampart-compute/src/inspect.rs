//! Upload-time format checks of tenant images (spec 12.1-1, the class of OSSA-2024-001).
//!
//! A qcow2 header may name a backing file or an external data file by host path; a QEMU that
//! opens the image would then read (or write) that host file on the tenant's behalf. A raw
//! image that starts with a qcow2/VMDK/VHD header is the same attack waiting for a format
//! probe. So every upload is checked against the format it was registered with before it can
//! become `active`:
//! - `kernel`, `initrd` and `raw` images must not start with the header of a container format;
//! - `qcow2` images are inspected with `qemu-img info -f qcow2` (the format is given, never
//!   probed; `info` opens neither the backing nor the data file) and refused when they name a
//!   backing file or an external data file.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

/// The public error code of every refusal here.
pub const CODE_IMAGE_FORMAT_INVALID: &str = "image_format_invalid";

/// How long `qemu-img info` may take on one upload: it reads headers and tables, not data.
pub const QEMU_IMG_TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes read from the start of an image to recognise a container header.
pub const HEAD_LEN: usize = 512;

/// What the image was registered as, for the purpose of these checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Declared {
    /// `kernel`, `initrd` or `raw`: bytes QEMU must take as they are.
    Opaque,
    Qcow2,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("plain bytes were declared ({declared}, kernel or initrd), but the image starts with a {found} header")]
    Mismatch {
        declared: &'static str,
        found: &'static str,
    },
    #[error("the qcow2 image names a backing file; upload a flattened image (qemu-img convert -O qcow2)")]
    BackingFile,
    #[error("the qcow2 image names an external data file; upload a self-contained image")]
    DataFile,
    #[error("the image is not a valid qcow2 image")]
    NotQcow2,
    #[error("cannot inspect the image: {0}")]
    Inspect(String),
}

impl FormatError {
    pub fn code(&self) -> &'static str {
        CODE_IMAGE_FORMAT_INVALID
    }
}

/// The container format whose signature `head` starts with, if any (the formats QEMU would
/// recognise when probing, and that can reference other files or hide another layout).
pub fn sniff(head: &[u8]) -> Option<&'static str> {
    const MAGICS: &[(&[u8], &str)] = &[
        (b"QFI\xfb", "qcow2"),
        (b"QED\0", "qed"),
        (b"KDMV", "vmdk"),
        (b"COWD", "vmdk"),
        (b"# Disk DescriptorFile", "vmdk"),
        (b"vhdxfile", "vhdx"),
        (b"conectix", "vpc"),
        (b"LUKS\xba\xbe", "luks"),
        (b"WithoutFreeSpace", "parallels"),
        (b"WithouFreSpacExt", "parallels"),
        (b"Bochs Virtual HD Image", "bochs"),
        (b"#!/bin/sh\n#V2.0 Format", "cloop"),
    ];
    if let Some((_, name)) = MAGICS.iter().find(|(m, _)| head.starts_with(m)) {
        return Some(name);
    }
    // VDI: a text banner, then the signature 0xbeda107f (little endian) at offset 0x40.
    if head.len() >= 0x44 && head[0x40..0x44] == [0x7f, 0x10, 0xda, 0xbe] {
        return Some("vdi");
    }
    None
}

/// Judges the JSON of `qemu-img info --output=json -f qcow2` for a tenant upload.
pub fn judge_qcow2_info(info: &Value) -> Result<(), FormatError> {
    if info["format"].as_str() != Some("qcow2") {
        return Err(FormatError::NotQcow2);
    }
    if info.get("backing-filename").is_some() || info.get("full-backing-filename").is_some() {
        return Err(FormatError::BackingFile);
    }
    if info["format-specific"]["data"].get("data-file").is_some() {
        return Err(FormatError::DataFile);
    }
    Ok(())
}

/// Checks the upload at `path` against its declared format (see the module comment). Runs
/// `qemu_img` for qcow2 images, bounded by [`QEMU_IMG_TIMEOUT`].
pub async fn check_upload(path: &Path, declared: Declared, qemu_img: &Path) -> Result<(), FormatError> {
    let head = read_head(path).await.map_err(|e| FormatError::Inspect(e.to_string()))?;
    let found = sniff(&head);
    match (declared, found) {
        (Declared::Opaque, None) => Ok(()),
        (Declared::Opaque, Some(found)) => Err(FormatError::Mismatch { declared: "raw", found }),
        (Declared::Qcow2, Some("qcow2")) => judge_qcow2_info(&qemu_img_info(path, qemu_img).await?),
        (Declared::Qcow2, _) => Err(FormatError::NotQcow2),
    }
}

async fn read_head(path: &Path) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt as _;
    let mut f = tokio::fs::File::open(path).await?;
    let mut head = Vec::with_capacity(HEAD_LEN);
    (&mut f).take(HEAD_LEN as u64).read_to_end(&mut head).await?;
    Ok(head)
}

async fn qemu_img_info(path: &Path, qemu_img: &Path) -> Result<Value, FormatError> {
    // `-f qcow2`: never probe untrusted input. `info` opens the image without its backing
    // chain and without I/O, so neither named file is touched (QEMU >= 9.0.2 for data files).
    let mut cmd = tokio::process::Command::new(qemu_img);
    cmd.args(["info", "--output=json", "-f", "qcow2", "--"])
        .arg(path)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(QEMU_IMG_TIMEOUT, cmd.output())
        .await
        .map_err(|_| FormatError::Inspect("qemu-img info timed out".into()))?
        .map_err(|e| FormatError::Inspect(format!("cannot run {}: {e}", qemu_img.display())))?;
    if !out.status.success() {
        tracing::info!(image = %path.display(), stderr = %String::from_utf8_lossy(&out.stderr), "qemu-img refused an upload");
        return Err(FormatError::NotQcow2);
    }
    serde_json::from_slice(&out.stdout).map_err(|_| FormatError::Inspect("qemu-img info printed no JSON".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn spec_12_1_1_container_headers_are_recognised() {
        assert_eq!(sniff(b"QFI\xfb\0\0\0\x03rest"), Some("qcow2"));
        assert_eq!(sniff(b"KDMV\x01\0\0\0"), Some("vmdk"));
        assert_eq!(sniff(b"# Disk DescriptorFile\nversion=1\n"), Some("vmdk"));
        assert_eq!(sniff(b"vhdxfile\0\0"), Some("vhdx"));
        assert_eq!(sniff(b"conectix\0\0"), Some("vpc"));
        let mut vdi = vec![b'<'; 0x40];
        vdi.extend_from_slice(&[0x7f, 0x10, 0xda, 0xbe]);
        assert_eq!(sniff(&vdi), Some("vdi"));
        // A kernel, a gzip initrd, a blank raw disk.
        assert_eq!(sniff(b"MZ\x00\x00kernel"), None);
        assert_eq!(sniff(b"\x1f\x8b\x08\x00"), None);
        assert_eq!(sniff(&[0u8; 512]), None);
        assert_eq!(sniff(b""), None);
    }

    #[test]
    fn spec_12_1_1_qcow2_naming_a_backing_or_data_file_is_refused() {
        let clean = json!({"format": "qcow2", "virtual-size": 1048576,
            "format-specific": {"type": "qcow2", "data": {"compat": "1.1"}}});
        assert_eq!(judge_qcow2_info(&clean), Ok(()));
        let mut backing = clean.clone();
        backing["backing-filename"] = json!("/etc/shadow");
        assert_eq!(judge_qcow2_info(&backing), Err(FormatError::BackingFile));
        let mut data = clean.clone();
        data["format-specific"]["data"]["data-file"] = json!("/dev/sda");
        assert_eq!(judge_qcow2_info(&data), Err(FormatError::DataFile));
        assert_eq!(judge_qcow2_info(&json!({"format": "raw"})), Err(FormatError::NotQcow2));
    }

    /// `qemu-img`, or `None` (skip) when it is missing and the run does not demand it.
    fn qemu_img() -> Option<std::path::PathBuf> {
        let found = std::process::Command::new("qemu-img").arg("--version").output().is_ok();
        // The host commands of privileged tests are counted under root (apt-get install qemu-utils).
        rampart_common::testing::require(rampart_common::testing::Need::Root, found, "qemu-img missing")
            .then(|| "qemu-img".into())
    }

    fn create(dir: &Path, name: &str, args: &[&str]) -> std::path::PathBuf {
        let p = dir.join(name);
        let out = std::process::Command::new("qemu-img")
            .args(["create", "-f", "qcow2"])
            .args(args)
            .arg(&p)
            .arg("1M")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        p
    }

    #[tokio::test]
    async fn spec_12_1_1_uploads_naming_host_files_are_refused_by_the_real_qemu_img() {
        let Some(qi) = qemu_img() else { return };
        let dir = tempfile::tempdir().unwrap();
        // `-u`: the header names /etc/shadow without qemu-img opening it.
        let backing = create(dir.path(), "backing.qcow2", &["-u", "-b", "/etc/shadow", "-F", "raw"]);
        let data_path = dir.path().join("data.raw");
        let data = create(
            dir.path(),
            "data.qcow2",
            &["-o", &format!("data_file={}", data_path.display())],
        );
        let clean = create(dir.path(), "clean.qcow2", &[]);

        assert_eq!(
            check_upload(&backing, Declared::Qcow2, &qi).await,
            Err(FormatError::BackingFile)
        );
        assert_eq!(
            check_upload(&data, Declared::Qcow2, &qi).await,
            Err(FormatError::DataFile)
        );
        assert_eq!(check_upload(&clean, Declared::Qcow2, &qi).await, Ok(()));
        // The same qcow2 declared raw, and raw bytes declared qcow2.
        assert_eq!(
            check_upload(&clean, Declared::Opaque, &qi).await,
            Err(FormatError::Mismatch {
                declared: "raw",
                found: "qcow2"
            })
        );
        let raw = dir.path().join("disk.raw");
        std::fs::write(&raw, vec![0u8; 4096]).unwrap();
        assert_eq!(check_upload(&raw, Declared::Opaque, &qi).await, Ok(()));
        assert_eq!(
            check_upload(&raw, Declared::Qcow2, &qi).await,
            Err(FormatError::NotQcow2)
        );
        // A qcow2 magic over garbage: qemu-img refuses it, so do we.
        let bad = dir.path().join("bad.qcow2");
        std::fs::write(&bad, b"QFI\xfb\xff\xff\xff\xffgarbage").unwrap();
        assert_eq!(
            check_upload(&bad, Declared::Qcow2, &qi).await,
            Err(FormatError::NotQcow2)
        );
    }
}
