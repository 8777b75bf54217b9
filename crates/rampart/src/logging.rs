//! Run logs (spec 13.4-2): `tracing` events as JSON lines with time, level, thread name,
//! module and the request id of the span they belong to, written to standard error and to
//! daily files under the log directory.

use std::path::Path;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::rolling::{Builder, Rotation};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Checks a `log.level` value.
pub fn filter(level: &str) -> anyhow::Result<EnvFilter> {
    // Library chatter stays at warn unless asked for. cryptoki logs an ERROR for every
    // mechanism of the token it has no name for when the mechanism list is read at start:
    // noise, not a failure.
    let directives = format!(
        "warn,cryptoki::mechanism=off,rampart={level},rampart_agent={level},rampart_controller={level},rampart_db={level},rampart_kms={level},rampart_iam={level},rampart_common={level},rampart_api={level}"
    );
    let directives = if level.contains('=') || level.contains(',') {
        level.to_string()
    } else {
        directives
    };
    EnvFilter::try_new(&directives)
        .map_err(|e| anyhow::anyhow!("config: `log.level` {level:?} is not a valid filter: {e}"))
}

/// Installs the subscriber; keep the guard alive until exit so the file writer flushes.
pub fn init(level: &str, dir: Option<&Path>, to_stderr: bool, max_files: usize) -> anyhow::Result<Option<WorkerGuard>> {
    let filter = filter(level)?;
    let stderr_layer = to_stderr.then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_thread_names(true)
            .with_target(true)
            .with_span_events(FmtSpan::NONE)
            .with_writer(std::io::stderr)
    });
    let (file_layer, guard) = match dir {
        Some(dir) => {
            rampart_common::fsutil::ensure_private_dir(dir)
                .map_err(|e| anyhow::anyhow!("cannot create the log directory {}: {e}", dir.display()))?;
            let appender = Builder::new()
                .rotation(Rotation::DAILY)
                .filename_prefix("rampart")
                .filename_suffix("log")
                .max_log_files(max_files)
                .build(dir)
                .map_err(|e| anyhow::anyhow!("cannot open log files in {}: {e}", dir.display()))?;
            let (writer, guard) = tracing_appender::non_blocking(appender);
            let layer = tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .with_thread_names(true)
                .with_target(true)
                .with_writer(writer);
            (Some(layer), Some(guard))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(stderr_layer)
        .with(file_layer)
        .try_init()
        .ok();
    Ok(guard)
}
