//! The per-packet decision on a real node with real leases: where a container's packet
//! goes, and which received datagrams are delivered or dropped, and why.

#![allow(clippy::unwrap_used)]

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{IpProtocol, Ipv4Packet, Ipv4Repr};
use support::{ip, space, Cluster};
use weft_core::node::{DropReason, Inbound, Outbound, ThreadDrops};
use weft_core::wire::ip as ipwire;

fn packet(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8) -> Vec<u8> {
    let payload = b"payload!";
    let repr = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Udp,
        payload_len: payload.len(),
        hop_limit: ttl,
    };
    let mut buf = vec![0; repr.buffer_len() + payload.len()];
    let mut p = Ipv4Packet::new_unchecked(&mut buf[..]);
    repr.emit(&mut p, &ChecksumCapabilities::default());
    p.payload_mut().copy_from_slice(payload);
    buf
}

fn host(c: &Cluster, node: u8, n: u8) -> Ipv4Addr {
    let net = c.held(ip(node)).unwrap().ipv4.network().octets();
    Ipv4Addr::new(net[0], net[1], net[2], n)
}

fn cluster() -> Cluster {
    let mut c = Cluster::new(
        space("10.5.0.0/16", 24),
        Duration::from_secs(600),
        Duration::from_secs(60),
        11,
    );
    for i in 1..=3 {
        c.start(ip(i));
    }
    c.settle();
    c
}

#[test]
fn outbound_goes_to_the_peer_holding_the_destination_with_ttl_decremented() {
    let c = cluster();
    let (a, b) = (host(&c, 1, 2), host(&c, 2, 7));
    let mut pkt = packet(a, b, 64);
    let table = c.nodes[&ip(1)].node.forward_table();
    let drops = ThreadDrops::default();
    assert_eq!(
        table.route_outbound(&mut pkt, &drops),
        Outbound::Send {
            peer: IpAddr::V4(ip(2))
        }
    );
    assert_eq!(ipwire::parse(&pkt).unwrap().ttl, 63);

    let mut local = packet(a, host(&c, 1, 9), 64);
    assert_eq!(table.route_outbound(&mut local, &drops), Outbound::Local);

    let mut nowhere = packet(a, Ipv4Addr::new(10, 5, 250, 1), 64);
    assert_eq!(
        table.route_outbound(&mut nowhere, &drops),
        Outbound::Unreachable
    );
    let mut dying = packet(a, b, 1);
    assert_eq!(
        table.route_outbound(&mut dying, &drops),
        Outbound::Drop(DropReason::TtlExpired)
    );
    assert_eq!(
        table.route_outbound(&mut [0x45, 1, 2], &drops),
        Outbound::Drop(DropReason::Malformed)
    );
    assert_eq!(drops.snapshot().get(DropReason::NoRoute), 1);
    assert_eq!(drops.snapshot().total(), 3);
}

#[test]
fn inbound_is_checked_for_peer_source_and_destination() {
    let c = cluster();
    let (a, b, x) = (host(&c, 1, 2), host(&c, 2, 7), host(&c, 3, 5));
    let table = c.nodes[&ip(2)].node.forward_table();
    let drops = ThreadDrops::default();
    let from1 = IpAddr::V4(ip(1));
    assert_eq!(
        table.accept_inbound(from1, &packet(a, b, 63), &drops),
        Inbound::Deliver
    );
    // Node 1 claims a source in node 3's subnet.
    assert_eq!(
        table.accept_inbound(from1, &packet(x, b, 63), &drops),
        Inbound::Drop(DropReason::SpoofedSource)
    );
    // Addressed to node 3's subnet, not ours.
    assert_eq!(
        table.accept_inbound(from1, &packet(a, x, 63), &drops),
        Inbound::Drop(DropReason::NotOurSubnet)
    );
    // From an address that holds no lease.
    let stranger = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
    assert_eq!(
        table.accept_inbound(stranger, &packet(a, b, 63), &drops),
        Inbound::Drop(DropReason::UnknownPeer)
    );
    // Garbage and truncation.
    assert_eq!(
        table.accept_inbound(from1, b"\x00garbage", &drops),
        Inbound::Drop(DropReason::Malformed)
    );
    let full = packet(a, b, 63);
    assert_eq!(
        table.accept_inbound(from1, &full[..full.len() - 1], &drops),
        Inbound::Drop(DropReason::Malformed)
    );
    let counts: Vec<_> = drops.snapshot().iter().filter(|(_, n)| *n > 0).collect();
    assert_eq!(
        counts,
        [
            (DropReason::Malformed, 2),
            (DropReason::UnknownPeer, 1),
            (DropReason::SpoofedSource, 1),
            (DropReason::NotOurSubnet, 1)
        ]
    );
}

#[test]
fn a_node_without_a_lease_delivers_nothing() {
    let mut c = Cluster::new(
        space("10.5.0.0/16", 24),
        Duration::from_secs(600),
        Duration::from_secs(60),
        12,
    );
    c.set_unavailable(true);
    c.start(ip(1));
    c.settle();
    let table = c.nodes[&ip(1)].node.forward_table();
    let drops = ThreadDrops::default();
    let pkt = packet(Ipv4Addr::new(10, 5, 1, 2), Ipv4Addr::new(10, 5, 2, 2), 64);
    assert_eq!(
        table.accept_inbound(IpAddr::V4(ip(2)), &pkt, &drops),
        Inbound::Drop(DropReason::NoLease)
    );
}

proptest::proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_and_are_never_delivered_unchecked(
        bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
        from in 1u8..5,
    ) {
        let c = cluster();
        let node = &c.nodes[&ip(2)].node;
        let table = node.forward_table();
        let drops = ThreadDrops::default();
        if table.accept_inbound(IpAddr::V4(ip(from)), &bytes, &drops) == Inbound::Deliver {
            // Only a well-formed packet from a peer's subnet to ours gets through.
            let h = ipwire::parse(&bytes).unwrap();
            let route = node.routes().lookup(h.src).unwrap();
            proptest::prop_assert_eq!(route.public_ip, IpAddr::V4(ip(from)));
        }
        let mut out = bytes.clone();
        let _ = table.route_outbound(&mut out, &drops);
    }
}
