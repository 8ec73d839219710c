//! The allocator's promises, one scenario each, over the real memory store.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::{ip, space, Cluster, PREFIX};
use weft_core::allocator::{AcquiredHow, AllocError, AllocEvent, LossReason};
use weft_core::node::NodeEvent;
use weft_core::router::RouteChange;
use weft_core::store::subnets_prefix;

const TTL: Duration = Duration::from_secs(600);
const MARGIN: Duration = Duration::from_secs(120);

fn lease_events(c: &Cluster, i: u8) -> Vec<AllocEvent> {
    c.nodes[&ip(i)]
        .events
        .iter()
        .filter_map(|e| match e {
            NodeEvent::Lease(l) => Some(l.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn three_nodes_get_distinct_subnets_and_route_to_each_other() {
    let mut c = Cluster::new(space("10.5.0.0/16", 24), TTL, MARGIN, 1);
    for i in 1..=3 {
        c.start(ip(i));
    }
    c.settle();
    let held: Vec<_> = (1..=3).map(|i| c.held(ip(i)).unwrap()).collect();
    assert_ne!(held[0], held[1]);
    assert_ne!(held[1], held[2]);
    assert_ne!(held[0], held[2]);
    for i in 1..=3u8 {
        let routes = c.nodes[&ip(i)].node.routes();
        assert_eq!(routes.len(), 2, "node {i} routes to both peers");
        for (j, key) in held.iter().enumerate() {
            let found = routes.lookup(key.ipv4.expect("IPv4 lease").addr().into());
            if j + 1 == usize::from(i) {
                assert!(found.is_none(), "no route to our own subnet");
            } else {
                assert_eq!(
                    found.unwrap().public_ip,
                    std::net::IpAddr::V4(ip(j as u8 + 1))
                );
            }
        }
    }
}

#[test]
fn leases_are_renewed_before_expiry_and_survive_many_ttls() {
    let mut c = Cluster::new(space("10.5.0.0/16", 24), TTL, MARGIN, 2);
    c.start(ip(1));
    c.settle();
    let first = c.held(ip(1)).unwrap();
    c.advance(TTL * 10);
    assert_eq!(c.held(ip(1)), Some(first));
    let renewals = lease_events(&c, 1)
        .iter()
        .filter(|e| matches!(e, AllocEvent::Renewed { .. }))
        .count();
    assert!(renewals >= 10, "renewed {renewals} times in 10 TTLs");
    let lease = &c.leases()[0];
    assert!(lease.expires_at.unwrap() > c.now + MARGIN);
}

#[test]
fn restart_reuses_the_lease_of_its_public_ip() {
    let mut c = Cluster::new(space("10.5.0.0/16", 24), TTL, MARGIN, 3);
    c.start(ip(1));
    c.settle();
    let before = c.held(ip(1)).unwrap();
    c.stop(ip(1));
    c.subnet_files.clear(); // reuse must not depend on the subnet file
    c.advance(Duration::from_secs(30));
    c.start(ip(1));
    c.settle();
    assert_eq!(c.held(ip(1)), Some(before));
    assert!(matches!(
        lease_events(&c, 1)[0],
        AllocEvent::Acquired {
            how: AcquiredHow::Reused,
            ..
        }
    ));
}

#[test]
fn restart_after_expiry_prefers_the_subnet_file() {
    let mut c = Cluster::new(space("10.5.0.0/16", 24), TTL, MARGIN, 4);
    c.start(ip(1));
    c.settle();
    let before = c.held(ip(1)).unwrap();
    c.stop(ip(1));
    c.advance(TTL * 2);
    assert!(c.leases().is_empty(), "the lease expired");
    c.start(ip(1));
    c.settle();
    assert_eq!(c.held(ip(1)), Some(before));
    assert!(matches!(
        lease_events(&c, 1)[0],
        AllocEvent::Acquired {
            how: AcquiredHow::Previous,
            ..
        }
    ));
}

#[test]
fn exhaustion_is_a_clear_error_and_a_freed_subnet_is_taken_at_once() {
    // 10.5.0.0/26 in /28s: 4 subnets, the first skipped: 3 allocatable.
    let mut c = Cluster::new(space("10.5.0.0/26", 28), TTL, MARGIN, 5);
    for i in 1..=4 {
        c.start(ip(i));
    }
    c.settle();
    let holders = (1..=4).filter(|i| c.held(ip(*i)).is_some()).count();
    assert_eq!(holders, 3);
    let loser = (1..=4).find(|i| c.held(ip(*i)).is_none()).unwrap();
    let failed = lease_events(&c, loser)
        .into_iter()
        .find_map(|e| match e {
            AllocEvent::AcquireFailed { error, .. } => Some(error),
            _ => None,
        })
        .unwrap();
    assert!(matches!(failed, AllocError::OutOfSubnets { total: 3, .. }));
    assert_eq!(
        failed.to_string(),
        "out of subnets: all 3 subnets from 10.5.0.16/28 to 10.5.0.48/28 are taken (3 leases in range)"
    );
    // An operator deletes one holder's lease: the waiting node takes it.
    let victim = (1..=4).find(|i| *i != loser).unwrap();
    let key = c.held(ip(victim)).unwrap();
    c.store
        .delete(&format!("{}{}", subnets_prefix(PREFIX), key))
        .unwrap();
    c.advance(Duration::from_secs(1));
    assert_eq!(c.held(ip(loser)), Some(key));
    assert!(c.nodes[&ip(victim)].node.is_stopped());
    assert!(lease_events(&c, victim).contains(&AllocEvent::Lost {
        key,
        reason: LossReason::Deleted
    }));
}

#[test]
fn an_outage_longer_than_the_ttl_loses_the_lease_then_reacquires_it() {
    let mut c = Cluster::new(space("10.5.0.0/16", 24), TTL, MARGIN, 6);
    c.start(ip(1));
    c.settle();
    let before = c.held(ip(1)).unwrap();
    c.set_unavailable(true);
    c.advance(TTL * 2);
    assert_eq!(c.held(ip(1)), None);
    let events = lease_events(&c, 1);
    assert!(events
        .iter()
        .any(|e| matches!(e, AllocEvent::RenewFailed { .. })));
    assert!(events.contains(&AllocEvent::Lost {
        key: before,
        reason: LossReason::Expired
    }));
    c.set_unavailable(false);
    c.advance(Duration::from_secs(120));
    assert_eq!(c.held(ip(1)), Some(before), "same subnet, still free");
}

#[test]
fn a_store_back_shortly_before_the_deadline_still_gets_the_renewal() {
    // Found by the simulator: with exponential backoff alone the retry after an
    // outage fell 16 s past the lease's end although the store was back 3 s before it.
    let mut c = Cluster::new(space("10.5.0.0/16", 24), TTL, MARGIN, 9);
    c.start(ip(1));
    c.settle();
    let before = c.held(ip(1)).unwrap();
    c.advance(TTL - MARGIN - Duration::from_secs(10));
    c.set_unavailable(true);
    c.advance(MARGIN);
    assert!(lease_events(&c, 1)
        .iter()
        .any(|e| matches!(e, AllocEvent::RenewFailed { .. })));
    c.set_unavailable(false);
    c.advance(TTL * 2);
    let events = lease_events(&c, 1);
    assert!(
        !events.iter().any(|e| matches!(e, AllocEvent::Lost { .. })),
        "{events:?}"
    );
    assert_eq!(c.held(ip(1)), Some(before));
}

#[test]
fn a_peer_that_stops_renewing_loses_its_route() {
    let mut c = Cluster::new(space("10.5.0.0/16", 24), TTL, MARGIN, 7);
    c.start(ip(1));
    c.start(ip(2));
    c.settle();
    let gone = c.held(ip(2)).unwrap();
    c.stop(ip(2));
    c.advance(TTL + Duration::from_secs(1));
    let removed = c.nodes[&ip(1)].events.iter().any(
        |e| matches!(e, NodeEvent::Route(RouteChange::Remove(r)) if Some(r.subnet) == gone.ipv4_net()),
    );
    assert!(removed);
    assert!(c.nodes[&ip(1)].node.routes().is_empty());
}

#[test]
fn garbage_under_the_prefix_is_skipped_and_its_subnet_avoided() {
    let mut c = Cluster::new(space("10.5.0.0/26", 28), TTL, MARGIN, 8);
    let sp = subnets_prefix(PREFIX);
    c.store
        .put(&format!("{sp}10.5.0.16-28"), b"not json")
        .unwrap();
    c.store.put(&format!("{sp}not-a-subnet"), b"{}").unwrap();
    c.start(ip(1));
    c.start(ip(2));
    c.settle();
    let skipped = c.nodes[&ip(1)]
        .events
        .iter()
        .filter(|e| matches!(e, NodeEvent::Skipped(_)))
        .count();
    assert_eq!(skipped, 2);
    for i in [1, 2] {
        assert_ne!(c.held(ip(i)).unwrap().to_string(), "10.5.0.16-28");
    }
    assert_eq!(
        c.store
            .get(&format!("{sp}10.5.0.16-28"))
            .unwrap()
            .unwrap()
            .value,
        b"not json",
        "never overwritten"
    );
}

/// What the renewal's answer says, when the watch has not told the node yet: these
/// answers come first when the watch stream lags behind the store.
fn renew_answer_case(seed: u64) -> (Cluster, weft_core::lease::LeaseKey, String) {
    let mut c = Cluster::new(space("10.5.0.0/16", 24), TTL, MARGIN, seed);
    c.start(ip(1));
    c.settle();
    let key = c.held(ip(1)).unwrap();
    c.watch_paused.insert(ip(1));
    let full = format!("{}{}", subnets_prefix(PREFIX), key);
    (c, key, full)
}

fn renew_failures(c: &Cluster, i: u8) -> Vec<weft_core::Timestamp> {
    lease_events(c, i)
        .iter()
        .filter_map(|e| match e {
            AllocEvent::RenewFailed { retry_at, .. } => Some(*retry_at),
            _ => None,
        })
        .collect()
}

#[test]
fn a_renewal_answered_conflict_gives_the_subnet_up_at_once() {
    // Someone deleted our lease and wrote their own under its key: the renewal, which
    // names our create revision, is refused as a conflict. Retrying cannot help; the
    // node must give the subnet up and take another, not keep routing as its holder.
    let (mut c, key, full) = renew_answer_case(11);
    c.store.delete(&full).unwrap();
    c.store.put(&full, br#"{"PublicIP":"192.0.2.99"}"#).unwrap();
    c.advance(TTL - MARGIN + Duration::from_secs(1));
    let events = lease_events(&c, 1);
    assert!(
        events.contains(&AllocEvent::Lost {
            key,
            reason: LossReason::Taken
        }),
        "{events:?}"
    );
    assert!(renew_failures(&c, 1).is_empty(), "{events:?}");
    let now_held = c.held(ip(1)).expect("a new subnet");
    assert_ne!(now_held, key);
    assert_eq!(
        c.store.get(&full).unwrap().unwrap().value,
        br#"{"PublicIP":"192.0.2.99"}"#,
        "the other lease is left as it is"
    );
}

#[test]
fn a_renewal_answered_not_found_takes_the_subnet_back_at_once() {
    // The lease is gone from the store (expired there, or deleted) and the watch has
    // not said so: the node re-acquires at once, preferring the same subnet, instead of
    // retrying a renewal that cannot succeed while it still routes as the holder.
    let (mut c, key, full) = renew_answer_case(12);
    c.store.delete(&full).unwrap();
    c.advance(TTL - MARGIN + Duration::from_secs(1));
    let events = lease_events(&c, 1);
    assert!(
        events.contains(&AllocEvent::Lost {
            key,
            reason: LossReason::Expired
        }),
        "{events:?}"
    );
    assert!(renew_failures(&c, 1).is_empty(), "{events:?}");
    assert!(c.store.get(&full).unwrap().is_some(), "written again");
    assert_eq!(c.held(ip(1)), Some(key));
}

#[test]
fn renewal_retries_never_pass_half_of_what_is_left_of_the_lease() {
    // TTL 60 s, renewal at 40 s, the store down from then on: exponential backoff
    // alone would retry at 41, 43, 47, 55 and 71 s, past the 60 s deadline. Each retry
    // must come at most halfway to the deadline (or 100 ms after the failure).
    let ttl = Duration::from_secs(60);
    let margin = Duration::from_secs(20);
    let mut c = Cluster::new(space("10.5.0.0/16", 24), ttl, margin, 13);
    c.start(ip(1));
    c.settle();
    let deadline = c.now + ttl;
    c.advance(ttl - margin - Duration::from_millis(500));
    c.set_unavailable(true);
    c.advance(margin + Duration::from_secs(1));
    let retries = renew_failures(&c, 1);
    assert!(retries.len() >= 5, "{retries:?}");
    let mut failed_at = deadline - margin;
    for retry_at in retries.iter().copied().filter(|t| *t < deadline) {
        let half = failed_at + deadline.saturating_since(failed_at) / 2;
        let limit = half.max(failed_at + Duration::from_millis(100));
        assert!(
            retry_at <= limit,
            "a renewal failed at {failed_at:?} retries at {retry_at:?}, past {limit:?}: {retries:?}"
        );
        failed_at = retry_at;
    }
}

#[test]
fn an_expiry_seen_by_the_watch_before_the_timer_fired_is_an_expiry() {
    // A process paused past its lease's deadline (a stopped VM, a debugger) wakes with
    // its expiry timer and the store's deletion both due; if the deletion is handled
    // first, it is the expiry, not an operator's delete: the node takes its subnet
    // back rather than exit.
    let mut c = Cluster::new(space("10.5.0.0/16", 24), TTL, MARGIN, 14);
    c.start(ip(1));
    c.settle();
    let key = c.held(ip(1)).unwrap();
    c.now = c.now + TTL + Duration::from_secs(5);
    assert!(c.store.advance_to(c.now), "the store expires the lease");
    c.settle();
    let events = lease_events(&c, 1);
    assert!(
        events.contains(&AllocEvent::Lost {
            key,
            reason: LossReason::Expired
        }),
        "{events:?}"
    );
    assert!(!c.nodes[&ip(1)].node.is_stopped());
    assert_eq!(c.held(ip(1)), Some(key), "taken back");
}

fn acquired_how(c: &Cluster, node: std::net::Ipv4Addr) -> Option<AcquiredHow> {
    c.nodes[&node].events.iter().find_map(|e| match e {
        NodeEvent::Lease(AllocEvent::Acquired { how, .. }) => Some(*how),
        _ => None,
    })
}

/// A joining node first tries the subnet its public IP points at: its position in the
/// space, modulo the space's size. On 10.5.0.0/16 in /24s the space is 10.5.1.0 to
/// 10.5.255.0 (255 subnets, index 1 to 255), and 192.0.2.1 is 0xC0000201, which is 195
/// modulo 255: index 196, 10.5.196.0/24; consecutive addresses point at consecutive
/// subnets. Two nodes pointing at one subnet (192.0.3.0 is 195 modulo 255 too) that
/// start together race for it: one wins it, the other loses the create and draws at
/// random; a node pointing at a subnet already leased draws at random at once.
#[test]
fn a_joining_node_first_tries_the_subnet_its_public_ip_points_at() {
    let mut c = Cluster::new(space("10.5.0.0/16", 24), TTL, MARGIN, 9);
    let twin = std::net::Ipv4Addr::new(192, 0, 3, 0);
    for node in [ip(1), ip(2), twin] {
        c.start(node);
    }
    c.settle();
    assert_eq!(c.held(ip(2)).unwrap().to_string(), "10.5.197.0-24");
    assert_eq!(acquired_how(&c, ip(2)), Some(AcquiredHow::FromPublicIp));
    let (winner, loser) = if acquired_how(&c, ip(1)) == Some(AcquiredHow::FromPublicIp) {
        (ip(1), twin)
    } else {
        (twin, ip(1))
    };
    assert_eq!(c.held(winner).unwrap().to_string(), "10.5.196.0-24");
    assert_eq!(acquired_how(&c, winner), Some(AcquiredHow::FromPublicIp));
    assert_eq!(acquired_how(&c, loser), Some(AcquiredHow::Random));
    assert!(
        !["10.5.196.0-24", "10.5.197.0-24"].contains(&c.held(loser).unwrap().to_string().as_str())
    );
    // Pointing at a leased subnet: straight to the random draw, no lost race.
    let late = std::net::Ipv4Addr::new(192, 0, 4, 0); // 196 modulo 255: 10.5.197.0/24
    c.start(late);
    c.settle();
    assert_eq!(acquired_how(&c, late), Some(AcquiredHow::Random));
    assert_ne!(c.held(late).unwrap().to_string(), "10.5.197.0-24");
}
