//! The key service and the certificate service inside the controller: opening the HSM at
//! start (fail closed), the internal CAs with their keys in the HSM when possible, root keys
//! for every project, the hooks of project creation and deletion, the reconciler pass
//! (automatic rotation, destruction after the deletion window, certificate inventory and
//! expiry alarms), CRLs, and the agents' certificate checks (revocation, renewal).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rampart_common::Error;
use rampart_common::config::{CaKeyCustody, Config, HsmKind};
use rampart_common::error::ErrorChain;
use rampart_common::time::{from_ms, rfc3339, to_ms};
use rampart_db::{Conn, identity, kms as db, meta};
use rampart_kms::ca::{CaRole, RevocationReason, RevokedEntry, cert_info};
use rampart_kms::{
    BackendKind, CertificateAuthority, EmbeddedSoftHsm, HsmError, Key, KeyAuditFacts, KeyBackend, KeyOperation,
    KeyService, KmsError, Pkcs11Backend, Pkcs11Config, UnavailableBackend,
};
use rampart_kms::storage::{KeyStore, StoredKey};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::state::AppState;

#[derive(Debug, thiserror::Error)]
pub enum KmsStartError {
    #[error(
        "the HSM is required ([kms] required = true) but cannot be used: {0}; install softhsm2 for the embedded default, fix [kms], or set [kms] required = false to start with key operations failing closed"
    )]
    HsmRequired(String),
    #[error("[kms] ca_key = \"hsm\" but the HSM is unavailable: {0}")]
    CaNeedsHsm(String),
    #[error("internal CA")]
    Ca(#[from] rampart_kms::CaError),
    #[error("cannot prepare the embedded HSM")]
    Embedded(#[source] HsmError),
}

/// What the controller holds for keys and certificates.
pub struct Kms {
    pub service: Arc<KeyService>,
    /// The PKCS#11 backend, when the HSM is up (root-key reports, CA keys).
    pub pkcs11: Option<Arc<Pkcs11Backend>>,
    /// What serves keys, for logs and the conformance matrix.
    pub description: String,
    pub tenant_ca: Arc<CertificateAuthority>,
    /// Roots the operating system trusts, for chain checks of imported certificates.
    pub system_roots: Vec<Vec<u8>>,
    crls: Mutex<HashMap<&'static str, CachedCrl>>,
}

/// The last CRL made for a CA: `(revision of the revocation lists, made at, DER)`.
type CachedCrl = (i64, OffsetDateTime, Arc<Vec<u8>>);

impl std::fmt::Debug for Kms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kms")
            .field("description", &self.description)
            .finish_non_exhaustive()
    }
}

/// The path of the embedded SoftHSM2 configuration of `data_dir`, and whether the binary must
/// re-execute itself to have it in `SOFTHSM2_CONF` (see `main`). `None` when `[kms]` does not
/// use the embedded token.
pub fn embedded_conf(config: &Config, data_dir: &Path) -> Result<Option<PathBuf>, KmsStartError> {
    if config.kms.hsm != HsmKind::Embedded {
        return Ok(None);
    }
    let hsm = EmbeddedSoftHsm::prepare(data_dir).map_err(KmsStartError::Embedded)?;
    Ok(Some(hsm.conf))
}

fn open_backend(config: &Config, data_dir: &Path) -> Result<Arc<Pkcs11Backend>, HsmError> {
    let k = &config.kms;
    match k.hsm {
        HsmKind::Embedded => {
            let hsm = EmbeddedSoftHsm::prepare(data_dir)?;
            Ok(Arc::new(hsm.open(&k.module)?))
        }
        HsmKind::Pkcs11 => {
            let pin_file = k
                .pin_file
                .clone()
                .ok_or_else(|| HsmError::Config("kms.pin_file is not set".into()))?;
            let mut c = Pkcs11Config::new(&k.module, &k.token_label, pin_file);
            c.sessions = k.sessions;
            let backend = Pkcs11Backend::open(&c)?;
            backend.check_mechanisms()?;
            Ok(Arc::new(backend))
        }
    }
}

/// Opens the HSM (failing closed), loads or creates both internal CAs.
pub fn start(
    config: &Config,
    data_dir: &Path,
    now: OffsetDateTime,
) -> Result<(CertificateAuthority, Kms), KmsStartError> {
    let (backend, pkcs11, description): (Arc<dyn KeyBackend>, _, _) = match open_backend(config, data_dir) {
        Ok(b) => {
            let description = match config.kms.hsm {
                HsmKind::Embedded => format!(
                    "embedded SoftHSM2 token in {} ({})",
                    EmbeddedSoftHsm::paths(data_dir).dir.display(),
                    config.kms.module.display()
                ),
                HsmKind::Pkcs11 => format!(
                    "PKCS#11 token {:?} of {}",
                    config.kms.token_label,
                    config.kms.module.display()
                ),
            };
            (b.clone(), Some(b), description)
        }
        Err(e) => {
            let reason = ErrorChain(&e).to_string();
            if config.kms.required {
                return Err(KmsStartError::HsmRequired(reason));
            }
            tracing::error!(reason = %reason, "the HSM is unavailable: key operations fail closed (hsm_unavailable)");
            (
                Arc::new(UnavailableBackend::new(reason.clone())),
                None,
                format!("unavailable: {reason}"),
            )
        }
    };
    let ca_hsm = match (config.kms.ca_key, &pkcs11) {
        (CaKeyCustody::File, _) => None,
        (CaKeyCustody::Auto, p) => p.as_ref(),
        (CaKeyCustody::Hsm, Some(p)) => Some(p),
        (CaKeyCustody::Hsm, None) => return Err(KmsStartError::CaNeedsHsm(description)),
    };
    let (ca, _) =
        CertificateAuthority::load_or_create_in(data_dir, CaRole::Infrastructure, config.tls.ca_days, now, ca_hsm)?;
    let (tenant_ca, _) =
        CertificateAuthority::load_or_create_in(data_dir, CaRole::Tenant, config.tls.ca_days, now, ca_hsm)?;
    tracing::info!(
        hsm = %description,
        ca_key = ca.key_mode().as_str(),
        tenant_ca_key = tenant_ca.key_mode().as_str(),
        "key service ready"
    );
    Ok((
        ca,
        Kms {
            service: Arc::new(KeyService::new(backend)),
            pkcs11,
            description,
            tenant_ca: Arc::new(tenant_ca),
            system_roots: rampart_kms::chain::system_roots(),
            crls: Mutex::new(HashMap::new()),
        },
    ))
}

impl Kms {
    pub fn backend_kind(&self) -> BackendKind {
        self.service.backend_kind()
    }
}

/// Runs a blocking HSM call off the async workers.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal("running a key operation", e))
}

/// Projects whose root keys are checked per blocking task by [`spawn_root_check`].
const ROOT_CHECK_BATCH: usize = 100;

/// After start, in the background: every project has its root keys (made when the project
/// was, so this only repairs a token restored from an older backup). One HSM lookup per
/// project: start-up must not wait for it, so the API answers first and the check runs in
/// batches until done or shutdown. Key operations make missing roots themselves meanwhile.
pub fn spawn_root_check(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if state.kms.backend_kind() != BackendKind::Pkcs11 {
            return;
        }
        let projects = match async {
            let mut conn = state.db.conn().await?;
            Ok::<_, Error>(db::all_project_ids(&mut conn).await?)
        }
        .await
        {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot list the projects whose root keys to check");
                return;
            }
        };
        let (n, started) = (projects.len(), std::time::Instant::now());
        let mut failed = 0;
        for batch in projects.chunks(ROOT_CHECK_BATCH) {
            if state.shutdown.is_cancelled() {
                return;
            }
            let (service, batch) = (state.kms.service.clone(), batch.to_vec());
            let Ok(errors) = blocking(move || {
                batch
                    .into_iter()
                    .filter_map(|p| service.create_project_root(p).err().map(|e| (p, e)))
                    .collect::<Vec<_>>()
            })
            .await
            else {
                return;
            };
            for (p, e) in &errors {
                tracing::error!(project = %p, error = %ErrorChain(e), "cannot create the project's root keys in the HSM");
            }
            failed += errors.len();
        }
        tracing::info!(
            projects = n,
            failed,
            took_ms = started.elapsed().as_millis() as u64,
            "project root keys checked in the HSM"
        );
    })
}

/// At start: the CAs and the server certificate go into the certificate inventory.
pub async fn after_start(state: &AppState) -> Result<(), Error> {
    let mut conn = state.db.conn().await?;
    record_ca(&mut conn, &state.ca, state.now()).await?;
    record_ca(&mut conn, &state.kms.tenant_ca, state.now()).await?;
    record_server_certificate(state, &mut conn).await?;
    Ok(())
}

// ---- projects ----

/// A new project gets its root keys in the HSM before the call answers: transient token
/// failures are retried with backoff; if the keys still cannot be made, the project is removed
/// again and the call fails with 503 `hsm_unavailable`, so no project answers 201 without
/// its keys. Without an HSM (`kms.required = false`) key operations fail closed anyway and
/// projects are made without roots.
pub async fn project_created(state: &AppState, project: Uuid) -> Result<(), Error> {
    if state.kms.backend_kind() != BackendKind::Pkcs11 {
        return Ok(());
    }
    let service = state.kms.service.clone();
    let made = blocking(move || service.create_project_root(project)).await?;
    let Err(e) = made else {
        return Ok(());
    };
    tracing::error!(%project, error = %ErrorChain(&e), "cannot create the project's root keys in the HSM; the project is removed again");
    let mut conn = state.db.conn().await?;
    identity::delete_project(&mut conn, project).await?;
    Err(Error::coded(
        http::StatusCode::SERVICE_UNAVAILABLE,
        "hsm_unavailable",
        "the project's keys could not be created in the HSM, so the project was not created; try again later",
    ))
}

/// In the project's delete transaction: refused while it has keys that are not destroyed
/// (schedule their deletion first); destroyed keys are removed; its certificates are revoked
/// and detached.
pub async fn before_project_delete(conn: &mut Conn, project: Uuid, now: OffsetDateTime) -> Result<(), Error> {
    let live = db::count_live_keys(conn, project).await?;
    if live > 0 {
        return Err(Error::coded(
            http::StatusCode::CONFLICT,
            "project_has_keys",
            format!("the project still has {live} key(s) that are not destroyed; schedule their deletion first"),
        ));
    }
    db::delete_project_keys(conn, project).await?;
    if db::detach_project_certificates(conn, project, now).await? > 0 {
        bump_crl_number(conn).await?;
    }
    Ok(())
}

/// After the project is deleted: its root keys are destroyed in the HSM (crypto-shredding of
/// everything it ever encrypted).
pub async fn after_project_delete(state: &AppState, project: Uuid) {
    if state.kms.backend_kind() != BackendKind::Pkcs11 {
        tracing::warn!(%project, "the HSM is unavailable: the project's root keys stay in the token until removed by hand");
        return;
    }
    let service = state.kms.service.clone();
    match blocking(move || service.backend().destroy_project_root(project)).await {
        Ok(Ok(())) => tracing::info!(%project, "destroyed the project's root keys"),
        Ok(Err(e)) => tracing::error!(%project, error = %ErrorChain(&e), "cannot destroy the project's root keys"),
        Err(e) => tracing::error!(%project, error = %ErrorChain(&e), "cannot destroy the project's root keys"),
    }
}

// ---- keys: the audit trail and changes ----

/// Who did a key operation, for its audit record.
#[derive(Debug, Clone)]
pub struct Actor {
    pub id: Option<Uuid>,
    pub name: String,
    pub source_ip: Option<std::net::IpAddr>,
}

impl Actor {
    pub fn system() -> Actor {
        Actor {
            id: None,
            name: "system:reconciler".into(),
            source_ip: None,
        }
    }
}

/// Writes the audit facts of a key operation (13.3-4): operation, key, version, context,
/// outcome and error code, with the actor. Never plaintext, key material or a data key: the
/// facts cannot hold them. They go to the run log under the `rampart::audit` target (and into
/// the response's extensions, where the audit trail picks them up).
pub fn audit(actor: &Actor, facts: &KeyAuditFacts) {
    let context = serde_json::to_string(&facts.context).unwrap_or_default();
    let operation = serde_json::to_value(facts.operation)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    tracing::info!(
        target: "rampart::audit",
        operation = %operation,
        project = %facts.project,
        key_id = %facts.key_id,
        key_version = ?facts.key_version,
        source_key_id = ?facts.source_key_id,
        source_key_version = ?facts.source_key_version,
        context = %context,
        outcome = facts.outcome,
        error_code = ?facts.error_code,
        actor = %actor.name,
        actor_id = ?actor.id,
        source_ip = ?actor.source_ip,
        "key operation"
    );
}

/// The empty facts of an operation on `key_id` (filled as the operation goes).
pub fn facts(operation: KeyOperation, project: Uuid, key_id: Uuid) -> KeyAuditFacts {
    KeyAuditFacts {
        operation,
        project,
        key_id,
        key_version: None,
        source_key_id: None,
        source_key_version: None,
        context: Default::default(),
        outcome: "success",
        error_code: None,
    }
}

/// Loads, changes (off the async workers: the change may call the HSM) and stores a key, retrying
/// when another writer got there first.
pub async fn mutate_key<T: Send + 'static>(
    state: &AppState,
    project: Uuid,
    id: Uuid,
    change: impl Fn(&KeyService, &mut Key, OffsetDateTime) -> Result<T, KmsError> + Send + Sync + Clone + 'static,
) -> Result<(Key, T), Error> {
    for _ in 0..5 {
        let StoredKey { key, revision } = {
            let mut conn = state.db.conn().await?;
            db::keys(&mut conn).get(project, id).await?
        }
        .ok_or_else(|| Error::not_found("no such key"))?;
        let service = state.kms.service.clone();
        let now = state.now();
        let change = change.clone();
        let (key, out) = blocking(move || {
            let mut key = key;
            change(&service, &mut key, now).map(|out| (key, out))
        })
        .await??;
        let mut tx = state.db.begin().await?;
        if db::keys(&mut tx).save(&key, revision).await? {
            rampart_db::Db::commit(tx).await?;
            return Ok((key, out));
        }
        drop(tx);
        tracing::debug!(key = %id, "key changed concurrently; retrying");
    }
    Err(Error::conflict(
        "the key is being changed by another request; try again",
    ))
}

// ---- the reconciler pass ----

/// Rotates keys whose period has passed, destroys keys whose deletion window has passed,
/// records the server certificate, raises certificate expiry alarms.
pub async fn maintain(state: &AppState) -> Result<(), Error> {
    let due = {
        let mut conn = state.db.conn().await?;
        db::keys(&mut conn).due(state.now(), 100).await?
    };
    for (project, id) in due {
        let result = mutate_key(state, project, id, |svc, key, now| svc.run_maintenance(key, now)).await;
        match result {
            Ok((key, Some(done))) => {
                let (operation, version) = match done {
                    rampart_kms::Maintenance::Rotate => (KeyOperation::Rotate, Some(key.primary_version)),
                    rampart_kms::Maintenance::Destroy => (KeyOperation::Destroy, None),
                };
                let mut f = facts(operation, project, id);
                f.key_version = version;
                audit(&Actor::system(), &f);
            }
            Ok((_, None)) => {}
            Err(e) => {
                let mut f = facts(KeyOperation::Rotate, project, id);
                f.outcome = "failure";
                f.error_code = Some(e.code());
                audit(&Actor::system(), &f);
                tracing::warn!(key = %id, error = %e, "key maintenance failed; retried at the next pass");
            }
        }
    }
    let mut conn = state.db.conn().await?;
    record_server_certificate(state, &mut conn).await?;
    expiry_alarms(state, &mut conn).await?;
    Ok(())
}

/// Raises the expiry alarm of certificates entering `kms.certificate_warning_days`: a warning
/// in the run log, once, and the `expiring` status with `expiry_alarm_at` in the API.
pub async fn expiry_alarms(state: &AppState, conn: &mut Conn) -> Result<usize, Error> {
    let now = state.now();
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

// ---- certificates ----

/// A certificate the controller has in hand, for the inventory.
pub struct NewCert<'a> {
    pub kind: &'a str,
    pub issuer_ca: Option<CaRole>,
    pub project: Option<Uuid>,
    pub node: Option<Uuid>,
    pub pem: &'a str,
    pub der: &'a [u8],
    pub created_by: Option<String>,
}

/// The inventory row of a certificate.
pub fn cert_row(c: NewCert<'_>, now: OffsetDateTime) -> Result<db::CertRow, Error> {
    let info = cert_info(c.der).map_err(|e| Error::internal("reading a certificate", e))?;
    Ok(db::CertRow {
        id: Uuid::new_v4().to_string(),
        kind: c.kind.into(),
        issuer_ca: c.issuer_ca.map(|r| r.as_str().to_string()),
        project_id: c.project.map(|p| p.to_string()),
        node_id: c.node.map(|n| n.to_string()),
        serial: info.serial,
        sha256: info.sha256,
        subject: info.subject,
        issuer: info.issuer,
        names: serde_json::to_string(&info.names).unwrap_or_else(|_| "[]".into()),
        not_before: to_ms(info.not_before),
        not_after: to_ms(info.not_after),
        pem: c.pem.to_string(),
        chain_pem: String::new(),
        chain_trust: None,
        revoked_at: None,
        revocation_reason: None,
        expiry_alarm_at: None,
        created_by: c.created_by,
        created_at: to_ms(now),
    })
}

async fn record_ca(conn: &mut Conn, ca: &CertificateAuthority, now: OffsetDateTime) -> Result<(), Error> {
    let row = cert_row(
        NewCert {
            kind: "ca",
            issuer_ca: Some(ca.role()),
            project: None,
            node: None,
            pem: ca.cert_pem(),
            der: ca.cert_der(),
            created_by: None,
        },
        now,
    )?;
    db::record_certificate(conn, &row).await?;
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

/// Records an agent's certificate (at join and at renewal).
pub async fn record_agent_certificate(
    conn: &mut Conn,
    node: Uuid,
    pem: &str,
    der: &[u8],
    now: OffsetDateTime,
) -> Result<(), Error> {
    let row = cert_row(
        NewCert {
            kind: "agent",
            issuer_ca: Some(CaRole::Infrastructure),
            project: None,
            node: Some(node),
            pem,
            der,
            created_by: None,
        },
        now,
    )?;
    db::record_certificate(conn, &row).await?;
    Ok(())
}

/// Revokes a removed node's certificates (they are refused already; this puts them in the CRL).
pub async fn node_removed(conn: &mut Conn, node: Uuid, now: OffsetDateTime) -> Result<(), Error> {
    if db::revoke_node_certificates(conn, node, now).await? > 0 {
        bump_crl_number(conn).await?;
    }
    Ok(())
}

/// Counts changes of the revocation lists (in `meta`), so every controller knows when its
/// cached CRL is stale.
const CRL_REVISION: &str = "crl_revision";

/// Records that a revocation list changed: the next CRL request makes a new CRL.
pub async fn bump_crl_number(conn: &mut Conn) -> Result<i64, Error> {
    let n = meta::get(conn, CRL_REVISION)
        .await?
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(0)
        + 1;
    meta::set(conn, CRL_REVISION, &n.to_string()).await?;
    Ok(n)
}

/// Revocation reasons (RFC 5280 §5.3.1) by their API names.
pub const REVOCATION_REASONS: &[&str] = &[
    "unspecified",
    "key_compromise",
    "ca_compromise",
    "affiliation_changed",
    "superseded",
    "cessation_of_operation",
    "privilege_withdrawn",
];

pub fn revocation_reason(name: &str) -> Option<RevocationReason> {
    Some(match name {
        "unspecified" => RevocationReason::Unspecified,
        "key_compromise" => RevocationReason::KeyCompromise,
        "ca_compromise" => RevocationReason::CaCompromise,
        "affiliation_changed" => RevocationReason::AffiliationChanged,
        "superseded" => RevocationReason::Superseded,
        "cessation_of_operation" => RevocationReason::CessationOfOperation,
        "privilege_withdrawn" => RevocationReason::PrivilegeWithdrawn,
        _ => return None,
    })
}

/// The current CRL of an internal CA, DER: made again when a revocation changed the CRL
/// number or half its validity has passed, otherwise served from memory (it is public and
/// unauthenticated, so a request must not cost an HSM signature).
pub async fn crl(state: &AppState, role: CaRole) -> Result<Arc<Vec<u8>>, Error> {
    let now = state.now();
    let validity = time::Duration::hours(state.config.kms.crl_validity_hours as i64);
    let mut conn = state.db.conn().await?;
    let number = meta::get(&mut conn, CRL_REVISION)
        .await?
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(0);
    if let Some((n, made, der)) = state.kms.crls.lock().expect("crl lock").get(role.as_str())
        && *n == number
        && now - *made < validity / 2
    {
        return Ok(der.clone());
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
    state
        .kms
        .crls
        .lock()
        .expect("crl lock")
        .insert(role.as_str(), (number, now, der.clone()));
    Ok(der)
}

// ---- agents ----

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
