//! The store operations on etcd: reads, the create and renew transactions, and the
//! lease bookkeeping that keeps renewals from leaking etcd leases.

use std::sync::atomic::Ordering;
use std::time::Duration;

use etcd_client::{
    CompactionOptions, Compare, CompareOp, DeleteOptions, GetOptions, LeaseGrantOptions,
    LeaseTimeToLiveOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
};
use weft_core::store::{Entry, Listing, Revision, StoreError};
use weft_core::Timestamp;

use super::error::{is_lease_exists, is_lease_not_found};
use super::{lease_id, revision, EtcdStore, Failure, RtKind, Spare, Stashed};
use crate::clock::wall_now;
use weft_core::store::validate::{check_key, check_ttl};

/// Keys per page of a listing: well under etcd's and gRPC's message size limits.
const PAGE: i64 = 1_000;
/// How long the listing a lost create fetched stands in for the next listing of its
/// prefix: the node lists again at once, so this only bounds how stale it may be. Any
/// write through this store drops it first; another client's write in that window is
/// missing from it, as from a listing whose answer took that long.
pub(super) const STASH_FRESH: Duration = Duration::from_secs(1);
/// Grants retried after an ID collision before giving up.
const GRANT_ATTEMPTS: u32 = 8;
/// How much longer than asked a spare lease is granted: it may be used this long after
/// its grant and still last the whole TTL. A lease weft writes so lasts at most this
/// (and a second of rounding) longer than its TTL.
const SPARE_SLACK: Duration = Duration::from_secs(5);

/// The first key after every key starting with `prefix` (etcd's range end).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // every key
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Revision {
    header.map_or(0, |h| revision(h.revision()))
}

impl EtcdStore {
    pub(super) async fn get_entry(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        check_key(key)?;
        let k = key.as_bytes().to_vec();
        let resp = self
            .call_as(RtKind::Range, |mut c| {
                let k = k.clone();
                async move { c.get(k, None).await }
            })
            .await
            .map_err(|f| f.into_store(&format!("get {key}")))?;
        Ok(self.entries(resp.kvs()).await?.pop())
    }

    /// Lists page by page, every page at the revision of the first, so that the listing
    /// is one consistent snapshot however large.
    pub(super) async fn list_prefix(&self, prefix: &str) -> Result<Listing, StoreError> {
        if let Some(listing) = self.take_stashed(prefix) {
            return Ok(listing);
        }
        self.list_pages(prefix, None).await
    }

    /// The listing a lost create left for `prefix`, if it is still fresh; any other
    /// listing left is dropped (it is used once, and only at once).
    fn take_stashed(&self, prefix: &str) -> Option<Listing> {
        let stashed = self
            .inner
            .stashed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()?;
        (stashed.prefix == prefix && stashed.at.elapsed() < STASH_FRESH).then_some(stashed.listing)
    }

    fn stash(&self, stashed: Option<Stashed>) {
        *self
            .inner
            .stashed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = stashed;
    }

    /// Lists `prefix` page by page; `first`: its first page and the revision it was read
    /// at, when a transaction already fetched it.
    async fn list_pages(
        &self,
        prefix: &str,
        mut first: Option<(etcd_client::GetResponse, i64)>,
    ) -> Result<Listing, StoreError> {
        let what = || format!("list {prefix}");
        let (start, end) = if prefix.is_empty() {
            (vec![0], vec![0])
        } else {
            (prefix.as_bytes().to_vec(), prefix_end(prefix.as_bytes()))
        };
        let mut from = start;
        let mut at: i64 = first.as_ref().map_or(0, |(_, at)| *at);
        let mut entries = Vec::new();
        loop {
            let mut opts = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            if at != 0 {
                opts = opts.with_revision(at);
            }
            let resp = match first.take() {
                Some((page, _)) => page,
                None => self
                    .call_as(RtKind::Range, |mut c| {
                        let (from, opts) = (from.clone(), opts.clone());
                        async move { c.get(from, Some(opts)).await }
                    })
                    .await
                    .map_err(|f| f.into_store(&what()))?,
            };
            if at == 0 {
                at = resp.header().map_or(0, |h| h.revision());
            }
            entries.extend(self.entries(resp.kvs()).await?);
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
        Ok(Listing {
            entries,
            revision: revision(at),
        })
    }

    /// Grants a lease of at least `ttl` (whole seconds, rounded up, at least the
    /// server's minimum) whose ID records its expiry. Returns the ID and that expiry.
    ///
    /// The ID holds the expiry in whole seconds, rounded down, and etcd counts the TTL
    /// from when it receives the grant. So etcd is asked for one second more than the
    /// TTL and the ID records that later expiry, rounded down: it is then past the TTL
    /// asked for, counted from before the request, and not past etcd's own.
    async fn grant(&self, ttl: Duration) -> Result<(i64, Timestamp), StoreError> {
        let asked = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let mut secs = asked.max(self.inner.min_ttl.load(Ordering::Relaxed));
        for _ in 0..GRANT_ATTEMPTS {
            let granted = secs + 1;
            let expires = wall_now() + Duration::from_secs(granted);
            let id = lease_id::encode(expires, rand::random()).ok_or_else(|| {
                StoreError::Invalid(format!("a TTL of {secs} s expires out of range"))
            })?;
            let ttl_arg = i64::try_from(granted).unwrap_or(i64::MAX);
            let result = self
                .call_as(RtKind::Grant, |mut c| async move {
                    let opts = LeaseGrantOptions::new().with_id(id);
                    c.lease_grant(ttl_arg, Some(opts)).await
                })
                .await;
            match result {
                Ok(resp) if u64::try_from(resp.ttl()).unwrap_or(0) > granted => {
                    // Below the server's minimum: the ID would record too early an
                    // expiry. Learn the minimum and grant again.
                    secs = u64::try_from(resp.ttl()).unwrap_or(secs);
                    self.inner.min_ttl.fetch_max(secs, Ordering::Relaxed);
                    self.revoke_quietly(id).await;
                }
                Ok(_) => {
                    let at = lease_id::decode(id).unwrap_or(expires);
                    return Ok((id, at));
                }
                Err(Failure::Etcd(e)) if is_lease_exists(&e) => {}
                Err(f) => return Err(f.into_store(&format!("grant a lease of {secs} s"))),
            }
        }
        Err(StoreError::Backend(format!(
            "could not grant a lease with a fresh ID in {GRANT_ATTEMPTS} attempts"
        )))
    }

    /// Starts granting a spare lease for writes of `ttl` in the background, unless one
    /// is there (or on its way) already; one for another TTL is given back. The grant
    /// asks for [`SPARE_SLACK`] more than `ttl`, so that the spare still lasts a whole
    /// `ttl` when the write comes a little later (see [`EtcdStore::take_spare`]).
    pub(super) fn prepare_spare(&self, ttl: Duration) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut spare = self.lock_spare();
        let other = match &*spare {
            Some(Spare::Granting { ttl: t, .. } | Spare::Ready { ttl: t, .. }) if *t == ttl => {
                return
            }
            _ => spare.take(),
        };
        self.give_back(other);
        self.inner.prepared_grants.fetch_add(1, Ordering::Relaxed);
        let store = self.clone();
        let task = runtime.spawn(async move { store.grant(ttl + SPARE_SLACK).await });
        *spare = Some(Spare::Granting { ttl, task });
    }

    fn lock_spare(&self) -> std::sync::MutexGuard<'_, Option<Spare>> {
        // Only whole values are put under the lock: a poisoned slot is still usable.
        self.inner
            .spare
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Revokes a spare in the background, once granted.
    fn give_back(&self, spare: Option<Spare>) {
        match spare {
            Some(Spare::Ready { id, .. }) => self.revoke_later(id),
            Some(Spare::Granting { task, .. }) => {
                let store = self.clone();
                tokio::spawn(async move {
                    if let Ok(Ok((id, _))) = task.await {
                        store.revoke_quietly(id).await;
                    }
                });
            }
            None => {}
        }
    }

    /// The spare lease for a write of `ttl`, waiting for its grant if need be, when it
    /// still expires at least `ttl` from now (else it is given back); `None` when there
    /// is none for `ttl`.
    async fn take_spare(&self, ttl: Duration) -> Option<(i64, Timestamp)> {
        let spare = {
            let mut slot = self.lock_spare();
            match &*slot {
                Some(Spare::Granting { ttl: t, .. } | Spare::Ready { ttl: t, .. }) if *t == ttl => {
                    slot.take()
                }
                _ => None,
            }
        }?;
        let (id, expires) = match spare {
            Spare::Ready { id, expires, .. } => (id, expires),
            Spare::Granting { task, .. } => task.await.ok()?.ok()?,
        };
        if expires >= wall_now() + ttl {
            Some((id, expires))
        } else {
            self.revoke_later(id);
            None
        }
    }

    /// Keeps the lease of a lost create race for the next write of `ttl`, if it lasts
    /// long enough and no spare is there already; else gives it back.
    fn keep_spare(&self, ttl: Duration, id: i64, expires: Timestamp) {
        let mut slot = self.lock_spare();
        if slot.is_none() && expires >= wall_now() + ttl {
            *slot = Some(Spare::Ready { ttl, id, expires });
        } else {
            drop(slot);
            self.revoke_later(id);
        }
    }

    /// Gives back a spare left when a write succeeded without it (a reservation
    /// written, a renewal without TTL), before the write returns: the node holds what it
    /// needs now, and nothing of it is left in etcd that its lease does not account for.
    async fn drop_spare(&self) {
        let spare = self.lock_spare().take();
        let id = match spare {
            Some(Spare::Ready { id, .. }) => id,
            Some(Spare::Granting { task, .. }) => match task.await {
                Ok(Ok((id, _))) => id,
                _ => return,
            },
            None => return,
        };
        self.revoke_quietly(id).await;
    }

    /// A lease for a write of `ttl`: the spare if there is one, else a new grant.
    async fn lease_for(&self, ttl: Duration) -> Result<(i64, Timestamp), StoreError> {
        match self.take_spare(ttl).await {
            Some(lease) => Ok(lease),
            None => self.grant(ttl).await,
        }
    }

    /// Revokes a lease, ignoring failures: it expires by itself anyway.
    async fn revoke_quietly(&self, id: i64) {
        let result = self
            .call_as(
                RtKind::Revoke,
                |mut c| async move { c.lease_revoke(id).await },
            )
            .await;
        match result {
            Ok(_) => {}
            Err(Failure::Etcd(e)) if is_lease_not_found(&e) => {}
            Err(f) => {
                let e = f.into_store(&format!("revoke lease {id:x}"));
                tracing::debug!(error = %e, "could not revoke a replaced lease; it will expire");
            }
        }
    }

    /// Revokes a lease weft grants no more, in the background: for a lost create race,
    /// where nothing waits on it.
    fn revoke_later(&self, id: i64) {
        let store = self.clone();
        tokio::spawn(async move { store.revoke_quietly(id).await });
    }

    /// Revokes the lease a key was moved off. weft's own leases hold one key each and go
    /// at once; another writer's (flannel's, on a node moving over) only once no key is
    /// left on it, so that nothing else attached to it is deleted. An ID is taken for
    /// weft's only if it decodes to a plausible expiry, as everywhere else: one in about
    /// 4,096 IDs etcd generates passes the check bits alone.
    async fn release_replaced(&self, old: i64, new: i64) {
        if old == 0 || old == new {
            return;
        }
        if lease_id::decode_plausible(old, wall_now()).is_none() {
            let opts = LeaseTimeToLiveOptions::new().with_keys();
            let keys = self
                .call_as(RtKind::TimeToLive, |mut c| {
                    let opts = opts.clone();
                    async move { c.lease_time_to_live(old, Some(opts)).await }
                })
                .await;
            if !keys.is_ok_and(|r| r.keys().is_empty() && r.ttl() > 0) {
                return;
            }
        }
        self.revoke_quietly(old).await;
    }

    pub(super) async fn create_entry(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<Entry, StoreError> {
        check_key(key)?;
        // A write of ours makes a listing a lost create left stale.
        self.stash(None);
        check_ttl(ttl)?;
        let lease = match ttl {
            Some(ttl) => Some(self.lease_for(ttl).await?),
            None => None,
        };
        let lease_id = lease.map_or(0, |(id, _)| id);
        let (k, v) = (key.as_bytes().to_vec(), value.to_vec());
        // A lost race lists the key's directory (the subnets prefix, for a lease) in the
        // same transaction: a joining node lists it again before its next choice (see
        // `Allocator::set_table_followed`), and that listing is then this one, with no
        // round trip of its own.
        let dir = key.rfind('/').map(|i| &key[..=i]).filter(|d| d.len() > 1);
        let else_list = dir.map(|d| {
            let opts = GetOptions::new()
                .with_range(prefix_end(d.as_bytes()))
                .with_limit(PAGE);
            TxnOp::get(d.as_bytes().to_vec(), Some(opts))
        });
        let txn = Txn::new()
            .when([Compare::version(k.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                k,
                v,
                Some(PutOptions::new().with_lease(lease_id)),
            )])
            .or_else(else_list.into_iter().collect::<Vec<_>>());
        let resp = match self
            .call_as(RtKind::Txn, |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await
        {
            Ok(resp) => resp,
            // It may have happened: the lease stays, so as not to delete our own key.
            Err(f) => return Err(f.into_store(&format!("create {key}"))),
        };
        if !resp.succeeded() {
            self.conflict();
            // The retry, with another key, needs a lease just the same.
            if let (Some(ttl), Some((id, expires))) = (ttl, lease) {
                self.keep_spare(ttl, id, expires);
            }
            let at = resp.header().map_or(0, |h| h.revision());
            let page = resp.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(page) => Some(page),
                _ => None,
            });
            // One page only (a directory of up to PAGE keys): a larger one is left to the
            // next listing, which may not come (a node whose watch runs draws again
            // from its table).
            if let (Some(dir), Some(page)) = (dir, page.filter(|p| !p.more())) {
                // Best effort: without it the next listing asks etcd itself.
                if let Ok(listing) = self.list_pages(dir, Some((page, at))).await {
                    self.stash(Some(Stashed {
                        prefix: dir.to_string(),
                        listing,
                        at: std::time::Instant::now(),
                    }));
                }
            }
            return Err(StoreError::AlreadyExists {
                key: key.to_string(),
            });
        }
        self.stash(None);
        self.drop_spare().await;
        let rev = header_revision(resp.header());
        Ok(Entry {
            key: key.to_string(),
            value: value.to_vec(),
            create_revision: rev,
            mod_revision: rev,
            expires_at: lease.map(|(_, at)| at),
        })
    }

    /// The lease `key` is on now, if the key is the incarnation `create_revision` and its
    /// lease has not run out. A lease past its expiry may still be there: etcd looks for
    /// expired leases only every half second and then revokes them through raft, and a
    /// renewal in that window must not revive it.
    async fn renewable_lease(
        &self,
        key: &str,
        create_revision: Revision,
    ) -> Result<i64, StoreError> {
        let k = key.as_bytes().to_vec();
        let resp = self
            .call_as(RtKind::Range, |mut c| {
                let k = k.clone();
                async move { c.get(k, None).await }
            })
            .await
            .map_err(|f| f.into_store(&format!("renew {key}")))?;
        // A refusal here is the stale renewal a failed comparison used to be: counted so.
        let not_found = || {
            self.conflict();
            StoreError::NotFound {
                key: key.to_string(),
            }
        };
        let kv = resp.kvs().first().ok_or_else(not_found)?;
        if revision(kv.create_revision()) != create_revision {
            self.conflict();
            return Err(StoreError::Conflict {
                key: key.to_string(),
                expected: create_revision,
                found: revision(kv.create_revision()),
            });
        }
        let lease = kv.lease();
        if lease != 0 {
            // As a listing would report it: a lease whose expiry cannot be had is due now.
            let expires_at = self.expiries([lease]).await?.get(&lease).copied();
            if expires_at.is_none_or(|at| at <= wall_now()) {
                return Err(not_found());
            }
        }
        Ok(lease)
    }

    /// Renews `key` if it is still the incarnation `create_revision` on a lease that has
    /// not run out (see [`EtcdStore::renewable_lease`]): a transaction on the create
    /// revision and on the lease that was checked, so that a lease changed in between is
    /// looked at again.
    pub(super) async fn renew_entry(
        &self,
        key: &str,
        create_revision: Revision,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<Entry, StoreError> {
        check_key(key)?;
        // A write of ours makes a listing a lost create left stale.
        self.stash(None);
        check_ttl(ttl)?;
        let mut granted: Option<(i64, Timestamp)> = None;
        let result = self
            .renew_attempts(key, create_revision, value, ttl, &mut granted)
            .await;
        if result.is_ok() {
            self.drop_spare().await;
        }
        if result.is_err() {
            if let Some((id, _)) = granted {
                self.revoke_later(id);
            }
        }
        result
    }

    async fn renew_attempts(
        &self,
        key: &str,
        create_revision: Revision,
        value: &[u8],
        ttl: Option<Duration>,
        granted: &mut Option<(i64, Timestamp)>,
    ) -> Result<Entry, StoreError> {
        const ATTEMPTS: u32 = 3;
        let k = key.as_bytes().to_vec();
        let expected = i64::try_from(create_revision).unwrap_or(i64::MAX);
        for _ in 0..ATTEMPTS {
            let old_lease = self.renewable_lease(key, create_revision).await?;
            if let (Some(ttl), None) = (ttl, *granted) {
                *granted = Some(self.lease_for(ttl).await?);
            }
            let lease_id = granted.map_or(0, |(id, _)| id);
            let put = PutOptions::new().with_lease(lease_id).with_prev_key();
            // etcd compares an absent key as create_revision 0: without the version
            // check a renewal claiming revision 0 would create the key, were it deleted
            // since it was read.
            let txn = Txn::new()
                .when([
                    Compare::create_revision(k.clone(), CompareOp::Equal, expected),
                    Compare::version(k.clone(), CompareOp::Greater, 0),
                    Compare::lease(k.clone(), CompareOp::Equal, old_lease),
                ])
                .and_then([TxnOp::put(k.clone(), value.to_vec(), Some(put))])
                .or_else([TxnOp::get(k.clone(), None)]);
            let resp = self
                .call_as(RtKind::Txn, |mut c| {
                    let txn = txn.clone();
                    async move { c.txn(txn).await }
                })
                .await
                .map_err(|f| f.into_store(&format!("renew {key}")))?;
            let first = resp.op_responses().into_iter().next();
            if !resp.succeeded() {
                self.conflict();
                let found = match first {
                    Some(TxnOpResponse::Get(get)) => {
                        get.kvs().first().map(|kv| kv.create_revision())
                    }
                    _ => None,
                };
                match found {
                    None => {
                        return Err(StoreError::NotFound {
                            key: key.to_string(),
                        })
                    }
                    // Our incarnation, moved to another lease in between: look again.
                    Some(found) if revision(found) == create_revision => continue,
                    Some(found) => {
                        return Err(StoreError::Conflict {
                            key: key.to_string(),
                            expected: create_revision,
                            found: revision(found),
                        })
                    }
                }
            }
            if let Some(TxnOpResponse::Put(put)) = first {
                if let Some(prev) = put.prev_key() {
                    self.release_replaced(prev.lease(), lease_id).await;
                }
            }
            return Ok(Entry {
                key: key.to_string(),
                value: value.to_vec(),
                create_revision,
                mod_revision: header_revision(resp.header()),
                expires_at: granted.map(|(_, at)| at),
            });
        }
        Err(StoreError::Backend(format!(
            "renew {key}: its lease changed under every one of {ATTEMPTS} attempts"
        )))
    }

    pub(super) async fn put_entry(&self, key: &str, value: &[u8]) -> Result<Entry, StoreError> {
        check_key(key)?;
        // A write of ours makes a listing a lost create left stale.
        self.stash(None);
        let (k, v) = (key.as_bytes().to_vec(), value.to_vec());
        let resp = self
            .call(|mut c| {
                let (k, v) = (k.clone(), v.clone());
                async move { c.put(k, v, Some(PutOptions::new().with_prev_key())).await }
            })
            .await
            .map_err(|f| f.into_store(&format!("put {key}")))?;
        let rev = header_revision(resp.header());
        let created = resp
            .prev_key()
            .map_or(rev, |p| revision(p.create_revision()));
        if let Some(prev) = resp.prev_key() {
            self.release_replaced(prev.lease(), 0).await;
        }
        Ok(Entry {
            key: key.to_string(),
            value: value.to_vec(),
            create_revision: created,
            mod_revision: rev,
            expires_at: None,
        })
    }

    pub(super) async fn delete_entry(&self, key: &str) -> Result<bool, StoreError> {
        check_key(key)?;
        // A write of ours makes a listing a lost create left stale.
        self.stash(None);
        let k = key.as_bytes().to_vec();
        let resp = self
            .call(|mut c| {
                let k = k.clone();
                async move {
                    c.delete(k, Some(DeleteOptions::new().with_prev_key()))
                        .await
                }
            })
            .await
            .map_err(|f| f.into_store(&format!("delete {key}")))?;
        for prev in resp.prev_kvs() {
            self.release_replaced(prev.lease(), 0).await;
        }
        Ok(resp.deleted() > 0)
    }

    /// Compacts etcd's history before `revision` (store-wide, as etcd does), waiting
    /// until it is done. A revision past the current one is [`StoreError::Invalid`].
    pub async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let rev = i64::try_from(revision).unwrap_or(i64::MAX);
        let result = self
            .call(|mut c| async move {
                c.compact(rev, Some(CompactionOptions::new().with_physical()))
                    .await
            })
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(Failure::Etcd(e)) if e.to_string().contains("has been compacted") => Ok(()),
            Err(f) => Err(f.into_store(&format!("compact at {revision}"))),
        }
    }

    /// The IDs of every live etcd lease in the cluster, whoever granted it.
    pub async fn live_leases(&self) -> Result<Vec<i64>, StoreError> {
        let resp = self
            .call(|mut c| async move { c.leases().await })
            .await
            .map_err(|f| f.into_store("list leases"))?;
        Ok(resp.leases().iter().map(|l| l.id()).collect())
    }

    /// The expiry etcd itself reports for the lease of `key` (remaining TTL from now,
    /// whole seconds), for tests that check the expiry weft computes.
    pub async fn server_expiry(&self, key: &str) -> Result<Option<Timestamp>, StoreError> {
        let k = key.as_bytes().to_vec();
        let resp = self
            .call_as(RtKind::Range, |mut c| {
                let k = k.clone();
                async move { c.get(k, None).await }
            })
            .await
            .map_err(|f| f.into_store(&format!("get {key}")))?;
        let Some(lease) = resp.kvs().first().map(|kv| kv.lease()).filter(|l| *l != 0) else {
            return Ok(None);
        };
        let now = wall_now();
        let ttl = self
            .call_as(RtKind::TimeToLive, |mut c| async move {
                c.lease_time_to_live(lease, None).await
            })
            .await
            .map_err(|f| f.into_store(&format!("time to live of lease {lease:x}")))?;
        let left = Duration::from_secs(u64::try_from(ttl.ttl()).unwrap_or(0));
        Ok(Some(now + left))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ID etcd generated for another writer can pass the check bits of weft's IDs by
    /// chance (about one in 4,096) while recording an expiry no weft lease could have.
    /// Taking it for weft's own, which holds one key, and revoking it when the key is
    /// renewed would delete every other key attached to it.
    #[cfg(feature = "testing")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_foreign_lease_that_looks_like_weft_s_is_not_revoked_under_other_keys() {
        use crate::testing::etcd_or_skip;
        use crate::EtcdOptions;
        use weft_core::store::Store;

        const NAME: &str = "a_foreign_lease_that_looks_like_weft_s_is_not_revoked";
        let Some(etcd) = tokio::task::spawn_blocking(|| etcd_or_skip(NAME))
            .await
            .expect("etcd starter")
        else {
            return;
        };
        // Passes weft's check bits, but records an expiry in 2021: not plausible.
        let foreign =
            lease_id::encode(Timestamp::from_millis(1_612_137_600_000), 77).expect("an ID");
        assert!(lease_id::decode(foreign).is_some());
        assert_eq!(lease_id::decode_plausible(foreign, wall_now()), None);

        let mut raw = etcd_client::Client::connect(etcd.endpoints(), None)
            .await
            .expect("connect");
        raw.lease_grant(300, Some(LeaseGrantOptions::new().with_id(foreign)))
            .await
            .expect("grant the foreign lease");
        let key = "/coreos.com/network/subnets/10.5.34.0-24";
        let other = "/elsewhere/attached-to-the-same-lease";
        for k in [key, other] {
            raw.put(k, "{}", Some(PutOptions::new().with_lease(foreign)))
                .await
                .expect("put on the foreign lease");
        }

        let store = EtcdStore::connect(&etcd.endpoints(), &EtcdOptions::default())
            .await
            .expect("connect");
        let entry = store.get(key).await.expect("get").expect("the key");
        store
            .renew(
                key,
                entry.create_revision,
                b"{}",
                Some(Duration::from_secs(600)),
            )
            .await
            .expect("renew moves the key onto a lease of its own");

        let left = raw.get(other, None).await.expect("get the other key");
        assert_eq!(left.kvs().len(), 1, "the other key went with the lease");
        let ttl = raw
            .lease_time_to_live(foreign, None)
            .await
            .expect("time to live");
        assert!(ttl.ttl() > 0, "the foreign lease was revoked");
    }

    #[test]
    fn prefix_end_is_the_first_key_past_the_prefix() {
        assert_eq!(prefix_end(b"/a/"), b"/a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}
