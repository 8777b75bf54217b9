//! ports

use crate::audit::operations::Operation;
use crate::auth::Principal;
use crate::state::AppState;
use rampart_api::List;
use rampart_api::network::*;
use rampart_common::Error;
use rampart_common::page::finish_page;
use rampart_common::quota::Resource;
use rampart_db::network::{self as db, PortRow};
use rampart_net::model::{self, invalid};
use uuid::Uuid;

use super::*;

pub const LIST_PORTS: Operation = Operation::new("port.list", "port");

/// Ports of the project (`?vpc=`, `?subnet=`).
pub async fn list_ports(
    state: &AppState,
    principal: &Principal,
    p: Uuid,
    q: NetworkListParams,
) -> Result<List<Port>, Error> {
    read(state, principal, p).await?;
    let page = page(&q)?;
    let mut conn = state.db.conn().await?;
    let rows = db::list_ports(&mut conn, p, q.vpc, q.subnet, page.after.as_deref(), page.limit + 1).await?;
    let (items, next) = finish_page(rows, page.limit, |r| r.port.id.to_string());
    Ok(List {
        items: items.into_iter().map(port_view).collect(),
        next,
    })
}

pub const CREATE_PORT: Operation = Operation::new("port.create", "port");

/// Create a port: the next free address of the subnet (or the fixed `ip` asked for) and a
/// locally administered MAC are allocated; port security (IP/MAC/ARP binding, DHCP and RA
/// quarantine) is on unless `port_security` is false.
pub async fn create_port(state: &AppState, principal: &Principal, p: Uuid, req: PortCreate) -> Result<Port, Error> {
    let mut w = Write::begin(state, principal, p).await?;
    let subnet = db::get_subnet(&mut w.tx, p, req.subnet)
        .await?
        .ok_or_else(|| invalid("subnet", "unknown_subnet", "no such subnet in this project"))?;
    let existing: Vec<model::Port> = db::ports_of_vpc(&mut w.tx, subnet.vpc)
        .await?
        .into_iter()
        .map(|r| r.port)
        .collect();
    if existing.len() >= 65_000 {
        return Err(invalid("subnet", "too_many_ports", "a VPC holds at most 65000 ports"));
    }
    crate::quota::enforce(state, &mut w.tx, p, Resource::Ports, 1).await?;
    let groups = db::group_ids(&mut w.tx, p).await?;
    let port = req.into_port(Uuid::new_v4(), &subnet, &existing, |g| groups.contains(g))?;
    db::insert_port(&mut w.tx, p, &port, state.now()).await?;
    let row = db::get_port(&mut w.tx, p, port.id)
        .await?
        .ok_or_else(|| Error::internal("creating a port", "row vanished"))?;
    w.finish(state).await?;
    tracing::info!(port = %port.id, ip = %port.ip, mac = %port.mac, by = %principal.user.name, "port created");
    Ok(port_view(row))
}

pub(crate) async fn port_in(conn: &mut rampart_db::Conn, p: Uuid, id: Uuid) -> Result<PortRow, Error> {
    db::get_port(conn, p, id)
        .await?
        .ok_or_else(|| Error::not_found("no such port"))
}

pub const GET_PORT: Operation = Operation::new("port.get", "port").target("id");

/// One port.
pub async fn get_port(state: &AppState, principal: &Principal, (p, id): (Uuid, Uuid)) -> Result<Port, Error> {
    read(state, principal, p).await?;
    let mut conn = state.db.conn().await?;
    Ok(port_view(port_in(&mut conn, p, id).await?))
}

pub const UPDATE_PORT: Operation = Operation::new("port.update", "port").target("id");

/// Change a port's security groups, tags (micro-segmentation: a retag moves set elements
/// only), allowed address pairs, port security or connection limit.
pub async fn update_port(
    state: &AppState,
    principal: &Principal,
    (p, id): (Uuid, Uuid),
    req: PortUpdate,
) -> Result<Port, Error> {
    let mut w = Write::begin(state, principal, p).await?;
    let row = port_in(&mut w.tx, p, id).await?;
    let groups = db::group_ids(&mut w.tx, p).await?;
    let port = req.apply(&row.port, |g| groups.contains(g))?;
    db::update_port(&mut w.tx, &port, state.now()).await?;
    let row = port_in(&mut w.tx, p, id).await?;
    w.finish(state).await?;
    tracing::info!(port = %id, by = %principal.user.name, "port updated");
    Ok(port_view(row))
}

pub const DELETE_PORT: Operation = Operation::new("port.delete", "port").target("id");

/// Delete a port. Its node removes the device, its addresses from every set and their
/// tracked connections; its floating IP is released from it.
pub async fn delete_port(state: &AppState, principal: &Principal, (p, id): (Uuid, Uuid)) -> Result<(), Error> {
    let mut w = Write::begin(state, principal, p).await?;
    port_in(&mut w.tx, p, id).await?;
    not_in_an_instance(&mut w.tx, id).await?;
    db::delete_port(&mut w.tx, id).await?;
    w.finish(state).await?;
    tracing::info!(port = %id, by = %principal.user.name, "port deleted");
    Ok(())
}

/// A port plugged into an instance belongs to it until the instance is deleted: 409
/// `port_in_use`.
pub(crate) async fn not_in_an_instance(conn: &mut rampart_db::Conn, port: Uuid) -> Result<(), Error> {
    match rampart_db::compute::port_instance(conn, port).await? {
        Some(i) => Err(crate::app::compute::nics::port_in_use(format!(
            "port {port} is plugged into instance {i}; delete the instance first"
        ))),
        None => Ok(()),
    }
}

/// Plugging a device into a host's namespaces is an operator's act (`system.manage`), not a
/// tenant's: 404 for a project the caller cannot see at all, 403 for everyone else without
/// the system role. A system administrator needs no role on the project.
pub(crate) async fn operator_write(state: &AppState, principal: &Principal, p: Uuid) -> Result<Write, Error> {
    match principal.project(state, p, "project.read").await {
        Ok(_) | Err(Error::Forbidden { .. }) => {}
        Err(e) => return Err(e),
    }
    principal.require_system(state, "system.manage")?;
    Write::open(state, p).await
}

pub(crate) fn valid_ifname(s: &str) -> bool {
    (1..=15).contains(&s.len())
        && s != "."
        && s != ".."
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

pub(crate) fn valid_netns(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && !s.starts_with('.')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

pub const BIND_PORT: Operation = Operation::new("port.binding", "port").target("id");

/// Plug a port into a node (system administrators; the compute service does it for VM
/// ports). `device` is `{"kind":"tap"}` for a QEMU tap created in the VPC namespace, or
/// `{"kind":"veth","peer_netns":NS,"peer_name":"eth0"}`: a veth whose far end goes into the
/// existing network namespace `NS` on that node (a container, or a test's stand-in VM).
pub async fn bind_port(
    state: &AppState,
    principal: &Principal,
    (p, id): (Uuid, Uuid),
    req: PortBinding,
) -> Result<Port, Error> {
    let mut w = operator_write(state, principal, p).await?;
    let row = port_in(&mut w.tx, p, id).await?;
    not_in_an_instance(&mut w.tx, id).await?;
    if let PortDevice::Veth { peer_netns, peer_name } = &req.device {
        if !valid_netns(peer_netns) {
            return Err(invalid(
                "device.peer_netns",
                "invalid_netns",
                "peer_netns must be 1-64 letters, digits, '-', '_' or '.'",
            ));
        }
        if !valid_ifname(peer_name) {
            return Err(invalid(
                "device.peer_name",
                "invalid_ifname",
                "peer_name must be an interface name of 1-15 letters, digits, '-', '_' or '.'",
            ));
        }
    }
    if rampart_db::nodes::get(&mut w.tx, req.node).await?.is_none() {
        return Err(invalid("node", "unknown_node", "no such node"));
    }
    for other in db::ports_on_node(&mut w.tx, req.node).await? {
        if other.port.id != id && other.device.as_ref() == Some(&req.device) && req.device != PortDevice::Tap {
            return Err(Error::conflict(format!(
                "port {} already uses that device on this node",
                other.port.id
            )));
        }
    }
    db::bind_port(&mut w.tx, id, Some((req.node, &req.device)), state.now()).await?;
    let row = PortRow {
        node: Some(req.node),
        device: Some(req.device.clone()),
        ..row
    };
    w.finish(state).await?;
    tracing::info!(port = %id, node = %req.node, by = %principal.user.name, "port bound");
    Ok(port_view(row))
}

pub const UNBIND_PORT: Operation = Operation::new("port.binding", "port").target("id");

/// Unplug a port from its node.
pub async fn unbind_port(state: &AppState, principal: &Principal, (p, id): (Uuid, Uuid)) -> Result<(), Error> {
    let mut w = operator_write(state, principal, p).await?;
    port_in(&mut w.tx, p, id).await?;
    not_in_an_instance(&mut w.tx, id).await?;
    db::bind_port(&mut w.tx, id, None, state.now()).await?;
    w.finish(state).await?;
    tracing::info!(port = %id, by = %principal.user.name, "port unbound");
    Ok(())
}
