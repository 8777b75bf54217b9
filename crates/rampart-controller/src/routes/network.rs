//! The Network API (API.md "Network"): VPCs, subnets, security groups and rules, ports with
//! IPAM, segmentation policies, floating IPs, reachability analysis and the flow graph.
//!
//! Every handler authorizes on the project first (`project.read` for reads, `project.write`
//! for changes; 404 when the caller may not see the project), validates with the constructors
//! of `rampart_net::model` (400 `validation_failed` with `details.reason`), and makes each
//! change in one transaction that also republishes the documents of every node holding a VPC
//! of the project, so agents see the change at the next generation.

use crate::app;
use crate::auth::Principal;
use crate::http::{ApiJson, ApiPath, ApiQuery};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rampart_api::List;
use rampart_api::network::*;
use rampart_common::Error;
use rampart_common::error::ErrorBody;
use uuid::Uuid;

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
    app::network::vpcs::list_vpcs(&state, &principal, p, q)
        .await
        .map(axum::Json)
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
    app::network::vpcs::create_vpc(&state, &principal, p, req)
        .await
        .map(|v| (StatusCode::CREATED, axum::Json(v)))
}

/// One VPC.
#[utoipa::path(get, path = "/v1/projects/{p}/vpcs/{id}", tag = "network", params(("p" = Uuid, Path), ("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = Vpc), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_vpc(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((p, id)): ApiPath<(Uuid, Uuid)>,
) -> Result<axum::Json<Vpc>, Error> {
    app::network::vpcs::get_vpc(&state, &principal, (p, id))
        .await
        .map(axum::Json)
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
    app::network::vpcs::update_vpc(&state, &principal, (p, id), req)
        .await
        .map(axum::Json)
}

/// Delete a VPC and its subnets (409 while it has ports).
#[utoipa::path(delete, path = "/v1/projects/{p}/vpcs/{id}", tag = "network", params(("p" = Uuid, Path), ("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_vpc(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((p, id)): ApiPath<(Uuid, Uuid)>,
) -> Result<StatusCode, Error> {
    app::network::vpcs::delete_vpc(&state, &principal, (p, id))
        .await
        .map(|()| StatusCode::NO_CONTENT)
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
    app::network::subnets::list_subnets(&state, &principal, p, q)
        .await
        .map(axum::Json)
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
    app::network::subnets::create_subnet(&state, &principal, p, req)
        .await
        .map(|v| (StatusCode::CREATED, axum::Json(v)))
}

/// One subnet.
#[utoipa::path(get, path = "/v1/projects/{p}/subnets/{id}", tag = "network", params(("p" = Uuid, Path), ("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = Subnet), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_subnet(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((p, id)): ApiPath<(Uuid, Uuid)>,
) -> Result<axum::Json<Subnet>, Error> {
    app::network::subnets::get_subnet(&state, &principal, (p, id))
        .await
        .map(axum::Json)
}

/// Delete a subnet (409 while it has ports).
#[utoipa::path(delete, path = "/v1/projects/{p}/subnets/{id}", tag = "network", params(("p" = Uuid, Path), ("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_subnet(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((p, id)): ApiPath<(Uuid, Uuid)>,
) -> Result<StatusCode, Error> {
    app::network::subnets::delete_subnet(&state, &principal, (p, id))
        .await
        .map(|()| StatusCode::NO_CONTENT)
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
    app::network::security_groups::list_groups(&state, &principal, p, q)
        .await
        .map(axum::Json)
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
    app::network::security_groups::create_group(&state, &principal, p, req)
        .await
        .map(|v| (StatusCode::CREATED, axum::Json(v)))
}

/// One security group with its rules in evaluation order.
#[utoipa::path(get, path = "/v1/projects/{p}/security-groups/{id}", tag = "network", params(("p" = Uuid, Path), ("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = SecurityGroup), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_group(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((p, id)): ApiPath<(Uuid, Uuid)>,
) -> Result<axum::Json<SecurityGroup>, Error> {
    app::network::security_groups::get_group(&state, &principal, (p, id))
        .await
        .map(axum::Json)
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
    app::network::security_groups::update_group(&state, &principal, (p, id), req)
        .await
        .map(axum::Json)
}

/// Delete a security group (409 while ports are in it or other groups' rules name it).
#[utoipa::path(delete, path = "/v1/projects/{p}/security-groups/{id}", tag = "network", params(("p" = Uuid, Path), ("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_group(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((p, id)): ApiPath<(Uuid, Uuid)>,
) -> Result<StatusCode, Error> {
    app::network::security_groups::delete_group(&state, &principal, (p, id))
        .await
        .map(|()| StatusCode::NO_CONTENT)
}

/// Rules of a security group, in evaluation order.
#[utoipa::path(get, path = "/v1/projects/{p}/security-groups/{id}/rules", tag = "network", params(("p" = Uuid, Path), ("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = List<SecurityGroupRule>), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_rules(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((p, id)): ApiPath<(Uuid, Uuid)>,
) -> Result<axum::Json<List<SecurityGroupRule>>, Error> {
    app::network::security_groups::list_rules(&state, &principal, (p, id))
        .await
        .map(axum::Json)
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
    app::network::security_groups::create_rule(&state, &principal, (p, id), req)
        .await
        .map(|v| (StatusCode::CREATED, axum::Json(v)))
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
    app::network::security_groups::delete_rule(&state, &principal, (p, id, rule))
        .await
        .map(|()| StatusCode::NO_CONTENT)
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
    app::network::ports::list_ports(&state, &principal, p, q)
        .await
        .map(axum::Json)
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
    app::network::ports::create_port(&state, &principal, p, req)
        .await
        .map(|v| (StatusCode::CREATED, axum::Json(v)))
}

/// One port.
#[utoipa::path(get, path = "/v1/projects/{p}/ports/{id}", tag = "network", params(("p" = Uuid, Path), ("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = Port), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_port(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((p, id)): ApiPath<(Uuid, Uuid)>,
) -> Result<axum::Json<Port>, Error> {
    app::network::ports::get_port(&state, &principal, (p, id))
        .await
        .map(axum::Json)
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
    app::network::ports::update_port(&state, &principal, (p, id), req)
        .await
        .map(axum::Json)
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
    app::network::ports::delete_port(&state, &principal, (p, id))
        .await
        .map(|()| StatusCode::NO_CONTENT)
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
    app::network::ports::bind_port(&state, &principal, (p, id), req)
        .await
        .map(axum::Json)
}

/// Unplug a port from its node.
#[utoipa::path(delete, path = "/v1/projects/{p}/ports/{id}/binding", tag = "network", params(("p" = Uuid, Path), ("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Unbound"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn unbind_port(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((p, id)): ApiPath<(Uuid, Uuid)>,
) -> Result<StatusCode, Error> {
    app::network::ports::unbind_port(&state, &principal, (p, id))
        .await
        .map(|()| StatusCode::NO_CONTENT)
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
    app::network::policies::list_policies(&state, &principal, p, q)
        .await
        .map(axum::Json)
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
    app::network::policies::create_policy(&state, &principal, p, req)
        .await
        .map(|v| (StatusCode::CREATED, axum::Json(v)))
}

/// One segmentation policy.
#[utoipa::path(get, path = "/v1/projects/{p}/segmentation-policies/{id}", tag = "network", params(("p" = Uuid, Path), ("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = SegmentationPolicy), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_policy(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((p, id)): ApiPath<(Uuid, Uuid)>,
) -> Result<axum::Json<SegmentationPolicy>, Error> {
    app::network::policies::get_policy(&state, &principal, (p, id))
        .await
        .map(axum::Json)
}

/// Delete a segmentation policy.
#[utoipa::path(delete, path = "/v1/projects/{p}/segmentation-policies/{id}", tag = "network", params(("p" = Uuid, Path), ("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_policy(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((p, id)): ApiPath<(Uuid, Uuid)>,
) -> Result<StatusCode, Error> {
    app::network::policies::delete_policy(&state, &principal, (p, id))
        .await
        .map(|()| StatusCode::NO_CONTENT)
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
    app::network::floating_ips::list_floating_ips(&state, &principal, p, q)
        .await
        .map(axum::Json)
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
    app::network::floating_ips::create_floating_ip(&state, &principal, p, req)
        .await
        .map(|v| (StatusCode::CREATED, axum::Json(v)))
}

/// One floating IP.
#[utoipa::path(get, path = "/v1/projects/{p}/floating-ips/{id}", tag = "network", params(("p" = Uuid, Path), ("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = FloatingIp), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_floating_ip(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((p, id)): ApiPath<(Uuid, Uuid)>,
) -> Result<axum::Json<FloatingIp>, Error> {
    app::network::floating_ips::get_floating_ip(&state, &principal, (p, id))
        .await
        .map(axum::Json)
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
    app::network::floating_ips::update_floating_ip(&state, &principal, (p, id), req)
        .await
        .map(axum::Json)
}

/// Release a floating IP.
#[utoipa::path(delete, path = "/v1/projects/{p}/floating-ips/{id}", tag = "network", params(("p" = Uuid, Path), ("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Released"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_floating_ip(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((p, id)): ApiPath<(Uuid, Uuid)>,
) -> Result<StatusCode, Error> {
    app::network::floating_ips::delete_floating_ip(&state, &principal, (p, id))
        .await
        .map(|()| StatusCode::NO_CONTENT)
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
    app::network::analysis::reachability(&state, &principal, p, q)
        .await
        .map(axum::Json)
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
    Ok(match app::network::analysis::flows(&state, &principal, p, q).await? {
        app::network::analysis::Flows::Json(graph) => axum::Json(graph).into_response(),
        app::network::analysis::Flows::Dot(dot) => {
            ([(http::header::CONTENT_TYPE, "text/vnd.graphviz; charset=utf-8")], dot).into_response()
        }
    })
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
    app::network::analysis::node_network(&state, &principal, id)
        .await
        .map(axum::Json)
}
