//! Login (password, second factor, application credentials), logout, password change, MFA
//! enrolment, recovery codes and application credentials.

use axum::extract::State;
use axum::http::StatusCode;
use rampart_api::SecurityCompliance;
use rampart_api::{
    ApplicationCredential, ApplicationCredentialCreate, List, LoginRequest, PasswordChange, ProjectRef, RecoveryCodes,
    SessionResponse, TokenInfo, TokenResponse, TokenScope, TotpConfirm, TotpEnrollment, UserRef,
};
use rampart_common::error::ErrorBody;
use rampart_common::page::{PageParams, finish_page};
use rampart_common::{Error, Sensitive, names};
use rampart_db::credentials::{self, AppCredential};
use rampart_db::identity::{self, NewToken, User};
use rampart_db::meta;
use rampart_iam::authz::Target;
use rampart_iam::{secrets, totp};
use uuid::Uuid;

use crate::auth::{ClientIp, Principal, SESSION_COOKIE};
use crate::http::{ApiJson, ApiPath, ApiQuery};
use crate::identity::*;
use crate::state::AppState;

pub const BOOTSTRAP_ADMIN_KEY: &str = "bootstrap_admin_user_id";
pub const BOOTSTRAP_SECURITY_KEY: &str = "bootstrap_security_user_id";
/// Lifetime of a token that may only enrol a second factor.
const ENROLLMENT_TOKEN_S: i64 = 900;

/// A user and the domain's allowed ranges, for a login attempt.
struct Candidate {
    user: User,
    domain_name: String,
    domain_cidrs: Vec<String>,
}

async fn find_candidate(state: &AppState, username: &str, domain: Option<&str>) -> Result<Option<Candidate>, Error> {
    let mut conn = state.db.conn().await?;
    let Some(d) = identity::find_domain(&mut conn, domain.unwrap_or("default"))
        .await?
        .filter(|d| d.enabled)
    else {
        return Ok(None);
    };
    Ok(identity::find_user(&mut conn, d.id, username)
        .await?
        .map(|user| Candidate {
            user,
            domain_name: d.name,
            domain_cidrs: d.allowed_source_cidrs,
        }))
}

/// Checks a user's password with every account rule of spec 13.2: per-source throttle,
/// allowed sources, lockout (an attempt is reserved before the password is checked), enabled,
/// validity window. Every failure is the same `invalid_credentials` and costs the same argon2
/// work; wrong passwords of a known account count toward its lockout. On success the attempt
/// is still open: the caller ends it (`succeed`, `fail` on a wrong second factor, `release`).
async fn check_user_password(
    state: &AppState,
    username: &str,
    domain: Option<&str>,
    password: &str,
    ip: std::net::IpAddr,
) -> Result<(Candidate, Attempt), Error> {
    let policy = state.compliance().await?;
    let now = state.now();
    check_source(state, &policy, ip)?;
    let candidate = find_candidate(state, username, domain).await?;
    let Some(c) = candidate else {
        verify_password(password, None).await?;
        // The name is not logged nor recorded: people type passwords into user fields.
        tracing::info!("authentication failed: unknown user");
        crate::audit::note_detail("reason", "unknown_user");
        source_failed(state, &policy, ip);
        return Err(Error::InvalidCredentials);
    };
    crate::audit::note_login_actor(
        c.user.id,
        &c.user.name,
        &c.domain_name,
        rampart_audit::AuthMethod::Password,
    );
    // A source the account may never log in from cannot lock it either: an operator who
    // narrows an administrator's sources makes it impossible to lock out from elsewhere.
    if !source_allowed(&policy, &c.domain_cidrs, &c.user, ip) {
        verify_password(password, None).await?;
        tracing::warn!(user = %c.user.name, ip = %ip, "authentication refused: source address not allowed");
        crate::audit::note_detail("reason", "source_address_not_allowed");
        source_failed(state, &policy, ip);
        return Err(Error::InvalidCredentials);
    }
    let Some(attempt) = Attempt::reserve(state, &policy, &c.user, ip).await? else {
        // No count while locked: the lock does not grow with an attacker's guesses.
        verify_password(password, None).await?;
        tracing::warn!(user = %c.user.name, "authentication refused: account locked");
        crate::audit::note_detail("reason", "locked");
        source_failed(state, &policy, ip);
        return Err(Error::InvalidCredentials);
    };
    let ok = verify_password(password, c.user.password_hash.clone()).await?;
    if !ok {
        crate::audit::note_detail("reason", "wrong_password");
        attempt.fail(state, &policy, "wrong password").await?;
        return Err(Error::InvalidCredentials);
    }
    let refusal = if !c.user.enabled {
        Some("user disabled")
    } else if !within_validity(&c.user, now) {
        Some("outside the account's validity window")
    } else {
        None
    };
    if let Some(reason) = refusal {
        tracing::warn!(user = %c.user.name, ip = %ip, reason, "authentication refused");
        crate::audit::note_detail("reason", reason.replace(' ', "_").replace('\'', ""));
        attempt.release(state).await?;
        return Err(Error::InvalidCredentials);
    }
    Ok((c, attempt))
}

/// The second factor of an account that has one, within an open attempt: `mfa_required`
/// (attempt released) without a code, `invalid_credentials` (attempt failed) with a wrong one.
async fn require_second_factor(
    state: &AppState,
    policy: &SecurityCompliance,
    user: &User,
    attempt: Attempt,
    code: Option<&Sensitive>,
    what: &str,
) -> Result<Attempt, Error> {
    let Some(code) = code else {
        crate::audit::note_detail("reason", "second_factor_missing");
        attempt.release(state).await?;
        return Err(Error::Unauthorized {
            code: "mfa_required",
            message: format!(
                "this account has a second factor: {what} needs `totp` (a current code or a recovery code)"
            ),
        });
    };
    if !check_second_factor(state, user, code.expose()).await? {
        crate::audit::note_detail("reason", "wrong_second_factor");
        attempt.fail(state, policy, "wrong second factor").await?;
        return Err(Error::InvalidCredentials);
    }
    Ok(attempt)
}

/// Log in: issue a token.
#[utoipa::path(post, path = "/v1/auth/tokens", tag = "auth", request_body = LoginRequest,
    responses(
        (status = 201, body = TokenResponse, description = "Token issued; `scope` is `mfa_enrollment` when a second factor must be enrolled first"),
        (status = 401, body = ErrorBody, description = "invalid_credentials (wrong password or code, unknown, locked, disabled or expired user: one answer for all), or mfa_required"),
        (status = 403, body = ErrorBody, description = "password_change_required, or no role on the project"),
        (status = 429, body = ErrorBody, description = "too many failed attempts from this source address"),
    ))]
pub async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<(StatusCode, axum::Json<TokenResponse>), Error> {
    if let Some(cred) = &req.application_credential {
        return login_with_credential(&state, ip, cred.id, cred.secret.expose()).await;
    }
    let Some(password) = req.password.as_ref() else {
        return Err(Error::field(
            "password",
            "give username and password, or application_credential",
        ));
    };
    let policy = state.compliance().await?;
    let now = state.now();
    let (c, attempt) = check_user_password(&state, &req.username, req.domain.as_deref(), password.expose(), ip).await?;
    let user = c.user;
    let expired = password_expires_at(&policy, &user).is_some_and(|t| t <= now);
    if user.password_change_required || expired {
        crate::audit::note_detail(
            "reason",
            if expired {
                "password_expired"
            } else {
                "password_change_required"
            },
        );
        attempt.succeed(&state).await?;
        return Err(Error::Forbidden {
            code: "password_change_required",
            message: if expired {
                "the password has expired: change it with POST /v1/auth/password".into()
            } else {
                "the password must be changed before first use: POST /v1/auth/password".into()
            },
        });
    }
    let expanded = {
        let mut conn = state.db.conn().await?;
        expanded_assignments(&mut conn, user.id).await?
    };
    let mut methods = vec!["password".to_string()];
    let mut scope = TokenScope::Full;
    let attempt = if user.mfa_enrolled() {
        let attempt = require_second_factor(&state, &policy, &user, attempt, req.totp.as_ref(), "login").await?;
        methods.push("totp".into());
        crate::audit::note_login_actor(
            user.id,
            &user.name,
            &c.domain_name,
            rampart_audit::AuthMethod::PasswordTotp,
        );
        attempt
    } else {
        if mfa_required(&policy, &expanded) {
            scope = TokenScope::MfaEnrollment;
        }
        attempt
    };
    attempt.succeed(&state).await?;
    let mut conn = state.db.begin().await?;
    identity::record_success(&mut conn, user.id, now).await?;
    let project = match &req.project {
        None => None,
        Some(key) => {
            let p = identity::find_project(&mut conn, user.domain_id, key)
                .await?
                .filter(|p| p.enabled);
            let p = p.ok_or_else(|| Error::forbidden("no role on that project, or no such project"))?;
            let s = subject(user.id, &expanded, Some(p.id), None);
            if s.project_roles.is_empty() {
                return Err(Error::forbidden("no role on that project, or no such project"));
            }
            Some(p)
        }
    };
    let s = subject(user.id, &expanded, project.as_ref().map(|p| p.id), None);
    let lifetime = match scope {
        TokenScope::Full => time::Duration::seconds(policy.token_expiration_s as i64),
        TokenScope::MfaEnrollment => time::Duration::seconds(ENROLLMENT_TOKEN_S),
    };
    // A token never outlives its user's validity window.
    let expires_at = user.valid_until.map_or(now + lifetime, |u| u.min(now + lifetime));
    let token = secrets::new_api_token();
    identity::insert_token(
        &mut conn,
        NewToken {
            token_hash: &secrets::hash_secret(token.expose()),
            user_id: user.id,
            project_id: project.as_ref().map(|p| p.id),
            scope: match scope {
                TokenScope::Full => "full",
                TokenScope::MfaEnrollment => "mfa_enrollment",
            },
            methods: &methods,
            application_credential_id: None,
            expires_at,
            source_ip: Some(&ip.to_string()),
        },
        now,
    )
    .await?;
    rampart_db::Db::commit(conn).await?;
    let password_expires_at = password_expires_at(&policy, &user);
    let mut warnings = Vec::new();
    if let Some(t) = password_expires_at
        && t - now <= time::Duration::days(policy.password_expiry_warning_days as i64)
    {
        warnings.push(format!(
            "your password expires in {} day(s), on {}; change it with POST /v1/auth/password",
            (t - now).whole_days(),
            rampart_common::time::rfc3339(t)
        ));
    }
    crate::audit::note_detail(
        "scope",
        match scope {
            TokenScope::Full => "full",
            TokenScope::MfaEnrollment => "mfa_enrollment",
        },
    );
    if scope == TokenScope::MfaEnrollment {
        warnings.push(
            "your roles require a second factor: enrol one with POST /v1/auth/mfa/totp, then log in again".into(),
        );
    }
    tracing::info!(user = %user.name, scope = ?scope, mfa = methods.len() > 1, "login succeeded");
    Ok((
        StatusCode::CREATED,
        axum::Json(TokenResponse {
            token,
            expires_at,
            user: UserRef {
                id: user.id,
                name: user.name,
                domain: c.domain_name,
            },
            project: project.map(|p| ProjectRef { id: p.id, name: p.name }),
            roles: role_names(&s),
            scope,
            password_expires_at,
            warnings,
        }),
    ))
}

/// Log in for a browser (the web console): the token goes only into an `HttpOnly` cookie.
#[utoipa::path(post, path = "/v1/auth/sessions", tag = "auth", request_body = LoginRequest,
    responses(
        (status = 201, body = SessionResponse,
            headers(("set-cookie" = String, description = "`rampart_session=…; Path=/; Max-Age=…; Secure; HttpOnly; SameSite=Strict`")),
            description = "Session opened; send `csrf_token` as `X-CSRF-Token` with every state-changing call"),
        (status = 400, body = ErrorBody, description = "application credentials cannot open a browser session"),
        (status = 401, body = ErrorBody, description = "invalid_credentials, or mfa_required"),
        (status = 403, body = ErrorBody, description = "password_change_required, or no role on the project"),
    ))]
pub async fn create_session(
    State(state): State<AppState>,
    ip: ClientIp,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<
    (
        StatusCode,
        [(http::HeaderName, http::HeaderValue); 1],
        axum::Json<SessionResponse>,
    ),
    Error,
> {
    if req.application_credential.is_some() {
        return Err(Error::field(
            "application_credential",
            "browser sessions are for people: log in with username and password",
        ));
    }
    let now = state.now();
    crate::audit::note_detail("browser_session", true);
    let (_, axum::Json(t)) = login(State(state), ip, ApiJson(req)).await?;
    let max_age = (t.expires_at - now).whole_seconds().max(0);
    let cookie = format!(
        "{SESSION_COOKIE}={}; Path=/; Max-Age={max_age}; Secure; HttpOnly; SameSite=Strict",
        t.token.expose()
    );
    let cookie = http::HeaderValue::try_from(cookie)
        .map_err(|_| Error::internal("opening a session", "token is not a valid cookie value"))?;
    Ok((
        StatusCode::CREATED,
        [(http::header::SET_COOKIE, cookie)],
        axum::Json(SessionResponse {
            csrf_token: secrets::csrf_token(t.token.expose()),
            expires_at: t.expires_at,
            user: t.user,
            project: t.project,
            roles: t.roles,
            scope: t.scope,
            password_expires_at: t.password_expires_at,
            warnings: t.warnings,
        }),
    ))
}

async fn login_with_credential(
    state: &AppState,
    ip: std::net::IpAddr,
    id: Uuid,
    secret: &str,
) -> Result<(StatusCode, axum::Json<TokenResponse>), Error> {
    let policy = state.compliance().await?;
    let now = state.now();
    check_source(state, &policy, ip)?;
    let (cred, user, domain) = {
        let mut conn = state.db.conn().await?;
        let cred = credentials::get(&mut conn, id).await?;
        let user = match &cred {
            Some(c) => identity::user_by_id(&mut conn, c.user_id).await?,
            None => None,
        };
        let domain = match &user {
            Some(u) => identity::find_domain(&mut conn, &u.domain_id.to_string()).await?,
            None => None,
        };
        (cred, user, domain)
    };
    let (Some(cred), Some(user), Some(domain)) = (cred, user, domain) else {
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
    // A password that must change (reset by an administrator, forced, expired) stops the
    // account's credentials too: they would otherwise outlive incident response.
    let password_due = user.password_change_required || password_expires_at(&policy, &user).is_some_and(|t| t <= now);
    let usable = user.enabled
        && domain.enabled
        && within_validity(&user, now)
        && !password_due
        && cred.expires_at.is_none_or(|e| e > now)
        && source_allowed(&policy, &domain.allowed_source_cidrs, &user, ip);
    if !usable {
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
    let s = subject(user.id, &expanded, Some(project.id), Some(&cred.roles));
    let lifetime = now + time::Duration::seconds(policy.token_expiration_s as i64);
    let expires_at = [Some(lifetime), cred.expires_at, user.valid_until]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(lifetime);
    let token = secrets::new_api_token();
    identity::insert_token(
        &mut conn,
        NewToken {
            token_hash: &secrets::hash_secret(token.expose()),
            user_id: user.id,
            project_id: Some(project.id),
            scope: "full",
            methods: &["application_credential".to_string()],
            application_credential_id: Some(cred.id),
            expires_at,
            source_ip: Some(&ip.to_string()),
        },
        now,
    )
    .await?;
    rampart_db::Db::commit(conn).await?;
    tracing::info!(user = %user.name, credential = %cred.id, "login with an application credential");
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
            project: Some(ProjectRef {
                id: project.id,
                name: project.name,
            }),
            roles: role_names(&s),
            scope: TokenScope::Full,
            password_expires_at: None,
            warnings: vec![],
        }),
    ))
}

/// Change a password (works without a token: first use, expired password).
#[utoipa::path(post, path = "/v1/auth/password", tag = "auth", request_body = PasswordChange,
    responses(
        (status = 204, description = "Password changed; every token and application credential of the user is revoked"),
        (status = 401, body = ErrorBody, description = "invalid_credentials, or mfa_required (the account has a second factor: send `totp`)"),
        (status = 429, body = ErrorBody, description = "too many failed attempts from this source address"),
        (status = 422, body = ErrorBody, description = "policy_violation; details.rules names each broken rule"),
    ))]
pub async fn change_password(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(req): ApiJson<PasswordChange>,
) -> Result<StatusCode, Error> {
    let (c, attempt) = check_user_password(
        &state,
        &req.username,
        req.domain.as_deref(),
        req.current_password.expose(),
        ip,
    )
    .await?;
    let user = c.user;
    let policy = state.compliance().await?;
    let now = state.now();
    // With a second factor, the password alone does not change the password: a phished
    // password must not lock the owner out of their account.
    let attempt = if user.mfa_enrolled() {
        require_second_factor(&state, &policy, &user, attempt, req.totp.as_ref(), "a password change").await?
    } else {
        attempt
    };
    let mut violations = password_violations(&state, &policy, &user, req.new_password.expose(), true).await?;
    if req.new_password.expose() == req.current_password.expose() {
        violations.push(rampart_iam::password::Violation {
            rule: "not_current",
            message: "must differ from the current password".into(),
        });
    }
    let forced = user.password_change_required || password_expires_at(&policy, &user).is_some_and(|t| t <= now);
    if !forced
        && policy.minimum_password_age_days > 0
        && user
            .password_changed_at
            .is_some_and(|t| now - t < time::Duration::days(policy.minimum_password_age_days as i64))
    {
        violations.push(rampart_iam::password::Violation {
            rule: "minimum_password_age",
            message: format!(
                "the password was changed less than {} day(s) ago",
                policy.minimum_password_age_days
            ),
        });
    }
    if !violations.is_empty() {
        attempt.release(&state).await?;
        return Err(policy_violation(violations));
    }
    attempt.succeed(&state).await?;
    let hash = hash_password(req.new_password.expose()).await?;
    let mut tx = state.db.begin().await?;
    identity::set_password(&mut tx, user.id, &hash, false, now).await?;
    let revoked = identity::revoke_user_tokens(&mut tx, user.id, now).await?;
    let bootstrap = [
        (
            meta::get(&mut tx, BOOTSTRAP_ADMIN_KEY).await?,
            crate::bootstrap::PASSWORD_FILE,
        ),
        (
            meta::get(&mut tx, BOOTSTRAP_SECURITY_KEY).await?,
            crate::bootstrap::SECURITY_PASSWORD_FILE,
        ),
    ];
    rampart_db::Db::commit(tx).await?;
    tracing::info!(user = %user.name, revoked_tokens = revoked, "password changed");
    for (id, name) in bootstrap {
        if id.as_deref() != Some(user.id.to_string().as_str()) {
            continue;
        }
        // The one-time password is spent: do not leave it lying around.
        let file = state.data_dir.join(name);
        match std::fs::remove_file(&file) {
            Ok(()) => tracing::info!(path = %file.display(), "removed the spent bootstrap password file"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %file.display(), error = %e, "cannot remove the bootstrap password file"),
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
pub async fn logout(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<(StatusCode, http::HeaderMap), Error> {
    let mut conn = state.db.conn().await?;
    identity::revoke_token(&mut conn, principal.token_id, state.now()).await?;
    tracing::info!(user = %principal.user.name, "logout");
    let mut headers = http::HeaderMap::new();
    if principal.via_cookie {
        headers.insert(
            http::header::SET_COOKIE,
            http::HeaderValue::from_static("rampart_session=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Strict"),
        );
    }
    Ok((StatusCode::NO_CONTENT, headers))
}

async fn own_user(state: &AppState, principal: &Principal) -> Result<User, Error> {
    principal.require(state, "self.manage", Target::User(principal.user.id))?;
    let mut conn = state.db.conn().await?;
    identity::user_by_id(&mut conn, principal.user.id)
        .await?
        .ok_or_else(|| Error::not_found("no such user"))
}

/// Start TOTP enrolment: a new secret, active once confirmed with a code.
#[utoipa::path(post, path = "/v1/auth/mfa/totp", tag = "auth", security(("bearer" = [])),
    responses(
        (status = 201, body = TotpEnrollment, description = "Secret and otpauth URI, shown once"),
        (status = 401, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "A second factor is already enrolled"),
    ))]
pub async fn totp_enroll(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<(StatusCode, axum::Json<TotpEnrollment>), Error> {
    let user = own_user(&state, &principal).await?;
    if user.mfa_enrolled() {
        return Err(Error::conflict(
            "a TOTP second factor is already enrolled; an administrator can reset it",
        ));
    }
    let secret = totp::new_secret();
    let account = format!("{}@{}", user.name, principal.user.domain);
    let uri = totp::otpauth_uri(secret.expose(), &account)
        .ok_or_else(|| Error::internal("building the otpauth URI", "invalid secret"))?;
    let sealed = state.credkey.seal(secret.expose(), &totp_context(user.id));
    let mut conn = state.db.conn().await?;
    identity::set_totp_pending(&mut conn, user.id, Some(&sealed)).await?;
    tracing::info!(user = %user.name, "TOTP enrolment started");
    Ok((
        StatusCode::CREATED,
        axum::Json(TotpEnrollment {
            secret,
            otpauth_uri: uri,
        }),
    ))
}

/// Confirm TOTP enrolment with a current code.
#[utoipa::path(post, path = "/v1/auth/mfa/totp/confirm", tag = "auth", request_body = TotpConfirm, security(("bearer" = [])),
    responses(
        (status = 204, description = "Second factor active: log in again with `totp`"),
        (status = 401, body = ErrorBody, description = "invalid_credentials: wrong code (counts toward lockout)"),
        (status = 409, body = ErrorBody, description = "No enrolment in progress"),
    ))]
pub async fn totp_confirm(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(req): ApiJson<TotpConfirm>,
) -> Result<StatusCode, Error> {
    let user = own_user(&state, &principal).await?;
    let Some(sealed) = &user.totp_pending_secret else {
        return Err(Error::conflict(
            "no TOTP enrolment in progress: POST /v1/auth/mfa/totp first",
        ));
    };
    let secret = state
        .credkey
        .open(sealed, &totp_context(user.id))
        .map_err(|e| Error::internal("opening a TOTP secret", e))?;
    let now = state.now();
    // A new secret has had no code used yet: the last step of a removed one does not apply
    // (an account re-enrolled within a minute of a reset would be refused otherwise).
    let Some(step) = totp::verify(
        secret.expose(),
        req.code.expose(),
        now.unix_timestamp().max(0) as u64,
        0,
    ) else {
        let policy = state.compliance().await?;
        count_failure(
            &state,
            &policy,
            &user,
            principal.client_ip,
            "wrong TOTP code at enrolment",
        )
        .await?;
        return Err(Error::InvalidCredentials);
    };
    let mut tx = state.db.begin().await?;
    identity::confirm_totp(&mut tx, user.id, step as i64).await?;
    // Sessions opened before the second factor existed end here.
    identity::revoke_user_tokens(&mut tx, user.id, now).await?;
    rampart_db::Db::commit(tx).await?;
    tracing::info!(user = %user.name, "TOTP second factor enrolled");
    Ok(StatusCode::NO_CONTENT)
}

/// New one-time recovery codes (replacing any earlier ones); shown once.
#[utoipa::path(post, path = "/v1/auth/mfa/recovery-codes", tag = "auth", security(("bearer" = [])),
    responses((status = 201, body = RecoveryCodes), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody, description = "No second factor enrolled")))]
pub async fn recovery_codes(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<(StatusCode, axum::Json<RecoveryCodes>), Error> {
    let user = own_user(&state, &principal).await?;
    if !user.mfa_enrolled() {
        return Err(Error::conflict("enrol a TOTP second factor first"));
    }
    let codes = totp::new_recovery_codes();
    let hashes: Vec<String> = codes
        .iter()
        .map(|c| secrets::hash_secret(&totp::normalise_recovery_code(c.expose())))
        .collect();
    let mut conn = state.db.conn().await?;
    identity::replace_recovery_codes(&mut conn, user.id, &hashes, state.now()).await?;
    tracing::info!(user = %user.name, "recovery codes issued");
    Ok((StatusCode::CREATED, axum::Json(RecoveryCodes { codes })))
}

fn credential_view(c: &AppCredential, secret: Option<Sensitive>) -> ApplicationCredential {
    ApplicationCredential {
        id: c.id,
        name: c.name.clone(),
        project_id: c.project_id,
        roles: c.roles.clone(),
        expires_at: c.expires_at,
        secret,
    }
}

/// Create an application credential for yourself; its secret is shown once.
#[utoipa::path(post, path = "/v1/application-credentials", tag = "auth", request_body = ApplicationCredentialCreate, security(("bearer" = [])),
    responses(
        (status = 201, body = ApplicationCredential),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody, description = "reauthentication_required: the session is older than five minutes and no `password` was sent; invalid_credentials; mfa_required"),
        (status = 403, body = ErrorBody, description = "Roles you do not hold, or called with an application credential"),
    ))]
pub async fn create_credential(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(req): ApiJson<ApplicationCredentialCreate>,
) -> Result<(StatusCode, axum::Json<ApplicationCredential>), Error> {
    let user = own_user(&state, &principal).await?;
    if principal.application_credential.is_some() {
        return Err(Error::forbidden(
            "an application credential cannot create application credentials",
        ));
    }
    names::validate_name("name", &req.name)?;
    let now = state.now();
    if req.expires_at.is_some_and(|e| e <= now) {
        return Err(Error::field("expires_at", "expires_at must be in the future"));
    }
    reauthenticate(&state, &principal, &user, req.password.as_ref(), req.totp.as_ref()).await?;
    let mut conn = state.db.conn().await?;
    let project = identity::find_project(&mut conn, user.domain_id, &req.project)
        .await?
        .ok_or_else(|| Error::not_found("no such project, or no role on it"))?;
    let expanded = expanded_assignments(&mut conn, user.id).await?;
    // The roles held on the project, with those they include (a member may delegate reader).
    let held: Vec<String> = subject(user.id, &expanded, Some(project.id), None)
        .project_roles
        .iter()
        .flat_map(|(_, r)| implied_roles(r).iter().map(|x| x.to_string()))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if held.is_empty() {
        return Err(Error::not_found("no such project, or no role on it"));
    }
    let roles = match req.roles {
        Some(r) if r.iter().all(|x| held.contains(x)) && !r.is_empty() => r,
        Some(_) => {
            return Err(Error::forbidden(
                "an application credential can only carry roles you hold on the project",
            ));
        }
        None => held,
    };
    let secret = secrets::random_secret();
    let cred = AppCredential {
        id: Uuid::new_v4(),
        user_id: user.id,
        project_id: project.id,
        name: req.name,
        secret_hash: hash_password(secret.expose()).await?,
        roles,
        expires_at: req.expires_at,
        created_at: now,
        last_used_at: None,
    };
    credentials::create(&mut conn, &cred).await?;
    tracing::info!(user = %user.name, credential = %cred.id, "application credential created");
    Ok((StatusCode::CREATED, axum::Json(credential_view(&cred, Some(secret)))))
}

/// How recent a login must be to count as a fresh proof of the owner's secrets.
const FRESH_LOGIN_S: i64 = 300;

/// A fresh proof that the owner is present, for what outlives the session (an application
/// credential): a session opened in the last five minutes with every factor the account has,
/// or the password (and a second-factor code) given again with the call. A stolen older
/// token alone is not enough; a wrong password counts toward the lockout as at login.
async fn reauthenticate(
    state: &AppState,
    principal: &Principal,
    user: &User,
    password: Option<&Sensitive>,
    totp: Option<&Sensitive>,
) -> Result<(), Error> {
    let fresh = principal.application_credential.is_none()
        && state.now() - principal.authenticated_at <= time::Duration::seconds(FRESH_LOGIN_S)
        && (principal.mfa || !user.mfa_enrolled());
    if fresh && password.is_none() {
        return Ok(());
    }
    let Some(password) = password else {
        return Err(Error::Unauthorized {
            code: "reauthentication_required",
            message: format!(
                "this session is older than {FRESH_LOGIN_S} s: send `password` (and `totp` if you have a second factor), or log in again"
            ),
        });
    };
    let policy = state.compliance().await?;
    check_source(state, &policy, principal.client_ip)?;
    let Some(attempt) = Attempt::reserve(state, &policy, user, principal.client_ip).await? else {
        verify_password(password.expose(), None).await?;
        crate::audit::note_detail("reason", "locked");
        return Err(Error::InvalidCredentials);
    };
    if !verify_password(password.expose(), user.password_hash.clone()).await? {
        crate::audit::note_detail("reason", "wrong_password");
        attempt
            .fail(state, &policy, "wrong password at re-authentication")
            .await?;
        return Err(Error::InvalidCredentials);
    }
    let attempt = if user.mfa_enrolled() {
        require_second_factor(state, &policy, user, attempt, totp, "re-authentication").await?
    } else {
        attempt
    };
    attempt.succeed(state).await
}

/// Your application credentials.
#[utoipa::path(get, path = "/v1/application-credentials", tag = "auth", params(PageParams), security(("bearer" = [])),
    responses((status = 200, body = List<ApplicationCredential>), (status = 401, body = ErrorBody)))]
pub async fn list_credentials(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Result<axum::Json<List<ApplicationCredential>>, Error> {
    let user = own_user(&state, &principal).await?;
    let page = page.validate()?;
    let mut conn = state.db.conn().await?;
    let rows = credentials::list_for_user(&mut conn, user.id, page.after.as_deref(), page.limit + 1).await?;
    let (rows, next) = finish_page(rows, page.limit, |c| c.id.to_string());
    Ok(axum::Json(List {
        items: rows.iter().map(|c| credential_view(c, None)).collect(),
        next,
    }))
}

async fn own_credential(state: &AppState, principal: &Principal, id: Uuid) -> Result<AppCredential, Error> {
    let user = own_user(state, principal).await?;
    let mut conn = state.db.conn().await?;
    match credentials::get(&mut conn, id).await? {
        Some(c) if c.user_id == user.id => Ok(c),
        _ => Err(Error::not_found("no such application credential")),
    }
}

/// One of your application credentials.
#[utoipa::path(get, path = "/v1/application-credentials/{id}", tag = "auth", params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = ApplicationCredential), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_credential(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<axum::Json<ApplicationCredential>, Error> {
    let c = own_credential(&state, &principal, id).await?;
    Ok(axum::Json(credential_view(&c, None)))
}

/// Delete one of your application credentials; its tokens die with it.
#[utoipa::path(delete, path = "/v1/application-credentials/{id}", tag = "auth", params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_credential(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, Error> {
    let c = own_credential(&state, &principal, id).await?;
    let mut tx = state.db.begin().await?;
    identity::revoke_credential_tokens(&mut tx, c.id, state.now()).await?;
    credentials::delete(&mut tx, c.id).await?;
    rampart_db::Db::commit(tx).await?;
    tracing::info!(user = %principal.user.name, credential = %c.id, "application credential deleted");
    Ok(StatusCode::NO_CONTENT)
}
