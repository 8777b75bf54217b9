//! Black-box logs (spec 13.4-3). A panic (hook), a fatal error on the way out, or `SIGUSR2`
//! (on demand, the process keeps running) writes a crash record to `<data_dir>/blackbox/`:
//! the kind, the code location, the message (scrubbed of anything credential-shaped), a
//! backtrace, the thread, the build id (SHA-256 of the executable), the configuration digest
//! (SHA-256 of the effective configuration with the database password masked) and the last
//! run-log events from the in-memory [`FlightRecorder`]. Each dump also becomes an audit record
//! (`system.blackbox.dump`): at once when the controller is running, otherwise at its next start
//! (a marker file `<dump>.audited` says it was recorded). The standalone agent has the same
//! black box under its own data directory (`rampart agent`); its dumps stay on the node.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::logging::{FlightRecorder, LogOptions};

/// What a dump is about, sent to the task that records it in the audit trail.
#[derive(Debug, Clone)]
pub struct Dump {
    pub path: PathBuf,
    pub kind: String,
    pub location: Option<String>,
}

struct BlackBox {
    dir: PathBuf,
    recorder: FlightRecorder,
    config_digest: String,
    build_id: Arc<OnceLock<String>>,
    notify: tokio::sync::mpsc::UnboundedSender<Dump>,
}

static BLACKBOX: OnceLock<BlackBox> = OnceLock::new();

/// SHA-256 of the configuration as TOML, database password masked (secrets are file paths).
pub fn config_digest(config: &rampart_common::config::Config) -> String {
    let mut c = config.clone();
    c.database.url = rampart_common::redact_url(&c.database.url);
    text_digest(&toml::to_string(&c).unwrap_or_default())
}

/// `sha256:<hex>` of a configuration's text (which holds no secret).
pub fn text_digest(text: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(text.as_bytes())))
}

/// The run log's file writer guard (keep it until exit) and the dumps to record.
pub type Started = (
    Option<tracing_appender::non_blocking::WorkerGuard>,
    tokio::sync::mpsc::UnboundedReceiver<Dump>,
);

/// The run log with the flight recorder as one more sink, and the black box installed on it:
/// what every long-running command of the binary starts with.
pub fn start(log: LogOptions<'_>, events: usize, data_dir: &Path, config_digest: String) -> anyhow::Result<Started> {
    let recorder = FlightRecorder::new(events);
    let guard = crate::logging::init(LogOptions {
        recorder: Some(recorder.clone()),
        ..log
    })?;
    Ok((guard, install(data_dir, recorder, config_digest)))
}

/// Writes a dump on every SIGUSR2; the process goes on.
pub fn spawn_sigusr2_dumps() -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Ok(mut usr2) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2()) else {
            return;
        };
        while usr2.recv().await.is_some() {
            match dump("signal", None, "black-box dump requested with SIGUSR2") {
                Ok(path) => tracing::info!(path = %path.display(), "black-box dump written on SIGUSR2"),
                Err(e) => tracing::error!(error = %e, "cannot write the black-box dump"),
            }
        }
    })
}

fn exe_digest() -> String {
    let Ok(path) = std::env::current_exe() else {
        return "unknown".into();
    };
    let Ok(mut f) = std::fs::File::open(path) else {
        return "unknown".into();
    };
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match std::io::Read::read(&mut f, &mut buf) {
            Ok(0) => break,
            Ok(n) => h.update(&buf[..n]),
            Err(_) => return "unknown".into(),
        }
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// Installs the black box: panic hook and the channel of dumps to record.
pub fn install(
    data_dir: &Path,
    recorder: FlightRecorder,
    config_digest: String,
) -> tokio::sync::mpsc::UnboundedReceiver<Dump> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let build_id = Arc::new(OnceLock::new());
    let b = build_id.clone();
    // Hash the executable once, off the start-up path.
    let _ = std::thread::Builder::new().name("build-id".into()).spawn(move || {
        let _ = b.set(exe_digest());
    });
    let _ = BLACKBOX.set(BlackBox {
        dir: data_dir.join("blackbox"),
        recorder,
        config_digest,
        build_id,
        notify: tx,
    });
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic with a non-text payload".into());
        match dump("panic", location, &message) {
            Ok(path) => eprintln!("rampart: black-box dump written to {}", path.display()),
            Err(e) => eprintln!("rampart: cannot write the black-box dump: {e}"),
        }
        previous(info);
    }));
    rx
}

/// Writes a dump now; `kind` is `panic`, `fatal` or `signal`.
pub fn dump(kind: &str, location: Option<String>, message: &str) -> std::io::Result<PathBuf> {
    let Some(b) = BLACKBOX.get() else {
        return Err(std::io::Error::other("black box not installed"));
    };
    let now = time::OffsetDateTime::now_utc();
    let thread = std::thread::current();
    let events: Vec<Value> = b
        .recorder
        .snapshot()
        .into_iter()
        .map(|l| serde_json::from_str(&l).unwrap_or(Value::String(l)))
        .collect();
    let body = json!({
        "kind": kind,
        "time": rampart_common::time::rfc3339(now),
        "pid": std::process::id(),
        "thread": thread.name().unwrap_or("unnamed"),
        "version": rampart_common::VERSION,
        "build_id": b.build_id.get().cloned().unwrap_or_else(|| "pending".into()),
        "config_digest": b.config_digest,
        "location": location,
        "message": rampart_audit::redact::scrub_text(message, 4096),
        "backtrace": std::backtrace::Backtrace::force_capture().to_string(),
        "events": events,
    });
    let stamp = now
        .format(time::macros::format_description!(
            "[year][month][day]T[hour][minute][second].[subsecond digits:6]Z"
        ))
        .unwrap_or_default();
    rampart_common::fsutil::ensure_private_dir(&b.dir)?;
    let path = b.dir.join(format!("{kind}-{stamp}-{}.json", std::process::id()));
    let text = serde_json::to_vec_pretty(&body).map_err(std::io::Error::other)?;
    rampart_common::fsutil::write_secret(&path, &text)?;
    let _ = b.notify.send(Dump {
        path: path.clone(),
        kind: kind.to_string(),
        location,
    });
    Ok(path)
}

/// Dumps in `dir` not yet recorded in the audit trail (written while no controller ran).
pub fn unrecorded(dir: &Path) -> Vec<Dump> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let mut out: Vec<Dump> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter(|p| !marker(p).exists())
        .map(|p| {
            let v: Value = std::fs::read(&p)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or(Value::Null);
            Dump {
                kind: v["kind"].as_str().unwrap_or("unknown").to_string(),
                location: v["location"].as_str().map(str::to_string),
                path: p,
            }
        })
        .collect();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

fn marker(dump: &Path) -> PathBuf {
    let mut name = dump.as_os_str().to_os_string();
    name.push(".audited");
    PathBuf::from(name)
}

/// Records a dump in the audit trail and marks it recorded.
pub async fn record(audit: &rampart_controller::audit::Audit, d: &Dump) -> Result<(), rampart_common::Error> {
    use rampart_audit::record::{Actor, AuditResult, NewRecord, Target};
    let file = d
        .path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let result = if d.kind == "signal" {
        AuditResult::success(200)
    } else {
        AuditResult::failure(500, d.kind.clone())
    };
    let mut rec = NewRecord::new(
        audit.now(),
        Actor::system("blackbox"),
        "system.blackbox.dump",
        Target::new("blackbox", Some(file.clone()), None),
        result,
    )
    .detail("kind", d.kind.clone())
    .detail("file", file);
    if let Some(l) = &d.location {
        rec = rec.detail("location", l.clone());
    }
    audit.append_system(rec).await?;
    if let Err(e) = rampart_common::fsutil::write_secret(&marker(&d.path), b"") {
        tracing::warn!(error = %e, "cannot mark a black-box dump as recorded");
    }
    Ok(())
}
