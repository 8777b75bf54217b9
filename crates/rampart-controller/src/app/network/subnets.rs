//! subnets

use crate::audit::operations::Operation;
use crate::auth::Principal;
use crate::state::AppState;
use rampart_api::List;
use rampart_api::network::*;
use rampart_common::Error;
use rampart_common::page::finish_page;
use rampart_db::network::{self as db};
use rampart_net::model::{self, invalid};
use uuid::Uuid;

use super::*;

pub const LIST_SUBNETS: Operation = Operation::new("subnet.list", "subnet");

/// Subnets of the project (`?vpc=` for one VPC's).
pub async fn list_subnets(
    state: &AppState,
    principal: &Principal,
    p: Uuid,
    q: NetworkListParams,
) -> Result<List<Subnet>, Error> {
    read(state, principal, p).await?;
    let page = page(&q)?;
    let mut conn = state.db.conn().await?;
    let rows = db::list_subnets(&mut conn, p, q.vpc, page.after.as_deref(), page.limit + 1).await?;
    let (items, next) = finish_page(rows, page.limit, |s| s.id.to_string());
    Ok(List { items, next })
}

pub const CREATE_SUBNET: Operation = Operation::new("subnet.create", "subnet");

/// Create a subnet in a VPC: a bridge on every node with its ports, the gateway address on it,
/// platform DHCP with static leases when `dhcp` (10.7).
pub async fn create_subnet(
    state: &AppState,
    principal: &Principal,
    p: Uuid,
    req: SubnetCreate,
) -> Result<Subnet, Error> {
    let mut w = Write::begin(state, principal, p).await?;
    let vpc = db::get_vpc(&mut w.tx, p, req.vpc)
        .await?
        .ok_or_else(|| invalid("vpc", "unknown_vpc", "no such VPC in this project"))?;
    let existing = db::subnets_of_vpc(&mut w.tx, vpc.vpc.id).await?;
    let segment = model::allocate_segment_id(&db::segment_ids(&mut w.tx).await?)?;
    let subnet = req.into_subnet(Uuid::new_v4(), &vpc.vpc, &existing, segment)?;
    db::insert_subnet(&mut w.tx, p, &subnet, state.now()).await?;
    w.finish(state).await?;
    tracing::info!(subnet = %subnet.id, vpc = %subnet.vpc, cidr = %subnet.cidr, by = %principal.user.name, "subnet created");
    Ok(subnet)
}

pub const GET_SUBNET: Operation = Operation::new("subnet.get", "subnet").target("id");

/// One subnet.
pub async fn get_subnet(state: &AppState, principal: &Principal, (p, id): (Uuid, Uuid)) -> Result<Subnet, Error> {
    read(state, principal, p).await?;
    let mut conn = state.db.conn().await?;
    db::get_subnet(&mut conn, p, id)
        .await?
        .ok_or_else(|| Error::not_found("no such subnet"))
}

pub const DELETE_SUBNET: Operation = Operation::new("subnet.delete", "subnet").target("id");

/// Delete a subnet (409 while it has ports).
pub async fn delete_subnet(state: &AppState, principal: &Principal, (p, id): (Uuid, Uuid)) -> Result<(), Error> {
    let mut w = Write::begin(state, principal, p).await?;
    db::get_subnet(&mut w.tx, p, id)
        .await?
        .ok_or_else(|| Error::not_found("no such subnet"))?;
    db::delete_subnet(&mut w.tx, id).await?;
    w.finish(state).await?;
    tracing::info!(subnet = %id, by = %principal.user.name, "subnet deleted");
    Ok(())
}
