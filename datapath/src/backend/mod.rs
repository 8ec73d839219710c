//! Backends: what carries packets between nodes, one file each behind one trait.
//!
//! The daemon (and the lab) build the backend the network config names with [`create`],
//! record [`Backend::lease_data`] in the node's lease, then hand it the node's decisions:
//! the lease acquired, each route change, each new forwarding table, and finally the stop.
//! A new backend is one file implementing [`Backend`] plus its line in [`create`].
//!
//! - `alloc`: leases only, nothing to program ([`alloc`]).
//! - `udp`: flannel's udp backend, a TUN device and a UDP socket, the forwarding threads
//!   deciding each packet by the node's forwarding table ([`udp`]).
//! - `vxlan`: the kernel's vxlan device, a neighbour, an FDB entry and a route per peer
//!   ([`vxlan`]).
//! - `host-gw`: a route via each peer's public IP, re-checked periodically ([`hostgw`]).
//! - `ipip`: IPv4 in IPv4, the kernel's ipip device or weft's own over a TUN device and
//!   a raw socket, a route per peer ([`ipip`]).
//! - `wireguard`: flannel's wireguard backend in userspace: the udp backend's TUN
//!   device and forwarding table, each packet sealed for its peer ([`wireguard`]).

pub mod alloc;
pub mod hostgw;
pub mod ipip;
mod peers;
pub mod streak;
pub mod udp;
pub mod vxlan;
pub mod wireguard;

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use weft_core::config::{BackendType, NetworkConfig};
use weft_core::forward::ForwardTable;
use weft_core::lease::{Lease, RawJson};
use weft_core::router::{RouteChange, Underlay};

use crate::iface::ExternalInterface;
use crate::netlink::{LinkStats, Netlink};
use crate::DatapathError;

/// What a backend knows of the host it runs on.
#[derive(Debug, Clone)]
pub struct BackendSetup {
    /// The namespace the node lives in (`None`: ours).
    pub netns: Option<PathBuf>,
    /// Netlink in that namespace (`None` when the backend needs none and none could be
    /// opened).
    pub netlink: Option<Netlink>,
    /// The network config.
    pub network: NetworkConfig,
    /// The overlay MTU (the underlay's minus the backend's overhead, or the config's).
    pub mtu: u32,
    /// The node's public IP.
    pub public_ip: Ipv4Addr,
    /// The node's public IPv6 address, when the config enables IPv6 (the flag's, or
    /// the external interface's first global one).
    pub public_ipv6: Option<Ipv6Addr>,
    /// The interface the overlay is carried over (its index, name, MTU and address),
    /// when one was chosen; the kernel backends need it.
    pub external: Option<ExternalInterface>,
    /// The name of the device the backend creates, if it creates one (udp: the TUN
    /// device).
    pub device_name: String,
    /// Where the wireguard backend keeps its private key (flannel: `/run/flannel/wgkey`,
    /// `WIREGUARD_KEY_FILE`).
    pub wg_key_file: PathBuf,
}

/// What a [`Counter`] counts, which decides its metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterKind {
    /// Packets along one path (`tun_rx`, `udp_tx`): `weft_datapath_packets_total{path}`.
    Packets,
    /// Packets dropped, the name being the reason: `weft_packets_dropped_total{reason}`.
    Dropped,
    /// Anything else that only grows (`errors`, `routes_restored`):
    /// `weft_datapath_<name>_total`.
    Total,
    /// A level that goes up and down (`peers`, `routes`): the gauge `weft_datapath_<name>`.
    Level,
}

/// A counter a backend keeps, for stats and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    /// Its name, in snake case (`tun_rx`, `spoofed_source`).
    pub name: &'static str,
    /// What it counts.
    pub kind: CounterKind,
    /// Its value.
    pub value: u64,
}

impl Counter {
    /// A counter of `kind`.
    pub fn new(kind: CounterKind, name: &'static str, value: u64) -> Counter {
        Counter { name, kind, value }
    }
}

/// The device a backend forwards through, with the kernel's counters of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceStats {
    /// The device's name (`weft0`, `flannel.1`).
    pub name: String,
    /// Its counters.
    pub stats: LinkStats,
}

/// See the module docs. Every method but [`Backend::stop`] may be called many times,
/// in any order the node's events come in.
#[async_trait]
pub trait Backend: Send + Sync + fmt::Debug {
    /// The backend's type, as flannel names it.
    fn kind(&self) -> BackendType;

    /// What this node's lease advertises as `BackendData` (vxlan: the VTEP MAC);
    /// `None` for none.
    fn lease_data(&self) -> Option<RawJson> {
        None
    }

    /// What it advertises as `BackendV6Data` (vxlan: the IPv6 device's VTEP MAC);
    /// `None` for none.
    fn lease_v6_data(&self) -> Option<RawJson> {
        None
    }

    /// Which underlay address the node's forwarding table sends each subnet's packets
    /// to, and expects them from ([`Underlay::PerFamily`]: IPv6 subnets via
    /// `PublicIPv6`); only the backends that forward by the table care.
    fn forward_underlay(&self) -> Underlay {
        Underlay::PerFamily
    }

    /// Our lease was acquired, or acquired again: bring the datapath up for it (started
    /// on the first lease, restarted when the subnet changed, untouched when the same).
    async fn lease_acquired(&mut self, lease: &Lease) -> Result<(), DatapathError>;

    /// A route to a peer was added or removed. Backends that forward by the forwarding
    /// table (udp) need nothing here; kernel backends program it.
    async fn route_changed(&mut self, change: &RouteChange) -> Result<(), DatapathError> {
        let _ = change;
        Ok(())
    }

    /// The node published a new forwarding table: packets from now on are decided by it.
    fn forward_table(&mut self, table: Arc<ForwardTable>) {
        let _ = table;
    }

    /// The backend's counters (packets, drops by reason, errors, peers), in a fixed
    /// order.
    fn counters(&self) -> Vec<Counter> {
        Vec::new()
    }

    /// The device it forwards through and the kernel's packet and byte counts of it,
    /// once the device exists (`None` for backends without one: alloc, host-gw).
    async fn device(&self) -> Option<DeviceStats> {
        None
    }

    /// Why the backend's forwarding gave up, if it did: a device or socket that kept
    /// failing (see [`streak`]). The daemon polls it and stops with it.
    fn failure(&self) -> Option<String> {
        None
    }

    /// Stops forwarding and removes what the backend created. Called once.
    async fn stop(&mut self) -> Result<(), DatapathError>;
}

/// The backend the network config names. A type weft does not implement yet is a clear
/// error naming the types it does.
pub fn create(setup: BackendSetup) -> Result<Box<dyn Backend>, DatapathError> {
    let kind = setup.network.backend.kind;
    match kind {
        BackendType::Alloc => Ok(Box::new(alloc::AllocBackend)),
        BackendType::Udp => Ok(Box::new(udp::UdpBackend::new(setup)?)),
        BackendType::Vxlan => Ok(Box::new(vxlan::VxlanBackend::new(setup)?)),
        BackendType::HostGw => Ok(Box::new(hostgw::HostGwBackend::new(setup)?)),
        BackendType::Wireguard => Ok(Box::new(wireguard::WireguardBackend::new(setup)?)),
        BackendType::Ipip => Ok(Box::new(ipip::IpipBackend::new(setup)?)),
    }
}

/// The overlay network as IPv4, when the config enables IPv4.
fn ipv4_network(setup: &BackendSetup) -> Option<Ipv4Net> {
    setup.network.network.filter(|_| setup.network.enable_ipv4)
}

/// Why `config`, an IPv6-only network (`EnableIPv4: false`), cannot run on its
/// backend, if it cannot: wireguard in a mode that reaches peers through one session
/// found by their `PublicIP` (`auto`, `ipv4`, `ipv6`), which an IPv6-only lease records
/// as 0.0.0.0. Every other backend, and wireguard's `separate` mode, runs it.
pub fn ipv6_only_refusal(config: &NetworkConfig) -> Option<String> {
    let mode = config.backend.wireguard.as_ref()?.mode;
    (config.backend.kind == BackendType::Wireguard
        && mode != weft_core::config::WireguardMode::Separate)
        .then(|| {
            format!(
                "the wireguard backend runs IPv6-only networks (EnableIPv4: false) in Mode \
                 \"separate\" (the default) only: Mode \"{}\" keeps one session per peer, \
                 found by its PublicIP, which an IPv6-only lease records as 0.0.0.0",
                mode.as_str()
            )
        })
}

/// The IPv6 overlay network, when the config enables IPv6.
fn ipv6_network(setup: &BackendSetup) -> Option<Ipv6Net> {
    setup
        .network
        .ipv6_network
        .filter(|_| setup.network.enable_ipv6)
}

/// The overlay networks, IPv4 and IPv6 as the config enables them, for backends that
/// route both families.
fn overlay_networks(setup: &BackendSetup) -> Result<Vec<IpNet>, DatapathError> {
    let v4 = setup
        .network
        .network
        .filter(|_| setup.network.enable_ipv4)
        .map(IpNet::V4);
    let v6 = setup
        .network
        .ipv6_network
        .filter(|_| setup.network.enable_ipv6)
        .map(IpNet::V6);
    let all: Vec<IpNet> = v4.into_iter().chain(v6).collect();
    if all.is_empty() {
        return Err(DatapathError::Unsupported(format!(
            "the {} backend needs a Network or an IPv6Network",
            setup.network.backend.kind
        )));
    }
    Ok(all)
}
