//! The Internet checksum (RFC 1071), fast enough to run over every byte forwarded: with
//! TUN offloads the kernel leaves the transport checksum of a super-packet to us, and
//! each segment needs its own.
//!
//! Sums are kept unfolded in a `u64` with end-around carry: adding 64-bit big-endian
//! words is the same ones'-complement sum as adding their 16-bit halves, because
//! 2^16 - 1 divides 2^64 - 1.

/// Adds `a` and `b` with end-around carry.
fn add(a: u64, b: u64) -> u64 {
    let (s, carry) = a.overflowing_add(b);
    s + u64::from(carry)
}

/// `initial` plus the ones'-complement sum of `data` read as big-endian 16-bit words (an
/// odd last byte padded with zero). Pieces summed separately combine by passing one's
/// sum as the next one's `initial`, as long as every piece but the last has an even
/// length.
pub(crate) fn sum(data: &[u8], initial: u64) -> u64 {
    let mut acc = initial;
    let mut chunks = data.chunks_exact(32);
    for c in &mut chunks {
        // Four independent words per round: the carries stay short.
        for w in c.chunks_exact(8) {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            acc = add(acc, u64::from_be_bytes(b));
        }
    }
    let mut rest = chunks.remainder().chunks_exact(8);
    for w in &mut rest {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        acc = add(acc, u64::from_be_bytes(b));
    }
    let tail = rest.remainder();
    if !tail.is_empty() {
        let mut b = [0u8; 8];
        b[..tail.len()].copy_from_slice(tail);
        acc = add(acc, u64::from_be_bytes(b));
    }
    acc
}

/// Folds a sum to 16 bits (not inverted).
pub(crate) fn fold(mut s: u64) -> u16 {
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// The sum of the TCP/UDP pseudo-header for addresses `src` and `dst` (4 bytes each for
/// IPv4, 16 for IPv6), protocol `proto` and a transport segment of `len` bytes.
pub(crate) fn pseudo_header(src: &[u8], dst: &[u8], proto: u8, len: usize) -> u64 {
    let s = sum(dst, sum(src, 0));
    add(s, (u64::from(proto) << 32) + len as u64)
}
