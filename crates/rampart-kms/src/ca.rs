//! The internal CA. Created on first start (ECDSA P-256), its certificate is written to
//! `<data-dir>/ca.pem` for clients and its key to `<data-dir>/tls/ca-key.pem` (0600).
//!
//! Agents get certificates whose only identity is the node id, as a URI SAN
//! `urn:rampart:node:<uuid>`: whatever the CSR asks for is ignored but its public key.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rampart_common::fsutil;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

pub const NODE_URI_PREFIX: &str = "urn:rampart:node:";

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
    #[error("{path} exists but {other} does not: refusing to create a new CA over half of an old one")]
    HalfCa { path: PathBuf, other: PathBuf },
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

pub struct CertificateAuthority {
    cert_pem: String,
    cert_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("sha256", &self.sha256())
            .finish_non_exhaustive()
    }
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CaError + 'a {
    move |source| CaError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("operating system random source");
    bytes[0] &= 0x7f; // positive
    SerialNumber::from_slice(&bytes)
}

fn validity(params: &mut CertificateParams, now: OffsetDateTime, days: u32) {
    // Back-dated a little so a peer whose clock lags still accepts a fresh certificate.
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(days as i64);
}

impl CertificateAuthority {
    pub fn cert_path(data_dir: &Path) -> PathBuf {
        data_dir.join("ca.pem")
    }

    pub fn key_path(data_dir: &Path) -> PathBuf {
        data_dir.join("tls").join("ca-key.pem")
    }

    /// Loads the CA of `data_dir`, creating it on first start.
    pub fn load_or_create(
        data_dir: &Path,
        days: u32,
        now: OffsetDateTime,
    ) -> Result<(CertificateAuthority, bool), CaError> {
        let cert_path = Self::cert_path(data_dir);
        let key_path = Self::key_path(data_dir);
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => {
                let cert_pem = std::fs::read_to_string(&cert_path).map_err(io("read", &cert_path))?;
                let key_pem = std::fs::read_to_string(&key_path).map_err(io("read", &key_path))?;
                Ok((Self::from_pem(&cert_pem, &key_pem)?, false))
            }
            (false, false) => {
                let ca = Self::generate(days, now)?;
                fsutil::ensure_private_dir(key_path.parent().expect("tls dir")).map_err(io("create", &key_path))?;
                // Key first: a crash between the two writes leaves a key without certificate,
                // which the next start reports instead of silently making a second CA.
                fsutil::write_secret(&key_path, ca.issuer.key().serialize_pem().as_bytes())
                    .map_err(io("write", &key_path))?;
                fsutil::write_atomic(&cert_path, ca.cert_pem.as_bytes(), 0o644).map_err(io("write", &cert_path))?;
                tracing::info!(sha256 = %ca.sha256(), path = %cert_path.display(), "created the internal CA");
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

    pub fn generate(days: u32, now: OffsetDateTime) -> Result<CertificateAuthority, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Rampart");
        dn.push(
            DnType::CommonName,
            format!("Rampart internal CA {}", &Uuid::new_v4().simple().to_string()[..8]),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        validity(&mut params, now, days);
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        let cert_der = cert.der().to_vec();
        Ok(CertificateAuthority {
            cert_pem,
            cert_der,
            issuer: Issuer::new(params, key),
        })
    }

    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<CertificateAuthority, CaError> {
        let key = KeyPair::from_pem(key_pem)?;
        let cert_der = pem_to_der(cert_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(CertificateAuthority {
            cert_pem: cert_pem.to_string(),
            cert_der,
            issuer,
        })
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
}

/// A fresh key pair and a CSR for it (what an agent sends to join); the key PEM stays local.
pub fn node_key_and_csr() -> Result<(String, String), CaError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

fn pem_to_der(pem: &str) -> Result<Vec<u8>, CaError> {
    use x509_parser::pem::parse_x509_pem;
    let (_, p) = parse_x509_pem(pem.as_bytes()).map_err(|e| CaError::BadCertificate(e.to_string()))?;
    Ok(p.contents)
}

/// What the controller needs from a peer certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub sha256: String,
    pub not_after: OffsetDateTime,
    /// The node id of a node certificate (URI SAN `urn:rampart:node:<uuid>`).
    pub node_id: Option<Uuid>,
    /// DNS and IP subject alternative names, for server certificates.
    pub names: Vec<String>,
}

pub fn cert_info(der: &[u8]) -> Result<CertInfo, CaError> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| CaError::BadCertificate(e.to_string()))?;
    let not_after = OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp())
        .map_err(|e| CaError::BadCertificate(e.to_string()))?;
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
        not_after,
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

    fn pem_der(pem: &str) -> Vec<u8> {
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        STANDARD.decode(body).unwrap()
    }

    fn base64_encode(data: &[u8]) -> String {
        STANDARD.encode(data)
    }
}
