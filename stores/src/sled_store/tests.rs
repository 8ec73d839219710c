//! Tests of the sled backend that need its insides or a manual clock; the contract itself
//! is checked by the conformance suite in `tests/conformance_sled.rs`.

use std::time::Duration;

use weft_core::store::{Store, StoreError, WatchEvent};
use weft_core::Timestamp;

use super::*;
use crate::clock::ManualClock;

const MIN: Duration = Duration::from_secs(60);

fn manual(dir: &Path, start: u64) -> (SledStore, ManualClock) {
    let (clock, hand) = Clock::manual(Timestamp::from_millis(start));
    (SledStore::open(dir, clock).expect("open"), hand)
}

async fn all_events(store: &SledStore, from: Revision) -> Vec<WatchEvent> {
    let mut w = store.watch("", from).await.expect("watch");
    tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .expect("events in time")
        .expect("events")
}

#[tokio::test]
async fn reopen_keeps_entries_revision_and_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = manual(dir.path(), 1_000);
    let a = store.create("/a", b"1", Some(MIN)).await.expect("create");
    store.put("/b", b"2").await.expect("put");
    assert!(store.delete("/b").await.expect("delete"));
    let before = store.list("").await.expect("list");
    drop(store);

    let (store, _) = manual(dir.path(), 2_000);
    assert_eq!(store.list("").await.expect("list"), before);
    assert_eq!(store.revision().expect("revision"), 3);
    let events = all_events(&store, 1).await;
    assert_eq!(events.len(), 3);
    assert_eq!(events[0], WatchEvent::Put(a));
    let next = store.put("/c", b"3").await.expect("put after reopen");
    assert_eq!(next.mod_revision, 4);
}

#[tokio::test]
async fn entries_that_expired_while_closed_are_deleted_once_on_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = manual(dir.path(), 0);
    store.create("/b", b"", Some(MIN)).await.expect("create b");
    store.create("/a", b"", Some(MIN)).await.expect("create a");
    store
        .create("/c", b"", Some(MIN / 2))
        .await
        .expect("create c");
    store.put("/r", b"").await.expect("reservation");
    drop(store);

    let (store, _) = manual(dir.path(), 3_600_000);
    let listing = store.list("").await.expect("list");
    let keys: Vec<_> = listing.entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["/r"]);
    let deletes: Vec<_> = all_events(&store, 5)
        .await
        .iter()
        .map(|e| (e.key().to_string(), e.revision()))
        .collect();
    let want = [("/c", 5), ("/a", 6), ("/b", 7)].map(|(k, r)| (k.to_string(), r));
    assert_eq!(deletes, want);
    drop(store);

    // Reopening again finds nothing more to expire.
    let (store, _) = manual(dir.path(), 7_200_000);
    assert_eq!(store.list("").await.expect("list").revision, 7);
}

#[tokio::test]
async fn a_watch_wakes_when_the_clock_reaches_an_expiry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, hand) = manual(dir.path(), 0);
    let e = store.create("/l", b"", Some(MIN)).await.expect("create");
    let mut w = store.watch("/", e.mod_revision + 1).await.expect("watch");
    let waiter = tokio::spawn(async move { w.next().await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiter.is_finished());
    hand.advance(MIN);
    let events = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("woken in time")
        .expect("task")
        .expect("events");
    assert_eq!(
        events,
        [WatchEvent::Delete {
            key: "/l".to_string(),
            revision: 2
        }]
    );
}

#[tokio::test]
async fn history_is_bounded_and_compaction_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = manual(dir.path(), 0);
    store.set_history_limit(3);
    for i in 0..10 {
        store.put(&format!("/k/{i}"), b"v").await.expect("put");
    }
    assert_eq!(store.compact_revision().expect("compact revision"), 8);
    assert_eq!(store.inner.trees.events.len(), 3);
    drop(store);

    let (store, _) = manual(dir.path(), 0);
    let mut w = store.watch("/k/", 7).await.expect("watch");
    assert_eq!(
        w.next().await,
        Err(StoreError::Compacted {
            requested: 7,
            compact_revision: 8
        })
    );
    let revs: Vec<_> = all_events(&store, 8)
        .await
        .iter()
        .map(WatchEvent::revision)
        .collect();
    assert_eq!(revs, [8, 9, 10]);
    assert!(matches!(
        store.compact(12).await,
        Err(StoreError::Invalid(_))
    ));
    store.compact(10).await.expect("compact");
    assert_eq!(store.inner.trees.events.len(), 1);
}

#[tokio::test]
async fn corrupt_records_are_errors_for_their_key_and_skipped_by_list() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = manual(dir.path(), 0);
    store.put("/n/good", b"ok").await.expect("put");
    store.put("/n/bad", b"ok").await.expect("put");
    // Damage one record behind the store's back, as a disk or a bug might.
    store
        .inner
        .trees
        .entries
        .insert("/n/bad", &b"\x01garbage"[..])
        .expect("insert garbage");

    let listing = store.list("/n/").await.expect("list");
    let keys: Vec<_> = listing.entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["/n/good"]);
    let err = store.get("/n/bad").await.expect_err("corrupt get");
    assert!(
        matches!(&err, StoreError::Backend(m) if m.contains("/n/bad")),
        "{err}"
    );
    let err = store
        .renew("/n/bad", 2, b"", None)
        .await
        .expect_err("corrupt renew");
    assert!(matches!(err, StoreError::Backend(_)), "{err}");
    // An unconditional write or a delete repairs the key.
    let fixed = store.put("/n/bad", b"new").await.expect("put over garbage");
    assert_eq!(store.get("/n/bad").await.expect("get"), Some(fixed));
    assert!(store.delete("/n/bad").await.expect("delete"));
}

#[test]
fn a_second_open_in_this_process_is_locked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(dir.path(), Clock::Wall).expect("open");
    let started = std::time::Instant::now();
    let err = SledStore::open(dir.path(), Clock::Wall).expect_err("second open");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(err, StoreError::Locked(dir.path().display().to_string()));
    drop(store);
    SledStore::open(dir.path(), Clock::Wall).expect("open after the first is dropped");
}

/// One damaged record in the event log must not wedge every watch that reaches it: a
/// watch from before it gets the events before it, then `Compacted` (the node re-lists,
/// which reads the entries themselves, and resumes after the listing), never an error
/// that a retry from the same revision meets again forever.
#[tokio::test]
async fn an_undecodable_event_makes_watchers_re_list_instead_of_failing_forever() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = manual(dir.path(), 0);
    let a = store.put("/w/a", b"1").await.expect("put a");
    store.put("/w/b", b"2").await.expect("put b");
    store.put("/w/c", b"3").await.expect("put c");
    // Damage the event of revision 2 behind the store's back, as a disk or a bug might.
    store
        .inner
        .trees
        .events
        .insert(&encode_u64(2)[..], &b"\x01garbage"[..])
        .expect("insert garbage");

    let next = |mut w: Box<dyn Watch>| async move {
        let r = tokio::time::timeout(Duration::from_secs(5), w.next())
            .await
            .expect("an answer in time");
        (w, r)
    };
    let w = store.watch("/w/", 1).await.expect("watch");
    let (w, first) = next(w).await;
    assert_eq!(first, Ok(vec![WatchEvent::Put(a)]));
    let (_, second) = next(w).await;
    assert_eq!(
        second,
        Err(StoreError::Compacted {
            requested: 2,
            compact_revision: 3
        })
    );
    // A watch retried from the damaged revision is told the same: re-list.
    let (_, retried) = next(store.watch("/w/", 2).await.expect("watch")).await;
    assert!(
        matches!(retried, Err(StoreError::Compacted { .. })),
        "{retried:?}"
    );

    // What the node does then: list, and watch from after the listing; it goes on
    // seeing changes.
    let listing = store.list("/w/").await.expect("list");
    assert_eq!(listing.entries.len(), 3);
    assert_eq!(listing.revision, 3);
    let d = store.put("/w/d", b"4").await.expect("put d");
    let w = store
        .watch("/w/", listing.revision + 1)
        .await
        .expect("watch");
    let (_, after) = next(w).await;
    assert_eq!(after, Ok(vec![WatchEvent::Put(d)]));
}

/// What a snapshot interrupted half way leaves (the disk full at a start, as the chaos
/// test found, or a kill -9): an empty `snap.<lsn>.generating`, newer than the complete
/// snapshot. sled 0.34 alone then refuses the database as corrupt.
#[tokio::test]
async fn an_unfinished_snapshot_file_is_removed_and_the_store_opens_intact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = manual(dir.path(), 1_000);
    store.create("/a", b"1", Some(MIN)).await.expect("create");
    store.put("/b", b"2").await.expect("put");
    let before = store.list("").await.expect("list");
    drop(store);
    let unfinished = dir
        .path()
        .join(DB_DIR)
        .join("snap.FFFFFFFFFFFFFFFF.generating");
    std::fs::write(&unfinished, b"").expect("write");

    let (store, _) = manual(dir.path(), 2_000);
    assert_eq!(store.list("").await.expect("list"), before);
    assert!(!unfinished.exists());
    store.put("/c", b"3").await.expect("put after reopen");
}
