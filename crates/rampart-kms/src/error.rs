//! Errors of the key service.
//!
//! [`HsmError`] is what a key backend reports; [`KmsError`] is what a key operation reports to
//! the API layer, each variant with the stable code and HTTP status the API uses. Neither ever
//! carries key material, a PIN, plaintext or ciphertext: only ids, versions and the PKCS#11
//! return code, so both may be logged and shown as they are.

use uuid::Uuid;

/// A failure of the key backend (the HSM or its stand-ins).
#[derive(Debug, thiserror::Error)]
pub enum HsmError {
    /// The HSM cannot be used at all: module missing, token absent, login refused, or the
    /// service runs without a configured HSM. Key operations fail closed on it.
    #[error("the HSM is unavailable: {reason}")]
    Unavailable {
        reason: String,
        #[source]
        source: Option<cryptoki::error::Error>,
    },
    /// The project has no root key in the HSM (never created, or destroyed).
    #[error("project {project} has no root key in the HSM")]
    RootKeyMissing { project: Uuid },
    /// More than one HSM object carries the label of a project root key: refusing to guess.
    #[error("the HSM holds {count} objects labelled {label}")]
    AmbiguousRootKey { label: String, count: usize },
    /// Wrapped key material failed authentication: altered material, altered associated data
    /// (project, key id, version) or the root key of another project.
    #[error("wrapped key material failed authentication")]
    WrappedKeyInvalid,
    /// Wrapped key material in a format this backend does not produce.
    #[error("wrapped key material has unknown format {format:#04x}")]
    WrappedKeyFormat { format: u8 },
    /// AEAD authentication of data failed (tampered ciphertext or associated data).
    #[error("ciphertext failed authentication")]
    AuthenticationFailed,
    /// The HSM refused or failed an operation.
    #[error("HSM operation {operation} failed")]
    Device {
        operation: &'static str,
        #[source]
        source: cryptoki::error::Error,
    },
    #[error("HSM configuration: {0}")]
    Config(String),
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl HsmError {
    /// A failure that may pass on its own (a busy or briefly failing token: SoftHSM answers
    /// concurrent object creation with CKR_GENERAL_ERROR / CKR_FUNCTION_FAILED at times), worth
    /// a retry with backoff; a missing key or bad input is not.
    pub fn is_transient(&self) -> bool {
        use cryptoki::error::{Error as CkError, RvError};
        let rv = match self {
            HsmError::Device { source, .. } => source,
            HsmError::Unavailable {
                source: Some(source), ..
            } => source,
            _ => return false,
        };
        matches!(
            rv,
            CkError::Pkcs11(
                RvError::GeneralError
                    | RvError::FunctionFailed
                    | RvError::DeviceError
                    | RvError::DeviceMemory
                    | RvError::HostMemory
                    | RvError::SessionCount
                    | RvError::OperationActive
                    | RvError::CantLock,
                _
            )
        )
    }

    pub(crate) fn device(operation: &'static str) -> impl FnOnce(cryptoki::error::Error) -> HsmError {
        move |source| HsmError::Device { operation, source }
    }

    pub(crate) fn io<'a>(
        action: &'static str,
        path: &'a std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> HsmError + 'a {
        move |source| HsmError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The state a refused lifecycle operation found the key in.
pub use crate::lifecycle::KeyStateName;

/// Why a key operation was refused or failed, with the code the API returns.
#[derive(Debug, thiserror::Error)]
pub enum KmsError {
    /// A request value out of range (deletion window, rotation period, context, sizes).
    #[error("{message}")]
    Validation { field: &'static str, message: String },
    #[error("the key is disabled")]
    KeyDisabled,
    #[error("the key is pending deletion")]
    KeyPendingDeletion,
    #[error("the key is destroyed")]
    KeyDestroyed,
    /// A lifecycle transition that the current state does not allow.
    #[error("cannot {operation} a key that is {state}")]
    InvalidKeyState {
        operation: &'static str,
        state: KeyStateName,
    },
    #[error("key version {version} is below the minimum decryption version {minimum}")]
    VersionBelowMinimum { version: u32, minimum: u32 },
    #[error("the key has no version {version}")]
    UnknownKeyVersion { version: u32 },
    /// Not a ciphertext of this service, or altered: one error whatever the cause, so nothing is
    /// learnt about the plaintext.
    #[error("the ciphertext is not valid")]
    InvalidCiphertext,
    /// The encryption context differs from the one the ciphertext was made with.
    #[error("the encryption context does not match the ciphertext")]
    ContextMismatch,
    /// The ciphertext names another key than the one addressed.
    #[error("the ciphertext was made with another key")]
    KeyMismatch,
    /// The key backend is down or not configured: the operation fails closed.
    #[error("the key service is unavailable")]
    Unavailable {
        #[source]
        source: HsmError,
    },
    /// Anything unexpected; the source stays in the run log.
    #[error("internal key service error while {context}")]
    Internal {
        context: &'static str,
        #[source]
        source: HsmError,
    },
}

impl KmsError {
    pub fn validation(field: &'static str, message: impl Into<String>) -> Self {
        KmsError::Validation {
            field,
            message: message.into(),
        }
    }

    /// Stable snake_case code of the API error body.
    pub fn code(&self) -> &'static str {
        match self {
            KmsError::Validation { .. } => "validation_failed",
            KmsError::KeyDisabled => "key_disabled",
            KmsError::KeyPendingDeletion => "key_pending_deletion",
            KmsError::KeyDestroyed => "key_destroyed",
            KmsError::InvalidKeyState { .. } => "invalid_key_state",
            KmsError::VersionBelowMinimum { .. } => "version_below_minimum",
            KmsError::UnknownKeyVersion { .. } => "unknown_key_version",
            KmsError::InvalidCiphertext => "invalid_ciphertext",
            KmsError::ContextMismatch => "context_mismatch",
            KmsError::KeyMismatch => "key_mismatch",
            KmsError::Unavailable { .. } => "hsm_unavailable",
            KmsError::Internal { .. } => "internal_error",
        }
    }

    /// HTTP status of the API error.
    pub fn http_status(&self) -> u16 {
        match self {
            KmsError::Validation { .. }
            | KmsError::VersionBelowMinimum { .. }
            | KmsError::UnknownKeyVersion { .. }
            | KmsError::InvalidCiphertext
            | KmsError::ContextMismatch
            | KmsError::KeyMismatch => 400,
            KmsError::KeyDisabled
            | KmsError::KeyPendingDeletion
            | KmsError::KeyDestroyed
            | KmsError::InvalidKeyState { .. } => 409,
            KmsError::Unavailable { .. } => 503,
            KmsError::Internal { .. } => 500,
        }
    }

    /// The field a validation error is about, for `details.field`.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            KmsError::Validation { field, .. } => Some(field),
            _ => None,
        }
    }

    /// Sorts a backend error from a key operation: an unusable HSM fails closed as
    /// `hsm_unavailable`, authentication failures become `invalid_ciphertext`, anything else is
    /// internal.
    pub(crate) fn from_backend(context: &'static str) -> impl FnOnce(HsmError) -> KmsError {
        move |e| match e {
            HsmError::Unavailable { .. } | HsmError::RootKeyMissing { .. } => KmsError::Unavailable { source: e },
            HsmError::AuthenticationFailed => KmsError::InvalidCiphertext,
            other => KmsError::Internal { context, source: other },
        }
    }
}

impl From<KmsError> for rampart_common::Error {
    /// The API error: each refusal with its own code and status; validation errors name their
    /// field; internal causes stay in the run log.
    fn from(e: KmsError) -> Self {
        use rampart_common::Error;
        match e {
            KmsError::Validation { field, message } => Error::field(field, message),
            KmsError::Internal { .. } => Error::internal("running a key operation", e),
            KmsError::Unavailable { ref source } => {
                // The cause (module path, return code) is for the operator, not the caller.
                tracing::error!(error = %rampart_common::error::ErrorChain(source), "key operation failed closed: the HSM is unavailable");
                Error::coded(
                    http::StatusCode::SERVICE_UNAVAILABLE,
                    e.code(),
                    "the key service is unavailable (HSM); key operations fail closed",
                )
            }
            other => Error::coded(
                http::StatusCode::from_u16(other.http_status()).unwrap_or(http::StatusCode::BAD_REQUEST),
                other.code(),
                other.to_string(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_13_3_4_every_refusal_has_its_own_code() {
        let all = [
            KmsError::validation("pending_days", "x"),
            KmsError::KeyDisabled,
            KmsError::KeyPendingDeletion,
            KmsError::KeyDestroyed,
            KmsError::InvalidKeyState {
                operation: "enable",
                state: KeyStateName::Destroyed,
            },
            KmsError::VersionBelowMinimum { version: 1, minimum: 2 },
            KmsError::UnknownKeyVersion { version: 9 },
            KmsError::InvalidCiphertext,
            KmsError::ContextMismatch,
            KmsError::KeyMismatch,
            KmsError::Unavailable {
                source: HsmError::Config("x".into()),
            },
        ];
        let mut codes: Vec<_> = all.iter().map(KmsError::code).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), all.len(), "{codes:?}");
        assert_eq!(KmsError::InvalidCiphertext.http_status(), 400);
        assert_eq!(KmsError::KeyDisabled.http_status(), 409);
        assert_eq!(
            KmsError::Unavailable {
                source: HsmError::Config("x".into())
            }
            .http_status(),
            503
        );
    }

    #[test]
    fn internal_cause_stays_out_of_the_public_body() {
        let e = KmsError::Internal {
            context: "decrypting",
            source: HsmError::Config("/secret/path".into()),
        };
        let public: rampart_common::Error = e.into();
        let body = serde_json::to_string(&public.body()).unwrap();
        assert!(!body.contains("/secret/path"), "{body}");
        let unavailable: rampart_common::Error = KmsError::Unavailable {
            source: HsmError::Config("/secret/module.so".into()),
        }
        .into();
        assert_eq!(unavailable.code(), "hsm_unavailable");
        assert_eq!(unavailable.status().as_u16(), 503);
        assert!(!serde_json::to_string(&unavailable.body()).unwrap().contains("/secret"));
    }

    #[test]
    fn spec_13_3_4_api_errors_keep_the_specific_code() {
        for e in [
            KmsError::KeyDisabled,
            KmsError::KeyPendingDeletion,
            KmsError::ContextMismatch,
            KmsError::InvalidCiphertext,
            KmsError::VersionBelowMinimum { version: 1, minimum: 2 },
        ] {
            let (code, status) = (e.code(), e.http_status());
            let public: rampart_common::Error = e.into();
            assert_eq!(public.code(), code);
            assert_eq!(public.status().as_u16(), status);
        }
    }
}
