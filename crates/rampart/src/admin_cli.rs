//! `rampart admin recover-security-admin`: the documented break-glass way to a security admin
//! when none is usable (lost second factor and no other security admin; spec 13.1.1-2: the
//! system admin cannot appoint one). Only on the controller host, as root, with the controller
//! stopped, and recorded in the audit trail (`security_admin.recover`, actor `rampart-cli`).

use std::os::unix::fs::MetadataExt;

use clap::{Args, Subcommand};
use rampart_audit::record::{Actor, AuditResult, NewRecord, Target};

use crate::audit_cli::{open_trail, runtime};
use crate::{ControllerArgs, Failure};

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Break-glass: make an account a usable security admin again, with a new one-time password
    /// (host root, controller stopped; audited).
    RecoverSecurityAdmin(RecoverArgs),
}

#[derive(Args)]
pub struct RecoverArgs {
    #[command(flatten)]
    db: ControllerArgs,
    /// The account (default domain) to recover or create.
    #[arg(long, default_value = rampart_controller::bootstrap::SECURITY_ADMIN)]
    user: String,
}

fn refuse(message: String) -> Failure {
    eprintln!("error: {message}");
    Failure::Exit(2)
}

pub async fn run(cmd: AdminCommand) -> Result<(), Failure> {
    match cmd {
        AdminCommand::RecoverSecurityAdmin(a) => recover(a).await,
    }
}

async fn recover(a: RecoverArgs) -> Result<(), Failure> {
    // The effective uid owns /proc/self.
    let euid = std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(u32::MAX);
    if euid != 0 {
        return Err(refuse(
            "recover-security-admin runs only as root on the controller host".into(),
        ));
    }
    let (config, _) = crate::load_config(&a.db).map_err(Failure::Config)?;
    // A running controller holds its API addresses: recovery happens with it stopped, so no
    // session can race the reset and the operator had to stop the service to do it.
    for addr in config.api.listen.iter().filter(|a| a.port() != 0) {
        if let Err(e) = std::net::TcpListener::bind(addr)
            && e.kind() == std::io::ErrorKind::AddrInUse
        {
            return Err(refuse(format!(
                "{addr} is in use: stop the controller before recovering a security admin"
            )));
        }
    }
    let (db, audit, data_dir, _) = open_trail(&a.db).await?;
    let now = time::OffsetDateTime::now_utc();
    let outcome = rampart_controller::bootstrap::recover_security_admin(&db, &data_dir, &a.user, now).await;
    let os_user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_default();
    let (result, target_id) = match &outcome {
        Ok(r) => (AuditResult::success(200), Some(r.user_id.to_string())),
        Err(_) => (AuditResult::failure(500, "recovery_failed"), None),
    };
    let mut rec = NewRecord::new(
        now,
        Actor::system("rampart-cli"),
        "security_admin.recover",
        Target::new("user", target_id, None),
        result,
    )
    .detail("name", a.user.clone())
    .detail("host_uid", 0);
    if !os_user.is_empty() {
        rec = rec.detail("os_user", os_user);
    }
    audit.append(rec).await.map_err(runtime)?;
    db.close().await;
    let r = outcome.map_err(runtime)?;
    println!(
        "{} {:?} holds security-admin; its one-time password is in {} (change it at first login, then enrol a second factor)",
        if r.created { "created" } else { "recovered" },
        a.user,
        r.password_file.display()
    );
    Ok(())
}
