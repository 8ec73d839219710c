//! flannel's ipip backend (v0.20, `pkg/backend/ipip/ipip.go`): IPv4 in IPv4, IP
//! protocol 4, the outer header from our address to the peer's public IP and nothing
//! else. IPv4 only, as in flannel (the config refuses `EnableIPv6`).
//!
//! Two layers, one plan ([`plan`]). Where the kernel has IPIP, a kernel ipip device
//! `flannel.ipip` (any remote, local the external interface's address, MTU the
//! underlay's minus 20 or the config's `MTU` minus 20, our subnet's network address
//! /32) carries the packets, as flannel's does. Where it has none (its `RTM_NEWLINK`
//! answers "Unknown device type", as on these Firecracker kernels), weft carries them
//! itself with the same wire format (module `user`): a TUN device of the same name, address
//! and MTU, and a raw IPIP socket, the udp backend's forwarding loops and forwarding
//! table checks between them, with TUN offloads (module `offload`; `WEFT_IPIP_OFFLOAD=0`:
//! off); one log line says which. `WEFT_IPIP_USERSPACE=1` in the environment takes the
//! userspace path even where the kernel has IPIP. Unlike the kernel device, the
//! userspace path decrements the inner TTL once more on the way out (the forwarding
//! table's, as for the udp backend), so a traceroute shows one hop more.
//!
//! Either way, per remote ipip lease the route flannel's `GetRoute` makes: `subnet via
//! PublicIP dev flannel.ipip onlink`, or with `DirectRouting` and the peer on the
//! underlay interface's own network, the same gateway on the underlay interface. Leases
//! of other backends are logged once and not routed. A changed public IP replaces the
//! route, a gone lease removes it; every [`CHECK_EVERY`] a task compares the kernel's
//! main table with the routes we added and restores what is missing or altered
//! (flannel's `RouteNetwork.routeCheck`); a clean stop removes the direct routes and
//! the device (the tunnel routes go with it).

mod offload;
pub mod plan;
mod user;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use ipnet::{IpNet, Ipv4Net};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use weft_core::config::BackendType;
use weft_core::forward::{DropReason, DropRegistry, ForwardTable};
use weft_core::lease::Lease;
use weft_core::router::{RouteChange, Underlay};

use super::peers::{directly_connected, PeerChange, PeerFilter};
use super::udp::{Counters, SharedTable};
use super::{Backend, BackendSetup, Counter, CounterKind, DeviceStats};
use crate::iface::ExternalInterface;
use crate::netlink::{GatewayRoute, Netlink};
use crate::DatapathError;
use plan::Via;
use user::{UserConfig, UserDatapath};

/// How often the routes are checked against the kernel's (flannel: 10 s).
pub const CHECK_EVERY: Duration = Duration::from_secs(10);

/// The routes we added, by subnet, shared with the checker.
type Programmed = Arc<Mutex<BTreeMap<Ipv4Net, GatewayRoute>>>;

/// Route counts, kept beside the map so that reading them never waits for its lock.
#[derive(Debug, Default)]
struct RouteStats {
    routes: AtomicU64,
    direct: AtomicU64,
    restored: AtomicU64,
    errors: AtomicU64,
}

impl RouteStats {
    fn update(&self, programmed: &BTreeMap<Ipv4Net, GatewayRoute>, underlay: u32) {
        let direct = programmed.values().filter(|r| r.oif == underlay).count();
        self.routes
            .store(programmed.len() as u64, Ordering::Relaxed);
        self.direct.store(direct as u64, Ordering::Relaxed);
    }
}

/// What carries the packets of the current lease.
#[derive(Debug)]
enum Carrier {
    /// The kernel's ipip device, of this index.
    Kernel(u32),
    /// weft's own, over a TUN device.
    User(UserDatapath),
}

impl Carrier {
    fn index(&self) -> u32 {
        match self {
            Carrier::Kernel(index) => *index,
            Carrier::User(d) => d.index,
        }
    }
}

/// The device of the current lease.
#[derive(Debug)]
struct Running {
    subnet: Ipv4Net,
    carrier: Carrier,
}

/// See the module docs.
#[derive(Debug)]
pub struct IpipBackend {
    netns: Option<PathBuf>,
    netlink: Netlink,
    external: ExternalInterface,
    network: Ipv4Net,
    mtu: u32,
    direct_routing: bool,
    /// `WEFT_IPIP_USERSPACE=1`, or the kernel said it has no IPIP.
    userspace: bool,
    running: Option<Running>,
    /// Each remote ipip subnet and its peer's public IP.
    wanted: BTreeMap<Ipv4Net, Ipv4Addr>,
    /// The routes we added, by subnet.
    programmed: Programmed,
    stats: Arc<RouteStats>,
    checker: Option<JoinHandle<()>>,
    filter: PeerFilter,
    table: SharedTable,
    counters: Arc<Counters>,
    drops: DropRegistry,
}

impl IpipBackend {
    /// An ipip backend for `setup`; the device comes with the first lease.
    pub fn new(setup: BackendSetup) -> Result<IpipBackend, DatapathError> {
        let network = super::ipv4_network(&setup).ok_or_else(|| {
            DatapathError::Unsupported(
                "the ipip backend carries IPv4 only, and the network has no IPv4 half \
                 (EnableIPv4: false)"
                    .to_string(),
            )
        })?;
        let netlink = setup.netlink.clone().ok_or_else(|| {
            DatapathError::Unsupported("the ipip backend needs netlink".to_string())
        })?;
        let external = setup.external.clone().ok_or_else(|| {
            DatapathError::Unsupported(
                "the ipip backend needs the external interface (--iface)".to_string(),
            )
        })?;
        let direct_routing = setup.network.backend.ipip.is_some_and(|o| o.direct_routing);
        let userspace = std::env::var("WEFT_IPIP_USERSPACE").is_ok_and(|v| v == "1");
        tracing::info!(device = plan::DEVICE, mtu = setup.mtu, local = %external.ip, underlay = %external.link.name, direct_routing, forced_userspace = userspace, "ipip backend configured");
        Ok(IpipBackend {
            netns: setup.netns,
            netlink,
            external,
            network,
            mtu: setup.mtu,
            direct_routing,
            userspace,
            running: None,
            wanted: BTreeMap::new(),
            programmed: Arc::new(Mutex::new(BTreeMap::new())),
            stats: Arc::new(RouteStats::default()),
            checker: None,
            filter: PeerFilter::new(BackendType::Ipip),
            table: Arc::new(ArcSwap::from_pointee(ForwardTable::default())),
            counters: Arc::new(Counters::default()),
            drops: DropRegistry::default(),
        })
    }

    /// The kernel device for `subnet`, or `None` when the kernel has no IPIP.
    async fn kernel_device(&self, subnet: Ipv4Net) -> Result<Option<u32>, DatapathError> {
        let spec = plan::device(self.external.ip, self.mtu);
        let link = match self.netlink.add_ipip(&spec).await {
            Ok(link) => link,
            Err(e) if e.is_unsupported() => return Ok(None),
            Err(e) => return Err(e),
        };
        let (addr, prefix) = plan::address(subnet);
        let configured = async {
            self.netlink
                .add_address(link.index, addr.into(), prefix)
                .await?;
            self.netlink.set_up(link.index, Some(self.mtu)).await
        }
        .await;
        if let Err(e) = configured {
            let _ = self.netlink.del_link(link.index).await;
            return Err(e);
        }
        tracing::info!(device = plan::DEVICE, %addr, mtu = self.mtu, local = %spec.local, "kernel ipip device up");
        Ok(Some(link.index))
    }

    /// Creates the device for `subnet`: the kernel's, else weft's own.
    async fn start(&mut self, subnet: Ipv4Net) -> Result<Carrier, DatapathError> {
        // One left by an earlier run (or by flanneld) goes first, so that its local
        // address and MTU are surely ours (flannel recreates an incompatible one).
        if let Some(old) = self.netlink.link(plan::DEVICE).await? {
            tracing::info!(
                device = plan::DEVICE,
                "replacing an existing device of that name"
            );
            self.netlink.del_link(old.index).await?;
        }
        if !self.userspace {
            if let Some(index) = self.kernel_device(subnet).await? {
                return Ok(Carrier::Kernel(index));
            }
            self.userspace = true;
            tracing::warn!(
                device = plan::DEVICE,
                "the kernel has no IPIP support (creating an ipip device: Unknown device type); carrying IPIP in userspace instead: a TUN device and a raw IP-protocol-4 socket, the same packets on the wire"
            );
        }
        let cfg = UserConfig {
            name: plan::DEVICE.to_string(),
            mtu: self.mtu,
            network: self.network,
            subnet,
            local: self.external.ip,
            offload: std::env::var("WEFT_IPIP_OFFLOAD").map_or(true, |v| v != "0"),
        };
        let d = UserDatapath::start(
            self.netns.as_deref(),
            &self.netlink,
            &cfg,
            self.table.clone(),
            self.counters.clone(),
            &self.drops,
        )
        .await?;
        Ok(Carrier::User(d))
    }

    /// Removes the device of `running` (and with it the routes through it).
    async fn stop_running(&self, running: Running) -> Result<(), DatapathError> {
        match running.carrier {
            Carrier::Kernel(index) => {
                self.netlink.del_link(index).await?;
                tracing::info!(
                    device = plan::DEVICE,
                    "kernel ipip device down: its routes removed with it"
                );
                Ok(())
            }
            Carrier::User(d) => d.stop(&self.netlink).await,
        }
    }

    /// The route `subnet` should have, from its lease (`None`: none).
    async fn desired(
        &self,
        subnet: Ipv4Net,
        tunnel: u32,
    ) -> Result<Option<GatewayRoute>, DatapathError> {
        let Some(&public_ip) = self.wanted.get(&subnet) else {
            return Ok(None);
        };
        // Our own lease may be announced as a route before the node knows it is ours.
        if self.running.as_ref().is_some_and(|r| r.subnet == subnet) {
            return Ok(None);
        }
        let underlay = self.external.link.index;
        let mut via = Via::Tunnel;
        if self.direct_routing {
            let networks = self
                .netlink
                .networks(underlay, IpAddr::V4(public_ip))
                .await?;
            if directly_connected(&networks, IpAddr::V4(public_ip)) {
                via = Via::Direct;
            }
        }
        Ok(Some(plan::route(subnet, public_ip, via, tunnel, underlay)))
    }

    /// Brings `subnet`'s route in line with its lease.
    async fn sync(&mut self, subnet: Ipv4Net) -> Result<(), DatapathError> {
        let Some(tunnel) = self.running.as_ref().map(|r| r.carrier.index()) else {
            return Ok(());
        };
        let new = self.desired(subnet, tunnel).await?;
        let underlay = self.external.link.index;
        let mut programmed = self.programmed.lock().await;
        let old = programmed.get(&subnet).copied();
        if new == old {
            return Ok(());
        }
        let result = match new {
            // A replace takes the place of the old route, whatever its link.
            Some(route) => self.netlink.replace_gateway_route(&route).await,
            None => match old {
                Some(route) => self.netlink.del_gateway_route(&route).await,
                None => Ok(()),
            },
        };
        if let Err(e) = result {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
        match new {
            Some(route) => {
                tracing::info!(%subnet, via = ?route.gateway, direct = route.oif != tunnel, "ipip route added");
                programmed.insert(subnet, route);
            }
            None => {
                tracing::info!(%subnet, "ipip route removed");
                programmed.remove(&subnet);
            }
        }
        self.stats.update(&programmed, underlay);
        Ok(())
    }
}

/// flannel's `routeCheck`: every [`CHECK_EVERY`], each route we added that the kernel's
/// main table lacks (deleted by hand, or altered) is put back. The lock is held for the
/// whole check, so that a route the backend is removing is never restored.
async fn check_forever(netlink: Netlink, programmed: Programmed, stats: Arc<RouteStats>) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let programmed = programmed.lock().await;
        let kernel = match netlink.main_routes().await {
            Ok(kernel) => kernel,
            Err(e) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "ipip route check failed; trying again at the next");
                continue;
            }
        };
        for (subnet, route) in programmed.iter() {
            if kernel.contains(route) {
                continue;
            }
            match netlink.replace_gateway_route(route).await {
                Ok(()) => {
                    let total = stats.restored.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::warn!(%subnet, via = ?route.gateway, restored_total = total, "ipip route was missing or altered; restored");
                }
                Err(e) => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%subnet, error = %e, "cannot restore an ipip route");
                }
            }
        }
    }
}

#[async_trait]
impl Backend for IpipBackend {
    fn kind(&self) -> BackendType {
        BackendType::Ipip
    }

    fn forward_underlay(&self) -> Underlay {
        Underlay::Ipv4
    }

    async fn lease_acquired(&mut self, lease: &Lease) -> Result<(), DatapathError> {
        let Some(subnet) = lease.key.ipv4 else {
            return Err(DatapathError::Unsupported(
                "the ipip backend carries IPv4 only: our lease has no IPv4 subnet".to_string(),
            ));
        };
        if self.running.as_ref().is_some_and(|r| r.subnet == subnet) {
            return Ok(());
        }
        if let Some(old) = self.running.take() {
            self.stop_running(old).await?;
        }
        let carrier = self.start(subnet).await?;
        let tunnel = carrier.index();
        self.running = Some(Running { subnet, carrier });
        // Routes through the old device went with it; direct routes stay and are
        // replaced.
        let underlay = self.external.link.index;
        {
            let mut programmed = self.programmed.lock().await;
            programmed.retain(|_, r| r.oif == underlay);
            self.stats.update(&programmed, underlay);
        }
        if self.checker.is_none() {
            self.checker = Some(tokio::spawn(check_forever(
                self.netlink.clone(),
                self.programmed.clone(),
                self.stats.clone(),
            )));
        }
        let subnets: Vec<Ipv4Net> = self.wanted.keys().copied().collect();
        for s in subnets {
            // A peer that cannot be routed is no reason to stop the node: logged,
            // counted, tried again at its next change.
            if let Err(e) = self.sync(s).await {
                tracing::warn!(subnet = %s, error = %e, "cannot route an ipip peer");
            }
        }
        tracing::debug!(tunnel, "ipip routes programmed");
        Ok(())
    }

    async fn route_changed(&mut self, change: &RouteChange) -> Result<(), DatapathError> {
        let subnet = match self.filter.classify(change) {
            PeerChange::Up {
                subnet: IpNet::V4(subnet),
                public_ip: IpAddr::V4(public_ip),
                ..
            } => {
                self.wanted.insert(subnet, public_ip);
                subnet
            }
            PeerChange::Down {
                subnet: IpNet::V4(subnet),
            } => {
                self.wanted.remove(&subnet);
                subnet
            }
            // IPv4 only: the config refuses IPv6, a stray IPv6 route is nothing of ours.
            PeerChange::Up { .. } | PeerChange::Down { .. } | PeerChange::Ignore => return Ok(()),
        };
        self.sync(subnet).await
    }

    fn forward_table(&mut self, table: Arc<ForwardTable>) {
        self.table.store(table);
    }

    fn counters(&self) -> Vec<Counter> {
        use std::sync::atomic::Ordering::Relaxed;
        use CounterKind::{Level, Packets, Total};
        let c = &self.counters;
        let r = &self.stats;
        let mut out: Vec<Counter> = [
            (Level, "routes", r.routes.load(Relaxed)),
            (Level, "peers_direct", r.direct.load(Relaxed)),
            (Total, "routes_restored", r.restored.load(Relaxed)),
            (Level, "userspace", u64::from(self.userspace)),
            (Packets, "tun_rx", c.tun_rx.load(Relaxed)),
            (Packets, "ipip_tx", c.udp_tx.load(Relaxed)),
            (Packets, "ipip_rx", c.udp_rx.load(Relaxed)),
            (Packets, "tun_tx", c.tun_tx.load(Relaxed)),
            (Packets, "icmp_tx", c.icmp_tx.load(Relaxed)),
            (Total, "leases_foreign", self.filter.foreign_total),
            (
                Total,
                "errors",
                r.errors.load(Relaxed) + c.errors.load(Relaxed),
            ),
            (Total, "tso_reads", c.tso_reads.load(Relaxed)),
            (Total, "gro_writes", c.gro_writes.load(Relaxed)),
        ]
        .into_iter()
        .map(|(kind, name, value)| Counter::new(kind, name, value))
        .collect();
        let drops = self.drops.total();
        out.extend(
            DropReason::ALL
                .into_iter()
                .map(|r| Counter::new(CounterKind::Dropped, r.as_str(), drops.get(r))),
        );
        out
    }

    fn failure(&self) -> Option<String> {
        match &self.running.as_ref()?.carrier {
            Carrier::User(d) => d.failure(),
            Carrier::Kernel(_) => None,
        }
    }

    async fn device(&self) -> Option<DeviceStats> {
        self.running.as_ref()?;
        let link = self.netlink.link(plan::DEVICE).await.ok()??;
        Some(DeviceStats {
            name: link.name,
            stats: link.stats?,
        })
    }

    async fn stop(&mut self) -> Result<(), DatapathError> {
        if let Some(task) = self.checker.take() {
            task.abort();
            let _ = task.await;
        }
        let underlay = self.external.link.index;
        let mut result = Ok(());
        let programmed = std::mem::take(&mut *self.programmed.lock().await);
        self.stats.update(&BTreeMap::new(), underlay);
        for (_, route) in programmed {
            if route.oif == underlay {
                if let Err(e) = self.netlink.del_gateway_route(&route).await {
                    result = Err(e);
                }
            }
        }
        if let Some(running) = self.running.take() {
            self.stop_running(running).await?;
        }
        result
    }
}
