//! Central certificate management (13.3-2, 12.3.1): the inventory of every certificate
//! (internal CAs, the API server, agents, tenants' certificates, imported third-party ones)
//! with expiry and the expiry alarm; issuing from a tenant's CSR (tenant CA); importing a
//! third-party certificate after a chain check; revocation; CRLs; the agents' certificates
//! (renewal, and the check of the one they present).
//!
//! Who: a project's `key-admin`s issue, import and revoke its certificates, its `key-user`s
//! read them; system readers (`system.read`) see every certificate; `system-admin`
//! (`system.manage`) imports platform certificates and revokes platform and agent ones.

use std::sync::Arc;

use axum::http::StatusCode;
use rampart_api::{
    AgentRenewRequest, AgentRenewResponse, Certificate, CertificateImport, CertificateIssue, CertificateKind,
    CertificateRevoke, CertificateStatus, CertificateUsage, List,
};
use rampart_common::Error;
use rampart_common::page::{PageParams, finish_page};
use rampart_common::quota::Resource;
use rampart_common::time::{from_ms, rfc3339, to_ms};
use rampart_db::kms::{self as db, CertScope};
use rampart_db::{Conn, identity};
use rampart_iam::authz::Target;
use rampart_kms::ca::{CaRole, CertificateAuthority, RevokedEntry, TenantNamePolicy, TenantUsage};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::audit::operations::Operation;
use crate::auth::Principal;
use crate::kms::inventory::{crl_revision, record_ca};
use crate::kms::{NewCert, blocking, bump_crl_number, cert_row, record_agent_certificate, revocation_reason};
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
        identity::project_by_id(&mut conn, project).await?
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

/// 403 unless the caller manages the project's certificates (`doing`: what for).
async fn require_manage(state: &AppState, principal: &Principal, project: Uuid, doing: &str) -> Result<(), Error> {
    let (_, manage) = project_rights(state, principal, project).await?;
    if manage {
        Ok(())
    } else {
        Err(Error::forbidden(format!(
            "{doing} certificates needs the key-admin role on the project"
        )))
    }
}

fn bad_certificate(field: &str, e: impl std::fmt::Display) -> Error {
    Error::field(field, e.to_string())
}

pub const LIST: Operation = Operation::new("certificate.list", "certificate").sensitive_read();

/// Certificates with their expiry: all of them for system readers, a project's for its key
/// roles (`project`), only those in `status` when given.
pub async fn list(
    state: &AppState,
    principal: &Principal,
    project: Option<Uuid>,
    status: Option<CertificateStatus>,
    page: PageParams,
) -> Result<List<Certificate>, Error> {
    let scope = match project {
        Some(p) => {
            project_rights(state, principal, p).await?;
            CertScope::Project(p)
        }
        None => {
            principal.require_system(state, "system.read").map_err(|_| {
                Error::forbidden("only system roles list every certificate; add ?project=<id> for a project's")
            })?;
            CertScope::All
        }
    };
    let page = page.validate()?;
    let mut conn = state.db.conn().await?;
    let mut items = Vec::new();
    let mut after = page.after.clone();
    loop {
        let rows = db::list_certificates(&mut conn, scope, after.as_deref(), page.limit + 1).await?;
        let exhausted = rows.len() <= page.limit as usize;
        after = rows.last().map(|c| c.id.clone());
        items.extend(
            rows.into_iter()
                .map(|c| (c.id.clone(), view(state, &c, false)))
                .filter(|(_, v)| status.is_none_or(|s| v.status == s)),
        );
        if items.len() > page.limit as usize || exhausted {
            break;
        }
    }
    let (items, next) = finish_page(items, page.limit, |(id, _)| id.clone());
    Ok(List {
        items: items.into_iter().map(|(_, v)| v).collect(),
        next,
    })
}

/// The certificate `id` if the caller may see it, and whether it may manage it.
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

pub const GET: Operation = Operation::new("certificate.get", "certificate")
    .target("id")
    .sensitive_read();

/// One certificate, with its PEM and chain.
pub async fn get(state: &AppState, principal: &Principal, id: Uuid) -> Result<Certificate, Error> {
    let (row, _) = visible_certificate(state, principal, id).await?;
    Ok(view(state, &row, true))
}

/// The zones whose names `project` may have certified (13.3-2).
async fn name_policy(state: &AppState, project: Uuid) -> Result<TenantNamePolicy, Error> {
    let mut conn = state.db.conn().await?;
    let p = identity::project_by_id(&mut conn, project)
        .await?
        .ok_or_else(|| Error::not_found("no such project"))?;
    let domain = identity::find_domain(&mut conn, &p.domain_id.to_string())
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

pub const ISSUE: Operation = Operation::new("certificate.create", "certificate");

/// Issues a certificate from a tenant's CSR (`key-admin` of the project), signed by the
/// project's issuing CA (made at the first issue, under the tenant CA, name-constrained to
/// the project's zones) for the usages asked (default server and client authentication).
/// Only the CSR's public key is used; the names must lie in the project's zones (422
/// `certificate_name_not_allowed` otherwise: the policy refuses what validators would).
pub async fn issue(state: &AppState, principal: &Principal, req: CertificateIssue) -> Result<Certificate, Error> {
    require_manage(state, principal, req.project, "issuing").await?;
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
    let policy = name_policy(state, req.project).await?;
    {
        let mut conn = state.db.conn().await?;
        crate::quota::enforce(state, &mut conn, req.project, Resource::Certificates, 1).await?;
    }
    // Refused names must not make the project an issuing CA it never uses.
    policy.check(&names, &usages).map_err(signing_error)?;
    let now = state.now();
    let (project, zones, cas) = (req.project, policy.zones().to_vec(), state.kms.project_cas.clone());
    let ca = blocking(move || cas.get(project, &zones, now))
        .await?
        .map_err(|e| Error::internal("preparing the project's issuing CA", e))?;
    {
        let mut conn = state.db.conn().await?;
        record_ca(&mut conn, &ca, Some(req.project), now).await?;
    }
    let issuing = ca.clone();
    let csr = req.csr;
    let signed = blocking(move || ca.sign_tenant_csr(&csr, &names, &policy, &usages, days, now))
        .await?
        .map_err(signing_error)?;
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
    // The chain up to the root: the project's issuing CA, then the tenant CA.
    row.chain_pem = format!("{}{}", issuing.cert_pem(), state.kms.tenant_ca.cert_pem());
    let mut conn = state.db.conn().await?;
    db::insert_certificate(&mut conn, &row).await?;
    tracing::info!(certificate = %row.id, project = %req.project, subject = %row.subject, by = %principal.user.name, "certificate issued");
    Ok(view(state, &row, true))
}

fn signing_error(e: rampart_kms::CaError) -> Error {
    match e {
        rampart_kms::CaError::NameNotAllowed(m) => {
            Error::coded(StatusCode::UNPROCESSABLE_ENTITY, "certificate_name_not_allowed", m)
        }
        rampart_kms::CaError::BadName(m) => Error::field("names", m),
        rampart_kms::CaError::BadCsr(m) => Error::field("csr", m),
        other => Error::internal("signing a tenant certificate", other),
    }
}

/// The chain check of an import, with its refusals as API errors.
fn check_chain(state: &AppState, pem: &str) -> Result<rampart_kms::chain::CheckedChain, Error> {
    use rampart_kms::chain::ChainError;
    let internal = vec![state.ca.cert_der().to_vec(), state.kms.tenant_ca.cert_der().to_vec()];
    rampart_kms::chain::check_import(pem, &state.kms.system_roots, &internal, state.now()).map_err(|e| match e {
        ChainError::Expired => Error::coded(StatusCode::BAD_REQUEST, "certificate_expired", e.to_string()),
        ChainError::NotYetValid => Error::coded(StatusCode::BAD_REQUEST, "certificate_not_yet_valid", e.to_string()),
        ChainError::Invalid(_) => Error::coded(StatusCode::BAD_REQUEST, "invalid_certificate_chain", e.to_string()),
        other => Error::field("certificate", other.to_string()),
    })
}

pub const IMPORT: Operation = Operation::new("import.create", "import");

/// Imports a third-party certificate after a chain check (`key-admin` of its project, or
/// `system-admin` for a platform certificate). No private key is taken.
pub async fn import(state: &AppState, principal: &Principal, req: CertificateImport) -> Result<Certificate, Error> {
    match req.project {
        Some(p) => require_manage(state, principal, p, "importing").await?,
        None => principal.require_system(state, "system.manage")?,
    }
    if let Some(p) = req.project {
        let mut conn = state.db.conn().await?;
        crate::quota::enforce(state, &mut conn, p, Resource::Certificates, 1).await?;
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
    let checked = check_chain(state, &pem)?;
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
    Ok(view(state, &row, true))
}

pub const REVOKE: Operation = Operation::new("certificate.revoke", "certificate").target("id");

/// Revokes a certificate. Certificates of the internal CAs go into the CRL; a revoked agent
/// certificate is refused at the agent's next request. The CA certificates and the API server
/// certificate cannot be revoked (`certificate_not_revocable`).
pub async fn revoke(
    state: &AppState,
    principal: &Principal,
    id: Uuid,
    req: CertificateRevoke,
) -> Result<Certificate, Error> {
    let (row, manage) = visible_certificate(state, principal, id).await?;
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
    Ok(view(state, &row, false))
}

pub const CRL: Operation = Operation::new("crl.get", "crl");
pub const CA_CERTIFICATE: Operation = Operation::new("certificate.get", "certificate");

/// The current CRL of an internal CA, DER: made again when a revocation changed the CRL
/// number or half its validity has passed, otherwise served from memory (it is public and
/// unauthenticated, so a request must not cost an HSM signature).
pub async fn crl(state: &AppState, role: CaRole) -> Result<Arc<Vec<u8>>, Error> {
    let now = state.now();
    let validity = time::Duration::hours(state.config.kms.crl_validity_hours as i64);
    let mut conn = state.db.conn().await?;
    let number = crl_revision(&mut conn).await?;
    if let Some(der) = state.kms.cached_crl(role, number, now, validity / 2) {
        return Ok(der);
    }
    let revoked = db::revoked_serials(&mut conn, role.as_str(), now).await?;
    drop(conn);
    let entries: Vec<RevokedEntry> = revoked
        .into_iter()
        .map(|(serial, at, why)| RevokedEntry {
            serial,
            revoked_at: from_ms(at),
            reason: why.as_deref().and_then(revocation_reason),
        })
        .collect();
    let ca = match role {
        CaRole::Infrastructure => state.ca.clone(),
        CaRole::Tenant => state.kms.tenant_ca.clone(),
    };
    // The CRL number is the time of making in milliseconds: it grows with every new CRL.
    let crl_number = to_ms(now).max(0) as u64;
    let der = blocking(move || ca.crl(&entries, crl_number, now, validity))
        .await?
        .map_err(|e| Error::internal("signing the CRL", e))?;
    let der = Arc::new(der);
    state.kms.cache_crl(role, number, now, der.clone());
    Ok(der)
}

// ---- the inventory over time ----

/// At start: the CAs and the server certificate go into the certificate inventory.
pub async fn after_start(state: &AppState) -> Result<(), Error> {
    let mut conn = state.db.conn().await?;
    record_ca(&mut conn, &state.ca, None, state.now()).await?;
    record_ca(&mut conn, &state.kms.tenant_ca, None, state.now()).await?;
    record_server_certificate(state, &mut conn).await?;
    Ok(())
}

/// Records the API server certificate currently on disk (issued or renewed) if it is new.
pub async fn record_server_certificate(state: &AppState, conn: &mut Conn) -> Result<(), Error> {
    let path = state.data_dir.join("tls").join("server.pem");
    let Ok(pem) = std::fs::read_to_string(&path) else {
        return Ok(());
    };
    let der = rampart_kms::ca::pem_to_der(&pem).map_err(|e| Error::internal("reading the server certificate", e))?;
    let row = cert_row(
        NewCert {
            kind: "server",
            issuer_ca: Some(CaRole::Infrastructure),
            project: None,
            node: None,
            pem: &pem,
            der: &der,
            created_by: None,
        },
        state.now(),
    )?;
    if db::record_certificate(conn, &row).await? {
        tracing::info!(certificate = %row.id, not_after = %rfc3339(from_ms(row.not_after)), "recorded the API server certificate");
    }
    Ok(())
}

/// Raises the expiry alarm of certificates entering `kms.certificate_warning_days`: a warning
/// in the run log, once, and the `expiring` status with `expiry_alarm_at` in the API.
pub async fn expiry_alarms(state: &AppState, conn: &mut Conn) -> Result<usize, Error> {
    let now: OffsetDateTime = state.now();
    let horizon = now + time::Duration::days(state.config.kms.certificate_warning_days as i64);
    let rows = db::expiring_without_alarm(conn, horizon).await?;
    for c in &rows {
        let left = from_ms(c.not_after) - now;
        tracing::warn!(
            target: "rampart::alarm",
            alarm = "certificate_expiry",
            certificate = %c.id,
            kind = %c.kind,
            subject = %c.subject,
            not_after = %rfc3339(from_ms(c.not_after)),
            days_left = left.whole_days(),
            "certificate expires soon"
        );
        db::mark_expiry_alarm(conn, &c.id, now).await?;
    }
    Ok(rows.len())
}

// ---- agents ----

pub const RENEW_AGENT: Operation = Operation::new("node.certificate.renew", "node");

/// An agent renews its certificate with its current one: a certificate for its new key,
/// accepted beside the current one until the agent first uses it.
pub async fn renew_agent(state: &AppState, node: Uuid, req: AgentRenewRequest) -> Result<AgentRenewResponse, Error> {
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
    crate::audit::note_detail("not_after", rfc3339(not_after));
    tracing::info!(%node, %serial, not_after = %rfc3339(not_after), "agent certificate renewed");
    Ok(AgentRenewResponse {
        certificate: pem,
        ca_certificate: state.ca.cert_pem().to_string(),
    })
}

/// The node presenting the certificate with `sha256` that names `claimed`: refused when the
/// certificate is revoked (`certificate_revoked`) or belongs to no current node. A renewed
/// certificate used for the first time becomes the node's only certificate.
pub async fn node_for_certificate(state: &AppState, sha256: &str, claimed: Uuid) -> Result<Uuid, Error> {
    let unknown = || Error::Unauthorized {
        code: "unknown_node_certificate",
        message: "this certificate belongs to no current node; the node was removed or replaced, join again".into(),
    };
    let mut conn = state.db.conn().await?;
    if db::is_revoked(&mut conn, sha256).await? {
        tracing::warn!(node = %claimed, sha256, "a revoked agent certificate was presented");
        return Err(Error::Unauthorized {
            code: "certificate_revoked",
            message: "this certificate is revoked; the node must join again".into(),
        });
    }
    match db::node_by_certificate(&mut conn, sha256).await? {
        Some((id, db::NodeCert::Current)) if id == claimed => Ok(id),
        Some((id, db::NodeCert::Next)) if id == claimed => {
            if let Some(old) = db::promote_next_certificate(&mut conn, id, sha256).await? {
                tracing::info!(node = %id, previous = %old, "the agent uses its renewed certificate; the previous one is refused from now on");
            }
            Ok(id)
        }
        _ => Err(unknown()),
    }
}
