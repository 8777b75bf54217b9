//! Authentication and authorization of API calls. One middleware turns
//! `Authorization: Bearer <token>` into a [`Principal`]; handlers then ask
//! [`Principal::require`] (Cedar, through `rampart_iam::authz`) before touching anything.
//! Roles are read afresh on every call, so a removed role or a disabled user takes effect at
//! once.

use std::net::IpAddr;

use axum::extract::{FromRequestParts, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::request::Parts;
use rampart_api::{ProjectRef, TokenScope, UserRef};
use rampart_common::Error;
use rampart_db::credentials;
use rampart_db::identity;
use rampart_iam::authz::{Ctx, Subject, Target, action};
use rampart_iam::rules::{role_names, source_allowed, subject, within_validity};
use rampart_iam::secrets;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::role_expansion::expanded_assignments;
use crate::server::ConnInfo;
use crate::state::AppState;

/// The client address of a request: the TCP peer, or what a trusted proxy says.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<ClientIp>()
            .copied()
            .ok_or_else(|| Error::internal("reading the client address", "client address layer missing"))
    }
}

/// Middleware: works out the client address once per request.
pub async fn client_ip(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    if let Some(peer) = req.extensions().get::<ConnInfo>().map(|c| c.peer.ip()) {
        let forwarded = req.headers().get("x-forwarded-for").and_then(|h| h.to_str().ok());
        let ip = rampart_iam::net::client_ip(peer, forwarded, &state.trusted_proxies);
        req.extensions_mut().insert(ClientIp(ip));
    }
    next.run(req).await
}

/// Who is calling, established from a live token.
#[derive(Debug, Clone)]
pub struct Principal {
    pub token_id: Uuid,
    pub user: UserRef,
    pub domain_id: Uuid,
    pub project: Option<ProjectRef>,
    /// Role names that apply to this session.
    pub roles: Vec<String>,
    pub subject: Subject,
    pub scope: TokenScope,
    pub expires_at: OffsetDateTime,
    /// When the session's credentials were checked (the token's issue time).
    pub authenticated_at: OffsetDateTime,
    /// The session was opened with a second factor.
    pub mfa: bool,
    pub client_ip: IpAddr,
    pub application_credential: Option<Uuid>,
    /// Authenticated by the browser session cookie rather than a bearer header.
    pub via_cookie: bool,
}

impl Principal {
    /// How this session appears in the audit trail.
    pub fn audit_actor(&self) -> rampart_audit::record::Actor {
        rampart_audit::record::Actor::user(
            self.user.id.to_string(),
            self.user.name.clone(),
            self.user.domain.clone(),
            if self.application_credential.is_some() {
                rampart_audit::record::AuthMethod::ApplicationCredential
            } else {
                rampart_audit::record::AuthMethod::Token
            },
        )
    }

    pub fn ctx(&self, now: OffsetDateTime) -> Ctx {
        Ctx {
            now,
            source_ip: self.client_ip,
            mfa: self.mfa,
        }
    }

    pub fn can(&self, state: &AppState, action: &str, target: Target) -> bool {
        let v = state
            .authz
            .authorize(&self.subject, action, target, &self.ctx(state.now()));
        tracing::debug!(action, target = ?target, allowed = v.allowed, because = ?v.because, "authorize");
        v.allowed
    }

    /// 403 unless allowed.
    pub fn require(&self, state: &AppState, action: &str, target: Target) -> Result<(), Error> {
        if self.can(state, action, target) {
            Ok(())
        } else {
            Err(Error::forbidden(format!("your roles do not allow {action} here")))
        }
    }

    pub fn require_system(&self, state: &AppState, action: &str) -> Result<(), Error> {
        self.require(state, action, Target::System)
    }

    /// The project `id`, for `action`: 404 when the caller may not even see it (or it does not
    /// exist), 403 `project_disabled` when it (or its domain) is disabled, 403 when the caller
    /// may see it but not do `action`.
    pub async fn project(
        &self,
        state: &AppState,
        id: Uuid,
        action: &str,
    ) -> Result<rampart_db::identity::Project, Error> {
        let mut conn = state.db.conn().await?;
        let project = identity::project_by_id(&mut conn, id).await?;
        let Some(project) = project else {
            return Err(Error::not_found("no such project"));
        };
        let target = Target::Project {
            id,
            domain: project.domain_id,
        };
        let allowed = self.can(state, action, target);
        let sees = allowed
            || action::PROJECT_VISIBLE.iter().any(|a| self.can(state, a, target))
            || self.can(state, action::IDENTITY_READ, Target::Domain(project.domain_id));
        if !sees {
            return Err(Error::not_found("no such project"));
        }
        require_enabled(&mut conn, &project).await?;
        if allowed {
            Ok(project)
        } else {
            Err(Error::forbidden(format!(
                "your roles on this project do not allow {action}"
            )))
        }
    }

    /// For routes whose target comes from the body: refuse before parsing when the caller
    /// holds no role that could allow `action` anywhere.
    pub fn require_somewhere(&self, state: &AppState, action: &str) -> Result<(), Error> {
        // Project actions apply to projects only (asking Cedar about them on the system or a
        // domain is a malformed request, not a refusal); their project is checked later.
        if rampart_iam::authz::is_project_action(action) {
            return if self.subject.project_roles.is_empty() && self.subject.domain_admin_of.is_empty() {
                Err(Error::forbidden(format!("your roles do not allow {action}")))
            } else {
                Ok(())
            };
        }
        let mut targets = vec![Target::System];
        targets.extend(self.subject.domain_admin_of.iter().map(|d| Target::Domain(*d)));
        if targets.iter().any(|t| self.can(state, action, *t)) {
            Ok(())
        } else {
            Err(Error::forbidden(format!("your roles do not allow {action}")))
        }
    }

    /// The identity actions at system scope or on `domain`.
    pub fn can_in_domain(&self, state: &AppState, action: &str, domain: Uuid) -> bool {
        self.can(state, action, Target::System) || self.can(state, action, Target::Domain(domain))
    }

    /// 404 when the caller cannot read `domain`'s identities, 403 when it can but may not act.
    pub fn require_in_domain(&self, state: &AppState, action: &str, domain: Uuid, what: &str) -> Result<(), Error> {
        if self.can_in_domain(state, action, domain) {
            Ok(())
        } else if self.can_in_domain(state, action::IDENTITY_READ, domain) {
            Err(Error::forbidden(format!(
                "your roles do not allow {action} in this domain"
            )))
        } else {
            Err(Error::not_found(format!("no such {what}")))
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| Error::Unauthenticated("this operation needs Authorization: Bearer <token>".into()))
    }
}

/// A disabled project, or one of a disabled domain, refuses every call scoped to it, whatever
/// the token (spec 13.2-1): 403 `project_disabled` to a caller that may see it.
pub async fn require_enabled(conn: &mut rampart_db::Conn, project: &identity::Project) -> Result<(), Error> {
    let domain_enabled = identity::find_domain(conn, &project.domain_id.to_string())
        .await?
        .is_some_and(|d| d.enabled);
    if project.enabled && domain_enabled {
        Ok(())
    } else {
        Err(Error::Forbidden {
            code: "project_disabled",
            message: "this project (or its domain) is disabled; an administrator must enable it first".into(),
        })
    }
}

const UNAUTHENTICATED: &str = "the token is missing, invalid, expired or revoked";

fn dead() -> Error {
    Error::Unauthenticated(UNAUTHENTICATED.into())
}

/// Checks a bearer token and builds the principal: token alive (expiry, idle limit,
/// revocation), user enabled and inside its validity window, domain enabled, client address
/// allowed, application credential still valid.
pub async fn authenticate(state: &AppState, token: &str, client_ip: IpAddr) -> Result<Principal, Error> {
    let now = state.now();
    let policy = state.compliance().await?;
    let mut conn = state.db.conn().await?;
    let Some(row) = identity::token_by_hash(&mut conn, &secrets::hash_secret(token)).await? else {
        return Err(dead());
    };
    if row.revoked_at.is_some() || row.expires_at <= now {
        return Err(dead());
    }
    if policy.token_idle_timeout_s > 0
        && now - row.last_used_at > time::Duration::seconds(policy.token_idle_timeout_s as i64)
    {
        identity::revoke_token(&mut conn, row.id, now).await?;
        tracing::info!(token = %row.id, "token expired after being idle");
        return Err(dead());
    }
    let Some(user) = identity::user_by_id(&mut conn, row.user_id).await? else {
        return Err(dead());
    };
    let domain = identity::find_domain(&mut conn, &user.domain_id.to_string()).await?;
    let Some(domain) = domain.filter(|d| d.enabled && user.enabled) else {
        return Err(dead());
    };
    if !within_validity(user.valid_from, user.valid_until, now) {
        return Err(dead());
    }
    if !source_allowed(
        &policy,
        &domain.allowed_source_cidrs,
        &user.allowed_source_cidrs,
        client_ip,
    ) {
        tracing::warn!(user = %user.name, ip = %client_ip, "token used from a source outside the allowed ranges");
        return Err(dead());
    }
    let project = match row.project_id {
        Some(pid) => match identity::project_by_id(&mut conn, pid).await? {
            Some(p) if p.enabled => Some(ProjectRef { id: p.id, name: p.name }),
            _ => return Err(dead()),
        },
        None => None,
    };
    let only_roles = match row.application_credential_id {
        Some(cid) => match credentials::get(&mut conn, cid).await? {
            Some(c) if c.expires_at.is_none_or(|e| e > now) => Some(c.roles),
            _ => return Err(dead()),
        },
        None => None,
    };
    let expanded = expanded_assignments(&mut conn, user.id).await?;
    let subject = subject(user.id, &expanded, row.project_id, only_roles.as_deref());
    identity::touch_token(&mut conn, row.id, now, 60_000).await?;
    let scope = match row.scope.as_str() {
        "full" => TokenScope::Full,
        "mfa_enrollment" => TokenScope::MfaEnrollment,
        _ => return Err(dead()),
    };
    Ok(Principal {
        token_id: row.id,
        user: UserRef {
            id: user.id,
            name: user.name,
            domain: domain.name,
        },
        domain_id: domain.id,
        project,
        roles: role_names(&subject),
        subject,
        scope,
        expires_at: row.expires_at,
        authenticated_at: row.issued_at,
        mfa: row.methods.iter().any(|m| m == "totp"),
        client_ip,
        application_credential: row.application_credential_id,
        via_cookie: false,
    })
}

/// The cookie that carries a browser session's token (`POST /v1/auth/sessions`).
pub const SESSION_COOKIE: &str = "rampart_session";

/// The middleware of every authenticated route. A bearer header wins; without one, the session
/// cookie is accepted, and then a state-changing call must come from a same-origin page and
/// carry the session's CSRF token, since a browser attaches the cookie to any site's request.
pub async fn require_token(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    mut req: Request,
    next: Next,
) -> Result<Response, Error> {
    let bearer = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string);
    let (token, via_cookie) = match bearer {
        Some(t) => (t, false),
        None => match session_cookie(req.headers()) {
            Some(t) => (t, true),
            None => {
                return Err(Error::Unauthenticated(
                    "this operation needs Authorization: Bearer <token>".into(),
                ));
            }
        },
    };
    // Before the token is even looked up, so a forged request has no effect at all (not even
    // on the session's idle timer).
    if via_cookie && !req.method().is_safe() {
        check_csrf(&req, &token, &state.api_origins)?;
    }
    let mut principal = authenticate(&state, &token, ip).await?;
    principal.via_cookie = via_cookie;
    crate::audit::note_actor(principal.audit_actor());
    if principal.scope != TokenScope::Full && !mfa_enrollment_path(req.uri().path(), req.method()) {
        return Err(Error::Forbidden {
            code: "mfa_required",
            message: "this token may only enrol MFA or log out; enrol a second factor first".into(),
        });
    }
    req.extensions_mut().insert(principal);
    Ok(next.run(req).await)
}

fn session_cookie(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, value)| *name == SESSION_COOKIE && !value.is_empty())
        .map(|(_, value)| value.to_string())
}

/// Same origin (`Sec-Fetch-Site` when the browser sends it, and `Origin` one of the API's
/// configured origins) plus the session's CSRF token in `X-CSRF-Token`.
fn check_csrf(req: &Request, token: &str, api_origins: &[String]) -> Result<(), Error> {
    let refuse = |why: &str| Error::Forbidden {
        code: "csrf_check_failed",
        message: format!("a state-changing call with the session cookie {why}"),
    };
    let header = |name: &str| req.headers().get(name).and_then(|h| h.to_str().ok());
    if header("sec-fetch-site").is_some_and(|site| site != "same-origin") {
        return Err(refuse("must come from a page of this origin (Sec-Fetch-Site)"));
    }
    // Not the request's Host: a rebound DNS name puts the attacker's name in both.
    if !header("origin").is_some_and(|o| rampart_common::origin::is_allowed(o, api_origins)) {
        return Err(refuse(
            "must carry an Origin header naming one of this API's origins (api.origins)",
        ));
    }
    match header("x-csrf-token") {
        Some(presented) if secrets::verify_csrf_token(token, presented) => Ok(()),
        _ => Err(refuse("needs the session's csrf_token in X-CSRF-Token")),
    }
}

fn mfa_enrollment_path(path: &str, method: &http::Method) -> bool {
    matches!(
        (method, path),
        (&http::Method::POST, "/v1/auth/mfa/totp")
            | (&http::Method::POST, "/v1/auth/mfa/totp/confirm")
            | (&http::Method::DELETE, "/v1/auth/tokens/current")
            | (&http::Method::GET, "/v1/auth/tokens/current")
    )
}
