//! Request and response bodies of `/v1`. Requests reject unknown fields (400 `invalid_request`).

use rampart_common::Sensitive;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

/// A page of a list: `next` is the cursor of the following page, null on the last one.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct List<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok` when the database answers and takes writes; `degraded` while writes fail (a full
    /// disk): then `reason` says why and `/readyz` answers 503.
    pub status: String,
    pub version: String,
    pub nodes: NodeCounts,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// With `?verbose`: the controller's background tasks, each with its own period and health.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<TaskHealth>,
}

/// One background task of a controller (`GET /v1/health?verbose`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct TaskHealth {
    pub name: String,
    /// Runs only on the controller holding the `reconcilers` lease.
    pub leader_only: bool,
    pub period_s: u64,
    /// `ok` (its last pass succeeded), `failing` (its last pass failed: see the run log),
    /// `standby` (leader-only on a controller that is not the leader), `starting` (no pass yet).
    pub state: String,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_success_at: Option<OffsetDateTime>,
    pub consecutive_failures: u64,
    /// Times the supervisor restarted it after a panic.
    pub restarts: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct NodeCounts {
    pub ready: u64,
    pub total: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Joined, heartbeat not yet received.
    Joining,
    /// Heartbeats arrive within `nodes.heartbeat_timeout_s`.
    Ready,
    /// No heartbeat for longer than `nodes.heartbeat_timeout_s`.
    Unreachable,
    /// Kept out of scheduling by an operator or a failed check.
    Quarantined,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Joining => "joining",
            NodeState::Ready => "ready",
            NodeState::Unreachable => "unreachable",
            NodeState::Quarantined => "quarantined",
        }
    }

    pub fn parse(s: &str) -> Option<NodeState> {
        Some(match s {
            "joining" => NodeState::Joining,
            "ready" => NodeState::Ready,
            "unreachable" => NodeState::Unreachable,
            "quarantined" => NodeState::Quarantined,
            _ => return None,
        })
    }
}

/// What an agent reports about its host.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HostFacts {
    pub hostname: String,
    pub kernel: String,
    pub os: String,
    pub cpus: u32,
    pub memory_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Node {
    pub id: Uuid,
    pub name: String,
    pub state: NodeState,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_heartbeat: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub joined_at: OffsetDateTime,
    /// Generation of the node's desired state.
    pub generation: i64,
    /// Last generation the agent reported as applied.
    pub applied_generation: i64,
    pub agent_version: Option<String>,
    pub host: Option<HostFacts>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub certificate_expires_at: OffsetDateTime,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinTokenCreate {
    /// Bind the token to this node name; the agent may then only join under it.
    #[serde(default)]
    pub node_name: Option<String>,
    /// Lifetime in seconds (60 to 604800; default `nodes.join_token_ttl_s`).
    #[serde(default)]
    pub ttl_s: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JoinToken {
    pub id: Uuid,
    /// One-time secret for `rampart agent --join`; shown only in this response. It embeds the
    /// SHA-256 of the CA certificate, so the agent can authenticate the controller.
    pub token: Sensitive,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: OffsetDateTime,
    /// SHA-256 of the CA certificate (DER), hex.
    pub ca_sha256: String,
    pub node_name: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// With `password`; absent when logging in with an application credential.
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub password: Option<Sensitive>,
    /// Domain name or id (default `default`).
    #[serde(default)]
    pub domain: Option<String>,
    /// Project name or id to scope the token to.
    #[serde(default)]
    pub project: Option<String>,
    /// Current TOTP code (or an unused recovery code), when the account has MFA.
    #[serde(default)]
    pub totp: Option<Sensitive>,
    /// Log in with an application credential instead of a user name and password.
    #[serde(default)]
    pub application_credential: Option<crate::identity::ApplicationCredentialLogin>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct UserRef {
    pub id: Uuid,
    pub name: String,
    pub domain: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ProjectRef {
    pub id: Uuid,
    pub name: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TokenScope {
    /// Every call the token's roles allow.
    Full,
    /// Only MFA enrollment and logout.
    MfaEnrollment,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenResponse {
    pub token: Sensitive,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: OffsetDateTime,
    pub user: UserRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<ProjectRef>,
    pub roles: Vec<String>,
    pub scope: TokenScope,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub password_expires_at: Option<OffsetDateTime>,
    pub warnings: Vec<String>,
}

/// What `POST /v1/auth/sessions` returns. The session token itself travels only in the
/// `rampart_session` cookie (`Secure; HttpOnly; SameSite=Strict`), out of reach of scripts;
/// every state-changing call made with the cookie must send `csrf_token` as `X-CSRF-Token`
/// from a same-origin page.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SessionResponse {
    pub csrf_token: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: OffsetDateTime,
    pub user: UserRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<ProjectRef>,
    pub roles: Vec<String>,
    pub scope: TokenScope,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub password_expires_at: Option<OffsetDateTime>,
    pub warnings: Vec<String>,
}

/// What `GET /v1/auth/tokens/current` says about the caller's token.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    pub user: UserRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<ProjectRef>,
    pub roles: Vec<String>,
    pub scope: TokenScope,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: OffsetDateTime,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    pub username: String,
    #[serde(default)]
    pub domain: Option<String>,
    pub current_password: Sensitive,
    pub new_password: Sensitive,
    /// A current TOTP code or an unused recovery code: required when the account has a second
    /// factor, so a phished password alone cannot take the account over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totp: Option<Sensitive>,
}
