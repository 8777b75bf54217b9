//! Groups: a domain's users gathered to share role assignments. Adding a member grants it
//! every role of the group, so it follows the grant rules (`crate::grants`).

use rampart_api::{Group, GroupCreate, GroupUpdate, List};
use rampart_common::page::{PageRequest, finish_page};
use rampart_common::{Error, names};
use rampart_db::{groups, identity};
use rampart_iam::authz::action;
use uuid::Uuid;

use crate::app::identity::{check_text, domain_by_key, user};
use crate::audit::operations::Operation;
use crate::auth::Principal;
use crate::grants;
use crate::state::AppState;

fn group_view(g: groups::Group) -> Group {
    Group {
        id: g.id,
        domain_id: g.domain_id,
        name: g.name,
        description: g.description,
    }
}

/// The group `id` if the caller reads its domain's identities; 404 otherwise.
pub async fn group(state: &AppState, principal: &Principal, id: Uuid) -> Result<groups::Group, Error> {
    let mut conn = state.db.conn().await?;
    match groups::get(&mut conn, id).await? {
        Some(g) if principal.can_in_domain(state, action::IDENTITY_READ, g.domain_id) => Ok(g),
        _ => Err(Error::not_found("no such group")),
    }
}

/// The group `id` for a change: 404 out of sight, 403 without `identity.manage` on its domain.
async fn managed_group(state: &AppState, principal: &Principal, id: Uuid) -> Result<groups::Group, Error> {
    let g = group(state, principal, id).await?;
    principal.require_in_domain(state, action::IDENTITY_MANAGE, g.domain_id, "group")?;
    Ok(g)
}

pub const LIST_GROUPS: Operation = Operation::new("group.list", "group");

/// Groups the caller may administer; only `domain`'s when given.
pub async fn list_groups(
    state: &AppState,
    principal: &Principal,
    domain: Option<&str>,
    page: PageRequest,
) -> Result<List<Group>, Error> {
    let mut conn = state.db.conn().await?;
    let domain = match domain {
        Some(k) => Some(domain_by_key(state, principal, &mut conn, Some(k)).await?.id),
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
                .filter(|g| principal.can_in_domain(state, action::IDENTITY_READ, g.domain_id)),
        );
        if items.len() > page.limit as usize || exhausted {
            break;
        }
    }
    let (items, next) = finish_page(items, page.limit, |g| g.id.to_string());
    Ok(List {
        items: items.into_iter().map(group_view).collect(),
        next,
    })
}

pub const CREATE_GROUP: Operation = Operation::new("group.create", "group");

/// Create a group.
pub async fn create_group(state: &AppState, principal: &Principal, req: GroupCreate) -> Result<Group, Error> {
    principal.require_somewhere(state, action::IDENTITY_MANAGE)?;
    names::validate_name("name", &req.name)?;
    check_text("description", &req.description, 1024)?;
    let mut conn = state.db.conn().await?;
    let d = domain_by_key(state, principal, &mut conn, req.domain.as_deref()).await?;
    principal.require_in_domain(state, action::IDENTITY_MANAGE, d.id, "domain")?;
    let g = groups::create(
        &mut conn,
        d.id,
        &req.name,
        req.description.as_deref().unwrap_or(""),
        state.now(),
    )
    .await?;
    tracing::info!(group = %g.name, by = %principal.user.name, "group created");
    Ok(group_view(g))
}

pub const GET_GROUP: Operation = Operation::new("group.get", "group").target("id");

/// One group.
pub async fn get_group(state: &AppState, principal: &Principal, id: Uuid) -> Result<Group, Error> {
    Ok(group_view(group(state, principal, id).await?))
}

pub const UPDATE_GROUP: Operation = Operation::new("group.update", "group").target("id");

/// Change a group's description.
pub async fn update_group(state: &AppState, principal: &Principal, id: Uuid, req: GroupUpdate) -> Result<Group, Error> {
    let mut g = managed_group(state, principal, id).await?;
    check_text("description", &req.description, 1024)?;
    if let Some(v) = req.description {
        g.description = v;
    }
    let mut conn = state.db.conn().await?;
    groups::update(&mut conn, &g).await?;
    Ok(group_view(g))
}

pub const DELETE_GROUP: Operation = Operation::new("group.delete", "group").target("id");

/// Delete a group; its members lose the roles it gave them at once.
pub async fn delete_group(state: &AppState, principal: &Principal, id: Uuid) -> Result<(), Error> {
    let g = managed_group(state, principal, id).await?;
    grants::require_group_roles(state, principal, id).await?;
    let mut tx = state.db.begin().await?;
    identity::revoke_group_tokens(&mut tx, id, state.now()).await?;
    groups::delete(&mut tx, id).await?;
    rampart_db::Db::commit(tx).await?;
    tracing::info!(group = %g.name, by = %principal.user.name, "group deleted");
    Ok(())
}

pub const GROUP_MEMBERS: Operation = Operation::new("user.list", "user").target("id");

/// Members of a group (user ids).
pub async fn group_members(state: &AppState, principal: &Principal, id: Uuid) -> Result<List<Uuid>, Error> {
    group(state, principal, id).await?;
    let mut conn = state.db.conn().await?;
    Ok(List {
        items: groups::members(&mut conn, id).await?,
        next: None,
    })
}

pub const ADD_GROUP_MEMBER: Operation = Operation::new("group.member.add", "group").target("id");

/// Add a user of the same domain to a group.
pub async fn add_group_member(state: &AppState, principal: &Principal, id: Uuid, user_id: Uuid) -> Result<(), Error> {
    let g = managed_group(state, principal, id).await?;
    let u = user(state, principal, user_id).await?;
    if u.domain_id != g.domain_id {
        return Err(Error::validation("a group holds users of its own domain only"));
    }
    if u.id == principal.user.id {
        return Err(Error::forbidden("you cannot add yourself to a group"));
    }
    // Adding a member grants it every role of the group: the caller must be able to grant them
    // all, and to act on the account.
    grants::require_group_roles(state, principal, id).await?;
    grants::require_act_on(state, principal, u.id).await?;
    let mut conn = state.db.conn().await?;
    groups::add_member(&mut conn, id, user_id, state.now()).await?;
    crate::audit::note_detail("user", u.id.to_string());
    tracing::info!(group = %g.name, user = %u.name, by = %principal.user.name, "group member added");
    Ok(())
}

pub const REMOVE_GROUP_MEMBER: Operation = Operation::new("group.member.remove", "group").target("id");

/// Remove a user from a group; the roles it gave end at once.
pub async fn remove_group_member(state: &AppState, principal: &Principal, id: Uuid, user: Uuid) -> Result<(), Error> {
    let g = managed_group(state, principal, id).await?;
    if user == principal.user.id {
        return Err(Error::forbidden("you cannot remove yourself from a group"));
    }
    grants::require_group_roles(state, principal, id).await?;
    grants::require_act_on(state, principal, user).await?;
    crate::audit::note_detail("user", user.to_string());
    let mut tx = state.db.begin().await?;
    if !groups::remove_member(&mut tx, id, user).await? {
        return Err(Error::not_found("that user is not in the group"));
    }
    identity::revoke_user_tokens(&mut tx, user, state.now()).await?;
    rampart_db::Db::commit(tx).await?;
    tracing::info!(group = %g.name, user = %user, by = %principal.user.name, "group member removed");
    Ok(())
}
