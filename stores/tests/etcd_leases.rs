//! The etcd backend's leases as etcd sees them: renewals leave no etcd lease behind,
//! expiries match the server's, reservations carry no lease, flannel's keys and leases
//! are read and taken over as flannel wrote them.

use std::time::Duration;

use weft_core::lease::LeaseAttrs;
use weft_core::store::{Store, StoreError};
use weft_stores::clock::wall_now;
use weft_stores::testing::{etcd_or_skip, Etcd};
use weft_stores::{EtcdOptions, EtcdStore};

const DAY: Duration = Duration::from_secs(24 * 3600);
const KEY: &str = "/coreos.com/network/subnets/10.5.34.0-24";
const OTHER: &str = "/coreos.com/network/subnets/10.5.35.0-24";

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

fn stdout(out: &std::process::Output) -> String {
    assert!(out.status.success(), "etcdctl failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_renewals_leave_exactly_one_etcd_lease() {
    let Some((_etcd, store)) = start("a_hundred_renewals_leave_exactly_one_etcd_lease").await
    else {
        return;
    };
    let value = LeaseAttrs::new(
        "192.0.2.1".parse().expect("ip"),
        weft_core::config::BackendType::Vxlan,
    )
    .encode();
    let mut entry = store.create(KEY, &value, Some(DAY)).await.expect("create");
    for _ in 0..100 {
        entry = store
            .renew(KEY, entry.create_revision, &value, Some(DAY))
            .await
            .expect("renew");
    }
    assert_eq!(store.live_leases().await.expect("leases").len(), 1);
    // A lost race and a stale renewal leave nothing behind either.
    assert!(matches!(
        store.create(KEY, &value, Some(DAY)).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    assert!(matches!(
        store.renew(KEY, 1, &value, Some(DAY)).await,
        Err(StoreError::Conflict { .. })
    ));
    // The stale renewal's lease is revoked in the background; the lost race's is kept
    // for the next write (see the test after this one).
    // In the background: wait for it (at most 5 s; 500 ms was too short with the other
    // tests of this file running beside it).
    let mut live = 0;
    for _ in 0..50 {
        live = store.live_leases().await.expect("leases").len();
        if live == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(live, 2);
    store
        .create(OTHER, &value, Some(DAY))
        .await
        .expect("create another");
    assert_eq!(store.live_leases().await.expect("leases").len(), 2);
    store.delete(OTHER).await.expect("delete it");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(store.live_leases().await.expect("leases").len(), 1);
    // Renewed without a TTL, it becomes a reservation: no lease at all.
    store
        .renew(KEY, entry.create_revision, &value, None)
        .await
        .expect("make it a reservation");
    assert_eq!(
        store.live_leases().await.expect("leases"),
        Vec::<i64>::new()
    );
    assert_eq!(store.stats().txn_conflicts, 2);
}

/// A node acquiring a lease lists first; the lease its create needs is granted beside
/// the listing (`Store::prepare_lease`), so that the create costs one round trip, its
/// txn. The prepared lease lasts the whole TTL from the create, is used once, survives
/// a lost race for the retry, and is given back when the store goes unused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_prepared_beside_the_listing_serves_one_create_and_a_lost_race_s_retry() {
    use weft_stores::RtKind;
    let Some((etcd, store)) = start("a_lease_prepared_beside_the_listing").await else {
        return;
    };
    let grants = |s: &EtcdStore| s.stats().by_kind[RtKind::Grant as usize];
    // Off by default (a prepared lease outlives its TTL by up to 5 s): asked for alone,
    // nothing is granted.
    store.prepare_lease(DAY);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(store.stats().prepared_grants, 0);
    store.set_prepare_ahead(true);
    store.prepare_lease(DAY);
    store.prepare_lease(DAY);
    store
        .list("/coreos.com/network/subnets/")
        .await
        .expect("list");
    let entry = store.create(KEY, b"{}", Some(DAY)).await.expect("create");
    let after = wall_now();
    assert_eq!(
        grants(&store),
        1,
        "one grant, prepared: {:?}",
        store.stats()
    );
    assert_eq!(store.stats().prepared_grants, 1);
    assert_eq!(store.stats().by_kind[RtKind::Txn as usize], 1);
    // A whole TTL from the create at least; the spare's slack (5 s) and a second of
    // rounding more at the most; etcd agrees within its whole seconds.
    let ours = entry.expires_at.expect("a lease expires");
    assert!(ours >= after + DAY, "{ours} before {}", after + DAY);
    let latest = after + DAY + Duration::from_secs(6);
    assert!(ours <= latest, "{ours} after {latest}");
    let server = store
        .server_expiry(KEY)
        .await
        .expect("ask etcd")
        .expect("a lease");
    assert!(
        ours.saturating_since(server) <= Duration::from_secs(2)
            && server.saturating_since(ours) <= Duration::from_secs(2),
        "ours {ours}, etcd's {server}"
    );
    // Used once: the next create grants its own, then loses its race and keeps it;
    // the retry on another key grants nothing.
    assert!(matches!(
        store.create(KEY, b"{}", Some(DAY)).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    assert_eq!(grants(&store), 2);
    store.create(OTHER, b"{}", Some(DAY)).await.expect("retry");
    assert_eq!(grants(&store), 2, "the retry used the lost race's lease");
    assert_eq!(store.live_leases().await.expect("leases").len(), 2);
    // A spare nobody used goes with the store.
    store.prepare_lease(DAY);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(store.live_leases().await.expect("leases").len(), 3);
    drop(store);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let other = EtcdStore::connect(&etcd.endpoints(), &EtcdOptions::default())
        .await
        .expect("connect");
    assert_eq!(other.live_leases().await.expect("leases").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiries_agree_with_etcd_and_across_clients() {
    let Some((etcd, store)) = start("expiries_agree_with_etcd_and_across_clients").await else {
        return;
    };
    let ttl = Duration::from_secs(600);
    let before = wall_now();
    let entry = store.create(KEY, b"{}", Some(ttl)).await.expect("create");
    let ours = entry.expires_at.expect("a lease expires");
    let server = store
        .server_expiry(KEY)
        .await
        .expect("ask etcd")
        .expect("a lease");
    let after = wall_now();
    // The TTL asked for counted from before the request, at the least; one second more
    // than that counted from after it, rounded down, at the most (`EtcdStore::grant`).
    // etcd counts from its own grant and reports whole seconds left: within two seconds.
    assert!(ours >= before + ttl, "{ours} before {}", before + ttl);
    let latest = after + ttl + Duration::from_secs(1);
    assert!(ours <= latest, "{ours} after {latest}");
    assert!(
        ours.saturating_since(server) <= Duration::from_secs(2)
            && server.saturating_since(ours) <= Duration::from_secs(2),
        "ours {ours}, etcd's {server}"
    );
    // Another client (another node) reads the same expiry without asking etcd.
    let other = EtcdStore::connect(&etcd.endpoints(), &EtcdOptions::default())
        .await
        .expect("connect");
    assert_eq!(other.get(KEY).await.expect("get"), Some(entry));
    assert_eq!(other.stats().round_trips, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flannel_keys_read_as_written_and_reservations_stay_lease_less() {
    let Some((etcd, store)) = start("flannel_keys_read_as_written").await else {
        return;
    };
    let flannel = r#"{"PublicIP":"192.0.2.2","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"ee:dd:0b:59:5b:58"}}"#;
    let reserved = "/coreos.com/network/subnets/10.5.9.0-24";
    // What flannel does: a lease granted by etcd, then a put with it; and an operator's
    // reservation, a plain put.
    let grant = stdout(&etcd.etcdctl(&["lease", "grant", "300"]));
    let id = grant
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_string();
    stdout(&etcd.etcdctl(&["put", "--lease", &id, KEY, flannel]));
    stdout(&etcd.etcdctl(&["put", reserved, r#"{"PublicIP":"192.0.2.9"}"#]));

    let listing = store
        .list("/coreos.com/network/subnets/")
        .await
        .expect("list");
    assert_eq!(listing.entries.len(), 2);
    let lease = &listing.entries[0];
    assert_eq!(lease.key, KEY);
    assert_eq!(lease.value, flannel.as_bytes());
    // etcd's own lease ID carries no expiry: asked of etcd, 300 s from about now.
    let left = lease
        .expires_at
        .expect("flannel's lease expires")
        .saturating_since(wall_now());
    assert!(
        left > Duration::from_secs(290) && left <= Duration::from_secs(300),
        "{left:?}"
    );
    assert_eq!(listing.entries[1].expires_at, None, "a reservation");

    // Renewing the reservation without a TTL keeps it lease-less; etcd never expires it.
    let r = &listing.entries[1];
    store
        .renew(reserved, r.create_revision, &r.value, None)
        .await
        .expect("renew reservation");
    let shown = stdout(&etcd.etcdctl(&["get", reserved, "-w", "json"]));
    assert!(!shown.contains("\"lease\""), "{shown}");

    // Taking flannel's lease over (a node moving to weft) moves the key to a weft lease
    // and revokes flannel's, now empty.
    store
        .renew(KEY, lease.create_revision, flannel.as_bytes(), Some(DAY))
        .await
        .expect("take over");
    let leases = store.live_leases().await.expect("leases");
    assert_eq!(leases.len(), 1);
    assert_ne!(format!("{:x}", leases[0]), id);
    // And etcdctl shows what flannel would: the key and its JSON, byte for byte.
    let shown = stdout(&etcd.etcdctl(&["get", "--prefix", "/coreos.com/network"]));
    assert_eq!(
        shown,
        format!("{KEY}\n{flannel}\n{reserved}\n{{\"PublicIP\":\"192.0.2.9\"}}\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_first_in_the_list_is_stepped_over() {
    let Some(etcd) = etcd_or_skip("a_dead_endpoint_first_in_the_list_is_stepped_over") else {
        return;
    };
    // Nothing listens on port 1 of loopback.
    let endpoints = ["127.0.0.1:1".to_string(), etcd.endpoint(0)];
    let store = EtcdStore::connect(&endpoints, &EtcdOptions::default())
        .await
        .expect("connect");
    for i in 0..20 {
        store
            .put(&format!("/k/{i}"), b"v")
            .await
            .expect("every request reaches the live member");
    }
    assert_eq!(store.list("/k/").await.expect("list").entries.len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cluster_is_unavailable_within_the_deadline() {
    let options = EtcdOptions {
        timeout: Duration::from_secs(2),
        ..EtcdOptions::default()
    };
    let store = EtcdStore::connect(&["127.0.0.1:1".to_string()], &options)
        .await
        .expect("connecting sends nothing");
    let started = std::time::Instant::now();
    let err = store.get("/k").await.expect_err("nothing listens");
    assert!(err.is_transient(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
    let err = store.watch("/k/", 1).await.expect_err("nothing listens");
    assert!(err.is_transient(), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_takes_the_reservation_of_its_public_ip_and_keeps_it_lease_less() {
    use std::sync::Arc;

    use weft_core::allocator::{AcquiredHow, AllocEvent, AllocatorConfig};
    use weft_core::node::{NodeConfig, NodeEvent};
    use weft_core::NetworkConfig;
    use weft_stores::testing::NodeRunner;

    let Some((etcd, store)) = start("a_node_takes_the_reservation_of_its_public_ip").await else {
        return;
    };
    // An operator reserves 10.5.77.0/24 for 192.0.2.77: a plain put, no etcd lease.
    let reserved = "/coreos.com/network/subnets/10.5.77.0-24";
    stdout(&etcd.etcdctl(&["put", reserved, r#"{"PublicIP":"192.0.2.77"}"#]));
    let config = NetworkConfig::parse(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"alloc"}}"#)
        .expect("config");
    let alloc = AllocatorConfig::new(
        config.ipv4_space().expect("v4"),
        "192.0.2.77".parse().expect("ip"),
        weft_core::config::BackendType::Alloc,
    );
    let node_config = NodeConfig {
        prefix: "/coreos.com/network".to_string(),
        alloc,
    };
    let mut node = NodeRunner::spawn(Arc::new(store.clone()), node_config, 3);
    let event = node
        .wait_for(Duration::from_secs(20), |e| {
            matches!(e, NodeEvent::Lease(AllocEvent::Acquired { .. }))
        })
        .await
        .expect("acquired");
    let NodeEvent::Lease(AllocEvent::Acquired { lease, how }) = event else {
        unreachable!()
    };
    assert_eq!(
        (lease.key.to_string().as_str(), how),
        ("10.5.77.0-24", AcquiredHow::Reused)
    );
    assert_eq!(lease.expires_at, None, "still a reservation");
    node.stop().await;
    assert_eq!(
        store.live_leases().await.expect("leases"),
        Vec::<i64>::new()
    );
    let entry = store.get(reserved).await.expect("get").expect("kept");
    assert_eq!(entry.expires_at, None);
}

/// A lost create race brings the listing of the key's directory back in the same
/// transaction, and the next listing of that directory is that one: no round trip of
/// its own, and it holds what the race was lost to (another node's key, written on
/// another connection). It is used once: the listing after it asks etcd again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_create_brings_the_listing_its_retry_needs() {
    use weft_stores::RtKind;
    let Some((etcd, store)) = start("a_lost_create_brings_the_listing_its_retry_needs").await
    else {
        return;
    };
    let dir = "/coreos.com/network/subnets/";
    let other = EtcdStore::connect(&etcd.endpoints(), &EtcdOptions::default())
        .await
        .expect("connect");
    other
        .create(KEY, b"{}", Some(DAY))
        .await
        .expect("the winner");
    other
        .create(OTHER, b"{}", Some(DAY))
        .await
        .expect("another");
    let ranges = |s: &EtcdStore| s.stats().by_kind[RtKind::Range as usize];
    assert!(matches!(
        store.create(KEY, b"{}", Some(DAY)).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    let before = store.stats();
    let listing = store.list(dir).await.expect("list");
    let keys: Vec<_> = listing.entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, [KEY, OTHER]);
    assert_eq!(
        store.stats().round_trips,
        before.round_trips,
        "{:?}",
        store.stats()
    );
    assert!(listing.revision > 0);
    // The second listing asks etcd.
    let before = ranges(&store);
    store.list(dir).await.expect("list again");
    assert_eq!(ranges(&store), before + 1, "{:?}", store.stats());
}
