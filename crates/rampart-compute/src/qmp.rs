//! A small async QMP client: greeting, capability negotiation, commands with ids, and the
//! asynchronous events QEMU sends in between (SHUTDOWN, STOP, GUEST_PANICKED, ...). One
//! client per VM, used by one task at a time.

use std::collections::VecDeque;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP socket I/O")]
    Io(#[from] std::io::Error),
    #[error("QMP connection closed")]
    Closed,
    #[error("QMP timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("QMP protocol: {0}")]
    Protocol(String),
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
}

/// An asynchronous event.
#[derive(Debug, Clone, PartialEq)]
pub struct QmpEvent {
    pub event: String,
    pub data: Value,
    /// Seconds and microseconds since the epoch, as QEMU stamped it.
    pub timestamp: (i64, i64),
}

/// `query-status`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct VmStatus {
    pub running: bool,
    /// `running`, `paused`, `shutdown`, `guest-panicked`, `prelaunch`, ...
    pub status: String,
}

/// One entry of `query-blockstats`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockStats {
    pub device: String,
    pub rd_bytes: u64,
    pub wr_bytes: u64,
    pub rd_operations: u64,
    pub wr_operations: u64,
}

pub struct QmpClient {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    events: VecDeque<QmpEvent>,
    next_id: u64,
    timeout: Duration,
    /// QEMU version from the greeting, e.g. `10.0.2`.
    pub version: String,
}

impl QmpClient {
    /// Connects, reads the greeting and negotiates capabilities.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<QmpClient, QmpError> {
        let stream = tokio::time::timeout(timeout, UnixStream::connect(path))
            .await
            .map_err(|_| QmpError::Timeout("connect"))??;
        let (r, w) = stream.into_split();
        let mut c = QmpClient {
            reader: BufReader::new(r),
            writer: w,
            events: VecDeque::new(),
            next_id: 1,
            timeout,
            version: String::new(),
        };
        let greeting = c.read_message("greeting").await?;
        let q = greeting
            .get("QMP")
            .ok_or_else(|| QmpError::Protocol(format!("expected greeting, got {greeting}")))?;
        let v = &q["version"]["qemu"];
        c.version = format!("{}.{}.{}", v["major"], v["minor"], v["micro"]);
        c.execute("qmp_capabilities", None).await?;
        Ok(c)
    }

    /// Connects with retries until QEMU has created its socket (it does so early at start).
    pub async fn connect_retry(path: &Path, timeout: Duration) -> Result<QmpClient, QmpError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match Self::connect(path, timeout).await {
                Ok(c) => return Ok(c),
                Err(QmpError::Io(_)) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn read_message(&mut self, waiting_for: &'static str) -> Result<Value, QmpError> {
        let mut line = String::new();
        let n = tokio::time::timeout(self.timeout, self.reader.read_line(&mut line))
            .await
            .map_err(|_| QmpError::Timeout(waiting_for))??;
        if n == 0 {
            return Err(QmpError::Closed);
        }
        serde_json::from_str(&line).map_err(|e| QmpError::Protocol(format!("bad JSON: {e}")))
    }

    fn stash_event(&mut self, v: &Value) -> bool {
        let Some(name) = v.get("event").and_then(Value::as_str) else {
            return false;
        };
        self.events.push_back(QmpEvent {
            event: name.to_string(),
            data: v.get("data").cloned().unwrap_or(Value::Null),
            timestamp: (
                v["timestamp"]["seconds"].as_i64().unwrap_or(0),
                v["timestamp"]["microseconds"].as_i64().unwrap_or(0),
            ),
        });
        true
    }

    fn command_line(&mut self, command: &str, arguments: Option<Value>) -> (u64, Vec<u8>) {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut line = serde_json::to_vec(&msg).expect("json");
        line.push(b'\n');
        (id, line)
    }

    /// Runs a command and returns its `return` value. Events that arrive meanwhile are kept
    /// for [`QmpClient::next_event`].
    pub async fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let (id, line) = self.command_line(command, arguments);
        self.writer.write_all(&line).await?;
        self.reply(id, command).await
    }

    /// Runs a command with an open file attached (SCM_RIGHTS), as `add-fd` takes it: QEMU
    /// gets the file itself and needs no path to it (11.4: a confined QEMU sees no pool).
    pub async fn execute_with_fd(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        fd: std::os::fd::BorrowedFd<'_>,
    ) -> Result<Value, QmpError> {
        use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
        use std::os::fd::AsRawFd;
        let (id, line) = self.command_line(command, arguments);
        let stream: &UnixStream = self.writer.as_ref();
        let sent = loop {
            stream.writable().await?;
            let r = stream.try_io(tokio::io::Interest::WRITABLE, || {
                let iov = [std::io::IoSlice::new(&line)];
                let fds = [fd.as_raw_fd()];
                let cmsg = [ControlMessage::ScmRights(&fds)];
                sendmsg::<()>(stream.as_raw_fd(), &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None)
                    .map_err(std::io::Error::from)
            });
            match r {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
            }
        };
        if sent < line.len() {
            // The descriptor went with the first byte; the rest is plain text.
            self.writer.write_all(&line[sent..]).await?;
        }
        self.reply(id, command).await
    }

    async fn reply(&mut self, id: u64, command: &str) -> Result<Value, QmpError> {
        loop {
            let v = self.read_message("a command reply").await?;
            if self.stash_event(&v) {
                continue;
            }
            if v.get("id").and_then(Value::as_u64) != Some(id) {
                return Err(QmpError::Protocol(format!("reply for another id: {v}")));
            }
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(QmpError::Command {
                    command: command.to_string(),
                    class: e["class"].as_str().unwrap_or("").to_string(),
                    desc: e["desc"].as_str().unwrap_or("").to_string(),
                });
            }
            return Err(QmpError::Protocol(format!("unexpected message {v}")));
        }
    }

    /// The `node-name`s of every block node QEMU has (`query-named-block-nodes`, flat):
    /// how the agent finds the volumes it attached, after a restart too.
    pub async fn block_node_names(&mut self) -> Result<Vec<String>, QmpError> {
        let v = self
            .execute("query-named-block-nodes", Some(json!({"flat": true})))
            .await?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|n| n["node-name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }

    pub async fn query_status(&mut self) -> Result<VmStatus, QmpError> {
        let v = self.execute("query-status", None).await?;
        serde_json::from_value(v).map_err(|e| QmpError::Protocol(e.to_string()))
    }

    /// ACPI power button (q35) — the guest decides. microvm without ACPI ignores it; the
    /// driver falls back to `quit` after its grace period.
    pub async fn system_powerdown(&mut self) -> Result<(), QmpError> {
        self.execute("system_powerdown", None).await.map(|_| ())
    }

    pub async fn cont(&mut self) -> Result<(), QmpError> {
        self.execute("cont", None).await.map(|_| ())
    }

    /// Ends QEMU at once. The connection closes right after the reply (or before it).
    pub async fn quit(&mut self) -> Result<(), QmpError> {
        match self.execute("quit", None).await {
            Ok(_) | Err(QmpError::Closed) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn query_blockstats(&mut self) -> Result<Vec<BlockStats>, QmpError> {
        let v = self.execute("query-blockstats", None).await?;
        Ok(parse_blockstats(&v))
    }

    /// The next event, waiting up to `wait` for one.
    pub async fn next_event(&mut self, wait: Duration) -> Result<Option<QmpEvent>, QmpError> {
        if let Some(e) = self.events.pop_front() {
            return Ok(Some(e));
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let mut line = String::new();
            let read = tokio::time::timeout_at(deadline, self.reader.read_line(&mut line)).await;
            let n = match read {
                Err(_) => return Ok(None),
                Ok(r) => r?,
            };
            if n == 0 {
                return Err(QmpError::Closed);
            }
            let v: Value = serde_json::from_str(&line).map_err(|e| QmpError::Protocol(e.to_string()))?;
            if self.stash_event(&v) {
                return Ok(self.events.pop_front());
            }
        }
    }

    /// Waits for a named event, keeping the others.
    pub async fn wait_event(&mut self, name: &str, wait: Duration) -> Result<Option<QmpEvent>, QmpError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut others = Vec::new();
        let found = loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await? {
                Some(e) if e.event == name => break Some(e),
                Some(e) => others.push(e),
                None => break None,
            }
        };
        for e in others.into_iter().rev() {
            self.events.push_front(e);
        }
        Ok(found)
    }
}

/// Parses the `return` of `query-blockstats`, naming each drive by its legacy device name, else
/// by the `node-name` of its `-blockdev` node (how Rampart names tenant drives: `root`, `cidata`,
/// …), else by its qdev path.
pub fn parse_blockstats(v: &Value) -> Vec<BlockStats> {
    v.as_array()
        .map(|items| {
            items
                .iter()
                .map(|i| {
                    let s = &i["stats"];
                    let device = i["device"]
                        .as_str()
                        .filter(|d| !d.is_empty())
                        .or_else(|| i["node-name"].as_str().filter(|d| !d.is_empty()))
                        .or_else(|| i["qdev"].as_str())
                        .unwrap_or("")
                        .to_string();
                    BlockStats {
                        device,
                        rd_bytes: s["rd_bytes"].as_u64().unwrap_or(0),
                        wr_bytes: s["wr_bytes"].as_u64().unwrap_or(0),
                        rd_operations: s["rd_operations"].as_u64().unwrap_or(0),
                        wr_operations: s["wr_operations"].as_u64().unwrap_or(0),
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_12_1_5_blockstats_are_parsed_by_device() {
        let v = json!([
            {"device": "root", "stats": {"rd_bytes": 512, "wr_bytes": 4096, "rd_operations": 1, "wr_operations": 2}},
            {"device": "", "qdev": "/machine/peripheral-anon/device[1]/virtio-backend", "stats": {"rd_bytes": 7}},
            {"device": "", "node-name": "cidata", "qdev": "/machine/peripheral-anon/device[2]/virtio-backend", "stats": {"rd_bytes": 9}}
        ]);
        let s = parse_blockstats(&v);
        assert_eq!(s[0].device, "root");
        assert_eq!(s[0].wr_bytes, 4096);
        assert_eq!(s[0].wr_operations, 2);
        assert_eq!(s[1].rd_bytes, 7);
        assert!(s[1].device.ends_with("virtio-backend"));
        assert_eq!(
            (s[2].device.as_str(), s[2].rd_bytes),
            ("cidata", 9),
            "a -blockdev node by its name"
        );
    }

    /// A scripted QMP server on a real unix socket: greeting, replies out of order with
    /// events in between, and an error reply.
    #[tokio::test]
    async fn qmp_client_handles_greeting_events_and_errors() {
        use tokio::io::AsyncReadExt;
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 2, \"minor\": 0, \"major\": 10}}, \"capabilities\": []}}\r\n")
                .await
                .unwrap();
            let mut buf = vec![0u8; 4096];
            let mut seen = String::new();
            let mut replies = 0;
            while replies < 3 {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0);
                seen.push_str(std::str::from_utf8(&buf[..n]).unwrap());
                while let Some(pos) = seen.find('\n') {
                    let line: String = seen.drain(..=pos).collect();
                    let v: Value = serde_json::from_str(&line).unwrap();
                    let id = v["id"].clone();
                    let reply = match v["execute"].as_str().unwrap() {
                        "qmp_capabilities" => json!({"return": {}, "id": id}),
                        "query-status" => {
                            s.write_all(
                                b"{\"event\": \"RESUME\", \"timestamp\": {\"seconds\": 1, \"microseconds\": 2}}\n",
                            )
                            .await
                            .unwrap();
                            json!({"return": {"running": true, "status": "running", "singlestep": false}, "id": id})
                        }
                        _ => json!({"error": {"class": "CommandNotFound", "desc": "no"}, "id": id}),
                    };
                    s.write_all(format!("{reply}\n").as_bytes()).await.unwrap();
                    replies += 1;
                }
            }
        });
        let mut c = QmpClient::connect(&sock, Duration::from_secs(5)).await.unwrap();
        assert_eq!(c.version, "10.0.2");
        let st = c.query_status().await.unwrap();
        assert!(st.running);
        let e = c.execute("bogus", None).await.unwrap_err();
        assert!(
            matches!(e, QmpError::Command { ref class, .. } if class == "CommandNotFound"),
            "{e}"
        );
        let ev = c.next_event(Duration::from_millis(10)).await.unwrap().unwrap();
        assert_eq!(ev.event, "RESUME");
        assert_eq!(ev.timestamp, (1, 2));
        server.await.unwrap();
    }
}
