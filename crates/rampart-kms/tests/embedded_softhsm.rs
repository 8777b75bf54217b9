//! The embedded SoftHSM2 default through real process starts: SoftHSM reads `SOFTHSM2_CONF`
//! once per process, so each "start" of Rampart is a child process running this same test
//! with `RAMPART_EMBEDDED_STEP` set. The second start comes without the variable and must
//! re-execute itself with it, as the binary does.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use rampart_kms::envelope::EncryptionContext;
use rampart_kms::softhsm::{self, EmbeddedSoftHsm, SOFTHSM_CONF_ENV, SOFTHSM_MODULE};
use rampart_kms::{BackendKind, Key, KeyService, WrappedKey};
use uuid::Uuid;

const NAME: &str = "spec_13_3_9_embedded_softhsm_initialises_once_and_survives_restart";
const CANARY: &[u8] = b"embedded-canary-4c1d";

/// What the first start keeps of its key (as the database would) for the second.
#[derive(serde::Serialize, serde::Deserialize)]
struct Saved {
    id: Uuid,
    project: Uuid,
    wrapped: String,
    created_at_ms: i64,
    ciphertext: String,
}

fn child(step: &str, data_dir: &Path) {
    let hsm = EmbeddedSoftHsm::prepare(data_dir).unwrap();
    if !hsm.env_is_active() {
        // What `main` does before starting any thread.
        let err = softhsm::reexec_with_softhsm_conf(&hsm.conf);
        panic!("re-exec failed: {err}");
    }
    let backend = Arc::new(hsm.open(Path::new(SOFTHSM_MODULE)).unwrap());
    let svc = KeyService::new(backend);
    assert_eq!(svc.backend_kind(), BackendKind::Pkcs11);
    let state = data_dir.join("saved.json");
    let now = time::OffsetDateTime::now_utc();
    match step {
        "first" => {
            let key = svc.create_key(Uuid::new_v4(), "boot", None, now).unwrap();
            let enc = svc.encrypt(&key, CANARY, &EncryptionContext::new()).unwrap();
            let saved = Saved {
                id: key.id,
                project: key.project,
                wrapped: key.versions[0].wrapped.as_ref().unwrap().to_base64(),
                created_at_ms: rampart_common::time::to_ms(key.created_at),
                ciphertext: enc.ciphertext,
            };
            std::fs::write(&state, serde_json::to_vec(&saved).unwrap()).unwrap();
        }
        "restart" => {
            let saved: Saved = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
            let key = Key::new(
                saved.id,
                saved.project,
                "boot".into(),
                None,
                WrappedKey::from_base64(&saved.wrapped).unwrap(),
                rampart_common::time::from_ms(saved.created_at_ms),
            )
            .unwrap();
            let dec = svc.decrypt(&key, &saved.ciphertext, &EncryptionContext::new()).unwrap();
            assert_eq!(&dec.plaintext[..], CANARY);
            std::fs::write(data_dir.join("restart-ok"), b"").unwrap();
        }
        other => panic!("unknown step {other}"),
    }
}

fn start(data_dir: &Path, step: &str, with_conf: bool) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", NAME, "--nocapture", "--test-threads=1"])
        .env("RAMPART_EMBEDDED_STEP", step)
        .env("RAMPART_EMBEDDED_DIR", data_dir);
    if with_conf {
        cmd.env(SOFTHSM_CONF_ENV, EmbeddedSoftHsm::paths(data_dir).conf);
    } else {
        cmd.env_remove(SOFTHSM_CONF_ENV);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{step}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn token_dirs(tokens: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(tokens)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect()
}

#[test]
fn spec_13_3_9_embedded_softhsm_initialises_once_and_survives_restart() {
    if let (Ok(step), Some(dir)) = (
        std::env::var("RAMPART_EMBEDDED_STEP"),
        std::env::var_os("RAMPART_EMBEDDED_DIR"),
    ) {
        return child(&step, Path::new(&dir));
    }
    use rampart_common::testing::{Need, require};
    if !require(Need::Hsm, Path::new(SOFTHSM_MODULE).exists(), "softhsm2 missing") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let paths = EmbeddedSoftHsm::paths(dir.path());
    start(dir.path(), "first", true);
    let pins = (
        std::fs::read(&paths.so_pin_file).unwrap(),
        std::fs::read(&paths.user_pin_file).unwrap(),
    );
    assert_eq!(token_dirs(&paths.tokens).len(), 1);
    start(dir.path(), "restart", false);
    assert!(dir.path().join("restart-ok").exists());
    assert_eq!(
        (
            std::fs::read(&paths.so_pin_file).unwrap(),
            std::fs::read(&paths.user_pin_file).unwrap()
        ),
        pins,
        "PINs unchanged"
    );
    assert_eq!(token_dirs(&paths.tokens).len(), 1, "no second token on restart");
    for f in [&paths.conf, &paths.so_pin_file, &paths.user_pin_file] {
        assert_eq!(rampart_common::fsutil::mode_of(f).unwrap(), 0o600);
    }
    // The canary never reaches the data directory in clear (token files, saved rows).
    for entry in walk(dir.path()) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(!bytes.windows(CANARY.len()).any(|w| w == CANARY), "{}", entry.display());
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
