//! The sled backend: leases in an embedded database in one directory, for `weft lab` and
//! single-host setups.
//!
//! What it keeps: every acknowledged write survives `kill -9` and reopen (each change is
//! one sled transaction, flushed before the operation returns), the revision counter
//! included; nothing is observable before it is durable (a change is committed and
//! flushed under the writer lock, which every reader and watch takes too); expiries are measured against the store's [`Clock`] (the wall clock, in
//! milliseconds since the Unix epoch, so they mean the same after a restart); the log of
//! changes that watches replay is kept for the last [`DEFAULT_HISTORY_LIMIT`] revisions.
//!
//! Expiry is lazy: every operation first deletes what is due, in (expiry time, key)
//! order, each deletion a [`WatchEvent::Delete`](weft_core::store::WatchEvent::Delete)
//! with its own revision, written once
//! because it happens under the writer lock and re-checks the record. A watch waiting for
//! changes also wakes at the next expiry, so deletions are seen without other traffic.
//!
//! Only one process may have the directory open: a second one fails at once with
//! [`StoreError::Locked`].

#[doc(hidden)]
pub mod codec;
mod record;
mod tx;
mod watch;

use std::fmt;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fs2::FileExt;
use tokio::sync::Notify;
use weft_core::store::{Entry, Listing, Revision, Store, StoreError, Watch};
use weft_core::Timestamp;

use self::record::{decode_entry, decode_expiry_key, encode_u64, FORMAT};
use self::tx::{abort, backend, Trees, Tx, TxResult, COMPACT_REVISION, FORMAT_KEY, REVISION};
use crate::clock::Clock;
use crate::memory::DEFAULT_HISTORY_LIMIT;
use weft_core::store::validate::{check_key, check_ttl};

/// The file in the store directory whose lock says which process has it open.
const LOCK_FILE: &str = "weft.lock";
/// The sled database, in a subdirectory so that it and the lock file do not mix.
const DB_DIR: &str = "db";

/// A persistent store in one directory. Clones are handles on one open store.
#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    db: sled::Db,
    trees: Trees,
    clock: Clock,
    history_limit: AtomicU64,
    /// The latest time an operation used, so expiry never runs backwards with the clock.
    last_now: AtomicU64,
    /// Held for writing by every change from before its commit until it is flushed, so
    /// that changes are serialized (their revisions and expiries checked once) and none
    /// is seen before it is on disk; held for reading by every read (`get`, `list`, a
    /// watch's look at the log, the counters), so that a listing and its revision are one
    /// snapshot (sled's range scans are not atomic on their own) and a reader sees only
    /// flushed changes: sled makes a commit visible at once, durable only on flush.
    writer: RwLock<()>,
    /// Woken after every change, so that watches look for new events.
    changed: Notify,
    /// Declared last so that it is released after the database is closed.
    _lock: File,
}

impl fmt::Debug for SledStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.inner.path)
            .field("clock", &self.inner.clock)
            .finish_non_exhaustive()
    }
}

impl SledStore {
    /// Opens (creating if needed) the store in directory `path`, with expiries measured
    /// by `clock` ([`Clock::Wall`] unless testing). Fails with [`StoreError::Locked`] at
    /// once if another process, or another handle in this one, has it open.
    pub fn open(path: impl AsRef<Path>, clock: Clock) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let shown = path.display().to_string();
        std::fs::create_dir_all(&path)
            .map_err(|e| backend(&format!("creating store directory {shown}"), e))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path.join(LOCK_FILE))
            .map_err(|e| backend(&format!("opening the lock file of {shown}"), e))?;
        if let Err(e) = lock.try_lock_exclusive() {
            if e.raw_os_error() == fs2::lock_contended_error().raw_os_error() {
                return Err(StoreError::Locked(shown));
            }
            return Err(backend(&format!("locking {shown}"), e));
        }
        remove_unfinished_snapshots(&path.join(DB_DIR));
        let db = open_db(&path.join(DB_DIR), &shown)?;
        let trees = Trees::open(&db).map_err(|e| backend(&format!("opening {shown}"), e))?;
        match trees.meta.get(FORMAT_KEY) {
            Ok(None) => {
                trees
                    .meta
                    .insert(FORMAT_KEY, &[FORMAT][..])
                    .map_err(|e| backend(&format!("initializing {shown}"), e))?;
            }
            Ok(Some(v)) if v.as_ref() == [FORMAT] => {}
            Ok(Some(v)) => {
                return Err(StoreError::Backend(format!(
                    "{shown} holds a store of format {v:?}, this weft reads format {FORMAT}"
                )))
            }
            Err(e) => return Err(backend(&format!("reading {shown}"), e)),
        }
        let store = SledStore {
            inner: Arc::new(Inner {
                path,
                db,
                trees,
                last_now: AtomicU64::new(clock.now().as_millis()),
                clock,
                history_limit: AtomicU64::new(DEFAULT_HISTORY_LIMIT as u64),
                writer: RwLock::new(()),
                changed: Notify::new(),
                _lock: lock,
            }),
        };
        // A crash may have come between a compaction and the removal of what it dropped.
        store.drop_compacted_events()?;
        Ok(store)
    }

    /// The directory the store lives in.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The store's time base.
    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    /// The store's current revision (0 before the first change).
    pub fn revision(&self) -> Result<Revision, StoreError> {
        let _flushed = self.read_guard();
        self.inner.trees.meta_u64(REVISION)
    }

    /// The compaction point: watches from before it fail with [`StoreError::Compacted`].
    pub fn compact_revision(&self) -> Result<Revision, StoreError> {
        let _flushed = self.read_guard();
        self.compact_revision_locked()
    }

    /// [`SledStore::compact_revision`] for a caller that holds the writer lock, either way.
    fn compact_revision_locked(&self) -> Result<Revision, StoreError> {
        self.inner.trees.meta_u64(COMPACT_REVISION)
    }

    /// Keeps the events of at most the last `limit` revisions for watches (from the next
    /// change on; the default is [`DEFAULT_HISTORY_LIMIT`]). Not persisted.
    pub fn set_history_limit(&self, limit: usize) {
        let limit = u64::try_from(limit).unwrap_or(u64::MAX);
        self.inner.history_limit.store(limit, Ordering::Relaxed);
    }

    /// When the next entry expires, if any has a TTL.
    pub fn next_expiry(&self) -> Result<Option<Timestamp>, StoreError> {
        match self.inner.trees.expiries.first() {
            Ok(None) => Ok(None),
            Ok(Some((k, _))) => match decode_expiry_key(&k) {
                Ok((at, _)) => Ok(Some(at)),
                // Expiry drops the bad index entry; until then, call it due now.
                Err(_) => Ok(Some(Timestamp::ZERO)),
            },
            Err(e) => Err(backend("reading the expiry index", e)),
        }
    }

    /// Drops the history before `revision`, as etcd's compaction does, so that a watch
    /// from an older revision fails with [`StoreError::Compacted`]. A revision past the
    /// next one is [`StoreError::Invalid`].
    pub async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.change(|tx, _| {
            let next = tx.next_revision()?;
            if revision > next {
                return abort(StoreError::Invalid(format!(
                    "cannot compact at revision {revision}, the store is at {}",
                    next - 1
                )));
            }
            tx.compact(revision)
        })
        .await
    }

    fn write_guard(&self) -> RwLockWriteGuard<'_, ()> {
        // The guarded data is `()`: a panic elsewhere leaves nothing inconsistent.
        self.inner
            .writer
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn read_guard(&self) -> RwLockReadGuard<'_, ()> {
        self.inner
            .writer
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs one change: under the writer lock, expires what is due, runs `f` as one
    /// transaction and, if anything was written, flushes it; only then does it release
    /// the lock (so that no reader sees the change before it is on disk), wake the
    /// watches and return (so that an acknowledged write is on disk). Once anything may
    /// have been committed, a failure on the way still flushes and wakes the watches.
    ///
    /// The flush blocks the calling thread, as every sled call here does; readers wait
    /// for it, which is the price of seeing only what is durable.
    async fn change<T>(
        &self,
        f: impl Fn(&Tx<'_>, Timestamp) -> TxResult<T>,
    ) -> Result<T, StoreError> {
        let _writer = self.write_guard();
        let now = self.now();
        let before = self.position_locked()?;
        let expired = self.expire_due_locked(now);
        let history_limit = self.inner.history_limit.load(Ordering::Relaxed);
        let result =
            expired.and_then(|()| self.inner.trees.transact(history_limit, |tx| f(tx, now)));
        // Unknown counts as changed: better a needless flush than an unflushed change.
        let changed = self
            .position_locked()
            .ok()
            .is_none_or(|after| after != before);
        if !changed {
            return result;
        }
        let dropped = self.drop_compacted_events();
        let flushed = self
            .inner
            .db
            .flush()
            .map(drop)
            .map_err(|e| backend(&format!("flushing {}", self.inner.path.display()), e));
        self.inner.changed.notify_waiters();
        // A write that was not flushed is not acknowledged, whatever `f` said.
        flushed?;
        if let Err(e) = dropped {
            tracing::warn!(path = %self.inner.path.display(), error = %e, "could not drop compacted events; the next change retries");
        }
        result
    }

    /// The revision and the compaction point: what a change moves. The caller holds the
    /// writer lock.
    fn position_locked(&self) -> Result<(Revision, Revision), StoreError> {
        Ok((
            self.inner.trees.meta_u64(REVISION)?,
            self.compact_revision_locked()?,
        ))
    }

    /// Expires what is due, if anything is: what reads do before reading.
    async fn expire_if_due(&self) -> Result<(), StoreError> {
        match self.next_expiry()? {
            Some(at) if at <= self.inner.clock.now() => self.change(|_, _| Ok(())).await,
            _ => Ok(()),
        }
    }

    /// The time for the next operation: the clock, but never earlier than the last.
    fn now(&self) -> Timestamp {
        let now = self.inner.clock.now().as_millis();
        let last = self.inner.last_now.fetch_max(now, Ordering::Relaxed);
        Timestamp::from_millis(last.max(now))
    }

    /// Deletes every entry due by `now`, in (expiry time, key) order, each with its own
    /// revision and event. Must hold the writer lock.
    fn expire_due_locked(&self, now: Timestamp) -> Result<(), StoreError> {
        let trees = &self.inner.trees;
        let history_limit = self.inner.history_limit.load(Ordering::Relaxed);
        loop {
            let first = trees
                .expiries
                .first()
                .map_err(|e| backend("reading the expiry index", e))?;
            let Some((index_key, _)) = first else {
                return Ok(());
            };
            let due = match decode_expiry_key(&index_key) {
                Ok((at, _)) if at > now => return Ok(()),
                Ok(due) => Some(due),
                Err(e) => {
                    tracing::warn!(path = %self.inner.path.display(), error = %e, "dropping a corrupt expiry index entry");
                    None
                }
            };
            trees.transact(history_limit, |tx| {
                // The record must still be the one this index entry is for: anything else
                // is a stale index entry, dropped without an event.
                if let Some((at, key)) = &due {
                    if let Some(raw) = tx.raw(key)? {
                        match decode_entry(key, &raw) {
                            Ok(entry) if entry.expires_at == Some(*at) => {
                                tx.remove(key, Some(*at))?;
                                return Ok(());
                            }
                            Ok(_) => {}
                            Err(e) => tracing::warn!(key = %key, error = %e, "corrupt record is due to expire; leaving it"),
                        }
                    }
                }
                tx.drop_expiry(&index_key)
            })?;
        }
    }

    /// Removes the events before the compaction point. Idempotent; the compaction point,
    /// not the presence of events, is what watches check.
    fn drop_compacted_events(&self) -> Result<(), StoreError> {
        let compact = self.compact_revision_locked()?;
        let events = &self.inner.trees.events;
        for key in events.range(..&encode_u64(compact)[..]).keys() {
            let key = key.map_err(|e| backend("reading the event log", e))?;
            events
                .remove(key)
                .map_err(|e| backend("compacting the event log", e))?;
        }
        Ok(())
    }
}

/// Removes the snapshot files sled began and never finished (`snap.<lsn>.generating`).
///
/// sled writes a snapshot under that name and renames it when it is complete; one that
/// stops half way (the disk full, a kill -9, a power cut) leaves the file behind, and
/// sled 0.34 then reads it as the newest snapshot at its next start and refuses the
/// database as corrupt, though the complete snapshot beside it and the log are intact.
/// Such a file is only ever written by a running sled, and this process holds the
/// store's lock: none is running. Best effort: what cannot be removed is left to sled.
fn remove_unfinished_snapshots(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => tracing::warn!(
                    file = %entry.path().display(),
                    "removed a sled snapshot left unfinished by an interrupted write"
                ),
                Err(e) => tracing::warn!(
                    file = %entry.path().display(),
                    error = %e,
                    "cannot remove an unfinished sled snapshot"
                ),
            }
        }
    }
}

/// Opens the sled database, once this process holds the store's lock file.
///
/// sled takes its own lock on its files, and a `Db` dropped in this process releases it
/// only when sled's background threads have finished with it, a moment later. Holding
/// our lock means no other process has the store, so a contended sled lock can only be
/// such a lingering handle of ours: wait for it, briefly.
fn open_db(dir: &Path, shown: &str) -> Result<sled::Db, StoreError> {
    const PATIENCE: Duration = Duration::from_secs(5);
    let started = Instant::now();
    loop {
        match sled::Config::new().path(dir).open() {
            Ok(db) => return Ok(db),
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                if started.elapsed() > PATIENCE {
                    return Err(StoreError::Locked(shown.to_string()));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(backend(&format!("opening sled database in {shown}"), e)),
        }
    }
}

fn corrupt_record(key: &str, e: impl fmt::Display) -> StoreError {
    StoreError::Backend(format!("corrupt record for key {key}: {e}"))
}

#[async_trait]
impl Store for SledStore {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        check_key(key)?;
        self.expire_if_due().await?;
        let _flushed = self.read_guard();
        match self.inner.trees.entries.get(key.as_bytes()) {
            Ok(None) => Ok(None),
            Ok(Some(raw)) => decode_entry(key, &raw)
                .map(Some)
                .map_err(|e| corrupt_record(key, e)),
            Err(e) => Err(backend(&format!("reading {key}"), e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        self.expire_if_due().await?;
        let _snapshot = self.read_guard();
        let revision = self.inner.trees.meta_u64(REVISION)?;
        let mut entries = Vec::new();
        for item in self.inner.trees.entries.scan_prefix(prefix.as_bytes()) {
            let (key, raw) = item.map_err(|e| backend(&format!("listing {prefix}"), e))?;
            let Ok(key) = std::str::from_utf8(&key) else {
                tracing::warn!(key = ?key, "skipping a record whose key is not UTF-8");
                continue;
            };
            match decode_entry(key, &raw) {
                Ok(entry) => entries.push(entry),
                Err(e) => tracing::warn!(key = %key, error = %e, "skipping a corrupt record"),
            }
        }
        Ok(Listing { entries, revision })
    }

    async fn create(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<Entry, StoreError> {
        check_key(key)?;
        check_ttl(ttl)?;
        self.change(|tx, now| {
            if tx.raw(key)?.is_some() {
                return abort(StoreError::AlreadyExists {
                    key: key.to_string(),
                });
            }
            let revision = tx.next_revision()?;
            let entry = Entry {
                key: key.to_string(),
                value: value.to_vec(),
                create_revision: revision,
                mod_revision: revision,
                expires_at: ttl.map(|ttl| now + ttl),
            };
            tx.write(&entry, None)?;
            Ok(entry)
        })
        .await
    }

    async fn renew(
        &self,
        key: &str,
        create_revision: Revision,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<Entry, StoreError> {
        check_key(key)?;
        check_ttl(ttl)?;
        self.change(|tx, now| {
            let Some(old) = tx.load(key)? else {
                return abort(StoreError::NotFound {
                    key: key.to_string(),
                });
            };
            if old.create_revision != create_revision {
                return abort(StoreError::Conflict {
                    key: key.to_string(),
                    expected: create_revision,
                    found: old.create_revision,
                });
            }
            let entry = Entry {
                key: key.to_string(),
                value: value.to_vec(),
                create_revision,
                mod_revision: tx.next_revision()?,
                expires_at: ttl.map(|ttl| now + ttl),
            };
            tx.write(&entry, old.expires_at)?;
            Ok(entry)
        })
        .await
    }

    async fn put(&self, key: &str, value: &[u8]) -> Result<Entry, StoreError> {
        check_key(key)?;
        self.change(|tx, _| {
            let revision = tx.next_revision()?;
            // A corrupt record is simply replaced; its stale index entry, if any, is
            // dropped when it comes due.
            let old = tx.raw(key)?.and_then(|raw| decode_entry(key, &raw).ok());
            let entry = Entry {
                key: key.to_string(),
                value: value.to_vec(),
                create_revision: old.as_ref().map_or(revision, |o| o.create_revision),
                mod_revision: revision,
                expires_at: None,
            };
            tx.write(&entry, old.and_then(|o| o.expires_at))?;
            Ok(entry)
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        check_key(key)?;
        self.change(|tx, _| {
            let Some(raw) = tx.raw(key)? else {
                return Ok(false);
            };
            let old_expiry = decode_entry(key, &raw).ok().and_then(|o| o.expires_at);
            tx.remove(key, old_expiry)?;
            Ok(true)
        })
        .await
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<Box<dyn Watch>, StoreError> {
        Ok(Box::new(watch::SledWatch::new(self.clone(), prefix, from)))
    }
}

#[cfg(test)]
mod tests;
