//! The Ceph backend against a real cluster, as root: the shared single-node cluster of
//! `scripts/ci/start-ceph.sh` (`RAMPART_TEST_CEPH_CONF`, `RAMPART_TEST_CEPH_KEYRING`; skipped
//! through `Need::Ceph` when absent, a failure under `RAMPART_TEST_REQUIRE_CEPH=1`). Each test
//! makes its own pool (`rt-<random>`, 2 replicas) and cephx users, and removes them, with every
//! rbd-fuse mount, on every path (the guards below).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rampart_common::Sensitive;
use rampart_common::testing::{Need, require, require_root};
use rampart_storage::backend::{PoolHealth, Redundancy, StorageBackend, StorageError, VolumeSpec};
use rampart_storage::ceph::{self, CephAdmin, CephOpenError};
use rampart_storage::ceph_conf::{CephConfigError, CephSettings, Timeouts};
use rampart_storage::proc;
use rampart_storage::wipe::WipeMethod;
use rampart_storage::{CephBackend, CephConfig};
use uuid::Uuid;

const MIB: u64 = 1 << 20;
const T: Duration = Duration::from_secs(120);

fn sh(args: &[&str]) -> String {
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..]);
    proc::run(cmd, None, T)
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
        .stdout
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A pool and users of the shared cluster, removed on drop.
struct Cluster {
    admin: CephAdmin,
    pool: String,
    mon: std::net::SocketAddr,
    dir: tempfile::TempDir,
    clients: std::cell::RefCell<Vec<String>>,
}

impl Cluster {
    fn get() -> Option<Cluster> {
        if !require_root() {
            return None;
        }
        for c in ["qemu-img", "qemu-io", "rbd", "rados", "ceph", "rbd-fuse"] {
            if !require(Need::Ceph, have(c), &format!("{c} missing")) {
                return None;
            }
        }
        let conf = std::env::var_os("RAMPART_TEST_CEPH_CONF").map(PathBuf::from);
        let keyring = std::env::var_os("RAMPART_TEST_CEPH_KEYRING").map(PathBuf::from);
        let (Some(conf), Some(keyring)) = (conf, keyring) else {
            require(Need::Ceph, false, "no ceph cluster (scripts/ci/start-ceph.sh)");
            return None;
        };
        let text = std::fs::read_to_string(&conf).expect("cluster conf");
        let mon = text
            .lines()
            .find_map(|l| l.strip_prefix("mon host = v2:"))
            .expect("mon host in the cluster conf")
            .trim()
            .parse()
            .expect("mon address");
        let admin = CephAdmin {
            conf,
            id: "admin".into(),
            keyring,
            timeout: T,
        };
        let pool = format!("rt-{}", &Uuid::new_v4().simple().to_string()[..12]);
        ceph::create_pool(&admin, &pool, 2, 8).expect("create the test pool");
        Some(Cluster {
            admin,
            pool,
            mon,
            dir: tempfile::tempdir().expect("temp dir"),
            clients: Default::default(),
        })
    }

    /// A node's backend: its own cephx user (profile rbd on this pool only), state directory
    /// and storage address.
    fn node(&self, name: &str, address: &str) -> Node {
        let client = format!("{}-{name}", self.pool);
        let keyring = self.dir.path().join(format!("{name}.keyring"));
        ceph::create_client(&self.admin, &client, &self.pool, &keyring).expect("node user");
        self.clients.borrow_mut().push(client.clone());
        let settings = CephSettings {
            monitors: vec![self.mon],
            pool: self.pool.clone(),
            client_id: client,
            keyring,
            storage_network: "127.0.0.0/8".parse().unwrap(),
            storage_address: address.parse().unwrap(),
            storage_interface: None,
        };
        Node(backend(settings, &self.dir.path().join(name)))
    }

    fn rbd(&self, args: &[&str]) -> String {
        let mut full = vec!["rbd", "--conf"];
        let conf = self.admin.conf.to_str().unwrap();
        let keyring = self.admin.keyring.to_str().unwrap();
        full.extend([conf, "--keyring", keyring]);
        full.extend(args);
        sh(&full)
    }

    fn images(&self) -> Vec<String> {
        serde_json::from_str(&self.rbd(&["ls", "--format", "json", &self.pool])).unwrap()
    }

    /// Every RADOS object of an image, read straight from the OSDs.
    fn objects_of(&self, image: &str) -> Vec<Vec<u8>> {
        let info: serde_json::Value =
            serde_json::from_str(&self.rbd(&["info", "--format", "json", &format!("{}/{image}", self.pool)])).unwrap();
        let prefix = info["block_name_prefix"].as_str().unwrap().to_string();
        let conf = self.admin.conf.to_str().unwrap();
        let keyring = self.admin.keyring.to_str().unwrap();
        let list = sh(&["rados", "--conf", conf, "--keyring", keyring, "-p", &self.pool, "ls"]);
        let out = self.dir.path().join("obj");
        list.lines()
            .filter(|o| o.starts_with(&prefix))
            .map(|o| {
                sh(&[
                    "rados",
                    "--conf",
                    conf,
                    "--keyring",
                    keyring,
                    "-p",
                    &self.pool,
                    "get",
                    o,
                    out.to_str().unwrap(),
                ]);
                std::fs::read(&out).unwrap()
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(e) = ceph::delete_pool(&self.admin, &self.pool) {
            eprintln!("removing test pool {}: {e}", self.pool);
        }
        for c in self.clients.borrow().iter() {
            let _ = ceph::delete_client(&self.admin, c);
        }
    }
}

fn backend(settings: CephSettings, state: &Path) -> CephBackend {
    let mut cfg = CephConfig::new(settings, state);
    cfg.luks_iter_time_ms = 10;
    cfg.reserve_bytes = MIB;
    cfg.tool_timeout = T;
    cfg.timeouts = Timeouts {
        mount_timeout: Duration::from_secs(5),
        op_timeout: Duration::from_secs(20),
    };
    CephBackend::open(cfg).expect("backend")
}

/// A backend whose mounts are all undone on drop (declared after [`Cluster`], so dropped
/// before the pool goes).
struct Node(CephBackend);

impl std::ops::Deref for Node {
    type Target = CephBackend;
    fn deref(&self) -> &CephBackend {
        &self.0
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.0.unmount_all();
    }
}

fn spec(size: u64) -> VolumeSpec {
    VolumeSpec {
        id: Uuid::new_v4(),
        size_bytes: size,
        encrypted: true,
        owner: None,
    }
}

fn pw() -> Sensitive {
    Sensitive::new(Uuid::new_v4().simple().to_string())
}

fn qemu_io(path: &Path, passphrase: &Sensitive, command: &str) -> Result<String, proc::ProcError> {
    let mut cmd = Command::new("qemu-io");
    let opts = format!(
        "driver=qcow2,file.driver=file,file.filename={},encrypt.key-secret=s0",
        path.display()
    );
    cmd.arg("--object").arg(proc::secret_object_arg("s0"));
    cmd.args(["--image-opts", &opts, "-c", command]);
    let out = proc::run(cmd, Some(passphrase), T)?;
    if out.stdout.contains("Pattern verification failed") || out.stdout.contains("failed:") {
        return Err(proc::ProcError::Failed {
            program: "qemu-io".into(),
            status: "pattern".into(),
            stderr: out.stdout,
        });
    }
    Ok(out.stdout)
}

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

#[test]
fn spec_12_3_2_2_ceph_volume_is_encrypted_at_rest() {
    let Some(c) = Cluster::get() else { return };
    let a = c.node("a", "127.0.0.1");
    let key = pw();
    let v = a.create(&spec(16 * MIB), Some(&key)).expect("create");
    assert!(v.encrypted);
    assert_eq!(v.size_bytes, 16 * MIB);
    assert!(c.images().contains(&v.id.to_string()), "{:?}", c.images());
    qemu_io(&v.path, &key, "write -P 0xa7 1M 4M").expect("write the marker");
    qemu_io(&v.path, &key, "read -P 0xa7 1M 4M").expect("read it back");
    qemu_io(&v.path, &key, "read -P 0 8M 1M").expect("never-written blocks read as zeros");
    a.unmount_all();
    let objects = c.objects_of(&v.id.to_string());
    assert!(!objects.is_empty());
    let all: Vec<u8> = objects.concat();
    assert!(all.len() >= 4 * MIB as usize, "the marker's ciphertext is stored");
    assert!(
        !has_run(&all, 0xa7, 4096),
        "the marker is in the RADOS objects in clear"
    );
    assert!(all.windows(6).any(|w| w == b"LUKS\xba\xbe"), "a LUKS header is stored");
    // Another key opens nothing.
    let path = a.open(v.id, true).expect("open").path;
    assert!(qemu_io(Path::new(&path), &pw(), "read 0 4k").is_err());
    // The pool: ceph, 2 replicas, health from the cluster.
    let st = a.pool_status().expect("pool status");
    assert_eq!(st.backend, "ceph");
    assert_eq!(st.redundancy, Redundancy::CephReplicated { size: 2 });
    assert_eq!(st.volumes, 1);
    assert!(st.free_bytes > 0 && st.total_bytes >= st.free_bytes);
    assert!(
        st.health == PoolHealth::Ok || !st.problems.is_empty(),
        "a pool that is not ok says why"
    );
}

#[test]
fn spec_12_3_2_2_ceph_volume_written_on_node_a_reads_back_on_node_b() {
    let Some(c) = Cluster::get() else { return };
    let a = c.node("a", "127.0.0.1");
    let b = c.node("b", "127.0.0.2");
    let key = pw();
    let v = a.create(&spec(32 * MIB), Some(&key)).expect("create on A");
    let on_a = a.open(v.id, false).expect("attach on A");
    qemu_io(Path::new(&on_a.path), &key, "write -P 0x3c 2M 3M").expect("A writes");
    // Detach on A: its mount goes (refused while a QEMU holds it).
    a.unmount_all();
    let on_b = b.open(v.id, false).expect("attach on B");
    assert_ne!(on_a.path, on_b.path, "each node has its own mount");
    assert!(on_b.path.starts_with(c.dir.path().join("b").to_str().unwrap()));
    qemu_io(Path::new(&on_b.path), &key, "read -P 0x3c 2M 3M").expect("B reads what A wrote");
    qemu_io(Path::new(&on_b.path), &key, "write -P 0x4d 8M 1M").expect("B writes");
    b.unmount_all();
    let back = a.open(v.id, true).expect("A again");
    qemu_io(Path::new(&back.path), &key, "read -P 0x4d 8M 1M").expect("A reads what B wrote");
    // Extend on B; A sees the new size.
    a.unmount_all();
    let grown = b.extend(v.id, 48 * MIB, Some(&key)).expect("extend");
    assert_eq!(grown.size_bytes, 48 * MIB);
    b.unmount_all();
    assert_eq!(a.info(v.id).expect("info on A").size_bytes, 48 * MIB);
}

#[test]
fn spec_12_3_4_1_ceph_wipe_crypto_erases_discards_and_releases() {
    let Some(c) = Cluster::get() else { return };
    let a = c.node("a", "127.0.0.1");
    let b = c.node("b", "127.0.0.1");
    let key = pw();
    let v = a.create(&spec(16 * MIB), Some(&key)).expect("create");
    qemu_io(&v.path, &key, "write -P 0x5e 0 6M").expect("write");
    a.unmount_all();
    let old_objects = c.objects_of(&v.id.to_string());
    // Still open on another node: the wipe waits, nothing is touched.
    let held = b.open(v.id, false).expect("B holds it");
    let e = a.wipe(v.id, "alice").unwrap_err();
    assert!(matches!(e, StorageError::Unavailable(_)), "{e}");
    assert!(a.release(v.id).is_err(), "no release without a verified wipe");
    drop(held);
    b.unmount_all();
    let intact = a.open(v.id, true).unwrap().path;
    qemu_io(Path::new(&intact), &key, "read -P 0x5e 0 6M").expect("data intact");
    a.unmount_all();
    let report = a.wipe(v.id, "alice").expect("wipe");
    assert_eq!(report.method, WipeMethod::CryptoEraseAndDiscard);
    assert!(report.verified);
    assert_eq!(report.volume, v.id);
    assert_eq!(report.requested_by, "alice");
    assert!(report.bytes >= 6 * MIB, "{}", report.bytes);
    let text = serde_json::to_string(&report).unwrap();
    assert!(text.contains(r#""method":"crypto_erase_and_discard""#), "{text}");
    // Out of service, its objects gone, before the release.
    let wiping = format!("{}.wiping", v.id);
    assert!(c.images().contains(&wiping));
    assert!(matches!(a.open(v.id, false), Err(StorageError::NotFound(_))));
    assert!(c.objects_of(&wiping).is_empty(), "every data object is discarded");
    // A second wipe is the same verified report (idempotent).
    assert_eq!(a.wipe(v.id, "alice").unwrap(), report);
    assert_eq!(
        a.recover().unwrap(),
        vec![rampart_storage::Recovery::ReleasePending { report: report.clone() }]
    );
    a.release(v.id).expect("release");
    assert!(
        c.images().iter().all(|n| !n.starts_with(&v.id.to_string())),
        "{:?}",
        c.images()
    );
    assert!(a.recover().unwrap().is_empty());
    a.release(v.id).expect("a second release is a no-op");
    assert!(old_objects.iter().any(|o| o.windows(6).any(|w| w == b"LUKS\xba\xbe")));
}

#[test]
fn spec_10_1_ceph_monitor_outside_storage_network_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let settings = CephSettings {
        monitors: vec!["127.0.0.1:3300".parse().unwrap(), "192.0.2.7:3300".parse().unwrap()],
        pool: "volumes".into(),
        client_id: "node-1".into(),
        keyring: "/etc/ceph/node-1.keyring".into(),
        storage_network: "127.0.0.0/8".parse().unwrap(),
        storage_address: "127.0.0.1".parse().unwrap(),
        storage_interface: None,
    };
    let e = CephBackend::open(CephConfig::new(settings, dir.path().join("ceph")))
        .err()
        .expect("refused");
    assert!(
        matches!(
            e,
            CephOpenError::Config(CephConfigError::MonitorOutsideStorageNetwork { monitor, .. })
                if monitor.ip() == "192.0.2.7".parse::<IpAddr>().unwrap()
        ),
        "{e}"
    );
    assert!(e.to_string().contains("outside the storage network 127.0.0.0/8"), "{e}");
    assert!(!dir.path().join("ceph/client.conf").exists(), "nothing rendered");
}

#[test]
fn spec_10_1_ceph_client_traffic_goes_to_the_storage_network_from_the_routed_address() {
    let Some(c) = Cluster::get() else { return };
    let b = c.node("b", "127.0.0.1");
    let key = pw();
    let v = b.create(&spec(8 * MIB), Some(&key)).expect("create");
    // The image stays mounted: rbd-fuse's sessions to the monitor and the OSDs are up.
    let _ = b.open(v.id, false).expect("open");
    let ss = sh(&["ss", "-tnpH", "state", "established"]);
    let fuse: Vec<&str> = ss.lines().filter(|l| l.contains("rbd-fuse")).collect();
    let mon = format!("{}", c.mon);
    assert!(
        fuse.iter().any(|l| l.contains(&mon)),
        "an rbd-fuse session to the monitor: {ss}"
    );
    // Ceph clients do not bind: the source is the kernel's route to the monitor, which the
    // agent checks at start (storage_interface).
    let route = sh(&["ip", "-j", "route", "get", &c.mon.ip().to_string()]);
    let src: serde_json::Value = serde_json::from_str(&route).unwrap();
    let src = src[0]["prefsrc"].as_str().unwrap().to_string();
    let net: ipnet::IpNet = "127.0.0.0/8".parse().unwrap();
    for l in &fuse {
        let mut cols = l.split_whitespace().skip(2);
        let local: std::net::SocketAddr = cols.next().unwrap().parse().unwrap();
        let peer: std::net::SocketAddr = cols.next().unwrap().parse().unwrap();
        assert!(
            net.contains(&peer.ip()),
            "a Ceph client session outside the storage network: {l}"
        );
        assert_eq!(local.ip().to_string(), src, "{l}");
    }
}

#[test]
fn spec_14_1_2_ceph_unreachable_is_503_and_a_full_pool_is_507_with_nothing_created() {
    let Some(c) = Cluster::get() else { return };
    let a = c.node("a", "127.0.0.1");
    let before = c.images();
    let e = a.create(&spec(64 << 30), Some(&pw())).unwrap_err();
    assert!(matches!(e, StorageError::InsufficientStorage { .. }), "{e}");
    assert_eq!(e.to_api().status().as_u16(), 507);
    assert_eq!(c.images(), before, "nothing half-created");
    // Nobody listens on the monitor port: bounded, and 503.
    let keyring = c.dir.path().join("nobody.keyring");
    sh(&[
        "ceph-authtool",
        "-C",
        keyring.to_str().unwrap(),
        "-n",
        "client.nobody",
        "--gen-key",
    ]);
    let settings = CephSettings {
        monitors: vec!["127.0.0.1:9".parse().unwrap()],
        pool: c.pool.clone(),
        client_id: "nobody".into(),
        keyring,
        storage_network: "127.0.0.0/8".parse().unwrap(),
        storage_address: "127.0.0.1".parse().unwrap(),
        storage_interface: None,
    };
    let down = backend(settings, &c.dir.path().join("down"));
    let t = Instant::now();
    let e = down.create(&spec(8 * MIB), Some(&pw())).unwrap_err();
    assert!(matches!(e, StorageError::Unavailable(_)), "{e}");
    let api = e.to_api();
    assert_eq!((api.status().as_u16(), api.code()), (503, "storage_unavailable"));
    assert!(t.elapsed() < Duration::from_secs(60), "{:?}", t.elapsed());
    assert!(matches!(down.pool_status(), Err(StorageError::Unavailable(_))));
}

#[test]
fn ceph_blocklist_fences_a_node_client_and_lifts_it() {
    let Some(c) = Cluster::get() else { return };
    let a = c.node("a", "127.0.0.1");
    let key = pw();
    let v = a.create(&spec(8 * MIB), Some(&key)).expect("create");
    let _ = a.open(v.id, false).expect("open");
    let status: serde_json::Value =
        serde_json::from_str(&c.rbd(&["status", "--format", "json", &format!("{}/{}", c.pool, v.id)])).unwrap();
    let addr = status["watchers"][0]["address"]
        .as_str()
        .expect("a watcher")
        .to_string();
    // The fence is lifted on every path, or this node's mount would hang its cleanup.
    struct Lift<'a>(&'a CephAdmin, String);
    impl Drop for Lift<'_> {
        fn drop(&mut self) {
            let _ = ceph::blocklist_rm(self.0, &self.1);
        }
    }
    ceph::blocklist_add(&c.admin, &addr, Duration::from_secs(120)).expect("fence");
    let lift = Lift(&c.admin, addr.clone());
    let fenced = ceph::blocklist_ls(&c.admin).unwrap();
    assert!(fenced.iter().any(|f| f.starts_with(&addr)), "{fenced:?} lacks {addr}");
    ceph::blocklist_rm(&c.admin, &addr).expect("lift");
    drop(lift);
    assert!(
        !ceph::blocklist_ls(&c.admin)
            .unwrap()
            .iter()
            .any(|f| f.starts_with(&addr))
    );
    assert!(ceph::blocklist_add(&c.admin, "--force", Duration::from_secs(1)).is_err());
    // Pools keep two copies at least.
    assert!(matches!(
        ceph::create_pool(&c.admin, "rt-never", 1, 8),
        Err(StorageError::Invalid(_))
    ));
}
