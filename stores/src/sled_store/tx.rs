//! One write to the sled backend as one sled transaction over all four trees.
//!
//! A change is the entry, its expiry index, its event in the log and the new revision
//! (and maybe a new compaction point): sled commits them as one sealed batch, so after a
//! crash either all of them are there or none is. Every writer also holds the store's
//! writer lock (see `SledStore`), so transactions never conflict and never retry.

use sled::transaction::{
    ConflictableTransactionError, TransactionError, Transactional, TransactionalTree,
};
use sled::IVec;
use weft_core::store::{Entry, Revision, StoreError, WatchEvent};
use weft_core::Timestamp;

use super::record::{decode_entry, decode_u64, encode_entry, encode_event, encode_u64, expiry_key};

pub(crate) const REVISION: &[u8] = b"revision";
pub(crate) const COMPACT_REVISION: &[u8] = b"compact_revision";
pub(crate) const FORMAT_KEY: &[u8] = b"format";

pub(crate) type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

/// Aborts the transaction with `e`, which the operation then returns.
pub(crate) fn abort<T>(e: StoreError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(e))
}

pub(crate) fn backend(context: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("{context}: {e}"))
}

/// The trees of one store.
#[derive(Debug, Clone)]
pub(crate) struct Trees {
    pub(crate) entries: sled::Tree,
    pub(crate) expiries: sled::Tree,
    pub(crate) events: sled::Tree,
    pub(crate) meta: sled::Tree,
}

impl Trees {
    pub(crate) fn open(db: &sled::Db) -> sled::Result<Self> {
        Ok(Trees {
            entries: db.open_tree("entries")?,
            expiries: db.open_tree("expiries")?,
            events: db.open_tree("events")?,
            meta: db.open_tree("meta")?,
        })
    }

    /// A counter from `meta`, 0 when never written.
    pub(crate) fn meta_u64(&self, name: &[u8]) -> Result<u64, StoreError> {
        match self
            .meta
            .get(name)
            .map_err(|e| backend("reading meta", e))?
        {
            None => Ok(0),
            Some(v) => decode_u64(&v).map_err(|e| corrupt_meta(name, e)),
        }
    }

    /// Runs `f` as one transaction with at most `history_limit` events kept.
    pub(crate) fn transact<T>(
        &self,
        history_limit: u64,
        f: impl Fn(&Tx<'_>) -> TxResult<T>,
    ) -> Result<T, StoreError> {
        (&self.entries, &self.expiries, &self.events, &self.meta)
            .transaction(|(entries, expiries, events, meta)| {
                f(&Tx {
                    entries,
                    expiries,
                    events,
                    meta,
                    history_limit,
                })
            })
            .map_err(|e| match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => backend("sled transaction", e),
            })
    }
}

fn corrupt_meta(name: &[u8], e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!(
        "corrupt meta record {}: {e}",
        String::from_utf8_lossy(name)
    ))
}

/// The view of the trees inside one transaction.
pub(crate) struct Tx<'a> {
    entries: &'a TransactionalTree,
    expiries: &'a TransactionalTree,
    events: &'a TransactionalTree,
    meta: &'a TransactionalTree,
    history_limit: u64,
}

impl Tx<'_> {
    fn meta_u64(&self, name: &[u8]) -> TxResult<u64> {
        match self.meta.get(name)? {
            None => Ok(0),
            Some(v) => decode_u64(&v).or_else(|e| abort(corrupt_meta(name, e))),
        }
    }

    /// The revision the next change gets.
    pub(crate) fn next_revision(&self) -> TxResult<Revision> {
        Ok(self.meta_u64(REVISION)? + 1)
    }

    /// The stored record of `key`, undecoded.
    pub(crate) fn raw(&self, key: &str) -> TxResult<Option<IVec>> {
        Ok(self.entries.get(key.as_bytes())?)
    }

    /// The entry under `key`; a record that does not decode aborts with an error naming it.
    pub(crate) fn load(&self, key: &str) -> TxResult<Option<Entry>> {
        match self.raw(key)? {
            None => Ok(None),
            Some(raw) => match decode_entry(key, &raw) {
                Ok(entry) => Ok(Some(entry)),
                Err(e) => abort(StoreError::Backend(format!(
                    "corrupt record for key {key}: {e}"
                ))),
            },
        }
    }

    /// Stores `entry`, whose `mod_revision` is [`Tx::next_revision`], replacing a record
    /// that expired at `old_expiry`, and logs it.
    pub(crate) fn write(&self, entry: &Entry, old_expiry: Option<Timestamp>) -> TxResult<()> {
        self.entries
            .insert(entry.key.as_bytes(), encode_entry(entry))?;
        if let Some(at) = old_expiry {
            self.expiries.remove(expiry_key(at, &entry.key))?;
        }
        if let Some(at) = entry.expires_at {
            self.expiries
                .insert(expiry_key(at, &entry.key), Vec::new())?;
        }
        self.record(&WatchEvent::Put(entry.clone()))
    }

    /// Deletes `key` (whose record expired at `old_expiry`) with a new revision, logs it,
    /// and returns the revision.
    pub(crate) fn remove(&self, key: &str, old_expiry: Option<Timestamp>) -> TxResult<Revision> {
        let revision = self.next_revision()?;
        self.entries.remove(key.as_bytes())?;
        if let Some(at) = old_expiry {
            self.expiries.remove(expiry_key(at, key))?;
        }
        self.record(&WatchEvent::Delete {
            key: key.to_string(),
            revision,
        })?;
        Ok(revision)
    }

    /// Drops an index entry that no longer matches a record.
    pub(crate) fn drop_expiry(&self, index_key: &[u8]) -> TxResult<()> {
        self.expiries.remove(index_key)?;
        Ok(())
    }

    /// Moves the compaction point forward to `revision` (never back).
    pub(crate) fn compact(&self, revision: Revision) -> TxResult<()> {
        if revision > self.meta_u64(COMPACT_REVISION)? {
            self.meta
                .insert(COMPACT_REVISION, &encode_u64(revision)[..])?;
        }
        Ok(())
    }

    /// Logs `event` at its revision, makes that the store's revision, and moves the
    /// compaction point so that at most `history_limit` events are kept. The events
    /// before it are removed after the commit (`SledStore::drop_compacted_events`).
    fn record(&self, event: &WatchEvent) -> TxResult<()> {
        let revision = event.revision();
        self.events
            .insert(&encode_u64(revision)[..], encode_event(event))?;
        self.meta.insert(REVISION, &encode_u64(revision)[..])?;
        self.compact((revision + 1).saturating_sub(self.history_limit))
    }
}
