//! The WireGuard peers: one [`Tunn`] per remote lease, published to the forwarding
//! threads as an immutable [`PeerMap`] whenever a lease comes, changes or goes.
//!
//! A lease names its node's public key and port (`BackendData`); the peer's endpoint is
//! its public IP and that port, its allowed source addresses its subnet. The threads find
//! a peer three ways: by public IP for a packet the forwarding table sends there, by our
//! session index for a datagram that answers one of ours (the top 24 bits of every
//! receiver index boringtun hands out are the peer's index), and by public key for a
//! handshake initiation, whose sender's key only our private key can decrypt.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::Tunn;
use boringtun::x25519::{PublicKey, StaticSecret};
use ipnet::IpNet;

/// One remote node.
pub(super) struct Peer {
    /// Its public key, from its lease.
    pub(super) public_key: [u8; 32],
    /// Its lease's public IP: the address the forwarding table routes to and checks
    /// inner sources against, whatever address its datagrams come from.
    pub(super) public_ip: IpAddr,
    /// Where its datagrams go: the public IP and the port its lease gives.
    pub(super) endpoint: SocketAddr,
    /// Our index for it (24 bits).
    pub(super) index: u32,
    tunn: Mutex<Tunn>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("public_key", &weft_core::wg_key::format(&self.public_key))
            .field("endpoint", &self.endpoint)
            .field("index", &self.index)
            .finish()
    }
}

impl Peer {
    /// Its session state; a thread that panicked holding it left nothing half-written
    /// that boringtun does not check again, so a poisoned lock is taken anyway.
    pub(super) fn tunn(&self) -> MutexGuard<'_, Tunn> {
        self.tunn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What the forwarding threads read: every peer, three ways.
#[derive(Debug, Default)]
pub(super) struct PeerMap {
    pub(super) by_ip: HashMap<IpAddr, Arc<Peer>>,
    pub(super) by_index: HashMap<u32, Arc<Peer>>,
    pub(super) by_key: HashMap<[u8; 32], Arc<Peer>>,
}

impl PeerMap {
    /// Every peer, once.
    pub(super) fn peers(&self) -> impl Iterator<Item = &Arc<Peer>> {
        self.by_index.values()
    }
}

/// What one lease asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PeerSpec {
    pub(super) public_key: [u8; 32],
    pub(super) public_ip: IpAddr,
    pub(super) endpoint: SocketAddr,
}

/// The control plane's side: the leases' peers by subnet, and the peers made for them
/// (kept across changes that leave a peer's key and endpoint as they were, so that a
/// renewal or a new lease elsewhere does not drop a session).
pub(super) struct PeerSet {
    secret: StaticSecret,
    psk: Option<[u8; 32]>,
    keepalive: Option<u16>,
    rate_limiter: Arc<RateLimiter>,
    by_subnet: BTreeMap<IpNet, PeerSpec>,
    made: HashMap<[u8; 32], Arc<Peer>>,
    next_index: u32,
}

impl std::fmt::Debug for PeerSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerSet")
            .field("by_subnet", &self.by_subnet)
            .finish_non_exhaustive()
    }
}

impl PeerSet {
    pub(super) fn new(
        secret: StaticSecret,
        psk: Option<[u8; 32]>,
        keepalive: Option<u16>,
        rate_limiter: Arc<RateLimiter>,
        first_index: u32,
    ) -> Self {
        PeerSet {
            secret,
            psk,
            keepalive,
            rate_limiter,
            by_subnet: BTreeMap::new(),
            made: HashMap::new(),
            next_index: first_index & 0x00ff_ffff,
        }
    }

    /// The lease of `subnet` asks for `spec`.
    pub(super) fn upsert(&mut self, subnet: IpNet, spec: PeerSpec) {
        self.by_subnet.insert(subnet, spec);
    }

    /// The lease of `subnet` is gone (or no longer ours to carry).
    pub(super) fn remove(&mut self, subnet: &IpNet) {
        self.by_subnet.remove(subnet);
    }

    /// The map for the threads, making the peers that are new and dropping the ones no
    /// lease names any more.
    pub(super) fn publish(&mut self) -> PeerMap {
        let mut map = PeerMap::default();
        let mut made = HashMap::new();
        let specs: Vec<PeerSpec> = self.by_subnet.values().copied().collect();
        for spec in &specs {
            if map.by_key.contains_key(&spec.public_key) {
                // Two leases with one key: the first subnet's wins (a node moving its
                // lease has both for a moment).
                continue;
            }
            let peer = match self.made.remove(&spec.public_key) {
                Some(p) if p.endpoint == spec.endpoint && p.public_ip == spec.public_ip => p,
                _ => self.make(spec),
            };
            map.by_ip.insert(peer.public_ip, peer.clone());
            map.by_index.insert(peer.index, peer.clone());
            map.by_key.insert(peer.public_key, peer.clone());
            made.insert(peer.public_key, peer);
        }
        self.made = made;
        map
    }

    fn make(&mut self, spec: &PeerSpec) -> Arc<Peer> {
        let index = self.next_index;
        self.next_index = (self.next_index + 1) & 0x00ff_ffff;
        let tunn = Tunn::new(
            self.secret.clone(),
            PublicKey::from(spec.public_key),
            self.psk,
            self.keepalive,
            index,
            Some(self.rate_limiter.clone()),
        );
        tracing::info!(endpoint = %spec.endpoint, key = %weft_core::wg_key::format(&spec.public_key), index, "wireguard peer added");
        Arc::new(Peer {
            public_key: spec.public_key,
            public_ip: spec.public_ip,
            endpoint: spec.endpoint,
            index,
            tunn: Mutex::new(tunn),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(n: u8, port: u16) -> PeerSpec {
        let ip = IpAddr::from([192, 0, 2, n]);
        PeerSpec {
            public_key: PublicKey::from(&StaticSecret::from([n; 32])).to_bytes(),
            public_ip: ip,
            endpoint: SocketAddr::new(ip, port),
        }
    }

    #[test]
    fn peers_are_kept_across_unchanged_leases_and_remade_when_they_change() {
        let secret = StaticSecret::from([9; 32]);
        let rl = Arc::new(RateLimiter::new(&PublicKey::from(&secret), 100));
        let mut set = PeerSet::new(secret, None, None, rl, 7);
        let a: IpNet = "10.5.1.0/24".parse().unwrap();
        let b: IpNet = "10.5.2.0/24".parse().unwrap();
        set.upsert(a, spec(1, 51820));
        set.upsert(b, spec(2, 51820));
        let first = set.publish();
        assert_eq!(first.by_ip.len(), 2);
        let pa = first.by_ip[&spec(1, 0).public_ip].clone();
        assert_eq!(first.by_key[&spec(1, 0).public_key].index, pa.index);
        // A renewal (same spec) keeps the very same peer and its session.
        set.upsert(a, spec(1, 51820));
        let second = set.publish();
        assert!(Arc::ptr_eq(&second.by_index[&pa.index], &pa));
        // A new port is a new peer, with a new index.
        set.upsert(a, spec(1, 4000));
        let third = set.publish();
        let moved = &third.by_ip[&spec(1, 0).public_ip];
        assert_eq!(moved.endpoint.port(), 4000);
        assert_ne!(moved.index, pa.index);
        assert!(!third.by_index.contains_key(&pa.index));
        set.remove(&b);
        let fourth = set.publish();
        assert_eq!(fourth.peers().count(), 1);
    }
}
