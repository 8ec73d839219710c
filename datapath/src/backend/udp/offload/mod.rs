//! TUN offloads without a change on the wire: the pure part.
//!
//! With `IFF_VNET_HDR` every packet read from or written to the TUN device starts with a
//! `virtio_net_hdr` ([`VnetHdr`]); with `TUNSETOFFLOAD` the kernel may hand over TCP (and
//! UDP, with USO) super-packets of up to 64 KiB and leave the transport checksum to us.
//! flannel's wire format has no room for either: one datagram is one ordinary IP packet.
//! So outbound, [`segment`] cuts a super-packet into the MSS-sized packets the kernel
//! would have sent, each with its own IP length, ID and checksum and its own TCP sequence
//! number, flags and checksum; every one of them is then decided by the forwarding table
//! alone. Inbound, [`Coalescer`] joins consecutive, already accepted TCP segments of one
//! flow back into one super-packet for one TUN write, which the kernel treats as if its
//! own GRO had built it.
//!
//! No I/O and no allocation per packet: both work in buffers their caller owns.

mod checksum;
mod coalesce;

pub(crate) use checksum::{fold, pseudo_header, sum};
pub(crate) use coalesce::Coalescer;

/// The size of the `virtio_net_hdr` before every packet on a TUN device with
/// `IFF_VNET_HDR` (the kernel's default, never changed with `TUNSETVNETHDRSZ`).
pub(crate) const VNET_HDR_LEN: usize = 10;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the transport checksum is partial (pseudo-header only)
/// and must be completed over `csum_start..`.
pub(crate) const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_NONE`.
pub(crate) const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub(crate) const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_TCPV6`.
pub(crate) const GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_UDP_L4` (USO).
pub(crate) const GSO_UDP_L4: u8 = 5;
/// `VIRTIO_NET_HDR_GSO_ECN`, or'ed into the type.
const GSO_ECN: u8 = 0x80;

const TCP: u8 = 6;
const UDP: u8 = 17;

/// The biggest IP packet, and so the biggest super-packet.
pub(crate) const MAX_IP: usize = 65_535;

/// A `virtio_net_hdr`, in the byte order of the host (a legacy virtio header, which is
/// what a TUN device without `TUNSETVNETLE`/`BE` speaks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    /// The header at the start of `buf`, or `None` when `buf` is shorter than one.
    pub fn parse(buf: &[u8]) -> Option<VnetHdr> {
        let b = buf.get(..VNET_HDR_LEN)?;
        let u16_at = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        })
    }

    /// Writes the header into the first [`VNET_HDR_LEN`] bytes of `buf`.
    pub fn emit(&self, buf: &mut [u8]) {
        buf[0] = self.flags;
        buf[1] = self.gso_type;
        buf[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        buf[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        buf[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        buf[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
    }
}

/// Why a packet read from the TUN device could not be turned into wire packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum OffloadError {
    /// Shorter than its headers say.
    #[error("packet truncated")]
    Truncated,
    /// The headers contradict the virtio header or themselves.
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// A GSO type weft never asked the kernel for.
    #[error("unsupported GSO type {0}")]
    Unsupported(u8),
    /// The segments would not fit in the output buffer.
    #[error("no room for the segments")]
    NoRoom,
}

/// Where [`segment`] put its packets: `count` of them back to back from the start of the
/// output, each `segment` bytes but the last, which may be shorter; `len` bytes in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Segments {
    pub segment: usize,
    pub count: usize,
    pub len: usize,
}

/// The IP header of `pkt`: (is IPv6, transport protocol, source and destination address
/// bytes). IPv6 only without extension headers: the transport header must follow the
/// fixed one at `l4` (the kernel's `csum_start`).
fn ip_header(pkt: &[u8], l4: usize) -> Result<(bool, u8), OffloadError> {
    match pkt.first().map(|b| b >> 4) {
        Some(4) => {
            if pkt.len() < 20 {
                return Err(OffloadError::Truncated);
            }
            if usize::from(pkt[0] & 0x0f) * 4 != l4 {
                return Err(OffloadError::Malformed(
                    "csum_start is not the IPv4 header length",
                ));
            }
            Ok((false, pkt[9]))
        }
        Some(6) => {
            if pkt.len() < 40 {
                return Err(OffloadError::Truncated);
            }
            if l4 != 40 {
                return Err(OffloadError::Malformed("IPv6 extension headers"));
            }
            Ok((true, pkt[6]))
        }
        _ => Err(OffloadError::Malformed("not an IP packet")),
    }
}

/// The sum of the pseudo-header of the packet whose IP header starts `pkt`, for a
/// transport segment of `len` bytes.
fn pseudo_sum(pkt: &[u8], v6: bool, proto: u8, len: usize) -> u64 {
    if v6 {
        pseudo_header(&pkt[8..24], &pkt[24..40], proto, len)
    } else {
        pseudo_header(&pkt[12..16], &pkt[16..20], proto, len)
    }
}

/// Fixes the IP header of the packet of `total` bytes at the start of `pkt`: its length
/// and, for IPv4, its ID (`id`) and header checksum.
fn fix_ip(pkt: &mut [u8], v6: bool, total: usize, id: u16) {
    if v6 {
        pkt[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
    } else {
        let ihl = usize::from(pkt[0] & 0x0f) * 4;
        pkt[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        pkt[4..6].copy_from_slice(&id.to_be_bytes());
        pkt[10..12].copy_from_slice(&[0, 0]);
        let c = !fold(sum(&pkt[..ihl], 0));
        pkt[10..12].copy_from_slice(&c.to_be_bytes());
    }
}

/// Turns what was read from the TUN device -- `hdr` and the packet `pkt` after it -- into
/// ordinary IP packets with complete checksums, written back to back into `out`.
///
/// A packet without GSO is copied as is, its checksum completed if the kernel left it
/// partial. A TCP super-packet becomes `ceil(payload / gso_size)` segments, as the kernel's
/// own TSO would cut it: sequence numbers advancing, FIN and PSH only on the last, CWR
/// only on the first, IPv4 IDs counting up from the super-packet's. A UDP super-packet
/// (USO) becomes datagrams of `gso_size` payload bytes, each with its length and checksum.
pub(crate) fn segment(hdr: &VnetHdr, pkt: &[u8], out: &mut [u8]) -> Result<Segments, OffloadError> {
    let gso = hdr.gso_type & !GSO_ECN;
    if gso == GSO_NONE {
        let out = out.get_mut(..pkt.len()).ok_or(OffloadError::NoRoom)?;
        out.copy_from_slice(pkt);
        if hdr.flags & F_NEEDS_CSUM != 0 {
            complete_checksum(out, hdr)?;
        }
        return Ok(Segments {
            segment: pkt.len(),
            count: 1,
            len: pkt.len(),
        });
    }
    let want = match gso {
        GSO_TCPV4 | GSO_TCPV6 => TCP,
        GSO_UDP_L4 => UDP,
        other => return Err(OffloadError::Unsupported(other)),
    };
    let l4 = usize::from(hdr.csum_start);
    let (v6, proto) = ip_header(pkt, l4)?;
    if proto != want || (gso == GSO_TCPV4 && v6) || (gso == GSO_TCPV6 && !v6) {
        return Err(OffloadError::Malformed(
            "GSO type does not match the headers",
        ));
    }
    let l4_len = if want == TCP {
        let doff = pkt.get(l4 + 12).ok_or(OffloadError::Truncated)? >> 4;
        usize::from(doff) * 4
    } else {
        8
    };
    if l4_len < 8 {
        return Err(OffloadError::Malformed("TCP data offset below 5"));
    }
    let hdr_len = l4 + l4_len;
    if pkt.len() <= hdr_len {
        return Err(OffloadError::Truncated);
    }
    let mss = usize::from(hdr.gso_size);
    if mss == 0 {
        return Err(OffloadError::Malformed("gso_size 0"));
    }
    let payload = &pkt[hdr_len..];
    let count = payload.len().div_ceil(mss);
    let len = count * hdr_len + payload.len();
    if len > out.len() {
        return Err(OffloadError::NoRoom);
    }
    let id = u16::from_be_bytes([pkt[4], pkt[5]]);
    let seq = if want == TCP {
        u32::from_be_bytes([pkt[l4 + 4], pkt[l4 + 5], pkt[l4 + 6], pkt[l4 + 7]])
    } else {
        0
    };
    let seg_len = hdr_len + mss;
    for (i, chunk) in payload.chunks(mss).enumerate() {
        let total = hdr_len + chunk.len();
        let s = &mut out[i * seg_len..i * seg_len + total];
        s[..hdr_len].copy_from_slice(&pkt[..hdr_len]);
        s[hdr_len..].copy_from_slice(chunk);
        fix_ip(s, v6, total, id.wrapping_add(i as u16));
        let t = &mut s[l4..];
        let checksum_at = if want == TCP {
            let seq = seq.wrapping_add((i * mss) as u32);
            t[4..8].copy_from_slice(&seq.to_be_bytes());
            let (first, last) = (i == 0, i + 1 == count);
            const FIN: u8 = 0x01;
            const PSH: u8 = 0x08;
            const CWR: u8 = 0x80;
            if !last {
                t[13] &= !(FIN | PSH);
            }
            if !first {
                t[13] &= !CWR;
            }
            16
        } else {
            t[4..6].copy_from_slice(&((8 + chunk.len()) as u16).to_be_bytes());
            6
        };
        t[checksum_at..checksum_at + 2].copy_from_slice(&[0, 0]);
        let pseudo = pseudo_sum(s, v6, want, total - l4);
        let c = !fold(sum(&s[l4..], pseudo));
        // UDP sends an all-zero checksum as all ones (0 means "none").
        let c = if want == UDP && c == 0 { 0xffff } else { c };
        s[l4 + checksum_at..l4 + checksum_at + 2].copy_from_slice(&c.to_be_bytes());
    }
    Ok(Segments {
        segment: if count == 1 { len } else { seg_len },
        count,
        len,
    })
}

/// Completes a partial checksum (`VIRTIO_NET_HDR_F_NEEDS_CSUM`): the field at
/// `csum_start + csum_offset` holds the pseudo-header's sum, the rest is summed here.
fn complete_checksum(pkt: &mut [u8], hdr: &VnetHdr) -> Result<(), OffloadError> {
    let start = usize::from(hdr.csum_start);
    let at = start + usize::from(hdr.csum_offset);
    if at + 2 > pkt.len() {
        return Err(OffloadError::Truncated);
    }
    let c = !fold(sum(&pkt[start..], 0));
    // Only UDP carries its checksum at offset 6; a zero result is sent as all ones.
    let c = if hdr.csum_offset == 6 && c == 0 {
        0xffff
    } else {
        c
    };
    pkt[at..at + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests;
