//! The server side of TLS: TLS 1.2 and 1.3 with AEAD suites only (spec 9.3-2, 9.3-4, 13.2-3),
//! a server certificate from the internal CA that is renewed in place, and client
//! certificates verified against the same CA (agents; optional on the connection, required by
//! the agent routes).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rampart_api::tls::{PROTOCOL_VERSIONS, certs_from_pem, key_from_pem, provider};
use rampart_common::fsutil;
use rampart_kms::CertificateAuthority;
use rampart_kms::ca::cert_info_pem;
use rustls::RootCertStore;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use time::OffsetDateTime;

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Ca(#[from] rampart_kms::CaError),
    #[error(transparent)]
    Pem(#[from] rampart_api::tls::TlsError),
    #[error("TLS configuration")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The names the API server certificate must carry.
pub fn server_names(listen: &[SocketAddr], extra: &[String]) -> Vec<String> {
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let host = host.trim().to_ascii_lowercase();
        if !host.is_empty() && host.parse::<IpAddr>().is_err() {
            names.push(host);
        }
    }
    for addr in listen {
        if !addr.ip().is_unspecified() {
            names.push(addr.ip().to_string());
        }
    }
    names.extend(extra.iter().cloned());
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

/// The server certificate currently served; swapped in place on renewal.
#[derive(Debug)]
pub struct ServerCert {
    current: RwLock<Arc<CertifiedKey>>,
    info: RwLock<(OffsetDateTime, OffsetDateTime, Vec<String>)>,
    dir: PathBuf,
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("cert lock").clone())
    }
}

fn certified_key(cert_pem: &str, key_pem: &str) -> Result<CertifiedKey, TlsSetupError> {
    let chain = certs_from_pem(cert_pem.as_bytes())?;
    let key = key_from_pem(key_pem.as_bytes())?;
    Ok(CertifiedKey::from_der(chain, key, &provider())?)
}

impl ServerCert {
    fn paths(dir: &Path) -> (PathBuf, PathBuf) {
        (dir.join("server.pem"), dir.join("server-key.pem"))
    }

    /// Loads the server certificate of `data_dir/tls`, issuing a new one when there is none,
    /// when it lacks one of `names`, or when two thirds of its lifetime are gone.
    pub fn load_or_issue(
        ca: &CertificateAuthority,
        data_dir: &Path,
        names: &[String],
        days: u32,
        now: OffsetDateTime,
    ) -> Result<ServerCert, TlsSetupError> {
        let dir = data_dir.join("tls");
        fsutil::ensure_private_dir(&dir).map_err(|source| TlsSetupError::Io {
            action: "create",
            path: dir.clone(),
            source,
        })?;
        let (cert_path, key_path) = Self::paths(&dir);
        let existing = match (std::fs::read_to_string(&cert_path), std::fs::read_to_string(&key_path)) {
            (Ok(c), Ok(k)) => Some((c, k)),
            _ => None,
        };
        let (cert_pem, key_pem) = match existing {
            Some((c, k)) if !Self::needs_renewal(&c, names, now) && ca_signed(ca, &c, now) => (c, k),
            _ => {
                let issued = ca.issue_server(names, days, now)?;
                Self::write(&dir, &issued.cert_pem, &issued.key_pem)?;
                tracing::info!(names = ?names, not_after = %rampart_common::time::rfc3339(issued.not_after), "issued the API server certificate");
                (issued.cert_pem, issued.key_pem.clone())
            }
        };
        let ck = certified_key(&cert_pem, &key_pem)?;
        let info = cert_info_pem(&cert_pem)?;
        Ok(ServerCert {
            current: RwLock::new(Arc::new(ck)),
            info: RwLock::new((info.not_before, info.not_after, info.names)),
            dir,
        })
    }

    fn write(dir: &Path, cert_pem: &str, key_pem: &str) -> Result<(), TlsSetupError> {
        let (cert_path, key_path) = Self::paths(dir);
        fsutil::write_secret(&key_path, key_pem.as_bytes()).map_err(|source| TlsSetupError::Io {
            action: "write",
            path: key_path.clone(),
            source,
        })?;
        fsutil::write_atomic(&cert_path, cert_pem.as_bytes(), 0o644).map_err(|source| TlsSetupError::Io {
            action: "write",
            path: cert_path.clone(),
            source,
        })
    }

    /// Renewal is due after two thirds of the lifetime, or when a name is missing.
    fn needs_renewal(cert_pem: &str, names: &[String], now: OffsetDateTime) -> bool {
        match cert_info_pem(cert_pem) {
            Ok(info) => {
                let missing = names.iter().any(|n| !info.names.contains(n));
                missing || now >= renewal_due(info.not_before, info.not_after)
            }
            Err(_) => true,
        }
    }

    /// Renews the certificate in place if due; returns whether it did.
    pub fn renew_if_due(
        &self,
        ca: &CertificateAuthority,
        days: u32,
        now: OffsetDateTime,
    ) -> Result<bool, TlsSetupError> {
        if now < self.renewal_due() {
            return Ok(false);
        }
        let names = self.info.read().expect("info lock").2.clone();
        let issued = ca.issue_server(&names, days, now)?;
        let info = cert_info_pem(&issued.cert_pem)?;
        let ck = certified_key(&issued.cert_pem, &issued.key_pem)?;
        // On disk first: a restart must not go back to the old certificate. The listener stays
        // up; handshakes from now on get the new certificate, open connections keep theirs.
        Self::write(&self.dir, &issued.cert_pem, &issued.key_pem)?;
        *self.current.write().expect("cert lock") = Arc::new(ck);
        *self.info.write().expect("info lock") = (info.not_before, info.not_after, names);
        tracing::info!(serial = %info.serial, not_after = %rampart_common::time::rfc3339(info.not_after), "renewed the API server certificate");
        Ok(true)
    }

    pub fn not_after(&self) -> OffsetDateTime {
        self.info.read().expect("info lock").1
    }

    /// When two thirds of the current certificate's lifetime are gone.
    pub fn renewal_due(&self) -> OffsetDateTime {
        let info = self.info.read().expect("info lock");
        renewal_due(info.0, info.1)
    }
}

/// Certificates of the internal CA are renewed once two thirds of their lifetime are gone
/// (spec 13.3-2): a third of it is left to retry through an outage.
pub fn renewal_due(not_before: OffsetDateTime, not_after: OffsetDateTime) -> OffsetDateTime {
    not_before + (not_after - not_before) * 2 / 3
}

fn ca_signed(ca: &CertificateAuthority, cert_pem: &str, now: OffsetDateTime) -> bool {
    // A certificate from an older CA (the CA was replaced) must be reissued.
    let Ok(chain) = certs_from_pem(cert_pem.as_bytes()) else {
        return false;
    };
    let mut roots = RootCertStore::empty();
    if roots.add(ca.cert_der().to_vec().into()).is_err() {
        return false;
    }
    let Ok(verifier) = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider()).build()
    else {
        return false;
    };
    use rustls::client::danger::ServerCertVerifier;
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("valid name");
    let at = rustls::pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        now.unix_timestamp().max(0) as u64
    ));
    verifier
        .verify_server_cert(&chain[0], &chain[1..], &name, &[], at)
        .is_ok()
}

/// The rustls configuration of the API listener.
pub fn server_config(ca: &CertificateAuthority, cert: Arc<ServerCert>) -> Result<rustls::ServerConfig, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert_der().to_vec().into())?;
    // Client certificates are optional on the connection (people use bearer tokens) but, when
    // presented, must chain to our CA; the agent routes then require one.
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_cover_loopback_listen_addresses_and_extras() {
        let names = server_names(
            &[
                "0.0.0.0:8443".parse().unwrap(),
                "10.1.2.3:8443".parse().unwrap(),
                "127.0.0.1:8443".parse().unwrap(),
            ],
            &["api.example".into()],
        );
        assert!(names.contains(&"localhost".to_string()));
        assert!(names.contains(&"10.1.2.3".to_string()));
        assert!(names.contains(&"api.example".to_string()));
        assert!(!names.contains(&"0.0.0.0".to_string()));
        assert_eq!(names.iter().filter(|n| *n == "127.0.0.1").count(), 1);
    }

    #[test]
    fn spec_12_3_1_server_certificate_is_reused_renewed_and_reissued_for_new_names() {
        let dir = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::now_utc();
        let (ca, _) = CertificateAuthority::load_or_create(dir.path(), 3650, now).unwrap();
        let names = vec!["localhost".to_string()];
        let a = ServerCert::load_or_issue(&ca, dir.path(), &names, 90, now).unwrap();
        let b = ServerCert::load_or_issue(&ca, dir.path(), &names, 90, now).unwrap();
        assert_eq!(a.not_after(), b.not_after(), "reused");
        assert_eq!(fsutil::mode_of(&dir.path().join("tls/server-key.pem")).unwrap(), 0o600);
        let more = vec!["localhost".to_string(), "10.9.9.9".to_string()];
        let c = ServerCert::load_or_issue(&ca, dir.path(), &more, 90, now + time::Duration::seconds(2)).unwrap();
        assert_ne!(a.not_after(), c.not_after(), "reissued for a new name");
        assert!(!c.renew_if_due(&ca, 90, now + time::Duration::days(59)).unwrap());
        assert!(c.renew_if_due(&ca, 90, now + time::Duration::days(61)).unwrap());
        assert!(c.not_after() > now + time::Duration::days(150));
        // A new CA makes the old certificate unusable: reissued.
        let other = tempfile::tempdir().unwrap();
        let (ca2, _) = CertificateAuthority::load_or_create(other.path(), 3650, now).unwrap();
        let later = now + time::Duration::days(61);
        let server_pem = || std::fs::read_to_string(dir.path().join("tls/server.pem")).unwrap();
        assert!(!ca_signed(&ca2, &server_pem(), later));
        ServerCert::load_or_issue(&ca2, dir.path(), &more, 90, later).unwrap();
        assert!(ca_signed(&ca2, &server_pem(), later));
    }
}
