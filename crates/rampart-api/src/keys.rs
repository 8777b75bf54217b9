//! Keys and certificates of `/v1` (spec 12.4, 13.3, 12.3.1), the agent's certificate renewal,
//! and the typed client calls for them.
//!
//! Binary values (plaintexts, data keys) travel as standard base64. Ciphertexts are opaque
//! base64 envelopes that name their key and version. An encryption context is a map of
//! non-secret strings bound to the ciphertext: decryption needs the same map.

use std::collections::BTreeMap;

use rampart_common::Sensitive;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{Client, ClientError, List};

/// Encryption context: non-secret key/value pairs bound to a ciphertext (never put secrets here:
/// contexts appear in audit records).
pub type Context = BTreeMap<String, String>;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KeyStateView {
    /// Usable for every operation.
    Enabled,
    /// Usable for nothing until enabled again.
    Disabled,
    /// Destroyed at `deletion_at` unless the deletion is cancelled; usable for nothing.
    PendingDeletion,
    /// Its material is gone: no ciphertext of it can ever be decrypted.
    Destroyed,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct KeyVersionView {
    pub version: u32,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// The version's material was destroyed (crypto-shredding).
    pub destroyed: bool,
}

/// A customer key. Its material never leaves the HSM unwrapped and is never returned.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Key {
    pub id: Uuid,
    pub project_id: Uuid,
    pub name: String,
    /// `aes-256-gcm`.
    pub algorithm: String,
    pub state: KeyStateView,
    /// Version new ciphertexts are made with.
    pub primary_version: u32,
    /// Ciphertexts of older versions are refused (`version_below_minimum`).
    pub min_decryption_version: u32,
    /// Automatic rotation period; null: rotated only on demand.
    pub rotation_period_days: Option<u32>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub last_rotated_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub next_rotation_at: Option<OffsetDateTime>,
    /// When a key pending deletion is destroyed.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub deletion_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub destroyed_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
    pub versions: Vec<KeyVersionView>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyCreate {
    /// `[a-z][a-z0-9-]{0,62}`, unique in the project.
    pub name: String,
    /// `aes-256-gcm` (the default and only algorithm).
    #[serde(default)]
    pub algorithm: Option<String>,
    /// Rotate automatically every N days (1 to 3650).
    #[serde(default)]
    pub rotation_period_days: Option<u32>,
}

/// Changes to a key's settings. `rotation_period_days: null` turns automatic rotation off.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyUpdate {
    #[serde(default, with = "double_option", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<u32>)]
    pub rotation_period_days: Option<Option<u32>>,
    /// Retire older versions for decryption (1 to the primary version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_decryption_version: Option<u32>,
}

/// `Some(None)` for an explicit `null`, `None` for an absent field.
mod double_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Option<u32>>, s: S) -> Result<S::Ok, S::Error> {
        v.as_ref().expect("skipped when absent").serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<u32>>, D::Error> {
        Option::<u32>::deserialize(d).map(Some)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EncryptRequest {
    /// Base64 of at most 64 KiB (encrypt bulk data with a data key).
    pub plaintext: Sensitive,
    #[serde(default)]
    pub context: Option<Context>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct EncryptResponse {
    pub key_id: Uuid,
    pub ciphertext: String,
    pub key_version: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecryptRequest {
    pub ciphertext: String,
    #[serde(default)]
    pub context: Option<Context>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DecryptResponse {
    /// Base64.
    pub plaintext: Sensitive,
    pub key_version: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DataKeyRequest {
    #[serde(default)]
    pub context: Option<Context>,
    /// Size of the data key, 16 to 64 bytes (default 32).
    #[serde(default)]
    pub bytes: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DataKeyResponse {
    pub key_id: Uuid,
    /// Base64 of the data key: use it, then forget it.
    pub plaintext: Sensitive,
    /// The same data key encrypted under the key: store it beside the data.
    pub ciphertext: String,
    pub key_version: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReEncryptRequest {
    pub ciphertext: String,
    #[serde(default)]
    pub context: Option<Context>,
    /// Key of the same project to encrypt under (default: this key, its primary version).
    #[serde(default)]
    pub target_key: Option<Uuid>,
    /// Context of the new ciphertext (default: the same context).
    #[serde(default)]
    pub target_context: Option<Context>,
}

/// The new ciphertext; the plaintext never leaves the key service.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ReEncryptResponse {
    pub key_id: Uuid,
    pub ciphertext: String,
    pub key_version: u32,
    pub source_key_id: Uuid,
    pub source_key_version: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleDeletion {
    /// Days before destruction, 7 to 30 (default 30).
    #[serde(default)]
    pub pending_days: Option<u32>,
}

// ---- certificates ----

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CertificateKind {
    /// One of Rampart's internal CAs.
    Ca,
    /// The API server certificate.
    Server,
    /// An agent's client certificate.
    Agent,
    /// Issued by the tenant CA from a tenant's CSR.
    Tenant,
    /// A third-party certificate imported after a chain check.
    Imported,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CertificateStatus {
    Valid,
    /// Expires within `kms.certificate_warning_days`: the expiry alarm is raised.
    Expiring,
    Expired,
    Revoked,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Certificate {
    pub id: Uuid,
    pub kind: CertificateKind,
    pub status: CertificateStatus,
    /// `infrastructure` or `tenant` (the internal CA that issued it); null for imports.
    pub issuer_ca: Option<String>,
    pub project_id: Option<Uuid>,
    pub node_id: Option<Uuid>,
    /// Hex.
    pub serial: String,
    pub sha256: String,
    pub subject: String,
    pub issuer: String,
    pub names: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub not_before: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub not_after: OffsetDateTime,
    /// Whole days until `not_after` (negative once expired).
    pub expires_in_days: i64,
    /// For imports: where the chain ends (`system`, `internal`, `supplied_root`).
    pub chain_trust: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub revoked_at: Option<OffsetDateTime>,
    pub revocation_reason: Option<String>,
    /// When the expiry alarm was raised.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expiry_alarm_at: Option<OffsetDateTime>,
    /// PEM (on `GET /v1/certificates/{id}` and after issue or import).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// PEM of the chain (issuing CA, or the imported chain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CertificateIssue {
    /// The project the certificate belongs to (its `key-admin`s issue and revoke it).
    pub project: Uuid,
    /// PKCS#10 request (PEM). Only its public key is used.
    pub csr: String,
    /// DNS names (default: those the CSR asks for), all inside the project's zones
    /// `<project>.<domain>.<kms.tenant_certificate_domain>` or
    /// `<project id>.<kms.tenant_certificate_domain>`; IP addresses, `localhost` and other
    /// names are refused with 422 `certificate_name_not_allowed`.
    #[serde(default)]
    pub names: Option<Vec<String>>,
    /// Lifetime, 1 to 397 days (default `kms.certificate_days`).
    #[serde(default)]
    pub days: Option<u32>,
    /// Extended key usages (default both). A wildcard name is for `server_auth` only.
    #[serde(default)]
    pub usages: Option<Vec<CertificateUsage>>,
}

/// What a tenant certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CertificateUsage {
    ServerAuth,
    ClientAuth,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CertificateImport {
    /// The project it belongs to; none: a platform certificate (system-admin).
    #[serde(default)]
    pub project: Option<Uuid>,
    /// PEM: the certificate, optionally followed by its chain.
    pub certificate: String,
    /// PEM of the chain, if not appended to `certificate`.
    #[serde(default)]
    pub chain: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CertificateRevoke {
    /// `unspecified`, `key_compromise`, `ca_compromise`, `affiliation_changed`, `superseded`,
    /// `cessation_of_operation`, `privilege_withdrawn` (default `unspecified`).
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentRenewRequest {
    /// PKCS#10 request (PEM) for the agent's new key. Only the public key is used.
    pub csr: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AgentRenewResponse {
    pub certificate: String,
    pub ca_certificate: String,
}

fn key_path(project: Uuid, key: Uuid, op: &str) -> String {
    if op.is_empty() {
        format!("/v1/projects/{project}/keys/{key}")
    } else {
        format!("/v1/projects/{project}/keys/{key}/{op}")
    }
}

impl Client {
    pub async fn create_key(&self, project: Uuid, req: &KeyCreate) -> Result<Key, ClientError> {
        self.post(&format!("/v1/projects/{project}/keys"), req).await
    }

    pub async fn list_keys(&self, project: Uuid) -> Result<List<Key>, ClientError> {
        self.get(&format!("/v1/projects/{project}/keys")).await
    }

    pub async fn get_key(&self, project: Uuid, key: Uuid) -> Result<Key, ClientError> {
        self.get(&key_path(project, key, "")).await
    }

    pub async fn update_key(&self, project: Uuid, key: Uuid, req: &KeyUpdate) -> Result<Key, ClientError> {
        self.request(Method::PATCH, &key_path(project, key, ""), Some(req))
            .await
    }

    pub async fn encrypt(
        &self,
        project: Uuid,
        key: Uuid,
        req: &EncryptRequest,
    ) -> Result<EncryptResponse, ClientError> {
        self.post(&key_path(project, key, "encrypt"), req).await
    }

    pub async fn decrypt(
        &self,
        project: Uuid,
        key: Uuid,
        req: &DecryptRequest,
    ) -> Result<DecryptResponse, ClientError> {
        self.post(&key_path(project, key, "decrypt"), req).await
    }

    pub async fn generate_data_key(
        &self,
        project: Uuid,
        key: Uuid,
        req: &DataKeyRequest,
    ) -> Result<DataKeyResponse, ClientError> {
        self.post(&key_path(project, key, "generate-data-key"), req).await
    }

    pub async fn re_encrypt(
        &self,
        project: Uuid,
        key: Uuid,
        req: &ReEncryptRequest,
    ) -> Result<ReEncryptResponse, ClientError> {
        self.post(&key_path(project, key, "re-encrypt"), req).await
    }

    /// `rotate`, `enable`, `disable` or `cancel-deletion`.
    pub async fn key_action(&self, project: Uuid, key: Uuid, action: &str) -> Result<Key, ClientError> {
        self.post(&key_path(project, key, action), &serde_json::json!({})).await
    }

    pub async fn schedule_key_deletion(
        &self,
        project: Uuid,
        key: Uuid,
        pending_days: Option<u32>,
    ) -> Result<Key, ClientError> {
        self.post(
            &key_path(project, key, "schedule-deletion"),
            &ScheduleDeletion { pending_days },
        )
        .await
    }

    /// Certificates, of one project or (system roles) all of them.
    pub async fn certificates(&self, project: Option<Uuid>) -> Result<List<Certificate>, ClientError> {
        match project {
            Some(p) => self.get(&format!("/v1/certificates?project={p}")).await,
            None => self.get("/v1/certificates").await,
        }
    }

    pub async fn certificate(&self, id: Uuid) -> Result<Certificate, ClientError> {
        self.get(&format!("/v1/certificates/{id}")).await
    }

    pub async fn issue_certificate(&self, req: &CertificateIssue) -> Result<Certificate, ClientError> {
        self.post("/v1/certificates", req).await
    }

    pub async fn import_certificate(&self, req: &CertificateImport) -> Result<Certificate, ClientError> {
        self.post("/v1/certificates/import", req).await
    }

    pub async fn revoke_certificate(&self, id: Uuid, reason: Option<&str>) -> Result<Certificate, ClientError> {
        self.post(
            &format!("/v1/certificates/{id}/revoke"),
            &CertificateRevoke {
                reason: reason.map(str::to_string),
            },
        )
        .await
    }

    /// The CRL of the infrastructure CA (or of the tenant CA), DER.
    pub async fn crl(&self, tenant: bool) -> Result<Vec<u8>, ClientError> {
        let path = if tenant { "/v1/ca/crl?ca=tenant" } else { "/v1/ca/crl" };
        let response = self.send::<()>(Method::GET, path, None).await?;
        let url = response.url().to_string();
        response
            .bytes()
            .await
            .map(|b| b.to_vec())
            .map_err(|source| ClientError::Transport { url, source })
    }

    /// Agent protocol (mTLS): a new certificate for the agent's new key.
    pub async fn agent_renew(&self, req: &AgentRenewRequest) -> Result<AgentRenewResponse, ClientError> {
        self.post("/agent/v1/renew", req).await
    }
}
