//! ICMP errors the forwarding path sends back to a local sender.

use std::net::Ipv4Addr;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    Icmpv4DstUnreachable, Icmpv4Message, Icmpv4Packet, Icmpv4Repr, IpProtocol, Ipv4Packet, Ipv4Repr,
};

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
