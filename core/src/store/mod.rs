//! The `Store` contract: where leases and the network config live.
//!
//! One object-safe async trait, so that a driver can hold a `Box<dyn Store>` chosen at run
//! time from a URL. The semantics are those etcd's v3 API gives natively, and every backend
//! (memory, sled, etcd) must pass the one conformance suite in `weft-stores`:
//!
//! - every change bumps a store-wide [`Revision`], strictly increasing;
//! - [`Store::create`] is atomic: of N concurrent creators of one key exactly one wins;
//! - an entry created with a TTL disappears (a [`WatchEvent::Delete`]) when it runs out
//!   without renewal; an entry without a TTL is a *reservation* and never expires;
//! - [`Store::watch`] from revision R yields every later change exactly once, in order, or
//!   fails with [`StoreError::Compacted`], after which the watcher re-lists and resumes
//!   from the listing's revision;
//! - failures are typed [`StoreError`]s, never panics.
//!
//! The trait lives in the core (it needs no runtime, only `async-trait`) so that the
//! drivers and the backends agree on it without depending on each other.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::time::Timestamp;

mod model;
pub mod validate;

pub use model::{StoreModel, DEFAULT_HISTORY_LIMIT};

/// A store-wide revision number. Every change gets a new, strictly larger one.
pub type Revision = u64;

/// One key as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The full key, e.g. `/coreos.com/network/subnets/10.5.34.0-24`.
    pub key: String,
    /// The value as stored; the store never interprets it.
    pub value: Vec<u8>,
    /// The revision at which this incarnation of the key was created. It stays the same
    /// across renewals and changes when the key is deleted and created again, which is
    /// how a renewal tells "my lease" from "someone else's lease on the same key".
    pub create_revision: Revision,
    /// The revision of the last change to this key.
    pub mod_revision: Revision,
    /// When the entry expires, in the store's time base; `None` for a reservation.
    pub expires_at: Option<Timestamp>,
}

/// The result of [`Store::list`]: the entries under a prefix, sorted by key, and the
/// store revision at which they were read. A watch from `revision + 1` sees every later
/// change.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Listing {
    /// The entries under the prefix, sorted by key.
    pub entries: Vec<Entry>,
    /// The store revision the listing reflects.
    pub revision: Revision,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// The key was created or its value or TTL changed; the entry is as it is now.
    Put(Entry),
    /// The key was deleted, or its TTL ran out.
    Delete {
        /// The key that went away.
        key: String,
        /// The revision of the deletion.
        revision: Revision,
    },
}

impl WatchEvent {
    /// The revision of this change.
    pub fn revision(&self) -> Revision {
        match self {
            WatchEvent::Put(e) => e.mod_revision,
            WatchEvent::Delete { revision, .. } => *revision,
        }
    }

    /// The key this change is about.
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put(e) => &e.key,
            WatchEvent::Delete { key, .. } => key,
        }
    }
}

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// `create` found the key already present.
    #[error("key {key} already exists")]
    AlreadyExists {
        /// The key that was to be created.
        key: String,
    },
    /// The key does not exist (or its TTL ran out).
    #[error("key {key} not found")]
    NotFound {
        /// The key that was looked for.
        key: String,
    },
    /// The key exists but is another incarnation than the caller's.
    #[error("key {key} was replaced: created at revision {found}, expected {expected}")]
    Conflict {
        /// The key.
        key: String,
        /// The create revision the caller held.
        expected: Revision,
        /// The create revision found in the store.
        found: Revision,
    },
    /// A watch asked for history the store no longer keeps; re-list and resume.
    #[error("revision {requested} is compacted; the oldest available is {compact_revision}")]
    Compacted {
        /// The revision the watch asked to start from.
        requested: Revision,
        /// The store's compaction point: history before it is gone.
        compact_revision: Revision,
    },
    /// The store cannot be reached or is shutting down; the operation may be retried.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The operation did not finish in time; it may or may not have taken effect.
    #[error("store operation timed out after {0:?}")]
    Timeout(Duration),
    /// The store is held by another process (single-process backends such as sled).
    #[error("store {0} is locked by another process")]
    Locked(String),
    /// The request itself is invalid (a bad key, a zero TTL); retrying will not help.
    #[error("invalid store request: {0}")]
    Invalid(String),
    /// Any other failure of the backend, with its message.
    #[error("store backend error: {0}")]
    Backend(String),
}

impl StoreError {
    /// Whether retrying the same operation later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Timeout(_))
    }
}

/// A key-value store with revisions, TTLs and watches. See the module docs for the
/// contract every implementation must keep.
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug {
    /// Reads one key. `Ok(None)` when it does not exist or has expired.
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError>;

    /// Lists every live entry whose key starts with `prefix`, sorted by key, with the
    /// revision the listing reflects. Values are returned as stored, malformed or not:
    /// decoding is the caller's business.
    async fn list(&self, prefix: &str) -> Result<Listing, StoreError>;

    /// Creates `key` if and only if it does not exist. With `ttl` the entry expires
    /// `ttl` after creation unless renewed; without, it is a reservation. Fails with
    /// [`StoreError::AlreadyExists`] when the key is present; of many concurrent
    /// creators exactly one succeeds.
    async fn create(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<Entry, StoreError>;

    /// A hint that a [`Store::create`] or [`Store::renew`] with `ttl` is coming (a node
    /// lists to acquire a lease): a backend that writes a TTL by attaching the key to a
    /// lease of its own, granted first (etcd), may grant one now in the background, so
    /// that the grant's round trip runs beside the listing instead of before the write.
    /// It must not outlive its use: a lease prepared and never used is given back or
    /// expires on its own. Does nothing by default.
    fn prepare_lease(&self, ttl: Duration) {
        let _ = ttl;
    }

    /// Replaces the value of `key` and restarts its TTL (`ttl` from now; `None` keeps or
    /// makes it a reservation), but only if the key still exists with the given
    /// `create_revision`. Fails with [`StoreError::NotFound`] when the key is gone (an
    /// expired lease cannot be renewed) and with [`StoreError::Conflict`] when it was
    /// deleted and created again by someone else. Never leaks backend resources.
    async fn renew(
        &self,
        key: &str,
        create_revision: Revision,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<Entry, StoreError>;

    /// Writes `key` unconditionally as a reservation (no TTL), creating or replacing it.
    /// Used for the network config and by operators.
    async fn put(&self, key: &str, value: &[u8]) -> Result<Entry, StoreError>;

    /// Deletes `key`. Returns whether it existed.
    async fn delete(&self, key: &str) -> Result<bool, StoreError>;

    /// Watches every key under `prefix` from revision `from` (inclusive): the returned
    /// [`Watch`] yields each change with a revision `>= from` exactly once, in revision
    /// order, including deletions caused by TTL expiry. When `from` is older than the
    /// store keeps, the first `next` fails with [`StoreError::Compacted`].
    async fn watch(&self, prefix: &str, from: Revision) -> Result<Box<dyn Watch>, StoreError>;
}

/// A running watch, see [`Store::watch`].
#[async_trait]
pub trait Watch: Send + fmt::Debug {
    /// Waits for the next changes and returns them, in revision order, never an empty
    /// batch. After an error the watch is finished; start a new one from the last seen
    /// revision + 1 (or re-list on [`StoreError::Compacted`]).
    async fn next(&mut self) -> Result<Vec<WatchEvent>, StoreError>;
}

/// A store operation a state machine wants performed (see [`Store`]): the node and
/// its allocator emit these; a driver performs them and feeds back the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOp {
    /// [`Store::list`]; answer with [`StoreOutput::Listing`].
    List {
        /// The prefix to list.
        prefix: String,
        /// The node lists to acquire a lease: a create (or a renewal) with this TTL
        /// follows. A backend that needs a lease of its own before it can write one (etcd)
        /// may grant it beside the listing, see [`Store::prepare_lease`].
        prepare_lease: Option<Duration>,
    },
    /// [`Store::create`]; answer with [`StoreOutput::Entry`].
    Create {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
        /// The TTL.
        ttl: Option<Duration>,
    },
    /// [`Store::renew`]; answer with [`StoreOutput::Entry`].
    Renew {
        /// The key.
        key: String,
        /// The incarnation expected.
        create_revision: Revision,
        /// The value.
        value: Vec<u8>,
        /// The TTL.
        ttl: Option<Duration>,
    },
    /// [`Store::watch`]: replace any running watch with one from `from`. Its batches go
    /// to `Node::handle_watch_events`, its failure to `Node::handle_watch_error`, each
    /// with the id this operation came with, so that the node can tell a batch of a
    /// watch it replaced from one of the current watch; it has no result of its own.
    Watch {
        /// The prefix to watch.
        prefix: String,
        /// The first revision wanted.
        from: Revision,
    },
}

impl StoreOp {
    /// Performs a one-shot operation (list, create, renew) through `calls`; `None` for a
    /// watch, which is long-lived and belongs to the driver. This is the one mapping from
    /// [`StoreOp`] to store calls: the model implements [`StoreCalls`] directly, and
    /// `weft-stores` implements it over any async [`Store`].
    pub fn call<C: StoreCalls + ?Sized>(&self, calls: &mut C) -> Option<C::Out> {
        Some(match self {
            StoreOp::List {
                prefix,
                prepare_lease,
            } => {
                if let Some(ttl) = prepare_lease {
                    calls.prepare_lease(*ttl);
                }
                calls.list(prefix)
            }
            StoreOp::Create { key, value, ttl } => calls.create(key, value, *ttl),
            StoreOp::Renew {
                key,
                create_revision,
                value,
                ttl,
            } => calls.renew(key, *create_revision, value, *ttl),
            StoreOp::Watch { .. } => return None,
        })
    }
}

/// The store calls a one-shot [`StoreOp`] maps to (see [`StoreOp::call`]), each
/// answering with the [`StoreOutput`] the node expects: a listing for `list`, an entry
/// for `create` and `renew`. `Out` is a result for a synchronous store, a future of one
/// for an async store.
pub trait StoreCalls {
    /// What a call gives back.
    type Out;
    /// [`Store::list`], answered with [`StoreOutput::Listing`].
    fn list(&mut self, prefix: &str) -> Self::Out;
    /// [`Store::prepare_lease`], just before the listing it goes with; answers nothing.
    fn prepare_lease(&mut self, ttl: Duration) {
        let _ = ttl;
    }
    /// [`Store::create`], answered with [`StoreOutput::Entry`].
    fn create(&mut self, key: &str, value: &[u8], ttl: Option<Duration>) -> Self::Out;
    /// [`Store::renew`], answered with [`StoreOutput::Entry`].
    fn renew(
        &mut self,
        key: &str,
        create_revision: Revision,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Self::Out;
}

/// The successful result of a [`StoreOp`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOutput {
    /// The result of a `List`.
    Listing(Listing),
    /// The result of a `List`, already decoded into the lease table a node would make
    /// of it (same prefix and networks, see
    /// [`LeaseTable::decodes_like`](crate::lease_table::LeaseTable::decodes_like)): a
    /// driver that serves many nodes from one store ([`LeaseLog`]) decodes each listing
    /// once, and the nodes share the one table.
    ///
    /// [`LeaseLog`]: crate::lease_table::LeaseLog
    Leases(crate::lease_table::LeaseTable),
    /// The result of a `Create` or `Renew`.
    Entry(Entry),
}

/// The config key under a prefix: `<prefix>/config`.
pub fn config_key(prefix: &str) -> String {
    format!("{}/config", prefix.trim_end_matches('/'))
}

/// The prefix of every subnet lease key: `<prefix>/subnets/`.
pub fn subnets_prefix(prefix: &str) -> String {
    format!("{}/subnets/", prefix.trim_end_matches('/'))
}

/// flannel's default key prefix.
pub const DEFAULT_PREFIX: &str = "/coreos.com/network";
