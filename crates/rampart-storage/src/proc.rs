//! Running `qemu-img`, `qemu-io` and `btrfs` with a deadline, and handing a volume passphrase to
//! the QEMU tools without it touching argv, a file or the environment: the passphrase is written
//! into a pipe whose read end becomes the child's standard input, and the tool is told
//! `--object secret,id=…,file=/dev/fd/0`. The pipe exists only between this process and that
//! child (its ends are close-on-exec here; only the child's fd 0 is the read end), and QEMU
//! reads it to the end when it creates the object.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rampart_common::Sensitive;

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("{program} could not be started: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} did not finish within {secs} s and was killed")]
    Timeout { program: String, secs: u64 },
    /// The tool's own message (stderr, bounded). The QEMU tools never echo a secret's value.
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        program: String,
        status: String,
        stderr: String,
    },
    #[error("pipe to {program}: {source}")]
    Pipe {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

/// What a successful run printed.
#[derive(Debug)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
}

/// The `--object` argument naming the passphrase on fd 0.
pub fn secret_object_arg(id: &str) -> String {
    format!("secret,id={id},file=/dev/fd/0")
}

/// Runs `cmd` to completion within `timeout`; `secret`, if any, is its standard input.
pub fn run(mut cmd: Command, secret: Option<&Sensitive>, timeout: Duration) -> Result<Output, ProcError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    match secret {
        Some(s) => {
            let (reader, mut writer) = std::io::pipe().map_err(|source| ProcError::Pipe {
                program: program.clone(),
                source,
            })?;
            // A passphrase is far below the pipe buffer (64 KiB): the write cannot block, and the
            // writer is closed before the child starts, so QEMU sees end of file after it.
            writer
                .write_all(s.expose().as_bytes())
                .map_err(|source| ProcError::Pipe {
                    program: program.clone(),
                    source,
                })?;
            drop(writer);
            cmd.stdin(Stdio::from(reader));
        }
        None => {
            cmd.stdin(Stdio::null());
        }
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| ProcError::Spawn {
        program: program.clone(),
        source,
    })?;
    // Drop our copy of the read end now that the child has its own.
    drop(cmd);
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.by_ref().take(4 << 20).read_to_end(&mut buf);
            // Keep reading so the child never blocks on a full pipe.
            let _ = std::io::copy(&mut r, &mut std::io::sink());
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped")));
    let err = drain(Box::new(child.stderr.take().expect("piped")));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ProcError::Timeout {
                    program,
                    secs: timeout.as_secs(),
                });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(source) => {
                return Err(ProcError::Spawn { program, source });
            }
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if !status.success() {
        let mut stderr = stderr.trim().to_string();
        stderr.truncate(2000);
        return Err(ProcError::Failed {
            program,
            status: status.to_string(),
            stderr,
        });
    }
    Ok(Output { stdout, stderr })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_12_3_2_2_the_secret_reaches_the_child_on_stdin_not_in_argv() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "cat /dev/fd/0; echo; cat /proc/$$/cmdline"]);
        let out = run(cmd, Some(&Sensitive::new("canary-7f3")), Duration::from_secs(10)).unwrap();
        let mut lines = out.stdout.lines();
        assert_eq!(lines.next(), Some("canary-7f3"));
        assert!(!lines.next().unwrap_or("").contains("canary"));
    }

    #[test]
    fn failures_and_timeouts_are_reported() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo nope >&2; exit 3"]);
        let e = run(cmd, None, Duration::from_secs(10)).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let t = Instant::now();
        let e = run(cmd, None, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(e, ProcError::Timeout { .. }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(matches!(
            run(Command::new("/nonexistent/tool"), None, Duration::from_secs(1)).unwrap_err(),
            ProcError::Spawn { .. }
        ));
    }
}
