//! Wire formats, in smoltcp's `Packet`/`Repr` style, and the few header edits the
//! forwarding path makes.
//!
//! flannel's udp backend has no header of its own: the UDP payload *is* the inner IP
//! packet, sent to the peer's port 8285. What the core needs is to read an IP header
//! ([`ip`]), decrement the TTL in place, and answer a packet it cannot route with an
//! ICMP destination-unreachable ([`icmp`]). [`vxlan`] is the VXLAN header that the
//! kernel's vxlan device puts on the wire, for the simulator and for captures.

pub mod icmp;
pub mod ip;
pub mod vxlan;

/// flannel's default udp backend port.
pub const FLANNEL_UDP_PORT: u16 = 8285;
/// The kernel's (and flannel's) VXLAN port.
pub const VXLAN_PORT: u16 = 8472;

/// Why a packet could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than its headers say.
    #[error("truncated packet")]
    Truncated,
    /// Not IPv4 or IPv6, or a header field is impossible.
    #[error("malformed packet")]
    Malformed,
    /// The IPv4 header checksum does not match.
    #[error("bad IPv4 header checksum")]
    Checksum,
}
