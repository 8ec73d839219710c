//! The route table: which peer carries each remote subnet.
//!
//! Built from lease-table changes (a peer's lease added, renewed, removed, or a full
//! re-list), it answers "who gets a packet for this address" and reports what changed, so
//! that a datapath can program exactly the difference. Our own lease is never a route,
//! nor is any lease that records our own public IP: before a restarted node has taken
//! its old lease back, that lease is still ours, and a route to ourselves would be
//! programmed only to be removed (a kernel backend refuses it outright).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::lease::{Lease, LeaseKey, RawJson};
use crate::lease_table::TableChange;

/// How to reach one remote subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The remote subnet.
    pub subnet: IpNet,
    /// The peer's public (underlay) address.
    pub public_ip: IpAddr,
    /// The backend the peer runs.
    pub backend_type: Option<String>,
    /// The peer's backend data (a VTEP MAC for vxlan), verbatim.
    pub backend_data: Option<RawJson>,
}

/// A change to the route table, for the datapath to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteChange {
    /// A route to add, or to replace the route to the same subnet.
    Add(Route),
    /// A route to remove.
    Remove(Route),
}

/// The routes to every peer's subnet(s).
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    own: Option<LeaseKey>,
    /// Our public IPv4 address: leases recording it are ours, never routes.
    own_ip: Option<Ipv4Addr>,
    v4: BTreeMap<Ipv4Net, Route>,
    v6: BTreeMap<Ipv6Net, Route>,
    /// How many routes go via each public IP, so that "is this a peer at all" is one
    /// lookup on the receive path.
    peers: BTreeMap<IpAddr, usize>,
}

fn routes_of(lease: &Lease) -> Vec<Route> {
    let mut routes = vec![Route {
        subnet: IpNet::V4(lease.key.ipv4),
        public_ip: IpAddr::V4(lease.attrs.public_ip),
        backend_type: lease.attrs.backend_type.clone(),
        backend_data: lease.attrs.backend_data.clone(),
    }];
    if let (Some(v6), Some(ip6)) = (lease.key.ipv6, lease.attrs.public_ipv6) {
        routes.push(Route {
            subnet: IpNet::V6(v6),
            public_ip: IpAddr::V6(ip6),
            backend_type: lease.attrs.backend_type.clone(),
            backend_data: lease
                .attrs
                .backend_v6_data
                .clone()
                .or_else(|| lease.attrs.backend_data.clone()),
        });
    }
    routes
}

impl RouteTable {
    /// An empty table.
    pub fn new() -> Self {
        RouteTable::default()
    }

    /// An empty table of the node with public IP `ip`.
    pub fn of_node(ip: Ipv4Addr) -> Self {
        RouteTable {
            own_ip: Some(ip),
            ..RouteTable::default()
        }
    }

    /// Every route, IPv4 first, each family ordered by subnet.
    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.v4.values().chain(self.v6.values())
    }

    /// The number of routes.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Whether there are no routes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The route whose subnet contains `dst`, if any.
    pub fn lookup(&self, dst: IpAddr) -> Option<&Route> {
        match dst {
            IpAddr::V4(a) => lookup_in(&self.v4, a, |a| Ipv4Net::new(a, 32).ok()),
            IpAddr::V6(a) => lookup_in(&self.v6, a, |a| Ipv6Net::new(a, 128).ok()),
        }
    }

    /// Sets (or clears) our own lease: its subnets are never routes.
    pub fn set_own(&mut self, own: Option<LeaseKey>, out: &mut Vec<RouteChange>) {
        let old = std::mem::replace(&mut self.own, own);
        if old == own {
            return;
        }
        if let Some(key) = own {
            self.remove_key(&key, out);
        }
        // A lease we used to hold and that a peer now holds is handled by the next
        // table change for it; dropping ours never invents a route by itself.
    }

    /// Whether some route goes via `public_ip`.
    pub fn is_peer(&self, public_ip: IpAddr) -> bool {
        self.peers.contains_key(&public_ip)
    }

    fn unpeer(&mut self, public_ip: IpAddr) {
        if let Some(n) = self.peers.get_mut(&public_ip) {
            *n -= 1;
            if *n == 0 {
                self.peers.remove(&public_ip);
            }
        }
    }

    fn remove_key(&mut self, key: &LeaseKey, out: &mut Vec<RouteChange>) {
        let v4 = self.v4.remove(&key.ipv4);
        let v6 = key.ipv6.and_then(|v6| self.v6.remove(&v6));
        for r in v4.into_iter().chain(v6) {
            self.unpeer(r.public_ip);
            out.push(RouteChange::Remove(r));
        }
    }

    fn upsert(&mut self, route: Route, out: &mut Vec<RouteChange>) {
        let old = match route.subnet {
            IpNet::V4(n) => self.v4.insert(n, route.clone()),
            IpNet::V6(n) => self.v6.insert(n, route.clone()),
        };
        *self.peers.entry(route.public_ip).or_default() += 1;
        if let Some(old) = &old {
            self.unpeer(old.public_ip);
        }
        if old.as_ref() != Some(&route) {
            out.push(RouteChange::Add(route));
        }
    }

    /// Applies one lease-table change, appending the route changes it causes.
    pub fn apply(&mut self, change: &TableChange, out: &mut Vec<RouteChange>) {
        match change {
            TableChange::Upsert { old, new } => {
                if let Some(old) = old {
                    if old.key != new.key {
                        self.remove_key(&old.key, out);
                    }
                }
                if Some(new.key) == self.own || Some(new.attrs.public_ip) == self.own_ip {
                    self.remove_key(&new.key, out);
                    return;
                }
                for route in routes_of(new) {
                    self.upsert(route, out);
                }
            }
            TableChange::Remove { lease } => {
                if Some(lease.key) != self.own {
                    self.remove_key(&lease.key, out);
                }
            }
        }
    }
}

fn lookup_in<A: Copy, N: Ord + Copy + HasContains<A>>(
    map: &BTreeMap<N, Route>,
    addr: A,
    host: impl Fn(A) -> Option<N>,
) -> Option<&Route> {
    let probe = host(addr)?;
    // Subnets never overlap, so the candidate is the greatest subnet starting at or
    // before the address.
    let (net, route) = map.range(..=probe).next_back()?;
    net.has(addr).then_some(route)
}

trait HasContains<A> {
    fn has(&self, a: A) -> bool;
}

impl HasContains<Ipv4Addr> for Ipv4Net {
    fn has(&self, a: Ipv4Addr) -> bool {
        self.contains(&a)
    }
}

impl HasContains<Ipv6Addr> for Ipv6Net {
    fn has(&self, a: Ipv6Addr) -> bool {
        self.contains(&a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseAttrs;

    fn lease(subnet: &str, ip: [u8; 4]) -> Lease {
        Lease {
            key: LeaseKey::v4(subnet.parse().unwrap()),
            attrs: LeaseAttrs::new(Ipv4Addr::from(ip), crate::config::BackendType::Udp),
            expires_at: None,
            create_revision: 1,
            mod_revision: 1,
        }
    }

    #[test]
    fn lookup_finds_the_containing_subnet_only() {
        let mut t = RouteTable::new();
        let mut out = Vec::new();
        for (s, ip) in [("10.5.1.0/24", 1), ("10.5.3.0/24", 3)] {
            t.apply(
                &TableChange::Upsert {
                    old: None,
                    new: lease(s, [192, 0, 2, ip]),
                },
                &mut out,
            );
        }
        assert_eq!(out.len(), 2);
        let hit = t.lookup("10.5.3.77".parse().unwrap()).unwrap();
        assert_eq!(hit.public_ip, "192.0.2.3".parse::<IpAddr>().unwrap());
        assert!(t.lookup("10.5.2.1".parse().unwrap()).is_none());
        assert!(t.lookup("10.5.4.0".parse().unwrap()).is_none());
        assert!(t.lookup("10.4.255.255".parse().unwrap()).is_none());
    }

    #[test]
    fn own_lease_is_never_a_route_and_renewals_change_nothing() {
        let mut t = RouteTable::new();
        let mut out = Vec::new();
        let mine = lease("10.5.1.0/24", [192, 0, 2, 1]);
        t.set_own(Some(mine.key), &mut out);
        t.apply(
            &TableChange::Upsert {
                old: None,
                new: mine.clone(),
            },
            &mut out,
        );
        assert!(t.is_empty() && out.is_empty());

        let peer = lease("10.5.2.0/24", [192, 0, 2, 2]);
        t.apply(
            &TableChange::Upsert {
                old: None,
                new: peer.clone(),
            },
            &mut out,
        );
        let mut renewed = peer.clone();
        renewed.mod_revision = 9;
        t.apply(
            &TableChange::Upsert {
                old: Some(peer.clone()),
                new: renewed,
            },
            &mut out,
        );
        assert_eq!(out.len(), 1, "a renewal is not a route change: {out:?}");
        t.apply(&TableChange::Remove { lease: peer }, &mut out);
        assert!(matches!(out.last(), Some(RouteChange::Remove(_))));
        assert!(t.is_empty());
    }

    #[test]
    fn a_lease_recording_our_own_public_ip_is_never_a_route() {
        let mut t = RouteTable::of_node(Ipv4Addr::new(192, 0, 2, 1));
        let mut out = Vec::new();
        // Our old lease, listed before we have taken it back.
        let ours = lease("10.5.1.0/24", [192, 0, 2, 1]);
        t.apply(
            &TableChange::Upsert {
                old: None,
                new: ours,
            },
            &mut out,
        );
        assert!(t.is_empty() && out.is_empty(), "{out:?}");
        // A peer's lease that moves to our address is withdrawn.
        let peer = lease("10.5.2.0/24", [192, 0, 2, 2]);
        t.apply(
            &TableChange::Upsert {
                old: None,
                new: peer.clone(),
            },
            &mut out,
        );
        let mut moved = peer.clone();
        moved.attrs.public_ip = Ipv4Addr::new(192, 0, 2, 1);
        t.apply(
            &TableChange::Upsert {
                old: Some(peer),
                new: moved,
            },
            &mut out,
        );
        assert!(t.is_empty(), "{:?}", t.routes().collect::<Vec<_>>());
        assert!(
            matches!(out.last(), Some(RouteChange::Remove(_))),
            "{out:?}"
        );
    }
}
