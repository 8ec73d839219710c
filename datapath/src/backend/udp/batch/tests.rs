use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use proptest::prelude::*;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, UdpPacket, UdpRepr};
use weft_core::forward::{DropReason, ForwardTable, Peer, ThreadDrops};
use weft_core::subnet::SubnetSpace;

use super::*;

fn ip(a: &str) -> IpAddr {
    a.parse().expect("addr")
}

#[test]
fn runs_join_one_peers_back_to_back_packets_of_one_size() {
    let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
    let mut runs = Runs::new(3);
    let mut closed = Vec::new();
    // (peer, start, len)
    let packets = [
        (a, 0, 100),
        (a, 100, 100),
        (a, 200, 60), // shorter: ends the run after it
        (a, 260, 60),
        (b, 320, 60), // another peer
        (b, 380, 60),
        (b, 440, 60),
        (b, 500, 60), // a fourth segment is over the limit of 3
        (b, 600, 60), // a gap: not contiguous
        (b, 660, 80), // longer than the run's segment
    ];
    for (peer, start, len) in packets {
        closed.extend(runs.push(peer, start, len));
    }
    closed.extend(runs.finish());
    let run = |peer, start, segment, len, count| Run {
        peer,
        start,
        segment,
        len,
        count,
    };
    assert_eq!(
        closed,
        vec![
            run(a, 0, 100, 260, 3),
            run(a, 260, 60, 60, 1),
            run(b, 320, 60, 180, 3),
            run(b, 500, 60, 60, 1),
            run(b, 600, 60, 60, 1),
            run(b, 660, 80, 80, 1),
        ]
    );
    assert_eq!(runs.finish(), None);
}

#[test]
fn without_gso_every_packet_is_its_own_run() {
    let a = ip("192.0.2.1");
    let mut runs = Runs::new(1);
    assert_eq!(runs.push(a, 0, 10), None);
    assert!(runs.push(a, 10, 10).is_some());
    assert_eq!(runs.finish().map(|r| (r.start, r.count)), Some((10, 1)));
}

#[test]
fn a_run_never_exceeds_one_udp_payload() {
    let a = ip("192.0.2.1");
    let mut runs = Runs::new(64);
    let mut closed = Vec::new();
    for i in 0..50 {
        closed.extend(runs.push(a, i * 1472, 1472));
    }
    closed.extend(runs.finish());
    assert_eq!(closed.iter().map(|r| r.count).collect::<Vec<_>>(), [44, 6]);
    assert!(closed.iter().all(|r| r.len <= MAX_GSO_BYTES));
}

proptest! {
    /// Whatever the packets, cutting each run into its segments gives back exactly the
    /// packets, in order, each to its own peer: GSO changes the syscalls, not the wire.
    #[test]
    fn runs_cut_into_segments_are_the_packets(
        packets in prop::collection::vec((0u8..3, 1usize..1500, any::<bool>()), 0..200),
        max in 1usize..70,
    ) {
        let mut runs = Runs::new(max);
        let mut sent = Vec::new(); // (peer, start, len) as they were pushed
        let mut closed = Vec::new();
        let mut at = 0;
        for (peer, len, gap) in packets {
            if gap {
                at += 7;
            }
            let peer = IpAddr::V4(Ipv4Addr::new(192, 0, 2, peer));
            sent.push((peer, at, len));
            closed.extend(runs.push(peer, at, len));
            at += len;
        }
        closed.extend(runs.finish());
        let mut cut = Vec::new();
        for r in &closed {
            prop_assert!(r.count >= 1 && r.count <= max);
            prop_assert!(r.len <= MAX_GSO_BYTES);
            let mut off = r.start;
            let end = r.start + r.len;
            for i in 0..r.count {
                let len = if i + 1 == r.count { end - off } else { r.segment };
                prop_assert!(len >= 1 && len <= r.segment);
                cut.push((r.peer, off, len));
                off += len;
            }
        }
        prop_assert_eq!(cut, sent);
    }
}

fn space(net: &str, len: u8) -> SubnetSpace {
    let net: IpNet = net.parse().expect("net");
    let probe = SubnetSpace::new(net, len, net.network(), net.network()).expect("space");
    let last = probe.subnet_at(probe.total_in_network() - 1).addr();
    SubnetSpace::new(net, len, net.network(), last).expect("space")
}

/// n2's table: own 10.5.2.0/24; n1 (192.0.2.1) holds 10.5.1.0/24, n3 (192.0.2.3)
/// 10.5.3.0/24.
fn n2_table() -> ForwardTable {
    let mut t = ForwardTable::new(Some(space("10.5.0.0/16", 24)), None);
    for (subnet, public) in [("10.5.1.0/24", "192.0.2.1"), ("10.5.3.0/24", "192.0.2.3")] {
        t.insert(Peer {
            subnet: subnet.parse().expect("subnet"),
            public_ip: ip(public),
        });
    }
    t.set_own(Some("10.5.2.0/24".parse().expect("own")), None);
    t
}

/// An IPv4/UDP packet of exactly `len` bytes whose payload starts with `tag`.
fn packet(src: &str, dst: &str, tag: u8, len: usize) -> Vec<u8> {
    let (src, dst): (Ipv4Addr, Ipv4Addr) = (src.parse().expect("src"), dst.parse().expect("dst"));
    let payload_len = len - 28;
    let udp = UdpRepr {
        src_port: 40000,
        dst_port: 9999,
    };
    let repr = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Udp,
        payload_len: 8 + payload_len,
        hop_limit: 64,
    };
    let mut buf = vec![0u8; len];
    let caps = ChecksumCapabilities::default();
    let mut p = Ipv4Packet::new_unchecked(&mut buf[..]);
    repr.emit(&mut p, &caps);
    let mut u = UdpPacket::new_unchecked(p.payload_mut());
    udp.emit(
        &mut u,
        &IpAddress::Ipv4(src),
        &IpAddress::Ipv4(dst),
        payload_len,
        |b| {
            b.fill(0);
            b[0] = tag;
        },
        &caps,
    );
    buf
}

fn tag(delivered: &[u8]) -> u8 {
    delivered[28]
}

#[test]
fn a_coalesced_batch_is_decided_datagram_by_datagram() {
    let table = n2_table();
    let drops = ThreadDrops::default();
    // A GRO buffer from n1: good, good, spoofed (n3's source), garbage, not for us, good,
    // and a shorter good one last.
    let mut gro = Vec::new();
    gro.extend(packet("10.5.1.2", "10.5.2.2", 1, 200));
    gro.extend(packet("10.5.1.2", "10.5.2.2", 2, 200));
    gro.extend(packet("10.5.3.2", "10.5.2.2", 3, 200));
    gro.extend([0xffu8; 200]);
    gro.extend(packet("10.5.1.2", "10.5.3.2", 5, 200));
    gro.extend(packet("10.5.1.2", "10.5.2.2", 6, 200));
    gro.extend(packet("10.5.1.2", "10.5.2.2", 7, 120));
    let mut delivered = Vec::new();
    let n = each_inbound(&table, ip("192.0.2.1"), &gro, 200, &drops, |p| {
        delivered.push(tag(p))
    });
    assert_eq!(n, 7);
    assert_eq!(
        delivered,
        [1, 2, 6, 7],
        "neighbours of hostile datagrams delivered"
    );
    // The next messages of the same recvmmsg batch: n3's own packet, a well-formed one
    // from no peer, a truncated one, an empty one.
    let from_n3 = packet("10.5.3.2", "10.5.2.2", 8, 100);
    each_inbound(&table, ip("192.0.2.3"), &from_n3, 100, &drops, |p| {
        delivered.push(tag(p))
    });
    let stranger = packet("10.5.1.2", "10.5.2.2", 9, 100);
    each_inbound(&table, ip("192.0.2.99"), &stranger, 100, &drops, |p| {
        delivered.push(tag(p))
    });
    let truncated = &from_n3[..60];
    each_inbound(&table, ip("192.0.2.3"), truncated, 60, &drops, |p| {
        delivered.push(tag(p))
    });
    assert_eq!(
        each_inbound(&table, ip("192.0.2.3"), &[], 0, &drops, |_| {}),
        1
    );
    assert_eq!(delivered, [1, 2, 6, 7, 8]);
    let d = drops.snapshot();
    assert_eq!(d.get(DropReason::SpoofedSource), 1);
    assert_eq!(d.get(DropReason::Malformed), 3, "garbage, truncated, empty");
    assert_eq!(d.get(DropReason::NotOurSubnet), 1);
    assert_eq!(d.get(DropReason::UnknownPeer), 1);
    assert_eq!(d.total(), 6);
}

/// An IPv6/UDP packet of exactly `len` bytes (hop limit 64) whose payload starts with
/// `tag`; the UDP checksum is left 0, which nothing here checks.
fn packet6(src: &str, dst: &str, tag: u8, len: usize) -> Vec<u8> {
    let (src, dst): (std::net::Ipv6Addr, std::net::Ipv6Addr) =
        (src.parse().expect("src"), dst.parse().expect("dst"));
    let repr = smoltcp::wire::Ipv6Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Udp,
        payload_len: len - 40,
        hop_limit: 64,
    };
    let mut buf = vec![0u8; len];
    repr.emit(&mut smoltcp::wire::Ipv6Packet::new_unchecked(&mut buf[..]));
    buf[48] = tag;
    buf
}

/// n2's dual-stack table as the node builds it for the udp backend (`Underlay::Ipv4`):
/// each peer's IPv6 subnet via its IPv4 public address.
fn n2_dual_table() -> ForwardTable {
    let mut t = ForwardTable::new(Some(space("10.5.0.0/16", 24)), Some(space("fc00::/48", 64)));
    for (subnet, public) in [
        ("10.5.1.0/24", "192.0.2.1"),
        ("fc00:0:0:1::/64", "192.0.2.1"),
        ("10.5.3.0/24", "192.0.2.3"),
        ("fc00:0:0:3::/64", "192.0.2.3"),
    ] {
        t.insert(Peer {
            subnet: subnet.parse().expect("subnet"),
            public_ip: ip(public),
        });
    }
    t.set_own(
        Some("10.5.2.0/24".parse().expect("own")),
        Some("fc00:0:0:2::/64".parse().expect("own6")),
    );
    t
}

#[test]
fn ipv6_inner_packets_go_over_the_ipv4_underlay_and_spoofed_sources_are_dropped() {
    let table = n2_dual_table();
    let drops = ThreadDrops::default();
    // Outbound: an IPv6 packet for n3's subnet goes to n3's IPv4 address, hop limit 63,
    // and joins one GSO run with an IPv4 packet of the same size for n3.
    let mut out6 = packet6("fc00:0:0:2::2", "fc00:0:0:3::2", 1, 200);
    let mut out4 = packet("10.5.2.2", "10.5.3.2", 2, 200);
    let n3 = ip("192.0.2.3");
    assert_eq!(
        table.route_outbound(&mut out6, &drops),
        weft_core::forward::Outbound::Send { peer: n3 }
    );
    assert_eq!(out6[7], 63, "hop limit decremented");
    assert_eq!(
        table.route_outbound(&mut out4, &drops),
        weft_core::forward::Outbound::Send { peer: n3 }
    );
    let mut runs = Runs::new(64);
    assert_eq!(runs.push(n3, 0, 200), None);
    assert_eq!(runs.push(n3, 200, 200), None);
    assert_eq!(runs.finish().map(|r| r.count), Some(2));
    let mut nowhere = packet6("fc00:0:0:2::2", "fc00:0:0:9::2", 9, 200);
    assert_eq!(
        table.route_outbound(&mut nowhere, &drops),
        weft_core::forward::Outbound::Unreachable
    );

    // Inbound: a GRO buffer from n1 mixing both families: n1's own IPv6 source is
    // delivered, n3's IPv6 source from n1 is spoofed, an IPv6 packet not for us is not.
    let mut gro = Vec::new();
    gro.extend(packet6("fc00:0:0:1::2", "fc00:0:0:2::2", 1, 200));
    gro.extend(packet("10.5.1.2", "10.5.2.2", 2, 200));
    gro.extend(packet6("fc00:0:0:3::2", "fc00:0:0:2::2", 3, 200));
    gro.extend(packet6("fc00:0:0:1::2", "fc00:0:0:3::2", 4, 200));
    gro.extend(packet6("fc00:0:0:1::2", "fc00:0:0:2::2", 5, 120));
    let mut delivered = Vec::new();
    let n = each_inbound(&table, ip("192.0.2.1"), &gro, 200, &drops, |p| {
        delivered.push(if p[0] >> 4 == 6 { p[48] } else { tag(p) })
    });
    assert_eq!(n, 5);
    assert_eq!(delivered, [1, 2, 5]);
    let counted = drops.snapshot();
    assert_eq!(counted.get(DropReason::SpoofedSource), 1);
    assert_eq!(counted.get(DropReason::NotOurSubnet), 1);
    assert_eq!(counted.get(DropReason::NoRoute), 1);
    // The same IPv6 packet from n1's IPv6 address is no peer's: the underlay is IPv4.
    let from6 = packet6("fc00:0:0:1::2", "fc00:0:0:2::2", 1, 200);
    assert_eq!(
        table.accept_inbound(ip("2001:db8:1::1"), &from6, &drops),
        Inbound::Drop(DropReason::UnknownPeer)
    );
}
