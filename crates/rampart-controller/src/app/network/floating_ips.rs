//! floating ips

use super::desired as network;
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

pub const LIST_FLOATING_IPS: Operation = Operation::new("floating_ip.list", "floating_ip");

/// Floating IPs of the project.
pub async fn list_floating_ips(
    state: &AppState,
    principal: &Principal,
    p: Uuid,
    q: NetworkListParams,
) -> Result<List<FloatingIp>, Error> {
    read(state, principal, p).await?;
    let page = page(&q)?;
    let mut conn = state.db.conn().await?;
    let rows = db::list_floating_ips(&mut conn, p, page.after.as_deref(), page.limit + 1).await?;
    let (items, next) = finish_page(rows, page.limit, |f| f.id.to_string());
    Ok(List {
        items: items.into_iter().map(fip_view).collect(),
        next,
    })
}

/// Checks that `port` may receive a floating IP: a port of the project in an external VPC.
pub(crate) async fn fip_target(conn: &mut rampart_db::Conn, p: Uuid, port: Uuid) -> Result<(), Error> {
    let row = db::get_port(conn, p, port)
        .await?
        .ok_or_else(|| invalid("port", "unknown_port", "no such port in this project"))?;
    let vpc = db::vpc_by_id(conn, row.port.vpc)
        .await?
        .ok_or_else(|| Error::internal("reading a VPC", "port without VPC"))?;
    if vpc.router_external_ip.is_none() {
        return Err(invalid(
            "port",
            "vpc_not_external",
            "the port's VPC is not connected to the external network (PATCH it with external=true)",
        ));
    }
    Ok(())
}

pub const CREATE_FLOATING_IP: Operation = Operation::new("floating_ip.create", "floating_ip");

/// Allocate a floating IP from the external network, optionally forwarding to a port: from
/// outside, only floating IPs are reachable, and only on what the port's groups admit (10.4).
pub async fn create_floating_ip(
    state: &AppState,
    principal: &Principal,
    p: Uuid,
    req: FloatingIpCreate,
) -> Result<FloatingIp, Error> {
    let mut w = Write::begin(state, principal, p).await?;
    if let Some(port) = req.port {
        fip_target(&mut w.tx, p, port).await?;
    }
    let address = network::allocate_external(&mut w.tx, &state.config).await?;
    let fip = model::FloatingIp {
        id: Uuid::new_v4(),
        address,
        port: req.port,
    };
    db::insert_floating_ip(&mut w.tx, p, &fip, state.now()).await?;
    w.finish(state).await?;
    tracing::info!(fip = %fip.id, address = %fip.address, port = ?fip.port, by = %principal.user.name, "floating IP allocated");
    Ok(fip_view(fip))
}

pub(crate) async fn fip_in(conn: &mut rampart_db::Conn, p: Uuid, id: Uuid) -> Result<model::FloatingIp, Error> {
    db::get_floating_ip(conn, p, id)
        .await?
        .ok_or_else(|| Error::not_found("no such floating IP"))
}

pub const GET_FLOATING_IP: Operation = Operation::new("floating_ip.get", "floating_ip").target("id");

/// One floating IP.
pub async fn get_floating_ip(
    state: &AppState,
    principal: &Principal,
    (p, id): (Uuid, Uuid),
) -> Result<FloatingIp, Error> {
    read(state, principal, p).await?;
    let mut conn = state.db.conn().await?;
    Ok(fip_view(fip_in(&mut conn, p, id).await?))
}

pub const UPDATE_FLOATING_IP: Operation = Operation::new("floating_ip.update", "floating_ip").target("id");

/// Point a floating IP at another port, or at none (`"port": null`).
pub async fn update_floating_ip(
    state: &AppState,
    principal: &Principal,
    (p, id): (Uuid, Uuid),
    req: FloatingIpUpdate,
) -> Result<FloatingIp, Error> {
    let mut w = Write::begin(state, principal, p).await?;
    let mut fip = fip_in(&mut w.tx, p, id).await?;
    if let Some(port) = req.port {
        if let Some(port) = port {
            fip_target(&mut w.tx, p, port).await?;
        }
        db::associate_floating_ip(&mut w.tx, id, port).await?;
        fip.port = port;
    }
    w.finish(state).await?;
    tracing::info!(fip = %id, port = ?fip.port, by = %principal.user.name, "floating IP updated");
    Ok(fip_view(fip))
}

pub const DELETE_FLOATING_IP: Operation = Operation::new("floating_ip.delete", "floating_ip").target("id");

/// Release a floating IP.
pub async fn delete_floating_ip(state: &AppState, principal: &Principal, (p, id): (Uuid, Uuid)) -> Result<(), Error> {
    let mut w = Write::begin(state, principal, p).await?;
    fip_in(&mut w.tx, p, id).await?;
    db::delete_floating_ip(&mut w.tx, id).await?;
    w.finish(state).await?;
    tracing::info!(fip = %id, by = %principal.user.name, "floating IP released");
    Ok(())
}
