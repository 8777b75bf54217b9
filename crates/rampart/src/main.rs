//! `rampart`: the one binary. `up` runs the controller and a local agent on the embedded
//! default (SQLite in the data directory); `controller` and `agent` run them apart.

mod admin_cli;
mod audit_cli;
mod blackbox;
mod cli;
mod logging;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use rampart_agent::host::RealHost;
use rampart_agent::{Agent, AgentOptions};
use rampart_common::Sensitive;
use rampart_common::config::Config;
use rampart_common::error::ErrorChain;
use rampart_controller::{Controller, ControllerOptions};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "rampart",
    version,
    about = "Rampart: a security-first cloud operating system"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the controller and a local agent on this machine (SQLite, embedded CA).
    Up(ControllerArgs),
    /// Start the controller only.
    Controller(ControllerArgs),
    /// Start a node agent that joins a controller.
    Agent(AgentArgs),
    /// Print the OpenAPI document of the public API (or of the agent protocol).
    Openapi {
        #[arg(long)]
        agent: bool,
    },
    /// The audit trail, offline: verify it, list or export records.
    #[command(subcommand)]
    Audit(audit_cli::AuditCommand),
    /// Host-side administration (root, on the controller host).
    #[command(subcommand)]
    Admin(admin_cli::AdminCommand),
    /// Writes a black-box dump through a real panic (tests of the crash path).
    #[command(hide = true)]
    DebugCrash(ControllerArgs),
    /// Log in to a controller and keep the session for the other verbs.
    Login {
        /// Controller URL [default: the saved session's, or https://127.0.0.1:8443]
        #[arg(long)]
        url: Option<String>,
        /// CA certificate of the controller [default: /var/lib/rampart/ca.pem]
        #[arg(long)]
        ca: Option<PathBuf>,
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        domain: Option<String>,
        /// Scope the session to one project.
        #[arg(long)]
        project: Option<String>,
    },
    /// End the session.
    Logout,
    /// Print the saved session's token, for other HTTPS clients: curl -H "Authorization: Bearer $(rampart token)".
    Token,
    /// Change a password (also the bootstrap admin's one-time password).
    Passwd {
        #[arg(long)]
        url: Option<String>,
        #[arg(long)]
        ca: Option<PathBuf>,
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        domain: Option<String>,
    },
    /// Enrol a TOTP second factor for the logged-in user.
    MfaEnrol,
    /// Users.
    #[command(subcommand)]
    User(cli::identity::UserCmd),
    /// Projects.
    #[command(subcommand)]
    Project(cli::identity::ProjectCmd),
    /// Roles and role assignments.
    #[command(subcommand)]
    Role(cli::identity::RoleCmd),
    /// Customer keys in the HSM: lifecycle and encrypt/decrypt.
    #[command(subcommand)]
    Key(cli::keys::KeyCmd),
    /// Certificates: inventory, issue from a CSR, import, revoke, CRL.
    #[command(subcommand)]
    Cert(cli::keys::CertCmd),
    /// VM images: signing keys and signatures (local), upload, list, show, delete.
    #[command(subcommand)]
    Image(cli::images::ImageCmd),
    /// Encrypted volumes: create, list, show, extend, attach, detach, access, delete, wipe-report.
    #[command(subcommand)]
    Volume(cli::volumes::VolumeCmd),
    /// Host hardening on this machine: check (spec 9.1) and apply the file-based fixes.
    #[command(subcommand)]
    Harden(cli::posture::HardenCmd),
    /// Package vulnerabilities (spec 15-4): import OSV / Debian tracker data, scan a root.
    #[command(subcommand)]
    Vulndb(cli::posture::VulndbCmd),
    /// Live conformance of the cloud with the specification (spec 15-3): every clause, its
    /// tests, and what the live probes found. Exit 1 when a probed clause fails.
    Conformance(cli::conformance::ConformanceArgs),
    /// Encrypted backups of the control plane (spec 14.2): create, verify, list.
    #[command(subcommand)]
    SystemBackup(cli::system_backup::SystemBackupCmd),
    /// Restore a control-plane backup into a new data directory.
    SystemRestore(cli::system_backup::RestoreArgs),
}

#[derive(Args)]
pub(crate) struct ControllerArgs {
    /// State directory: database, CA, logs, bootstrap password [default: /var/lib/rampart as
    /// root, ~/.local/share/rampart otherwise]
    #[arg(long, env = "RAMPART_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Configuration file (TOML; see docs/configuration.md).
    #[arg(long, env = "RAMPART_CONFIG")]
    config: Option<PathBuf>,
    /// Database URL, overriding `database.url` (e.g. postgres://rampart@db/rampart?sslmode=verify-full).
    #[arg(long, env = "RAMPART_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
}

#[derive(Args)]
struct AgentArgs {
    /// URL of the controller, e.g. https://10.0.0.1:8443
    #[arg(long)]
    controller: String,
    /// One-time join token (from POST /v1/nodes/join-tokens). Prefer --join-file or the
    /// environment: command lines are visible to every local user.
    #[arg(long, env = "RAMPART_JOIN_TOKEN", hide_env_values = true)]
    join: Option<String>,
    /// File holding the join token.
    #[arg(long, conflicts_with = "join")]
    join_file: Option<PathBuf>,
    /// Agent state directory [default: /var/lib/rampart-agent as root, ~/.local/share/rampart-agent otherwise]
    #[arg(long, env = "RAMPART_AGENT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Node name [default: the host name]
    #[arg(long)]
    name: Option<String>,
    /// CA certificate of the controller; without it the agent fetches it and checks it
    /// against the SHA-256 pinned in the join token.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// `tracing` filter for the run log.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Directory of the VMs (one 0700 directory per VM, owned by its uid).
    #[arg(long, default_value = "/var/lib/rampart-vms")]
    vm_state_dir: PathBuf,
    /// Accelerator: auto (KVM only with hardware virtualization), kvm or tcg.
    #[arg(long, default_value = "auto")]
    accel: String,
    /// Prefix of the network namespaces this agent owns (VPC routers, external network). Two
    /// agents on one host need different prefixes.
    #[arg(long, default_value = "rp-")]
    netns_prefix: String,
    /// Seconds between checks of the data plane against the desired state (drift repair).
    #[arg(long, default_value_t = 30)]
    reconcile_interval_s: u64,
    /// Tenant-plane interface (VXLAN underlay to other nodes), with --tunnel-ip.
    #[arg(long, requires = "tunnel_ip")]
    tunnel_interface: Option<String>,
    /// This node's IPv4 address on the tenant-plane interface.
    #[arg(long, requires = "tunnel_interface")]
    tunnel_ip: Option<std::net::Ipv4Addr>,
    /// Volumes on Ceph instead of the local pool: a TOML file with a `[ceph]` section
    /// (monitors, pool, client_id, keyring, storage_network, storage_address,
    /// storage_interface; docs/storage.md). A monitor outside the storage network is refused.
    #[arg(long)]
    ceph_config: Option<PathBuf>,
    /// Directory of the node's `local` volume pool (default `<data-dir>/volumes`); on a btrfs
    /// RAID1 filesystem over two devices the pool is redundant (14.1-2, docs/storage.md).
    #[arg(long)]
    storage_pool: Option<PathBuf>,
    /// Seconds between scrubs of a btrfs pool (0: never).
    #[arg(long, default_value_t = 86_400)]
    scrub_interval_s: u64,
}

impl AgentArgs {
    /// The settings of this agent as text, for the configuration digest of its black-box
    /// dumps; the join token is left out.
    fn effective_settings(&self) -> String {
        format!(
            "controller = {:?}\nname = {:?}\nca_file = {:?}\nlog_level = {:?}\nvm_state_dir = {:?}\naccel = {:?}\n\
             netns_prefix = {:?}\nreconcile_interval_s = {}\ntunnel_interface = {:?}\ntunnel_ip = {:?}\n\
             ceph_config = {:?}\n\
             storage_pool = {:?}\nscrub_interval_s = {}\n",
            self.controller,
            self.name,
            self.ca_file,
            self.log_level,
            self.vm_state_dir,
            self.accel,
            self.netns_prefix,
            self.reconcile_interval_s,
            self.tunnel_interface,
            self.tunnel_ip,
            self.ceph_config,
            self.storage_pool,
            self.scrub_interval_s,
        )
    }
}

/// The Ceph backend of `--ceph-config` (TOML), or why the agent must not start.
fn ceph_backend(path: &Path, data_dir: &Path) -> Result<Arc<dyn rampart_agent::storage::StorageBackendDyn>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let value: toml::Value = toml::from_str(&text).map_err(|e| e.to_string())?;
    let json = serde_json::to_string(&value).map_err(|e| e.to_string())?;
    let settings = rampart_agent::storage::ceph::parse(&json)?;
    rampart_agent::storage::ceph::open(settings, data_dir)
}

/// How the node runs VMs, or none (logged) when this host cannot.
fn node_compute(state_dir: PathBuf, accel: &str) -> Option<rampart_agent::compute::ComputeOptions> {
    match rampart_agent::compute::ComputeOptions::real(state_dir, accel) {
        Ok(c) => {
            tracing::info!(accel = %c.accel, reason = %c.reason, "this node runs VMs");
            Some(c)
        }
        Err(why) => {
            tracing::warn!(reason = %why, "this node runs no VMs");
            None
        }
    }
}

fn default_dir(name: &str) -> PathBuf {
    if is_root() {
        PathBuf::from("/var/lib").join(name)
    } else {
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        home.join(".local/share").join(name)
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Set only in the process re-executed by [`embedded_hsm_env`], so it never loops.
const REEXEC_GUARD: &str = "RAMPART_HSM_REEXEC";

/// The embedded SoftHSM2 token (`[kms] hsm = "embedded"`, the default) lives in
/// `DATA_DIR/hsm/`; SoftHSM reads where from `SOFTHSM2_CONF` once per process, at module load.
/// So: prepare the directory, configuration and PINs (first start), then re-execute this
/// binary with `SOFTHSM2_CONF` set before any thread exists. The token itself is initialised
/// by the controller when it opens it. Configuration errors are left to `run_controller`.
fn embedded_hsm_env(args: &ControllerArgs) -> anyhow::Result<()> {
    let Ok((config, data_dir)) = load_config(args) else {
        return Ok(());
    };
    let Some(conf) = rampart_controller::kms::embedded_conf(&config, &data_dir)
        .map_err(|e| anyhow::anyhow!("{}", ErrorChain(&e)))?
    else {
        return Ok(());
    };
    if std::env::var_os("SOFTHSM2_CONF").is_some_and(|v| Path::new(&v) == conf) {
        return Ok(());
    }
    if std::env::var_os(REEXEC_GUARD).is_some() {
        anyhow::bail!(
            "SOFTHSM2_CONF is still not {} after re-executing; unset SOFTHSM2_CONF or use [kms] hsm = \"pkcs11\"",
            conf.display()
        );
    }
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("cannot find the rampart binary to re-execute it")?;
    let mut argv = std::env::args_os();
    let mut cmd = std::process::Command::new(exe);
    if let Some(arg0) = argv.next() {
        cmd.arg0(arg0);
    }
    let e = cmd.args(argv).env("SOFTHSM2_CONF", &conf).env(REEXEC_GUARD, "1").exec();
    Err(anyhow::Error::new(e).context("cannot re-execute rampart with SOFTHSM2_CONF for the embedded HSM"))
}

/// Errors of the configuration: exit code 2, like a usage error.
pub(crate) struct ConfigProblem(pub(crate) anyhow::Error);

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Up(args) | Command::Controller(args) = &cli.command
        && let Ok((config, _)) = load_config(args)
        && let Err((addr, e)) =
            rampart_controller::planes::check_listen(&config.api.listen, config.network.management_interface.as_deref())
    {
        // Before the embedded HSM's directory, the logs or the database are created.
        eprintln!(
            "error: cannot listen on {addr}: {e} (check api.listen: the address must be on this host and the port free)"
        );
        return ExitCode::FAILURE;
    }
    if let Command::Up(args) | Command::Controller(args) = &cli.command
        && let Err(e) = embedded_hsm_env(args)
    {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("rampart-worker")
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Up(args) => run_controller(args, true).await,
            Command::Controller(args) => run_controller(args, false).await,
            Command::Agent(args) => run_agent(args).await,
            Command::Audit(cmd) => audit_cli::run(cmd).await,
            Command::Admin(cmd) => admin_cli::run(cmd).await,
            Command::DebugCrash(args) => debug_crash(args),
            Command::Login {
                url,
                ca,
                user,
                domain,
                project,
            } => cli::session::login(cli::session::LoginArgs {
                url,
                ca,
                user,
                domain,
                project,
            })
            .await
            .map_err(Failure::Runtime),
            Command::Logout => cli::session::logout().await.map_err(Failure::Runtime),
            Command::Token => cli::session::print_token().map_err(Failure::Runtime),
            Command::Passwd { url, ca, user, domain } => cli::session::passwd(url, ca, user, domain)
                .await
                .map_err(Failure::Runtime),
            Command::MfaEnrol => cli::identity::mfa_enrol().await.map_err(Failure::Runtime),
            Command::User(cmd) => cli::identity::user(cmd).await.map_err(Failure::Runtime),
            Command::Project(cmd) => cli::identity::project(cmd).await.map_err(Failure::Runtime),
            Command::Role(cmd) => cli::identity::role(cmd).await.map_err(Failure::Runtime),
            Command::Key(cmd) => cli::keys::key(cmd).await.map_err(Failure::Runtime),
            Command::Cert(cmd) => cli::keys::cert(cmd).await.map_err(Failure::Runtime),
            Command::Image(cmd) => cli::images::image(cmd).await.map_err(Failure::Runtime),
            Command::Volume(cmd) => cli::volumes::volume(cmd).await.map_err(Failure::Runtime),
            Command::Harden(cmd) => cli::posture::harden(cmd),
            Command::Vulndb(cmd) => cli::posture::vulndb(cmd),
            Command::Conformance(a) => cli::conformance::conformance(a).await,
            Command::SystemBackup(cmd) => cli::system_backup::run(cmd).await,
            Command::SystemRestore(args) => cli::system_backup::restore(args).await,
            Command::Openapi { agent } => {
                let doc = if agent {
                    rampart_controller::routes::agent_openapi()
                } else {
                    rampart_controller::routes::public_openapi()
                };
                println!("{}", serde_json::to_string_pretty(&doc).expect("OpenAPI serialises"));
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(ConfigProblem(e))) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(e)) => {
            tracing::error!(error = %format!("{e:#}"), "exiting");
            // The fatal path of the black box (a no-op when it is not installed).
            if let Ok(path) = blackbox::dump("fatal", None, &format!("{e:#}")) {
                eprintln!("black-box dump written to {}", path.display());
            }
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
        Err(Failure::Exit(code)) => ExitCode::from(code),
    }
}

pub(crate) enum Failure {
    Config(ConfigProblem),
    Runtime(anyhow::Error),
    /// A command that reported its result and exits with this code.
    Exit(u8),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Runtime(e)
    }
}

pub(crate) fn load_config(args: &ControllerArgs) -> Result<(Config, PathBuf), ConfigProblem> {
    let mut config = match &args.config {
        Some(path) => Config::load(path).map_err(|e| ConfigProblem(e.into()))?,
        None => Config::default(),
    };
    if let Some(url) = &args.database_url {
        config.database.url = url.clone();
        config.validate().map_err(|e| ConfigProblem(e.into()))?;
    }
    logging::filter(&config.log.level).map_err(ConfigProblem)?;
    let data_dir = args
        .data_dir
        .clone()
        .or_else(|| config.data_dir.clone())
        .unwrap_or_else(|| default_dir("rampart"));
    Ok((config, data_dir))
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn run_controller(args: ControllerArgs, with_agent: bool) -> Result<(), Failure> {
    let (config, data_dir) = load_config(&args).map_err(Failure::Config)?;
    let (_guard, mut dumps) = controller_black_box(&config, &data_dir)?;
    let agent_config = config.local_agent.clone();
    let compute_config = config.compute.clone();
    let controller = Controller::start(ControllerOptions {
        config,
        data_dir: data_dir.clone(),
        clock: rampart_common::time::system_clock(),
    })
    .await
    .map_err(|e| anyhow::anyhow!("{}", ErrorChain(&e)))?;
    let url = controller.url();

    // Black-box dumps become audit records: those left by an earlier run now, new ones as
    // they come; SIGUSR2 writes one without stopping.
    let audit = controller.state.audit.clone();
    let blackbox_dir = data_dir.join("blackbox");
    let dump_task = tokio::spawn(async move {
        for d in blackbox::unrecorded(&blackbox_dir) {
            if let Err(e) = blackbox::record(&audit, &d).await {
                tracing::error!(error = %e, "cannot record a black-box dump in the audit trail");
            }
        }
        while let Some(d) = dumps.recv().await {
            if let Err(e) = blackbox::record(&audit, &d).await {
                tracing::error!(error = %e, "cannot record a black-box dump in the audit trail");
            }
        }
    });
    let usr2_task = blackbox::spawn_sigusr2_dumps();

    let stop_agent = CancellationToken::new();
    let mut agent_task = None;
    if with_agent && agent_config.enabled {
        match start_local_agent(
            &controller,
            &data_dir,
            &agent_config.name,
            &compute_config,
            stop_agent.clone(),
        )
        .await
        {
            Ok(task) => agent_task = Some(task),
            Err(e) => {
                controller.shutdown().await;
                return Err(e.context("the local agent could not start").into());
            }
        }
    }
    print_banner(&url, &data_dir, with_agent);
    shutdown_signal().await;
    tracing::info!("shutting down");
    stop_agent.cancel();
    if let Some(task) = agent_task {
        let _ = task.await;
    }
    usr2_task.abort();
    dump_task.abort();
    controller.shutdown().await;
    Ok(())
}

/// The run log and the black box of a controller process (`rampart up`, `debug-crash`).
fn controller_black_box(config: &Config, data_dir: &Path) -> anyhow::Result<blackbox::Started> {
    blackbox::start(
        logging::LogOptions {
            level: &config.log.level,
            dir: Some(&config.log_dir(data_dir)),
            to_stderr: config.log.stderr,
            max_files: config.log.max_files,
            max_file_bytes: config.log.max_file_bytes,
            recorder: None,
        },
        config.audit.blackbox_events,
        data_dir,
        blackbox::config_digest(config),
    )
}

/// `rampart debug-crash`: the logging and black box of `rampart up`, then a real panic.
fn debug_crash(args: ControllerArgs) -> Result<(), Failure> {
    let (config, data_dir) = load_config(&args).map_err(Failure::Config)?;
    rampart_common::fsutil::ensure_private_dir(&data_dir).map_err(|e| Failure::Runtime(e.into()))?;
    let _black_box = controller_black_box(&config, &data_dir)?;
    for step in 1..=3 {
        tracing::info!(step, "debug-crash: about to fail");
    }
    panic!("debug-crash: deliberate panic to exercise the black box");
}

async fn start_local_agent(
    controller: &Controller,
    data_dir: &Path,
    name: &str,
    compute: &rampart_common::config::ComputeConfig,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let agent_dir = data_dir.join("agent");
    let host = Arc::new(RealHost);
    let name = if name.is_empty() {
        rampart_common::names::node_name_from_hostname(&rampart_agent::host::hostname())
    } else {
        name.to_string()
    };
    let join_token = if rampart_agent::identity::Identity::load(&agent_dir)
        .map_err(|e| anyhow::anyhow!("{}", ErrorChain(&e)))?
        .is_none()
    {
        let token = controller
            .issue_join_token(Some(name.clone()))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Some(token.token)
    } else {
        None
    };
    let agent = Agent::enrol(AgentOptions {
        controller_url: controller.url(),
        data_dir: agent_dir,
        join_token,
        name: Some(name),
        ca_file: Some(data_dir.join("ca.pem")),
        host,
        compute: node_compute(compute.vm_state_dir.clone(), &compute.accel),
        network: local_net_options(&controller.state.config.network),
        clock: rampart_common::time::system_clock(),
    })
    .await
    .map_err(|e| anyhow::anyhow!("{}", ErrorChain(&e)))?;
    let local = &controller.state.config.local_agent;
    let scrub_interval = std::time::Duration::from_secs(local.scrub_interval_s);
    let agent = match &local.storage_pool {
        Some(dir) => agent.with_local_pool(dir.clone(), scrub_interval),
        None => agent.with_scrub_interval(scrub_interval),
    };
    let handle = agent.spawn(stop).map_err(|e| anyhow::anyhow!("{}", ErrorChain(&e)))?;
    Ok(tokio::spawn(async move {
        if let Ok(Err(e)) = handle.await {
            tracing::error!(error = %ErrorChain(&e), "local agent stopped");
        }
    }))
}

/// The local agent's network settings from the `[network]` section.
fn local_net_options(cfg: &rampart_common::config::NetworkConfig) -> rampart_agent::NetOptions {
    rampart_agent::NetOptions {
        netns_prefix: cfg.netns_prefix.clone(),
        run_dir: None,
        reconcile_interval: std::time::Duration::from_secs(cfg.reconcile_interval_s),
        underlay: match (
            &cfg.tunnel_interface,
            cfg.tunnel_ip.as_deref().and_then(|ip| ip.parse().ok()),
        ) {
            (Some(device), Some(local_ip)) => Some(rampart_net::desired::Underlay {
                device: device.clone(),
                local_ip,
            }),
            _ => None,
        },
    }
}

fn print_banner(url: &str, data_dir: &Path, with_agent: bool) {
    let pw = data_dir.join(rampart_controller::bootstrap::PASSWORD_FILE);
    eprintln!(
        "\nRampart {} is up{}.",
        rampart_common::VERSION,
        if with_agent { " with a local agent" } else { "" }
    );
    eprintln!("  API         {url}");
    eprintln!("  CA          {}", data_dir.join("ca.pem").display());
    if pw.exists() {
        eprintln!(
            "  admin       user 'admin', one-time password in {} (change it at first login)",
            pw.display()
        );
    }
    let security = data_dir.join(rampart_controller::bootstrap::SECURITY_PASSWORD_FILE);
    if security.exists() {
        eprintln!(
            "  security    user 'security' (security-admin), one-time password in {}",
            security.display()
        );
    }
    eprintln!("  logs        {}", data_dir.join("logs").display());
    eprintln!(
        "  try         curl --cacert {} {url}/v1/health\n",
        data_dir.join("ca.pem").display()
    );
}

async fn run_agent(args: AgentArgs) -> Result<(), Failure> {
    logging::filter(&args.log_level)
        .map_err(ConfigProblem)
        .map_err(Failure::Config)?;
    let data_dir = args.data_dir.clone().unwrap_or_else(|| default_dir("rampart-agent"));
    rampart_common::fsutil::ensure_private_dir(&data_dir)
        .with_context(|| format!("cannot create the agent's data directory {}", data_dir.display()))?;
    // The black box of `rampart up`, under the agent's data directory. No controller runs in
    // this process to audit the dumps: they stay on the node, in <data_dir>/blackbox/.
    let (_guard, _dumps) = blackbox::start(
        logging::LogOptions {
            level: &args.log_level,
            dir: Some(&data_dir.join("logs")),
            to_stderr: true,
            max_files: 14,
            max_file_bytes: 64 << 20,
            recorder: None,
        },
        rampart_common::config::AuditConfig::default().blackbox_events,
        &data_dir,
        blackbox::text_digest(&args.effective_settings()),
    )?;
    let _usr2 = blackbox::spawn_sigusr2_dumps();
    let join_token = match (&args.join, &args.join_file) {
        (Some(t), _) => Some(Sensitive::new(t.trim())),
        (None, Some(f)) => Some(Sensitive::new(
            std::fs::read_to_string(f)
                .with_context(|| format!("cannot read {}", f.display()))?
                .trim(),
        )),
        (None, None) => None,
    };
    if let Some(name) = &args.name {
        rampart_common::names::validate_node_name(name)
            .map_err(|e| Failure::Config(ConfigProblem(anyhow::anyhow!("--name: {e}"))))?;
    }
    if !rampart_common::config::valid_netns_prefix(&args.netns_prefix) {
        return Err(Failure::Config(ConfigProblem(anyhow::anyhow!(
            "--netns-prefix: must be 1 to 12 of a-z, 0-9 and '-'"
        ))));
    }
    if args
        .tunnel_interface
        .as_deref()
        .is_some_and(|i| !rampart_common::config::valid_ifname(i))
    {
        return Err(Failure::Config(ConfigProblem(anyhow::anyhow!(
            "--tunnel-interface: not an interface name"
        ))));
    }
    if !(1..=3600).contains(&args.reconcile_interval_s) {
        return Err(Failure::Config(ConfigProblem(anyhow::anyhow!(
            "--reconcile-interval-s: must be between 1 and 3600"
        ))));
    }
    // The storage plane is checked before anything else talks to the network (10.1).
    let ceph =
        match &args.ceph_config {
            Some(path) => Some(ceph_backend(path, &data_dir).map_err(|e| {
                Failure::Config(ConfigProblem(anyhow::anyhow!("--ceph-config {}: {e}", path.display())))
            })?),
            None => None,
        };
    let agent = Agent::enrol(AgentOptions {
        controller_url: args.controller.clone(),
        data_dir,
        join_token,
        name: args.name.clone(),
        ca_file: args.ca_file.clone(),
        host: Arc::new(RealHost),
        compute: node_compute(args.vm_state_dir.clone(), &args.accel),
        network: rampart_agent::NetOptions {
            netns_prefix: args.netns_prefix.clone(),
            run_dir: None,
            reconcile_interval: std::time::Duration::from_secs(args.reconcile_interval_s),
            underlay: match (&args.tunnel_interface, args.tunnel_ip) {
                (Some(device), Some(local_ip)) => Some(rampart_net::desired::Underlay {
                    device: device.clone(),
                    local_ip,
                }),
                _ => None,
            },
        },
        clock: rampart_common::time::system_clock(),
    })
    .await
    .map_err(|e| anyhow::anyhow!("{}", ErrorChain(&e)))?;
    let scrub_interval = std::time::Duration::from_secs(args.scrub_interval_s);
    let agent = match (ceph, &args.storage_pool) {
        (Some(backend), _) => agent.with_storage(Some(backend)).with_scrub_interval(scrub_interval),
        (None, Some(dir)) => agent.with_local_pool(dir.clone(), scrub_interval),
        (None, None) => agent.with_scrub_interval(scrub_interval),
    };
    eprintln!(
        "Rampart agent: node {} ({}) talking to {}",
        agent.node_name(),
        agent.node_id(),
        args.controller
    );
    let stop = CancellationToken::new();
    let mut handle = agent
        .spawn(stop.clone())
        .map_err(|e| anyhow::anyhow!("{}", ErrorChain(&e)))?;
    tokio::select! {
        _ = shutdown_signal() => {
            stop.cancel();
            let _ = handle.await;
            Ok(())
        }
        r = &mut handle => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(anyhow::anyhow!("{}", ErrorChain(&e)).into()),
            Err(e) => Err(anyhow::anyhow!("agent task failed: {e}").into()),
        }
    }
}
