//! Login, logout, password change.

use axum::extract::State;
use axum::http::StatusCode;
use rampart_api::{LoginRequest, PasswordChange, ProjectRef, TokenInfo, TokenResponse, TokenScope, UserRef};
use rampart_common::Error;
use rampart_common::error::ErrorBody;
use rampart_db::identity::{self, NewToken, User};
use rampart_db::meta;
use rampart_iam::policy::SecurityCompliance;
use rampart_iam::{password, secrets};

use crate::auth::{Principal, effective_roles};
use crate::http::{ApiJson, Conn};
use crate::state::AppState;

pub const BOOTSTRAP_ADMIN_KEY: &str = "bootstrap_admin_user_id";

/// Finds the user and checks the password, spending the same time whether or not the user
/// exists. `None` for every kind of failure.
async fn check_password(
    state: &AppState,
    username: &str,
    domain: Option<&str>,
    password: &str,
) -> Result<Option<User>, Error> {
    let mut conn = state.db.conn().await?;
    let domain = identity::find_domain(&mut conn, domain.unwrap_or("default"))
        .await?
        .filter(|d| d.enabled);
    let user = match &domain {
        Some(d) => identity::find_user(&mut conn, d.id, username).await?,
        None => None,
    };
    drop(conn);
    let stored = user
        .as_ref()
        .filter(|u| u.enabled)
        .and_then(|u| u.password_hash.clone());
    let password = password.to_string();
    let ok = tokio::task::spawn_blocking(move || match stored {
        Some(hash) => password::verify(&password, &hash),
        None => {
            password::verify_dummy(&password);
            false
        }
    })
    .await
    .map_err(|e| Error::internal("verifying a password", e))?;
    Ok(if ok { user } else { None })
}

/// Log in: issue a token.
#[utoipa::path(post, path = "/v1/auth/tokens", tag = "auth", request_body = LoginRequest,
    responses(
        (status = 201, body = TokenResponse, description = "Token issued"),
        (status = 401, body = ErrorBody, description = "invalid_credentials: wrong password, unknown, locked or disabled user (one answer for all)"),
        (status = 403, body = ErrorBody, description = "password_change_required, or no role on the project"),
    ))]
pub async fn login(
    State(state): State<AppState>,
    Conn(conn_info): Conn,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<(StatusCode, axum::Json<TokenResponse>), Error> {
    let Some(user) = check_password(&state, &req.username, req.domain.as_deref(), req.password.expose()).await? else {
        tracing::info!(username = %req.username, "login failed");
        return Err(Error::InvalidCredentials);
    };
    if user.password_change_required {
        return Err(Error::Forbidden {
            code: "password_change_required",
            message: "the password must be changed before first use: POST /v1/auth/password".into(),
        });
    }
    let policy = SecurityCompliance::default();
    let now = state.now();
    let mut tx = state.db.begin().await?;
    let domain = identity::find_domain(&mut tx, &user.domain_id.to_string())
        .await?
        .ok_or_else(|| Error::internal("reading the user's domain", "domain vanished"))?;
    let project = match &req.project {
        None => None,
        Some(key) => {
            let p = identity::find_project(&mut tx, user.domain_id, key)
                .await?
                .filter(|p| p.enabled);
            Some(p.ok_or_else(|| Error::forbidden("no role on that project, or no such project"))?)
        }
    };
    let roles = effective_roles(&mut tx, user.id, user.domain_id, project.as_ref().map(|p| p.id)).await?;
    if project.is_some() && roles.project.is_empty() {
        return Err(Error::forbidden("no role on that project, or no such project"));
    }
    let token = secrets::new_api_token();
    let expires_at = now + time::Duration::seconds(policy.token_expiration_s as i64);
    let source_ip = conn_info.peer.ip().to_string();
    identity::insert_token(
        &mut tx,
        NewToken {
            token_hash: &secrets::hash_secret(token.expose()),
            user_id: user.id,
            project_id: project.as_ref().map(|p| p.id),
            scope: "full",
            expires_at,
            source_ip: Some(&source_ip),
        },
        now,
    )
    .await?;
    rampart_db::Db::commit(tx).await?;
    tracing::info!(user = %user.name, "login succeeded");
    Ok((
        StatusCode::CREATED,
        axum::Json(TokenResponse {
            token,
            expires_at,
            user: UserRef {
                id: user.id,
                name: user.name,
                domain: domain.name,
            },
            project: project.map(|p| ProjectRef { id: p.id, name: p.name }),
            roles: roles.all,
            scope: TokenScope::Full,
            password_expires_at: None,
            warnings: vec![],
        }),
    ))
}

/// Change a password (works without a token: first use, expired password).
#[utoipa::path(post, path = "/v1/auth/password", tag = "auth", request_body = PasswordChange,
    responses(
        (status = 204, description = "Password changed; every token of the user is revoked"),
        (status = 401, body = ErrorBody, description = "invalid_credentials"),
        (status = 422, body = ErrorBody, description = "policy_violation; details.rules names each broken rule"),
    ))]
pub async fn change_password(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<PasswordChange>,
) -> Result<StatusCode, Error> {
    let Some(user) = check_password(
        &state,
        &req.username,
        req.domain.as_deref(),
        req.current_password.expose(),
    )
    .await?
    else {
        tracing::info!(username = %req.username, "password change refused: bad credentials");
        return Err(Error::InvalidCredentials);
    };
    let policy = SecurityCompliance::default().password_policy();
    let mut violations = policy.check(req.new_password.expose(), &user.name);
    if req.new_password.expose() == req.current_password.expose() {
        violations.push(password::Violation {
            rule: "not_current",
            message: "must differ from the current password".into(),
        });
    }
    if !violations.is_empty() {
        return Err(Error::PolicyViolation {
            message: "the new password does not meet the password policy".into(),
            details: Some(serde_json::json!({ "rules": violations })),
        });
    }
    let new_password = req.new_password.expose().to_string();
    let hash = tokio::task::spawn_blocking(move || password::hash(&new_password))
        .await
        .map_err(|e| Error::internal("hashing a password", e))?
        .map_err(|e| Error::internal("hashing a password", e))?;
    let now = state.now();
    let mut tx = state.db.begin().await?;
    identity::set_password(&mut tx, user.id, &hash, false, now).await?;
    let revoked = identity::revoke_user_tokens(&mut tx, user.id, now).await?;
    let bootstrap_admin = meta::get(&mut tx, BOOTSTRAP_ADMIN_KEY).await?;
    rampart_db::Db::commit(tx).await?;
    tracing::info!(user = %user.name, revoked_tokens = revoked, "password changed");
    if bootstrap_admin.as_deref() == Some(user.id.to_string().as_str()) {
        // The one-time password is spent: do not leave it lying around.
        let file = state.data_dir.join(crate::bootstrap::PASSWORD_FILE);
        match std::fs::remove_file(&file) {
            Ok(()) => {
                tracing::info!(path = %file.display(), "removed the spent bootstrap password file")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %file.display(), error = %e, "cannot remove the bootstrap password file")
            }
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's token.
#[utoipa::path(get, path = "/v1/auth/tokens/current", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = TokenInfo), (status = 401, body = ErrorBody)))]
pub async fn current_token(principal: Principal) -> axum::Json<TokenInfo> {
    axum::Json(TokenInfo {
        user: principal.user,
        project: principal.project,
        roles: principal.roles,
        scope: principal.scope,
        expires_at: principal.expires_at,
    })
}

/// Log out: the token is dead everywhere at once.
#[utoipa::path(delete, path = "/v1/auth/tokens/current", tag = "auth", security(("bearer" = [])),
    responses((status = 204, description = "Token revoked"), (status = 401, body = ErrorBody)))]
pub async fn logout(State(state): State<AppState>, principal: Principal) -> Result<StatusCode, Error> {
    let mut conn = state.db.conn().await?;
    identity::revoke_token(&mut conn, principal.token_id, state.now()).await?;
    tracing::info!(user = %principal.user.name, "logout");
    Ok(StatusCode::NO_CONTENT)
}
