//! `rampart key ...` and `rampart cert ...`: thin wrappers over the keys and certificates API,
//! printing JSON. Plaintexts go in and come out raw (the API's base64 is handled here), so
//! `rampart key encrypt` and `rampart key decrypt` compose in a pipe.

use std::io::{Read, Write};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use clap::Subcommand;
use rampart_api::*;
use rampart_common::Sensitive;
use uuid::Uuid;

use super::print;
use super::session::client;

/// `k=v` pairs bound to the ciphertext as associated data.
fn context(pairs: &[String]) -> anyhow::Result<Option<Context>> {
    if pairs.is_empty() {
        return Ok(None);
    }
    pairs
        .iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(anyhow::anyhow!("--context takes key=value, not {p:?}")),
        })
        .collect::<anyhow::Result<Context>>()
        .map(Some)
}

fn stdin_bytes() -> anyhow::Result<Vec<u8>> {
    let mut buf = Vec::new();
    std::io::stdin().read_to_end(&mut buf)?;
    Ok(buf)
}

#[derive(Subcommand)]
pub enum KeyCmd {
    List {
        #[arg(long)]
        project: Uuid,
    },
    Show {
        id: Uuid,
        #[arg(long)]
        project: Uuid,
    },
    /// Create an AES-256-GCM key (key-admin).
    Create {
        name: String,
        #[arg(long)]
        project: Uuid,
        #[arg(long)]
        rotation_period_days: Option<u32>,
    },
    /// Encrypt standard input; prints the ciphertext envelope (key-user).
    Encrypt {
        id: Uuid,
        #[arg(long)]
        project: Uuid,
        /// key=value bound as associated data; decrypt needs the same.
        #[arg(long = "context")]
        context: Vec<String>,
    },
    /// Decrypt the ciphertext on standard input; writes the plaintext to standard output.
    Decrypt {
        id: Uuid,
        #[arg(long)]
        project: Uuid,
        #[arg(long = "context")]
        context: Vec<String>,
    },
    /// rotate, enable, disable or cancel-deletion (key-admin).
    Action {
        #[arg(value_parser = ["rotate", "enable", "disable", "cancel-deletion"])]
        action: String,
        id: Uuid,
        #[arg(long)]
        project: Uuid,
    },
    /// Destroy the key after 7 to 30 days (key-admin).
    ScheduleDeletion {
        id: Uuid,
        #[arg(long)]
        project: Uuid,
        #[arg(long)]
        days: Option<u32>,
    },
}

#[derive(Subcommand)]
pub enum CertCmd {
    /// Certificates with their expiry (of a project, or all for system roles).
    List {
        #[arg(long)]
        project: Option<Uuid>,
    },
    /// Issue from a PEM CSR read from standard input (the tenant CA).
    Issue {
        #[arg(long)]
        project: Uuid,
        #[arg(long)]
        days: Option<u32>,
    },
    /// Import a PEM certificate (and chain) read from standard input.
    Import {
        #[arg(long)]
        project: Option<Uuid>,
    },
    Revoke {
        id: Uuid,
        #[arg(long)]
        reason: Option<String>,
    },
    /// The CRL (DER) to standard output.
    Crl {
        #[arg(long)]
        tenant: bool,
    },
}

pub async fn key(cmd: KeyCmd) -> anyhow::Result<()> {
    let c = client()?;
    match cmd {
        KeyCmd::List { project } => print(&c.list_keys(project).await?),
        KeyCmd::Show { id, project } => print(&c.get_key(project, id).await?),
        KeyCmd::Create {
            name,
            project,
            rotation_period_days,
        } => print(
            &c.create_key(
                project,
                &KeyCreate {
                    name,
                    algorithm: Some("aes-256-gcm".into()),
                    rotation_period_days,
                },
            )
            .await?,
        ),
        KeyCmd::Encrypt {
            id,
            project,
            context: ctx,
        } => {
            let req = EncryptRequest {
                plaintext: Sensitive::new(STANDARD.encode(stdin_bytes()?)),
                context: context(&ctx)?,
            };
            println!("{}", c.encrypt(project, id, &req).await?.ciphertext);
            Ok(())
        }
        KeyCmd::Decrypt {
            id,
            project,
            context: ctx,
        } => {
            let ciphertext = String::from_utf8(stdin_bytes()?)?.trim().to_string();
            let out = c
                .decrypt(
                    project,
                    id,
                    &DecryptRequest {
                        ciphertext,
                        context: context(&ctx)?,
                    },
                )
                .await?;
            let plain = STANDARD.decode(out.plaintext.expose())?;
            std::io::stdout().write_all(&plain)?;
            Ok(())
        }
        KeyCmd::Action { action, id, project } => print(&c.key_action(project, id, &action).await?),
        KeyCmd::ScheduleDeletion { id, project, days } => print(&c.schedule_key_deletion(project, id, days).await?),
    }
}

pub async fn cert(cmd: CertCmd) -> anyhow::Result<()> {
    let c = client()?;
    match cmd {
        CertCmd::List { project } => print(&c.certificates(project).await?),
        CertCmd::Issue { project, days } => {
            let req = CertificateIssue {
                project,
                csr: String::from_utf8(stdin_bytes()?)?,
                names: None,
                days,
                usages: None,
            };
            print(&c.issue_certificate(&req).await?)
        }
        CertCmd::Import { project } => {
            let req = CertificateImport {
                project,
                certificate: String::from_utf8(stdin_bytes()?)?,
                chain: None,
            };
            print(&c.import_certificate(&req).await?)
        }
        CertCmd::Revoke { id, reason } => print(&c.revoke_certificate(id, reason.as_deref()).await?),
        CertCmd::Crl { tenant } => {
            std::io::stdout().write_all(&c.crl(tenant).await?)?;
            Ok(())
        }
    }
}
