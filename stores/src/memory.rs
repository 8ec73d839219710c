//! The memory backend: the core's [`StoreModel`] behind the async [`Store`] trait, with
//! time from a [`Clock`] and injectable outages.
//!
//! [`MemoryStore`] is what tests use when they need a store and what `weft daemon
//! --store memory:` runs on. It is deterministic: with a manual [`Clock`], an entry
//! expires only when the clock is moved past its `expires_at`, and entries that expire
//! together are deleted in the order (expiry time, key), each deletion with its own
//! revision -- all of which is the model's; this file adds only the clock, the outage
//! switch and the async watch. Its plain methods are the model's, for callers without
//! an async runtime.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use weft_core::store::{
    Entry, Listing, Revision, Store, StoreError, StoreModel, Watch, WatchEvent,
};
use weft_core::Timestamp;

use crate::clock::Clock;

pub use weft_core::store::DEFAULT_HISTORY_LIMIT;

/// An in-memory store. Clones are handles on one shared store, so the tasks of one test
/// can all use it.
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
    model: StoreModel,
    unavailable: bool,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("MemoryStore")
            .field("now", &state.model.now())
            .field("revision", &state.model.revision())
            .field("entries", &state.model.len())
            .field("compact_revision", &state.model.compact_revision())
            .field("unavailable", &state.unavailable)
            .field("clock", &self.shared.clock)
            .finish()
    }
}

impl MemoryStore {
    /// An empty store whose time comes from `clock`.
    pub fn new(clock: Clock) -> Self {
        MemoryStore {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    model: StoreModel::new(clock.now()),
                    unavailable: false,
                }),
                changed: Notify::new(),
                clock,
            }),
        }
    }

    /// An empty store on its own manual clock starting at `start`; move it with
    /// [`MemoryStore::advance_to`].
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
        self.lock().model.now()
    }

    /// Moves a manual clock forward to `now` and expires every entry due by then (see
    /// [`StoreModel::advance_to`]). On a wall-clock store `now` is ignored (the system
    /// clock cannot be moved) and only what is due by the system clock expires. Expiry
    /// goes on while the store is [unavailable](MemoryStore::set_unavailable), as it
    /// does on a real server that clients cannot reach.
    pub fn advance_to(&self, now: Timestamp) {
        if let Clock::Manual(m) = &self.shared.clock {
            m.advance_to(now);
        }
        let now = self.shared.clock.now();
        let changed = self.lock().model.advance_to(now);
        if changed {
            self.shared.changed.notify_waiters();
        }
    }

    /// Moves a manual clock forward by `d`; see [`MemoryStore::advance_to`].
    pub fn advance(&self, d: Duration) {
        self.advance_to(self.shared.clock.now() + d);
    }

    /// When the next entry expires, if any has a TTL.
    pub fn next_expiry(&self) -> Option<Timestamp> {
        self.lock().model.next_expiry()
    }

    /// The store's current revision (0 before the first change).
    pub fn revision(&self) -> Revision {
        self.lock().model.revision()
    }

    /// The compaction point: watches from before it fail with [`StoreError::Compacted`].
    pub fn compact_revision(&self) -> Revision {
        self.lock().model.compact_revision()
    }

    /// Keeps at most `limit` past changes for watches, dropping the oldest now and later.
    pub fn set_history_limit(&self, limit: usize) {
        self.lock().model.set_history_limit(limit);
    }

    /// [`StoreModel::compact`].
    pub fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.op(|m| m.compact(revision))
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
        self.op(|m| Ok(m.get(key)?.cloned()))
    }

    /// [`Store::list`], synchronously.
    pub fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        self.op(|m| Ok(m.list(prefix)))
    }

    /// [`Store::create`], synchronously.
    pub fn create(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<Entry, StoreError> {
        self.op(|m| m.create(key, value, ttl))
    }

    /// [`Store::renew`], synchronously.
    pub fn renew(
        &self,
        key: &str,
        create_revision: Revision,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<Entry, StoreError> {
        self.op(|m| m.renew(key, create_revision, value, ttl))
    }

    /// [`Store::put`], synchronously.
    pub fn put(&self, key: &str, value: &[u8]) -> Result<Entry, StoreError> {
        self.op(|m| m.put(key, value))
    }

    /// [`Store::delete`], synchronously.
    pub fn delete(&self, key: &str) -> Result<bool, StoreError> {
        self.op(|m| m.delete(key))
    }

    /// [`StoreModel::events_since`]: a watch that the caller polls.
    pub fn events_since(
        &self,
        prefix: &str,
        from: Revision,
    ) -> Result<Vec<WatchEvent>, StoreError> {
        self.op(|m| m.events_since(prefix, from))
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
    fn op<T>(
        &self,
        f: impl FnOnce(&mut StoreModel) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let now = self.shared.clock.now();
        let mut state = self.lock();
        let before = state.model.revision();
        state.model.advance_to(now);
        let result = if state.unavailable {
            Err(StoreError::Unavailable(
                "memory store outage injected by set_unavailable".to_string(),
            ))
        } else {
            f(&mut state.model)
        };
        let changed = state.model.revision() != before;
        drop(state);
        if changed {
            self.shared.changed.notify_waiters();
        }
        result
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
    fn clones_share_one_store() {
        let a = MemoryStore::manual(Timestamp::ZERO);
        let b = a.clone();
        a.put("/k", b"v").expect("put");
        assert_eq!(
            b.get("/k").expect("get").map(|e| e.value),
            Some(b"v".to_vec())
        );
    }
}
