//! `rampart system-backup create|verify|list` and `rampart system-restore`: the control
//! plane's own backup (spec 14.2-1, 14.2-2), on the controller host, with or without the
//! controller running. The archive format and checks live in `rampart_backup::system`; the
//! database copy in `rampart_db::snapshot`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use rampart_backup::system::{self as sysbak, DatabaseCopy, DbBackend};
use rampart_common::error::ErrorChain;

use crate::{ControllerArgs, Failure, load_config};

#[derive(Subcommand)]
pub enum SystemBackupCmd {
    /// Write an encrypted backup of the controller: database (consistent while it runs),
    /// configuration, CA and TLS material, HSM token, audit keys and forwarding queue.
    Create {
        #[command(flatten)]
        controller: ControllerArgs,
        /// The backup file, or a directory to write `rampart-system-<time>.rsbk` into.
        #[arg(long)]
        out: PathBuf,
        /// File whose first line is the passphrase (at least 12 characters).
        #[arg(long)]
        passphrase_file: PathBuf,
    },
    /// Decrypt a backup and check every file against its manifest; nothing is written.
    Verify {
        file: PathBuf,
        #[arg(long)]
        passphrase_file: PathBuf,
        /// Print the manifest as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The backups of a directory, oldest first (from their plain headers: no passphrase).
    List {
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct RestoreArgs {
    /// The backup file.
    #[arg(long)]
    from: PathBuf,
    #[arg(long)]
    passphrase_file: PathBuf,
    /// The new data directory: must not exist or be empty.
    #[arg(long)]
    data_dir: PathBuf,
}

fn err(e: sysbak::SystemBackupError) -> Failure {
    Failure::Runtime(anyhow::anyhow!("{}", ErrorChain(&e)))
}

pub async fn run(cmd: SystemBackupCmd) -> Result<(), Failure> {
    match cmd {
        SystemBackupCmd::Create {
            controller,
            out,
            passphrase_file,
        } => create(&controller, &out, &passphrase_file).await,
        SystemBackupCmd::Verify {
            file,
            passphrase_file,
            json,
        } => {
            let pass = sysbak::read_passphrase(&passphrase_file, false).map_err(err)?;
            let m = tokio::task::spawn_blocking(move || sysbak::verify(&file, &pass))
                .await
                .context("verify task")?
                .map_err(err)?;
            if json {
                crate::cli::print(&m)?;
            } else {
                println!(
                    "OK: {} files, {} bytes, database {:?} at schema version {}, made by Rampart {} at {}",
                    m.files.len(),
                    m.total_bytes(),
                    m.database.backend,
                    m.database.schema_version,
                    m.rampart_version,
                    m.created_at
                );
            }
            Ok(())
        }
        SystemBackupCmd::List { dir, json } => {
            let listed = sysbak::list(&dir).map_err(err)?;
            if json {
                return Ok(crate::cli::print(&listed)?);
            }
            for l in listed {
                let when = time::OffsetDateTime::from_unix_timestamp(l.created_at)
                    .ok()
                    .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
                    .unwrap_or_else(|| l.created_at.to_string());
                println!("{when}  {:>12}  {}", l.size, l.path.display());
            }
            Ok(())
        }
    }
}

async fn create(args: &ControllerArgs, out: &Path, passphrase_file: &Path) -> Result<(), Failure> {
    let (config, data_dir) = load_config(args).map_err(Failure::Config)?;
    if !data_dir.is_dir() {
        return Err(anyhow::anyhow!("{} is not a data directory", data_dir.display()).into());
    }
    let passphrase = sysbak::read_passphrase(passphrase_file, true).map_err(err)?;
    let now = time::OffsetDateTime::now_utc();
    let out = if out.is_dir() {
        out.join(sysbak::file_name(now))
    } else {
        out.to_path_buf()
    };
    let config_text = match &args.config {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?),
        None => None,
    };
    let staging = data_dir.join(format!(
        "{}{}",
        sysbak::layout::STAGING_PREFIX,
        uuid::Uuid::new_v4().simple()
    ));
    rampart_common::fsutil::ensure_private_dir(&staging)
        .with_context(|| format!("cannot create {}", staging.display()))?;
    let url = config.database_url(&data_dir);
    let result = async {
        // The database first, then the files (see rampart_backup::system).
        let database = if url.starts_with("sqlite:") {
            let file = staging.join("rampart.db");
            let schema_version = rampart_db::snapshot::sqlite_copy_url(&url, &file)
                .await
                .map_err(|e| anyhow::anyhow!("database copy: {}", ErrorChain(&e)))?;
            DatabaseCopy {
                backend: DbBackend::Sqlite,
                file,
                schema_version,
            }
        } else {
            let file = staging.join("rampart.pgdump");
            let schema_version = rampart_db::snapshot::pg_dump(&url, config.database.password_file.as_deref(), &file)
                .await
                .map_err(|e| anyhow::anyhow!("database copy: {}", ErrorChain(&e)))?;
            DatabaseCopy {
                backend: DbBackend::Postgres,
                file,
                schema_version,
            }
        };
        let sqlite_in_data_dir =
            rampart_db::snapshot::sqlite_file(&url).and_then(|p| p.strip_prefix(&data_dir).ok().map(Path::to_path_buf));
        let backup_dir_in_data_dir = config
            .backup
            .system
            .dir
            .as_deref()
            .and_then(|d| d.strip_prefix(&data_dir).ok().map(Path::to_path_buf));
        let (data_dir, out) = (data_dir.clone(), out.clone());
        tokio::task::spawn_blocking(move || {
            sysbak::create(sysbak::CreateOptions {
                data_dir: &data_dir,
                database,
                sqlite_in_data_dir,
                backup_dir_in_data_dir,
                config: config_text,
                passphrase: &passphrase,
                kdf: sysbak::KdfParams::default(),
                out: &out,
                now,
            })
        })
        .await
        .context("backup task")?
        .map_err(|e| anyhow::anyhow!("{}", ErrorChain(&e)))
    }
    .await;
    let _ = std::fs::remove_dir_all(&staging);
    let m = result?;
    let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    println!(
        "{}: {} files, {size} bytes encrypted, database {:?} at schema version {}",
        out.display(),
        m.files.len(),
        m.database.backend,
        m.database.schema_version
    );
    Ok(())
}

pub async fn restore(args: RestoreArgs) -> Result<(), Failure> {
    let pass = sysbak::read_passphrase(&args.passphrase_file, false).map_err(err)?;
    let (from, target) = (args.from.clone(), args.data_dir.clone());
    let m = tokio::task::spawn_blocking(move || sysbak::restore(&from, &pass, &target))
        .await
        .context("restore task")?
        .map_err(err)?;
    let dir = args.data_dir.display();
    println!(
        "restored {} files ({} bytes) made by Rampart {} at {} into {dir}",
        m.files.len(),
        m.total_bytes(),
        m.rampart_version,
        m.created_at
    );
    if m.database.backend == DbBackend::Postgres {
        println!(
            "the database is a pg_dump: load it into an empty database first:\n  \
             pg_restore --no-owner --dbname <url> {dir}/rampart.pgdump"
        );
    }
    let config = m.entry(sysbak::manifest::CONFIG_PATH).is_some();
    println!(
        "start it with: rampart up --data-dir {dir}{}",
        if config {
            format!(" --config {dir}/rampart.toml   (check data_dir, database.url and paths in it first)")
        } else {
            String::new()
        }
    );
    Ok(())
}
