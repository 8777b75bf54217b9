//! `rampart audit verify|list|export`: the audit trail read straight from the database of a
//! data directory, with no controller running (or beside one).
//!
//! * `verify` opens the database query-only, checks every record hash, chain link, Merkle root
//!   and checkpoint signature, prints the report as JSON and exits 0 when the trail is intact,
//!   1 when a problem was found (each named by seq and kind), 3 when it cannot read the trail.
//!   Checkpoint keys come from the database and from `--trusted-key` files; an auditor should
//!   pin the key outside the data directory (`--only-trusted-keys`), since whoever can rewrite
//!   the database can rewrite its key table. `--checkpoint FILE` adds the newest checkpoint as
//!   the log manager received it, which also catches a deleted tail with its checkpoints.
//! * `list` prints records as JSON lines; `export --format ocsf|cadf|cef|syslog` in a standard
//!   format. Both are themselves recorded (`audit.events.export`, actor `rampart-cli`).

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use rampart_audit::checkpoint::{Checkpoint, CheckpointSigner, Ed25519Signer, KeyRing, TrustedKey};
use rampart_audit::formats::{Format, Product, SyslogOptions, export_line};
use rampart_audit::record::{Actor, AuditResult, NewRecord, Target};
use rampart_audit::store::{AuditLog, CheckpointPolicy};
use rampart_audit::verify::VerifyOptions;
use rampart_common::error::ErrorChain;
use rampart_db::audit::{EventFilter, SqlAuditStore};

use crate::{ConfigProblem, ControllerArgs, Failure, load_config};

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Verify the trail: exit 0 when intact, 1 when a problem is found.
    Verify(VerifyArgs),
    /// Print records as JSON lines.
    List(ListArgs),
    /// Print records in a standard format.
    Export(ExportArgs),
}

#[derive(Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    db: ControllerArgs,
    /// A trusted checkpoint public key (JSON `{"key_id","algorithm","public_key"}`), repeatable.
    #[arg(long)]
    trusted_key: Vec<PathBuf>,
    /// Trust only the `--trusted-key` files, not the keys recorded in the database.
    #[arg(long)]
    only_trusted_keys: bool,
    /// The newest checkpoint as the external log manager received it (JSON).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
}

#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    db: ControllerArgs,
    /// Operation, exact or a prefix ending in `*`.
    #[arg(long)]
    operation: Option<String>,
    /// Actor id or name.
    #[arg(long)]
    actor: Option<String>,
    /// Only this outcome; `pending` lists the write-ahead records of state-changing calls.
    #[arg(long, value_parser = ["success", "failure", "pending"])]
    result: Option<String>,
    /// At most this many records.
    #[arg(long, default_value_t = 1000)]
    limit: u32,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    Ocsf,
    Cadf,
    Cef,
    Syslog,
}

#[derive(Args)]
pub struct ExportArgs {
    #[command(flatten)]
    list: ListArgs,
    #[arg(long, value_enum)]
    format: ExportFormat,
}

pub(crate) fn runtime(e: impl std::error::Error + 'static) -> Failure {
    Failure::Runtime(anyhow::anyhow!("{}", ErrorChain(&e)))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &PathBuf, what: &str) -> Result<T, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Failure::Config(ConfigProblem(anyhow::anyhow!(
            "cannot read {what} {}: {e}",
            path.display()
        )))
    })?;
    serde_json::from_str(&text).map_err(|_| {
        Failure::Config(ConfigProblem(anyhow::anyhow!(
            "{} is not a valid {what}",
            path.display()
        )))
    })
}

pub async fn run(cmd: AuditCommand) -> Result<(), Failure> {
    match cmd {
        AuditCommand::Verify(a) => verify(a).await,
        AuditCommand::List(a) => list(a, None).await,
        AuditCommand::Export(a) => {
            let f = match a.format {
                ExportFormat::Ocsf => Format::Ocsf,
                ExportFormat::Cadf => Format::Cadf,
                ExportFormat::Cef => Format::Cef,
                ExportFormat::Syslog => Format::Syslog,
            };
            list(a.list, Some(f)).await
        }
    }
}

async fn verify(a: VerifyArgs) -> Result<(), Failure> {
    let (config, data_dir) = load_config(&a.db).map_err(Failure::Config)?;
    let url = config.database_url(&data_dir);
    let db = match rampart_db::audit::connect_query_only(&url, config.database.password_file.as_deref()).await {
        Ok(db) => db,
        Err(e) => {
            eprintln!("error: cannot open the audit trail: {}", ErrorChain(&e));
            return Err(Failure::Exit(3));
        }
    };
    let mut keys: Vec<TrustedKey> = Vec::new();
    if !a.only_trusted_keys {
        let mut conn = db.conn().await.map_err(runtime)?;
        let ring = rampart_db::audit::keys(&mut conn).await.map_err(runtime)?;
        keys.extend(ring.keys.into_values());
    }
    for path in &a.trusted_key {
        let k: TrustedKey = read_json(path, "checkpoint key")?;
        if k.key_id != rampart_audit::checkpoint::key_id_of(&k.public_key) {
            return Err(Failure::Config(ConfigProblem(anyhow::anyhow!(
                "{}: key_id does not match the public key",
                path.display()
            ))));
        }
        keys.push(k);
    }
    let trusted_head: Option<Checkpoint> = match &a.checkpoint {
        Some(p) => Some(read_json(p, "checkpoint")?),
        None => None,
    };
    let store = SqlAuditStore::new(db.clone());
    let report = match rampart_audit::store::verify_store(
        &store,
        &KeyRing::new(keys),
        VerifyOptions {
            trusted_head,
            ..VerifyOptions::default()
        },
    )
    .await
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot read the audit trail: {}", ErrorChain(&e));
            return Err(Failure::Exit(3));
        }
    };
    db.close().await;
    println!("{}", serde_json::to_string_pretty(&report).expect("report serialises"));
    if report.ok {
        Ok(())
    } else {
        eprintln!(
            "audit trail NOT intact: {} problem(s), first at seq {} ({:?})",
            report.problems.len() as u64 + report.problems_omitted,
            report.problems.first().map_or(0, |p| p.seq),
            report.problems.first().map(|p| p.kind)
        );
        Err(Failure::Exit(1))
    }
}

/// The database of a data directory and an appender on its trail, for the offline verbs that
/// leave a record of themselves: with the controller's checkpoint key, leaving checkpoints and
/// the forwarding queue to the controller.
pub(crate) async fn open_trail(
    args: &ControllerArgs,
) -> Result<
    (
        rampart_db::Db,
        AuditLog<SqlAuditStore>,
        std::path::PathBuf,
        rampart_common::config::Config,
    ),
    Failure,
> {
    let (config, data_dir) = load_config(args).map_err(Failure::Config)?;
    let db = rampart_db::Db::connect(
        &config.database_url(&data_dir),
        &rampart_db::ConnectOptions {
            max_connections: 2,
            connect_timeout: std::time::Duration::from_secs(config.database.connect_timeout_s),
            password_file: config.database.password_file.clone(),
            migration_url: Some(config.database.migration_url.clone()).filter(|u| !u.is_empty()),
            migration_password_file: config.database.migration_password_file.clone(),
            runtime_role: Some(config.database.runtime_role.clone()).filter(|r| !r.is_empty()),
        },
    )
    .await
    .map_err(runtime)?;
    let signer = std::sync::Arc::new(
        Ed25519Signer::load_or_create(&data_dir.join("audit").join("checkpoint.key")).map_err(runtime)?,
    );
    {
        let mut conn = db.conn().await.map_err(runtime)?;
        rampart_db::audit::register_key(&mut conn, &signer.public_key(), time::OffsetDateTime::now_utc())
            .await
            .map_err(runtime)?;
    }
    let audit = AuditLog::open(
        SqlAuditStore::new(db.clone()),
        signer,
        rampart_common::time::system_clock(),
        CheckpointPolicy {
            every_records: u64::MAX,
            every: time::Duration::days(36_500),
        },
    )
    .await
    .map_err(runtime)?;
    Ok((db, audit, data_dir, config))
}

async fn list(a: ListArgs, format: Option<Format>) -> Result<(), Failure> {
    // Reading the trail is itself recorded, as through the API.
    let (db, audit, _, _) = open_trail(&a.db).await?;
    let filter = EventFilter {
        operation: a.operation.clone(),
        actor: a.actor.clone(),
        outcome: a.result.clone(),
        ..EventFilter::default()
    };
    let mut after = None;
    let mut left = a.limit;
    let mut printed = 0u64;
    let product = Product::default();
    let syslog = SyslogOptions::default();
    while left > 0 {
        let page = left.min(1000);
        let rows = {
            let mut conn = db.conn().await.map_err(runtime)?;
            rampart_db::audit::list_events(&mut conn, &filter, after, page)
                .await
                .map_err(runtime)?
        };
        if rows.is_empty() {
            break;
        }
        for row in &rows {
            match row {
                Ok(r) => {
                    after = Some(r.seq as i64);
                    let line = match format {
                        Some(f) => export_line(r, f, &product, &syslog),
                        None => serde_json::to_string(r).expect("records serialise"),
                    };
                    println!("{line}");
                    printed += 1;
                }
                Err(e) => {
                    after = Some(e.seq);
                    eprintln!(
                        "warning: record {} does not decode ({}); run `rampart audit verify`",
                        e.seq, e.field
                    );
                }
            }
        }
        left = left.saturating_sub(rows.len() as u32);
        if (rows.len() as u32) < page {
            break;
        }
    }
    let os_user = std::env::var("USER").unwrap_or_default();
    let mut rec = NewRecord::new(
        time::OffsetDateTime::now_utc(),
        Actor::system("rampart-cli"),
        "audit.events.export",
        Target::new("audit_trail", None, None),
        AuditResult::success(200),
    )
    .detail("records", printed)
    .detail(
        "format",
        match format {
            None => "json",
            Some(Format::Ocsf) => "ocsf",
            Some(Format::Cadf) => "cadf",
            Some(Format::Cef) => "cef",
            Some(Format::Syslog) => "syslog",
        },
    );
    if !os_user.is_empty() {
        rec = rec.detail("os_user", os_user);
    }
    audit.append(rec).await.map_err(runtime)?;
    db.close().await;
    Ok(())
}
