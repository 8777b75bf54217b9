//! The Network API (API.md "Network"): VPCs, subnets, security groups and rules, ports with
//! IPAM, segmentation policies, floating IPs, reachability analysis and the flow graph.
//!
//! Every handler authorizes on the project first (`project.read` for reads, `project.write`
//! for changes; 404 when the caller may not see the project), validates with the constructors
//! of `rampart_net::model` (400 `validation_failed` with `details.reason`), and makes each
//! change in one transaction that also republishes the documents of every node holding a VPC
//! of the project, so agents see the change at the next generation.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rampart_api::List;
use rampart_api::network::*;
use rampart_common::Error;
use rampart_common::error::ErrorBody;
use rampart_common::page::{PageParams, PageRequest, finish_page};
use rampart_common::quota::Resource;
use rampart_db::network::{self as db, PortRow, VpcRow};
use rampart_db::{Db, Tx};
use rampart_net::model::{self, invalid};
use uuid::Uuid;

use crate::auth::Principal;
use crate::http::{ApiJson, ApiPath, ApiQuery};
use crate::network;
use crate::state::AppState;

fn page(q: &NetworkListParams) -> Result<PageRequest, Error> {
    PageParams {
        limit: q.limit,
        cursor: q.cursor.clone(),
    }
    .validate()
}

fn vpc_view(r: VpcRow) -> Vpc {
    Vpc {
        id: r.vpc.id,
        project_id: r.vpc.project,
        name: r.vpc.name,
        cidr: r.vpc.cidr,
        external: r.router_external_ip.is_some(),
        router_external_ip: r.router_external_ip,
        created_at: r.created_at,
    }
}

fn port_view(r: PortRow) -> Port {
    Port {
        id: r.port.id,
        project_id: r.project,
        vpc: r.port.vpc,
        subnet: r.port.subnet,
        mac: r.port.mac,
        ip: r.port.ip,
        security_groups: r.port.security_groups,
        tags: r.port.tags,
        allowed_address_pairs: r.port.allowed_address_pairs,
        port_security: r.port.port_security,
        max_connections: r.port.max_connections,
        binding: match (r.node, r.device) {
            (Some(node), Some(device)) => Some(PortBinding { node, device }),
            _ => None,
        },
        created_at: r.created_at,
        updated_at: r.updated_at,
    }
}

fn fip_view(f: model::FloatingIp) -> FloatingIp {
    FloatingIp {
        id: f.id,
        address: f.address,
        port: f.port,
    }
}

/// A write: the project is checked for `project.write`, the nodes holding its VPCs are noted
/// (before the change, so a node that loses its last port still gets its new document), and
/// [`Write::finish`] republishes and commits.
struct Write {
    tx: Tx,
    project: Uuid,
    before: BTreeSet<(Uuid, String)>,
}

impl Write {
    async fn begin(state: &AppState, principal: &Principal, project: Uuid) -> Result<Write, Error> {
        principal.project(state, project, "project.write").await?;
        Write::open(state, project).await
    }

    /// For callers that authorized already.
    async fn open(state: &AppState, project: Uuid) -> Result<Write, Error> {
        let mut tx = state.db.begin().await?;
        let before = network::nodes_of_project(&mut tx, project).await?;
        Ok(Write { tx, project, before })
    }

    async fn finish(mut self, state: &AppState) -> Result<(), Error> {
        let mut all = network::nodes_of_project(&mut self.tx, self.project).await?;
        all.extend(self.before);
        let changed = crate::publish::nodes(&mut self.tx, &state.config, &all).await?;
        Db::commit(self.tx).await?;
        if changed {
            state.notify_node_changes();
        }
        Ok(())
    }
}

async fn read(state: &AppState, principal: &Principal, project: Uuid) -> Result<(), Error> {
    principal.project(state, project, "project.read").await.map(|_| ())
}

// ---- VPCs ----

/// VPCs of the project.
#[utoipa::path(get, path = "/v1/projects/{p}/vpcs", tag = "network", params(("p" = Uuid, Path), NetworkListParams), security(("bearer" = [])),
    responses((status = 200, body = List<Vpc>), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_vpcs(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(p): ApiPath<Uuid>,
    ApiQuery(q): ApiQuery<NetworkListParams>,
) -> Result<axum::Json<List<Vpc>>, Error> {
    read(&state, &principal, p).await?;
    let page = page(&q)?;
    let mut conn = state.db.conn().await?;
    let rows = db::list_vpcs(&mut conn, p, page.after.as_deref(), page.limit + 1).await?;
    let (items, next) = finish_page(rows, page.limit, |r| r.vpc.name.clone());
    Ok(axum::Json(List {
        items: items.into_iter().map(vpc_view).collect(),
        next,
    }))
}

/// Create a VPC: an isolated network with its own router (10.4). With `"external": true` it
/// gets an address on the external network for SNAT egress and floating IPs.
#[utoipa::path(post, path = "/v1/projects/{p}/vpcs", tag = "network", params(("p" = Uuid, Path)), request_body = VpcCreate, security(("bearer" = [])),
    responses((status = 201, body = Vpc), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_vpc(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(p): ApiPath<Uuid>,
    ApiJson(req): ApiJson<VpcCreate>,
) -> Result<(StatusCode, axum::Json<Vpc>), Error> {
    let mut w = Write::begin(&state, &principal, p).await?;
    let external = req.external;
    let vpc = req.into_vpc(Uuid::new_v4(), p)?;
    crate::quota::enforce(&state, &mut w.tx, p, Resource::Vpcs, 1).await?;
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
    w.finish(&state).await?;
    tracing::info!(vpc = %vpc.id, name = %vpc.name, project = %p, by = %principal.user.name, "VPC created");
    Ok((StatusCode::CREATED, axum::Json(vpc_view(row))))
}

async fn vpc_in(conn: &mut rampart_db::Conn, p: Uuid, id: Uuid) -> Result<VpcRow, Error> {
    db::get_vpc(conn, p, id)
        .await?
        .ok_or_else(|| Error::not_found("no such VPC"))
}

/// One VPC.
#[utoipa::path(get, path = "/v1/projects/{p}/vpcs/{id}", tag = "network", params(("p" = Uuid, Path), ("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = Vpc), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_vpc(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((p, id)): ApiPath<(Uuid, Uuid)>,
) -> Result<axum::Json<Vpc>, Error> {
    read(&state, &principal, p).await?;
    let mut conn = state.db.conn().await?;
    Ok(axum::Json(vpc_view(vpc_in(&mut conn, p, id).await?)))
}

/// Connect a VPC to the external network or cut it off (`external`).
#[utoipa::path(patch, path = "/v1/projects/{p}/vpcs/{id}", tag = "network", params(("p" = Uuid, Path), ("id" = Uuid, Path)), request_body = VpcUpdate, security(("bearer" = [])),
    responses((status = 200, body = Vpc), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn update_vpc(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((p, id)): ApiPath<(Uuid, Uuid)>,
    ApiJson(req): ApiJson<VpcUpdate>,
) -> Result<axum::Json<Vpc>, Error> {
    let mut w = Write::begin(&state, &principal, p).await?;
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
    w.finish(&state).await?;
    tracing::info!(vpc = %id, external = row.router_external_ip.is_some(), by = %principal.user.name, "VPC updated");
    Ok(axum::Json(vpc_view(row)))
}

/// Delete a VPC and its subnets (409 while it has ports).
#[utoipa::path(delete, path = "/v1/projects/{p}/vpcs/{id}", tag = "network", params(("p" = Uuid, Path), ("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_vpc(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((p, id)): ApiPath<(Uuid, Uuid)>,
) -> Result<StatusCode, Error> {
    let mut w = Write::begin(&state, &principal, p).await?;
    vpc_in(&mut w.tx, p, id).await?;
    db::delete_vpc(&mut w.tx, id).await?;
    w.finish(&state).await?;
    tracing::info!(vpc = %id, by = %principal.user.name, "VPC deleted");
    Ok(StatusCode::NO_CONTENT)
}

// ---- subnets ----

/// Subnets of the project (`?vpc=` for one VPC's).
#[utoipa::path(get, path = "/v1/projects/{p}/subnets", tag = "network", params(("p" = Uuid, Path), NetworkListParams), security(("bearer" = [])),
    responses((status = 200, body = List<Subnet>), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_subnets(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(p): ApiPath<Uuid>,
    ApiQuery(q): ApiQuery<NetworkListParams>,
) -> Result<axum::Json<List<Subnet>>, Error> {
    read(&state, &principal, p).await?;
    let page = page(&q)?;
    let mut conn = state.db.conn().await?;
    let rows = db::list_subnets(&mut conn, p, q.vpc, page.after.as_deref(), page.limit + 1).await?;
    let (items, next) = finish_page(rows, page.limit, |s| s.id.to_string());
    Ok(axum::Json(List { items, next }))
}

/// Create a subnet in a VPC: a bridge on every node with its ports, the gateway address on it,
/// platform DHCP with static leases when `dhcp` (10.7).
#[utoipa::path(post, path = "/v1/projects/{p}/subnets", tag = "network", params(("p" = Uuid, Path)), request_body = SubnetCreate, security(("bearer" = [])),
    responses((status = 201, body = Subnet), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_subnet(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(p): ApiPath<Uuid>,
    ApiJson(req): ApiJson<SubnetCreate>,
) -> Result<(StatusCode, axum::Json<Subnet>), Error> {
    let mut w = Write::begin(&state, &principal, p).await?;
    let vpc = db::get_vpc(&mut w.tx, p, req.vpc)
        .await?
        .ok_or_else(|| invalid("vpc", "unknown_vpc", "no such VPC in this project"))?;
    let existing = db::subnets_of_vpc(&mut w.tx, vpc.vpc.id).await?;
    let segment = model::allocate_segment_id(&db::segment_ids(&mut w.tx).await?)?;
    let subnet = req.into_subnet(Uuid::new_v4(), &vpc.vpc, &existing, segment)?;
    db::insert_subnet(&mut w.tx, p, &subnet, state.now()).await?;
    w.finish(&state).await?;
    tracing::info!(subnet = %subnet.id, vpc = %subnet.vpc, cidr = %subnet.cidr, by = %principal.user.name, "subnet created");
    Ok((StatusCode::CREATED, axum::Json(subnet)))
}

/// One subnet.
#[utoipa::path(get, path = "/v1/projects/{p}/subnets/{id}", tag = "network", params(("p" = Uuid, Path), ("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = Subnet), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_subnet(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((p, id)): ApiPath<(Uuid, Uuid)>,
) -> Result<axum::Json<Subnet>, Error> {
    read(&state, &principal, p).await?;
    let mut conn = state.db.conn().await?;
    db::get_subnet(&mut conn, p, id)
        .await?
        .map(axum::Json)
        .ok_or_else(|| Error::not_found("no such subnet"))
}

/// Delete a subnet (409 while it has ports).
#[utoipa::path(delete, path = "/v1/projects/{p}/subnets/{id}", tag = "network", params(("p" = Uuid, Path), ("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_subnet(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((p, id)): ApiPath<(Uuid, Uuid)>,
) -> Result<StatusCode, Error> {
    let mut w = Write::begin(&state, &principal, p).await?;
    db::get_subnet(&mut w.tx, p, id)
        .await?
        .ok_or_else(|| Error::not_found("no such subnet"))?;
    db::delete_subnet(&mut w.tx, id).await?;
    w.finish(&state).await?;
    tracing::info!(subnet = %id, by = %principal.user.name, "subnet deleted");
    Ok(StatusCode::NO_CONTENT)
}

// ---- security groups ----

/// Security groups of the project, with their rules.
#[utoipa::path(get, path = "/v1/projects/{p}/security-groups", tag = "network", params(("p" = Uuid, Path), NetworkListParams), security(("bearer" = [])),
    responses((status = 200, body = List<SecurityGroup>), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_groups(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(p): ApiPath<Uuid>,
    ApiQuery(q): ApiQuery<NetworkListParams>,
) -> Result<axum::Json<List<SecurityGroup>>, Error> {
    read(&state, &principal, p).await?;
    let page = page(&q)?;
    let mut conn = state.db.conn().await?;
    let rows = db::list_groups(&mut conn, p, page.after.as_deref(), page.limit + 1).await?;
    let (items, next) = finish_page(rows, page.limit, |g| g.name.clone());
    Ok(axum::Json(List { items, next }))
}

/// Create a security group. It starts with the default rules of 10.3-4: ingress of anything
/// from members of the same group, and all egress; other groups are refused until a rule
/// admits them.
#[utoipa::path(post, path = "/v1/projects/{p}/security-groups", tag = "network", params(("p" = Uuid, Path)), request_body = SecurityGroupCreate, security(("bearer" = [])),
    responses((status = 201, body = SecurityGroup), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_group(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(p): ApiPath<Uuid>,
    ApiJson(req): ApiJson<SecurityGroupCreate>,
) -> Result<(StatusCode, axum::Json<SecurityGroup>), Error> {
    let mut w = Write::begin(&state, &principal, p).await?;
    let g = req.into_group(Uuid::new_v4(), [Uuid::new_v4(), Uuid::new_v4()])?;
    db::insert_group(&mut w.tx, p, &g, state.now()).await?;
    w.finish(&state).await?;
    tracing::info!(group = %g.id, name = %g.name, project = %p, by = %principal.user.name, "security group created");
    Ok((StatusCode::CREATED, axum::Json(g)))
}

async fn group_in(conn: &mut rampart_db::Conn, p: Uuid, id: Uuid) -> Result<SecurityGroup, Error> {
    db::get_group(conn, p, id)
        .await?
        .ok_or_else(|| Error::not_found("no such security group"))
}

/// One security group with its rules in evaluation order.
#[utoipa::path(get, path = "/v1/projects/{p}/security-groups/{id}", tag = "network", params(("p" = Uuid, Path), ("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = SecurityGroup), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_group(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((p, id)): ApiPath<(Uuid, Uuid)>,
) -> Result<axum::Json<SecurityGroup>, Error> {
    read(&state, &principal, p).await?;
    let mut conn = state.db.conn().await?;
    Ok(axum::Json(group_in(&mut conn, p, id).await?))
}

/// Rename a security group or change its description.
#[utoipa::path(patch, path = "/v1/projects/{p}/security-groups/{id}", tag = "network", params(("p" = Uuid, Path), ("id" = Uuid, Path)), request_body = SecurityGroupUpdate, security(("bearer" = [])),
    responses((status = 200, body = SecurityGroup), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn update_group(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((p, id)): ApiPath<(Uuid, Uuid)>,
    ApiJson(req): ApiJson<SecurityGroupUpdate>,
) -> Result<axum::Json<SecurityGroup>, Error> {
    let mut w = Write::begin(&state, &principal, p).await?;
    let g = group_in(&mut w.tx, p, id).await?;
    // The same checks as at creation.
    let checked = SecurityGroupCreate {
        name: req.name.unwrap_or(g.name),
        description: Some(req.description.unwrap_or(g.description)),
    }
    .into_group(id, [Uuid::nil(), Uuid::nil()])?;
    db::update_group(&mut w.tx, id, &checked.name, &checked.description, state.now()).await?;
    let g = group_in(&mut w.tx, p, id).await?;
    w.finish(&state).await?;
    tracing::info!(group = %id, by = %principal.user.name, "security group updated");
    Ok(axum::Json(g))
}

/// Delete a security group (409 while ports are in it or other groups' rules name it).
#[utoipa::path(delete, path = "/v1/projects/{p}/security-groups/{id}", tag = "network", params(("p" = Uuid, Path), ("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_group(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((p, id)): ApiPath<(Uuid, Uuid)>,
) -> Result<StatusCode, Error> {
    let mut w = Write::begin(&state, &principal, p).await?;
    group_in(&mut w.tx, p, id).await?;
    db::delete_group(&mut w.tx, id).await?;
    w.finish(&state).await?;
    tracing::info!(group = %id, by = %principal.user.name, "security group deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Rules of a security group, in evaluation order.
#[utoipa::path(get, path = "/v1/projects/{p}/security-groups/{id}/rules", tag = "network", params(("p" = Uuid, Path), ("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = List<SecurityGroupRule>), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_rules(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((p, id)): ApiPath<(Uuid, Uuid)>,
) -> Result<axum::Json<List<SecurityGroupRule>>, Error> {
    read(&state, &principal, p).await?;
    let mut conn = state.db.conn().await?;
    Ok(axum::Json(List {
        items: group_in(&mut conn, p, id).await?.rules,
        next: None,
    }))
}

/// Add a rule to a security group (after its other rules). A remote group must be a group of
/// the same project.
#[utoipa::path(post, path = "/v1/projects/{p}/security-groups/{id}/rules", tag = "network", params(("p" = Uuid, Path), ("id" = Uuid, Path)), request_body = SecurityGroupRuleCreate, security(("bearer" = [])),
    responses((status = 201, body = SecurityGroupRule), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn create_rule(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((p, id)): ApiPath<(Uuid, Uuid)>,
    ApiJson(req): ApiJson<SecurityGroupRuleCreate>,
) -> Result<(StatusCode, axum::Json<SecurityGroupRule>), Error> {
    let mut w = Write::begin(&state, &principal, p).await?;
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
    w.finish(&state).await?;
    tracing::info!(group = %id, rule = %rule.id, by = %principal.user.name, "security group rule added");
    Ok((StatusCode::CREATED, axum::Json(rule)))
}

/// Remove a rule. Flows it admitted that are already established keep running until they
/// end (as in AWS security groups); new ones are refused at once.
#[utoipa::path(delete, path = "/v1/projects/{p}/security-groups/{id}/rules/{rule}", tag = "network", params(("p" = Uuid, Path), ("id" = Uuid, Path), ("rule" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_rule(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((p, id, rule)): ApiPath<(Uuid, Uuid, Uuid)>,
) -> Result<StatusCode, Error> {
    let mut w = Write::begin(&state, &principal, p).await?;
    group_in(&mut w.tx, p, id).await?;
    if !db::delete_rule(&mut w.tx, id, rule, state.now()).await? {
        return Err(Error::not_found("no such rule in this security group"));
    }
    w.finish(&state).await?;
    tracing::info!(group = %id, rule = %rule, by = %principal.user.name, "security group rule removed");
    Ok(StatusCode::NO_CONTENT)
}

// ---- ports ----

/// Ports of the project (`?vpc=`, `?subnet=`).
#[utoipa::path(get, path = "/v1/projects/{p}/ports", tag = "network", params(("p" = Uuid, Path), NetworkListParams), security(("bearer" = [])),
    responses((status = 200, body = List<Port>), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_ports(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(p): ApiPath<Uuid>,
    ApiQuery(q): ApiQuery<NetworkListParams>,
) -> Result<axum::Json<List<Port>>, Error> {
    read(&state, &principal, p).await?;
    let page = page(&q)?;
    let mut conn = state.db.conn().await?;
    let rows = db::list_ports(&mut conn, p, q.vpc, q.subnet, page.after.as_deref(), page.limit + 1).await?;
    let (items, next) = finish_page(rows, page.limit, |r| r.port.id.to_string());
    Ok(axum::Json(List {
        items: items.into_iter().map(port_view).collect(),
        next,
    }))
}

/// Create a port: the next free address of the subnet (or the fixed `ip` asked for) and a
/// locally administered MAC are allocated; port security (IP/MAC/ARP binding, DHCP and RA
/// quarantine) is on unless `port_security` is false.
#[utoipa::path(post, path = "/v1/projects/{p}/ports", tag = "network", params(("p" = Uuid, Path)), request_body = PortCreate, security(("bearer" = [])),
    responses((status = 201, body = Port), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_port(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(p): ApiPath<Uuid>,
    ApiJson(req): ApiJson<PortCreate>,
) -> Result<(StatusCode, axum::Json<Port>), Error> {
    let mut w = Write::begin(&state, &principal, p).await?;
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
    crate::quota::enforce(&state, &mut w.tx, p, Resource::Ports, 1).await?;
    let groups = db::group_ids(&mut w.tx, p).await?;
    let port = req.into_port(Uuid::new_v4(), &subnet, &existing, |g| groups.contains(g))?;
    db::insert_port(&mut w.tx, p, &port, state.now()).await?;
    let row = db::get_port(&mut w.tx, p, port.id)
        .await?
        .ok_or_else(|| Error::internal("creating a port", "row vanished"))?;
    w.finish(&state).await?;
    tracing::info!(port = %port.id, ip = %port.ip, mac = %port.mac, by = %principal.user.name, "port created");
    Ok((StatusCode::CREATED, axum::Json(port_view(row))))
}

async fn port_in(conn: &mut rampart_db::Conn, p: Uuid, id: Uuid) -> Result<PortRow, Error> {
    db::get_port(conn, p, id)
        .await?
        .ok_or_else(|| Error::not_found("no such port"))
}

/// One port.
#[utoipa::path(get, path = "/v1/projects/{p}/ports/{id}", tag = "network", params(("p" = Uuid, Path), ("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = Port), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_port(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((p, id)): ApiPath<(Uuid, Uuid)>,
) -> Result<axum::Json<Port>, Error> {
    read(&state, &principal, p).await?;
    let mut conn = state.db.conn().await?;
    Ok(axum::Json(port_view(port_in(&mut conn, p, id).await?)))
}

/// Change a port's security groups, tags (micro-segmentation: a retag moves set elements
/// only), allowed address pairs, port security or connection limit.
#[utoipa::path(patch, path = "/v1/projects/{p}/ports/{id}", tag = "network", params(("p" = Uuid, Path), ("id" = Uuid, Path)), request_body = PortUpdate, security(("bearer" = [])),
    responses((status = 200, body = Port), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn update_port(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((p, id)): ApiPath<(Uuid, Uuid)>,
    ApiJson(req): ApiJson<PortUpdate>,
) -> Result<axum::Json<Port>, Error> {
    let mut w = Write::begin(&state, &principal, p).await?;
    let row = port_in(&mut w.tx, p, id).await?;
    let groups = db::group_ids(&mut w.tx, p).await?;
    let port = req.apply(&row.port, |g| groups.contains(g))?;
    db::update_port(&mut w.tx, &port, state.now()).await?;
    let row = port_in(&mut w.tx, p, id).await?;
    w.finish(&state).await?;
    tracing::info!(port = %id, by = %principal.user.name, "port updated");
    Ok(axum::Json(port_view(row)))
}

/// Delete a port. Its node removes the device, its addresses from every set and their
/// tracked connections; its floating IP is released from it.
#[utoipa::path(delete, path = "/v1/projects/{p}/ports/{id}", tag = "network", params(("p" = Uuid, Path), ("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_port(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((p, id)): ApiPath<(Uuid, Uuid)>,
) -> Result<StatusCode, Error> {
    let mut w = Write::begin(&state, &principal, p).await?;
    port_in(&mut w.tx, p, id).await?;
    not_in_an_instance(&mut w.tx, id).await?;
    db::delete_port(&mut w.tx, id).await?;
    w.finish(&state).await?;
    tracing::info!(port = %id, by = %principal.user.name, "port deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// A port plugged into an instance belongs to it until the instance is deleted: 409
/// `port_in_use`.
async fn not_in_an_instance(conn: &mut rampart_db::Conn, port: Uuid) -> Result<(), Error> {
    match rampart_db::compute::port_instance(conn, port).await? {
        Some(i) => Err(crate::compute::port_in_use(format!(
            "port {port} is plugged into instance {i}; delete the instance first"
        ))),
        None => Ok(()),
    }
}

/// Plugging a device into a host's namespaces is an operator's act (`system.manage`), not a
/// tenant's: 404 for a project the caller cannot see at all, 403 for everyone else without
/// the system role. A system administrator needs no role on the project.
async fn operator_write(state: &AppState, principal: &Principal, p: Uuid) -> Result<Write, Error> {
    match principal.project(state, p, "project.read").await {
        Ok(_) | Err(Error::Forbidden { .. }) => {}
        Err(e) => return Err(e),
    }
    principal.require_system(state, "system.manage")?;
    Write::open(state, p).await
}

fn valid_ifname(s: &str) -> bool {
    (1..=15).contains(&s.len())
        && s != "."
        && s != ".."
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn valid_netns(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && !s.starts_with('.')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Plug a port into a node (system administrators; the compute service does it for VM
/// ports). `device` is `{"kind":"tap"}` for a QEMU tap created in the VPC namespace, or
/// `{"kind":"veth","peer_netns":NS,"peer_name":"eth0"}`: a veth whose far end goes into the
/// existing network namespace `NS` on that node (a container, or a test's stand-in VM).
#[utoipa::path(put, path = "/v1/projects/{p}/ports/{id}/binding", tag = "network", params(("p" = Uuid, Path), ("id" = Uuid, Path)), request_body = PortBinding, security(("bearer" = [])),
    responses((status = 200, body = Port), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn bind_port(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((p, id)): ApiPath<(Uuid, Uuid)>,
    ApiJson(req): ApiJson<PortBinding>,
) -> Result<axum::Json<Port>, Error> {
    let mut w = operator_write(&state, &principal, p).await?;
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
    w.finish(&state).await?;
    tracing::info!(port = %id, node = %req.node, by = %principal.user.name, "port bound");
    Ok(axum::Json(port_view(row)))
}

/// Unplug a port from its node.
#[utoipa::path(delete, path = "/v1/projects/{p}/ports/{id}/binding", tag = "network", params(("p" = Uuid, Path), ("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Unbound"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn unbind_port(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((p, id)): ApiPath<(Uuid, Uuid)>,
) -> Result<StatusCode, Error> {
    let mut w = operator_write(&state, &principal, p).await?;
    port_in(&mut w.tx, p, id).await?;
    not_in_an_instance(&mut w.tx, id).await?;
    db::bind_port(&mut w.tx, id, None, state.now()).await?;
    w.finish(&state).await?;
    tracing::info!(port = %id, by = %principal.user.name, "port unbound");
    Ok(StatusCode::NO_CONTENT)
}

// ---- segmentation policies ----

/// Segmentation policies of the project.
#[utoipa::path(get, path = "/v1/projects/{p}/segmentation-policies", tag = "network", params(("p" = Uuid, Path), NetworkListParams), security(("bearer" = [])),
    responses((status = 200, body = List<SegmentationPolicy>), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_policies(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(p): ApiPath<Uuid>,
    ApiQuery(q): ApiQuery<NetworkListParams>,
) -> Result<axum::Json<List<SegmentationPolicy>>, Error> {
    read(&state, &principal, p).await?;
    let page = page(&q)?;
    let mut conn = state.db.conn().await?;
    let rows = db::list_policies(&mut conn, p, page.after.as_deref(), page.limit + 1).await?;
    let (items, next) = finish_page(rows, page.limit, |x| x.name.clone());
    Ok(axum::Json(List { items, next }))
}

/// Create a micro-segmentation policy between tag selectors (10.9-1). Policies are evaluated
/// before security groups: every `deny` first, then `allow` (which admits without consulting
/// the groups). Ports match by their tags, so a retag changes what applies with set updates
/// only.
#[utoipa::path(post, path = "/v1/projects/{p}/segmentation-policies", tag = "network", params(("p" = Uuid, Path)), request_body = SegmentationPolicyCreate, security(("bearer" = [])),
    responses((status = 201, body = SegmentationPolicy), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_policy(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(p): ApiPath<Uuid>,
    ApiJson(req): ApiJson<SegmentationPolicyCreate>,
) -> Result<(StatusCode, axum::Json<SegmentationPolicy>), Error> {
    let mut w = Write::begin(&state, &principal, p).await?;
    let pol = req.into_policy(Uuid::new_v4())?;
    db::insert_policy(&mut w.tx, p, &pol, state.now()).await?;
    w.finish(&state).await?;
    tracing::info!(policy = %pol.id, name = %pol.name, by = %principal.user.name, "segmentation policy created");
    Ok((StatusCode::CREATED, axum::Json(pol)))
}

/// One segmentation policy.
#[utoipa::path(get, path = "/v1/projects/{p}/segmentation-policies/{id}", tag = "network", params(("p" = Uuid, Path), ("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = SegmentationPolicy), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_policy(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((p, id)): ApiPath<(Uuid, Uuid)>,
) -> Result<axum::Json<SegmentationPolicy>, Error> {
    read(&state, &principal, p).await?;
    let mut conn = state.db.conn().await?;
    db::get_policy(&mut conn, p, id)
        .await?
        .map(axum::Json)
        .ok_or_else(|| Error::not_found("no such segmentation policy"))
}

/// Delete a segmentation policy.
#[utoipa::path(delete, path = "/v1/projects/{p}/segmentation-policies/{id}", tag = "network", params(("p" = Uuid, Path), ("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_policy(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((p, id)): ApiPath<(Uuid, Uuid)>,
) -> Result<StatusCode, Error> {
    let mut w = Write::begin(&state, &principal, p).await?;
    db::get_policy(&mut w.tx, p, id)
        .await?
        .ok_or_else(|| Error::not_found("no such segmentation policy"))?;
    db::delete_policy(&mut w.tx, id).await?;
    w.finish(&state).await?;
    tracing::info!(policy = %id, by = %principal.user.name, "segmentation policy deleted");
    Ok(StatusCode::NO_CONTENT)
}

// ---- floating IPs ----

/// Floating IPs of the project.
#[utoipa::path(get, path = "/v1/projects/{p}/floating-ips", tag = "network", params(("p" = Uuid, Path), NetworkListParams), security(("bearer" = [])),
    responses((status = 200, body = List<FloatingIp>), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_floating_ips(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(p): ApiPath<Uuid>,
    ApiQuery(q): ApiQuery<NetworkListParams>,
) -> Result<axum::Json<List<FloatingIp>>, Error> {
    read(&state, &principal, p).await?;
    let page = page(&q)?;
    let mut conn = state.db.conn().await?;
    let rows = db::list_floating_ips(&mut conn, p, page.after.as_deref(), page.limit + 1).await?;
    let (items, next) = finish_page(rows, page.limit, |f| f.id.to_string());
    Ok(axum::Json(List {
        items: items.into_iter().map(fip_view).collect(),
        next,
    }))
}

/// Checks that `port` may receive a floating IP: a port of the project in an external VPC.
async fn fip_target(conn: &mut rampart_db::Conn, p: Uuid, port: Uuid) -> Result<(), Error> {
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

/// Allocate a floating IP from the external network, optionally forwarding to a port: from
/// outside, only floating IPs are reachable, and only on what the port's groups admit (10.4).
#[utoipa::path(post, path = "/v1/projects/{p}/floating-ips", tag = "network", params(("p" = Uuid, Path)), request_body = FloatingIpCreate, security(("bearer" = [])),
    responses((status = 201, body = FloatingIp), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_floating_ip(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(p): ApiPath<Uuid>,
    ApiJson(req): ApiJson<FloatingIpCreate>,
) -> Result<(StatusCode, axum::Json<FloatingIp>), Error> {
    let mut w = Write::begin(&state, &principal, p).await?;
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
    w.finish(&state).await?;
    tracing::info!(fip = %fip.id, address = %fip.address, port = ?fip.port, by = %principal.user.name, "floating IP allocated");
    Ok((StatusCode::CREATED, axum::Json(fip_view(fip))))
}

async fn fip_in(conn: &mut rampart_db::Conn, p: Uuid, id: Uuid) -> Result<model::FloatingIp, Error> {
    db::get_floating_ip(conn, p, id)
        .await?
        .ok_or_else(|| Error::not_found("no such floating IP"))
}

/// One floating IP.
#[utoipa::path(get, path = "/v1/projects/{p}/floating-ips/{id}", tag = "network", params(("p" = Uuid, Path), ("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = FloatingIp), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_floating_ip(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((p, id)): ApiPath<(Uuid, Uuid)>,
) -> Result<axum::Json<FloatingIp>, Error> {
    read(&state, &principal, p).await?;
    let mut conn = state.db.conn().await?;
    Ok(axum::Json(fip_view(fip_in(&mut conn, p, id).await?)))
}

/// Point a floating IP at another port, or at none (`"port": null`).
#[utoipa::path(patch, path = "/v1/projects/{p}/floating-ips/{id}", tag = "network", params(("p" = Uuid, Path), ("id" = Uuid, Path)), request_body = FloatingIpUpdate, security(("bearer" = [])),
    responses((status = 200, body = FloatingIp), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn update_floating_ip(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((p, id)): ApiPath<(Uuid, Uuid)>,
    ApiJson(req): ApiJson<FloatingIpUpdate>,
) -> Result<axum::Json<FloatingIp>, Error> {
    let mut w = Write::begin(&state, &principal, p).await?;
    let mut fip = fip_in(&mut w.tx, p, id).await?;
    if let Some(port) = req.port {
        if let Some(port) = port {
            fip_target(&mut w.tx, p, port).await?;
        }
        db::associate_floating_ip(&mut w.tx, id, port).await?;
        fip.port = port;
    }
    w.finish(&state).await?;
    tracing::info!(fip = %id, port = ?fip.port, by = %principal.user.name, "floating IP updated");
    Ok(axum::Json(fip_view(fip)))
}

/// Release a floating IP.
#[utoipa::path(delete, path = "/v1/projects/{p}/floating-ips/{id}", tag = "network", params(("p" = Uuid, Path), ("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Released"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_floating_ip(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((p, id)): ApiPath<(Uuid, Uuid)>,
) -> Result<StatusCode, Error> {
    let mut w = Write::begin(&state, &principal, p).await?;
    fip_in(&mut w.tx, p, id).await?;
    db::delete_floating_ip(&mut w.tx, id).await?;
    w.finish(&state).await?;
    tracing::info!(fip = %id, by = %principal.user.name, "floating IP released");
    Ok(StatusCode::NO_CONTENT)
}

// ---- analysis ----

/// Whether port `from` can open `protocol`/`port` to port `to`, from the model alone, and which
/// policies or rules decide it (10.9-1, 11.3-3).
#[utoipa::path(get, path = "/v1/projects/{p}/reachability", tag = "network", params(("p" = Uuid, Path), ReachabilityQuery), security(("bearer" = [])),
    responses((status = 200, body = Reachability), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn reachability(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(p): ApiPath<Uuid>,
    ApiQuery(q): ApiQuery<ReachabilityQuery>,
) -> Result<axum::Json<Reachability>, Error> {
    read(&state, &principal, p).await?;
    match (q.protocol, q.port) {
        (Protocol::Any, _) => {
            return Err(invalid(
                "protocol",
                "protocol_any",
                "ask about one protocol: tcp, udp or icmp",
            ));
        }
        (Protocol::Tcp | Protocol::Udp, None) => {
            return Err(invalid("port", "port_required", "tcp and udp need a destination port"));
        }
        (Protocol::Icmp, Some(_)) => {
            return Err(invalid("port", "ports_require_tcp_or_udp", "icmp has no ports"));
        }
        (_, Some(0)) => return Err(invalid("port", "port_out_of_range", "ports are 1-65535")),
        _ => {}
    }
    let mut conn = state.db.conn().await?;
    let from = db::get_port(&mut conn, p, q.from)
        .await?
        .ok_or_else(|| Error::not_found("no such port (from)"))?;
    let to = db::get_port(&mut conn, p, q.to)
        .await?
        .ok_or_else(|| Error::not_found("no such port (to)"))?;
    if from.port.vpc != to.port.vpc {
        return Err(invalid(
            "to",
            "different_vpc",
            "the ports are in different VPCs, which are never connected to each other",
        ));
    }
    let net = network::vpc_network(&mut conn, from.port.vpc, None)
        .await?
        .ok_or_else(|| Error::internal("reading a VPC", "port without VPC"))?;
    rampart_net::reach::reachable(&net, &q.from, &q.to, q.protocol, q.port)
        .map(axum::Json)
        .ok_or_else(|| Error::internal("analysing reachability", "port missing from its VPC"))
}

/// The flow graph of the project (10.9-2): which ports opened which flows to which, and which
/// attempts were denied, from the flow logs agents report (each record covers up to an hour).
/// `?format=dot` gives Graphviz DOT.
#[utoipa::path(get, path = "/v1/projects/{p}/flows", tag = "network", params(("p" = Uuid, Path), FlowsQuery), security(("bearer" = [])),
    responses((status = 200, body = FlowGraph, description = "JSON, or text/vnd.graphviz with format=dot"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn flows(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(p): ApiPath<Uuid>,
    ApiQuery(q): ApiQuery<FlowsQuery>,
) -> Result<Response, Error> {
    read(&state, &principal, p).await?;
    let dot = match q.format.as_deref() {
        None | Some("json") => false,
        Some("dot") => true,
        Some(_) => return Err(invalid("format", "invalid_format", "format is json or dot")),
    };
    let since = match &q.since {
        Some(s) => Some(
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .map_err(|_| invalid("since", "invalid_time", "since is an RFC 3339 time"))?,
        ),
        None => None,
    };
    let mut conn = state.db.conn().await?;
    let mut vpcs: BTreeMap<Uuid, Vec<PortRow>> = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let rows = db::list_vpcs(&mut conn, p, after.as_deref(), 1000).await?;
        let done = rows.len() < 1000;
        after = rows.last().map(|r| r.vpc.name.clone());
        for r in rows {
            if q.vpc.is_none_or(|v| v == r.vpc.id) {
                vpcs.insert(r.vpc.id, db::ports_of_vpc(&mut conn, r.vpc.id).await?);
            }
        }
        if done {
            break;
        }
    }
    let nodes: Vec<Uuid> = network::nodes_of_project(&mut conn, p)
        .await?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let reports: Vec<(Uuid, NetworkStatus)> = db::node_statuses(&mut conn, &nodes)
        .await?
        .into_iter()
        .filter(|(_, _, at)| since.is_none_or(|s| *at >= s))
        .filter_map(|(n, json, _)| serde_json::from_str(&json).ok().map(|s| (n, s)))
        .collect();
    let graph = network::flow_graph(&reports, &vpcs);
    if dot {
        Ok((
            [(http::header::CONTENT_TYPE, "text/vnd.graphviz; charset=utf-8")],
            network::flow_dot(&graph),
        )
            .into_response())
    } else {
        Ok(axum::Json(graph).into_response())
    }
}

/// The latest data-plane report of a node: per VPC, the drop counters (spoofing, DHCP
/// quarantine, connection allowance exceeded per port, per-policy hits) and flow logs.
#[utoipa::path(get, path = "/v1/nodes/{id}/network", tag = "nodes", params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = NodeNetworkReport), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn node_network(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<axum::Json<NodeNetworkReport>, Error> {
    principal.require_system(&state, "system.read")?;
    let mut conn = state.db.conn().await?;
    let (_, json, updated_at) = db::node_statuses(&mut conn, &[id])
        .await?
        .pop()
        .ok_or_else(|| Error::not_found("no network report from this node yet"))?;
    let status: NetworkStatus =
        serde_json::from_str(&json).map_err(|e| Error::internal("reading a node's network report", e))?;
    Ok(axum::Json(NodeNetworkReport {
        node: id,
        status,
        updated_at,
    }))
}
