//! Watches every call into the key backend so that a failing HSM is visible (issue 13, defect 5):
//! the `rampart_hsm_errors` gauge counts device faults, and while the last call failed with one
//! `/v1/health` answers `degraded` with the reason. Data errors (a tampered ciphertext, a
//! missing root key) say nothing about the HSM and are not counted.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use time::OffsetDateTime;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::backend::{BackendKind, KeyBackend};
use crate::envelope::{MaterialId, NONCE_LEN, WrappedKey};
use crate::error::HsmError;

/// The HSM's condition as the calls through it saw it.
#[derive(Debug, Default)]
pub struct HsmHealth {
    errors: AtomicU64,
    /// The last call's fault, cleared by the next call that succeeds.
    fault: Mutex<Option<Fault>>,
    /// When [`HsmHealth::probe_due`] last said yes.
    last_probe: Mutex<Option<std::time::Instant>>,
}

/// A device fault that no later call has cleared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub since: OffsetDateTime,
    /// The error's message: it names the operation and the PKCS#11 return value, never data.
    pub reason: String,
}

impl HsmHealth {
    /// Device faults seen since start, retried ones included.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// `Some` while the most recent call failed with a device fault.
    pub fn fault(&self) -> Option<Fault> {
        self.fault.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// True at most once per `min_interval`: health probes are unauthenticated, so they must
    /// not turn into a stream of HSM calls.
    pub(crate) fn probe_due(&self, min_interval: std::time::Duration) -> bool {
        let mut last = self.last_probe.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < min_interval) {
            return false;
        }
        *last = Some(now);
        true
    }

    pub(crate) fn record<T>(&self, r: &Result<T, HsmError>) {
        let mut fault = self.fault.lock().unwrap_or_else(|p| p.into_inner());
        match r {
            Err(e) if is_device_fault(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                // The first failure of a run dates the fault; later ones keep that date.
                if fault.is_none() {
                    *fault = Some(Fault {
                        since: OffsetDateTime::now_utc(),
                        reason: rampart_common::error::ErrorChain(e).to_string(),
                    });
                }
            }
            // A data error is an answer: the HSM worked.
            _ => *fault = None,
        }
    }
}

/// Faults of the HSM itself, as opposed to answers about the data.
fn is_device_fault(e: &HsmError) -> bool {
    matches!(
        e,
        HsmError::Unavailable { .. } | HsmError::Device { .. } | HsmError::Io { .. }
    )
}

/// A [`KeyBackend`] that forwards to another and records each outcome in [`HsmHealth`].
pub struct Monitored {
    inner: Arc<dyn KeyBackend>,
    health: Arc<HsmHealth>,
}

impl Monitored {
    pub fn new(inner: Arc<dyn KeyBackend>) -> (Self, Arc<HsmHealth>) {
        let health = Arc::new(HsmHealth::default());
        (
            Monitored {
                inner,
                health: health.clone(),
            },
            health,
        )
    }

    fn seen<T>(&self, r: Result<T, HsmError>) -> Result<T, HsmError> {
        self.health.record(&r);
        r
    }
}

impl KeyBackend for Monitored {
    fn kind(&self) -> BackendKind {
        self.inner.kind()
    }

    fn ensure_project_root(&self, project: Uuid) -> Result<(), HsmError> {
        self.seen(self.inner.ensure_project_root(project))
    }

    fn create_new_project_root(&self, project: Uuid) -> Result<(), HsmError> {
        self.seen(self.inner.create_new_project_root(project))
    }

    fn preload_project_roots(&self) -> Result<usize, HsmError> {
        self.seen(self.inner.preload_project_roots())
    }

    fn destroy_project_root(&self, project: Uuid) -> Result<(), HsmError> {
        self.seen(self.inner.destroy_project_root(project))
    }

    fn generate_key_material(&self, id: &MaterialId) -> Result<WrappedKey, HsmError> {
        self.seen(self.inner.generate_key_material(id))
    }

    fn encrypt(
        &self,
        id: &MaterialId,
        wrapped: &WrappedKey,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, HsmError> {
        self.seen(self.inner.encrypt(id, wrapped, nonce, aad, plaintext))
    }

    fn decrypt(
        &self,
        id: &MaterialId,
        wrapped: &WrappedKey,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        self.seen(self.inner.decrypt(id, wrapped, nonce, aad, sealed))
    }

    fn random(&self, out: &mut [u8]) -> Result<(), HsmError> {
        self.seen(self.inner.random(out))
    }

    fn forget(&self, ids: &[MaterialId]) {
        self.inner.forget(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::UnavailableBackend;

    #[test]
    fn spec_14_2_3_device_faults_are_counted_and_cleared_by_the_next_success() {
        let h = HsmHealth::default();
        let device = || -> Result<(), HsmError> {
            Err(HsmError::Device {
                operation: "C_Encrypt",
                source: cryptoki::error::Error::Pkcs11(
                    cryptoki::error::RvError::DeviceError,
                    cryptoki::context::Function::Encrypt,
                ),
            })
        };
        h.record(&device());
        let first = h.fault().expect("a device fault is held");
        assert!(first.reason.contains("C_Encrypt"), "{}", first.reason);
        h.record(&device());
        assert_eq!(h.fault().unwrap().since, first.since, "a run of faults keeps its start");
        assert_eq!(h.errors(), 2);

        // Tampered data is the HSM answering: it clears the fault and is not counted.
        h.record::<()>(&Err(HsmError::AuthenticationFailed));
        assert_eq!(h.fault(), None);
        assert_eq!(h.errors(), 2);

        h.record(&device());
        h.record(&Ok(()));
        assert_eq!(h.fault(), None);
    }

    #[test]
    fn spec_14_2_3_an_unavailable_hsm_is_a_fault_seen_through_the_backend() {
        let (m, health) = Monitored::new(Arc::new(UnavailableBackend::new("no token")));
        assert!(m.random(&mut [0u8; 4]).is_err());
        let fault = health.fault().expect("held");
        assert!(fault.reason.contains("no token"), "{}", fault.reason);
        assert_eq!(health.errors(), 1);
        assert!(health.probe_due(std::time::Duration::from_secs(60)));
        assert!(!health.probe_due(std::time::Duration::from_secs(60)), "rate-limited");
    }
}
