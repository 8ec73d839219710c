//! The forwarding table: what the packet path reads, apart from the node.
//!
//! The node publishes an immutable [`ForwardTable`] whenever its routes or its own lease
//! change ([`crate::node::Node::poll_forward_table`]); forwarding threads hold the latest
//! snapshot (the datapath swaps it atomically) and decide every packet with `&self`: no
//! lock, no allocation, no copy. Drops are counted into the caller's [`ThreadDrops`].
//!
//! Every subnet of a network has the same length, so a subnet is found by its index --
//! one subtraction and one shift -- in a hash map while few of the network's subnets are
//! routed, and in a dense array once more than an eighth of them are (in networks of at
//! most 65,536 subnets; a dense array then costs less memory than the map): either way
//! the cost of a lookup does not grow with the number of routes, and a table with few
//! routes stays small to copy (a simulated node of a /8 does not carry 256 KiB). A route that does not fit the network's geometry (a lease of another
//! length written by someone else) goes to a short list searched after a miss.
//!
//! The node updates its table in place (`Arc::make_mut`): a change copies the table only
//! when a forwarding thread still holds the published snapshot, once per publication.

mod drops;

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::subnet::SubnetSpace;
use crate::wire::{ip, WireError};

pub use drops::{DropCounters, DropReason, DropRegistry, ThreadDrops};

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

/// One remote subnet and the peer that carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// The remote subnet.
    pub subnet: IpNet,
    /// The peer's public (underlay) address.
    pub public_ip: IpAddr,
}

/// Networks with at most this many subnets get a dense index once an eighth is routed.
const DENSE_LIMIT: u128 = 1 << 16;

/// A multiplicative hash for subnet indices (Fibonacci hashing): the keys are small
/// integers chosen by the allocator, not by an attacker, and SipHash would cost more
/// than the rest of a lookup.
#[derive(Debug, Clone, Copy, Default)]
struct IndexHasher(u64);

impl std::hash::Hasher for IndexHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u128(&mut self, n: u128) {
        let folded = (n as u64) ^ ((n >> 64) as u64);
        self.0 = folded.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type SparseIndex = HashMap<u128, u32, std::hash::BuildHasherDefault<IndexHasher>>;

/// The index of one address family: subnet index -> slot in [`ForwardTable::peers`].
#[derive(Debug, Clone)]
enum Index {
    /// `slots[i]` is the peer slot + 1 of subnet `i`, 0 when none.
    Dense(Vec<u32>),
    Sparse(SparseIndex),
}

#[derive(Debug, Clone)]
struct Family {
    space: SubnetSpace,
    index: Index,
}

impl Family {
    fn new(space: SubnetSpace) -> Self {
        Family {
            space,
            index: Index::Sparse(SparseIndex::default()),
        }
    }

    /// Turns the map into a dense array once it holds more than an eighth of a small
    /// enough network's subnets.
    fn densify(&mut self) {
        let n = self.space.total_in_network();
        let Index::Sparse(map) = &self.index else {
            return;
        };
        if n > DENSE_LIMIT || (map.len() as u128) * 8 <= n {
            return;
        }
        let mut slots = vec![0u32; n as usize];
        for (i, slot) in map {
            if let Some(s) = slots.get_mut(*i as usize) {
                *s = slot + 1;
            }
        }
        self.index = Index::Dense(slots);
    }

    /// The index of `subnet` if it has this family's geometry.
    fn index_of(&self, subnet: &IpNet) -> Option<u128> {
        let fits = subnet.prefix_len() == self.space.subnet_len()
            && subnet.network() == subnet.addr()
            && self.space.network().contains(subnet);
        fits.then(|| self.space.index_containing(subnet.addr()))
            .flatten()
    }

    fn get(&self, addr: IpAddr) -> Option<u32> {
        self.slot_at(self.space.index_containing(addr)?)
    }

    fn slot_at(&self, i: u128) -> Option<u32> {
        match &self.index {
            Index::Dense(slots) => slots.get(i as usize).and_then(|s| s.checked_sub(1)),
            Index::Sparse(map) => map.get(&i).copied(),
        }
    }

    fn set(&mut self, i: u128, slot: Option<u32>) {
        match (&mut self.index, slot) {
            (Index::Dense(slots), slot) => {
                if let Some(s) = slots.get_mut(i as usize) {
                    *s = slot.map_or(0, |n| n + 1);
                }
            }
            (Index::Sparse(map), Some(n)) => {
                map.insert(i, n);
                self.densify();
            }
            (Index::Sparse(map), None) => {
                map.remove(&i);
            }
        }
    }
}

/// See the module docs.
#[derive(Debug, Clone, Default)]
pub struct ForwardTable {
    own_v4: Option<IpNet>,
    own_v6: Option<IpNet>,
    v4: Option<Family>,
    v6: Option<Family>,
    /// Peer slots; `None` is a free slot, reused by the next route.
    peers: Vec<Option<Peer>>,
    free: Vec<u32>,
    /// Routes that do not fit the network's geometry, searched after a miss.
    odd: Vec<Peer>,
    /// How many routes go via each public IP: "is this a peer at all" in one lookup.
    public_ips: HashMap<IpAddr, u32>,
}

impl ForwardTable {
    /// An empty table for the networks of `v4` and `v6`.
    pub fn new(v4: Option<SubnetSpace>, v6: Option<SubnetSpace>) -> Self {
        ForwardTable {
            v4: v4.map(Family::new),
            v6: v6.map(Family::new),
            ..ForwardTable::default()
        }
    }

    /// Our own subnets, if we hold a lease.
    pub fn own(&self) -> (Option<IpNet>, Option<IpNet>) {
        (self.own_v4, self.own_v6)
    }

    /// How many routes the table holds.
    pub fn len(&self) -> usize {
        self.peers.iter().flatten().count() + self.odd.len()
    }

    /// Whether the table holds no route.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sets (or clears) our own subnets.
    pub fn set_own(&mut self, v4: Option<IpNet>, v6: Option<IpNet>) {
        self.own_v4 = v4;
        self.own_v6 = v6;
    }

    fn family_mut(&mut self, subnet: &IpNet) -> Option<(&mut Family, u128)> {
        let family = match subnet {
            IpNet::V4(_) => self.v4.as_mut()?,
            IpNet::V6(_) => self.v6.as_mut()?,
        };
        let i = family.index_of(subnet)?;
        Some((family, i))
    }

    /// Adds the route to `peer.subnet`, replacing the one there was.
    pub fn insert(&mut self, peer: Peer) {
        self.remove(&peer.subnet);
        *self.public_ips.entry(peer.public_ip).or_default() += 1;
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.peers.push(None);
                (self.peers.len() - 1) as u32
            }
        };
        match self.family_mut(&peer.subnet) {
            Some((family, i)) => family.set(i, Some(slot)),
            None => {
                self.free.push(slot);
                self.odd.push(peer);
                return;
            }
        }
        self.peers[slot as usize] = Some(peer);
    }

    /// Removes the route to `subnet`, if there is one.
    pub fn remove(&mut self, subnet: &IpNet) {
        let slot = match self.family_mut(subnet) {
            Some((family, i)) => {
                let slot = family.slot_at(i);
                if slot.is_some() {
                    family.set(i, None);
                }
                Some(slot)
            }
            None => None,
        };
        let removed = match slot {
            Some(slot) => slot.and_then(|slot| {
                self.free.push(slot);
                self.peers[slot as usize].take()
            }),
            None => self
                .odd
                .iter()
                .position(|p| p.subnet == *subnet)
                .map(|at| self.odd.swap_remove(at)),
        };
        if let Some(peer) = removed {
            if let Some(n) = self.public_ips.get_mut(&peer.public_ip) {
                *n -= 1;
                if *n == 0 {
                    self.public_ips.remove(&peer.public_ip);
                }
            }
        }
    }

    /// The route whose subnet contains `addr`.
    pub fn lookup(&self, addr: IpAddr) -> Option<&Peer> {
        let family = match addr {
            IpAddr::V4(_) => self.v4.as_ref(),
            IpAddr::V6(_) => self.v6.as_ref(),
        };
        let hit = family
            .and_then(|f| f.get(addr))
            .and_then(|slot| self.peers.get(slot as usize)?.as_ref());
        hit.or_else(|| self.odd.iter().find(|p| p.subnet.contains(&addr)))
    }

    /// Whether some route goes via `public_ip`.
    pub fn is_peer(&self, public_ip: IpAddr) -> bool {
        self.public_ips.contains_key(&public_ip)
    }

    fn is_own(&self, addr: IpAddr) -> bool {
        let own = match addr {
            IpAddr::V4(_) => self.own_v4,
            IpAddr::V6(_) => self.own_v6,
        };
        own.is_some_and(|n| n.contains(&addr))
    }

    /// Decides what to do with an IP packet a local container sent. On
    /// [`Outbound::Send`] the packet's TTL has been decremented in place.
    pub fn route_outbound(&self, packet: &mut [u8], drops: &ThreadDrops) -> Outbound {
        let drop = |reason| {
            drops.count(reason);
            Outbound::Drop(reason)
        };
        let header = match ip::parse(packet) {
            Ok(h) => h,
            Err(_) => return drop(DropReason::Malformed),
        };
        if self.is_own(header.dst) {
            return Outbound::Local;
        }
        let Some(peer) = self.lookup(header.dst).map(|r| r.public_ip) else {
            drops.count(DropReason::NoRoute);
            return Outbound::Unreachable;
        };
        if header.ttl <= 1 {
            return drop(DropReason::TtlExpired);
        }
        match ip::decrement_ttl(packet) {
            Ok(()) => Outbound::Send { peer },
            Err(WireError::Truncated | WireError::Malformed | WireError::Checksum) => {
                drop(DropReason::Malformed)
            }
        }
    }

    /// Decides what to do with a UDP payload received from `from` on the backend port:
    /// it must be an IP packet from a known peer, sourced in that peer's subnet, and
    /// addressed to ours. flannel checks none of this; weft drops and counts the rest.
    pub fn accept_inbound(&self, from: IpAddr, packet: &[u8], drops: &ThreadDrops) -> Inbound {
        let drop = |reason| {
            drops.count(reason);
            Inbound::Drop(reason)
        };
        let header = match ip::parse(packet) {
            Ok(h) => h,
            Err(_) => return drop(DropReason::Malformed),
        };
        if self.own_v4.is_none() && self.own_v6.is_none() {
            return drop(DropReason::NoLease);
        }
        if !self.is_own(header.dst) {
            return drop(DropReason::NotOurSubnet);
        }
        match self.lookup(header.src) {
            Some(route) if route.public_ip == from => Inbound::Deliver,
            _ if self.is_peer(from) => drop(DropReason::SpoofedSource),
            _ => drop(DropReason::UnknownPeer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space(net: &str, len: u8) -> SubnetSpace {
        let net: IpNet = net.parse().expect("net");
        let probe = SubnetSpace::new(net, len, net.network(), net.network()).expect("space");
        let last = probe.subnet_at(probe.total_in_network() - 1).addr();
        SubnetSpace::new(net, len, net.network(), last).expect("space")
    }

    fn peer(subnet: &str, ip: &str) -> Peer {
        Peer {
            subnet: subnet.parse().expect("subnet"),
            public_ip: ip.parse().expect("ip"),
        }
    }

    fn addr(a: &str) -> IpAddr {
        a.parse().expect("addr")
    }

    #[test]
    fn dense_sparse_and_odd_routes_are_found_and_removed() {
        for (net, len) in [("10.5.0.0/16", 24), ("10.0.0.0/8", 30)] {
            let mut t = ForwardTable::new(Some(space(net, len)), None);
            let a = peer(&format!("10.5.1.0/{len}"), "192.0.2.1");
            let b = peer(&format!("10.5.3.0/{len}"), "192.0.2.3");
            let odd = peer("10.5.8.0/23", "192.0.2.8");
            for p in [a, b, odd] {
                t.insert(p);
            }
            assert_eq!(t.len(), 3);
            assert_eq!(t.lookup(addr("10.5.1.1")), Some(&a), "{net}");
            assert_eq!(t.lookup(addr("10.5.3.2")), Some(&b), "{net}");
            assert_eq!(t.lookup(addr("10.5.9.200")), Some(&odd), "{net}");
            assert_eq!(t.lookup(addr("10.5.2.1")), None, "{net}");
            assert_eq!(t.lookup(addr("10.6.1.1")), None, "{net}");
            assert!(t.is_peer(addr("192.0.2.3")));
            t.remove(&b.subnet);
            t.remove(&odd.subnet);
            assert_eq!(t.lookup(addr("10.5.3.2")), None);
            assert_eq!(t.lookup(addr("10.5.9.200")), None);
            assert!(!t.is_peer(addr("192.0.2.3")));
            // The freed slot is reused and the other route is untouched.
            let c = peer(&format!("10.5.4.0/{len}"), "192.0.2.4");
            t.insert(c);
            assert_eq!(t.lookup(addr("10.5.4.2")), Some(&c));
            assert_eq!(t.lookup(addr("10.5.1.2")), Some(&a));
            assert_eq!(t.len(), 2);
        }
    }

    #[test]
    fn replacing_a_route_moves_its_peer() {
        let mut t = ForwardTable::new(Some(space("10.5.0.0/16", 24)), None);
        t.insert(peer("10.5.1.0/24", "192.0.2.1"));
        t.insert(peer("10.5.1.0/24", "192.0.2.9"));
        assert_eq!(t.len(), 1);
        assert!(!t.is_peer(addr("192.0.2.1")));
        assert_eq!(
            t.lookup(addr("10.5.1.1")).map(|p| p.public_ip),
            Some(addr("192.0.2.9"))
        );
    }

    #[test]
    fn ipv6_routes_live_in_their_own_family() {
        let mut t = ForwardTable::new(Some(space("10.5.0.0/16", 24)), Some(space("fc00::/48", 64)));
        let p6 = peer("fc00:0:0:7::/64", "2001:db8::7");
        t.insert(p6);
        t.set_own(None, Some("fc00:0:0:1::/64".parse().expect("own")));
        assert_eq!(t.lookup(addr("fc00:0:0:7::42")), Some(&p6));
        assert_eq!(t.lookup(addr("fc00:0:0:8::42")), None);
        assert_eq!(t.lookup(addr("10.5.7.1")), None);
        assert!(t.is_own(addr("fc00:0:0:1::5")));
    }

    #[test]
    fn a_table_turns_dense_past_an_eighth_and_answers_the_same() {
        let mut t = ForwardTable::new(Some(space("10.5.0.0/16", 24)), None);
        for i in 0..100u8 {
            t.insert(peer(&format!("10.5.{i}.0/24"), &format!("192.0.2.{i}")));
            let dense = matches!(t.v4.as_ref().map(|f| &f.index), Some(Index::Dense(_)));
            assert_eq!(dense, i >= 32, "after {} routes", u32::from(i) + 1);
            for j in 0..=i {
                let hit = t.lookup(addr(&format!("10.5.{j}.7"))).map(|p| p.public_ip);
                assert_eq!(hit, Some(addr(&format!("192.0.2.{j}"))), "{j} of {i}");
            }
        }
        t.remove(&"10.5.50.0/24".parse().expect("subnet"));
        assert_eq!(t.lookup(addr("10.5.50.1")), None);
        assert_eq!(t.len(), 99);
    }
}
