//! The invariants, checked after every event:
//! - no two live leases in the store overlap (IPv4 subnets, and IPv6 subnets on a
//!   dual-stack network);
//! - no two running nodes hold overlapping subnets;
//! - a node that has caught up with the store routes to exactly the live peer leases;
//! - (in `host.rs`) no packet reaches a container it was not addressed to.
//! - a node that can reach the store catches up with it within [`CATCH_UP_BOUND`] plus
//!   four store latencies: no retry waits on a store failure longer than that once the
//!   store answers again ([`World::check_store_wait`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use weft_core::config::NetworkConfig;
use weft_core::lease::{LeaseAttrs, LeaseKey};
use weft_core::store::{StoreError, WatchEvent};

use super::{World, STORE_TIMEOUT};

/// How long a node that can reach the store may still wait to retry after a store
/// failure, besides four store latencies: an unanswered probe's timeout, then a probe
/// period with its jitter (the probe asks again, and its answer sends every waiting
/// retry).
pub const CATCH_UP_BOUND: Duration = STORE_TIMEOUT
    .saturating_add(weft_core::node::PROBE_EVERY)
    .saturating_add(weft_core::node::PROBE_EVERY);

/// A live lease in the store, as the checker follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LiveLease {
    /// The public IPv4 address it records.
    pub ip: Ipv4Addr,
    /// The address that names its holder: `ip`, or for an IPv6-only lease (whose
    /// `PublicIP` is flannel's 0.0.0.0) its public IPv6 address.
    pub holder: IpAddr,
    /// Its IPv6 subnet and public IPv6 address, on a dual-stack network.
    pub v6: Option<(Ipv6Net, Ipv6Addr)>,
}

/// One route the live leases make, see [`World::live_routes`].
#[derive(Debug, Clone, Copy)]
pub struct LiveRoute {
    /// The route: subnet and public IP.
    pub route: (IpNet, IpAddr),
    /// The primary subnet of the lease it comes from (see [`LeaseKey::primary`]).
    pub lease: IpNet,
    /// The address that names that lease's holder (see `LiveLease::holder`).
    pub ip: IpAddr,
}

/// The address that names the holder of a lease `key` recording `attrs`: its public
/// IPv4 address, or for an IPv6-only lease its public IPv6 one.
fn holder_of(key: &LeaseKey, attrs: &LeaseAttrs) -> IpAddr {
    match (key.ipv4, attrs.public_ipv6) {
        (None, Some(ip6)) => IpAddr::V6(ip6),
        _ => IpAddr::V4(attrs.public_ip),
    }
}

/// What a passed check of a host's routes compared: see
/// [`World::routes_checked_already`].
#[derive(Debug)]
pub(crate) struct RoutesChecked {
    live_version: u64,
    routes: weft_core::router::RoutesSnapshot,
    own: Option<IpNet>,
    ip: Ipv4Addr,
    networks: (usize, usize),
}

/// A subnet of either family: two overlap when one contains the other.
trait Subnet: Ord + Copy {
    fn covers(&self, other: &Self) -> bool;
}

impl Subnet for Ipv4Net {
    fn covers(&self, other: &Self) -> bool {
        self.contains(other)
    }
}

impl Subnet for Ipv6Net {
    fn covers(&self, other: &Self) -> bool {
        self.contains(other)
    }
}

impl Subnet for IpNet {
    fn covers(&self, other: &Self) -> bool {
        self.contains(other)
    }
}

/// The entry of `map` that overlaps `net`, if any (subnets in `map` never overlap).
fn overlapping<N: Subnet, V: Copy>(map: &BTreeMap<N, V>, net: N) -> Option<(N, V)> {
    let before = map.range(..=net).next_back();
    if let Some((n, v)) = before {
        if n.covers(&net) {
            return Some((*n, *v));
        }
    }
    let after = map.range(net..).next();
    if let Some((n, v)) = after {
        if net.covers(n) {
            return Some((*n, *v));
        }
    }
    None
}

/// Whether `key`'s IPv4 subnet is one of `cfg`'s: in its Network, of its SubnetLen, on
/// its boundary (an operator's reservation may lie outside [SubnetMin, SubnetMax]). On
/// an IPv6-only network, the same of its IPv6 subnet, and no IPv4 one.
fn is_subnet_of(key: &LeaseKey, cfg: &NetworkConfig) -> bool {
    let Some(v4) = key.ipv4 else {
        return cfg.network.is_none()
            && key.ipv6.is_some_and(|v6| {
                cfg.ipv6_network.is_some_and(|n| n.contains(&v6))
                    && v6.prefix_len() == cfg.ipv6_subnet_len
                    && v6.trunc() == v6
            });
    };
    cfg.network.is_some_and(|n| n.contains(&v4))
        && v4.prefix_len() == cfg.subnet_len
        && v4.trunc() == v4
}

/// Whether `key` is compatible with `cfg` as flannel's `isSubnetConfigCompat` has it:
/// a subnet of its network within [SubnetMin, SubnetMax]. A node started with `cfg`
/// neither reuses nor writes another; its old lease outside them runs out.
fn is_compatible(key: &LeaseKey, cfg: &NetworkConfig) -> bool {
    let Some(v4) = key.ipv4 else {
        let first = key.ipv6.map_or(0, |n| u128::from(n.network()));
        return is_subnet_of(key, cfg)
            && cfg
                .ipv6_subnet_min
                .is_none_or(|min| first >= u128::from(min))
            && cfg
                .ipv6_subnet_max
                .is_none_or(|max| first <= u128::from(max));
    };
    let first = u32::from(v4.network());
    is_subnet_of(key, cfg)
        && (u32::from(cfg.subnet_min)..=u32::from(cfg.subnet_max)).contains(&first)
}

/// How the forwarding table a host's packets use differs from the routes its node
/// holds (each route's subnet to the address the node's underlay says), if it does:
/// a change of a peer's lease the table missed. Checked once per route-moving change
/// of the store a host has applied, and by `converged`.
pub(crate) fn forward_mismatch(run: &super::host::Running) -> Option<String> {
    let node = &run.node;
    let mut n = 0;
    for (subnet, ip) in node.routes().forward_peers(node.forward_underlay()) {
        n += 1;
        match run.table.lookup(subnet.addr()) {
            Some(p) if p.subnet == subnet && p.public_ip == ip => {}
            Some(p) => {
                return Some(format!(
                    "{subnet} via {ip} is {} via {} there",
                    p.subnet, p.public_ip
                ))
            }
            None => return Some(format!("{subnet} via {ip} is missing")),
        }
    }
    (n != run.table.len()).then(|| format!("{n} routes, {} table entries", run.table.len()))
}

/// The key of the live lease `l` followed under `id` (its primary subnet).
fn key_of(id: IpNet, l: &LiveLease) -> LeaseKey {
    match id {
        IpNet::V4(v4) => LeaseKey {
            ipv4: Some(v4),
            ipv6: l.v6.map(|(n, _)| n),
        },
        IpNet::V6(v6) => LeaseKey::v6(v6),
    }
}

impl World {
    fn lease_key_of(&self, store_key: &str) -> Option<LeaseKey> {
        store_key.strip_prefix(&self.subnets_prefix)?.parse().ok()
    }

    /// Follows the store's changes into `self.live`, checking each new lease against the
    /// others.
    pub(crate) fn follow_store(&mut self) {
        let events = match self
            .store
            .events_since(&self.subnets_prefix, self.live_next)
        {
            Ok(events) => events,
            Err(StoreError::Compacted { .. }) | Err(_) => {
                // Start over from a listing (an outage also ends up here: the listing
                // fails too, and the next change retries).
                if self.store_down {
                    return;
                }
                let listing = self.store.list(&self.subnets_prefix);
                self.live_version += 1;
                let before = std::mem::take(&mut self.live);
                self.live6.clear();
                self.live_next = listing.revision + 1;
                let events: Vec<_> = listing.entries.into_iter().map(WatchEvent::Put).collect();
                self.follow_events(events);
                if self.live != before {
                    self.routes_revision = listing.revision;
                }
                self.live_next = self.live_next.max(self.store.revision() + 1);
                return;
            }
        };
        if !events.is_empty() {
            self.live_version += 1;
        }
        self.follow_events(events);
        self.live_next = self.live_next.max(self.store.revision() + 1);
    }

    fn follow_events(&mut self, events: Vec<WatchEvent>) {
        for event in events {
            self.live_next = self.live_next.max(event.revision() + 1);
            let Some(key) = self.lease_key_of(event.key()) else {
                continue;
            };
            let id = key.primary();
            let before = self.live.get(&id).copied();
            let revision = event.revision();
            match event {
                WatchEvent::Put(entry) => {
                    let Ok(attrs) = LeaseAttrs::decode(&entry.key, &entry.value) else {
                        // Garbage over a key: whatever lease it held is gone.
                        self.forget_live(&id);
                        if self.live.get(&id).copied() != before {
                            self.routes_revision = revision;
                        }
                        continue;
                    };
                    self.forget_live(&id);
                    let holder = holder_of(&key, &attrs);
                    let writer = match holder {
                        IpAddr::V4(ip) => self.by_ip.get(&ip).copied(),
                        IpAddr::V6(ip6) => self.hosts.iter().position(|h| h.ipv6() == ip6),
                    };
                    if entry.expires_at.is_none()
                        && !self.networks.iter().any(|n| is_subnet_of(&key, n))
                    {
                        // No lease of any network in effect (garbage, a subnet of the
                        // wrong size): every node must skip it, and route nowhere.
                        if self.live.get(&id).copied() != before {
                            self.routes_revision = revision;
                        }
                        continue;
                    }
                    if entry.expires_at.is_some() {
                        // Written by a node (an operator's reservation has no TTL), in
                        // the network it started with.
                        let net = writer.map_or(self.networks.len() - 1, |h| self.hosts[h].network);
                        if let Some(problem) = self.outside_range(&key, &self.networks[net]) {
                            self.fail(format!("invariant: a node wrote {problem}"));
                        }
                        // Of the writer's network: a node started after a config change
                        // skips its lease of the old network (outside its own) and leaves
                        // it to run out; scenario 24.
                        let several = self.networks.len() > 1;
                        if let Some((other, _)) = self.live.iter().find(|(n, l)| {
                            l.holder == holder
                                && (!several || is_compatible(&key_of(**n, l), &self.networks[net]))
                        }) {
                            self.fail(format!(
                                "invariant: live leases {other} and {id} both record public IP {holder}",
                            ));
                        }
                    }
                    if let Some((other, _)) = overlapping(&self.live, id) {
                        self.fail(format!(
                            "invariant: live leases {other} and {id} overlap in the store",
                        ));
                    }
                    if let Some(v6) = key.ipv6 {
                        if let Some((other, _)) = overlapping(&self.live6, v6) {
                            self.fail(format!(
                                "invariant: live leases {other} and {v6} overlap in the store"
                            ));
                        }
                        self.live6.insert(v6, id);
                    }
                    let v6 = key.ipv6.zip(attrs.public_ipv6);
                    let lease = LiveLease {
                        ip: attrs.public_ip,
                        holder,
                        v6,
                    };
                    self.live.insert(id, lease);
                }
                WatchEvent::Delete { .. } => self.forget_live(&id),
            }
            if self.live.get(&id).copied() != before {
                self.routes_revision = revision;
            }
        }
    }

    /// What is wrong with a lease `key` a node wrote, if its subnet is not one the
    /// network's config allows: of `SubnetLen`, on its boundary, within `Network` and
    /// between `SubnetMin` and `SubnetMax` (IPv6 alike). Checked here from the config's
    /// numbers, not with the allocator's own `SubnetSpace`.
    fn outside_range(&self, key: &LeaseKey, cfg: &NetworkConfig) -> Option<String> {
        let Some(v4) = key.ipv4 else {
            if let Some(network) = cfg.network {
                return Some(format!("{key}, with no IPv4 subnet of {network}"));
            }
            return self.outside_v6_range(key, cfg);
        };
        let first = u32::from(v4.network());
        let ok = cfg.network.is_some_and(|n| n.contains(&v4))
            && v4.prefix_len() == cfg.subnet_len
            && v4.trunc() == v4
            && (u32::from(cfg.subnet_min)..=u32::from(cfg.subnet_max)).contains(&first);
        if !ok {
            let network = cfg
                .network
                .map_or("no IPv4 network".into(), |n| n.to_string());
            return Some(format!(
                "{v4}, not a /{} of {network} within [{}, {}]",
                cfg.subnet_len, cfg.subnet_min, cfg.subnet_max
            ));
        }
        self.outside_v6_range(key, cfg)
    }

    /// [`World::outside_range`] of `key`'s IPv6 subnet, if it has one.
    fn outside_v6_range(&self, key: &LeaseKey, cfg: &NetworkConfig) -> Option<String> {
        let v6 = key.ipv6?;
        let first = u128::from(v6.network());
        let ok = cfg.ipv6_network.is_some_and(|n| n.contains(&v6))
            && v6.prefix_len() == cfg.ipv6_subnet_len
            && v6.trunc() == v6
            && cfg
                .ipv6_subnet_min
                .is_none_or(|min| first >= u128::from(min))
            && cfg
                .ipv6_subnet_max
                .is_none_or(|max| first <= u128::from(max));
        (!ok).then(|| format!("{v6}, outside the IPv6 network's subnets"))
    }

    fn forget_live(&mut self, id: &IpNet) {
        if let Some(LiveLease {
            v6: Some((n, _)), ..
        }) = self.live.remove(id)
        {
            self.live6.remove(&n);
        }
    }

    /// Host `h` now holds `key`: no other running node may hold an overlapping subnet.
    pub(crate) fn hold(&mut self, h: usize, key: LeaseKey) {
        let id = key.primary();
        if let Some((other, o)) = overlapping(&self.held, id) {
            if o != h
                && self.hosts[o]
                    .lease_key()
                    .is_some_and(|k| k.primary() == other)
                && self.hosts[o].ip == self.hosts[h].ip
                && other == id
            {
                // Two nodes configured with one public IP: by flannel's rule the new one
                // reuses the lease recording that address, and the old holder must give
                // it up once it sees the write (scenario 23 expects it to exit).
                let (a, b) = (self.hosts[o].name.clone(), self.hosts[h].name.clone());
                self.log(
                    "sim",
                    format_args!("{b} takes over {other} from {a}, which has its public IP"),
                );
            } else if o != h
                && self.hosts[o]
                    .lease_key()
                    .is_some_and(|k| k.primary() == other)
            {
                let (a, b) = (self.hosts[o].name.clone(), self.hosts[h].name.clone());
                self.fail(format!(
                    "invariant: {a} holds {other} and {b} now holds {id}: they overlap",
                ));
            }
            self.held.remove(&other);
        }
        self.held.insert(id, h);
    }

    /// Whether host `h` has caught up with the store: its view is synced, its watch runs
    /// (no retry pending), and it has seen every change the store made to the live
    /// leases' routes. Changes that leave every route as it was (a renewal, which comes
    /// every few minutes in a large cluster) may still be on their way: a check that
    /// waited for those would fail whenever one is in flight at its instant.
    pub fn caught_up(&self, h: usize) -> bool {
        let host = &self.hosts[h];
        let Some(node) = host.node() else {
            return false;
        };
        !self.store_down
            && node.is_watching()
            && node.leases().is_synced()
            && node.leases().revision() >= self.routes_revision
    }

    /// Every route the live leases make, in the order a node lists its routes (IPv4
    /// first, each family by subnet), each with the IPv4 subnet and address of the
    /// lease it comes from: what [`World::route_mismatch_with`] compares a node with.
    pub fn live_routes(&self) -> Vec<LiveRoute> {
        let v4 = self.live.iter().filter_map(|(n, l)| {
            let IpNet::V4(_) = n else { return None };
            Some(LiveRoute {
                route: (*n, IpAddr::V4(l.ip)),
                lease: *n,
                ip: l.holder,
            })
        });
        let v6 = self.live6.values().filter_map(|id| {
            let l = self.live.get(id)?;
            let (n, ip6) = l.v6?;
            Some(LiveRoute {
                route: (IpNet::V6(n), IpAddr::V6(ip6)),
                lease: *id,
                ip: l.holder,
            })
        });
        v4.chain(v6).collect()
    }

    /// For a caught-up host: the difference between its routes and the live peer
    /// leases, described; `None` when they agree.
    pub fn route_mismatch(&self, h: usize) -> Option<String> {
        self.route_mismatch_with(h, &self.live_routes())
    }

    /// [`World::route_mismatch`] against `live`, the [`World::live_routes`] of now (a
    /// check of every node makes it once).
    pub fn route_mismatch_with(&self, h: usize, live: &[LiveRoute]) -> Option<String> {
        let node = self.hosts[h].node()?;
        let own = node.lease().map(|l| l.key.primary());
        // A node never routes to itself: not its lease, nor any recording its address
        // (its IPv6 one on an IPv6-only network).
        let ip = match self.networks[self.hosts[h].network].network {
            Some(_) => IpAddr::V4(self.hosts[h].ip),
            None => IpAddr::V6(self.hosts[h].ipv6()),
        };
        // A node started after the config changed routes only to leases in its network
        // (with one network only, every live lease lies in it: no filter).
        let network = (self.networks.len() > 1)
            .then(|| self.networks[self.hosts[h].network].network)
            .flatten();
        let want = live
            .iter()
            .filter(|r| Some(r.lease) != own && r.ip != ip)
            .filter(|r| network.is_none_or(|n| IpNet::V4(n).contains(&r.lease)))
            .map(|r| r.route);
        // Compared as they come (the common case, in a large cluster, is that they
        // agree); only a mismatch is worth collecting.
        if node.routes().peers().eq(want.clone()) {
            return None;
        }
        let routes: Vec<(IpNet, IpAddr)> = node.routes().peers().collect();
        let want: Vec<(IpNet, IpAddr)> = want.collect();
        let extra: Vec<String> = routes
            .iter()
            .filter(|r| !want.contains(r))
            .map(|(n, ip)| format!("{n} via {ip}"))
            .collect();
        let missing: Vec<String> = want
            .iter()
            .filter(|r| !routes.contains(r))
            .map(|(n, ip)| format!("{n} via {ip}"))
            .collect();
        Some(format!(
            "{} routes {} but the store has {} peer subnets; extra: [{}], missing: [{}]",
            self.hosts[h].name,
            routes.len(),
            want.len(),
            extra.join(", "),
            missing.join(", ")
        ))
    }

    /// Host `h`'s node may wait to retry after a store failure, but not for longer than
    /// [`CATCH_UP_BOUND`] (and four store latencies) of the store being reachable: up,
    /// the host's link to it whole, its clock steady.
    pub(crate) fn check_store_wait(&mut self, h: usize) {
        let now = self.now;
        let host = &mut self.hosts[h];
        let Some(retry_at) = host.node().and_then(|n| n.store_retry_at()) else {
            host.store_wait_seen = None;
            return;
        };
        let seen = *host.store_wait_seen.get_or_insert(now);
        if self.store_down || host.store_cut_up || host.store_cut_down {
            return;
        }
        let reachable = seen
            .max(host.store_trouble_at)
            .max(self.outage_changed_at.0);
        let bound = CATCH_UP_BOUND + self.cfg.store_latency * 4;
        if now.as_duration() > reachable.as_duration() + bound {
            let name = host.name.clone();
            let due = retry_at.saturating_since(host.node_now(now));
            self.fail(format!(
                "invariant: {name} could reach the store since {}, yet {} later it still waits to retry (due in {})",
                reachable.to_string().trim(),
                crate::time::format_duration(now.as_duration() - reachable.as_duration()),
                crate::time::format_duration(due)
            ));
        }
    }

    /// Everything [`World::route_mismatch_with`] reads for host `h`, kept after a check
    /// that passed (`None` when `h` runs no node).
    fn routes_check_inputs(&self, h: usize) -> Option<RoutesChecked> {
        let host = &self.hosts[h];
        let node = host.node()?;
        Some(RoutesChecked {
            live_version: self.live_version,
            routes: node.routes().snapshot(),
            own: node.lease().map(|l| l.key.primary()),
            ip: host.ip,
            networks: (self.networks.len(), host.network),
        })
    }

    /// Whether host `h`'s routes passed the check against the very live leases, the
    /// very lease table and exclusions, its own lease, address and network as now: the
    /// check would compare the same things again and pass again. Most events a node
    /// hears (a datagram, a timer) change none of them; comparing its routes anew after
    /// each would cost a walk of every lease per event.
    fn routes_checked_already(&self, h: usize) -> bool {
        let host = &self.hosts[h];
        let (Some(done), Some(node)) = (&host.routes_checked, host.node()) else {
            return false;
        };
        done.live_version == self.live_version
            && done.own == node.lease().map(|l| l.key.primary())
            && done.ip == host.ip
            && done.networks == (self.networks.len(), host.network)
            && node.routes().is_same(&done.routes)
    }

    pub(crate) fn check_invariants(&mut self) {
        if self.touched.is_empty() {
            return;
        }
        let mut touched = std::mem::take(&mut self.touched);
        for &h in &touched {
            self.check_store_wait(h);
        }
        if !self.cfg.check_routes {
            touched.clear();
            self.touched = touched;
            return;
        }
        let mut live = match self.live_routes_cache.take() {
            Some((version, routes)) if version == self.live_version => Some(routes),
            _ => None,
        };
        for &h in &touched {
            if self.cfg.trace_routes {
                if let Some(node) = self.hosts[h].node() {
                    let announced = &self.hosts[h].announced;
                    if !node.routes().peers().eq(announced.iter().copied())
                        && node.routes().peers().collect::<BTreeSet<_>>() != *announced
                    {
                        let name = self.hosts[h].name.clone();
                        let show = |v: Vec<(IpNet, IpAddr)>| {
                            let v: Vec<String> =
                                v.iter().map(|(n, ip)| format!("{n} via {ip}")).collect();
                            v.join(", ")
                        };
                        let routes = show(node.routes().peers().collect());
                        let said = show(announced.iter().copied().collect());
                        self.fail(format!(
                            "invariant: {name} routes [{routes}] but its route events announced [{said}]"
                        ));
                        return;
                    }
                }
            }
            // Once per route-moving change of the store a host has applied: its
            // forwarding table agrees with its routes (renewals move none, so a large
            // cluster's renewals cost nothing here).
            let moved = self.routes_revision;
            if self.hosts[h].forward_checked < moved
                && self.hosts[h]
                    .node()
                    .is_some_and(|n| n.leases().revision() >= moved)
            {
                self.hosts[h].forward_checked = moved;
                if let Some(m) = self.hosts[h].running_table().and_then(forward_mismatch) {
                    let name = self.hosts[h].name.clone();
                    self.fail(format!(
                        "invariant: {name}'s forwarding table disagrees with its routes: {m}"
                    ));
                    return;
                }
            }
            if self.caught_up(h) && !self.routes_checked_already(h) {
                let routes = live.get_or_insert_with(|| self.live_routes());
                if let Some(m) = self.route_mismatch_with(h, routes) {
                    self.fail(format!("invariant: converged, yet {m}"));
                    return;
                }
                self.hosts[h].routes_checked = self.routes_check_inputs(h);
            }
        }
        self.live_routes_cache = live.map(|routes| (self.live_version, routes));
        // Kept for its room, unless something was touched meanwhile.
        if self.touched.is_empty() {
            touched.clear();
            self.touched = touched;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use weft_core::config::NetworkConfig;

    use super::super::{Decisions, Host, World, WorldConfig};
    use crate::time::SimTime;
    use crate::underlay::LinkFaults;

    fn world() -> World {
        let network = r#"{"Network":"10.5.0.0/16","SubnetLen":24,"Backend":{"Type":"udp"}}"#;
        World::new(WorldConfig {
            network: NetworkConfig::parse(network).unwrap(),
            lease_ttl: Duration::from_secs(600),
            renew_margin: Duration::from_secs(60),
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(30),
            store_latency: Duration::from_millis(2),
            watches: true,
            faults: LinkFaults::default(),
            decisions: Decisions::Seeded(5),
            record: true,
            trace: true,
            trace_routes: true,
            check: true,
            check_routes: true,
            full_containers: true,
        })
    }

    #[test]
    fn two_nodes_holding_one_subnet_stop_the_run_with_time_and_names() {
        let mut w = world();
        for (i, name) in ["a", "b"].into_iter().enumerate() {
            let ip = std::net::Ipv4Addr::new(192, 0, 2, i as u8 + 1);
            let h = w.add_host(Host::new(name, ip, vec!["c0".into()], None));
            w.start_host(h);
        }
        w.run_until(SimTime::from_duration(Duration::from_secs(1)));
        assert!(w.failure.is_none(), "{:?}", w.failure);
        assert!(w.caught_up(0) && w.route_mismatch(0).is_none());
        // As if b's core had taken a's subnet.
        let a = w.hosts[0].lease_key().unwrap();
        w.hold(1, a);
        let f = w.failure.clone().expect("the invariant fires");
        assert_eq!(f.at, SimTime::from_duration(Duration::from_secs(1)));
        assert!(
            f.message.contains("a holds") && f.message.contains("b now holds"),
            "{}",
            f.message
        );
        assert!(w.trace().lines().last().unwrap().contains("FAIL"));
    }

    /// A node whose routes passed the check is checked again as soon as the live
    /// leases change, though nothing of its own did: the check it skips after events
    /// that change nothing it compares is the only one it skips.
    #[test]
    fn a_change_of_the_live_leases_alone_is_checked_again() {
        let mut w = world();
        for (i, name) in ["a", "b"].into_iter().enumerate() {
            let ip = std::net::Ipv4Addr::new(192, 0, 2, i as u8 + 1);
            let h = w.add_host(Host::new(name, ip, vec!["c0".into()], None));
            w.start_host(h);
        }
        w.run_until(SimTime::from_duration(Duration::from_secs(1)));
        assert!(w.failure.is_none(), "{:?}", w.failure);
        assert!(w.caught_up(0) && w.hosts[0].routes_checked.is_some());
        assert!(w.routes_checked_already(0));
        // A lease no node has heard of, as if the store had it and a's watch had lost it.
        w.live.insert(
            "10.5.99.0/24".parse().unwrap(),
            super::LiveLease {
                ip: std::net::Ipv4Addr::new(192, 0, 2, 99),
                holder: std::net::Ipv4Addr::new(192, 0, 2, 99).into(),
                v6: None,
            },
        );
        w.live_version += 1;
        assert!(!w.routes_checked_already(0));
        w.touched.push(0);
        w.check_invariants();
        let f = w.failure.clone().expect("the invariant fires");
        assert!(
            f.message.contains("converged, yet a routes")
                && f.message.contains("missing: [10.5.99.0/24 via 192.0.2.99]"),
            "{}",
            f.message
        );
    }

    /// The simulator runs the daemon's join: the node's first watch waits until the node
    /// has its lease (`stores/tests/etcd_watch.rs` shows the same of the daemon's driver
    /// on a real etcd). Checked after every millisecond of the join.
    #[test]
    fn the_first_watch_waits_for_the_lease() {
        let mut w = world();
        let ip = std::net::Ipv4Addr::new(192, 0, 2, 1);
        let h = w.add_host(Host::new("a", ip, vec!["c0".into()], None));
        w.start_host(h);
        let mut held = 0;
        for ms in 0..50 {
            w.run_until(SimTime::from_duration(Duration::from_millis(ms)));
            let node = w.hosts[h].node().expect("running");
            if node.lease().is_none() {
                assert!(!node.is_watching(), "watching without a lease at {ms} ms");
                held += usize::from(node.leases().is_synced());
            }
        }
        assert!(
            held > 0,
            "the listing came back before the lease (the hold was tested)"
        );
        let node = w.hosts[h].node().expect("running");
        assert!(node.lease().is_some() && node.is_watching());
    }
}
