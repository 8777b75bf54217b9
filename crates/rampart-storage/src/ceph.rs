//! The `ceph` backend: one RBD image per volume in a replicated Ceph pool, reached through
//! `rbd-fuse` (this QEMU 10.0.2 has no loadable `rbd` driver, `docs/storage.md`), holding a
//! qcow2 file encrypted by QEMU's LUKS driver exactly as a `local` volume.
//!
//! Why qcow2+LUKS inside the image rather than a bare `luks` layer over the raw image: a
//! never-written sector of a bare LUKS device decrypts the zeros RBD returns into noise, while
//! an unallocated qcow2 cluster reads as zeros; and the header format, the `blockdev-add`, the
//! attach path and the wipe's header parser are those of the local backend, already proven.
//!
//! Images in the pool (`rbd ls`):
//! - `<id>`: a volume or snapshot in service;
//! - `<id>.creating`: a create under way; renamed when done, removed on failure;
//! - `<id>.wiping`: renamed there when the wipe starts, so nothing opens it again.
//!
//! Each image is mounted alone (`rbd-fuse -r <image>`) at `<state>/mnt/<image>/` (0700, root
//! only: QEMU gets a descriptor, never the path) while something uses it; a pool-wide mount
//! would keep every image open, and an open image cannot be removed (RBD watchers). Idle
//! mounts are unmounted by [`CephBackend::pool_status`] (the agent calls it every pass);
//! `umount` refuses while QEMU holds the file, which is the reference count.
//!
//! Every `ceph`/`rbd`/`rados` call is bounded (client mount and op timeouts in the rendered
//! conf, and a kill after [`CephConfig::tool_timeout`]); a cluster that does not answer is
//! [`StorageError::Unavailable`] (503 `storage_unavailable`).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rampart_common::Sensitive;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::backend::{
    ImageFormat, PoolStatus, Recovery, Redundancy, StorageBackend, StorageError, VolumeInfo, VolumeSpec,
};
use crate::ceph_conf::{self, CephConfigError, CephSettings, Timeouts};
use crate::local::full_size_bound;
use crate::proc::{self, ProcError, secret_object_arg};
use crate::render::OpenSpec;
use crate::wipe::{self, WipeMethod, WipeReport};

const SECRET_ID: &str = "sec0";
/// A mount used less than this long ago is not swept (an attach opens the file right after
/// [`StorageBackend::open`]).
const MOUNT_GRACE: Duration = Duration::from_secs(60);

/// Configuration of the node's Ceph backend.
#[derive(Debug, Clone)]
pub struct CephConfig {
    pub settings: CephSettings,
    /// `<agent data dir>/ceph`: `client.conf`, `mnt/`, `reports/`, `client.log`.
    pub state_dir: PathBuf,
    pub timeouts: Timeouts,
    /// Kill bound of one `ceph`/`rbd`/`rados`/`rbd-fuse` run.
    pub tool_timeout: Duration,
    /// Bound of one `qemu-img` run (a copy of a large image).
    pub copy_timeout: Duration,
    pub luks_iter_time_ms: u32,
    /// Bytes of the pool's `max_avail` never promised to volumes.
    pub reserve_bytes: u64,
    pub rbd: PathBuf,
    pub rados: PathBuf,
    pub ceph: PathBuf,
    pub rbd_fuse: PathBuf,
    pub qemu_img: PathBuf,
}

impl CephConfig {
    pub fn new(settings: CephSettings, state_dir: impl Into<PathBuf>) -> CephConfig {
        CephConfig {
            settings,
            state_dir: state_dir.into(),
            timeouts: Timeouts::default(),
            tool_timeout: Duration::from_secs(60),
            copy_timeout: Duration::from_secs(3600),
            luks_iter_time_ms: 2000,
            reserve_bytes: 64 << 20,
            rbd: "rbd".into(),
            rados: "rados".into(),
            ceph: "ceph".into(),
            rbd_fuse: "rbd-fuse".into(),
            qemu_img: "qemu-img".into(),
        }
    }
}

pub struct CephBackend {
    cfg: CephConfig,
    conf: PathBuf,
    /// Bytes promised to creates under way.
    reserved: crate::backend::Reservations,
    /// When each mount was last handed out (the sweep spares recent ones).
    used: Mutex<HashMap<String, Instant>>,
}

/// The error of a tool run: a cluster that does not answer is `Unavailable`, a missing image
/// `NotFound`, a full pool `InsufficientStorage`; anything else is internal.
fn classify(context: &str, volume: Option<Uuid>, e: ProcError) -> StorageError {
    match &e {
        ProcError::Timeout { .. } => StorageError::Unavailable(format!("{context}: {e}")),
        ProcError::Failed { stderr, .. } => {
            let s = stderr.as_str();
            if s.contains("(110)")
                || s.contains("timed out")
                || s.contains("error connecting to the cluster")
                || s.contains("couldn't connect to the cluster")
            {
                StorageError::Unavailable(format!("{context}: the cluster did not answer"))
            } else if s.contains("(28)") || s.contains("(122)") || s.contains("No space left") {
                StorageError::InsufficientStorage { needed: 0, free: 0 }
            } else if let (Some(v), true) = (volume, s.contains("(2) No such file") || s.contains("No such file")) {
                StorageError::NotFound(v)
            } else {
                StorageError::Tool {
                    context: context.into(),
                    source: e,
                }
            }
        }
        _ => StorageError::Tool {
            context: context.into(),
            source: e,
        },
    }
}

fn qemu_tool(context: impl Into<String>) -> impl FnOnce(ProcError) -> StorageError {
    let context = context.into();
    move |source| StorageError::Tool { context, source }
}

/// Whether `dir` is a mount point now (`/proc/self/mountinfo`, field 5).
fn is_mountpoint(dir: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = dir.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| m.replace("\\040", " ") == want)
}

/// An image removed on every early return (a create that did not finish held no tenant data).
struct TempImage<'a> {
    backend: &'a CephBackend,
    name: Option<String>,
}

impl TempImage<'_> {
    fn keep(mut self) {
        self.name = None;
    }
}

impl Drop for TempImage<'_> {
    fn drop(&mut self) {
        if let Some(n) = self.name.take() {
            let _ = self.backend.unmount(&n);
            if let Err(e) = self.backend.rbd(&["rm", "--no-progress", &self.backend.spec(&n)], None) {
                tracing::warn!(image = %n, error = %rampart_common::error::ErrorChain(&e), "could not remove an unfinished image");
            }
        }
    }
}

impl CephBackend {
    /// Checks the configuration (10.1: a monitor outside the storage network is refused),
    /// renders the client conf and makes the state directories. Does not contact the cluster:
    /// the agent starts even while Ceph is down, and reports the pool `unavailable`.
    pub fn open(cfg: CephConfig) -> Result<CephBackend, CephOpenError> {
        cfg.settings.validate()?;
        for d in [
            cfg.state_dir.clone(),
            cfg.state_dir.join("mnt"),
            cfg.state_dir.join("reports"),
        ] {
            rampart_common::fsutil::ensure_private_dir(&d).map_err(|e| CephOpenError::Io(d.clone(), e))?;
        }
        let conf = cfg.state_dir.join("client.conf");
        let log = cfg.state_dir.join("client.log");
        let text = ceph_conf::render_client_conf(&cfg.settings, cfg.timeouts, &log.to_string_lossy());
        rampart_common::fsutil::write_atomic(&conf, text.as_bytes(), 0o600)
            .map_err(|e| CephOpenError::Io(conf.clone(), e))?;
        Ok(CephBackend {
            cfg,
            conf,
            reserved: Default::default(),
            used: Mutex::new(HashMap::new()),
        })
    }

    pub fn config(&self) -> &CephConfig {
        &self.cfg
    }

    /// The rendered client conf (for tools run beside the backend, e.g. a test's `rados`).
    pub fn conf_path(&self) -> &Path {
        &self.conf
    }

    fn spec(&self, image: &str) -> String {
        format!("{}/{image}", self.cfg.settings.pool)
    }

    fn client_args(&self, cmd: &mut Command) {
        cmd.arg("--conf")
            .arg(&self.conf)
            .arg("--id")
            .arg(&self.cfg.settings.client_id);
    }

    fn rbd(&self, args: &[&str], volume: Option<Uuid>) -> Result<String, StorageError> {
        let mut cmd = Command::new(&self.cfg.rbd);
        self.client_args(&mut cmd);
        cmd.args(args);
        proc::run(cmd, None, self.cfg.tool_timeout)
            .map(|o| o.stdout)
            .map_err(|e| classify(&format!("rbd {}", args.first().copied().unwrap_or("")), volume, e))
    }

    fn ceph(&self, args: &[&str]) -> Result<String, StorageError> {
        let mut cmd = Command::new(&self.cfg.ceph);
        self.client_args(&mut cmd);
        cmd.arg("--connect-timeout")
            .arg(self.cfg.timeouts.mount_timeout.as_secs().max(1).to_string());
        cmd.args(args);
        proc::run(cmd, None, self.cfg.tool_timeout)
            .map(|o| o.stdout)
            .map_err(|e| classify(&format!("ceph {}", args.first().copied().unwrap_or("")), None, e))
    }

    /// Reads a whole RADOS object (at most one RBD object: 4 MiB by default).
    fn rados_get(&self, object: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let tmp = tempfile_in(&self.cfg.state_dir)?;
        let mut cmd = Command::new(&self.cfg.rados);
        self.client_args(&mut cmd);
        cmd.args(["-p", &self.cfg.settings.pool, "get", object]).arg(tmp.path());
        match proc::run(cmd, None, self.cfg.tool_timeout) {
            Ok(_) => std::fs::read(tmp.path())
                .map(Some)
                .map_err(StorageError::io("reading a RADOS object")),
            Err(ProcError::Failed { stderr, .. }) if stderr.contains("(2)") || stderr.contains("No such file") => {
                Ok(None)
            }
            Err(e) => Err(classify("rados get", None, e)),
        }
    }

    /// How many RADOS objects of the pool carry an image's data prefix (one pool listing).
    fn data_objects(&self, prefix: &str) -> Result<usize, StorageError> {
        let mut cmd = Command::new(&self.cfg.rados);
        self.client_args(&mut cmd);
        cmd.args(["-p", &self.cfg.settings.pool, "ls"]);
        let out = proc::run(cmd, None, self.cfg.tool_timeout).map_err(|e| classify("rados ls", None, e))?;
        let dot = format!("{prefix}.");
        Ok(out.stdout.lines().filter(|l| l.starts_with(&dot)).count())
    }

    /// The images of the pool.
    fn images(&self) -> Result<Vec<String>, StorageError> {
        let out = self.rbd(&["ls", "--format", "json", &self.cfg.settings.pool], None)?;
        serde_json::from_str(&out).map_err(|e| StorageError::Invalid(format!("rbd ls: {e}")))
    }

    fn image_info(&self, image: &str, volume: Uuid) -> Result<ceph_conf::ImageInfo, StorageError> {
        ceph_conf::parse_info(&self.rbd(&["info", "--format", "json", &self.spec(image)], Some(volume))?)
    }

    fn mount_dir(&self, image: &str) -> PathBuf {
        self.cfg.state_dir.join("mnt").join(image)
    }

    /// Mounts one image (idempotent) and returns the path of its file.
    fn mount(&self, image: &str) -> Result<PathBuf, StorageError> {
        let dir = self.mount_dir(image);
        let file = dir.join(image);
        self.used
            .lock()
            .expect("mount table")
            .insert(image.to_string(), Instant::now());
        if is_mountpoint(&dir) {
            return Ok(file);
        }
        rampart_common::fsutil::ensure_private_dir(&dir).map_err(StorageError::io("creating a mount point"))?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(self.cfg.state_dir.join("rbd-fuse.log"))
            .map_err(StorageError::io("opening the rbd-fuse log"))?;
        let mut cmd = Command::new(&self.cfg.rbd_fuse);
        cmd.arg(&dir);
        self.client_args(&mut cmd);
        cmd.args(["-p", &self.cfg.settings.pool, "-r", image])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        // rbd-fuse daemonises once mounted: the foreground process's exit is the signal.
        let mut child = cmd.spawn().map_err(|e| StorageError::io("starting rbd-fuse")(e))?;
        let deadline = Instant::now() + self.cfg.tool_timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(StorageError::Unavailable("rbd-fuse did not mount in time".into()));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(StorageError::io("waiting for rbd-fuse")(e)),
            }
        };
        if !status.success() || !is_mountpoint(&dir) {
            let _ = std::fs::remove_dir(&dir);
            return Err(StorageError::Unavailable(format!(
                "rbd-fuse could not mount image {image} ({status})"
            )));
        }
        // rbd-fuse lists the image lazily: wait (bounded) until it shows.
        let until = Instant::now() + Duration::from_secs(10);
        while !file.exists() {
            if Instant::now() >= until {
                let _ = self.unmount(image);
                return Err(StorageError::Unavailable(format!(
                    "image {image} did not appear in its mount"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(file)
    }

    /// Unmounts one image. `Ok(false)` when it is busy (a QEMU holds it): left mounted.
    fn unmount(&self, image: &str) -> Result<bool, StorageError> {
        let dir = self.mount_dir(image);
        if is_mountpoint(&dir) {
            let mut cmd = Command::new("umount");
            cmd.arg(&dir);
            match proc::run(cmd, None, self.cfg.tool_timeout) {
                Ok(_) => {}
                Err(ProcError::Failed { stderr, .. }) if stderr.contains("busy") => return Ok(false),
                Err(e) => {
                    return Err(StorageError::Tool {
                        context: "unmounting an image".into(),
                        source: e,
                    });
                }
            }
        }
        let _ = std::fs::remove_dir(&dir);
        self.used.lock().expect("mount table").remove(image);
        Ok(true)
    }

    /// Unmounts the mounts nobody used for [`MOUNT_GRACE`] and nobody holds open.
    pub fn sweep_mounts(&self) {
        let Ok(entries) = std::fs::read_dir(self.cfg.state_dir.join("mnt")) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let recent = self
                .used
                .lock()
                .expect("mount table")
                .get(&name)
                .is_some_and(|t| t.elapsed() < MOUNT_GRACE);
            if !recent {
                let _ = self.unmount(&name);
            }
        }
    }

    /// Unmounts every image mount of this backend that is not busy (tests, agent shutdown).
    pub fn unmount_all(&self) {
        self.used.lock().expect("mount table").clear();
        self.sweep_mounts();
    }

    fn pool_space(&self) -> Result<ceph_conf::PoolSpace, StorageError> {
        ceph_conf::parse_df(&self.ceph(&["df", "--format", "json"])?, &self.cfg.settings.pool)
    }

    /// What the images may still grow by (provisioned minus used), from one `rbd du`.
    fn committed_growth(&self) -> Result<u64, StorageError> {
        let du = ceph_conf::parse_du(&self.rbd(&["du", "--format", "json", "-p", &self.cfg.settings.pool], None)?)?;
        Ok(du.iter().map(|i| i.provisioned_size.saturating_sub(i.used_size)).sum())
    }

    /// Refuses (507) unless `needed` bytes fit beside the reserve, the growth promised to the
    /// existing images and the creates under way: a full pool is refused on the request,
    /// before anything is created, and a guest never meets a full cluster mid-write.
    fn reserve(&self, needed: u64) -> Result<crate::backend::Reservation<'_>, StorageError> {
        let space = self.pool_space()?;
        let committed = self.committed_growth()?;
        self.reserved.take(
            needed,
            space.max_avail.saturating_sub(self.cfg.reserve_bytes),
            committed,
        )
    }

    fn check_spec(spec: &VolumeSpec, passphrase: Option<&Sensitive>) -> Result<(), StorageError> {
        // A removed RADOS object is freed, not overwritten (like a copy-on-write filesystem):
        // only the crypto-erase protects a deleted volume's data, so Ceph takes encrypted
        // volumes only.
        if !spec.encrypted {
            return Err(StorageError::Invalid(
                "the ceph backend holds encrypted volumes only".into(),
            ));
        }
        if passphrase.is_none() {
            return Err(StorageError::Invalid("an encrypted volume needs its passphrase".into()));
        }
        if spec.size_bytes == 0 || !spec.size_bytes.is_multiple_of(512) {
            return Err(StorageError::Invalid(
                "a volume size is a positive multiple of 512 bytes".into(),
            ));
        }
        Ok(())
    }

    fn image_opts(path: &Path) -> Result<String, StorageError> {
        let p = path
            .to_str()
            .filter(|p| !p.contains(','))
            .ok_or_else(|| StorageError::Invalid("mount paths must be UTF-8 without ','".into()))?;
        Ok(format!(
            "driver=qcow2,file.driver=file,file.filename={p},encrypt.key-secret={SECRET_ID}"
        ))
    }

    fn qemu_img(&self) -> Command {
        Command::new(&self.cfg.qemu_img)
    }

    /// A new image holding a qcow2+LUKS file: made empty (`source` `None`) or as a
    /// `qemu-img convert` of `source` (its qemu-img arguments and virtual size).
    fn make(
        &self,
        spec: &VolumeSpec,
        source: Option<(&[String], u64)>,
        passphrase: Option<&Sensitive>,
    ) -> Result<VolumeInfo, StorageError> {
        Self::check_spec(spec, passphrase)?;
        if let Some((_, size)) = source
            && size > spec.size_bytes
        {
            return Err(StorageError::Invalid(format!(
                "the source is {size} bytes, more than the volume's {}",
                spec.size_bytes
            )));
        }
        let id = spec.id.to_string();
        let creating = format!("{id}.creating");
        let names = self.images()?;
        if names
            .iter()
            .any(|n| n == &id || n == &creating || *n == format!("{id}.wiping"))
        {
            return Err(StorageError::Exists(spec.id));
        }
        let bound = full_size_bound(spec.size_bytes);
        let _hold = self.reserve(bound)?;
        self.rbd(&["create", "--size", &format!("{bound}B"), &self.spec(&creating)], None)?;
        let tmp = TempImage {
            backend: self,
            name: Some(creating.clone()),
        };
        let file = self.mount(&creating)?;
        let opts = format!(
            "preallocation=off,encrypt.format=luks,encrypt.key-secret={SECRET_ID},encrypt.iter-time={}",
            self.cfg.luks_iter_time_ms
        );
        let mut cmd = self.qemu_img();
        match source {
            None => {
                cmd.args(["create", "-q", "-f", "qcow2", "--object"])
                    .arg(secret_object_arg(SECRET_ID))
                    .arg("-o")
                    .arg(&opts)
                    .arg(&file)
                    .arg(spec.size_bytes.to_string());
            }
            Some((args, _)) => {
                cmd.args(["convert", "--object"]).arg(secret_object_arg(SECRET_ID));
                cmd.args(args);
                cmd.args(["-O", "qcow2", "-o"]).arg(&opts).arg(&file);
            }
        }
        proc::run(cmd, passphrase, self.cfg.copy_timeout).map_err(qemu_tool("writing a new ceph volume"))?;
        if let Some((_, size)) = source
            && size < spec.size_bytes
        {
            let mut cmd = self.qemu_img();
            cmd.args(["resize", "--object"])
                .arg(secret_object_arg(SECRET_ID))
                .arg("--image-opts")
                .arg(Self::image_opts(&file)?)
                .arg(spec.size_bytes.to_string());
            proc::run(cmd, passphrase, self.cfg.copy_timeout).map_err(qemu_tool("growing a new ceph volume"))?;
        }
        self.unmount(&creating)?;
        // `qemu-img create` truncated the file, which rbd-fuse turns into a shrink of the
        // image: give it back its full size, so the guest's writes never resize it through FUSE.
        self.rbd(
            &[
                "resize",
                "--no-progress",
                "--size",
                &format!("{bound}B"),
                &self.spec(&creating),
            ],
            None,
        )?;
        self.rbd(&["mv", &self.spec(&creating), &self.spec(&id)], None)?;
        tmp.keep();
        tracing::info!(volume = %spec.id, size = spec.size_bytes, "ceph volume created");
        self.info(spec.id)
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

    fn report_path(&self, id: Uuid) -> PathBuf {
        self.cfg.state_dir.join("reports").join(format!("{id}.json"))
    }

    /// Whether any client (another node's rbd-fuse, a QEMU) still has the image open.
    fn watchers(&self, image: &str, volume: Uuid) -> Result<usize, StorageError> {
        let out = self.rbd(&["status", "--format", "json", &self.spec(image)], Some(volume))?;
        let v: serde_json::Value =
            serde_json::from_str(&out).map_err(|e| StorageError::Invalid(format!("rbd status: {e}")))?;
        Ok(v["watchers"].as_array().map(|a| a.len()).unwrap_or(0))
    }

    fn wipe_image(&self, id: Uuid, image: &str, requested_by: &str) -> Result<WipeReport, StorageError> {
        let started_at = OffsetDateTime::now_utc();
        if self.watchers(image, id)? > 0 {
            return Err(StorageError::Unavailable(
                "the volume is still open by a client: the wipe waits".into(),
            ));
        }
        let info = self.image_info(image, id)?;
        let used_before: u64 =
            ceph_conf::parse_du(&self.rbd(&["du", "--format", "json", &self.spec(image)], Some(id))?)?
                .iter()
                .map(|i| i.used_size)
                .sum();
        // The qcow2 header (first cluster) says where the LUKS header and its keyslots are.
        let first = format!("{}.{:016x}", info.block_name_prefix, 0);
        if let Some(obj0) = self.rados_get(&first)? {
            let header = match wipe::parse_qcow2_header(&obj0) {
                Ok(h) => h,
                Err(e) => {
                    return Err(StorageError::WipeUnverified {
                        volume: id,
                        reason: format!("the volume's header does not parse ({e})"),
                    });
                }
            };
            let Some(h) = header.crypto_header else {
                return Err(StorageError::WipeUnverified {
                    volume: id,
                    reason: "the volume has no LUKS header".into(),
                });
            };
            // Erase through the image's own mount, then read back from the OSDs directly.
            let file = self.mount(image)?;
            let f = OpenOptions::new()
                .write(true)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(&file)
                .map_err(StorageError::io("opening a volume to erase"))?;
            let zeros = vec![0u8; 1 << 20];
            let mut off = h.offset;
            while off < h.offset + h.length {
                let n = ((h.offset + h.length - off) as usize).min(zeros.len());
                f.write_all_at(&zeros[..n], off)
                    .map_err(StorageError::io("erasing the LUKS header"))?;
                off += n as u64;
            }
            f.sync_all().map_err(StorageError::io("syncing the erased header"))?;
            drop(f);
            self.unmount(image)?;
            for (obj, at, len) in ceph_conf::objects_for(&info, h.offset, h.length) {
                let data = self.rados_get(&obj)?.unwrap_or_default();
                let end = ((at + len) as usize).min(data.len());
                let part = data.get(at as usize..end).unwrap_or(&[]);
                if let Some(i) = wipe::first_nonzero(part) {
                    return Err(StorageError::WipeUnverified {
                        volume: id,
                        reason: format!("the LUKS header area still holds data at byte {}", at + i as u64),
                    });
                }
            }
            tracing::info!(volume = %id, bytes = h.length, "LUKS header and keyslots erased (read back from RADOS)");
        }
        // Discard: shrinking to nothing removes every data object of the image.
        self.rbd(
            &[
                "resize",
                "--no-progress",
                "--allow-shrink",
                "--size",
                "0B",
                &self.spec(image),
            ],
            Some(id),
        )?;
        // Verified from RADOS itself (`rbd du` of a 0-byte image trips an assertion in librbd
        // 16.2.15): no object of the image's data prefix is left in the pool.
        let left = self.data_objects(&info.block_name_prefix)?;
        if left > 0 || self.rados_get(&first)?.is_some() {
            return Err(StorageError::WipeUnverified {
                volume: id,
                reason: format!("{left} data objects still exist after the discard"),
            });
        }
        let report = WipeReport {
            volume: id,
            method: WipeMethod::CryptoEraseAndDiscard,
            verified: true,
            bytes: used_before,
            started_at,
            finished_at: OffsetDateTime::now_utc(),
            requested_by: requested_by.to_string(),
        };
        let json = serde_json::to_vec(&report).expect("report serialises");
        rampart_common::fsutil::write_atomic(&self.report_path(id), &json, 0o600)
            .map_err(StorageError::io("writing the wipe report"))?;
        tracing::info!(volume = %id, bytes = report.bytes, "ceph volume crypto-erased and discarded");
        Ok(report)
    }
}

/// Why [`CephBackend::open`] refused: a configuration error (the agent does not start) or a
/// local I/O failure.
#[derive(Debug, thiserror::Error)]
pub enum CephOpenError {
    #[error(transparent)]
    Config(#[from] CephConfigError),
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
}

struct TempPath(PathBuf);

impl TempPath {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn tempfile_in(dir: &Path) -> Result<TempPath, StorageError> {
    let p = dir.join(format!(".obj-{}", Uuid::new_v4()));
    File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&p)
        .map_err(StorageError::io("creating a scratch file"))?;
    Ok(TempPath(p))
}

impl StorageBackend for CephBackend {
    fn kind(&self) -> &'static str {
        "ceph"
    }

    fn create(&self, spec: &VolumeSpec, passphrase: Option<&Sensitive>) -> Result<VolumeInfo, StorageError> {
        self.make(spec, None, passphrase)
    }

    fn create_from_image(
        &self,
        spec: &VolumeSpec,
        image: &Path,
        format: ImageFormat,
        passphrase: Option<&Sensitive>,
    ) -> Result<VolumeInfo, StorageError> {
        let mut cmd = self.qemu_img();
        cmd.args(["info", "--output=json", "-U", "-f", format.as_str()])
            .arg(image);
        let out = proc::run(cmd, None, Duration::from_secs(60)).map_err(qemu_tool("reading an image's header"))?;
        let info: serde_json::Value =
            serde_json::from_str(&out.stdout).map_err(|e| StorageError::Invalid(format!("qemu-img info: {e}")))?;
        if info.get("backing-filename").is_some()
            || info.get("full-backing-filename").is_some()
            || info.pointer("/format-specific/data/data-file").is_some()
        {
            return Err(StorageError::Invalid(
                "an image with a backing or external data file is refused".into(),
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
        self.make(spec, Some((&args, size)), passphrase)
    }

    fn snapshot(
        &self,
        volume: Uuid,
        snapshot: Uuid,
        passphrase: Option<&Sensitive>,
    ) -> Result<VolumeInfo, StorageError> {
        let v = self.info(volume)?;
        let spec = VolumeSpec {
            id: snapshot,
            size_bytes: v.size_bytes,
            encrypted: true,
            owner: None,
        };
        let args = vec!["--image-opts".to_string(), Self::image_opts(&v.path)?];
        self.make(&spec, Some((&args, v.size_bytes)), passphrase)
    }

    fn create_from_snapshot(
        &self,
        spec: &VolumeSpec,
        snapshot: Uuid,
        passphrase: Option<&Sensitive>,
    ) -> Result<VolumeInfo, StorageError> {
        let s = self.info(snapshot)?;
        let args = vec!["--image-opts".to_string(), Self::image_opts(&s.path)?];
        self.make(spec, Some((&args, s.size_bytes)), passphrase)
    }

    fn extend(
        &self,
        volume: Uuid,
        new_size_bytes: u64,
        passphrase: Option<&Sensitive>,
    ) -> Result<VolumeInfo, StorageError> {
        let v = self.info(volume)?;
        if passphrase.is_none() {
            return Err(StorageError::Invalid("an encrypted volume needs its passphrase".into()));
        }
        if new_size_bytes <= v.size_bytes || !new_size_bytes.is_multiple_of(512) {
            return Err(StorageError::Invalid(
                "a volume only grows, by multiples of 512 bytes".into(),
            ));
        }
        let needed = full_size_bound(new_size_bytes).saturating_sub(full_size_bound(v.size_bytes));
        let _hold = self.reserve(needed)?;
        let id = volume.to_string();
        // The image first (a bigger image under the old qcow2 size changes nothing), then the
        // qcow2 header in one sector write.
        self.rbd(
            &[
                "resize",
                "--no-progress",
                "--size",
                &format!("{}B", full_size_bound(new_size_bytes)),
                &self.spec(&id),
            ],
            Some(volume),
        )?;
        let mut cmd = self.qemu_img();
        cmd.args(["resize", "--object"])
            .arg(secret_object_arg(SECRET_ID))
            .arg("--image-opts")
            .arg(Self::image_opts(&v.path)?)
            .arg(new_size_bytes.to_string());
        proc::run(cmd, passphrase, self.cfg.copy_timeout).map_err(qemu_tool("resizing a ceph volume"))?;
        tracing::info!(volume = %volume, size = new_size_bytes, "ceph volume extended");
        self.info(volume)
    }

    /// Nothing to do: the file is reachable only through a root-only FUSE mount in a 0700
    /// directory, and QEMU receives a descriptor, not the path (11.4).
    fn set_owner(&self, _volume: Uuid, _uid: u32, _gid: u32) -> Result<(), StorageError> {
        Ok(())
    }

    fn open(&self, volume: Uuid, read_only: bool) -> Result<OpenSpec, StorageError> {
        let v = self.info(volume)?;
        Ok(OpenSpec {
            volume,
            path: v
                .path
                .to_str()
                .ok_or_else(|| StorageError::Invalid("mount path is not UTF-8".into()))?
                .to_string(),
            encrypted: true,
            read_only,
        })
    }

    fn info(&self, volume: Uuid) -> Result<VolumeInfo, StorageError> {
        let id = volume.to_string();
        let du = ceph_conf::parse_du(&self.rbd(&["du", "--format", "json", &self.spec(&id)], Some(volume))?)?;
        let used = du.iter().map(|i| i.used_size).sum();
        let path = self.mount(&id)?;
        let mut cmd = self.qemu_img();
        cmd.args(["info", "--output=json", "-U", "-f", "qcow2"]).arg(&path);
        let out = proc::run(cmd, None, Duration::from_secs(60)).map_err(qemu_tool("reading a volume's header"))?;
        let info: serde_json::Value =
            serde_json::from_str(&out.stdout).map_err(|e| StorageError::Invalid(format!("qemu-img info: {e}")))?;
        Ok(VolumeInfo {
            id: volume,
            size_bytes: info["virtual-size"]
                .as_u64()
                .ok_or_else(|| StorageError::Invalid("volume without a size".into()))?,
            allocated_bytes: used,
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
        let id = volume.to_string();
        let wiping = format!("{id}.wiping");
        let names = self.images()?;
        if names.contains(&id) {
            // Out of service before the first byte is touched: this node's mount goes first
            // (refused while a VM here still holds it), then the name. A volume still open
            // anywhere (another node's mount) is left as it is: the wipe waits.
            if !self.unmount(&id)? || self.watchers(&id, volume)? > 0 {
                return Err(StorageError::Unavailable(
                    "the volume is still open by a client: the wipe waits".into(),
                ));
            }
            self.rbd(&["mv", &self.spec(&id), &self.spec(&wiping)], Some(volume))?;
        } else if !names.contains(&wiping) {
            return Err(StorageError::NotFound(volume));
        }
        self.wipe_image(volume, &wiping, requested_by)
    }

    fn release(&self, volume: Uuid) -> Result<(), StorageError> {
        let wiping = format!("{volume}.wiping");
        let names = self.images()?;
        match self.read_report(volume)? {
            Some(r) if r.verified && r.volume == volume => {}
            _ => {
                if !names.contains(&wiping) && !names.contains(&volume.to_string()) {
                    return Ok(());
                }
                return Err(StorageError::Invalid(
                    "the volume has no verified wipe report: its space is not released".into(),
                ));
            }
        }
        if names.contains(&wiping) {
            let _ = self.unmount(&wiping);
            self.rbd(&["rm", "--no-progress", &self.spec(&wiping)], Some(volume))?;
        }
        let _ = std::fs::remove_file(self.report_path(volume));
        tracing::info!(volume = %volume, "wiped ceph volume released");
        Ok(())
    }

    fn roll_back(&self, id: Uuid) -> Result<(), StorageError> {
        let creating = format!("{id}.creating");
        if !self.images()?.contains(&creating) {
            return Ok(());
        }
        // A half-made image held no tenant write (an empty volume, or an image copy under
        // the volume's key): removing its objects is enough.
        let _ = self.unmount(&creating);
        self.rbd(&["rm", "--no-progress", &self.spec(&creating)], Some(id))?;
        tracing::info!(volume = %id, "unfinished ceph create rolled back");
        Ok(())
    }

    fn pool_status(&self) -> Result<PoolStatus, StorageError> {
        self.sweep_mounts();
        let health = ceph_conf::parse_health(&self.ceph(&["health", "--format", "json"])?)?;
        let space = self.pool_space()?;
        let size = ceph_conf::parse_pool_size(&self.ceph(&[
            "osd",
            "pool",
            "get",
            &self.cfg.settings.pool,
            "size",
            "--format",
            "json",
        ])?)?;
        let volumes = self.images()?.iter().filter(|n| Uuid::parse_str(n).is_ok()).count() as u64;
        let mut problems = health.problems;
        let mut state = health.health;
        if size < 2 {
            problems.push(format!(
                "pool {} keeps {size} copy: no redundancy",
                self.cfg.settings.pool
            ));
            state = crate::backend::PoolHealth::Degraded;
        }
        Ok(PoolStatus {
            backend: "ceph".into(),
            total_bytes: space.stored + space.max_avail,
            free_bytes: space.max_avail,
            volumes,
            redundancy: Redundancy::CephReplicated { size },
            health: state,
            problems,
        })
    }

    fn recover(&self) -> Result<Vec<Recovery>, StorageError> {
        let mut out = Vec::new();
        let mut names = self.images()?;
        names.sort();
        for name in &names {
            let parse = |suffix: &str| name.strip_suffix(suffix).and_then(|s| Uuid::parse_str(s).ok());
            if let Some(id) = parse(".creating") {
                out.push(Recovery::RollBackCreate { id });
            } else if let Some(id) = parse(".wiping") {
                match self.read_report(id)? {
                    Some(report) if report.verified => out.push(Recovery::ReleasePending { report }),
                    _ => out.push(Recovery::ResumeWipe { id }),
                }
            }
        }
        for e in std::fs::read_dir(self.cfg.state_dir.join("reports"))
            .map_err(StorageError::io("listing the reports"))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".json").and_then(|s| Uuid::parse_str(s).ok()) else {
                continue;
            };
            if !names.contains(&format!("{id}.wiping"))
                && let Some(report) = self.read_report(id)?
                && report.verified
            {
                out.push(Recovery::ReleasePending { report });
            }
        }
        Ok(out)
    }
}

// ---- cluster administration (an operator's or a test's admin key, never the agent's) ----

/// An administrator's access to the cluster: its conf, cephx id and keyring.
#[derive(Debug, Clone)]
pub struct CephAdmin {
    pub conf: PathBuf,
    pub id: String,
    pub keyring: PathBuf,
    pub timeout: Duration,
}

impl CephAdmin {
    fn run(&self, tool: &str, args: &[&str]) -> Result<String, StorageError> {
        let mut cmd = Command::new(tool);
        cmd.arg("--conf")
            .arg(&self.conf)
            .arg("--id")
            .arg(&self.id)
            .arg("--keyring")
            .arg(&self.keyring);
        if tool == "ceph" {
            cmd.args(["--connect-timeout", "10"]);
        }
        cmd.args(args);
        proc::run(cmd, None, self.timeout)
            .map(|o| o.stdout)
            .map_err(|e| classify(&format!("{tool} {}", args.first().copied().unwrap_or("")), None, e))
    }
}

/// Creates a replicated RBD pool of `size` copies (refused below 2: 14.1-2 wants every block
/// on two OSDs at least), `min_size` `size - 1` (writes continue with one copy lost).
pub fn create_pool(admin: &CephAdmin, name: &str, size: u32, pg_num: u32) -> Result<(), StorageError> {
    if size < 2 {
        return Err(StorageError::Invalid(
            "a volume pool keeps at least 2 copies (size >= 2)".into(),
        ));
    }
    let pg = pg_num.to_string();
    admin.run("ceph", &["osd", "pool", "create", name, &pg, &pg, "replicated"])?;
    admin.run("ceph", &["osd", "pool", "set", name, "size", &size.to_string()])?;
    admin.run(
        "ceph",
        &["osd", "pool", "set", name, "min_size", &(size - 1).to_string()],
    )?;
    admin.run("ceph", &["osd", "pool", "application", "enable", name, "rbd"])?;
    Ok(())
}

/// Removes a pool and everything in it (tests' cleanup; the monitors must allow it).
pub fn delete_pool(admin: &CephAdmin, name: &str) -> Result<(), StorageError> {
    admin.run(
        "ceph",
        &["osd", "pool", "rm", name, name, "--yes-i-really-really-mean-it"],
    )?;
    Ok(())
}

/// A node's cephx user for one pool (`profile rbd`: images in that pool, and blocklisting),
/// its keyring written to `keyring` (0600).
pub fn create_client(admin: &CephAdmin, client_id: &str, pool: &str, keyring: &Path) -> Result<(), StorageError> {
    let out = admin.run(
        "ceph",
        &[
            "auth",
            "get-or-create",
            &format!("client.{client_id}"),
            "mon",
            "profile rbd",
            "osd",
            &format!("profile rbd pool={pool}"),
            "mgr",
            &format!("profile rbd pool={pool}"),
        ],
    )?;
    rampart_common::fsutil::write_atomic(keyring, out.as_bytes(), 0o600).map_err(StorageError::io("writing a keyring"))
}

pub fn delete_client(admin: &CephAdmin, client_id: &str) -> Result<(), StorageError> {
    admin.run("ceph", &["auth", "rm", &format!("client.{client_id}")])?;
    Ok(())
}

/// A Ceph entity address as `ceph osd blocklist` takes it: `IP[:port[/nonce]]`.
fn valid_client_addr(addr: &str) -> bool {
    let (host_port, nonce) = match addr.split_once('/') {
        Some((h, n)) => (h, Some(n)),
        None => (addr, None),
    };
    let ip_ok = host_port.parse::<std::net::IpAddr>().is_ok() || host_port.parse::<std::net::SocketAddr>().is_ok();
    ip_ok && nonce.is_none_or(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Fences a node's Ceph client (HA: before its volumes are attached elsewhere): every OSD
/// refuses that client's operations from now on, so a node that lost its lease but still runs
/// cannot write. `addr` is the client's address as `rbd status` shows it, or a bare IP (every
/// client of that node).
pub fn blocklist_add(admin: &CephAdmin, addr: &str, expire: Duration) -> Result<(), StorageError> {
    if !valid_client_addr(addr) {
        return Err(StorageError::Invalid(format!("not a client address: {addr:?}")));
    }
    admin.run(
        "ceph",
        &["osd", "blocklist", "add", addr, &expire.as_secs().max(1).to_string()],
    )?;
    Ok(())
}

/// Lifts a fence set by [`blocklist_add`].
pub fn blocklist_rm(admin: &CephAdmin, addr: &str) -> Result<(), StorageError> {
    if !valid_client_addr(addr) {
        return Err(StorageError::Invalid(format!("not a client address: {addr:?}")));
    }
    admin.run("ceph", &["osd", "blocklist", "rm", addr])?;
    Ok(())
}

/// The fenced client addresses.
pub fn blocklist_ls(admin: &CephAdmin) -> Result<Vec<String>, StorageError> {
    let out = admin.run("ceph", &["osd", "blocklist", "ls", "--format", "json"])?;
    // Pacific prints two arrays: the address entries, then the range entries.
    let v: serde_json::Value = serde_json::Deserializer::from_str(&out)
        .into_iter::<serde_json::Value>()
        .next()
        .unwrap_or(Ok(serde_json::Value::Null))
        .map_err(|e| StorageError::Invalid(format!("blocklist ls: {e}")))?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["addr"].as_str().map(str::to_string))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_addresses_are_checked_before_they_reach_ceph() {
        for ok in ["127.0.0.1:0/2033470023", "10.1.0.21", "10.1.0.21:6800", "[::1]:0/7"] {
            assert!(valid_client_addr(ok), "{ok}");
        }
        for bad in ["", "--yes-i-really-mean-it", "10.1.0.21/x", "host:1", "1.2.3.4 5"] {
            assert!(!valid_client_addr(bad), "{bad}");
        }
    }

    #[test]
    fn tool_failures_map_to_the_api_codes() {
        let failed = |stderr: &str| ProcError::Failed {
            program: "rbd".into(),
            status: "exit status: 1".into(),
            stderr: stderr.into(),
        };
        let e = classify("rbd ls", None, failed("failed to connect: (110) Connection timed out"));
        assert_eq!(e.to_api().code(), "storage_unavailable");
        let e = classify(
            "rbd ls",
            None,
            ProcError::Timeout {
                program: "rbd".into(),
                secs: 60,
            },
        );
        assert_eq!(e.to_api().status().as_u16(), 503);
        let v = Uuid::new_v4();
        assert!(matches!(
            classify("rbd info", Some(v), failed("rbd: error opening image x: (2) No such file or directory")),
            StorageError::NotFound(x) if x == v
        ));
        assert_eq!(
            classify("rbd create", None, failed("(28) No space left on device"))
                .to_api()
                .status()
                .as_u16(),
            507
        );
    }
}
