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
    backend: Arc<dyn KeyBackend>,
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
        KeyService { backend }
    }

    pub fn backend_kind(&self) -> BackendKind {
        self.backend.kind()
    }

    pub fn backend(&self) -> &Arc<dyn KeyBackend> {
        &self.backend
    }

    /// Creates the project's root keys in the HSM; call when a project is created (and it is
    /// done lazily by [`KeyService::create_key`] too).
    pub fn create_project_root(&self, project: Uuid) -> Result<(), KmsError> {
        self.backend
            .ensure_project_root(project)
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
