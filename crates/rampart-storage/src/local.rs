//! The `local` backend: one qcow2 file per volume in a pool directory on the node, encrypted by
//! QEMU's LUKS driver (`encrypt.format=luks`; this kernel has no dm-crypt).
//!
//! Files are thin (clusters are allocated as the guest writes: an unallocated cluster reads as
//! zeros, whereas a preallocated cluster of an encrypted qcow2 would read as the decryption of
//! whatever the disk holds), but the pool never overcommits: a create or extend is refused (507)
//! unless the free space covers every volume growing to its full size, so a guest never pauses
//! on a full disk mid-write.
//!
//! Files in `<pool>/volumes/`:
//! - `<id>.qcow2`: a volume or snapshot in service;
//! - `<id>.qcow2.creating`: a create (empty, from image, snapshot) under way; renamed when done;
//! - `<id>.qcow2.wiping`: renamed there when the wipe starts, so nothing opens it again;
//! - `<pool>/reports/<id>.json`: the verified wipe report, written before the file is released.
//!
//! [`LocalBackend::recover`] reads these names after a crash. The pool directory is 0700 and
//! every volume file 0600 (owned by the VM's uid while attached, 11.4).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use std::time::Duration;

use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
use nix::unistd::{Whence, lseek};
use rampart_common::Sensitive;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::backend::{
    ImageFormat, PoolHealth, PoolStatus, Recovery, Redundancy, StorageBackend, StorageError, VolumeInfo, VolumeSpec,
};
use crate::proc::{self, secret_object_arg};
use crate::render::OpenSpec;
use crate::wipe::{self, Extent, WipeMethod, WipeReport};

/// Configuration of a local pool.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    pub dir: PathBuf,
    /// Bytes the pool always keeps free (for the filesystem's own metadata, logs, snapshots of
    /// the node's state): a create that would eat into it is 507.
    pub reserve_bytes: u64,
    /// LUKS PBKDF time per keyslot; QEMU's default is 2000 ms. Tests use 10.
    pub luks_iter_time_ms: u32,
    /// Blocks read back after zeroing an encrypted volume.
    pub wipe_samples: usize,
    /// Upper bound of one `qemu-img` run.
    pub tool_timeout: Duration,
    pub qemu_img: PathBuf,
    pub btrfs: PathBuf,
}

impl LocalConfig {
    pub fn new(dir: impl Into<PathBuf>) -> LocalConfig {
        LocalConfig {
            dir: dir.into(),
            reserve_bytes: 64 << 20,
            luks_iter_time_ms: 2000,
            wipe_samples: 256,
            tool_timeout: Duration::from_secs(3600),
            qemu_img: PathBuf::from("qemu-img"),
            btrfs: PathBuf::from("btrfs"),
        }
    }
}

pub struct LocalBackend {
    cfg: LocalConfig,
    /// Bytes promised to creates under way, so two concurrent creates cannot both take the
    /// last free space.
    reserved: crate::backend::Reservations,
}

const SECRET_ID: &str = "sec0";
const CHUNK: usize = 1 << 20;

fn tool(context: impl Into<String>) -> impl FnOnce(proc::ProcError) -> StorageError {
    let context = context.into();
    move |source| StorageError::Tool { context, source }
}

/// Removes a half-made file on every early return.
struct TempFile(Option<PathBuf>);

impl TempFile {
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            // Nothing tenant-written is in a file that never went into service: an empty
            // volume, or a copy of an image (which stays in the image store anyway).
            let _ = std::fs::remove_file(&p);
        }
    }
}

impl LocalBackend {
    /// Opens (and creates, 0700) the pool directory.
    pub fn open(cfg: LocalConfig) -> Result<LocalBackend, StorageError> {
        for d in [cfg.dir.clone(), cfg.dir.join("volumes"), cfg.dir.join("reports")] {
            rampart_common::fsutil::ensure_private_dir(&d).map_err(StorageError::io("creating the pool directory"))?;
        }
        Ok(LocalBackend {
            cfg,
            reserved: Default::default(),
        })
    }

    pub fn config(&self) -> &LocalConfig {
        &self.cfg
    }

    pub fn volume_path(&self, id: Uuid) -> PathBuf {
        self.cfg.dir.join("volumes").join(format!("{id}.qcow2"))
    }

    fn creating_path(&self, id: Uuid) -> PathBuf {
        self.cfg.dir.join("volumes").join(format!("{id}.qcow2.creating"))
    }

    fn wiping_path(&self, id: Uuid) -> PathBuf {
        self.cfg.dir.join("volumes").join(format!("{id}.qcow2.wiping"))
    }

    fn report_path(&self, id: Uuid) -> PathBuf {
        self.cfg.dir.join("reports").join(format!("{id}.json"))
    }

    fn qemu_img(&self) -> Command {
        Command::new(&self.cfg.qemu_img)
    }

    fn free_bytes(&self) -> Result<(u64, u64), StorageError> {
        let st = nix::sys::statvfs::statvfs(&self.cfg.dir)
            .map_err(|e| StorageError::Unavailable(format!("statvfs of the pool: {e}")))?;
        let frsize = st.fragment_size();
        Ok((st.blocks() * frsize, st.blocks_available() * frsize))
    }

    /// Bytes the volumes in the pool may still grow by: each one's full-size bound minus what
    /// it occupies now. Read from the qcow2 headers (no tool run per volume).
    fn committed_growth(&self) -> Result<u64, StorageError> {
        use std::os::unix::fs::MetadataExt;
        let mut total = 0u64;
        for e in std::fs::read_dir(self.cfg.dir.join("volumes")).map_err(StorageError::io("listing the pool"))? {
            let e = e.map_err(StorageError::io("listing the pool"))?;
            if !e.file_name().to_string_lossy().ends_with(".qcow2") {
                continue;
            }
            let Ok(f) = File::open(e.path()) else { continue };
            let mut head = vec![0u8; 4096];
            let n = read_up_to(&f, &mut head, 0)?;
            let Ok(info) = wipe::parse_qcow2_header(&head[..n]) else {
                continue;
            };
            let used = f.metadata().map(|m| m.blocks() * 512).unwrap_or(0);
            total += full_size_bound(info.size).saturating_sub(used);
        }
        Ok(total)
    }

    /// Checks that `needed` bytes fit beside the reserve, the growth the existing volumes are
    /// promised and the creates under way, and holds them until the returned guard drops.
    fn reserve(&self, needed: u64) -> Result<crate::backend::Reservation<'_>, StorageError> {
        let (_, free) = self.free_bytes()?;
        let committed = self.committed_growth()?;
        self.reserved
            .take(needed, free.saturating_sub(self.cfg.reserve_bytes), committed)
    }

    fn create_options(&self, encrypted: bool) -> String {
        // No preallocation: see the module comment (space is accounted, not allocated).
        let mut o = String::from("preallocation=off");
        if encrypted {
            o.push_str(&format!(
                ",encrypt.format=luks,encrypt.key-secret={SECRET_ID},encrypt.iter-time={}",
                self.cfg.luks_iter_time_ms
            ));
        }
        o
    }

    fn check_passphrase(encrypted: bool, passphrase: Option<&Sensitive>) -> Result<(), StorageError> {
        match (encrypted, passphrase) {
            (true, None) => Err(StorageError::Invalid("an encrypted volume needs its passphrase".into())),
            (false, Some(_)) => Err(StorageError::Invalid(
                "an unencrypted volume takes no passphrase".into(),
            )),
            _ => Ok(()),
        }
    }

    /// `--image-opts` of an existing volume file (LUKS through the secret on fd 0).
    fn image_opts(path: &Path, encrypted: bool) -> Result<String, StorageError> {
        let p = path
            .to_str()
            .filter(|p| !p.contains(','))
            .ok_or_else(|| StorageError::Invalid("pool paths must be UTF-8 without ','".into()))?;
        let mut o = format!("driver=qcow2,file.driver=file,file.filename={p}");
        if encrypted {
            o.push_str(&format!(",encrypt.key-secret={SECRET_ID}"));
        }
        Ok(o)
    }

    fn finish_create(&self, tmp: TempFile, spec: &VolumeSpec) -> Result<VolumeInfo, StorageError> {
        let path = tmp.0.clone().expect("live temp file");
        let f = File::open(&path).map_err(StorageError::io("opening a new volume"))?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(StorageError::io("setting a volume's mode"))?;
        if let Some((uid, gid)) = spec.owner {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid))
                .map_err(StorageError::io("setting a volume's owner"))?;
        }
        f.sync_all().map_err(StorageError::io("syncing a new volume"))?;
        let dest = self.volume_path(spec.id);
        if dest.exists() {
            return Err(StorageError::Exists(spec.id));
        }
        std::fs::rename(&path, &dest).map_err(StorageError::io("renaming a new volume into place"))?;
        tmp.keep();
        sync_dir(&self.cfg.dir.join("volumes"))?;
        tracing::info!(volume = %spec.id, size = spec.size_bytes, encrypted = spec.encrypted, "volume created");
        self.info(spec.id)
    }

    fn start_create(&self, spec: &VolumeSpec, passphrase: Option<&Sensitive>) -> Result<(TempFile, u64), StorageError> {
        Self::check_passphrase(spec.encrypted, passphrase)?;
        if spec.size_bytes == 0 || !spec.size_bytes.is_multiple_of(512) {
            return Err(StorageError::Invalid(
                "a volume size is a positive multiple of 512 bytes".into(),
            ));
        }
        if self.volume_path(spec.id).exists() || self.wiping_path(spec.id).exists() {
            return Err(StorageError::Exists(spec.id));
        }
        let needed = full_size_bound(spec.size_bytes);
        let tmp = self.creating_path(spec.id);
        if tmp.exists() {
            return Err(StorageError::Exists(spec.id));
        }
        Ok((TempFile(Some(tmp)), needed))
    }

    /// A copy into a new encrypted (or plain) file: `qemu-img convert` from `source_args`.
    fn convert_into(
        &self,
        spec: &VolumeSpec,
        source_args: &[String],
        source_size: u64,
        passphrase: Option<&Sensitive>,
    ) -> Result<VolumeInfo, StorageError> {
        if source_size > spec.size_bytes {
            return Err(StorageError::Invalid(format!(
                "the source is {source_size} bytes, more than the volume's {}",
                spec.size_bytes
            )));
        }
        let (tmp, needed) = self.start_create(spec, passphrase)?;
        let _hold = self.reserve(needed)?;
        let path = tmp.0.clone().expect("temp path");
        let mut cmd = self.qemu_img();
        cmd.arg("convert");
        if passphrase.is_some() {
            cmd.arg("--object").arg(secret_object_arg(SECRET_ID));
        }
        cmd.args(source_args);
        cmd.args(["-O", "qcow2", "-o"])
            .arg(self.create_options(spec.encrypted))
            .arg(&path);
        proc::run(cmd, passphrase, self.cfg.tool_timeout).map_err(tool("copying into a new volume"))?;
        if source_size < spec.size_bytes {
            self.resize_file(&path, spec.encrypted, spec.size_bytes, passphrase)?;
        }
        self.finish_create(tmp, spec)
    }

    fn resize_file(
        &self,
        path: &Path,
        encrypted: bool,
        size: u64,
        passphrase: Option<&Sensitive>,
    ) -> Result<(), StorageError> {
        let mut cmd = self.qemu_img();
        cmd.arg("resize");
        if encrypted {
            cmd.arg("--object").arg(secret_object_arg(SECRET_ID));
        }
        cmd.arg("--image-opts").arg(Self::image_opts(path, encrypted)?);
        cmd.arg(size.to_string());
        proc::run(cmd, passphrase, self.cfg.tool_timeout).map_err(tool("resizing a volume"))?;
        Ok(())
    }

    fn qemu_info(&self, path: &Path, format: Option<ImageFormat>) -> Result<serde_json::Value, StorageError> {
        let mut cmd = self.qemu_img();
        cmd.args(["info", "--output=json", "-U"]);
        if let Some(f) = format {
            cmd.args(["-f", f.as_str()]);
        }
        cmd.arg(path);
        let out = proc::run(cmd, None, Duration::from_secs(60)).map_err(tool("reading a volume's header"))?;
        serde_json::from_str(&out.stdout).map_err(|e| StorageError::Invalid(format!("qemu-img info output: {e}")))
    }

    fn wipe_file(&self, id: Uuid, path: &Path, requested_by: &str) -> Result<WipeReport, StorageError> {
        let started_at = OffsetDateTime::now_utc();
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(path)
            .map_err(StorageError::io("opening a volume to wipe"))?;
        let mut head = vec![0u8; 64 * 1024];
        let n = read_up_to(&f, &mut head, 0)?;
        head.truncate(n);
        let extents = data_extents(&f)?;
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed).map_err(|e| StorageError::Io {
            context: "random sample seed".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let seed = u64::from_le_bytes(seed);
        // A header that no longer parses is a wipe resumed after its crypto-erase (or an odd
        // file): then every byte is zeroed and read back, the stronger check.
        let info = wipe::parse_qcow2_header(&head).unwrap_or(wipe::Qcow2Info {
            version: 0,
            size: 0,
            crypt: wipe::CryptMethod::None,
            crypto_header: None,
        });
        let plan = wipe::plan_wipe(&info, extents, self.cfg.wipe_samples, seed);
        if let Some(h) = plan.header {
            // Crypto-erase first: from here on the data is unreadable whatever happens next.
            zero_range(&f, h)?;
            f.sync_data().map_err(StorageError::io("syncing the erased header"))?;
            drop_cache(&f, h);
            if let Some(bad) = first_nonzero_in(&f, h)? {
                return Err(StorageError::WipeUnverified {
                    volume: id,
                    reason: format!("the LUKS header area still holds data at byte {bad}"),
                });
            }
            tracing::info!(volume = %id, bytes = h.length, "LUKS header and keyslots erased");
        }
        for e in &plan.data {
            zero_range(&f, *e)?;
        }
        f.sync_data().map_err(StorageError::io("syncing the zeroed volume"))?;
        for e in &plan.data {
            drop_cache(&f, *e);
        }
        for e in &plan.verify {
            if let Some(bad) = first_nonzero_in(&f, *e)? {
                return Err(StorageError::WipeUnverified {
                    volume: id,
                    reason: format!("byte {bad} reads non-zero after the zero pass"),
                });
            }
        }
        let report = WipeReport {
            volume: id,
            method: plan.method,
            verified: true,
            bytes: plan.bytes(),
            started_at,
            finished_at: OffsetDateTime::now_utc(),
            requested_by: requested_by.to_string(),
        };
        let json = serde_json::to_vec(&report).expect("report serialises");
        rampart_common::fsutil::write_atomic(&self.report_path(id), &json, 0o600)
            .map_err(StorageError::io("writing the wipe report"))?;
        tracing::info!(volume = %id, method = ?report.method, bytes = report.bytes, "volume wiped and verified");
        Ok(report)
    }

    fn read_report(&self, id: Uuid) -> Result<Option<WipeReport>, StorageError> {
        match std::fs::read(self.report_path(id)) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| StorageError::Invalid(format!("a stored wipe report does not parse: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StorageError::io("reading a wipe report")(e)),
        }
    }

    fn redundancy(&self) -> (Redundancy, Vec<String>) {
        let is_btrfs = nix::sys::statfs::statfs(&self.cfg.dir)
            .map(|s| s.filesystem_type() == nix::sys::statfs::BTRFS_SUPER_MAGIC)
            .unwrap_or(false);
        if !is_btrfs {
            return (Redundancy::None, Vec::new());
        }
        match crate::btrfs::pool_health(&self.cfg.btrfs, &self.cfg.dir) {
            Ok(h) => (h.redundancy, h.problems),
            Err(e) => (Redundancy::None, vec![format!("btrfs status unavailable: {e}")]),
        }
    }
}

/// An upper bound of what a qcow2 volume of `size` bytes occupies fully written: the data, its
/// L2 tables (8 bytes per 64 KiB cluster) and refcounts (2 bytes per cluster), about 1/6 500
/// of the size, bounded here by 1/2 048, plus 4 MiB for the header and the LUKS header with its
/// keyslots (about 2 MiB). The test below holds it against `qemu-img measure`.
pub fn full_size_bound(size: u64) -> u64 {
    size.saturating_add(size / 2048).saturating_add(4 << 20)
}

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StorageError::io("syncing the pool directory"))
}

fn read_up_to(f: &File, buf: &mut [u8], offset: u64) -> Result<usize, StorageError> {
    let mut done = 0;
    while done < buf.len() {
        let n = f
            .read_at(&mut buf[done..], offset + done as u64)
            .map_err(StorageError::io("reading a volume"))?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

/// The allocated extents of a file (SEEK_DATA/SEEK_HOLE): what a wipe must overwrite.
fn data_extents(f: &File) -> Result<Vec<Extent>, StorageError> {
    let len = f.metadata().map_err(StorageError::io("reading a volume's size"))?.len();
    let mut out = Vec::new();
    let mut pos: u64 = 0;
    while pos < len {
        let start = match lseek(f, pos as i64, Whence::SeekData) {
            Ok(s) => s as u64,
            Err(nix::errno::Errno::ENXIO) => break,
            Err(e) => return Err(StorageError::io("finding a volume's data")(e.into())),
        };
        let end = match lseek(f, start as i64, Whence::SeekHole) {
            Ok(e) => e as u64,
            Err(e) => return Err(StorageError::io("finding a volume's holes")(e.into())),
        };
        if end > start {
            out.push(Extent {
                offset: start,
                length: end - start,
            });
        }
        pos = end.max(start + 1);
    }
    Ok(out)
}

fn zero_range(f: &File, e: Extent) -> Result<(), StorageError> {
    let zeros = vec![0u8; CHUNK];
    let mut off = e.offset;
    let end = e.offset + e.length;
    while off < end {
        let n = ((end - off) as usize).min(CHUNK);
        f.write_all_at(&zeros[..n], off)
            .map_err(StorageError::io("zeroing a volume"))?;
        off += n as u64;
    }
    Ok(())
}

/// After a sync, so that the read-back comes from the device, not from the page cache.
fn drop_cache(f: &File, e: Extent) {
    let _ = posix_fadvise(
        f,
        e.offset as i64,
        e.length as i64,
        PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    );
}

fn first_nonzero_in(f: &File, e: Extent) -> Result<Option<u64>, StorageError> {
    let mut buf = vec![0u8; CHUNK];
    let zeros = vec![0u8; CHUNK];
    let mut off = e.offset;
    let end = e.offset + e.length;
    while off < end {
        let want = ((end - off) as usize).min(CHUNK);
        let n = read_up_to(f, &mut buf[..want], off)?;
        // Slice equality is one memcmp; the byte search runs only on a failure.
        if buf[..n] != zeros[..n]
            && let Some(i) = wipe::first_nonzero(&buf[..n])
        {
            return Ok(Some(off + i as u64));
        }
        if n < want {
            break;
        }
        off += n as u64;
    }
    Ok(None)
}

impl StorageBackend for LocalBackend {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn create(&self, spec: &VolumeSpec, passphrase: Option<&Sensitive>) -> Result<VolumeInfo, StorageError> {
        let (tmp, needed) = self.start_create(spec, passphrase)?;
        let _hold = self.reserve(needed)?;
        let mut cmd = self.qemu_img();
        cmd.args(["create", "-q", "-f", "qcow2"]);
        if passphrase.is_some() {
            cmd.arg("--object").arg(secret_object_arg(SECRET_ID));
        }
        cmd.arg("-o")
            .arg(self.create_options(spec.encrypted))
            .arg(tmp.0.as_ref().expect("temp path"))
            .arg(spec.size_bytes.to_string());
        proc::run(cmd, passphrase, self.cfg.tool_timeout).map_err(tool("creating a volume"))?;
        self.finish_create(tmp, spec)
    }

    fn create_from_image(
        &self,
        spec: &VolumeSpec,
        image: &Path,
        format: ImageFormat,
        passphrase: Option<&Sensitive>,
    ) -> Result<VolumeInfo, StorageError> {
        let info = self.qemu_info(image, Some(format))?;
        if info.get("backing-filename").is_some() || info.get("full-backing-filename").is_some() {
            return Err(StorageError::Invalid("an image with a backing file is refused".into()));
        }
        // A qcow2 external data file is another way for a header to name a host file.
        if info.pointer("/format-specific/data/data-file").is_some() {
            return Err(StorageError::Invalid(
                "an image with an external data file is refused".into(),
            ));
        }
        if info.get("encrypted").and_then(|v| v.as_bool()) == Some(true) {
            return Err(StorageError::Invalid("the source image is encrypted".into()));
        }
        let size = info["virtual-size"]
            .as_u64()
            .ok_or_else(|| StorageError::Invalid("the image has no virtual size".into()))?;
        let src = image
            .to_str()
            .ok_or_else(|| StorageError::Invalid("image path is not UTF-8".into()))?;
        let args = vec!["-f".to_string(), format.as_str().to_string(), src.to_string()];
        self.convert_into(spec, &args, size, passphrase)
    }

    fn snapshot(
        &self,
        volume: Uuid,
        snapshot: Uuid,
        passphrase: Option<&Sensitive>,
    ) -> Result<VolumeInfo, StorageError> {
        let v = self.info(volume)?;
        Self::check_passphrase(v.encrypted, passphrase)?;
        let spec = VolumeSpec {
            id: snapshot,
            size_bytes: v.size_bytes,
            encrypted: v.encrypted,
            owner: None,
        };
        let args = vec!["--image-opts".to_string(), Self::image_opts(&v.path, v.encrypted)?];
        self.convert_into(&spec, &args, v.size_bytes, passphrase)
    }

    fn create_from_snapshot(
        &self,
        spec: &VolumeSpec,
        snapshot: Uuid,
        passphrase: Option<&Sensitive>,
    ) -> Result<VolumeInfo, StorageError> {
        let s = self.info(snapshot)?;
        if s.encrypted != spec.encrypted {
            return Err(StorageError::Invalid(
                "a volume from a snapshot keeps the snapshot's encryption".into(),
            ));
        }
        let args = vec!["--image-opts".to_string(), Self::image_opts(&s.path, s.encrypted)?];
        self.convert_into(spec, &args, s.size_bytes, passphrase)
    }

    fn extend(
        &self,
        volume: Uuid,
        new_size_bytes: u64,
        passphrase: Option<&Sensitive>,
    ) -> Result<VolumeInfo, StorageError> {
        let v = self.info(volume)?;
        Self::check_passphrase(v.encrypted, passphrase)?;
        if new_size_bytes <= v.size_bytes || !new_size_bytes.is_multiple_of(512) {
            return Err(StorageError::Invalid(
                "a volume only grows, by multiples of 512 bytes".into(),
            ));
        }
        // The volume's promised growth rises by the difference of the bounds.
        let needed = full_size_bound(new_size_bytes).saturating_sub(full_size_bound(v.size_bytes));
        let _hold = self.reserve(needed)?;
        // qcow2 resize rewrites the header in place (an atomic sector write): a crash leaves the
        // old or the new size, and the controller's size is set only after this returns.
        self.resize_file(&v.path, v.encrypted, new_size_bytes, passphrase)?;
        tracing::info!(volume = %volume, size = new_size_bytes, "volume extended");
        self.info(volume)
    }

    fn set_owner(&self, volume: Uuid, uid: u32, gid: u32) -> Result<(), StorageError> {
        let p = self.volume_path(volume);
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&p)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => StorageError::NotFound(volume),
                _ => StorageError::io("opening a volume")(e),
            })?;
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid)).map_err(StorageError::io("setting a volume's owner"))?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(StorageError::io("setting a volume's mode"))
    }

    fn open(&self, volume: Uuid, read_only: bool) -> Result<OpenSpec, StorageError> {
        let v = self.info(volume)?;
        Ok(OpenSpec {
            volume,
            path: v
                .path
                .to_str()
                .ok_or_else(|| StorageError::Invalid("pool path is not UTF-8".into()))?
                .to_string(),
            encrypted: v.encrypted,
            read_only,
        })
    }

    fn info(&self, volume: Uuid) -> Result<VolumeInfo, StorageError> {
        let path = self.volume_path(volume);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_file() => m,
            Ok(_) => return Err(StorageError::Invalid("a pool entry is not a regular file".into())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(StorageError::NotFound(volume)),
            Err(e) => return Err(StorageError::io("reading a volume")(e)),
        };
        let info = self.qemu_info(&path, Some(ImageFormat::Qcow2))?;
        use std::os::unix::fs::MetadataExt;
        Ok(VolumeInfo {
            id: volume,
            size_bytes: info["virtual-size"]
                .as_u64()
                .ok_or_else(|| StorageError::Invalid("volume without a size".into()))?,
            allocated_bytes: meta.blocks() * 512,
            encrypted: info.get("encrypted").and_then(|v| v.as_bool()) == Some(true),
            path,
        })
    }

    fn wipe(&self, volume: Uuid, requested_by: &str) -> Result<WipeReport, StorageError> {
        if let Some(r) = self.read_report(volume)?
            && r.verified
        {
            return Ok(r);
        }
        let live = self.volume_path(volume);
        let wiping = self.wiping_path(volume);
        if live.exists() {
            // Out of service before the first byte is touched: `open` and `info` fail from now on.
            std::fs::rename(&live, &wiping).map_err(StorageError::io("taking a volume out of service"))?;
            sync_dir(&self.cfg.dir.join("volumes"))?;
        } else if !wiping.exists() {
            return Err(StorageError::NotFound(volume));
        }
        self.wipe_file(volume, &wiping, requested_by)
    }

    fn release(&self, volume: Uuid) -> Result<(), StorageError> {
        let wiping = self.wiping_path(volume);
        match self.read_report(volume)? {
            Some(r) if r.verified && r.volume == volume => {}
            _ => {
                if !wiping.exists() && !self.volume_path(volume).exists() {
                    return Ok(());
                }
                return Err(StorageError::Invalid(
                    "the volume has no verified wipe report: its space is not released".into(),
                ));
            }
        }
        match std::fs::remove_file(&wiping) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StorageError::io("releasing a wiped volume")(e)),
        }
        sync_dir(&self.cfg.dir.join("volumes"))?;
        let _ = std::fs::remove_file(self.report_path(volume));
        tracing::info!(volume = %volume, "wiped volume released");
        Ok(())
    }

    fn roll_back(&self, id: Uuid) -> Result<(), StorageError> {
        let p = self.creating_path(id);
        if !p.exists() {
            return Ok(());
        }
        // A half-made copy may hold image bytes in the clear (unencrypted types): zero what is
        // allocated before unlinking, like any wipe, but without a report (it never held a
        // tenant's writes).
        let f = OpenOptions::new()
            .write(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&p)
            .map_err(StorageError::io("opening a half-made volume"))?;
        for e in data_extents(&f)? {
            zero_range(&f, e)?;
        }
        f.sync_data()
            .map_err(StorageError::io("syncing a rolled-back volume"))?;
        std::fs::remove_file(&p).map_err(StorageError::io("removing a half-made volume"))?;
        tracing::info!(volume = %id, "unfinished create rolled back");
        Ok(())
    }

    fn pool_status(&self) -> Result<PoolStatus, StorageError> {
        if !self.cfg.dir.join("volumes").is_dir() {
            return Err(StorageError::Unavailable("the pool directory is missing".into()));
        }
        let (total, free) = self.free_bytes()?;
        let volumes = std::fs::read_dir(self.cfg.dir.join("volumes"))
            .map_err(StorageError::io("listing the pool"))?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".qcow2"))
            .count() as u64;
        let (redundancy, problems) = self.redundancy();
        let health = if problems.is_empty() {
            PoolHealth::Ok
        } else {
            PoolHealth::Degraded
        };
        Ok(PoolStatus {
            backend: "local".into(),
            total_bytes: total,
            free_bytes: free,
            volumes,
            redundancy,
            health,
            problems,
        })
    }

    fn recover(&self) -> Result<Vec<Recovery>, StorageError> {
        let mut out = Vec::new();
        let mut names: Vec<String> = std::fs::read_dir(self.cfg.dir.join("volumes"))
            .map_err(StorageError::io("listing the pool"))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for name in &names {
            let parse = |suffix: &str| name.strip_suffix(suffix).and_then(|s| Uuid::parse_str(s).ok());
            if let Some(id) = parse(".qcow2.creating") {
                out.push(Recovery::RollBackCreate { id });
            } else if let Some(id) = parse(".qcow2.wiping") {
                match self.read_report(id)? {
                    Some(report) if report.verified => out.push(Recovery::ReleasePending { report }),
                    _ => out.push(Recovery::ResumeWipe { id }),
                }
            }
        }
        // A report whose file is gone: the release crashed between unlink and report removal.
        for e in std::fs::read_dir(self.cfg.dir.join("reports")).map_err(StorageError::io("listing the reports"))? {
            let e = e.map_err(StorageError::io("listing the reports"))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".json").and_then(|s| Uuid::parse_str(s).ok()) else {
                continue;
            };
            if !self.wiping_path(id).exists()
                && let Some(report) = self.read_report(id)?
                && report.verified
            {
                out.push(Recovery::ReleasePending { report });
            }
        }
        Ok(out)
    }
}

/// The wipe method a volume of this encryption gets (for callers planning before the wipe).
pub fn method_for(encrypted: bool) -> WipeMethod {
    if encrypted {
        WipeMethod::CryptoEraseAndZero
    } else {
        WipeMethod::ZeroFullVerify
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_full_size_bound_covers_qemu_img_measure() {
        // `qemu-img measure -O qcow2 -o encrypt.format=luks --size S` (QEMU 10.0.2), fully-allocated.
        for (size, measured) in [
            (64u64 << 20, 69_533_696u64),
            (1 << 30, 1_076_232_192),
            (100 << 30, 107_392_925_696),
            (4 << 40, 4_398_719_959_040),
        ] {
            let bound = full_size_bound(size);
            assert!(bound >= measured, "{size}: {bound} < {measured}");
            assert!(
                bound - measured < size / 1000 + (4 << 20),
                "{size}: a loose bound wastes the pool"
            );
        }
    }
}
