//! The role catalogue: built-in roles and custom roles (named bundles of project roles),
//! managed by system admins.

use rampart_api::{List, Role, RoleCreate, RoleUpdate};
use rampart_common::{Error, names};
use rampart_db::groups;
use rampart_iam::authz::{PROJECT_ROLES, action};

use crate::app::identity::check_text;
use crate::audit::operations::Operation;
use crate::auth::Principal;
use crate::state::AppState;

fn builtin_role(name: &str, description: &str) -> Role {
    Role {
        id: name.to_string(),
        name: name.to_string(),
        description: description.to_string(),
        builtin: true,
        implies: vec![],
    }
}

fn custom_role_view(r: groups::CustomRole) -> Role {
    Role {
        id: r.id.to_string(),
        name: r.name,
        description: r.description,
        builtin: false,
        implies: r.implies,
    }
}

pub const LIST_ROLES: Operation = Operation::new("role.list", "role");

/// Built-in and custom roles (any authenticated caller).
pub async fn list_roles(state: &AppState) -> Result<List<Role>, Error> {
    let mut items: Vec<Role> = rampart_api::BUILTIN_ROLES
        .iter()
        .map(|(n, d)| builtin_role(n, d))
        .collect();
    let mut conn = state.db.conn().await?;
    items.extend(groups::roles(&mut conn).await?.into_iter().map(custom_role_view));
    Ok(List { items, next: None })
}

/// 400 unless a bundle names at least one role, all of them project roles.
fn check_implies(implies: &[String]) -> Result<(), Error> {
    if implies.is_empty() {
        return Err(Error::field(
            "implies",
            "a custom role must grant at least one built-in role",
        ));
    }
    for r in implies {
        if !PROJECT_ROLES.contains(&r.as_str()) {
            // Bundles are for tenants: system and domain roles are granted one by one.
            return Err(Error::field(
                "implies",
                format!("{r:?} is not a project role ({})", PROJECT_ROLES.join(", ")),
            ));
        }
    }
    Ok(())
}

pub const CREATE_ROLE: Operation = Operation::new("role.create", "role");

/// Create a custom role: a named bundle of built-in project roles (system-admin).
pub async fn create_role(state: &AppState, principal: &Principal, req: RoleCreate) -> Result<Role, Error> {
    principal.require_system(state, action::IDENTITY_MANAGE)?;
    names::validate_name("name", &req.name)?;
    if rampart_api::is_builtin_role(&req.name) {
        return Err(Error::conflict(format!("{:?} is a built-in role", req.name)));
    }
    check_text("description", &req.description, 1024)?;
    check_implies(&req.implies)?;
    let mut conn = state.db.conn().await?;
    let r = groups::create_role(
        &mut conn,
        &req.name,
        req.description.as_deref().unwrap_or(""),
        &req.implies,
        state.now(),
    )
    .await?;
    tracing::info!(role = %r.name, by = %principal.user.name, "role created");
    Ok(custom_role_view(r))
}

pub const GET_ROLE: Operation = Operation::new("role.get", "role").target("id");

/// One role (a built-in role's id is its name).
pub async fn get_role(state: &AppState, id: &str) -> Result<Role, Error> {
    if let Some((n, d)) = rampart_api::BUILTIN_ROLES.iter().find(|(n, _)| *n == id) {
        return Ok(builtin_role(n, d));
    }
    let mut conn = state.db.conn().await?;
    groups::role(&mut conn, id)
        .await?
        .map(custom_role_view)
        .ok_or_else(|| Error::not_found("no such role"))
}

/// The custom role `id`, for a change (system-admin; built-in roles never change).
async fn custom_role(state: &AppState, principal: &Principal, id: &str) -> Result<groups::CustomRole, Error> {
    principal.require_system(state, action::IDENTITY_MANAGE)?;
    if rampart_api::is_builtin_role(id) {
        return Err(Error::conflict("built-in roles cannot be changed"));
    }
    let mut conn = state.db.conn().await?;
    groups::role(&mut conn, id)
        .await?
        .ok_or_else(|| Error::not_found("no such role"))
}

pub const UPDATE_ROLE: Operation = Operation::new("role.update", "role").target("id");

/// Change a custom role; holders get the new bundle at their next request.
pub async fn update_role(state: &AppState, principal: &Principal, id: &str, req: RoleUpdate) -> Result<Role, Error> {
    let mut r = custom_role(state, principal, id).await?;
    check_text("description", &req.description, 1024)?;
    if let Some(v) = req.description {
        r.description = v;
    }
    let mut conn = state.db.conn().await?;
    if let Some(v) = req.implies {
        check_implies(&v)?;
        // A bundle that gains a role would hand it to every holder without the grant rules:
        // an assigned custom role may only shrink.
        if v.iter().any(|x| !r.implies.contains(x)) && groups::role_assignment_count(&mut conn, &r.name).await? > 0 {
            return Err(Error::conflict(
                "an assigned custom role cannot gain roles; create a new role and grant it instead",
            ));
        }
        r.implies = v;
    }
    groups::update_role(&mut conn, &r).await?;
    tracing::info!(role = %r.name, by = %principal.user.name, "role updated");
    Ok(custom_role_view(r))
}

pub const DELETE_ROLE: Operation = Operation::new("role.delete", "role").target("id");

/// Delete an unassigned custom role.
pub async fn delete_role(state: &AppState, principal: &Principal, id: &str) -> Result<(), Error> {
    let r = custom_role(state, principal, id).await?;
    let mut conn = state.db.conn().await?;
    groups::delete_role(&mut conn, &r).await?;
    tracing::info!(role = %r.name, by = %principal.user.name, "role deleted");
    Ok(())
}
