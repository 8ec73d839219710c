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
///
/// A segment's worth of bytes is summed as native-endian 64-bit words, each split into
/// its 32-bit halves added into one of eight 64-bit lanes: no carry to chase word by
/// word, eight independent additions per block. A ones'-complement sum of byte-swapped
/// words is the byte-swapped sum (RFC 1071, 2.B), so one swap at the end stands for one
/// per word. This was the biggest cost of weft's own code in a profile of one TCP
/// stream (every segment is summed once when it is cut, once when it is coalesced);
/// headers and addresses, a few bytes each, keep the shorter loop.
pub(crate) fn sum(data: &[u8], initial: u64) -> u64 {
    if data.len() < 64 {
        return sum_short(data, initial);
    }
    let mut native = 0;
    // 1 GiB at a time keeps every lane far from overflowing (2^24 blocks of 2^33 at most).
    for part in data.chunks(1 << 30) {
        let mut lanes = [0u64; 8];
        let mut blocks = part.chunks_exact(64);
        for b in &mut blocks {
            for (lane, w) in lanes.iter_mut().zip(b.chunks_exact(8)) {
                *lane += halves(w);
            }
        }
        let mut words = blocks.remainder().chunks_exact(8);
        for w in &mut words {
            lanes[0] += halves(w);
        }
        // The tail starts on a 16-bit boundary, so zero padding is what RFC 1071 asks.
        lanes[1] += halves(words.remainder());
        native = lanes.iter().fold(native, |a, &l| add(a, l));
    }
    add(initial, u64::from(to_be_word(fold(native))))
}

/// Up to 8 bytes as a native-endian word (zero-padded), its two 32-bit halves added.
fn halves(w: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b[..w.len()].copy_from_slice(w);
    let w = u64::from_ne_bytes(b);
    (w & 0xffff_ffff) + (w >> 32)
}

/// [`sum`] for a few bytes: big-endian 64-bit words with end-around carry.
fn sum_short(data: &[u8], initial: u64) -> u64 {
    let mut acc = initial;
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        acc = add(acc, u64::from_be_bytes(b));
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        let mut b = [0u8; 8];
        b[..tail.len()].copy_from_slice(tail);
        acc = add(acc, u64::from_be_bytes(b));
    }
    acc
}

/// A 16-bit ones'-complement sum of native-endian words, as the sum of the same bytes
/// read big-endian.
fn to_be_word(native: u16) -> u16 {
    if cfg!(target_endian = "little") {
        native.swap_bytes()
    } else {
        native
    }
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
