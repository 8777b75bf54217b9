//! Nodes as the operator sees them, and join tokens.

use crate::app;
use crate::auth::Principal;
use crate::http::{ApiJson, ApiPath, ApiQuery};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use rampart_api::{JoinToken, JoinTokenCreate, List, Node};
use rampart_common::Error;
use rampart_common::error::ErrorBody;
use rampart_common::page::PageParams;
use uuid::Uuid;

/// List nodes, ordered by name.
#[utoipa::path(get, path = "/v1/nodes", tag = "nodes", params(PageParams), security(("bearer" = [])),
    responses((status = 200, body = List<Node>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_nodes(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Result<axum::Json<List<Node>>, Error> {
    app::nodes::list_nodes(&state, &principal, page).await.map(axum::Json)
}

/// One node.
#[utoipa::path(get, path = "/v1/nodes/{id}", tag = "nodes", params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = Node), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_node(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<axum::Json<Node>, Error> {
    app::nodes::get_node(&state, &principal, id).await.map(axum::Json)
}

/// Remove a node. Its certificate is refused from the next request on; the agent must join
/// again with a new token.
#[utoipa::path(delete, path = "/v1/nodes/{id}", tag = "nodes", params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Node removed"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_node(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, Error> {
    app::nodes::delete_node(&state, &principal, id)
        .await
        .map(|()| StatusCode::NO_CONTENT)
}

/// Issue a one-time join token for `rampart agent --join`.
#[utoipa::path(post, path = "/v1/nodes/join-tokens", tag = "nodes", request_body = JoinTokenCreate, security(("bearer" = [])),
    responses((status = 201, body = JoinToken), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create_join_token(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(req): ApiJson<JoinTokenCreate>,
) -> Result<(StatusCode, axum::Json<JoinToken>), Error> {
    app::nodes::create_join_token(&state, &principal, req)
        .await
        .map(|v| (StatusCode::CREATED, axum::Json(v)))
}
