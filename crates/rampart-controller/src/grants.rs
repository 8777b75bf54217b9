//! The rules for one principal acting on another (spec 13.1.1-2, 13.2-2): who may grant or
//! revoke which role where, and who may act on an account (reset its password or second
//! factor, unlock, disable, delete, change its window or sources, move it in or out of a
//! group). The decisions are Cedar's (`rampart_iam::authz::Authorizer::may_grant` and
//! `may_act_on`); this module gathers what they need from the database: the roles an account
//! or group holds, with each project's domain.

use rampart_common::Error;
use rampart_db::identity::{self, Holder, Scope};
use rampart_db::{Conn, groups};
use rampart_iam::authz::{RoleScope, SECURITY_ROLES};
use uuid::Uuid;

use crate::auth::Principal;
use crate::state::AppState;

/// A role assignment's scope with its project's domain resolved; `None` for a project that no
/// longer exists (its assignments confer nothing).
pub async fn role_scope(conn: &mut Conn, scope: Scope) -> Result<Option<RoleScope>, Error> {
    Ok(match scope {
        Scope::System => Some(RoleScope::System),
        Scope::Domain(d) => Some(RoleScope::Domain(d)),
        Scope::Project(id) => identity::project_by_id(conn, id).await?.map(|p| RoleScope::Project {
            id,
            domain: p.domain_id,
        }),
    })
}

/// Built-in roles a role name stands for: itself, or a custom role's bundle.
pub async fn expand_role(conn: &mut Conn, role: &str) -> Result<Option<Vec<String>>, Error> {
    if rampart_api::is_builtin_role(role) {
        return Ok(Some(vec![role.to_string()]));
    }
    Ok(groups::role(conn, role).await?.map(|r| r.implies))
}

async fn resolve(
    conn: &mut Conn,
    assignments: Vec<identity::RoleAssignment>,
) -> Result<Vec<(RoleScope, String)>, Error> {
    let mut out = Vec::new();
    for a in assignments {
        let (Some(scope), Some(roles)) = (role_scope(conn, a.scope).await?, expand_role(conn, &a.role).await?) else {
            continue;
        };
        out.extend(roles.into_iter().map(|r| (scope, r)));
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Every built-in role an account holds, directly or through its groups, at every scope.
pub async fn user_roles(conn: &mut Conn, user: Uuid) -> Result<Vec<(RoleScope, String)>, Error> {
    let a = identity::role_assignments(conn, user).await?;
    resolve(conn, a).await
}

/// Every built-in role a group gives its members.
pub async fn group_roles(conn: &mut Conn, group: Uuid) -> Result<Vec<(RoleScope, String)>, Error> {
    let a = identity::group_assignments(conn, group).await?;
    resolve(conn, a).await
}

/// Whether the project has no key admin yet (then its project admins may name the first).
pub async fn project_has_no_key_admin(conn: &mut Conn, project: Uuid) -> Result<bool, Error> {
    for a in identity::assignments_at(conn, Scope::Project(project)).await? {
        if expand_role(conn, &a.role)
            .await?
            .is_some_and(|r| r.iter().any(|x| x == "key-admin"))
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// 403 `outranked` (with `message`) unless the caller could grant every role of `held`.
fn require_grantable(
    state: &AppState,
    principal: &Principal,
    held: &[(RoleScope, String)],
    message: &str,
) -> Result<(), Error> {
    if state
        .authz
        .may_act_on(&principal.subject, &principal.ctx(state.now()), held)
    {
        Ok(())
    } else {
        Err(Error::Forbidden {
            code: "outranked",
            message: message.into(),
        })
    }
}

/// 403 `outranked` unless the caller could grant every role `user` holds. Acting on an account
/// (a new password, a removed second factor, a disabled or deleted account, narrower sources)
/// is as good as holding its roles, or as taking them away from their holder.
pub async fn require_act_on(state: &AppState, principal: &Principal, user: Uuid) -> Result<(), Error> {
    let held = {
        let mut conn = state.db.conn().await?;
        user_roles(&mut conn, user).await?
    };
    require_grantable(
        state,
        principal,
        &held,
        "this account holds roles you may not grant; acting on it needs the right to grant every one of them",
    )
}

/// 403 `outranked` unless the caller could grant every role `group` gives its members (adding
/// a member grants them, removing one or deleting the group revokes them).
pub async fn require_group_roles(state: &AppState, principal: &Principal, group: Uuid) -> Result<(), Error> {
    let held = {
        let mut conn = state.db.conn().await?;
        group_roles(&mut conn, group).await?
    };
    require_grantable(
        state,
        principal,
        &held,
        "this group gives roles you may not grant: changing its members needs the right to grant every one of them",
    )
}

/// Whether `holder` is, or contains, the caller: nobody grants or revokes their own roles.
pub async fn is_self(conn: &mut Conn, principal: &Principal, holder: Holder) -> Result<bool, Error> {
    Ok(match holder {
        Holder::User(u) => u == principal.user.id,
        Holder::Group(g) => groups::members(conn, g).await?.contains(&principal.user.id),
    })
}

/// Whether any of `roles` is a security role (those are never acted on by their own holder).
pub fn has_security_role(roles: &[String]) -> bool {
    roles.iter().any(|r| SECURITY_ROLES.contains(&r.as_str()))
}
