//! Bounds how fast one caller can fill the audit trail with refused calls (13.4-1).
//!
//! Every refused call (401, 403, 404, a validation error, ...) of a state-changing route is
//! audited, and records are kept for months: a caller that repeats refused calls in a loop is
//! a disk-filling attack on the API. [`RefusalLimiter`] counts refusals per principal and source
//! address in fixed one-minute windows; past the limit, the caller's calls are answered 429
//! before they run and are not recorded one by one (the first refusal over the limit is logged).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Length of one counting window.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Callers remembered at most; older windows are dropped first when the map is full.
const MAX_TRACKED: usize = 100_000;

/// Who refused calls are counted against: the authenticated principal (or none) and the
/// source address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Caller {
    pub principal: Option<String>,
    pub source: Option<String>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    refused: u32,
}

/// Fixed-window counter of refused calls per [`Caller`]. `limit` 0 turns it off.
#[derive(Debug)]
pub struct RefusalLimiter {
    limit: u32,
    windows: Mutex<HashMap<Caller, Window>>,
}

impl RefusalLimiter {
    pub fn new(limit_per_window: u32) -> Self {
        RefusalLimiter {
            limit: limit_per_window,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Seconds until `caller` may call again, when it already used up its refusals of the
    /// current window; `None` when it may go on.
    pub fn retry_after(&self, caller: &Caller, now: Instant) -> Option<u64> {
        if self.limit == 0 {
            return None;
        }
        let windows = self.windows.lock().expect("limiter lock");
        let w = windows.get(caller)?;
        let elapsed = now.saturating_duration_since(w.start);
        (elapsed < WINDOW && w.refused >= self.limit).then(|| (WINDOW - elapsed).as_secs().max(1))
    }

    /// Counts one refused call of `caller`. Returns true when this refusal used up the limit
    /// (the moment to log that the caller is being limited).
    pub fn refused(&self, caller: &Caller, now: Instant) -> bool {
        if self.limit == 0 {
            return false;
        }
        let mut windows = self.windows.lock().expect("limiter lock");
        if windows.len() >= MAX_TRACKED && !windows.contains_key(caller) {
            windows.retain(|_, w| now.saturating_duration_since(w.start) < WINDOW);
            if windows.len() >= MAX_TRACKED {
                // Still full of live windows: forget the oldest rather than grow without bound.
                if let Some(oldest) = windows.iter().min_by_key(|(_, w)| w.start).map(|(c, _)| c.clone()) {
                    windows.remove(&oldest);
                }
            }
        }
        let w = windows
            .entry(caller.clone())
            .or_insert(Window { start: now, refused: 0 });
        if now.saturating_duration_since(w.start) >= WINDOW {
            *w = Window { start: now, refused: 0 };
        }
        w.refused = w.refused.saturating_add(1);
        w.refused == self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(p: &str, ip: &str) -> Caller {
        Caller {
            principal: Some(p.into()),
            source: Some(ip.into()),
        }
    }

    #[test]
    fn spec_13_4_1_refused_calls_are_limited_per_principal_and_source() {
        let l = RefusalLimiter::new(3);
        let t0 = Instant::now();
        let mallory = caller("mallory", "192.0.2.7");
        for i in 0..3 {
            assert_eq!(l.retry_after(&mallory, t0), None, "call {i}");
            assert_eq!(l.refused(&mallory, t0), i == 2);
        }
        let wait = l.retry_after(&mallory, t0 + Duration::from_secs(10)).expect("limited");
        assert_eq!(wait, 50);
        // Another principal, or the same one from another address, is not affected.
        assert_eq!(l.retry_after(&caller("alice", "192.0.2.7"), t0), None);
        assert_eq!(l.retry_after(&caller("mallory", "198.51.100.1"), t0), None);
        // The next window starts afresh.
        assert_eq!(l.retry_after(&mallory, t0 + WINDOW), None);
        assert!(!l.refused(&mallory, t0 + WINDOW));
        assert_eq!(l.retry_after(&mallory, t0 + WINDOW), None);
    }

    #[test]
    fn spec_13_4_1_limit_zero_turns_the_limiter_off() {
        let l = RefusalLimiter::new(0);
        let t0 = Instant::now();
        let c = caller("x", "192.0.2.1");
        for _ in 0..1000 {
            assert!(!l.refused(&c, t0));
        }
        assert_eq!(l.retry_after(&c, t0), None);
    }
}
