//! `rampart harden check|apply` and `rampart vulndb import|scan`: the host's posture, run on
//! the node itself (no controller needed). Domain logic in `rampart-posture`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use rampart_posture::vulndb::{self, VulnDb};
use rampart_posture::{Status, apply, dpkg};

use crate::Failure;

#[derive(Subcommand)]
pub enum HardenCmd {
    /// Evaluate the hardening checks (spec 9.1-1a…f, 9.1-2). Exit 0 when every check
    /// passes, 1 with findings.
    Check {
        /// The JSON report ({"checks":[…]}) instead of a table.
        #[arg(long)]
        json: bool,
        /// Root of the host to inspect (a mounted image or a fixture tree).
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
    /// Remediate the file-based checks: prints the unified diff, backs up each file it changes
    /// (<file>.rampart-bak.<time>) and, on the live host, checks sshd's configuration with
    /// `sshd -t` before reloading it.
    Apply {
        /// Only print the diff.
        #[arg(long)]
        dry_run: bool,
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum VulndbCmd {
    /// Import vulnerability data (OSV JSON of the Debian ecosystem, or the Debian Security
    /// Tracker JSON) into the local store. Nothing is downloaded.
    Import {
        file: PathBuf,
        /// The store [default: DATA_DIR/vulndb.json].
        #[arg(long)]
        db: Option<PathBuf>,
    },
    /// Match a root's installed packages (var/lib/dpkg/status) against the store. Exit 0
    /// with no finding, 1 with findings.
    Scan {
        #[arg(long, default_value = "/")]
        root: PathBuf,
        #[arg(long)]
        db: Option<PathBuf>,
        /// Release codename to match [default: the root's VERSION_CODENAME].
        #[arg(long)]
        release: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

pub fn harden(cmd: HardenCmd) -> Result<(), Failure> {
    exit_code(run_harden(cmd))
}

pub fn vulndb(cmd: VulndbCmd) -> Result<(), Failure> {
    exit_code(run_vulndb(cmd))
}

/// 0 is success; another code is a result (findings), not an error.
fn exit_code(r: anyhow::Result<u8>) -> Result<(), Failure> {
    match r {
        Ok(0) => Ok(()),
        Ok(code) => Err(Failure::Exit(code)),
        Err(e) => Err(Failure::Runtime(e)),
    }
}

fn run_harden(cmd: HardenCmd) -> anyhow::Result<u8> {
    match cmd {
        HardenCmd::Check { json, root } => {
            ensure_dir(&root)?;
            let (_, report) = rampart_posture::check(&root);
            if json {
                super::print(&report)?;
            } else {
                print!("{}", table(&report));
            }
            Ok(if report.all_pass() { 0 } else { 1 })
        }
        HardenCmd::Apply { dry_run, root } => {
            ensure_dir(&root)?;
            let (report, plan) = rampart_posture::plan(&root);
            let diff = apply::render_diff(&plan);
            if plan.is_empty() {
                println!("nothing to change");
            } else {
                print!("{diff}");
            }
            if !plan.manual.is_empty() {
                eprintln!("needs a person (not changed automatically): {}", plan.manual.join(", "));
            }
            if dry_run || plan.is_empty() {
                return Ok(0);
            }
            let stamp = time::OffsetDateTime::now_utc()
                .format(time::macros::format_description!(
                    "[year][month][day]T[hour][minute][second]Z"
                ))
                .context("formatting the backup time")?;
            let applied = apply::execute(&root, &plan, &stamp).map_err(anyhow::Error::new)?;
            for b in &applied.backups {
                eprintln!("backup: {b}");
            }
            for w in &applied.warnings {
                eprintln!("warning: {w}");
            }
            if applied.sshd_reloaded {
                eprintln!("sshd: configuration checked with sshd -t and reloaded");
            }
            tracing::info!(
                failed_before = report.failed().count(),
                files = plan.edits.len(),
                modes = plan.modes.len(),
                "harden apply done"
            );
            let (_, after) = rampart_posture::check(&root);
            eprintln!(
                "{} of {} checks pass now",
                after.checks.iter().filter(|c| c.status != Status::Fail).count(),
                after.checks.len()
            );
            Ok(0)
        }
    }
}

fn ensure_dir(root: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(root.is_dir(), "--root {}: not a directory", root.display());
    Ok(())
}

/// The human table: status, id, clause, severity, then the evidence of each check.
fn table(report: &rampart_posture::Report) -> String {
    let mut out = String::new();
    let id_w = report.checks.iter().map(|c| c.id.len()).max().unwrap_or(2);
    out.push_str(&format!(
        "{:<6} {:<id_w$} {:<7} {:<8} EVIDENCE\n",
        "STATUS", "ID", "CLAUSE", "SEVERITY"
    ));
    for c in &report.checks {
        let status = match c.status {
            Status::Pass => "pass",
            Status::Fail => "FAIL",
            Status::NotApplicable => "n/a",
        };
        out.push_str(&format!(
            "{status:<6} {:<id_w$} {:<7} {:<8} {}\n",
            c.id,
            c.clause,
            c.severity.as_str(),
            c.evidence
        ));
    }
    let failed = report.failed().count();
    out.push_str(&format!("{} checks, {failed} failed\n", report.checks.len()));
    out
}

fn default_db() -> PathBuf {
    crate::default_dir("rampart").join("vulndb.json")
}

fn run_vulndb(cmd: VulndbCmd) -> anyhow::Result<u8> {
    match cmd {
        VulndbCmd::Import { file, db } => {
            let db_path = db.unwrap_or_else(default_db);
            let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let (kind, advisories) = vulndb::parse(&text).map_err(anyhow::Error::new)?;
            let mut store = VulnDb::load(&db_path).map_err(anyhow::Error::new)?;
            let n = advisories.len();
            let now = time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .context("formatting the import time")?;
            store.merge(&file.display().to_string(), kind, &now, advisories);
            store.save(&db_path).map_err(anyhow::Error::new)?;
            println!(
                "imported {n} advisories ({}) from {} into {} ({} in all)",
                kind.as_str(),
                file.display(),
                db_path.display(),
                store.advisories.len()
            );
            Ok(0)
        }
        VulndbCmd::Scan {
            root,
            db,
            release,
            json,
        } => {
            ensure_dir(&root)?;
            let db_path = db.unwrap_or_else(default_db);
            anyhow::ensure!(
                db_path.is_file(),
                "no vulnerability data at {}: run `rampart vulndb import FILE` first",
                db_path.display()
            );
            let store = VulnDb::load(&db_path).map_err(anyhow::Error::new)?;
            let release = match release.or_else(|| dpkg::release(&root)) {
                Some(r) => r,
                None => anyhow::bail!("cannot tell the Debian release of {}: pass --release", root.display()),
            };
            let packages =
                dpkg::installed(&root).with_context(|| format!("cannot read {}{}", root.display(), dpkg::STATUS))?;
            let index = vulndb::Index::new(&store.advisories, &release);
            let findings = index.scan(&packages);
            if json {
                super::print(&serde_json::json!({
                    "release": release,
                    "packages": packages.len(),
                    "findings": findings,
                }))?;
            } else {
                for f in &findings {
                    println!(
                        "{:<18} {:<28} {:<28} fixed {:<28} {}{}",
                        f.id,
                        f.package,
                        f.installed,
                        f.fixed.as_deref().unwrap_or("(no fix yet)"),
                        f.severity.as_deref().unwrap_or("-"),
                        f.cvss.as_deref().map(|c| format!(" {c}")).unwrap_or_default()
                    );
                }
                println!("{} packages ({release}), {} findings", packages.len(), findings.len());
            }
            if index.unparsable > 0 {
                eprintln!(
                    "warning: {} advisories with unparsable versions skipped",
                    index.unparsable
                );
            }
            Ok(if findings.is_empty() { 0 } else { 1 })
        }
    }
}
