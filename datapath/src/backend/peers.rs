//! What the kernel backends (vxlan, host-gw) share: which route changes are theirs to
//! program, and whether a peer sits on a network the underlay interface is directly on.
//!
//! flannel ignores (with a warning) every lease of another backend type than its own,
//! and so do we -- but once per lease rather than at every renewal, so that a mixed
//! cluster does not flood the log. IPv6 routes are not programmed by these backends yet;
//! that too is said once.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use weft_core::config::BackendType;
use weft_core::lease::RawJson;
use weft_core::router::RouteChange;

/// What a route change means for a kernel backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PeerChange {
    /// Program (or re-program) the route to this peer.
    Up {
        /// The peer's subnet.
        subnet: Ipv4Net,
        /// Its public IP.
        public_ip: Ipv4Addr,
        /// Its backend data.
        data: Option<RawJson>,
    },
    /// Remove whatever was programmed for this subnet (nothing, if nothing was).
    Down {
        /// The subnet.
        subnet: Ipv4Net,
    },
    /// Nothing to do.
    Ignore,
}

/// Sorts route changes into [`PeerChange`]s for one backend type, logging each foreign
/// lease once.
#[derive(Debug)]
pub(crate) struct PeerFilter {
    ours: BackendType,
    /// Subnets held by a lease of another type, already logged.
    foreign: BTreeSet<IpNet>,
    ipv6_logged: bool,
    /// Foreign leases seen (each counted once while it stays foreign).
    pub(crate) foreign_total: u64,
}

impl PeerFilter {
    pub(crate) fn new(ours: BackendType) -> Self {
        PeerFilter {
            ours,
            foreign: BTreeSet::new(),
            ipv6_logged: false,
            foreign_total: 0,
        }
    }

    /// What `change` means for us.
    pub(crate) fn classify(&mut self, change: &RouteChange) -> PeerChange {
        let (route, added) = match change {
            RouteChange::Add(r) => (r, true),
            RouteChange::Remove(r) => (r, false),
        };
        let (IpNet::V4(subnet), IpAddr::V4(public_ip)) = (route.subnet, route.public_ip) else {
            if !self.ipv6_logged {
                self.ipv6_logged = true;
                tracing::warn!(subnet = %route.subnet, backend = self.ours.as_str(), "IPv6 routes are not programmed by this backend yet; ignoring them");
            }
            return PeerChange::Ignore;
        };
        if !added {
            self.foreign.remove(&route.subnet);
            return PeerChange::Down { subnet };
        }
        let kind = route.backend_type.as_deref().unwrap_or("");
        if kind != self.ours.as_str() {
            if self.foreign.insert(route.subnet) {
                self.foreign_total += 1;
                tracing::warn!(
                    %subnet,
                    via = %public_ip,
                    backend_type = kind,
                    ours = self.ours.as_str(),
                    foreign_total = self.foreign_total,
                    "ignoring a lease of another backend type (as flannel does): not programmed"
                );
            }
            // It may have been ours before.
            return PeerChange::Down { subnet };
        }
        self.foreign.remove(&route.subnet);
        PeerChange::Up {
            subnet,
            public_ip,
            data: route.backend_data.clone(),
        }
    }
}

/// Whether `ip` is on one of `networks` (the underlay interface's own), i.e. reachable
/// without a router. flannel asks the kernel's route lookup for "no gateway"; the
/// interface's prefixes give the same answer for a peer on the same L2 segment and need
/// no lookup per peer.
pub(crate) fn directly_connected(networks: &[Ipv4Net], ip: Ipv4Addr) -> bool {
    networks.iter().any(|n| n.contains(&ip))
}

/// The networks for a log line: `192.0.2.0/24, 198.51.100.0/24`.
pub(crate) fn show(networks: &[Ipv4Net]) -> String {
    let names: Vec<String> = networks.iter().map(ToString::to_string).collect();
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_core::router::Route;

    fn route(subnet: &str, ip: &str, kind: &str) -> Route {
        Route {
            subnet: subnet.parse().unwrap(),
            public_ip: ip.parse().unwrap(),
            backend_type: Some(kind.to_string()),
            backend_data: None,
        }
    }

    #[test]
    fn foreign_leases_are_down_and_counted_once() {
        let mut f = PeerFilter::new(BackendType::HostGw);
        let udp = route("10.5.3.0/24", "192.0.2.3", "udp");
        let subnet: Ipv4Net = "10.5.3.0/24".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(
                f.classify(&RouteChange::Add(udp.clone())),
                PeerChange::Down { subnet }
            );
        }
        assert_eq!(f.foreign_total, 1);
        let ours = route("10.5.3.0/24", "192.0.2.3", "host-gw");
        assert!(matches!(
            f.classify(&RouteChange::Add(ours.clone())),
            PeerChange::Up { .. }
        ));
        assert_eq!(
            f.classify(&RouteChange::Remove(ours)),
            PeerChange::Down { subnet }
        );
        // Foreign again after being ours: a new foreign lease, logged and counted again.
        f.classify(&RouteChange::Add(udp));
        assert_eq!(f.foreign_total, 2);
    }

    #[test]
    fn ipv6_routes_are_ignored() {
        let mut f = PeerFilter::new(BackendType::Vxlan);
        let r = route("fc00:0:0:1::/64", "2001:db8::1", "vxlan");
        assert_eq!(f.classify(&RouteChange::Add(r)), PeerChange::Ignore);
    }

    #[test]
    fn direct_means_on_one_of_the_networks() {
        let nets: Vec<Ipv4Net> = vec!["192.0.2.0/24".parse().unwrap()];
        assert!(directly_connected(&nets, "192.0.2.77".parse().unwrap()));
        assert!(!directly_connected(&nets, "198.51.100.3".parse().unwrap()));
        assert!(!directly_connected(&[], "192.0.2.77".parse().unwrap()));
    }
}
