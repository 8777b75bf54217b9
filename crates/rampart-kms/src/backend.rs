//! The key backend: what the key service needs from an HSM. The production implementation is
//! [`crate::pkcs11::Pkcs11Backend`]; [`UnavailableBackend`] is what runs when no HSM could be
//! opened, so every key operation fails closed; a software stand-in exists only for tests
//! (feature `insecure-software-backend`) and is not reachable from configuration.

use zeroize::Zeroizing;

use crate::envelope::{MaterialId, NONCE_LEN, WrappedKey};
use crate::error::HsmError;

/// Which kind of backend serves keys, for the health report and the conformance probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Pkcs11,
    Unavailable,
    InsecureSoftware,
}

/// Root-key custody and the cryptography under customer keys.
///
/// Customer key material exists outside the backend only as [`WrappedKey`], bound to its
/// [`MaterialId`] by associated data the backend computes itself
/// ([`crate::envelope::material_aad`]), so a caller cannot ask for an unbound wrap.
pub trait KeyBackend: Send + Sync + 'static {
    fn kind(&self) -> BackendKind;

    /// Creates the root key(s) of `project` unless present. Idempotent.
    fn ensure_project_root(&self, project: uuid::Uuid) -> Result<(), HsmError>;

    /// Creates the root key(s) of a project whose id was just made, so none can exist yet:
    /// a backend may skip looking for them (a token-wide search costs time linear in the
    /// token's objects). Not idempotent: retries go through [`KeyBackend::ensure_project_root`].
    fn create_new_project_root(&self, project: uuid::Uuid) -> Result<(), HsmError> {
        self.ensure_project_root(project)
    }

    /// Learns the root keys already in the backend in one pass, so that checking many
    /// projects afterwards costs no search each (the start-up check). Returns how many
    /// projects' roots it found.
    fn preload_project_roots(&self) -> Result<usize, HsmError> {
        Ok(0)
    }

    /// Destroys the root key(s) of `project`: every key of the project becomes unusable
    /// (crypto-shredding of a whole project).
    fn destroy_project_root(&self, project: uuid::Uuid) -> Result<(), HsmError>;

    /// Generates new customer key material inside the backend and returns it only wrapped.
    fn generate_key_material(&self, id: &MaterialId) -> Result<WrappedKey, HsmError>;

    /// AES-256-GCM under the customer key version: returns `ciphertext || tag`.
    fn encrypt(
        &self,
        id: &MaterialId,
        wrapped: &WrappedKey,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, HsmError>;

    /// Inverse of [`KeyBackend::encrypt`]; [`HsmError::AuthenticationFailed`] when the tag
    /// does not verify.
    fn decrypt(
        &self,
        id: &MaterialId,
        wrapped: &WrappedKey,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, HsmError>;

    /// Fills `out` from the backend's random generator (the HSM's, for PKCS#11).
    fn random(&self, out: &mut [u8]) -> Result<(), HsmError>;

    /// Drops any cached, unwrapped form of these versions (after destruction).
    fn forget(&self, ids: &[MaterialId]);
}

/// Serves no key: the HSM is required but could not be opened, or is not configured. Key
/// operations answer `hsm_unavailable`; nothing falls back to software.
#[derive(Debug, Clone)]
pub struct UnavailableBackend {
    reason: String,
}

impl UnavailableBackend {
    pub fn new(reason: impl Into<String>) -> Self {
        UnavailableBackend { reason: reason.into() }
    }

    fn err(&self) -> HsmError {
        HsmError::Unavailable {
            reason: self.reason.clone(),
            source: None,
        }
    }
}

impl KeyBackend for UnavailableBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Unavailable
    }

    fn ensure_project_root(&self, _: uuid::Uuid) -> Result<(), HsmError> {
        Err(self.err())
    }

    fn destroy_project_root(&self, _: uuid::Uuid) -> Result<(), HsmError> {
        Err(self.err())
    }

    fn generate_key_material(&self, _: &MaterialId) -> Result<WrappedKey, HsmError> {
        Err(self.err())
    }

    fn encrypt(&self, _: &MaterialId, _: &WrappedKey, _: &[u8; 12], _: &[u8], _: &[u8]) -> Result<Vec<u8>, HsmError> {
        Err(self.err())
    }

    fn decrypt(
        &self,
        _: &MaterialId,
        _: &WrappedKey,
        _: &[u8; 12],
        _: &[u8],
        _: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        Err(self.err())
    }

    fn random(&self, _: &mut [u8]) -> Result<(), HsmError> {
        Err(self.err())
    }

    fn forget(&self, _: &[MaterialId]) {}
}
