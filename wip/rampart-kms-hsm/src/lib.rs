//! The HSM-backed key service core of rampart-kms (spec 12.4, 13.3, 12.3.1).
//!
//! * [`pkcs11`]: the PKCS#11 backend (any module by path) holding per-project root keys;
//!   [`softhsm`]: the embedded SoftHSM2 default under `DATA_DIR/hsm/`.
//! * [`envelope`]: ciphertext envelope, encryption context and wrapped-key formats (pure).
//! * [`lifecycle`]: customer key states, versions, rotation and deletion (pure).
//! * [`service`]: encrypt, decrypt, generate-data-key, re-encrypt, rotate, destroy.
//! * [`storage`]: database rows and DDL; [`hsm_signer`]: the CA key held in the HSM for rcgen.

pub mod backend;
pub mod envelope;
pub mod error;
pub mod hsm_signer;
pub mod lifecycle;
pub mod pkcs11;
pub mod service;
#[cfg(any(test, feature = "insecure-software-backend"))]
pub mod soft;
pub mod softhsm;
pub mod storage;

#[cfg(test)]
mod service_tests;
#[cfg(test)]
mod testutil;

pub use backend::{BackendKind, KeyBackend, UnavailableBackend};
pub use envelope::{EncryptionContext, WrappedKey};
pub use error::{HsmError, KmsError};
pub use lifecycle::{Key, KeyState, KeyStateName, Maintenance};
pub use pkcs11::{Pkcs11Backend, Pkcs11Config};
pub use service::{KeyAuditFacts, KeyOperation, KeyService};
pub use softhsm::EmbeddedSoftHsm;
