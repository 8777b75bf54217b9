use super::*;

const PASS: &[u8] = b"a long operator passphrase";
const FAST: KdfParams = KdfParams {
    m_cost_kib: 256,
    t_cost: 1,
    p_cost: 1,
};
const MARKER: &str = "PLAINTEXT-SECRET-MARKER-7f3a";

struct Fixture {
    tmp: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        for (p, body) in [
            ("ca.pem", "-----BEGIN CERTIFICATE-----\n".to_string()),
            ("tls/server-key.pem", format!("key {MARKER}")),
            ("hsm/user.pin", MARKER.to_string()),
            ("hsm/softhsm2.conf", "directories.tokendir = /old/path\n".to_string()),
            ("hsm/tokens/abc/token.object", "token".repeat(30_000)),
            ("audit/checkpoint.key", "ed25519".to_string()),
            // Larger than INLINE_MAX: streamed from disk, not held in memory.
            ("audit/forward-queue/000001.seg", "queued record\n".repeat(300_000)),
            ("images/5b7d.img", "tenant image".to_string()),
            ("agent/node-key.pem", "node key".to_string()),
            ("agent/volumes/3c2e.qcow2", "tenant volume".to_string()),
            ("logs/rampart.log", "log line".to_string()),
            ("rampart.db", "live db".to_string()),
            ("rampart.db-wal", "wal".to_string()),
        ] {
            let p = data.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, body).unwrap();
        }
        std::fs::write(tmp.path().join("snapshot.db"), format!("database snapshot {MARKER}")).unwrap();
        Fixture { tmp }
    }

    fn data(&self) -> PathBuf {
        self.tmp.path().join("data")
    }

    fn create(&self, out: &Path) -> Result<Manifest> {
        create(CreateOptions {
            data_dir: &self.data(),
            database: DatabaseCopy {
                backend: DbBackend::Sqlite,
                file: self.tmp.path().join("snapshot.db"),
                schema_version: 16,
            },
            sqlite_in_data_dir: Some("rampart.db".into()),
            backup_dir_in_data_dir: None,
            config: Some(b"[api]\n".to_vec()),
            passphrase: PASS,
            kdf: FAST,
            out,
            now: time::macros::datetime!(2026-12-07 10:00:00 UTC),
        })
    }

    fn backup(&self) -> PathBuf {
        let out = self.tmp.path().join("b.rsbk");
        self.create(&out).unwrap();
        out
    }
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.contains(".restore-") || n.contains(".tmp-"))
        .collect()
}

#[test]
fn spec_14_2_1_backup_round_trips_and_holds_a_manifest() {
    let fx = Fixture::new();
    let out = fx.backup();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600);
    let m = verify(&out, PASS).unwrap();
    let paths: Vec<&str> = m.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "database/rampart.db",
            "config/rampart.toml",
            "data/agent/node-key.pem",
            "data/audit/checkpoint.key",
            "data/audit/forward-queue/000001.seg",
            "data/ca.pem",
            "data/hsm/tokens/abc/token.object",
            "data/hsm/user.pin",
            "data/tls/server-key.pem",
        ]
    );
    assert_eq!(m.database.schema_version, 16);
    assert_eq!(m.rampart_version, rampart_common::VERSION);
    assert_eq!(m.created_at, "2026-12-07T10:00:00Z");
    let pin = m.entry("data/hsm/user.pin").unwrap();
    assert_eq!(pin.sha256, sha256_hex(MARKER.as_bytes()));

    let target = fx.tmp.path().join("restored");
    restore(&out, PASS, &target).unwrap();
    assert_eq!(std::fs::read_to_string(target.join("hsm/user.pin")).unwrap(), MARKER);
    assert_eq!(
        std::fs::read_to_string(target.join("rampart.db")).unwrap(),
        format!("database snapshot {MARKER}")
    );
    assert_eq!(std::fs::read_to_string(target.join("rampart.toml")).unwrap(), "[api]\n");
    assert_eq!(
        std::fs::read(target.join("hsm/tokens/abc/token.object")).unwrap().len(),
        150_000
    );
    assert!(!target.join("logs").exists() && !target.join("rampart.db-wal").exists());
    assert!(!target.join("images").exists() && !target.join("agent/volumes").exists());
    assert_eq!(
        std::fs::read(target.join("audit/forward-queue/000001.seg")).unwrap(),
        std::fs::read(fx.data().join("audit/forward-queue/000001.seg")).unwrap()
    );
    assert_eq!(std::fs::metadata(&target).unwrap().permissions().mode() & 0o777, 0o700);
    assert_eq!(
        std::fs::metadata(target.join("hsm/user.pin"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert!(leftovers(fx.tmp.path()).is_empty());
}

#[test]
fn spec_14_2_1_archive_holds_no_plaintext_secret() {
    let fx = Fixture::new();
    let bytes = std::fs::read(fx.backup()).unwrap();
    for needle in [MARKER.as_bytes(), b"database snapshot", b"manifest.json", b"ustar"] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "{} found in the backup file",
            String::from_utf8_lossy(needle)
        );
    }
}

#[test]
fn spec_14_2_1_restore_refuses_wrong_passphrase_damage_and_truncation_leaving_nothing() {
    let fx = Fixture::new();
    let out = fx.backup();
    let bytes = std::fs::read(&out).unwrap();
    let target = fx.tmp.path().join("restored");

    let e = restore(&out, b"not the passphrase at all", &target).unwrap_err();
    assert!(
        matches!(e, SystemBackupError::Envelope(EnvelopeError::WrongPassphrase)),
        "{e}"
    );
    assert!(e.to_string().contains("wrong passphrase"), "{e}");
    assert!(!target.exists() && leftovers(fx.tmp.path()).is_empty());

    // A flipped byte in the last chunk: found only at the end, after files were written to
    // the staging directory.
    let mut flipped = bytes.clone();
    let at = bytes.len() - 30;
    flipped[at] ^= 1;
    let bad = fx.tmp.path().join("flipped.rsbk");
    std::fs::write(&bad, &flipped).unwrap();
    let e = restore(&bad, PASS, &target).unwrap_err();
    assert!(
        matches!(e, SystemBackupError::Envelope(EnvelopeError::Damaged { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("damaged"), "{e}");
    assert!(!target.exists() && leftovers(fx.tmp.path()).is_empty());

    for len in [bytes.len() - 1, bytes.len() / 2, envelope::HEADER_LEN + 10] {
        std::fs::write(&bad, &bytes[..len]).unwrap();
        let e = restore(&bad, PASS, &target).unwrap_err();
        assert!(matches!(e, SystemBackupError::Envelope(_)), "cut at {len}: {e}");
        assert!(!target.exists() && leftovers(fx.tmp.path()).is_empty());
        assert!(verify(&bad, PASS).is_err());
    }
}

#[test]
fn spec_14_2_1_restore_refuses_a_non_empty_directory_but_takes_an_empty_one() {
    let fx = Fixture::new();
    let out = fx.backup();
    let target = fx.tmp.path().join("restored");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("keep-me"), "x").unwrap();
    let e = restore(&out, PASS, &target).unwrap_err();
    assert!(matches!(e, SystemBackupError::TargetNotEmpty(_)), "{e}");
    assert_eq!(std::fs::read_to_string(target.join("keep-me")).unwrap(), "x");
    std::fs::remove_file(target.join("keep-me")).unwrap();
    restore(&out, PASS, &target).unwrap();
    assert!(target.join("ca.pem").exists());
}

#[test]
fn spec_14_2_1_create_refuses_short_passphrase_and_existing_output() {
    let fx = Fixture::new();
    let out = fx.backup();
    assert!(matches!(fx.create(&out).unwrap_err(), SystemBackupError::Exists(_)));
    let p = fx.tmp.path().join("pass");
    std::fs::write(&p, "short\n").unwrap();
    assert!(matches!(
        read_passphrase(&p, true),
        Err(SystemBackupError::Passphrase(_))
    ));
    assert_eq!(&read_passphrase(&p, false).unwrap()[..], b"short");
    std::fs::write(&p, "a long operator passphrase\r\nsecond line").unwrap();
    assert_eq!(&read_passphrase(&p, true).unwrap()[..], PASS);
}

#[test]
fn spec_14_2_1_backup_inside_the_data_dir_does_not_contain_itself() {
    let fx = Fixture::new();
    let out = fx.data().join("system-backups/first.rsbk");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    fx.create(&out).unwrap();
    let second = fx.data().join("second.rsbk");
    let m = fx.create(&second).unwrap();
    assert!(m.files.iter().all(|f| !f.path.ends_with(".rsbk")), "{:?}", m.files);
}

#[test]
fn spec_14_2_2_list_and_prune_keep_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let l = |name: &str, t: i64| Listed {
        path: dir.path().join(name),
        size: 1,
        created_at: t,
        format_version: 1,
    };
    let listed = vec![
        l("rampart-system-1.rsbk", 1),
        l("operator-copy.rsbk", 2),
        l("rampart-system-3.rsbk", 3),
        l("rampart-system-4.rsbk", 4),
    ];
    assert_eq!(to_prune(&listed, 2), vec![dir.path().join("rampart-system-1.rsbk")]);
    assert!(to_prune(&listed, 3).is_empty());
    assert_eq!(to_prune(&listed, 0).len(), 3, "never the operator's own file");

    let fx = Fixture::new();
    let b = fx.backup();
    for (i, name) in [
        "rampart-system-a.rsbk",
        "rampart-system-b.rsbk",
        "rampart-system-c.rsbk",
    ]
    .iter()
    .enumerate()
    {
        let mut bytes = std::fs::read(&b).unwrap();
        // Different creation times in otherwise identical headers (not authenticated here:
        // listing reads headers only).
        let off = envelope::HEADER_LEN - 32 - 8;
        bytes[off..off + 8].copy_from_slice(&(100 + i as i64).to_be_bytes());
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    std::fs::write(dir.path().join("notes.txt"), "not a backup").unwrap();
    let listed = list(dir.path()).unwrap();
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[0].created_at, 100);
    let gone = prune(dir.path(), 1).unwrap();
    assert_eq!(gone.len(), 2);
    assert!(dir.path().join("rampart-system-c.rsbk").exists());
    assert!(dir.path().join("notes.txt").exists());
}

#[test]
fn spec_14_2_2_copy_to_is_atomic_and_refuses_overwrite() {
    let fx = Fixture::new();
    let b = fx.backup();
    let remote = fx.tmp.path().join("remote");
    let dest = copy_to(&b, &remote).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(&b).unwrap());
    assert!(matches!(copy_to(&b, &remote), Err(SystemBackupError::Exists(_))));
    assert!(verify(&dest, PASS).is_ok());
}

#[test]
fn spec_14_2_1_file_names_sort_by_time() {
    let a = file_name(time::macros::datetime!(2026-12-07 09:59:59.5 UTC));
    let b = file_name(time::macros::datetime!(2026-12-07 10:00:00 UTC));
    assert_eq!(b, "rampart-system-20261207T100000.000Z.rsbk");
    assert!(a < b);
}
