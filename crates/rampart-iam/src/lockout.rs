//! The per-account lockout rule (spec 13.2-6): after `threshold` consecutive failed
//! authentications the account is locked for `duration`. The counting and the locking are one
//! atomic database update each (`rampart_db::identity::reserve_attempt` and `fail_attempt`:
//! parallel guesses must not race past the threshold); this is the policy half they are given:
//! how many failures lock, until when, and whether a stored lock is still in force.

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
    fn spec_13_2_6_the_policy_gives_the_threshold_and_the_lock_duration() {
        let policy = SecurityCompliance {
            lockout_failure_attempts: 3,
            lockout_duration_s: 900,
            ..Default::default()
        };
        let l = Lockout::from_policy(&policy);
        assert_eq!(l.threshold, 3);
        assert_eq!(l.until(NOW), NOW + Duration::minutes(15));
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
