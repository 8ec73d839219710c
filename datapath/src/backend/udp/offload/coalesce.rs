//! Receive-side coalescing: consecutive TCP segments of one flow, each already accepted by
//! the forwarding table, joined into one super-packet and written to the TUN device in
//! one write with a GSO virtio header -- what the kernel's own GRO does for a NIC.
//!
//! A segment joins only when the kernel could have cut the super-packet into exactly
//! these segments again: same addresses, ports, IP header fields (TOS, TTL, DF / traffic
//! class, flow label, hop limit), acknowledgment and TCP options; its sequence number
//! continues the previous one; only ACK and PSH set; payload no longer than the first
//! one's, and a shorter one or a PSH ends the super-packet. Each segment's checksums are
//! verified before it joins, because the kernel will compute one fresh checksum over the
//! whole: a corrupt segment is written alone, and the kernel drops it as it would have.

use super::{
    fold, pseudo_header, sum, VnetHdr, F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6, MAX_IP, VNET_HDR_LEN,
};

const TCP: u8 = 6;
const ACK: u8 = 0x10;
const PSH: u8 = 0x08;

/// A TCP segment that may join a super-packet: where its parts are.
#[derive(Debug, Clone, Copy)]
struct Segment {
    v6: bool,
    /// The IP header's length (where TCP starts).
    l4: usize,
    /// IP and TCP headers' length (where the payload starts).
    hdr_len: usize,
    seq: u32,
    flags: u8,
}

/// Whether `pkt` is a TCP segment that can be coalesced, with valid checksums.
fn classify(pkt: &[u8]) -> Option<Segment> {
    let (v6, l4) = match pkt.first()? >> 4 {
        4 => {
            // No IP options, no fragment, the length exact, the header checksum valid.
            if pkt.len() < 20 || pkt[0] & 0x0f != 5 || pkt[9] != TCP {
                return None;
            }
            let frag = u16::from_be_bytes([pkt[6], pkt[7]]);
            if frag & 0x3fff != 0 || usize::from(u16::from_be_bytes([pkt[2], pkt[3]])) != pkt.len()
            {
                return None;
            }
            if fold(sum(&pkt[..20], 0)) != 0xffff {
                return None;
            }
            (false, 20)
        }
        6 => {
            if pkt.len() < 40
                || pkt[6] != TCP
                || usize::from(u16::from_be_bytes([pkt[4], pkt[5]])) + 40 != pkt.len()
            {
                return None;
            }
            (true, 40)
        }
        _ => return None,
    };
    let tcp = pkt.get(l4..l4 + 20)?;
    let hdr_len = l4 + usize::from(tcp[12] >> 4) * 4;
    let flags = tcp[13];
    if hdr_len < l4 + 20 || hdr_len >= pkt.len() || flags & !(ACK | PSH) != 0 || flags & ACK == 0 {
        return None;
    }
    let pseudo = pseudo_sum(pkt, v6, pkt.len() - l4);
    if fold(sum(&pkt[l4..], pseudo)) != 0xffff {
        return None;
    }
    Some(Segment {
        v6,
        l4,
        hdr_len,
        seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        flags,
    })
}

fn pseudo_sum(pkt: &[u8], v6: bool, len: usize) -> u64 {
    if v6 {
        pseudo_header(&pkt[8..24], &pkt[24..40], TCP, len)
    } else {
        pseudo_header(&pkt[12..16], &pkt[16..20], TCP, len)
    }
}

/// The super-packet being built.
#[derive(Debug, Clone, Copy)]
struct Pending {
    first: Segment,
    /// Payload bytes of the first segment: the GSO size.
    gso_size: usize,
    count: usize,
    next_seq: u32,
    /// A short or PSH segment joined: nothing more may.
    closed: bool,
}

/// Joins accepted TCP segments into super-packets; see the module docs. Holds one buffer
/// for the packet being built, allocated once.
#[derive(Debug)]
pub(crate) struct Coalescer {
    /// The virtio header, then the packet being built.
    buf: Box<[u8]>,
    /// Bytes of packet in `buf` after the virtio header.
    len: usize,
    pending: Option<Pending>,
}

impl Default for Coalescer {
    fn default() -> Self {
        Coalescer {
            buf: vec![0u8; VNET_HDR_LEN + MAX_IP].into_boxed_slice(),
            len: 0,
            pending: None,
        }
    }
}

impl Coalescer {
    /// Takes `pkt`, accepted for delivery; writes out, through `write` (each call one TUN
    /// write: virtio header and packet), whatever it can no longer join.
    pub fn push(&mut self, pkt: &[u8], write: &mut impl FnMut(&[u8], usize)) {
        let Some(seg) = classify(pkt) else {
            self.flush(write);
            return self.write_alone(pkt, write);
        };
        if self.joins(pkt, &seg) {
            let payload = &pkt[seg.hdr_len..];
            let at = VNET_HDR_LEN + self.len;
            self.buf[at..at + payload.len()].copy_from_slice(payload);
            self.len += payload.len();
            let Some(p) = self.pending.as_mut() else {
                return;
            };
            p.count += 1;
            p.next_seq = p.next_seq.wrapping_add(payload.len() as u32);
            let tcp = VNET_HDR_LEN + p.first.l4;
            // The latest window, and PSH if any segment carried it.
            self.buf[tcp + 14..tcp + 16].copy_from_slice(&pkt[seg.l4 + 14..seg.l4 + 16]);
            self.buf[tcp + 13] |= seg.flags & PSH;
            p.closed = payload.len() < p.gso_size || seg.flags & PSH != 0;
            return;
        }
        self.flush(write);
        self.buf[VNET_HDR_LEN..VNET_HDR_LEN + pkt.len()].copy_from_slice(pkt);
        self.len = pkt.len();
        let gso_size = pkt.len() - seg.hdr_len;
        self.pending = Some(Pending {
            first: seg,
            gso_size,
            count: 1,
            next_seq: seg.seq.wrapping_add(gso_size as u32),
            closed: seg.flags & PSH != 0,
        });
    }

    /// Whether `pkt` (classified as `seg`) continues the pending super-packet.
    fn joins(&self, pkt: &[u8], seg: &Segment) -> bool {
        let Some(p) = &self.pending else {
            return false;
        };
        let payload = pkt.len() - seg.hdr_len;
        let head = &self.buf[VNET_HDR_LEN..VNET_HDR_LEN + p.first.hdr_len];
        let same_ip = if seg.v6 {
            // Version, traffic class, flow label; next header, hop limit; addresses.
            head[..4] == pkt[..4] && head[6..40] == pkt[6..40]
        } else {
            // TOS; DF; TTL, protocol; addresses.
            head[1] == pkt[1] && head[6..10] == pkt[6..10] && head[12..20] == pkt[12..20]
        };
        let (l4, end) = (seg.l4, seg.hdr_len);
        !p.closed
            && seg.v6 == p.first.v6
            && seg.hdr_len == p.first.hdr_len
            && seg.seq == p.next_seq
            && payload <= p.gso_size
            && self.len + payload <= MAX_IP
            && same_ip
            // Ports; acknowledgment and data offset; options.
            && head[l4..l4 + 4] == pkt[l4..l4 + 4]
            && head[l4 + 8..l4 + 13] == pkt[l4 + 8..l4 + 13]
            && head[l4 + 20..end] == pkt[l4 + 20..end]
    }

    /// Writes out the pending super-packet, if any.
    pub fn flush(&mut self, write: &mut impl FnMut(&[u8], usize)) {
        let Some(p) = self.pending.take() else {
            return;
        };
        let len = self.len;
        self.len = 0;
        let seg = p.first;
        if p.count == 1 {
            VnetHdr::default().emit(&mut self.buf);
            return write(&self.buf[..VNET_HDR_LEN + len], 1);
        }
        let pkt = &mut self.buf[VNET_HDR_LEN..VNET_HDR_LEN + len];
        if seg.v6 {
            pkt[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
        } else {
            pkt[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            pkt[10..12].copy_from_slice(&[0, 0]);
            let c = !fold(sum(&pkt[..20], 0));
            pkt[10..12].copy_from_slice(&c.to_be_bytes());
        }
        // A partial checksum, as the kernel expects with NEEDS_CSUM: the pseudo-header's
        // sum, not inverted; the kernel sums the rest when it segments or delivers.
        let partial = fold(pseudo_sum(pkt, seg.v6, len - seg.l4));
        pkt[seg.l4 + 16..seg.l4 + 18].copy_from_slice(&partial.to_be_bytes());
        VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: if seg.v6 { GSO_TCPV6 } else { GSO_TCPV4 },
            hdr_len: seg.hdr_len as u16,
            gso_size: p.gso_size as u16,
            csum_start: seg.l4 as u16,
            csum_offset: 16,
        }
        .emit(&mut self.buf);
        write(&self.buf[..VNET_HDR_LEN + len], p.count);
    }

    /// Writes `pkt` on its own, behind an empty virtio header (nothing is pending).
    fn write_alone(&mut self, pkt: &[u8], write: &mut impl FnMut(&[u8], usize)) {
        VnetHdr::default().emit(&mut self.buf);
        self.buf[VNET_HDR_LEN..VNET_HDR_LEN + pkt.len()].copy_from_slice(pkt);
        write(&self.buf[..VNET_HDR_LEN + pkt.len()], 1);
    }
}
