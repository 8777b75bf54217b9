//! policies

use crate::audit::operations::Operation;
use crate::auth::Principal;
use crate::state::AppState;
use rampart_api::List;
use rampart_api::network::*;
use rampart_common::Error;
use rampart_common::page::finish_page;
use rampart_db::network::{self as db};
use uuid::Uuid;

use super::*;

pub const LIST_POLICIES: Operation = Operation::new("segmentation_policy.list", "segmentation_policy");

/// Segmentation policies of the project.
pub async fn list_policies(
    state: &AppState,
    principal: &Principal,
    p: Uuid,
    q: NetworkListParams,
) -> Result<List<SegmentationPolicy>, Error> {
    read(state, principal, p).await?;
    let page = page(&q)?;
    let mut conn = state.db.conn().await?;
    let rows = db::list_policies(&mut conn, p, page.after.as_deref(), page.limit + 1).await?;
    let (items, next) = finish_page(rows, page.limit, |x| x.name.clone());
    Ok(List { items, next })
}

pub const CREATE_POLICY: Operation = Operation::new("segmentation_policy.create", "segmentation_policy");

/// Create a micro-segmentation policy between tag selectors (10.9-1). Policies are evaluated
/// before security groups: every `deny` first, then `allow` (which admits without consulting
/// the groups). Ports match by their tags, so a retag changes what applies with set updates
/// only.
pub async fn create_policy(
    state: &AppState,
    principal: &Principal,
    p: Uuid,
    req: SegmentationPolicyCreate,
) -> Result<SegmentationPolicy, Error> {
    let mut w = Write::begin(state, principal, p).await?;
    let pol = req.into_policy(Uuid::new_v4())?;
    db::insert_policy(&mut w.tx, p, &pol, state.now()).await?;
    w.finish(state).await?;
    tracing::info!(policy = %pol.id, name = %pol.name, by = %principal.user.name, "segmentation policy created");
    Ok(pol)
}

pub const GET_POLICY: Operation = Operation::new("segmentation_policy.get", "segmentation_policy").target("id");

/// One segmentation policy.
pub async fn get_policy(
    state: &AppState,
    principal: &Principal,
    (p, id): (Uuid, Uuid),
) -> Result<SegmentationPolicy, Error> {
    read(state, principal, p).await?;
    let mut conn = state.db.conn().await?;
    db::get_policy(&mut conn, p, id)
        .await?
        .ok_or_else(|| Error::not_found("no such segmentation policy"))
}

pub const DELETE_POLICY: Operation = Operation::new("segmentation_policy.delete", "segmentation_policy").target("id");

/// Delete a segmentation policy.
pub async fn delete_policy(state: &AppState, principal: &Principal, (p, id): (Uuid, Uuid)) -> Result<(), Error> {
    let mut w = Write::begin(state, principal, p).await?;
    db::get_policy(&mut w.tx, p, id)
        .await?
        .ok_or_else(|| Error::not_found("no such segmentation policy"))?;
    db::delete_policy(&mut w.tx, id).await?;
    w.finish(state).await?;
    tracing::info!(policy = %id, by = %principal.user.name, "segmentation policy deleted");
    Ok(())
}
