//! A three-member etcd cluster losing a member (kill -9) under a store that names all
//! three: writes go on through the others, and a watch follows without a gap.

use std::time::{Duration, Instant};

use weft_core::store::{Store, WatchEvent};
use weft_stores::testing::{skip_unless, Etcd, EtcdConfig};
use weft_stores::{EtcdOptions, EtcdStore};

/// Writes `key`, retrying transient errors (an election in progress) for up to 10 s;
/// returns how many attempts failed.
async fn put_through(store: &EtcdStore, key: &str) -> usize {
    let started = Instant::now();
    let mut failures = 0;
    loop {
        match store.put(key, b"v").await {
            Ok(_) => return failures,
            Err(e) if e.is_transient() && started.elapsed() < Duration::from_secs(10) => {
                failures += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("put {key}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_one_member_of_three_stops_nothing() {
    let config = EtcdConfig {
        members: 3,
        ..EtcdConfig::default()
    };
    let started = tokio::task::spawn_blocking(move || Etcd::start_with(config))
        .await
        .expect("starter");
    let Some(mut etcd) = skip_unless("losing_one_member_of_three_stops_nothing", started) else {
        return;
    };
    let options = EtcdOptions {
        timeout: Duration::from_secs(3),
        ..EtcdOptions::default()
    };
    let store = EtcdStore::connect(&etcd.endpoints(), &options)
        .await
        .expect("connect");
    let p = "/failover/";
    let start = store.list(p).await.expect("list").revision;
    let mut w = store.watch(p, start + 1).await.expect("watch");
    for i in 0..20 {
        assert_eq!(put_through(&store, &format!("{p}{i:03}")).await, 0);
    }

    // Each member in turn goes away and comes back; the store names all three.
    let mut next = 20;
    for victim in 0..3 {
        tokio::task::block_in_place(|| etcd.kill(victim));
        let mut failures = 0;
        for _ in 0..20 {
            failures += put_through(&store, &format!("{p}{next:03}")).await;
            next += 1;
        }
        // Requests to the dead member are sent again to a live one; only an election
        // (when the leader died) may fail a few, for well under a second.
        assert!(
            failures <= 10,
            "{failures} failed puts with member {victim} down"
        );
        tokio::task::block_in_place(|| etcd.restart(victim)).expect("restart member");
    }

    let mut keys = Vec::new();
    while keys.len() < next {
        let batch = match tokio::time::timeout(Duration::from_secs(20), w.next()).await {
            Ok(Ok(batch)) => batch,
            // The member under the watch died: resume from the last revision seen.
            Ok(Err(e)) if e.is_transient() => {
                let from = keys.last().map_or(start + 1, |(_, r)| r + 1);
                w = store.watch(p, from).await.expect("resume the watch");
                continue;
            }
            other => panic!("watch: {other:?}"),
        };
        for event in batch {
            let WatchEvent::Put(e) = event else {
                panic!("no deletes here")
            };
            keys.push((e.key, e.mod_revision));
        }
    }
    let want: Vec<String> = (0..next).map(|i| format!("{p}{i:03}")).collect();
    let got: Vec<String> = keys.into_iter().map(|(k, _)| k).collect();
    assert_eq!(got, want);
}
