//! The agent protocol (`/agent/v1`): join with a one-time token, then mTLS only. The node id
//! comes from the client certificate and nowhere else.

use crate::audit::operations::Operation;
use crate::render;
use crate::state::AppState;
use rampart_api::NodeState;
use rampart_api::agent::{AgentStatus, JoinRequest, JoinResponse, JoinTokenParts, NodeConfig, StatusAck};
use rampart_common::{Error, names};
use rampart_db::nodes;
use rampart_iam::secrets;
use std::time::Duration;
use uuid::Uuid;

pub(crate) fn invalid_join_token() -> Error {
    Error::Unauthorized {
        code: "invalid_join_token",
        message: "the join token is unknown, expired, already used, or from another controller; ask for a new one (POST /v1/nodes/join-tokens)".into(),
    }
}

pub const JOIN: Operation = Operation::new("node.join", "node");

/// Enrol a node: trade a join token and a CSR for a client certificate.
pub async fn join(state: &AppState, req: JoinRequest) -> Result<JoinResponse, Error> {
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
    Ok(JoinResponse {
        node_id,
        node_name: req.name,
        certificate: cert_pem,
        ca_certificate: state.ca.cert_pem().to_string(),
    })
}

/// The node `node` may present the certificate of fingerprint `sha256` that names `claimed`
/// (a removed node's certificate is refused at once; a renewed one takes over when first used);
/// the audit record of the call names the node.
pub async fn authenticate_node(state: &AppState, sha256: &str, claimed: Uuid) -> Result<Uuid, Error> {
    let node = crate::app::certificates::node_for_certificate(state, sha256, claimed).await?;
    crate::audit::note(|slot| {
        slot.actor = Some(rampart_audit::record::Actor {
            id: Some(node.to_string()),
            name: None,
            domain: None,
            auth_method: rampart_audit::record::AuthMethod::Certificate,
        });
        slot.target_id = Some(node.to_string());
    });
    Ok(node)
}

pub const CONFIG: Operation = Operation::new("node.config.get", "node").telemetry();

/// The node's desired state as soon as its generation is above `after`; `None` when
/// `nodes.long_poll_timeout_s` passes first (or the controller shuts down).
pub async fn config(state: &AppState, node: Uuid, after: i64) -> Result<Option<NodeConfig>, Error> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(state.config.nodes.long_poll_timeout_s);
    let mut changes = state.node_changes.subscribe();
    loop {
        changes.mark_unchanged();
        let current = {
            let mut conn = state.db.conn().await?;
            nodes::config(&mut conn, node).await?
        };
        let Some((generation, json)) = current else {
            return Err(node_removed());
        };
        if generation > after {
            let mut doc: NodeConfig =
                serde_json::from_str(&json).map_err(|e| Error::internal("reading a node document", e))?;
            doc.generation = generation;
            return Ok(Some(doc));
        }
        // Woken by a commit in this process; the periodic re-read covers commits made by
        // other controllers sharing the database.
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = tokio::time::sleep_until(deadline) => return Ok(None),
            _ = state.shutdown.cancelled() => return Ok(None),
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
    }
}

fn node_removed() -> Error {
    Error::Unauthorized {
        code: "unknown_node_certificate",
        message: "this node was removed".into(),
    }
}

pub const STATUS: Operation = Operation::new("node.status.report", "node").telemetry();

/// A node's report, which is also its heartbeat: its state (`joining`/`unreachable` → `ready`,
/// each a host event in the trail), its data-plane report (a moved tunnel address republishes
/// every node) and its VMs.
pub async fn status(state: &AppState, node: Uuid, s: AgentStatus) -> Result<StatusAck, Error> {
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
        return Err(node_removed());
    };
    let event = match before {
        NodeState::Joining => Some(("node.ready", "node is ready")),
        NodeState::Unreachable => Some(("node.reachable", "node is reachable again")),
        _ => None,
    };
    if let Some((operation, message)) = event {
        tracing::info!(node = %node, "{message}");
        let name = nodes::get(&mut conn, node).await?.map(|n| n.name).unwrap_or_default();
        crate::audit::events::node_state_event(state, &node.to_string(), &name, operation).await?;
    }
    if !s.errors.is_empty() {
        tracing::warn!(node = %node, errors = ?s.errors, "agent reports errors");
    }
    let moved = match &s.network {
        Some(net) => {
            let json = serde_json::to_string(net).map_err(|e| Error::internal("encoding a network report", e))?;
            rampart_db::network::record_node_status(&mut conn, node, &json, net.tunnel_ip, state.now()).await?
        }
        None => false,
    };
    drop(conn);
    if moved {
        // Other nodes' documents name this node's tunnel address.
        tracing::info!(node = %node, tunnel_ip = ?s.network.as_ref().and_then(|n| n.tunnel_ip), "node tunnel address changed; republishing");
        if crate::publish::all(&state.db, &state.config).await? {
            state.notify_node_changes();
        }
    }
    crate::app::compute::status::record_status(state, node, &s, generation).await?;
    crate::app::volumes::report::record(state, node, s.storage.as_ref()).await?;
    if let Some(storage) = s.storage.as_ref() {
        crate::app::volumes::snapshots::record(state, node, &storage.snapshots).await?;
    }
    Ok(StatusAck { generation })
}

pub const IMAGE_DATA: Operation = Operation::new("image.data.get", "image").target("id");

/// An image's file and length, for an instance placed on the calling node (and only then).
pub async fn image_data(state: &AppState, node: Uuid, id: Uuid) -> Result<(tokio::fs::File, u64), Error> {
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
    tracing::info!(node = %node, image = %id, bytes = len, "serving an image to a node");
    Ok((file, len))
}
