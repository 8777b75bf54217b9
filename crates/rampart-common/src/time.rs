//! Time: a [`Clock`] that tests can move, and the conversions between the database form
//! (milliseconds since the Unix epoch, portable across SQLite and PostgreSQL) and the API form
//! (RFC 3339, UTC).

use std::sync::{Arc, Mutex};
use time::{Duration, OffsetDateTime};

pub use time::OffsetDateTime as Timestamp;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> OffsetDateTime;
}

pub type SharedClock = Arc<dyn Clock>;

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that only moves when told to (lockout windows, expiry, retention in tests).
#[derive(Debug)]
pub struct ManualClock(Mutex<OffsetDateTime>);

impl ManualClock {
    pub fn new(start: OffsetDateTime) -> Self {
        ManualClock(Mutex::new(start))
    }

    pub fn advance(&self, by: Duration) {
        let mut now = self.0.lock().expect("clock lock");
        *now += by;
    }

    pub fn set(&self, to: OffsetDateTime) {
        *self.0.lock().expect("clock lock") = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.0.lock().expect("clock lock")
    }
}

pub fn system_clock() -> SharedClock {
    Arc::new(SystemClock)
}

/// Database form of a time.
pub fn to_ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

pub fn from_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// RFC 3339 in UTC, the only time format of the API and the logs.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_round_trip() {
        let t = time::macros::datetime!(2026-11-29 04:17:41.123 UTC);
        assert_eq!(from_ms(to_ms(t)), t);
        assert_eq!(rfc3339(t), "2026-11-29T04:17:41.123Z");
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(time::macros::datetime!(2026-01-01 0:00 UTC));
        let a = c.now();
        c.advance(Duration::seconds(30));
        assert_eq!(c.now() - a, Duration::seconds(30));
    }
}
