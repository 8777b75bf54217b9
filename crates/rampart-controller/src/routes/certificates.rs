//! Central certificate management (13.3-2, 12.3.1): the routes of
//! [`crate::app::certificates`] (the inventory, issuing, importing, revocation, CRLs, the
//! agents' renewal) and of the key service's status.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rampart_api::{
    AgentRenewRequest, AgentRenewResponse, Certificate, CertificateImport, CertificateIssue, CertificateRevoke,
    CertificateStatus, List,
};
use rampart_common::Error;
use rampart_common::error::ErrorBody;
use rampart_common::page::PageParams;
use rampart_kms::ca::CaRole;
use serde::Deserialize;
use uuid::Uuid;

use crate::app::certificates as app;
use crate::auth::Principal;
use crate::http::{ApiJson, ApiPath, ApiQuery};
use crate::routes::agent::NodeIdentity;
use crate::state::AppState;

pub use crate::app::keys::KmsStatus;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CertificateFilter {
    /// Only this project's certificates.
    pub project: Option<Uuid>,
    /// Only certificates in this status (`valid`, `expiring`, `expired`, `revoked`).
    pub status: Option<CertificateStatus>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// Certificates with their expiry: all of them for system readers, a project's for its key
/// roles (`?project=`).
#[utoipa::path(get, path = "/v1/certificates", tag = "certificates", params(CertificateFilter), security(("bearer" = [])),
    responses((status = 200, body = List<Certificate>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_certificates(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(q): ApiQuery<CertificateFilter>,
) -> Result<axum::Json<List<Certificate>>, Error> {
    let page = PageParams {
        limit: q.limit,
        cursor: q.cursor,
    };
    Ok(axum::Json(
        app::list(&state, &principal, q.project, q.status, page).await?,
    ))
}

/// One certificate, with its PEM and chain.
#[utoipa::path(get, path = "/v1/certificates/{id}", tag = "certificates", params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = Certificate), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_certificate(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<axum::Json<Certificate>, Error> {
    Ok(axum::Json(app::get(&state, &principal, id).await?))
}

/// Issue a certificate from a tenant's CSR (`key-admin` of the project), signed by the tenant
/// CA for the usages asked (default server and client authentication). Only the CSR's public
/// key is used; the names are those given (or those the CSR asks for) and must lie in the
/// project's zones (`<project>.<domain>.<kms.tenant_certificate_domain>`,
/// `<project id>.<kms.tenant_certificate_domain>`): any other name, an IP address or
/// `localhost` is 422 `certificate_name_not_allowed`, as is a wildcard with `client_auth`.
#[utoipa::path(post, path = "/v1/certificates", tag = "certificates", request_body = CertificateIssue, security(("bearer" = [])),
    responses((status = 201, body = Certificate), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "quota_exceeded"), (status = 422, body = ErrorBody, description = "certificate_name_not_allowed")))]
pub async fn issue_certificate(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(req): ApiJson<CertificateIssue>,
) -> Result<(StatusCode, axum::Json<Certificate>), Error> {
    Ok((
        StatusCode::CREATED,
        axum::Json(app::issue(&state, &principal, req).await?),
    ))
}

/// Import a third-party certificate after a chain check (`key-admin` of its project, or
/// `system-admin` for a platform certificate). No private key is taken.
#[utoipa::path(post, path = "/v1/certificates/import", tag = "certificates", request_body = CertificateImport, security(("bearer" = [])),
    responses((status = 201, body = Certificate), (status = 400, body = ErrorBody, description = "invalid_certificate_chain, certificate_expired, validation_failed"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn import_certificate(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(req): ApiJson<CertificateImport>,
) -> Result<(StatusCode, axum::Json<Certificate>), Error> {
    Ok((
        StatusCode::CREATED,
        axum::Json(app::import(&state, &principal, req).await?),
    ))
}

/// Revoke a certificate. Certificates of the internal CAs go into the CRL; a revoked agent
/// certificate is refused at the agent's next request. The CA certificates and the API server
/// certificate cannot be revoked here (`certificate_not_revocable`).
#[utoipa::path(post, path = "/v1/certificates/{id}/revoke", tag = "certificates", params(("id" = Uuid, Path)), request_body = CertificateRevoke, security(("bearer" = [])),
    responses((status = 200, body = Certificate), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "certificate_not_revocable, certificate_already_revoked")))]
pub async fn revoke_certificate(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(req): ApiJson<CertificateRevoke>,
) -> Result<axum::Json<Certificate>, Error> {
    Ok(axum::Json(app::revoke(&state, &principal, id, req).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CrlQuery {
    /// `infrastructure` (default: API server and agent certificates) or `tenant`.
    pub ca: Option<String>,
    /// `der` (default, `application/pkix-crl`) or `pem`.
    pub format: Option<String>,
}

/// A CRL in PEM.
fn crl_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN X509 CRL-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END X509 CRL-----\n");
    pem
}

/// The certificate revocation list of an internal CA (no authentication: relying parties
/// need it). Signed by the CA's key (in the HSM when the CA key is there).
#[utoipa::path(get, path = "/v1/ca/crl", tag = "meta", params(CrlQuery),
    responses((status = 200, description = "DER (application/pkix-crl) or PEM", content_type = "application/pkix-crl"), (status = 400, body = ErrorBody)))]
pub async fn crl(State(state): State<AppState>, ApiQuery(q): ApiQuery<CrlQuery>) -> Result<Response, Error> {
    let role = match q.ca.as_deref() {
        None | Some("infrastructure") => CaRole::Infrastructure,
        Some("tenant") => CaRole::Tenant,
        Some(_) => return Err(Error::field("ca", "ca is infrastructure or tenant")),
    };
    let der = app::crl(&state, role).await?;
    match q.format.as_deref() {
        None | Some("der") => Ok((
            [(http::header::CONTENT_TYPE, "application/pkix-crl")],
            der.as_ref().clone(),
        )
            .into_response()),
        Some("pem") => Ok(([(http::header::CONTENT_TYPE, "application/x-pem-file")], crl_pem(&der)).into_response()),
        Some(_) => Err(Error::field("format", "format is der or pem")),
    }
}

/// Which HSM serves keys and where the CA keys are kept.
#[utoipa::path(get, path = "/v1/kms/status", tag = "keys", security(("bearer" = [])),
    responses((status = 200, body = KmsStatus), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn kms_status(State(state): State<AppState>, principal: Principal) -> Result<axum::Json<KmsStatus>, Error> {
    Ok(axum::Json(crate::app::keys::status(&state, &principal)?))
}

/// An agent renews its certificate with its current one (mutual TLS): a certificate for its
/// new key, accepted beside the current one until the agent first uses it.
#[utoipa::path(post, path = "/agent/v1/renew", tag = "agent", request_body = AgentRenewRequest,
    responses(
        (status = 201, body = AgentRenewResponse),
        (status = 400, body = ErrorBody, description = "Bad CSR"),
        (status = 401, body = ErrorBody, description = "client_certificate_required, unknown_node_certificate, certificate_revoked"),
    ))]
pub async fn agent_renew(
    State(state): State<AppState>,
    NodeIdentity(node): NodeIdentity,
    ApiJson(req): ApiJson<AgentRenewRequest>,
) -> Result<(StatusCode, axum::Json<AgentRenewResponse>), Error> {
    Ok((
        StatusCode::CREATED,
        axum::Json(app::renew_agent(&state, node, req).await?),
    ))
}

/// The routes of keys and certificates, for `routes::router`: open, authenticated, agent.
pub fn open_routes() -> super::Routes {
    super::Routes::new().routes(audited!(crl => app::CRL))
}

pub fn authenticated_routes() -> super::Routes {
    use super::keys;
    super::Routes::new()
        .routes(audited!(
            keys::list_keys => crate::app::keys::LIST,
            keys::create_key => crate::app::keys::CREATE,
        ))
        .routes(audited!(
            keys::get_key => crate::app::keys::GET,
            keys::update_key => crate::app::keys::UPDATE,
        ))
        .routes(audited!(keys::encrypt => crate::app::keys::ENCRYPT))
        .routes(audited!(keys::decrypt => crate::app::keys::DECRYPT))
        .routes(audited!(keys::generate_data_key => crate::app::keys::GENERATE_DATA_KEY))
        .routes(audited!(keys::re_encrypt => crate::app::keys::RE_ENCRYPT))
        .routes(audited!(keys::rotate_key => crate::app::keys::ROTATE))
        .routes(audited!(keys::enable_key => crate::app::keys::ENABLE))
        .routes(audited!(keys::disable_key => crate::app::keys::DISABLE))
        .routes(audited!(keys::schedule_key_deletion => crate::app::keys::SCHEDULE_DELETION))
        .routes(audited!(keys::cancel_key_deletion => crate::app::keys::CANCEL_DELETION))
        .routes(audited!(kms_status => crate::app::keys::STATUS))
        .routes(audited!(
            list_certificates => app::LIST,
            issue_certificate => app::ISSUE,
        ))
        .routes(audited!(import_certificate => app::IMPORT))
        .routes(audited!(get_certificate => app::GET))
        .routes(audited!(revoke_certificate => app::REVOKE))
}

pub fn agent_routes() -> super::Routes {
    super::Routes::new().routes(audited!(agent_renew => app::RENEW_AGENT))
}
