//! A volume's plaintext as a file, through QEMU's own LUKS layer: `qemu-storage-daemon` opens
//! the qcow2 (+LUKS) file and exports the decrypted disk over FUSE onto a mount point file in a
//! private 0700 directory. Read-only for a backup (restic reads it as its standard input), or
//! writable for a restore (restic's `dump` writes into it, QEMU encrypts every cluster before it
//! reaches the volume file, and all-zero writes stay unallocated).
//!
//! Why not `qemu-img convert` to a pipe: it needs a seekable target and source. The plaintext
//! never lands on a disk: FUSE serves it from QEMU's memory, and only root (the mounting user)
//! may open the mount (no `allow_other`).
//!
//! The passphrase reaches the daemon as rampart-storage hands it to the QEMU tools: on its
//! standard input, named by `--object secret,file=/dev/fd/0`.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rampart_common::Sensitive;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("qemu-storage-daemon could not be started: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("the volume could not be opened through QEMU: {0}")]
    Open(String),
    #[error("the export did not appear within {0} s")]
    Timeout(u64),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("qemu-storage-daemon did not stop cleanly: {0}")]
    Close(String),
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> ExportError {
    move |source| ExportError::Io { what, source }
}

/// A running export; dropping it stops the daemon (use [`Export::close`] to see errors).
pub struct Export {
    child: Option<Child>,
    dir: tempfile::TempDir,
    mountpoint: PathBuf,
    writable: bool,
    stderr: Option<std::thread::JoinHandle<String>>,
}

/// The `qemu-storage-daemon` arguments (no secret in them: the key is `file=/dev/fd/0`).
pub fn daemon_args(volume: &Path, encrypted: bool, writable: bool, mountpoint: &Path) -> Vec<String> {
    let ro = !writable;
    let file = serde_json::json!({
        "driver": "file",
        "node-name": "file0",
        "filename": volume.display().to_string(),
        "read-only": ro,
    });
    let mut qcow2 = serde_json::json!({
        "driver": "qcow2",
        "node-name": "vol0",
        "file": "file0",
        // A crafted header can never make QEMU open another host file.
        "backing": null,
        "read-only": ro,
        "discard": "unmap",
        // A restore writes the whole disk: zero blocks stay holes in the thin volume.
        "detect-zeroes": if writable { "unmap" } else { "off" },
    });
    let mut args = Vec::new();
    if encrypted {
        args.extend(["--object".to_string(), "secret,id=sec0,file=/dev/fd/0".to_string()]);
        qcow2["encrypt"] = serde_json::json!({"format": "luks", "key-secret": "sec0"});
    }
    args.extend([
        "--blockdev".to_string(),
        file.to_string(),
        "--blockdev".to_string(),
        qcow2.to_string(),
        "--export".to_string(),
        format!(
            "type=fuse,id=exp0,node-name=vol0,mountpoint={},writable={}",
            mountpoint.display(),
            if writable { "on" } else { "off" }
        ),
    ]);
    args
}

impl Export {
    /// Exports `volume` (a qcow2 file) under `work` (a directory of the node's, on any
    /// filesystem: only the empty mount point file lives there).
    pub fn open(
        volume: &Path,
        passphrase: Option<&Sensitive>,
        writable: bool,
        work: &Path,
        timeout: Duration,
    ) -> Result<Export, ExportError> {
        let dir = tempfile::Builder::new()
            .prefix("export-")
            .tempdir_in(work)
            .map_err(io("creating the export directory"))?;
        // tempfile makes the directory 0700.
        let mountpoint = dir.path().join("disk");
        File::create(&mountpoint).map_err(io("creating the mount point"))?;
        let mut cmd = Command::new("qemu-storage-daemon");
        cmd.args(daemon_args(volume, passphrase.is_some(), writable, &mountpoint));
        match passphrase {
            Some(p) => {
                let (reader, mut writer) = std::io::pipe().map_err(io("secret pipe"))?;
                writer.write_all(p.expose().as_bytes()).map_err(io("secret pipe"))?;
                drop(writer);
                cmd.stdin(Stdio::from(reader));
            }
            None => {
                cmd.stdin(Stdio::null());
            }
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(ExportError::Spawn)?;
        drop(cmd);
        let stderr = child.stderr.take().map(|mut e| {
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = e.by_ref().take(64 << 10).read_to_string(&mut s);
                let _ = std::io::copy(&mut e, &mut std::io::sink());
                s
            })
        });
        let mut export = Export {
            child: Some(child),
            dir,
            mountpoint,
            writable,
            stderr,
        };
        let deadline = Instant::now() + timeout;
        loop {
            if mounted(&export.mountpoint) {
                return Ok(export);
            }
            if let Some(c) = export.child.as_mut()
                && let Ok(Some(_)) = c.try_wait()
            {
                export.child = None;
                let msg = export.stderr.take().and_then(|h| h.join().ok()).unwrap_or_default();
                let mut msg = msg.trim().to_string();
                msg.truncate(1000);
                return Err(ExportError::Open(msg));
            }
            if Instant::now() >= deadline {
                return Err(ExportError::Timeout(timeout.as_secs()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The plaintext disk.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    pub fn open_read(&self) -> Result<File, ExportError> {
        File::open(&self.mountpoint).map_err(io("opening the export"))
    }

    pub fn open_write(&self) -> Result<File, ExportError> {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&self.mountpoint)
            .map_err(io("opening the export for writing"))
    }

    /// Flushes (writable), stops the daemon and waits until the mount is gone.
    pub fn close(mut self) -> Result<(), ExportError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), ExportError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if self.writable {
            // fsync on the FUSE file is a flush of the QEMU block node down to the volume file.
            let synced = File::open(&self.mountpoint).and_then(|f| f.sync_all());
            if let Err(e) = synced {
                tracing::warn!(error = %e, "flushing a writable export");
            }
        }
        // SIGTERM: the daemon unmounts, flushes and exits; SIGKILL would leave a dead mount.
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        match crate::restic::wait(&mut child, Duration::from_secs(30)) {
            Ok(s) if s.success() || s.code().is_none() => {}
            Ok(s) => {
                let msg = self.stderr.take().and_then(|h| h.join().ok()).unwrap_or_default();
                return Err(ExportError::Close(format!("{s}: {}", msg.trim())));
            }
            Err(_) => {
                return Err(ExportError::Close(
                    "it did not exit after SIGTERM and was killed".into(),
                ));
            }
        }
        if mounted(&self.mountpoint) {
            let _ = Command::new("umount")
                .args(["-l", &self.mountpoint.display().to_string()])
                .status();
            return Err(ExportError::Close("the mount outlived the daemon".into()));
        }
        Ok(())
    }

    /// The directory of the mount point (tests check it is private).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Export {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(error = %e, "stopping a volume export");
        }
    }
}

/// After a restart: stops the `qemu-storage-daemon`s of exports a killed agent left under
/// `work` (found by their mount point in `/proc/<pid>/cmdline`, so only our own), unmounts what
/// is still mounted and removes the directories. Returns the directories cleaned.
pub fn recover(work: &Path) -> Result<Vec<PathBuf>, ExportError> {
    let mut cleaned = Vec::new();
    let entries = std::fs::read_dir(work).map_err(io("reading the export work directory"))?;
    for e in entries.flatten() {
        let dir = e.path();
        let is_export = e.file_name().to_string_lossy().starts_with("export-");
        if !is_export || !dir.is_dir() {
            continue;
        }
        let mountpoint = dir.join("disk");
        let needle = format!("mountpoint={},", mountpoint.display());
        for p in std::fs::read_dir("/proc").map_err(io("reading /proc"))?.flatten() {
            let name = p.file_name().to_string_lossy().into_owned();
            if !name.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let ours = args.first().is_some_and(|a| a.ends_with("qemu-storage-daemon"))
                && args.iter().any(|a| a.contains(&needle));
            if ours {
                let _ = Command::new("kill").args(["-TERM", &name]).status();
                let deadline = Instant::now() + Duration::from_secs(10);
                // Gone, or a zombie (its parent, not us, reaps it).
                let alive = || {
                    std::fs::read_to_string(p.path().join("stat"))
                        .ok()
                        .and_then(|st| st.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
                        .unwrap_or(false)
                };
                while alive() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        if mounted(&mountpoint) {
            let _ = Command::new("umount")
                .args(["-l", &mountpoint.display().to_string()])
                .status();
        }
        std::fs::remove_dir_all(&dir).map_err(io("removing a leftover export directory"))?;
        cleaned.push(dir);
    }
    Ok(cleaned)
}

/// Whether `path` is a mount point (listed in this process's mount table).
fn mounted(path: &Path) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.display().to_string();
    table
        .lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|m| unescape(m) == want))
}

/// Mount table paths escape space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rampart_common::testing::golden;

    #[test]
    fn spec_12_3_2_1_the_export_command_line_is_golden_and_names_the_key_only_by_fd() {
        let mut out = String::new();
        for (enc, w) in [(true, false), (true, true), (false, false)] {
            out.push_str(&format!(
                "encrypted={enc} writable={w}: qemu-storage-daemon {}\n",
                daemon_args(
                    Path::new("/var/lib/rampart/pool/volumes/v.qcow2"),
                    enc,
                    w,
                    Path::new("/run/rampart/export-x/disk")
                )
                .join(" ")
            ));
        }
        golden(
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/export-commands.txt"),
            &out,
        );
    }
}
