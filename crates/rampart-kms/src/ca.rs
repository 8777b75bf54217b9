//! The internal certificate authorities (12.3.1, 13.3-2). Both are ECDSA P-256 and created on
//! first start:
//!
//! * the **infrastructure CA** (`<data-dir>/ca.pem`) signs the API server certificate and the
//!   agents' client certificates; it is what clients and agents trust;
//! * the **tenant CA** (`<data-dir>/tenant-ca.pem`) signs one issuing CA per project
//!   ([`crate::project_ca`], name-constrained to the project's zones), which signs the
//!   certificates that the project's tenants ask for with a CSR. It is a separate root on
//!   purpose: a tenant certificate naming `localhost` or the controller's address must never
//!   be accepted by a client that trusts `ca.pem`.
//!
//! Each CA key lives in the HSM when one is configured and able to hold EC keys (the key
//! never exists outside the token; `tls/<name>-key.hsm` records the token label), otherwise
//! in `tls/<name>-key.pem` (0600). A CA keeps the custody it was created with.
//!
//! Agents get certificates whose only identity is the node id, as a URI SAN
//! `urn:rampart:node:<uuid>`: whatever the CSR asks for is ignored but its public key.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rampart_common::fsutil;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertificateSigningRequestParams,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    PublicKeyData, RevokedCertParams, SanType, SerialNumber,
};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

pub use rcgen::RevocationReason;

use crate::error::HsmError;
use crate::hsm_signer::{CaKey, HsmSigningKey};
use crate::pkcs11::Pkcs11Backend;

pub const NODE_URI_PREFIX: &str = "urn:rampart:node:";
/// Most names a tenant certificate may carry.
pub const MAX_CERTIFICATE_NAMES: usize = 50;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate operation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("the certificate signing request is not valid: {0}")]
    BadCsr(String),
    #[error("not a valid certificate: {0}")]
    BadCertificate(String),
    #[error("{0}")]
    BadName(String),
    /// A well-formed name the requesting project does not own (13.3-2).
    #[error("{0}")]
    NameNotAllowed(String),
    #[error("{path} exists but {other} does not: refusing to create a new CA over half of an old one")]
    HalfCa { path: PathBuf, other: PathBuf },
    #[error("the CA key is in the HSM ({marker}) but no HSM is available; configure [kms] so the token can be opened")]
    HsmRequired { marker: PathBuf },
    #[error("the HSM holds no key labelled {label} for the CA certificate {cert}")]
    HsmKeyMissing { label: String, cert: PathBuf },
    #[error("the key in the HSM labelled {label} does not match the CA certificate {cert}")]
    KeyMismatch { label: String, cert: PathBuf },
    #[error("HSM")]
    Hsm(#[from] HsmError),
}

/// Which internal CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaRole {
    /// Signs the API server and agent certificates; `ca.pem`.
    Infrastructure,
    /// Signs tenants' certificates (from their CSRs); `tenant-ca.pem`.
    Tenant,
}

impl CaRole {
    pub fn as_str(self) -> &'static str {
        match self {
            CaRole::Infrastructure => "infrastructure",
            CaRole::Tenant => "tenant",
        }
    }

    fn stem(self) -> &'static str {
        match self {
            CaRole::Infrastructure => "ca",
            CaRole::Tenant => "tenant-ca",
        }
    }

    pub fn cert_path(self, data_dir: &Path) -> PathBuf {
        data_dir.join(format!("{}.pem", self.stem()))
    }

    pub fn key_path(self, data_dir: &Path) -> PathBuf {
        data_dir.join("tls").join(format!("{}-key.pem", self.stem()))
    }

    /// Present when the key is in the HSM; holds the token label.
    pub fn hsm_marker_path(self, data_dir: &Path) -> PathBuf {
        data_dir.join("tls").join(format!("{}-key.hsm", self.stem()))
    }

    pub fn hsm_label(self) -> &'static str {
        match self {
            CaRole::Infrastructure => "rampart:ca",
            CaRole::Tenant => "rampart:tenant-ca",
        }
    }

    fn common_name(self) -> &'static str {
        match self {
            CaRole::Infrastructure => "Rampart internal CA",
            CaRole::Tenant => "Rampart tenant CA",
        }
    }
}

/// Where a CA's private key is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaKeyMode {
    /// `tls/<name>-key.pem`, mode 0600.
    File,
    /// A non-extractable key in the HSM; the file system holds no key.
    Hsm,
}

impl CaKeyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CaKeyMode::File => "file",
            CaKeyMode::Hsm => "hsm",
        }
    }
}

/// A certificate and its key, PEM.
pub struct IssuedCertificate {
    pub cert_pem: String,
    pub key_pem: String,
    pub not_after: OffsetDateTime,
}

impl std::fmt::Debug for IssuedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCertificate")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// A certificate signed from a CSR (the key stays with the requester).
#[derive(Debug, Clone)]
pub struct SignedCertificate {
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
    pub not_after: OffsetDateTime,
}

/// An entry of a CRL.
#[derive(Debug, Clone)]
pub struct RevokedEntry {
    /// Serial number, hex of its DER content bytes (as [`CertInfo::serial`]).
    pub serial: String,
    pub revoked_at: OffsetDateTime,
    pub reason: Option<RevocationReason>,
}

pub struct CertificateAuthority {
    pub(crate) role: CaRole,
    pub(crate) cert_pem: String,
    pub(crate) cert_der: Vec<u8>,
    pub(crate) issuer: Issuer<'static, CaKey>,
    pub(crate) mode: CaKeyMode,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("role", &self.role)
            .field("key", &self.mode)
            .field("sha256", &self.sha256())
            .finish_non_exhaustive()
    }
}

pub(crate) fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CaError + 'a {
    move |source| CaError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

pub(crate) fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("operating system random source");
    bytes[0] &= 0x7f; // positive
    SerialNumber::from_slice(&bytes)
}

pub(crate) fn validity(params: &mut CertificateParams, now: OffsetDateTime, days: u32) {
    // Back-dated a little so a peer whose clock lags still accepts a fresh certificate.
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(days as i64);
}

fn ca_params(role: CaRole, days: u32, now: OffsetDateTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Rampart");
    dn.push(
        DnType::CommonName,
        format!("{} {}", role.common_name(), &Uuid::new_v4().simple().to_string()[..8]),
    );
    params.distinguished_name = dn;
    // The tenant root signs one level of per-project issuing CAs (see `project_ca`); the
    // infrastructure CA signs leaves only.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(match role {
        CaRole::Infrastructure => 0,
        CaRole::Tenant => 1,
    }));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    validity(&mut params, now, days);
    params
}

/// A DNS name or IP address a tenant certificate may carry: `[a-z0-9-]` labels (a leading
/// `*.` allowed), at most 253 bytes, or an IP address.
pub fn validate_certificate_name(name: &str) -> Result<SanType, CaError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let bad = || CaError::BadName(format!("{name:?} is not a DNS name or an IP address"));
    let host = name.strip_prefix("*.").unwrap_or(name);
    if name.len() > 253 || host.is_empty() {
        return Err(bad());
    }
    for label in host.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            return Err(bad());
        }
    }
    Ok(SanType::DnsName(name.to_string().try_into().map_err(|_| bad())?))
}

/// What a tenant certificate may be used for (its extended key usages).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TenantUsage {
    ServerAuth,
    ClientAuth,
}

/// The names a project may have certified by the tenant CA (13.3-2): DNS names inside its own
/// zones and nothing else: no IP address, no `localhost`, no other project's or the world's
/// names. The zones are `<project>.<domain>.<suffix>` and `<project id>.<suffix>` (see
/// [`TenantNamePolicy::for_project`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantNamePolicy {
    zones: Vec<String>,
}

impl TenantNamePolicy {
    /// The zones of a project: by name when its and its domain's names are DNS labels, and by
    /// id always (names can be reused after a deletion, ids cannot).
    pub fn for_project(project_id: uuid::Uuid, project: &str, domain: &str, suffix: &str) -> TenantNamePolicy {
        let label = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        let suffix = suffix.trim_matches('.').to_ascii_lowercase();
        let mut zones = vec![format!("{project_id}.{suffix}")];
        if label(project) && label(domain) {
            zones.push(format!("{project}.{domain}.{suffix}"));
        }
        TenantNamePolicy { zones }
    }

    pub fn zones(&self) -> &[String] {
        &self.zones
    }

    /// Checks every name against the zones and the usages against the names: a wildcard
    /// names many hosts, so it serves a server and never identifies a client.
    pub fn check(&self, names: &[String], usages: &[TenantUsage]) -> Result<(), CaError> {
        if usages.is_empty() {
            return Err(CaError::BadName("a certificate needs at least one usage".into()));
        }
        for name in names {
            validate_certificate_name(name)?;
            let host = name.strip_prefix("*.").unwrap_or(name);
            let inside = self
                .zones
                .iter()
                .any(|z| host == z || host.strip_suffix(z.as_str()).is_some_and(|rest| rest.ends_with('.')));
            if !inside {
                return Err(CaError::NameNotAllowed(format!(
                    "{name:?} is not in this project's zones ({}); the tenant CA certifies no IP address, no localhost and no other project's names",
                    self.zones.join(", ")
                )));
            }
            if name.starts_with("*.") && usages.contains(&TenantUsage::ClientAuth) {
                return Err(CaError::NameNotAllowed(format!(
                    "{name:?}: a wildcard name is for server certificates only (usages: [\"server_auth\"])"
                )));
            }
        }
        Ok(())
    }
}

impl CertificateAuthority {
    pub fn cert_path(data_dir: &Path) -> PathBuf {
        CaRole::Infrastructure.cert_path(data_dir)
    }

    pub fn key_path(data_dir: &Path) -> PathBuf {
        CaRole::Infrastructure.key_path(data_dir)
    }

    /// Loads the infrastructure CA of `data_dir` with a key file, creating it on first start.
    pub fn load_or_create(
        data_dir: &Path,
        days: u32,
        now: OffsetDateTime,
    ) -> Result<(CertificateAuthority, bool), CaError> {
        Self::load_or_create_in(data_dir, CaRole::Infrastructure, days, now, None)
    }

    /// Loads the CA `role` of `data_dir`, creating it on first start. With `hsm`, a new CA's
    /// key is generated in the token; an existing CA keeps its custody (a key file stays a key
    /// file, a key in the HSM needs `hsm`).
    pub fn load_or_create_in(
        data_dir: &Path,
        role: CaRole,
        days: u32,
        now: OffsetDateTime,
        hsm: Option<&Arc<Pkcs11Backend>>,
    ) -> Result<(CertificateAuthority, bool), CaError> {
        let cert_path = role.cert_path(data_dir);
        let key_path = role.key_path(data_dir);
        let marker = role.hsm_marker_path(data_dir);
        let tls_dir = key_path.parent().expect("tls dir");
        if marker.exists() {
            let Some(backend) = hsm else {
                return Err(CaError::HsmRequired { marker });
            };
            let label = std::fs::read_to_string(&marker).map_err(io("read", &marker))?;
            let label = label.trim();
            if cert_path.exists() {
                let cert_pem = std::fs::read_to_string(&cert_path).map_err(io("read", &cert_path))?;
                let key = HsmSigningKey::load(backend.clone(), label)?.ok_or_else(|| CaError::HsmKeyMissing {
                    label: label.to_string(),
                    cert: cert_path.clone(),
                })?;
                let key = CaKey::Hsm(key);
                let cert_pem = Self::allowing_project_cas(role, cert_pem, &key, &cert_path)?;
                let ca = Self::from_cert_and_key(role, &cert_pem, key, CaKeyMode::Hsm)?;
                if ca.public_key_of_cert()? != ca.issuer.key().der_bytes() {
                    return Err(CaError::KeyMismatch {
                        label: label.to_string(),
                        cert: cert_path,
                    });
                }
                return Ok((ca, false));
            }
            // The key was made but the certificate never written (a crash): finish the job.
            let key = HsmSigningKey::load_or_generate(backend.clone(), label)?;
            let ca = Self::generate_with(role, CaKey::Hsm(key), CaKeyMode::Hsm, days, now)?;
            fsutil::write_atomic(&cert_path, ca.cert_pem.as_bytes(), 0o644).map_err(io("write", &cert_path))?;
            return Ok((ca, true));
        }
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => {
                let cert_pem = std::fs::read_to_string(&cert_path).map_err(io("read", &cert_path))?;
                let key_pem = std::fs::read_to_string(&key_path).map_err(io("read", &key_path))?;
                let key = CaKey::File(Box::new(KeyPair::from_pem(&key_pem)?));
                let cert_pem = Self::allowing_project_cas(role, cert_pem, &key, &cert_path)?;
                Ok((Self::from_cert_and_key(role, &cert_pem, key, CaKeyMode::File)?, false))
            }
            (false, false) => {
                fsutil::ensure_private_dir(tls_dir).map_err(io("create", tls_dir))?;
                let ca = match hsm {
                    Some(backend) => {
                        let label = role.hsm_label();
                        let key = HsmSigningKey::load_or_generate(backend.clone(), label)?;
                        // Marker first: a crash before the certificate leaves a marker the next
                        // start completes, never a second key.
                        fsutil::write_secret(&marker, format!("{label}\n").as_bytes()).map_err(io("write", &marker))?;
                        Self::generate_with(role, CaKey::Hsm(key), CaKeyMode::Hsm, days, now)?
                    }
                    None => {
                        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
                        // Key first: a crash between the two writes leaves a key without
                        // certificate, which the next start reports instead of silently
                        // making a second CA.
                        fsutil::write_secret(&key_path, key.serialize_pem().as_bytes())
                            .map_err(io("write", &key_path))?;
                        Self::generate_with(role, CaKey::File(Box::new(key)), CaKeyMode::File, days, now)?
                    }
                };
                fsutil::write_atomic(&cert_path, ca.cert_pem.as_bytes(), 0o644).map_err(io("write", &cert_path))?;
                tracing::info!(role = role.as_str(), key = ca.mode.as_str(), sha256 = %ca.sha256(), path = %cert_path.display(), "created an internal CA");
                Ok((ca, true))
            }
            (true, false) => Err(CaError::HalfCa {
                path: cert_path,
                other: key_path,
            }),
            (false, true) => Err(CaError::HalfCa {
                path: key_path,
                other: cert_path,
            }),
        }
    }

    /// A new infrastructure CA with a software key (tests).
    pub fn generate(days: u32, now: OffsetDateTime) -> Result<CertificateAuthority, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        Self::generate_with(
            CaRole::Infrastructure,
            CaKey::File(Box::new(key)),
            CaKeyMode::File,
            days,
            now,
        )
    }

    /// A new self-signed CA around `key`.
    pub fn generate_with(
        role: CaRole,
        key: CaKey,
        mode: CaKeyMode,
        days: u32,
        now: OffsetDateTime,
    ) -> Result<CertificateAuthority, CaError> {
        let params = ca_params(role, days, now);
        let cert = params.self_signed(&key)?;
        Ok(CertificateAuthority {
            role,
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
            mode,
        })
    }

    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<CertificateAuthority, CaError> {
        let key = KeyPair::from_pem(key_pem)?;
        Self::from_cert_and_key(
            CaRole::Infrastructure,
            cert_pem,
            CaKey::File(Box::new(key)),
            CaKeyMode::File,
        )
    }

    pub(crate) fn from_cert_and_key(
        role: CaRole,
        cert_pem: &str,
        key: CaKey,
        mode: CaKeyMode,
    ) -> Result<CertificateAuthority, CaError> {
        let cert_der = pem_to_der(cert_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(CertificateAuthority {
            role,
            cert_pem: cert_pem.to_string(),
            cert_der,
            issuer,
            mode,
        })
    }

    /// A tenant root made before project CAs existed has pathLenConstraint 0, which forbids
    /// the intermediate under it: its certificate is signed again, same subject, key and
    /// validity, with pathLenConstraint 1, and written over `cert_path`. Certificates it
    /// signed still chain to it (same name, same key); what trusts `tenant-ca.pem` must
    /// take the new file to accept leaves of project CAs.
    /// (A certificate whose key is not `key` is left as it is, for the caller's key check.)
    fn allowing_project_cas(role: CaRole, cert_pem: String, key: &CaKey, cert_path: &Path) -> Result<String, CaError> {
        use x509_parser::prelude::{AttributeTypeAndValue, FromDer, X509Certificate};
        if role != CaRole::Tenant {
            return Ok(cert_pem);
        }
        let bad = |e: &dyn std::fmt::Display| CaError::BadCertificate(e.to_string());
        let der = pem_to_der(&cert_pem)?;
        let (_, cert) = X509Certificate::from_der(&der).map_err(|e| bad(&e))?;
        if cert.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
            return Ok(cert_pem);
        }
        let path_len = cert
            .basic_constraints()
            .map_err(|e| bad(&e))?
            .and_then(|b| b.value.path_len_constraint);
        if path_len != Some(0) {
            return Ok(cert_pem);
        }
        let text = |it: &mut dyn Iterator<Item = &AttributeTypeAndValue<'_>>| -> Result<String, CaError> {
            it.next()
                .and_then(|a| a.as_str().ok())
                .map(str::to_string)
                .ok_or_else(|| CaError::BadCertificate("the tenant CA has no O or CN".into()))
        };
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, text(&mut cert.subject().iter_organization())?);
        dn.push(DnType::CommonName, text(&mut cert.subject().iter_common_name())?);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        params.not_before =
            OffsetDateTime::from_unix_timestamp(cert.validity().not_before.timestamp()).map_err(|e| bad(&e))?;
        params.not_after =
            OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp()).map_err(|e| bad(&e))?;
        let old_subject = cert.subject().as_raw().to_vec();
        let new = params.self_signed(key)?;
        let (_, parsed) = X509Certificate::from_der(new.der()).map_err(|e| bad(&e))?;
        if parsed.subject().as_raw() != old_subject.as_slice() {
            return Err(CaError::BadCertificate(
                "the tenant CA cannot be signed again with the same subject; move it aside to make a new one".into(),
            ));
        }
        fsutil::write_atomic(cert_path, new.pem().as_bytes(), 0o644).map_err(io("write", cert_path))?;
        tracing::warn!(path = %cert_path.display(), "the tenant CA certificate was signed again with pathLenConstraint 1 so it can sign project CAs: clients that trust the old file must take the new one");
        Ok(new.pem())
    }

    pub(crate) fn public_key_of_cert(&self) -> Result<Vec<u8>, CaError> {
        use x509_parser::prelude::*;
        let (_, cert) =
            X509Certificate::from_der(&self.cert_der).map_err(|e| CaError::BadCertificate(e.to_string()))?;
        Ok(cert.public_key().subject_public_key.data.to_vec())
    }

    pub fn role(&self) -> CaRole {
        self.role
    }

    /// Where the private key is kept.
    pub fn key_mode(&self) -> CaKeyMode {
        self.mode
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// SHA-256 of the CA certificate (DER), hex: what join tokens pin.
    pub fn sha256(&self) -> String {
        hex::encode(Sha256::digest(&self.cert_der))
    }

    /// A TLS server certificate for `names` (DNS names and IP addresses).
    pub fn issue_server(&self, names: &[String], days: u32, now: OffsetDateTime) -> Result<IssuedCertificate, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Rampart");
        dn.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_else(|| "rampart".into()),
        );
        params.distinguished_name = dn;
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(n.clone().try_into()?)),
            })
            .collect::<Result<_, rcgen::Error>>()?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, now, days);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCertificate {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_after: params.not_after,
        })
    }

    /// Signs an agent's CSR: only its public key is used; the certificate names `node_id`.
    pub fn sign_node_csr(
        &self,
        csr_pem: &str,
        node_id: Uuid,
        days: u32,
        now: OffsetDateTime,
    ) -> Result<(String, Vec<u8>, OffsetDateTime), CaError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| CaError::BadCsr(e.to_string()))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Rampart nodes");
        dn.push(DnType::CommonName, node_id.to_string());
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(format!("{NODE_URI_PREFIX}{node_id}").try_into()?)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, now, days);
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        Ok((cert.pem(), cert.der().to_vec(), params.not_after))
    }

    /// The DNS names and IP addresses a CSR asks for (its subject alternative names).
    pub fn csr_names(csr_pem: &str) -> Result<Vec<String>, CaError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| CaError::BadCsr(e.to_string()))?;
        csr.params
            .subject_alt_names
            .iter()
            .map(|san| match san {
                SanType::DnsName(d) => Ok(d.as_str().to_string()),
                SanType::IpAddress(ip) => Ok(ip.to_string()),
                _ => Err(CaError::BadName(
                    "the CSR asks for a name that is not a DNS name or an IP address".into(),
                )),
            })
            .collect()
    }

    /// Signs a tenant's CSR for `names` and `usages`, both checked against the project's
    /// `policy` first. Only the CSR's public key is taken: the subject is the first name, the
    /// CSR's own extensions (a CA flag, other usages) are ignored.
    pub fn sign_tenant_csr(
        &self,
        csr_pem: &str,
        names: &[String],
        policy: &TenantNamePolicy,
        usages: &[TenantUsage],
        days: u32,
        now: OffsetDateTime,
    ) -> Result<SignedCertificate, CaError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| CaError::BadCsr(e.to_string()))?;
        if names.is_empty() || names.len() > MAX_CERTIFICATE_NAMES {
            return Err(CaError::BadName(format!(
                "a certificate carries 1 to {MAX_CERTIFICATE_NAMES} names"
            )));
        }
        policy.check(names, usages)?;
        let mut usages = usages.to_vec();
        usages.sort();
        usages.dedup();
        let sans = names
            .iter()
            .map(|n| validate_certificate_name(n))
            .collect::<Result<Vec<_>, _>>()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Rampart tenants");
        dn.push(DnType::CommonName, names[0].clone());
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = usages
            .iter()
            .map(|u| match u {
                TenantUsage::ServerAuth => ExtendedKeyUsagePurpose::ServerAuth,
                TenantUsage::ClientAuth => ExtendedKeyUsagePurpose::ClientAuth,
            })
            .collect();
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, now, days);
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        Ok(SignedCertificate {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            not_after: params.not_after,
        })
    }

    /// A CRL of this CA listing `revoked`, valid from `now` for `validity`.
    pub fn crl(
        &self,
        revoked: &[RevokedEntry],
        number: u64,
        now: OffsetDateTime,
        validity: Duration,
    ) -> Result<Vec<u8>, CaError> {
        let revoked_certs = revoked
            .iter()
            .map(|r| {
                let serial = hex::decode(&r.serial)
                    .map_err(|_| CaError::BadCertificate(format!("serial {:?} is not hex", r.serial)))?;
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&serial),
                    revocation_time: r.revoked_at,
                    reason_code: r.reason,
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, CaError>>()?;
        let params = CertificateRevocationListParams {
            this_update: now,
            next_update: now + validity,
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.der().to_vec())
    }
}

/// A fresh key pair and a CSR for it (what an agent sends to join or renew); the key PEM
/// stays local.
pub fn node_key_and_csr() -> Result<(String, String), CaError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

pub fn pem_to_der(pem: &str) -> Result<Vec<u8>, CaError> {
    use x509_parser::pem::parse_x509_pem;
    let (_, p) = parse_x509_pem(pem.as_bytes()).map_err(|e| CaError::BadCertificate(e.to_string()))?;
    Ok(p.contents)
}

/// What the controller needs from a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub sha256: String,
    /// Hex of the serial number's DER content bytes.
    pub serial: String,
    pub subject: String,
    pub issuer: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub is_ca: bool,
    /// The node id of a node certificate (URI SAN `urn:rampart:node:<uuid>`).
    pub node_id: Option<Uuid>,
    /// DNS and IP subject alternative names, for server certificates.
    pub names: Vec<String>,
}

pub fn cert_info(der: &[u8]) -> Result<CertInfo, CaError> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| CaError::BadCertificate(e.to_string()))?;
    let time = |t: ASN1Time| {
        OffsetDateTime::from_unix_timestamp(t.timestamp()).map_err(|e| CaError::BadCertificate(e.to_string()))
    };
    let not_before = time(cert.validity().not_before)?;
    let not_after = time(cert.validity().not_after)?;
    let mut node_id = None;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(uri) => {
                    if let Some(id) = uri.strip_prefix(NODE_URI_PREFIX) {
                        node_id = Uuid::try_parse(id).ok();
                    }
                }
                GeneralName::DNSName(d) => names.push(d.to_string()),
                GeneralName::IPAddress(ip) => match ip.len() {
                    4 => names.push(IpAddr::from(<[u8; 4]>::try_from(*ip).expect("4 bytes")).to_string()),
                    16 => names.push(IpAddr::from(<[u8; 16]>::try_from(*ip).expect("16 bytes")).to_string()),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Ok(CertInfo {
        sha256: hex::encode(Sha256::digest(der)),
        serial: hex::encode(cert.raw_serial()),
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        not_before,
        not_after,
        is_ca: cert.is_ca(),
        node_id,
        names,
    })
}

pub fn cert_info_pem(pem: &str) -> Result<CertInfo, CaError> {
    cert_info(&pem_to_der(pem)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    #[test]
    fn spec_12_3_1_ca_is_created_once_with_private_key_0600() {
        let dir = tempfile::tempdir().unwrap();
        let (a, created) = CertificateAuthority::load_or_create(dir.path(), 3650, now()).unwrap();
        assert!(created);
        let (b, created) = CertificateAuthority::load_or_create(dir.path(), 3650, now()).unwrap();
        assert!(!created);
        assert_eq!(a.sha256(), b.sha256());
        assert_eq!(
            fsutil::mode_of(&CertificateAuthority::key_path(dir.path())).unwrap(),
            0o600
        );
        assert_eq!(
            fsutil::mode_of(&CertificateAuthority::cert_path(dir.path())).unwrap(),
            0o644
        );
        assert_eq!(fsutil::mode_of(&dir.path().join("tls")).unwrap(), 0o700);
    }

    #[test]
    fn half_a_ca_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        CertificateAuthority::load_or_create(dir.path(), 3650, now()).unwrap();
        std::fs::remove_file(CertificateAuthority::key_path(dir.path())).unwrap();
        let err = CertificateAuthority::load_or_create(dir.path(), 3650, now()).unwrap_err();
        assert!(matches!(err, CaError::HalfCa { .. }), "{err}");
    }

    #[test]
    fn server_certificate_names_and_lifetime() {
        let ca = CertificateAuthority::generate(3650, now()).unwrap();
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
        let issued = ca.issue_server(&names, 90, now()).unwrap();
        let info = cert_info_pem(&issued.cert_pem).unwrap();
        assert_eq!(info.names, names);
        assert!(info.node_id.is_none());
        let days = (info.not_after - now()).whole_days();
        assert!((89..=90).contains(&days), "{days}");
    }

    #[test]
    fn spec_12_3_1_node_certificate_carries_only_the_node_id() {
        let ca = CertificateAuthority::generate(3650, now()).unwrap();
        // A CSR that asks to be someone else: a server name and a CA.
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = CertificateParams::new(vec!["controller.example".to_string()]).unwrap();
        p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let csr = p.serialize_request(&key).unwrap().pem().unwrap();
        let id = Uuid::new_v4();
        let (pem, der, _) = ca.sign_node_csr(&csr, id, 90, now()).unwrap();
        let info = cert_info(&der).unwrap();
        assert_eq!(info.node_id, Some(id));
        assert!(info.names.is_empty(), "{:?}", info.names);
        assert_eq!(cert_info_pem(&pem).unwrap(), info);
        use x509_parser::prelude::*;
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert!(!cert.is_ca());
    }

    #[test]
    fn a_tampered_csr_is_refused() {
        let ca = CertificateAuthority::generate(3650, now()).unwrap();
        let (_, csr) = node_key_and_csr().unwrap();
        assert!(ca.sign_node_csr("not a csr", Uuid::new_v4(), 90, now()).is_err());
        // Flip one bit of the signature (last bytes of the DER) and re-encode.
        let der = pem_der(&csr);
        let mut bad = der.clone();
        let n = bad.len() - 3;
        bad[n] ^= 1;
        let bad_pem = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            base64_encode(&bad)
        );
        let err = ca.sign_node_csr(&bad_pem, Uuid::new_v4(), 90, now()).unwrap_err();
        assert!(matches!(err, CaError::BadCsr(_)), "{err}");
    }

    /// Verifies `leaf_der` for server authentication against `ca`, optionally with a CRL.
    fn webpki_verify(ca: &CertificateAuthority, leaf_der: &[u8], crl: Option<&[u8]>) -> Result<(), webpki::Error> {
        use rustls_pki_types::{CertificateDer, UnixTime};
        let ca_der = CertificateDer::from(ca.cert_der());
        let anchors = [webpki::anchor_from_trusted_cert(&ca_der).unwrap()];
        let leaf = CertificateDer::from(leaf_der);
        let ee = webpki::EndEntityCert::try_from(&leaf).unwrap();
        let crl =
            crl.map(|d| webpki::CertRevocationList::from(webpki::BorrowedCertRevocationList::from_der(d).unwrap()));
        let crls: Vec<&webpki::CertRevocationList<'_>> = crl.iter().collect();
        let revocation = (!crls.is_empty()).then(|| webpki::RevocationOptionsBuilder::new(&crls).unwrap().build());
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &[],
            UnixTime::now(),
            webpki::KeyUsage::server_auth(),
            revocation,
            None,
        )
        .map(|_| ())
    }

    fn tenant_csr(names: &[&str], ask_ca: bool) -> String {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        if ask_ca {
            p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        }
        p.serialize_request(&key).unwrap().pem().unwrap()
    }

    #[test]
    fn spec_13_3_2_tenant_csr_gets_only_the_names_asked_and_no_ca_flag() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, created) =
            CertificateAuthority::load_or_create_in(dir.path(), CaRole::Tenant, 3650, now(), None).unwrap();
        assert!(created);
        assert!(dir.path().join("tenant-ca.pem").exists());
        assert_eq!(fsutil::mode_of(&CaRole::Tenant.key_path(dir.path())).unwrap(), 0o600);
        let csr = tenant_csr(&["shop.example.com", "10.0.0.5"], true);
        assert_eq!(
            CertificateAuthority::csr_names(&csr).unwrap(),
            vec!["shop.example.com".to_string(), "10.0.0.5".to_string()]
        );
        let policy = TenantNamePolicy::for_project(uuid::Uuid::nil(), "shop", "example", "com");
        let both = [TenantUsage::ServerAuth, TenantUsage::ClientAuth];
        let names = vec!["shop.example.com".to_string(), "www.shop.example.com".to_string()];
        let signed = ca.sign_tenant_csr(&csr, &names, &policy, &both, 90, now()).unwrap();
        let info = cert_info(&signed.cert_der).unwrap();
        assert_eq!(info.names, names);
        assert!(!info.is_ca, "a CSR asking to be a CA gets a leaf");
        assert!(info.node_id.is_none());
        webpki_verify(&ca, &signed.cert_der, None).expect("chains to the tenant CA");
        // Names that are not DNS names or addresses are refused, as are too many.
        for bad in ["UPPER.example", "a..b", "-x.example", "urn:rampart:node:1", "", "a b"] {
            assert!(
                matches!(
                    ca.sign_tenant_csr(&csr, &[bad.to_string()], &policy, &both, 90, now()),
                    Err(CaError::BadName(_))
                ),
                "{bad:?}"
            );
        }
        let many: Vec<String> = (0..=MAX_CERTIFICATE_NAMES)
            .map(|i| format!("h{i}.shop.example.com"))
            .collect();
        assert!(matches!(
            ca.sign_tenant_csr(&csr, &many, &policy, &both, 90, now()),
            Err(CaError::BadName(_))
        ));
        // The tenant CA is not the infrastructure CA: its certificates do not chain to ca.pem.
        let (infra, _) = CertificateAuthority::load_or_create(dir.path(), 3650, now()).unwrap();
        assert_ne!(infra.sha256(), ca.sha256());
        assert!(webpki_verify(&infra, &signed.cert_der, None).is_err());
    }

    #[test]
    fn spec_13_3_2_tenant_ca_signs_only_the_projects_own_names_and_the_usages_asked() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = CertificateAuthority::load_or_create_in(dir.path(), CaRole::Tenant, 3650, now(), None).unwrap();
        let a_id = uuid::Uuid::new_v4();
        let a = TenantNamePolicy::for_project(a_id, "proj-a", "default", "rampart.internal");
        let csr = tenant_csr(&["x.proj-a.default.rampart.internal"], false);
        let server = [TenantUsage::ServerAuth];
        let both = [TenantUsage::ServerAuth, TenantUsage::ClientAuth];
        for foreign in [
            "billing.proj-b.internal",
            "billing.proj-b.default.rampart.internal",
            "*.proj-b.example.com",
            "localhost",
            "127.0.0.1",
            "::1",
            "proj-a.default.rampart.internal.attacker.test",
            "xproj-a.default.rampart.internal",
            "rampart.internal",
        ] {
            let e = ca
                .sign_tenant_csr(&csr, &[foreign.to_string()], &a, &server, 90, now())
                .unwrap_err();
            assert!(matches!(e, CaError::NameNotAllowed(_)), "{foreign}: {e}");
        }
        // Its own names, by name and by id; a wildcard only for a server.
        let own = vec![
            "api.proj-a.default.rampart.internal".to_string(),
            format!("db.{a_id}.rampart.internal"),
            "*.web.proj-a.default.rampart.internal".to_string(),
        ];
        let signed = ca.sign_tenant_csr(&csr, &own, &a, &server, 90, now()).unwrap();
        let der = signed.cert_der.clone();
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        let eku = parsed.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth, "{eku:?}");
        assert!(matches!(
            ca.sign_tenant_csr(&csr, &own, &a, &both, 90, now()),
            Err(CaError::NameNotAllowed(_))
        ));
        let client = ca
            .sign_tenant_csr(&csr, &own[..1], &a, &[TenantUsage::ClientAuth], 90, now())
            .unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&client.cert_der).unwrap();
        let eku = parsed.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth, "{eku:?}");
    }

    #[test]
    fn spec_13_3_2_crl_lists_revoked_serials_and_verifiers_refuse_them() {
        let ca = CertificateAuthority::generate(3650, now()).unwrap();
        let a = ca.issue_server(&["a.example".to_string()], 90, now()).unwrap();
        let b = ca.issue_server(&["b.example".to_string()], 90, now()).unwrap();
        let (a_der, b_der) = (pem_der(&a.cert_pem), pem_der(&b.cert_pem));
        let revoked = [RevokedEntry {
            serial: cert_info(&a_der).unwrap().serial,
            revoked_at: now(),
            reason: Some(RevocationReason::KeyCompromise),
        }];
        let crl = ca.crl(&revoked, 7, now(), Duration::days(1)).unwrap();
        assert_eq!(
            webpki_verify(&ca, &a_der, Some(&crl)).unwrap_err(),
            webpki::Error::CertRevoked
        );
        webpki_verify(&ca, &b_der, Some(&crl)).expect("not revoked");
        // An empty CRL is still a signed, valid CRL.
        let empty = ca.crl(&[], 8, now(), Duration::days(1)).unwrap();
        webpki_verify(&ca, &a_der, Some(&empty)).unwrap();
        // A CRL signed by another CA is not accepted for this one.
        let other = CertificateAuthority::generate(3650, now()).unwrap();
        let forged = other.crl(&revoked, 9, now(), Duration::days(1)).unwrap();
        assert!(webpki_verify(&ca, &b_der, Some(&forged)).is_err());
    }

    #[test]
    fn spec_12_3_1_ca_key_in_the_hsm_writes_no_key_file_and_reloads() {
        let Some(b) = crate::testutil::backend() else { return };
        let dir = tempfile::tempdir().unwrap();
        let (ca, created) =
            CertificateAuthority::load_or_create_in(dir.path(), CaRole::Infrastructure, 3650, now(), Some(&b)).unwrap();
        assert!(created);
        assert_eq!(ca.key_mode(), CaKeyMode::Hsm);
        assert!(!CaRole::Infrastructure.key_path(dir.path()).exists(), "no key file");
        let marker = CaRole::Infrastructure.hsm_marker_path(dir.path());
        assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "rampart:ca");
        assert_eq!(fsutil::mode_of(&marker).unwrap(), 0o600);
        let issued = ca.issue_server(&["localhost".to_string()], 90, now()).unwrap();
        webpki_verify(&ca, &pem_der(&issued.cert_pem), None).expect("HSM-signed certificate verifies");
        let crl = ca.crl(&[], 1, now(), Duration::days(1)).unwrap();
        webpki_verify(&ca, &pem_der(&issued.cert_pem), Some(&crl)).expect("HSM-signed CRL verifies");
        // Reload: same CA, same key; without the HSM the CA refuses to load.
        let (again, created) =
            CertificateAuthority::load_or_create_in(dir.path(), CaRole::Infrastructure, 3650, now(), Some(&b)).unwrap();
        assert!(!created);
        assert_eq!(again.sha256(), ca.sha256());
        assert_eq!(again.key_mode(), CaKeyMode::Hsm);
        assert!(matches!(
            CertificateAuthority::load_or_create_in(dir.path(), CaRole::Infrastructure, 3650, now(), None),
            Err(CaError::HsmRequired { .. })
        ));
        // The tenant CA of the same token has its own key.
        let (tenant, _) =
            CertificateAuthority::load_or_create_in(dir.path(), CaRole::Tenant, 3650, now(), Some(&b)).unwrap();
        assert_eq!(tenant.key_mode(), CaKeyMode::Hsm);
        assert_ne!(tenant.public_key_of_cert().unwrap(), ca.public_key_of_cert().unwrap());
        // A CA whose key file exists keeps it, HSM or not.
        let file_dir = tempfile::tempdir().unwrap();
        CertificateAuthority::load_or_create(file_dir.path(), 3650, now()).unwrap();
        let (kept, _) =
            CertificateAuthority::load_or_create_in(file_dir.path(), CaRole::Infrastructure, 3650, now(), Some(&b))
                .unwrap();
        assert_eq!(kept.key_mode(), CaKeyMode::File);
    }

    fn pem_der(pem: &str) -> Vec<u8> {
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        STANDARD.decode(body).unwrap()
    }

    fn base64_encode(data: &[u8]) -> String {
        STANDARD.encode(data)
    }
}
