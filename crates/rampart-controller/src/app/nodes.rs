//! Nodes as the operator sees them, and join tokens.

use crate::audit::operations::Operation;
use crate::auth::Principal;
use crate::state::AppState;
use rampart_api::agent::JoinTokenParts;
use rampart_api::{JoinToken, JoinTokenCreate, List, Node};
use rampart_common::page::{PageParams, finish_page};
use rampart_common::{Error, names};
use rampart_db::nodes;
use rampart_iam::secrets;
use uuid::Uuid;

pub const LIST_NODES: Operation = Operation::new("node.list", "node");

/// List nodes, ordered by name.
pub async fn list_nodes(state: &AppState, principal: &Principal, page: PageParams) -> Result<List<Node>, Error> {
    principal.require_system(state, "system.read")?;
    let page = page.validate()?;
    let mut conn = state.db.conn().await?;
    let rows = nodes::list(&mut conn, page.after.as_deref(), page.limit + 1).await?;
    let (items, next) = finish_page(rows, page.limit, |n| n.name.clone());
    Ok(List { items, next })
}

pub const GET_NODE: Operation = Operation::new("node.get", "node").target("id");

/// One node.
pub async fn get_node(state: &AppState, principal: &Principal, id: Uuid) -> Result<Node, Error> {
    principal.require_system(state, "system.read")?;
    let mut conn = state.db.conn().await?;
    nodes::get(&mut conn, id)
        .await?
        .ok_or_else(|| Error::not_found("no such node"))
}

pub const DELETE_NODE: Operation = Operation::new("node.delete", "node").target("id");

/// Remove a node. Its certificate is refused from the next request on; the agent must join
/// again with a new token.
pub async fn delete_node(state: &AppState, principal: &Principal, id: Uuid) -> Result<(), Error> {
    principal.require_system(state, "system.manage")?;
    let mut tx = state.db.begin().await?;
    if !nodes::delete(&mut tx, id).await? {
        return Err(Error::not_found("no such node"));
    }
    crate::kms::node_removed(&mut tx, id, state.now()).await?;
    rampart_db::Db::commit(tx).await?;
    tracing::warn!(node = %id, by = %principal.user.name, "node removed");
    state.notify_node_changes();
    Ok(())
}

pub const CREATE_JOIN_TOKEN: Operation = Operation::new("join_token.create", "join_token");

/// Issue a one-time join token for `rampart agent --join`.
pub async fn create_join_token(
    state: &AppState,
    principal: &Principal,
    req: JoinTokenCreate,
) -> Result<JoinToken, Error> {
    principal.require_system(state, "system.manage")?;
    let token = issue_join_token(state, req.node_name, req.ttl_s, Some(principal.user.id)).await?;
    tracing::info!(token_id = %token.id, by = %principal.user.name, node_name = ?token.node_name, "join token issued");
    Ok(token)
}

/// Creates a join token (also used by `rampart up` for its local agent).
pub async fn issue_join_token(
    state: &AppState,
    node_name: Option<String>,
    ttl_s: Option<u64>,
    created_by: Option<Uuid>,
) -> Result<JoinToken, Error> {
    if let Some(name) = &node_name {
        names::validate_node_name(name)
            .map_err(|_| Error::field("node_name", "node_name must be a lowercase host name"))?;
    }
    let ttl = ttl_s.unwrap_or(state.config.nodes.join_token_ttl_s);
    if !(60..=604_800).contains(&ttl) {
        return Err(Error::field("ttl_s", "ttl_s must be between 60 and 604800 seconds"));
    }
    let id = Uuid::new_v4();
    let secret = secrets::random_secret();
    let now = state.now();
    let expires_at = now + time::Duration::seconds(ttl as i64);
    let mut conn = state.db.conn().await?;
    nodes::insert_join_token(
        &mut conn,
        id,
        &secrets::hash_secret(secret.expose()),
        node_name.as_deref(),
        created_by,
        expires_at,
        now,
    )
    .await?;
    let ca_sha256 = state.ca.sha256();
    Ok(JoinToken {
        id,
        token: JoinTokenParts::format(id, secret.expose(), &ca_sha256).into(),
        expires_at,
        ca_sha256,
        node_name,
    })
}

/// Why key operations fail, if they do: no HSM could be opened, or the last call into it failed
/// with a device fault (rechecked at most every few seconds while held).
pub async fn hsm_failure(state: &AppState) -> Option<String> {
    if state.kms.backend_kind() == rampart_kms::BackendKind::Unavailable {
        return Some("the HSM is unavailable: key operations fail closed".into());
    }
    let service = state.kms.service.clone();
    let fault = tokio::task::spawn_blocking(move || service.recheck_fault(std::time::Duration::from_secs(2)))
        .await
        .ok()
        .flatten()?;
    Some(format!(
        "HSM calls fail since {}: {}",
        rampart_common::time::rfc3339(fault.since),
        fault.reason
    ))
}

/// Why the periodic system backup is not being made, while it fails run after run.
fn system_backup_failure(state: &AppState) -> Option<String> {
    state
        .tasks
        .snapshot()
        .iter()
        .find(|t| t.name == crate::tasks::system_backup::TASK && t.state == "failing")
        .map(|t| {
            format!(
                "the periodic system backup failed {} time(s) in a row (see the run log and the audit trail)",
                t.consecutive_failures
            )
        })
}

/// Ready for traffic: the database answers and takes writes, and the HSM serves keys.
pub async fn readiness(state: &AppState) -> Result<(), Error> {
    state.db.ping().await?;
    if let Some(reason) = state.db.write_failure().await {
        return Err(Error::Unavailable(format!("database writes fail: {reason}")));
    }
    match hsm_failure(state).await {
        Some(reason) => Err(Error::Unavailable(reason)),
        None => Ok(()),
    }
}

pub const HEALTH: Operation = Operation::new("health.get", "health");
pub const READYZ: Operation = Operation::new("readyz.get", "readyz");
pub const OPENAPI: Operation = Operation::new("openapi_json.get", "openapi_json");

/// Liveness of the control plane and its nodes (`verbose`: with this controller's background
/// tasks).
pub async fn health(state: &AppState, verbose: bool) -> Result<rampart_api::Health, Error> {
    let (ready, total) = {
        let mut conn = state.db.conn().await?;
        nodes::counts(&mut conn).await?
    };
    let mut reasons = Vec::new();
    if let Some(r) = state.db.write_failure().await {
        reasons.push(format!("database writes fail: {r}"));
    }
    if let Some(r) = hsm_failure(state).await {
        reasons.push(r);
    }
    if let Some(r) = system_backup_failure(state) {
        reasons.push(r);
    }
    let reason = (!reasons.is_empty()).then(|| reasons.join("; "));
    Ok(rampart_api::Health {
        status: if reason.is_some() { "degraded" } else { "ok" }.into(),
        version: rampart_common::VERSION.into(),
        nodes: rampart_api::NodeCounts { ready, total },
        reason,
        tasks: if verbose { state.tasks.snapshot() } else { Vec::new() },
    })
}
