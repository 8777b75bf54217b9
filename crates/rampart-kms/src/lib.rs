//! Keys and certificates (spec 12.4, 13.3, 12.3.1).
//!
//! * [`ca`]: the internal certificate authorities (infrastructure and tenant), certificate
//!   issuance, CRLs; [`chain`]: chain checks of imported third-party certificates;
//!   [`hsm_signer`]: a CA key held in the HSM for rcgen; [`project_ca`]: each project's
//!   issuing CA under the tenant root, name-constrained to the project's zones.
//! * [`pkcs11`]: the PKCS#11 backend (any module by path) holding per-project root keys;
//!   [`softhsm`]: the embedded SoftHSM2 default under `DATA_DIR/hsm/`.
//! * [`envelope`]: ciphertext envelope, encryption context and wrapped-key formats (pure).
//! * [`lifecycle`]: customer key states, versions, rotation and deletion (pure).
//! * [`service`]: encrypt, decrypt, generate-data-key, re-encrypt, rotate, destroy.
//! * [`storage`]: the [`storage::KeyStore`] boundary where customer keys are kept (no SQL here).

pub mod backend;
pub mod ca;
pub mod chain;
pub mod envelope;
pub mod error;
pub mod hsm_signer;
pub mod lifecycle;
pub mod monitor;
pub mod pkcs11;
pub mod project_ca;
pub mod service;
#[cfg(any(test, feature = "insecure-software-backend"))]
pub mod soft;
pub mod softhsm;
pub mod storage;
#[cfg(any(test, feature = "testing"))]
pub mod testutil;

#[cfg(test)]
mod service_tests;

pub use backend::{BackendKind, KeyBackend, UnavailableBackend};
pub use ca::{CaError, CertificateAuthority, IssuedCertificate};
pub use envelope::{EncryptionContext, WrappedKey};
pub use error::{HsmError, KmsError};
pub use lifecycle::{Key, KeyState, KeyStateName, Maintenance};
pub use pkcs11::{Pkcs11Backend, Pkcs11Config};
pub use service::{KeyAuditFacts, KeyOperation, KeyService};
pub use softhsm::EmbeddedSoftHsm;
