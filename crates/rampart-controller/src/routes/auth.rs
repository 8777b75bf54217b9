//! Login (password, second factor, application credentials), logout, password change, MFA
//! enrolment, recovery codes and application credentials: parse, call `app::sessions`, render.

use axum::extract::State;
use axum::http::StatusCode;
use rampart_api::{
    ApplicationCredential, ApplicationCredentialCreate, List, LoginRequest, PasswordChange, RecoveryCodes,
    SessionResponse, TokenInfo, TokenResponse, TotpConfirm, TotpEnrollment,
};
use rampart_common::Error;
use rampart_common::error::ErrorBody;
use rampart_common::page::PageParams;
use rampart_iam::secrets;
use uuid::Uuid;

use crate::app::sessions::{credentials, login as sessions, mfa, password};
use crate::auth::{ClientIp, Principal, SESSION_COOKIE};
use crate::http::{ApiJson, ApiPath, ApiQuery};
use crate::state::AppState;

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
    let t = sessions::login(&state, ip, req).await?;
    Ok((StatusCode::CREATED, axum::Json(t)))
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
    ClientIp(ip): ClientIp,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<
    (
        StatusCode,
        [(http::HeaderName, http::HeaderValue); 1],
        axum::Json<SessionResponse>,
    ),
    Error,
> {
    let (t, max_age) = sessions::browser_session(&state, ip, req).await?;
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
    password::change_password(&state, ip, req).await?;
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
    sessions::logout(&state, &principal).await?;
    let mut headers = http::HeaderMap::new();
    if principal.via_cookie {
        headers.insert(
            http::header::SET_COOKIE,
            http::HeaderValue::from_static("rampart_session=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Strict"),
        );
    }
    Ok((StatusCode::NO_CONTENT, headers))
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
    let e = mfa::totp_enroll(&state, &principal).await?;
    Ok((StatusCode::CREATED, axum::Json(e)))
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
    mfa::totp_confirm(&state, &principal, req).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// New one-time recovery codes (replacing any earlier ones); shown once.
#[utoipa::path(post, path = "/v1/auth/mfa/recovery-codes", tag = "auth", security(("bearer" = [])),
    responses((status = 201, body = RecoveryCodes), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody, description = "No second factor enrolled")))]
pub async fn recovery_codes(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<(StatusCode, axum::Json<RecoveryCodes>), Error> {
    let codes = mfa::recovery_codes(&state, &principal).await?;
    Ok((StatusCode::CREATED, axum::Json(codes)))
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
    let c = credentials::create_credential(&state, &principal, req).await?;
    Ok((StatusCode::CREATED, axum::Json(c)))
}

/// Your application credentials.
#[utoipa::path(get, path = "/v1/application-credentials", tag = "auth", params(PageParams), security(("bearer" = [])),
    responses((status = 200, body = List<ApplicationCredential>), (status = 401, body = ErrorBody)))]
pub async fn list_credentials(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Result<axum::Json<List<ApplicationCredential>>, Error> {
    Ok(axum::Json(
        credentials::list_credentials(&state, &principal, page).await?,
    ))
}

/// One of your application credentials.
#[utoipa::path(get, path = "/v1/application-credentials/{id}", tag = "auth", params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = ApplicationCredential), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_credential(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<axum::Json<ApplicationCredential>, Error> {
    let c = credentials::credential(&state, &principal, id).await?;
    Ok(axum::Json(credentials::credential_view(&c, None)))
}

/// Delete one of your application credentials; its tokens die with it.
#[utoipa::path(delete, path = "/v1/application-credentials/{id}", tag = "auth", params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_credential(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, Error> {
    credentials::delete_credential(&state, &principal, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
