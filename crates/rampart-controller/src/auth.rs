//! Authentication of API calls: one middleware turns `Authorization: Bearer <token>` into a
//! [`Principal`] for the handlers. Tokens are looked up by hash; roles are read afresh on
//! every call, so a removed role or a disabled user takes effect at once.

use axum::extract::{FromRequestParts, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::request::Parts;
use rampart_api::{ProjectRef, TokenScope, UserRef};
use rampart_common::Error;
use rampart_db::identity::{self, Scope};
use rampart_iam::secrets;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::state::AppState;

/// Who is calling, established from a live token.
#[derive(Debug, Clone)]
pub struct Principal {
    pub token_id: Uuid,
    pub user: UserRef,
    pub domain_id: Uuid,
    pub project: Option<ProjectRef>,
    /// Effective roles: system roles, roles on the user's domain, roles on the token's project.
    pub roles: Vec<String>,
    pub system_roles: Vec<String>,
    pub scope: TokenScope,
    pub expires_at: OffsetDateTime,
}

impl Principal {
    /// Passes when the caller holds one of `roles` at system scope.
    pub fn require_system_role(&self, roles: &[&str]) -> Result<(), Error> {
        if self.system_roles.iter().any(|r| roles.contains(&r.as_str())) {
            Ok(())
        } else {
            Err(Error::forbidden(format!(
                "this operation needs one of the system roles {}",
                roles.join(", ")
            )))
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

/// The roles that apply to a token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Roles {
    /// Everything below, deduplicated.
    pub all: Vec<String>,
    pub system: Vec<String>,
    /// Roles on the token's project.
    pub project: Vec<String>,
}

/// Roles of `user_id` for a token on `project_id`: system roles, roles on the user's domain
/// and roles on the project.
pub async fn effective_roles(
    conn: &mut rampart_db::Conn,
    user_id: Uuid,
    domain_id: Uuid,
    project_id: Option<Uuid>,
) -> rampart_db::Result<Roles> {
    let mut r = Roles::default();
    for a in identity::role_assignments(conn, user_id).await? {
        match a.scope {
            Scope::System => r.system.push(a.role.clone()),
            Scope::Domain(d) if d == domain_id => {}
            Scope::Project(p) if Some(p) == project_id => r.project.push(a.role.clone()),
            _ => continue,
        }
        r.all.push(a.role);
    }
    for v in [&mut r.all, &mut r.system, &mut r.project] {
        v.sort();
        v.dedup();
    }
    Ok(r)
}

const UNAUTHENTICATED: &str = "the token is missing, invalid, expired or revoked";

/// Checks a bearer token and builds the principal.
pub async fn authenticate(state: &AppState, token: &str) -> Result<Principal, Error> {
    let now = state.now();
    let mut conn = state.db.conn().await?;
    let Some(row) = identity::token_by_hash(&mut conn, &secrets::hash_secret(token)).await? else {
        return Err(Error::Unauthenticated(UNAUTHENTICATED.into()));
    };
    if row.revoked_at.is_some() || row.expires_at <= now {
        return Err(Error::Unauthenticated(UNAUTHENTICATED.into()));
    }
    let Some(user) = identity::user_by_id(&mut conn, row.user_id).await? else {
        return Err(Error::Unauthenticated(UNAUTHENTICATED.into()));
    };
    let domain = identity::find_domain(&mut conn, &user.domain_id.to_string()).await?;
    let Some(domain) = domain.filter(|d| d.enabled && user.enabled) else {
        return Err(Error::Unauthenticated(UNAUTHENTICATED.into()));
    };
    let project = match row.project_id {
        Some(pid) => match identity::project_by_id(&mut conn, pid).await? {
            Some(p) if p.enabled => Some(ProjectRef { id: p.id, name: p.name }),
            _ => return Err(Error::Unauthenticated(UNAUTHENTICATED.into())),
        },
        None => None,
    };
    let roles = effective_roles(&mut conn, user.id, user.domain_id, row.project_id).await?;
    identity::touch_token(&mut conn, row.id, now, 60_000).await?;
    let scope = match row.scope.as_str() {
        "full" => TokenScope::Full,
        "mfa_enrollment" => TokenScope::MfaEnrollment,
        _ => return Err(Error::Unauthenticated(UNAUTHENTICATED.into())),
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
        roles: roles.all,
        system_roles: roles.system,
        scope,
        expires_at: row.expires_at,
    })
}

/// The middleware of every authenticated route.
pub async fn require_token(State(state): State<AppState>, mut req: Request, next: Next) -> Result<Response, Error> {
    let header = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    let Some(token) = header
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
    else {
        return Err(Error::Unauthenticated(
            "this operation needs Authorization: Bearer <token>".into(),
        ));
    };
    let principal = authenticate(&state, token).await?;
    if principal.scope != TokenScope::Full && !mfa_enrollment_path(req.uri().path(), req.method()) {
        return Err(Error::Forbidden {
            code: "mfa_required",
            message: "this token may only enrol MFA or log out; enrol a second factor first".into(),
        });
    }
    tracing::Span::current().record("user", principal.user.name.as_str());
    req.extensions_mut().insert(principal);
    Ok(next.run(req).await)
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
