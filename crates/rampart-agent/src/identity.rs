//! The node's identity: its key (never leaves the node), the certificate the controller signed
//! at join time (or at the last renewal), and the CA it trusts. Files live in the agent's data
//! directory: `node-key.pem` (0600), `node.pem`, `ca.pem`, `node.json`, and, only while a
//! renewal is being installed, `node-renewal.json` (0600).
//!
//! Renewal (spec 13.3-2, 12.3.1): once two thirds of the certificate's lifetime are gone the
//! agent makes a new key pair, sends a CSR for it over its current mutual-TLS identity, and
//! installs the answer: first the new key and certificate together in `node-renewal.json`
//! (written to a temporary file, synced and renamed), then `node-key.pem` and `node.pem`, then
//! the journal is removed. A crash at any point leaves either the old working pair (the
//! controller keeps accepting it until the new certificate is first used) or a journal that
//! the next start finishes installing. All connections made afterwards present the new
//! certificate, without a restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use rampart_api::agent::{JoinRequest, JoinTokenParts};
use rampart_api::keys::AgentRenewRequest;
use rampart_api::tls::{self, certs_from_pem, key_from_pem, sha256_hex};
use rampart_api::{Client, ClientError};
use rampart_common::{Sensitive, fsutil};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::AgentError;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeFile {
    pub node_id: Uuid,
    pub node_name: String,
    pub controller_url: String,
}

pub struct Identity {
    pub node: NodeFile,
    pub key_pem: Sensitive,
    pub cert_pem: String,
    pub ca_pem: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

const RENEWAL_JOURNAL: &str = "node-renewal.json";

/// A renewed key and certificate on their way into `node-key.pem` and `node.pem`.
#[derive(Serialize, Deserialize)]
struct Journal {
    key_pem: String,
    cert_pem: String,
}

fn paths(dir: &Path) -> [PathBuf; 4] {
    [
        dir.join("node-key.pem"),
        dir.join("node.pem"),
        dir.join("ca.pem"),
        dir.join("node.json"),
    ]
}

fn read(path: &Path) -> Result<String, AgentError> {
    std::fs::read_to_string(path).map_err(|source| AgentError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    })
}

fn write(path: &Path, data: &str, mode: u32) -> Result<(), AgentError> {
    fsutil::write_atomic(path, data.as_bytes(), mode).map_err(|source| AgentError::Io {
        action: "write",
        path: path.to_path_buf(),
        source,
    })
}

impl Identity {
    /// The identity saved in `dir`, if the node has joined.
    pub fn load(dir: &Path) -> Result<Option<Identity>, AgentError> {
        let [key, cert, ca, node] = paths(dir);
        // node.json is written last: without it the join did not finish.
        if !node.exists() {
            return Ok(None);
        }
        let node: NodeFile =
            serde_json::from_str(&read(&node)?).map_err(|e| AgentError::Corrupt(format!("{}: {e}", node.display())))?;
        finish_renewal(dir)?;
        Ok(Some(Identity {
            node,
            key_pem: Sensitive::new(read(&key)?),
            cert_pem: read(&cert)?,
            ca_pem: read(&ca)?,
        }))
    }

    fn save(&self, dir: &Path) -> Result<(), AgentError> {
        fsutil::ensure_private_dir(dir).map_err(|source| AgentError::Io {
            action: "create",
            path: dir.to_path_buf(),
            source,
        })?;
        let [key, cert, ca, node] = paths(dir);
        write(&key, self.key_pem.expose(), 0o600)?;
        write(&cert, &self.cert_pem, 0o644)?;
        write(&ca, &self.ca_pem, 0o644)?;
        write(
            &node,
            &serde_json::to_string_pretty(&self.node).expect("serialises"),
            0o644,
        )
    }

    /// Joins the controller at `url` with a one-time `token` and saves the identity in `dir`.
    /// The controller is authenticated by the CA SHA-256 inside the token before the token's
    /// secret is sent.
    pub async fn join(
        dir: &Path,
        url: &str,
        token: &Sensitive,
        name: &str,
        ca_file: Option<&Path>,
    ) -> Result<Identity, AgentError> {
        let parts = JoinTokenParts::parse(token.expose()).ok_or(AgentError::MalformedToken)?;
        let ca_pem = match ca_file {
            Some(f) => read(f)?,
            None => {
                let discovery = Client::new(
                    url,
                    tls::discovery_client_config().map_err(|e| AgentError::Corrupt(e.to_string()))?,
                )?;
                discovery.ca_certificate().await?
            }
        };
        let ca_der = certs_from_pem(ca_pem.as_bytes()).map_err(|_| AgentError::CaMismatch)?;
        if ca_der.len() != 1 || sha256_hex(&ca_der[0]) != parts.ca_sha256 {
            return Err(AgentError::CaMismatch);
        }
        let client = Client::with_ca(url, ca_pem.as_bytes())?;
        let (key_pem, csr) = rampart_kms::ca::node_key_and_csr().map_err(|e| AgentError::Corrupt(e.to_string()))?;
        let response = client
            .agent_join(&JoinRequest {
                token: token.clone(),
                csr,
                name: name.to_string(),
            })
            .await
            .map_err(|e| match e.code() {
                Some("invalid_join_token") => AgentError::TokenRefused,
                _ => AgentError::Client(Box::new(e)),
            })?;
        let id = Identity {
            node: NodeFile {
                node_id: response.node_id,
                node_name: response.node_name,
                controller_url: url.trim_end_matches('/').to_string(),
            },
            key_pem: Sensitive::new(key_pem),
            cert_pem: response.certificate,
            ca_pem,
        };
        id.save(dir)?;
        tracing::info!(node = %id.node.node_id, name = %id.node.node_name, "joined the controller");
        Ok(id)
    }
}

/// The TLS settings of a node identity; refused when the key does not belong to the
/// certificate.
fn client_config(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<rustls::ClientConfig, AgentError> {
    let chain = certs_from_pem(cert_pem.as_bytes()).map_err(|e| AgentError::Corrupt(e.to_string()))?;
    let key = key_from_pem(key_pem.as_bytes()).map_err(|e| AgentError::Corrupt(e.to_string()))?;
    tls::client_config(ca_pem.as_bytes(), Some((chain, key))).map_err(|e| AgentError::Corrupt(e.to_string()))
}

/// Finishes installing a renewal journal left by a crash; a damaged journal is dropped (the
/// pair in place still works: the controller accepts it until the renewed one is used).
fn finish_renewal(dir: &Path) -> Result<(), AgentError> {
    let path = dir.join(RENEWAL_JOURNAL);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(());
    };
    let [key, cert, ca, _] = paths(dir);
    let journal = serde_json::from_str::<Journal>(&text).ok().filter(|j| {
        read(&ca)
            .and_then(|ca| client_config(&ca, &j.cert_pem, &j.key_pem))
            .is_ok()
    });
    match journal {
        Some(j) => {
            write(&key, &j.key_pem, 0o600)?;
            write(&cert, &j.cert_pem, 0o644)?;
            tracing::info!("finished installing the renewed node certificate");
        }
        None => tracing::warn!("dropping a damaged certificate renewal journal; keeping the current certificate"),
    }
    remove(&path)
}

fn remove(path: &Path) -> Result<(), AgentError> {
    let io = |source| AgentError::Io {
        action: "remove",
        path: path.to_path_buf(),
        source,
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(e)),
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)
}

/// Validity of the certificate an identity presents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateTimes {
    pub serial: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl CertificateTimes {
    fn of(cert_pem: &str) -> Result<Self, AgentError> {
        let info = rampart_kms::ca::cert_info_pem(cert_pem).map_err(|e| AgentError::Corrupt(e.to_string()))?;
        Ok(CertificateTimes {
            serial: info.serial,
            not_before: info.not_before,
            not_after: info.not_after,
        })
    }

    /// Renewal is due once two thirds of the lifetime are gone (spec 13.3-2).
    pub fn renewal_due(&self) -> OffsetDateTime {
        self.not_before + (self.not_after - self.not_before) * 2 / 3
    }
}

struct Current {
    generation: u64,
    config: rustls::ClientConfig,
    times: CertificateTimes,
}

/// The identity all the agent's connections present; a renewal swaps it in place. Clients
/// made from it ([`NodeClient`]) notice the swap and open new connections with the new
/// certificate (pooled connections would keep presenting the old one).
pub struct Credentials {
    dir: PathBuf,
    node_id: Uuid,
    url: String,
    ca_pem: String,
    current: RwLock<Arc<Current>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("node_id", &self.node_id)
            .field("generation", &self.generation())
            .finish_non_exhaustive()
    }
}

impl Credentials {
    pub fn new(identity: &Identity, dir: &Path) -> Result<Arc<Credentials>, AgentError> {
        let config = client_config(&identity.ca_pem, &identity.cert_pem, identity.key_pem.expose())?;
        Ok(Arc::new(Credentials {
            dir: dir.to_path_buf(),
            node_id: identity.node.node_id,
            url: identity.node.controller_url.clone(),
            ca_pem: identity.ca_pem.clone(),
            current: RwLock::new(Arc::new(Current {
                generation: 0,
                config,
                times: CertificateTimes::of(&identity.cert_pem)?,
            })),
        }))
    }

    /// Goes up by one with every installed renewal.
    pub fn generation(&self) -> u64 {
        self.current.read().expect("credentials lock").generation
    }

    pub fn times(&self) -> CertificateTimes {
        self.current.read().expect("credentials lock").times.clone()
    }

    /// A client presenting the current certificate, rebuilt after each renewal.
    pub fn client(self: &Arc<Self>, timeout: std::time::Duration) -> NodeClient {
        NodeClient {
            creds: self.clone(),
            timeout,
            cached: Arc::new(Mutex::new(None)),
        }
    }

    /// Renews the certificate over the current identity: a new key pair made here (its
    /// private half never leaves the node), a certificate for it from the controller, saved
    /// crash-safely, then used by every later connection. Returns the new certificate's times.
    pub async fn renew(&self, client: &Client) -> Result<CertificateTimes, AgentError> {
        let (key_pem, csr) = rampart_kms::ca::node_key_and_csr().map_err(|e| AgentError::Corrupt(e.to_string()))?;
        let key_pem = Sensitive::new(key_pem);
        let response = client.agent_renew(&AgentRenewRequest { csr }).await?;
        let cert_pem = response.certificate;
        // Our pinned CA verifies the answer: the certificate must chain to it, name this node
        // and carry the new key, or nothing changes.
        let config = client_config(&self.ca_pem, &cert_pem, key_pem.expose())?;
        let info = rampart_kms::ca::cert_info_pem(&cert_pem).map_err(|e| AgentError::Corrupt(e.to_string()))?;
        if info.node_id != Some(self.node_id) {
            return Err(AgentError::Corrupt("the renewed certificate names another node".into()));
        }
        if !chains_to(&self.ca_pem, &cert_pem) {
            return Err(AgentError::Corrupt(
                "the renewed certificate is not signed by the node's CA".into(),
            ));
        }
        let times = CertificateTimes::of(&cert_pem)?;
        let journal = serde_json::to_string(&Journal {
            key_pem: key_pem.expose().to_string(),
            cert_pem: cert_pem.clone(),
        })
        .expect("serialises");
        let [key, cert, _, _] = paths(&self.dir);
        let dir = self.dir.clone();
        let key_text = Sensitive::new(key_pem.expose().to_string());
        tokio::task::spawn_blocking(move || -> Result<(), AgentError> {
            write(&dir.join(RENEWAL_JOURNAL), &journal, 0o600)?;
            write(&key, key_text.expose(), 0o600)?;
            write(&cert, &cert_pem, 0o644)?;
            remove(&dir.join(RENEWAL_JOURNAL))
        })
        .await
        .map_err(|e| AgentError::Corrupt(format!("saving the renewed certificate: {e}")))??;
        let mut current = self.current.write().expect("credentials lock");
        let generation = current.generation + 1;
        *current = Arc::new(Current {
            generation,
            config,
            times: times.clone(),
        });
        Ok(times)
    }
}

/// Whether `cert_pem` is signed by the CA of `ca_pem` (checked as rustls checks a client
/// certificate on the controller, at the current time).
fn chains_to(ca_pem: &str, cert_pem: &str) -> bool {
    let (Ok(ca), Ok(chain)) = (certs_from_pem(ca_pem.as_bytes()), certs_from_pem(cert_pem.as_bytes())) else {
        return false;
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in ca {
        if roots.add(c).is_err() {
            return false;
        }
    }
    let Ok(verifier) =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), tls::provider()).build()
    else {
        return false;
    };
    let now = rustls::pki_types::UnixTime::now();
    verifier.verify_client_cert(&chain[0], &chain[1..], now).is_ok()
}

/// A client of the controller presenting the node's current certificate: after a renewal the
/// next call builds a new connection pool with the new certificate.
#[derive(Clone)]
pub struct NodeClient {
    creds: Arc<Credentials>,
    timeout: std::time::Duration,
    cached: Arc<Mutex<Option<(u64, Client)>>>,
}

impl NodeClient {
    /// The client to use now, and the credentials generation it presents.
    pub fn get(&self) -> Result<(u64, Client), AgentError> {
        let current = self.creds.current.read().expect("credentials lock").clone();
        let mut cached = self.cached.lock().expect("client cache lock");
        if let Some((generation, client)) = cached.as_ref()
            && *generation == current.generation
        {
            return Ok((*generation, client.clone()));
        }
        let client = Client::with_timeout(&self.creds.url, current.config.clone(), self.timeout)?;
        *cached = Some((current.generation, client.clone()));
        Ok((current.generation, client))
    }

    /// Whether a renewal was installed after `generation`: a refusal of a call made with the
    /// previous certificate is then no reason to give up.
    pub fn renewed_since(&self, generation: u64) -> bool {
        self.creds.generation() != generation
    }
}

impl From<ClientError> for AgentError {
    fn from(e: ClientError) -> Self {
        AgentError::Client(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved_identity(dir: &Path) -> (rampart_kms::CertificateAuthority, Identity) {
        let now = OffsetDateTime::now_utc();
        let ca = rampart_kms::CertificateAuthority::generate(30, now).unwrap();
        let node_id = Uuid::new_v4();
        let (key_pem, csr) = rampart_kms::ca::node_key_and_csr().unwrap();
        let (cert_pem, _, _) = ca.sign_node_csr(&csr, node_id, 30, now).unwrap();
        let id = Identity {
            node: NodeFile {
                node_id,
                node_name: "n".into(),
                controller_url: "https://127.0.0.1:1".into(),
            },
            key_pem: Sensitive::new(key_pem),
            cert_pem,
            ca_pem: ca.cert_pem().to_string(),
        };
        id.save(dir).unwrap();
        (ca, id)
    }

    #[test]
    fn spec_13_3_2_a_renewal_cut_by_a_crash_is_finished_at_start_or_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (ca, old) = saved_identity(dir);
        let (key2, csr2) = rampart_kms::ca::node_key_and_csr().unwrap();
        let (cert2, _, _) = ca
            .sign_node_csr(&csr2, old.node.node_id, 30, OffsetDateTime::now_utc())
            .unwrap();
        // The crash came after the new key was written, before the certificate.
        let journal = serde_json::to_string(&Journal {
            key_pem: key2.clone(),
            cert_pem: cert2.clone(),
        })
        .unwrap();
        write(&dir.join(RENEWAL_JOURNAL), &journal, 0o600).unwrap();
        write(&dir.join("node-key.pem"), &key2, 0o600).unwrap();
        assert!(
            client_config(&old.ca_pem, &old.cert_pem, &key2).is_err(),
            "a mismatched pair"
        );
        let loaded = Identity::load(dir).unwrap().unwrap();
        assert_eq!(loaded.cert_pem, cert2);
        assert_eq!(loaded.key_pem.expose(), key2);
        assert!(client_config(&loaded.ca_pem, &loaded.cert_pem, loaded.key_pem.expose()).is_ok());
        assert!(!dir.join(RENEWAL_JOURNAL).exists());
        assert_eq!(fsutil::mode_of(&dir.join("node-key.pem")).unwrap(), 0o600);

        // A journal cut short (or naming a key that is not the certificate's) is dropped: the
        // pair in place is kept.
        write(&dir.join(RENEWAL_JOURNAL), "{\"key_pem\":", 0o600).unwrap();
        let kept = Identity::load(dir).unwrap().unwrap();
        assert_eq!(kept.cert_pem, cert2);
        assert!(!dir.join(RENEWAL_JOURNAL).exists());
        let wrong = serde_json::to_string(&Journal {
            key_pem: old.key_pem.expose().to_string(),
            cert_pem: cert2.clone(),
        })
        .unwrap();
        write(&dir.join(RENEWAL_JOURNAL), &wrong, 0o600).unwrap();
        let kept = Identity::load(dir).unwrap().unwrap();
        assert_eq!(kept.key_pem.expose(), key2);
    }

    #[test]
    fn spec_13_3_2_renewal_is_due_at_two_thirds_of_the_lifetime() {
        let t0 = OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
        let times = CertificateTimes {
            serial: "01".into(),
            not_before: t0,
            not_after: t0 + time::Duration::days(90),
        };
        assert_eq!(times.renewal_due(), t0 + time::Duration::days(60));
    }

    #[test]
    fn renewed_certificates_must_chain_to_the_pinned_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let (_, id) = saved_identity(tmp.path());
        assert!(chains_to(&id.ca_pem, &id.cert_pem));
        let other = rampart_kms::CertificateAuthority::generate(30, OffsetDateTime::now_utc()).unwrap();
        assert!(!chains_to(other.cert_pem(), &id.cert_pem));
    }
}
