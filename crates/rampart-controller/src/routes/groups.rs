//! Groups: a domain's users gathered to share role assignments. Adding a member grants it
//! every role of the group, so it follows the grant rules (`crate::grants`).

use axum::extract::State;
use axum::http::StatusCode;
use rampart_api::{Group, GroupCreate, GroupUpdate, List};
use rampart_common::error::ErrorBody;
use rampart_common::page::finish_page;
use rampart_common::{Error, names};
use rampart_db::{groups, identity};
use uuid::Uuid;

use super::identity::{DomainFilter, check_text, domain_by_key, visible_user};
use crate::auth::Principal;
use crate::grants;
use crate::http::{ApiJson, ApiPath, ApiQuery};
use crate::state::AppState;

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
