//! The conformance suite: the [`Store`] contract as executable checks, written once and
//! run against every backend.
//!
//! A backend's test file implements [`TestBackend`] (a fresh store, and a way to let time
//! pass in the store's time base) and calls [`conformance_tests!`](crate::conformance_tests)
//! with an async factory; the macro generates one `#[tokio::test]` per check, so a failure
//! names the broken rule. The checks use only the [`Store`] trait, plus the backend's
//! `compact`, so that the etcd backend can join with a few lines.
//!
//! Checks assume nothing about other keys or revisions in the store: each uses its own
//! key prefix, and asserts that revisions increase, never by how much, so that a shared
//! etcd can run them side by side. Time is read only to check what a store says about it
//! (an expiry no earlier than the TTL asked for): the backend's `advance` is the only
//! way it moves, and waits for expiry are for the `Delete` event, bounded by
//! [`TestBackend::patience`] in real time.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use weft_core::lease::{decode_all, LeaseAttrs};
use weft_core::store::{Entry, Revision, Store, StoreError, Watch, WatchEvent};
use weft_core::Timestamp;

use crate::clock::wall_now;

/// What the suite needs from a backend besides the [`Store`] trait.
#[async_trait]
pub trait TestBackend: Send + Sync + 'static {
    /// The store under test; every call returns a handle on the same store.
    fn store(&self) -> Arc<dyn Store>;

    /// Lets `d` pass in the store's time base: a manual clock moves, a real one sleeps.
    async fn advance(&self, d: Duration);

    /// The time now in the store's time base, as its expiries are given.
    fn now(&self) -> Timestamp;

    /// Drops the store's history before `revision`, as etcd's compaction does.
    async fn compact(&self, revision: Revision) -> Result<(), StoreError>;

    /// A TTL the backend honours precisely enough for a test, and short enough to wait
    /// out: anything for a manual clock, about a second for the wall clock, a few seconds
    /// for etcd, whose leases have a minimum TTL.
    fn short_ttl(&self) -> Duration;

    /// How long, in real time, to wait for something that should happen (an event, an
    /// expiry once its time has come) before failing.
    fn patience(&self) -> Duration {
        Duration::from_secs(10)
    }

    /// How long, in real time, a watch must stay silent to count as having no more events.
    fn quiet_period(&self) -> Duration {
        Duration::from_millis(200)
    }
}

/// Generates one `#[tokio::test]` per conformance check, each on a fresh backend from
/// `$make`, an async fn returning a [`TestBackend`]. With `, optional`, `$make` returns an
/// `Option` of one, and a check whose backend cannot be had (an etcd that cannot start,
/// outside CI) returns early; the factory says why.
#[macro_export]
macro_rules! conformance_tests {
    ($make:path) => {
        $crate::conformance_tests!(@list $make, required);
    };
    ($make:path, optional) => {
        $crate::conformance_tests!(@list $make, optional);
    };
    (@list $make:path, $mode:ident) => {
        $crate::conformance_tests!(@each $make, $mode;
            create_get_delete,
            concurrent_creators_one_winner,
            revisions_strictly_increase,
            put_creates_and_replaces,
            list_is_sorted_and_scoped,
            watch_sees_later_changes_once_in_order,
            watch_replays_history_from_any_revision,
            compacted_watch_resyncs_from_listing,
            ttl_expiry_deletes_with_an_event,
            ttl_runs_from_the_request,
            reservations_never_expire,
            renew_extends_ttl,
            renew_without_ttl_makes_a_reservation,
            renew_of_expired_lease_is_not_found,
            renew_after_the_ttl_before_the_deletion_is_not_found,
            renew_of_replaced_lease_is_conflict,
            malformed_values_are_listed_raw,
            invalid_requests_are_rejected,
        );
    };
    (@each $make:path, required; $($check:ident),+ $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let backend = $make().await;
                $crate::conformance::$check(&backend).await;
            }
        )+
    };
    (@each $make:path, optional; $($check:ident),+ $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let Some(backend) = $make(stringify!($check)).await else {
                    return;
                };
                $crate::conformance::$check(&backend).await;
            }
        )+
    };
}

/// A key prefix no other check, and no earlier run against a shared store, uses.
fn prefix(check: &str) -> String {
    format!(
        "/weft-conformance/{}-{}/{check}/",
        std::process::id(),
        wall_now().as_millis()
    )
}

fn long_ttl() -> Option<Duration> {
    Some(Duration::from_secs(3600))
}

/// The next batch of a watch, failing the test on an error or after `patience`.
async fn next_batch<B: TestBackend>(b: &B, w: &mut Box<dyn Watch>) -> Vec<WatchEvent> {
    let batch = tokio::time::timeout(b.patience(), w.next())
        .await
        .unwrap_or_else(|_| panic!("no watch event within {:?}", b.patience()))
        .expect("watch yields events");
    assert!(!batch.is_empty(), "a watch batch is never empty");
    batch
}

/// Exactly the next `n` events of a watch (batches may split anywhere), then silence.
async fn take_events<B: TestBackend>(b: &B, w: &mut Box<dyn Watch>, n: usize) -> Vec<WatchEvent> {
    let mut events = Vec::new();
    while events.len() < n {
        events.extend(next_batch(b, w).await);
    }
    assert_eq!(events.len(), n, "more events than expected: {events:#?}");
    assert_quiet(b, w).await;
    events
}

/// Fails if the watch yields anything within the quiet period.
async fn assert_quiet<B: TestBackend>(b: &B, w: &mut Box<dyn Watch>) {
    if let Ok(extra) = tokio::time::timeout(b.quiet_period(), w.next()).await {
        panic!("watch yielded more than expected: {extra:?}");
    }
}

/// Reads a watch until it yields the deletion of `key`, and returns its revision.
async fn wait_for_delete<B: TestBackend>(b: &B, w: &mut Box<dyn Watch>, key: &str) -> Revision {
    loop {
        for event in next_batch(b, w).await {
            if let WatchEvent::Delete { key: k, revision } = &event {
                if k == key {
                    return *revision;
                }
            }
        }
    }
}

/// A change a check made, as a watch should report it.
#[derive(Debug)]
enum Change {
    /// Exactly this event.
    Put(Entry),
    /// A deletion of `key`; its revision is known only to be at most `by` (the revision
    /// of a listing made right after it).
    Delete { key: String, by: Revision },
}

/// Checks that `events` are exactly `expected`, with strictly increasing revisions.
fn assert_changes(events: &[WatchEvent], expected: &[Change]) {
    assert_eq!(
        events.len(),
        expected.len(),
        "events {events:#?}\nexpected {expected:#?}"
    );
    let mut previous = 0;
    for (event, change) in events.iter().zip(expected) {
        match (event, change) {
            (WatchEvent::Put(got), Change::Put(want)) => assert_eq!(got, want),
            (WatchEvent::Delete { key, revision }, Change::Delete { key: k, by }) => {
                assert_eq!(key, k);
                assert!(revision <= by, "{event:?} after the listing at {by}");
            }
            _ => panic!("got {event:?} where {change:?} was expected"),
        }
        assert!(
            event.revision() > previous,
            "revisions out of order: {events:#?}"
        );
        previous = event.revision();
    }
}

/// create, get, AlreadyExists, delete, and a new incarnation after deletion.
pub async fn create_get_delete<B: TestBackend>(b: &B) {
    let s = b.store();
    let key = format!("{}a", prefix("create_get_delete"));
    assert_eq!(s.get(&key).await.expect("get"), None);

    let e = s.create(&key, b"v1", None).await.expect("create");
    assert_eq!(
        (e.key.as_str(), e.value.as_slice()),
        (key.as_str(), &b"v1"[..])
    );
    assert_eq!(e.create_revision, e.mod_revision);
    assert_eq!(e.expires_at, None);
    assert_eq!(s.get(&key).await.expect("get"), Some(e.clone()));

    let err = s
        .create(&key, b"v2", long_ttl())
        .await
        .expect_err("second create");
    assert_eq!(err, StoreError::AlreadyExists { key: key.clone() });
    assert_eq!(
        s.get(&key).await.expect("get").map(|e| e.value),
        Some(b"v1".to_vec())
    );

    assert!(s.delete(&key).await.expect("delete"));
    assert_eq!(s.get(&key).await.expect("get"), None);
    assert!(!s.delete(&key).await.expect("delete again"));

    let again = s
        .create(&key, b"v3", None)
        .await
        .expect("create after delete");
    assert!(again.create_revision > e.create_revision);
}

/// Of 16 concurrent creators of one key exactly one wins; the others get AlreadyExists.
pub async fn concurrent_creators_one_winner<B: TestBackend>(b: &B) {
    let key = format!("{}contended", prefix("concurrent_creators"));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16 {
        let (s, key) = (b.store(), key.clone());
        tasks.spawn(async move {
            let value = format!("node{i}");
            let result = s.create(&key, value.as_bytes(), long_ttl()).await;
            (i, result)
        });
    }
    let mut winners = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined.expect("creator task") {
            (i, Ok(entry)) => winners.push((i, entry)),
            (_, Err(StoreError::AlreadyExists { key: k })) => assert_eq!(k, key),
            (i, Err(e)) => panic!("creator {i} failed with {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    let (i, entry) = &winners[0];
    let stored = b
        .store()
        .get(&key)
        .await
        .expect("get")
        .expect("the winner's entry");
    assert_eq!(stored.value, format!("node{i}").into_bytes());
    assert_eq!(&stored, entry);
}

/// Every kind of change gets a larger revision than the one before; listings reflect it.
pub async fn revisions_strictly_increase<B: TestBackend>(b: &B) {
    let s = b.store();
    let p = prefix("revisions");
    let (ka, kb) = (format!("{p}a"), format!("{p}b"));
    let mut revs = Vec::new();
    let a = s.create(&ka, b"1", long_ttl()).await.expect("create a");
    revs.push(a.mod_revision);
    revs.push(s.put(&kb, b"1").await.expect("put b").mod_revision);
    let a2 = s
        .renew(&ka, a.create_revision, b"2", long_ttl())
        .await
        .expect("renew a");
    assert_eq!(a2.create_revision, a.create_revision);
    revs.push(a2.mod_revision);
    revs.push(s.put(&kb, b"2").await.expect("put b again").mod_revision);
    assert!(s.delete(&ka).await.expect("delete a"));
    let after_delete = s.list(&p).await.expect("list").revision;
    revs.push(after_delete);
    revs.push(
        s.create(&ka, b"3", None)
            .await
            .expect("recreate a")
            .mod_revision,
    );
    assert!(s.delete(&kb).await.expect("delete b"));
    revs.push(s.list(&p).await.expect("list").revision);
    assert!(
        revs.windows(2).all(|w| w[0] < w[1]),
        "revisions not strictly increasing: {revs:?}"
    );
}

/// put creates a reservation or replaces a value, keeping the incarnation.
pub async fn put_creates_and_replaces<B: TestBackend>(b: &B) {
    let s = b.store();
    let p = prefix("put");
    let k = format!("{p}config");
    let first = s.put(&k, b"one").await.expect("put new");
    assert_eq!(first.create_revision, first.mod_revision);
    assert_eq!(first.expires_at, None);
    let second = s.put(&k, b"two").await.expect("put again");
    assert_eq!(second.create_revision, first.create_revision);
    assert!(second.mod_revision > first.mod_revision);
    assert_eq!(s.get(&k).await.expect("get"), Some(second));

    let lease = format!("{p}lease");
    let created = s
        .create(&lease, b"l", long_ttl())
        .await
        .expect("create lease");
    assert!(created.expires_at.is_some());
    let reserved = s.put(&lease, b"r").await.expect("put over lease");
    assert_eq!(reserved.create_revision, created.create_revision);
    assert_eq!(reserved.expires_at, None, "put makes a reservation");
}

/// list returns exactly the keys under the prefix, sorted, and a revision to watch from.
pub async fn list_is_sorted_and_scoped<B: TestBackend>(b: &B) {
    let s = b.store();
    let p = prefix("list");
    let mut last = 0;
    for k in ["b", "a", "c/d"] {
        last = s
            .put(&format!("{p}{k}"), k.as_bytes())
            .await
            .expect("put")
            .mod_revision;
    }
    // Shares every character of the prefix but its final '/': must not be listed.
    s.put(&format!("{}-sibling/z", p.trim_end_matches('/')), b"z")
        .await
        .expect("put sibling");
    let listing = s.list(&p).await.expect("list");
    let keys: Vec<_> = listing.entries.iter().map(|e| e.key.clone()).collect();
    assert_eq!(keys, [format!("{p}a"), format!("{p}b"), format!("{p}c/d")]);
    assert!(listing.revision >= last);
    let empty = s.list(&format!("{p}nothing/")).await.expect("list empty");
    assert!(empty.entries.is_empty());
}

/// A watch yields every later change under its prefix exactly once, in order, including
/// changes made while it waits, and nothing from other prefixes.
pub async fn watch_sees_later_changes_once_in_order<B: TestBackend>(b: &B) {
    let s = b.store();
    let p = prefix("watch");
    let (ka, kb) = (format!("{p}a"), format!("{p}b"));
    let a = s.create(&ka, b"1", long_ttl()).await.expect("create a");
    let mut w = s.watch(&p, a.mod_revision + 1).await.expect("watch");

    // Made while the watch is waiting, by another task.
    let writer = {
        let (s, ka, kb, p) = (b.store(), ka.clone(), kb.clone(), p.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut expected = Vec::new();
            expected.push(Change::Put(s.put(&kb, b"1").await.expect("put b")));
            s.put(&format!("{}-other/x", p.trim_end_matches('/')), b"x")
                .await
                .expect("put elsewhere");
            let a2 = s
                .renew(&ka, a.create_revision, b"2", long_ttl())
                .await
                .expect("renew a");
            expected.push(Change::Put(a2));
            assert!(s.delete(&kb).await.expect("delete b"));
            let by = s.list(&p).await.expect("list").revision;
            expected.push(Change::Delete {
                key: kb.clone(),
                by,
            });
            expected.push(Change::Put(
                s.create(&kb, b"2", None).await.expect("recreate b"),
            ));
            expected
        })
    };
    let mut events = next_batch(b, &mut w).await;
    let expected = writer.await.expect("writer task");
    while events.len() < expected.len() {
        events.extend(next_batch(b, &mut w).await);
    }
    assert_changes(&events, &expected);
    assert_quiet(b, &mut w).await;
}

/// A watch from any past revision replays exactly the changes from there on.
pub async fn watch_replays_history_from_any_revision<B: TestBackend>(b: &B) {
    let s = b.store();
    let p = prefix("replay");
    let mut changes = Vec::new();
    for i in 0..4 {
        changes.push(Change::Put(
            s.put(&format!("{p}{i}"), b"v").await.expect("put"),
        ));
    }
    assert!(s.delete(&format!("{p}1")).await.expect("delete"));
    let by = s.list(&p).await.expect("list").revision;
    changes.push(Change::Delete {
        key: format!("{p}1"),
        by,
    });
    for i in 0..4 {
        let Change::Put(from) = &changes[i] else {
            unreachable!("the first four changes are puts")
        };
        let mut w = s.watch(&p, from.mod_revision).await.expect("watch");
        let events = take_events(b, &mut w, changes.len() - i).await;
        assert_changes(&events, &changes[i..]);
    }
}

/// A watch from before the compaction point fails with Compacted; re-listing and watching
/// from the listing's revision + 1 then sees every later change.
pub async fn compacted_watch_resyncs_from_listing<B: TestBackend>(b: &B) {
    let s = b.store();
    let p = prefix("compaction");
    let first = s.put(&format!("{p}1"), b"v").await.expect("put 1");
    s.put(&format!("{p}2"), b"v").await.expect("put 2");
    let third = s.put(&format!("{p}3"), b"v").await.expect("put 3");
    b.compact(third.mod_revision).await.expect("compact");

    let mut w = s.watch(&p, first.mod_revision).await.expect("watch");
    match tokio::time::timeout(b.patience(), w.next()).await {
        Ok(Err(StoreError::Compacted {
            requested,
            compact_revision,
        })) => {
            assert_eq!(requested, first.mod_revision);
            assert!(compact_revision > first.mod_revision);
        }
        other => panic!("watch from a compacted revision gave {other:?}"),
    }

    let listing = s.list(&p).await.expect("re-list");
    assert_eq!(listing.entries.len(), 3);
    let mut w = s
        .watch(&p, listing.revision + 1)
        .await
        .expect("watch again");
    let fourth = s.put(&format!("{p}4"), b"v").await.expect("put 4");
    let events = take_events(b, &mut w, 1).await;
    assert_eq!(events, [WatchEvent::Put(fourth)]);
}

/// A lease that is not renewed disappears from get and list, with a Delete event of its
/// own revision.
pub async fn ttl_expiry_deletes_with_an_event<B: TestBackend>(b: &B) {
    let s = b.store();
    let p = prefix("ttl");
    let key = format!("{p}lease");
    let ttl = b.short_ttl();
    let e = s.create(&key, b"v", Some(ttl)).await.expect("create");
    assert!(e.expires_at.is_some());
    let mut w = s.watch(&p, e.mod_revision + 1).await.expect("watch");
    b.advance(ttl + ttl / 2).await;
    let events = next_batch(b, &mut w).await;
    match events.as_slice() {
        [WatchEvent::Delete { key: k, revision }] => {
            assert_eq!(k, &key);
            assert!(*revision > e.mod_revision);
            assert_eq!(s.get(&key).await.expect("get"), None);
            let listing = s.list(&p).await.expect("list");
            assert!(listing.entries.is_empty());
            assert!(listing.revision >= *revision);
        }
        other => panic!("expected one Delete of {key}, got {other:?}"),
    }
    assert_quiet(b, &mut w).await;
}

/// Entries without a TTL (created so, or put) outlive every lease.
pub async fn reservations_never_expire<B: TestBackend>(b: &B) {
    let s = b.store();
    let p = prefix("reservations");
    let ttl = b.short_ttl();
    let created = s
        .create(&format!("{p}created"), b"r", None)
        .await
        .expect("create");
    let put = s.put(&format!("{p}put"), b"r").await.expect("put");
    let control = s
        .create(&format!("{p}control"), b"l", Some(ttl))
        .await
        .expect("control");
    let mut w = s.watch(&p, control.mod_revision + 1).await.expect("watch");
    b.advance(ttl * 2).await;
    // Once the control lease is gone, the reservations had every chance to go too.
    wait_for_delete(b, &mut w, &control.key).await;
    assert_eq!(s.get(&created.key).await.expect("get"), Some(created));
    assert_eq!(s.get(&put.key).await.expect("get"), Some(put));
    assert_eq!(s.list(&p).await.expect("list").entries.len(), 2);
}

/// A lease lives at least the TTL asked for, counted from when the request was made: an
/// expiry a store rounds must round later, never earlier, so that a renewal made at
/// once always finds the lease alive.
pub async fn ttl_runs_from_the_request<B: TestBackend>(b: &B) {
    let s = b.store();
    let p = prefix("ttl_from_request");
    let ttl = b.short_ttl();
    let key = format!("{p}lease");
    let before = b.now();
    let e = s.create(&key, b"v", Some(ttl)).await.expect("create");
    let expires_at = e.expires_at.expect("a lease with a TTL has an expiry");
    assert!(
        expires_at >= before + ttl,
        "created at {before:?} or later with a TTL of {ttl:?}, it expires at {expires_at:?}"
    );
    let before = b.now();
    let renewed = s
        .renew(&key, e.create_revision, b"v2", Some(ttl))
        .await
        .expect("a renewal at once finds the lease alive");
    let expires_at = renewed.expires_at.expect("a renewed lease has an expiry");
    assert!(
        expires_at >= before + ttl,
        "renewed at {before:?} or later with a TTL of {ttl:?}, it expires at {expires_at:?}"
    );
}

/// renew restarts the TTL from now, keeping the incarnation; the lease then expires on
/// the new schedule.
pub async fn renew_extends_ttl<B: TestBackend>(b: &B) {
    let s = b.store();
    let p = prefix("renew");
    let ttl = b.short_ttl();
    let key = format!("{p}lease");
    let e = s.create(&key, b"v1", Some(ttl)).await.expect("create");
    let control = s
        .create(&format!("{p}control"), b"c", Some(ttl))
        .await
        .expect("control");
    let renewed = s
        .renew(&key, e.create_revision, b"v2", Some(ttl * 4))
        .await
        .expect("renew");
    assert_eq!(renewed.create_revision, e.create_revision);
    assert!(renewed.mod_revision > control.mod_revision);
    assert_eq!(renewed.value, b"v2");
    assert!(renewed.expires_at > e.expires_at);

    let mut w = s.watch(&p, renewed.mod_revision + 1).await.expect("watch");
    b.advance(ttl * 2).await;
    wait_for_delete(b, &mut w, &control.key).await;
    assert_eq!(s.get(&key).await.expect("get"), Some(renewed));

    b.advance(ttl * 3).await;
    wait_for_delete(b, &mut w, &key).await;
    assert_eq!(s.get(&key).await.expect("get"), None);
}

/// renew without a TTL turns a lease into a reservation.
pub async fn renew_without_ttl_makes_a_reservation<B: TestBackend>(b: &B) {
    let s = b.store();
    let p = prefix("renew_reservation");
    let ttl = b.short_ttl();
    let e = s
        .create(&format!("{p}lease"), b"v", Some(ttl))
        .await
        .expect("create");
    let kept = s
        .renew(&e.key, e.create_revision, b"v", None)
        .await
        .expect("renew");
    assert_eq!(kept.expires_at, None);
    let control = s
        .create(&format!("{p}control"), b"c", Some(ttl))
        .await
        .expect("control");
    let mut w = s.watch(&p, control.mod_revision + 1).await.expect("watch");
    b.advance(ttl * 2).await;
    wait_for_delete(b, &mut w, &control.key).await;
    assert_eq!(s.get(&e.key).await.expect("get"), Some(kept));
}

/// An expired lease cannot be renewed: NotFound, and the key is free to create again.
pub async fn renew_of_expired_lease_is_not_found<B: TestBackend>(b: &B) {
    let s = b.store();
    let p = prefix("renew_expired");
    let ttl = b.short_ttl();
    let key = format!("{p}lease");
    let e = s.create(&key, b"v", Some(ttl)).await.expect("create");
    let mut w = s.watch(&p, e.mod_revision + 1).await.expect("watch");
    b.advance(ttl * 2).await;
    wait_for_delete(b, &mut w, &key).await;
    let err = s
        .renew(&key, e.create_revision, b"v", Some(ttl))
        .await
        .expect_err("renew of an expired lease");
    assert_eq!(err, StoreError::NotFound { key: key.clone() });
    let err = s
        .renew(&format!("{p}never"), 1, b"v", Some(ttl))
        .await
        .expect_err("renew of a key never created");
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    let again = s.create(&key, b"v", Some(ttl)).await.expect("create again");
    assert!(again.create_revision > e.create_revision);
}

/// A lease renewed once its TTL has run out, but before the store has got round to
/// deleting it (etcd looks for expired leases every half second, then revokes them
/// through raft), is not revived: NotFound, and it goes as if never renewed.
pub async fn renew_after_the_ttl_before_the_deletion_is_not_found<B: TestBackend>(b: &B) {
    let s = b.store();
    let p = prefix("renew_late");
    let ttl = b.short_ttl();
    let key = format!("{p}lease");
    let e = s.create(&key, b"v", Some(ttl)).await.expect("create");
    let mut w = s.watch(&p, e.mod_revision + 1).await.expect("watch");
    // Just past the expiry the store gave, and no longer: the deletion may well not
    // have happened yet.
    let expires_at = e.expires_at.expect("a lease with a TTL has an expiry");
    b.advance(expires_at.saturating_since(b.now()) + Duration::from_millis(1))
        .await;
    let renewed = s
        .renew(&key, e.create_revision, b"v2", Some(ttl * 30))
        .await;
    assert_eq!(
        renewed,
        Err(StoreError::NotFound { key: key.clone() }),
        "a renewal after the TTL ({:?} after a create that expires at {:?})",
        ttl,
        e.expires_at
    );
    wait_for_delete(b, &mut w, &key).await;
    assert_eq!(s.get(&key).await.expect("get"), None);
}

/// Renewing someone else's incarnation of the key fails with Conflict and changes nothing.
pub async fn renew_of_replaced_lease_is_conflict<B: TestBackend>(b: &B) {
    let s = b.store();
    let key = format!("{}lease", prefix("renew_conflict"));
    let mine = s.create(&key, b"mine", long_ttl()).await.expect("create");
    assert!(s.delete(&key).await.expect("delete"));
    let theirs = s
        .create(&key, b"theirs", long_ttl())
        .await
        .expect("create theirs");
    let err = s
        .renew(&key, mine.create_revision, b"mine", long_ttl())
        .await
        .expect_err("renew of a replaced lease");
    assert_eq!(
        err,
        StoreError::Conflict {
            key: key.clone(),
            expected: mine.create_revision,
            found: theirs.create_revision,
        }
    );
    assert_eq!(s.get(&key).await.expect("get"), Some(theirs));
}

/// Values are stored and listed byte for byte, malformed or not; decoding leases skips
/// the bad ones and keeps the good ones.
pub async fn malformed_values_are_listed_raw<B: TestBackend>(b: &B) {
    let s = b.store();
    let subnets = format!("{}subnets/", prefix("malformed"));
    let good = LeaseAttrs::new(
        Ipv4Addr::new(192, 0, 2, 2),
        weft_core::config::BackendType::Vxlan,
    )
    .encode();
    let writes: [(&str, &[u8]); 4] = [
        ("10.5.1.0-24", &good),
        ("10.5.2.0-24", b"not json"),
        ("10.5.3.0-24", b"\xff\xfe\x00"),
        ("not-a-subnet", &good),
    ];
    for (name, value) in writes {
        s.put(&format!("{subnets}{name}"), value)
            .await
            .expect("put");
    }
    let listing = s.list(&subnets).await.expect("list");
    let raw: Vec<_> = listing.entries.iter().map(|e| e.value.as_slice()).collect();
    let written: Vec<_> = writes.iter().map(|(_, v)| *v).collect();
    assert_eq!(raw, written);
    let (leases, skipped) = decode_all(&subnets, &listing.entries);
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0].attrs.public_ip, Ipv4Addr::new(192, 0, 2, 2));
    let skipped: Vec<_> = skipped.iter().map(|s| s.key.clone()).collect();
    assert_eq!(
        skipped,
        ["10.5.2.0-24", "10.5.3.0-24", "not-a-subnet"].map(|n| format!("{subnets}{n}"))
    );
}

/// An empty key or a TTL under a millisecond is Invalid, not a panic or a silent change.
pub async fn invalid_requests_are_rejected<B: TestBackend>(b: &B) {
    let s = b.store();
    let key = format!("{}k", prefix("invalid"));
    let invalid = |r: Result<Entry, StoreError>| matches!(r, Err(StoreError::Invalid(_)));
    assert!(invalid(s.create("", b"v", None).await));
    assert!(invalid(s.put("", b"v").await));
    assert!(invalid(s.create(&key, b"v", Some(Duration::ZERO)).await));
    assert_eq!(s.get(&key).await.expect("get"), None);
    let e = s.create(&key, b"v", long_ttl()).await.expect("create");
    assert!(invalid(
        s.renew(&key, e.create_revision, b"v", Some(Duration::ZERO))
            .await
    ));
    assert_eq!(s.get(&key).await.expect("get"), Some(e));
}
