//! Watches on a real etcd that lose nothing: across a compaction (re-list and resume),
//! across etcd being killed and restarted (resume from the cursor), and for the peer
//! lease written one revision after our own, which flannel v0.20 never saw.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use weft_core::allocator::{AllocEvent, AllocatorConfig};
use weft_core::config::BackendType;
use weft_core::lease::LeaseAttrs;
use weft_core::node::{NodeConfig, NodeEvent};
use weft_core::router::RouteChange;
use weft_core::store::{Revision, Store, StoreError, Watch, WatchEvent};
use weft_core::NetworkConfig;
use weft_stores::testing::{etcd_or_skip, Etcd, NodeRunner};
use weft_stores::{EtcdOptions, EtcdStore};

const PATIENCE: Duration = Duration::from_secs(20);

async fn start(test: &str) -> Option<(Etcd, EtcdStore)> {
    let test = test.to_string();
    let etcd = tokio::task::spawn_blocking(move || etcd_or_skip(&test))
        .await
        .expect("etcd starter")?;
    let store = EtcdStore::connect(&etcd.endpoints(), &EtcdOptions::default())
        .await
        .expect("connect");
    Some((etcd, store))
}

/// What a watcher believes the keys under a prefix hold.
type Model = BTreeMap<String, Vec<u8>>;

fn apply(model: &mut Model, events: &[WatchEvent]) {
    for event in events {
        match event {
            WatchEvent::Put(e) => model.insert(e.key.clone(), e.value.clone()),
            WatchEvent::Delete { key, .. } => model.remove(key),
        };
    }
}

async fn truth(store: &EtcdStore, prefix: &str) -> Model {
    let listing = store.list(prefix).await.expect("list");
    listing
        .entries
        .into_iter()
        .map(|e| (e.key, e.value))
        .collect()
}

async fn next(w: &mut Box<dyn Watch>) -> Result<Vec<WatchEvent>, StoreError> {
    tokio::time::timeout(PATIENCE, w.next())
        .await
        .expect("the watch answers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_mid_watch_loses_no_event() {
    let Some((_etcd, store)) = start("compaction_mid_watch_loses_no_event").await else {
        return;
    };
    let p = "/coreos.com/network/subnets/";
    let start = store.list(p).await.expect("list").revision;
    let mut model = Model::new();
    let mut w = store.watch(p, start + 1).await.expect("watch");
    for i in 0..100 {
        store.put(&format!("{p}{i:03}"), b"a").await.expect("put");
    }
    let mut seen = 0;
    let mut cursor: Revision = start + 1;
    while seen < 30 {
        let batch = next(&mut w).await.expect("events");
        seen += batch.len();
        cursor = batch.last().expect("non-empty").revision() + 1;
        apply(&mut model, &batch);
    }
    // The watcher goes away (a disconnect); meanwhile keys change and etcd compacts
    // past its cursor.
    drop(w);
    for i in 100..150 {
        store.put(&format!("{p}{i:03}"), b"b").await.expect("put");
    }
    for i in 0..10 {
        assert!(store.delete(&format!("{p}{i:03}")).await.expect("delete"));
    }
    let now = store.list(p).await.expect("list").revision;
    store.compact(now).await.expect("compact");

    let mut w = store.watch(p, cursor).await.expect("resume");
    match next(&mut w).await {
        Err(StoreError::Compacted {
            requested,
            compact_revision,
        }) => {
            assert_eq!(requested, cursor);
            assert_eq!(compact_revision, now);
        }
        other => panic!("resuming below the compaction gave {other:?}"),
    }
    // What the node does: re-list, and watch from the listing's revision + 1.
    let listing = store.list(p).await.expect("re-list");
    model = listing
        .entries
        .iter()
        .map(|e| (e.key.clone(), e.value.clone()))
        .collect();
    let mut w = store.watch(p, listing.revision + 1).await.expect("watch");
    for i in 150..170 {
        store.put(&format!("{p}{i:03}"), b"c").await.expect("put");
    }
    let mut seen = 0;
    while seen < 20 {
        let batch = next(&mut w).await.expect("events");
        seen += batch.len();
        apply(&mut model, &batch);
    }
    assert_eq!(seen, 20);
    assert_eq!(model, truth(&store, p).await);
    assert_eq!(model.len(), 160);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_across_kill_9_of_etcd_with_every_event_once() {
    let Some((mut etcd, store)) = start("a_watch_resumes_across_kill_9").await else {
        return;
    };
    let p = "/w/";
    let start = store.list(p).await.expect("list").revision;
    let watcher = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut events = Vec::new();
            let mut cursor = start + 1;
            let mut errors = 0;
            while events.len() < 40 {
                let mut w = match store.watch(p, cursor).await {
                    Ok(w) => w,
                    Err(e) => {
                        assert!(e.is_transient(), "{e}");
                        errors += 1;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                loop {
                    match next(&mut w).await {
                        Ok(batch) => {
                            cursor = batch.last().expect("non-empty").revision() + 1;
                            events.extend(batch);
                        }
                        Err(e) => {
                            assert!(e.is_transient(), "{e}");
                            errors += 1;
                            break;
                        }
                    }
                    if events.len() >= 40 {
                        break;
                    }
                }
                assert!(errors < 200, "the watch never came back");
            }
            events
        })
    };
    for i in 0..20 {
        store.put(&format!("{p}{i:02}"), b"v").await.expect("put");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::task::block_in_place(|| {
        etcd.kill(0);
        std::thread::sleep(Duration::from_millis(500));
        etcd.restart(0).expect("restart etcd");
    });
    for i in 20..40 {
        store.put(&format!("{p}{i:02}"), b"v").await.expect("put");
    }
    let events = tokio::time::timeout(PATIENCE, watcher)
        .await
        .expect("watcher done")
        .expect("watcher task");
    let keys: Vec<String> = events.iter().map(|e| e.key().to_string()).collect();
    let want: Vec<String> = (0..40).map(|i| format!("{p}{i:02}")).collect();
    assert_eq!(keys, want);
    assert!(events.windows(2).all(|w| w[0].revision() < w[1].revision()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_lease_one_revision_after_our_own_is_routed() {
    let Some((_etcd, store)) = start("a_peer_lease_one_revision_after_our_own").await else {
        return;
    };
    let config = NetworkConfig::parse(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"alloc"}}"#)
        .expect("config");
    let space = config.ipv4_space().expect("v4");
    let alloc = AllocatorConfig::new(space, Ipv4Addr::new(192, 0, 2, 1), BackendType::Alloc);
    let node_config = NodeConfig {
        prefix: "/coreos.com/network".to_string(),
        alloc,
    };
    let shared: Arc<dyn Store> = Arc::new(store.clone());
    let mut node = NodeRunner::spawn(shared, node_config, 7);
    let acquired = node
        .wait_for(PATIENCE, |e| {
            matches!(e, NodeEvent::Lease(AllocEvent::Acquired { .. }))
        })
        .await
        .expect("our lease");
    let NodeEvent::Lease(AllocEvent::Acquired { lease, .. }) = acquired else {
        unreachable!()
    };
    let peer_subnet = if lease.key.to_string() == "10.5.200.0-24" {
        "10.5.201.0-24"
    } else {
        "10.5.200.0-24"
    };
    let peer = store
        .put(
            &format!("/coreos.com/network/subnets/{peer_subnet}"),
            &LeaseAttrs::new(Ipv4Addr::new(192, 0, 2, 2), BackendType::Alloc).encode(),
        )
        .await
        .expect("peer lease");
    assert_eq!(peer.mod_revision, lease.mod_revision + 1);
    let routed = node
        .wait_for(PATIENCE, |e| {
            matches!(e, NodeEvent::Route(RouteChange::Add(r)) if r.public_ip.to_string() == "192.0.2.2")
        })
        .await;
    assert!(
        routed.is_some(),
        "the peer one revision after us was never seen"
    );
    let node = node.stop().await;
    assert_eq!(node.leases().len(), 2);
}

/// How many watchers etcd member 0 serves, from its Prometheus metrics.
fn watchers(etcd: &Etcd) -> u64 {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(etcd.endpoint(0)).expect("metrics connection");
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .expect("metrics request");
    let mut text = String::new();
    conn.read_to_string(&mut text).expect("metrics answer");
    text.lines()
        .find_map(|l| l.strip_prefix("etcd_debugging_mvcc_watcher_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .expect("etcd reports etcd_debugging_mvcc_watcher_total")
}

/// The daemon's driver, stepped one input at a time against a real etcd: the node's
/// first watch is opened only once the node has its lease. The simulator shows the same
/// (`sim/src/engine/check.rs`, `the_first_watch_waits_for_the_lease`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_watch_is_opened_only_once_the_lease_is_reported() {
    let Some((etcd, store)) = start("the_first_watch_is_opened_only_once_the_lease").await else {
        return;
    };
    let config = NetworkConfig::parse(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"alloc"}}"#)
        .expect("config");
    let node_config = NodeConfig::for_network(
        "/coreos.com/network",
        &config,
        Ipv4Addr::new(192, 0, 2, 1),
        None,
    )
    .expect("node config");
    let node = weft_core::node::Node::new(node_config, 7, weft_stores::clock::wall_now());
    let mut driver = weft_stores::NodeDriver::new(Arc::new(store), node);
    let before = watchers(&etcd);
    let mut steps = 0;
    while driver.node().lease().is_none() {
        assert!(
            !driver.node().is_watching(),
            "a watch was asked for before the lease"
        );
        tokio::time::timeout(PATIENCE, driver.step())
            .await
            .expect("the node makes progress");
        steps += 1;
        assert!(steps < 10, "no lease after {steps} store answers");
        if driver.node().lease().is_none() {
            assert_eq!(
                watchers(&etcd),
                before,
                "etcd serves a watch before the lease"
            );
        }
    }
    // The watch was asked for with the lease and is open at etcd soon after.
    assert!(driver.node().is_watching());
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while watchers(&etcd) == before {
        assert!(tokio::time::Instant::now() < deadline, "no watch opened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
