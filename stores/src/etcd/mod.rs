//! The etcd backend: weft's production store, on etcd's v3 API, in flannel's schema.
//!
//! Keys and values are exactly what flannel writes (`<prefix>/config`,
//! `<prefix>/subnets/10.5.34.0-24`, lease JSON), so `etcdctl get --prefix
//! /coreos.com/network` shows the same thing for either. How the [`Store`] contract maps
//! onto etcd:
//!
//! - revisions are etcd's; a [`Listing`] reads at one revision, page by page;
//! - `create` is a txn on `version(key) == 0` putting the key with an etcd lease of the
//!   TTL, or with no lease at all for a reservation, which etcd then never expires;
//! - `renew` grants a new lease, moves the key to it in a txn on the key's
//!   `create_revision`, and revokes the lease it replaced: flannel leaks that one on
//!   every renewal, weft leaves none behind ([`EtcdStore::live_leases`] counts them);
//! - expiries come from the lease IDs weft chooses (see [`lease_id`]), or are asked of
//!   etcd once per foreign lease;
//! - watches are etcd watches from a revision, see [`watch`];
//! - every call has a deadline; a request that could not reach a member is sent to the
//!   next one, so one member down is invisible; anything else maps to a typed
//!   [`StoreError`] (see [`error`]).

mod connect;
#[doc(hidden)]
pub mod decode;
mod error;
mod lease_id;
mod ops;
mod watch;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{Client, KeyValue};
use weft_core::store::{Entry, Listing, Revision, Store, StoreError, Watch};
use weft_core::Timestamp;

pub use self::connect::{parse_url, EtcdOptions};
use self::decode::revision;
use self::error::{map_error, never_sent};
use crate::clock::wall_now;

/// A store in an etcd cluster. Clones share one connection.
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    endpoints: Vec<String>,
    timeout: Duration,
    /// Whether the connection uses TLS, and whether any request was ever answered: a
    /// TLS connection that etcd closes before the first answer is a client certificate
    /// it refused (TLS 1.3 sends that verdict after the client thinks it is done, and
    /// the client sees only the connection close).
    tls: bool,
    answered: std::sync::atomic::AtomicBool,
    /// Expiries of leases weft did not grant (flannel's), by lease ID, as etcd told them.
    foreign: Mutex<BTreeMap<i64, Timestamp>>,
    /// The shortest TTL the server grants, in seconds, once learned.
    min_ttl: AtomicU64,
    round_trips: AtomicU64,
    txn_conflicts: AtomicU64,
    by_kind: [AtomicU64; RtKind::ALL.len()],
    prepared_grants: AtomicU64,
    /// Whether [`Store::prepare_lease`] grants ahead (off by default, see
    /// [`EtcdStore::set_prepare_ahead`]).
    prepare_ahead: std::sync::atomic::AtomicBool,
    /// A lease granted ahead of the write that will use it, see [`Spare`].
    spare: Mutex<Option<Spare>>,
    /// The listing a lost create fetched (see [`EtcdStore::create_entry`]), for the
    /// next listing of its prefix.
    stashed: Mutex<Option<Stashed>>,
}

/// A listing of `prefix` a lost create race fetched in its transaction's else branch,
/// `at` when it arrived: the next listing of `prefix`, if it comes within
/// [`ops::STASH_FRESH`], is this one, and costs no round trip.
struct Stashed {
    prefix: String,
    listing: Listing,
    at: std::time::Instant,
}

/// A lease granted ahead of the create (or renewal) that attaches a key to it: prepared
/// beside a listing ([`Store::prepare_lease`]), or left unused by a lost create race,
/// whose retry then needs no grant of its own.
enum Spare {
    /// Being granted, for writes of `ttl`.
    Granting {
        ttl: Duration,
        task: tokio::task::JoinHandle<Result<(i64, Timestamp), StoreError>>,
    },
    /// Granted, for writes of `ttl`, and unused.
    Ready {
        ttl: Duration,
        id: i64,
        expires: Timestamp,
    },
}

impl Drop for Inner {
    /// A spare nobody used is given back (it holds no key; it would expire anyway).
    fn drop(&mut self) {
        let spare = self
            .spare
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut client = self.client.clone();
        match spare {
            Some(Spare::Ready { id, .. }) => {
                runtime.spawn(async move {
                    let _ = client.lease_revoke(id).await;
                });
            }
            Some(Spare::Granting { task, .. }) => {
                runtime.spawn(async move {
                    if let Ok(Ok((id, _))) = task.await {
                        let _ = client.lease_revoke(id).await;
                    }
                });
            }
            None => {}
        }
    }
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.inner.endpoints)
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

/// What a store has cost so far: the benchmark's measure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EtcdStats {
    /// Requests sent to etcd (each retry and each watch opened counts).
    pub round_trips: u64,
    /// Transactions whose comparison failed: lost create races, stale renewals.
    pub txn_conflicts: u64,
    /// Of the requests, how many of each kind, indexed by [`RtKind`].
    pub by_kind: [u64; RtKind::ALL.len()],
    /// Lease grants made ahead, beside a listing (see [`Store::prepare_lease`]).
    pub prepared_grants: u64,
}

/// The kinds of request [`EtcdStats::by_kind`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RtKind {
    /// A range read: a listing's page, a get.
    Range,
    /// A lease grant.
    Grant,
    /// A transaction: a create, a renewal.
    Txn,
    /// A watch opened.
    Watch,
    /// A lease revoked.
    Revoke,
    /// A lease's time to live asked.
    TimeToLive,
    /// Anything else (put, delete, compaction, lease listing).
    Other,
}

impl RtKind {
    /// Every kind, in the order of [`EtcdStats::by_kind`].
    pub const ALL: [RtKind; 7] = [
        RtKind::Range,
        RtKind::Grant,
        RtKind::Txn,
        RtKind::Watch,
        RtKind::Revoke,
        RtKind::TimeToLive,
        RtKind::Other,
    ];

    /// Its name in a report.
    pub fn name(self) -> &'static str {
        match self {
            RtKind::Range => "range",
            RtKind::Grant => "grant",
            RtKind::Txn => "txn",
            RtKind::Watch => "watch",
            RtKind::Revoke => "revoke",
            RtKind::TimeToLive => "ttl",
            RtKind::Other => "other",
        }
    }
}

/// How a call failed: no answer in time, a TLS connection closed before any answer,
/// or etcd's error.
enum Failure {
    TimedOut(Duration),
    TlsRefused(String),
    Etcd(etcd_client::Error),
}

impl Failure {
    fn into_store(self, what: &str) -> StoreError {
        match self {
            Failure::TimedOut(d) => StoreError::Timeout(d),
            Failure::TlsRefused(text) => StoreError::Backend(format!(
                "{what}: etcd closed the TLS connection before answering anything: it does \
                 not accept this client's certificate (check --etcd-certfile, --etcd-keyfile \
                 and --etcd-cafile): {text}"
            )),
            Failure::Etcd(e) => map_error(what, &e),
        }
    }
}

impl EtcdStore {
    /// Whether a listing that acquires grants the create's lease beside it
    /// ([`Store::prepare_lease`]): one round trip less per join, but such a lease is
    /// granted 5 s longer than its TTL (so that it lasts the whole TTL from the create),
    /// and a stopped node's lease then outlives flannel's TTL by as much. Off by default;
    /// `etcd_scale --prepare on` turns it on.
    pub fn set_prepare_ahead(&self, on: bool) {
        self.inner.prepare_ahead.store(on, Ordering::Relaxed);
    }

    fn from_client(client: Client, endpoints: Vec<String>, timeout: Duration, tls: bool) -> Self {
        EtcdStore {
            inner: Arc::new(Inner {
                client,
                endpoints,
                timeout,
                tls,
                answered: std::sync::atomic::AtomicBool::new(false),
                foreign: Mutex::new(BTreeMap::new()),
                min_ttl: AtomicU64::new(1),
                round_trips: AtomicU64::new(0),
                txn_conflicts: AtomicU64::new(0),
                by_kind: Default::default(),
                prepared_grants: AtomicU64::new(0),
                prepare_ahead: std::sync::atomic::AtomicBool::new(false),
                spare: Mutex::new(None),
                stashed: Mutex::new(None),
            }),
        }
    }

    /// Another store on this one's connection, with counters of its own: many nodes
    /// simulated in one process (the scale benchmark) share a connection as the tasks
    /// of one node do.
    pub fn sharing_connection(&self) -> EtcdStore {
        EtcdStore::from_client(
            self.inner.client.clone(),
            self.inner.endpoints.clone(),
            self.inner.timeout,
            self.inner.tls,
        )
    }

    /// The endpoints the store talks to, as `host:port`.
    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    /// The requests and conflicts so far.
    pub fn stats(&self) -> EtcdStats {
        EtcdStats {
            round_trips: self.inner.round_trips.load(Ordering::Relaxed),
            txn_conflicts: self.inner.txn_conflicts.load(Ordering::Relaxed),
            by_kind: std::array::from_fn(|i| self.inner.by_kind[i].load(Ordering::Relaxed)),
            prepared_grants: self.inner.prepared_grants.load(Ordering::Relaxed),
        }
    }

    fn conflict(&self) {
        self.inner.txn_conflicts.fetch_add(1, Ordering::Relaxed);
    }

    /// Runs one request with the store's deadline. A request that could not reach a
    /// member had no effect, so it is sent again (the balancer picks the next member),
    /// once per endpoint at most.
    async fn call<T, F, Fut>(&self, request: F) -> Result<T, Failure>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.call_as(RtKind::Other, request).await
    }

    /// [`EtcdStore::call`], counted as a request of `kind`.
    async fn call_as<T, F, Fut>(&self, kind: RtKind, mut request: F) -> Result<T, Failure>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let timeout = self.inner.timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut retries = 0u32;
        loop {
            self.inner.round_trips.fetch_add(1, Ordering::Relaxed);
            self.inner.by_kind[kind as usize].fetch_add(1, Ordering::Relaxed);
            let attempt = request(self.inner.client.clone());
            match tokio::time::timeout_at(deadline, attempt).await {
                Err(_) => return Err(Failure::TimedOut(timeout)),
                Ok(Ok(v)) => {
                    self.inner.answered.store(true, Ordering::Relaxed);
                    return Ok(v);
                }
                Ok(Err(e)) if never_sent(&e) && (retries as usize) < self.inner.endpoints.len() => {
                    retries += 1;
                    tracing::debug!(error = %error::describe(&e), "etcd member unreachable; trying the next");
                    tokio::time::sleep(Duration::from_millis(10 * u64::from(retries))).await;
                }
                Ok(Err(e)) if self.closed_before_any_answer(&e) => {
                    return Err(Failure::TlsRefused(error::describe(&e)))
                }
                Ok(Err(e)) => return Err(Failure::Etcd(e)),
            }
        }
    }

    fn closed_before_any_answer(&self, e: &etcd_client::Error) -> bool {
        let text = error::describe(e);
        self.inner.tls
            && !self.inner.answered.load(Ordering::Relaxed)
            && ["connection closed", "connection reset", "broken pipe"]
                .iter()
                .any(|w| text.contains(w))
    }

    /// The expiry of each lease in `ids` (0, no lease, is left out): decoded from weft's
    /// IDs, else from the cache, else asked of etcd.
    async fn expiries(
        &self,
        ids: impl IntoIterator<Item = i64>,
    ) -> Result<BTreeMap<i64, Timestamp>, StoreError> {
        let now = wall_now();
        let mut known = BTreeMap::new();
        let mut ask = Vec::new();
        {
            let cache = self.lock_foreign();
            for id in ids.into_iter().filter(|id| *id != 0) {
                if let Some(at) = lease_id::decode_plausible(id, now) {
                    known.insert(id, at);
                } else if let Some(at) = cache.get(&id).filter(|at| **at > now) {
                    known.insert(id, *at);
                } else {
                    ask.push(id);
                }
            }
        }
        ask.sort_unstable();
        ask.dedup();
        for id in ask {
            let resp = self
                .call_as(RtKind::TimeToLive, |mut c| async move {
                    c.lease_time_to_live(id, None).await
                })
                .await
                .map_err(|f| f.into_store(&format!("time to live of lease {id:x}")))?;
            // -1: the lease is gone; its keys go with it any moment.
            let left = Duration::from_secs(u64::try_from(resp.ttl()).unwrap_or(0));
            let at = now + left;
            let mut cache = self.lock_foreign();
            if cache.len() > 10_000 {
                cache.clear();
            }
            cache.insert(id, at);
            known.insert(id, at);
        }
        Ok(known)
    }

    fn lock_foreign(&self) -> std::sync::MutexGuard<'_, BTreeMap<i64, Timestamp>> {
        // Only inserts and clears happen under the lock: a poisoned map is still usable.
        self.inner
            .foreign
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Turns etcd key-values into entries, resolving their leases' expiries.
    pub(super) async fn entries(&self, kvs: &[KeyValue]) -> Result<Vec<Entry>, StoreError> {
        let expiries = self.expiries(kvs.iter().map(KeyValue::lease)).await?;
        let now = wall_now();
        Ok(kvs
            .iter()
            .map(|kv| decode::to_entry(&kv.into(), expiries.get(&kv.lease()).copied(), now))
            .collect())
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        self.get_entry(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        self.list_prefix(prefix).await
    }

    fn prepare_lease(&self, ttl: Duration) {
        if self.inner.prepare_ahead.load(Ordering::Relaxed) {
            self.prepare_spare(ttl);
        }
    }

    async fn create(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<Entry, StoreError> {
        self.create_entry(key, value, ttl).await
    }

    async fn renew(
        &self,
        key: &str,
        create_revision: Revision,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<Entry, StoreError> {
        self.renew_entry(key, create_revision, value, ttl).await
    }

    async fn put(&self, key: &str, value: &[u8]) -> Result<Entry, StoreError> {
        self.put_entry(key, value).await
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        self.delete_entry(key).await
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<Box<dyn Watch>, StoreError> {
        let watch = watch::EtcdWatch::open(self.clone(), prefix, from).await?;
        Ok(Box::new(watch))
    }
}
