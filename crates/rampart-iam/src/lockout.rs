//! The per-account lockout rule (spec 13.2-6): after `threshold` consecutive failed
//! authentications the account is locked for `duration`. The counting itself is one atomic
//! database update (parallel guesses must not race past the threshold); this is the policy
//! half: how many failures lock, until when, and whether a lock is still in force.

use rampart_api::SecurityCompliance;
use time::{Duration, OffsetDateTime};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lockout {
    /// Consecutive failures that lock the account; 0 turns lockout off.
    pub threshold: u32,
    pub duration: Duration,
}

impl Lockout {
    pub fn from_policy(policy: &SecurityCompliance) -> Lockout {
        Lockout {
            threshold: policy.lockout_failure_attempts,
            duration: Duration::seconds(policy.lockout_duration_s.min(i64::MAX as u64) as i64),
        }
    }

    /// When a lock reached at `now` ends.
    pub fn until(&self, now: OffsetDateTime) -> OffsetDateTime {
        now + self.duration
    }

    /// Whether the `failures`-th consecutive failure locks the account.
    pub fn locks_at(&self, failures: u32) -> bool {
        self.threshold > 0 && failures >= self.threshold
    }

    /// The end of a lock still in force at `now` (an expired one is no lock).
    pub fn current(locked_until: Option<OffsetDateTime>, now: OffsetDateTime) -> Option<OffsetDateTime> {
        locked_until.filter(|t| *t > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-06-01 12:00 UTC);

    #[test]
    fn spec_13_2_6_lock_after_threshold_failures_for_the_duration() {
        let policy = SecurityCompliance {
            lockout_failure_attempts: 3,
            lockout_duration_s: 900,
            ..Default::default()
        };
        let l = Lockout::from_policy(&policy);
        assert!(!l.locks_at(2));
        assert!(l.locks_at(3));
        assert!(l.locks_at(4));
        assert_eq!(l.until(NOW), NOW + Duration::minutes(15));
    }

    #[test]
    fn spec_13_2_6_threshold_zero_never_locks() {
        let policy = SecurityCompliance {
            lockout_failure_attempts: 0,
            ..Default::default()
        };
        assert!(!Lockout::from_policy(&policy).locks_at(1_000_000));
    }

    #[test]
    fn an_expired_lock_is_no_lock() {
        assert_eq!(Lockout::current(None, NOW), None);
        assert_eq!(Lockout::current(Some(NOW), NOW), None);
        assert_eq!(Lockout::current(Some(NOW - Duration::seconds(1)), NOW), None);
        let later = NOW + Duration::seconds(1);
        assert_eq!(Lockout::current(Some(later), NOW), Some(later));
    }
}
