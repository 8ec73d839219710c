//! flannel's udp backend: a TUN device and a UDP socket, with the node's forwarding table
//! deciding where each packet goes.
//!
//! Packets the kernel routes into the TUN device (everything for the overlay network)
//! are read, looked up by [`ForwardTable::route_outbound`] and sent, TTL decremented, as
//! the payload of a UDP datagram to the peer's port. Datagrams received on the port are
//! checked by [`ForwardTable::accept_inbound`] and written to the TUN device. Each
//! direction is one thread doing blocking I/O with buffers allocated once: no allocation
//! and no async wake-up per packet (an async version forwarded 0.3 Gbit/s in the lab
//! benchmark; see the commit). The threads read the latest published table through an
//! `arc_swap` cache -- no lock shared with the control plane -- and count drops into
//! counters of their own.
//!
//! By default the threads batch their syscalls ([`batched`]: recvmmsg with UDP GRO,
//! sendmsg with UDP GSO, several TUN reads per wake-up); `WEFT_UDP_BATCH=0` in the
//! environment keeps the one packet per syscall loops below, which
//! `scripts/bench-datapath` measures beside the batched ones. The batched threads also
//! use TUN offloads ([`offload`], [`tun_offload`]): TCP super-packets read from the
//! device are cut into ordinary flannel datagrams, and accepted TCP segments are joined
//! again, per flow, before they are written; `WEFT_UDP_OFFLOAD=0` turns that off. Several queues are
//! still to come.
//!
//! Dual stack (`EnableIPv6`): the TUN device also gets our IPv6 subnet's network address
//! as a /128 and the route of the whole `IPv6Network`, and IPv6 inner packets take the
//! same path as IPv4 ones -- the forwarding table's IPv6 family, the hop limit
//! decremented, TSO super-packets of TCP over IPv6 segmented and received ones coalesced
//! alike, ICMPv6 "no route" for a destination no lease holds. They travel over the
//! IPv4 underlay, to the peer's `PublicIP` and from it only ([`Underlay::Ipv4`]): one
//! socket, flannel's wire format (the payload is the inner packet, whatever its
//! version). flannel's udp backend is IPv4-only (`pkg/backend/udp` configures no IPv6
//! on `flannel0`); here weft goes beyond it, and a flannel udp node in the same cluster
//! simply has no IPv6 subnet.
//!
//! IPv6-only (`EnableIPv4: false`): the TUN device holds the IPv6 subnet's address and
//! route alone, the socket is an IPv6 one on `[PublicIPv6]:Port`, and every datagram
//! goes to the peer's `PublicIPv6` and is accepted from it only ([`Underlay::PerFamily`]:
//! the lease's `PublicIP` is flannel's 0.0.0.0 there). The TUN MTU is 20 bytes less, the
//! IPv6 outer header being that much longer.

pub(crate) mod batch;
mod batched;
pub(super) use batched::{segment_read, IDLE, SEGMENTED_ROOM, VNET_READ};
pub(crate) mod offload;
pub(crate) mod tun_offload;

use super::streak::{join_within, Fatal, Streak};
use std::net::UdpSocket;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use arc_swap::{ArcSwap, Cache};
use async_trait::async_trait;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use weft_core::config::BackendType;
use weft_core::forward::{DropReason, DropRegistry, ForwardTable, Inbound, Outbound, ThreadDrops};
use weft_core::lease::{Lease, LeaseKey};
use weft_core::router::Underlay;
use weft_core::wire::icmp;

use super::{Backend, BackendSetup, Counter, CounterKind, DeviceStats};
use crate::netlink::{GatewayRoute, Netlink};
use crate::{netns, DatapathError};

/// The biggest IP packet; buffers are this size so that nothing is ever truncated.
const MAX_PACKET: usize = 65_535;
/// The UDP receive buffer asked for, to ride out bursts while the TUN side catches up.
const SOCKET_BUFFER: usize = 8 << 20;

/// How the backend is set up.
#[derive(Debug, Clone)]
pub struct UdpConfig {
    /// The TUN device's name (flannel: `flannel0`; weft: `weft0`).
    pub tun_name: String,
    /// The TUN device's MTU: the underlay MTU minus 28.
    pub mtu: u32,
    /// The whole overlay network, routed into the TUN device; none on an IPv6-only
    /// network.
    pub network: Option<Ipv4Net>,
    /// Our subnet: the TUN device gets its network address as a /32, as flannel does.
    pub subnet: Option<Ipv4Net>,
    /// The IPv6 network (`EnableIPv6`), routed into the TUN device too.
    pub network6: Option<Ipv6Net>,
    /// Our IPv6 subnet: the TUN device gets its network address as a /128.
    pub subnet6: Option<Ipv6Net>,
    /// The public IP to bind the socket to.
    pub public_ip: Ipv4Addr,
    /// The public IPv6 address to bind the socket to on an IPv6-only network, where
    /// the datagrams travel over the IPv6 underlay.
    pub public_ipv6: Option<Ipv6Addr>,
    /// The UDP port (8285).
    pub port: u16,
    /// Batched syscalls (the default) or one packet per syscall (`WEFT_UDP_BATCH=0`).
    pub batched: bool,
    /// TUN offloads (the default, with batching): a virtio header on the device, TSO
    /// super-packets segmented here, received segments coalesced (`WEFT_UDP_OFFLOAD=0`:
    /// off).
    pub offload: bool,
}

/// Packet counts of the forwarding tasks (drops are counted by the node, by reason).
#[derive(Debug, Default)]
pub struct Counters {
    /// Packets read from the TUN device.
    pub tun_rx: AtomicU64,
    /// Datagrams sent to peers.
    pub udp_tx: AtomicU64,
    /// Datagrams received from the underlay.
    pub udp_rx: AtomicU64,
    /// Packets written to the TUN device.
    pub tun_tx: AtomicU64,
    /// ICMP unreachables sent back to local senders.
    pub icmp_tx: AtomicU64,
    /// Send or write errors.
    pub errors: AtomicU64,
    /// TCP or UDP super-packets read from the TUN device (TUN offloads) and cut into
    /// datagrams here.
    pub tso_reads: AtomicU64,
    /// Super-packets of several received TCP segments written to the TUN device in one
    /// write (the per-flow coalescer).
    pub gro_writes: AtomicU64,
}

/// The published forwarding table, swapped by the control plane, read by the threads.
pub(super) type SharedTable = Arc<ArcSwap<ForwardTable>>;

/// The running TUN device, socket and forwarding threads of one lease.
#[derive(Debug)]
pub struct UdpDatapath {
    netlink: Netlink,
    tun_index: u32,
    tun_name: String,
    threads: Vec<JoinHandle<()>>,
    stopping: Arc<AtomicBool>,
    socket: Arc<UdpSocket>,
    /// Why forwarding gave up, once a thread did.
    fatal: Fatal,
}

/// Sizes the socket's buffers to [`SOCKET_BUFFER`], best effort: with `CAP_NET_ADMIN`
/// (which the daemon has, for its TUN device) past `net.core.rmem_max`/`wmem_max`
/// (`SO_RCVBUFFORCE`), else within them. A forwarding thread that waits for a CPU on a
/// busy host must not find its datagrams dropped by a buffer the sysctl cut short
/// (4 MiB where the benchmark runs, i.e. about 4 ms at 8 Gbit/s).
pub(super) fn size_buffers(socket: &Socket) {
    use nix::sys::socket::{setsockopt, sockopt};
    if setsockopt(socket, sockopt::RcvBufForce, &SOCKET_BUFFER).is_err() {
        let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    }
    if setsockopt(socket, sockopt::SndBufForce, &SOCKET_BUFFER).is_err() {
        let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    }
}

pub(super) fn bind_socket(addr: SocketAddrV4) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    size_buffers(&socket);
    socket.bind(&SocketAddr::V4(addr).into())?;
    Ok(socket.into())
}

/// [`bind_socket`] for IPv6 (`IPV6_V6ONLY`: the IPv4 port of the same number is
/// another socket's).
pub(super) fn bind_socket_v6(addr: std::net::SocketAddrV6) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_only_v6(true)?;
    size_buffers(&socket);
    socket.bind(&SocketAddr::V6(addr).into())?;
    Ok(socket.into())
}

impl UdpDatapath {
    /// Creates the TUN device and the socket inside the namespace at `ns` (`None`: ours),
    /// programs the device over `netlink` (which must talk to the same namespace), and
    /// starts forwarding by the latest table in `table`, counting into `counters` and
    /// into drop counters registered with `drops`.
    pub async fn start(
        ns: Option<&Path>,
        netlink: &Netlink,
        cfg: &UdpConfig,
        table: SharedTable,
        counters: Arc<Counters>,
        drops: &DropRegistry,
    ) -> Result<UdpDatapath, DatapathError> {
        let vnet_hdr = cfg.offload && cfg.batched;
        let device = open_tun(ns, &cfg.tun_name, vnet_hdr)?;
        // IPv6-only: one IPv6 socket, every datagram over the IPv6 underlay.
        let v4 = cfg.network.zip(cfg.subnet);
        let bind = match (v4, cfg.public_ipv6) {
            (None, Some(ip6)) => SocketAddr::V6(std::net::SocketAddrV6::new(ip6, cfg.port, 0, 0)),
            _ => SocketAddr::V4(SocketAddrV4::new(cfg.public_ip, cfg.port)),
        };
        let socket = netns::in_netns(ns, move || match bind {
            SocketAddr::V4(a) => bind_socket(a),
            SocketAddr::V6(a) => bind_socket_v6(a),
        })?
        .map_err(|e| DatapathError::io(format!("bind udp {bind}"), e))?;

        let link = netlink.require_link(&cfg.tun_name).await?;
        let v6 = cfg.network6.zip(cfg.subnet6);
        if let Err(e) = program_tun(netlink, link.index, cfg.mtu, v4, v6).await {
            let _ = netlink.del_link(link.index).await;
            return Err(e);
        }

        let offloads = if vnet_hdr {
            Some(tun_offload::enable(&device, &cfg.tun_name))
        } else {
            None
        };
        let tun = Arc::new(device);
        let socket = Arc::new(socket);
        let stopping = Arc::new(AtomicBool::new(false));
        let fatal = Fatal::default();
        let outbound = Forwarder {
            tun: tun.clone(),
            socket: socket.clone(),
            table: table.clone(),
            counters: counters.clone(),
            drops: drops.register(),
            stopping: stopping.clone(),
            fatal: fatal.clone(),
            tun_name: cfg.tun_name.as_str().into(),
        };
        let inbound = Forwarder {
            drops: drops.register(),
            ..outbound.clone()
        };
        let port = cfg.port;
        let icmp_from = IcmpFrom::of(cfg.network, cfg.network6);
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(|e| DatapathError::io("spawn a forwarding thread", e))
        };
        // The network's own address is never a host (the first subnet is not leased by
        // default) nor local to this node, so the kernel accepts an ICMP error from it;
        // the TUN device's own address would be dropped as a martian source.
        let threads = if cfg.batched {
            let state = Arc::new(
                batched::socket_state(&socket)
                    .map_err(|e| DatapathError::io("set up batched udp i/o", e))?,
            );
            let state2 = state.clone();
            vec![
                spawn(
                    "weft-tun-to-udp",
                    Box::new(move || {
                        outbound.tun_to_udp_batched(&state2, port, icmp_from, vnet_hdr)
                    }),
                )?,
                spawn(
                    "weft-udp-to-tun",
                    Box::new(move || inbound.udp_to_tun_batched(&state, vnet_hdr)),
                )?,
            ]
        } else {
            vec![
                spawn(
                    "weft-tun-to-udp",
                    Box::new(move || outbound.tun_to_udp(port, icmp_from)),
                )?,
                spawn("weft-udp-to-tun", Box::new(move || inbound.udp_to_tun()))?,
            ]
        };
        tracing::info!(tun = %cfg.tun_name, mtu = cfg.mtu, batched = cfg.batched, offloads = ?offloads, addr = ?cfg.subnet.map(|s| s.network()), route = ?cfg.network, addr6 = ?cfg.subnet6.map(|s| s.network()), route6 = ?cfg.network6, bind = %bind, "udp backend up");
        Ok(UdpDatapath {
            netlink: netlink.clone(),
            tun_index: link.index,
            tun_name: cfg.tun_name.clone(),
            threads,
            stopping,
            socket,
            fatal,
        })
    }

    /// Why forwarding gave up, if it did (a device or socket that kept failing).
    pub fn failure(&self) -> Option<String> {
        self.fatal.get()
    }

    /// Stops forwarding and removes the TUN device (and with it its address and route).
    pub async fn stop(self) -> Result<(), DatapathError> {
        self.stopping.store(true, Ordering::Relaxed);
        // Deleting the device ends a blocked TUN read; shutting the socket down ends a
        // blocked receive.
        let deleted = self.netlink.del_link(self.tun_index).await;
        Carrier::shutdown(&*self.socket);
        join_within(self.threads, &self.tun_name).await;
        deleted?;
        tracing::info!(tun = %self.tun_name, "udp backend down: TUN device and route removed");
        Ok(())
    }
}

/// Opens the TUN device `name` in the namespace `ns`; `vnet_hdr`: every read and write
/// starts with a virtio header (the batched loops, with offloads). Addresses, MTU and
/// routes are programmed over netlink afterwards, not by ioctl. Shared by the TUN
/// backends (udp, wireguard, ipip's userspace path).
pub(super) fn open_tun(
    ns: Option<&Path>,
    name: &str,
    vnet_hdr: bool,
) -> Result<tun::Device, DatapathError> {
    let owned = name.to_string();
    netns::in_netns(ns, move || {
        let mut config = tun::Configuration::default();
        config.tun_name(&owned).layer(tun::Layer::L3);
        config.platform_config(|p| {
            p.ensure_root_privileges(false);
            p.vnet_hdr(vnet_hdr);
        });
        tun::create(&config).map_err(|e| e.to_string())
    })?
    .map_err(|reason| DatapathError::Tun {
        name: name.to_string(),
        reason,
    })
}

/// Gives a TUN device its addresses (our subnets' network addresses, /32 and /128), its
/// MTU, and the routes of the overlay networks (`v4`, and `v6` with IPv6): (network,
/// our subnet) each. Shared by the udp and wireguard backends.
pub(super) async fn program_tun(
    netlink: &Netlink,
    index: u32,
    mtu: u32,
    v4: Option<(Ipv4Net, Ipv4Net)>,
    v6: Option<(Ipv6Net, Ipv6Net)>,
) -> Result<(), DatapathError> {
    if let Some((_, subnet)) = v4 {
        netlink
            .add_address(index, IpAddr::V4(subnet.network()), 32)
            .await?;
    }
    if let Some((_, subnet6)) = v6 {
        // Without duplicate address detection: the address is ours by lease, and a
        // tentative one could not be the source of anything for a second or more.
        netlink
            .add_address_nodad(index, IpAddr::V6(subnet6.network()), 128)
            .await?;
    }
    netlink.set_up(index, Some(mtu)).await?;
    if let Some((network, _)) = v4 {
        netlink.replace_route(network, index, None).await?;
    }
    if let Some((network6, _)) = v6 {
        netlink
            .replace_gateway_route(&GatewayRoute {
                dst: IpNet::V6(network6),
                gateway: None,
                oif: index,
                onlink: false,
            })
            .await?;
    }
    Ok(())
}

/// The sources of the ICMP errors sent back to local senders: each network's own
/// address, never a host (the first subnet is not leased by default) nor local to this
/// node, so that the kernel accepts the error (the TUN device's own address would be
/// dropped as a martian source).
#[derive(Debug, Clone, Copy)]
pub(super) struct IcmpFrom {
    pub(super) v4: Option<Ipv4Addr>,
    pub(super) v6: Option<Ipv6Addr>,
}

impl IcmpFrom {
    pub(super) fn of(network: Option<Ipv4Net>, network6: Option<Ipv6Net>) -> Self {
        IcmpFrom {
            v4: network.map(|n| n.network()),
            v6: network6.map(|n| n.network()),
        }
    }

    /// Writes into `out` the "no route" error for `packet` in its own family (ICMP
    /// "network unreachable", ICMPv6 "no route to destination"); its length, or `None`
    /// when there is none to send.
    pub(super) fn unreachable(&self, packet: &[u8], out: &mut [u8]) -> Option<usize> {
        match packet.first().map(|b| b >> 4) {
            Some(4) => icmp::net_unreachable_v4(packet, self.v4?, out),
            Some(6) => icmp::net_unreachable_v6(packet, self.v6?, out),
            _ => None,
        }
    }
}

/// Room for any ICMP error [`IcmpFrom::unreachable`] writes.
pub(super) const ICMP_ROOM: usize = icmp::MAX_REPLY_V6;

/// What carries the inner packets between nodes under a TUN backend's forwarding
/// loops: the udp backend's UDP socket, the ipip backend's raw IPIP socket. Both send
/// an inner packet as is to a peer's address; receiving, one hands the payload of a
/// datagram and the other the outer IPv4 header too, which it strips.
pub(super) trait Carrier: Send + Sync + 'static {
    /// What a failing receive is, for the messages ("receiving on the udp port").
    fn what(&self) -> &'static str;
    /// Sends the inner packet `packet` to `to` (a raw socket ignores the port).
    fn send_to(&self, packet: &[u8], to: SocketAddr) -> std::io::Result<usize>;
    /// Receives one packet into `buf`: where the inner packet lies in it and who sent
    /// it (the outer source address); `Ok(None)` for something that cannot be one of
    /// ours (an outer header that does not parse), which the caller counts as
    /// malformed.
    fn recv_from(
        &self,
        buf: &mut [u8],
    ) -> std::io::Result<Option<(std::ops::Range<usize>, IpAddr)>>;
    /// Ends a receive blocked in another thread (the backend is stopping).
    fn shutdown(&self);
}

impl Carrier for UdpSocket {
    fn what(&self) -> &'static str {
        "receiving on the udp port"
    }

    fn send_to(&self, packet: &[u8], to: SocketAddr) -> std::io::Result<usize> {
        UdpSocket::send_to(self, packet, to)
    }

    fn recv_from(
        &self,
        buf: &mut [u8],
    ) -> std::io::Result<Option<(std::ops::Range<usize>, IpAddr)>> {
        let (n, from) = UdpSocket::recv_from(self, buf)?;
        Ok(Some((0..n, from.ip())))
    }

    fn shutdown(&self) {
        let _ = SockRef::from(self).shutdown(std::net::Shutdown::Read);
    }
}

/// What a forwarding thread works with: the TUN device, the carrier `S` (the udp
/// backend's socket unless said otherwise), the table and the counters.
pub(super) struct Forwarder<S: Carrier = UdpSocket> {
    pub(super) tun: Arc<tun::Device>,
    pub(super) socket: Arc<S>,
    pub(super) table: SharedTable,
    pub(super) counters: Arc<Counters>,
    /// This thread's own drop counters.
    pub(super) drops: Arc<ThreadDrops>,
    pub(super) stopping: Arc<AtomicBool>,
    /// Where a thread that gives up says why.
    pub(super) fatal: Fatal,
    /// The TUN device's name, for messages.
    pub(super) tun_name: Arc<str>,
}

impl<S: Carrier> Clone for Forwarder<S> {
    fn clone(&self) -> Self {
        Forwarder {
            tun: self.tun.clone(),
            socket: self.socket.clone(),
            table: self.table.clone(),
            counters: self.counters.clone(),
            drops: self.drops.clone(),
            stopping: self.stopping.clone(),
            fatal: self.fatal.clone(),
            tun_name: self.tun_name.clone(),
        }
    }
}

pub(super) fn count(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub(super) fn add(c: &AtomicU64, n: usize) {
    c.fetch_add(n as u64, Ordering::Relaxed);
}

impl<S: Carrier> Forwarder<S> {
    pub(super) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// A streak for reading the TUN device.
    pub(super) fn tun_streak(&self) -> Streak {
        Streak::new(format!("reading the TUN device {}", self.tun_name))
    }

    /// A streak for receiving on the carrier.
    pub(super) fn socket_streak(&self) -> Streak {
        Streak::new(self.socket.what())
    }

    /// TUN -> core -> carrier, one packet per syscall, until the device goes away;
    /// each packet is sent to its peer's public IP and `port`.
    pub(super) fn tun_to_udp(self, port: u16, icmp_from: IcmpFrom) {
        let mut buf = vec![0u8; MAX_PACKET];
        let mut reply = [0u8; ICMP_ROOM];
        let mut table = Cache::new(self.table.clone());
        let mut streak = self.tun_streak();
        while !self.stopping() {
            let n = match self.tun.recv(&mut buf) {
                Ok(n) => {
                    streak.ok();
                    n
                }
                Err(e) => {
                    if !self.stopping() {
                        count(&self.counters.errors);
                        if streak.failed(&e, &self.fatal).is_break() {
                            return;
                        }
                    }
                    continue;
                }
            };
            count(&self.counters.tun_rx);
            let packet = &mut buf[..n];
            let verdict = table.load().route_outbound(packet, &self.drops);
            match verdict {
                Outbound::Send { peer } => {
                    let to = SocketAddr::new(peer, port);
                    match self.socket.send_to(packet, to) {
                        Ok(_) => count(&self.counters.udp_tx),
                        Err(_) => count(&self.counters.errors),
                    }
                }
                Outbound::Unreachable => {
                    if let Some(len) = icmp_from.unreachable(packet, &mut reply) {
                        if self.tun.send(&reply[..len]).is_ok() {
                            count(&self.counters.icmp_tx);
                        }
                    }
                }
                // For our own subnet the kernel has a better route (the bridge); one that
                // reached the TUN device anyway has nowhere to go but back: drop it.
                Outbound::Local | Outbound::Drop(_) => {}
            }
        }
    }

    /// carrier -> core -> TUN, until the carrier is shut down. Every packet passes
    /// [`ForwardTable::accept_inbound`] with its outer source before it is written.
    pub(super) fn udp_to_tun(self) {
        let mut buf = vec![0u8; MAX_PACKET];
        let mut table = Cache::new(self.table.clone());
        let mut streak = self.socket_streak();
        while !self.stopping() {
            let (range, from) = match self.socket.recv_from(&mut buf) {
                Ok(Some(got)) => {
                    streak.ok();
                    got
                }
                Ok(None) => {
                    streak.ok();
                    count(&self.counters.udp_rx);
                    self.drops.count(DropReason::Malformed);
                    continue;
                }
                Err(e) => {
                    if !self.stopping() {
                        count(&self.counters.errors);
                        if streak.failed(&e, &self.fatal).is_break() {
                            return;
                        }
                    }
                    continue;
                }
            };
            count(&self.counters.udp_rx);
            let packet = &buf[range];
            if table.load().accept_inbound(from, packet, &self.drops) == Inbound::Deliver {
                match self.tun.send(packet) {
                    Ok(_) => count(&self.counters.tun_tx),
                    Err(_) => count(&self.counters.errors),
                }
            }
        }
    }
}

/// flannel's udp backend: a [`UdpDatapath`] started with the first lease and restarted
/// when the subnet changes, forwarding by the latest table the node published.
#[derive(Debug)]
pub struct UdpBackend {
    netns: Option<std::path::PathBuf>,
    netlink: Netlink,
    /// TUN name, MTU, network, public IP and port; the subnet is filled in per lease.
    template: UdpConfig,
    table: SharedTable,
    counters: Arc<Counters>,
    drops: DropRegistry,
    running: Option<(LeaseKey, UdpDatapath)>,
}

impl UdpBackend {
    /// A udp backend for `setup`; nothing is created before the first lease. With
    /// `EnableIPv6` it carries IPv6 inner packets too, over the IPv4 underlay (see the
    /// module docs); on an IPv6-only network (`EnableIPv4: false`), IPv6 inner packets
    /// alone over the IPv6 underlay, to each peer's `PublicIPv6` (flannel's udp backend
    /// has no IPv6 at all).
    pub fn new(setup: BackendSetup) -> Result<UdpBackend, DatapathError> {
        let network = setup.network.network.filter(|_| setup.network.enable_ipv4);
        let network6 = super::ipv6_network(&setup);
        if network.is_none() {
            if network6.is_none() {
                return Err(DatapathError::Unsupported(
                    "the udp backend needs a Network or an IPv6Network".to_string(),
                ));
            }
            if setup.public_ipv6.is_none() {
                return Err(DatapathError::Unsupported(
                    "the udp backend on an IPv6-only network sends over the IPv6 underlay, and this node has no public IPv6 address (--public-ipv6, or a global IPv6 address on the interface)".to_string(),
                ));
            }
        }
        let netlink = setup.netlink.clone().ok_or_else(|| {
            DatapathError::Unsupported("the udp backend needs netlink".to_string())
        })?;
        Ok(UdpBackend {
            netns: setup.netns,
            netlink,
            template: UdpConfig {
                tun_name: setup.device_name,
                // Over the IPv6 underlay the outer header is 20 bytes longer (as for
                // vxlan's flannel-v6 device).
                mtu: match network {
                    Some(_) => setup.mtu,
                    None => setup.mtu.saturating_sub(20),
                },
                network,
                subnet: network,
                network6,
                subnet6: None,
                public_ip: setup.public_ip,
                public_ipv6: setup.public_ipv6,
                port: setup.network.backend.port,
                batched: std::env::var("WEFT_UDP_BATCH").map_or(true, |v| v != "0"),
                offload: std::env::var("WEFT_UDP_OFFLOAD").map_or(true, |v| v != "0"),
            },
            table: Arc::new(ArcSwap::from_pointee(ForwardTable::default())),
            counters: Arc::new(Counters::default()),
            drops: DropRegistry::default(),
            running: None,
        })
    }
}

#[async_trait]
impl Backend for UdpBackend {
    fn kind(&self) -> BackendType {
        BackendType::Udp
    }

    fn forward_underlay(&self) -> Underlay {
        // IPv6 inner packets go to the peer's PublicIP, over the one IPv4 socket; on an
        // IPv6-only network (one IPv6 socket) to its PublicIPv6.
        match self.template.network {
            Some(_) => Underlay::Ipv4,
            None => Underlay::PerFamily,
        }
    }

    async fn lease_acquired(&mut self, lease: &Lease) -> Result<(), DatapathError> {
        if self.running.as_ref().is_some_and(|(k, _)| *k == lease.key) {
            return Ok(());
        }
        if let Some((_, old)) = self.running.take() {
            old.stop().await?;
        }
        if self.template.network6.is_some() && lease.key.ipv6.is_none() {
            return Err(DatapathError::Unsupported(format!(
                "the network config enables IPv6, but the lease {} has no IPv6 subnet",
                lease.key
            )));
        }
        if self.template.network.is_some() && lease.key.ipv4.is_none() {
            return Err(DatapathError::Unsupported(format!(
                "the network config enables IPv4, but the lease {} has no IPv4 subnet",
                lease.key
            )));
        }
        let cfg = UdpConfig {
            subnet: lease.key.ipv4.filter(|_| self.template.network.is_some()),
            subnet6: lease.key.ipv6.filter(|_| self.template.network6.is_some()),
            ..self.template.clone()
        };
        let datapath = UdpDatapath::start(
            self.netns.as_deref(),
            &self.netlink,
            &cfg,
            self.table.clone(),
            self.counters.clone(),
            &self.drops,
        )
        .await?;
        self.running = Some((lease.key, datapath));
        Ok(())
    }

    fn forward_table(&mut self, table: Arc<ForwardTable>) {
        self.table.store(table);
    }

    fn counters(&self) -> Vec<Counter> {
        use std::sync::atomic::Ordering::Relaxed;
        let c = &self.counters;
        let mut out: Vec<Counter> = [
            ("tun_rx", &c.tun_rx),
            ("udp_tx", &c.udp_tx),
            ("udp_rx", &c.udp_rx),
            ("tun_tx", &c.tun_tx),
            ("icmp_tx", &c.icmp_tx),
            ("errors", &c.errors),
            ("tso_reads", &c.tso_reads),
            ("gro_writes", &c.gro_writes),
        ]
        .into_iter()
        .map(|(name, v)| {
            let kind = if matches!(name, "errors" | "tso_reads" | "gro_writes") {
                CounterKind::Total
            } else {
                CounterKind::Packets
            };
            Counter::new(kind, name, v.load(Relaxed))
        })
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
        self.running.as_ref().and_then(|(_, d)| d.failure())
    }

    async fn device(&self) -> Option<DeviceStats> {
        let (_, running) = self.running.as_ref()?;
        let link = running.netlink.link(&running.tun_name).await.ok()??;
        Some(DeviceStats {
            name: link.name,
            stats: link.stats?,
        })
    }

    async fn stop(&mut self) -> Result<(), DatapathError> {
        match self.running.take() {
            Some((_, datapath)) => datapath.stop().await,
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As root, the socket's buffers are the size asked for, past the sysctl caps: the
    /// kernel reports twice what was set (its bookkeeping share), and without
    /// `SO_RCVBUFFORCE` it would stop at twice `net.core.rmem_max` (4 MiB here).
    #[test]
    fn socket_buffers_are_forced_past_the_sysctl_cap_as_root() {
        if !nix::unistd::geteuid().is_root() {
            assert!(
                std::env::var("CI").map_or(true, |v| v != "true"),
                "this test needs root (CAP_NET_ADMIN) and CI=true is set"
            );
            eprintln!("SKIPPED: socket_buffers_are_forced_past_the_sysctl_cap_as_root needs root");
            return;
        }
        let socket = bind_socket(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let s = SockRef::from(&socket);
        assert!(s.recv_buffer_size().expect("rcvbuf") >= 2 * SOCKET_BUFFER);
        assert!(s.send_buffer_size().expect("sndbuf") >= 2 * SOCKET_BUFFER);
    }
}
