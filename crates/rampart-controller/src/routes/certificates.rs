//! Central certificate management (13.3-2, 12.3.1): the inventory of every certificate
//! (internal CAs, the API server, agents, tenants' certificates, imported third-party ones)
//! with expiry and the expiry alarm; issuing from a tenant's CSR (tenant CA); importing a
//! third-party certificate after a chain check; revocation; CRLs; the agents' renewal.
//!
//! Who: a project's `key-admin`s issue, import and revoke its certificates, its `key-user`s
//! read them; system readers (`system.read`) see every certificate; `system-admin`
//! (`system.manage`) imports platform certificates and revokes platform and agent ones.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rampart_api::{
    AgentRenewRequest, AgentRenewResponse, Certificate, CertificateImport, CertificateIssue, CertificateKind,
    CertificateRevoke, CertificateStatus, CertificateUsage, List,
};
use rampart_common::Error;
use rampart_common::error::ErrorBody;
use rampart_common::page::finish_page;
use rampart_common::quota::Resource;
use rampart_common::time::{from_ms, to_ms};
use rampart_db::kms::{self as db, CertScope};
use rampart_iam::authz::Target;
use rampart_kms::ca::{CaRole, CertificateAuthority, TenantNamePolicy, TenantUsage};
use serde::Deserialize;
use uuid::Uuid;

use crate::auth::Principal;
use crate::http::{ApiJson, ApiPath, ApiQuery};
use crate::kms::{NewCert, blocking, bump_crl_number, cert_row, record_agent_certificate, revocation_reason};
use crate::routes::agent::NodeIdentity;
use crate::state::AppState;

fn kind(s: &str) -> CertificateKind {
    match s {
        "ca" => CertificateKind::Ca,
        "server" => CertificateKind::Server,
        "agent" => CertificateKind::Agent,
        "tenant" => CertificateKind::Tenant,
        _ => CertificateKind::Imported,
    }
}

fn view(state: &AppState, c: &db::CertRow, with_pem: bool) -> Certificate {
    let now = state.now();
    let not_after = from_ms(c.not_after);
    let warning = time::Duration::days(state.config.kms.certificate_warning_days as i64);
    let status = if c.revoked_at.is_some() {
        CertificateStatus::Revoked
    } else if not_after <= now {
        CertificateStatus::Expired
    } else if not_after - now < warning {
        CertificateStatus::Expiring
    } else {
        CertificateStatus::Valid
    };
    Certificate {
        id: Uuid::try_parse(&c.id).unwrap_or_default(),
        kind: kind(&c.kind),
        status,
        issuer_ca: c.issuer_ca.clone(),
        project_id: c.project_id.as_deref().and_then(|p| Uuid::try_parse(p).ok()),
        node_id: c.node_id.as_deref().and_then(|p| Uuid::try_parse(p).ok()),
        serial: c.serial.clone(),
        sha256: c.sha256.clone(),
        subject: c.subject.clone(),
        issuer: c.issuer.clone(),
        names: serde_json::from_str(&c.names).unwrap_or_default(),
        not_before: from_ms(c.not_before),
        not_after,
        expires_in_days: (not_after - now).whole_days(),
        chain_trust: c.chain_trust.clone(),
        revoked_at: c.revoked_at.map(from_ms),
        revocation_reason: c.revocation_reason.clone(),
        expiry_alarm_at: c.expiry_alarm_at.map(from_ms),
        certificate: with_pem.then(|| c.pem.clone()),
        chain: (with_pem && !c.chain_pem.is_empty()).then(|| c.chain_pem.clone()),
    }
}

/// What the caller may do with certificates of `project`: `(read, manage)`; 404 when it may
/// not even see the project.
async fn project_rights(state: &AppState, principal: &Principal, project: Uuid) -> Result<(bool, bool), Error> {
    let p = {
        let mut conn = state.db.conn().await?;
        rampart_db::identity::project_by_id(&mut conn, project).await?
    };
    let Some(p) = p else {
        return Err(Error::not_found("no such project"));
    };
    let target = Target::Project {
        id: p.id,
        domain: p.domain_id,
    };
    let manage = principal.can(state, "keys.manage", target);
    let read =
        manage || principal.can(state, "keys.use", target) || principal.can(state, "system.read", Target::System);
    if !read {
        return Err(Error::not_found("no such project"));
    }
    let mut conn = state.db.conn().await?;
    crate::auth::require_enabled(&mut conn, &p).await?;
    Ok((read, manage))
}

fn bad_certificate(field: &str, e: impl std::fmt::Display) -> Error {
    Error::field(field, e.to_string())
}

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
    let scope = match q.project {
        Some(p) => {
            project_rights(&state, &principal, p).await?;
            CertScope::Project(p)
        }
        None => {
            principal.require_system(&state, "system.read").map_err(|_| {
                Error::forbidden("only system roles list every certificate; add ?project=<id> for a project's")
            })?;
            CertScope::All
        }
    };
    let page = rampart_common::page::PageParams {
        limit: q.limit,
        cursor: q.cursor.clone(),
    }
    .validate()?;
    let mut conn = state.db.conn().await?;
    let mut items = Vec::new();
    let mut after = page.after.clone();
    loop {
        let rows = db::list_certificates(&mut conn, scope, after.as_deref(), page.limit + 1).await?;
        let exhausted = rows.len() <= page.limit as usize;
        after = rows.last().map(|c| c.id.clone());
        items.extend(
            rows.into_iter()
                .map(|c| (c.id.clone(), view(&state, &c, false)))
                .filter(|(_, v)| q.status.is_none_or(|s| v.status == s)),
        );
        if items.len() > page.limit as usize || exhausted {
            break;
        }
    }
    let (items, next) = finish_page(items, page.limit, |(id, _)| id.clone());
    Ok(axum::Json(List {
        items: items.into_iter().map(|(_, v)| v).collect(),
        next,
    }))
}

async fn visible_certificate(state: &AppState, principal: &Principal, id: Uuid) -> Result<(db::CertRow, bool), Error> {
    let row = {
        let mut conn = state.db.conn().await?;
        db::get_certificate(&mut conn, id).await?
    };
    let Some(row) = row else {
        return Err(Error::not_found("no such certificate"));
    };
    let system_read = principal.can(state, "system.read", Target::System);
    let system_manage = principal.can(state, "system.manage", Target::System);
    match row.project_id.as_deref().and_then(|p| Uuid::try_parse(p).ok()) {
        Some(project) => match project_rights(state, principal, project).await {
            Ok((_, manage)) => Ok((row, manage)),
            Err(_) => Err(Error::not_found("no such certificate")),
        },
        None if system_read => Ok((row, system_manage)),
        None => Err(Error::not_found("no such certificate")),
    }
}

/// One certificate, with its PEM and chain.
#[utoipa::path(get, path = "/v1/certificates/{id}", tag = "certificates", params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = Certificate), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_certificate(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<axum::Json<Certificate>, Error> {
    let (row, _) = visible_certificate(&state, &principal, id).await?;
    Ok(axum::Json(view(&state, &row, true)))
}

/// The zones whose names `project` may have certified (13.3-2).
async fn name_policy(state: &AppState, project: Uuid) -> Result<TenantNamePolicy, Error> {
    let mut conn = state.db.conn().await?;
    let p = rampart_db::identity::project_by_id(&mut conn, project)
        .await?
        .ok_or_else(|| Error::not_found("no such project"))?;
    let domain = rampart_db::identity::find_domain(&mut conn, &p.domain_id.to_string())
        .await?
        .map(|d| d.name)
        .unwrap_or_default();
    Ok(TenantNamePolicy::for_project(
        p.id,
        &p.name,
        &domain,
        &state.config.kms.tenant_certificate_domain,
    ))
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
    let (_, manage) = project_rights(&state, &principal, req.project).await?;
    if !manage {
        return Err(Error::forbidden(
            "issuing certificates needs the key-admin role on the project",
        ));
    }
    let days = req.days.unwrap_or(state.config.kms.certificate_days);
    if !(1..=397).contains(&days) {
        return Err(Error::field("days", "days must be between 1 and 397"));
    }
    if req.csr.len() > 16 * 1024 {
        return Err(Error::field("csr", "the CSR is larger than 16 KiB"));
    }
    let names = match req.names {
        Some(n) => n,
        None => CertificateAuthority::csr_names(&req.csr).map_err(|e| bad_certificate("csr", e))?,
    };
    let usages: Vec<TenantUsage> = req
        .usages
        .unwrap_or_else(|| vec![CertificateUsage::ServerAuth, CertificateUsage::ClientAuth])
        .into_iter()
        .map(|u| match u {
            CertificateUsage::ServerAuth => TenantUsage::ServerAuth,
            CertificateUsage::ClientAuth => TenantUsage::ClientAuth,
        })
        .collect();
    let policy = name_policy(&state, req.project).await?;
    {
        let mut conn = state.db.conn().await?;
        crate::quota::enforce(&state, &mut conn, req.project, Resource::Certificates, 1).await?;
    }
    let ca = state.kms.tenant_ca.clone();
    let now = state.now();
    let csr = req.csr;
    let signed = blocking(move || ca.sign_tenant_csr(&csr, &names, &policy, &usages, days, now))
        .await?
        .map_err(|e| match e {
            rampart_kms::CaError::NameNotAllowed(m) => {
                Error::coded(StatusCode::UNPROCESSABLE_ENTITY, "certificate_name_not_allowed", m)
            }
            rampart_kms::CaError::BadName(m) => Error::field("names", m),
            rampart_kms::CaError::BadCsr(m) => Error::field("csr", m),
            other => Error::internal("signing a tenant certificate", other),
        })?;
    let mut row = cert_row(
        NewCert {
            kind: "tenant",
            issuer_ca: Some(CaRole::Tenant),
            project: Some(req.project),
            node: None,
            pem: &signed.cert_pem,
            der: &signed.cert_der,
            created_by: Some(principal.user.id.to_string()),
        },
        now,
    )?;
    row.chain_pem = state.kms.tenant_ca.cert_pem().to_string();
    let mut conn = state.db.conn().await?;
    db::insert_certificate(&mut conn, &row).await?;
    tracing::info!(certificate = %row.id, project = %req.project, subject = %row.subject, by = %principal.user.name, "certificate issued");
    Ok((StatusCode::CREATED, axum::Json(view(&state, &row, true))))
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
    match req.project {
        Some(p) => {
            let (_, manage) = project_rights(&state, &principal, p).await?;
            if !manage {
                return Err(Error::forbidden(
                    "importing certificates needs the key-admin role on the project",
                ));
            }
        }
        None => principal.require_system(&state, "system.manage")?,
    }
    if let Some(p) = req.project {
        let mut conn = state.db.conn().await?;
        crate::quota::enforce(&state, &mut conn, p, Resource::Certificates, 1).await?;
    }
    let pem = format!("{}\n{}", req.certificate, req.chain.unwrap_or_default());
    if pem.len() > 256 * 1024 {
        return Err(Error::field(
            "certificate",
            "the certificate and chain are larger than 256 KiB",
        ));
    }
    if pem.contains("PRIVATE KEY") {
        return Err(Error::field(
            "certificate",
            "the PEM holds a private key: import certificates only, keys never leave their owner",
        ));
    }
    let internal = vec![state.ca.cert_der().to_vec(), state.kms.tenant_ca.cert_der().to_vec()];
    let checked = rampart_kms::chain::check_import(&pem, &state.kms.system_roots, &internal, state.now()).map_err(
        |e| match e {
            rampart_kms::chain::ChainError::Expired => {
                Error::coded(StatusCode::BAD_REQUEST, "certificate_expired", e.to_string())
            }
            rampart_kms::chain::ChainError::NotYetValid => {
                Error::coded(StatusCode::BAD_REQUEST, "certificate_not_yet_valid", e.to_string())
            }
            rampart_kms::chain::ChainError::Invalid(_) => {
                Error::coded(StatusCode::BAD_REQUEST, "invalid_certificate_chain", e.to_string())
            }
            other => Error::field("certificate", other.to_string()),
        },
    )?;
    let der = rampart_kms::ca::pem_to_der(&checked.leaf_pem).map_err(|e| bad_certificate("certificate", e))?;
    let mut row = cert_row(
        NewCert {
            kind: "imported",
            issuer_ca: None,
            project: req.project,
            node: None,
            pem: &checked.leaf_pem,
            der: &der,
            created_by: Some(principal.user.id.to_string()),
        },
        state.now(),
    )?;
    row.chain_pem = checked.chain_pem;
    row.chain_trust = Some(checked.trust.as_str().into());
    let mut conn = state.db.conn().await?;
    db::insert_certificate(&mut conn, &row).await?;
    tracing::info!(certificate = %row.id, subject = %row.subject, trust = checked.trust.as_str(), anchor = %checked.anchor, by = %principal.user.name, "certificate imported");
    Ok((StatusCode::CREATED, axum::Json(view(&state, &row, true))))
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
    let (row, manage) = visible_certificate(&state, &principal, id).await?;
    if !manage {
        return Err(Error::forbidden("your roles do not allow revoking this certificate"));
    }
    let reason = req.reason.unwrap_or_else(|| "unspecified".into());
    if revocation_reason(&reason).is_none() {
        return Err(Error::field(
            "reason",
            format!("reason is one of {}", crate::kms::REVOCATION_REASONS.join(", ")),
        ));
    }
    if matches!(row.kind.as_str(), "ca" | "server") {
        return Err(Error::coded(
            StatusCode::CONFLICT,
            "certificate_not_revocable",
            "the internal CA and API server certificates are replaced, not revoked (the server certificate renews itself)",
        ));
    }
    let now = state.now();
    let mut tx = state.db.begin().await?;
    if !db::revoke_certificate(&mut tx, id, &reason, now).await? {
        return Err(Error::coded(
            StatusCode::CONFLICT,
            "certificate_already_revoked",
            "this certificate is already revoked",
        ));
    }
    bump_crl_number(&mut tx).await?;
    let row = db::get_certificate(&mut tx, id)
        .await?
        .ok_or_else(|| Error::not_found("no such certificate"))?;
    rampart_db::Db::commit(tx).await?;
    tracing::warn!(certificate = %id, kind = %row.kind, node = ?row.node_id, reason = %reason, revoked_at = to_ms(now), by = %principal.user.name, "certificate revoked");
    Ok(axum::Json(view(&state, &row, false)))
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
    let der = crate::kms::crl(&state, role).await?;
    match q.format.as_deref() {
        None | Some("der") => Ok((
            [(http::header::CONTENT_TYPE, "application/pkix-crl")],
            der.as_ref().clone(),
        )
            .into_response()),
        Some("pem") => {
            use base64::Engine;
            let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_slice());
            let mut pem = String::from("-----BEGIN X509 CRL-----\n");
            for line in b64.as_bytes().chunks(64) {
                pem.push_str(std::str::from_utf8(line).unwrap_or_default());
                pem.push('\n');
            }
            pem.push_str("-----END X509 CRL-----\n");
            Ok(([(http::header::CONTENT_TYPE, "application/x-pem-file")], pem).into_response())
        }
        Some(_) => Err(Error::field("format", "format is der or pem")),
    }
}

/// The key service at a glance (system readers): which HSM serves keys, where the CA keys are.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct KmsStatus {
    /// `pkcs11` or `unavailable` (key operations fail closed).
    pub backend: String,
    pub hsm: String,
    /// `hsm` or `file`.
    pub ca_key: String,
    pub tenant_ca_key: String,
}

/// Which HSM serves keys and where the CA keys are kept.
#[utoipa::path(get, path = "/v1/kms/status", tag = "keys", security(("bearer" = [])),
    responses((status = 200, body = KmsStatus), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn kms_status(State(state): State<AppState>, principal: Principal) -> Result<axum::Json<KmsStatus>, Error> {
    principal.require_system(&state, "system.read")?;
    Ok(axum::Json(KmsStatus {
        backend: match state.kms.backend_kind() {
            rampart_kms::BackendKind::Pkcs11 => "pkcs11",
            rampart_kms::BackendKind::Unavailable => "unavailable",
            rampart_kms::BackendKind::InsecureSoftware => "insecure_software",
        }
        .into(),
        hsm: state.kms.description.clone(),
        ca_key: state.ca.key_mode().as_str().into(),
        tenant_ca_key: state.kms.tenant_ca.key_mode().as_str().into(),
    }))
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
    let now = state.now();
    let ca = state.ca.clone();
    let days = state.config.nodes.agent_certificate_days;
    let csr = req.csr;
    let (pem, der, not_after) = blocking(move || ca.sign_node_csr(&csr, node, days, now))
        .await?
        .map_err(|e| Error::field("csr", e.to_string()))?;
    let sha256 = rampart_api::tls::sha256_hex(&der);
    let mut tx = state.db.begin().await?;
    if !db::set_next_certificate(&mut tx, node, &sha256, not_after).await? {
        return Err(Error::Unauthorized {
            code: "unknown_node_certificate",
            message: "this node was removed".into(),
        });
    }
    record_agent_certificate(&mut tx, node, &pem, &der, now).await?;
    rampart_db::Db::commit(tx).await?;
    let serial = rampart_kms::ca::cert_info(&der).map(|i| i.serial).unwrap_or_default();
    crate::audit::note_detail("serial", serial.clone());
    crate::audit::note_detail("not_after", rampart_common::time::rfc3339(not_after));
    tracing::info!(%node, %serial, not_after = %rampart_common::time::rfc3339(not_after), "agent certificate renewed");
    Ok((
        StatusCode::CREATED,
        axum::Json(AgentRenewResponse {
            certificate: pem,
            ca_certificate: state.ca.cert_pem().to_string(),
        }),
    ))
}

/// The routes of keys and certificates, for `routes::router`: open, authenticated, agent.
pub fn open_routes() -> utoipa_axum::router::OpenApiRouter<AppState> {
    utoipa_axum::router::OpenApiRouter::new().routes(utoipa_axum::routes!(crl))
}

pub fn authenticated_routes() -> utoipa_axum::router::OpenApiRouter<AppState> {
    use super::keys;
    use utoipa_axum::routes;
    utoipa_axum::router::OpenApiRouter::new()
        .routes(routes!(keys::list_keys, keys::create_key))
        .routes(routes!(keys::get_key, keys::update_key))
        .routes(routes!(keys::encrypt))
        .routes(routes!(keys::decrypt))
        .routes(routes!(keys::generate_data_key))
        .routes(routes!(keys::re_encrypt))
        .routes(routes!(keys::rotate_key))
        .routes(routes!(keys::enable_key))
        .routes(routes!(keys::disable_key))
        .routes(routes!(keys::schedule_key_deletion))
        .routes(routes!(keys::cancel_key_deletion))
        .routes(routes!(kms_status))
        .routes(routes!(list_certificates, issue_certificate))
        .routes(routes!(import_certificate))
        .routes(routes!(get_certificate))
        .routes(routes!(revoke_certificate))
}

pub fn agent_routes() -> utoipa_axum::router::OpenApiRouter<AppState> {
    utoipa_axum::router::OpenApiRouter::new().routes(utoipa_axum::routes!(agent_renew))
}
