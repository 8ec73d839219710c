//! What the kernel backends (vxlan, host-gw) share: which route changes are theirs to
//! program, and whether a peer sits on a network the underlay interface is directly on.
//!
//! flannel ignores (with a warning) every lease of another backend type than its own,
//! and so do we -- but once per lease rather than at every renewal, so that a mixed
//! cluster does not flood the log. Routes of both families are theirs: a dual-stack
//! lease is two routes, its IPv4 subnet via `PublicIP` and its IPv6 subnet via
//! `PublicIPv6` (with `BackendV6Data`), and each is programmed on its own.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use weft_core::config::BackendType;
use weft_core::lease::RawJson;
use weft_core::router::RouteChange;

/// What a route change means for a kernel backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PeerChange {
    /// Program (or re-program) the route to this peer.
    Up {
        /// The peer's subnet.
        subnet: IpNet,
        /// Its public IP, of the subnet's family.
        public_ip: IpAddr,
        /// Its backend data.
        data: Option<RawJson>,
    },
    /// Remove whatever was programmed for this subnet (nothing, if nothing was).
    Down {
        /// The subnet.
        subnet: IpNet,
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
    mixed_logged: bool,
    /// Foreign leases seen (each counted once while it stays foreign).
    pub(crate) foreign_total: u64,
}

impl PeerFilter {
    pub(crate) fn new(ours: BackendType) -> Self {
        PeerFilter {
            ours,
            foreign: BTreeSet::new(),
            mixed_logged: false,
            foreign_total: 0,
        }
    }

    /// What `change` means for us.
    pub(crate) fn classify(&mut self, change: &RouteChange) -> PeerChange {
        let (route, added) = match change {
            RouteChange::Add(r) => (r, true),
            RouteChange::Remove(r) => (r, false),
        };
        let (subnet, public_ip) = (route.subnet, route.public_ip);
        if subnet.addr().is_ipv4() != public_ip.is_ipv4() {
            // The core pairs each subnet with the address of its family; a route that
            // does not cannot be a gateway route.
            if !self.mixed_logged {
                self.mixed_logged = true;
                tracing::warn!(%subnet, via = %public_ip, backend = self.ours.as_str(), "a route whose gateway is of another family than its subnet; ignoring it");
            }
            return PeerChange::Ignore;
        }
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
pub(crate) fn directly_connected(networks: &[IpNet], ip: IpAddr) -> bool {
    networks.iter().any(|n| n.contains(&ip))
}

/// The networks for a log line: `192.0.2.0/24, 198.51.100.0/24`.
pub(crate) fn show(networks: &[IpNet]) -> String {
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
        let subnet: IpNet = "10.5.3.0/24".parse().unwrap();
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
    fn ipv6_routes_are_peers_and_mixed_families_are_ignored() {
        let mut f = PeerFilter::new(BackendType::Vxlan);
        let r = route("fc00:0:0:1::/64", "2001:db8::1", "vxlan");
        assert_eq!(
            f.classify(&RouteChange::Add(r)),
            PeerChange::Up {
                subnet: "fc00:0:0:1::/64".parse().unwrap(),
                public_ip: "2001:db8::1".parse().unwrap(),
                data: None,
            }
        );
        let mixed = route("fc00:0:0:1::/64", "192.0.2.1", "vxlan");
        assert_eq!(f.classify(&RouteChange::Add(mixed)), PeerChange::Ignore);
    }

    #[test]
    fn direct_means_on_one_of_the_networks() {
        let nets: Vec<IpNet> = vec![
            "192.0.2.0/24".parse().unwrap(),
            "2001:db8:1::/64".parse().unwrap(),
        ];
        assert!(directly_connected(&nets, "2001:db8:1::7".parse().unwrap()));
        assert!(!directly_connected(&nets, "2001:db8:2::7".parse().unwrap()));
        assert!(directly_connected(&nets, "192.0.2.77".parse().unwrap()));
        assert!(!directly_connected(&nets, "198.51.100.3".parse().unwrap()));
        assert!(!directly_connected(&[], "192.0.2.77".parse().unwrap()));
    }
}
