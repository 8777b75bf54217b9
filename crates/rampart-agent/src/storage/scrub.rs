//! The scheduled scrub of a btrfs RAID1 pool (14.1-2). btrfs checksums every block and a read
//! repairs a bad copy from its mirror, but blocks nobody reads rot unseen until the second copy
//! fails too; a scrub reads everything and repairs what it finds. The agent runs one every
//! `interval` (default daily; the last one's time survives restarts in
//! `<data dir>/storage/scrub.json`), and what it found stays in the pool's report: a scrub
//! that repaired errors (a failing device) or could not (data lost) makes the pool `degraded`
//! with a problem line in `GET /v1/storage/pools` until a later scrub is clean.
//!
//! The pure half ([`due_in`], [`annotate`]) is unit-tested; [`Scrubber::run`] calls
//! `rampart_storage::btrfs::scrub` off the async threads, and only on a btrfs pool.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rampart_api::storage::{PoolHealthState, PoolReport};
use rampart_storage::btrfs::{ScrubReport, ScrubVerdict};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

/// How the agent scrubs its pool.
#[derive(Debug, Clone)]
pub struct ScrubOptions {
    /// The `btrfs` program.
    pub btrfs: PathBuf,
    /// Time between the end of one scrub and the start of the next; zero: never.
    pub interval: Duration,
    /// Longest a scrub may run before it is abandoned (and counted as unfinished).
    pub timeout: Duration,
}

impl Default for ScrubOptions {
    fn default() -> Self {
        ScrubOptions {
            btrfs: PathBuf::from("btrfs"),
            interval: Duration::from_secs(24 * 3600),
            timeout: Duration::from_secs(12 * 3600),
        }
    }
}

/// The last scrub: when it ended and what it found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastScrub {
    #[serde(with = "time::serde::rfc3339")]
    pub finished_at: OffsetDateTime,
    pub report: ScrubReport,
}

/// How long to wait before the next scrub: at once when none ever ran, else what is left of
/// `interval` since the last one ended (none when the clock went back past it).
pub fn due_in(last: Option<OffsetDateTime>, now: OffsetDateTime, interval: Duration) -> Duration {
    let Some(last) = last else {
        return Duration::ZERO;
    };
    let elapsed = now - last;
    if elapsed.is_negative() {
        return Duration::ZERO;
    }
    interval.saturating_sub(elapsed.unsigned_abs())
}

/// Folds the last scrub into the pool's report: errors found (repaired or not) make it
/// `degraded` (never better than it was) with a line an operator can act on.
pub fn annotate(pool: &mut PoolReport, last: &LastScrub) {
    let r = &last.report;
    let when = last
        .finished_at
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let line = match r.verdict() {
        ScrubVerdict::Clean => return,
        ScrubVerdict::Repaired => format!(
            "scrub at {when}: {} errors found, {} corrected from the mirror (a device is failing: check `btrfs device stats`)",
            r.errors(),
            r.corrected_errors
        ),
        ScrubVerdict::Uncorrectable if !r.finished => {
            format!("scrub at {when} did not finish: the pool's copies are unverified")
        }
        ScrubVerdict::Uncorrectable => format!(
            "scrub at {when}: {} uncorrectable errors (data lost on both copies), {} corrected",
            r.uncorrectable_errors, r.corrected_errors
        ),
    };
    if pool.health == PoolHealthState::Ok {
        pool.health = PoolHealthState::Degraded;
    }
    pool.problems.push(line);
}

/// Whether `dir` is on btrfs (a scrub means nothing elsewhere).
pub fn is_btrfs(dir: &Path) -> bool {
    nix::sys::statfs::statfs(dir).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::BTRFS_SUPER_MAGIC)
}

/// Runs the scrubs of one pool and keeps the last one's result.
pub struct Scrubber {
    pool_dir: PathBuf,
    state_file: PathBuf,
    opts: ScrubOptions,
    last: Mutex<Option<LastScrub>>,
}

impl Scrubber {
    /// `state_dir` keeps the last scrub across restarts (so a restart does not scrub again).
    pub fn new(pool_dir: PathBuf, state_dir: &Path, opts: ScrubOptions) -> Arc<Scrubber> {
        let state_file = state_dir.join("scrub.json");
        let last = std::fs::read(&state_file)
            .ok()
            .and_then(|b| serde_json::from_slice::<LastScrub>(&b).ok());
        Arc::new(Scrubber {
            pool_dir,
            state_file,
            opts,
            last: Mutex::new(last),
        })
    }

    pub fn last(&self) -> Option<LastScrub> {
        self.last.lock().expect("scrub state lock").clone()
    }

    /// One scrub now (blocking), recorded and logged.
    pub fn scrub_now(&self) -> Result<LastScrub, rampart_storage::proc::ProcError> {
        let report = rampart_storage::btrfs::scrub(&self.opts.btrfs, &self.pool_dir, self.opts.timeout)?;
        let last = LastScrub {
            finished_at: OffsetDateTime::now_utc(),
            report,
        };
        match last.report.verdict() {
            ScrubVerdict::Clean => {
                tracing::info!(bytes = last.report.data_bytes_scrubbed, "pool scrub clean")
            }
            ScrubVerdict::Repaired => tracing::warn!(
                errors = last.report.errors(),
                corrected = last.report.corrected_errors,
                "pool scrub repaired errors from the mirror: a device is failing"
            ),
            ScrubVerdict::Uncorrectable => tracing::error!(
                uncorrectable = last.report.uncorrectable_errors,
                finished = last.report.finished,
                "pool scrub found errors it could not repair"
            ),
        }
        if let Ok(bytes) = serde_json::to_vec(&last)
            && let Err(e) = rampart_common::fsutil::write_atomic(&self.state_file, &bytes, 0o600)
        {
            tracing::warn!(error = %e, "cannot keep the last scrub's result");
        }
        *self.last.lock().expect("scrub state lock") = Some(last.clone());
        Ok(last)
    }

    /// Scrubs every `interval` until `shutdown`; returns at once when the interval is zero or
    /// the pool is not on btrfs.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        if self.opts.interval.is_zero() || !is_btrfs(&self.pool_dir) {
            return;
        }
        loop {
            let wait = due_in(
                self.last().map(|l| l.finished_at),
                OffsetDateTime::now_utc(),
                self.opts.interval,
            );
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let me = self.clone();
            match tokio::task::spawn_blocking(move || me.scrub_now()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %rampart_common::error::ErrorChain(&e), "pool scrub failed to run");
                    // Not a result: try again in an hour rather than a whole interval.
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(3600).min(self.opts.interval)) => {}
                    }
                }
                Err(e) => tracing::warn!(error = %e, "pool scrub task failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> PoolReport {
        PoolReport {
            name: "local".into(),
            backend: "local".into(),
            total_bytes: 1,
            free_bytes: 1,
            volumes: 0,
            redundancy: "btrfs_raid1".into(),
            copies: 2,
            health: PoolHealthState::Ok,
            problems: vec![],
        }
    }

    fn last(report: ScrubReport) -> LastScrub {
        LastScrub {
            finished_at: OffsetDateTime::UNIX_EPOCH,
            report,
        }
    }

    #[test]
    fn spec_14_1_2_scrubs_are_due_once_per_interval_and_at_once_the_first_time() {
        let day = Duration::from_secs(86_400);
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(10);
        assert_eq!(due_in(None, now, day), Duration::ZERO);
        assert_eq!(
            due_in(Some(now - time::Duration::hours(6)), now, day),
            Duration::from_secs(18 * 3600)
        );
        assert_eq!(due_in(Some(now - time::Duration::days(3)), now, day), Duration::ZERO);
        // A clock set back never postpones the next scrub by more than an interval.
        assert_eq!(due_in(Some(now + time::Duration::days(5)), now, day), Duration::ZERO);
    }

    #[test]
    fn spec_14_1_2_a_scrub_that_found_errors_degrades_the_pool_with_a_reason() {
        let mut p = pool();
        annotate(
            &mut p,
            &last(ScrubReport {
                finished: true,
                data_bytes_scrubbed: 1 << 20,
                ..Default::default()
            }),
        );
        assert_eq!((p.health, p.problems.len()), (PoolHealthState::Ok, 0), "clean");
        let repaired = ScrubReport {
            finished: true,
            csum_errors: 16,
            corrected_errors: 16,
            ..Default::default()
        };
        annotate(&mut p, &last(repaired.clone()));
        assert_eq!(p.health, PoolHealthState::Degraded);
        assert!(
            p.problems[0].contains("16 errors found, 16 corrected"),
            "{:?}",
            p.problems
        );
        let mut p = pool();
        annotate(
            &mut p,
            &last(ScrubReport {
                uncorrectable_errors: 2,
                ..repaired
            }),
        );
        assert!(p.problems[0].contains("2 uncorrectable"), "{:?}", p.problems);
        let mut p = pool();
        p.health = PoolHealthState::Unavailable;
        annotate(&mut p, &last(ScrubReport::default()));
        assert_eq!(p.health, PoolHealthState::Unavailable, "never better than it was");
        assert!(p.problems[0].contains("did not finish"), "{:?}", p.problems);
        let json = serde_json::to_string(&last(ScrubReport::default())).unwrap();
        assert!(json.contains("\"finished_at\":\"1970-01-01T00:00:00Z\""), "{json}");
    }

    #[tokio::test]
    async fn spec_14_1_2_only_btrfs_pools_are_scrubbed() {
        assert!(!is_btrfs(Path::new("/proc")));
        let s = Scrubber::new(
            PathBuf::from("/proc"),
            Path::new("/proc"),
            ScrubOptions {
                btrfs: PathBuf::from("/bin/false"),
                ..ScrubOptions::default()
            },
        );
        tokio::time::timeout(Duration::from_secs(5), s.clone().run(CancellationToken::new()))
            .await
            .expect("returns at once off btrfs");
        assert!(s.last().is_none(), "no scrub ran");
    }
}
