//! ICMP errors the forwarding path sends back to a local sender.

use std::net::{Ipv4Addr, Ipv6Addr};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    Icmpv4DstUnreachable, Icmpv4Message, Icmpv4Packet, Icmpv4Repr, Icmpv6DstUnreachable,
    Icmpv6Message, Icmpv6Packet, IpProtocol, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr,
};

/// An ICMPv6 error is at most the minimum IPv6 MTU long (RFC 4443, 2.4 (c)).
pub const MAX_REPLY_V6: usize = 1280;

/// Writes into `out` an ICMPv6 "destination unreachable: no route to destination"
/// (type 1, code 0) from `from` to the sender of `original`, quoting as much of it, byte
/// for byte, as keeps the reply within [`MAX_REPLY_V6`] bytes (RFC 4443, 3.1), and
/// returns the length written. `None` when `original` is not a valid IPv6 packet, is
/// itself an ICMPv6 error (types below 128, RFC 4443 2.4 (e)), comes from the
/// unspecified or a multicast address, or `out` is too small.
pub fn net_unreachable_v6(original: &[u8], from: Ipv6Addr, out: &mut [u8]) -> Option<usize> {
    let orig = Ipv6Packet::new_checked(original).ok()?;
    let src = orig.src_addr();
    if src.is_unspecified() || src.is_multicast() {
        return None;
    }
    if orig.next_header() == IpProtocol::Icmpv6 {
        let icmp = Icmpv6Packet::new_checked(orig.payload()).ok()?;
        if u8::from(icmp.msg_type()) < 128 {
            return None;
        }
    }
    // The packet as far as its own length says, never the buffer's slack.
    let whole = &original[..40 + usize::from(orig.payload_len())];
    let quoted = &whole[..whole.len().min(MAX_REPLY_V6 - 40 - 8)];
    let icmp_len = 8 + quoted.len();
    let ip = Ipv6Repr {
        src_addr: from,
        dst_addr: src,
        next_header: IpProtocol::Icmpv6,
        payload_len: icmp_len,
        hop_limit: 64,
    };
    let total = ip.buffer_len() + icmp_len;
    let buf = out.get_mut(..total)?;
    let mut packet = Ipv6Packet::new_unchecked(buf);
    ip.emit(&mut packet);
    let mut icmp = Icmpv6Packet::new_unchecked(packet.payload_mut());
    icmp.set_msg_type(Icmpv6Message::DstUnreachable);
    icmp.set_msg_code(Icmpv6DstUnreachable::NoRoute.into());
    // The four unused bytes, then the invoking packet.
    let bytes = icmp.into_inner();
    bytes[4..8].fill(0);
    bytes[8..].copy_from_slice(quoted);
    let mut icmp = Icmpv6Packet::new_unchecked(bytes);
    icmp.fill_checksum(&from, &src);
    Some(total)
}

/// Writes into `out` an ICMPv4 "destination unreachable (network)" from `from` to the
/// sender of `original`, quoting its header and as much of its payload as keeps the
/// reply within 576 bytes (RFC 1812; RFC 792's minimum is 8), and returns the length
/// written. `None` when `original` is not a valid IPv4 packet,
/// is itself an ICMP error (never answer an error with an error), or `out` is too small.
pub fn net_unreachable_v4(original: &[u8], from: Ipv4Addr, out: &mut [u8]) -> Option<usize> {
    let caps = ChecksumCapabilities::default();
    let orig = Ipv4Packet::new_checked(original).ok()?;
    let header = Ipv4Repr::parse(&orig, &caps).ok()?;
    if header.next_header == IpProtocol::Icmp {
        let icmp = Icmpv4Packet::new_checked(orig.payload()).ok()?;
        if !matches!(
            icmp.msg_type(),
            Icmpv4Message::EchoRequest | Icmpv4Message::EchoReply
        ) {
            return None;
        }
    }
    const MAX_REPLY: usize = 576;
    let room = MAX_REPLY - 20 - 8 - header.buffer_len();
    let quoted = &orig.payload()[..orig.payload().len().min(room)];
    let icmp = Icmpv4Repr::DstUnreachable {
        reason: Icmpv4DstUnreachable::NetUnreachable,
        header,
        data: quoted,
    };
    let ip = Ipv4Repr {
        src_addr: from,
        dst_addr: header.src_addr,
        next_header: IpProtocol::Icmp,
        payload_len: icmp.buffer_len(),
        hop_limit: 64,
    };
    let total = ip.buffer_len() + icmp.buffer_len();
    let buf = out.get_mut(..total)?;
    let mut packet = Ipv4Packet::new_unchecked(buf);
    ip.emit(&mut packet, &caps);
    icmp.emit(
        &mut Icmpv4Packet::new_unchecked(packet.payload_mut()),
        &caps,
    );
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::Icmpv6Repr;

    fn v6(src: &str, dst: &str, next: IpProtocol, payload: &[u8]) -> Vec<u8> {
        let repr = Ipv6Repr {
            src_addr: src.parse().unwrap(),
            dst_addr: dst.parse().unwrap(),
            next_header: next,
            payload_len: payload.len(),
            hop_limit: 64,
        };
        let mut buf = vec![0u8; 40 + payload.len()];
        let mut p = Ipv6Packet::new_unchecked(&mut buf[..]);
        repr.emit(&mut p);
        // A flow label, which a re-emitted header would lose: the quote must keep it.
        buf[1] |= 0x0a;
        buf[40..].copy_from_slice(payload);
        buf
    }

    #[test]
    fn answers_ipv6_with_a_no_route_quoting_the_packet_and_never_answers_errors() {
        let caps = ChecksumCapabilities::default();
        let orig = v6(
            "fc00:0:0:1::2",
            "fc00:0:0:9::9",
            IpProtocol::Udp,
            &[7u8; 2000],
        );
        let from: Ipv6Addr = "fc00::".parse().unwrap();
        let mut out = [0u8; MAX_REPLY_V6];
        let n = net_unreachable_v6(&orig, from, &mut out).unwrap();
        assert_eq!(n, MAX_REPLY_V6, "a long packet is quoted up to 1280 bytes");
        let reply = Ipv6Packet::new_checked(&out[..n]).unwrap();
        assert_eq!(
            reply.dst_addr(),
            "fc00:0:0:1::2".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(reply.src_addr(), from);
        let icmp = Icmpv6Packet::new_checked(reply.payload()).unwrap();
        assert!(icmp.verify_checksum(&from, &reply.dst_addr()));
        match Icmpv6Repr::parse(&from, &reply.dst_addr(), &icmp, &caps).unwrap() {
            Icmpv6Repr::DstUnreachable { reason, header, .. } => {
                assert_eq!(reason, Icmpv6DstUnreachable::NoRoute);
                assert_eq!(
                    header.dst_addr,
                    "fc00:0:0:9::9".parse::<Ipv6Addr>().unwrap()
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(&icmp.into_inner()[8..], &orig[..MAX_REPLY_V6 - 48]);
        // A short packet is quoted whole, and a buffer's slack behind it is not.
        let short = v6(
            "fc00:0:0:1::2",
            "fc00:0:0:9::9",
            IpProtocol::Udp,
            &[1, 2, 3],
        );
        let mut padded = short.clone();
        padded.extend_from_slice(&[0xee; 16]);
        let n = net_unreachable_v6(&padded, from, &mut out).unwrap();
        assert_eq!(n, 48 + short.len());
        assert_eq!(&out[48..n], &short[..]);
        // The reply is an ICMPv6 error: no answer to it; nor to a ping from nowhere.
        assert_eq!(net_unreachable_v6(&out[..n], from, &mut [0; 1280]), None);
        let echo = v6(
            "fc00:0:0:1::2",
            "fc00:0:0:9::9",
            IpProtocol::Icmpv6,
            &[128, 0, 0, 0, 0, 1, 0, 1],
        );
        assert!(
            net_unreachable_v6(&echo, from, &mut [0; 1280]).is_some(),
            "a ping is answered"
        );
        let anon = v6("::", "fc00:0:0:9::9", IpProtocol::Udp, &[1]);
        assert_eq!(net_unreachable_v6(&anon, from, &mut [0; 1280]), None);
        assert_eq!(net_unreachable_v6(b"junk", from, &mut [0; 1280]), None);
        assert_eq!(
            net_unreachable_v6(&orig, from, &mut [0; 100]),
            None,
            "too small a buffer"
        );
    }

    #[test]
    fn answers_with_a_quoting_unreachable_and_never_answers_errors() {
        let caps = ChecksumCapabilities::default();
        let payload = [1u8, 2, 3, 4, 5, 6, 7, 8, 9, 10];
        let repr = Ipv4Repr {
            src_addr: Ipv4Addr::new(10, 5, 1, 2),
            dst_addr: Ipv4Addr::new(10, 5, 9, 9),
            next_header: IpProtocol::Udp,
            payload_len: payload.len(),
            hop_limit: 64,
        };
        let mut orig = vec![0u8; repr.buffer_len() + payload.len()];
        let mut p = Ipv4Packet::new_unchecked(&mut orig[..]);
        repr.emit(&mut p, &caps);
        p.payload_mut().copy_from_slice(&payload);

        let mut out = [0u8; 128];
        let n = net_unreachable_v4(&orig, Ipv4Addr::new(10, 5, 1, 1), &mut out).unwrap();
        let reply = Ipv4Packet::new_checked(&out[..n]).unwrap();
        let reply_repr = Ipv4Repr::parse(&reply, &caps).unwrap();
        assert_eq!(reply_repr.dst_addr, Ipv4Addr::new(10, 5, 1, 2));
        let icmp = Icmpv4Packet::new_checked(reply.payload()).unwrap();
        match Icmpv4Repr::parse(&icmp, &caps).unwrap() {
            Icmpv4Repr::DstUnreachable {
                reason,
                header,
                data,
            } => {
                assert_eq!(reason, Icmpv4DstUnreachable::NetUnreachable);
                assert_eq!(header.dst_addr, Ipv4Addr::new(10, 5, 9, 9));
                assert_eq!(data, &payload[..]);
            }
            other => panic!("{other:?}"),
        }
        // The reply is itself an ICMP error: no answer to it.
        assert_eq!(
            net_unreachable_v4(&out[..n], Ipv4Addr::new(10, 5, 9, 1), &mut [0; 128]),
            None
        );
        assert_eq!(
            net_unreachable_v4(b"junk", Ipv4Addr::new(10, 5, 9, 1), &mut [0; 128]),
            None
        );
    }
}
