//! Identity administration: domains, projects, users, groups, roles, role assignments and
//! the security-compliance policy. Every handler asks the authorizer before it acts; a
//! resource the caller may not see is 404, one it may see but not change is 403.

use axum::extract::State;
use axum::http::StatusCode;
use rampart_api::{
    Domain, DomainCreate, DomainUpdate, Group, GroupCreate, GroupUpdate, List, PasswordReset, Project, ProjectCreate,
    ProjectUpdate, Role, RoleAssignment, RoleAssignmentCreate, RoleCreate, RoleUpdate, ScopeRef, SecurityCompliance,
    User, UserCreate, UserUpdate,
};
use rampart_common::error::ErrorBody;
use rampart_common::page::{PageParams, finish_page};
use rampart_common::{Error, names};
use rampart_db::identity::{self, Holder, Scope};
use rampart_db::{Conn, groups};
use rampart_iam::authz::{PROJECT_ROLES, RoleScope, SYSTEM_ROLES, Target};
use serde::Deserialize;
use uuid::Uuid;

use crate::auth::Principal;
use crate::grants;
use crate::http::{ApiJson, ApiPath, ApiQuery};
use crate::identity::*;
use crate::state::AppState;

fn check_cidrs(field: &str, cidrs: &Option<Vec<String>>) -> Result<(), Error> {
    if let Some(c) = cidrs {
        rampart_iam::net::parse_cidrs(field, c)?;
    }
    Ok(())
}

fn check_text(field: &str, v: &Option<String>, max: usize) -> Result<(), Error> {
    match v {
        Some(s) if s.len() > max || s.chars().any(|c| c.is_control() && c != '\n') => Err(Error::field(
            field,
            format!("{field} must be at most {max} bytes of printable text"),
        )),
        _ => Ok(()),
    }
}

fn domain_view(d: identity::Domain) -> Domain {
    Domain {
        id: d.id,
        name: d.name,
        description: d.description,
        enabled: d.enabled,
        allowed_source_cidrs: d.allowed_source_cidrs,
    }
}

fn project_view(p: identity::Project) -> Project {
    Project {
        id: p.id,
        domain_id: p.domain_id,
        name: p.name,
        description: p.description,
        enabled: p.enabled,
    }
}

fn user_view(u: &identity::User, policy: &SecurityCompliance, now: time::OffsetDateTime) -> User {
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
        password_expires_at: password_expires_at(policy, u),
        locked_until: u.locked_until.filter(|t| *t > now),
        mfa_enrolled: u.mfa_enrolled(),
        last_login_at: u.last_login_at,
    }
}

/// The domain named `key` (name or id; `default` when absent), if the caller may see it (it
/// reads the domain's identities, or it is the caller's own domain). A missing domain and one
/// out of sight get the same 404, so the answer never tells whether a domain exists.
async fn domain_by_key(
    state: &AppState,
    principal: &Principal,
    conn: &mut Conn,
    key: Option<&str>,
) -> Result<identity::Domain, Error> {
    match identity::find_domain(conn, key.unwrap_or("default")).await? {
        Some(d) if d.id == principal.domain_id || principal.can_in_domain(state, "identity.read", d.id) => Ok(d),
        _ => Err(Error::not_found("no such domain")),
    }
}

// ---- domains ----

/// Domains you may see.
#[utoipa::path(get, path = "/v1/domains", tag = "identity", params(PageParams), security(("bearer" = [])),
    responses((status = 200, body = List<Domain>), (status = 401, body = ErrorBody)))]
pub async fn list_domains(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Result<axum::Json<List<Domain>>, Error> {
    let page = page.validate()?;
    let mut conn = state.db.conn().await?;
    let all = principal.can(&state, "identity.read", Target::System);
    let mut items = Vec::new();
    let mut after = page.after.clone();
    // Filtering after the query: page until enough visible rows were found.
    loop {
        let rows = identity::list_domains(&mut conn, after.as_deref(), page.limit + 1).await?;
        let exhausted = rows.len() <= page.limit as usize;
        after = rows.last().map(|d| d.name.clone());
        items.extend(
            rows.into_iter()
                .filter(|d| all || principal.can(&state, "identity.read", Target::Domain(d.id))),
        );
        if items.len() > page.limit as usize || exhausted {
            break;
        }
    }
    let (items, next) = finish_page(items, page.limit, |d| d.name.clone());
    Ok(axum::Json(List {
        items: items.into_iter().map(domain_view).collect(),
        next,
    }))
}

/// Create a domain (system-admin).
#[utoipa::path(post, path = "/v1/domains", tag = "identity", request_body = DomainCreate, security(("bearer" = [])),
    responses((status = 201, body = Domain), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_domain(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(req): ApiJson<DomainCreate>,
) -> Result<(StatusCode, axum::Json<Domain>), Error> {
    principal.require_system(&state, "domain.manage")?;
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
    Ok((StatusCode::CREATED, axum::Json(domain_view(d))))
}

async fn visible_domain(state: &AppState, principal: &Principal, id: Uuid) -> Result<identity::Domain, Error> {
    let mut conn = state.db.conn().await?;
    let d = identity::find_domain(&mut conn, &id.to_string())
        .await?
        .filter(|d| d.id == id);
    match d {
        Some(d) if principal.can_in_domain(state, "identity.read", d.id) => Ok(d),
        _ => Err(Error::not_found("no such domain")),
    }
}

/// One domain.
#[utoipa::path(get, path = "/v1/domains/{id}", tag = "identity", params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = Domain), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_domain(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<axum::Json<Domain>, Error> {
    Ok(axum::Json(domain_view(visible_domain(&state, &principal, id).await?)))
}

/// Change a domain (system-admin). Disabling it ends its users' sessions.
#[utoipa::path(patch, path = "/v1/domains/{id}", tag = "identity", params(("id" = Uuid, Path)), request_body = DomainUpdate, security(("bearer" = [])),
    responses((status = 200, body = Domain), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn update_domain(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(req): ApiJson<DomainUpdate>,
) -> Result<axum::Json<Domain>, Error> {
    let mut d = visible_domain(&state, &principal, id).await?;
    principal.require_system(&state, "domain.manage")?;
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
    Ok(axum::Json(domain_view(d)))
}

/// Delete an empty domain (system-admin).
#[utoipa::path(delete, path = "/v1/domains/{id}", tag = "identity", params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_domain(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, Error> {
    let d = visible_domain(&state, &principal, id).await?;
    principal.require_system(&state, "domain.manage")?;
    if d.name == "default" {
        return Err(Error::conflict("the default domain cannot be deleted"));
    }
    let mut conn = state.db.conn().await?;
    identity::delete_domain(&mut conn, id).await?;
    tracing::info!(domain = %d.name, by = %principal.user.name, "domain deleted");
    Ok(StatusCode::NO_CONTENT)
}

// ---- projects ----

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DomainFilter {
    /// Only this domain (name or id).
    pub domain: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

impl DomainFilter {
    fn page(&self) -> Result<rampart_common::page::PageRequest, Error> {
        PageParams {
            limit: self.limit,
            cursor: self.cursor.clone(),
        }
        .validate()
    }
}

/// Projects you may see: all for system readers, a domain's for its admins, otherwise those
/// you have a role on.
#[utoipa::path(get, path = "/v1/projects", tag = "identity", params(DomainFilter), security(("bearer" = [])),
    responses((status = 200, body = List<Project>), (status = 401, body = ErrorBody)))]
pub async fn list_projects(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(q): ApiQuery<DomainFilter>,
) -> Result<axum::Json<List<Project>>, Error> {
    let page = q.page()?;
    let mut conn = state.db.conn().await?;
    let domain = match &q.domain {
        Some(k) => Some(domain_by_key(&state, &principal, &mut conn, Some(k)).await?.id),
        None => None,
    };
    let mut items = Vec::new();
    let mut after = page.after.clone();
    loop {
        let rows = identity::list_projects(&mut conn, domain, after.as_deref(), page.limit + 1).await?;
        let exhausted = rows.len() <= page.limit as usize;
        after = rows.last().map(|p| p.id.to_string());
        items.extend(rows.into_iter().filter(|p| {
            principal.can_in_domain(&state, "identity.read", p.domain_id)
                || principal.subject.project_roles.iter().any(|(id, _)| *id == p.id)
        }));
        if items.len() > page.limit as usize || exhausted {
            break;
        }
    }
    let (items, next) = finish_page(items, page.limit, |p| p.id.to_string());
    Ok(axum::Json(List {
        items: items.into_iter().map(project_view).collect(),
        next,
    }))
}

/// Create a project (system-admin, or domain-admin of its domain).
#[utoipa::path(post, path = "/v1/projects", tag = "identity", request_body = ProjectCreate, security(("bearer" = [])),
    responses((status = 201, body = Project), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_project(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(req): ApiJson<ProjectCreate>,
) -> Result<(StatusCode, axum::Json<Project>), Error> {
    principal.require_somewhere(&state, "identity.manage")?;
    names::validate_name("name", &req.name)?;
    check_text("description", &req.description, 1024)?;
    let mut conn = state.db.conn().await?;
    let d = domain_by_key(&state, &principal, &mut conn, req.domain.as_deref()).await?;
    principal.require_in_domain(&state, "identity.manage", d.id, "domain")?;
    let p = identity::create_project(
        &mut conn,
        d.id,
        &req.name,
        req.description.as_deref().unwrap_or(""),
        req.enabled.unwrap_or(true),
        state.now(),
    )
    .await?;
    crate::kms::project_created(&state, p.id).await?;
    tracing::info!(project = %p.name, domain = %d.name, by = %principal.user.name, "project created");
    Ok((StatusCode::CREATED, axum::Json(project_view(p))))
}

async fn visible_project(state: &AppState, principal: &Principal, id: Uuid) -> Result<identity::Project, Error> {
    let mut conn = state.db.conn().await?;
    match identity::project_by_id(&mut conn, id).await? {
        // Key admins and key users see the project whose keys they hold.
        Some(p)
            if principal.can_in_domain(state, "identity.read", p.domain_id)
                || ["project.read", "keys.use", "keys.manage"].iter().any(|a| {
                    principal.can(
                        state,
                        a,
                        Target::Project {
                            id: p.id,
                            domain: p.domain_id,
                        },
                    )
                }) =>
        {
            Ok(p)
        }
        _ => Err(Error::not_found("no such project")),
    }
}

/// One project.
#[utoipa::path(get, path = "/v1/projects/{id}", tag = "identity", params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = Project), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_project(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<axum::Json<Project>, Error> {
    Ok(axum::Json(project_view(visible_project(&state, &principal, id).await?)))
}

/// Change a project (its domain's admins, or the project's own admins).
#[utoipa::path(patch, path = "/v1/projects/{id}", tag = "identity", params(("id" = Uuid, Path)), request_body = ProjectUpdate, security(("bearer" = [])),
    responses((status = 200, body = Project), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn update_project(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(req): ApiJson<ProjectUpdate>,
) -> Result<axum::Json<Project>, Error> {
    let mut p = visible_project(&state, &principal, id).await?;
    if !(principal.can_in_domain(&state, "identity.manage", p.domain_id)
        || principal.can(
            &state,
            "project.admin",
            Target::Project {
                id,
                domain: p.domain_id,
            },
        ))
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
    Ok(axum::Json(project_view(p)))
}

/// Delete a project (its domain's admins).
#[utoipa::path(delete, path = "/v1/projects/{id}", tag = "identity", params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_project(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, Error> {
    let p = visible_project(&state, &principal, id).await?;
    principal.require_in_domain(&state, "identity.manage", p.domain_id, "project")?;
    let mut tx = state.db.begin().await?;
    crate::kms::before_project_delete(&mut tx, id, state.now()).await?;
    identity::delete_project(&mut tx, id).await?;
    rampart_db::Db::commit(tx).await?;
    crate::kms::after_project_delete(&state, id).await;
    tracing::info!(project = %p.name, by = %principal.user.name, "project deleted");
    Ok(StatusCode::NO_CONTENT)
}

// ---- users ----

/// Users you may administer: all for system readers, a domain's for its admins.
#[utoipa::path(get, path = "/v1/users", tag = "identity", params(DomainFilter), security(("bearer" = [])),
    responses((status = 200, body = List<User>), (status = 401, body = ErrorBody)))]
pub async fn list_users(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(q): ApiQuery<DomainFilter>,
) -> Result<axum::Json<List<User>>, Error> {
    let page = q.page()?;
    let policy = state.compliance().await?;
    let now = state.now();
    let mut conn = state.db.conn().await?;
    let domain = match &q.domain {
        Some(k) => Some(domain_by_key(&state, &principal, &mut conn, Some(k)).await?.id),
        None => None,
    };
    let mut items = Vec::new();
    let mut after = page.after.clone();
    loop {
        let rows = identity::list_users(&mut conn, domain, after.as_deref(), page.limit + 1).await?;
        let exhausted = rows.len() <= page.limit as usize;
        after = rows.last().map(|u| u.id.to_string());
        items
            .extend(rows.into_iter().filter(|u| {
                u.id == principal.user.id || principal.can_in_domain(&state, "identity.read", u.domain_id)
            }));
        if items.len() > page.limit as usize || exhausted {
            break;
        }
    }
    let (items, next) = finish_page(items, page.limit, |u| u.id.to_string());
    Ok(axum::Json(List {
        items: items.iter().map(|u| user_view(u, &policy, now)).collect(),
        next,
    }))
}

/// Create a user (system-admin, or domain-admin of its domain). Unless told otherwise the
/// user must change the given password at first login.
#[utoipa::path(post, path = "/v1/users", tag = "identity", request_body = UserCreate, security(("bearer" = [])),
    responses((status = 201, body = User), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_user(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(req): ApiJson<UserCreate>,
) -> Result<(StatusCode, axum::Json<User>), Error> {
    principal.require_somewhere(&state, "identity.manage")?;
    names::validate_name("name", &req.name)?;
    check_text("description", &req.description, 1024)?;
    check_text("email", &req.email, 254)?;
    check_cidrs("allowed_source_cidrs", &req.allowed_source_cidrs)?;
    if let (Some(f), Some(u)) = (req.valid_from, req.valid_until)
        && f >= u
    {
        return Err(Error::field("valid_until", "valid_until must be after valid_from"));
    }
    let policy = state.compliance().await?;
    let now = state.now();
    let mut conn = state.db.conn().await?;
    let d = domain_by_key(&state, &principal, &mut conn, req.domain.as_deref()).await?;
    principal.require_in_domain(&state, "identity.manage", d.id, "domain")?;
    drop(conn);
    let mut user = identity::User {
        id: Uuid::new_v4(),
        domain_id: d.id,
        name: req.name.clone(),
        email: req.email.clone(),
        description: req.description.clone().unwrap_or_default(),
        enabled: req.enabled.unwrap_or(true),
        password_change_required: req
            .password_change_required
            .unwrap_or(policy.change_password_upon_first_use),
        valid_from: req.valid_from,
        valid_until: req.valid_until,
        allowed_source_cidrs: req.allowed_source_cidrs.clone().unwrap_or_default(),
        ..Default::default()
    };
    if let Some(pw) = &req.password {
        let v = password_violations(&state, &policy, &user, pw.expose(), false).await?;
        if !v.is_empty() {
            return Err(policy_violation(v));
        }
        user.password_hash = Some(hash_password(pw.expose()).await?);
        user.password_changed_at = Some(now);
    }
    let mut conn = state.db.begin().await?;
    identity::create_user(&mut conn, &user, now).await?;
    rampart_db::Db::commit(conn).await?;
    tracing::info!(user = %user.name, domain = %d.name, by = %principal.user.name, "user created");
    Ok((StatusCode::CREATED, axum::Json(user_view(&user, &policy, now))))
}

/// The user `id` if the caller may see it (itself, or an administrator of its domain).
async fn visible_user(state: &AppState, principal: &Principal, id: Uuid) -> Result<identity::User, Error> {
    let mut conn = state.db.conn().await?;
    match identity::user_by_id(&mut conn, id).await? {
        Some(u) if u.id == principal.user.id || principal.can_in_domain(state, "identity.read", u.domain_id) => Ok(u),
        _ => Err(Error::not_found("no such user")),
    }
}

/// One user.
#[utoipa::path(get, path = "/v1/users/{id}", tag = "identity", params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = User), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_user(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<axum::Json<User>, Error> {
    let u = visible_user(&state, &principal, id).await?;
    let policy = state.compliance().await?;
    Ok(axum::Json(user_view(&u, &policy, state.now())))
}

/// Change a user. Disabling it or narrowing its window or sources ends its sessions.
#[utoipa::path(patch, path = "/v1/users/{id}", tag = "identity", params(("id" = Uuid, Path)), request_body = UserUpdate, security(("bearer" = [])),
    responses((status = 200, body = User), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn update_user(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(req): ApiJson<UserUpdate>,
) -> Result<axum::Json<User>, Error> {
    let mut u = visible_user(&state, &principal, id).await?;
    principal.require_in_domain(&state, "identity.manage", u.domain_id, "user")?;
    if u.id != principal.user.id {
        grants::require_act_on(&state, &principal, u.id).await?;
    }
    check_text("description", &req.description, 1024)?;
    check_text("email", &req.email.clone().flatten(), 254)?;
    check_cidrs("allowed_source_cidrs", &req.allowed_source_cidrs)?;
    if u.id == principal.user.id && (req.enabled == Some(false) || req.allowed_source_cidrs.is_some()) {
        return Err(Error::conflict(
            "you cannot disable yourself or change your own allowed sources",
        ));
    }
    if let Some(v) = req.email {
        u.email = v;
    }
    if let Some(v) = req.description {
        u.description = v;
    }
    if let Some(v) = req.enabled {
        u.enabled = v;
    }
    if let Some(v) = req.valid_from {
        u.valid_from = v;
    }
    if let Some(v) = req.valid_until {
        u.valid_until = v;
    }
    if let (Some(f), Some(t)) = (u.valid_from, u.valid_until)
        && f >= t
    {
        return Err(Error::field("valid_until", "valid_until must be after valid_from"));
    }
    if let Some(v) = req.allowed_source_cidrs {
        u.allowed_source_cidrs = v;
    }
    if let Some(v) = req.password_change_required {
        u.password_change_required = v;
    }
    let now = state.now();
    let mut tx = state.db.begin().await?;
    identity::update_user_profile(&mut tx, &u).await?;
    // Disabling, an expired window and a forced password change end every session and
    // application credential of the account.
    if !u.enabled || !within_validity(&u, now) || req.password_change_required == Some(true) {
        identity::revoke_user_tokens(&mut tx, u.id, now).await?;
    }
    rampart_db::Db::commit(tx).await?;
    tracing::info!(user = %u.name, by = %principal.user.name, "user updated");
    let policy = state.compliance().await?;
    Ok(axum::Json(user_view(&u, &policy, now)))
}

/// Delete a user (not yourself).
#[utoipa::path(delete, path = "/v1/users/{id}", tag = "identity", params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_user(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, Error> {
    let u = visible_user(&state, &principal, id).await?;
    principal.require_in_domain(&state, "identity.manage", u.domain_id, "user")?;
    if u.id == principal.user.id {
        return Err(Error::conflict("you cannot delete yourself"));
    }
    grants::require_act_on(&state, &principal, u.id).await?;
    let mut conn = state.db.conn().await?;
    identity::delete_user(&mut conn, id).await?;
    tracing::info!(user = %u.name, by = %principal.user.name, "user deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Unlock an account locked after failed logins.
#[utoipa::path(post, path = "/v1/users/{id}/unlock", tag = "identity", params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Unlocked"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn unlock_user(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, Error> {
    let u = visible_user(&state, &principal, id).await?;
    principal.require_in_domain(&state, "user.unlock", u.domain_id, "user")?;
    // The security admin owns the lockout policy and unlocks any account (unlocking gives the
    // caller nothing of the account); everyone else only accounts they outrank.
    if !principal.can(&state, "security.manage", Target::System) {
        grants::require_act_on(&state, &principal, u.id).await?;
    }
    let mut conn = state.db.conn().await?;
    identity::unlock(&mut conn, id).await?;
    tracing::warn!(user = %u.name, by = %principal.user.name, "account unlocked");
    Ok(StatusCode::NO_CONTENT)
}

/// Set a new password for a user (who must change it at next login unless told otherwise);
/// ends the user's sessions.
#[utoipa::path(post, path = "/v1/users/{id}/reset-password", tag = "identity", params(("id" = Uuid, Path)), request_body = PasswordReset, security(("bearer" = [])),
    responses((status = 204, description = "Password reset"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn reset_password(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(req): ApiJson<PasswordReset>,
) -> Result<StatusCode, Error> {
    let u = visible_user(&state, &principal, id).await?;
    principal.require_in_domain(&state, "user.reset_password", u.domain_id, "user")?;
    if u.id == principal.user.id {
        return Err(Error::conflict("change your own password with POST /v1/auth/password"));
    }
    grants::require_act_on(&state, &principal, u.id).await?;
    let policy = state.compliance().await?;
    let v = password_violations(&state, &policy, &u, req.password.expose(), false).await?;
    if !v.is_empty() {
        return Err(policy_violation(v));
    }
    let hash = hash_password(req.password.expose()).await?;
    let now = state.now();
    let mut tx = state.db.begin().await?;
    identity::set_password(
        &mut tx,
        u.id,
        &hash,
        req.password_change_required
            .unwrap_or(policy.change_password_upon_first_use),
        now,
    )
    .await?;
    identity::unlock(&mut tx, u.id).await?;
    identity::revoke_user_tokens(&mut tx, u.id, now).await?;
    rampart_db::Db::commit(tx).await?;
    tracing::warn!(user = %u.name, by = %principal.user.name, "password reset by an administrator");
    Ok(StatusCode::NO_CONTENT)
}

/// Remove a user's second factor (for a lost device); the user enrols again at next login.
#[utoipa::path(delete, path = "/v1/users/{id}/mfa", tag = "identity", params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Second factor removed"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn reset_mfa(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, Error> {
    let u = visible_user(&state, &principal, id).await?;
    principal.require_in_domain(&state, "user.reset_password", u.domain_id, "user")?;
    if u.id == principal.user.id {
        return Err(Error::conflict("another administrator must reset your second factor"));
    }
    grants::require_act_on(&state, &principal, u.id).await?;
    let mut tx = state.db.begin().await?;
    identity::remove_totp(&mut tx, u.id).await?;
    identity::revoke_user_tokens(&mut tx, u.id, state.now()).await?;
    rampart_db::Db::commit(tx).await?;
    tracing::warn!(user = %u.name, by = %principal.user.name, "second factor removed by an administrator");
    Ok(StatusCode::NO_CONTENT)
}

// ---- groups ----

fn group_view(g: groups::Group) -> Group {
    Group {
        id: g.id,
        domain_id: g.domain_id,
        name: g.name,
        description: g.description,
    }
}

/// Groups you may administer.
#[utoipa::path(get, path = "/v1/groups", tag = "identity", params(DomainFilter), security(("bearer" = [])),
    responses((status = 200, body = List<Group>), (status = 401, body = ErrorBody)))]
pub async fn list_groups(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(q): ApiQuery<DomainFilter>,
) -> Result<axum::Json<List<Group>>, Error> {
    let page = q.page()?;
    let mut conn = state.db.conn().await?;
    let domain = match &q.domain {
        Some(k) => Some(domain_by_key(&state, &principal, &mut conn, Some(k)).await?.id),
        None => None,
    };
    let mut items = Vec::new();
    let mut after = page.after.clone();
    loop {
        let rows = groups::list(&mut conn, domain, after.as_deref(), page.limit + 1).await?;
        let exhausted = rows.len() <= page.limit as usize;
        after = rows.last().map(|g| g.id.to_string());
        items.extend(
            rows.into_iter()
                .filter(|g| principal.can_in_domain(&state, "identity.read", g.domain_id)),
        );
        if items.len() > page.limit as usize || exhausted {
            break;
        }
    }
    let (items, next) = finish_page(items, page.limit, |g| g.id.to_string());
    Ok(axum::Json(List {
        items: items.into_iter().map(group_view).collect(),
        next,
    }))
}

/// Create a group.
#[utoipa::path(post, path = "/v1/groups", tag = "identity", request_body = GroupCreate, security(("bearer" = [])),
    responses((status = 201, body = Group), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_group(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(req): ApiJson<GroupCreate>,
) -> Result<(StatusCode, axum::Json<Group>), Error> {
    principal.require_somewhere(&state, "identity.manage")?;
    names::validate_name("name", &req.name)?;
    check_text("description", &req.description, 1024)?;
    let mut conn = state.db.conn().await?;
    let d = domain_by_key(&state, &principal, &mut conn, req.domain.as_deref()).await?;
    principal.require_in_domain(&state, "identity.manage", d.id, "domain")?;
    let g = groups::create(
        &mut conn,
        d.id,
        &req.name,
        req.description.as_deref().unwrap_or(""),
        state.now(),
    )
    .await?;
    tracing::info!(group = %g.name, by = %principal.user.name, "group created");
    Ok((StatusCode::CREATED, axum::Json(group_view(g))))
}

async fn visible_group(state: &AppState, principal: &Principal, id: Uuid) -> Result<groups::Group, Error> {
    let mut conn = state.db.conn().await?;
    match groups::get(&mut conn, id).await? {
        Some(g) if principal.can_in_domain(state, "identity.read", g.domain_id) => Ok(g),
        _ => Err(Error::not_found("no such group")),
    }
}

/// One group.
#[utoipa::path(get, path = "/v1/groups/{id}", tag = "identity", params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = Group), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_group(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<axum::Json<Group>, Error> {
    Ok(axum::Json(group_view(visible_group(&state, &principal, id).await?)))
}

/// Change a group.
#[utoipa::path(patch, path = "/v1/groups/{id}", tag = "identity", params(("id" = Uuid, Path)), request_body = GroupUpdate, security(("bearer" = [])),
    responses((status = 200, body = Group), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn update_group(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(req): ApiJson<GroupUpdate>,
) -> Result<axum::Json<Group>, Error> {
    let mut g = visible_group(&state, &principal, id).await?;
    principal.require_in_domain(&state, "identity.manage", g.domain_id, "group")?;
    check_text("description", &req.description, 1024)?;
    if let Some(v) = req.description {
        g.description = v;
    }
    let mut conn = state.db.conn().await?;
    groups::update(&mut conn, &g).await?;
    Ok(axum::Json(group_view(g)))
}

/// Delete a group; its members lose the roles it gave them at once.
#[utoipa::path(delete, path = "/v1/groups/{id}", tag = "identity", params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_group(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, Error> {
    let g = visible_group(&state, &principal, id).await?;
    principal.require_in_domain(&state, "identity.manage", g.domain_id, "group")?;
    grants::require_group_roles(&state, &principal, id).await?;
    let mut tx = state.db.begin().await?;
    identity::revoke_group_tokens(&mut tx, id, state.now()).await?;
    groups::delete(&mut tx, id).await?;
    rampart_db::Db::commit(tx).await?;
    tracing::info!(group = %g.name, by = %principal.user.name, "group deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Members of a group (user ids).
#[utoipa::path(get, path = "/v1/groups/{id}/users", tag = "identity", params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = List<Uuid>), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn group_members(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<axum::Json<List<Uuid>>, Error> {
    visible_group(&state, &principal, id).await?;
    let mut conn = state.db.conn().await?;
    Ok(axum::Json(List {
        items: groups::members(&mut conn, id).await?,
        next: None,
    }))
}

/// Add a user of the same domain to a group.
#[utoipa::path(put, path = "/v1/groups/{id}/users/{user}", tag = "identity", params(("id" = Uuid, Path), ("user" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Member added"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn add_group_member(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((id, user)): ApiPath<(Uuid, Uuid)>,
) -> Result<StatusCode, Error> {
    let g = visible_group(&state, &principal, id).await?;
    principal.require_in_domain(&state, "identity.manage", g.domain_id, "group")?;
    let u = visible_user(&state, &principal, user).await?;
    if u.domain_id != g.domain_id {
        return Err(Error::validation("a group holds users of its own domain only"));
    }
    if u.id == principal.user.id {
        return Err(Error::forbidden("you cannot add yourself to a group"));
    }
    // Adding a member grants it every role of the group: the caller must be able to grant them
    // all, and to act on the account.
    grants::require_group_roles(&state, &principal, id).await?;
    grants::require_act_on(&state, &principal, u.id).await?;
    let mut conn = state.db.conn().await?;
    groups::add_member(&mut conn, id, user, state.now()).await?;
    crate::audit::note_detail("user", u.id.to_string());
    tracing::info!(group = %g.name, user = %u.name, by = %principal.user.name, "group member added");
    Ok(StatusCode::NO_CONTENT)
}

/// Remove a user from a group; the roles it gave end at once.
#[utoipa::path(delete, path = "/v1/groups/{id}/users/{user}", tag = "identity", params(("id" = Uuid, Path), ("user" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Member removed"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn remove_group_member(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((id, user)): ApiPath<(Uuid, Uuid)>,
) -> Result<StatusCode, Error> {
    let g = visible_group(&state, &principal, id).await?;
    principal.require_in_domain(&state, "identity.manage", g.domain_id, "group")?;
    if user == principal.user.id {
        return Err(Error::forbidden("you cannot remove yourself from a group"));
    }
    grants::require_group_roles(&state, &principal, id).await?;
    grants::require_act_on(&state, &principal, user).await?;
    crate::audit::note_detail("user", user.to_string());
    let mut tx = state.db.begin().await?;
    if !groups::remove_member(&mut tx, id, user).await? {
        return Err(Error::not_found("that user is not in the group"));
    }
    identity::revoke_user_tokens(&mut tx, user, state.now()).await?;
    rampart_db::Db::commit(tx).await?;
    tracing::info!(group = %g.name, user = %user, by = %principal.user.name, "group member removed");
    Ok(StatusCode::NO_CONTENT)
}

// ---- roles ----

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

/// Built-in and custom roles.
#[utoipa::path(get, path = "/v1/roles", tag = "identity", security(("bearer" = [])),
    responses((status = 200, body = List<Role>), (status = 401, body = ErrorBody)))]
pub async fn list_roles(State(state): State<AppState>, _principal: Principal) -> Result<axum::Json<List<Role>>, Error> {
    let mut items: Vec<Role> = rampart_api::BUILTIN_ROLES
        .iter()
        .map(|(n, d)| builtin_role(n, d))
        .collect();
    let mut conn = state.db.conn().await?;
    items.extend(groups::roles(&mut conn).await?.into_iter().map(custom_role_view));
    Ok(axum::Json(List { items, next: None }))
}

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

/// Create a custom role: a named bundle of built-in project roles (system-admin).
#[utoipa::path(post, path = "/v1/roles", tag = "identity", request_body = RoleCreate, security(("bearer" = [])),
    responses((status = 201, body = Role), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_role(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(req): ApiJson<RoleCreate>,
) -> Result<(StatusCode, axum::Json<Role>), Error> {
    principal.require_system(&state, "identity.manage")?;
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
    Ok((StatusCode::CREATED, axum::Json(custom_role_view(r))))
}

async fn find_role(state: &AppState, id: &str) -> Result<Role, Error> {
    if let Some((n, d)) = rampart_api::BUILTIN_ROLES.iter().find(|(n, _)| *n == id) {
        return Ok(builtin_role(n, d));
    }
    let mut conn = state.db.conn().await?;
    groups::role(&mut conn, id)
        .await?
        .map(custom_role_view)
        .ok_or_else(|| Error::not_found("no such role"))
}

/// One role (a built-in role's id is its name).
#[utoipa::path(get, path = "/v1/roles/{id}", tag = "identity", params(("id" = String, Path)), security(("bearer" = [])),
    responses((status = 200, body = Role), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_role(
    State(state): State<AppState>,
    _principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<axum::Json<Role>, Error> {
    Ok(axum::Json(find_role(&state, &id).await?))
}

async fn custom_role(state: &AppState, principal: &Principal, id: &str) -> Result<groups::CustomRole, Error> {
    principal.require_system(state, "identity.manage")?;
    if rampart_api::is_builtin_role(id) {
        return Err(Error::conflict("built-in roles cannot be changed"));
    }
    let mut conn = state.db.conn().await?;
    groups::role(&mut conn, id)
        .await?
        .ok_or_else(|| Error::not_found("no such role"))
}

/// Change a custom role; holders get the new bundle at their next request.
#[utoipa::path(patch, path = "/v1/roles/{id}", tag = "identity", params(("id" = String, Path)), request_body = RoleUpdate, security(("bearer" = [])),
    responses((status = 200, body = Role), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn update_role(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<RoleUpdate>,
) -> Result<axum::Json<Role>, Error> {
    let mut r = custom_role(&state, &principal, &id).await?;
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
    Ok(axum::Json(custom_role_view(r)))
}

/// Delete an unassigned custom role.
#[utoipa::path(delete, path = "/v1/roles/{id}", tag = "identity", params(("id" = String, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_role(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, Error> {
    let r = custom_role(&state, &principal, &id).await?;
    let mut conn = state.db.conn().await?;
    groups::delete_role(&mut conn, &r).await?;
    tracing::info!(role = %r.name, by = %principal.user.name, "role deleted");
    Ok(StatusCode::NO_CONTENT)
}

// ---- role assignments ----

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
            visible_domain(state, principal, d).await?;
            RoleScope::Domain(d)
        }
        Scope::Project(p) => {
            let project = visible_project(state, principal, p).await?;
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
        (Some(hd), RoleScope::System) => principal.can_in_domain(state, "identity.read", hd),
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

/// Grant a role to a user or group at a scope.
#[utoipa::path(post, path = "/v1/role-assignments", tag = "identity", request_body = RoleAssignmentCreate, security(("bearer" = [])),
    responses((status = 201, body = RoleAssignment), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn create_assignment(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(req): ApiJson<RoleAssignmentCreate>,
) -> Result<(StatusCode, axum::Json<RoleAssignment>), Error> {
    let holder = holder(req.user, req.group)?;
    let scope = scope_of(&req.scope)?;
    let roles = role_members(&state, &req.role).await?;
    let role_scope = require_assignment_rights(&state, &principal, &roles, scope).await?;
    require_holder(&state, &principal, holder, role_scope).await?;
    let mut conn = state.db.conn().await?;
    if grants::is_self(&mut conn, &principal, holder).await? {
        return Err(Error::forbidden(
            "you cannot grant roles to yourself or to a group you belong to",
        ));
    }
    let id = identity::create_assignment(&mut conn, holder, &req.role, scope, state.now()).await?;
    tracing::info!(role = %req.role, holder = ?holder, scope = ?scope, by = %principal.user.name, "role granted");
    Ok((
        StatusCode::CREATED,
        axum::Json(RoleAssignment {
            id,
            user: req.user,
            group: req.group,
            role: req.role,
            scope: scope_view(scope),
        }),
    ))
}

/// Whether the caller may see an assignment: system readers see all; domain readers those on
/// their domains; project admins and key admins those on their projects; everyone their own.
async fn assignment_visible(
    state: &AppState,
    principal: &Principal,
    conn: &mut Conn,
    project_domains: &mut std::collections::HashMap<Uuid, Option<Uuid>>,
    a: &identity::RoleAssignment,
) -> Result<bool, Error> {
    if principal.can(state, "identity.read", Target::System) || a.holder == Holder::User(principal.user.id) {
        return Ok(true);
    }
    Ok(match a.scope {
        Scope::System => false,
        Scope::Domain(d) => principal.can(state, "identity.read", Target::Domain(d)),
        Scope::Project(p) => {
            if let std::collections::hash_map::Entry::Vacant(e) = project_domains.entry(p) {
                e.insert(identity::project_by_id(conn, p).await?.map(|x| x.domain_id));
            }
            project_domains[&p].is_some_and(|d| {
                let t = Target::Project { id: p, domain: d };
                principal.can(state, "assignment.project", t) || principal.can(state, "keys.manage", t)
            })
        }
    })
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AssignmentFilter {
    pub user: Option<Uuid>,
    pub group: Option<Uuid>,
    /// Only assignments on this project.
    pub project: Option<Uuid>,
    /// Only assignments on this domain.
    pub domain: Option<Uuid>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// Role assignments you may see: all for system readers; on the domains and projects you
/// administer; and your own.
#[utoipa::path(get, path = "/v1/role-assignments", tag = "identity", params(AssignmentFilter), security(("bearer" = [])),
    responses((status = 200, body = List<RoleAssignment>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn list_assignments(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(q): ApiQuery<AssignmentFilter>,
) -> Result<axum::Json<List<RoleAssignment>>, Error> {
    let page = PageParams {
        limit: q.limit,
        cursor: q.cursor.clone(),
    }
    .validate()?;
    let holder = match (q.user, q.group) {
        (None, None) => None,
        (u, g) => Some(holder(u, g)?),
    };
    let scope = match (q.project, q.domain) {
        (Some(p), None) => Some(Scope::Project(p)),
        (None, Some(d)) => Some(Scope::Domain(d)),
        (None, None) => None,
        _ => return Err(Error::validation("filter on project or domain, not both")),
    };
    let mut conn = state.db.conn().await?;
    let mut project_domains = std::collections::HashMap::new();
    let mut items = Vec::new();
    let mut after = page.after.clone();
    loop {
        let rows = identity::list_assignments(&mut conn, holder, scope, after.as_deref(), page.limit + 1).await?;
        let exhausted = rows.len() <= page.limit as usize;
        after = rows.last().map(|a| a.id.to_string());
        for a in rows {
            if assignment_visible(&state, &principal, &mut conn, &mut project_domains, &a).await? {
                items.push(a);
            }
        }
        if items.len() > page.limit as usize || exhausted {
            break;
        }
    }
    let (items, next) = finish_page(items, page.limit, |a| a.id.to_string());
    Ok(axum::Json(List {
        items: items.into_iter().map(assignment_view).collect(),
        next,
    }))
}

/// Revoke a role assignment; the holders' sessions end at once.
#[utoipa::path(delete, path = "/v1/role-assignments/{id}", tag = "identity", params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Revoked"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_assignment(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, Error> {
    let a = {
        let mut conn = state.db.conn().await?;
        let a = identity::assignment_by_id(&mut conn, id).await?;
        let visible = match &a {
            Some(a) => assignment_visible(&state, &principal, &mut conn, &mut Default::default(), a).await?,
            None => false,
        };
        match a {
            Some(a) if visible => a,
            _ => return Err(Error::not_found("no such role assignment")),
        }
    };
    let roles = role_members(&state, &a.role)
        .await
        .unwrap_or_else(|_| vec![a.role.clone()]);
    {
        let mut conn = state.db.conn().await?;
        if grants::is_self(&mut conn, &principal, a.holder).await? && grants::has_security_role(&roles) {
            return Err(Error::forbidden("nobody revokes their own security roles"));
        }
    }
    require_assignment_rights(&state, &principal, &roles, a.scope).await?;
    let now = state.now();
    let mut tx = state.db.begin().await?;
    identity::delete_assignment(&mut tx, &a).await?;
    match a.holder {
        Holder::User(u) => identity::revoke_user_tokens(&mut tx, u, now).await?,
        Holder::Group(g) => identity::revoke_group_tokens(&mut tx, g, now).await?,
    };
    rampart_db::Db::commit(tx).await?;
    tracing::info!(role = %a.role, holder = ?a.holder, scope = ?a.scope, by = %principal.user.name, "role revoked");
    Ok(StatusCode::NO_CONTENT)
}

// ---- security compliance ----

/// The password, lockout, MFA and session policy.
#[utoipa::path(get, path = "/v1/security-compliance", tag = "identity", security(("bearer" = [])),
    responses((status = 200, body = SecurityCompliance), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn get_compliance(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<axum::Json<SecurityCompliance>, Error> {
    principal.require_system(&state, "security.read")?;
    let mut conn = state.db.conn().await?;
    Ok(axum::Json(load_compliance(&mut conn).await?))
}

/// Replace the policy (security-admin). Absent fields take their defaults.
#[utoipa::path(put, path = "/v1/security-compliance", tag = "identity", request_body = SecurityCompliance, security(("bearer" = [])),
    responses((status = 200, body = SecurityCompliance), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn put_compliance(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(req): ApiJson<SecurityCompliance>,
) -> Result<axum::Json<SecurityCompliance>, Error> {
    principal.require_system(&state, "security.manage")?;
    rampart_iam::policy::validate(&req)?;
    let mut conn = state.db.conn().await?;
    store_compliance(&mut conn, &req).await?;
    state.refresh_compliance();
    tracing::warn!(by = %principal.user.name, policy = ?req, "security-compliance policy changed");
    Ok(axum::Json(req))
}
