//! The WireGuard peers: one [`Tunn`] per remote lease, published to the forwarding
//! threads as an immutable [`PeerMap`] whenever a lease comes, changes or goes.
//!
//! A lease names its node's public key and port (`BackendData`); the peer's endpoint is
//! its public IP and that port, its allowed source addresses its subnet. The threads find
//! a peer three ways: by public IP for a packet the forwarding table sends there, by our
//! session index for a datagram that answers one of ours (the top 24 bits of every
//! receiver index boringtun hands out are the peer's index), and by public key for a
//! handshake initiation, whose sender's key only our private key can decrypt.
//!
//! With IPv6, flannel's `Mode` says how a lease's two subnets become sessions
//! (`pkg/backend/wireguard/wireguard_network.go`, `handleSubnetEvents`): `separate`
//! (the default) keeps one session per family -- flannel's two devices, `flannel-wg` and
//! `flannel-wg-v6`, each with its own peers -- the IPv4 one to `PublicIP` and the port
//! of `BackendData`, the IPv6 one to `PublicIPv6` and the port of `BackendV6Data`; the
//! other modes make one session per peer key carrying both subnets, its endpoint the
//! IPv4 one (`ipv4`), the IPv6 one (`ipv6`), or the one flannel's `selectMode` picks
//! (`auto`). Each session belongs to a [`Slot`]: the socket family its handshakes come
//! in on under `separate`, [`Slot::One`] otherwise.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::Tunn;
use boringtun::x25519::{PublicKey, StaticSecret};
use ipnet::IpNet;
use weft_core::config::WireguardMode;

/// Which set of sessions a session is in (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum Slot {
    /// `separate`: the IPv4 sessions, on the IPv4 socket.
    V4,
    /// `separate`: the IPv6 sessions, on the IPv6 socket.
    V6,
    /// One session per peer for both families.
    One,
}

impl Slot {
    /// The slot a handshake arriving on a socket of `family` (`true`: IPv6) is for.
    pub(super) fn for_socket(mode: WireguardMode, v6: bool) -> Slot {
        match (mode, v6) {
            (WireguardMode::Separate, false) => Slot::V4,
            (WireguardMode::Separate, true) => Slot::V6,
            _ => Slot::One,
        }
    }
}

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
    /// The set of sessions it is in.
    pub(super) slot: Slot,
    tunn: Mutex<Tunn>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("public_key", &weft_core::wg_key::format(&self.public_key))
            .field("endpoint", &self.endpoint)
            .field("index", &self.index)
            .field("slot", &self.slot)
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
    pub(super) by_key: HashMap<([u8; 32], Slot), Arc<Peer>>,
}

impl PeerMap {
    /// Every peer, once.
    pub(super) fn peers(&self) -> impl Iterator<Item = &Arc<Peer>> {
        self.by_index.values()
    }
}

/// What one route of a lease asks for: its key, and the address and port of the
/// route's family (`PublicIP` and `BackendData`'s port for its IPv4 subnet,
/// `PublicIPv6` and `BackendV6Data`'s for its IPv6 one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PeerSpec {
    pub(super) public_key: [u8; 32],
    pub(super) public_ip: IpAddr,
    pub(super) endpoint: SocketAddr,
}

/// A session to make: its key, identity address, endpoint and slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Session {
    public_key: [u8; 32],
    public_ip: IpAddr,
    endpoint: SocketAddr,
    slot: Slot,
}

/// flannel's `selectMode` (`wireguard_network.go`): the IPv4 endpoint if the peer has
/// no IPv6 address or a public (not RFC 1918) IPv4 one; else the IPv6 endpoint if both
/// its IPv6 address and ours are public (not fc00::/7); else the IPv4 one.
fn auto_prefers_v6(peer_v4: IpAddr, peer_v6: Option<IpAddr>, ours_v6: Option<IpAddr>) -> bool {
    let private4 = |ip: IpAddr| match ip {
        IpAddr::V4(a) => {
            let [a, b, ..] = a.octets();
            a == 10 || (a == 172 && b & 0xf0 == 16) || (a == 192 && b == 168)
        }
        IpAddr::V6(_) => true,
    };
    let private6 = |ip: IpAddr| match ip {
        IpAddr::V6(a) => a.octets()[0] & 0xfe == 0xfc,
        IpAddr::V4(_) => true,
    };
    let Some(peer_v6) = peer_v6 else {
        return false;
    };
    if !private4(peer_v4) {
        return false;
    }
    !private6(peer_v6) && ours_v6.is_some_and(|o| !private6(o))
}

/// The control plane's side: the leases' peers by subnet, and the peers made for them
/// (kept across changes that leave a peer's key and endpoint as they were, so that a
/// renewal or a new lease elsewhere does not drop a session).
pub(super) struct PeerSet {
    mode: WireguardMode,
    /// Our public IPv6 address, for `auto`.
    own_v6: Option<IpAddr>,
    secret: StaticSecret,
    psk: Option<[u8; 32]>,
    keepalive: Option<u16>,
    rate_limiter: Arc<RateLimiter>,
    by_subnet: BTreeMap<IpNet, PeerSpec>,
    made: HashMap<([u8; 32], Slot), Arc<Peer>>,
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
        mode: WireguardMode,
        own_v6: Option<IpAddr>,
        secret: StaticSecret,
        psk: Option<[u8; 32]>,
        keepalive: Option<u16>,
        rate_limiter: Arc<RateLimiter>,
        first_index: u32,
    ) -> Self {
        PeerSet {
            mode,
            own_v6,
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

    /// The sessions the routes ask for under our mode, in the order of their subnets.
    fn sessions(&self) -> Vec<Session> {
        let separate = self.mode == WireguardMode::Separate;
        let mut out: Vec<Session> = Vec::new();
        for (subnet, spec) in &self.by_subnet {
            let v6 = matches!(subnet, IpNet::V6(_));
            if separate {
                out.push(Session {
                    public_key: spec.public_key,
                    public_ip: spec.public_ip,
                    endpoint: spec.endpoint,
                    slot: if v6 { Slot::V6 } else { Slot::V4 },
                });
                continue;
            }
            if v6 {
                // Its IPv4 route made the session (IPv4 subnets sort first); the IPv6
                // one only offers its endpoint.
                continue;
            }
            let v6_spec = self
                .by_subnet
                .iter()
                .find(|(n, s)| matches!(n, IpNet::V6(_)) && s.public_key == spec.public_key)
                .map(|(_, s)| *s);
            let use_v6 = match self.mode {
                WireguardMode::Ipv6 => true,
                WireguardMode::Auto => {
                    auto_prefers_v6(spec.public_ip, v6_spec.map(|s| s.public_ip), self.own_v6)
                }
                WireguardMode::Ipv4 | WireguardMode::Separate => false,
            };
            let endpoint = match (use_v6, v6_spec) {
                (false, _) => spec.endpoint,
                (true, Some(s)) => s.endpoint,
                (true, None) => {
                    tracing::warn!(key = %weft_core::wg_key::format(&spec.public_key), via = %spec.public_ip, "Mode ipv6, and the lease has no IPv6 endpoint (PublicIPv6 and an IPv6 subnet): not reachable");
                    continue;
                }
            };
            out.push(Session {
                public_key: spec.public_key,
                // The forwarding table sends every subnet via PublicIP (Underlay::Ipv4).
                public_ip: spec.public_ip,
                endpoint,
                slot: Slot::One,
            });
        }
        out
    }

    /// The map for the threads, making the peers that are new and dropping the ones no
    /// lease names any more.
    pub(super) fn publish(&mut self) -> PeerMap {
        let mut map = PeerMap::default();
        let mut made = HashMap::new();
        for session in self.sessions() {
            let id = (session.public_key, session.slot);
            if map.by_key.contains_key(&id) {
                // Two leases with one key: the first subnet's wins (a node moving its
                // lease has both for a moment).
                continue;
            }
            let peer = match self.made.remove(&id) {
                Some(p) if p.endpoint == session.endpoint && p.public_ip == session.public_ip => p,
                _ => self.make(&session),
            };
            map.by_ip.insert(peer.public_ip, peer.clone());
            map.by_index.insert(peer.index, peer.clone());
            map.by_key.insert(id, peer.clone());
            made.insert(id, peer);
        }
        self.made = made;
        map
    }

    fn make(&mut self, spec: &Session) -> Arc<Peer> {
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
        tracing::info!(endpoint = %spec.endpoint, key = %weft_core::wg_key::format(&spec.public_key), index, slot = ?spec.slot, "wireguard peer added");
        Arc::new(Peer {
            public_key: spec.public_key,
            public_ip: spec.public_ip,
            endpoint: spec.endpoint,
            index,
            slot: spec.slot,
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
        let mut set = PeerSet::new(WireguardMode::Separate, None, secret, None, None, rl, 7);
        let a: IpNet = "10.5.1.0/24".parse().unwrap();
        let b: IpNet = "10.5.2.0/24".parse().unwrap();
        set.upsert(a, spec(1, 51820));
        set.upsert(b, spec(2, 51820));
        let first = set.publish();
        assert_eq!(first.by_ip.len(), 2);
        let pa = first.by_ip[&spec(1, 0).public_ip].clone();
        assert_eq!(
            first.by_key[&(spec(1, 0).public_key, Slot::V4)].index,
            pa.index
        );
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

    /// A dual-stack lease of key 1: its IPv4 subnet via 192.0.2.1:51820, its IPv6
    /// subnet via [2001:db8:1::1]:51821.
    fn dual(set: &mut PeerSet, v4: &str) {
        let key = spec(1, 0).public_key;
        let ip6: IpAddr = "2001:db8:1::1".parse().unwrap();
        set.upsert(
            "10.5.1.0/24".parse().unwrap(),
            PeerSpec {
                public_key: key,
                public_ip: v4.parse().unwrap(),
                endpoint: SocketAddr::new(v4.parse().unwrap(), 51820),
            },
        );
        set.upsert(
            "fc00:0:0:1::/64".parse().unwrap(),
            PeerSpec {
                public_key: key,
                public_ip: ip6,
                endpoint: SocketAddr::new(ip6, 51821),
            },
        );
    }

    #[test]
    fn modes_make_one_session_per_family_or_one_per_peer_as_flannel_does() {
        let secret = StaticSecret::from([9; 32]);
        let rl = Arc::new(RateLimiter::new(&PublicKey::from(&secret), 100));
        let own6: Option<IpAddr> = "2001:db8:1::9".parse().ok();
        let set_of = |mode| PeerSet::new(mode, own6, secret.clone(), None, None, rl.clone(), 1);
        let key = spec(1, 0).public_key;
        let endpoints = |map: &PeerMap| {
            let mut e: Vec<(Slot, String, String)> = map
                .peers()
                .map(|p| (p.slot, p.public_ip.to_string(), p.endpoint.to_string()))
                .collect();
            e.sort();
            e
        };
        let mut separate = set_of(WireguardMode::Separate);
        dual(&mut separate, "192.0.2.1");
        let map = separate.publish();
        assert_eq!(
            endpoints(&map),
            [
                (Slot::V4, "192.0.2.1".into(), "192.0.2.1:51820".into()),
                (
                    Slot::V6,
                    "2001:db8:1::1".into(),
                    "[2001:db8:1::1]:51821".into()
                ),
            ]
        );
        assert!(map.by_key.contains_key(&(key, Slot::V6)));
        for (mode, v4, want) in [
            (WireguardMode::Ipv4, "192.0.2.1", "192.0.2.1:51820"),
            (WireguardMode::Ipv6, "192.0.2.1", "[2001:db8:1::1]:51821"),
            // auto: a public IPv4 address wins; a private one gives way to public IPv6.
            (WireguardMode::Auto, "192.0.2.1", "192.0.2.1:51820"),
            (WireguardMode::Auto, "10.1.2.3", "[2001:db8:1::1]:51821"),
        ] {
            let mut set = set_of(mode);
            dual(&mut set, v4);
            let map = set.publish();
            assert_eq!(
                endpoints(&map),
                [(Slot::One, v4.to_string(), want.to_string())],
                "{mode:?} {v4}"
            );
            assert!(map.by_key.contains_key(&(key, Slot::One)));
        }
        // auto with our own IPv6 address private: IPv4 after all.
        let mut set = PeerSet::new(
            WireguardMode::Auto,
            "fd00::9".parse().ok(),
            secret.clone(),
            None,
            None,
            rl.clone(),
            1,
        );
        dual(&mut set, "10.1.2.3");
        assert_eq!(endpoints(&set.publish())[0].2, "10.1.2.3:51820");
        assert_eq!(Slot::for_socket(WireguardMode::Separate, true), Slot::V6);
        assert_eq!(Slot::for_socket(WireguardMode::Auto, true), Slot::One);
    }
}
