//! `rampart volume ...`: thin wrappers over the volumes API, printing JSON. `--wait` polls the
//! volume's status and its node's progress (a bar on standard error) until creation or the
//! verified wipe is done.

use std::time::{Duration, Instant};

use clap::Subcommand;
use http::Method;
use rampart_api::Client;
use rampart_api::List;
use rampart_api::storage::*;
use uuid::Uuid;

use super::print;
use super::session::client;

#[derive(Subcommand)]
pub enum VolumeCmd {
    /// Create a volume (encrypted by default).
    Create {
        name: String,
        #[arg(long)]
        project: Uuid,
        #[arg(long)]
        size_gib: u64,
        /// An image (name or id) the volume starts as a copy of.
        #[arg(long, conflicts_with = "snapshot")]
        image: Option<String>,
        /// A snapshot (name or id) of the project the volume starts as a copy of; it keeps the
        /// snapshot's encryption and lives on the snapshot's node.
        #[arg(long)]
        snapshot: Option<String>,
        #[arg(long = "type")]
        volume_type: Option<String>,
        /// A key of the project (name or id) wrapping the volume's passphrase (key-user).
        #[arg(long)]
        kms_key: Option<String>,
        /// Wait until the volume is available (or failed).
        #[arg(long)]
        wait: bool,
    },
    List {
        #[arg(long)]
        project: Uuid,
    },
    /// One volume (by id or name).
    Show {
        volume: String,
        #[arg(long)]
        project: Uuid,
    },
    /// Grow a volume.
    Extend {
        volume: String,
        #[arg(long)]
        project: Uuid,
        #[arg(long)]
        size_gib: u64,
    },
    /// Attach a volume to an instance of its node.
    Attach {
        volume: String,
        #[arg(long)]
        instance: Uuid,
        #[arg(long)]
        project: Uuid,
        #[arg(long)]
        read_only: bool,
    },
    Detach {
        volume: String,
        #[arg(long)]
        instance: Uuid,
        #[arg(long)]
        project: Uuid,
    },
    /// Show the volume's grants, or replace them with `--grant user:NAME=read,attach` /
    /// `--grant group:NAME=read` (repeatable); `--clear` removes them all.
    Access {
        volume: String,
        #[arg(long)]
        project: Uuid,
        #[arg(long = "grant")]
        grants: Vec<String>,
        #[arg(long)]
        clear: bool,
    },
    /// Delete a volume: its node wipes it (verified) before it is gone.
    Delete {
        volume: String,
        #[arg(long)]
        project: Uuid,
        /// Wait until the wipe is verified and the volume deleted (or failed).
        #[arg(long)]
        wait: bool,
    },
    /// The verified wipe report of a deleted volume (12.3.4).
    WipeReport {
        volume: String,
        #[arg(long)]
        project: Uuid,
    },
    /// Volume types.
    Types,
    /// Snapshots of a volume: full copies under the volume's key, wiped (verified) on delete.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
}

#[derive(Subcommand)]
pub enum SnapshotCmd {
    /// Snapshot a volume that is not attached.
    Create {
        volume: String,
        name: String,
        #[arg(long)]
        project: Uuid,
        /// Wait until the snapshot is available (or failed).
        #[arg(long)]
        wait: bool,
    },
    List {
        volume: String,
        #[arg(long)]
        project: Uuid,
    },
    Show {
        volume: String,
        snapshot: String,
        #[arg(long)]
        project: Uuid,
    },
    /// Delete a snapshot: its node wipes it (verified) before it is gone.
    Delete {
        volume: String,
        snapshot: String,
        #[arg(long)]
        project: Uuid,
        /// Wait until the wipe is verified and the snapshot deleted (or failed).
        #[arg(long)]
        wait: bool,
    },
    /// The verified wipe report of a deleted snapshot.
    WipeReport {
        volume: String,
        snapshot: String,
        #[arg(long)]
        project: Uuid,
    },
}

/// `user:NAME=a,b` or `group:NAME=a,b`.
fn parse_grant(s: &str) -> anyhow::Result<VolumeGrant> {
    let bad = || anyhow::anyhow!("--grant takes user:NAME=ACTION,... or group:NAME=ACTION,..., not {s:?}");
    let (who, actions) = s.split_once('=').ok_or_else(bad)?;
    let (kind, name) = who.split_once(':').ok_or_else(bad)?;
    let actions = actions
        .split(',')
        .map(|a| serde_json::from_value::<VolumeAction>(serde_json::Value::String(a.trim().to_string())))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| anyhow::anyhow!("actions are read, attach, detach, snapshot, extend, delete"))?;
    match kind {
        "user" => Ok(VolumeGrant {
            user: Some(name.into()),
            group: None,
            actions,
        }),
        "group" => Ok(VolumeGrant {
            user: None,
            group: Some(name.into()),
            actions,
        }),
        _ => Err(bad()),
    }
}

async fn send<T: serde::de::DeserializeOwned>(
    c: &Client,
    method: Method,
    path: &str,
    body: Option<&serde_json::Value>,
) -> anyhow::Result<T> {
    Ok(c.send(method, path, body).await?.json().await?)
}

/// Polls until the volume leaves the transitional states; the status goes to standard error.
async fn wait_for(c: &Client, path: &str, done: &[VolumeState]) -> anyhow::Result<Volume> {
    let start = Instant::now();
    loop {
        let v: Volume = c.get(path).await?;
        let bar = match v.progress {
            Some(p) => {
                let done = usize::from(p.min(100)) / 5;
                format!("[{}{}] {p:>3}%", "#".repeat(done), ".".repeat(20 - done))
            }
            None => String::new(),
        };
        eprint!("\r{:?} {bar} {:>5}s", v.status, start.elapsed().as_secs());
        if done.contains(&v.status) || v.status == VolumeState::Error {
            eprintln!();
            return Ok(v);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

pub async fn volume(cmd: VolumeCmd) -> anyhow::Result<()> {
    let c = client()?;
    let base = |p: Uuid| format!("/v1/projects/{p}/volumes");
    match cmd {
        VolumeCmd::Create {
            name,
            project,
            size_gib,
            image,
            snapshot,
            volume_type,
            kms_key,
            wait,
        } => {
            let req = VolumeCreate {
                name,
                size_gib,
                image,
                snapshot,
                volume_type,
                kms_key,
            };
            let v: Volume = c.post(&base(project), &req).await?;
            if wait {
                print(&wait_for(&c, &format!("{}/{}", base(project), v.id), &[VolumeState::Available]).await?)
            } else {
                print(&v)
            }
        }
        VolumeCmd::List { project } => print(&c.get::<List<Volume>>(&base(project)).await?),
        VolumeCmd::Show { volume, project } => print(&c.get::<Volume>(&format!("{}/{volume}", base(project))).await?),
        VolumeCmd::Extend {
            volume,
            project,
            size_gib,
        } => print(
            &c.post::<_, Volume>(
                &format!("{}/{volume}/extend", base(project)),
                &VolumeExtend { size_gib },
            )
            .await?,
        ),
        VolumeCmd::Attach {
            volume,
            instance,
            project,
            read_only,
        } => print(
            &c.post::<_, Volume>(
                &format!("/v1/projects/{project}/instances/{instance}/volumes"),
                &VolumeAttach {
                    volume,
                    read_only: Some(read_only),
                },
            )
            .await?,
        ),
        VolumeCmd::Detach {
            volume,
            instance,
            project,
        } => print(
            &send::<Volume>(
                &c,
                Method::DELETE,
                &format!("/v1/projects/{project}/instances/{instance}/volumes/{volume}"),
                None,
            )
            .await?,
        ),
        VolumeCmd::Access {
            volume,
            project,
            grants,
            clear,
        } => {
            let path = format!("{}/{volume}/access", base(project));
            if grants.is_empty() && !clear {
                return print(&c.get::<VolumeAccess>(&path).await?);
            }
            let access = VolumeAccess {
                grants: grants.iter().map(|g| parse_grant(g)).collect::<anyhow::Result<_>>()?,
            };
            print(&send::<VolumeAccess>(&c, Method::PUT, &path, Some(&serde_json::to_value(access)?)).await?)
        }
        VolumeCmd::Delete { volume, project, wait } => {
            let v: Volume = send(&c, Method::DELETE, &format!("{}/{volume}", base(project)), None).await?;
            if wait {
                print(&wait_for(&c, &format!("{}/{}", base(project), v.id), &[VolumeState::Deleted]).await?)
            } else {
                print(&v)
            }
        }
        VolumeCmd::WipeReport { volume, project } => print(
            &c.get::<WipeReport>(&format!("{}/{volume}/wipe-report", base(project)))
                .await?,
        ),
        VolumeCmd::Types => print(&c.get::<List<VolumeType>>("/v1/volume-types").await?),
        VolumeCmd::Snapshot(cmd) => snapshot(&c, cmd).await,
    }
}

/// Polls until the snapshot leaves the transitional states.
async fn wait_snapshot(c: &Client, path: &str, done: SnapshotState) -> anyhow::Result<Snapshot> {
    let start = Instant::now();
    loop {
        let s: Snapshot = c.get(path).await?;
        eprint!("\r{:?} {:>5}s", s.status, start.elapsed().as_secs());
        if s.status == done || s.status == SnapshotState::Error {
            eprintln!();
            return Ok(s);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn snapshot(c: &Client, cmd: SnapshotCmd) -> anyhow::Result<()> {
    let base = |p: Uuid, v: &str| format!("/v1/projects/{p}/volumes/{v}/snapshots");
    match cmd {
        SnapshotCmd::Create {
            volume,
            name,
            project,
            wait,
        } => {
            let s: Snapshot = c.post(&base(project, &volume), &SnapshotCreate { name }).await?;
            if wait {
                let path = format!("{}/{}", base(project, &volume), s.id);
                print(&wait_snapshot(c, &path, SnapshotState::Available).await?)
            } else {
                print(&s)
            }
        }
        SnapshotCmd::List { volume, project } => print(&c.get::<List<Snapshot>>(&base(project, &volume)).await?),
        SnapshotCmd::Show {
            volume,
            snapshot,
            project,
        } => print(
            &c.get::<Snapshot>(&format!("{}/{snapshot}", base(project, &volume)))
                .await?,
        ),
        SnapshotCmd::Delete {
            volume,
            snapshot,
            project,
            wait,
        } => {
            let path = format!("{}/{snapshot}", base(project, &volume));
            let s: Snapshot = send(c, Method::DELETE, &path, None).await?;
            if wait {
                let path = format!("{}/{}", base(project, &volume), s.id);
                print(&wait_snapshot(c, &path, SnapshotState::Deleted).await?)
            } else {
                print(&s)
            }
        }
        SnapshotCmd::WipeReport {
            volume,
            snapshot,
            project,
        } => print(
            &c.get::<WipeReport>(&format!("{}/{snapshot}/wipe-report", base(project, &volume)))
                .await?,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_parse_from_the_command_line() {
        let g = parse_grant("user:alice=read,attach").unwrap();
        assert_eq!(g.user.as_deref(), Some("alice"));
        assert_eq!(g.actions, vec![VolumeAction::Read, VolumeAction::Attach]);
        assert_eq!(parse_grant("group:ops=delete").unwrap().group.as_deref(), Some("ops"));
        for bad in ["alice=read", "user:alice", "user:alice=fly", "robot:x=read"] {
            assert!(parse_grant(bad).is_err(), "{bad}");
        }
    }
}
