//! Run logs (spec 13.4-2): `tracing` events as JSON lines with time, level, thread name,
//! module and the request id of the span they belong to, written to standard error, to files
//! under the log directory rotated by size (`log.max_file_bytes`) and at midnight UTC with at
//! most `log.max_files` kept, and to the in-memory flight recorder of the black box.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use time::OffsetDateTime;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Name of the file being written; rotated files are `rampart.<UTC time>.log`.
pub const ACTIVE_FILE: &str = "rampart.log";

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

/// Where run logs go.
pub struct LogOptions<'a> {
    pub level: &'a str,
    pub dir: Option<&'a Path>,
    pub to_stderr: bool,
    pub max_files: usize,
    pub max_file_bytes: u64,
    pub recorder: Option<FlightRecorder>,
}

/// How the run log shows on standard error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StderrLog {
    Off,
    /// A person at a terminal: one readable line per warning or error; the full JSON run log
    /// is in the files (a JSON line per heartbeat is no summary).
    Human,
    /// A pipe or a journal: the JSON run log, as in the files.
    Json,
}

/// What standard error gets: JSON unless a person watches the terminal while the files keep
/// the run log.
pub fn stderr_log(to_stderr: bool, stderr_is_terminal: bool, has_files: bool) -> StderrLog {
    match (to_stderr, stderr_is_terminal && has_files) {
        (false, _) => StderrLog::Off,
        (true, true) => StderrLog::Human,
        (true, false) => StderrLog::Json,
    }
}

/// Installs the subscriber; keep the guard alive until exit so the file writer flushes.
pub fn init(opts: LogOptions<'_>) -> anyhow::Result<Option<WorkerGuard>> {
    use std::io::IsTerminal;
    use tracing_subscriber::Layer;
    let filter = filter(opts.level)?;
    let mode = stderr_log(opts.to_stderr, std::io::stderr().is_terminal(), opts.dir.is_some());
    let stderr_layer = (mode == StderrLog::Json).then(|| {
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
    let human_layer = (mode == StderrLog::Human).then(|| {
        tracing_subscriber::fmt::layer()
            .compact()
            .with_target(false)
            .with_writer(std::io::stderr)
            .with_filter(tracing_subscriber::filter::LevelFilter::WARN)
    });
    let (file_layer, guard) = match opts.dir {
        Some(dir) => {
            let file = RollingFile::open(dir, opts.max_file_bytes, opts.max_files)
                .map_err(|e| anyhow::anyhow!("cannot open log files in {}: {e}", dir.display()))?;
            let (writer, guard) = tracing_appender::non_blocking(file);
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
    let recorder_layer = opts.recorder.map(|r| {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_thread_names(true)
            .with_target(true)
            .with_writer(r)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(stderr_layer)
        .with(human_layer)
        .with(file_layer)
        .with(recorder_layer)
        .try_init()
        .ok();
    Ok(guard)
}

/// A log file rotated when it would grow past `max_bytes` or when the UTC day changes; the
/// oldest rotated files are removed so at most `max_files` files exist (the active one
/// included), which caps the disk the run log takes at about `max_files × max_bytes`.
pub struct RollingFile {
    dir: PathBuf,
    max_bytes: u64,
    max_files: usize,
    file: File,
    size: u64,
    day: time::Date,
}

fn open_private(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).mode(0o600).open(path)
}

impl RollingFile {
    pub fn open(dir: &Path, max_bytes: u64, max_files: usize) -> std::io::Result<RollingFile> {
        rampart_common::fsutil::ensure_private_dir(dir)?;
        let path = dir.join(ACTIVE_FILE);
        let file = open_private(&path)?;
        let meta = file.metadata()?;
        let day = meta
            .modified()
            .map(OffsetDateTime::from)
            .unwrap_or_else(|_| OffsetDateTime::now_utc())
            .date();
        Ok(RollingFile {
            dir: dir.to_path_buf(),
            max_bytes: max_bytes.max(4096),
            max_files: max_files.max(1),
            file,
            size: meta.len(),
            day,
        })
    }

    fn rotate(&mut self, now: OffsetDateTime) -> std::io::Result<()> {
        let stamp = now
            .format(time::macros::format_description!(
                "[year]-[month]-[day]T[hour]-[minute]-[second].[subsecond digits:6]Z"
            ))
            .unwrap_or_else(|_| now.unix_timestamp().to_string());
        let active = self.dir.join(ACTIVE_FILE);
        std::fs::rename(&active, self.dir.join(format!("rampart.{stamp}.log")))?;
        self.file = open_private(&active)?;
        self.size = 0;
        self.day = now.date();
        let mut rotated: Vec<String> = std::fs::read_dir(&self.dir)?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with("rampart.") && n.ends_with(".log") && n != ACTIVE_FILE)
            .collect();
        rotated.sort();
        let excess = (rotated.len() + 1).saturating_sub(self.max_files);
        for name in rotated.iter().take(excess) {
            let _ = std::fs::remove_file(self.dir.join(name));
        }
        Ok(())
    }
}

impl Write for RollingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let now = OffsetDateTime::now_utc();
        if self.size > 0 && (self.size + buf.len() as u64 > self.max_bytes || now.date() != self.day) {
            // A failed rotation keeps writing to the current file rather than lose the event.
            if let Err(e) = self.rotate(now) {
                eprintln!("rampart: cannot rotate the run log: {e}");
            }
        }
        self.file.write_all(buf)?;
        self.size += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// The last run-log events, kept in memory for black-box dumps (spec 13.4-3).
#[derive(Clone)]
pub struct FlightRecorder {
    events: Arc<Mutex<VecDeque<String>>>,
    capacity: usize,
}

impl FlightRecorder {
    pub fn new(capacity: usize) -> Self {
        FlightRecorder {
            events: Arc::new(Mutex::new(VecDeque::with_capacity(capacity))),
            capacity: capacity.max(1),
        }
    }

    /// The recorded events, oldest first. Never blocks: a panic raised while the recorder is
    /// busy gets what can be had.
    pub fn snapshot(&self) -> Vec<String> {
        match self.events.try_lock() {
            Ok(g) => g.iter().cloned().collect(),
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner().iter().cloned().collect(),
            Err(std::sync::TryLockError::WouldBlock) => vec![],
        }
    }

    fn push(&self, line: String) {
        let mut g = match self.events.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if g.len() >= self.capacity {
            g.pop_front();
        }
        g.push_back(line);
    }
}

/// One event being formatted for the recorder.
pub struct RecorderLine {
    buf: Vec<u8>,
    recorder: FlightRecorder,
}

impl Write for RecorderLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for RecorderLine {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            let line = String::from_utf8_lossy(&self.buf).trim_end().to_string();
            self.recorder.push(line);
        }
    }
}

impl<'a> MakeWriter<'a> for FlightRecorder {
    type Writer = RecorderLine;

    fn make_writer(&'a self) -> RecorderLine {
        RecorderLine {
            buf: Vec::new(),
            recorder: self.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_13_4_2_a_terminal_gets_warnings_in_words_and_the_files_keep_the_json() {
        // `rampart up` in the foreground: readable warnings; the run log is in the files.
        assert_eq!(stderr_log(true, true, true), StderrLog::Human);
        // Under systemd or a pipe the JSON goes to standard error as before.
        assert_eq!(stderr_log(true, false, true), StderrLog::Json);
        // Without files, standard error is the only run log: it stays complete.
        assert_eq!(stderr_log(true, true, false), StderrLog::Json);
        assert_eq!(stderr_log(false, true, true), StderrLog::Off);
    }

    #[test]
    fn spec_13_4_2_run_log_files_rotate_by_size_and_keep_at_most_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = RollingFile::open(dir.path(), 4096, 3).unwrap();
        let line = format!("{{\"level\":\"INFO\",\"message\":\"{}\"}}\n", "x".repeat(200));
        for _ in 0..200 {
            f.write_all(line.as_bytes()).unwrap();
        }
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        names.sort();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(names.contains(&ACTIVE_FILE.to_string()));
        let mut total = 0;
        for n in &names {
            let p = dir.path().join(n);
            let len = std::fs::metadata(&p).unwrap().len();
            assert!(len <= 4096, "{n} is {len} bytes, over the cap");
            assert_eq!(rampart_common::fsutil::mode_of(&p).unwrap(), 0o600);
            total += len;
            // Whole lines only: rotation never splits an event.
            let text = std::fs::read_to_string(&p).unwrap();
            assert!(text.lines().all(|l| l.starts_with('{') && l.ends_with('}')));
        }
        assert!(total <= 3 * 4096);
    }

    #[test]
    fn spec_13_4_3_flight_recorder_keeps_the_last_events() {
        let r = FlightRecorder::new(3);
        for i in 0..10 {
            let mut w = r.make_writer();
            writeln!(w, "{{\"n\":{i}}}").unwrap();
        }
        assert_eq!(r.snapshot(), vec!["{\"n\":7}", "{\"n\":8}", "{\"n\":9}"]);
    }
}
