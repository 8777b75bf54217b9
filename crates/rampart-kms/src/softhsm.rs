//! The embedded default HSM: a SoftHSM2 token under `DATA_DIR/hsm/`, for `rampart up`.
//!
//! ```text
//! DATA_DIR/hsm/            0700
//!   softhsm2.conf          0600  directories.tokendir = DATA_DIR/hsm/tokens
//!   so.pin, user.pin       0600  random, made once, never rewritten
//!   tokens/                0700  SoftHSM's token files (objects encrypted under the user PIN)
//! ```
//!
//! SoftHSM reads its configuration from `SOFTHSM2_CONF` once, in C_Initialize, for the whole
//! process. Setting an environment variable in a running, threaded process is unsound (hence
//! `unsafe` in edition 2024), so this module never does: the binary either starts with the
//! variable set or re-executes itself with it ([`reexec_with_softhsm_conf`]) before any thread
//! exists. [`EmbeddedSoftHsm::open`] refuses to run when the variable points elsewhere, rather
//! than silently using the system's token directory.
//!
//! SoftHSM's random generator is software (OpenSSL's DRBG), not a hardware TRNG: the embedded
//! default is for development and single-machine use; production points
//! [`crate::pkcs11::Pkcs11Config::module`] at a real HSM's module.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cryptoki::context::Pkcs11;
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use rampart_common::fsutil;
use zeroize::Zeroizing;

use crate::error::HsmError;
use crate::pkcs11::{Pkcs11Backend, Pkcs11Config, find_token, load_module, read_pin};

/// Debian's path of the SoftHSM2 module.
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
pub const SOFTHSM_CONF_ENV: &str = "SOFTHSM2_CONF";
pub const EMBEDDED_TOKEN_LABEL: &str = "rampart";

/// Token initialisation takes a free slot: one at a time per process.
static INIT: Mutex<()> = Mutex::new(());

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedSoftHsm {
    pub dir: PathBuf,
    pub conf: PathBuf,
    pub tokens: PathBuf,
    pub so_pin_file: PathBuf,
    pub user_pin_file: PathBuf,
}

/// The configuration file, a pure function of the token directory.
pub fn render_conf(tokens: &Path) -> String {
    format!(
        "# Written by Rampart: the embedded SoftHSM2 token of this data directory.\n\
         directories.tokendir = {}\n\
         objectstore.backend = file\n\
         log.level = ERROR\n\
         slots.removable = false\n",
        tokens.display()
    )
}

fn random_pin() -> Result<Zeroizing<String>, HsmError> {
    let mut bytes = Zeroizing::new([0u8; 24]);
    getrandom::fill(bytes.as_mut()).map_err(|e| HsmError::Config(format!("operating system random source: {e}")))?;
    Ok(Zeroizing::new(hex::encode(bytes.as_ref())))
}

impl EmbeddedSoftHsm {
    pub fn paths(data_dir: &Path) -> EmbeddedSoftHsm {
        let dir = data_dir.join("hsm");
        EmbeddedSoftHsm {
            conf: dir.join("softhsm2.conf"),
            tokens: dir.join("tokens"),
            so_pin_file: dir.join("so.pin"),
            user_pin_file: dir.join("user.pin"),
            dir,
        }
    }

    /// Creates the directories, configuration and PINs that are missing; never replaces a PIN
    /// (the token is locked to it). Touches no PKCS#11 module, so it is safe before the
    /// process knows its `SOFTHSM2_CONF`.
    pub fn prepare(data_dir: &Path) -> Result<EmbeddedSoftHsm, HsmError> {
        let p = Self::paths(data_dir);
        fsutil::ensure_private_dir(&p.dir).map_err(HsmError::io("create", &p.dir))?;
        fsutil::ensure_private_dir(&p.tokens).map_err(HsmError::io("create", &p.tokens))?;
        let conf = render_conf(&p.tokens);
        if std::fs::read_to_string(&p.conf).ok().as_deref() != Some(conf.as_str()) {
            fsutil::write_secret(&p.conf, conf.as_bytes()).map_err(HsmError::io("write", &p.conf))?;
        }
        for pin_file in [&p.so_pin_file, &p.user_pin_file] {
            if !pin_file.exists() {
                let pin = random_pin()?;
                fsutil::write_secret(pin_file, pin.as_bytes()).map_err(HsmError::io("write", pin_file))?;
            }
        }
        Ok(p)
    }

    /// Whether this process was started with `SOFTHSM2_CONF` pointing at this configuration.
    pub fn env_is_active(&self) -> bool {
        std::env::var_os(SOFTHSM_CONF_ENV).is_some_and(|v| Path::new(&v) == self.conf)
    }

    pub fn config(&self, module: &Path) -> Pkcs11Config {
        Pkcs11Config::new(module, EMBEDDED_TOKEN_LABEL, &self.user_pin_file)
    }

    /// Initialises the token on first start (idempotent afterwards) and opens it.
    pub fn open(&self, module: &Path) -> Result<Pkcs11Backend, HsmError> {
        if !self.env_is_active() {
            return Err(HsmError::Config(format!(
                "{SOFTHSM_CONF_ENV} must be {} when the process starts (see softhsm::reexec_with_softhsm_conf)",
                self.conf.display()
            )));
        }
        let ctx = load_module(module)?;
        let so = read_pin(&self.so_pin_file)?;
        let user = read_pin(&self.user_pin_file)?;
        init_token_if_absent(&ctx, EMBEDDED_TOKEN_LABEL, &so, &user)?;
        let backend = Pkcs11Backend::open(&self.config(module))?;
        backend.check_mechanisms()?;
        Ok(backend)
    }
}

/// Initialises a token labelled `label` in a free slot unless one exists, and sets its user
/// PIN; also finishes a token whose user PIN was never set (a crash between the two steps).
/// Returns whether anything was done.
pub fn init_token_if_absent(ctx: &Pkcs11, label: &str, so_pin: &AuthPin, user_pin: &AuthPin) -> Result<bool, HsmError> {
    let _guard = INIT.lock().expect("token init lock");
    let slot = match find_token(ctx, label)? {
        Some(slot) => {
            let info = ctx.get_token_info(slot).map_err(HsmError::device("C_GetTokenInfo"))?;
            if info.user_pin_initialized() {
                return Ok(false);
            }
            slot
        }
        None => {
            let free = ctx
                .get_slots_with_token()
                .map_err(HsmError::device("C_GetSlotList"))?
                .into_iter()
                .find(|s| ctx.get_token_info(*s).is_ok_and(|i| !i.token_initialized()))
                .ok_or_else(|| HsmError::Unavailable {
                    reason: "the PKCS#11 module has no free slot for a new token".into(),
                    source: None,
                })?;
            ctx.init_token(free, so_pin, label)
                .map_err(HsmError::device("C_InitToken"))?;
            free
        }
    };
    let s = ctx.open_rw_session(slot).map_err(HsmError::device("C_OpenSession"))?;
    s.login(UserType::So, Some(so_pin))
        .map_err(HsmError::device("C_Login (SO)"))?;
    let set = s.init_pin(user_pin).map_err(HsmError::device("C_InitPIN"));
    let _ = s.logout();
    set?;
    tracing::info!(token = label, "initialised the HSM token");
    Ok(true)
}

/// Replaces the current process with itself, same arguments, `SOFTHSM2_CONF` set to `conf`.
/// Call from `main` before any thread is started, when [`EmbeddedSoftHsm::env_is_active`] is
/// false. Returns only on failure.
pub fn reexec_with_softhsm_conf(conf: &Path) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return e,
    };
    let mut args = std::env::args_os();
    let mut cmd = std::process::Command::new(exe);
    if let Some(arg0) = args.next() {
        cmd.arg0(arg0);
    }
    cmd.args(args).env(SOFTHSM_CONF_ENV, conf).exec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_13_3_5_embedded_files_are_private_and_pins_are_made_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = EmbeddedSoftHsm::prepare(dir.path()).unwrap();
        for f in [&p.conf, &p.so_pin_file, &p.user_pin_file] {
            assert_eq!(fsutil::mode_of(f).unwrap(), 0o600, "{}", f.display());
        }
        assert_eq!(fsutil::mode_of(&p.dir).unwrap(), 0o700);
        assert_eq!(fsutil::mode_of(&p.tokens).unwrap(), 0o700);
        let so = std::fs::read_to_string(&p.so_pin_file).unwrap();
        let user = std::fs::read_to_string(&p.user_pin_file).unwrap();
        assert_eq!(so.len(), 48);
        assert_ne!(so, user);
        let again = EmbeddedSoftHsm::prepare(dir.path()).unwrap();
        assert_eq!(again, p);
        assert_eq!(
            std::fs::read_to_string(&p.so_pin_file).unwrap(),
            so,
            "PINs are never replaced"
        );
        assert_eq!(std::fs::read_to_string(&p.user_pin_file).unwrap(), user);
    }

    #[test]
    fn conf_golden() {
        assert_eq!(
            render_conf(Path::new("/var/lib/rampart/hsm/tokens")),
            "# Written by Rampart: the embedded SoftHSM2 token of this data directory.\n\
             directories.tokendir = /var/lib/rampart/hsm/tokens\n\
             objectstore.backend = file\n\
             log.level = ERROR\n\
             slots.removable = false\n"
        );
    }

    #[test]
    fn spec_13_3_9_open_refuses_a_process_not_started_with_its_conf() {
        let dir = tempfile::tempdir().unwrap();
        let p = EmbeddedSoftHsm::prepare(dir.path()).unwrap();
        assert!(!p.env_is_active());
        let err = p.open(Path::new(SOFTHSM_MODULE)).unwrap_err();
        assert!(matches!(err, HsmError::Config(_)), "{err}");
    }
}
