//! Where audit records are forwarded (`GET/PUT /v1/audit/forwarding`) and what the forwarder
//! reports; stored in the `meta` table under [`FORWARDING_KEY`].

use std::path::PathBuf;

use rampart_audit::formats::Format;
use rampart_audit::forward::{ForwarderConfig, ForwardingStatus};
use rampart_common::{Error, Sensitive};
use rampart_db::Db;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub const FORWARDING_KEY: &str = "audit_forwarding";

/// Where the syslog receiver is and how to reach it (`GET/PUT /v1/audit/forwarding`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForwardingSettings {
    /// Forward records and checkpoints to the receiver.
    #[serde(default)]
    pub enabled: bool,
    /// `host:port` of an RFC 5425 syslog-over-TLS receiver (port 6514 by convention).
    #[serde(default)]
    pub address: String,
    /// DNS name or IP address the receiver's certificate must carry.
    #[serde(default)]
    pub server_name: String,
    /// PEM of the CA(s) that sign the receiver's certificate.
    #[serde(default)]
    pub ca_pem: String,
    /// PEM file of a client certificate chain, for receivers that require one.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub client_cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key (read by the controller; never shown).
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub client_key_file: Option<PathBuf>,
    /// MSG of each syslog message: `syslog` (canonical record JSON, re-hashable), `ocsf`,
    /// `cadf` or `cef`. The structured data carries the audit fields in every case.
    #[serde(default = "default_format")]
    pub format: Format,
}

fn default_format() -> Format {
    Format::Syslog
}

impl Default for ForwardingSettings {
    fn default() -> Self {
        ForwardingSettings {
            enabled: false,
            address: String::new(),
            server_name: String::new(),
            ca_pem: String::new(),
            client_cert_file: None,
            client_key_file: None,
            format: Format::Syslog,
        }
    }
}

impl ForwardingSettings {
    /// The forwarder configuration, reading the client certificate files. Errors name the field.
    pub fn forwarder_config(&self) -> Result<ForwarderConfig, Error> {
        if self.address.parse::<std::net::SocketAddr>().is_err()
            && !self
                .address
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        {
            return Err(Error::field("address", "address must be host:port"));
        }
        if self.server_name.is_empty() {
            return Err(Error::field("server_name", "server_name is required"));
        }
        let mut cfg = ForwarderConfig::new(
            self.address.clone(),
            self.server_name.clone(),
            self.ca_pem.clone().into_bytes(),
        );
        match (&self.client_cert_file, &self.client_key_file) {
            (Some(c), Some(k)) => {
                cfg.client_cert_pem =
                    Some(std::fs::read(c).map_err(|_| {
                        Error::field("client_cert_file", "the controller cannot read client_cert_file")
                    })?);
                cfg.client_key_pem =
                    Some(Sensitive::new(std::fs::read_to_string(k).map_err(|_| {
                        Error::field("client_key_file", "the controller cannot read client_key_file")
                    })?));
            }
            (None, None) => {}
            _ => {
                return Err(Error::field(
                    "client_key_file",
                    "give both client_cert_file and client_key_file, or neither",
                ));
            }
        }
        rampart_audit::forward::client_tls_config(&cfg).map_err(|e| match e {
            rampart_audit::forward::ForwardError::NoCa => {
                Error::field("ca_pem", "ca_pem holds no usable PEM certificate")
            }
            rampart_audit::forward::ForwardError::ServerName(_) => {
                Error::field("server_name", "server_name is not a valid DNS name or IP address")
            }
            other => Error::field("client_cert_file", other.to_string()),
        })?;
        Ok(cfg)
    }
}

/// The forwarding state of `GET /v1/audit/forwarding`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ForwardingState {
    /// This controller runs the forwarder (it holds the reconciler lease and forwarding is on).
    pub active: bool,
    /// The receiver could not be reached or did not confirm since `degraded_since`: the
    /// "forwarding degraded" alarm. Records wait in the persistent queue meanwhile.
    pub degraded: bool,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub degraded_since: Option<OffsetDateTime>,
    pub last_error: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_delivery: Option<OffsetDateTime>,
    /// Messages waiting in the queue.
    pub pending: u64,
    /// Messages the receiver confirmed since this controller started.
    pub delivered: u64,
    pub failed_attempts: u64,
}

impl ForwardingState {
    pub(crate) fn of(active: bool, s: ForwardingStatus) -> Self {
        ForwardingState {
            active,
            degraded: s.degraded,
            degraded_since: s.degraded_since,
            last_error: s.last_error,
            last_delivery: s.last_delivery,
            pending: s.pending,
            delivered: s.delivered,
            failed_attempts: s.failed_attempts,
        }
    }
}

pub async fn load_forwarding(db: &Db) -> Result<ForwardingSettings, Error> {
    let mut conn = db.conn().await?;
    Ok(match rampart_db::meta::get(&mut conn, FORWARDING_KEY).await? {
        Some(text) => serde_json::from_str(&text).map_err(|e| Error::internal("reading the forwarding settings", e))?,
        None => ForwardingSettings::default(),
    })
}
