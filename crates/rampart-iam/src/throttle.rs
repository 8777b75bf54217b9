//! Per-source throttling of failed authentications (spec 13.2-6, beside per-account lockout):
//! a client that keeps failing is refused before any secret is checked, so one address cannot
//! lock every account or spend the controller's hashing time. A sliding window of failure
//! times per address, bounded in memory.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Addresses tracked at most; beyond it the one idle longest is forgotten first.
const MAX_SOURCES: usize = 100_000;

#[derive(Debug, Default)]
pub struct SourceThrottle {
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl SourceThrottle {
    pub fn new() -> SourceThrottle {
        SourceThrottle::default()
    }

    /// `None` when `ip` may try; otherwise how long until its oldest counted failure leaves the
    /// window. `limit` 0 turns the throttle off.
    pub fn check(&self, ip: IpAddr, limit: u32, window: Duration, now: Instant) -> Option<Duration> {
        if limit == 0 {
            return None;
        }
        let ip = crate::net::canonical(ip);
        let mut map = self.failures.lock().expect("throttle lock");
        let times = map.get_mut(&ip)?;
        while times.front().is_some_and(|t| now.duration_since(*t) >= window) {
            times.pop_front();
        }
        if times.is_empty() {
            map.remove(&ip);
            return None;
        }
        (times.len() >= limit as usize).then(|| window.saturating_sub(now.duration_since(times[0])))
    }

    /// Counts a failed authentication from `ip`.
    pub fn record_failure(&self, ip: IpAddr, limit: u32, window: Duration, now: Instant) {
        if limit == 0 {
            return;
        }
        let ip = crate::net::canonical(ip);
        let mut map = self.failures.lock().expect("throttle lock");
        if map.len() >= MAX_SOURCES && !map.contains_key(&ip) {
            let stalest = map.iter().min_by_key(|(_, t)| t.back().copied()).map(|(ip, _)| *ip);
            if let Some(s) = stalest {
                map.remove(&s);
            }
        }
        let times = map.entry(ip).or_default();
        while times.front().is_some_and(|t| now.duration_since(*t) >= window) {
            times.pop_front();
        }
        times.push_back(now);
        // Only the newest `limit` matter for the decision.
        while times.len() > limit as usize {
            times.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_13_2_6_a_source_is_refused_after_its_limit_until_the_window_moves_on() {
        let t = SourceThrottle::new();
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let w = Duration::from_secs(60);
        let t0 = Instant::now();
        for i in 0..3 {
            assert_eq!(t.check(a, 3, w, t0), None, "attempt {i}");
            t.record_failure(a, 3, w, t0 + Duration::from_secs(i));
        }
        let wait = t.check(a, 3, w, t0 + Duration::from_secs(10)).expect("throttled");
        assert_eq!(wait, Duration::from_secs(50));
        assert_eq!(
            t.check(b, 3, w, t0 + Duration::from_secs(10)),
            None,
            "other sources are not"
        );
        // IPv4-mapped IPv6 is the same source.
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert!(t.check(mapped, 3, w, t0 + Duration::from_secs(10)).is_some());
        assert_eq!(t.check(a, 0, w, t0), None, "0 turns it off");
        assert_eq!(
            t.check(a, 3, w, t0 + Duration::from_secs(61)),
            None,
            "the oldest left the window"
        );
    }
}
