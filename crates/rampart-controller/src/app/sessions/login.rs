//! Opening and ending sessions: login with a password (and second factor) or an application
//! credential, browser sessions, logout.

use std::net::IpAddr;

use rampart_api::{LoginRequest, ProjectRef, SecurityCompliance, TokenResponse, TokenScope, UserRef};
use rampart_common::{Error, Sensitive};
use rampart_db::credentials::{self, AppCredential};
use rampart_db::identity::{self, Domain, NewToken, Project, User};
use rampart_iam::rules::{self, Scope};
use rampart_iam::secrets;
use time::OffsetDateTime;
use uuid::Uuid;

use super::verify::{
    Attempt, check_source, check_user_password, require_second_factor, source_failed, verify_password,
};
use crate::audit::operations::Operation;
use crate::auth::Principal;
use crate::role_expansion::expanded_assignments;
use crate::state::AppState;

/// Lifetime of a token that may only enrol a second factor.
const ENROLLMENT_TOKEN_S: i64 = 900;

fn scope_name(scope: TokenScope) -> &'static str {
    match scope {
        TokenScope::Full => "full",
        TokenScope::MfaEnrollment => "mfa_enrollment",
    }
}

/// The token row to insert for a new session.
struct Issue<'a> {
    user: &'a User,
    project: Option<Uuid>,
    scope: TokenScope,
    methods: &'a [String],
    credential: Option<Uuid>,
    expires_at: OffsetDateTime,
    ip: IpAddr,
}

/// A new random token, stored as its hash.
async fn insert_token(conn: &mut rampart_db::Conn, i: Issue<'_>, now: OffsetDateTime) -> Result<Sensitive, Error> {
    let token = secrets::new_api_token();
    identity::insert_token(
        conn,
        NewToken {
            token_hash: &secrets::hash_secret(token.expose()),
            user_id: i.user.id,
            project_id: i.project,
            scope: scope_name(i.scope),
            methods: i.methods,
            application_credential_id: i.credential,
            expires_at: i.expires_at,
            source_ip: Some(&i.ip.to_string()),
        },
        now,
    )
    .await?;
    Ok(token)
}

/// The project a login asks for: 403 when it does not exist, is disabled, or the user holds
/// no role on it (one answer for all).
async fn login_project(
    conn: &mut rampart_db::Conn,
    user: &User,
    expanded: &[(Scope, String)],
    key: Option<&str>,
) -> Result<Option<Project>, Error> {
    let Some(key) = key else { return Ok(None) };
    let refused = || Error::forbidden("no role on that project, or no such project");
    let p = identity::find_project(conn, user.domain_id, key)
        .await?
        .filter(|p| p.enabled)
        .ok_or_else(refused)?;
    if rules::subject(user.id, expanded, Some(p.id), None)
        .project_roles
        .is_empty()
    {
        return Err(refused());
    }
    Ok(Some(p))
}

/// 403 `password_change_required` (the attempt succeeded: the password was right) when an
/// administrator, the first-use rule or the expiry says the password must change first.
async fn refuse_due_password(
    state: &AppState,
    policy: &SecurityCompliance,
    user: &User,
    attempt: Attempt,
) -> Result<Attempt, Error> {
    let now = state.now();
    let expired = rules::password_expired(policy, user.password_changed_at, now);
    if !(user.password_change_required || expired) {
        return Ok(attempt);
    }
    crate::audit::note_detail(
        "reason",
        if expired {
            "password_expired"
        } else {
            "password_change_required"
        },
    );
    attempt.succeed(state).await?;
    Err(Error::Forbidden {
        code: "password_change_required",
        message: if expired {
            "the password has expired: change it with POST /v1/auth/password".into()
        } else {
            "the password must be changed before first use: POST /v1/auth/password".into()
        },
    })
}

pub const LOGIN: Operation = Operation::new("auth.login", "user");

/// Log in: a token for `req`'s credentials (a password, with a second factor when the account
/// has one, or an application credential).
pub async fn login(state: &AppState, ip: IpAddr, req: LoginRequest) -> Result<TokenResponse, Error> {
    if let Some(cred) = &req.application_credential {
        return login_with_credential(state, ip, cred.id, cred.secret.expose()).await;
    }
    let Some(password) = req.password.as_ref() else {
        return Err(Error::field(
            "password",
            "give username and password, or application_credential",
        ));
    };
    let policy = state.compliance().await?;
    let now = state.now();
    let (c, attempt) = check_user_password(state, &req.username, req.domain.as_deref(), password.expose(), ip).await?;
    let user = c.user;
    let attempt = refuse_due_password(state, &policy, &user, attempt).await?;
    let expanded = {
        let mut conn = state.db.conn().await?;
        expanded_assignments(&mut conn, user.id).await?
    };
    let mut methods = vec!["password".to_string()];
    let mut scope = TokenScope::Full;
    let attempt = if user.mfa_enrolled() {
        let attempt = require_second_factor(state, &policy, &user, attempt, req.totp.as_ref(), "login").await?;
        methods.push("totp".into());
        crate::audit::note_login_actor(
            user.id,
            &user.name,
            &c.domain_name,
            rampart_audit::AuthMethod::PasswordTotp,
        );
        attempt
    } else {
        if rules::mfa_required(&policy, &expanded) {
            scope = TokenScope::MfaEnrollment;
        }
        attempt
    };
    attempt.succeed(state).await?;
    let mut conn = state.db.begin().await?;
    identity::record_success(&mut conn, user.id, now).await?;
    let project = login_project(&mut conn, &user, &expanded, req.project.as_deref()).await?;
    let s = rules::subject(user.id, &expanded, project.as_ref().map(|p| p.id), None);
    let lifetime = match scope {
        TokenScope::Full => time::Duration::seconds(policy.token_expiration_s as i64),
        TokenScope::MfaEnrollment => time::Duration::seconds(ENROLLMENT_TOKEN_S),
    };
    // A token never outlives its user's validity window.
    let expires_at = rules::token_expiry(now, lifetime, &[user.valid_until]);
    let issue = Issue {
        user: &user,
        project: project.as_ref().map(|p| p.id),
        scope,
        methods: &methods,
        credential: None,
        expires_at,
        ip,
    };
    let token = insert_token(&mut conn, issue, now).await?;
    rampart_db::Db::commit(conn).await?;
    let password_expires_at = rules::password_expires_at(&policy, user.password_changed_at);
    let mut warnings: Vec<String> = rules::expiry_warning(&policy, password_expires_at, now)
        .into_iter()
        .collect();
    crate::audit::note_detail("scope", scope_name(scope));
    if scope == TokenScope::MfaEnrollment {
        warnings.push(
            "your roles require a second factor: enrol one with POST /v1/auth/mfa/totp, then log in again".into(),
        );
    }
    tracing::info!(user = %user.name, scope = ?scope, mfa = methods.len() > 1, "login succeeded");
    Ok(TokenResponse {
        token,
        expires_at,
        user: UserRef {
            id: user.id,
            name: user.name,
            domain: c.domain_name,
        },
        project: project.map(|p| ProjectRef { id: p.id, name: p.name }),
        roles: rules::role_names(&s),
        scope,
        password_expires_at,
        warnings,
    })
}

pub const BROWSER_SESSION: Operation = Operation::new("auth.login", "user");

/// Log in for a browser: as [`login`] (people only), with how long the session cookie lives.
pub async fn browser_session(state: &AppState, ip: IpAddr, req: LoginRequest) -> Result<(TokenResponse, i64), Error> {
    if req.application_credential.is_some() {
        return Err(Error::field(
            "application_credential",
            "browser sessions are for people: log in with username and password",
        ));
    }
    let now = state.now();
    crate::audit::note_detail("browser_session", true);
    let t = login(state, ip, req).await?;
    let max_age = (t.expires_at - now).whole_seconds().max(0);
    Ok((t, max_age))
}

/// An application credential with its owner and the owner's domain, if all three exist.
async fn find_credential(state: &AppState, id: Uuid) -> Result<Option<(AppCredential, User, Domain)>, Error> {
    let mut conn = state.db.conn().await?;
    let Some(cred) = credentials::get(&mut conn, id).await? else {
        return Ok(None);
    };
    let Some(user) = identity::user_by_id(&mut conn, cred.user_id).await? else {
        return Ok(None);
    };
    let domain = identity::find_domain(&mut conn, &user.domain_id.to_string()).await?;
    Ok(domain.map(|d| (cred, user, d)))
}

/// Whether a credential whose secret was right may be used now: its owner enabled, inside the
/// validity window and allowed sources, with no password change due (a password that must
/// change stops the account's credentials too, or they would outlive incident response), and
/// the credential itself not expired.
fn credential_usable(
    policy: &SecurityCompliance,
    cred: &AppCredential,
    user: &User,
    domain: &Domain,
    ip: IpAddr,
    now: OffsetDateTime,
) -> bool {
    user.enabled
        && domain.enabled
        && rules::within_validity(user.valid_from, user.valid_until, now)
        && !rules::password_change_due(policy, user.password_change_required, user.password_changed_at, now)
        && cred.expires_at.is_none_or(|e| e > now)
        && rules::source_allowed(policy, &domain.allowed_source_cidrs, &user.allowed_source_cidrs, ip)
}

async fn login_with_credential(state: &AppState, ip: IpAddr, id: Uuid, secret: &str) -> Result<TokenResponse, Error> {
    let policy = state.compliance().await?;
    let now = state.now();
    check_source(state, &policy, ip)?;
    let Some((cred, user, domain)) = find_credential(state, id).await? else {
        verify_password(secret, None).await?;
        source_failed(state, &policy, ip);
        crate::audit::note_detail("reason", "unknown_application_credential");
        return Err(Error::InvalidCredentials);
    };
    crate::audit::note_login_actor(
        user.id,
        &user.name,
        &domain.name,
        rampart_audit::AuthMethod::ApplicationCredential,
    );
    crate::audit::note_detail("application_credential", cred.id.to_string());
    let Some(attempt) = Attempt::reserve(state, &policy, &user, ip).await? else {
        verify_password(secret, None).await?;
        crate::audit::note_detail("reason", "locked");
        source_failed(state, &policy, ip);
        return Err(Error::InvalidCredentials);
    };
    if !verify_password(secret, Some(cred.secret_hash.clone())).await? {
        attempt
            .fail(state, &policy, "wrong application credential secret")
            .await?;
        return Err(Error::InvalidCredentials);
    }
    if !credential_usable(&policy, &cred, &user, &domain, ip, now) {
        tracing::warn!(credential = %cred.id, user = %user.name, "application credential refused");
        attempt.release(state).await?;
        return Err(Error::InvalidCredentials);
    }
    attempt.succeed(state).await?;
    let mut conn = state.db.begin().await?;
    identity::record_success(&mut conn, user.id, now).await?;
    credentials::touch(&mut conn, cred.id, now).await?;
    let project = identity::project_by_id(&mut conn, cred.project_id)
        .await?
        .filter(|p| p.enabled)
        .ok_or(Error::InvalidCredentials)?;
    let expanded = expanded_assignments(&mut conn, user.id).await?;
    let s = rules::subject(user.id, &expanded, Some(project.id), Some(&cred.roles));
    let lifetime = time::Duration::seconds(policy.token_expiration_s as i64);
    let expires_at = rules::token_expiry(now, lifetime, &[cred.expires_at, user.valid_until]);
    let methods = ["application_credential".to_string()];
    let issue = Issue {
        user: &user,
        project: Some(project.id),
        scope: TokenScope::Full,
        methods: &methods,
        credential: Some(cred.id),
        expires_at,
        ip,
    };
    let token = insert_token(&mut conn, issue, now).await?;
    rampart_db::Db::commit(conn).await?;
    tracing::info!(user = %user.name, credential = %cred.id, "login with an application credential");
    Ok(TokenResponse {
        token,
        expires_at,
        user: UserRef {
            id: user.id,
            name: user.name,
            domain: domain.name,
        },
        project: Some(ProjectRef {
            id: project.id,
            name: project.name,
        }),
        roles: rules::role_names(&s),
        scope: TokenScope::Full,
        password_expires_at: None,
        warnings: vec![],
    })
}

pub const CURRENT_TOKEN: Operation = Operation::new("auth.token.get", "token").telemetry();
pub const LOGOUT: Operation = Operation::new("auth.logout", "token");

/// Log out: the caller's token is dead everywhere at once.
pub async fn logout(state: &AppState, principal: &Principal) -> Result<(), Error> {
    let mut conn = state.db.conn().await?;
    identity::revoke_token(&mut conn, principal.token_id, state.now()).await?;
    tracing::info!(user = %principal.user.name, "logout");
    Ok(())
}
