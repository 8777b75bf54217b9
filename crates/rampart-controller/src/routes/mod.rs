//! The routes of the controller and the OpenAPI documents generated from them.
//!
//! Every route is registered with [`audited!`], which binds it to the audit
//! [`Operation`](crate::audit::operations::Operation) its use case declares in `app/`: the
//! audit middleware names each call by that declaration, never by its URL.

/// `audited!(handler => operation, …)`: utoipa-axum's `routes!` for the handlers of one path,
/// each bound to the operation its use case declares (`routes::identity::create_user =>
/// app::identity::users::CREATE_USER`). The method and path come from the handler's
/// `#[utoipa::path]`, so the binding cannot name another route than the one registered.
macro_rules! audited {
    ($($handler:path => $op:expr),+ $(,)?) => {
        $crate::routes::Audited {
            routes: ::utoipa_axum::routes!($($handler),+),
            // `paste!` unwraps `$handler` so that `routes!` can take it apart (as it does itself).
            bindings: vec![$(::utoipa_axum::paste! {$crate::routes::Binding::new(
                ::utoipa_axum::routes!(@path [methods()] of $handler),
                ::utoipa_axum::routes!(@path [path()] of $handler),
                &$op,
            )}),+],
        }
    };
}

pub mod agent;
pub mod assignments;
pub mod audit;
pub mod auth;
pub mod certificates;
pub mod compute;
pub mod conformance;
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
use utoipa::openapi::path::HttpMethod;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};

use crate::audit::operations::{Operation, Operations};
use crate::state::AppState;
use crate::{app, http};

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
        (name = "security", description = "Live conformance with the specification"),
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

/// Routes of one path with the operation of each: what [`audited!`] makes.
pub struct Audited {
    pub routes: UtoipaMethodRouter<AppState>,
    pub bindings: Vec<Vec<Binding>>,
}

/// A route (method and path as registered) and the operation its use case declares.
#[derive(Debug, Clone)]
pub struct Binding {
    method: ::http::Method,
    path: String,
    operation: &'static Operation,
}

impl Binding {
    /// One binding per method of a handler (a `#[utoipa::path]` has one).
    pub fn new(methods: Vec<HttpMethod>, path: String, operation: &'static Operation) -> Vec<Binding> {
        methods
            .into_iter()
            .map(|m| Binding {
                method: method(m),
                path: path.clone(),
                operation,
            })
            .collect()
    }
}

fn method(m: HttpMethod) -> ::http::Method {
    use ::http::Method;
    match m {
        HttpMethod::Get => Method::GET,
        HttpMethod::Post => Method::POST,
        HttpMethod::Put => Method::PUT,
        HttpMethod::Delete => Method::DELETE,
        HttpMethod::Options => Method::OPTIONS,
        HttpMethod::Head => Method::HEAD,
        HttpMethod::Patch => Method::PATCH,
        HttpMethod::Trace => Method::TRACE,
    }
}

/// A group of routes with their operations; registering a route takes its operation.
pub struct Routes {
    router: OpenApiRouter<AppState>,
    bindings: Vec<Binding>,
}

impl Default for Routes {
    fn default() -> Self {
        Self::with_openapi(OpenApiDoc::default())
    }
}

impl Routes {
    pub fn new() -> Self {
        Self::default()
    }

    fn with_openapi(doc: OpenApiDoc) -> Self {
        Self {
            router: OpenApiRouter::with_openapi(doc),
            bindings: Vec::new(),
        }
    }

    pub fn routes(mut self, audited: Audited) -> Self {
        self.router = self.router.routes(audited.routes);
        self.bindings.extend(audited.bindings.into_iter().flatten());
        self
    }

    pub fn merge(mut self, other: Routes) -> Self {
        self.router = self.router.merge(other.router);
        self.bindings.extend(other.bindings);
        self
    }

    fn into_parts(self) -> (OpenApiRouter<AppState>, Vec<Binding>) {
        (self.router, self.bindings)
    }
}

/// `GET /v1/openapi.json`, served outside the documented routes.
const OPENAPI_PATH: &str = "/v1/openapi.json";

fn table<'a>(groups: impl IntoIterator<Item = &'a [Binding]>) -> Operations {
    let mut table = Operations::default();
    for b in groups.into_iter().flatten() {
        table.bind(b.method.clone(), b.path.clone(), b.operation);
    }
    table.bind(::http::Method::GET, OPENAPI_PATH, &app::nodes::OPENAPI);
    table
}

/// The operation of every route of the API listener, as [`router`] binds them.
pub fn operations() -> Operations {
    let groups = [open_routes(), authenticated_routes(), agent_routes()].map(|r| r.into_parts().1);
    table(groups.iter().map(Vec::as_slice))
}

/// The routes of `docs` that `operations` does not name, `METHOD path` (the architecture test
/// wants none).
pub fn undeclared(docs: &[&OpenApiDoc], operations: &Operations) -> Vec<String> {
    let mut out = Vec::new();
    for doc in docs {
        for (path, item) in &doc.paths.paths {
            let methods = [
                (::http::Method::GET, &item.get),
                (::http::Method::POST, &item.post),
                (::http::Method::PUT, &item.put),
                (::http::Method::PATCH, &item.patch),
                (::http::Method::DELETE, &item.delete),
                (::http::Method::HEAD, &item.head),
                (::http::Method::OPTIONS, &item.options),
                (::http::Method::TRACE, &item.trace),
            ];
            for (m, op) in methods {
                if op.is_some() && operations.get(&m, path).is_none() {
                    out.push(format!("{m} {path}"));
                }
            }
        }
    }
    out
}

fn open_routes() -> Routes {
    Routes::new()
        .routes(audited!(meta::health => app::nodes::HEALTH))
        .routes(audited!(meta::readyz => app::nodes::READYZ))
        .routes(audited!(meta::ca_certificate => app::certificates::CA_CERTIFICATE))
        .routes(audited!(auth::login => app::sessions::login::LOGIN))
        .routes(audited!(auth::create_session => app::sessions::login::BROWSER_SESSION))
        .routes(audited!(auth::change_password => app::sessions::password::CHANGE_PASSWORD))
        .merge(certificates::open_routes())
}

/// Routes that need a bearer token; [`router`] puts them behind [`crate::auth::require_token`].
fn authenticated_routes() -> Routes {
    Routes::new()
        .routes(audited!(
            auth::current_token => app::sessions::login::CURRENT_TOKEN,
            auth::logout => app::sessions::login::LOGOUT,
        ))
        .routes(audited!(auth::totp_enroll => app::sessions::mfa::TOTP_ENROLL))
        .routes(audited!(auth::totp_confirm => app::sessions::mfa::TOTP_CONFIRM))
        .routes(audited!(auth::recovery_codes => app::sessions::mfa::RECOVERY_CODES))
        .routes(audited!(
            auth::create_credential => app::sessions::credentials::CREATE_CREDENTIAL,
            auth::list_credentials => app::sessions::credentials::LIST_CREDENTIALS,
        ))
        .routes(audited!(
            auth::get_credential => app::sessions::credentials::CREDENTIAL,
            auth::delete_credential => app::sessions::credentials::DELETE_CREDENTIAL,
        ))
        .routes(audited!(
            identity::list_domains => app::identity::domains::LIST_DOMAINS,
            identity::create_domain => app::identity::domains::CREATE_DOMAIN,
        ))
        .routes(audited!(
            identity::get_domain => app::identity::domains::GET_DOMAIN,
            identity::update_domain => app::identity::domains::UPDATE_DOMAIN,
            identity::delete_domain => app::identity::domains::DELETE_DOMAIN,
        ))
        .routes(audited!(
            identity::list_projects => app::identity::projects::LIST_PROJECTS,
            identity::create_project => app::identity::projects::CREATE_PROJECT,
        ))
        .routes(audited!(
            identity::get_project => app::identity::projects::GET_PROJECT,
            identity::update_project => app::identity::projects::UPDATE_PROJECT,
            identity::delete_project => app::identity::projects::DELETE_PROJECT,
        ))
        .routes(audited!(
            identity::list_users => app::identity::users::LIST_USERS,
            identity::create_user => app::identity::users::CREATE_USER,
        ))
        .routes(audited!(
            identity::get_user => app::identity::users::GET_USER,
            identity::update_user => app::identity::users::UPDATE_USER,
            identity::delete_user => app::identity::users::DELETE_USER,
        ))
        .routes(audited!(identity::unlock_user => app::identity::users::UNLOCK_USER))
        .routes(audited!(identity::reset_password => app::identity::users::RESET_PASSWORD))
        .routes(audited!(identity::reset_mfa => app::identity::users::RESET_MFA))
        .routes(audited!(
            groups::list_groups => app::groups::LIST_GROUPS,
            groups::create_group => app::groups::CREATE_GROUP,
        ))
        .routes(audited!(
            groups::get_group => app::groups::GET_GROUP,
            groups::update_group => app::groups::UPDATE_GROUP,
            groups::delete_group => app::groups::DELETE_GROUP,
        ))
        .routes(audited!(groups::group_members => app::groups::GROUP_MEMBERS))
        .routes(audited!(
            groups::add_group_member => app::groups::ADD_GROUP_MEMBER,
            groups::remove_group_member => app::groups::REMOVE_GROUP_MEMBER,
        ))
        .routes(audited!(
            roles::list_roles => app::roles::LIST_ROLES,
            roles::create_role => app::roles::CREATE_ROLE,
        ))
        .routes(audited!(
            roles::get_role => app::roles::GET_ROLE,
            roles::update_role => app::roles::UPDATE_ROLE,
            roles::delete_role => app::roles::DELETE_ROLE,
        ))
        .routes(audited!(
            assignments::list_assignments => app::assignments::LIST_ASSIGNMENTS,
            assignments::create_assignment => app::assignments::CREATE_ASSIGNMENT,
        ))
        .routes(audited!(assignments::delete_assignment => app::assignments::DELETE_ASSIGNMENT))
        .routes(audited!(
            identity::get_compliance => app::identity::compliance::GET_COMPLIANCE,
            identity::put_compliance => app::identity::compliance::PUT_COMPLIANCE,
        ))
        .routes(audited!(
            quotas::get_quotas => app::identity::quotas::GET_QUOTAS,
            quotas::put_quotas => app::identity::quotas::PUT_QUOTAS,
        ))
        .routes(audited!(nodes::list_nodes => app::nodes::LIST_NODES))
        .routes(audited!(
            nodes::get_node => app::nodes::GET_NODE,
            nodes::delete_node => app::nodes::DELETE_NODE,
        ))
        .routes(audited!(nodes::create_join_token => app::nodes::CREATE_JOIN_TOKEN))
        // Audit trail (issue 4).
        .routes(audited!(audit::list_events => app::audit::LIST_EVENTS))
        .routes(audited!(audit::verify => app::audit::VERIFY))
        .routes(audited!(conformance::report => app::conformance::GET_CONFORMANCE))
        .routes(audited!(
            audit::get_retention => app::audit::GET_RETENTION,
            audit::put_retention => app::audit::PUT_RETENTION,
        ))
        .routes(audited!(
            audit::get_forwarding => app::audit::GET_FORWARDING,
            audit::put_forwarding => app::audit::PUT_FORWARDING,
        ))
        // Compute (issue 7).
        .routes(audited!(
            compute::list_signing_keys => app::compute::signing_keys::LIST,
            compute::create_signing_key => app::compute::signing_keys::CREATE,
        ))
        .routes(audited!(compute::delete_signing_key => app::compute::signing_keys::REVOKE))
        .routes(audited!(
            compute::get_settings => app::compute::signing_keys::SETTINGS,
            compute::put_settings => app::compute::signing_keys::SET_SETTINGS,
        ))
        .routes(audited!(
            compute::list_flavors => app::compute::flavors::LIST,
            compute::create_flavor => app::compute::flavors::CREATE,
        ))
        .routes(audited!(compute::delete_flavor => app::compute::flavors::DELETE))
        .routes(audited!(
            compute::list_images => app::compute::images::LIST,
            compute::create_image => app::compute::images::CREATE,
        ))
        .routes(audited!(
            compute::get_image => app::compute::images::GET,
            compute::delete_image => app::compute::images::DELETE,
        ))
        .routes(audited!(compute::upload_image_data => app::compute::upload::UPLOAD))
        .routes(audited!(
            compute::list_instances => app::compute::instances::LIST,
            compute::create_instance => app::compute::instances::CREATE,
        ))
        .routes(audited!(
            compute::get_instance => app::compute::instances::GET,
            compute::delete_instance => app::compute::instances::DELETE,
        ))
        .routes(audited!(compute::instance_action => app::compute::instances::POWER))
        .routes(audited!(compute::console => app::compute::instances::CONSOLE))
        .routes(audited!(compute::events => app::compute::instances::EVENTS))
        .routes(audited!(compute::metrics => app::compute::monitoring::INSTANCE_METRICS))
        .routes(audited!(compute::prometheus => app::compute::monitoring::PROMETHEUS))
        .routes(audited!(
            compute::list_alarms => app::compute::alarms::LIST,
            compute::create_alarm => app::compute::alarms::CREATE,
        ))
        .routes(audited!(
            compute::get_alarm => app::compute::alarms::GET,
            compute::delete_alarm => app::compute::alarms::DELETE,
        ))
        .routes(audited!(compute::alarm_history => app::compute::alarms::HISTORY))
        // Tenant networking (issue 6).
        .routes(audited!(
            network::list_vpcs => app::network::vpcs::LIST_VPCS,
            network::create_vpc => app::network::vpcs::CREATE_VPC,
        ))
        .routes(audited!(
            network::get_vpc => app::network::vpcs::GET_VPC,
            network::update_vpc => app::network::vpcs::UPDATE_VPC,
            network::delete_vpc => app::network::vpcs::DELETE_VPC,
        ))
        .routes(audited!(
            network::list_subnets => app::network::subnets::LIST_SUBNETS,
            network::create_subnet => app::network::subnets::CREATE_SUBNET,
        ))
        .routes(audited!(
            network::get_subnet => app::network::subnets::GET_SUBNET,
            network::delete_subnet => app::network::subnets::DELETE_SUBNET,
        ))
        .routes(audited!(
            network::list_groups => app::network::security_groups::LIST_GROUPS,
            network::create_group => app::network::security_groups::CREATE_GROUP,
        ))
        .routes(audited!(
            network::get_group => app::network::security_groups::GET_GROUP,
            network::update_group => app::network::security_groups::UPDATE_GROUP,
            network::delete_group => app::network::security_groups::DELETE_GROUP,
        ))
        .routes(audited!(
            network::list_rules => app::network::security_groups::LIST_RULES,
            network::create_rule => app::network::security_groups::CREATE_RULE,
        ))
        .routes(audited!(network::delete_rule => app::network::security_groups::DELETE_RULE))
        .routes(audited!(
            network::list_ports => app::network::ports::LIST_PORTS,
            network::create_port => app::network::ports::CREATE_PORT,
        ))
        .routes(audited!(
            network::get_port => app::network::ports::GET_PORT,
            network::update_port => app::network::ports::UPDATE_PORT,
            network::delete_port => app::network::ports::DELETE_PORT,
        ))
        .routes(audited!(
            network::bind_port => app::network::ports::BIND_PORT,
            network::unbind_port => app::network::ports::UNBIND_PORT,
        ))
        .routes(audited!(
            network::list_policies => app::network::policies::LIST_POLICIES,
            network::create_policy => app::network::policies::CREATE_POLICY,
        ))
        .routes(audited!(
            network::get_policy => app::network::policies::GET_POLICY,
            network::delete_policy => app::network::policies::DELETE_POLICY,
        ))
        .routes(audited!(
            network::list_floating_ips => app::network::floating_ips::LIST_FLOATING_IPS,
            network::create_floating_ip => app::network::floating_ips::CREATE_FLOATING_IP,
        ))
        .routes(audited!(
            network::get_floating_ip => app::network::floating_ips::GET_FLOATING_IP,
            network::update_floating_ip => app::network::floating_ips::UPDATE_FLOATING_IP,
            network::delete_floating_ip => app::network::floating_ips::DELETE_FLOATING_IP,
        ))
        .routes(audited!(network::reachability => app::network::analysis::REACHABILITY))
        .routes(audited!(network::flows => app::network::analysis::FLOWS))
        .routes(audited!(network::node_network => app::network::analysis::NODE_NETWORK))
        .routes(audited!(
            volumes::list_volumes => app::volumes::lifecycle::LIST,
            volumes::create_volume => app::volumes::lifecycle::CREATE,
        ))
        .routes(audited!(
            volumes::get_volume => app::volumes::lifecycle::GET,
            volumes::delete_volume => app::volumes::lifecycle::DELETE,
        ))
        .routes(audited!(volumes::extend_volume => app::volumes::lifecycle::EXTEND))
        .routes(audited!(
            volumes::get_access => app::volumes::access::GET_ACCESS,
            volumes::put_access => app::volumes::access::PUT_ACCESS,
        ))
        .routes(audited!(volumes::wipe_report => app::volumes::lifecycle::WIPE_REPORT))
        .routes(audited!(
            volumes::list_snapshots => app::volumes::snapshots::LIST,
            volumes::create_snapshot => app::volumes::snapshots::CREATE,
        ))
        .routes(audited!(
            volumes::get_snapshot => app::volumes::snapshots::GET,
            volumes::delete_snapshot => app::volumes::snapshots::DELETE,
        ))
        .routes(audited!(volumes::snapshot_wipe_report => app::volumes::snapshots::WIPE_REPORT))
        .routes(audited!(volumes::attach_volume => app::volumes::attach::ATTACH))
        .routes(audited!(volumes::detach_volume => app::volumes::attach::DETACH))
        .routes(audited!(
            volumes::list_volume_types => app::volumes::catalog::LIST_TYPES,
            volumes::create_volume_type => app::volumes::catalog::CREATE_TYPE,
        ))
        .routes(audited!(volumes::delete_volume_type => app::volumes::catalog::DELETE_TYPE))
        .routes(audited!(volumes::list_pools => app::volumes::catalog::POOLS))
        .routes(audited!(
            volumes::get_volume_settings => app::volumes::catalog::SETTINGS,
            volumes::put_volume_settings => app::volumes::catalog::SET_SETTINGS,
        ))
        .merge(certificates::authenticated_routes())
}

fn agent_routes() -> Routes {
    Routes::with_openapi(AgentApi::openapi())
        .routes(audited!(agent::join => app::agent::JOIN))
        .routes(audited!(agent::config => app::agent::CONFIG))
        .routes(audited!(agent::status => app::agent::STATUS))
        .routes(audited!(agent::image_data => app::agent::IMAGE_DATA))
        .routes(audited!(volumes::volume_passphrase => app::volumes::passphrase::RELEASE_PASSPHRASE))
        .merge(certificates::agent_routes())
}

/// The public OpenAPI document (checked in as `openapi/rampart-v1.json`).
pub fn public_openapi() -> OpenApiDoc {
    document_idempotency(
        OpenApiRouter::with_openapi(PublicApi::openapi())
            .merge(open_routes().into_parts().0)
            .merge(authenticated_routes().into_parts().0)
            .split_for_parts()
            .1,
    )
}

/// The agent protocol's OpenAPI document (checked in as `openapi/rampart-agent-v1.json`).
pub fn agent_openapi() -> OpenApiDoc {
    agent_routes().into_parts().0.split_for_parts().1
}

/// The whole router of the API listener.
pub fn router(state: AppState) -> axum::Router {
    let (open, open_ops) = open_routes().into_parts();
    let (authenticated, authenticated_ops) = authenticated_routes().into_parts();
    let (agent, agent_ops) = agent_routes().into_parts();
    let operations = table([&open_ops[..], &authenticated_ops, &agent_ops]);
    // The write-ahead audit record is the innermost layer: after authentication, before the handler.
    let write_ahead = || middleware::from_fn_with_state(state.clone(), crate::audit::middleware::write_ahead);
    let authenticated = authenticated
        .route_layer(write_ahead())
        // A retry answered from its Idempotency-Key runs nothing, so it needs no write-ahead.
        .route_layer(middleware::from_fn_with_state(state.clone(), crate::idempotency::layer))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            crate::auth::require_token,
        ));
    let (public, public_doc) = OpenApiRouter::with_openapi(PublicApi::openapi())
        .merge(open.route_layer(write_ahead()))
        .merge(authenticated)
        .split_for_parts();
    let public_json = serde_json::to_string(&document_idempotency(public_doc)).expect("OpenAPI serialises");
    let (agent, _) = agent.route_layer(write_ahead()).split_for_parts();
    let request_timeout = Duration::from_secs(state.config.api.request_timeout_s);
    let public = public
        .route(
            OPENAPI_PATH,
            axum::routing::get(
                move || async move { ([(::http::header::CONTENT_TYPE, "application/json")], public_json) },
            ),
        )
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            timeout(req, next, request_timeout)
        }));
    let body_limit = state.config.api.request_body_limit_bytes;
    let recorder = crate::audit::middleware::Recorder {
        state: state.clone(),
        operations: std::sync::Arc::new(operations),
    };
    let app = public
        .merge(agent)
        // Audit records are written inside the client-address layer and outside the token check.
        .layer(middleware::from_fn_with_state(
            recorder,
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
