use std::sync::atomic::{AtomicBool, Ordering};

use rampart_storage::FakeBackend;

use rampart_api::storage::{DesiredPresence, DesiredSnapshot, ObservedVolume, VolumeReport};
use rampart_storage::{PoolStatus, Redundancy};

use super::*;

const GIB: u64 = 1 << 30;

/// The controller's side, faked: one passphrase per volume (a snapshot's volume answers for
/// it), every request recorded, an image file on disk.
struct FakeCtl {
    keys: Mutex<BTreeMap<Uuid, String>>,
    asked: Mutex<Vec<Uuid>>,
    image: PathBuf,
    image_fails: AtomicBool,
}

impl FakeCtl {
    fn new(dir: &Path) -> Arc<FakeCtl> {
        let image = dir.join("image.raw");
        std::fs::write(&image, vec![7u8; 4096]).unwrap();
        Arc::new(FakeCtl {
            keys: Mutex::new(BTreeMap::new()),
            asked: Mutex::new(Vec::new()),
            image,
            image_fails: AtomicBool::new(false),
        })
    }
    fn key(&self, id: Uuid, pw: &str) {
        self.keys.lock().unwrap().insert(id, pw.into());
    }
    fn asked(&self) -> Vec<Uuid> {
        self.asked.lock().unwrap().clone()
    }
}

impl Controller for FakeCtl {
    fn passphrase(&self, volume: Uuid) -> BoxFuture<'_, Result<Sensitive, Failure>> {
        Box::pin(async move {
            self.asked.lock().unwrap().push(volume);
            self.keys
                .lock()
                .unwrap()
                .get(&volume)
                .map(|k| Sensitive::new(k.clone()))
                .ok_or_else(|| failure("not_found", "volume not found"))
        })
    }
    fn image<'a>(
        &'a self,
        _image_id: Uuid,
        _sha256: &'a str,
        progress: &'a (dyn Fn(u64) + Send + Sync),
    ) -> BoxFuture<'a, Result<PathBuf, Failure>> {
        Box::pin(async move {
            if self.image_fails.load(Ordering::SeqCst) {
                return Err(failure("image_unavailable", "the controller is unreachable"));
            }
            progress(2048);
            Ok(self.image.clone())
        })
    }
}

struct Rig {
    _dir: tempfile::TempDir,
    state: PathBuf,
    backend: Arc<FakeBackend>,
    ctl: Arc<FakeCtl>,
    svc: Arc<StorageService>,
}

fn rig(capacity: u64) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("storage");
    let backend = Arc::new(FakeBackend::new(capacity));
    let ctl = FakeCtl::new(dir.path());
    let svc = StorageService::new(backend.clone(), ctl.clone(), &state).unwrap();
    Rig {
        _dir: dir,
        state,
        backend,
        ctl,
        svc,
    }
}

impl Rig {
    /// The agent restarted: a new service over the same pool and data directory.
    fn restart(&mut self) {
        self.svc = StorageService::new(self.backend.clone(), self.ctl.clone(), &self.state).unwrap();
    }
}

/// Passes until nothing more happens (bounded).
async fn converge(svc: &Arc<StorageService>, doc: &NodeStorage) {
    for _ in 0..8 {
        svc.converge(doc);
        svc.settle().await;
    }
}

fn vol(id: Uuid, size: u64, encrypted: bool) -> DesiredVolume {
    DesiredVolume {
        id,
        project_id: Uuid::nil(),
        size_bytes: size,
        encrypted,
        presence: DesiredPresence::Present,
        source: None,
        requested_by: None,
    }
}

fn doc(volumes: Vec<DesiredVolume>, snapshots: Vec<DesiredSnapshot>) -> NodeStorage {
    NodeStorage { volumes, snapshots }
}

fn one(svc: &StorageService, id: Uuid) -> VolumeReport {
    svc.report().volumes.into_iter().find(|v| v.id == id).expect("reported")
}

#[tokio::test]
async fn spec_12_3_2_2_an_empty_encrypted_volume_is_created_with_the_controllers_passphrase() {
    let r = rig(10 * GIB);
    let id = Uuid::new_v4();
    r.ctl.key(id, "pw-a");
    let d = doc(vec![vol(id, GIB, true)], vec![]);
    converge(&r.svc, &d).await;
    let rep = one(&r.svc, id);
    assert_eq!(rep.state, ObservedVolume::Ready, "{rep:?}");
    assert_eq!(rep.size_bytes, GIB);
    assert_eq!(r.ctl.asked(), vec![id], "asked once, for the create only");
    assert!(
        r.backend.extend(id, 2 * GIB, Some(&Sensitive::new("pw-b"))).is_err(),
        "made under the controller's passphrase"
    );
    assert!(r.svc.is_ready(id));
    // Unencrypted: no passphrase asked at all.
    let plain = Uuid::new_v4();
    converge(&r.svc, &doc(vec![vol(id, GIB, true), vol(plain, GIB, false)], vec![])).await;
    assert_eq!(one(&r.svc, plain).state, ObservedVolume::Ready);
    assert_eq!(r.ctl.asked(), vec![id]);
    r.svc.refresh_pool().await;
    let pool = &r.svc.report().pools[0];
    assert_eq!((pool.volumes, pool.free_bytes), (2, 8 * GIB));
}

#[tokio::test]
async fn spec_12_3_2_2_a_volume_from_an_image_is_fetched_and_copied_with_its_given_format() {
    let r = rig(10 * GIB);
    let id = Uuid::new_v4();
    r.ctl.key(id, "pw");
    let mut v = vol(id, GIB, true);
    v.source = Some(VolumeSource::Image {
        image_id: Uuid::new_v4(),
        sha256: "00".repeat(32),
        size: 4096,
        format: "raw".into(),
    });
    converge(&r.svc, &doc(vec![v.clone()], vec![])).await;
    assert_eq!(one(&r.svc, id).state, ObservedVolume::Ready);

    // An unknown format is refused, never probed.
    let bad = Uuid::new_v4();
    let mut w = v.clone();
    w.id = bad;
    w.source = Some(VolumeSource::Image {
        image_id: Uuid::new_v4(),
        sha256: "00".repeat(32),
        size: 4096,
        format: "vmdk".into(),
    });
    // The image cannot be had: `image_unavailable`, tried again later.
    let late = Uuid::new_v4();
    let mut x = v.clone();
    x.id = late;
    r.ctl.image_fails.store(true, Ordering::SeqCst);
    converge(&r.svc, &doc(vec![v.clone(), w, x], vec![])).await;
    let e = one(&r.svc, bad);
    assert_eq!(
        (e.state, e.error.unwrap().code.as_str()),
        (ObservedVolume::Error, "create_failed")
    );
    let e = one(&r.svc, late);
    assert_eq!(e.error.as_ref().unwrap().code, "image_unavailable");
    assert!(matches!(
        r.svc.volume(late).unwrap().have,
        Have::Error { retry_at: Some(_), .. }
    ));
    assert!(
        r.backend.info(bad).is_err() && r.backend.info(late).is_err(),
        "nothing half-made"
    );
}

#[tokio::test]
async fn spec_12_3_2_2_snapshot_then_a_volume_from_it_under_the_same_key_and_extend() {
    let r = rig(10 * GIB);
    let (a, s, b) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    r.ctl.key(a, "pw-a");
    // The controller gives a volume made from a snapshot the snapshot's (its volume's) key.
    r.ctl.key(b, "pw-a");
    let snap = DesiredSnapshot {
        id: s,
        volume_id: a,
        project_id: Uuid::nil(),
        presence: DesiredPresence::Present,
        requested_by: None,
    };
    let mut vb = vol(b, 2 * GIB, true);
    vb.source = Some(VolumeSource::Snapshot { snapshot_id: s });
    // All three in one document: the snapshot waits for its volume, the new volume for it.
    let d = doc(vec![vol(a, GIB, true), vb.clone()], vec![snap.clone()]);
    converge(&r.svc, &d).await;
    let st = r.svc.report();
    assert!(st.volumes.iter().all(|v| v.state == ObservedVolume::Ready), "{st:?}");
    assert_eq!(st.snapshots[0].state, ObservedVolume::Ready);
    assert_eq!(st.snapshots[0].id, s);
    assert_eq!(r.ctl.asked(), vec![a, a, b], "create a, snapshot of a, create b");

    // Extend grows the volume under its key.
    let mut grown = vol(a, 3 * GIB, true);
    grown.presence = DesiredPresence::Present;
    let d2 = doc(vec![grown, vb], vec![snap]);
    converge(&r.svc, &d2).await;
    assert_eq!(one(&r.svc, a).size_bytes, 3 * GIB);
    assert_eq!(r.backend.info(a).unwrap().size_bytes, 3 * GIB);
}

#[tokio::test]
async fn spec_12_3_4_a_full_pool_is_insufficient_storage_and_stays_error() {
    let r = rig(2 * GIB);
    let id = Uuid::new_v4();
    let d = doc(vec![vol(id, 3 * GIB, false)], vec![]);
    converge(&r.svc, &d).await;
    let e = one(&r.svc, id);
    assert_eq!(e.state, ObservedVolume::Error);
    let f = e.error.unwrap();
    assert_eq!(f.code, "insufficient_storage");
    assert!(f.message.contains("bytes free"), "{}", f.message);
    assert_eq!(r.backend.pool_status().unwrap().volumes, 0, "nothing half-created");
    // An extend past the pool: `insufficient_storage`, the volume keeps its size.
    let ok = Uuid::new_v4();
    converge(&r.svc, &doc(vec![vol(id, 3 * GIB, false), vol(ok, GIB, false)], vec![])).await;
    converge(
        &r.svc,
        &doc(vec![vol(id, 3 * GIB, false), vol(ok, 5 * GIB, false)], vec![]),
    )
    .await;
    let e = one(&r.svc, ok);
    // Still in service at its old size, with the reason.
    assert_eq!((e.state, e.size_bytes), (ObservedVolume::Ready, GIB));
    assert_eq!(e.error.unwrap().code, "insufficient_storage");
    assert_eq!(r.backend.info(ok).unwrap().size_bytes, GIB);
    assert!(r.svc.is_ready(ok), "still attachable");
    // A backend that fails outright is `create_failed` with no path in the message.
    let other = Uuid::new_v4();
    r.backend.fail_next("/srv/secret-pool-path gone");
    converge(&r.svc, &doc(vec![vol(other, GIB, false)], vec![])).await;
    let f = one(&r.svc, other).error.unwrap();
    assert_eq!(f.code, "create_failed");
    assert!(!f.message.contains("/srv"), "{}", f.message);
}

#[tokio::test]
async fn spec_12_3_4_1_wipe_then_release_and_the_report_is_sent_until_the_volume_leaves_the_document() {
    let mut r = rig(10 * GIB);
    let id = Uuid::new_v4();
    r.ctl.key(id, "pw");
    converge(&r.svc, &doc(vec![vol(id, GIB, true)], vec![])).await;
    let mut w = vol(id, GIB, true);
    w.presence = DesiredPresence::Wiped;
    w.requested_by = Some("alice".into());
    let d = doc(vec![w], vec![]);
    converge(&r.svc, &d).await;
    let rep = one(&r.svc, id);
    assert_eq!(rep.state, ObservedVolume::Wiped, "{rep:?}");
    let proof = rep.wipe_report.expect("carried with wiped");
    assert!(proof.verified);
    assert_eq!(proof.requested_by, "alice");
    assert_eq!(r.backend.pool_status().unwrap().volumes, 0, "space released");
    assert_eq!(r.ctl.asked(), vec![id], "a wipe needs no key");
    // Across a restart of the agent, still reported with its proof.
    r.restart();
    converge(&r.svc, &d).await;
    assert_eq!(one(&r.svc, id).wipe_report, Some(proof));
    // The controller recorded it: the volume leaves the document and the proof the disk.
    converge(&r.svc, &NodeStorage::default()).await;
    assert!(r.svc.report().volumes.is_empty());
    assert_eq!(std::fs::read_dir(r.state.join("wiped")).unwrap().count(), 0);
}

#[tokio::test]
async fn spec_12_3_4_1_an_unverified_wipe_is_an_error_and_keeps_the_space() {
    let r = rig(10 * GIB);
    let id = Uuid::new_v4();
    converge(&r.svc, &doc(vec![vol(id, GIB, false)], vec![])).await;
    r.backend.make_wipes_unverifiable(true);
    let mut w = vol(id, GIB, false);
    w.presence = DesiredPresence::Wiped;
    converge(&r.svc, &doc(vec![w], vec![])).await;
    let rep = one(&r.svc, id);
    assert_eq!(rep.state, ObservedVolume::Error);
    assert_eq!(rep.error.unwrap().code, "wipe_unverified");
    assert!(rep.wipe_report.is_none());
    assert_eq!(r.backend.pool_status().unwrap().volumes, 1, "not released");
    assert!(matches!(
        r.svc.volume(id).unwrap().have,
        Have::Error { retry_at: Some(_), .. }
    ));
}

#[tokio::test]
async fn spec_12_3_4_1_recovery_rolls_back_a_create_and_resumes_a_wipe_after_a_crash() {
    let mut r = rig(10 * GIB);
    // Mid-create: the pool holds a half-made copy.
    let half = Uuid::new_v4();
    r.backend.crash_during_create(half);
    // Mid-wipe: the wipe started (out of service) and never verified.
    let wiping = Uuid::new_v4();
    converge(&r.svc, &doc(vec![vol(wiping, GIB, false)], vec![])).await;
    r.backend.make_wipes_unverifiable(true);
    assert!(r.backend.wipe(wiping, "bob").is_err());
    r.backend.make_wipes_unverifiable(false);

    r.restart();
    r.svc.recover().await;
    assert!(
        r.backend
            .recover()
            .unwrap()
            .iter()
            .all(|x| !matches!(x, Recovery::RollBackCreate { .. }))
    );
    let f = one(&r.svc, half).error.expect("create_failed");
    assert_eq!(f.code, "create_failed");
    assert_eq!(one(&r.svc, wiping).state, ObservedVolume::Wiping);
    // The wipe resumes even before the document arrives, and is never `wiped` unverified.
    let mut w = vol(wiping, GIB, false);
    w.presence = DesiredPresence::Wiped;
    w.requested_by = Some("bob".into());
    let mut h = vol(half, GIB, false);
    h.presence = DesiredPresence::Present;
    converge(&r.svc, &doc(vec![w, h.clone()], vec![])).await;
    let rep = one(&r.svc, wiping);
    assert_eq!(rep.state, ObservedVolume::Wiped);
    assert!(rep.wipe_report.unwrap().verified);
    assert_eq!(
        one(&r.svc, half).error.unwrap().code,
        "create_failed",
        "a rolled-back create stays error until the controller acts"
    );
    // The controller deletes it: nothing was ever in the pool, so `wiped` without a proof.
    h.presence = DesiredPresence::Wiped;
    converge(&r.svc, &doc(vec![h], vec![])).await;
    let rep = one(&r.svc, half);
    assert_eq!((rep.state, rep.wipe_report), (ObservedVolume::Wiped, None));
}

/// Logs of the service's work are captured; the passphrases must be in none of them, nor in
/// any `Debug` of what it holds or reports.
#[tokio::test]
async fn spec_12_3_2_2_the_passphrase_is_never_logged_nor_in_debug() {
    use tracing_subscriber::fmt::MakeWriter;
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }
    let buf = Buf::default();
    let sub = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(buf.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(sub);

    let r = rig(10 * GIB);
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let secret = "canary-volume-passphrase-5e1f";
    r.ctl.key(a, secret);
    // `b` is created under the wrong key for its snapshot: an error path too.
    r.ctl.key(b, "another-canary-9d2c");
    let s = Uuid::new_v4();
    let mut vb = vol(b, GIB, true);
    vb.source = Some(VolumeSource::Snapshot { snapshot_id: s });
    let snap = DesiredSnapshot {
        id: s,
        volume_id: a,
        project_id: Uuid::nil(),
        presence: DesiredPresence::Present,
        requested_by: None,
    };
    converge(&r.svc, &doc(vec![vol(a, GIB, true), vb.clone()], vec![snap.clone()])).await;
    converge(&r.svc, &doc(vec![vol(a, 2 * GIB, true), vb], vec![snap])).await;
    assert_eq!(one(&r.svc, a).size_bytes, 2 * GIB);
    assert_eq!(one(&r.svc, b).error.unwrap().code, "create_failed");
    let mut hay = std::mem::take(&mut *buf.0.lock().unwrap());
    assert!(!hay.is_empty(), "the service logged its work");
    hay.extend(format!("{:?}", r.svc.report()).bytes());
    hay.extend(format!("{:?}", r.svc.volume(a)).bytes());
    hay.extend(serde_json::to_vec(&r.svc.report()).unwrap());
    rampart_common::testing::assert_no_secret(&hay, &[secret.as_bytes().to_vec(), b"another-canary-9d2c".to_vec()]);
}

#[test]
fn the_plan_orders_snapshots_after_their_volume_and_leaves_busy_volumes_alone() {
    let (a, s, b, gone) = (
        Uuid::from_u128(1),
        Uuid::from_u128(2),
        Uuid::from_u128(3),
        Uuid::from_u128(4),
    );
    let now = Instant::now();
    let snap = DesiredSnapshot {
        id: s,
        volume_id: a,
        project_id: Uuid::nil(),
        presence: DesiredPresence::Present,
        requested_by: None,
    };
    let mut vb = vol(b, GIB, true);
    vb.source = Some(VolumeSource::Snapshot { snapshot_id: s });
    let d = doc(vec![vol(a, GIB, true), vb.clone()], vec![snap.clone()]);
    let slot = |have| Slot { have, busy: false };
    // Nothing known: probe all.
    assert_eq!(
        plan(&d, &BTreeMap::new(), &BTreeMap::new(), now),
        vec![
            Action::Probe {
                kind: Kind::Volume,
                id: a
            },
            Action::Probe {
                kind: Kind::Volume,
                id: b
            },
            Action::Probe {
                kind: Kind::Snapshot,
                id: s
            },
        ]
    );
    // All absent: create a; the snapshot waits for a, b for the snapshot.
    let mut vols = BTreeMap::from([(a, slot(Have::Absent)), (b, slot(Have::Absent))]);
    let mut snaps = BTreeMap::from([(s, slot(Have::Absent))]);
    assert_eq!(plan(&d, &vols, &snaps, now), vec![Action::Create(vol(a, GIB, true))]);
    // a ready: snapshot it; b still waits (the snapshot is absent but not made yet → create
    // would fail, so it is only tried once the snapshot is there or failed).
    vols.insert(
        a,
        slot(Have::Ready {
            size_bytes: GIB,
            allocated_bytes: 0,
        }),
    );
    snaps.insert(
        s,
        Slot {
            have: Have::Creating { progress: None },
            busy: true,
        },
    );
    assert_eq!(plan(&d, &vols, &snaps, now), vec![]);
    snaps.insert(
        s,
        slot(Have::Ready {
            size_bytes: GIB,
            allocated_bytes: 0,
        }),
    );
    // An unknown record leaves; an error due again is probed.
    vols.insert(gone, slot(Have::Absent));
    vols.insert(
        a,
        slot(Have::Error {
            failure: failure("extend_failed", "x"),
            retry_at: Some(now),
        }),
    );
    assert_eq!(
        plan(&d, &vols, &snaps, now),
        vec![
            Action::Probe {
                kind: Kind::Volume,
                id: a
            },
            Action::Create(vb),
            Action::Forget {
                kind: Kind::Volume,
                id: gone
            },
        ]
    );
}

#[test]
fn pools_map_to_the_report_shape() {
    let s = PoolStatus {
        backend: "local".into(),
        total_bytes: 100,
        free_bytes: 40,
        volumes: 3,
        redundancy: Redundancy::BtrfsRaid1 { devices: 2 },
        health: PoolHealth::Degraded,
        problems: vec!["device 2 missing".into()],
    };
    let r = pool_report("local", &s);
    assert_eq!(
        serde_json::to_value(&r).unwrap(),
        serde_json::json!({"name": "local", "backend": "local", "total_bytes": 100, "free_bytes": 40,
            "volumes": 3, "redundancy": "btrfs_raid1", "copies": 2, "health": "degraded",
            "problems": ["device 2 missing"]})
    );
    assert_eq!(
        code_of(&StorageError::Unavailable("x".into()), "create"),
        "storage_unavailable"
    );
    assert_eq!(code_of(&StorageError::Invalid("x".into()), "extend"), "extend_failed");
}

/// `qemu-io` through a volume's LUKS layer, the passphrase on stdin.
fn qemu_io(path: &Path, passphrase: &Sensitive, command: &str) -> String {
    let mut cmd = std::process::Command::new("qemu-io");
    cmd.arg("--object").arg(rampart_storage::proc::secret_object_arg("s0"));
    cmd.args([
        "--image-opts",
        &format!(
            "driver=qcow2,file.driver=file,file.filename={},encrypt.key-secret=s0",
            path.display()
        ),
        "-c",
        command,
    ]);
    rampart_storage::proc::run(cmd, Some(passphrase), Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("qemu-io {command}: {e}"))
        .stdout
}

fn has_run(hay: &[u8], byte: u8, n: usize) -> bool {
    let mut run = 0;
    hay.iter().any(|b| {
        run = if *b == byte { run + 1 } else { 0 };
        run >= n
    })
}

/// The service over the real `local` pool: an encrypted volume from an image (the pattern
/// reads back through LUKS and is nowhere in the file in clear), a snapshot and a volume from
/// it under the same key, an extend, then verified wipes that release everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_12_3_2_2_and_12_3_4_1_the_service_drives_the_real_local_pool() {
    let have = |c: &str| {
        std::process::Command::new("sh")
            .args(["-c", &format!("command -v {c}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !rampart_common::testing::require_root()
        || !rampart_common::testing::require(
            rampart_common::testing::Need::Root,
            have("qemu-img") && have("qemu-io"),
            "qemu-img or qemu-io missing",
        )
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = rampart_storage::LocalConfig::new(dir.path().join("pool"));
    cfg.luks_iter_time_ms = 10;
    cfg.reserve_bytes = 1 << 20;
    cfg.tool_timeout = Duration::from_secs(60);
    let backend = Arc::new(rampart_storage::LocalBackend::open(cfg).unwrap());
    let ctl = FakeCtl::new(dir.path());
    let mut image = vec![0x5au8; 1 << 20];
    image.resize(2 << 20, 0);
    std::fs::write(&ctl.image, &image).unwrap();
    let svc = StorageService::new(backend.clone(), ctl.clone(), &dir.path().join("state")).unwrap();

    let (a, s, b) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let pw = "real-pool-passphrase-7c41";
    ctl.key(a, pw);
    ctl.key(b, pw);
    let mut va = vol(a, 64 << 20, true);
    va.source = Some(VolumeSource::Image {
        image_id: Uuid::new_v4(),
        sha256: "00".repeat(32),
        size: image.len() as u64,
        format: "raw".into(),
    });
    let snap = DesiredSnapshot {
        id: s,
        volume_id: a,
        project_id: Uuid::nil(),
        presence: DesiredPresence::Present,
        requested_by: None,
    };
    let mut vb = vol(b, 64 << 20, true);
    vb.source = Some(VolumeSource::Snapshot { snapshot_id: s });
    converge(&svc, &doc(vec![va.clone(), vb.clone()], vec![snap.clone()])).await;
    let st = svc.report();
    assert!(
        st.volumes
            .iter()
            .chain(&st.snapshots)
            .all(|v| v.state == ObservedVolume::Ready),
        "{st:?}"
    );
    let key = Sensitive::new(pw);
    for id in [a, b] {
        let out = qemu_io(&backend.volume_path(id), &key, "read -P 0x5a 0 1M");
        assert!(!out.contains("failed"), "{out}");
        let raw = std::fs::read(backend.volume_path(id)).unwrap();
        assert!(!has_run(&raw, 0x5a, 4096), "plaintext of the image in the pool file");
    }

    va.size_bytes = 128 << 20;
    converge(&svc, &doc(vec![va.clone(), vb.clone()], vec![snap.clone()])).await;
    assert_eq!(backend.info(a).unwrap().size_bytes, 128 << 20);

    let gone = |mut v: DesiredVolume| {
        v.presence = DesiredPresence::Wiped;
        v.requested_by = Some("carol".into());
        v
    };
    let mut ws = snap.clone();
    ws.presence = DesiredPresence::Wiped;
    converge(&svc, &doc(vec![gone(va), gone(vb)], vec![ws])).await;
    let st = svc.report();
    for r in st.volumes.iter().chain(&st.snapshots) {
        assert_eq!(r.state, ObservedVolume::Wiped, "{r:?}");
        let w = r.wipe_report.as_ref().expect("proof");
        assert!(w.verified && w.bytes > 0, "{w:?}");
    }
    assert_eq!(backend.pool_status().unwrap().volumes, 0);
    assert_eq!(
        std::fs::read_dir(dir.path().join("pool/volumes")).unwrap().count(),
        0,
        "space released"
    );
}

/// The guard in front of every wipe: a volume file that another process (a QEMU being stopped)
/// still holds, even by a descriptor it was handed, is seen as held; once that process is
/// gone, it is not.
#[test]
fn spec_12_3_4_1_a_volume_still_open_in_another_process_is_held_back_from_the_wipe() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("volume.qcow2");
    std::fs::write(&f, b"x").unwrap();
    assert!(!held_open(&f), "no process holds it yet");
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg("exec 3<\"$0\"; exec sleep 30")
        .arg(&f)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !held_open(&f) {
        assert!(Instant::now() < deadline, "the child's descriptor was never seen");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!held_open(&f), "the holder is gone");
    // This process's own descriptors do not count (the wipe itself opens the file).
    let _mine = std::fs::File::open(&f).unwrap();
    assert!(!held_open(&f));
}
