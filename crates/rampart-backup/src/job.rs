//! What a node does for one backup and one restore, whole: the unit the agent calls (it fetches
//! the volume passphrase and the repository password from the controller, then hands them
//! here) and reports back. A backup reads the volume's plaintext through its QEMU export into
//! the primary repository, then copies the snapshot to every other target and verifies each
//! copy there. The outcome counts a copy as done only once its target holds the snapshot and
//! the check passed; a failed primary makes the whole backup `failed` with a code, and nothing
//! is counted as done.

use std::path::PathBuf;
use std::time::Duration;

use rampart_common::Sensitive;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::export::{Export, ExportError};
use crate::plan::{FailureCode, Location, ReadData, Repository};
use crate::restic::{Restic, ResticError};

/// A named backup target (`local`, `offsite`, …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub name: String,
    pub location: Location,
}

/// Whether a backup or one of its copies holds the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Available,
    Failed,
}

/// A stable code and a message (no secret: restic and QEMU never print one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub code: String,
    pub message: String,
}

impl From<&ResticError> for Failure {
    fn from(e: &ResticError) -> Failure {
        Failure {
            code: e.code().as_str().to_string(),
            message: e.to_string(),
        }
    }
}

impl From<&ExportError> for Failure {
    fn from(e: &ExportError) -> Failure {
        Failure {
            code: "volume_unreadable".into(),
            message: e.to_string(),
        }
    }
}

/// One copy of a backup: the snapshot on one target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Copy {
    pub target: String,
    pub status: Status,
    /// The snapshot id on that target (a copy has its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// The target's `check` passed after the copy landed.
    pub verified: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Failure>,
}

/// What became of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub status: Status,
    /// The volume's size (the raw image's length).
    pub size_bytes: u64,
    /// What this backup added to the primary (after dedup): the incremental cost.
    pub data_added: u64,
    pub copies: Vec<Copy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Failure>,
}

/// One backup of one volume.
pub struct BackupJob<'a> {
    pub backup: Uuid,
    pub volume: Uuid,
    pub project: Uuid,
    /// The volume's qcow2 file on this node.
    pub volume_file: PathBuf,
    /// The volume's LUKS passphrase (`None`: unencrypted volume).
    pub passphrase: Option<&'a Sensitive>,
    /// The project's repository password (the same on every target).
    pub repo_password: &'a Sensitive,
    /// The first target takes the backup; the others get copies. At least one.
    pub targets: &'a [Target],
    /// How much of each second target a copy's verification reads back.
    pub verify_copies: ReadData,
    /// Where export mount points go (private temporary directories).
    pub work: PathBuf,
    pub cache_dir: Option<PathBuf>,
    pub timeout: Duration,
}

impl BackupJob<'_> {
    fn restic(&self, t: &Target) -> Restic {
        let mut r = Restic::new(
            Repository::new(t.location.clone(), self.project),
            self.repo_password.clone(),
        );
        r.cache_dir = self.cache_dir.clone();
        r.timeout = self.timeout;
        r
    }
}

fn failed(target: &str, error: Failure) -> Copy {
    Copy {
        target: target.to_string(),
        status: Status::Failed,
        snapshot: None,
        verified: false,
        error: Some(error),
    }
}

/// Runs `job` to its outcome (never panics on a tool failure: that is a `failed` outcome).
pub fn run_backup(job: &BackupJob<'_>) -> Outcome {
    let Some(primary_target) = job.targets.first() else {
        return Outcome {
            status: Status::Failed,
            size_bytes: 0,
            data_added: 0,
            copies: Vec::new(),
            error: Some(Failure {
                code: "no_target".into(),
                message: "a backup needs at least one target".into(),
            }),
        };
    };
    let primary = job.restic(primary_target);
    let fail = |error: Failure| Outcome {
        status: Status::Failed,
        size_bytes: 0,
        data_added: 0,
        copies: Vec::new(),
        error: Some(error),
    };
    if let Err(e) = primary.ensure(None) {
        return fail((&e).into());
    }
    let export = match Export::open(&job.volume_file, job.passphrase, false, &job.work, job.timeout) {
        Ok(x) => x,
        Err(e) => return fail((&e).into()),
    };
    let summary = export
        .open_read()
        .map_err(|e| Failure::from(&e))
        .and_then(|f| primary.backup(f, job.backup, job.volume).map_err(|e| Failure::from(&e)));
    let closed = export.close();
    let summary = match (summary, closed) {
        (Ok(s), Ok(())) => s,
        (Err(f), _) => return fail(f),
        (Ok(_), Err(e)) => return fail((&e).into()),
    };
    let snapshot = match primary.snapshot_of(job.backup) {
        Ok(s) => s.id,
        Err(e) => return fail((&e).into()),
    };
    let mut copies = vec![Copy {
        target: primary_target.name.clone(),
        status: Status::Available,
        snapshot: Some(snapshot.clone()),
        // The primary's own verification is a separate, scheduled `verify`.
        verified: false,
        error: None,
    }];
    for t in &job.targets[1..] {
        let second = job.restic(t);
        let copy = second
            .copy_from(&primary, &snapshot)
            .and_then(|()| second.snapshot_of(job.backup))
            .and_then(|s| second.check(job.verify_copies).map(|()| s));
        copies.push(match copy {
            Ok(s) => Copy {
                target: t.name.clone(),
                status: Status::Available,
                snapshot: Some(s.id),
                verified: true,
                error: None,
            },
            Err(e) => failed(&t.name, (&e).into()),
        });
    }
    Outcome {
        status: Status::Available,
        size_bytes: summary.total_bytes_processed,
        data_added: summary.data_added,
        copies,
        error: None,
    }
}

/// Checks one copy of a backup on its target: the snapshot is there and `check` passes.
pub fn verify(
    target: &Target,
    project: Uuid,
    repo_password: &Sensitive,
    backup: Uuid,
    read: ReadData,
    timeout: Duration,
) -> Result<String, Failure> {
    let mut r = Restic::new(Repository::new(target.location.clone(), project), repo_password.clone());
    r.timeout = timeout;
    let snap = r.snapshot_of(backup).map_err(|e| Failure::from(&e))?;
    r.check(read).map_err(|e| Failure::from(&e))?;
    Ok(snap.id)
}

/// Writes the image of `volume` in backup `backup` (from the first target of `targets` that
/// holds it and passes a structure check) into `new_file`, a new empty volume of at least the
/// same size. Returns the target used.
#[allow(clippy::too_many_arguments)]
pub fn run_restore(
    targets: &[Target],
    project: Uuid,
    repo_password: &Sensitive,
    backup: Uuid,
    volume: Uuid,
    new_file: &std::path::Path,
    new_passphrase: Option<&Sensitive>,
    work: &std::path::Path,
    timeout: Duration,
) -> Result<String, Failure> {
    let mut last = Failure {
        code: FailureCode::SnapshotMissing.as_str().into(),
        message: "no target holds this backup".into(),
    };
    for t in targets {
        let mut r = Restic::new(Repository::new(t.location.clone(), project), repo_password.clone());
        r.timeout = timeout;
        let snap = match r.snapshot_of(backup) {
            Ok(s) => s,
            Err(e) => {
                last = (&e).into();
                continue;
            }
        };
        let export = Export::open(new_file, new_passphrase, true, work, timeout).map_err(|e| Failure::from(&e))?;
        let dumped = export
            .open_write()
            .map_err(|e| Failure::from(&e))
            .and_then(|f| r.dump(&snap.id, volume, f).map_err(|e| Failure::from(&e)));
        let closed = export.close().map_err(|e| Failure::from(&e));
        match (dumped, closed) {
            (Ok(()), Ok(())) => return Ok(t.name.clone()),
            (Err(e), _) | (_, Err(e)) => last = e,
        }
    }
    Err(last)
}
