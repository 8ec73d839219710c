//! Reading an IP header and decrementing its TTL, IPv4 and IPv6 alike, on smoltcp's
//! wire types.

use std::net::IpAddr;

use smoltcp::wire::{Ipv4Packet, Ipv6Packet};

use super::WireError;

/// The fields of an IP header the forwarding decision needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpHeader {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// TTL (IPv4) or hop limit (IPv6).
    pub ttl: u8,
}

fn map(e: smoltcp::wire::Error) -> WireError {
    let _ = e;
    WireError::Truncated
}

/// Parses the IP header at the start of `packet`, checking lengths (and the IPv4 header
/// checksum, as a kernel would).
pub fn parse(packet: &[u8]) -> Result<IpHeader, WireError> {
    match packet.first().map(|b| b >> 4) {
        Some(4) => {
            let p = Ipv4Packet::new_checked(packet).map_err(map)?;
            // smoltcp checks that the header fits, not that it is one: an IHL below 5
            // (a "header" of 0 to 16 bytes) is no IPv4 packet, and a kernel drops it
            // (RFC 791: at least five words).
            if p.header_len() < 20 {
                return Err(WireError::Malformed);
            }
            if !p.verify_checksum() {
                return Err(WireError::Checksum);
            }
            Ok(IpHeader {
                src: IpAddr::V4(p.src_addr()),
                dst: IpAddr::V4(p.dst_addr()),
                ttl: p.hop_limit(),
            })
        }
        Some(6) => {
            let p = Ipv6Packet::new_checked(packet).map_err(map)?;
            Ok(IpHeader {
                src: IpAddr::V6(p.src_addr()),
                dst: IpAddr::V6(p.dst_addr()),
                ttl: p.hop_limit(),
            })
        }
        Some(_) => Err(WireError::Malformed),
        None => Err(WireError::Truncated),
    }
}

/// Decrements the TTL (hop limit) of a packet that [`parse`] accepted, updating the IPv4
/// header checksum incrementally (RFC 1624). The caller has checked that the TTL is
/// above 1; a TTL of 0 is left as it is.
pub fn decrement_ttl(packet: &mut [u8]) -> Result<(), WireError> {
    match packet.first().map(|b| b >> 4) {
        Some(4) => {
            let mut p = Ipv4Packet::new_checked(packet).map_err(map)?;
            let ttl = p.hop_limit();
            if ttl == 0 {
                return Ok(());
            }
            p.set_hop_limit(ttl - 1);
            let proto = u8::from(p.next_header());
            let checksum = updated_checksum(
                p.checksum(),
                u16::from_be_bytes([ttl, proto]),
                u16::from_be_bytes([ttl - 1, proto]),
            );
            p.set_checksum(checksum);
            Ok(())
        }
        Some(6) => {
            let mut p = Ipv6Packet::new_checked(packet).map_err(map)?;
            let ttl = p.hop_limit();
            p.set_hop_limit(ttl.saturating_sub(1));
            Ok(())
        }
        _ => Err(WireError::Malformed),
    }
}

/// The header checksum `hc` after one 16-bit word of the header changed from `old` to
/// `new`: RFC 1624's incremental update, `HC' = ~(~HC + ~m + m')`, instead of summing
/// the whole header again. For a header whose checksum was valid it gives exactly what
/// a full recomputation gives (the RFC's equation 3 never yields the 0xFFFF that
/// equation 2 can).
fn updated_checksum(hc: u16, old: u16, new: u16) -> u16 {
    let mut s = u32::from(!hc) + u32::from(!old) + u32::from(new);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{IpProtocol, Ipv4Repr};

    pub(crate) fn v4(src: [u8; 4], dst: [u8; 4], ttl: u8, payload: &[u8]) -> Vec<u8> {
        let repr = Ipv4Repr {
            src_addr: src.into(),
            dst_addr: dst.into(),
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

    #[test]
    fn parses_and_decrements_with_a_valid_checksum() {
        let mut pkt = v4([10, 5, 1, 2], [10, 5, 2, 3], 64, b"hello");
        let h = parse(&pkt).unwrap();
        assert_eq!(h.src, "10.5.1.2".parse::<IpAddr>().unwrap());
        assert_eq!(h.ttl, 64);
        decrement_ttl(&mut pkt).unwrap();
        let h = parse(&pkt).unwrap();
        assert_eq!(h.ttl, 63, "and the checksum still verifies");
    }

    proptest::proptest! {
        /// The incremental update (RFC 1624) gives exactly the checksum a full
        /// recomputation gives, on any header with a valid checksum.
        #[test]
        fn the_incremental_ttl_update_equals_a_full_recomputation(
            src in proptest::prelude::any::<[u8; 4]>(),
            dst in proptest::prelude::any::<[u8; 4]>(),
            ttl in 1u8..=255,
            id in proptest::prelude::any::<u16>(),
            len in 0usize..40,
        ) {
            let mut pkt = v4(src, dst, ttl, &vec![7; len]);
            pkt[4..6].copy_from_slice(&id.to_be_bytes());
            Ipv4Packet::new_unchecked(&mut pkt[..]).fill_checksum();
            let mut full = pkt.clone();
            decrement_ttl(&mut pkt).unwrap();
            let mut p = Ipv4Packet::new_unchecked(&mut full[..]);
            p.set_hop_limit(ttl - 1);
            p.fill_checksum();
            proptest::prop_assert_eq!(pkt, full);
        }
    }

    #[test]
    fn garbage_is_an_error() {
        assert_eq!(parse(&[]), Err(WireError::Truncated));
        assert_eq!(parse(&[0x10; 40]), Err(WireError::Malformed));
        assert!(parse(&[0x45, 0, 0, 20]).is_err());
        let mut pkt = v4([10, 5, 1, 2], [10, 5, 2, 3], 64, b"x");
        pkt[8] = 7; // TTL changed without fixing the checksum
        assert_eq!(parse(&pkt), Err(WireError::Checksum));
        let full = v4([10, 5, 1, 2], [10, 5, 2, 3], 64, b"some payload");
        assert!(parse(&full[..full.len() - 3]).is_err(), "truncated");
    }

    #[test]
    fn an_ipv4_header_shorter_than_five_words_is_malformed_even_with_a_valid_checksum() {
        for ihl in 0..5u8 {
            let mut pkt = v4([10, 5, 1, 2], [10, 5, 2, 3], 64, b"payload");
            pkt[0] = 0x40 | ihl;
            // The checksum over the IHL's words, as a sender of such a packet would fill it.
            let len = usize::from(ihl) * 4;
            pkt[10..12].fill(0);
            let mut sum: u32 = pkt[..len]
                .chunks(2)
                .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
                .sum();
            while sum > 0xffff {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            if len > 10 {
                pkt[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
            }
            assert_eq!(parse(&pkt), Err(WireError::Malformed), "IHL {ihl}");
        }
    }
}
