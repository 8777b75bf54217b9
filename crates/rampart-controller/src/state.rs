//! What every handler shares.

use std::path::PathBuf;
use std::sync::Arc;

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

    /// Wakes the long polls of agents after a new generation was committed.
    pub fn notify_node_changes(&self) {
        self.node_changes.send_modify(|n| *n = n.wrapping_add(1));
    }
}
