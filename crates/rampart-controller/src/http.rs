//! HTTP plumbing shared by all routes: JSON and query extractors whose rejections speak the
//! API error format, fallbacks, security headers and the per-request span with its request id.

use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::response::{IntoResponse, Response};
use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use rampart_common::Error;
use serde::de::DeserializeOwned;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

use crate::server::ConnInfo;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A JSON body; malformed bodies and unknown fields are 400 `invalid_request`.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(r: JsonRejection) -> Error {
    match r {
        JsonRejection::MissingJsonContentType(_) => {
            Error::invalid("the request body must be JSON with Content-Type: application/json")
        }
        JsonRejection::JsonSyntaxError(e) => Error::invalid(format!(
            "the request body is not valid JSON: {}",
            serde_message(&e.body_text())
        )),
        JsonRejection::JsonDataError(e) => Error::invalid(format!(
            "the request body does not match the schema: {}",
            serde_message(&e.body_text())
        )),
        JsonRejection::BytesRejection(e) if e.status() == http::StatusCode::PAYLOAD_TOO_LARGE => {
            Error::TooLarge("the request body is larger than api.request_body_limit_bytes".into())
        }
        other => Error::invalid(format!("cannot read the request body: {}", other.body_text())),
    }
}

/// serde's message without the offending value: a wrongly typed password must not come back
/// in an error (or land in a log). `invalid type: integer `123`, expected a string` becomes
/// `invalid type: integer, expected a string`.
pub fn serde_message(raw: &str) -> String {
    // axum prefixes its own words ("Failed to deserialize the JSON body into the target type: ").
    let msg = raw.rsplit_once("target type: ").map(|(_, m)| m).unwrap_or(raw);
    let msg = msg
        .strip_prefix("Failed to parse the request body as JSON: ")
        .unwrap_or(msg);
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(pos) = rest.find(['`', '"']) {
        let quote = rest.as_bytes()[pos] as char;
        let before = &rest[..pos];
        out.push_str(before.trim_end_matches(' '));
        let after = &rest[pos + 1..];
        match after.find(quote) {
            Some(end) => {
                let literal = &after[..end];
                // Field names (`unknown field `x``) are ours to show; values are not.
                let is_field_context = before.ends_with("field ")
                    || before.ends_with("variant ")
                    || before.ends_with("one of ")
                    || before.ends_with(", ");
                if is_field_context && literal.len() <= 64 {
                    if !out.ends_with(' ') && !out.is_empty() {
                        out.push(' ');
                    }
                    out.push('`');
                    out.push_str(literal);
                    out.push('`');
                }
                rest = &after[end + 1..];
            }
            None => {
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// Query parameters; unknown or malformed ones are 400.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => Err(Error::invalid(format!(
                "bad query parameters: {}",
                serde_message(&e.body_text())
            ))),
            Err(other) => Err(Error::invalid(other.body_text())),
        }
    }
}

/// A path parameter; a malformed id is 400 rather than axum's plain-text error.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(ApiPath(v)),
            Err(PathRejection::FailedToDeserializePathParams(_)) => {
                Err(Error::invalid("a path parameter is malformed (ids are UUIDs)"))
            }
            Err(other) => Err(Error::invalid(other.body_text())),
        }
    }
}

/// The connection of the request (peer address, client certificate).
pub struct Conn(pub ConnInfo);

impl<S: Send + Sync> FromRequestParts<S> for Conn {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<ConnInfo>().cloned().map(Conn).ok_or_else(|| {
            Error::internal(
                "reading connection info",
                "request did not come through the TLS listener",
            )
        })
    }
}

pub async fn not_found() -> Response {
    Error::not_found("no such API path").into_response()
}

pub async fn method_not_allowed() -> Response {
    let mut r = Error::InvalidRequest("this method is not allowed on this path".into()).into_response();
    *r.status_mut() = http::StatusCode::METHOD_NOT_ALLOWED;
    r
}

/// Applies the layers every response gets: request id (always ours, echoed in
/// `X-Request-Id`), the request span, and security headers (HSTS, no caching of API data,
/// no sniffing, no framing).
pub fn common_layers(router: axum::Router, hsts_max_age_s: u64) -> axum::Router {
    let hsts = HeaderValue::from_str(&format!("max-age={hsts_max_age_s}; includeSubDomains")).expect("valid header");
    router
        .layer(SetResponseHeaderLayer::overriding(header::STRICT_TRANSPORT_SECURITY, hsts))
        .layer(SetResponseHeaderLayer::if_not_present(header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
        .layer(SetResponseHeaderLayer::overriding(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")))
        .layer(SetResponseHeaderLayer::overriding(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")))
        .layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        ))
        .layer(SetResponseHeaderLayer::overriding(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &http::Request<_>| {
                    let request_id = req
                        .extensions()
                        .get::<RequestId>()
                        .and_then(|id| id.header_value().to_str().ok())
                        .unwrap_or("-")
                        .to_string();
                    let peer = req.extensions().get::<ConnInfo>().map(|c| c.peer.ip().to_string()).unwrap_or_default();
                    tracing::info_span!("request", request_id = %request_id, method = %req.method(), path = %req.uri().path(), peer = %peer)
                })
                .on_request(())
                .on_response(|res: &http::Response<_>, latency: Duration, _span: &tracing::Span| {
                    tracing::info!(status = res.status().as_u16(), latency_ms = latency.as_secs_f64() * 1000.0, "request done");
                })
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        // A client's own X-Request-Id is dropped: ids in logs and audit records are ours.
        .layer(axum::middleware::map_request(|mut req: Request| async move {
            req.headers_mut().remove(REQUEST_ID);
            req
        }))
}

#[cfg(test)]
mod tests {
    use super::serde_message;

    #[test]
    fn spec_13_4_7_serde_errors_never_echo_values() {
        let m = serde_message(
            "Failed to deserialize the JSON body into the target type: password: invalid type: integer `1234567`, expected a string at line 1 column 30",
        );
        assert_eq!(
            m,
            "password: invalid type: integer, expected a string at line 1 column 30"
        );
        let m = serde_message("invalid value: string \"hunter2\", expected one of `a`, `b`");
        assert!(!m.contains("hunter2"), "{m}");
        let m = serde_message("unknown field `passwrd`, expected one of `username`, `password`");
        assert_eq!(m, "unknown field `passwrd`, expected one of `username`, `password`");
    }
}
