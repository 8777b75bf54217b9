//! The routes of the controller and the OpenAPI documents generated from them.

pub mod agent;
pub mod assignments;
pub mod audit;
pub mod auth;
pub mod certificates;
pub mod compute;
pub mod groups;
pub mod identity;
pub mod keys;
pub mod meta;
pub mod network;
pub mod nodes;
pub mod quotas;
pub mod roles;
pub mod volumes;

use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use rampart_common::Error;
use utoipa::openapi::OpenApi as OpenApiDoc;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http;
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "Rampart API", version = "v1", description = "The public API of Rampart, a security-first cloud operating system."),
    modifiers(&BearerAuth),
    tags(
        (name = "meta", description = "Health, CA certificate, API description"),
        (name = "auth", description = "Login, logout, passwords, second factors, application credentials"),
        (name = "identity", description = "Domains, projects, users, groups, roles, role assignments, security compliance"),
        (name = "nodes", description = "Hypervisor nodes and their enrolment"),
        (name = "audit", description = "The audit trail: records, verification, retention, forwarding"),
        (name = "compute", description = "Signing keys, images, flavors, instances, metrics, console, alarms"),
        (name = "network", description = "VPCs, subnets, security groups, ports, segmentation policies, floating IPs, reachability, flows"),
        (name = "keys", description = "Customer keys in the HSM: lifecycle (key-admin) and cryptographic operations (key-user)"),
        (name = "certificates", description = "Certificate inventory, issuance from tenant CSRs, import, revocation"),
        (name = "volumes", description = "Encrypted volumes, their grants and wipe reports, attachments, volume types, storage pools"),
    )
)]
struct PublicApi;

#[derive(OpenApi)]
#[openapi(
    info(title = "Rampart agent protocol", version = "v1", description = "How node agents enrol and pull their desired state (mutual TLS)."),
    tags((name = "agent", description = "Controller ↔ agent protocol"))
)]
struct AgentApi;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut OpenApiDoc) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// Every authenticated `POST` takes an `Idempotency-Key` (see [`crate::idempotency`]); added
/// once the routes are merged into the document.
fn document_idempotency(mut openapi: OpenApiDoc) -> OpenApiDoc {
    {
        use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
        let header = ParameterBuilder::new()
            .name("Idempotency-Key")
            .parameter_in(ParameterIn::Header)
            .required(utoipa::openapi::Required::False)
            .description(Some(
                "Makes a retry safe: the answer of the first call with this key (1-255 visible ASCII \
                 characters, a UUID say) is kept 24 h per principal and given again to a retry with the \
                 same request (header `Idempotent-Replayed: true`); the same key with another request \
                 is refused with 409 `idempotency_key_reused`, and while the first call runs with 409 \
                 `idempotency_key_in_progress`.",
            ))
            .schema(Some(
                utoipa::openapi::ObjectBuilder::new().schema_type(utoipa::openapi::schema::Type::String),
            ))
            .build();
        for item in openapi.paths.paths.values_mut() {
            let Some(op) = item.post.as_mut() else {
                continue;
            };
            if op.security.is_some() {
                op.parameters
                    .get_or_insert_with(Vec::new)
                    .push(utoipa::openapi::RefOr::T(header.clone()));
            }
        }
    }
    openapi
}

fn open_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(meta::health))
        .routes(routes!(meta::readyz))
        .routes(routes!(meta::ca_certificate))
        .routes(routes!(auth::login))
        .routes(routes!(auth::create_session))
        .routes(routes!(auth::change_password))
        .merge(certificates::open_routes())
}

/// Routes that need a bearer token; [`router`] puts them behind [`crate::auth::require_token`].
fn authenticated_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(auth::current_token, auth::logout))
        .routes(routes!(auth::totp_enroll))
        .routes(routes!(auth::totp_confirm))
        .routes(routes!(auth::recovery_codes))
        .routes(routes!(auth::create_credential, auth::list_credentials))
        .routes(routes!(auth::get_credential, auth::delete_credential))
        .routes(routes!(identity::list_domains, identity::create_domain))
        .routes(routes!(
            identity::get_domain,
            identity::update_domain,
            identity::delete_domain
        ))
        .routes(routes!(identity::list_projects, identity::create_project))
        .routes(routes!(
            identity::get_project,
            identity::update_project,
            identity::delete_project
        ))
        .routes(routes!(identity::list_users, identity::create_user))
        .routes(routes!(
            identity::get_user,
            identity::update_user,
            identity::delete_user
        ))
        .routes(routes!(identity::unlock_user))
        .routes(routes!(identity::reset_password))
        .routes(routes!(identity::reset_mfa))
        .routes(routes!(groups::list_groups, groups::create_group))
        .routes(routes!(groups::get_group, groups::update_group, groups::delete_group))
        .routes(routes!(groups::group_members))
        .routes(routes!(groups::add_group_member, groups::remove_group_member))
        .routes(routes!(roles::list_roles, roles::create_role))
        .routes(routes!(roles::get_role, roles::update_role, roles::delete_role))
        .routes(routes!(assignments::list_assignments, assignments::create_assignment))
        .routes(routes!(assignments::delete_assignment))
        .routes(routes!(identity::get_compliance, identity::put_compliance))
        .routes(routes!(quotas::get_quotas, quotas::put_quotas))
        .routes(routes!(nodes::list_nodes))
        .routes(routes!(nodes::get_node, nodes::delete_node))
        .routes(routes!(nodes::create_join_token))
        // Audit trail (issue 4).
        .routes(routes!(audit::list_events))
        .routes(routes!(audit::verify))
        .routes(routes!(audit::get_retention, audit::put_retention))
        .routes(routes!(audit::get_forwarding, audit::put_forwarding))
        // Compute (issue 7).
        .routes(routes!(compute::list_signing_keys, compute::create_signing_key))
        .routes(routes!(compute::delete_signing_key))
        .routes(routes!(compute::get_settings, compute::put_settings))
        .routes(routes!(compute::list_flavors, compute::create_flavor))
        .routes(routes!(compute::delete_flavor))
        .routes(routes!(compute::list_images, compute::create_image))
        .routes(routes!(compute::get_image, compute::delete_image))
        .routes(routes!(compute::upload_image_data))
        .routes(routes!(compute::list_instances, compute::create_instance))
        .routes(routes!(compute::get_instance, compute::delete_instance))
        .routes(routes!(compute::instance_action))
        .routes(routes!(compute::console))
        .routes(routes!(compute::events))
        .routes(routes!(compute::metrics))
        .routes(routes!(compute::prometheus))
        .routes(routes!(compute::list_alarms, compute::create_alarm))
        .routes(routes!(compute::get_alarm, compute::delete_alarm))
        .routes(routes!(compute::alarm_history))
        // Tenant networking (issue 6).
        .routes(routes!(network::list_vpcs, network::create_vpc))
        .routes(routes!(network::get_vpc, network::update_vpc, network::delete_vpc))
        .routes(routes!(network::list_subnets, network::create_subnet))
        .routes(routes!(network::get_subnet, network::delete_subnet))
        .routes(routes!(network::list_groups, network::create_group))
        .routes(routes!(
            network::get_group,
            network::update_group,
            network::delete_group
        ))
        .routes(routes!(network::list_rules, network::create_rule))
        .routes(routes!(network::delete_rule))
        .routes(routes!(network::list_ports, network::create_port))
        .routes(routes!(network::get_port, network::update_port, network::delete_port))
        .routes(routes!(network::bind_port, network::unbind_port))
        .routes(routes!(network::list_policies, network::create_policy))
        .routes(routes!(network::get_policy, network::delete_policy))
        .routes(routes!(network::list_floating_ips, network::create_floating_ip))
        .routes(routes!(
            network::get_floating_ip,
            network::update_floating_ip,
            network::delete_floating_ip
        ))
        .routes(routes!(network::reachability))
        .routes(routes!(network::flows))
        .routes(routes!(network::node_network))
        // Volumes (issue 15).
        .routes(routes!(volumes::list_volumes, volumes::create_volume))
        .routes(routes!(volumes::get_volume, volumes::delete_volume))
        .routes(routes!(volumes::extend_volume))
        .routes(routes!(volumes::get_access, volumes::put_access))
        .routes(routes!(volumes::wipe_report))
        .routes(routes!(volumes::attach_volume))
        .routes(routes!(volumes::detach_volume))
        .routes(routes!(volumes::list_volume_types, volumes::create_volume_type))
        .routes(routes!(volumes::delete_volume_type))
        .routes(routes!(volumes::list_pools))
        .routes(routes!(volumes::get_volume_settings, volumes::put_volume_settings))
        .merge(certificates::authenticated_routes())
}

fn agent_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(AgentApi::openapi())
        .routes(routes!(agent::join))
        .routes(routes!(agent::config))
        .routes(routes!(agent::status))
        .routes(routes!(agent::image_data))
        .routes(routes!(volumes::volume_passphrase))
        .merge(certificates::agent_routes())
}

/// The public OpenAPI document (checked in as `openapi/rampart-v1.json`).
pub fn public_openapi() -> OpenApiDoc {
    document_idempotency(
        OpenApiRouter::with_openapi(PublicApi::openapi())
            .merge(open_routes())
            .merge(authenticated_routes())
            .split_for_parts()
            .1,
    )
}

/// The agent protocol's OpenAPI document (checked in as `openapi/rampart-agent-v1.json`).
pub fn agent_openapi() -> OpenApiDoc {
    agent_routes().split_for_parts().1
}

/// The whole router of the API listener.
pub fn router(state: AppState) -> axum::Router {
    // The write-ahead audit record is the innermost layer: after authentication, before the handler.
    let write_ahead = || middleware::from_fn_with_state(state.clone(), crate::audit::middleware::write_ahead);
    let authenticated = authenticated_routes()
        .route_layer(write_ahead())
        // A retry answered from its Idempotency-Key runs nothing, so it needs no write-ahead.
        .route_layer(middleware::from_fn_with_state(state.clone(), crate::idempotency::layer))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            crate::auth::require_token,
        ));
    let (public, public_doc) = OpenApiRouter::with_openapi(PublicApi::openapi())
        .merge(open_routes().route_layer(write_ahead()))
        .merge(authenticated)
        .split_for_parts();
    let public_json = serde_json::to_string(&document_idempotency(public_doc)).expect("OpenAPI serialises");
    let (agent, _) = agent_routes().route_layer(write_ahead()).split_for_parts();
    let request_timeout = Duration::from_secs(state.config.api.request_timeout_s);
    let public = public
        .route(
            "/v1/openapi.json",
            axum::routing::get(
                move || async move { ([(::http::header::CONTENT_TYPE, "application/json")], public_json) },
            ),
        )
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            timeout(req, next, request_timeout)
        }));
    let body_limit = state.config.api.request_body_limit_bytes;
    let app = public
        .merge(agent)
        // Audit records are written inside the client-address layer and outside the token check.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::audit::middleware::record_calls,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), crate::auth::client_ip))
        .fallback(http::not_found)
        .method_not_allowed_fallback(http::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state.clone());
    http::common_layers(app, state.config.api.hsts_max_age_s)
}

async fn timeout(req: Request, next: Next, limit: Duration) -> Result<Response, Error> {
    // Image uploads stream for as long as the bytes keep coming.
    if req.method() == ::http::Method::PUT && req.uri().path().ends_with("/data") {
        return Ok(next.run(req).await);
    }
    tokio::time::timeout(limit, next.run(req))
        .await
        .map_err(|_| Error::Unavailable("the request took longer than api.request_timeout_s".into()))
}
