//! Role assignments: who holds which role where, granted and revoked by the rules of
//! `docs/authz.md` (the decisions are Cedar's, through `crate::grants`).

use std::collections::HashMap;

use rampart_api::{List, RoleAssignment, RoleAssignmentCreate, ScopeRef};
use rampart_common::Error;
use rampart_common::page::{PageRequest, finish_page};
use rampart_db::identity::{self, Holder, Scope};
use rampart_db::{Conn, groups};
use rampart_iam::authz::{PROJECT_ROLES, RoleScope, SYSTEM_ROLES, Target, action};
use uuid::Uuid;

use crate::app::identity::{domain, project};
use crate::audit::operations::Operation;
use crate::auth::Principal;
use crate::grants;
use crate::state::AppState;

/// Which holder a user id or group id is: exactly one must be given.
pub fn holder(user: Option<Uuid>, group: Option<Uuid>) -> Result<Holder, Error> {
    match (user, group) {
        (Some(u), None) => Ok(Holder::User(u)),
        (None, Some(g)) => Ok(Holder::Group(g)),
        _ => Err(Error::validation("give exactly one of `user` and `group`")),
    }
}

fn scope_of(s: &ScopeRef) -> Result<Scope, Error> {
    match (s.system, s.domain, s.project) {
        (Some(true), None, None) => Ok(Scope::System),
        (None, Some(d), None) => Ok(Scope::Domain(d)),
        (None, None, Some(p)) => Ok(Scope::Project(p)),
        _ => Err(Error::field(
            "scope",
            "scope is exactly one of {\"system\": true}, {\"domain\": id}, {\"project\": id}",
        )),
    }
}

fn scope_view(s: Scope) -> ScopeRef {
    match s {
        Scope::System => ScopeRef {
            system: Some(true),
            ..Default::default()
        },
        Scope::Domain(d) => ScopeRef {
            domain: Some(d),
            ..Default::default()
        },
        Scope::Project(p) => ScopeRef {
            project: Some(p),
            ..Default::default()
        },
    }
}

fn assignment_view(a: identity::RoleAssignment) -> RoleAssignment {
    let (user, group) = match a.holder {
        Holder::User(u) => (Some(u), None),
        Holder::Group(g) => (None, Some(g)),
    };
    RoleAssignment {
        id: a.id,
        user,
        group,
        role: a.role,
        scope: scope_view(a.scope),
    }
}

/// The roles a role name stands for (itself, or a custom role's bundle).
async fn role_members(state: &AppState, role: &str) -> Result<Vec<String>, Error> {
    let mut conn = state.db.conn().await?;
    grants::expand_role(&mut conn, role)
        .await?
        .ok_or_else(|| Error::field("role", format!("no role named {role:?}")))
}

/// Checks that `roles` are held at `scope` at all (400 otherwise).
fn check_roles_fit(roles: &[String], scope: Scope) -> Result<(), Error> {
    for r in roles {
        let fits = match scope {
            Scope::System => SYSTEM_ROLES.contains(&r.as_str()),
            Scope::Domain(_) => r == "domain-admin",
            Scope::Project(_) => PROJECT_ROLES.contains(&r.as_str()),
        };
        if !fits {
            let held_on = match scope {
                Scope::System => "at system scope",
                Scope::Domain(_) => "on a domain (only domain-admin is)",
                Scope::Project(_) => "on a project",
            };
            return Err(Error::field("role", format!("{r:?} is not held {held_on}")));
        }
    }
    Ok(())
}

/// Whether the caller may grant or revoke `roles` (one assignment, expanded) at `scope`, by
/// the grant rules of `docs/authz.md`: 404 when it cannot even see the scope's project or
/// domain, 403 (one message for every role, so the answer says nothing of what the role is)
/// when it may not. Returns the scope with its domain.
async fn require_assignment_rights(
    state: &AppState,
    principal: &Principal,
    roles: &[String],
    scope: Scope,
) -> Result<RoleScope, Error> {
    check_roles_fit(roles, scope)?;
    let role_scope = match scope {
        Scope::System => RoleScope::System,
        Scope::Domain(d) => {
            domain(state, principal, d).await?;
            RoleScope::Domain(d)
        }
        Scope::Project(p) => {
            let project = project(state, principal, p).await?;
            RoleScope::Project {
                id: p,
                domain: project.domain_id,
            }
        }
    };
    let first_key_admin = match scope {
        Scope::Project(p) if roles.iter().any(|r| r == "key-admin") => {
            let mut conn = state.db.conn().await?;
            grants::project_has_no_key_admin(&mut conn, p).await?
        }
        _ => false,
    };
    let ctx = principal.ctx(state.now());
    if roles.iter().all(|r| {
        state
            .authz
            .may_grant(&principal.subject, &ctx, r, role_scope, first_key_admin)
    }) {
        Ok(role_scope)
    } else {
        Err(Error::forbidden(
            "your roles do not allow granting or revoking this role here",
        ))
    }
}

/// The holder of a new assignment must exist in the domain the role applies to (grants across
/// domains are refused); at system scope, the caller must be able to see it. A missing holder
/// and one out of reach get the same answer.
async fn require_holder(
    state: &AppState,
    principal: &Principal,
    holder: Holder,
    scope: RoleScope,
) -> Result<(), Error> {
    let mut conn = state.db.conn().await?;
    let domain = match holder {
        Holder::User(u) => identity::user_by_id(&mut conn, u).await?.map(|u| u.domain_id),
        Holder::Group(g) => groups::get(&mut conn, g).await?.map(|g| g.domain_id),
    };
    let reachable = match (domain, scope) {
        (Some(hd), RoleScope::Domain(d) | RoleScope::Project { domain: d, .. }) => hd == d,
        (Some(hd), RoleScope::System) => principal.can_in_domain(state, action::IDENTITY_READ, hd),
        (None, _) => false,
    };
    if reachable {
        return Ok(());
    }
    Err(match holder {
        Holder::User(_) => Error::field("user", "no such user in the domain this role applies to"),
        Holder::Group(_) => Error::field("group", "no such group in the domain this role applies to"),
    })
}

pub const CREATE_ASSIGNMENT: Operation = Operation::new("role_assignment.create", "role_assignment");

/// Grant a role to a user or group at a scope.
pub async fn create_assignment(
    state: &AppState,
    principal: &Principal,
    req: RoleAssignmentCreate,
) -> Result<RoleAssignment, Error> {
    let holder = holder(req.user, req.group)?;
    let scope = scope_of(&req.scope)?;
    let roles = role_members(state, &req.role).await?;
    let role_scope = require_assignment_rights(state, principal, &roles, scope).await?;
    require_holder(state, principal, holder, role_scope).await?;
    let mut conn = state.db.conn().await?;
    if grants::is_self(&mut conn, principal, holder).await? {
        return Err(Error::forbidden(
            "you cannot grant roles to yourself or to a group you belong to",
        ));
    }
    let id = identity::create_assignment(&mut conn, holder, &req.role, scope, state.now()).await?;
    tracing::info!(role = %req.role, holder = ?holder, scope = ?scope, by = %principal.user.name, "role granted");
    Ok(RoleAssignment {
        id,
        user: req.user,
        group: req.group,
        role: req.role,
        scope: scope_view(scope),
    })
}

/// Whether the caller may see an assignment: system readers see all; domain readers those on
/// their domains; project admins and key admins those on their projects; everyone their own.
/// `project_domains` caches each project's domain across one listing.
async fn assignment_visible(
    state: &AppState,
    principal: &Principal,
    conn: &mut Conn,
    project_domains: &mut HashMap<Uuid, Option<Uuid>>,
    a: &identity::RoleAssignment,
) -> Result<bool, Error> {
    if principal.can(state, action::IDENTITY_READ, Target::System) || a.holder == Holder::User(principal.user.id) {
        return Ok(true);
    }
    Ok(match a.scope {
        Scope::System => false,
        Scope::Domain(d) => principal.can(state, action::IDENTITY_READ, Target::Domain(d)),
        Scope::Project(p) => {
            if let std::collections::hash_map::Entry::Vacant(e) = project_domains.entry(p) {
                e.insert(identity::project_by_id(conn, p).await?.map(|x| x.domain_id));
            }
            project_domains[&p].is_some_and(|d| {
                let t = Target::Project { id: p, domain: d };
                principal.can(state, action::ASSIGNMENT_PROJECT, t) || principal.can(state, action::KEYS_MANAGE, t)
            })
        }
    })
}

/// What a listing of assignments is narrowed to.
#[derive(Debug, Clone, Copy, Default)]
pub struct Filter {
    pub user: Option<Uuid>,
    pub group: Option<Uuid>,
    pub project: Option<Uuid>,
    pub domain: Option<Uuid>,
}

pub const LIST_ASSIGNMENTS: Operation = Operation::new("role_assignment.list", "role_assignment");

/// Role assignments the caller may see: all for system readers; on the domains and projects
/// it administers; and its own.
pub async fn list_assignments(
    state: &AppState,
    principal: &Principal,
    filter: Filter,
    page: PageRequest,
) -> Result<List<RoleAssignment>, Error> {
    let holder = match (filter.user, filter.group) {
        (None, None) => None,
        (u, g) => Some(holder(u, g)?),
    };
    let scope = match (filter.project, filter.domain) {
        (Some(p), None) => Some(Scope::Project(p)),
        (None, Some(d)) => Some(Scope::Domain(d)),
        (None, None) => None,
        _ => return Err(Error::validation("filter on project or domain, not both")),
    };
    let mut conn = state.db.conn().await?;
    let mut project_domains = HashMap::new();
    let mut items = Vec::new();
    let mut after = page.after.clone();
    loop {
        let rows = identity::list_assignments(&mut conn, holder, scope, after.as_deref(), page.limit + 1).await?;
        let exhausted = rows.len() <= page.limit as usize;
        after = rows.last().map(|a| a.id.to_string());
        for a in rows {
            if assignment_visible(state, principal, &mut conn, &mut project_domains, &a).await? {
                items.push(a);
            }
        }
        if items.len() > page.limit as usize || exhausted {
            break;
        }
    }
    let (items, next) = finish_page(items, page.limit, |a| a.id.to_string());
    Ok(List {
        items: items.into_iter().map(assignment_view).collect(),
        next,
    })
}

/// The assignment `id` if the caller may see it; 404 otherwise.
async fn assignment(state: &AppState, principal: &Principal, id: Uuid) -> Result<identity::RoleAssignment, Error> {
    let mut conn = state.db.conn().await?;
    let a = identity::assignment_by_id(&mut conn, id).await?;
    let visible = match &a {
        Some(a) => assignment_visible(state, principal, &mut conn, &mut HashMap::new(), a).await?,
        None => false,
    };
    match a {
        Some(a) if visible => Ok(a),
        _ => Err(Error::not_found("no such role assignment")),
    }
}

pub const DELETE_ASSIGNMENT: Operation = Operation::new("role_assignment.delete", "role_assignment").target("id");

/// Revoke a role assignment; the holders' sessions end at once.
pub async fn delete_assignment(state: &AppState, principal: &Principal, id: Uuid) -> Result<(), Error> {
    let a = assignment(state, principal, id).await?;
    let roles = role_members(state, &a.role)
        .await
        .unwrap_or_else(|_| vec![a.role.clone()]);
    {
        let mut conn = state.db.conn().await?;
        if grants::is_self(&mut conn, principal, a.holder).await? && grants::has_security_role(&roles) {
            return Err(Error::forbidden("nobody revokes their own security roles"));
        }
    }
    require_assignment_rights(state, principal, &roles, a.scope).await?;
    let now = state.now();
    let mut tx = state.db.begin().await?;
    identity::delete_assignment(&mut tx, &a).await?;
    match a.holder {
        Holder::User(u) => identity::revoke_user_tokens(&mut tx, u, now).await?,
        Holder::Group(g) => identity::revoke_group_tokens(&mut tx, g, now).await?,
    };
    rampart_db::Db::commit(tx).await?;
    tracing::info!(role = %a.role, holder = ?a.holder, scope = ?a.scope, by = %principal.user.name, "role revoked");
    Ok(())
}
