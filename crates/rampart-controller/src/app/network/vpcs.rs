//! vpcs

use super::desired as network;
use crate::audit::operations::Operation;
use crate::auth::Principal;
use crate::state::AppState;
use rampart_api::List;
use rampart_api::network::*;
use rampart_common::Error;
use rampart_common::page::finish_page;
use rampart_common::quota::Resource;
use rampart_db::network::{self as db, VpcRow};
use uuid::Uuid;

use super::*;

pub const LIST_VPCS: Operation = Operation::new("vpc.list", "vpc");

/// VPCs of the project.
pub async fn list_vpcs(
    state: &AppState,
    principal: &Principal,
    p: Uuid,
    q: NetworkListParams,
) -> Result<List<Vpc>, Error> {
    read(state, principal, p).await?;
    let page = page(&q)?;
    let mut conn = state.db.conn().await?;
    let rows = db::list_vpcs(&mut conn, p, page.after.as_deref(), page.limit + 1).await?;
    let (items, next) = finish_page(rows, page.limit, |r| r.vpc.name.clone());
    Ok(List {
        items: items.into_iter().map(vpc_view).collect(),
        next,
    })
}

pub const CREATE_VPC: Operation = Operation::new("vpc.create", "vpc");

/// Create a VPC: an isolated network with its own router (10.4). With `"external": true` it
/// gets an address on the external network for SNAT egress and floating IPs.
pub async fn create_vpc(state: &AppState, principal: &Principal, p: Uuid, req: VpcCreate) -> Result<Vpc, Error> {
    let mut w = Write::begin(state, principal, p).await?;
    let external = req.external;
    let vpc = req.into_vpc(Uuid::new_v4(), p)?;
    crate::quota::enforce(state, &mut w.tx, p, Resource::Vpcs, 1).await?;
    let router_ip = if external {
        Some(network::allocate_external(&mut w.tx, &state.config).await?)
    } else {
        None
    };
    let now = state.now();
    db::insert_vpc(&mut w.tx, &vpc, router_ip, now).await?;
    let row = db::vpc_by_id(&mut w.tx, vpc.id)
        .await?
        .ok_or_else(|| Error::internal("creating a VPC", "row vanished"))?;
    w.finish(state).await?;
    tracing::info!(vpc = %vpc.id, name = %vpc.name, project = %p, by = %principal.user.name, "VPC created");
    Ok(vpc_view(row))
}

pub(crate) async fn vpc_in(conn: &mut rampart_db::Conn, p: Uuid, id: Uuid) -> Result<VpcRow, Error> {
    db::get_vpc(conn, p, id)
        .await?
        .ok_or_else(|| Error::not_found("no such VPC"))
}

pub const GET_VPC: Operation = Operation::new("vpc.get", "vpc").target("id");

/// One VPC.
pub async fn get_vpc(state: &AppState, principal: &Principal, (p, id): (Uuid, Uuid)) -> Result<Vpc, Error> {
    read(state, principal, p).await?;
    let mut conn = state.db.conn().await?;
    Ok(vpc_view(vpc_in(&mut conn, p, id).await?))
}

pub const UPDATE_VPC: Operation = Operation::new("vpc.update", "vpc").target("id");

/// Connect a VPC to the external network or cut it off (`external`).
pub async fn update_vpc(
    state: &AppState,
    principal: &Principal,
    (p, id): (Uuid, Uuid),
    req: VpcUpdate,
) -> Result<Vpc, Error> {
    let mut w = Write::begin(state, principal, p).await?;
    let row = vpc_in(&mut w.tx, p, id).await?;
    let now = state.now();
    match (req.external, row.router_external_ip) {
        (Some(true), None) => {
            let ip = network::allocate_external(&mut w.tx, &state.config).await?;
            db::set_router_external_ip(&mut w.tx, id, Some(ip), now).await?;
        }
        (Some(false), Some(_)) => {
            if !db::floating_ips_of_vpc(&mut w.tx, id).await?.is_empty() {
                return Err(Error::conflict(
                    "floating IPs still point at ports of this VPC; release them first",
                ));
            }
            db::set_router_external_ip(&mut w.tx, id, None, now).await?;
        }
        _ => {}
    }
    let row = vpc_in(&mut w.tx, p, id).await?;
    w.finish(state).await?;
    tracing::info!(vpc = %id, external = row.router_external_ip.is_some(), by = %principal.user.name, "VPC updated");
    Ok(vpc_view(row))
}

pub const DELETE_VPC: Operation = Operation::new("vpc.delete", "vpc").target("id");

/// Delete a VPC and its subnets (409 while it has ports).
pub async fn delete_vpc(state: &AppState, principal: &Principal, (p, id): (Uuid, Uuid)) -> Result<(), Error> {
    let mut w = Write::begin(state, principal, p).await?;
    vpc_in(&mut w.tx, p, id).await?;
    db::delete_vpc(&mut w.tx, id).await?;
    w.finish(state).await?;
    tracing::info!(vpc = %id, by = %principal.user.name, "VPC deleted");
    Ok(())
}
