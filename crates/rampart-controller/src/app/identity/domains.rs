//! Domains: created, changed and deleted by system admins; seen by those who read their
//! identities.

use rampart_api::{Domain, DomainCreate, DomainUpdate, List};
use rampart_common::page::{PageParams, finish_page};
use rampart_common::{Error, names};
use rampart_db::identity;
use rampart_iam::authz::{Target, action};
use uuid::Uuid;

use super::{check_cidrs, check_text, domain, domain_view};
use crate::audit::operations::Operation;
use crate::auth::Principal;
use crate::state::AppState;

pub const LIST_DOMAINS: Operation = Operation::new("domain.list", "domain");

/// Domains the caller may see.
pub async fn list_domains(state: &AppState, principal: &Principal, page: PageParams) -> Result<List<Domain>, Error> {
    let page = page.validate()?;
    let mut conn = state.db.conn().await?;
    let all = principal.can(state, action::IDENTITY_READ, Target::System);
    let mut items = Vec::new();
    let mut after = page.after.clone();
    // Filtering after the query: page until enough visible rows were found.
    loop {
        let rows = identity::list_domains(&mut conn, after.as_deref(), page.limit + 1).await?;
        let exhausted = rows.len() <= page.limit as usize;
        after = rows.last().map(|d| d.name.clone());
        items.extend(
            rows.into_iter()
                .filter(|d| all || principal.can(state, action::IDENTITY_READ, Target::Domain(d.id))),
        );
        if items.len() > page.limit as usize || exhausted {
            break;
        }
    }
    let (items, next) = finish_page(items, page.limit, |d| d.name.clone());
    Ok(List {
        items: items.into_iter().map(domain_view).collect(),
        next,
    })
}

pub const CREATE_DOMAIN: Operation = Operation::new("domain.create", "domain");

/// Create a domain (system-admin).
pub async fn create_domain(state: &AppState, principal: &Principal, req: DomainCreate) -> Result<Domain, Error> {
    principal.require_system(state, action::DOMAIN_MANAGE)?;
    names::validate_name("name", &req.name)?;
    check_text("description", &req.description, 1024)?;
    check_cidrs("allowed_source_cidrs", &req.allowed_source_cidrs)?;
    let mut conn = state.db.conn().await?;
    let d = identity::create_domain(
        &mut conn,
        &req.name,
        req.description.as_deref().unwrap_or(""),
        req.enabled.unwrap_or(true),
        &req.allowed_source_cidrs.unwrap_or_default(),
        state.now(),
    )
    .await?;
    tracing::info!(domain = %d.name, by = %principal.user.name, "domain created");
    Ok(domain_view(d))
}

pub const GET_DOMAIN: Operation = Operation::new("domain.get", "domain").target("id");

/// One domain.
pub async fn get_domain(state: &AppState, principal: &Principal, id: Uuid) -> Result<Domain, Error> {
    Ok(domain_view(domain(state, principal, id).await?))
}

pub const UPDATE_DOMAIN: Operation = Operation::new("domain.update", "domain").target("id");

/// Change a domain (system-admin).
pub async fn update_domain(
    state: &AppState,
    principal: &Principal,
    id: Uuid,
    req: DomainUpdate,
) -> Result<Domain, Error> {
    let mut d = domain(state, principal, id).await?;
    principal.require_system(state, action::DOMAIN_MANAGE)?;
    check_text("description", &req.description, 1024)?;
    check_cidrs("allowed_source_cidrs", &req.allowed_source_cidrs)?;
    if d.name == "default" && req.enabled == Some(false) {
        return Err(Error::conflict("the default domain cannot be disabled"));
    }
    if let Some(v) = req.description {
        d.description = v;
    }
    if let Some(v) = req.enabled {
        d.enabled = v;
    }
    if let Some(v) = req.allowed_source_cidrs {
        d.allowed_source_cidrs = v;
    }
    let mut conn = state.db.conn().await?;
    identity::update_domain(&mut conn, &d).await?;
    tracing::info!(domain = %d.name, by = %principal.user.name, "domain updated");
    Ok(domain_view(d))
}

pub const DELETE_DOMAIN: Operation = Operation::new("domain.delete", "domain").target("id");

/// Delete an empty domain (system-admin); never the default one.
pub async fn delete_domain(state: &AppState, principal: &Principal, id: Uuid) -> Result<(), Error> {
    let d = domain(state, principal, id).await?;
    principal.require_system(state, action::DOMAIN_MANAGE)?;
    if d.name == "default" {
        return Err(Error::conflict("the default domain cannot be deleted"));
    }
    let mut conn = state.db.conn().await?;
    identity::delete_domain(&mut conn, id).await?;
    tracing::info!(domain = %d.name, by = %principal.user.name, "domain deleted");
    Ok(())
}
