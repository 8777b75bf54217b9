//! The NICs of an instance: the ports and networks it asks for, checked before it is placed
//! ([`plan_nics`]), plugged in its transaction ([`plug_nics`]) and unplugged when it goes.

use std::collections::BTreeSet;

use rampart_api::compute::InstanceCreate;
use rampart_common::Error;
use rampart_db::compute as db;
use rampart_db::network as netdb;
use rampart_net::desired::PortDevice;
use time::OffsetDateTime;
use uuid::Uuid;

/// 409 `port_in_use`.
pub fn port_in_use(message: impl Into<String>) -> Error {
    Error::coded(http::StatusCode::CONFLICT, "port_in_use", message)
}

/// The NICs an instance asks for, checked before it is placed.
pub struct NicPlan {
    /// Existing ports to plug in, in order.
    ports: Vec<Uuid>,
    /// Subnets to make a port on, after them.
    subnets: Vec<rampart_net::model::Subnet>,
    /// Groups of the ports made from subnets.
    new_port_groups: Vec<Uuid>,
    /// Every group of the VM's ports (what the scheduler spreads, and the instance shows).
    pub groups: Vec<Uuid>,
}

/// Checks `ports` and `networks` of an instance request: ports of this project (404
/// otherwise) that no instance or node uses (409 `port_in_use`), subnets of this project, all
/// in one VPC (its QEMU joins that VPC's namespace). Ports made from subnets get the request's
/// security groups, or the project's group `default` (made with the default rules of 10.3-4
/// when missing).
pub async fn plan_nics(
    tx: &mut rampart_db::Conn,
    project: Uuid,
    req: &InstanceCreate,
    now: OffsetDateTime,
) -> Result<NicPlan, Error> {
    let known = netdb::group_ids(tx, project).await?;
    if let Some(g) = req.security_groups.iter().find(|g| !known.contains(g)) {
        return Err(Error::field(
            "security_groups",
            format!("no security group {g} in this project"),
        ));
    }
    if !req.security_groups.is_empty() && !req.ports.is_empty() && req.networks.is_empty() {
        return Err(Error::field(
            "security_groups",
            "security_groups apply to the ports made from networks; an existing port keeps its groups \
             (change them with PATCH /v1/projects/{p}/ports/{id})",
        ));
    }
    let mut groups: BTreeSet<Uuid> = req.security_groups.iter().copied().collect();
    let mut vpcs = BTreeSet::new();
    for id in &req.ports {
        let row = netdb::get_port(tx, project, *id)
            .await?
            .ok_or_else(|| Error::not_found(format!("no port {id} in this project")))?;
        if let Some(i) = db::port_instance(tx, *id).await? {
            return Err(port_in_use(format!("port {id} is already plugged into instance {i}")));
        }
        if row.node.is_some() {
            return Err(port_in_use(format!(
                "port {id} is bound to a node already (DELETE its binding first)"
            )));
        }
        vpcs.insert(row.port.vpc);
        groups.extend(row.port.security_groups.iter().copied());
    }
    let mut subnets = Vec::new();
    for id in &req.networks {
        let s = netdb::get_subnet(tx, project, *id)
            .await?
            .ok_or_else(|| Error::not_found(format!("no subnet {id} in this project")))?;
        vpcs.insert(s.vpc);
        subnets.push(s);
    }
    if vpcs.len() > 1 {
        return Err(Error::field(
            "ports",
            "the ports and networks of one instance must be in one VPC",
        ));
    }
    let new_port_groups = if subnets.is_empty() || !req.security_groups.is_empty() {
        req.security_groups.clone()
    } else {
        vec![default_group(tx, project, now).await?]
    };
    groups.extend(new_port_groups.iter().copied());
    Ok(NicPlan {
        ports: req.ports.clone(),
        subnets,
        new_port_groups,
        groups: groups.into_iter().collect(),
    })
}

/// The project's security group named `default`, made when missing.
async fn default_group(tx: &mut rampart_db::Conn, project: Uuid, now: OffsetDateTime) -> Result<Uuid, Error> {
    if let Some(g) = netdb::groups(tx, project, None)
        .await?
        .into_iter()
        .find(|g| g.name == "default")
    {
        return Ok(g.id);
    }
    let g = rampart_net::model::SecurityGroupCreate {
        name: "default".into(),
        description: Some("made for instances launched without security groups".into()),
    }
    .into_group(Uuid::new_v4(), [Uuid::new_v4(), Uuid::new_v4()])?;
    netdb::insert_group(tx, project, &g, now).await?;
    tracing::info!(group = %g.id, project = %project, "default security group created");
    Ok(g.id)
}

/// Makes the ports of `networks`, binds every port to `node` as a tap and records it as the
/// instance's; returns the port ids in NIC order. Same transaction as the instance.
pub async fn plug_nics(
    tx: &mut rampart_db::Conn,
    project: Uuid,
    instance: Uuid,
    node: Uuid,
    plan: NicPlan,
    now: OffsetDateTime,
) -> Result<Vec<Uuid>, Error> {
    let mut ids: Vec<(Uuid, bool)> = plan.ports.iter().map(|p| (*p, false)).collect();
    let groups = netdb::group_ids(tx, project).await?;
    for subnet in &plan.subnets {
        let existing: Vec<rampart_net::model::Port> = netdb::ports_of_vpc(tx, subnet.vpc)
            .await?
            .into_iter()
            .map(|r| r.port)
            .collect();
        let port = rampart_net::model::PortCreate {
            subnet: subnet.id,
            security_groups: plan.new_port_groups.clone(),
            tags: Default::default(),
            allowed_address_pairs: vec![],
            port_security: None,
            max_connections: None,
            ip: None,
            mac: None,
        }
        .into_port(Uuid::new_v4(), subnet, &existing, |g| groups.contains(g))?;
        netdb::insert_port(tx, project, &port, now).await?;
        ids.push((port.id, true));
    }
    for (pos, (id, auto)) in ids.iter().enumerate() {
        netdb::bind_port(tx, *id, Some((node, &PortDevice::Tap)), now).await?;
        db::attach_port(tx, instance, *id, pos as i64, *auto).await?;
    }
    Ok(ids.into_iter().map(|(id, _)| id).collect())
}

/// Unplugs the instance's ports: the ports it made are deleted, the others unbound (they
/// stay, free for another instance).
pub async fn unplug_nics(tx: &mut rampart_db::Conn, instance: Uuid, now: OffsetDateTime) -> Result<(), Error> {
    for (id, auto) in db::detach_ports(tx, instance).await? {
        if auto {
            netdb::delete_port(tx, id).await?;
        } else {
            netdb::bind_port(tx, id, None, now).await?;
        }
    }
    Ok(())
}
