//! The PKCS#11 key backend (13.3-9, 13.3-5, 13.3-6, 13.3-7, 12.4-3): any module by path,
//! SoftHSM2 as the embedded default (see [`crate::softhsm`]).
//!
//! Each project has two root keys in the token, both AES-256, `CKA_TOKEN`, `CKA_PRIVATE`,
//! `CKA_SENSITIVE`, not extractable, not modifiable, not copyable, `CKA_ID` = project id:
//! * `rampart:root:<project>:kek` wraps and unwraps customer key material (CKM_AES_KEY_WRAP_PAD),
//! * `rampart:root:<project>:bind` seals the wrapped blob with AES-GCM whose associated data is
//!   the project, key id and version ([`crate::envelope::material_aad`]).
//!
//! Two keys because SoftHSM cannot wrap with AES-GCM (C_WrapKey answers CKR_MECHANISM_INVALID,
//! checked), and one key per mechanism is the rule. Customer key material is generated in the
//! token (C_GenerateKey), leaves it only through C_WrapKey, and comes back through C_UnwrapKey as
//! a non-extractable session object: its plaintext never exists in this process. Data
//! encryption under a customer key runs in the token too (C_Encrypt/C_Decrypt, CKM_AES_GCM);
//! nonces and data keys come from C_GenerateRandom.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use sha2::{Digest, Sha256};
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::backend::{BackendKind, KeyBackend};
use crate::envelope::{MaterialId, NONCE_LEN, WRAP_FORMAT_PKCS11_V1, WrappedKey, material_aad};
use crate::error::HsmError;

/// Where the module is and how to reach the token.
#[derive(Debug, Clone)]
pub struct Pkcs11Config {
    /// Path of the PKCS#11 module (`/usr/lib/softhsm/libsofthsm2.so` for SoftHSM2).
    pub module: PathBuf,
    /// Label of the token holding Rampart's keys.
    pub token_label: String,
    /// File holding the user PIN (mode 0600; trailing newline ignored).
    pub pin_file: PathBuf,
    /// Sessions opened for concurrent operations.
    pub sessions: usize,
    /// Unwrapped customer key versions kept in the token as session objects. Past this,
    /// versions are unwrapped for one operation and destroyed after it.
    pub max_cached_keys: usize,
}

impl Pkcs11Config {
    pub fn new(module: impl Into<PathBuf>, token_label: impl Into<String>, pin_file: impl Into<PathBuf>) -> Self {
        Pkcs11Config {
            module: module.into(),
            token_label: token_label.into(),
            pin_file: pin_file.into(),
            sessions: 4,
            max_cached_keys: 10_000,
        }
    }
}

/// The modules loaded in this process. A PKCS#11 module is initialised once per process
/// (a second C_Initialize answers CKR_CRYPTOKI_ALREADY_INITIALIZED), and SoftHSM reads its
/// configuration at that moment only: every backend of a module shares one context.
fn modules() -> &'static Mutex<HashMap<PathBuf, Pkcs11>> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    MODULES.get_or_init(Default::default)
}

/// Loads and initialises the module at `path`, once per process.
pub fn load_module(path: &Path) -> Result<Pkcs11, HsmError> {
    let mut loaded = modules().lock().expect("module registry lock");
    if let Some(ctx) = loaded.get(path) {
        return Ok(ctx.clone());
    }
    if !path.exists() {
        return Err(HsmError::Unavailable {
            reason: format!("PKCS#11 module {} not found", path.display()),
            source: None,
        });
    }
    let ctx = Pkcs11::new(path).map_err(|e| HsmError::Unavailable {
        reason: format!("cannot load PKCS#11 module {}", path.display()),
        source: Some(e),
    })?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => {
            return Err(HsmError::Unavailable {
                reason: format!("cannot initialise PKCS#11 module {}", path.display()),
                source: Some(e),
            });
        }
    }
    loaded.insert(path.to_path_buf(), ctx.clone());
    Ok(ctx)
}

/// The slot whose initialised token has `label`.
pub fn find_token(ctx: &Pkcs11, label: &str) -> Result<Option<Slot>, HsmError> {
    for slot in ctx
        .get_slots_with_initialized_token()
        .map_err(HsmError::device("C_GetSlotList"))?
    {
        let info = ctx.get_token_info(slot).map_err(HsmError::device("C_GetTokenInfo"))?;
        if info.label().trim_end() == label {
            return Ok(Some(slot));
        }
    }
    Ok(None)
}

pub(crate) fn read_pin(path: &Path) -> Result<AuthPin, HsmError> {
    let raw = Zeroizing::new(std::fs::read_to_string(path).map_err(HsmError::io("read", path))?);
    Ok(AuthPin::from(raw.trim_end_matches(['\n', '\r']).to_string()))
}

/// Return codes after which the token cannot be trusted to work: fail closed as unavailable.
fn is_unavailable(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::DeviceError
                | RvError::DeviceRemoved
                | RvError::DeviceMemory
                | RvError::TokenNotPresent
                | RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::UserNotLoggedIn
                | RvError::CryptokiNotInitialized,
            _
        )
    )
}

fn classify(operation: &'static str) -> impl FnOnce(CkError) -> HsmError {
    move |e| {
        if is_unavailable(&e) {
            HsmError::Unavailable {
                reason: format!("{operation} failed"),
                source: Some(e),
            }
        } else {
            HsmError::Device { operation, source: e }
        }
    }
}

/// GCM tag failures: SoftHSM reports them as CKR_GENERAL_ERROR (checked), others as
/// CKR_ENCRYPTED_DATA_INVALID; length errors mean a truncated input.
fn is_auth_failure(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::GeneralError
                | RvError::EncryptedDataInvalid
                | RvError::EncryptedDataLenRange
                | RvError::DataLenRange
                | RvError::WrappedKeyInvalid
                | RvError::WrappedKeyLenRange,
            _
        )
    )
}

#[derive(Debug, Clone, Copy)]
struct RootKeys {
    kek: ObjectHandle,
    bind: ObjectHandle,
}

pub fn root_label(project: Uuid, role: &str) -> String {
    format!("rampart:root:{project}:{role}")
}

/// The project and role (0 KEK, 1 binding key) a [`root_label`] names.
fn parse_root_label(label: &[u8]) -> Option<(Uuid, usize)> {
    let rest = std::str::from_utf8(label).ok()?.strip_prefix("rampart:root:")?;
    let (project, role) = rest.rsplit_once(':')?;
    let role = match role {
        "kek" => 0,
        "bind" => 1,
        _ => return None,
    };
    Some((project.parse().ok()?, role))
}

/// Attributes of a project's root keys as the token reports them (tests, conformance probe).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootKeyReport {
    pub label: String,
    pub sensitive: bool,
    pub always_sensitive: bool,
    pub extractable: bool,
    pub never_extractable: bool,
    pub modifiable: bool,
    pub local: bool,
    /// Whether the token returned a CKA_VALUE at all (it must not).
    pub value_returned: bool,
}

struct Cached {
    id: MaterialId,
    handle: ObjectHandle,
}

pub struct Pkcs11Backend {
    ctx: Pkcs11,
    slot: Slot,
    token_label: String,
    /// Holds the login: PKCS#11 login state belongs to the application and lasts while one of
    /// its sessions is open; session objects die with the session that made them, so all
    /// sessions live as long as the backend.
    _login: Mutex<Session>,
    sessions: Vec<Mutex<Session>>,
    next: AtomicUsize,
    roots: Mutex<HashMap<Uuid, RootKeys>>,
    /// Serialises root key creation so two requests cannot create two keys with one label.
    create: Mutex<()>,
    /// Token-wide searches (C_FindObjects) since opening. SoftHSM2 visits every object of the
    /// token on each, opening and locking its file, so a search per project creation made
    /// creation slower with every project (issue 13, item 6): tests assert the hot paths make
    /// none.
    searches: AtomicU64,
    /// Held around every search and every creation or destruction of a token object. SoftHSM2
    /// re-reads its token directory inside a search after an object was made, comparing the
    /// listing with its index outside its own lock: an object made by another thread in that
    /// window drops out of its index or fails to be made (seen as `RootKeyMissing` right
    /// after generating a root, or C_GenerateKey failing, under concurrent project creation).
    token_objects: Mutex<()>,
    /// Unwrapped customer key versions, keyed by SHA-256(associated data || wrapped blob): a
    /// row altered in the database misses the cache and goes through authentication again.
    cache: Mutex<HashMap<[u8; 32], Cached>>,
    max_cached: usize,
}

impl std::fmt::Debug for Pkcs11Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Backend")
            .field("token_label", &self.token_label)
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

impl Pkcs11Backend {
    /// Opens the token of `config` and logs in. Any failure is [`HsmError::Unavailable`]: the
    /// caller refuses to start (HSM required) or serves with an [`crate::UnavailableBackend`].
    pub fn open(config: &Pkcs11Config) -> Result<Pkcs11Backend, HsmError> {
        let ctx = load_module(&config.module)?;
        let slot = find_token(&ctx, &config.token_label)?.ok_or_else(|| HsmError::Unavailable {
            reason: format!("no initialised token labelled {:?}", config.token_label),
            source: None,
        })?;
        let pin = read_pin(&config.pin_file)?;
        let login = ctx.open_rw_session(slot).map_err(|e| HsmError::Unavailable {
            reason: "cannot open a session".into(),
            source: Some(e),
        })?;
        match login.login(UserType::User, Some(&pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e) => {
                return Err(HsmError::Unavailable {
                    reason: format!("login to token {:?} refused", config.token_label),
                    source: Some(e),
                });
            }
        }
        let sessions = (0..config.sessions.max(1))
            .map(|_| ctx.open_rw_session(slot).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| HsmError::Unavailable {
                reason: "cannot open a session".into(),
                source: Some(e),
            })?;
        tracing::info!(token = %config.token_label, module = %config.module.display(), sessions = sessions.len(), "opened the HSM token");
        Ok(Pkcs11Backend {
            ctx,
            slot,
            token_label: config.token_label.clone(),
            _login: Mutex::new(login),
            sessions,
            next: AtomicUsize::new(0),
            roots: Mutex::new(HashMap::new()),
            create: Mutex::new(()),
            searches: AtomicU64::new(0),
            token_objects: Mutex::new(()),
            cache: Mutex::new(HashMap::new()),
            max_cached: config.max_cached_keys,
        })
    }

    pub(crate) fn session(&self) -> MutexGuard<'_, Session> {
        let n = self.sessions.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        for i in 0..n {
            if let Ok(s) = self.sessions[(start + i) % n].try_lock() {
                return s;
            }
        }
        self.sessions[start].lock().expect("HSM session lock")
    }

    /// Token-wide searches made since opening (see the field).
    pub fn searches(&self) -> u64 {
        self.searches.load(Ordering::Relaxed)
    }

    fn find_one(&self, s: &Session, label: &str) -> Result<Option<ObjectHandle>, HsmError> {
        self.searches.fetch_add(1, Ordering::Relaxed);
        let _objects = self.token_objects.lock().expect("token objects lock");
        let found = s
            .find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Label(label.as_bytes().to_vec()),
            ])
            .map_err(classify("C_FindObjects"))?;
        match found.len() {
            0 => Ok(None),
            1 => Ok(Some(found[0])),
            count => Err(HsmError::AmbiguousRootKey {
                label: label.to_string(),
                count,
            }),
        }
    }

    fn root_keys(&self, s: &Session, project: Uuid) -> Result<RootKeys, HsmError> {
        if let Some(r) = self.roots.lock().expect("roots lock").get(&project) {
            return Ok(*r);
        }
        let kek = self.find_one(s, &root_label(project, "kek"))?;
        let bind = self.find_one(s, &root_label(project, "bind"))?;
        match (kek, bind) {
            (Some(kek), Some(bind)) => {
                let r = RootKeys { kek, bind };
                self.roots.lock().expect("roots lock").insert(project, r);
                Ok(r)
            }
            _ => Err(HsmError::RootKeyMissing { project }),
        }
    }

    fn generate_root(&self, s: &Session, project: Uuid, role: &str) -> Result<ObjectHandle, HsmError> {
        let (wrap, crypt) = match role {
            "kek" => (true, false),
            _ => (false, true),
        };
        let _objects = self.token_objects.lock().expect("token objects lock");
        s.generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen(32.into()),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Modifiable(false),
                Attribute::Copyable(false),
                Attribute::Wrap(wrap),
                Attribute::Unwrap(wrap),
                Attribute::Encrypt(crypt),
                Attribute::Decrypt(crypt),
                Attribute::Sign(false),
                Attribute::Verify(false),
                Attribute::Derive(false),
                Attribute::Label(root_label(project, role).into_bytes()),
                Attribute::Id(project.as_bytes().to_vec()),
            ],
        )
        .map_err(classify("C_GenerateKey"))
    }

    /// The unwrapped customer key version in the token, and whether it is cached (if not, the
    /// caller destroys it after use).
    fn load(&self, s: &Session, id: &MaterialId, wrapped: &WrappedKey) -> Result<(ObjectHandle, bool), HsmError> {
        let aad = material_aad(id);
        let mut h = Sha256::new();
        h.update((aad.len() as u32).to_be_bytes());
        h.update(&aad);
        h.update(wrapped.as_bytes());
        let cache_key: [u8; 32] = h.finalize().into();
        if let Some(c) = self.cache.lock().expect("cache lock").get(&cache_key) {
            return Ok((c.handle, true));
        }
        match wrapped.format() {
            Some(WRAP_FORMAT_PKCS11_V1) => {}
            Some(format) => return Err(HsmError::WrappedKeyFormat { format }),
            None => return Err(HsmError::WrappedKeyInvalid),
        }
        let (mut nonce, sealed) = wrapped.parts().ok_or(HsmError::WrappedKeyInvalid)?;
        let roots = self.root_keys(s, id.project)?;
        let params = GcmParams::new(&mut nonce, &aad, 128.into()).map_err(HsmError::device("GCM parameters"))?;
        let kwp_blob = s.decrypt(&Mechanism::AesGcm(params), roots.bind, sealed).map_err(|e| {
            if is_auth_failure(&e) {
                HsmError::WrappedKeyInvalid
            } else {
                classify("C_Decrypt (unseal key material)")(e)
            }
        })?;
        let handle = s
            .unwrap_key(
                &Mechanism::AesKeyWrapPad,
                roots.kek,
                &kwp_blob,
                &[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::AES),
                    Attribute::Token(false),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Encrypt(true),
                    Attribute::Decrypt(true),
                    Attribute::Wrap(false),
                    Attribute::Unwrap(false),
                ],
            )
            .map_err(|e| {
                if is_auth_failure(&e) {
                    HsmError::WrappedKeyInvalid
                } else {
                    classify("C_UnwrapKey")(e)
                }
            })?;
        let mut cache = self.cache.lock().expect("cache lock");
        if cache.len() < self.max_cached {
            cache.insert(cache_key, Cached { id: *id, handle });
            Ok((handle, true))
        } else {
            Ok((handle, false))
        }
    }

    fn with_key<T>(
        &self,
        id: &MaterialId,
        wrapped: &WrappedKey,
        op: impl FnOnce(&Session, ObjectHandle) -> Result<T, HsmError>,
    ) -> Result<T, HsmError> {
        let s = self.session();
        let (handle, cached) = self.load(&s, id, wrapped)?;
        let result = op(&s, handle);
        if !cached {
            let _ = s.destroy_object(handle);
        }
        result
    }

    /// What the token says about the root keys of `project`.
    pub fn root_key_report(&self, project: Uuid) -> Result<Vec<RootKeyReport>, HsmError> {
        let s = self.session();
        let roots = self.root_keys(&s, project)?;
        let mut out = Vec::new();
        for (role, handle) in [("kek", roots.kek), ("bind", roots.bind)] {
            let attrs = s
                .get_attributes(
                    handle,
                    &[
                        AttributeType::Sensitive,
                        AttributeType::AlwaysSensitive,
                        AttributeType::Extractable,
                        AttributeType::NeverExtractable,
                        AttributeType::Modifiable,
                        AttributeType::Local,
                        AttributeType::Value,
                    ],
                )
                .map_err(classify("C_GetAttributeValue"))?;
            let mut r = RootKeyReport {
                label: root_label(project, role),
                sensitive: false,
                always_sensitive: false,
                extractable: true,
                never_extractable: false,
                modifiable: true,
                local: false,
                value_returned: false,
            };
            for a in attrs {
                match a {
                    Attribute::Sensitive(v) => r.sensitive = v,
                    Attribute::AlwaysSensitive(v) => r.always_sensitive = v,
                    Attribute::Extractable(v) => r.extractable = v,
                    Attribute::NeverExtractable(v) => r.never_extractable = v,
                    Attribute::Modifiable(v) => r.modifiable = v,
                    Attribute::Local(v) => r.local = v,
                    Attribute::Value(_) => r.value_returned = true,
                    _ => {}
                }
            }
            out.push(r);
        }
        Ok(out)
    }

    /// Whether the token will hand out the value of the unwrapped session object serving
    /// `id` (it must not: tests prove customer keys stay sealed inside the token too).
    pub fn unwrapped_key_value_returned(&self, id: &MaterialId, wrapped: &WrappedKey) -> Result<bool, HsmError> {
        self.with_key(id, wrapped, |s, h| {
            let attrs = s
                .get_attributes(h, &[AttributeType::Value, AttributeType::Extractable])
                .map_err(classify("C_GetAttributeValue"))?;
            Ok(attrs
                .iter()
                .any(|a| matches!(a, Attribute::Value(_) | Attribute::Extractable(true))))
        })
    }

    pub fn token_label(&self) -> &str {
        &self.token_label
    }

    /// The mechanisms this design needs, checked at start so a module lacking one is refused
    /// with a clear reason instead of failing on the first request.
    pub fn check_mechanisms(&self) -> Result<(), HsmError> {
        use cryptoki::mechanism::MechanismType;
        let have = self
            .ctx
            .get_mechanism_list(self.slot)
            .map_err(classify("C_GetMechanismList"))?;
        for (name, m) in [
            ("CKM_AES_KEY_GEN", MechanismType::AES_KEY_GEN),
            ("CKM_AES_GCM", MechanismType::AES_GCM),
            ("CKM_AES_KEY_WRAP_PAD", MechanismType::AES_KEY_WRAP_PAD),
        ] {
            if !have.contains(&m) {
                return Err(HsmError::Unavailable {
                    reason: format!("the token lacks {name}"),
                    source: None,
                });
            }
        }
        Ok(())
    }
}

impl KeyBackend for Pkcs11Backend {
    fn kind(&self) -> BackendKind {
        BackendKind::Pkcs11
    }

    fn ensure_project_root(&self, project: Uuid) -> Result<(), HsmError> {
        let s = self.session();
        match self.root_keys(&s, project) {
            Ok(_) => return Ok(()),
            Err(HsmError::RootKeyMissing { .. }) => {}
            Err(e) => return Err(e),
        }
        let _guard = self.create.lock().expect("create lock");
        // A crash between the two generations leaves one key: create only what is missing
        // (no material can exist yet, since none is made before both keys are).
        for role in ["kek", "bind"] {
            if self.find_one(&s, &root_label(project, role))?.is_none() {
                self.generate_root(&s, project, role)?;
            }
        }
        self.root_keys(&s, project)?;
        tracing::info!(%project, "created the project root keys in the HSM");
        Ok(())
    }

    fn create_new_project_root(&self, project: Uuid) -> Result<(), HsmError> {
        let s = self.session();
        // Held so that a concurrent ensure_project_root of the same project (a key created
        // before this returns) sees both keys or neither, never makes a second one.
        let _guard = self.create.lock().expect("create lock");
        let kek = self.generate_root(&s, project, "kek")?;
        let bind = match self.generate_root(&s, project, "bind") {
            Ok(h) => h,
            Err(e) => {
                // The retry goes through ensure_project_root, which would complete a lone KEK;
                // removing it keeps a failed creation from leaving anything behind.
                let destroyed = {
                    let _objects = self.token_objects.lock().expect("token objects lock");
                    s.destroy_object(kek)
                };
                if let Err(d) = destroyed {
                    tracing::warn!(%project, error = %d, "cannot remove the KEK of a failed root creation; the next attempt reuses it");
                }
                return Err(e);
            }
        };
        self.roots
            .lock()
            .expect("roots lock")
            .insert(project, RootKeys { kek, bind });
        tracing::info!(%project, "created the project root keys in the HSM");
        Ok(())
    }

    /// One search for every token secret key, then each label read by handle (no search):
    /// linear in the token's objects instead of one token-wide search per project.
    fn preload_project_roots(&self) -> Result<usize, HsmError> {
        let s = self.session();
        self.searches.fetch_add(1, Ordering::Relaxed);
        let handles = {
            let _objects = self.token_objects.lock().expect("token objects lock");
            s.find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY), Attribute::Token(true)])
                .map_err(classify("C_FindObjects"))?
        };
        let mut found: HashMap<Uuid, [Vec<ObjectHandle>; 2]> = HashMap::new();
        for h in handles {
            let attrs = s
                .get_attributes(h, &[AttributeType::Label])
                .map_err(classify("C_GetAttributeValue"))?;
            let Some(Attribute::Label(label)) = attrs.into_iter().next() else {
                continue;
            };
            let Some((project, role)) = parse_root_label(&label) else {
                continue;
            };
            found.entry(project).or_default()[role].push(h);
        }
        let mut roots = self.roots.lock().expect("roots lock");
        let mut n = 0;
        for (project, [kek, bind]) in found {
            // A duplicate label stays out of the cache: the search on use reports it.
            if let ([kek], [bind]) = (&kek[..], &bind[..]) {
                roots.insert(project, RootKeys { kek: *kek, bind: *bind });
                n += 1;
            }
        }
        Ok(n)
    }

    fn destroy_project_root(&self, project: Uuid) -> Result<(), HsmError> {
        self.roots.lock().expect("roots lock").remove(&project);
        let stale: Vec<MaterialId> = self
            .cache
            .lock()
            .expect("cache lock")
            .values()
            .filter(|c| c.id.project == project)
            .map(|c| c.id)
            .collect();
        self.forget(&stale);
        let s = self.session();
        for role in ["kek", "bind"] {
            if let Some(h) = self.find_one(&s, &root_label(project, role))? {
                let _objects = self.token_objects.lock().expect("token objects lock");
                s.destroy_object(h).map_err(classify("C_DestroyObject"))?;
            }
        }
        tracing::info!(%project, "destroyed the project root keys in the HSM");
        Ok(())
    }

    fn generate_key_material(&self, id: &MaterialId) -> Result<WrappedKey, HsmError> {
        let s = self.session();
        let roots = self.root_keys(&s, id.project)?;
        // Extractable only so that C_WrapKey can export it wrapped; it lives for this call.
        let fresh = s
            .generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::AES),
                    Attribute::ValueLen(32.into()),
                    Attribute::Token(false),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(true),
                    Attribute::Encrypt(false),
                    Attribute::Decrypt(false),
                ],
            )
            .map_err(classify("C_GenerateKey"))?;
        let kwp = s.wrap_key(&Mechanism::AesKeyWrapPad, roots.kek, fresh);
        let _ = s.destroy_object(fresh);
        let kwp = kwp.map_err(classify("C_WrapKey"))?;
        let mut nonce = [0u8; NONCE_LEN];
        s.generate_random_slice(&mut nonce)
            .map_err(classify("C_GenerateRandom"))?;
        let aad = material_aad(id);
        let mut iv = nonce;
        let params = GcmParams::new(&mut iv, &aad, 128.into()).map_err(HsmError::device("GCM parameters"))?;
        let sealed = s
            .encrypt(&Mechanism::AesGcm(params), roots.bind, &kwp)
            .map_err(classify("C_Encrypt (seal key material)"))?;
        Ok(WrappedKey::new(WRAP_FORMAT_PKCS11_V1, &nonce, &sealed))
    }

    fn encrypt(
        &self,
        id: &MaterialId,
        wrapped: &WrappedKey,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, HsmError> {
        self.with_key(id, wrapped, |s, key| {
            let mut iv = *nonce;
            let params = GcmParams::new(&mut iv, aad, 128.into()).map_err(HsmError::device("GCM parameters"))?;
            s.encrypt(&Mechanism::AesGcm(params), key, plaintext)
                .map_err(classify("C_Encrypt"))
        })
    }

    fn decrypt(
        &self,
        id: &MaterialId,
        wrapped: &WrappedKey,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        self.with_key(id, wrapped, |s, key| {
            let mut iv = *nonce;
            let params = GcmParams::new(&mut iv, aad, 128.into()).map_err(HsmError::device("GCM parameters"))?;
            s.decrypt(&Mechanism::AesGcm(params), key, sealed)
                .map(Zeroizing::new)
                .map_err(|e| {
                    if is_auth_failure(&e) {
                        HsmError::AuthenticationFailed
                    } else {
                        classify("C_Decrypt")(e)
                    }
                })
        })
    }

    fn random(&self, out: &mut [u8]) -> Result<(), HsmError> {
        self.session()
            .generate_random_slice(out)
            .map_err(classify("C_GenerateRandom"))
    }

    fn forget(&self, ids: &[MaterialId]) {
        let handles: Vec<ObjectHandle> = {
            let mut cache = self.cache.lock().expect("cache lock");
            let keys: Vec<[u8; 32]> = cache
                .iter()
                .filter(|(_, c)| ids.contains(&c.id))
                .map(|(k, _)| *k)
                .collect();
            keys.iter().filter_map(|k| cache.remove(k)).map(|c| c.handle).collect()
        };
        if handles.is_empty() {
            return;
        }
        let s = self.session();
        for h in handles {
            if let Err(e) = s.destroy_object(h) {
                tracing::warn!(error = %e, "could not destroy an unwrapped key object; it dies with the session");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::EncryptionContext;
    use crate::service::KeyService;
    use std::sync::Arc;

    fn t0() -> time::OffsetDateTime {
        time::macros::datetime!(2026-06-01 0:00 UTC)
    }

    #[test]
    fn spec_13_3_9_root_keys_are_sensitive_non_extractable_and_return_no_value() {
        let Some(b) = crate::testutil::backend() else { return };
        let project = Uuid::new_v4();
        assert!(matches!(
            b.root_key_report(project),
            Err(HsmError::RootKeyMissing { .. })
        ));
        b.ensure_project_root(project).unwrap();
        b.ensure_project_root(project).unwrap();
        let report = b.root_key_report(project).unwrap();
        assert_eq!(report.len(), 2);
        for r in report {
            assert!(
                r.label.contains(&project.to_string()),
                "labelled by project: {}",
                r.label
            );
            assert!(r.sensitive && r.always_sensitive, "{r:?}");
            assert!(!r.extractable && r.never_extractable, "{r:?}");
            assert!(!r.modifiable, "{r:?}");
            assert!(r.local, "generated inside the token: {r:?}");
            assert!(!r.value_returned, "{r:?}");
        }
    }

    #[test]
    fn spec_13_3_5_unwrapped_customer_keys_stay_sealed_in_the_token() {
        let Some(b) = crate::testutil::backend() else { return };
        let svc = KeyService::new(b.clone());
        let key = svc.create_key(Uuid::new_v4(), "k", None, t0()).unwrap();
        let id = MaterialId {
            project: key.project,
            key_id: key.id,
            version: 1,
        };
        let wrapped = key.versions[0].wrapped.as_ref().unwrap();
        assert_eq!(wrapped.format(), Some(WRAP_FORMAT_PKCS11_V1));
        assert_eq!(
            wrapped.as_bytes().len(),
            1 + 12 + 40 + 16,
            "format, nonce, KWP(32 bytes), tag"
        );
        assert!(!b.unwrapped_key_value_returned(&id, wrapped).unwrap());
    }

    /// Issue 13 item 6: each token-wide search visits every object of the token (SoftHSM2
    /// opens and locks each object file), so project creation slowed down with every project
    /// made. Creating a project's roots and using them must not search; a controller that
    /// did not make them (restart, another controller) still finds them by label, once.
    #[test]
    fn spec_14_2_3_project_creation_and_key_use_make_no_token_search() {
        let Some((config, b)) = crate::testutil::token_config() else {
            return;
        };
        let svc = KeyService::new(b.clone());
        let projects: Vec<Uuid> = (0..20).map(|_| Uuid::new_v4()).collect();
        for p in &projects {
            svc.create_new_project_root(*p).unwrap();
        }
        let key = svc.create_key(projects[7], "k", None, t0()).unwrap();
        let c = EncryptionContext::new();
        let enc = svc.encrypt(&key, b"fast", &c).unwrap();
        assert_eq!(&svc.decrypt(&key, &enc.ciphertext, &c).unwrap().plaintext[..], b"fast");
        assert_eq!(b.searches(), 0, "no token-wide search on creation and use");

        let reopened = Arc::new(Pkcs11Backend::open(&config).unwrap());
        let again = KeyService::new(reopened.clone());
        assert_eq!(
            &again.decrypt(&key, &enc.ciphertext, &c).unwrap().plaintext[..],
            b"fast"
        );
        // Exactly one key per label (no duplicate from the search-free path), found once and
        // remembered.
        let report = reopened.root_key_report(projects[3]).unwrap();
        assert_eq!(report.len(), 2);
        let after_first = reopened.searches();
        assert!(after_first > 0);
        reopened.root_key_report(projects[3]).unwrap();
        assert_eq!(reopened.searches(), after_first);
    }

    /// SoftHSM2 re-reads its token directory inside a search after any object was made, without
    /// holding its lock while it compares the listing with what it knows: an object made by
    /// another thread in that window is dropped from its index, and the search right after
    /// generating a root did not find it (`RootKeyMissing`, 503 `hsm_unavailable`, seen after
    /// the full-disk test's bursts of eight concurrent creations). Searches and token object
    /// changes are serialised in this process; under concurrent creation every root is found.
    #[test]
    fn spec_14_2_3_concurrent_root_creation_and_searches_find_every_root() {
        let Some((mut config, _)) = crate::testutil::token_config() else {
            return;
        };
        config.sessions = 8;
        let b = Arc::new(Pkcs11Backend::open(&config).unwrap());
        let failures: Vec<String> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..8)
                .map(|t| {
                    let b = b.clone();
                    scope.spawn(move || {
                        let mut failed = Vec::new();
                        for _ in 0..25 {
                            let p = Uuid::new_v4();
                            // Half the threads take the idempotent path, which searches.
                            let made = if t % 2 == 0 {
                                b.ensure_project_root(p)
                            } else {
                                b.create_new_project_root(p)
                            };
                            if let Err(e) = made.and_then(|()| {
                                b.roots.lock().unwrap().remove(&p);
                                b.root_key_report(p).map(|_| ())
                            }) {
                                failed.push(format!("{p}: {e}"));
                            }
                        }
                        failed
                    })
                })
                .collect();
            workers.into_iter().flat_map(|w| w.join().unwrap()).collect()
        });
        assert!(
            failures.is_empty(),
            "{} of 200 roots not found: {failures:?}",
            failures.len()
        );
    }

    /// The start-up check of every project's roots: one search in all, not two per project.
    #[test]
    fn spec_14_2_3_startup_root_check_searches_the_token_once() {
        let Some((config, b)) = crate::testutil::token_config() else {
            return;
        };
        let projects: Vec<Uuid> = (0..10).map(|_| Uuid::new_v4()).collect();
        for p in &projects {
            b.create_new_project_root(*p).unwrap();
        }
        let svc = KeyService::new(b.clone());
        let key = svc.create_key(projects[2], "k", None, t0()).unwrap();
        let c = EncryptionContext::new();
        let enc = svc.encrypt(&key, b"kept", &c).unwrap();

        let reopened = Arc::new(Pkcs11Backend::open(&config).unwrap());
        assert_eq!(reopened.preload_project_roots().unwrap(), projects.len());
        for p in &projects {
            reopened.ensure_project_root(*p).unwrap();
        }
        let again = KeyService::new(reopened.clone());
        assert_eq!(
            &again.decrypt(&key, &enc.ciphertext, &c).unwrap().plaintext[..],
            b"kept"
        );
        assert_eq!(reopened.searches(), 1);
        assert_eq!(
            parse_root_label(root_label(projects[0], "bind").as_bytes()),
            Some((projects[0], 1))
        );
        assert_eq!(parse_root_label(b"rampart:root:nope:kek"), None);
    }

    #[test]
    fn spec_13_3_9_keys_survive_reopening_the_token() {
        let Some((config, first)) = crate::testutil::token_config() else {
            return;
        };
        let svc = KeyService::new(first.clone());
        let key = svc.create_key(Uuid::new_v4(), "k", None, t0()).unwrap();
        let c = EncryptionContext::new();
        let enc = svc.encrypt(&key, b"kept", &c).unwrap();
        let reopened = KeyService::new(Arc::new(Pkcs11Backend::open(&config).unwrap()));
        assert_eq!(
            &reopened.decrypt(&key, &enc.ciphertext, &c).unwrap().plaintext[..],
            b"kept"
        );
    }

    #[test]
    fn spec_13_3_1_destroying_the_project_root_shreds_its_keys() {
        let Some(b) = crate::testutil::backend() else { return };
        let svc = KeyService::new(b.clone());
        let key = svc.create_key(Uuid::new_v4(), "k", None, t0()).unwrap();
        let c = EncryptionContext::new();
        let enc = svc.encrypt(&key, b"gone soon", &c).unwrap();
        b.destroy_project_root(key.project).unwrap();
        let e = svc.decrypt(&key, &enc.ciphertext, &c).unwrap_err();
        assert_eq!(e.code(), "hsm_unavailable", "{e:?}");
        // A new root for the project does not bring the old material back.
        b.ensure_project_root(key.project).unwrap();
        assert_eq!(
            svc.decrypt(&key, &enc.ciphertext, &c).unwrap_err().code(),
            "internal_error"
        );
    }

    #[test]
    fn spec_13_3_9_unusable_hsm_configurations_fail_closed() {
        let Some((config, b)) = crate::testutil::token_config() else {
            return;
        };
        // Login state belongs to the process: with a session of this token still open, any
        // PIN would meet CKR_USER_ALREADY_LOGGED_IN. Close them so the PIN is really checked.
        drop(b);
        let missing_module = Pkcs11Config {
            module: "/nonexistent/libpkcs11.so".into(),
            ..config.clone()
        };
        let wrong_label = Pkcs11Config {
            token_label: "no-such-token".into(),
            ..config.clone()
        };
        let dir = tempfile::tempdir().unwrap();
        let bad_pin = dir.path().join("pin");
        std::fs::write(&bad_pin, "00000000").unwrap();
        let wrong_pin = Pkcs11Config {
            pin_file: bad_pin,
            ..config.clone()
        };
        for c in [missing_module, wrong_label, wrong_pin] {
            let e = Pkcs11Backend::open(&c).unwrap_err();
            assert!(matches!(e, HsmError::Unavailable { .. }), "{e:?}");
            assert!(!format!("{e:?} {e}").contains("00000000"), "no PIN in errors");
        }
        let missing_pin = Pkcs11Config {
            pin_file: dir.path().join("absent"),
            ..config
        };
        assert!(matches!(Pkcs11Backend::open(&missing_pin), Err(HsmError::Io { .. })));
    }
}
