//! `Idempotency-Key` on creating calls (issue 13). A client that got no answer, or a 503,
//! cannot tell whether its `POST` made something; with a key it retries safely: the first call
//! with a key runs and its answer is kept 24 h per principal; a retry with the same key and the
//! same request gets that answer again (header `Idempotent-Replayed: true`) and changes
//! nothing; the same key with another request is refused with 409 `idempotency_key_reused`.
//!
//! The layer sits inside the audit middleware: when the call ran but its completion record
//! could not be written (the client got 503), the kept answer is still the handler's own, so
//! the retry learns what was made. Answers of server-side failures (5xx) are not kept: the
//! call made nothing, and a retry runs it again.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use rampart_common::Error;
use rampart_common::error::ErrorChain;
use rampart_db::idempotency::{self, Answer};
use sha2::{Digest, Sha256};

use crate::auth::Principal;
use crate::state::AppState;

pub const HEADER: HeaderName = HeaderName::from_static("idempotency-key");
pub const REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
/// How long an answer is kept.
pub const TTL: time::Duration = time::Duration::hours(24);
/// Answers larger than this are not kept (creating calls answer with one object).
const MAX_KEPT_BYTES: usize = 1 << 20;
const MAX_KEY_LEN: usize = 255;

/// The key of a request: 1 to 255 visible ASCII characters (a UUID is the usual choice).
pub fn parse_key(raw: &HeaderValue) -> Result<String, Error> {
    let bytes = raw.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_KEY_LEN || !bytes.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(Error::coded(
            StatusCode::BAD_REQUEST,
            "invalid_idempotency_key",
            format!("Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters (a UUID, say)"),
        ));
    }
    Ok(String::from_utf8_lossy(bytes).into_owned())
}

/// What makes two requests "the same": method, path with query, body.
pub fn request_hash(method: &Method, path_and_query: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(method.as_str().as_bytes());
    h.update([0]);
    h.update(path_and_query.as_bytes());
    h.update([0]);
    h.update(body);
    hex::encode(h.finalize())
}

/// Who a key belongs to: keys of different principals never meet.
fn principal_of(p: &Principal) -> String {
    match p.application_credential {
        Some(c) => format!("credential:{c}"),
        None => format!("user:{}", p.user.id),
    }
}

/// The sealing context of a kept answer: an answer cannot be moved to another key.
fn context(principal: &str, key: &str) -> String {
    format!("idempotency:{principal}:{key}")
}

pub async fn layer(State(state): State<AppState>, req: Request, next: Next) -> Result<Response, Error> {
    if req.method() != Method::POST {
        return Ok(next.run(req).await);
    }
    let Some(raw) = req.headers().get(HEADER) else {
        return Ok(next.run(req).await);
    };
    let key = parse_key(raw)?;
    let Some(principal) = req.extensions().get::<Principal>().map(principal_of) else {
        return Ok(next.run(req).await);
    };
    let (parts, body) = req.into_parts();
    let limit = state.config.api.request_body_limit_bytes;
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| Error::TooLarge(format!("the request body is larger than {limit} bytes")))?;
    let path = parts.uri.path_and_query().map_or(parts.uri.path(), |p| p.as_str());
    let hash = request_hash(&parts.method, path, &bytes);
    let now = state.now();
    let kept = {
        let mut conn = state.db.conn().await?;
        idempotency::claim(&mut conn, &principal, &key, &hash, now, now - TTL).await?
    };
    match kept {
        None => {}
        Some(k) if k.request_hash != hash => {
            return Err(Error::coded(
                StatusCode::CONFLICT,
                "idempotency_key_reused",
                "this Idempotency-Key was used for another request in the last 24 h; use a new key for a new request",
            ));
        }
        Some(k) => {
            let Some(answer) = k.answer else {
                return Err(Error::coded(
                    StatusCode::CONFLICT,
                    "idempotency_key_in_progress",
                    "the first call with this Idempotency-Key is still running; retry later",
                ));
            };
            return replay(&state, &principal, &key, answer);
        }
    }

    let response = next.run(Request::from_parts(parts, Body::from(bytes))).await;
    let status = response.status();
    if status.is_server_error() {
        forget(&state, &principal, &key).await;
        return Ok(response);
    }
    let (mut parts, body) = response.into_parts();
    let body = match axum::body::to_bytes(body, MAX_KEPT_BYTES).await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "a response too large to keep for its Idempotency-Key");
            forget(&state, &principal, &key).await;
            return Err(Error::internal("keeping the answer of an idempotent call", e));
        }
    };
    let answer = Answer {
        status: status.as_u16(),
        content_type: parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        sealed_body: state.credkey.seal(
            &base64::engine::general_purpose::STANDARD.encode(&body),
            &context(&principal, &key),
        ),
    };
    let kept = async {
        let mut conn = state.db.conn().await?;
        idempotency::keep(&mut conn, &principal, &key, &answer).await
    }
    .await;
    if let Err(e) = kept {
        // The call is done; only a retry of it would run again.
        tracing::error!(error = %ErrorChain(&e), "the answer of an idempotent call was not kept");
    }
    parts.headers.remove(REPLAYED);
    Ok(Response::from_parts(parts, Body::from(body)))
}

async fn forget(state: &AppState, principal: &str, key: &str) {
    let done = async {
        let mut conn = state.db.conn().await?;
        idempotency::release(&mut conn, principal, key).await
    }
    .await;
    if let Err(e) = done {
        tracing::error!(error = %ErrorChain(&e), "an Idempotency-Key of a failed call was not released");
    }
}

fn replay(state: &AppState, principal: &str, key: &str, answer: Answer) -> Result<Response, Error> {
    let body = state
        .credkey
        .open(&answer.sealed_body, &context(principal, key))
        .map_err(|e| Error::internal("opening a kept answer", e))?;
    let body = base64::engine::general_purpose::STANDARD
        .decode(body.expose())
        .map_err(|e| Error::internal("decoding a kept answer", e))?;
    let status = StatusCode::from_u16(answer.status).map_err(|e| Error::internal("a kept answer", e))?;
    let mut response = (status, body).into_response();
    if let Some(ct) = answer.content_type.and_then(|c| HeaderValue::from_str(&c).ok()) {
        response.headers_mut().insert(http::header::CONTENT_TYPE, ct);
    }
    response
        .headers_mut()
        .insert(REPLAYED, HeaderValue::from_static("true"));
    tracing::info!("answered a retry from its Idempotency-Key");
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_13_4_1_idempotency_keys_are_bounded_visible_ascii() {
        assert_eq!(
            parse_key(&HeaderValue::from_static("7d0f3c9e-4d8e-4c47-9a51-2f3d1f0e9b11")).unwrap(),
            "7d0f3c9e-4d8e-4c47-9a51-2f3d1f0e9b11"
        );
        for bad in ["", "a b", &"k".repeat(256)] {
            let e = parse_key(&HeaderValue::from_str(bad).unwrap()).unwrap_err();
            assert_eq!(
                (e.status().as_u16(), e.code()),
                (400, "invalid_idempotency_key"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn spec_13_4_1_the_same_request_hashes_the_same() {
        let a = request_hash(&Method::POST, "/v1/projects", br#"{"name":"a"}"#);
        assert_eq!(a, request_hash(&Method::POST, "/v1/projects", br#"{"name":"a"}"#));
        assert_ne!(a, request_hash(&Method::POST, "/v1/projects", br#"{"name":"b"}"#));
        assert_ne!(a, request_hash(&Method::POST, "/v1/users", br#"{"name":"a"}"#));
    }
}
