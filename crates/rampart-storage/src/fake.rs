//! An in-memory backend for fast tests of callers (controller, agent). It keeps the rules of the
//! real ones: a fixed capacity (507 when full, nothing left behind), the passphrase required
//! exactly for encrypted volumes and checked on every use, no release without a verified wipe,
//! and injectable failures (the next operation fails; a wipe that does not verify).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use rampart_common::Sensitive;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::backend::{
    ImageFormat, PoolHealth, PoolStatus, Recovery, Redundancy, StorageBackend, StorageError, VolumeInfo, VolumeSpec,
};
use crate::render::OpenSpec;
use crate::wipe::WipeReport;

#[derive(Debug, Clone)]
struct Vol {
    size: u64,
    encrypted: bool,
    /// SHA-free stand-in for "the right key": the passphrase itself, kept only in this test
    /// double's memory.
    passphrase: Option<String>,
    wiping: bool,
    owner: Option<(u32, u32)>,
}

#[derive(Debug, Default)]
struct State {
    vols: BTreeMap<Uuid, Vol>,
    reports: BTreeMap<Uuid, WipeReport>,
    creating: Vec<Uuid>,
    fail_next: Option<String>,
    unverifiable_wipes: bool,
}

pub struct FakeBackend {
    capacity: u64,
    state: Mutex<State>,
}

impl FakeBackend {
    pub fn new(capacity_bytes: u64) -> FakeBackend {
        FakeBackend {
            capacity: capacity_bytes,
            state: Mutex::new(State::default()),
        }
    }

    /// The next operation fails with an I/O error (a crashed tool, a lost disk).
    pub fn fail_next(&self, why: &str) {
        self.state.lock().expect("fake lock").fail_next = Some(why.to_string());
    }

    /// Wipes from now on do not verify (a disk that ignores writes).
    pub fn make_wipes_unverifiable(&self, on: bool) {
        self.state.lock().expect("fake lock").unverifiable_wipes = on;
    }

    /// Simulates a crash in the middle of a create: the id is left as a leftover.
    pub fn crash_during_create(&self, id: Uuid) {
        self.state.lock().expect("fake lock").creating.push(id);
    }

    pub fn owner(&self, id: Uuid) -> Option<(u32, u32)> {
        self.state
            .lock()
            .expect("fake lock")
            .vols
            .get(&id)
            .and_then(|v| v.owner)
    }

    fn used(s: &State) -> u64 {
        s.vols.values().map(|v| v.size).sum()
    }

    fn take_failure(s: &mut State) -> Result<(), StorageError> {
        match s.fail_next.take() {
            Some(why) => Err(StorageError::Io {
                context: "fake backend".into(),
                source: std::io::Error::other(why),
            }),
            None => Ok(()),
        }
    }

    fn check_key(v: &Vol, id: Uuid, passphrase: Option<&Sensitive>) -> Result<(), StorageError> {
        match (&v.passphrase, passphrase) {
            (None, None) => Ok(()),
            (Some(k), Some(p)) if k == p.expose() => Ok(()),
            (Some(_), Some(_)) => Err(StorageError::Invalid(format!("wrong passphrase for {id}"))),
            _ => Err(StorageError::Invalid(
                "passphrase given for the wrong kind of volume".into(),
            )),
        }
    }

    fn add(&self, spec: &VolumeSpec, passphrase: Option<&Sensitive>) -> Result<VolumeInfo, StorageError> {
        let mut s = self.state.lock().expect("fake lock");
        Self::take_failure(&mut s)?;
        if spec.encrypted != passphrase.is_some() {
            return Err(StorageError::Invalid("the passphrase goes with encryption".into()));
        }
        if s.vols.contains_key(&spec.id) {
            return Err(StorageError::Exists(spec.id));
        }
        let free = self.capacity.saturating_sub(Self::used(&s));
        if spec.size_bytes > free {
            return Err(StorageError::InsufficientStorage {
                needed: spec.size_bytes,
                free,
            });
        }
        s.vols.insert(
            spec.id,
            Vol {
                size: spec.size_bytes,
                encrypted: spec.encrypted,
                passphrase: passphrase.map(|p| p.expose().to_string()),
                wiping: false,
                owner: spec.owner,
            },
        );
        Ok(Self::info_of(spec.id, &s.vols[&spec.id]))
    }

    fn info_of(id: Uuid, v: &Vol) -> VolumeInfo {
        VolumeInfo {
            id,
            size_bytes: v.size,
            allocated_bytes: v.size,
            encrypted: v.encrypted,
            path: format!("/fake/{id}").into(),
        }
    }

    fn live(s: &State, id: Uuid) -> Result<&Vol, StorageError> {
        s.vols.get(&id).filter(|v| !v.wiping).ok_or(StorageError::NotFound(id))
    }
}

impl StorageBackend for FakeBackend {
    fn kind(&self) -> &'static str {
        "fake"
    }

    fn create(&self, spec: &VolumeSpec, passphrase: Option<&Sensitive>) -> Result<VolumeInfo, StorageError> {
        self.add(spec, passphrase)
    }

    fn create_from_image(
        &self,
        spec: &VolumeSpec,
        _image: &Path,
        _format: ImageFormat,
        passphrase: Option<&Sensitive>,
    ) -> Result<VolumeInfo, StorageError> {
        self.add(spec, passphrase)
    }

    fn snapshot(
        &self,
        volume: Uuid,
        snapshot: Uuid,
        passphrase: Option<&Sensitive>,
    ) -> Result<VolumeInfo, StorageError> {
        let spec = {
            let s = self.state.lock().expect("fake lock");
            let v = Self::live(&s, volume)?;
            Self::check_key(v, volume, passphrase)?;
            VolumeSpec {
                id: snapshot,
                size_bytes: v.size,
                encrypted: v.encrypted,
                owner: None,
            }
        };
        self.add(&spec, passphrase)
    }

    fn create_from_snapshot(
        &self,
        spec: &VolumeSpec,
        snapshot: Uuid,
        passphrase: Option<&Sensitive>,
    ) -> Result<VolumeInfo, StorageError> {
        {
            let s = self.state.lock().expect("fake lock");
            let v = Self::live(&s, snapshot)?;
            Self::check_key(v, snapshot, passphrase)?;
            if v.size > spec.size_bytes {
                return Err(StorageError::Invalid("the snapshot is larger than the volume".into()));
            }
        }
        self.add(spec, passphrase)
    }

    fn extend(
        &self,
        volume: Uuid,
        new_size_bytes: u64,
        passphrase: Option<&Sensitive>,
    ) -> Result<VolumeInfo, StorageError> {
        let mut s = self.state.lock().expect("fake lock");
        Self::take_failure(&mut s)?;
        let used = Self::used(&s);
        let v = Self::live(&s, volume)?;
        Self::check_key(v, volume, passphrase)?;
        if new_size_bytes <= v.size {
            return Err(StorageError::Invalid("a volume only grows".into()));
        }
        let more = new_size_bytes - v.size;
        let free = self.capacity.saturating_sub(used);
        if more > free {
            return Err(StorageError::InsufficientStorage { needed: more, free });
        }
        let v = s.vols.get_mut(&volume).expect("checked");
        v.size = new_size_bytes;
        Ok(Self::info_of(volume, v))
    }

    fn set_owner(&self, volume: Uuid, uid: u32, gid: u32) -> Result<(), StorageError> {
        let mut s = self.state.lock().expect("fake lock");
        Self::live(&s, volume)?;
        s.vols.get_mut(&volume).expect("checked").owner = Some((uid, gid));
        Ok(())
    }

    fn open(&self, volume: Uuid, read_only: bool) -> Result<OpenSpec, StorageError> {
        let s = self.state.lock().expect("fake lock");
        let v = Self::live(&s, volume)?;
        Ok(OpenSpec {
            volume,
            path: format!("/fake/{volume}"),
            encrypted: v.encrypted,
            read_only,
        })
    }

    fn info(&self, volume: Uuid) -> Result<VolumeInfo, StorageError> {
        let s = self.state.lock().expect("fake lock");
        Ok(Self::info_of(volume, Self::live(&s, volume)?))
    }

    fn wipe(&self, volume: Uuid, requested_by: &str) -> Result<WipeReport, StorageError> {
        let mut s = self.state.lock().expect("fake lock");
        if let Some(r) = s.reports.get(&volume) {
            return Ok(r.clone());
        }
        Self::take_failure(&mut s)?;
        let unverifiable = s.unverifiable_wipes;
        let v = s.vols.get_mut(&volume).ok_or(StorageError::NotFound(volume))?;
        v.wiping = true;
        if unverifiable {
            return Err(StorageError::WipeUnverified {
                volume,
                reason: "fake: the read-back found data".into(),
            });
        }
        let now = OffsetDateTime::now_utc();
        let report = WipeReport {
            volume,
            method: crate::local::method_for(v.encrypted),
            verified: true,
            bytes: v.size,
            started_at: now,
            finished_at: now,
            requested_by: requested_by.to_string(),
        };
        v.passphrase = None;
        s.reports.insert(volume, report.clone());
        Ok(report)
    }

    fn release(&self, volume: Uuid) -> Result<(), StorageError> {
        let mut s = self.state.lock().expect("fake lock");
        match s.reports.get(&volume) {
            Some(r) if r.verified => {
                s.vols.remove(&volume);
                s.reports.remove(&volume);
                Ok(())
            }
            _ if !s.vols.contains_key(&volume) => Ok(()),
            _ => Err(StorageError::Invalid(
                "the volume has no verified wipe report: its space is not released".into(),
            )),
        }
    }

    fn roll_back(&self, id: Uuid) -> Result<(), StorageError> {
        self.state.lock().expect("fake lock").creating.retain(|c| *c != id);
        Ok(())
    }

    fn pool_status(&self) -> Result<PoolStatus, StorageError> {
        let s = self.state.lock().expect("fake lock");
        Ok(PoolStatus {
            backend: "fake".into(),
            total_bytes: self.capacity,
            free_bytes: self.capacity.saturating_sub(Self::used(&s)),
            volumes: s.vols.len() as u64,
            redundancy: Redundancy::None,
            health: PoolHealth::Ok,
            problems: Vec::new(),
        })
    }

    fn recover(&self) -> Result<Vec<Recovery>, StorageError> {
        let s = self.state.lock().expect("fake lock");
        let mut out: Vec<Recovery> = s
            .creating
            .iter()
            .map(|id| Recovery::RollBackCreate { id: *id })
            .collect();
        for (id, v) in &s.vols {
            if v.wiping {
                match s.reports.get(id) {
                    Some(r) => out.push(Recovery::ReleasePending { report: r.clone() }),
                    None => out.push(Recovery::ResumeWipe { id: *id }),
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(size: u64, encrypted: bool) -> VolumeSpec {
        VolumeSpec {
            id: Uuid::new_v4(),
            size_bytes: size,
            encrypted,
            owner: None,
        }
    }

    #[test]
    fn the_fake_keeps_the_backend_rules() {
        let b = FakeBackend::new(10);
        let pw = Sensitive::new("pw");
        let a = spec(6, true);
        b.create(&a, Some(&pw)).unwrap();
        let e = b.create(&spec(5, true), Some(&pw)).unwrap_err();
        assert_eq!(e.to_api().code(), "insufficient_storage");
        assert_eq!(b.pool_status().unwrap().volumes, 1, "nothing left behind");
        assert!(b.create(&spec(1, true), None).is_err(), "encrypted needs a passphrase");
        assert!(b.extend(a.id, 7, Some(&Sensitive::new("wrong"))).is_err());
        b.extend(a.id, 7, Some(&pw)).unwrap();
        assert!(b.release(a.id).is_err(), "no release before a verified wipe");
        b.make_wipes_unverifiable(true);
        assert!(matches!(
            b.wipe(a.id, "alice"),
            Err(StorageError::WipeUnverified { .. })
        ));
        assert!(b.open(a.id, false).is_err(), "a volume being wiped is out of service");
        assert_eq!(b.recover().unwrap(), vec![Recovery::ResumeWipe { id: a.id }]);
        assert!(b.release(a.id).is_err());
        b.make_wipes_unverifiable(false);
        let r = b.wipe(a.id, "alice").unwrap();
        assert!(r.verified);
        assert_eq!(r.bytes, 7);
        b.release(a.id).unwrap();
        b.release(a.id).unwrap();
        assert_eq!(b.pool_status().unwrap().free_bytes, 10);
        b.fail_next("disk gone");
        assert!(b.create(&spec(1, false), None).is_err());
        b.create(&spec(1, false), None).unwrap();
    }
}
