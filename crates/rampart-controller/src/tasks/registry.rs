//! What each background task last did, for `GET /v1/health?verbose` (no dependency on the
//! application state: the state holds it).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use rampart_api::TaskHealth;
use time::OffsetDateTime;

#[derive(Debug, Clone)]
struct Entry {
    leader_only: bool,
    period_s: u64,
    last_success_at: Option<OffsetDateTime>,
    ran: bool,
    consecutive_failures: u64,
    restarts: u64,
}

/// The health of every task of this controller, and whether it holds the reconciler lease.
#[derive(Debug)]
pub struct Registry {
    entries: Mutex<BTreeMap<&'static str, Entry>>,
    leader: AtomicBool,
    leader_since: Mutex<Instant>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            entries: Mutex::new(BTreeMap::new()),
            leader: AtomicBool::new(false),
            leader_since: Mutex::new(Instant::now()),
        }
    }
}

impl Registry {
    pub fn register(&self, name: &'static str, leader_only: bool, period_s: u64) {
        self.entries.lock().expect("task registry").insert(
            name,
            Entry {
                leader_only,
                period_s,
                last_success_at: None,
                ran: false,
                consecutive_failures: 0,
                restarts: 0,
            },
        );
    }

    pub fn succeeded(&self, name: &str, at: OffsetDateTime) {
        if let Some(e) = self.entries.lock().expect("task registry").get_mut(name) {
            e.ran = true;
            e.last_success_at = Some(at);
            e.consecutive_failures = 0;
        }
    }

    /// Records a failed pass; returns how many in a row.
    pub fn failed(&self, name: &str) -> u64 {
        let mut entries = self.entries.lock().expect("task registry");
        match entries.get_mut(name) {
            Some(e) => {
                e.ran = true;
                e.consecutive_failures += 1;
                e.consecutive_failures
            }
            None => 0,
        }
    }

    pub fn restarted(&self, name: &str) {
        if let Some(e) = self.entries.lock().expect("task registry").get_mut(name) {
            e.restarts += 1;
        }
    }

    /// Records whether this controller holds the lease; true when that changed.
    pub fn set_leader(&self, leader: bool) -> bool {
        let changed = self.leader.swap(leader, Ordering::SeqCst) != leader;
        if changed {
            *self.leader_since.lock().expect("task registry") = Instant::now();
        }
        changed
    }

    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::SeqCst)
    }

    /// How long this controller has held (or not held) the lease.
    pub fn leader_for(&self) -> std::time::Duration {
        self.leader_since.lock().expect("task registry").elapsed()
    }

    pub fn snapshot(&self) -> Vec<TaskHealth> {
        let leader = self.is_leader();
        self.entries
            .lock()
            .expect("task registry")
            .iter()
            .map(|(name, e)| TaskHealth {
                name: (*name).to_string(),
                leader_only: e.leader_only,
                period_s: e.period_s,
                state: if e.leader_only && !leader {
                    "standby"
                } else if !e.ran {
                    "starting"
                } else if e.consecutive_failures > 0 {
                    "failing"
                } else {
                    "ok"
                }
                .to_string(),
                last_success_at: e.last_success_at,
                consecutive_failures: e.consecutive_failures,
                restarts: e.restarts,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_reports_its_state() {
        let r = Registry::default();
        r.register("alarms", true, 1);
        r.register("server_certificate", false, 5);
        let state = |r: &Registry, n: &str| r.snapshot().into_iter().find(|t| t.name == n).unwrap().state;
        assert_eq!(state(&r, "alarms"), "standby");
        assert_eq!(state(&r, "server_certificate"), "starting");
        assert!(r.set_leader(true));
        assert!(!r.set_leader(true));
        assert_eq!(state(&r, "alarms"), "starting");
        assert_eq!(r.failed("alarms"), 1);
        assert_eq!(r.failed("alarms"), 2);
        assert_eq!(state(&r, "alarms"), "failing");
        r.succeeded("alarms", OffsetDateTime::UNIX_EPOCH);
        assert_eq!(state(&r, "alarms"), "ok");
        r.restarted("alarms");
        assert_eq!(r.snapshot()[0].restarts, 1);
    }
}
