//! The agent protocol (`/agent/v1`): join with a one-time token, then mTLS only. The node id
//! comes from the client certificate and nowhere else.

use crate::app;
use crate::http::{ApiJson, ApiQuery};
use crate::server::ConnInfo;
use crate::state::AppState;
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use rampart_api::agent::{AgentStatus, JoinRequest, JoinResponse, NodeConfig, StatusAck};
use rampart_common::Error;
use rampart_common::error::ErrorBody;
use rampart_kms::ca::cert_info;
use serde::Deserialize;
use uuid::Uuid;

/// Enrol a node: trade a join token and a CSR for a client certificate.
#[utoipa::path(post, path = "/agent/v1/join", tag = "agent", request_body = JoinRequest,
    responses(
        (status = 201, body = JoinResponse),
        (status = 400, body = ErrorBody, description = "Bad CSR or node name"),
        (status = 401, body = ErrorBody, description = "invalid_join_token"),
        (status = 409, body = ErrorBody, description = "A node of that name exists"),
    ))]
pub async fn join(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<JoinRequest>,
) -> Result<(StatusCode, axum::Json<JoinResponse>), Error> {
    app::agent::join(&state, req)
        .await
        .map(|v| (StatusCode::CREATED, axum::Json(v)))
}

/// Long-poll for the node's desired state: 200 with the full document as soon as its
/// generation is above `after`, 204 when `nodes.long_poll_timeout_s` passes first.
#[utoipa::path(get, path = "/agent/v1/config", tag = "agent", params(ConfigQuery),
    responses(
        (status = 200, body = NodeConfig),
        (status = 204, description = "No newer generation within the wait"),
        (status = 401, body = ErrorBody, description = "client_certificate_required or unknown_node_certificate"),
    ))]
pub async fn config(
    State(state): State<AppState>,
    NodeIdentity(node): NodeIdentity,
    ApiQuery(q): ApiQuery<ConfigQuery>,
) -> Result<Response, Error> {
    Ok(match app::agent::config(&state, node, q.after.unwrap_or(0)).await? {
        Some(doc) => axum::Json(doc).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

/// Report status; this is also the heartbeat.
#[utoipa::path(put, path = "/agent/v1/status", tag = "agent", request_body = AgentStatus,
    responses((status = 200, body = StatusAck), (status = 401, body = ErrorBody)))]
pub async fn status(
    State(state): State<AppState>,
    NodeIdentity(node): NodeIdentity,
    ApiJson(s): ApiJson<AgentStatus>,
) -> Result<axum::Json<StatusAck>, Error> {
    app::agent::status(&state, node, s).await.map(axum::Json)
}

/// Download an image's bytes, for an instance placed on the calling node (and only then).
#[utoipa::path(get, path = "/agent/v1/images/{id}/data", tag = "agent", params(("id" = Uuid, Path)),
    responses(
        (status = 200, description = "The image bytes", content_type = "application/octet-stream"),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "No such image for this node"),
    ))]
pub async fn image_data(
    State(state): State<AppState>,
    NodeIdentity(node): NodeIdentity,
    crate::http::ApiPath(id): crate::http::ApiPath<Uuid>,
) -> Result<Response, Error> {
    let (file, len) = app::agent::image_data(&state, node, id).await?;
    let stream = futures::stream::unfold(file, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 1 << 20];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    });
    Ok((
        [
            (http::header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (http::header::CONTENT_LENGTH, len.to_string()),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}

/// A node authenticated by its client certificate.
#[derive(Debug, Clone, Copy)]
pub struct NodeIdentity(pub Uuid);

impl FromRequestParts<AppState> for NodeIdentity {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Some(der) = parts.extensions.get::<ConnInfo>().and_then(|c| c.client_cert.clone()) else {
            return Err(Error::Unauthorized {
                code: "client_certificate_required",
                message: "the agent API needs the node's client certificate (mutual TLS)".into(),
            });
        };
        // rustls has verified the chain to our CA; now the certificate must still be the one
        // on record for the node it names (a removed node's certificate is refused at once).
        let unknown = || Error::Unauthorized {
            code: "unknown_node_certificate",
            message: "this certificate belongs to no current node; the node was removed or replaced, join again".into(),
        };
        let info = cert_info(&der).map_err(|_| unknown())?;
        let claimed = info.node_id.ok_or_else(unknown)?;
        app::agent::authenticate_node(state, &info.sha256, claimed)
            .await
            .map(NodeIdentity)
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ConfigQuery {
    /// The generation the agent has; the answer waits until a newer one exists.
    pub after: Option<i64>,
}
