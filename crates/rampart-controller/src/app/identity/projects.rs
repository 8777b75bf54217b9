//! Projects: created and deleted by their domain's admins, changed by those or the project's
//! own admins, seen by whoever holds a role on them.

use rampart_api::{List, Project, ProjectCreate, ProjectUpdate};
use rampart_common::page::{PageRequest, finish_page};
use rampart_common::{Error, names};
use rampart_db::identity;
use rampart_iam::authz::{Target, action};
use uuid::Uuid;

use super::{check_text, domain_by_key, project, project_view};
use crate::audit::operations::Operation;
use crate::auth::Principal;
use crate::state::AppState;

pub const LIST_PROJECTS: Operation = Operation::new("project.list", "project");

/// Projects the caller may see: all for system readers, a domain's for its admins, otherwise
/// those it has a role on; only `domain`'s when given.
pub async fn list_projects(
    state: &AppState,
    principal: &Principal,
    domain: Option<&str>,
    page: PageRequest,
) -> Result<List<Project>, Error> {
    let mut conn = state.db.conn().await?;
    let domain = match domain {
        Some(k) => Some(domain_by_key(state, principal, &mut conn, Some(k)).await?.id),
        None => None,
    };
    let mut items = Vec::new();
    let mut after = page.after.clone();
    loop {
        let rows = identity::list_projects(&mut conn, domain, after.as_deref(), page.limit + 1).await?;
        let exhausted = rows.len() <= page.limit as usize;
        after = rows.last().map(|p| p.id.to_string());
        items.extend(rows.into_iter().filter(|p| {
            principal.can_in_domain(state, action::IDENTITY_READ, p.domain_id)
                || principal.subject.project_roles.iter().any(|(id, _)| *id == p.id)
        }));
        if items.len() > page.limit as usize || exhausted {
            break;
        }
    }
    let (items, next) = finish_page(items, page.limit, |p| p.id.to_string());
    Ok(List {
        items: items.into_iter().map(project_view).collect(),
        next,
    })
}

pub const CREATE_PROJECT: Operation = Operation::new("project.create", "project");

/// Create a project (system-admin, or domain-admin of its domain).
pub async fn create_project(state: &AppState, principal: &Principal, req: ProjectCreate) -> Result<Project, Error> {
    principal.require_somewhere(state, action::IDENTITY_MANAGE)?;
    names::validate_name("name", &req.name)?;
    check_text("description", &req.description, 1024)?;
    let mut conn = state.db.conn().await?;
    let d = domain_by_key(state, principal, &mut conn, req.domain.as_deref()).await?;
    principal.require_in_domain(state, action::IDENTITY_MANAGE, d.id, "domain")?;
    let p = identity::create_project(
        &mut conn,
        d.id,
        &req.name,
        req.description.as_deref().unwrap_or(""),
        req.enabled.unwrap_or(true),
        state.now(),
    )
    .await?;
    crate::app::keys::project_created(state, p.id).await?;
    tracing::info!(project = %p.name, domain = %d.name, by = %principal.user.name, "project created");
    Ok(project_view(p))
}

pub const GET_PROJECT: Operation = Operation::new("project.get", "project").target("id");

/// One project.
pub async fn get_project(state: &AppState, principal: &Principal, id: Uuid) -> Result<Project, Error> {
    Ok(project_view(project(state, principal, id).await?))
}

pub const UPDATE_PROJECT: Operation = Operation::new("project.update", "project").target("id");

/// Change a project (its domain's admins, or the project's own admins).
pub async fn update_project(
    state: &AppState,
    principal: &Principal,
    id: Uuid,
    req: ProjectUpdate,
) -> Result<Project, Error> {
    let mut p = project(state, principal, id).await?;
    let target = Target::Project {
        id,
        domain: p.domain_id,
    };
    if !(principal.can_in_domain(state, action::IDENTITY_MANAGE, p.domain_id)
        || principal.can(state, action::PROJECT_ADMIN, target))
    {
        return Err(Error::forbidden("your roles do not allow changing this project"));
    }
    check_text("description", &req.description, 1024)?;
    if let Some(v) = req.description {
        p.description = v;
    }
    if let Some(v) = req.enabled {
        p.enabled = v;
    }
    let mut conn = state.db.conn().await?;
    identity::update_project(&mut conn, &p).await?;
    tracing::info!(project = %p.name, by = %principal.user.name, "project updated");
    Ok(project_view(p))
}

pub const DELETE_PROJECT: Operation = Operation::new("project.delete", "project").target("id");

/// Delete a project (its domain's admins), with its keys.
pub async fn delete_project(state: &AppState, principal: &Principal, id: Uuid) -> Result<(), Error> {
    let p = project(state, principal, id).await?;
    principal.require_in_domain(state, action::IDENTITY_MANAGE, p.domain_id, "project")?;
    let mut tx = state.db.begin().await?;
    crate::app::volumes::lifecycle::before_project_delete(&mut tx, id).await?;
    crate::kms::before_project_delete(&mut tx, id, state.now()).await?;
    identity::delete_project(&mut tx, id).await?;
    rampart_db::Db::commit(tx).await?;
    crate::app::keys::after_project_delete(state, id).await;
    tracing::info!(project = %p.name, by = %principal.user.name, "project deleted");
    Ok(())
}
