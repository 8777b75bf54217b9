//! Self fencing (spec 14.1-3): the node's lease with the controller.
//!
//! Every report the controller accepts renews the lease, counted from when the report was
//! *sent* (the controller records its heartbeat no earlier). When the lease is older than the
//! document's `fence_after_s`, the agent SIGKILLs the QEMU of its protected (HA) VMs and boots
//! no VM until the controller answers again; the controller restarts those instances
//! elsewhere only `ha.fence_margin_s` later. A protected VM is also never booted from a
//! document the controller has not confirmed since the agent started or fenced (the ledger may
//! name an instance that now runs on another node).
//!
//! The lease survives agent restarts in `<data dir>/lease` (wall-clock milliseconds of the
//! last renewal): an agent restarted after a long outage fences at once. Hosts with a hardware
//! watchdog add the agent's liveness (`WatchdogSec` in its systemd unit, see
//! `docs/operations/ha.md`), so a hung agent gets the host reset rather than a VM kept alive.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rampart_api::agent::NodeConfig;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::compute::VmDriver;

/// How often the lease is checked against the clock.
const CHECK: Duration = Duration::from_millis(200);

/// Whether a lease renewed `age` ago has run out under `fence_after` (`None`: the node runs no
/// protected VM and never fences). An unknown age (never renewed) has run out.
pub fn expired(age: Option<Duration>, fence_after: Option<Duration>) -> bool {
    match (age, fence_after) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(age), Some(limit)) => age >= limit,
    }
}

/// Whether a VM may boot now: never while the lease has run out; a protected one only once the
/// controller has confirmed the document since the agent started or last fenced.
pub fn may_boot(ha: bool, expired: bool, confirmed: bool) -> bool {
    !expired && (!ha || confirmed)
}

#[derive(Debug, Default)]
struct State {
    renewed: Option<Instant>,
    confirmed: bool,
    fencing: bool,
    /// Protected VMs killed by the fence, not yet seen by the compute runtime.
    killed: BTreeSet<Uuid>,
}

/// The node's lease, shared by the status loop (renewals), the fence task and the compute
/// runtime (may it boot?).
#[derive(Debug)]
pub struct Lease {
    path: PathBuf,
    state: Mutex<State>,
    fence_after: Mutex<Option<Duration>>,
}

fn wall_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl Lease {
    /// The lease as the last run of the agent left it.
    pub fn load(data_dir: &Path) -> Lease {
        let path = data_dir.join("lease");
        let renewed = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .and_then(|ms| {
                // A renewal "in the future" (the clock went back) counts as never renewed.
                let age = wall_ms(SystemTime::now()).checked_sub(ms).filter(|a| *a >= 0)?;
                Instant::now().checked_sub(Duration::from_millis(age as u64))
            });
        Lease {
            path,
            state: Mutex::new(State {
                renewed,
                ..State::default()
            }),
            fence_after: Mutex::new(None),
        }
    }

    /// The controller accepted a report sent at `sent` (`sent_wall` on the wall clock) and
    /// answered with `generation`; `held` is the generation of the document the agent holds.
    pub fn renewed(&self, sent: Instant, sent_wall: SystemTime, generation: i64, held: i64) {
        let mut s = self.state.lock().expect("lease");
        if s.renewed.is_none_or(|r| r < sent) {
            s.renewed = Some(sent);
        }
        let was_fencing = std::mem::replace(&mut s.fencing, false);
        // The document held is the controller's current one: what it names may boot.
        s.confirmed = held >= generation;
        drop(s);
        if was_fencing {
            tracing::info!("the controller answers again: the lease is renewed");
        }
        let tmp = self.path.with_extension("tmp");
        let written =
            std::fs::write(&tmp, wall_ms(sent_wall).to_string()).and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(e) = written {
            tracing::warn!(error = %e, path = %self.path.display(), "cannot record the lease renewal");
        }
    }

    pub fn set_fence_after(&self, d: Option<Duration>) {
        *self.fence_after.lock().expect("lease") = d;
    }

    pub fn expired(&self) -> bool {
        let fence_after = *self.fence_after.lock().expect("lease");
        let age = self.state.lock().expect("lease").renewed.map(|r| r.elapsed());
        expired(age, fence_after)
    }

    pub fn may_boot(&self, ha: bool) -> bool {
        let expired = self.expired();
        may_boot(ha, expired, self.state.lock().expect("lease").confirmed)
    }

    /// The protected VMs the fence killed since the last call.
    pub fn take_killed(&self) -> BTreeSet<Uuid> {
        std::mem::take(&mut self.state.lock().expect("lease").killed)
    }
}

/// Watches the lease; when it runs out, kills every protected VM of the document at once.
pub async fn run(
    lease: std::sync::Arc<Lease>,
    driver: VmDriver,
    desired: watch::Receiver<Option<NodeConfig>>,
    shutdown: CancellationToken,
) {
    loop {
        let (fence_after, protected): (Option<Duration>, Vec<Uuid>) = match desired.borrow().as_ref() {
            Some(d) => (
                d.fence_after_s.map(Duration::from_secs),
                d.compute.instances.iter().filter(|i| i.ha).map(|i| i.id).collect(),
            ),
            None => (None, Vec::new()),
        };
        lease.set_fence_after(fence_after);
        if lease.expired() && !protected.is_empty() {
            let first = {
                let mut s = lease.state.lock().expect("lease");
                s.confirmed = false;
                !std::mem::replace(&mut s.fencing, true)
            };
            if first {
                tracing::error!(
                    fence_after_s = fence_after.map(|d| d.as_secs()),
                    "no answer from the controller within fence_after_s: fencing (killing the protected VMs, booting none)"
                );
            }
            for id in protected {
                if driver.kill_now(id).await {
                    tracing::error!(instance = %id, "fenced: protected VM killed");
                    lease.state.lock().expect("lease").killed.insert(id);
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(CHECK) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_14_1_3_the_lease_runs_out_after_fence_after() {
        let s = Duration::from_secs;
        assert!(!expired(Some(s(2)), Some(s(3))));
        assert!(expired(Some(s(3)), Some(s(3))));
        assert!(expired(None, Some(s(3))), "never renewed: run out");
        assert!(!expired(None, None), "no protected VM: no fencing");
    }

    #[test]
    fn spec_14_1_3_no_boot_while_fenced_and_no_protected_boot_before_confirmation() {
        assert!(may_boot(false, false, false));
        assert!(!may_boot(false, true, true), "fenced: no VM boots");
        assert!(!may_boot(true, false, false), "protected: waits for the controller");
        assert!(may_boot(true, false, true));
    }

    #[test]
    fn spec_14_1_3_the_lease_survives_a_restart_and_confirms_only_a_current_document() {
        let dir = tempfile::tempdir().unwrap();
        let lease = Lease::load(dir.path());
        lease.set_fence_after(Some(Duration::from_secs(3)));
        assert!(lease.expired(), "a new agent with protected VMs has no lease yet");
        lease.renewed(Instant::now(), SystemTime::now(), 7, 6);
        assert!(!lease.expired());
        assert!(
            !lease.may_boot(true),
            "the held document (6) is behind the controller's (7)"
        );
        lease.renewed(Instant::now(), SystemTime::now(), 7, 7);
        assert!(lease.may_boot(true));
        // The next run of the agent starts from the recorded renewal, unconfirmed.
        let again = Lease::load(dir.path());
        again.set_fence_after(Some(Duration::from_secs(3)));
        assert!(!again.expired());
        assert!(!again.may_boot(true));
        // A renewal recorded long ago has run out at once.
        std::fs::write(
            dir.path().join("lease"),
            (wall_ms(SystemTime::now()) - 10_000).to_string(),
        )
        .unwrap();
        let old = Lease::load(dir.path());
        old.set_fence_after(Some(Duration::from_secs(3)));
        assert!(old.expired());
    }
}
