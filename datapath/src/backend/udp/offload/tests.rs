//! Segmentation and coalescing against hand-built packets, checked with smoltcp's own
//! checksum code (an implementation independent of ours).

use std::net::{Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use smoltcp::wire::{IpAddress, Ipv4Packet, Ipv6Packet, TcpPacket, UdpPacket};

use super::*;

const SRC4: Ipv4Addr = Ipv4Addr::new(10, 5, 1, 2);
const DST4: Ipv4Addr = Ipv4Addr::new(10, 5, 2, 2);
const SRC6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 1, 0, 0, 0, 2);
const DST6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 2, 0, 0, 0, 2);

const FIN: u8 = 0x01;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;
const CWR: u8 = 0x80;

/// A TCP packet as the kernel hands it over: IP header (ID 0x1234, TTL 64), TCP header
/// with a 12-byte timestamp option (seq `seq`, ack 777, window 500, `flags`), `payload`.
/// The TCP checksum is left partial (the pseudo-header's sum), as with NEEDS_CSUM.
fn tcp_packet(v6: bool, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let l4 = if v6 { 40 } else { 20 };
    let tcp_len = 32 + payload.len();
    let mut p = vec![0u8; l4 + tcp_len];
    if v6 {
        p[0] = 0x60;
        p[4..6].copy_from_slice(&(tcp_len as u16).to_be_bytes());
        p[6] = 6;
        p[7] = 64;
        p[8..24].copy_from_slice(&SRC6.octets());
        p[24..40].copy_from_slice(&DST6.octets());
    } else {
        p[0] = 0x45;
        p[2..4].copy_from_slice(&((l4 + tcp_len) as u16).to_be_bytes());
        p[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        p[6] = 0x40; // DF
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&SRC4.octets());
        p[16..20].copy_from_slice(&DST4.octets());
        let c = !fold(sum(&p[..20], 0));
        p[10..12].copy_from_slice(&c.to_be_bytes());
    }
    let t = &mut p[l4..];
    t[0..2].copy_from_slice(&40000u16.to_be_bytes());
    t[2..4].copy_from_slice(&5201u16.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&777u32.to_be_bytes());
    t[12] = 8 << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&500u16.to_be_bytes());
    // NOP NOP timestamp(10).
    t[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 7]);
    t[32..].copy_from_slice(payload);
    let partial = fold(pseudo(&p, v6, 6, tcp_len));
    p[l4 + 16..l4 + 18].copy_from_slice(&partial.to_be_bytes());
    p
}

fn pseudo(p: &[u8], v6: bool, proto: u8, len: usize) -> u64 {
    if v6 {
        pseudo_header(&p[8..24], &p[24..40], proto, len)
    } else {
        pseudo_header(&p[12..16], &p[16..20], proto, len)
    }
}

/// Recomputes the TCP checksum of an IPv4 packet after a test changed its header.
fn refix_tcp4(mut p: Vec<u8>) -> Vec<u8> {
    p[36..38].copy_from_slice(&[0, 0]);
    let c = !fold(sum(&p[20..], pseudo(&p, false, 6, p.len() - 20)));
    p[36..38].copy_from_slice(&c.to_be_bytes());
    p
}

fn tso_hdr(v6: bool, mss: u16) -> VnetHdr {
    let l4 = if v6 { 40 } else { 20 };
    VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: if v6 { GSO_TCPV6 } else { GSO_TCPV4 },
        hdr_len: l4 + 32,
        gso_size: mss,
        csum_start: l4,
        csum_offset: 16,
    }
}

/// Checks `seg` as a receiver would (IP and TCP checksums with smoltcp) and returns
/// (IPv4 ID, seq, flags, payload).
fn check_tcp(seg: &[u8], v6: bool) -> (u16, u32, u8, Vec<u8>) {
    let (id, l4, src, dst) = if v6 {
        let ip = Ipv6Packet::new_checked(seg).expect("ipv6");
        assert_eq!(usize::from(ip.payload_len()) + 40, seg.len(), "ipv6 length");
        (0, 40, IpAddress::Ipv6(SRC6), IpAddress::Ipv6(DST6))
    } else {
        let ip = Ipv4Packet::new_checked(seg).expect("ipv4");
        assert!(ip.verify_checksum(), "ipv4 header checksum");
        assert_eq!(usize::from(ip.total_len()), seg.len(), "ipv4 length");
        (ip.ident(), 20, IpAddress::Ipv4(SRC4), IpAddress::Ipv4(DST4))
    };
    let tcp = TcpPacket::new_checked(&seg[l4..]).expect("tcp");
    assert!(tcp.verify_checksum(&src, &dst), "tcp checksum");
    (
        id,
        tcp.seq_number().0 as u32,
        seg[l4 + 13],
        tcp.payload().to_vec(),
    )
}

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[test]
fn a_tcpv4_super_packet_becomes_mss_sized_segments_with_their_own_headers() {
    let data = payload(3 * 1000 + 17);
    let sp = tcp_packet(false, 4_294_967_000, ACK | PSH | FIN | CWR, &data);
    let mut out = vec![0u8; 8000];
    let s = segment(&tso_hdr(false, 1000), &sp, &mut out).expect("segment");
    assert_eq!(s.count, 4);
    assert_eq!(s.segment, 52 + 1000);
    assert_eq!(s.len, 4 * 52 + data.len());
    let mut got = Vec::new();
    for (i, seg) in out[..s.len].chunks(s.segment).enumerate() {
        let (id, seq, flags, p) = check_tcp(seg, false);
        assert_eq!(id, 0x1234 + i as u16, "IPv4 IDs count up");
        // The sequence number wraps past 2^32 within this packet.
        assert_eq!(seq, 4_294_967_000u32.wrapping_add(1000 * i as u32));
        let want = match i {
            0 => ACK | CWR,
            3 => ACK | PSH | FIN,
            _ => ACK,
        };
        assert_eq!(flags, want, "flags of segment {i}");
        assert_eq!(
            seg[8], 64,
            "TTL untouched here: the forwarding table decrements it"
        );
        got.extend(p);
    }
    assert_eq!(got, data);
    assert_eq!(
        out[..s.len].chunks(s.segment).last().map(<[u8]>::len),
        Some(52 + 17)
    );
}

#[test]
fn a_tcpv6_super_packet_is_segmented_alike() {
    let data = payload(2 * 1200);
    let sp = tcp_packet(true, 1, ACK | PSH, &data);
    let mut out = vec![0u8; 8000];
    let s = segment(&tso_hdr(true, 1200), &sp, &mut out).expect("segment");
    assert_eq!((s.count, s.segment), (2, 72 + 1200));
    let segs: Vec<_> = out[..s.len]
        .chunks(s.segment)
        .map(|g| check_tcp(g, true))
        .collect();
    assert_eq!(segs[0].1, 1);
    assert_eq!(segs[1].1, 1201);
    assert_eq!((segs[0].2, segs[1].2), (ACK, ACK | PSH));
    assert_eq!([segs[0].3.clone(), segs[1].3.clone()].concat(), data);
}

#[test]
fn a_udp_super_packet_uso_becomes_datagrams_with_lengths_and_checksums() {
    let data = payload(2500);
    let mut sp = vec![0u8; 28 + data.len()];
    sp[0] = 0x45;
    let total = sp.len() as u16;
    sp[2..4].copy_from_slice(&total.to_be_bytes());
    sp[8] = 64;
    sp[9] = 17;
    sp[12..16].copy_from_slice(&SRC4.octets());
    sp[16..20].copy_from_slice(&DST4.octets());
    sp[28..].copy_from_slice(&data);
    let hdr = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_UDP_L4,
        hdr_len: 28,
        gso_size: 1000,
        csum_start: 20,
        csum_offset: 6,
    };
    let mut out = vec![0u8; 8000];
    let s = segment(&hdr, &sp, &mut out).expect("segment");
    assert_eq!((s.count, s.segment, s.len), (3, 1028, 3 * 28 + 2500));
    let mut got = Vec::new();
    for g in out[..s.len].chunks(s.segment) {
        let ip = Ipv4Packet::new_checked(g).expect("ipv4");
        assert!(ip.verify_checksum());
        let udp = UdpPacket::new_checked(ip.payload()).expect("udp");
        assert_eq!(usize::from(udp.len()), g.len() - 20);
        assert!(udp.verify_checksum(&IpAddress::Ipv4(SRC4), &IpAddress::Ipv4(DST4)));
        got.extend_from_slice(udp.payload());
    }
    assert_eq!(got, data);
}

#[test]
fn a_packet_without_gso_is_copied_and_its_partial_checksum_completed() {
    let sp = tcp_packet(false, 9, ACK, &payload(100));
    let hdr = VnetHdr {
        gso_type: GSO_NONE,
        ..tso_hdr(false, 0)
    };
    let mut out = vec![0u8; 2000];
    let s = segment(&hdr, &sp, &mut out).expect("segment");
    assert_eq!((s.count, s.len), (1, sp.len()));
    let (_, seq, _, p) = check_tcp(&out[..s.len], false);
    assert_eq!((seq, p), (9, payload(100)));
    // Without NEEDS_CSUM the packet is left exactly as it came.
    let mut out2 = vec![0u8; 2000];
    segment(&VnetHdr::default(), &sp, &mut out2).expect("copy");
    assert_eq!(&out2[..sp.len()], &sp[..]);
}

#[test]
fn bad_super_packets_are_errors_not_panics() {
    let sp = tcp_packet(false, 0, ACK, &payload(3000));
    let mut out = vec![0u8; 8000];
    let h = tso_hdr(false, 1000);
    let err = |hdr: VnetHdr, pkt: &[u8], out: &mut [u8]| segment(&hdr, pkt, out).unwrap_err();
    assert_eq!(
        err(VnetHdr { gso_size: 0, ..h }, &sp, &mut out),
        OffloadError::Malformed("gso_size 0")
    );
    assert_eq!(
        err(VnetHdr { gso_type: 3, ..h }, &sp, &mut out),
        OffloadError::Unsupported(3)
    );
    assert!(matches!(
        err(
            VnetHdr {
                csum_start: 24,
                ..h
            },
            &sp,
            &mut out
        ),
        OffloadError::Malformed(_)
    ));
    assert!(matches!(
        err(tso_hdr(true, 1000), &sp, &mut out),
        OffloadError::Malformed(_)
    ));
    assert_eq!(err(h, &sp[..30], &mut out), OffloadError::Truncated);
    assert_eq!(err(h, &sp[..52], &mut out), OffloadError::Truncated);
    assert_eq!(err(h, &sp, &mut out[..3000]), OffloadError::NoRoom);
    assert_eq!(
        err(h, &[], &mut out),
        OffloadError::Malformed("not an IP packet")
    );
    let partial = VnetHdr {
        gso_type: GSO_NONE,
        csum_start: 20,
        csum_offset: 16,
        ..h
    };
    assert_eq!(err(partial, &sp[..30], &mut out), OffloadError::Truncated);
}

/// Feeds `packets` to a coalescer, flushing at the end; returns each write as (virtio
/// header, packet, segment count).
fn coalesce(packets: &[Vec<u8>]) -> Vec<(VnetHdr, Vec<u8>, usize)> {
    let mut c = Coalescer::default();
    let mut writes = Vec::new();
    let mut w = |b: &[u8], n: usize| {
        writes.push((
            VnetHdr::parse(b).expect("hdr"),
            b[VNET_HDR_LEN..].to_vec(),
            n,
        ))
    };
    for p in packets {
        c.push(p, &mut w);
    }
    c.flush(&mut w);
    writes
}

/// The wire segments of a super-packet (full checksums), as the sending side makes them.
fn wire_segments(v6: bool, seq: u32, flags: u8, data: &[u8], mss: u16) -> Vec<Vec<u8>> {
    let sp = tcp_packet(v6, seq, flags, data);
    let mut out = vec![0u8; 2 * MAX_IP];
    let s = segment(&tso_hdr(v6, mss), &sp, &mut out).expect("segment");
    out[..s.len].chunks(s.segment).map(<[u8]>::to_vec).collect()
}

#[test]
fn consecutive_segments_of_one_flow_become_one_gso_write_that_resegments_to_them() {
    for v6 in [false, true] {
        let segs = wire_segments(v6, 1000, ACK | PSH, &payload(5 * 1400 + 3), 1400);
        let writes = coalesce(&segs);
        assert_eq!(writes.len(), 1, "v6 {v6}");
        let (hdr, pkt, n) = &writes[0];
        assert_eq!(*n, 6);
        assert_eq!(hdr.gso_size, 1400);
        assert_eq!(hdr.flags, F_NEEDS_CSUM);
        // The kernel would cut it into exactly the segments that came.
        let mut out = vec![0u8; 2 * MAX_IP];
        let s = segment(hdr, pkt, &mut out).expect("resegment");
        let again: Vec<_> = out[..s.len].chunks(s.segment).map(<[u8]>::to_vec).collect();
        assert_eq!(again, segs, "v6 {v6}");
    }
}

#[test]
fn a_corrupt_segment_in_a_burst_is_written_alone_and_its_neighbours_still_coalesce() {
    let mut segs = wire_segments(false, 0, ACK, &payload(6 * 1000), 1000);
    let bad = segs[2].len() - 1;
    segs[2][bad] ^= 0x55;
    let writes = coalesce(&segs);
    let counts: Vec<_> = writes.iter().map(|w| (w.0.gso_type, w.2)).collect();
    // 0-1 joined; 2 alone (the kernel will drop it: its checksum stays wrong); 3 cannot
    // continue 1 (a gap in sequence) so it starts anew with 4 and 5.
    assert_eq!(counts, vec![(GSO_TCPV4, 2), (GSO_NONE, 1), (GSO_TCPV4, 3)]);
    assert_eq!(writes[1].1, segs[2]);
}

/// `seg` (a wire segment) with source port `port`, its TCP checksum fixed.
fn with_port(mut seg: Vec<u8>, v6: bool, port: u16) -> Vec<u8> {
    let l4 = if v6 { 40 } else { 20 };
    seg[l4..l4 + 2].copy_from_slice(&port.to_be_bytes());
    seg[l4 + 16..l4 + 18].copy_from_slice(&[0, 0]);
    let c = !fold(sum(&seg[l4..], pseudo(&seg, v6, 6, seg.len() - l4)));
    seg[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
    seg
}

/// The wire segments of flow `port` (`n` segments of 1000 bytes from `seq`, ACK only).
fn flow(v6: bool, port: u16, seq: u32, n: usize) -> Vec<Vec<u8>> {
    wire_segments(v6, seq, ACK, &payload(n * 1000), 1000)
        .into_iter()
        .map(|s| with_port(s, v6, port))
        .collect()
}

/// Resegments a write as the kernel would: the packets it stands for.
fn resegment(hdr: &VnetHdr, pkt: &[u8]) -> Vec<Vec<u8>> {
    if hdr.gso_type == GSO_NONE {
        return vec![pkt.to_vec()];
    }
    let mut out = vec![0u8; 2 * MAX_IP];
    let s = segment(hdr, pkt, &mut out).expect("resegment");
    out[..s.len].chunks(s.segment).map(<[u8]>::to_vec).collect()
}

/// The source port of a TCP packet.
fn port_of(pkt: &[u8], v6: bool) -> u16 {
    let l4 = if v6 { 40 } else { 20 };
    u16::from_be_bytes([pkt[l4], pkt[l4 + 1]])
}

#[test]
fn interleaved_flows_each_coalesce_into_their_own_super_packet_in_order() {
    for v6 in [false, true] {
        let (a, b, c) = (
            flow(v6, 1001, 0, 6),
            flow(v6, 1002, 5000, 6),
            flow(v6, 1003, 9, 6),
        );
        // a b c a b c ...: what one GRO buffer holds when three streams share the hosts.
        let mut burst = Vec::new();
        for i in 0..6 {
            burst.extend([a[i].clone(), b[i].clone(), c[i].clone()]);
        }
        let writes = coalesce(&burst);
        assert_eq!(writes.len(), 3, "v6 {v6}: one write per flow");
        for (hdr, pkt, n) in &writes {
            assert_eq!((*n, hdr.gso_size), (6, 1000), "v6 {v6}");
            let want = match port_of(pkt, v6) {
                1001 => &a,
                1002 => &b,
                1003 => &c,
                p => panic!("port {p}"),
            };
            // The kernel would cut it into exactly the segments that came, in order.
            assert_eq!(&resegment(hdr, pkt), want, "v6 {v6}");
        }
    }
}

#[test]
fn a_gap_psh_or_short_segment_ends_only_its_own_flows_super_packet() {
    let a = flow(false, 1001, 0, 6);
    let b = flow(false, 1002, 0, 4);
    let mut psh = b[2].clone();
    psh[33] |= PSH;
    let psh = refix_tcp4(psh);
    let short = with_port(
        wire_segments(false, 4000, ACK, &payload(300), 1000).remove(0),
        false,
        1002,
    );
    let writes = coalesce(&[
        a[0].clone(),
        b[0].clone(),
        a[1].clone(),
        b[1].clone(),
        a[3].clone(), // a gap in a (2 is missing): a's 0-1 go out, 3 starts anew
        psh,          // b's 2 with PSH: joins b and closes it, written at once
        a[4].clone(),
        b[3].clone(), // after PSH: starts anew
        short,        // b's short last segment joins 3 and closes it
        a[5].clone(),
    ]);
    let got: Vec<_> = writes.iter().map(|w| (port_of(&w.1, false), w.2)).collect();
    assert_eq!(got, [(1001, 2), (1002, 3), (1002, 2), (1001, 3)]);
    let b_bytes: Vec<u8> = writes
        .iter()
        .filter(|w| port_of(&w.1, false) == 1002)
        .flat_map(|w| resegment(&w.0, &w.1))
        .flat_map(|s| check_tcp(&s, false).3)
        .collect();
    assert_eq!(b_bytes, [&payload(4000)[..], &payload(300)[..]].concat());
    let a_segs: Vec<_> = writes
        .iter()
        .filter(|w| port_of(&w.1, false) == 1001)
        .flat_map(|w| resegment(&w.0, &w.1))
        .collect();
    assert_eq!(a_segs, [&a[..2], &a[3..]].concat());
}

#[test]
fn a_packet_that_cannot_join_follows_its_flows_earlier_segments_and_others_wait() {
    for v6 in [false, true] {
        let a = flow(v6, 1001, 0, 3);
        let b = flow(v6, 1002, 0, 3);
        // A FIN of flow a: never coalesced, but written after a's first two.
        let mut fin = a[2].clone();
        fin[if v6 { 53 } else { 33 }] |= FIN;
        let fin = with_port(fin, v6, 1001);
        let udp = {
            let mut p = tcp_packet(v6, 0, ACK, &payload(10));
            p[if v6 { 6 } else { 9 }] = 17;
            p
        };
        let writes = coalesce(&[
            a[0].clone(),
            b[0].clone(),
            a[1].clone(),
            b[1].clone(),
            udp.clone(),
            fin.clone(),
            b[2].clone(),
        ]);
        let got: Vec<_> = writes.iter().map(|w| w.1.clone()).collect();
        // Not TCP: alone at once; the FIN: after a's pending two; b: at the batch end.
        assert_eq!(got[0], udp, "v6 {v6}");
        assert_eq!(resegment(&writes[1].0, &writes[1].1), a[..2], "v6 {v6}");
        assert_eq!(got[2], fin, "v6 {v6}");
        assert_eq!(resegment(&writes[3].0, &writes[3].1), b, "v6 {v6}");
        assert_eq!(writes.len(), 4, "v6 {v6}");
    }
}

#[test]
fn more_flows_than_rows_write_out_the_least_recently_used_and_lose_nothing() {
    let flows: Vec<_> = (0..coalesce::FLOWS as u16 + 3)
        .map(|i| flow(false, 2000 + i, 0, 3))
        .collect();
    let mut burst = Vec::new();
    for i in 0..3 {
        for f in &flows {
            burst.push(f[i].clone());
        }
    }
    let writes = coalesce(&burst);
    // Every segment is delivered once, each flow's in order.
    for (i, f) in flows.iter().enumerate() {
        let segs: Vec<_> = writes
            .iter()
            .filter(|w| port_of(&w.1, false) == 2000 + i as u16)
            .flat_map(|w| resegment(&w.0, &w.1))
            .collect();
        assert_eq!(&segs, f, "flow {i}");
    }
    assert_eq!(writes.iter().map(|w| w.2).sum::<usize>(), burst.len());
}

#[test]
fn a_segment_with_ip_options_fragments_or_other_flags_is_never_coalesced() {
    let base = wire_segments(false, 0, ACK, &payload(2000), 1000);
    let mut syn = base[1].clone();
    syn[33] |= 0x02;
    let syn = refix_tcp4(syn);
    let mut frag = base[1].clone();
    frag[6] = 0x20; // MF
    let c = {
        frag[10..12].copy_from_slice(&[0, 0]);
        !fold(sum(&frag[..20], 0))
    };
    frag[10..12].copy_from_slice(&c.to_be_bytes());
    for odd in [syn, frag] {
        let writes = coalesce(&[base[0].clone(), odd.clone()]);
        assert_eq!(writes.iter().map(|w| w.2).collect::<Vec<_>>(), vec![1, 1]);
        assert_eq!(writes[1].1, odd);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Any super-packet: the segments verify and reassemble to its payload, and the
    /// coalescer joins them back into one write that resegments to the same bytes.
    #[test]
    fn segments_verify_reassemble_and_coalesce_back(
        v6 in any::<bool>(),
        len in 1usize..60_000,
        mss in 500u16..1500,
        seq in any::<u32>(),
        psh in any::<bool>(),
    ) {
        let data = payload(len);
        let flags = if psh { ACK | PSH } else { ACK };
        let segs = wire_segments(v6, seq, flags, &data, mss);
        prop_assert_eq!(segs.len(), len.div_ceil(usize::from(mss)));
        let mut got = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            let (_, sseq, sflags, p) = check_tcp(s, v6);
            prop_assert_eq!(sseq, seq.wrapping_add(i as u32 * u32::from(mss)));
            let last = i + 1 == segs.len();
            prop_assert_eq!(sflags, if last { flags } else { ACK });
            got.extend(p);
        }
        prop_assert_eq!(&got, &data);
        let writes = coalesce(&segs);
        prop_assert_eq!(writes.len(), 1);
        let (hdr, pkt, n) = &writes[0];
        prop_assert_eq!(*n, segs.len());
        let mut out = vec![0u8; 2 * MAX_IP];
        let s = segment(hdr, pkt, &mut out).expect("resegment");
        let again: Vec<_> = out[..s.len].chunks(s.segment).map(<[u8]>::to_vec).collect();
        prop_assert_eq!(again, segs);
    }

    /// Our checksum agrees with a plain 16-bit-word reference on any bytes.
    #[test]
    fn checksum_matches_a_reference(data in proptest::collection::vec(any::<u8>(), 0..5000)) {
        let mut r: u32 = 0;
        for w in data.chunks(2) {
            r += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
        }
        while r > 0xffff {
            r = (r & 0xffff) + (r >> 16);
        }
        prop_assert_eq!(u32::from(fold(sum(&data, 0))), r);
        // Pieces combine through `initial` at any even split.
        let at = (data.len() / 2) & !1;
        prop_assert_eq!(fold(sum(&data[at..], sum(&data[..at], 0))), fold(sum(&data, 0)));
    }
}

/// n2's table: own 10.5.2.0/24; n1 (192.0.2.1) holds 10.5.1.0/24, n3 (192.0.2.3)
/// 10.5.3.0/24.
fn n2_table() -> weft_core::forward::ForwardTable {
    use weft_core::forward::{ForwardTable, Peer};
    use weft_core::subnet::SubnetSpace;
    let net: ipnet::IpNet = "10.5.0.0/16".parse().expect("net");
    let last = "10.5.255.0".parse().expect("last");
    let space = SubnetSpace::new(net, 24, net.network(), last).expect("space");
    let mut t = ForwardTable::new(Some(space), None);
    for (subnet, public) in [("10.5.1.0/24", "192.0.2.1"), ("10.5.3.0/24", "192.0.2.3")] {
        t.insert(Peer {
            subnet: subnet.parse().expect("subnet"),
            public_ip: public.parse().expect("public"),
        });
    }
    t.set_own(Some("10.5.2.0/24".parse().expect("own")), None);
    t
}

#[test]
fn a_spoofed_segment_inside_a_gro_burst_is_dropped_and_counted_and_its_neighbours_coalesce() {
    use super::super::batch::each_inbound;
    use weft_core::forward::{DropReason, ThreadDrops};
    let data = payload(5 * 1000);
    let mut segs = wire_segments(false, 0, ACK, &data, 1000);
    // The third comes from n1 but claims n3's subnet as its source, checksums intact.
    let mut spoofed = segs[2].clone();
    spoofed[12..16].copy_from_slice(&[10, 5, 3, 2]);
    spoofed[10..12].copy_from_slice(&[0, 0]);
    let c = !fold(sum(&spoofed[..20], 0));
    spoofed[10..12].copy_from_slice(&c.to_be_bytes());
    segs[2] = refix_tcp4(spoofed);
    let gro = segs.concat();
    let (table, drops) = (n2_table(), ThreadDrops::default());
    let mut coalescer = Coalescer::default();
    let mut writes = Vec::new();
    let mut w = |b: &[u8], n: usize| {
        writes.push((
            VnetHdr::parse(b).expect("hdr"),
            b[VNET_HDR_LEN..].to_vec(),
            n,
        ))
    };
    let n = each_inbound(
        &table,
        "192.0.2.1".parse().expect("n1"),
        &gro,
        1052,
        &drops,
        |p| coalescer.push(p, &mut w),
    );
    coalescer.flush(&mut w);
    assert_eq!(n, 5);
    assert_eq!(drops.snapshot().get(DropReason::SpoofedSource), 1);
    // 0-1 and 3-4 delivered, each pair as one super-packet carrying its bytes.
    assert_eq!(writes.iter().map(|w| w.2).collect::<Vec<_>>(), [2, 2]);
    for ((hdr, pkt, _), range) in writes.iter().zip([0..2000, 3000..5000]) {
        let mut out = vec![0u8; 2 * MAX_IP];
        let s = segment(hdr, pkt, &mut out).expect("resegment");
        let got: Vec<u8> = out[..s.len]
            .chunks(s.segment)
            .flat_map(|g| check_tcp(g, false).3)
            .collect();
        assert_eq!(got, data[range]);
    }
}

#[test]
fn a_spoofed_segment_in_a_burst_of_interleaved_flows_is_dropped_and_counted_alone() {
    use super::super::batch::each_inbound;
    use weft_core::forward::{DropReason, ThreadDrops};
    let a = flow(false, 1001, 0, 5);
    let b = flow(false, 1002, 0, 5);
    let mut spoofed = a[2].clone();
    spoofed[12..16].copy_from_slice(&[10, 5, 3, 2]);
    spoofed[10..12].copy_from_slice(&[0, 0]);
    let c = !fold(sum(&spoofed[..20], 0));
    spoofed[10..12].copy_from_slice(&c.to_be_bytes());
    let spoofed = refix_tcp4(spoofed);
    let mut gro = Vec::new();
    for i in 0..5 {
        gro.extend_from_slice(if i == 2 { &spoofed } else { &a[i] });
        gro.extend_from_slice(&b[i]);
    }
    let (table, drops) = (n2_table(), ThreadDrops::default());
    let mut coalescer = Coalescer::default();
    let mut writes = Vec::new();
    let mut w = |p: &[u8], n: usize| {
        writes.push((
            VnetHdr::parse(p).expect("hdr"),
            p[VNET_HDR_LEN..].to_vec(),
            n,
        ))
    };
    let from = "192.0.2.1".parse().expect("n1");
    let n = each_inbound(&table, from, &gro, 1052, &drops, |p| {
        coalescer.push(p, &mut w)
    });
    coalescer.flush(&mut w);
    assert_eq!(n, 10);
    assert_eq!(drops.snapshot().get(DropReason::SpoofedSource), 1);
    assert_eq!(drops.snapshot().total(), 1, "nothing else dropped");
    let segs = |port| -> Vec<Vec<u8>> {
        writes
            .iter()
            .filter(|w| port_of(&w.1, false) == port)
            .flat_map(|w| resegment(&w.0, &w.1))
            .collect()
    };
    // a: everything but the spoofed one, in order; b: all five, in one write.
    assert_eq!(segs(1001), [&a[..2], &a[3..]].concat());
    assert_eq!(segs(1002), b);
    let counts: Vec<_> = writes.iter().map(|w| (port_of(&w.1, false), w.2)).collect();
    assert_eq!(counts, [(1001, 2), (1001, 2), (1002, 5)]);
}
