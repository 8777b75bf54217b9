//! A simulated Rampart cluster for tests: one controller and any number of agents on fake
//! hosts, each agent enrolled with a real join token and talking real mutual TLS, all in the
//! test process. Later capabilities plug their fake drivers into [`FakeHost`] and reuse it.
//!
//! ```text
//! let cluster = TestCluster::start(ClusterOptions { agents: 3, ..Default::default() }).await;
//! cluster.wait_for_ready_nodes(3).await;
//! ```

pub mod rsyslog;
pub mod up;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rampart_agent::compute::ComputeOptions;
use rampart_agent::host::FakeHost;
use rampart_agent::{Agent, AgentError, AgentOptions};
use rampart_api::{
    Client, ClientError, JoinTokenCreate, LoginRequest, NodeState, PasswordChange, TokenScope, TotpConfirm,
    TotpEnrollment,
};
use rampart_common::Sensitive;
use rampart_common::config::Config;
use rampart_common::time::SharedClock;
pub use rampart_compute::driver::FakeHypervisor;
use rampart_controller::{Controller, ControllerOptions};
use rampart_db::testing::TestDb;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use rampart_db::Backend;

/// The admin password tests set at first login.
pub const ADMIN_PASSWORD: &str = "Cluster-test-passw0rd";
/// The password tests give the bootstrap security admin (`security`) at its first login.
pub const SECURITY_PASSWORD: &str = "Cluster-warden-passw0rd";
/// The password of the helper accounts the cluster makes to grant key roles.
const STEWARD_PASSWORD: &str = "Cluster-steward-passw0rd";

pub struct ClusterOptions {
    pub agents: usize,
    pub backend: Backend,
    /// Adjust the controller configuration (short heartbeats are already set).
    pub configure: Box<dyn FnOnce(&mut Config) + Send>,
    pub clock: Option<SharedClock>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            agents: 0,
            backend: Backend::Sqlite,
            configure: Box::new(|_| {}),
            clock: None,
        }
    }
}

pub struct TestAgent {
    pub node_id: Uuid,
    pub name: String,
    pub dir: tempfile::TempDir,
    /// The node's hypervisor (fake): tests look at its VMs and inject crashes.
    pub vms: FakeHypervisor,
    /// The fake host it runs on (its in-memory data plane is `host.net`).
    pub host: Arc<FakeHost>,
    stop: CancellationToken,
    handle: JoinHandle<Result<(), AgentError>>,
}

impl TestAgent {
    /// Stops the agent as a crash would: no goodbye to the controller.
    pub async fn stop(self) -> tempfile::TempDir {
        self.stop.cancel();
        let _ = self.handle.await;
        self.dir
    }

    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    pub async fn join_result(self) -> Result<(), AgentError> {
        self.handle.await.expect("agent task")
    }
}

pub struct TestCluster {
    pub controller: Controller,
    pub data_dir: tempfile::TempDir,
    /// Trusts the cluster CA, carries no token.
    pub anon: Client,
    /// Logged in as the bootstrap admin (system-admin).
    pub admin: Client,
    pub agents: Vec<TestAgent>,
    pub db: TestDb,
    pub config: Config,
    /// The admin's second factor, to log in again.
    pub admin_mfa: MfaUser,
    clock: SharedClock,
    /// The bootstrap security admin, logged in on first use.
    security: tokio::sync::OnceCell<Client>,
    /// Per project, a key admin that grants key roles for the tests (only key admins may).
    key_stewards: tokio::sync::Mutex<std::collections::HashMap<Uuid, Client>>,
}

impl TestCluster {
    /// The fastest timings that are still realistic: 1 s heartbeats, unreachable after 3 s.
    pub fn test_config() -> Config {
        let mut config = Config::default();
        config.api.listen = vec!["127.0.0.1:0".parse().expect("addr")];
        config.nodes.heartbeat_interval_s = 1;
        config.nodes.heartbeat_timeout_s = 3;
        config.nodes.long_poll_timeout_s = 5;
        // Authorization tests make hundreds of refused calls a second on purpose; the limiter
        // has tests of its own that turn it on.
        config.audit.refused_calls_per_minute = 0;
        // A fresh SoftHSM2 token of this test (the embedded token needs SOFTHSM2_CONF at process
        // start, which a test process shares). Without SoftHSM2 the controller starts with key
        // operations failing closed, unless RAMPART_TEST_REQUIRE_HSM=1 makes that fatal.
        match rampart_kms::testutil::new_token() {
            Some(token) => {
                config.kms.hsm = rampart_common::config::HsmKind::Pkcs11;
                config.kms.module = token.module.clone();
                config.kms.token_label = token.token_label.clone();
                config.kms.pin_file = Some(token.pin_file.clone());
                config.kms.sessions = 2;
            }
            None => config.kms.required = false,
        }
        config
    }

    /// Whether this cluster's key service has an HSM (SoftHSM2 installed); key tests return
    /// early without one (they fail instead under `RAMPART_TEST_REQUIRE_HSM=1`).
    pub fn has_hsm(&self) -> bool {
        self.config.kms.hsm == rampart_common::config::HsmKind::Pkcs11
    }

    pub async fn start(opts: ClusterOptions) -> TestCluster {
        init_logging();
        let db = match opts.backend {
            Backend::Sqlite => TestDb::sqlite(),
            Backend::Postgres => TestDb::postgres()
                .await
                .expect("PostgreSQL for this test: run scripts/ci/start-postgres.sh"),
        };
        let data_dir = tempfile::tempdir().expect("temp dir");
        let mut config = Self::test_config();
        config.database.url = db.url.clone();
        (opts.configure)(&mut config);
        let clock = opts.clock.unwrap_or_else(rampart_common::time::system_clock);
        let controller = Controller::start(ControllerOptions {
            config: config.clone(),
            data_dir: data_dir.path().to_path_buf(),
            clock: clock.clone(),
        })
        .await
        .expect("controller starts");
        let anon = Client::with_ca(&controller.url(), controller.ca_pem().as_bytes()).expect("client");
        let bootstrap = std::fs::read_to_string(data_dir.path().join(rampart_controller::bootstrap::PASSWORD_FILE))
            .expect("bootstrap password file");
        anon.change_password(&PasswordChange {
            username: "admin".into(),
            domain: None,
            current_password: Sensitive::new(bootstrap.trim()),
            new_password: Sensitive::new(ADMIN_PASSWORD),
            totp: None,
        })
        .await
        .expect("first password change");
        let mfa = MfaUser::enrol_with(&anon, "admin", ADMIN_PASSWORD, None, clock.clone())
            .await
            .expect("admin enrols a second factor");
        let admin = mfa.login(&anon).await.expect("admin login with TOTP");
        let mut cluster = TestCluster {
            controller,
            data_dir,
            anon,
            admin,
            agents: Vec::new(),
            db,
            config,
            admin_mfa: mfa,
            clock,
            security: Default::default(),
            key_stewards: Default::default(),
        };
        for i in 0..opts.agents {
            cluster.add_agent(&format!("node-{i}")).await;
        }
        cluster
    }

    /// Enrols a new agent on a fake host through the public API, as an operator would.
    pub async fn add_agent(&mut self, name: &str) -> &TestAgent {
        let token = self
            .admin
            .create_join_token(&JoinTokenCreate {
                node_name: Some(name.into()),
                ttl_s: None,
            })
            .await
            .expect("join token");
        let dir = tempfile::tempdir().expect("temp dir");
        let agent = self
            .start_agent(name, dir, Some(token.token))
            .await
            .expect("agent enrols");
        self.agents.push(agent);
        self.agents.last().expect("just pushed")
    }

    /// Starts an agent in `dir` (joining with `token` if it has no identity yet).
    pub async fn start_agent(
        &self,
        name: &str,
        dir: tempfile::TempDir,
        token: Option<Sensitive>,
    ) -> Result<TestAgent, AgentError> {
        self.start_agent_on(name, dir, token, FakeHypervisor::new()).await
    }

    /// As [`TestCluster::start_agent`], on a hypervisor that may still run VMs (an agent
    /// restarted after a crash finds the VMs it left).
    pub async fn start_agent_on(
        &self,
        name: &str,
        dir: tempfile::TempDir,
        token: Option<Sensitive>,
        vms: FakeHypervisor,
    ) -> Result<TestAgent, AgentError> {
        let host = Arc::new(FakeHost::named(name));
        let agent = Agent::enrol(AgentOptions {
            controller_url: self.controller.url(),
            data_dir: dir.path().to_path_buf(),
            join_token: token,
            name: Some(name.into()),
            ca_file: None,
            host: host.clone(),
            compute: Some(ComputeOptions::fake(vms.clone(), dir.path().join("vms"))),
            network: rampart_agent::NetOptions {
                reconcile_interval: Duration::from_secs(2),
                ..Default::default()
            },
            // The cluster's clock: a test that moves it moves the agents' certificate renewal.
            clock: self.clock.clone(),
        })
        .await?;
        let stop = CancellationToken::new();
        let node_id = agent.node_id();
        let handle = agent.spawn(stop.clone())?;
        Ok(TestAgent {
            node_id,
            name: name.into(),
            dir,
            vms,
            host,
            stop,
            handle,
        })
    }

    /// Waits until `check` yields a value, polling every 100 ms; panics after `timeout`.
    pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(v) = check().await {
                return v;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("timed out after {timeout:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until exactly `n` nodes are ready.
    pub async fn wait_for_ready_nodes(&self, n: usize) {
        Self::wait_for(&format!("{n} ready nodes"), Duration::from_secs(20), || async {
            let nodes = self.admin.nodes().await.ok()?;
            (nodes.items.iter().filter(|x| x.state == NodeState::Ready).count() == n).then_some(())
        })
        .await
    }

    /// Waits until the named node is in `state`.
    pub async fn wait_for_node_state(&self, name: &str, state: NodeState, timeout: Duration) {
        Self::wait_for(&format!("node {name} {state:?}"), timeout, || async {
            let nodes = self.admin.nodes().await.ok()?;
            nodes
                .items
                .iter()
                .any(|x| x.name == name && x.state == state)
                .then_some(())
        })
        .await
    }

    /// Stops the controller and starts it again on the same address, data directory and
    /// database, with `configure` applied to its configuration; agents keep running.
    pub async fn restart_controller(self, configure: impl FnOnce(&mut Config)) -> TestCluster {
        self.restart_controller_after(Duration::ZERO, configure).await
    }

    /// As [`TestCluster::restart_controller`], with the controller down for `downtime`.
    pub async fn restart_controller_after(
        self,
        downtime: Duration,
        configure: impl FnOnce(&mut Config),
    ) -> TestCluster {
        let TestCluster {
            controller,
            data_dir,
            anon,
            admin,
            agents,
            db,
            mut config,
            admin_mfa,
            clock,
            security,
            key_stewards,
        } = self;
        config.api.listen = controller.addrs.clone();
        configure(&mut config);
        controller.shutdown().await;
        tokio::time::sleep(downtime).await;
        let controller = Controller::start(ControllerOptions {
            config: config.clone(),
            data_dir: data_dir.path().to_path_buf(),
            clock: clock.clone(),
        })
        .await
        .expect("controller restarts");
        TestCluster {
            controller,
            data_dir,
            anon,
            admin,
            agents,
            db,
            config,
            admin_mfa,
            clock,
            security,
            key_stewards,
        }
    }

    /// Creates a user through the API (as the admin) with `password` already set (no change
    /// required) and the given role grants; returns its id. Each grant comes from whoever may
    /// make it: the system admin for system-admin, domain and project roles, the bootstrap
    /// security admin for the security roles, a key admin of the project for the key roles.
    pub async fn create_user(&self, name: &str, password: &str, grants: &[(&str, rampart_api::ScopeRef)]) -> Uuid {
        let id = self.new_user(name, password).await;
        for (role, scope) in grants {
            self.grant(id, role, scope.clone()).await;
        }
        id
    }

    /// A user with `password` set (no change required) and no role.
    async fn new_user(&self, name: &str, password: &str) -> Uuid {
        let user: rampart_api::User = self
            .admin
            .post(
                "/v1/users",
                &rampart_api::UserCreate {
                    name: name.into(),
                    password: Some(Sensitive::new(password)),
                    password_change_required: Some(false),
                    ..Default::default()
                },
            )
            .await
            .expect("create user");
        user.id
    }

    async fn post_grant(grantor: &Client, user: Uuid, role: &str, scope: rampart_api::ScopeRef) {
        let _: rampart_api::RoleAssignment = grantor
            .post(
                "/v1/role-assignments",
                &rampart_api::RoleAssignmentCreate {
                    user: Some(user),
                    group: None,
                    role: role.to_string(),
                    scope,
                },
            )
            .await
            .unwrap_or_else(|e| panic!("grant {role}: {e}"));
    }

    /// Grants `role` at `scope` to `user`, as someone allowed to (see [`TestCluster::create_user`]).
    pub async fn grant(&self, user: Uuid, role: &str, scope: rampart_api::ScopeRef) {
        let grantor = match (role, scope.project) {
            ("security-admin" | "auditor", _) => self.bootstrap_security_admin().await.clone(),
            ("key-admin" | "key-user", Some(p)) => self.key_steward(p).await,
            _ => self.admin.clone(),
        };
        Self::post_grant(&grantor, user, role, scope).await;
    }

    /// The bootstrap security admin (`security`), logged in with its own second factor; its
    /// one-time password is changed to [`SECURITY_PASSWORD`] on first use.
    pub async fn bootstrap_security_admin(&self) -> &Client {
        self.security
            .get_or_init(|| async {
                let file = self
                    .data_dir
                    .path()
                    .join(rampart_controller::bootstrap::SECURITY_PASSWORD_FILE);
                let one_time = std::fs::read_to_string(&file).expect("bootstrap security password file");
                self.anon
                    .change_password(&PasswordChange {
                        username: rampart_controller::bootstrap::SECURITY_ADMIN.into(),
                        domain: None,
                        current_password: Sensitive::new(one_time.trim()),
                        new_password: Sensitive::new(SECURITY_PASSWORD),
                        totp: None,
                    })
                    .await
                    .expect("security admin's first password change");
                let mfa = MfaUser::enrol_with(
                    &self.anon,
                    rampart_controller::bootstrap::SECURITY_ADMIN,
                    SECURITY_PASSWORD,
                    None,
                    self.clock.clone(),
                )
                .await
                .expect("security admin enrols a second factor");
                mfa.login(&self.anon).await.expect("security admin login")
            })
            .await
    }

    /// A key admin of `project`, made the way an operator would: the system admin gives the
    /// project an admin, who names the project's first key admin.
    async fn key_steward(&self, project: Uuid) -> Client {
        let mut stewards = self.key_stewards.lock().await;
        if let Some(c) = stewards.get(&project) {
            return c.clone();
        }
        let short = &project.simple().to_string()[..8];
        let in_project = rampart_api::ScopeRef {
            project: Some(project),
            ..Default::default()
        };
        let padmin = format!("padmin-{short}");
        let padmin_id = self.new_user(&padmin, STEWARD_PASSWORD).await;
        Self::post_grant(&self.admin, padmin_id, "project-admin", in_project.clone()).await;
        let padmin = self
            .anon
            .login_as(&padmin, STEWARD_PASSWORD)
            .await
            .expect("project admin login")
            .0;
        let steward = format!("keys-{short}");
        let steward_id = self.new_user(&steward, STEWARD_PASSWORD).await;
        // The project's first key admin is named by its project admin.
        Self::post_grant(&padmin, steward_id, "key-admin", in_project).await;
        let client = self
            .anon
            .login_as(&steward, STEWARD_PASSWORD)
            .await
            .expect("key admin login")
            .0;
        stewards.insert(project, client.clone());
        client
    }

    /// Logs `name` in (default domain), enrolling a second factor first when its roles need one.
    pub async fn login_user(&self, name: &str, password: &str) -> Client {
        let (client, token) = self.anon.login_as(name, password).await.expect("login");
        if token.scope == TokenScope::Full {
            return client;
        }
        self.login_with_mfa(name, password).await.0
    }

    /// A second operator holding `security-admin`, appointed by the bootstrap security admin
    /// (only security admins appoint security admins), logged in with its own second factor.
    pub async fn security_admin(&self) -> (Client, MfaUser) {
        self.create_user(
            "secops",
            "Sentinel-kestrel-44",
            &[(
                "security-admin",
                rampart_api::ScopeRef {
                    system: Some(true),
                    ..Default::default()
                },
            )],
        )
        .await;
        let mfa = MfaUser::enrol_with(&self.anon, "secops", "Sentinel-kestrel-44", None, self.clock.clone())
            .await
            .expect("security admin enrols");
        let client = mfa.login(&self.anon).await.expect("security admin login");
        (client, mfa)
    }

    /// Logs in an existing user whose roles need a second factor: enrols TOTP first.
    pub async fn login_with_mfa(&self, name: &str, password: &str) -> (Client, MfaUser) {
        let mfa = MfaUser::enrol_with(&self.anon, name, password, None, self.clock.clone())
            .await
            .expect("TOTP enrolment");
        let client = mfa.login(&self.anon).await.expect("login with TOTP");
        (client, mfa)
    }

    /// The id of the bootstrap `admin` project.
    pub async fn admin_project(&self) -> Uuid {
        let projects: rampart_api::List<rampart_api::Project> = self.admin.get("/v1/projects").await.expect("projects");
        projects
            .items
            .into_iter()
            .find(|p| p.name == "admin")
            .expect("admin project")
            .id
    }

    pub async fn shutdown(self) {
        for a in self.agents {
            a.stop().await;
        }
        self.controller.shutdown().await;
    }
}

/// Root, for tests that need it: in CI (which sets RAMPART_TEST_REQUIRE_ROOT=1) a missing
/// privilege fails the test; elsewhere the test says so and passes.
pub fn privileged() -> bool {
    rampart_common::testing::require_root()
}

/// A free TCP port on 127.0.0.1 (for a process that binds it itself).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Every backend this run tests (SQLite; PostgreSQL when configured, required in CI).
pub async fn backends() -> Vec<Backend> {
    let mut v = vec![Backend::Sqlite];
    if TestDb::postgres().await.is_some() {
        v.push(Backend::Postgres);
    }
    v
}

/// Run logs of the test process on standard error when `RAMPART_TEST_LOG` holds a filter
/// (e.g. `RAMPART_TEST_LOG=debug`); silent otherwise.
pub fn init_logging() {
    if let Ok(filter) = std::env::var("RAMPART_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// A user with a TOTP second factor, as a person with an authenticator app would use it:
/// each code is used once, so logins wait for the next time step when needed.
pub struct MfaUser {
    pub username: String,
    pub password: String,
    pub domain: Option<String>,
    /// The controller's clock: codes must match the time it checks them against.
    clock: SharedClock,
    pub secret: Sensitive,
    last_step: std::sync::Mutex<u64>,
}

impl MfaUser {
    /// Logs in (getting an enrolment-only token), enrols TOTP and confirms it.
    pub async fn enrol(anon: &Client, username: &str, password: &str) -> Result<MfaUser, ClientError> {
        Self::enrol_with(anon, username, password, None, rampart_common::time::system_clock()).await
    }

    /// [`MfaUser::enrol`] for a user of another domain.
    pub async fn enrol_in(
        anon: &Client,
        user: &str,
        password: &str,
        domain: Option<&str>,
    ) -> Result<MfaUser, ClientError> {
        Self::enrol_with(anon, user, password, domain, rampart_common::time::system_clock()).await
    }

    /// [`MfaUser::enrol`] against a controller running on `clock`.
    pub async fn enrol_with(
        anon: &Client,
        username: &str,
        password: &str,
        domain: Option<&str>,
        clock: SharedClock,
    ) -> Result<MfaUser, ClientError> {
        let token = anon
            .login(&LoginRequest {
                username: username.into(),
                password: Some(Sensitive::new(password)),
                domain: domain.map(str::to_string),
                project: None,
                totp: None,
                application_credential: None,
            })
            .await?;
        let enrolling = anon.clone().with_token(token.token.clone());
        assert_eq!(
            token.scope,
            TokenScope::MfaEnrollment,
            "a privileged user gets an enrolment-only token first"
        );
        let enrolment: TotpEnrollment = enrolling.post("/v1/auth/mfa/totp", &serde_json::json!({})).await?;
        let now = clock.now().unix_timestamp() as u64;
        let code = rampart_iam::totp::code_at(enrolment.secret.expose(), now).expect("code");
        enrolling
            .send(
                http::Method::POST,
                "/v1/auth/mfa/totp/confirm",
                Some(&TotpConfirm {
                    code: Sensitive::new(code),
                }),
            )
            .await?;
        Ok(MfaUser {
            username: username.into(),
            password: password.into(),
            domain: domain.map(str::to_string),
            clock,
            secret: enrolment.secret,
            last_step: std::sync::Mutex::new(now / 30),
        })
    }

    /// A code for a time step not used yet, waiting for the next step if both allowed ones
    /// (now and one ahead) are spent.
    pub async fn next_code(&self) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(45);
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "no unused TOTP step: is the controller's clock stopped?"
            );
            let now = self.clock.now().unix_timestamp() as u64;
            {
                let mut last = self.last_step.lock().expect("lock");
                let step = (*last + 1).max(now / 30);
                if step <= now / 30 + 1 {
                    *last = step;
                    return rampart_iam::totp::code_at(self.secret.expose(), step * 30).expect("code");
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    pub async fn login(&self, anon: &Client) -> Result<Client, ClientError> {
        let code = self.next_code().await;
        let token = anon
            .login(&LoginRequest {
                username: self.username.clone(),
                password: Some(Sensitive::new(&self.password)),
                domain: self.domain.clone(),
                project: None,
                totp: Some(Sensitive::new(code)),
                application_credential: None,
            })
            .await?;
        Ok(anon.clone().with_token(token.token))
    }
}
