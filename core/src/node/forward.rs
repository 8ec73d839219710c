//! The per-packet decision: encapsulate to which peer, deliver, or drop and why.
//!
//! This is the hot path of both the daemon and the simulator, so it neither allocates
//! nor copies: it reads the IP header in place, decrements the TTL in place, and answers
//! with a verdict. Every drop is counted by reason.

use std::net::IpAddr;

use ipnet::IpNet;

use super::Node;
use crate::wire::{ip, WireError};

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// Not a well-formed IP packet (truncated, bad version, bad checksum).
    Malformed = 0,
    /// Its TTL would reach zero on this hop.
    TtlExpired = 1,
    /// No peer holds a subnet containing the destination.
    NoRoute = 2,
    /// We hold no lease yet, so nothing is addressed to us.
    NoLease = 3,
    /// Received from an address that is no peer's public IP.
    UnknownPeer = 4,
    /// Received from a peer, but the inner source is not in that peer's subnet.
    SpoofedSource = 5,
    /// Received, but the inner destination is not in our subnet.
    NotOurSubnet = 6,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 7] = [
        DropReason::Malformed,
        DropReason::TtlExpired,
        DropReason::NoRoute,
        DropReason::NoLease,
        DropReason::UnknownPeer,
        DropReason::SpoofedSource,
        DropReason::NotOurSubnet,
    ];

    /// A short name for logs and counters.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::TtlExpired => "ttl_expired",
            DropReason::NoRoute => "no_route",
            DropReason::NoLease => "no_lease",
            DropReason::UnknownPeer => "unknown_peer",
            DropReason::SpoofedSource => "spoofed_source",
            DropReason::NotOurSubnet => "not_our_subnet",
        }
    }
}

/// Drop counts by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounters([u64; DropReason::ALL.len()]);

impl DropCounters {
    /// How many packets were dropped for `reason`.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason as usize]
    }

    /// All drops.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Each reason with its count, in a fixed order.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.into_iter().map(|r| (r, self.get(r)))
    }

    fn count(&mut self, reason: DropReason) {
        self.0[reason as usize] += 1;
    }
}

/// What to do with a packet from a local container (read from the TUN device).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outbound {
    /// Send it, TTL already decremented, as the payload of a UDP datagram to this peer.
    Send {
        /// The peer's public IP.
        peer: IpAddr,
    },
    /// It is for our own subnet: hand it back to the local stack.
    Local,
    /// No route: drop it and answer the sender with ICMP "network unreachable" (see
    /// [`crate::wire::icmp::net_unreachable_v4`]), as flannel does. Counted as
    /// [`DropReason::NoRoute`].
    Unreachable,
    /// Drop it.
    Drop(DropReason),
}

/// What to do with a datagram received from the underlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    /// Write the payload, as is, to the local stack (the TUN device).
    Deliver,
    /// Drop it.
    Drop(DropReason),
}

fn contains(net: &IpNet, addr: IpAddr) -> bool {
    net.contains(&addr)
}

impl Node {
    fn own_subnets(&self) -> Option<(IpNet, Option<IpNet>)> {
        let key = self.allocator.lease()?.key;
        Some((IpNet::V4(key.ipv4), key.ipv6.map(IpNet::V6)))
    }

    fn is_own(&self, addr: IpAddr) -> bool {
        self.own_subnets()
            .is_some_and(|(v4, v6)| contains(&v4, addr) || v6.is_some_and(|n| contains(&n, addr)))
    }

    fn drop(&mut self, reason: DropReason) -> DropReason {
        self.drops.count(reason);
        reason
    }

    /// Decides what to do with an IP packet a local container sent. On
    /// [`Outbound::Send`] the packet's TTL has been decremented in place.
    pub fn route_outbound(&mut self, packet: &mut [u8]) -> Outbound {
        let header = match ip::parse(packet) {
            Ok(h) => h,
            Err(_) => return Outbound::Drop(self.drop(DropReason::Malformed)),
        };
        if self.is_own(header.dst) {
            return Outbound::Local;
        }
        let Some(peer) = self.routes.lookup(header.dst).map(|r| r.public_ip) else {
            self.drop(DropReason::NoRoute);
            return Outbound::Unreachable;
        };
        if header.ttl <= 1 {
            return Outbound::Drop(self.drop(DropReason::TtlExpired));
        }
        match ip::decrement_ttl(packet) {
            Ok(()) => Outbound::Send { peer },
            Err(WireError::Truncated | WireError::Malformed | WireError::Checksum) => {
                Outbound::Drop(self.drop(DropReason::Malformed))
            }
        }
    }

    /// Decides what to do with a UDP payload received from `from` on the backend port:
    /// it must be an IP packet from a known peer, sourced in that peer's subnet, and
    /// addressed to ours. flannel checks none of this; weft drops and counts the rest.
    pub fn accept_inbound(&mut self, from: IpAddr, packet: &[u8]) -> Inbound {
        let header = match ip::parse(packet) {
            Ok(h) => h,
            Err(_) => return Inbound::Drop(self.drop(DropReason::Malformed)),
        };
        if self.own_subnets().is_none() {
            return Inbound::Drop(self.drop(DropReason::NoLease));
        }
        if !self.is_own(header.dst) {
            return Inbound::Drop(self.drop(DropReason::NotOurSubnet));
        }
        match self.routes.lookup(header.src) {
            Some(route) if route.public_ip == from => Inbound::Deliver,
            _ if self.routes.is_peer(from) => Inbound::Drop(self.drop(DropReason::SpoofedSource)),
            _ => Inbound::Drop(self.drop(DropReason::UnknownPeer)),
        }
    }

    /// Packets dropped so far, by reason.
    pub fn drops(&self) -> &DropCounters {
        &self.drops
    }
}
