//! IPv6-only networks (`EnableIPv4: false`): leases of an IPv6 subnet alone, keyed and
//! valued as flanneld writes them, allocated, renewed, reused and routed without an
//! IPv4 family anywhere.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use support::{ip, ip6, space, Cluster, PREFIX};
use weft_core::allocator::{AcquiredHow, AllocEvent};
use weft_core::node::NodeEvent;
use weft_core::router::RouteChange;
use weft_core::store::subnets_prefix;

const TTL: Duration = Duration::from_secs(600);
const MARGIN: Duration = Duration::from_secs(120);

fn v6_cluster(seed: u64) -> Cluster {
    let mut c = Cluster::new(space("fc00::/48", 64), TTL, MARGIN, seed);
    c.v6_only = true;
    c
}

#[test]
fn three_ipv6_only_nodes_get_distinct_ipv6_subnets_in_flannels_key_and_value() {
    let mut c = v6_cluster(11);
    for i in 1..=3 {
        c.start(ip(i));
    }
    c.settle();
    let held: Vec<_> = (1..=3).map(|i| c.held(ip(i)).unwrap()).collect();
    let subnets: BTreeSet<_> = held.iter().map(|k| k.ipv6.unwrap()).collect();
    assert_eq!(subnets.len(), 3, "distinct IPv6 subnets: {held:?}");
    let prefix = subnets_prefix(PREFIX);
    for (i, key) in held.iter().enumerate() {
        assert_eq!(key.ipv4, None);
        let v6 = key.ipv6.unwrap();
        // flannel's MakeSubnetKey(ip.IP4Net{}, sn6) (pkg/subnet/subnet.go:62-68).
        let name = format!("0.0.0.0-0&{}-64", v6.network());
        assert_eq!(key.to_string(), name);
        let entry = c
            .store
            .get(&format!("{prefix}{name}"))
            .unwrap()
            .expect("lease in the store");
        // flannel's alloc backend writes PublicIP's zero value and the IPv6 address.
        let want = format!(
            r#"{{"PublicIP":"0.0.0.0","PublicIPv6":"{}"}}"#,
            ip6(i as u8 + 1)
        );
        assert_eq!(String::from_utf8(entry.value.clone()).unwrap(), want);
    }
    for i in 1..=3u8 {
        let routes = c.nodes[&ip(i)].node.routes();
        assert_eq!(routes.len(), 2, "node {i} routes to both peers, IPv6 only");
        assert!(routes.routes().all(|r| r.subnet.addr().is_ipv6()));
        for (j, key) in held.iter().enumerate() {
            let addr = IpAddr::V6(key.ipv6.unwrap().addr());
            let found = routes.lookup(addr);
            if j + 1 == usize::from(i) {
                assert!(found.is_none(), "no route to our own subnet");
            } else {
                assert_eq!(found.unwrap().public_ip, IpAddr::V6(ip6(j as u8 + 1)));
            }
        }
        // No IPv4 address is routed: not even through a /0 made of the empty IPv4 net.
        assert!(routes.lookup("10.5.1.1".parse().unwrap()).is_none());
        let table = c.nodes[&ip(i)].node.forward_table();
        assert_eq!(table.own().0, None);
    }
}

#[test]
fn an_ipv6_only_lease_is_renewed_and_reused_by_its_public_ipv6_address() {
    let mut c = v6_cluster(12);
    c.start(ip(1));
    c.start(ip(2));
    c.settle();
    let first = c.held(ip(1)).unwrap();
    c.advance(TTL * 5);
    assert_eq!(c.held(ip(1)), Some(first));
    let renewals = c.nodes[&ip(1)]
        .events
        .iter()
        .filter(|e| matches!(e, NodeEvent::Lease(AllocEvent::Renewed { .. })))
        .count();
    assert!(renewals >= 5, "renewed {renewals} times in 5 TTLs");
    // Every lease records PublicIP 0.0.0.0: a restarted node must take back the one of
    // its IPv6 address, not the first lease of 0.0.0.0 (flannel's findLeaseByIP would).
    // The node restarted is the one whose subnet sorts last, so that the first lease
    // of 0.0.0.0 is the other's.
    let (restarted, other) = if c.held(ip(1)) > c.held(ip(2)) {
        (1, 2)
    } else {
        (2, 1)
    };
    let mine = c.held(ip(restarted)).unwrap();
    let theirs = c.held(ip(other)).unwrap();
    c.stop(ip(restarted));
    c.subnet_files.clear();
    c.advance(Duration::from_secs(30));
    c.start(ip(restarted));
    c.settle();
    assert_eq!(c.held(ip(restarted)), Some(mine));
    assert_eq!(c.held(ip(other)), Some(theirs));
    let how = c.nodes[&ip(restarted)].events.iter().find_map(|e| match e {
        NodeEvent::Lease(AllocEvent::Acquired { how, .. }) => Some(*how),
        _ => None,
    });
    assert_eq!(how, Some(AcquiredHow::Reused));
}

#[test]
fn a_stopped_ipv6_only_node_is_unrouted_when_its_lease_expires() {
    let mut c = v6_cluster(13);
    for i in 1..=3 {
        c.start(ip(i));
    }
    c.settle();
    let gone = c.held(ip(3)).unwrap();
    c.stop(ip(3));
    c.advance(TTL + Duration::from_secs(1));
    let removed = c.nodes[&ip(1)].events.iter().any(|e| {
        matches!(e, NodeEvent::Route(RouteChange::Remove(r))
            if Some(r.subnet) == gone.ipv6.map(ipnet::IpNet::V6))
    });
    assert!(removed, "node 1 removed the route to node 3's subnet");
    assert_eq!(c.nodes[&ip(1)].node.routes().len(), 1);
    assert_eq!(c.leases().len(), 2);
}
