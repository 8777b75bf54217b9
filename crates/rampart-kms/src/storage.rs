//! The storage boundary of customer keys: what the controller needs to load and store a
//! [`Key`] with its versions. This crate holds no SQL: `rampart-db` implements [`KeyStore`]
//! over its tables (`rampart_db::kms`, one row type per table, matching the migrations), and
//! [`MemoryKeyStore`] stands in for it in tests.
//!
//! Every stored key carries a revision that [`KeyStore::save`] checks and bumps: two writers
//! (two controllers, two requests) changing the same key cannot overwrite each other; the
//! loser gets `false`, reloads and tries again. No implementation may ever store plaintext
//! key material (13.3-5): a [`Key`] holds its versions only wrapped.

use std::future::Future;

use time::OffsetDateTime;
use uuid::Uuid;

use crate::lifecycle::Key;

/// A key as loaded, with the revision to hand back to [`KeyStore::save`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub key: Key,
    pub revision: i64,
}

/// Where customer keys live. Implementations work inside whatever unit of work they were
/// made from (a connection, a transaction), so key changes commit with the rest of a request.
pub trait KeyStore: Send {
    type Error: std::error::Error + Send + Sync + 'static;

    /// The key `id` of `project`, if it exists there.
    fn get(&mut self, project: Uuid, id: Uuid) -> impl Future<Output = Result<Option<StoredKey>, Self::Error>> + Send;

    /// Keys of `project` ordered by name, after the name `after`, at most `limit`.
    fn list(
        &mut self,
        project: Uuid,
        after: Option<&str>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<StoredKey>, Self::Error>> + Send;

    /// Stores a new key and its versions; a second key of the same name in the project is a
    /// conflict.
    fn insert(&mut self, key: &Key) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Stores a changed key if nobody changed it since `revision` was read; `false`
    /// otherwise. Versions are added, and their material dropped once destroyed.
    fn save(&mut self, key: &Key, revision: i64) -> impl Future<Output = Result<bool, Self::Error>> + Send;

    /// Keys whose next action (rotation, destruction) is due at `now`, soonest first:
    /// `(project, key)`.
    fn due(
        &mut self,
        now: OffsetDateTime,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<(Uuid, Uuid)>, Self::Error>> + Send;
}

/// Failures of [`MemoryKeyStore`].
#[derive(Debug, thiserror::Error)]
pub enum MemoryStoreError {
    #[error("a key named {0:?} already exists in this project")]
    Conflict(String),
}

/// [`KeyStore`] in memory, for tests of the layers above storage.
#[derive(Debug, Default, Clone)]
pub struct MemoryKeyStore {
    keys: Vec<StoredKey>,
}

impl MemoryKeyStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything stored, as a database dump would hold it.
    pub fn contents(&self) -> &[StoredKey] {
        &self.keys
    }
}

impl KeyStore for MemoryKeyStore {
    type Error = MemoryStoreError;

    async fn get(&mut self, project: Uuid, id: Uuid) -> Result<Option<StoredKey>, MemoryStoreError> {
        Ok(self
            .keys
            .iter()
            .find(|s| s.key.id == id && s.key.project == project)
            .cloned())
    }

    async fn list(
        &mut self,
        project: Uuid,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<StoredKey>, MemoryStoreError> {
        let mut out: Vec<StoredKey> = self
            .keys
            .iter()
            .filter(|s| s.key.project == project && s.key.name.as_str() > after.unwrap_or(""))
            .cloned()
            .collect();
        out.sort_by(|a, b| a.key.name.cmp(&b.key.name));
        out.truncate(limit as usize);
        Ok(out)
    }

    async fn insert(&mut self, key: &Key) -> Result<(), MemoryStoreError> {
        if self
            .keys
            .iter()
            .any(|s| s.key.project == key.project && s.key.name == key.name)
        {
            return Err(MemoryStoreError::Conflict(key.name.clone()));
        }
        self.keys.push(StoredKey {
            key: key.clone(),
            revision: 0,
        });
        Ok(())
    }

    async fn save(&mut self, key: &Key, revision: i64) -> Result<bool, MemoryStoreError> {
        match self.keys.iter_mut().find(|s| s.key.id == key.id) {
            Some(s) if s.revision == revision => {
                s.key = key.clone();
                s.revision += 1;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn due(&mut self, now: OffsetDateTime, limit: u32) -> Result<Vec<(Uuid, Uuid)>, MemoryStoreError> {
        let mut due: Vec<(OffsetDateTime, Uuid, Uuid)> = self
            .keys
            .iter()
            .filter_map(|s| {
                let at = s.key.next_action_at()?;
                (at <= now).then_some((at, s.key.project, s.key.id))
            })
            .collect();
        due.sort();
        due.truncate(limit as usize);
        Ok(due.into_iter().map(|(_, p, k)| (p, k)).collect())
    }
}

/// Drives a future of a [`MemoryKeyStore`] to completion (it never waits on anything).
#[cfg(test)]
pub(crate) fn ready<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => unreachable!("the memory store never waits"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::WrappedKey;
    use time::macros::datetime;

    fn key(name: &str, t: OffsetDateTime) -> Key {
        Key::new(
            Uuid::new_v4(),
            Uuid::from_u128(8),
            name.into(),
            Some(30),
            WrappedKey::new(1, &[1; 12], &[2; 56]),
            t,
        )
        .unwrap()
    }

    #[test]
    fn a_stale_revision_is_refused_and_a_fresh_one_bumped() {
        let t = datetime!(2026-03-01 12:00 UTC);
        let mut store = MemoryKeyStore::new();
        let k = key("k", t);
        ready(store.insert(&k)).unwrap();
        assert!(ready(store.insert(&key("k", t))).is_err(), "same name twice");
        let loaded = ready(store.get(k.project, k.id)).unwrap().unwrap();
        assert_eq!((&loaded.key, loaded.revision), (&k, 0));
        let mut changed = loaded.key.clone();
        changed.disable(t).unwrap();
        assert!(ready(store.save(&changed, 0)).unwrap());
        assert!(
            !ready(store.save(&changed, 0)).unwrap(),
            "the second writer with revision 0 loses"
        );
        assert_eq!(ready(store.get(k.project, k.id)).unwrap().unwrap().revision, 1);
        assert!(
            ready(store.get(Uuid::nil(), k.id)).unwrap().is_none(),
            "another project's key"
        );
    }

    #[test]
    fn due_keys_come_soonest_first_and_lists_by_name() {
        let t = datetime!(2026-03-01 12:00 UTC);
        let mut store = MemoryKeyStore::new();
        let (b, a) = (key("b", t), key("a", t + time::Duration::days(1)));
        ready(store.insert(&b)).unwrap();
        ready(store.insert(&a)).unwrap();
        assert!(ready(store.due(t, 10)).unwrap().is_empty());
        let due = ready(store.due(t + time::Duration::days(40), 10)).unwrap();
        assert_eq!(due, vec![(b.project, b.id), (a.project, a.id)]);
        let names: Vec<String> = ready(store.list(b.project, None, 10))
            .unwrap()
            .into_iter()
            .map(|s| s.key.name)
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(ready(store.list(b.project, Some("a"), 10)).unwrap().len(), 1);
    }
}
