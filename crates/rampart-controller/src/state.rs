//! What every handler shares.

use std::path::PathBuf;
use std::sync::Arc;

use rampart_api::SecurityCompliance;
use rampart_common::config::Config;
use rampart_common::time::SharedClock;
use rampart_db::Db;
use rampart_kms::CertificateAuthority;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::tls::ServerCert;

#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

pub struct Inner {
    pub db: Db,
    pub clock: SharedClock,
    pub config: Config,
    pub data_dir: PathBuf,
    pub ca: Arc<CertificateAuthority>,
    pub server_cert: Arc<ServerCert>,
    /// Bumped after every commit that published a new node generation, to wake long polls.
    pub node_changes: watch::Sender<u64>,
    /// Cancelled on shutdown: long polls return at once.
    pub shutdown: CancellationToken,
    /// Identifies this controller process in leases.
    pub instance_id: String,
    pub authz: rampart_iam::authz::Authorizer,
    /// Encrypts secrets the controller must read back (TOTP seeds).
    pub credkey: rampart_iam::credkey::CredentialKey,
    pub deny_lists: rampart_iam::denylist::DenyLists,
    /// Failed authentications per source address (spec 13.2-6, beside per-account lockout).
    pub login_throttle: rampart_iam::throttle::SourceThrottle,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Serialized web origins whose pages may use the session cookie for state changes.
    pub api_origins: Vec<String>,
    /// The addresses the API listens on, as bound (the conformance probes connect to them).
    pub listen_addrs: Vec<std::net::SocketAddr>,
    /// The security-compliance policy, re-read from the database at most every few seconds
    /// (several controllers may share it).
    pub compliance: std::sync::RwLock<Option<(std::time::Instant, SecurityCompliance)>>,
    /// The audit trail: appender, forwarding queue and forwarder.
    pub audit: Arc<crate::audit::Audit>,
    /// Keys (the HSM-backed key service) and certificates (the tenant CA, CRLs).
    pub kms: crate::kms::Kms,
    /// The background tasks' health and whether this controller holds the reconciler lease.
    pub tasks: crate::tasks::registry::Registry,
}

impl std::ops::Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn now(&self) -> time::OffsetDateTime {
        self.clock.now()
    }

    /// The current security-compliance policy.
    pub async fn compliance(&self) -> Result<SecurityCompliance, rampart_common::Error> {
        if let Some((at, p)) = self.compliance.read().expect("compliance lock").as_ref()
            && at.elapsed() < std::time::Duration::from_secs(5)
        {
            return Ok(p.clone());
        }
        let mut conn = self.db.conn().await?;
        let p = rampart_db::identity::load_compliance(&mut conn).await?;
        *self.compliance.write().expect("compliance lock") = Some((std::time::Instant::now(), p.clone()));
        Ok(p)
    }

    /// Forgets the cached policy (after a change).
    pub fn refresh_compliance(&self) {
        *self.compliance.write().expect("compliance lock") = None;
    }

    /// Wakes the long polls of agents after a new generation was committed.
    pub fn notify_node_changes(&self) {
        self.node_changes.send_modify(|n| *n = n.wrapping_add(1));
    }
}
