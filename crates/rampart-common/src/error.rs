//! The one public error of Rampart and its mapping to HTTP.
//!
//! Every API failure becomes `{"error":{"code":"snake_case","message":"...","details":{...}}}`
//! with the status of API.md. Internal failures never show their cause to the client (it may
//! hold paths, SQL or secrets); the cause goes to the run log under the request id instead.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Serialize;
use serde_json::Value;

pub type Result<T, E = Error> = std::result::Result<T, E>;

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Malformed request: bad JSON, unknown field, wrong content type.
    #[error("{0}")]
    InvalidRequest(String),
    /// Well-formed request whose values are not acceptable.
    #[error("{message}")]
    Validation { message: String, details: Option<Value> },
    /// No usable credential was presented (missing, expired or revoked token).
    #[error("{0}")]
    Unauthenticated(String),
    /// A login failed. One variant, one message, whatever the reason, so nobody can tell
    /// an unknown user from a wrong password or a locked account.
    #[error("invalid credentials")]
    InvalidCredentials,
    /// 401 with a code of its own (`invalid_join_token`, `client_certificate_required`, ...).
    #[error("{message}")]
    Unauthorized { code: &'static str, message: String },
    /// 403 with a code of its own (`forbidden`, `password_change_required`, `mfa_required`).
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The request body is larger than the configured limit.
    #[error("{0}")]
    TooLarge(String),
    #[error("{message}")]
    PolicyViolation { message: String, details: Option<Value> },
    #[error("too many requests")]
    RateLimited { retry_after_s: u64 },
    #[error("{0}")]
    Unavailable(String),
    /// Any status with a code of its own, for domains whose refusals each need a distinct
    /// code (`key_disabled`, `context_mismatch`, `hsm_unavailable`, ...). The message is public.
    #[error("{message}")]
    Coded {
        status: StatusCode,
        code: &'static str,
        message: String,
    },
    /// Anything unexpected. `context` says what was being done; the source stays server-side.
    #[error("internal error while {context}")]
    Internal {
        context: String,
        #[source]
        source: BoxError,
    },
}

impl Error {
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidRequest(message.into())
    }

    pub fn validation(message: impl Into<String>) -> Self {
        Error::Validation {
            message: message.into(),
            details: None,
        }
    }

    /// A validation failure that names the offending field in `details.field`.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        Error::Validation {
            message: message.into(),
            details: Some(serde_json::json!({ "field": field })),
        }
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Error::NotFound(what.into())
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Error::Conflict(message.into())
    }

    pub fn coded(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Error::Coded {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Error::Forbidden {
            code: "forbidden",
            message: message.into(),
        }
    }

    pub fn internal(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Internal {
            context: context.into(),
            source: source.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Error::InvalidRequest(_) | Error::Validation { .. } => StatusCode::BAD_REQUEST,
            Error::Unauthenticated(_) | Error::InvalidCredentials | Error::Unauthorized { .. } => {
                StatusCode::UNAUTHORIZED
            }
            Error::Forbidden { .. } => StatusCode::FORBIDDEN,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::PolicyViolation { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Error::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Coded { status, .. } => *status,
            Error::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidRequest(_) => "invalid_request",
            Error::Validation { .. } => "validation_failed",
            Error::Unauthenticated(_) => "unauthenticated",
            Error::InvalidCredentials => "invalid_credentials",
            Error::Unauthorized { code, .. } | Error::Forbidden { code, .. } => code,
            Error::NotFound(_) => "not_found",
            Error::Conflict(_) => "conflict",
            Error::TooLarge(_) => "payload_too_large",
            Error::PolicyViolation { .. } => "policy_violation",
            Error::RateLimited { .. } => "rate_limited",
            Error::Unavailable(_) => "unavailable",
            Error::Coded { code, .. } => code,
            Error::Internal { .. } => "internal_error",
        }
    }

    /// The message a client may see.
    pub fn public_message(&self) -> String {
        match self {
            Error::Internal { .. } => {
                "internal error; the operator can find the cause in the run log under this request's X-Request-Id"
                    .to_string()
            }
            other => other.to_string(),
        }
    }

    pub fn details(&self) -> Option<&Value> {
        match self {
            Error::Validation { details, .. } | Error::PolicyViolation { details, .. } => details.as_ref(),
            _ => None,
        }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorObject {
                code: self.code().to_string(),
                message: self.public_message(),
                details: self.details().cloned(),
            },
        }
    }
}

/// Wire form of an error, shared with the client so both sides agree.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorObject,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorObject {
    /// Stable `snake_case` code, e.g. `validation_failed`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<Value>,
}

/// The `code` of an error response, in the response's extensions (the audit trail reads it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode(pub &'static str);

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        let code = ErrorCode(self.code());
        if let Error::Internal { context, source } = &self {
            // Display of the chain only: sources are our own or library errors, never request data.
            tracing::error!(context = %context, error = %ErrorChain(source.as_ref()), "request failed");
        }
        let mut response = (status, axum::Json(self.body())).into_response();
        response.extensions_mut().insert(code);
        if let Error::RateLimited { retry_after_s } = self {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from(retry_after_s.max(1)));
        }
        response
    }
}

/// Displays an error with all its sources: `a: b: c`.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_error_hides_its_cause_from_the_client() {
        let err = Error::internal("reading the node table", "disk I/O error at /secret/path");
        let body = serde_json::to_string(&err.body()).unwrap();
        assert!(!body.contains("/secret/path"), "{body}");
        assert!(body.contains("internal_error"));
        assert_eq!(err.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn invalid_credentials_has_one_message() {
        assert_eq!(Error::InvalidCredentials.code(), "invalid_credentials");
        assert_eq!(Error::InvalidCredentials.public_message(), "invalid credentials");
    }

    #[test]
    fn coded_errors_carry_their_own_status_and_code() {
        let err = Error::coded(StatusCode::CONFLICT, "key_disabled", "the key is disabled");
        assert_eq!(err.status(), StatusCode::CONFLICT);
        let body = err.body();
        assert_eq!(body.error.code, "key_disabled");
        assert_eq!(body.error.message, "the key is disabled");
    }

    #[test]
    fn field_errors_name_the_field() {
        let body = Error::field("limit", "limit must be between 1 and 1000").body();
        assert_eq!(body.error.code, "validation_failed");
        assert_eq!(body.error.details.unwrap()["field"], "limit");
    }
}
