//! Identity administration: domains, projects, users and the security-compliance policy
//! (groups, roles and role assignments have their own modules beside this one). Every handler asks the authorizer before it acts; a
//! resource the caller may not see is 404, one it may see but not change is 403.

use axum::extract::State;
use axum::http::StatusCode;
use rampart_api::{
    Domain, DomainCreate, DomainUpdate, List, PasswordReset, Project, ProjectCreate, ProjectUpdate, SecurityCompliance,
    User, UserCreate, UserUpdate,
};
use rampart_common::error::ErrorBody;
use rampart_common::page::{PageParams, finish_page};
use rampart_common::{Error, names};
use rampart_db::Conn;
use rampart_db::identity;
use rampart_iam::authz::Target;
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

pub(super) fn check_text(field: &str, v: &Option<String>, max: usize) -> Result<(), Error> {
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
pub(super) async fn domain_by_key(
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

pub(super) async fn visible_domain(
    state: &AppState,
    principal: &Principal,
    id: Uuid,
) -> Result<identity::Domain, Error> {
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
    pub(super) fn page(&self) -> Result<rampart_common::page::PageRequest, Error> {
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

pub(super) async fn visible_project(
    state: &AppState,
    principal: &Principal,
    id: Uuid,
) -> Result<identity::Project, Error> {
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
pub(super) async fn visible_user(state: &AppState, principal: &Principal, id: Uuid) -> Result<identity::User, Error> {
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
