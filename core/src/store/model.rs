//! The store model: the [`Store`](super::Store) contract as a pure, synchronous state
//! machine driven by an explicit `now`.
//!
//! It is the one definition of what a store does: `weft-stores`' memory backend is the
//! async wrapper around it, the simulator and the core's own tests drive nodes through it,
//! and the differential test compares every real backend's answers and watch events with
//! its own. Entries that expire together are deleted in (expiry time, key) order, each
//! deletion with its own revision, so the same calls give the same history every time.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Bound;
use std::time::Duration;

use super::validate::{check_key, check_ttl};
use super::{Entry, Listing, Revision, StoreCalls, StoreError, StoreOutput, WatchEvent};
use crate::time::Timestamp;

/// How many past changes the model keeps for watches unless told otherwise.
pub const DEFAULT_HISTORY_LIMIT: usize = 10_000;

/// See the module docs.
#[derive(Debug, Clone)]
pub struct StoreModel {
    /// The latest time seen; never goes backwards.
    now: Timestamp,
    revision: Revision,
    entries: BTreeMap<String, Entry>,
    /// `(expires_at, key)` of every entry with a TTL: the next expiry is the first.
    expiries: BTreeSet<(Timestamp, String)>,
    /// One event per revision, oldest first, the revisions contiguous.
    history: VecDeque<WatchEvent>,
    history_limit: usize,
    /// History before this revision is gone.
    compact_revision: Revision,
}

impl StoreModel {
    /// An empty store whose time starts at `now`.
    pub fn new(now: Timestamp) -> Self {
        StoreModel {
            now,
            revision: 0,
            entries: BTreeMap::new(),
            expiries: BTreeSet::new(),
            history: VecDeque::new(),
            history_limit: DEFAULT_HISTORY_LIMIT,
            compact_revision: 0,
        }
    }

    /// The latest time the model was given.
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// Moves time forward to `now` (an earlier `now` is ignored) and expires every entry
    /// due by then, each expiry a [`WatchEvent::Delete`] with its own revision, in (expiry
    /// time, key) order. Returns whether anything expired.
    pub fn advance_to(&mut self, now: Timestamp) -> bool {
        self.now = self.now.max(now);
        let mut expired = false;
        // Called on every step of a driver's clock: look before copying the key, so that
        // a step with nothing due allocates nothing.
        while let Some((at, key)) = self.expiries.first() {
            if *at > self.now {
                break;
            }
            let key = key.clone();
            expired |= self.remove(&key);
        }
        expired
    }

    /// When the next entry expires, if any has a TTL.
    pub fn next_expiry(&self) -> Option<Timestamp> {
        self.expiries.first().map(|(t, _)| *t)
    }

    /// The current revision (0 before the first change).
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// The compaction point: watches from before it fail with [`StoreError::Compacted`].
    pub fn compact_revision(&self) -> Revision {
        self.compact_revision
    }

    /// How many live entries there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no live entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Keeps at most `limit` past changes for watches, dropping the oldest now and later.
    pub fn set_history_limit(&mut self, limit: usize) {
        self.history_limit = limit;
        self.trim_history();
    }

    /// Drops the history before `revision`, as etcd's compaction does. A revision past
    /// the next one is [`StoreError::Invalid`].
    pub fn compact(&mut self, revision: Revision) -> Result<(), StoreError> {
        if revision > self.revision + 1 {
            return Err(StoreError::Invalid(format!(
                "cannot compact at revision {revision}, the store is at {}",
                self.revision
            )));
        }
        if revision > self.compact_revision {
            self.compact_revision = revision;
            self.trim_history();
        }
        Ok(())
    }

    /// [`Store::get`](super::Store::get): an empty key is [`StoreError::Invalid`], as
    /// for every other call and on every backend.
    pub fn get(&self, key: &str) -> Result<Option<&Entry>, StoreError> {
        check_key(key)?;
        Ok(self.entries.get(key))
    }

    /// [`Store::list`](super::Store::list).
    pub fn list(&self, prefix: &str) -> Listing {
        let entries = self
            .entries
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, e)| e.clone())
            .collect();
        Listing {
            entries,
            revision: self.revision,
        }
    }

    /// [`Store::create`](super::Store::create).
    pub fn create(
        &mut self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<Entry, StoreError> {
        check_key(key)?;
        check_ttl(ttl)?;
        if self.entries.contains_key(key) {
            return Err(StoreError::AlreadyExists {
                key: key.to_string(),
            });
        }
        let revision = self.revision + 1;
        Ok(self.write(Entry {
            key: key.to_string(),
            value: value.to_vec(),
            create_revision: revision,
            mod_revision: revision,
            expires_at: ttl.map(|ttl| self.now + ttl),
        }))
    }

    /// [`Store::renew`](super::Store::renew).
    pub fn renew(
        &mut self,
        key: &str,
        create_revision: Revision,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<Entry, StoreError> {
        check_key(key)?;
        check_ttl(ttl)?;
        let found = match self.entries.get(key) {
            None => {
                return Err(StoreError::NotFound {
                    key: key.to_string(),
                })
            }
            Some(e) => e.create_revision,
        };
        if found != create_revision {
            return Err(StoreError::Conflict {
                key: key.to_string(),
                expected: create_revision,
                found,
            });
        }
        Ok(self.write(Entry {
            key: key.to_string(),
            value: value.to_vec(),
            create_revision,
            mod_revision: self.revision + 1,
            expires_at: ttl.map(|ttl| self.now + ttl),
        }))
    }

    /// [`Store::put`](super::Store::put).
    pub fn put(&mut self, key: &str, value: &[u8]) -> Result<Entry, StoreError> {
        check_key(key)?;
        let revision = self.revision + 1;
        let create_revision = self
            .entries
            .get(key)
            .map_or(revision, |e| e.create_revision);
        Ok(self.write(Entry {
            key: key.to_string(),
            value: value.to_vec(),
            create_revision,
            mod_revision: revision,
            expires_at: None,
        }))
    }

    /// [`Store::delete`](super::Store::delete).
    pub fn delete(&mut self, key: &str) -> Result<bool, StoreError> {
        check_key(key)?;
        Ok(self.remove(key))
    }

    /// The changes under `prefix` with a revision `>= from`, in revision order: a watch
    /// its caller polls. Fails with [`StoreError::Compacted`] when `from` is older than
    /// the history kept; the caller then re-lists and polls from the listing's
    /// revision + 1.
    pub fn events_since(
        &self,
        prefix: &str,
        from: Revision,
    ) -> Result<Vec<WatchEvent>, StoreError> {
        if from < self.compact_revision {
            return Err(StoreError::Compacted {
                requested: from,
                compact_revision: self.compact_revision,
            });
        }
        let start = self.history.partition_point(|e| e.revision() < from);
        Ok(self
            .history
            .range(start..)
            .filter(|e| e.key().starts_with(prefix))
            .cloned()
            .collect())
    }

    /// Stores `entry` (its `mod_revision` must be the next revision) and records the
    /// change.
    fn write(&mut self, entry: Entry) -> Entry {
        debug_assert_eq!(entry.mod_revision, self.revision + 1);
        self.revision = entry.mod_revision;
        if let Some(old) = self.entries.insert(entry.key.clone(), entry.clone()) {
            if let Some(at) = old.expires_at {
                self.expiries.remove(&(at, old.key));
            }
        }
        if let Some(at) = entry.expires_at {
            self.expiries.insert((at, entry.key.clone()));
        }
        self.record(WatchEvent::Put(entry.clone()));
        entry
    }

    /// Deletes `key` with a new revision; returns whether it existed.
    fn remove(&mut self, key: &str) -> bool {
        let Some(old) = self.entries.remove(key) else {
            return false;
        };
        if let Some(at) = old.expires_at {
            self.expiries.remove(&(at, old.key.clone()));
        }
        self.revision += 1;
        self.record(WatchEvent::Delete {
            key: old.key,
            revision: self.revision,
        });
        true
    }

    fn record(&mut self, event: WatchEvent) {
        self.history.push_back(event);
        self.trim_history();
    }

    /// Drops history before the compaction point and beyond the limit.
    fn trim_history(&mut self) {
        while let Some(oldest) = self.history.front() {
            let oldest = oldest.revision();
            if oldest >= self.compact_revision && self.history.len() <= self.history_limit {
                break;
            }
            self.compact_revision = self.compact_revision.max(oldest + 1);
            self.history.pop_front();
        }
    }
}

/// The model performs a node's store calls directly; see [`super::StoreOp::call`].
impl StoreCalls for StoreModel {
    type Out = Result<StoreOutput, StoreError>;

    fn list(&mut self, prefix: &str) -> Self::Out {
        Ok(StoreOutput::Listing(StoreModel::list(self, prefix)))
    }

    fn create(&mut self, key: &str, value: &[u8], ttl: Option<Duration>) -> Self::Out {
        StoreModel::create(self, key, value, ttl).map(StoreOutput::Entry)
    }

    fn renew(
        &mut self,
        key: &str,
        create_revision: Revision,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Self::Out {
        StoreModel::renew(self, key, create_revision, value, ttl).map(StoreOutput::Entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn at(s: u64) -> Timestamp {
        Timestamp::from_millis(s * 1000)
    }

    #[test]
    fn expiry_is_ordered_by_time_then_key_each_with_its_own_revision() {
        let mut store = StoreModel::new(Timestamp::ZERO);
        store.create("/k/b", b"b", Some(MIN)).expect("create b");
        store.create("/k/a", b"a", Some(MIN)).expect("create a");
        store.create("/k/c", b"c", Some(MIN / 2)).expect("create c");
        assert_eq!(store.next_expiry(), Some(at(30)));
        assert!(!store.advance_to(at(29)));
        assert_eq!(store.revision(), 3);
        assert!(store.advance_to(at(60)));
        let events = store.events_since("/k/", 4).expect("events");
        let got: Vec<_> = events.iter().map(|e| (e.key(), e.revision())).collect();
        assert_eq!(got, [("/k/c", 4), ("/k/a", 5), ("/k/b", 6)]);
        assert!(events
            .iter()
            .all(|e| matches!(e, WatchEvent::Delete { .. })));
        assert_eq!(store.next_expiry(), None);
        assert!(store.list("/k/").entries.is_empty());
    }

    #[test]
    fn history_is_bounded() {
        let mut store = StoreModel::new(Timestamp::ZERO);
        store.set_history_limit(3);
        for i in 0..10 {
            store.put(&format!("/k/{i}"), b"v").expect("put");
        }
        assert_eq!(store.compact_revision(), 8);
        assert!(matches!(
            store.events_since("/k/", 7),
            Err(StoreError::Compacted {
                requested: 7,
                compact_revision: 8
            })
        ));
        let revs: Vec<_> = store
            .events_since("/k/", 8)
            .expect("events")
            .iter()
            .map(WatchEvent::revision)
            .collect();
        assert_eq!(revs, [8, 9, 10]);
    }

    #[test]
    fn compaction_past_the_next_revision_is_invalid() {
        let mut store = StoreModel::new(Timestamp::ZERO);
        store.put("/k", b"v").expect("put");
        assert!(matches!(store.compact(3), Err(StoreError::Invalid(_))));
        store.compact(2).expect("compact up to the next revision");
        assert_eq!(store.events_since("/", 2).expect("events"), []);
    }

    #[test]
    fn renew_checks_the_incarnation_and_restarts_the_ttl() {
        let mut store = StoreModel::new(Timestamp::ZERO);
        let mine = store.create("/k", b"a", Some(MIN)).expect("create");
        store.advance_to(at(59));
        let renewed = store
            .renew("/k", mine.create_revision, b"b", Some(MIN))
            .expect("renew");
        assert_eq!(renewed.expires_at, Some(at(119)));
        assert_eq!(renewed.create_revision, mine.create_revision);
        store.delete("/k").expect("delete");
        let theirs = store.create("/k", b"c", None).expect("create again");
        assert!(matches!(
            store.renew("/k", mine.create_revision, b"d", Some(MIN)),
            Err(StoreError::Conflict { expected, found, .. })
                if expected == mine.create_revision && found == theirs.create_revision
        ));
        store.delete("/k").expect("delete");
        assert!(matches!(
            store.renew("/k", theirs.create_revision, b"d", Some(MIN)),
            Err(StoreError::NotFound { .. })
        ));
        assert!(matches!(
            store.create("", b"", None),
            Err(StoreError::Invalid(_))
        ));
        assert!(matches!(
            store.create("/z", b"", Some(Duration::ZERO)),
            Err(StoreError::Invalid(_))
        ));
    }

    #[test]
    fn ten_thousand_leases_create_renew_and_expire() {
        let mut store = StoreModel::new(Timestamp::ZERO);
        let mut revs = Vec::new();
        for i in 0..10_000 {
            let e = store
                .create(&format!("/n/subnets/{i}"), b"{}", Some(MIN))
                .expect("create");
            revs.push(e.create_revision);
        }
        store.advance_to(at(30));
        for (i, rev) in revs.iter().enumerate() {
            store
                .renew(&format!("/n/subnets/{i}"), *rev, b"{}", Some(MIN))
                .expect("renew");
        }
        store.advance_to(at(89));
        assert_eq!(store.list("/n/").entries.len(), 10_000);
        store.advance_to(at(90));
        assert!(store.list("/n/").entries.is_empty());
        assert_eq!(store.revision(), 30_000);
    }
}
