//! Identity administration: domains, projects, users, the security-compliance policy and
//! project quotas. This module holds what they share: the typed lookups (fetch, then 404 for
//! what the caller may not see), the API views and the input checks.

pub mod compliance;
pub mod domains;
pub mod projects;
pub mod quotas;
pub mod users;

use rampart_api::{Domain, Project, SecurityCompliance, User};
use rampart_common::Error;
use rampart_db::Conn;
use rampart_db::identity;
use rampart_iam::authz::{Target, action};
use rampart_iam::lockout::Lockout;
use rampart_iam::rules;
use uuid::Uuid;

use crate::auth::Principal;
use crate::state::AppState;

pub fn check_cidrs(field: &str, cidrs: &Option<Vec<String>>) -> Result<(), Error> {
    if let Some(c) = cidrs {
        rampart_iam::net::parse_cidrs(field, c)?;
    }
    Ok(())
}

/// 400 unless `v` is at most `max` bytes of printable text (newlines allowed).
pub fn check_text(field: &str, v: &Option<String>, max: usize) -> Result<(), Error> {
    match v {
        Some(s) if s.len() > max || s.chars().any(|c| c.is_control() && c != '\n') => Err(Error::field(
            field,
            format!("{field} must be at most {max} bytes of printable text"),
        )),
        _ => Ok(()),
    }
}

pub fn domain_view(d: identity::Domain) -> Domain {
    Domain {
        id: d.id,
        name: d.name,
        description: d.description,
        enabled: d.enabled,
        allowed_source_cidrs: d.allowed_source_cidrs,
    }
}

pub fn project_view(p: identity::Project) -> Project {
    Project {
        id: p.id,
        domain_id: p.domain_id,
        name: p.name,
        description: p.description,
        enabled: p.enabled,
    }
}

pub fn user_view(u: &identity::User, policy: &SecurityCompliance, now: time::OffsetDateTime) -> User {
    User {
        id: u.id,
        domain_id: u.domain_id,
        name: u.name.clone(),
        email: u.email.clone(),
        description: u.description.clone(),
        enabled: u.enabled,
        valid_from: u.valid_from,
        valid_until: u.valid_until,
        allowed_source_cidrs: u.allowed_source_cidrs.clone(),
        password_change_required: u.password_change_required,
        password_expires_at: rules::password_expires_at(policy, u.password_changed_at),
        locked_until: Lockout::current(u.locked_until, now),
        mfa_enrolled: u.mfa_enrolled(),
        last_login_at: u.last_login_at,
    }
}

/// The domain named `key` (name or id; `default` when absent), if the caller may see it (it
/// reads the domain's identities, or it is the caller's own domain). A missing domain and one
/// out of sight get the same 404, so the answer never tells whether a domain exists.
pub async fn domain_by_key(
    state: &AppState,
    principal: &Principal,
    conn: &mut Conn,
    key: Option<&str>,
) -> Result<identity::Domain, Error> {
    match identity::find_domain(conn, key.unwrap_or("default")).await? {
        Some(d) if d.id == principal.domain_id || principal.can_in_domain(state, action::IDENTITY_READ, d.id) => Ok(d),
        _ => Err(Error::not_found("no such domain")),
    }
}

/// The domain `id` if the caller reads its identities; 404 otherwise.
pub async fn domain(state: &AppState, principal: &Principal, id: Uuid) -> Result<identity::Domain, Error> {
    let mut conn = state.db.conn().await?;
    let d = identity::find_domain(&mut conn, &id.to_string())
        .await?
        .filter(|d| d.id == id);
    match d {
        Some(d) if principal.can_in_domain(state, action::IDENTITY_READ, d.id) => Ok(d),
        _ => Err(Error::not_found("no such domain")),
    }
}

/// Whether the caller sees project `p`: it reads its domain's identities, or holds a role on
/// it (key admins and key users see the project whose keys they hold).
pub fn sees_project(state: &AppState, principal: &Principal, p: &identity::Project) -> bool {
    let target = Target::Project {
        id: p.id,
        domain: p.domain_id,
    };
    principal.can_in_domain(state, action::IDENTITY_READ, p.domain_id)
        || action::PROJECT_VISIBLE.iter().any(|a| principal.can(state, a, target))
}

/// The project `id` if the caller sees it; 404 otherwise.
pub async fn project(state: &AppState, principal: &Principal, id: Uuid) -> Result<identity::Project, Error> {
    let mut conn = state.db.conn().await?;
    match identity::project_by_id(&mut conn, id).await? {
        Some(p) if sees_project(state, principal, &p) => Ok(p),
        _ => Err(Error::not_found("no such project")),
    }
}

/// The user `id` if the caller may see it (itself, or a reader of its domain's identities);
/// 404 otherwise.
pub async fn user(state: &AppState, principal: &Principal, id: Uuid) -> Result<identity::User, Error> {
    let mut conn = state.db.conn().await?;
    match identity::user_by_id(&mut conn, id).await? {
        Some(u) if u.id == principal.user.id || principal.can_in_domain(state, action::IDENTITY_READ, u.domain_id) => {
            Ok(u)
        }
        _ => Err(Error::not_found("no such user")),
    }
}
