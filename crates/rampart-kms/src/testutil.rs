//! Test support (tests of this crate, and of others with feature `testing`): a SoftHSM2 for
//! this test process, one fresh token per test.
//!
//! SoftHSM reads `SOFTHSM2_CONF` once per process, so every test of the process shares one
//! token directory (a temporary one, never the system's) and isolation comes from each test
//! having its own token, PINs and objects. Without SoftHSM2 installed the HSM tests print a
//! note and return, unless `RAMPART_TEST_REQUIRE_HSM=1` (CI), where they fail.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use cryptoki::types::AuthPin;
use rampart_common::fsutil;

use crate::pkcs11::{Pkcs11Backend, Pkcs11Config, load_module};
use crate::softhsm::{SOFTHSM_CONF_ENV, SOFTHSM_MODULE, init_token_if_absent, render_conf};

pub fn hsm_required() -> bool {
    std::env::var("RAMPART_TEST_REQUIRE_HSM").is_ok_and(|v| v == "1")
}

pub fn module_path() -> PathBuf {
    std::env::var_os("RAMPART_TEST_HSM_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(SOFTHSM_MODULE))
}

struct TestHsm {
    dir: PathBuf,
}

fn test_hsm() -> Option<&'static TestHsm> {
    static HSM: OnceLock<Option<TestHsm>> = OnceLock::new();
    HSM.get_or_init(|| {
        let module = module_path();
        if !module.exists() {
            assert!(
                !hsm_required(),
                "RAMPART_TEST_REQUIRE_HSM=1 but the PKCS#11 module {} is missing (apt-get install softhsm2)",
                module.display()
            );
            return None;
        }
        let base = std::env::temp_dir().join("rampart-kms-hsm-tests");
        std::fs::create_dir_all(&base).unwrap();
        // Token directories of earlier runs whose process is gone.
        for entry in std::fs::read_dir(&base).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{name}")).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let dir = base.join(std::process::id().to_string());
        let tokens = dir.join("tokens");
        fsutil::ensure_private_dir(&tokens).unwrap();
        let conf = dir.join("softhsm2.conf");
        fsutil::write_secret(&conf, render_conf(&tokens).as_bytes()).unwrap();
        // SAFETY: runs once, under this OnceLock, before this process loads any PKCS#11
        // module (all HSM tests come through here first), so no C code is reading the
        // environment concurrently; Rust readers take std's environment lock.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var(SOFTHSM_CONF_ENV, &conf);
        }
        Some(TestHsm { dir })
    })
    .as_ref()
}

/// The configuration of a fresh token of its own (initialised, user PIN in a 0600 file), or
/// `None` without SoftHSM2 (the caller decides whether that skips its test).
pub fn new_token() -> Option<Pkcs11Config> {
    static N: AtomicUsize = AtomicUsize::new(0);
    let hsm = test_hsm()?;
    let label = format!("test-{}", N.fetch_add(1, Ordering::Relaxed));
    let ctx = load_module(&module_path()).expect("load SoftHSM2");
    let mut so = [0u8; 16];
    let mut user = [0u8; 16];
    getrandom::fill(&mut so).unwrap();
    getrandom::fill(&mut user).unwrap();
    let (so, user) = (hex::encode(so), hex::encode(user));
    let pin_file = hsm.dir.join(format!("{label}.pin"));
    fsutil::write_secret(&pin_file, user.as_bytes()).unwrap();
    init_token_if_absent(&ctx, &label, &AuthPin::from(so), &AuthPin::from(user)).expect("init token");
    let mut config = Pkcs11Config::new(module_path(), label, pin_file);
    config.sessions = 2;
    Some(config)
}

/// A backend on a fresh token of its own, or `None` without SoftHSM2: the test skips.
pub fn backend() -> Option<Arc<Pkcs11Backend>> {
    token_config().map(|(_, b)| b)
}

/// The configuration of a fresh token and a backend open on it, for tests of `open` itself;
/// `None` without SoftHSM2: the test skips.
pub fn token_config() -> Option<(Pkcs11Config, Arc<Pkcs11Backend>)> {
    let Some(config) = new_token() else {
        rampart_common::testing::skip(SKIP_NO_SOFTHSM);
        return None;
    };
    let b = Arc::new(Pkcs11Backend::open(&config).expect("open token"));
    Some((config, b))
}

/// The skip reason of HSM tests on a machine without SoftHSM2.
pub const SKIP_NO_SOFTHSM: &str = "softhsm2 missing";
