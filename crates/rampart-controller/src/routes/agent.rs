//! The agent protocol (`/agent/v1`): join with a one-time token, then mTLS only. The node id
//! comes from the client certificate and nowhere else.

use std::time::Duration;

use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use rampart_api::NodeState;
use rampart_api::agent::{AgentStatus, JoinRequest, JoinResponse, JoinTokenParts, NodeConfig, StatusAck};
use rampart_common::error::ErrorBody;
use rampart_common::{Error, names};
use rampart_db::nodes;
use rampart_iam::secrets;
use rampart_kms::ca::cert_info;
use serde::Deserialize;
use uuid::Uuid;

use crate::http::{ApiJson, ApiQuery};
use crate::render;
use crate::server::ConnInfo;
use crate::state::AppState;

fn invalid_join_token() -> Error {
    Error::Unauthorized {
        code: "invalid_join_token",
        message: "the join token is unknown, expired, already used, or from another controller; ask for a new one (POST /v1/nodes/join-tokens)".into(),
    }
}

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
    let refuse = |reason: &str, id: Option<Uuid>| {
        tracing::warn!(reason, token_id = ?id, node_name = %req.name, "join refused");
        invalid_join_token()
    };
    let Some(parts) = JoinTokenParts::parse(req.token.expose()) else {
        return Err(refuse("malformed token", None));
    };
    names::validate_node_name(&req.name)?;
    if parts.ca_sha256 != state.ca.sha256() {
        return Err(refuse("token pins another CA", Some(parts.id)));
    }
    let now = state.now();
    let mut tx = state.db.begin().await?;
    let Some(row) = nodes::join_token(&mut tx, parts.id).await? else {
        return Err(refuse("unknown token", Some(parts.id)));
    };
    if !secrets::verify_secret(&parts.secret, &row.secret_hash) {
        return Err(refuse("wrong secret", Some(parts.id)));
    }
    if row.used_at.is_some() {
        return Err(refuse("token already used", Some(parts.id)));
    }
    if row.expires_at <= now {
        return Err(refuse("token expired", Some(parts.id)));
    }
    if let Some(bound) = &row.node_name
        && bound != &req.name
    {
        return Err(Error::field(
            "name",
            format!("this join token is for the node named {bound:?}"),
        ));
    }
    let node_id = Uuid::new_v4();
    let (cert_pem, cert_der, not_after) = state
        .ca
        .sign_node_csr(&req.csr, node_id, state.config.nodes.agent_certificate_days, now)
        .map_err(|e| Error::field("csr", e.to_string()))?;
    if !nodes::consume_join_token(&mut tx, row.id, node_id, now).await? {
        return Err(refuse("token used concurrently", Some(parts.id)));
    }
    let sha256 = rampart_api::tls::sha256_hex(&cert_der);
    let config = render::node_config_json(node_id, &req.name, &state.config.nodes);
    nodes::insert_node(
        &mut tx,
        nodes::NewNode {
            id: node_id,
            name: &req.name,
            cert_sha256: &sha256,
            cert_not_after: not_after,
            config: &config,
        },
        now,
    )
    .await?;
    crate::kms::record_agent_certificate(&mut tx, node_id, &cert_pem, &cert_der, now).await?;
    rampart_db::Db::commit(tx).await?;
    tracing::info!(node = %node_id, name = %req.name, token_id = %row.id, "node joined");
    state.notify_node_changes();
    Ok((
        StatusCode::CREATED,
        axum::Json(JoinResponse {
            node_id,
            node_name: req.name,
            certificate: cert_pem,
            ca_certificate: state.ca.cert_pem().to_string(),
        }),
    ))
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
        // Revoked certificates are refused at once; a renewed one takes over when first used.
        let node = crate::kms::node_for_certificate(state, &info.sha256, claimed).await?;
        // The audit record of the call names the node that authenticated with its certificate.
        crate::audit::note(|slot| {
            slot.actor = Some(rampart_audit::record::Actor {
                id: Some(node.to_string()),
                name: None,
                domain: None,
                auth_method: rampart_audit::record::AuthMethod::Certificate,
            });
            slot.target_id = Some(node.to_string());
        });
        Ok(NodeIdentity(node))
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ConfigQuery {
    /// The generation the agent has; the answer waits until a newer one exists.
    pub after: Option<i64>,
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
    let after = q.after.unwrap_or(0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(state.config.nodes.long_poll_timeout_s);
    let mut changes = state.node_changes.subscribe();
    loop {
        changes.mark_unchanged();
        let current = {
            let mut conn = state.db.conn().await?;
            nodes::config(&mut conn, node).await?
        };
        let Some((generation, json)) = current else {
            return Err(Error::Unauthorized {
                code: "unknown_node_certificate",
                message: "this node was removed".into(),
            });
        };
        if generation > after {
            let mut doc: NodeConfig =
                serde_json::from_str(&json).map_err(|e| Error::internal("reading a node document", e))?;
            doc.generation = generation;
            return Ok(axum::Json(doc).into_response());
        }
        // Woken by a commit in this process; the periodic re-read covers commits made by
        // other controllers sharing the database.
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = tokio::time::sleep_until(deadline) => return Ok(StatusCode::NO_CONTENT.into_response()),
            _ = state.shutdown.cancelled() => return Ok(StatusCode::NO_CONTENT.into_response()),
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
    }
}

/// Report status; this is also the heartbeat.
#[utoipa::path(put, path = "/agent/v1/status", tag = "agent", request_body = AgentStatus,
    responses((status = 200, body = StatusAck), (status = 401, body = ErrorBody)))]
pub async fn status(
    State(state): State<AppState>,
    NodeIdentity(node): NodeIdentity,
    ApiJson(s): ApiJson<AgentStatus>,
) -> Result<axum::Json<StatusAck>, Error> {
    if s.errors.len() > 100 || s.errors.iter().any(|e| e.len() > 4096) {
        return Err(Error::field("errors", "at most 100 errors of at most 4096 bytes each"));
    }
    let host = serde_json::to_string(&s.host).map_err(|e| Error::internal("encoding host facts", e))?;
    let errors = serde_json::to_string(&s.errors).map_err(|e| Error::internal("encoding errors", e))?;
    let mut conn = state.db.conn().await?;
    let status = nodes::Status {
        applied_generation: s.applied_generation,
        agent_version: &s.agent_version,
        host_json: &host,
        errors_json: &errors,
    };
    let Some((generation, before)) = nodes::record_status(&mut conn, node, status, state.now()).await? else {
        return Err(Error::Unauthorized {
            code: "unknown_node_certificate",
            message: "this node was removed".into(),
        });
    };
    let event = match before {
        NodeState::Joining => Some(("node.ready", "node is ready")),
        NodeState::Unreachable => Some(("node.reachable", "node is reachable again")),
        _ => None,
    };
    if let Some((operation, message)) = event {
        tracing::info!(node = %node, "{message}");
        let name = nodes::get(&mut conn, node).await?.map(|n| n.name).unwrap_or_default();
        crate::audit::events::node_state_event(&state, &node.to_string(), &name, operation).await?;
    }
    if !s.errors.is_empty() {
        tracing::warn!(node = %node, errors = ?s.errors, "agent reports errors");
    }
    if let Some(net) = &s.network {
        let json = serde_json::to_string(net).map_err(|e| Error::internal("encoding a network report", e))?;
        let moved = rampart_db::network::record_node_status(&mut conn, node, &json, net.tunnel_ip, state.now()).await?;
        if moved {
            drop(conn);
            // Other nodes' documents name this node's tunnel address.
            tracing::info!(node = %node, tunnel_ip = ?net.tunnel_ip, "node tunnel address changed; republishing");
            if crate::publish::all(&state.db, &state.config).await? {
                state.notify_node_changes();
            }
        } else {
            drop(conn);
        }
    } else {
        drop(conn);
    }
    crate::compute::record_status(&state, node, &s, generation).await?;
    Ok(axum::Json(StatusAck { generation }))
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
    let mut conn = state.db.conn().await?;
    let not_found = || Error::not_found("no such image for this node");
    if !rampart_db::compute::image_needed_on_node(&mut conn, id, node).await? {
        return Err(not_found());
    }
    let image = rampart_db::compute::image_by_id(&mut conn, id)
        .await?
        .ok_or_else(not_found)?;
    drop(conn);
    let Some(key) = image.storage_key.filter(|_| image.status == "active") else {
        return Err(not_found());
    };
    let dir = state
        .config
        .compute
        .image_dir
        .clone()
        .unwrap_or_else(|| state.data_dir.join("images"));
    let file = tokio::fs::File::open(dir.join(&key))
        .await
        .map_err(|e| Error::internal("opening an image", e))?;
    let len = file
        .metadata()
        .await
        .map_err(|e| Error::internal("opening an image", e))?
        .len();
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
    tracing::info!(node = %node, image = %id, bytes = len, "serving an image to a node");
    Ok((
        [
            (http::header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (http::header::CONTENT_LENGTH, len.to_string()),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}
