//! Receive-side coalescing: the TCP segments of each flow, each already accepted by the
//! forwarding table, joined into one super-packet per flow and written to the TUN device
//! in one write with a GSO virtio header -- what the kernel's own GRO does for a NIC.
//!
//! A received batch carries the segments of several flows interleaved (UDP GRO joins
//! datagrams by the outer addresses, which every flow between two hosts shares), so the
//! coalescer keeps a small table of flows, each building its own super-packet, as
//! wireguard-go's `tcpGRO` does. A segment joins its flow's super-packet only when the
//! kernel could have cut that super-packet into exactly these segments again: same
//! addresses, ports, IP header fields (TOS, TTL, DF / traffic class, flow label, hop
//! limit), acknowledgment and TCP options; its sequence number continues the previous
//! one; only ACK and PSH set; payload no longer than the first one's. A shorter one or a
//! PSH ends the super-packet, which is then written at once. A segment that cannot join
//! writes its flow's super-packet out first, so that one flow's bytes reach the device in
//! the order they came; flows' writes may interleave differently than they arrived. Each
//! segment's checksums are verified before it joins, because the kernel will compute one
//! fresh checksum over the whole: a corrupt segment is written alone, and the kernel
//! drops it as it would have.

use super::{
    fold, pseudo_header, sum, VnetHdr, F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6, MAX_IP, VNET_HDR_LEN,
};

const TCP: u8 = 6;
const ACK: u8 = 0x10;
const PSH: u8 = 0x08;

/// How many flows build super-packets at once; a segment of one more flow writes out the
/// one least recently added to.
pub(crate) const FLOWS: usize = 8;

/// What tells one TCP flow from another: the IP version, both addresses and both ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FlowKey {
    v6: bool,
    /// Source and destination address, then source and destination port (IPv4 uses the
    /// first 12 bytes).
    bytes: [u8; 36],
}

/// The flow of a TCP packet whose ports can be read (no later fragment), coalescible or
/// not: a packet that cannot join still has to follow its flow's earlier segments.
fn flow_key(pkt: &[u8]) -> Option<FlowKey> {
    let mut bytes = [0u8; 36];
    match pkt.first()? >> 4 {
        4 => {
            let l4 = usize::from(pkt[0] & 0x0f) * 4;
            let frag = u16::from_be_bytes([*pkt.get(6)?, *pkt.get(7)?]);
            if l4 < 20 || *pkt.get(9)? != TCP || frag & 0x1fff != 0 {
                return None;
            }
            bytes[..8].copy_from_slice(pkt.get(12..20)?);
            bytes[8..12].copy_from_slice(pkt.get(l4..l4 + 4)?);
            Some(FlowKey { v6: false, bytes })
        }
        6 => {
            if *pkt.get(6)? != TCP {
                return None;
            }
            bytes[..32].copy_from_slice(pkt.get(8..40)?);
            bytes[32..].copy_from_slice(pkt.get(40..44)?);
            Some(FlowKey { v6: true, bytes })
        }
        _ => None,
    }
}

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

/// The super-packet one flow is building.
#[derive(Debug, Clone, Copy)]
struct Pending {
    key: FlowKey,
    first: Segment,
    /// Payload bytes of the first segment: the GSO size.
    gso_size: usize,
    count: usize,
    next_seq: u32,
}

/// One row of the flow table: a buffer (virtio header, then the packet being built),
/// allocated once.
#[derive(Debug)]
struct Flow {
    buf: Box<[u8]>,
    /// Bytes of packet in `buf` after the virtio header.
    len: usize,
    pending: Option<Pending>,
    /// When a segment last joined (a count of segments pushed), to pick the row to reuse.
    used: u64,
}

impl Flow {
    fn new() -> Self {
        Flow {
            buf: vec![0u8; VNET_HDR_LEN + MAX_IP].into_boxed_slice(),
            len: 0,
            pending: None,
            used: 0,
        }
    }

    /// Whether `pkt` (classified as `seg`) continues this row's super-packet.
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
        seg.v6 == p.first.v6
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

    /// Appends the payload of `pkt`, which [`Flow::joins`]; returns whether it closed the
    /// super-packet (a short segment or PSH: nothing more may join).
    fn append(&mut self, pkt: &[u8], seg: &Segment) -> bool {
        let payload = &pkt[seg.hdr_len..];
        let at = VNET_HDR_LEN + self.len;
        self.buf[at..at + payload.len()].copy_from_slice(payload);
        self.len += payload.len();
        let Some(p) = self.pending.as_mut() else {
            return true;
        };
        p.count += 1;
        p.next_seq = p.next_seq.wrapping_add(payload.len() as u32);
        let tcp = VNET_HDR_LEN + p.first.l4;
        // The latest window, and PSH if any segment carried it.
        self.buf[tcp + 14..tcp + 16].copy_from_slice(&pkt[seg.l4 + 14..seg.l4 + 16]);
        self.buf[tcp + 13] |= seg.flags & PSH;
        payload.len() < p.gso_size || seg.flags & PSH != 0
    }

    /// Starts a super-packet with `pkt` (nothing is pending); returns whether it is
    /// already closed (PSH).
    fn start(&mut self, key: FlowKey, pkt: &[u8], seg: Segment) -> bool {
        self.buf[VNET_HDR_LEN..VNET_HDR_LEN + pkt.len()].copy_from_slice(pkt);
        self.len = pkt.len();
        let gso_size = pkt.len() - seg.hdr_len;
        self.pending = Some(Pending {
            key,
            first: seg,
            gso_size,
            count: 1,
            next_seq: seg.seq.wrapping_add(gso_size as u32),
        });
        seg.flags & PSH != 0
    }

    /// Writes out the pending super-packet, if any.
    fn flush(&mut self, write: &mut impl FnMut(&[u8], usize)) {
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
}

/// Joins accepted TCP segments into super-packets, per flow; see the module docs. Holds
/// one buffer per row of its flow table and one for packets written alone, allocated
/// once.
#[derive(Debug)]
pub(crate) struct Coalescer {
    flows: Vec<Flow>,
    /// A virtio header and a packet written alone.
    single: Box<[u8]>,
    /// Segments pushed so far: the clock of [`Flow::used`].
    pushed: u64,
}

impl Default for Coalescer {
    fn default() -> Self {
        Coalescer {
            flows: (0..FLOWS).map(|_| Flow::new()).collect(),
            single: vec![0u8; VNET_HDR_LEN + MAX_IP].into_boxed_slice(),
            pushed: 0,
        }
    }
}

impl Coalescer {
    /// Takes `pkt`, accepted for delivery; writes out, through `write` (each call one TUN
    /// write: virtio header and packet, and how many received packets it carries),
    /// whatever it can no longer join.
    pub fn push(&mut self, pkt: &[u8], write: &mut impl FnMut(&[u8], usize)) {
        self.pushed += 1;
        let key = flow_key(pkt);
        let row = key.and_then(|k| self.row_of(&k));
        let (Some(key), Some(seg)) = (key, classify(pkt)) else {
            // Not a segment that can join: after its flow's earlier bytes, alone.
            if let Some(i) = row {
                self.flows[i].flush(write);
            }
            return self.write_alone(pkt, write);
        };
        let i = match row {
            Some(i) if self.flows[i].joins(pkt, &seg) => {
                let flow = &mut self.flows[i];
                flow.used = self.pushed;
                if flow.append(pkt, &seg) {
                    flow.flush(write);
                }
                return;
            }
            Some(i) => i,
            None => self.free_row(),
        };
        let flow = &mut self.flows[i];
        flow.flush(write);
        flow.used = self.pushed;
        if flow.start(key, pkt, seg) {
            flow.flush(write);
        }
    }

    /// Writes out every pending super-packet: the end of a received batch.
    pub fn flush(&mut self, write: &mut impl FnMut(&[u8], usize)) {
        for flow in &mut self.flows {
            flow.flush(write);
        }
    }

    /// The row building `key`'s super-packet, if one is.
    fn row_of(&self, key: &FlowKey) -> Option<usize> {
        self.flows
            .iter()
            .position(|f| f.pending.as_ref().is_some_and(|p| p.key == *key))
    }

    /// A row with nothing pending, or else the one least recently added to (which the
    /// caller writes out before it reuses it).
    fn free_row(&self) -> usize {
        let mut best = 0;
        for (i, f) in self.flows.iter().enumerate() {
            if f.pending.is_none() {
                return i;
            }
            if f.used < self.flows[best].used {
                best = i;
            }
        }
        best
    }

    /// Writes `pkt` on its own, behind an empty virtio header.
    fn write_alone(&mut self, pkt: &[u8], write: &mut impl FnMut(&[u8], usize)) {
        VnetHdr::default().emit(&mut self.single);
        self.single[VNET_HDR_LEN..VNET_HDR_LEN + pkt.len()].copy_from_slice(pkt);
        write(&self.single[..VNET_HDR_LEN + pkt.len()], 1);
    }
}
