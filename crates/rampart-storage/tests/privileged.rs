//! The local backend for real, as root: QEMU's LUKS layer (`qemu-img`, `qemu-io`), small
//! loop-mounted filesystems for a full pool and for residual data, and a btrfs RAID1 pool on two
//! loop devices. Every test makes its own temporary directory and loop devices and removes them
//! on every path (the guards below), and every tool run has a deadline.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rampart_common::Sensitive;
use rampart_common::testing::{Need, require, require_root};
use rampart_storage::backend::{PoolHealth, Recovery, Redundancy, StorageBackend, StorageError, VolumeSpec};
use rampart_storage::btrfs::{self, ScrubVerdict};
use rampart_storage::proc;
use rampart_storage::wipe::{self, WipeMethod};
use rampart_storage::{ImageFormat, LocalBackend, LocalConfig};
use uuid::Uuid;

const MIB: u64 = 1 << 20;
const T: Duration = Duration::from_secs(120);

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn ready(extra: &[&str]) -> bool {
    if !require_root() {
        return false;
    }
    for c in ["qemu-img", "qemu-io"].iter().chain(extra) {
        if !require(Need::Root, have(c), &format!("{c} missing")) {
            return false;
        }
    }
    true
}

fn sh(args: &[&str]) -> String {
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..]);
    proc::run(cmd, None, T)
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
        .stdout
}

fn cfg(dir: &Path) -> LocalConfig {
    let mut c = LocalConfig::new(dir);
    c.luks_iter_time_ms = 10;
    c.reserve_bytes = MIB;
    c.tool_timeout = T;
    c
}

/// `qemu-io` on a volume file through its LUKS layer, the passphrase on fd 0.
fn qemu_io(path: &Path, passphrase: Option<&Sensitive>, command: &str) -> Result<String, proc::ProcError> {
    let mut cmd = Command::new("qemu-io");
    let mut opts = format!("driver=qcow2,file.driver=file,file.filename={}", path.display());
    if passphrase.is_some() {
        cmd.arg("--object").arg(proc::secret_object_arg("s0"));
        opts.push_str(",encrypt.key-secret=s0");
    }
    cmd.args(["--image-opts", &opts, "-c", command]);
    let out = proc::run(cmd, passphrase, T)?;
    // qemu-io reports a failed pattern check on stdout and still exits 0.
    if out.stdout.contains("Pattern verification failed") || out.stdout.contains("failed:") {
        return Err(proc::ProcError::Failed {
            program: "qemu-io".into(),
            status: "pattern".into(),
            stderr: out.stdout,
        });
    }
    Ok(out.stdout)
}

/// Whether `hay` holds `n` consecutive `byte`s (the marker pattern qemu-io writes).
fn has_run(hay: &[u8], byte: u8, n: usize) -> bool {
    let mut run = 0;
    for b in hay {
        if *b == byte {
            run += 1;
            if run >= n {
                return true;
            }
        } else {
            run = 0;
        }
    }
    false
}

fn spec(size: u64, encrypted: bool) -> VolumeSpec {
    VolumeSpec {
        id: Uuid::new_v4(),
        size_bytes: size,
        encrypted,
        owner: None,
    }
}

/// A loop device over a sparse file; detached on drop.
struct Loop {
    dev: String,
}

impl Loop {
    fn new(file: &Path, size: u64) -> Loop {
        let f = std::fs::File::create(file).unwrap();
        f.set_len(size).unwrap();
        let dev = sh(&["losetup", "-f", "--show", file.to_str().unwrap()])
            .trim()
            .to_string();
        assert!(dev.starts_with("/dev/loop"), "{dev}");
        Loop { dev }
    }

    fn detach(&mut self) {
        if !self.dev.is_empty() {
            let _ = Command::new("losetup").args(["-d", &self.dev]).status();
            self.dev.clear();
        }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        self.detach();
    }
}

/// A mount point, unmounted on drop (before the loops it sits on are detached: declare it after
/// them).
struct Mount {
    at: PathBuf,
    mounted: bool,
}

impl Mount {
    fn new(args: &[&str], at: &Path) -> Mount {
        std::fs::create_dir_all(at).unwrap();
        let mut a = vec!["mount"];
        a.extend_from_slice(args);
        a.push(at.to_str().unwrap());
        sh(&a);
        Mount {
            at: at.to_path_buf(),
            mounted: true,
        }
    }

    fn umount(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(&self.at).status();
            self.mounted = false;
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.umount();
    }
}

#[test]
fn spec_12_3_2_2_encrypted_volume_keeps_no_plaintext_and_reads_back_after_extend_and_snapshot() {
    if !ready(&[]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let b = LocalBackend::open(cfg(&dir.path().join("pool"))).unwrap();
    let pw = Sensitive::new("vol-passphrase-canary-91c2");
    let mut s = spec(64 * MIB, true);
    s.owner = Some((64_123, 64_123));
    let v = b.create(&s, Some(&pw)).unwrap();
    assert!(v.encrypted);
    assert_eq!(v.size_bytes, 64 * MIB);
    assert!(v.allocated_bytes < 8 * MIB, "thin: {}", v.allocated_bytes);
    // Never written, so it reads zeros (a preallocated encrypted cluster would read garbage).
    qemu_io(&v.path, Some(&pw), "read -P 0 0 64M").unwrap();
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&v.path).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert_eq!((meta.uid(), meta.gid()), (64_123, 64_123));

    qemu_io(&v.path, Some(&pw), "write -P 0x5a 0 4M").unwrap();
    let raw = std::fs::read(&v.path).unwrap();
    assert!(!has_run(&raw, 0x5a, 512), "the marker is in the pool file in the clear");
    let text = String::from_utf8_lossy(&raw);
    assert!(!text.contains("canary"), "the passphrase is in the pool file");
    qemu_io(&v.path, Some(&pw), "read -P 0x5a 0 4M").unwrap();
    assert!(
        qemu_io(&v.path, Some(&Sensitive::new("wrong")), "read 0 512").is_err(),
        "a wrong passphrase opens the volume"
    );
    assert!(qemu_io(&v.path, None, "read 0 512").is_err(), "no passphrase opens it");

    let v2 = b.extend(v.id, 128 * MIB, Some(&pw)).unwrap();
    assert_eq!(v2.size_bytes, 128 * MIB);
    qemu_io(&v.path, Some(&pw), "read -P 0x5a 0 4M").unwrap();
    qemu_io(&v.path, Some(&pw), "read -P 0 100M 1M").unwrap();

    let snap = Uuid::new_v4();
    let sv = b.snapshot(v.id, snap, Some(&pw)).unwrap();
    assert!(sv.encrypted);
    qemu_io(&v.path, Some(&pw), "write -P 0x33 0 1M").unwrap();
    qemu_io(&sv.path, Some(&pw), "read -P 0x5a 0 4M").unwrap();
    let from_snap = spec(128 * MIB, true);
    let fv = b.create_from_snapshot(&from_snap, snap, Some(&pw)).unwrap();
    qemu_io(&fv.path, Some(&pw), "read -P 0x5a 0 4M").unwrap();

    let image = dir.path().join("image.raw");
    std::fs::write(&image, vec![0x7eu8; 3 * MIB as usize]).unwrap();
    let iv = b
        .create_from_image(&spec(16 * MIB, true), &image, ImageFormat::Raw, Some(&pw))
        .unwrap();
    assert_eq!(iv.size_bytes, 16 * MIB);
    qemu_io(&iv.path, Some(&pw), "read -P 0x7e 0 3M").unwrap();
    assert!(!has_run(&std::fs::read(&iv.path).unwrap(), 0x7e, 512));
    // Images whose header names another host file are refused before anything is created.
    let other = dir.path().join("host-secret.raw");
    std::fs::write(&other, vec![0x42u8; MIB as usize]).unwrap();
    let overlay = dir.path().join("overlay.qcow2");
    sh(&[
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "raw",
        "-b",
        other.to_str().unwrap(),
        overlay.to_str().unwrap(),
    ]);
    let e = b
        .create_from_image(&spec(16 * MIB, true), &overlay, ImageFormat::Qcow2, Some(&pw))
        .unwrap_err();
    assert!(e.to_string().contains("backing file"), "{e}");
    let ext = dir.path().join("ext.qcow2");
    sh(&[
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        &format!("data_file={},data_file_raw=on", other.display()),
        ext.to_str().unwrap(),
        "1M",
    ]);
    let e = b
        .create_from_image(&spec(16 * MIB, true), &ext, ImageFormat::Qcow2, Some(&pw))
        .unwrap_err();
    assert!(e.to_string().contains("data file"), "{e}");
    let open = b.open(v.id, false).unwrap();
    assert_eq!(open.path, v.path.to_str().unwrap());
    let st = b.pool_status().unwrap();
    assert_eq!((st.volumes, st.health), (4, PoolHealth::Ok));
    assert!(b.recover().unwrap().is_empty());
}

#[test]
fn spec_12_3_4_1_wipe_erases_the_luks_header_and_keyslots_and_the_old_passphrase_fails() {
    if !ready(&[]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let b = LocalBackend::open(cfg(&dir.path().join("pool"))).unwrap();
    let pw = Sensitive::new("wipe-me");
    let v = b.create(&spec(32 * MIB, true), Some(&pw)).unwrap();
    qemu_io(&v.path, Some(&pw), "write -P 0x5a 0 8M").unwrap();
    let before = std::fs::read(&v.path).unwrap();
    let info = wipe::parse_qcow2_header(&before).unwrap();
    let h = info.crypto_header.unwrap();
    let luks = &before[h.offset as usize..(h.offset + h.length) as usize];
    assert_eq!(&luks[..6], wipe::LUKS_MAGIC);

    let report = b.wipe(v.id, "alice").unwrap();
    assert!(report.verified);
    assert_eq!(report.method, WipeMethod::CryptoEraseAndZero);
    // Thin file: the 8 MiB written, the LUKS header and the qcow2 metadata, nothing else.
    assert!(report.bytes >= 8 * MIB + 2 * MIB, "{}", report.bytes);
    assert!(report.bytes <= before.len() as u64, "{}", report.bytes);
    assert_eq!(report.requested_by, "alice");
    assert!(b.open(v.id, false).is_err(), "a wiped volume cannot be opened");
    assert!(
        matches!(b.info(v.id), Err(StorageError::NotFound(_))),
        "out of service once the wipe started"
    );

    let wiping = v.path.with_extension("qcow2.wiping");
    let after = std::fs::read(&wiping).unwrap();
    assert!(after.iter().all(|b| *b == 0), "bytes remain after the wipe");
    // Even with the qcow2 header put back (a recovered first cluster), the LUKS header and its
    // keyslots are gone: the old passphrase opens nothing.
    let mut restored = after.clone();
    restored[..64 * 1024].copy_from_slice(&before[..64 * 1024]);
    let probe = dir.path().join("probe.qcow2");
    std::fs::write(&probe, &restored).unwrap();
    let e = qemu_io(&probe, Some(&pw), "read 0 512").unwrap_err();
    assert!(
        e.to_string().to_lowercase().contains("luks") || e.to_string().contains("header"),
        "{e}"
    );
    // The real file, untouched: opens neither.
    assert!(qemu_io(&wiping, Some(&pw), "read 0 512").is_err());

    assert_eq!(
        b.recover().unwrap(),
        vec![Recovery::ReleasePending { report: report.clone() }],
        "a verified wipe awaiting its release is reported after a crash"
    );
    assert_eq!(
        b.wipe(v.id, "bob").unwrap(),
        report,
        "a second wipe returns the first report"
    );
    b.release(v.id).unwrap();
    assert!(!wiping.exists());
    assert!(b.recover().unwrap().is_empty());
    b.release(v.id).unwrap();
}

#[test]
fn spec_12_3_4_1_a_volume_is_never_released_without_a_verified_wipe_and_recovery_resumes() {
    if !ready(&[]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("pool");
    let b = LocalBackend::open(cfg(&pool)).unwrap();
    let v = b.create(&spec(8 * MIB, false), None).unwrap();
    assert!(b.release(v.id).is_err(), "released before any wipe");
    assert!(v.path.exists());
    // A crash right after the wipe took the volume out of service, and one mid-create.
    let wiping = v.path.with_extension("qcow2.wiping");
    std::fs::rename(&v.path, &wiping).unwrap();
    let half = Uuid::new_v4();
    let creating = pool.join("volumes").join(format!("{half}.qcow2.creating"));
    std::fs::write(&creating, b"half a volume").unwrap();
    let mut found = b.recover().unwrap();
    found.sort_by_key(|r| format!("{r:?}"));
    assert_eq!(
        found,
        vec![Recovery::ResumeWipe { id: v.id }, Recovery::RollBackCreate { id: half }]
    );
    assert!(b.release(v.id).is_err(), "released while the wipe is unfinished");
    b.roll_back(half).unwrap();
    assert!(!creating.exists());
    let r = b.wipe(v.id, "recovery").unwrap();
    assert_eq!(
        r.method,
        WipeMethod::ZeroFullVerify,
        "unencrypted: full zero pass and read-back"
    );
    assert!(r.verified);
    b.release(v.id).unwrap();
    assert!(b.recover().unwrap().is_empty());
}

#[test]
fn spec_12_3_4_3_a_new_volume_in_freed_space_reads_only_zeros() {
    if !ready(&["mkfs.ext4", "losetup"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("fs.img");
    let lo = Loop::new(&backing, 96 * MIB);
    sh(&["mkfs.ext4", "-q", "-F", &lo.dev]);
    let mnt = Mount::new(&[&lo.dev], &dir.path().join("mnt"));
    let b = LocalBackend::open(cfg(&mnt.at.join("pool"))).unwrap();
    // The worst case: an unencrypted volume (policy allowed) full of tenant bytes.
    let old = b.create(&spec(56 * MIB, false), None).unwrap();
    qemu_io(&old.path, None, "write -P 0x5a 0 56M").unwrap();
    sh(&["sync"]);
    // The loop device's backing file, not /dev/loopN: reading the block device would fill its
    // own page cache, which the filesystem's later writes do not update.
    let dev_before = std::fs::read(&backing).unwrap();
    assert!(
        has_run(&dev_before, 0x5a, 4096),
        "the marker reached the device (else this test proves nothing)"
    );
    drop(dev_before);

    let r = b.wipe(old.id, "alice").unwrap();
    assert!(r.verified);
    b.release(old.id).unwrap();
    // Reallocate: in a 96 MiB filesystem, the new volume takes the freed blocks.
    let new = b.create(&spec(56 * MIB, false), None).unwrap();
    qemu_io(&new.path, None, "read -P 0 0 56M").unwrap();
    let raw = std::fs::read(&new.path).unwrap();
    assert!(!has_run(&raw, 0x5a, 64), "the new volume's file holds the old marker");
    sh(&["sync"]);
    // And nowhere on the device: the old blocks were overwritten, not just unlinked.
    let dev_after = std::fs::read(&backing).unwrap();
    assert!(
        !has_run(&dev_after, 0x5a, 512),
        "the old volume's data is still on the device"
    );
}

#[test]
fn spec_12_3_4_full_pool_is_insufficient_storage_and_leaves_no_file() {
    if !ready(&["mkfs.ext4", "losetup"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let lo = Loop::new(&dir.path().join("fs.img"), 48 * MIB);
    sh(&["mkfs.ext4", "-q", "-F", &lo.dev]);
    let mnt = Mount::new(&[&lo.dev], &dir.path().join("mnt"));
    let pool = mnt.at.join("pool");
    let b = LocalBackend::open(cfg(&pool)).unwrap();
    let pw = Sensitive::new("full");
    let e = b.create(&spec(64 * MIB, true), Some(&pw)).unwrap_err();
    assert!(matches!(e, StorageError::InsufficientStorage { .. }), "{e}");
    let api = e.to_api();
    assert_eq!((api.status().as_u16(), api.code()), (507, "insufficient_storage"));
    let listing = || {
        std::fs::read_dir(pool.join("volumes"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
    };
    assert!(listing().is_empty(), "{:?}", listing());
    let ok = b.create(&spec(16 * MIB, true), Some(&pw)).unwrap();
    let e = b.extend(ok.id, 80 * MIB, Some(&pw)).unwrap_err();
    assert!(matches!(e, StorageError::InsufficientStorage { .. }), "{e}");
    assert_eq!(b.info(ok.id).unwrap().size_bytes, 16 * MIB);

    // A tool that dies after writing part of its output: the half-made file goes too.
    let fake = dir.path().join("qemu-img-dies");
    std::fs::write(
        &fake,
        "#!/bin/sh\nif [ \"$1\" = convert ]; then for last; do :; done; echo partial > \"$last\"; exit 1; fi\nexec qemu-img \"$@\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut c = cfg(&pool);
    c.qemu_img = fake;
    let dying = LocalBackend::open(c).unwrap();
    let image = dir.path().join("img.raw");
    std::fs::write(&image, vec![1u8; MIB as usize]).unwrap();
    let e = dying
        .create_from_image(&spec(4 * MIB, true), &image, ImageFormat::Raw, Some(&pw))
        .unwrap_err();
    assert!(matches!(e, StorageError::Tool { .. }), "{e}");
    assert_eq!(listing(), vec![format!("{}.qcow2", ok.id)]);
}

#[test]
fn spec_14_1_2_btrfs_raid1_scrub_repairs_a_corrupt_copy_and_a_lost_device_still_reads() {
    if !ready(&["mkfs.btrfs", "btrfs", "losetup"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (f1, f2) = (dir.path().join("d1"), dir.path().join("d2"));
    let l1 = Loop::new(&f1, 320 * MIB);
    let mut l2 = Loop::new(&f2, 320 * MIB);
    sh(&["mkfs.btrfs", "-q", "-f", "-d", "raid1", "-m", "raid1", &l1.dev, &l2.dev]);
    let mnt_at = dir.path().join("mnt");
    let mut mnt = Mount::new(&["-o", &format!("device={}", l2.dev), &l1.dev], &mnt_at);
    let mut c = cfg(&mnt_at.join("pool"));
    c.wipe_samples = 16;
    let b = LocalBackend::open(c).unwrap();
    let pw = Sensitive::new("mirror");
    let v = b.create(&spec(24 * MIB, true), Some(&pw)).unwrap();
    qemu_io(&v.path, Some(&pw), "write -P 0x5a 0 8M").unwrap();
    let st = b.pool_status().unwrap();
    assert_eq!(st.redundancy, Redundancy::BtrfsRaid1 { devices: 2 });
    assert_eq!(st.health, PoolHealth::Ok, "{:?}", st.problems);
    // A 64 KiB block of the volume's ciphertext: unique, so it can be found on each device.
    let file = std::fs::read(&v.path).unwrap();
    let block_at = (4 * MIB) as usize;
    let block = file[block_at..block_at + 65536].to_vec();
    assert!(block.iter().any(|b| *b != 0));
    mnt.umount();

    let dev1 = std::fs::read(&f1).unwrap();
    let pos = dev1
        .windows(block.len())
        .step_by(4096)
        .position(|w| w == block.as_slice())
        .map(|i| i * 4096)
        .expect("the block is on device 1");
    drop(dev1);
    assert!(
        std::fs::read(&f2)
            .unwrap()
            .windows(block.len())
            .step_by(4096)
            .any(|w| w == block.as_slice())
    );
    // Corrupt device 1's copy, behind btrfs's back.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&f1).unwrap();
        f.write_all_at(&vec![0xa5u8; 16384], pos as u64).unwrap();
        f.sync_all().unwrap();
    }
    sh(&["btrfs", "device", "scan", &l1.dev, &l2.dev]);
    mnt = Mount::new(&["-o", &format!("device={}", l2.dev), &l1.dev], &mnt_at);
    let r = btrfs::scrub(Path::new("btrfs"), &mnt_at, T).unwrap();
    assert!(r.finished, "{r:?}");
    assert!(r.csum_errors >= 4, "the 16 KiB of corruption is found: {r:?}");
    assert_eq!(r.uncorrectable_errors, 0, "{r:?}");
    assert_eq!(r.verdict(), ScrubVerdict::Repaired);
    let st = b.pool_status().unwrap();
    assert_eq!(st.health, PoolHealth::Degraded, "repaired errors still raise an alarm");
    assert!(
        st.problems
            .iter()
            .any(|p| p.contains("corruption_errs") || p.contains("csum")),
        "{:?}",
        st.problems
    );
    qemu_io(&v.path, Some(&pw), "read -P 0x5a 0 8M").unwrap();
    let again = btrfs::scrub(Path::new("btrfs"), &mnt_at, T).unwrap();
    assert_eq!(again.errors(), 0, "repaired on the device: {again:?}");
    mnt.umount();
    assert!(
        std::fs::read(&f1).unwrap()[pos..pos + block.len()] == block[..],
        "device 1's copy was rewritten from the mirror"
    );

    // Lose device 2 entirely: a degraded mount still serves the volume.
    l2.detach();
    let _ = Command::new("btrfs").args(["device", "scan", "--forget"]).status();
    mnt = Mount::new(&["-o", "degraded", &l1.dev], &mnt_at);
    qemu_io(&v.path, Some(&pw), "read -P 0x5a 0 8M").unwrap();
    let st = b.pool_status().unwrap();
    assert_eq!(st.health, PoolHealth::Degraded);
    assert!(st.problems.iter().any(|p| p.contains("missing")), "{:?}", st.problems);
    mnt.umount();
}

/// A tiny synchronous QMP client for `qemu-storage-daemon` (one command at a time).
struct Qmp {
    child: std::process::Child,
    reader: std::io::BufReader<std::os::unix::net::UnixStream>,
    writer: std::os::unix::net::UnixStream,
}

impl Qmp {
    fn start(dir: &Path) -> Qmp {
        let sock = dir.join("qmp.sock");
        let child = Command::new("qemu-storage-daemon")
            .arg("--chardev")
            .arg(format!("socket,id=m0,path={},server=on,wait=off", sock.display()))
            .args(["--monitor", "chardev=m0"])
            .stdin(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let t = std::time::Instant::now();
        let stream = loop {
            if let Ok(s) = std::os::unix::net::UnixStream::connect(&sock) {
                break s;
            }
            assert!(t.elapsed() < Duration::from_secs(20), "no QMP socket");
            std::thread::sleep(Duration::from_millis(20));
        };
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut q = Qmp {
            child,
            reader: std::io::BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        };
        let mut greeting = String::new();
        std::io::BufRead::read_line(&mut q.reader, &mut greeting).unwrap();
        assert!(greeting.contains("QMP"), "{greeting}");
        q.send(&serde_json::json!({"execute": "qmp_capabilities"})).unwrap();
        q
    }

    /// Sends one command; `Ok(return)` or `Err(error.desc)`.
    fn send(&mut self, cmd: &serde_json::Value) -> Result<serde_json::Value, String> {
        use std::io::{BufRead, Write};
        writeln!(self.writer, "{cmd}").unwrap();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(e["desc"].as_str().unwrap_or("").to_string());
            }
        }
    }
}

impl Drop for Qmp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn spec_12_3_2_2_rendered_qmp_attaches_an_encrypted_throttled_volume_in_real_qemu() {
    if !ready(&["qemu-storage-daemon"]) {
        return;
    }
    use rampart_storage::render::{self, NodeNames, Qos};
    let dir = tempfile::tempdir().unwrap();
    let b = LocalBackend::open(cfg(&dir.path().join("pool"))).unwrap();
    let pw = Sensitive::new("qmp-secret");
    let v = b.create(&spec(16 * MIB, true), Some(&pw)).unwrap();
    let qos = Qos {
        iops_total: Some(200),
        bps_total: Some(10 << 20),
        ..Qos::default()
    };
    let open = b.open(v.id, false).unwrap();
    let mut q = Qmp::start(dir.path());

    // A wrong passphrase: the blockdev-add is refused and nothing is left attached.
    let wrong = NodeNames::for_volume(Uuid::new_v4(), false);
    let cmd: serde_json::Value =
        serde_json::from_str(render::secret_object_add(&wrong, &Sensitive::new("nope")).expose()).unwrap();
    q.send(&cmd).unwrap();
    let add = &render::blockdev_add(&wrong, &open, &Qos::default())[0];
    let e = q.send(&serde_json::to_value(add).unwrap()).unwrap_err();
    assert!(e.contains("Invalid password"), "{e}");

    let names = NodeNames::for_volume(v.id, true);
    let cmd: serde_json::Value = serde_json::from_str(render::secret_object_add(&names, &pw).expose()).unwrap();
    q.send(&cmd).unwrap();
    let cmds = render::attach_commands(&names, &open, &qos, None);
    // QSD has no guest devices: everything but the final device_add.
    let (device, nodes) = cmds.split_last().unwrap();
    assert_eq!(device.execute, "device_add");
    for c in nodes {
        q.send(&serde_json::to_value(c).unwrap())
            .unwrap_or_else(|e| panic!("{} refused: {e}", c.execute));
    }
    let list = q
        .send(&serde_json::json!({"execute": "query-named-block-nodes", "arguments": {"flat": true}}))
        .unwrap();
    let find = |name: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|n| n["node-name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no node {name} in {list}"))
    };
    let fmt = find(&names.format);
    assert_eq!(fmt["drv"], "qcow2");
    assert_eq!(fmt["encrypted"], true);
    assert_eq!(fmt["ro"], false);
    let top = find(&names.top);
    assert_eq!(top["drv"], "throttle");
    let tg = q
        .send(&serde_json::json!({"execute": "qom-get", "arguments": {"path": names.throttle_group, "property": "limits"}}))
        .unwrap();
    assert_eq!(
        (tg["iops-total"].as_u64(), tg["bps-total"].as_u64()),
        (Some(200), Some(10 << 20))
    );
    // Detach without the device_del (no device here): the rest undoes the attach.
    for c in &render::detach_commands(&names, true)[1..] {
        q.send(&serde_json::to_value(c).unwrap())
            .unwrap_or_else(|e| panic!("{} refused: {e}", c.execute));
    }
    let list = q
        .send(&serde_json::json!({"execute": "query-named-block-nodes", "arguments": {"flat": true}}))
        .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 0, "{list}");
}
