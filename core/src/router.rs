//! The route table: which peer carries each remote subnet.
//!
//! The routes are the node's lease table seen through its own exclusions: every lease
//! is a route to its holder except our own lease, and except any lease that records our
//! own public IP: before a restarted node has taken its old lease back, that lease is
//! still ours, and a route to ourselves would be programmed only to be removed (a kernel
//! backend refuses it outright). So the routes are not a second copy of the leases (a
//! node of a large cluster would hold every lease twice), and they cannot drift from the
//! table. [`RouteTable`] holds the exclusions and turns each lease-table change into the
//! route changes a datapath must program; [`Routes`] answers "who gets a packet for this
//! address".

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::lease::{Lease, LeaseKey, RawJson};
use crate::lease_table::{LeaseTable, TableChange};

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

/// Which underlay address the forwarding table sends a subnet's packets to (and
/// expects them from): a choice of the backend, made once when the node is set up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Underlay {
    /// Each subnet via the address of its own family: an IPv4 subnet via `PublicIP`, an
    /// IPv6 one via `PublicIPv6` (the kernel backends' routes; wireguard's `separate`
    /// mode, whose IPv6 sessions run over IPv6).
    #[default]
    PerFamily,
    /// Every subnet via the lease's `PublicIP`: IPv6 inner packets over an IPv4
    /// underlay (the udp backend; wireguard with one device for both families).
    Ipv4,
}

/// A change to the route table, for the datapath to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteChange {
    /// A route to add, or to replace the route to the same subnet.
    Add(Route),
    /// A route to remove.
    Remove(Route),
}

/// What makes a node's routes out of its lease table: its own lease and public IP.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteTable {
    own: Option<LeaseKey>,
    /// Our public address: leases recording it are ours, never routes. The IPv4 one,
    /// or on an IPv6-only network (where every lease records `PublicIP` 0.0.0.0) the
    /// IPv6 one.
    own_ip: Option<IpAddr>,
}

fn routes_of(lease: &Lease) -> impl Iterator<Item = Route> + '_ {
    v4_route(lease).into_iter().chain(v6_route(lease))
}

fn v4_route(lease: &Lease) -> Option<Route> {
    Some(Route {
        subnet: IpNet::V4(lease.key.ipv4?),
        public_ip: IpAddr::V4(lease.attrs.public_ip),
        backend_type: lease.attrs.backend_type.clone(),
        backend_data: lease.attrs.backend_data.clone(),
    })
}

fn v6_route(lease: &Lease) -> Option<Route> {
    let (v6, ip6) = lease.key.ipv6.zip(lease.attrs.public_ipv6)?;
    Some(Route {
        subnet: IpNet::V6(v6),
        public_ip: IpAddr::V6(ip6),
        backend_type: lease.attrs.backend_type.clone(),
        backend_data: lease
            .attrs
            .backend_v6_data
            .clone()
            .or_else(|| lease.attrs.backend_data.clone()),
    })
}

impl RouteTable {
    /// The routes of a node that holds no lease and has no known address.
    pub fn new() -> Self {
        RouteTable::default()
    }

    /// The routes of the node with public IP `ip`.
    pub fn of_node(ip: Ipv4Addr) -> Self {
        RouteTable {
            own_ip: Some(IpAddr::V4(ip)),
            own: None,
        }
    }

    /// The routes of the node with public IPv6 address `ip6` on an IPv6-only network.
    pub fn of_v6_node(ip6: Ipv6Addr) -> Self {
        RouteTable {
            own_ip: Some(IpAddr::V6(ip6)),
            own: None,
        }
    }

    /// Whether `lease` is a route: neither our lease nor one recording our address.
    pub fn is_route(&self, lease: &Lease) -> bool {
        self.is_route_of(&lease.key, lease.attrs.public_ip, lease.attrs.public_ipv6)
    }

    fn is_route_of(&self, key: &LeaseKey, ip: Ipv4Addr, ip6: Option<Ipv6Addr>) -> bool {
        Some(*key) != self.own && !self.records_own_ip(ip, ip6)
    }

    /// Whether a lease recording these addresses records ours.
    fn records_own_ip(&self, ip: Ipv4Addr, ip6: Option<Ipv6Addr>) -> bool {
        match self.own_ip {
            Some(IpAddr::V4(own)) => ip == own,
            Some(IpAddr::V6(own)) => ip6 == Some(own),
            None => false,
        }
    }

    /// The routes out of `table`.
    pub fn of<'a>(&'a self, table: &'a LeaseTable) -> Routes<'a> {
        Routes {
            exclusions: self,
            table,
        }
    }

    /// Sets (or clears) our own lease, whose subnets are never routes; `table` is the
    /// lease table the routes come from. Appends the routes that go away, and the
    /// routes of the lease we held before if a peer holds it now (a lease of ours left
    /// in the table, our own public IP, stays no route).
    pub fn set_own(
        &mut self,
        own: Option<LeaseKey>,
        table: &LeaseTable,
        out: &mut Vec<RouteChange>,
    ) {
        if self.own == own {
            return;
        }
        if let Some(lease) = own.and_then(|k| table.get(&k)) {
            if self.is_route(lease) {
                out.extend(routes_of(lease).map(RouteChange::Remove));
            }
        }
        let before = std::mem::replace(&mut self.own, own);
        if let Some(lease) = before.and_then(|k| table.get(&k)) {
            if self.is_route(lease) {
                out.extend(routes_of(lease).map(RouteChange::Add));
            }
        }
    }

    /// Appends the route changes that one lease-table change causes.
    pub fn apply(&self, change: &TableChange, out: &mut Vec<RouteChange>) {
        let (old, new) = match change {
            TableChange::Upsert { old, new } => (old.as_ref(), Some(new)),
            TableChange::Remove { lease } => (Some(lease), None),
        };
        let before: Vec<Route> = old
            .filter(|l| self.is_route(l))
            .map(|l| routes_of(l).collect())
            .unwrap_or_default();
        let after: Vec<Route> = new
            .filter(|l| self.is_route(l))
            .map(|l| routes_of(l).collect())
            .unwrap_or_default();
        for route in &before {
            if !after.iter().any(|r| r.subnet == route.subnet) {
                out.push(RouteChange::Remove(route.clone()));
            }
        }
        for route in after {
            if !before.contains(&route) {
                out.push(RouteChange::Add(route));
            }
        }
    }
}

/// A node's routes: its lease table less its own leases (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct Routes<'a> {
    exclusions: &'a RouteTable,
    table: &'a LeaseTable,
}

/// A node's routes as they were at one moment, kept cheaply: a shared copy of the lease
/// table and the exclusions, from [`Routes::snapshot`].
#[derive(Debug, Clone)]
pub struct RoutesSnapshot {
    exclusions: RouteTable,
    table: LeaseTable,
}

impl<'a> Routes<'a> {
    /// These routes, kept for [`Routes::is_same`].
    pub fn snapshot(&self) -> RoutesSnapshot {
        RoutesSnapshot {
            exclusions: self.exclusions.clone(),
            table: self.table.clone(),
        }
    }

    /// Whether these routes are made of the very table and exclusions `snapshot` kept
    /// (see [`LeaseTable::is_same`]), and so are the same routes: a test in O(1) that
    /// lets a checker skip comparing again routes it has compared already. False says
    /// nothing: equal routes may come from a table rebuilt by the same changes.
    pub fn is_same(&self, snapshot: &RoutesSnapshot) -> bool {
        self.table.is_same(&snapshot.table) && *self.exclusions == snapshot.exclusions
    }

    /// Every route, IPv4 first, each family ordered by subnet.
    pub fn routes(&self) -> impl Iterator<Item = Route> + 'a {
        let ex = self.exclusions;
        let v4 = self.table.leases().filter(move |l| ex.is_route(l));
        let v6 = self
            .table
            .leases_by_v6()
            .filter(move |l| ex.is_route(l))
            .filter_map(v6_route);
        v4.filter_map(v4_route).chain(v6)
    }

    /// Every route as (subnet, peer's public IP), in the order of [`Routes::routes`],
    /// without copying the backend data.
    pub fn peers(&self) -> impl Iterator<Item = (IpNet, IpAddr)> + 'a {
        let ex = self.exclusions;
        let v4 = self
            .table
            .addresses()
            .filter(move |(k, ip, ip6)| ex.is_route_of(k, *ip, *ip6))
            .filter_map(|(k, ip, _)| Some((IpNet::V4(k.ipv4?), IpAddr::V4(ip))));
        let v6 = self
            .table
            .leases_by_v6()
            .filter(move |l| ex.is_route(l))
            .filter_map(|l| {
                let (n, ip) = l.key.ipv6.zip(l.attrs.public_ipv6)?;
                Some((IpNet::V6(n), IpAddr::V6(ip)))
            });
        v4.chain(v6)
    }

    /// [`Routes::peers`] as the forwarding table carries them: with
    /// [`Underlay::PerFamily`] exactly those; with [`Underlay::Ipv4`] each IPv6 subnet
    /// via its lease's `PublicIP` instead of its `PublicIPv6` (a backend that carries
    /// IPv6 inner packets over an IPv4 underlay: udp, wireguard with one device).
    pub fn forward_peers(&self, underlay: Underlay) -> impl Iterator<Item = (IpNet, IpAddr)> + 'a {
        let ex = self.exclusions;
        let v4 = self
            .table
            .addresses()
            .filter(move |(k, ip, ip6)| ex.is_route_of(k, *ip, *ip6))
            .filter_map(|(k, ip, _)| Some((IpNet::V4(k.ipv4?), IpAddr::V4(ip))));
        let v6 = self
            .table
            .leases_by_v6()
            .filter(move |l| ex.is_route(l))
            .filter_map(move |l| {
                let (n, ip6) = l.key.ipv6.zip(l.attrs.public_ipv6)?;
                let via = match underlay {
                    Underlay::PerFamily => IpAddr::V6(ip6),
                    Underlay::Ipv4 => IpAddr::V4(l.attrs.public_ip),
                };
                Some((IpNet::V6(n), via))
            });
        v4.chain(v6)
    }

    /// The number of routes.
    pub fn len(&self) -> usize {
        let routes = |l: &Lease| {
            usize::from(l.key.ipv4.is_some())
                + usize::from(l.key.ipv6.is_some() && l.attrs.public_ipv6.is_some())
        };
        let all = self.table.len() - self.table.v6_only_len() + self.table.v6_routable();
        // Less what the exclusions take away: the leases recording our address, and
        // our own lease if it records another.
        let ex = self.exclusions;
        let by_ip: usize = match ex.own_ip {
            Some(IpAddr::V4(ip)) => self.table.by_public_ip(ip).map(routes).sum(),
            // IPv6-only: no index by IPv6 address; such a network's leases are few
            // enough to walk (flannel lists them all for every acquisition).
            Some(IpAddr::V6(ip6)) => self
                .table
                .leases()
                .filter(|l| l.attrs.public_ipv6 == Some(ip6))
                .map(routes)
                .sum(),
            None => 0,
        };
        let own = ex
            .own
            .and_then(|k| self.table.get(&k))
            .filter(|l| !ex.records_own_ip(l.attrs.public_ip, l.attrs.public_ipv6))
            .map_or(0, routes);
        all - by_ip - own
    }

    /// Whether there are no routes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The route whose subnet contains `dst`, if any.
    pub fn lookup(&self, dst: IpAddr) -> Option<Route> {
        let lease = match dst {
            IpAddr::V4(a) => {
                // Subnets never overlap, so the candidate is the greatest subnet starting
                // at or before the address.
                let probe = LeaseKey::v4(Ipv4Net::new(a, 32).ok()?);
                let l = self.table.leases_back_from(probe).next()?;
                l.key.ipv4.is_some_and(|n| n.has(a)).then_some(l)?
            }
            IpAddr::V6(a) => {
                let l = self
                    .table
                    .leases_by_v6()
                    .filter(|l| l.key.ipv6.is_some_and(|n| n.has(a)))
                    .last()?;
                l
            }
        };
        if !self.exclusions.is_route(lease) {
            return None;
        }
        routes_of(lease).find(|r| r.subnet.contains(&dst))
    }

    /// Whether some route goes via `public_ip`.
    pub fn is_peer(&self, public_ip: IpAddr) -> bool {
        match public_ip {
            IpAddr::V4(ip) => self
                .table
                .by_public_ip(ip)
                .any(|l| self.exclusions.is_route(l)),
            IpAddr::V6(_) => self.routes().any(|r| r.public_ip == public_ip),
        }
    }
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
    use crate::store::{Entry, WatchEvent};

    const PREFIX: &str = "/n/subnets/";

    /// Puts a lease of `subnet` for `ip` into `table` at `rev`; returns the table change.
    fn put(table: &mut LeaseTable, subnet: &str, ip: [u8; 4], rev: u64) -> TableChange {
        let key = LeaseKey::v4(subnet.parse().unwrap());
        let entry = Entry {
            key: format!("{PREFIX}{key}"),
            value: LeaseAttrs::new(Ipv4Addr::from(ip), crate::config::BackendType::Udp).encode(),
            create_revision: 1,
            mod_revision: rev,
            expires_at: None,
        };
        table.apply(&WatchEvent::Put(entry)).0.expect("a change")
    }

    fn delete(table: &mut LeaseTable, subnet: &str, rev: u64) -> TableChange {
        let key = LeaseKey::v4(subnet.parse().unwrap());
        let event = WatchEvent::Delete {
            key: format!("{PREFIX}{key}"),
            revision: rev,
        };
        table.apply(&event).0.expect("a change")
    }

    /// A snapshot stands for the routes until the table or the exclusions change, and
    /// only the very table counts: an equal one rebuilt by the same changes does not.
    #[test]
    fn a_snapshot_is_the_same_routes_until_anything_changes() {
        let mut table = LeaseTable::new(PREFIX);
        let mut t = RouteTable::of_node(Ipv4Addr::new(192, 0, 2, 1));
        let mut out = Vec::new();
        put(&mut table, "10.5.1.0/24", [192, 0, 2, 7], 1);
        let snap = t.of(&table).snapshot();
        assert!(t.of(&table).is_same(&snap));
        assert!(
            t.of(&table.clone()).is_same(&snap),
            "a shared copy is the same"
        );

        let mut twin = LeaseTable::new(PREFIX);
        put(&mut twin, "10.5.1.0/24", [192, 0, 2, 7], 1);
        assert!(!t.of(&twin).is_same(&snap), "equal, but not the very table");

        put(&mut table, "10.5.2.0/24", [192, 0, 2, 8], 2);
        assert!(!t.of(&table).is_same(&snap), "the table changed");
        let snap = t.of(&table).snapshot();
        t.set_own(
            Some(LeaseKey::v4("10.5.2.0/24".parse().unwrap())),
            &table,
            &mut out,
        );
        assert!(!t.of(&table).is_same(&snap), "the exclusions changed");
    }

    #[test]
    fn forward_peers_send_ipv6_subnets_via_the_family_or_the_ipv4_address() {
        let mut table = LeaseTable::new(PREFIX);
        let mut attrs =
            LeaseAttrs::new(Ipv4Addr::new(192, 0, 2, 3), crate::config::BackendType::Udp);
        attrs.public_ipv6 = Some("2001:db8:1::3".parse().unwrap());
        let entry = Entry {
            key: format!("{PREFIX}10.5.3.0-24&fc00:0:0:3::-64"),
            value: attrs.encode(),
            create_revision: 1,
            mod_revision: 1,
            expires_at: None,
        };
        table.apply(&WatchEvent::Put(entry)).0.expect("a change");
        let t = RouteTable::new();
        let routes = t.of(&table);
        let (n4, n6): (IpNet, IpNet) = (
            "10.5.3.0/24".parse().unwrap(),
            "fc00:0:0:3::/64".parse().unwrap(),
        );
        let (ip4, ip6): (IpAddr, IpAddr) = (
            "192.0.2.3".parse().unwrap(),
            "2001:db8:1::3".parse().unwrap(),
        );
        let per_family: Vec<_> = routes.forward_peers(Underlay::PerFamily).collect();
        assert_eq!(per_family, vec![(n4, ip4), (n6, ip6)]);
        assert!(routes.peers().eq(per_family.iter().copied()));
        let via4: Vec<_> = routes.forward_peers(Underlay::Ipv4).collect();
        assert_eq!(via4, vec![(n4, ip4), (n6, ip4)]);
    }

    #[test]
    fn lookup_finds_the_containing_subnet_only() {
        let mut table = LeaseTable::new(PREFIX);
        let t = RouteTable::new();
        let mut out = Vec::new();
        for (i, (s, ip)) in [("10.5.1.0/24", 1), ("10.5.3.0/24", 3)]
            .into_iter()
            .enumerate()
        {
            let change = put(&mut table, s, [192, 0, 2, ip], i as u64 + 1);
            t.apply(&change, &mut out);
        }
        assert_eq!(out.len(), 2);
        let routes = t.of(&table);
        let hit = routes.lookup("10.5.3.77".parse().unwrap()).unwrap();
        assert_eq!(hit.public_ip, "192.0.2.3".parse::<IpAddr>().unwrap());
        assert!(routes.lookup("10.5.2.1".parse().unwrap()).is_none());
        assert!(routes.lookup("10.5.4.0".parse().unwrap()).is_none());
        assert!(routes.lookup("10.4.255.255".parse().unwrap()).is_none());
        assert!(routes.is_peer("192.0.2.3".parse().unwrap()));
        assert!(!routes.is_peer("192.0.2.2".parse().unwrap()));
    }

    #[test]
    fn a_peer_on_the_subnet_we_leave_becomes_a_route() {
        let mut table = LeaseTable::new(PREFIX);
        let mut t = RouteTable::new();
        let mut out = Vec::new();
        let old = LeaseKey::v4("10.5.1.0/24".parse().unwrap());
        t.set_own(Some(old), &table, &mut out);
        // While we hold 10.5.1.0/24 in our mind, a peer's lease of it arrives (ours was
        // lost in the store and the peer took it): no route yet.
        let change = put(&mut table, "10.5.1.0/24", [192, 0, 2, 9], 1);
        t.apply(&change, &mut out);
        assert!(out.is_empty(), "{out:?}");
        // We move to another subnet: the peer's lease is a route now.
        t.set_own(
            Some(LeaseKey::v4("10.5.2.0/24".parse().unwrap())),
            &table,
            &mut out,
        );
        assert!(
            matches!(&out[..], [RouteChange::Add(r)] if r.public_ip == IpAddr::from([192, 0, 2, 9])),
            "{out:?}"
        );
        assert_eq!(t.of(&table).len(), 1);
    }

    #[test]
    fn own_lease_is_never_a_route_and_renewals_change_nothing() {
        let mut table = LeaseTable::new(PREFIX);
        let mut t = RouteTable::new();
        let mut out = Vec::new();
        let change = put(&mut table, "10.5.1.0/24", [192, 0, 2, 1], 1);
        t.apply(&change, &mut out);
        assert_eq!(out.len(), 1, "not ours yet: a route");
        t.set_own(
            Some(LeaseKey::v4("10.5.1.0/24".parse().unwrap())),
            &table,
            &mut out,
        );
        assert!(
            matches!(out.last(), Some(RouteChange::Remove(_))),
            "{out:?}"
        );
        assert!(t.of(&table).is_empty());
        out.clear();

        let change = put(&mut table, "10.5.2.0/24", [192, 0, 2, 2], 2);
        t.apply(&change, &mut out);
        let change = put(&mut table, "10.5.2.0/24", [192, 0, 2, 2], 3);
        t.apply(&change, &mut out);
        assert_eq!(out.len(), 1, "a renewal is not a route change: {out:?}");
        let change = delete(&mut table, "10.5.2.0/24", 4);
        t.apply(&change, &mut out);
        assert!(matches!(out.last(), Some(RouteChange::Remove(_))));
        assert!(t.of(&table).is_empty());
    }

    #[test]
    fn a_lease_recording_our_own_public_ip_is_never_a_route() {
        let mut table = LeaseTable::new(PREFIX);
        let t = RouteTable::of_node(Ipv4Addr::new(192, 0, 2, 1));
        let mut out = Vec::new();
        // Our old lease, listed before we have taken it back.
        let change = put(&mut table, "10.5.1.0/24", [192, 0, 2, 1], 1);
        t.apply(&change, &mut out);
        assert!(t.of(&table).is_empty() && out.is_empty(), "{out:?}");
        // A peer's lease that moves to our address is withdrawn.
        let change = put(&mut table, "10.5.2.0/24", [192, 0, 2, 2], 2);
        t.apply(&change, &mut out);
        let change = put(&mut table, "10.5.2.0/24", [192, 0, 2, 1], 3);
        t.apply(&change, &mut out);
        assert!(
            t.of(&table).is_empty(),
            "{:?}",
            t.of(&table).routes().collect::<Vec<_>>()
        );
        assert!(
            matches!(out.last(), Some(RouteChange::Remove(_))),
            "{out:?}"
        );
    }
}
