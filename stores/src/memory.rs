//! The memory backend: one process, no persistence, and time its caller controls.
//!
//! [`MemoryStore`] is what the simulator runs every node against and what tests use when
//! they need a store. It is deterministic: with a manual [`Clock`], an entry expires only
//! when the clock is moved past its `expires_at`, and entries that expire together are
//! deleted in the order (expiry time, key), each deletion with its own revision.
//!
//! Besides the async [`Store`] implementation it has the same operations as plain
//! methods, so that a discrete-event simulator can call it without an async runtime, and
//! [`MemoryStore::events_since`] stands in for a watch that the simulator polls.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use weft_core::store::{Entry, Listing, Revision, Store, StoreError, Watch, WatchEvent};
use weft_core::Timestamp;

use crate::clock::Clock;
use crate::validate::{check_key, check_ttl};

/// How many past changes a store keeps for watches unless told otherwise.
pub const DEFAULT_HISTORY_LIMIT: usize = 10_000;

/// An in-memory store. Clones are handles on one shared store, so the nodes of one
/// simulation (or the tasks of one test) can all use it.
#[derive(Clone)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Woken after every change, so that async watches look for new events.
    changed: Notify,
    clock: Clock,
}

#[derive(Debug)]
struct State {
    /// The latest time seen; never goes backwards even if the wall clock does.
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
    unavailable: bool,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("MemoryStore")
            .field("now", &state.now)
            .field("revision", &state.revision)
            .field("entries", &state.entries.len())
            .field("compact_revision", &state.compact_revision)
            .field("unavailable", &state.unavailable)
            .field("clock", &self.shared.clock)
            .finish()
    }
}

impl MemoryStore {
    /// An empty store whose time comes from `clock`.
    pub fn new(clock: Clock) -> Self {
        let now = clock.now();
        MemoryStore {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    now,
                    revision: 0,
                    entries: BTreeMap::new(),
                    expiries: BTreeSet::new(),
                    history: VecDeque::new(),
                    history_limit: DEFAULT_HISTORY_LIMIT,
                    compact_revision: 0,
                    unavailable: false,
                }),
                changed: Notify::new(),
                clock,
            }),
        }
    }

    /// An empty store on its own manual clock starting at `start`; move it with
    /// [`MemoryStore::advance_to`]. This is the simulator's store.
    pub fn manual(start: Timestamp) -> Self {
        MemoryStore::new(Clock::manual(start).0)
    }

    /// An empty store on the system clock: `weft daemon --store memory:`.
    pub fn with_wall_clock() -> Self {
        MemoryStore::new(Clock::Wall)
    }

    /// The store's time base.
    pub fn clock(&self) -> &Clock {
        &self.shared.clock
    }

    /// The latest time the store has seen.
    pub fn now(&self) -> Timestamp {
        self.lock().now
    }

    /// Moves a manual clock forward to `now` and expires every entry due by then, each
    /// expiry a [`WatchEvent::Delete`] with its own revision, in (expiry time, key) order.
    /// On a wall-clock store `now` is ignored (the system clock cannot be moved) and only
    /// what is due by the system clock expires. Expiry goes on while the store is
    /// [unavailable](MemoryStore::set_unavailable), as it does on a real server that
    /// clients cannot reach.
    pub fn advance_to(&self, now: Timestamp) {
        if let Clock::Manual(m) = &self.shared.clock {
            m.advance_to(now);
        }
        let now = self.shared.clock.now();
        let changed = self.lock().expire_due(now);
        if changed {
            self.shared.changed.notify_waiters();
        }
    }

    /// Moves a manual clock forward by `d`; see [`MemoryStore::advance_to`].
    pub fn advance(&self, d: Duration) {
        self.advance_to(self.shared.clock.now() + d);
    }

    /// When the next entry expires, if any has a TTL: the simulator's next timer.
    pub fn next_expiry(&self) -> Option<Timestamp> {
        self.lock().expiries.first().map(|(t, _)| *t)
    }

    /// The store's current revision (0 before the first change).
    pub fn revision(&self) -> Revision {
        self.lock().revision
    }

    /// The compaction point: watches from before it fail with [`StoreError::Compacted`].
    pub fn compact_revision(&self) -> Revision {
        self.lock().compact_revision
    }

    /// Keeps at most `limit` past changes for watches, dropping the oldest now and later.
    pub fn set_history_limit(&self, limit: usize) {
        let mut state = self.lock();
        state.history_limit = limit;
        state.trim_history();
    }

    /// Drops the history before `revision`, as etcd's compaction does, so that a watch
    /// from an older revision fails with [`StoreError::Compacted`]. A revision past the
    /// next one is [`StoreError::Invalid`].
    pub fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.op(|s| {
            if revision > s.revision + 1 {
                return Err(StoreError::Invalid(format!(
                    "cannot compact at revision {revision}, the store is at {}",
                    s.revision
                )));
            }
            if revision > s.compact_revision {
                s.compact_revision = revision;
                s.trim_history();
            }
            Ok(())
        })
    }

    /// Injects an outage: while `unavailable`, every operation, and every running watch,
    /// fails with [`StoreError::Unavailable`].
    pub fn set_unavailable(&self, unavailable: bool) {
        self.lock().unavailable = unavailable;
        self.shared.changed.notify_waiters();
    }

    /// Whether an outage is being injected.
    pub fn is_unavailable(&self) -> bool {
        self.lock().unavailable
    }

    /// [`Store::get`], synchronously.
    pub fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        self.op(|s| Ok(s.entries.get(key).cloned()))
    }

    /// [`Store::list`], synchronously.
    pub fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        self.op(|s| {
            let entries = s
                .entries
                .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(_, e)| e.clone())
                .collect();
            Ok(Listing {
                entries,
                revision: s.revision,
            })
        })
    }

    /// [`Store::create`], synchronously.
    pub fn create(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<Entry, StoreError> {
        check_key(key)?;
        check_ttl(ttl)?;
        self.op(|s| {
            if s.entries.contains_key(key) {
                return Err(StoreError::AlreadyExists {
                    key: key.to_string(),
                });
            }
            let revision = s.revision + 1;
            Ok(s.write(Entry {
                key: key.to_string(),
                value: value.to_vec(),
                create_revision: revision,
                mod_revision: revision,
                expires_at: ttl.map(|ttl| s.now + ttl),
            }))
        })
    }

    /// [`Store::renew`], synchronously.
    pub fn renew(
        &self,
        key: &str,
        create_revision: Revision,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<Entry, StoreError> {
        check_key(key)?;
        check_ttl(ttl)?;
        self.op(|s| {
            let found = match s.entries.get(key) {
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
            Ok(s.write(Entry {
                key: key.to_string(),
                value: value.to_vec(),
                create_revision,
                mod_revision: s.revision + 1,
                expires_at: ttl.map(|ttl| s.now + ttl),
            }))
        })
    }

    /// [`Store::put`], synchronously.
    pub fn put(&self, key: &str, value: &[u8]) -> Result<Entry, StoreError> {
        check_key(key)?;
        self.op(|s| {
            let revision = s.revision + 1;
            let create_revision = s.entries.get(key).map_or(revision, |e| e.create_revision);
            Ok(s.write(Entry {
                key: key.to_string(),
                value: value.to_vec(),
                create_revision,
                mod_revision: revision,
                expires_at: None,
            }))
        })
    }

    /// [`Store::delete`], synchronously.
    pub fn delete(&self, key: &str) -> Result<bool, StoreError> {
        check_key(key)?;
        self.op(|s| Ok(s.remove(key)))
    }

    /// The changes under `prefix` with a revision `>= from`, in revision order: a watch
    /// that the caller polls. Fails with [`StoreError::Compacted`] when `from` is older
    /// than the history kept; the caller then re-lists and polls from the listing's
    /// revision + 1.
    pub fn events_since(
        &self,
        prefix: &str,
        from: Revision,
    ) -> Result<Vec<WatchEvent>, StoreError> {
        self.op(|s| {
            if from < s.compact_revision {
                return Err(StoreError::Compacted {
                    requested: from,
                    compact_revision: s.compact_revision,
                });
            }
            let start = s.history.partition_point(|e| e.revision() < from);
            Ok(s.history
                .range(start..)
                .filter(|e| e.key().starts_with(prefix))
                .cloned()
                .collect())
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock, so a poisoned state is still consistent.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs one operation: first expires what is due, then fails if an outage is being
    /// injected, then applies `f`; wakes the watches if anything changed.
    fn op<T>(&self, f: impl FnOnce(&mut State) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let now = self.shared.clock.now();
        let mut state = self.lock();
        let before = state.revision;
        state.expire_due(now);
        let result = if state.unavailable {
            Err(StoreError::Unavailable(
                "memory store outage injected by set_unavailable".to_string(),
            ))
        } else {
            f(&mut state)
        };
        let changed = state.revision != before;
        drop(state);
        if changed {
            self.shared.changed.notify_waiters();
        }
        result
    }
}

impl State {
    /// Expires every entry due by `now`, in (expiry time, key) order. Returns whether any
    /// did.
    fn expire_due(&mut self, now: Timestamp) -> bool {
        self.now = self.now.max(now);
        let mut expired = false;
        while let Some((at, key)) = self.expiries.first().cloned() {
            if at > self.now {
                break;
            }
            expired |= self.remove(&key);
        }
        expired
    }

    /// Stores `entry` (its `mod_revision` must be the next revision) and records the change.
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

#[async_trait]
impl Store for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        MemoryStore::get(self, key)
    }

    async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        MemoryStore::list(self, prefix)
    }

    async fn create(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<Entry, StoreError> {
        MemoryStore::create(self, key, value, ttl)
    }

    async fn renew(
        &self,
        key: &str,
        create_revision: Revision,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<Entry, StoreError> {
        MemoryStore::renew(self, key, create_revision, value, ttl)
    }

    async fn put(&self, key: &str, value: &[u8]) -> Result<Entry, StoreError> {
        MemoryStore::put(self, key, value)
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        MemoryStore::delete(self, key)
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<Box<dyn Watch>, StoreError> {
        // Fail now rather than at the first `next` when the store is down.
        self.op(|_| Ok(()))?;
        Ok(Box::new(MemoryWatch {
            store: self.clone(),
            prefix: prefix.to_string(),
            next: from,
            failed: None,
        }))
    }
}

/// A watch on a [`MemoryStore`]: polls [`MemoryStore::events_since`] whenever the store
/// changes or the next expiry comes due.
#[derive(Debug)]
struct MemoryWatch {
    store: MemoryStore,
    prefix: String,
    next: Revision,
    failed: Option<StoreError>,
}

#[async_trait]
impl Watch for MemoryWatch {
    async fn next(&mut self) -> Result<Vec<WatchEvent>, StoreError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        loop {
            // Registered before looking, so a change made in between still wakes us.
            let changed = self.store.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let events = match self.store.events_since(&self.prefix, self.next) {
                Ok(events) => events,
                Err(e) => {
                    self.failed = Some(e.clone());
                    return Err(e);
                }
            };
            if let Some(last) = events.last() {
                self.next = last.revision() + 1;
                return Ok(events);
            }
            match self.store.next_expiry() {
                Some(deadline) => {
                    tokio::select! {
                        () = &mut changed => {}
                        () = self.store.shared.clock.sleep_until(deadline) => {}
                    }
                }
                None => changed.await,
            }
        }
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
        let store = MemoryStore::manual(Timestamp::ZERO);
        store.create("/k/b", b"b", Some(MIN)).expect("create b");
        store.create("/k/a", b"a", Some(MIN)).expect("create a");
        store.create("/k/c", b"c", Some(MIN / 2)).expect("create c");
        assert_eq!(store.next_expiry(), Some(at(30)));
        store.advance_to(at(29));
        assert_eq!(store.revision(), 3);
        store.advance_to(at(60));
        let events = store.events_since("/k/", 4).expect("events");
        let got: Vec<_> = events.iter().map(|e| (e.key(), e.revision())).collect();
        assert_eq!(got, [("/k/c", 4), ("/k/a", 5), ("/k/b", 6)]);
        assert!(events
            .iter()
            .all(|e| matches!(e, WatchEvent::Delete { .. })));
        assert_eq!(store.next_expiry(), None);
        assert!(store.list("/k/").expect("list").entries.is_empty());
    }

    #[test]
    fn history_is_bounded() {
        let store = MemoryStore::manual(Timestamp::ZERO);
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
    fn outage_fails_every_operation_but_expiry_goes_on() {
        let store = MemoryStore::manual(Timestamp::ZERO);
        store.create("/k", b"v", Some(MIN)).expect("create");
        store.set_unavailable(true);
        assert!(matches!(store.get("/k"), Err(StoreError::Unavailable(_))));
        assert!(matches!(store.list("/"), Err(StoreError::Unavailable(_))));
        assert!(matches!(
            store.put("/x", b""),
            Err(StoreError::Unavailable(_))
        ));
        assert!(matches!(
            store.events_since("/", 0),
            Err(StoreError::Unavailable(_))
        ));
        store.advance_to(at(61));
        store.set_unavailable(false);
        assert_eq!(store.get("/k").expect("get"), None);
        assert_eq!(store.revision(), 2);
    }

    #[tokio::test]
    async fn an_injected_outage_ends_a_waiting_watch() {
        let store = MemoryStore::manual(Timestamp::ZERO);
        let mut w = Store::watch(&store, "/", 1).await.expect("watch");
        let waiter = tokio::spawn(async move { w.next().await });
        tokio::task::yield_now().await;
        store.set_unavailable(true);
        let result = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("task");
        assert!(
            matches!(result, Err(StoreError::Unavailable(_))),
            "{result:?}"
        );
        assert!(matches!(
            Store::watch(&store, "/", 1).await,
            Err(StoreError::Unavailable(_))
        ));
    }

    #[test]
    fn compaction_past_the_next_revision_is_invalid() {
        let store = MemoryStore::manual(Timestamp::ZERO);
        store.put("/k", b"v").expect("put");
        assert!(matches!(store.compact(3), Err(StoreError::Invalid(_))));
        store.compact(2).expect("compact up to the next revision");
        assert_eq!(store.events_since("/", 2).expect("events"), []);
    }

    #[test]
    fn clones_share_one_store() {
        let a = MemoryStore::manual(Timestamp::ZERO);
        let b = a.clone();
        a.put("/k", b"v").expect("put");
        assert_eq!(
            b.get("/k").expect("get").map(|e| e.value),
            Some(b"v".to_vec())
        );
    }

    #[test]
    fn ten_thousand_leases_create_renew_and_expire() {
        let store = MemoryStore::manual(Timestamp::ZERO);
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
        assert_eq!(store.list("/n/").expect("list").entries.len(), 10_000);
        store.advance_to(at(90));
        assert!(store.list("/n/").expect("list").entries.is_empty());
        assert_eq!(store.revision(), 30_000);
    }
}
