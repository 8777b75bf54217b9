//! The key service: the thin executor between the API and the backend. It decides with the
//! pure lifecycle ([`crate::lifecycle`]) and formats ([`crate::envelope`]), and runs the
//! cryptography in the backend. It holds no state: the controller loads a [`Key`] from its
//! rows, calls a method, and stores what changed in the same transaction as the audit record.

use std::sync::Arc;

use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::backend::{BackendKind, KeyBackend};
use crate::envelope::{
    EncryptionContext, Envelope, EnvelopeHeader, MaterialId, NONCE_LEN, canonical_context, context_digest, data_aad,
    validate_context,
};
use crate::error::{HsmError, KmsError};
use crate::lifecycle::{Key, KeyVersion, Maintenance};

/// Largest plaintext of `encrypt` (bulk data is encrypted with a data key, not here).
pub const MAX_PLAINTEXT: usize = 64 * 1024;
pub const DEFAULT_DATA_KEY_BYTES: usize = 32;
pub const MIN_DATA_KEY_BYTES: usize = 16;
pub const MAX_DATA_KEY_BYTES: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encrypted {
    /// Base64 of the envelope.
    pub ciphertext: String,
    pub key_version: u32,
}

pub struct Decrypted {
    pub plaintext: Zeroizing<Vec<u8>>,
    pub key_version: u32,
}

impl std::fmt::Debug for Decrypted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decrypted")
            .field("plaintext", &"[redacted]")
            .field("key_version", &self.key_version)
            .finish()
    }
}

/// A fresh data key: its plaintext (for the caller to use and forget) and the same key
/// encrypted under the customer key (for the caller to store).
pub struct DataKey {
    pub plaintext: Zeroizing<Vec<u8>>,
    pub ciphertext: String,
    pub key_version: u32,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKey")
            .field("plaintext", &"[redacted]")
            .field("key_version", &self.key_version)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReEncrypted {
    pub ciphertext: String,
    pub key_version: u32,
    pub source_key_id: Uuid,
    pub source_key_version: u32,
}

/// Key operations, named as the audit log names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum KeyOperation {
    #[serde(rename = "key.create")]
    Create,
    #[serde(rename = "key.encrypt")]
    Encrypt,
    #[serde(rename = "key.decrypt")]
    Decrypt,
    #[serde(rename = "key.generate_data_key")]
    GenerateDataKey,
    #[serde(rename = "key.re_encrypt")]
    ReEncrypt,
    #[serde(rename = "key.rotate")]
    Rotate,
    #[serde(rename = "key.enable")]
    Enable,
    #[serde(rename = "key.disable")]
    Disable,
    #[serde(rename = "key.schedule_deletion")]
    ScheduleDeletion,
    #[serde(rename = "key.cancel_deletion")]
    CancelDeletion,
    #[serde(rename = "key.destroy")]
    Destroy,
    #[serde(rename = "key.set_min_decryption_version")]
    SetMinDecryptionVersion,
}

/// The key-specific part of an audit record (13.3-4): the controller adds actor, source IP,
/// user agent and request id. By construction it holds ids, versions, the context (not
/// secret) and the result: never plaintext, key material or a data key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyAuditFacts {
    pub operation: KeyOperation,
    pub project: Uuid,
    pub key_id: Uuid,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_version: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_key_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_key_version: Option<u32>,
    #[serde(skip_serializing_if = "EncryptionContext::is_empty")]
    pub context: EncryptionContext,
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<&'static str>,
}

impl KeyAuditFacts {
    pub fn new(operation: KeyOperation, key: &Key) -> Self {
        KeyAuditFacts {
            operation,
            project: key.project,
            key_id: key.id,
            key_version: None,
            source_key_id: None,
            source_key_version: None,
            context: EncryptionContext::new(),
            outcome: "success",
            error_code: None,
        }
    }

    pub fn version(mut self, v: u32) -> Self {
        self.key_version = Some(v);
        self
    }

    pub fn context(mut self, ctx: &EncryptionContext) -> Self {
        self.context = ctx.clone();
        self
    }

    /// Records the result: `failure` with the error's code, or `success`.
    pub fn result<T>(mut self, r: &Result<T, KmsError>) -> Self {
        if let Err(e) = r {
            self.outcome = "failure";
            self.error_code = Some(e.code());
        }
        self
    }
}

pub struct KeyService {
    /// Every call goes through [`crate::monitor::Monitored`], which keeps [`KeyService::health`].
    backend: Arc<dyn KeyBackend>,
    health: Arc<crate::monitor::HsmHealth>,
}

/// Attempts of an HSM call that fails transiently, and the wait before each retry.
pub const HSM_ATTEMPTS: u32 = 5;
pub const HSM_BACKOFF_FIRST: std::time::Duration = std::time::Duration::from_millis(50);

/// Runs `op` until it succeeds, fails for good, or [`HSM_ATTEMPTS`] transient failures
/// passed, doubling the wait from [`HSM_BACKOFF_FIRST`]; `on_error` sees every failure.
pub fn with_retries<T>(
    mut op: impl FnMut() -> Result<T, HsmError>,
    mut on_error: impl FnMut(&HsmError, u32),
    sleep: impl Fn(std::time::Duration),
) -> Result<T, HsmError> {
    let mut wait = HSM_BACKOFF_FIRST;
    let mut attempt = 1;
    loop {
        match op() {
            Ok(v) => return Ok(v),
            Err(e) => {
                on_error(&e, attempt);
                if !e.is_transient() || attempt >= HSM_ATTEMPTS {
                    return Err(e);
                }
                sleep(wait);
                wait *= 2;
                attempt += 1;
            }
        }
    }
}

impl std::fmt::Debug for KeyService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyService")
            .field("backend", &self.backend.kind())
            .finish()
    }
}

fn material_id(key: &Key, version: u32) -> MaterialId {
    MaterialId {
        project: key.project,
        key_id: key.id,
        version,
    }
}

impl KeyService {
    pub fn new(backend: Arc<dyn KeyBackend>) -> Self {
        let (monitored, health) = crate::monitor::Monitored::new(backend);
        KeyService {
            backend: Arc::new(monitored),
            health,
        }
    }

    /// HSM device faults seen so far (retried ones included): the `rampart_hsm_errors` gauge.
    pub fn error_count(&self) -> u64 {
        self.health.errors()
    }

    /// The fault the last HSM call ended with, if it has not been cleared by a success since.
    pub fn fault(&self) -> Option<crate::monitor::Fault> {
        self.health.fault()
    }

    /// While a fault is held, asks the HSM again (one random byte, at most once per
    /// `min_interval`), so that a recovered HSM is seen even when no key call comes in (a
    /// controller taken out of the load balancer by `/readyz` gets none). Blocking.
    pub fn recheck_fault(&self, min_interval: std::time::Duration) -> Option<crate::monitor::Fault> {
        if self.health.fault().is_some() && self.health.probe_due(min_interval) {
            let _ = self.backend.random(&mut [0u8; 1]);
        }
        self.health.fault()
    }

    pub fn backend_kind(&self) -> BackendKind {
        self.backend.kind()
    }

    pub fn backend(&self) -> &Arc<dyn KeyBackend> {
        &self.backend
    }

    /// Creates the project's root keys in the HSM; call when a project is created (and it is
    /// done lazily by [`KeyService::create_key`] too).
    /// Transient token failures are retried with backoff (this blocks: run it off the async
    /// threads).
    pub fn create_project_root(&self, project: Uuid) -> Result<(), KmsError> {
        with_retries(
            || self.backend.ensure_project_root(project),
            |e, attempt| {
                tracing::warn!(%project, attempt, error = %rampart_common::error::ErrorChain(e), "creating the project root keys failed");
            },
            std::thread::sleep,
        )
        .map_err(KmsError::from_backend("creating the project root key"))
    }

    /// The root keys of a project just created (its id is new): made without first searching
    /// the token, which costs time linear in the token's objects on SoftHSM2. Retries after a
    /// transient failure go through the idempotent path, which completes whatever the first
    /// attempt left.
    pub fn create_new_project_root(&self, project: Uuid) -> Result<(), KmsError> {
        let mut first = true;
        with_retries(
            || {
                if std::mem::take(&mut first) {
                    self.backend.create_new_project_root(project)
                } else {
                    self.backend.ensure_project_root(project)
                }
            },
            |e, attempt| {
                tracing::warn!(%project, attempt, error = %rampart_common::error::ErrorChain(e), "creating the project root keys failed");
            },
            std::thread::sleep,
        )
        .map_err(KmsError::from_backend("creating the project root key"))
    }

    /// A new enabled key, version 1 generated in the HSM.
    pub fn create_key(
        &self,
        project: Uuid,
        name: &str,
        rotation_period_days: Option<u32>,
        now: OffsetDateTime,
    ) -> Result<Key, KmsError> {
        // Validate before touching the HSM so a bad request creates nothing.
        rampart_common::names::validate_name("name", name)
            .map_err(|_| KmsError::validation("name", "name must match [a-z][a-z0-9-]{0,62}"))?;
        crate::lifecycle::validate_rotation_period(rotation_period_days)?;
        self.create_project_root(project)?;
        let id = Uuid::new_v4();
        let wrapped = self
            .backend
            .generate_key_material(&MaterialId {
                project,
                key_id: id,
                version: 1,
            })
            .map_err(KmsError::from_backend("generating key material"))?;
        Key::new(id, project, name.to_string(), rotation_period_days, wrapped, now)
    }

    /// Adds a version generated in the HSM and makes it primary. Returns the new version.
    pub fn rotate(&self, key: &mut Key, now: OffsetDateTime) -> Result<u32, KmsError> {
        let version = key.check_rotate()?;
        let wrapped = self
            .backend
            .generate_key_material(&material_id(key, version))
            .map_err(KmsError::from_backend("generating key material"))?;
        key.rotate(version, wrapped, now)?;
        Ok(version)
    }

    /// Destroys a key whose deletion window has passed and drops any cached unwrapped form.
    pub fn destroy(&self, key: &mut Key, now: OffsetDateTime) -> Result<(), KmsError> {
        key.destroy(now)?;
        let ids: Vec<MaterialId> = key.versions.iter().map(|v| material_id(key, v.version)).collect();
        self.backend.forget(&ids);
        Ok(())
    }

    /// What the reconciler runs for one key: destruction or automatic rotation when due.
    pub fn run_maintenance(&self, key: &mut Key, now: OffsetDateTime) -> Result<Option<Maintenance>, KmsError> {
        match key.maintenance_due(now) {
            Some(Maintenance::Destroy) => self.destroy(key, now).map(|_| Some(Maintenance::Destroy)),
            Some(Maintenance::Rotate) => self.rotate(key, now).map(|_| Some(Maintenance::Rotate)),
            None => Ok(None),
        }
    }

    fn seal(
        &self,
        key: &Key,
        version: &KeyVersion,
        plaintext: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<String, KmsError> {
        let wrapped = version.wrapped.as_ref().ok_or(KmsError::KeyDestroyed)?;
        let canonical = canonical_context(ctx);
        let mut nonce = [0u8; NONCE_LEN];
        self.backend
            .random(&mut nonce)
            .map_err(KmsError::from_backend("drawing a nonce"))?;
        let header = EnvelopeHeader {
            key_id: key.id,
            key_version: version.version,
            context_digest: context_digest(&canonical),
            nonce,
        };
        let aad = data_aad(key.project, &header, &canonical);
        let sealed = self
            .backend
            .encrypt(&material_id(key, version.version), wrapped, &nonce, &aad, plaintext)
            .map_err(KmsError::from_backend("encrypting"))?;
        Ok(Envelope { header, sealed }.to_base64())
    }

    fn open(&self, key: &Key, ciphertext: &str, ctx: &EncryptionContext) -> Result<Decrypted, KmsError> {
        validate_context(ctx)?;
        let env = Envelope::from_base64(ciphertext)?;
        if env.header.key_id != key.id {
            return Err(KmsError::KeyMismatch);
        }
        let version = key.check_decrypt(env.header.key_version)?;
        let wrapped = version.wrapped.as_ref().ok_or(KmsError::KeyDestroyed)?;
        let canonical = canonical_context(ctx);
        if context_digest(&canonical) != env.header.context_digest {
            return Err(KmsError::ContextMismatch);
        }
        let aad = data_aad(key.project, &env.header, &canonical);
        let plaintext = self
            .backend
            .decrypt(
                &material_id(key, version.version),
                wrapped,
                &env.header.nonce,
                &aad,
                &env.sealed,
            )
            .map_err(|e| match e {
                HsmError::WrappedKeyInvalid | HsmError::WrappedKeyFormat { .. } => {
                    // The stored row was altered or belongs elsewhere: an integrity alarm for
                    // the operator, not something the caller did.
                    tracing::error!(key_id = %key.id, version = version.version, "stored key material failed authentication");
                    KmsError::Internal {
                        context: "unwrapping key material",
                        source: e,
                    }
                }
                other => KmsError::from_backend("decrypting")(other),
            })?;
        Ok(Decrypted {
            plaintext,
            key_version: version.version,
        })
    }

    pub fn encrypt(&self, key: &Key, plaintext: &[u8], ctx: &EncryptionContext) -> Result<Encrypted, KmsError> {
        validate_context(ctx)?;
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(KmsError::validation(
                "plaintext",
                format!("plaintext is limited to {MAX_PLAINTEXT} bytes; encrypt bulk data with a data key"),
            ));
        }
        let version = key.check_encrypt()?;
        Ok(Encrypted {
            ciphertext: self.seal(key, version, plaintext, ctx)?,
            key_version: version.version,
        })
    }

    pub fn decrypt(&self, key: &Key, ciphertext: &str, ctx: &EncryptionContext) -> Result<Decrypted, KmsError> {
        self.open(key, ciphertext, ctx)
    }

    /// A data key from the HSM's generator, returned in plaintext and encrypted.
    pub fn generate_data_key(
        &self,
        key: &Key,
        ctx: &EncryptionContext,
        bytes: Option<usize>,
    ) -> Result<DataKey, KmsError> {
        validate_context(ctx)?;
        let n = bytes.unwrap_or(DEFAULT_DATA_KEY_BYTES);
        if !(MIN_DATA_KEY_BYTES..=MAX_DATA_KEY_BYTES).contains(&n) {
            return Err(KmsError::validation(
                "bytes",
                format!("bytes must be between {MIN_DATA_KEY_BYTES} and {MAX_DATA_KEY_BYTES}"),
            ));
        }
        let version = key.check_encrypt()?;
        let mut plaintext = Zeroizing::new(vec![0u8; n]);
        self.backend
            .random(&mut plaintext)
            .map_err(KmsError::from_backend("generating a data key"))?;
        let ciphertext = self.seal(key, version, &plaintext, ctx)?;
        Ok(DataKey {
            plaintext,
            ciphertext,
            key_version: version.version,
        })
    }

    /// Decrypts under `source` and encrypts under `target` (possibly the same key, to move a
    /// ciphertext to the primary version after rotation). The plaintext exists only in a
    /// buffer zeroed on return and is never part of the result.
    pub fn re_encrypt(
        &self,
        source: &Key,
        ciphertext: &str,
        source_ctx: &EncryptionContext,
        target: &Key,
        target_ctx: &EncryptionContext,
    ) -> Result<ReEncrypted, KmsError> {
        validate_context(target_ctx)?;
        let target_version = target.check_encrypt()?;
        let opened = self.open(source, ciphertext, source_ctx)?;
        let ciphertext = self.seal(target, target_version, &opened.plaintext, target_ctx)?;
        Ok(ReEncrypted {
            ciphertext,
            key_version: target_version.version,
            source_key_id: source.id,
            source_key_version: opened.key_version,
        })
    }
}

#[cfg(test)]
mod retry_tests {
    use std::cell::Cell;

    use cryptoki::context::Function;
    use cryptoki::error::{Error as CkError, RvError};

    use super::*;

    fn device(rv: RvError) -> HsmError {
        HsmError::Device {
            operation: "C_GenerateKey",
            source: CkError::Pkcs11(rv, Function::GenerateKey),
        }
    }

    #[test]
    fn spec_13_3_9_hsm_transient_failures_are_retried_with_backoff() {
        let (calls, seen) = (Cell::new(0), Cell::new(0));
        let waits = std::cell::RefCell::new(Vec::new());
        let r = with_retries(
            || {
                calls.set(calls.get() + 1);
                if calls.get() < 3 {
                    Err(device(RvError::GeneralError))
                } else {
                    Ok(7)
                }
            },
            |_, _| seen.set(seen.get() + 1),
            |d| waits.borrow_mut().push(d),
        );
        assert_eq!(r.unwrap(), 7);
        assert_eq!((calls.get(), seen.get()), (3, 2));
        assert_eq!(*waits.borrow(), [HSM_BACKOFF_FIRST, HSM_BACKOFF_FIRST * 2]);

        // Lasting failures end after the last attempt; a permanent one at once.
        calls.set(0);
        let r: Result<(), _> = with_retries(
            || {
                calls.set(calls.get() + 1);
                Err(device(RvError::FunctionFailed))
            },
            |_, _| {},
            |_| {},
        );
        assert!(r.is_err());
        assert_eq!(calls.get(), HSM_ATTEMPTS);
        calls.set(0);
        let r: Result<(), _> = with_retries(
            || {
                calls.set(calls.get() + 1);
                Err(device(RvError::AttributeValueInvalid))
            },
            |_, _| {},
            |_| {},
        );
        assert!(r.is_err());
        assert_eq!(calls.get(), 1);
    }
}

#[cfg(test)]
mod flaky_tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use cryptoki::context::Function;
    use cryptoki::error::{Error as CkError, RvError};

    use super::*;
    use crate::backend::UnavailableBackend;
    use crate::envelope::WrappedKey;

    /// A token that fails C_GenerateKey `failures` times, as SoftHSM did under concurrent
    /// project creation; everything else is the unavailable backend's.
    struct Flaky {
        failures: AtomicU32,
        /// Calls of the search-free first attempt.
        new_roots: AtomicU32,
        inner: UnavailableBackend,
    }

    impl KeyBackend for Flaky {
        fn kind(&self) -> BackendKind {
            BackendKind::Pkcs11
        }
        fn ensure_project_root(&self, _: Uuid) -> Result<(), HsmError> {
            if self.failures.load(Ordering::SeqCst) == 0 {
                return Ok(());
            }
            self.failures.fetch_sub(1, Ordering::SeqCst);
            Err(HsmError::Device {
                operation: "C_GenerateKey",
                source: CkError::Pkcs11(RvError::GeneralError, Function::GenerateKey),
            })
        }
        fn create_new_project_root(&self, p: Uuid) -> Result<(), HsmError> {
            self.new_roots.fetch_add(1, Ordering::SeqCst);
            self.ensure_project_root(p)
        }
        fn destroy_project_root(&self, p: Uuid) -> Result<(), HsmError> {
            self.inner.destroy_project_root(p)
        }
        fn generate_key_material(&self, id: &MaterialId) -> Result<WrappedKey, HsmError> {
            self.inner.generate_key_material(id)
        }
        fn encrypt(
            &self,
            i: &MaterialId,
            w: &WrappedKey,
            n: &[u8; 12],
            a: &[u8],
            p: &[u8],
        ) -> Result<Vec<u8>, HsmError> {
            self.inner.encrypt(i, w, n, a, p)
        }
        fn decrypt(
            &self,
            i: &MaterialId,
            w: &WrappedKey,
            n: &[u8; 12],
            a: &[u8],
            s: &[u8],
        ) -> Result<Zeroizing<Vec<u8>>, HsmError> {
            self.inner.decrypt(i, w, n, a, s)
        }
        fn random(&self, out: &mut [u8]) -> Result<(), HsmError> {
            self.inner.random(out)
        }
        fn forget(&self, ids: &[MaterialId]) {
            self.inner.forget(ids)
        }
    }

    fn flaky(failures: u32) -> Arc<Flaky> {
        Arc::new(Flaky {
            failures: AtomicU32::new(failures),
            new_roots: AtomicU32::new(0),
            inner: UnavailableBackend::new("test"),
        })
    }

    fn service(failures: u32) -> KeyService {
        KeyService::new(flaky(failures))
    }

    /// Only the first attempt skips the search: it is not idempotent, so a retry after it
    /// failed half-way must look at what is there (the idempotent path).
    #[test]
    fn spec_14_2_3_new_project_roots_retry_through_the_idempotent_path() {
        let b = flaky(2);
        let s = KeyService::new(b.clone());
        s.create_new_project_root(Uuid::new_v4())
            .expect("made after two retries");
        assert_eq!(b.new_roots.load(Ordering::SeqCst), 1);
        assert_eq!(s.error_count(), 2);
    }

    #[test]
    fn spec_13_3_9_project_roots_survive_transient_token_failures_and_are_counted() {
        let s = service(2);
        s.create_project_root(Uuid::new_v4()).expect("made after two retries");
        assert_eq!(s.error_count(), 2);
        assert_eq!(s.fault(), None, "the success cleared the fault");

        let s = service(HSM_ATTEMPTS + 1);
        let e = s.create_project_root(Uuid::new_v4()).unwrap_err();
        assert_eq!(e.http_status(), 500, "{e}");
        assert_eq!(s.error_count(), u64::from(HSM_ATTEMPTS));
        let fault = s.fault().expect("the failure is held for /v1/health");
        assert!(fault.reason.contains("C_GenerateKey"), "{}", fault.reason);
    }
}
