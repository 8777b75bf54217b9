//! The node's identity: its key (never leaves the node), the certificate the controller signed
//! at join time, and the CA it trusts. Files live in the agent's data directory:
//! `node-key.pem` (0600), `node.pem`, `ca.pem`, `node.json`.

use std::path::{Path, PathBuf};

use rampart_api::agent::{JoinRequest, JoinTokenParts};
use rampart_api::tls::{self, certs_from_pem, key_from_pem, sha256_hex};
use rampart_api::{Client, ClientError};
use rampart_common::{Sensitive, fsutil};
use serde::{Deserialize, Serialize};
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

    /// A client of the controller that presents this node's certificate.
    pub fn client(&self, timeout: std::time::Duration) -> Result<Client, AgentError> {
        let chain = certs_from_pem(self.cert_pem.as_bytes()).map_err(|e| AgentError::Corrupt(e.to_string()))?;
        let key = key_from_pem(self.key_pem.expose().as_bytes()).map_err(|e| AgentError::Corrupt(e.to_string()))?;
        let config = tls::client_config(self.ca_pem.as_bytes(), Some((chain, key)))
            .map_err(|e| AgentError::Corrupt(e.to_string()))?;
        Ok(Client::with_timeout(&self.node.controller_url, config, timeout)?)
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

impl From<ClientError> for AgentError {
    fn from(e: ClientError) -> Self {
        AgentError::Client(Box::new(e))
    }
}
