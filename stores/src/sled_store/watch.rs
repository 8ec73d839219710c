//! Watches on the sled backend: a cursor over the event log.

use async_trait::async_trait;
use weft_core::store::{Revision, StoreError, Watch, WatchEvent};

use super::record::{decode_event, decode_u64, encode_u64};
use super::tx::backend;
use super::SledStore;

/// At most this many events per batch, so that a watch far behind catches up in steps.
const MAX_BATCH: usize = 1_000;
/// At most this many log records looked at per step, matching the prefix or not.
const MAX_SCAN: usize = 10_000;

/// A watch on a [`SledStore`]: reads the event log from its cursor whenever the store
/// changes or the next expiry comes due.
#[derive(Debug)]
pub(crate) struct SledWatch {
    store: SledStore,
    prefix: String,
    next: Revision,
    failed: Option<StoreError>,
    /// Whether a log key that is no revision was reported already (once per watch).
    warned_bad_key: bool,
}

impl SledWatch {
    pub(crate) fn new(store: SledStore, prefix: &str, from: Revision) -> Self {
        SledWatch {
            store,
            prefix: prefix.to_string(),
            next: from,
            failed: None,
            warned_bad_key: false,
        }
    }

    /// The events under the prefix from the cursor on, moving the cursor past every
    /// record looked at, and whether it moved.
    ///
    /// A record that does not decode cannot be told to be outside the prefix, so skipping
    /// it could lose a change; failing on it would fail every retry from the same
    /// revision, forever. The events before it are returned first; then the watch
    /// answers [`StoreError::Compacted`] past it, so the watcher re-lists (the listing
    /// reads the entries themselves) and resumes after the damaged record.
    fn poll(&mut self) -> Result<(Vec<WatchEvent>, bool), StoreError> {
        // Only flushed changes: the writer holds the lock until its change is on disk.
        let store = self.store.clone();
        let _flushed = store.read_guard();
        let log = &store.inner.trees.events;
        let mut events = Vec::new();
        let mut last_seen = None;
        for item in log.range(&encode_u64(self.next)[..]..).take(MAX_SCAN) {
            let (key, raw) = item.map_err(|e| backend("reading the event log", e))?;
            let Ok(rev) = decode_u64(&key) else {
                // Not a revision: no event of any revision is lost by passing it.
                if !self.warned_bad_key {
                    self.warned_bad_key = true;
                    tracing::warn!(path = %self.store.inner.path.display(), key = ?key, "skipping an event log record whose key is not a revision");
                }
                continue;
            };
            let event = match decode_event(rev, &raw) {
                Ok(event) => event,
                Err(_) if !events.is_empty() => break,
                Err(e) => {
                    tracing::warn!(path = %self.store.inner.path.display(), revision = rev, error = %e, "skipping an undecodable record in the event log; the watcher re-lists");
                    return Err(StoreError::Compacted {
                        requested: self.next,
                        compact_revision: rev + 1,
                    });
                }
            };
            last_seen = Some(rev);
            if event.key().starts_with(&self.prefix) {
                events.push(event);
                if events.len() == MAX_BATCH {
                    break;
                }
            }
        }
        // Checked after reading: events are removed only after the compaction point has
        // moved past them, so if any we wanted were gone, this sees it.
        let compact_revision = store.compact_revision_locked()?;
        if self.next < compact_revision {
            return Err(StoreError::Compacted {
                requested: self.next,
                compact_revision,
            });
        }
        if let Some(rev) = last_seen {
            self.next = rev + 1;
        }
        Ok((events, last_seen.is_some()))
    }
}

#[async_trait]
impl Watch for SledWatch {
    async fn next(&mut self) -> Result<Vec<WatchEvent>, StoreError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let store = self.store.clone();
        loop {
            // Registered before looking, so a change made in between still wakes us.
            let changed = store.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let polled = match store.expire_if_due().await {
                Ok(()) => self.poll(),
                Err(e) => Err(e),
            };
            match polled {
                // Only other prefixes' changes so far: look further before waiting.
                Ok((events, true)) if events.is_empty() => continue,
                Ok((events, false)) if events.is_empty() => {}
                Ok((events, _)) => return Ok(events),
                Err(e) => {
                    self.failed = Some(e.clone());
                    return Err(e);
                }
            }
            match store.next_expiry() {
                Ok(Some(deadline)) => {
                    tokio::select! {
                        () = &mut changed => {}
                        () = store.inner.clock.sleep_until(deadline) => {}
                    }
                }
                Ok(None) => changed.await,
                Err(e) => {
                    self.failed = Some(e.clone());
                    return Err(e);
                }
            }
        }
    }
}
