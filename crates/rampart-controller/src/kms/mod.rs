//! The key service and the certificate service inside the controller: opening the HSM at
//! start (fail closed), the internal CAs with their keys in the HSM when possible, the key
//! audit facts, and the certificate inventory's rows and revocation lists.
//!
//! Nothing here knows the controller's shared state: the use cases that need it (the Keys and
//! Certificates APIs, the reconciler pass, the hooks of projects and nodes) are in
//! [`crate::app::keys`] and [`crate::app::certificates`]. Their old paths `crate::kms::…` are
//! kept by the re-exports at the end while other modules move to the new ones.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rampart_common::Error;
use rampart_common::config::{CaKeyCustody, Config, HsmKind};
use rampart_common::error::ErrorChain;
use rampart_kms::ca::CaRole;
use rampart_kms::{
    BackendKind, CertificateAuthority, EmbeddedSoftHsm, HsmError, KeyBackend, KeyService, Pkcs11Backend, Pkcs11Config,
    UnavailableBackend,
};
use time::OffsetDateTime;
use uuid::Uuid;

pub mod facts;
pub mod inventory;

pub use facts::{Actor, audit, facts};
pub use inventory::{
    NewCert, REVOCATION_REASONS, before_project_delete, bump_crl_number, cert_row, node_removed,
    record_agent_certificate, revocation_reason,
};

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
    /// The projects' issuing CAs under the tenant CA.
    pub project_cas: Arc<ProjectCas>,
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
    let tenant_ca = Arc::new(tenant_ca);
    let project_cas = Arc::new(ProjectCas {
        data_dir: data_dir.to_path_buf(),
        hsm: ca_hsm.cloned(),
        days: config.tls.ca_days,
        root: tenant_ca.clone(),
        cache: Mutex::new(HashMap::new()),
    });
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
            tenant_ca,
            project_cas,
            system_roots: rampart_kms::chain::system_roots(),
            crls: Mutex::new(HashMap::new()),
        },
    ))
}

impl Kms {
    pub fn backend_kind(&self) -> BackendKind {
        self.service.backend_kind()
    }

    /// The CRL of `role` made at revocation-list revision `revision`, while younger than
    /// `max_age`.
    pub fn cached_crl(
        &self,
        role: CaRole,
        revision: i64,
        now: OffsetDateTime,
        max_age: time::Duration,
    ) -> Option<Arc<Vec<u8>>> {
        let crls = self.crls.lock().expect("crl lock");
        let (n, made, der) = crls.get(role.as_str())?;
        (*n == revision && now - *made < max_age).then(|| der.clone())
    }

    pub fn cache_crl(&self, role: CaRole, revision: i64, made: OffsetDateTime, der: Arc<Vec<u8>>) {
        self.crls
            .lock()
            .expect("crl lock")
            .insert(role.as_str(), (revision, made, der));
    }
}

/// The projects' issuing CAs (13.3-2), loaded or made on first use and kept in memory.
pub struct ProjectCas {
    data_dir: PathBuf,
    hsm: Option<Arc<Pkcs11Backend>>,
    days: u32,
    root: Arc<CertificateAuthority>,
    /// Per project: the zones it was checked for, until when it needs no new check, the CA.
    cache: Mutex<HashMap<Uuid, CachedProjectCa>>,
}

type CachedProjectCa = (Vec<String>, OffsetDateTime, Arc<CertificateAuthority>);

impl std::fmt::Debug for ProjectCas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectCas").finish_non_exhaustive()
    }
}

impl ProjectCas {
    /// The issuing CA of `project` for `zones` (blocking: it may read files and use the HSM).
    /// Calls are serialised so two first issues of a project make one CA.
    pub fn get(
        &self,
        project: Uuid,
        zones: &[String],
        now: OffsetDateTime,
    ) -> Result<Arc<CertificateAuthority>, rampart_kms::CaError> {
        let mut cache = self.cache.lock().expect("project CA lock");
        if let Some((z, fresh_until, ca)) = cache.get(&project)
            && z.as_slice() == zones
            && now < *fresh_until
        {
            return Ok(ca.clone());
        }
        let (ca, _) =
            self.root
                .load_or_create_project_ca(&self.data_dir, project, zones, self.days, now, self.hsm.as_ref())?;
        let ca = Arc::new(ca);
        // Checked again (expiry, a changed root) a day later.
        cache.insert(project, (zones.to_vec(), now + time::Duration::days(1), ca.clone()));
        Ok(ca)
    }
}

/// Runs a blocking HSM call off the async workers.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal("running a key operation", e))
}
