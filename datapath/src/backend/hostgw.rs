//! flannel's host-gw backend: a plain route `subnet via PublicIP` over the underlay
//! interface per remote host-gw lease (and `IPv6 subnet via PublicIPv6` for a lease
//! with both, each family handled alike and on its own); nothing is encapsulated, so
//! the MTU is the underlay's and every peer must be on the underlay interface's own
//! network.
//!
//! A peer that is not (its public IP on no network the interface is directly on) cannot
//! be routed this way: flannel's route add fails and it logs and skips the peer; we say
//! why, count it, skip it, and look again at each check, since the underlay may change.
//! Every [`CHECK_EVERY`] a task the backend owns compares the kernel's main table with
//! the wanted routes (flannel's `routeCheck`, which only restores): a missing or
//! altered route is restored, and a route into the overlay network via a gateway on the
//! underlay interface that no lease wants -- left by a crash, or by hand -- is removed.
//! A clean stop removes the routes it added.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ipnet::IpNet;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use weft_core::config::BackendType;
use weft_core::lease::Lease;
use weft_core::router::RouteChange;

use super::peers::{directly_connected, show, PeerChange, PeerFilter};
use super::{Backend, BackendSetup, Counter, CounterKind};
use crate::iface::ExternalInterface;
use crate::netlink::{GatewayRoute, Netlink};
use crate::DatapathError;

/// How often the routes are checked against the kernel's (flannel: 10 s).
pub const CHECK_EVERY: Duration = Duration::from_secs(10);

/// The routes, wanted and programmed, and what was counted about them.
#[derive(Debug)]
struct Routes {
    netlink: Netlink,
    external: ExternalInterface,
    /// The overlay networks (IPv4, IPv6 or both): a gateway route into one of them
    /// that no lease wants is stale.
    overlay: Vec<IpNet>,
    /// Each remote subnet and its peer's public IP (of the subnet's family).
    wanted: BTreeMap<IpNet, IpAddr>,
    /// The subnets whose route we added.
    programmed: BTreeSet<IpNet>,
    /// The subnets skipped because their peer is not directly connected.
    unreachable: BTreeSet<IpNet>,
    filter: PeerFilter,
    unreachable_total: u64,
    restored_total: u64,
    stale_total: u64,
    errors: u64,
}

impl Routes {
    fn route(&self, subnet: IpNet, via: Option<IpAddr>) -> GatewayRoute {
        GatewayRoute {
            dst: subnet,
            gateway: via,
            oif: self.external.link.index,
            onlink: false,
        }
    }

    /// Whether `via` can be a gateway; a newly unreachable peer is logged and counted.
    fn reachable(&mut self, networks: &[IpNet], subnet: IpNet, via: IpAddr) -> bool {
        if directly_connected(networks, via) {
            self.unreachable.remove(&subnet);
            return true;
        }
        if self.unreachable.insert(subnet) {
            self.unreachable_total += 1;
            tracing::error!(
                %subnet, %via, iface = %self.external.link.name, networks = %show(networks),
                unreachable_total = self.unreachable_total,
                "host-gw cannot route this peer: its public IP is not on a network directly connected to the interface; skipping it (as flannel does)"
            );
        }
        false
    }

    /// The networks of both families the underlay interface is directly on.
    async fn underlay_networks(&self) -> Result<Vec<IpNet>, DatapathError> {
        let link = self.external.link.index;
        let v4 = self.netlink.ipv4_networks(link).await?;
        let v6 = self.netlink.ipv6_networks(link).await?;
        Ok(v4
            .into_iter()
            .map(IpNet::V4)
            .chain(v6.into_iter().map(IpNet::V6))
            .collect())
    }

    /// Brings `subnet`'s route in line with its lease.
    async fn sync(&mut self, subnet: IpNet) -> Result<(), DatapathError> {
        let wanted = self.wanted.get(&subnet).copied();
        let networks = self.underlay_networks().await?;
        let result = match wanted {
            Some(via) if self.reachable(&networks, subnet, via) => {
                let r = self
                    .netlink
                    .replace_gateway_route(&self.route(subnet, Some(via)))
                    .await;
                if r.is_ok() {
                    self.programmed.insert(subnet);
                    tracing::info!(%subnet, %via, "host-gw route added");
                }
                r
            }
            _ => {
                if wanted.is_none() {
                    self.unreachable.remove(&subnet);
                }
                self.remove(subnet).await
            }
        };
        result.inspect_err(|_| self.errors += 1)
    }

    /// Removes the route to `subnet` if we added it.
    async fn remove(&mut self, subnet: IpNet) -> Result<(), DatapathError> {
        if !self.programmed.remove(&subnet) {
            return Ok(());
        }
        self.netlink
            .del_gateway_route(&self.route(subnet, None))
            .await?;
        tracing::info!(%subnet, "host-gw route removed");
        Ok(())
    }

    /// The periodic check: restores what is missing, removes what is stale.
    async fn check(&mut self) -> Result<(), DatapathError> {
        let link = self.external.link.index;
        let networks = self.underlay_networks().await?;
        let kernel = self.netlink.main_routes().await?;
        let wanted: Vec<(IpNet, IpAddr)> = self.wanted.iter().map(|(s, v)| (*s, *v)).collect();
        let mut keep = BTreeSet::new();
        for (subnet, via) in wanted {
            if !self.reachable(&networks, subnet, via) {
                self.remove(subnet).await?;
                continue;
            }
            keep.insert(subnet);
            let route = self.route(subnet, Some(via));
            if kernel.contains(&route) {
                continue;
            }
            self.netlink.replace_gateway_route(&route).await?;
            self.restored_total += 1;
            self.programmed.insert(subnet);
            tracing::warn!(%subnet, %via, restored_total = self.restored_total, "host-gw route was missing or altered; restored");
        }
        for r in kernel {
            let ours = r.oif == link && r.gateway.is_some();
            let in_overlay = self
                .overlay
                .iter()
                .any(|n| n.contains(&r.dst) && r.dst != *n);
            if ours && in_overlay && !keep.contains(&r.dst) {
                self.netlink.del_gateway_route(&r).await?;
                self.programmed.remove(&r.dst);
                self.stale_total += 1;
                tracing::warn!(subnet = %r.dst, via = ?r.gateway, stale_total = self.stale_total, "removed a stale host-gw route no lease wants");
            }
        }
        Ok(())
    }
}

/// See the module docs.
#[derive(Debug)]
pub struct HostGwBackend {
    routes: Arc<Mutex<Routes>>,
    checker: Option<JoinHandle<()>>,
}

impl HostGwBackend {
    /// A host-gw backend for `setup`. Like flannel, it refuses a public IP that is not
    /// the interface's own (a node behind NAT cannot be a gateway), and, with IPv6, an
    /// interface without an IPv6 address.
    pub fn new(setup: BackendSetup) -> Result<HostGwBackend, DatapathError> {
        let overlay = super::overlay_networks(&setup)?;
        let netlink = setup.netlink.clone().ok_or_else(|| {
            DatapathError::Unsupported("the host-gw backend needs netlink".to_string())
        })?;
        let external = setup.external.clone().ok_or_else(|| {
            DatapathError::Unsupported(
                "the host-gw backend needs the external interface (--iface)".to_string(),
            )
        })?;
        if external.ip != setup.public_ip {
            return Err(DatapathError::Unsupported(format!(
                "the public IP {} differs from the address {} of {}: the node is probably \
                 behind NAT, which the host-gw backend cannot work through",
                setup.public_ip, external.ip, external.link.name
            )));
        }
        if setup.network.enable_ipv6 && external.ipv6.is_none() {
            return Err(DatapathError::Unsupported(format!(
                "the network config enables IPv6, but {} has no global IPv6 address to be \
                 the peers' gateway",
                external.link.name
            )));
        }
        tracing::info!(iface = %external.link.name, mtu = setup.mtu, ipv6 = ?setup.public_ipv6, "host-gw backend configured");
        Ok(HostGwBackend {
            routes: Arc::new(Mutex::new(Routes {
                netlink,
                external,
                overlay,
                wanted: BTreeMap::new(),
                programmed: BTreeSet::new(),
                unreachable: BTreeSet::new(),
                filter: PeerFilter::new(BackendType::HostGw),
                unreachable_total: 0,
                restored_total: 0,
                stale_total: 0,
                errors: 0,
            })),
            checker: None,
        })
    }
}

async fn check_forever(routes: Arc<Mutex<Routes>>) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let mut r = routes.lock().await;
        if let Err(e) = r.check().await {
            r.errors += 1;
            tracing::warn!(error = %e, "host-gw route check failed; trying again at the next");
        }
    }
}

#[async_trait]
impl Backend for HostGwBackend {
    fn kind(&self) -> BackendType {
        BackendType::HostGw
    }

    async fn lease_acquired(&mut self, _lease: &Lease) -> Result<(), DatapathError> {
        if self.checker.is_none() {
            self.checker = Some(tokio::spawn(check_forever(self.routes.clone())));
        }
        Ok(())
    }

    async fn route_changed(&mut self, change: &RouteChange) -> Result<(), DatapathError> {
        let mut r = self.routes.lock().await;
        let subnet = match r.filter.classify(change) {
            PeerChange::Up {
                subnet, public_ip, ..
            } => {
                r.wanted.insert(subnet, public_ip);
                subnet
            }
            PeerChange::Down { subnet } => {
                r.wanted.remove(&subnet);
                subnet
            }
            PeerChange::Ignore => return Ok(()),
        };
        r.sync(subnet).await
    }

    fn counters(&self) -> Vec<Counter> {
        // The checker holds the lock only for a check; a busy lock reports nothing.
        let Ok(r) = self.routes.try_lock() else {
            return Vec::new();
        };
        use CounterKind::{Level, Total};
        [
            (Level, "routes", r.programmed.len() as u64),
            (Total, "peers_unreachable", r.unreachable_total),
            (Total, "routes_restored", r.restored_total),
            (Total, "routes_stale_removed", r.stale_total),
            (Total, "leases_foreign", r.filter.foreign_total),
            (Total, "errors", r.errors),
        ]
        .into_iter()
        .map(|(kind, name, value)| Counter::new(kind, name, value))
        .collect()
    }

    async fn stop(&mut self) -> Result<(), DatapathError> {
        if let Some(task) = self.checker.take() {
            task.abort();
            let _ = task.await;
        }
        let mut r = self.routes.lock().await;
        let subnets: Vec<IpNet> = r.programmed.iter().copied().collect();
        let mut result = Ok(());
        for subnet in subnets {
            if let Err(e) = r.remove(subnet).await {
                result = Err(e);
            }
        }
        tracing::info!("host-gw backend down: its routes removed");
        result
    }
}
