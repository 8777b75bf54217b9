//! The thin half: runs the `restic` binary on one repository with a deadline.
//!
//! The repository password never touches argv, the environment, a file or a log: it is written
//! into a pipe whose read end this process holds, and restic is told `--password-file
//! /proc/<our pid>/fd/<n>`, which opens that same pipe (restic runs as the same user, so the
//! kernel lets it). The writer is closed before restic starts, so restic reads the password to
//! end of file; the read end is close-on-exec, so no other child inherits it. (restic 0.14 has
//! no `--password-fd`, and `--stdin` backups need standard input for the data.) `RESTIC_*`
//! variables of our own environment are removed from the child's.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rampart_common::Sensitive;
use uuid::Uuid;

use crate::plan::{self, BackupSummary, FailureCode, ReadData, Repository, Snapshot};

#[derive(Debug, thiserror::Error)]
pub enum ResticError {
    #[error("restic could not be started: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("restic {op} did not finish within {secs} s and was stopped")]
    Timeout { op: String, secs: u64 },
    /// restic's own message (bounded); restic never prints the password.
    #[error("restic {op} failed ({code}): {message}", code = code.as_str())]
    Failed {
        op: String,
        code: FailureCode,
        message: String,
    },
    #[error("restic {op} printed what we cannot read: {message}")]
    Output { op: String, message: String },
    #[error("password pipe: {0}")]
    Pipe(#[source] std::io::Error),
}

impl ResticError {
    /// The stable failure code for the API.
    pub fn code(&self) -> FailureCode {
        match self {
            ResticError::Failed { code, .. } => *code,
            ResticError::Timeout { .. } => FailureCode::TargetUnreachable,
            _ => FailureCode::BackupFailed,
        }
    }
}

/// One repository and its password.
pub struct Restic {
    pub binary: PathBuf,
    pub repo: Repository,
    password: Sensitive,
    /// restic's local cache of indexes and trees (`None`: `--no-cache`).
    pub cache_dir: Option<PathBuf>,
    pub timeout: Duration,
}

impl std::fmt::Debug for Restic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Restic")
            .field("repo", &self.repo.url())
            .field("password", &"[redacted]")
            .finish()
    }
}

/// A password pipe: the read end stays open here while restic runs.
struct PasswordPipe {
    reader: std::io::PipeReader,
}

impl PasswordPipe {
    fn new(password: &Sensitive) -> Result<PasswordPipe, ResticError> {
        let (reader, mut writer) = std::io::pipe().map_err(ResticError::Pipe)?;
        // A password is far below the pipe buffer (64 KiB): the write cannot block.
        writer
            .write_all(password.expose().as_bytes())
            .map_err(ResticError::Pipe)?;
        drop(writer);
        Ok(PasswordPipe { reader })
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/fd/{}", std::process::id(), self.reader.as_raw_fd()))
    }
}

/// What a run printed on standard output (when it was not redirected).
pub struct Run {
    pub stdout: String,
}

impl Restic {
    pub fn new(repo: Repository, password: Sensitive) -> Restic {
        Restic {
            binary: PathBuf::from("restic"),
            repo,
            password,
            cache_dir: None,
            timeout: Duration::from_secs(3600),
        }
    }

    /// Runs `restic <global> <args>` with `stdin` and, if given, standard output to `stdout`.
    /// `from` is a second repository password for `copy`/`init --from-repo`: its path
    /// replaces the placeholder [`FROM_PASSWORD`] in `args`.
    fn run(
        &self,
        op: &str,
        args: Vec<String>,
        stdin: Stdio,
        stdout: Option<File>,
        from: Option<&Sensitive>,
    ) -> Result<Run, ResticError> {
        let pw = PasswordPipe::new(&self.password)?;
        let from_pw = from.map(PasswordPipe::new).transpose()?;
        let mut argv = plan::global(&self.repo, &pw.path(), self.cache_dir.as_deref());
        argv.extend(args.into_iter().map(|a| match (&from_pw, a.as_str()) {
            (Some(p), FROM_PASSWORD) => p.path().display().to_string(),
            _ => a,
        }));
        let mut cmd = Command::new(&self.binary);
        cmd.args(&argv);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("RESTIC_") {
                cmd.env_remove(k);
            }
        }
        // Interactive prompts would hang a node; restic never asks when there is no terminal.
        cmd.stdin(stdin).stderr(Stdio::piped());
        let captured = stdout.is_none();
        match stdout {
            Some(f) => cmd.stdout(Stdio::from(f)),
            None => cmd.stdout(Stdio::piped()),
        };
        let mut child = cmd.spawn().map_err(ResticError::Spawn)?;
        drop(cmd);
        let out = child.stdout.take().map(drain);
        let err = drain(child.stderr.take().expect("piped"));
        let status = wait(&mut child, self.timeout).map_err(|e| match e {
            None => ResticError::Timeout {
                op: op.to_string(),
                secs: self.timeout.as_secs(),
            },
            Some(e) => ResticError::Spawn(e),
        })?;
        drop(pw);
        drop(from_pw);
        let stdout = out.map(|h| h.join().unwrap_or_default()).unwrap_or_default();
        let stderr = err.join().unwrap_or_default();
        if !status.success() {
            let mut message = stderr.trim().to_string();
            truncate(&mut message, 2000);
            return Err(ResticError::Failed {
                op: op.to_string(),
                code: plan::classify(&stderr),
                message,
            });
        }
        let _ = captured;
        Ok(Run { stdout })
    }

    /// Whether a repository is at the place (its `config` can be read with our password).
    pub fn exists(&self) -> Result<bool, ResticError> {
        match self.run(
            "cat config",
            vec!["cat".into(), "config".into()],
            Stdio::null(),
            None,
            None,
        ) {
            Ok(_) => Ok(true),
            Err(ResticError::Failed {
                code: FailureCode::RepositoryMissing,
                ..
            }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Creates the repository unless it exists. A second target shares the chunker parameters
    /// of the primary `from`, so that copies deduplicate there as well.
    pub fn ensure(&self, from: Option<&Restic>) -> Result<(), ResticError> {
        if self.exists()? {
            return Ok(());
        }
        let args = match from {
            Some(f) => plan::init(Some((&f.repo, Path::new(FROM_PASSWORD)))),
            None => plan::init(None),
        };
        self.run("init", args, Stdio::null(), None, from.map(|f| &f.password))
            .map(|_| ())
    }

    /// Backs up what `source` holds (a volume's plaintext, read by restic as its stdin).
    pub fn backup(&self, source: File, backup: Uuid, volume: Uuid) -> Result<BackupSummary, ResticError> {
        let run = self.run("backup", plan::backup(backup, volume), Stdio::from(source), None, None)?;
        plan::parse_backup(&run.stdout).ok_or_else(|| ResticError::Output {
            op: "backup".into(),
            message: "no summary line".into(),
        })
    }

    /// The snapshots tagged `tag` (all with `None`).
    pub fn snapshots(&self, tag: Option<&str>) -> Result<Vec<Snapshot>, ResticError> {
        let run = self.run("snapshots", plan::snapshots(tag), Stdio::null(), None, None)?;
        plan::parse_snapshots(&run.stdout).map_err(|e| ResticError::Output {
            op: "snapshots".into(),
            message: e.to_string(),
        })
    }

    /// The snapshot of `backup` in this repository (its copy has its own id here).
    pub fn snapshot_of(&self, backup: Uuid) -> Result<Snapshot, ResticError> {
        self.snapshots(Some(&plan::backup_tag(backup)))?
            .into_iter()
            .next_back()
            .ok_or_else(|| ResticError::Failed {
                op: "snapshots".into(),
                code: FailureCode::SnapshotMissing,
                message: format!("no snapshot of backup {backup} in this repository"),
            })
    }

    /// Writes the raw image of `volume` in `snapshot` into `target`.
    pub fn dump(&self, snapshot: &str, volume: Uuid, target: File) -> Result<(), ResticError> {
        self.run("dump", plan::dump(snapshot, volume), Stdio::null(), Some(target), None)
            .map(|_| ())
    }

    /// `check`: Ok when restic finds no error, else `repository_damaged` with restic's words.
    pub fn check(&self, read: ReadData) -> Result<(), ResticError> {
        self.run("check", plan::check(read), Stdio::null(), None, None)
            .map(|_| ())
    }

    /// Copies `snapshot` of `from` into this repository (made first if need be).
    pub fn copy_from(&self, from: &Restic, snapshot: &str) -> Result<(), ResticError> {
        self.ensure(Some(from))?;
        self.run(
            "copy",
            plan::copy(&from.repo, Path::new(FROM_PASSWORD), snapshot),
            Stdio::null(),
            None,
            Some(&from.password),
        )
        .map(|_| ())
    }

    /// Forgets the backups of `volume` beyond `retention` and prunes what only they held.
    pub fn forget(&self, volume: Uuid, retention: &plan::Retention) -> Result<String, ResticError> {
        self.run("forget", plan::forget(volume, retention), Stdio::null(), None, None)
            .map(|r| r.stdout)
    }
}

/// Stands for the second password's path in argument lists until the pipe exists.
const FROM_PASSWORD: &str = "\u{0}rampart-from-password";

fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.by_ref().take(16 << 20).read_to_end(&mut buf);
        let _ = std::io::copy(&mut r, &mut std::io::sink());
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Waits for `child` until `timeout`; `Err(None)` after killing it at the deadline.
pub(crate) fn wait(child: &mut Child, timeout: Duration) -> Result<std::process::ExitStatus, Option<std::io::Error>> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Ok(s),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(None);
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(Some(e)),
        }
    }
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_12_3_2_1_the_password_reaches_restic_through_a_pipe_not_argv_or_env() {
        // A stand-in for restic that prints what it received: its argv, its environment and the
        // contents of the password file it was named.
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("restic");
        std::fs::write(
            &fake,
            "#!/bin/sh\nprev=\nfor a in \"$@\"; do if [ \"$prev\" = --password-file ]; then pw=$a; fi; prev=$a; done\n\
             echo \"ARGV $*\"; env | sed 's/^/ENV /'; echo \"PW $(cat \"$pw\")\"\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o700)).unwrap();
        let repo = Repository::new(
            plan::Location::Local {
                path: dir.path().into(),
            },
            Uuid::from_u128(1),
        );
        let mut r = Restic::new(repo, Sensitive::new("canary-pw-91c"));
        r.binary = fake;
        let out = r
            .run("test", vec!["snapshots".into()], Stdio::null(), None, None)
            .unwrap()
            .stdout;
        assert!(out.contains("PW canary-pw-91c"), "{out}");
        let leaks: Vec<&str> = out
            .lines()
            .filter(|l| !l.starts_with("PW ") && l.contains("canary"))
            .collect();
        assert!(leaks.is_empty(), "{leaks:?}");
        assert!(!format!("{r:?}").contains("canary"));
    }
}
