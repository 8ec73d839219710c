//! flannel's udp backend: a TUN device and a UDP socket, with the core deciding where
//! each packet goes.
//!
//! Packets the kernel routes into the TUN device (everything for the overlay network)
//! are read, looked up by [`Node::route_outbound`] and sent, TTL decremented, as the
//! payload of a UDP datagram to the peer's port. Datagrams received on the port are
//! checked by [`Node::accept_inbound`] and written to the TUN device. Each direction is
//! one thread doing blocking I/O with one reusable buffer: no allocation and no async
//! wake-up per packet (an async version forwarded 0.3 Gbit/s in the lab benchmark; see
//! the commit). The threads are where batching (recvmmsg/sendmmsg, GSO/GRO, TUN
//! offloads, several queues) will go.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use ipnet::Ipv4Net;
use std::net::UdpSocket;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use weft_core::node::{Inbound, Node, Outbound};
use weft_core::wire::icmp;

use crate::netlink::Netlink;
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
    /// The whole overlay network, routed into the TUN device.
    pub network: Ipv4Net,
    /// Our subnet: the TUN device gets its network address as a /32, as flannel does.
    pub subnet: Ipv4Net,
    /// The public IP to bind the socket to.
    pub public_ip: Ipv4Addr,
    /// The UDP port (8285).
    pub port: u16,
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
}

/// A running udp backend.
#[derive(Debug)]
pub struct UdpBackend {
    netlink: Netlink,
    tun_index: u32,
    tun_name: String,
    threads: Vec<JoinHandle<()>>,
    stopping: Arc<AtomicBool>,
    socket: Arc<UdpSocket>,
    counters: Arc<Counters>,
}

fn lock(node: &Mutex<Node>) -> MutexGuard<'_, Node> {
    node.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn bind_socket(addr: SocketAddrV4) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: the kernel caps it at net.core.rmem_max.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&SocketAddr::V4(addr).into())?;
    Ok(socket.into())
}

impl UdpBackend {
    /// Creates the TUN device and the socket inside the namespace at `ns` (`None`: ours),
    /// programs the device over `netlink` (which must talk to the same namespace), and
    /// starts forwarding for `node`.
    pub async fn start(
        ns: Option<&Path>,
        netlink: &Netlink,
        cfg: &UdpConfig,
        node: Arc<Mutex<Node>>,
    ) -> Result<UdpBackend, DatapathError> {
        let name = cfg.tun_name.clone();
        let device = netns::in_netns(ns, move || {
            let mut config = tun::Configuration::default();
            config.tun_name(&name).layer(tun::Layer::L3);
            // Addresses, MTU and routes are programmed over netlink, not by ioctl.
            config.platform_config(|p| {
                p.ensure_root_privileges(false);
            });
            tun::create(&config).map_err(|e| e.to_string())
        })?
        .map_err(|reason| DatapathError::Tun {
            name: cfg.tun_name.clone(),
            reason,
        })?;
        let bind = SocketAddrV4::new(cfg.public_ip, cfg.port);
        let socket = netns::in_netns(ns, move || bind_socket(bind))?
            .map_err(|e| DatapathError::io(format!("bind udp {bind}"), e))?;

        let link = netlink.require_link(&cfg.tun_name).await?;
        let result = async {
            netlink
                .add_address(link.index, IpAddr::V4(cfg.subnet.network()), 32)
                .await?;
            netlink.set_up(link.index, Some(cfg.mtu)).await?;
            netlink.replace_route(cfg.network, link.index, None).await
        }
        .await;
        if let Err(e) = result {
            let _ = netlink.del_link(link.index).await;
            return Err(e);
        }

        let tun = Arc::new(device);
        let socket = Arc::new(socket);
        let counters = Arc::new(Counters::default());
        let stopping = Arc::new(AtomicBool::new(false));
        let outbound = Forwarder {
            tun: tun.clone(),
            socket: socket.clone(),
            node: node.clone(),
            counters: counters.clone(),
            stopping: stopping.clone(),
        };
        let inbound = Forwarder {
            node,
            ..outbound.clone()
        };
        let (port, icmp_from) = (cfg.port, cfg.network.network());
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(|e| DatapathError::io("spawn a forwarding thread", e))
        };
        // The network's own address is never a host (the first subnet is not leased by
        // default) nor local to this node, so the kernel accepts an ICMP error from it;
        // the TUN device's own address would be dropped as a martian source.
        let threads = vec![
            spawn(
                "weft-tun-to-udp",
                Box::new(move || outbound.tun_to_udp(port, icmp_from)),
            )?,
            spawn("weft-udp-to-tun", Box::new(move || inbound.udp_to_tun()))?,
        ];
        tracing::info!(tun = %cfg.tun_name, mtu = cfg.mtu, addr = %cfg.subnet.network(), route = %cfg.network, bind = %bind, "udp backend up");
        Ok(UdpBackend {
            netlink: netlink.clone(),
            tun_index: link.index,
            tun_name: cfg.tun_name.clone(),
            threads,
            stopping,
            socket,
            counters,
        })
    }

    /// The forwarding counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Stops forwarding and removes the TUN device (and with it its address and route).
    pub async fn stop(self) -> Result<(), DatapathError> {
        self.stopping.store(true, Ordering::Relaxed);
        // Deleting the device ends a blocked TUN read; shutting the socket down ends a
        // blocked receive.
        let deleted = self.netlink.del_link(self.tun_index).await;
        let _ = SockRef::from(&*self.socket).shutdown(std::net::Shutdown::Read);
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
        deleted?;
        tracing::info!(tun = %self.tun_name, "udp backend down: TUN device and route removed");
        Ok(())
    }
}

/// What a forwarding thread works with.
#[derive(Clone)]
struct Forwarder {
    tun: Arc<tun::Device>,
    socket: Arc<UdpSocket>,
    node: Arc<Mutex<Node>>,
    counters: Arc<Counters>,
    stopping: Arc<AtomicBool>,
}

fn count(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Forwarder {
    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// TUN -> core -> UDP, until the device goes away.
    fn tun_to_udp(self, port: u16, icmp_from: Ipv4Addr) {
        let mut buf = vec![0u8; MAX_PACKET];
        let mut reply = [0u8; 576];
        while !self.stopping() {
            let n = match self.tun.recv(&mut buf) {
                Ok(n) => n,
                Err(e) => {
                    if !self.stopping() {
                        count(&self.counters.errors);
                        tracing::warn!(error = %e, "reading the TUN device failed");
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    continue;
                }
            };
            count(&self.counters.tun_rx);
            let packet = &mut buf[..n];
            let verdict = lock(&self.node).route_outbound(packet);
            match verdict {
                Outbound::Send { peer } => {
                    let to = SocketAddr::new(peer, port);
                    match self.socket.send_to(packet, to) {
                        Ok(_) => count(&self.counters.udp_tx),
                        Err(_) => count(&self.counters.errors),
                    }
                }
                Outbound::Unreachable => {
                    if let Some(len) = icmp::net_unreachable_v4(packet, icmp_from, &mut reply) {
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

    /// UDP -> core -> TUN, until the socket is shut down.
    fn udp_to_tun(self) {
        let mut buf = vec![0u8; MAX_PACKET];
        while !self.stopping() {
            let (n, from) = match self.socket.recv_from(&mut buf) {
                Ok((n, from)) => (n, from),
                Err(e) => {
                    if !self.stopping() {
                        count(&self.counters.errors);
                        tracing::warn!(error = %e, "receiving on the udp port failed");
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    continue;
                }
            };
            count(&self.counters.udp_rx);
            let packet = &buf[..n];
            if lock(&self.node).accept_inbound(from.ip(), packet) == Inbound::Deliver {
                match self.tun.send(packet) {
                    Ok(_) => count(&self.counters.tun_tx),
                    Err(_) => count(&self.counters.errors),
                }
            }
        }
    }
}
