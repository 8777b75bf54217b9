//! security groups

use crate::audit::operations::Operation;
use crate::auth::Principal;
use crate::state::AppState;
use rampart_api::List;
use rampart_api::network::*;
use rampart_common::Error;
use rampart_common::page::finish_page;
use rampart_db::network::{self as db};
use rampart_net::model::invalid;
use uuid::Uuid;

use super::*;

pub const LIST_GROUPS: Operation = Operation::new("security_group.list", "security_group");

/// Security groups of the project, with their rules.
pub async fn list_groups(
    state: &AppState,
    principal: &Principal,
    p: Uuid,
    q: NetworkListParams,
) -> Result<List<SecurityGroup>, Error> {
    read(state, principal, p).await?;
    let page = page(&q)?;
    let mut conn = state.db.conn().await?;
    let rows = db::list_groups(&mut conn, p, page.after.as_deref(), page.limit + 1).await?;
    let (items, next) = finish_page(rows, page.limit, |g| g.name.clone());
    Ok(List { items, next })
}

pub const CREATE_GROUP: Operation = Operation::new("security_group.create", "security_group");

/// Create a security group. It starts with the default rules of 10.3-4: ingress of anything
/// from members of the same group, and all egress; other groups are refused until a rule
/// admits them.
pub async fn create_group(
    state: &AppState,
    principal: &Principal,
    p: Uuid,
    req: SecurityGroupCreate,
) -> Result<SecurityGroup, Error> {
    let mut w = Write::begin(state, principal, p).await?;
    let g = req.into_group(Uuid::new_v4(), [Uuid::new_v4(), Uuid::new_v4()])?;
    db::insert_group(&mut w.tx, p, &g, state.now()).await?;
    w.finish(state).await?;
    tracing::info!(group = %g.id, name = %g.name, project = %p, by = %principal.user.name, "security group created");
    Ok(g)
}

pub(crate) async fn group_in(conn: &mut rampart_db::Conn, p: Uuid, id: Uuid) -> Result<SecurityGroup, Error> {
    db::get_group(conn, p, id)
        .await?
        .ok_or_else(|| Error::not_found("no such security group"))
}

pub const GET_GROUP: Operation = Operation::new("security_group.get", "security_group").target("id");

/// One security group with its rules in evaluation order.
pub async fn get_group(state: &AppState, principal: &Principal, (p, id): (Uuid, Uuid)) -> Result<SecurityGroup, Error> {
    read(state, principal, p).await?;
    let mut conn = state.db.conn().await?;
    group_in(&mut conn, p, id).await
}

pub const UPDATE_GROUP: Operation = Operation::new("security_group.update", "security_group").target("id");

/// Rename a security group or change its description.
pub async fn update_group(
    state: &AppState,
    principal: &Principal,
    (p, id): (Uuid, Uuid),
    req: SecurityGroupUpdate,
) -> Result<SecurityGroup, Error> {
    let mut w = Write::begin(state, principal, p).await?;
    let g = group_in(&mut w.tx, p, id).await?;
    // The same checks as at creation.
    let checked = SecurityGroupCreate {
        name: req.name.unwrap_or(g.name),
        description: Some(req.description.unwrap_or(g.description)),
    }
    .into_group(id, [Uuid::nil(), Uuid::nil()])?;
    db::update_group(&mut w.tx, id, &checked.name, &checked.description, state.now()).await?;
    let g = group_in(&mut w.tx, p, id).await?;
    w.finish(state).await?;
    tracing::info!(group = %id, by = %principal.user.name, "security group updated");
    Ok(g)
}

pub const DELETE_GROUP: Operation = Operation::new("security_group.delete", "security_group").target("id");

/// Delete a security group (409 while ports are in it or other groups' rules name it).
pub async fn delete_group(state: &AppState, principal: &Principal, (p, id): (Uuid, Uuid)) -> Result<(), Error> {
    let mut w = Write::begin(state, principal, p).await?;
    group_in(&mut w.tx, p, id).await?;
    db::delete_group(&mut w.tx, id).await?;
    w.finish(state).await?;
    tracing::info!(group = %id, by = %principal.user.name, "security group deleted");
    Ok(())
}

pub const LIST_RULES: Operation = Operation::new("rule.list", "rule").target("id");

/// Rules of a security group, in evaluation order.
pub async fn list_rules(
    state: &AppState,
    principal: &Principal,
    (p, id): (Uuid, Uuid),
) -> Result<List<SecurityGroupRule>, Error> {
    read(state, principal, p).await?;
    let mut conn = state.db.conn().await?;
    Ok(List {
        items: group_in(&mut conn, p, id).await?.rules,
        next: None,
    })
}

pub const CREATE_RULE: Operation = Operation::new("rule.create", "rule").target("id");

/// Add a rule to a security group (after its other rules). A remote group must be a group of
/// the same project.
pub async fn create_rule(
    state: &AppState,
    principal: &Principal,
    (p, id): (Uuid, Uuid),
    req: SecurityGroupRuleCreate,
) -> Result<SecurityGroupRule, Error> {
    let mut w = Write::begin(state, principal, p).await?;
    let g = group_in(&mut w.tx, p, id).await?;
    if g.rules.len() >= 1000 {
        return Err(invalid(
            "rules",
            "too_many_rules",
            "a security group holds at most 1000 rules",
        ));
    }
    let groups = db::group_ids(&mut w.tx, p).await?;
    let rule = req.into_rule(Uuid::new_v4(), |g| groups.contains(g))?;
    db::insert_rule(&mut w.tx, id, &rule, state.now()).await?;
    w.finish(state).await?;
    tracing::info!(group = %id, rule = %rule.id, by = %principal.user.name, "security group rule added");
    Ok(rule)
}

pub const DELETE_RULE: Operation = Operation::new("rule.delete", "rule").target("rule");

/// Remove a rule. Flows it admitted that are already established keep running until they
/// end (as in AWS security groups); new ones are refused at once.
pub async fn delete_rule(
    state: &AppState,
    principal: &Principal,
    (p, id, rule): (Uuid, Uuid, Uuid),
) -> Result<(), Error> {
    let mut w = Write::begin(state, principal, p).await?;
    group_in(&mut w.tx, p, id).await?;
    if !db::delete_rule(&mut w.tx, id, rule, state.now()).await? {
        return Err(Error::not_found("no such rule in this security group"));
    }
    w.finish(state).await?;
    tracing::info!(group = %id, rule = %rule, by = %principal.user.name, "security group rule removed");
    Ok(())
}
