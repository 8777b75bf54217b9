//! The Rampart controller: the HTTPS API (axum over rustls), authentication, node enrolment
//! and desired state, and the background reconcilers. It owns the database; agents only talk
//! to it over mutual TLS.

pub mod app;
pub mod audit;
pub mod auth;
pub mod bootstrap;
pub mod grants;
pub mod http;
pub mod idempotency;
pub mod kms;
pub mod planes;
pub mod publish;
pub mod quota;
pub mod render;
pub mod role_expansion;
pub mod routes;
pub mod server;
pub mod state;
pub mod tasks;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rampart_api::JoinToken;
use rampart_common::config::Config;
use rampart_common::fsutil;
use rampart_common::time::SharedClock;
use rampart_db::{ConnectOptions, Db, DbError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::state::{AppState, Inner};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create the data directory {path}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("internal CA")]
    Ca(#[from] rampart_kms::CaError),
    #[error("key service")]
    Kms(#[from] kms::KmsStartError),
    #[error("key service: {0}")]
    KmsRecords(rampart_common::Error),
    #[error("TLS setup")]
    Tls(#[from] tls::TlsSetupError),
    #[error("bootstrap")]
    Bootstrap(#[from] bootstrap::BootstrapError),
    #[error("authorization policies")]
    Authz(#[from] rampart_iam::authz::AuthzError),
    #[error("credential key")]
    CredKey(#[from] rampart_iam::credkey::CredKeyError),
    #[error("config: `api.trusted_proxies`: {0}")]
    Proxies(String),
    #[error("audit trail")]
    Audit(#[from] audit::AuditSetupError),
    #[error("management plane: {0}")]
    Plane(String),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

pub struct ControllerOptions {
    pub config: Config,
    pub data_dir: PathBuf,
    pub clock: SharedClock,
}

/// A running controller.
pub struct Controller {
    pub state: AppState,
    /// The addresses actually bound (port 0 in the configuration picks a free one).
    pub addrs: Vec<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl Controller {
    pub async fn start(opts: ControllerOptions) -> Result<Controller, StartError> {
        let ControllerOptions {
            config,
            data_dir,
            clock,
        } = opts;
        // Listen first: an address not on this host or a port in use is refused before the
        // data directory, the database or the HSM token are touched.
        let mut listeners = Vec::new();
        for addr in &config.api.listen {
            let l = planes::bind_listener(*addr, config.network.management_interface.as_deref())
                .map_err(|source| StartError::Bind { addr: *addr, source })?;
            listeners.push(l);
        }
        fsutil::ensure_private_dir(&data_dir).map_err(|source| StartError::DataDir {
            path: data_dir.clone(),
            source,
        })?;
        let now = clock.now();
        let url = config.database_url(&data_dir);
        let db = Db::connect(
            &url,
            &ConnectOptions {
                max_connections: config.database.max_connections,
                connect_timeout: std::time::Duration::from_secs(config.database.connect_timeout_s),
                password_file: config.database.password_file.clone(),
                migration_url: Some(config.database.migration_url.clone()).filter(|u| !u.is_empty()),
                migration_password_file: config.database.migration_password_file.clone(),
                runtime_role: Some(config.database.runtime_role.clone()).filter(|r| !r.is_empty()),
            },
        )
        .await?;
        let (ca, kms) = kms::start(&config, &data_dir, now)?;
        let names = tls::server_names(&config.api.listen, &config.api.tls_names);
        let server_cert = Arc::new(tls::ServerCert::load_or_issue(
            &ca,
            &data_dir,
            &names,
            config.tls.server_certificate_days,
            now,
        )?);
        bootstrap::ensure(&db, &data_dir, now).await?;
        let authz = rampart_iam::authz::Authorizer::from_file(config.authz.policy_file.as_deref())?;
        let credkey =
            rampart_iam::credkey::CredentialKey::load_or_create(&data_dir.join("tls").join("credential-key"))?;
        let trusted_proxies = rampart_iam::net::parse_cidrs("api.trusted_proxies", &config.api.trusted_proxies)
            .map_err(|e| StartError::Proxies(e.to_string()))?;

        let audit = Arc::new(audit::Audit::open(&db, &data_dir, clock.clone(), config.audit.clone()).await?);

        let addrs: Vec<SocketAddr> = listeners.iter().filter_map(|l| l.local_addr().ok()).collect();
        planes::apply_input_filter(&config.network, &addrs).map_err(StartError::Plane)?;
        let api_origins = if config.api.origins.is_empty() {
            let ports: Vec<u16> = addrs.iter().map(|a| a.port()).collect();
            rampart_common::origin::default_origins(&names, &ports)
        } else {
            // Validated with the configuration.
            config
                .api
                .origins
                .iter()
                .filter_map(|o| rampart_common::origin::https_origin(o).ok())
                .collect()
        };

        let ca = Arc::new(ca);
        let tls_config = Arc::new(tls::server_config(&ca, server_cert.clone())?);
        let (node_changes, _) = tokio::sync::watch::channel(0u64);
        let state = AppState(Arc::new(Inner {
            db,
            clock,
            config,
            data_dir,
            ca,
            server_cert,
            node_changes,
            shutdown: CancellationToken::new(),
            instance_id: uuid::Uuid::new_v4().to_string(),
            authz,
            credkey,
            deny_lists: Default::default(),
            login_throttle: Default::default(),
            trusted_proxies,
            api_origins,
            listen_addrs: addrs.clone(),
            compliance: std::sync::RwLock::new(None),
            audit,
            kms,
            tasks: Default::default(),
        }));
        if publish::all(&state.db, &state.config).await? {
            state.notify_node_changes();
        }
        app::certificates::after_start(&state)
            .await
            .map_err(StartError::KmsRecords)?;

        let router = routes::router(state.clone());
        let mut tasks = Vec::new();
        for l in listeners {
            tasks.push(tokio::spawn(server::serve(
                l,
                tls_config.clone(),
                router.clone(),
                state.shutdown.clone(),
            )));
        }
        tasks.push(audit::intents::spawn_intent_reconcile(state.clone(), now));
        tasks.push(app::keys::spawn_root_check(state.clone()));
        tasks.extend(tasks::spawn_all(&state));
        tasks.push(audit::forwarding::spawn_forwarding(state.clone()));
        tracing::info!(addrs = ?addrs, version = rampart_common::VERSION, "controller started");
        Ok(Controller { state, addrs, tasks })
    }

    /// `https://ADDR` of the first listener, for clients on this machine.
    pub fn url(&self) -> String {
        let addr = self.addrs[0];
        let ip = if addr.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            addr.ip().to_string()
        };
        match addr {
            SocketAddr::V6(_) if !addr.ip().is_unspecified() => {
                format!("https://[{ip}]:{}", addr.port())
            }
            _ => format!("https://{ip}:{}", addr.port()),
        }
    }

    pub fn ca_pem(&self) -> &str {
        self.state.ca.cert_pem()
    }

    /// A join token created in-process (the local agent of `rampart up`).
    pub async fn issue_join_token(&self, node_name: Option<String>) -> Result<JoinToken, rampart_common::Error> {
        app::nodes::issue_join_token(&self.state, node_name, None, None).await
    }

    /// Stops listening, ends long polls, lets open requests finish, closes the database.
    pub async fn shutdown(self) {
        self.state.shutdown.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        if self.state.audit.is_leader()
            && let Err(e) = self.state.audit.log.checkpoint_now().await
        {
            tracing::error!(error = %rampart_common::error::ErrorChain(&e), "final audit checkpoint failed");
        }
        self.state.audit.stop_forwarding();
        self.state.db.close().await;
        tracing::info!("controller stopped");
    }
}
