//! The pure half of volume backups: where a project's repository is on a target, the restic
//! command lines (never holding a secret: the password is a `/proc/…/fd/…` path the driver
//! fills), retention as `forget --keep-*` flags, and the parsing of what restic prints
//! (`--json` backup summaries, snapshot lists, and the failure classes of its messages).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Where a target keeps its repositories (one directory per project under it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Location {
    /// A directory on the node (a mounted disk, NFS, …).
    Local { path: PathBuf },
    /// An SFTP server, reached with `ssh` in batch mode: key authentication only, and the
    /// server's host key must be in `known_hosts` (no trust on first use).
    Sftp {
        user: String,
        host: String,
        port: u16,
        path: String,
        identity_file: PathBuf,
        known_hosts: PathBuf,
        /// Seconds before an unreachable server counts as a failure.
        #[serde(default = "default_connect_timeout")]
        connect_timeout_s: u32,
    },
}

fn default_connect_timeout() -> u32 {
    10
}

/// One project's repository on one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repository {
    pub location: Location,
    pub project: Uuid,
}

impl Repository {
    pub fn new(location: Location, project: Uuid) -> Repository {
        Repository { location, project }
    }

    /// restic's `-r` argument.
    pub fn url(&self) -> String {
        match &self.location {
            Location::Local { path } => path.join(self.project.to_string()).display().to_string(),
            Location::Sftp { user, host, path, .. } => {
                format!("sftp:{user}@{host}:{}/{}", path.trim_end_matches('/'), self.project)
            }
        }
    }

    /// The options that go with `url` (the ssh command of an SFTP target).
    pub fn options(&self) -> Vec<String> {
        match &self.location {
            Location::Local { .. } => Vec::new(),
            Location::Sftp {
                user,
                host,
                port,
                identity_file,
                known_hosts,
                connect_timeout_s,
                ..
            } => vec![
                "-o".into(),
                format!(
                    "sftp.command=ssh -F none -i {} -p {port} -o BatchMode=yes -o IdentitiesOnly=yes \
                     -o StrictHostKeyChecking=yes -o UserKnownHostsFile={} -o ConnectTimeout={connect_timeout_s} \
                     -o ServerAliveInterval=5 -o ServerAliveCountMax=3 {user}@{host} -s sftp",
                    identity_file.display(),
                    known_hosts.display()
                ),
            ],
        }
    }
}

/// The tag that names one backup in every repository holding a copy of it (restic gives the
/// copy a new snapshot id; the tag stays).
pub fn backup_tag(backup: Uuid) -> String {
    format!("rampart-backup={backup}")
}

/// The tag that groups the backups of one volume (retention runs per volume).
pub fn volume_tag(volume: Uuid) -> String {
    format!("rampart-volume={volume}")
}

/// The file name a volume's raw image has inside its snapshots (`restic dump <snap> /<this>`).
pub fn stream_filename(volume: Uuid) -> String {
    format!("{volume}.raw")
}

/// How much of the repository's data a `check` reads back and decrypts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadData {
    /// Structure only (indexes, snapshots, trees).
    None,
    /// A random percentage of the pack files (1..=100).
    Subset(u8),
    /// Every pack, every blob decrypted and hashed.
    Full,
}

/// A global prefix: repository, its options, the password file, the cache.
pub fn global(repo: &Repository, password_file: &Path, cache_dir: Option<&Path>) -> Vec<String> {
    let mut a = vec!["-r".to_string(), repo.url()];
    a.extend(repo.options());
    a.push("--password-file".into());
    a.push(password_file.display().to_string());
    match cache_dir {
        Some(d) => {
            a.push("--cache-dir".into());
            a.push(d.display().to_string());
        }
        None => a.push("--no-cache".into()),
    }
    a
}

/// `init`, or `init` sharing the chunker parameters of `from` (so that a copy to a second
/// target deduplicates there too).
pub fn init(from: Option<(&Repository, &Path)>) -> Vec<String> {
    let mut a = vec!["init".to_string()];
    if let Some((r, pw)) = from {
        // The source is the local primary (see [`copy`]): it needs no options of its own.
        a.extend([
            "--copy-chunker-params".into(),
            "--from-repo".into(),
            r.url(),
            "--from-password-file".into(),
            pw.display().to_string(),
        ]);
    }
    a
}

/// `backup` of a volume's raw image read on standard input.
pub fn backup(backup: Uuid, volume: Uuid) -> Vec<String> {
    vec![
        "backup".into(),
        "--json".into(),
        "--stdin".into(),
        "--stdin-filename".into(),
        stream_filename(volume),
        "--host".into(),
        "rampart".into(),
        "--tag".into(),
        format!("{},{}", backup_tag(backup), volume_tag(volume)),
    ]
}

/// `dump` of a volume's raw image to standard output.
pub fn dump(snapshot: &str, volume: Uuid) -> Vec<String> {
    vec!["dump".into(), snapshot.into(), format!("/{}", stream_filename(volume))]
}

/// `snapshots` carrying `tag` (all with `None`), as JSON.
pub fn snapshots(tag: Option<&str>) -> Vec<String> {
    let mut a = vec!["snapshots".to_string(), "--json".to_string()];
    if let Some(t) = tag {
        a.extend(["--tag".into(), t.into()]);
    }
    a
}

pub fn check(read: ReadData) -> Vec<String> {
    let mut a = vec!["check".to_string()];
    match read {
        ReadData::None => {}
        ReadData::Subset(p) => a.push(format!("--read-data-subset={}%", p.clamp(1, 100))),
        ReadData::Full => a.push("--read-data".into()),
    }
    a
}

/// `copy` of one snapshot from `from` (whose password is in `from_password_file`) into the
/// repository of the global arguments. An SFTP source cannot have its own ssh options in one
/// restic 0.14 call, so a copy goes from a local primary to any second target.
pub fn copy(from: &Repository, from_password_file: &Path, snapshot: &str) -> Vec<String> {
    vec![
        "copy".into(),
        "--from-repo".into(),
        from.url(),
        "--from-password-file".into(),
        from_password_file.display().to_string(),
        snapshot.into(),
    ]
}

/// How many backups of each period to keep (restic's `forget --keep-*`); at least one rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    pub last: Option<u32>,
    pub hourly: Option<u32>,
    pub daily: Option<u32>,
    pub weekly: Option<u32>,
    pub monthly: Option<u32>,
    pub yearly: Option<u32>,
}

impl Retention {
    fn rules(&self) -> [(&'static str, Option<u32>); 6] {
        [
            ("last", self.last),
            ("hourly", self.hourly),
            ("daily", self.daily),
            ("weekly", self.weekly),
            ("monthly", self.monthly),
            ("yearly", self.yearly),
        ]
    }

    /// A retention that keeps nothing would delete every backup: refused, as is a count of 0.
    pub fn validate(&self) -> Result<(), String> {
        let rules = self.rules();
        if rules.iter().all(|(_, v)| v.is_none()) {
            return Err(
                "a retention keeps at least one backup: give one of last, hourly, daily, weekly, monthly, yearly"
                    .into(),
            );
        }
        if let Some((name, _)) = rules.iter().find(|(_, v)| matches!(v, Some(0) | Some(100_001..))) {
            return Err(format!("retention `{name}` must be between 1 and 100000"));
        }
        Ok(())
    }
}

/// `forget` of one volume's backups beyond `retention`, pruning the data only they held.
pub fn forget(volume: Uuid, retention: &Retention) -> Vec<String> {
    let mut a = vec![
        "forget".to_string(),
        "--json".to_string(),
        "--prune".to_string(),
        "--tag".to_string(),
        volume_tag(volume),
    ];
    for (name, v) in retention.rules() {
        if let Some(n) = v {
            a.push(format!("--keep-{name}"));
            a.push(n.to_string());
        }
    }
    a
}

// ---- what restic prints ----

/// The last line of `backup --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupSummary {
    pub snapshot_id: String,
    /// Bytes added to the repository (after dedup and compression): what this run sent.
    pub data_added: u64,
    pub total_bytes_processed: u64,
    #[serde(default)]
    pub data_blobs: u64,
}

/// The summary of `backup --json` output, or `None` when restic never got that far.
pub fn parse_backup(stdout: &str) -> Option<BackupSummary> {
    stdout.lines().rev().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l.trim()).ok()?;
        if v.get("message_type")?.as_str()? != "summary" {
            return None;
        }
        serde_json::from_value(v).ok()
    })
}

/// The last progress of `backup --json` (0..=100), for a long backup's `progress`.
pub fn parse_progress(stdout: &str) -> Option<u8> {
    stdout.lines().rev().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l.trim()).ok()?;
        if v.get("message_type")?.as_str()? != "status" {
            return None;
        }
        Some((v.get("percent_done")?.as_f64()? * 100.0).clamp(0.0, 100.0) as u8)
    })
}

/// One entry of `snapshots --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub id: String,
    pub short_id: String,
    pub time: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    /// The snapshot this one is a copy of (`restic copy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<String>,
}

pub fn parse_snapshots(stdout: &str) -> Result<Vec<Snapshot>, serde_json::Error> {
    let t = stdout.trim();
    if t.is_empty() || t == "null" {
        return Ok(Vec::new());
    }
    serde_json::from_str(t)
}

/// Why a restic run failed, as a stable code for the API (`error.code` of a failed backup or
/// copy, the result of a verify).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureCode {
    /// The target did not answer (no route, refused, timed out, ssh could not log in).
    TargetUnreachable,
    /// Nothing is at the repository's place (never initialised, or removed).
    RepositoryMissing,
    /// The repository exists but our password opens none of its keys.
    WrongPassword,
    /// `check` (or a read) found damaged or missing data.
    RepositoryDamaged,
    /// Another run holds the repository's exclusive lock.
    RepositoryLocked,
    /// The snapshot of the backup is not in the repository.
    SnapshotMissing,
    /// Anything else (the message says what).
    BackupFailed,
}

impl FailureCode {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureCode::TargetUnreachable => "target_unreachable",
            FailureCode::RepositoryMissing => "repository_missing",
            FailureCode::WrongPassword => "wrong_password",
            FailureCode::RepositoryDamaged => "repository_damaged",
            FailureCode::RepositoryLocked => "repository_locked",
            FailureCode::SnapshotMissing => "snapshot_missing",
            FailureCode::BackupFailed => "backup_failed",
        }
    }
}

/// The failure class of a restic run from its standard error (restic 0.14's wording).
pub fn classify(stderr: &str) -> FailureCode {
    let s = stderr.to_ascii_lowercase();
    let has = |needles: &[&str]| needles.iter().any(|n| s.contains(n));
    if has(&["wrong password", "no key found"]) {
        FailureCode::WrongPassword
    } else if has(&["repository is already locked", "unable to create lock"]) {
        FailureCode::RepositoryLocked
    } else if has(&[
        "connection refused",
        "connection timed out",
        "no route to host",
        "network is unreachable",
        "ssh: connect to host",
        "permission denied (publickey",
        "host key verification failed",
        "unable to start the sftp session",
        "subsystem request failed",
        "connection closed",
    ]) {
        FailureCode::TargetUnreachable
    } else if has(&[
        "pack id does not match",
        "contains errors",
        "ciphertext verification failed",
        "hash does not match",
        "error for tree",
        "not found in index",
        "errors were found",
        "wrong data returned",
        "invalid data returned",
    ]) {
        FailureCode::RepositoryDamaged
    } else if has(&[
        "is there a repository at the following location",
        "unable to open config file",
    ]) {
        FailureCode::RepositoryMissing
    } else if has(&["no matching id found", "no snapshot", "invalid id"]) {
        FailureCode::SnapshotMissing
    } else {
        FailureCode::BackupFailed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rampart_common::testing::golden;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn sftp() -> Repository {
        Repository::new(
            Location::Sftp {
                user: "backup".into(),
                host: "10.201.0.2".into(),
                port: 2222,
                path: "/srv/restic/".into(),
                identity_file: "/var/lib/rampart/agent/backup/id_ed25519".into(),
                known_hosts: "/var/lib/rampart/agent/backup/known_hosts".into(),
                connect_timeout_s: 10,
            },
            id(1),
        )
    }

    fn local() -> Repository {
        Repository::new(
            Location::Local {
                path: "/var/lib/rampart/backups".into(),
            },
            id(1),
        )
    }

    #[test]
    fn spec_12_3_2_1_restic_command_lines_are_golden_and_hold_no_secret() {
        let pw = Path::new("/proc/4242/fd/7");
        let from_pw = Path::new("/proc/4242/fd/9");
        let mut out = String::new();
        let mut line = |name: &str, args: Vec<String>| {
            out.push_str(&format!("{name}: restic {}\n", args.join(" ")));
        };
        let cache = Path::new("/var/cache/rampart/restic");
        line("global local", global(&local(), pw, Some(cache)));
        line("global sftp", global(&sftp(), pw, None));
        line("init", init(None));
        line("init second target", init(Some((&local(), from_pw))));
        line("backup", backup(id(2), id(3)));
        line("dump", dump("ed715a2157fc1b7b", id(3)));
        line("snapshots", snapshots(Some(&backup_tag(id(2)))));
        line("check", check(ReadData::None));
        line("check subset", check(ReadData::Subset(10)));
        line("check full", check(ReadData::Full));
        line("copy", copy(&local(), from_pw, "ed715a2157fc1b7b"));
        let keep = Retention {
            last: Some(3),
            daily: Some(7),
            weekly: Some(4),
            monthly: Some(12),
            ..Retention::default()
        };
        line("forget", forget(id(3), &keep));
        golden(
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/restic-commands.txt"),
            &out,
        );
        assert!(!out.contains("password "), "a password is only ever a file path");
    }

    #[test]
    fn retention_keeps_something_and_counts_are_bounded() {
        assert!(Retention::default().validate().is_err());
        assert!(
            Retention {
                daily: Some(0),
                ..Default::default()
            }
            .validate()
            .unwrap_err()
            .contains("daily")
        );
        assert!(
            Retention {
                last: Some(1),
                ..Default::default()
            }
            .validate()
            .is_ok()
        );
        let e = serde_json::from_str::<Retention>(r#"{"last":1,"forever":true}"#).unwrap_err();
        assert!(e.to_string().contains("forever"), "{e}");
    }

    #[test]
    fn spec_12_3_2_1_backup_output_is_parsed_from_restic_json() {
        // Captured from restic 0.14.0 `backup --json --stdin`.
        let out = concat!(
            r#"{"message_type":"status","percent_done":0.25,"total_files":1,"bytes_done":750000,"current_files":["/vol.raw"]}"#,
            "\n",
            r#"{"message_type":"status","percent_done":1,"total_files":1,"bytes_done":3000000,"current_files":["/vol.raw"]}"#,
            "\n",
            r#"{"message_type":"summary","files_new":1,"files_changed":0,"files_unmodified":0,"dirs_new":0,"dirs_changed":0,"dirs_unmodified":0,"data_blobs":3,"tree_blobs":1,"data_added":3000423,"total_files_processed":1,"total_bytes_processed":3000000,"total_duration":0.297056515,"snapshot_id":"55ed45e1"}"#,
            "\n"
        );
        let s = parse_backup(out).unwrap();
        assert_eq!(s.snapshot_id, "55ed45e1");
        assert_eq!(s.data_added, 3_000_423);
        assert_eq!(s.total_bytes_processed, 3_000_000);
        assert_eq!(parse_progress(out), Some(100));
        assert_eq!(parse_progress(out.lines().next().unwrap()), Some(25));
        assert_eq!(parse_backup("Fatal: unable to open config file\n"), None);
        let snaps = parse_snapshots(
            r#"[{"time":"2026-12-07T23:48:34.149060758Z","tree":"29","paths":["/vol.raw"],"hostname":"vm","username":"root","tags":["t1"],"original":"55ed45e1a4","id":"ed715a2157","short_id":"ed715a21"}]"#,
        )
        .unwrap();
        assert_eq!(snaps[0].original.as_deref(), Some("55ed45e1a4"));
        assert_eq!(snaps[0].tags, ["t1"]);
        assert!(parse_snapshots("null").unwrap().is_empty());
    }

    #[test]
    fn spec_14_1_1_restic_failures_get_stable_codes() {
        let cases = [
            (
                "Fatal: unable to open config file: Stat: stat /x/config: no such file or directory\nIs there a repository at the following location?",
                FailureCode::RepositoryMissing,
            ),
            ("Fatal: wrong password or no key found", FailureCode::WrongPassword),
            (
                "ssh: connect to host 10.201.0.2 port 22: Connection refused\nFatal: unable to open repository",
                FailureCode::TargetUnreachable,
            ),
            (
                "ssh: connect to host 10.201.0.2 port 22: Connection timed out",
                FailureCode::TargetUnreachable,
            ),
            (
                "pack 5b3a1f: not referenced in any index\nPack ID does not match, want 5b3a1f, got 0d1c\nFatal: repository contains errors",
                FailureCode::RepositoryDamaged,
            ),
            (
                "Fatal: unable to create lock in backend: repository is already locked by PID 7",
                FailureCode::RepositoryLocked,
            ),
            (
                "Fatal: no matching ID found for prefix \"abc\"",
                FailureCode::SnapshotMissing,
            ),
            ("Fatal: something new", FailureCode::BackupFailed),
        ];
        for (stderr, want) in cases {
            assert_eq!(classify(stderr), want, "{stderr}");
        }
        assert_eq!(FailureCode::TargetUnreachable.as_str(), "target_unreachable");
    }

    #[test]
    fn repository_urls_are_per_project() {
        assert_eq!(
            local().url(),
            "/var/lib/rampart/backups/00000000-0000-0000-0000-000000000001"
        );
        assert_eq!(
            sftp().url(),
            "sftp:backup@10.201.0.2:/srv/restic/00000000-0000-0000-0000-000000000001"
        );
    }
}
