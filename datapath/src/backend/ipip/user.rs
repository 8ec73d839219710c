//! IPIP carried by weft itself, for kernels without the ipip module: a TUN device in
//! `flannel.ipip`'s place and a raw socket of IP protocol 4, with the udp backend's
//! forwarding loops between them ([`Forwarder`] over [`RawIpip`]).
//!
//! The wire format is the kernel's: the inner IPv4 packet right after an outer IPv4
//! header of protocol 4 from our address to the peer's public IP, nothing else. The
//! kernel writes the outer header (the socket has no `IP_HDRINCL`); on receive it hands
//! the whole packet, outer header included, which [`inner`] strips by its IHL. Every
//! inner packet passes [`ForwardTable::accept_inbound`] with the outer source before it
//! reaches the TUN device: a known peer, an inner source in that peer's subnet, a
//! destination in ours. A raw socket has no GSO or GRO; the TUN device has offloads
//! (TSO reads, coalesced writes) unless `WEFT_IPIP_OFFLOAD=0` ([`super::offload`]).

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use ipnet::Ipv4Net;
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use weft_core::forward::DropRegistry;

use super::super::streak::{join_within, Fatal};
use super::super::udp::{self, Carrier, Counters, Forwarder, IcmpFrom, SharedTable};
use crate::netlink::Netlink;
use crate::{netns, DatapathError};

/// IP protocol 4: IPv4 in IPv4.
const IPPROTO_IPIP: i32 = 4;

/// A raw socket of IP protocol 4, bound to our address: the kernel delivers it every
/// IPIP packet addressed there (and, having a raw listener, answers none with "protocol
/// unreachable").
#[derive(Debug)]
pub(super) struct RawIpip(Socket);

impl RawIpip {
    fn bind(local: Ipv4Addr) -> std::io::Result<RawIpip> {
        let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(IPPROTO_IPIP)))?;
        udp::size_buffers(&socket);
        socket.bind(&SocketAddr::V4(SocketAddrV4::new(local, 0)).into())?;
        Ok(RawIpip(socket))
    }

    /// Makes receives return `WouldBlock` rather than wait.
    pub(super) fn set_nonblocking(&self) -> std::io::Result<()> {
        self.0.set_nonblocking(true)
    }

    /// Waits until a packet is there to receive, or `timeout` passed.
    pub(super) fn wait_readable(&self, timeout: std::time::Duration) {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let mut fds = [PollFd::new(self.0.as_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::NONE);
        let _ = poll(&mut fds, timeout);
    }
}

/// Where the inner packet lies in `packet`, an IPIP packet as a raw socket hands it
/// (outer header first), and the outer source; `None` when the outer header does not
/// parse or is not of protocol 4.
pub(super) fn inner(packet: &[u8]) -> Option<(Range<usize>, Ipv4Addr)> {
    let first = *packet.first()?;
    if first >> 4 != 4 || packet.len() < 20 {
        return None;
    }
    let ihl = usize::from(first & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    if ihl < 20 || packet[9] != 4 || total < ihl || total > packet.len() {
        return None;
    }
    let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    Some((ihl..total, src))
}

impl Carrier for RawIpip {
    fn what(&self) -> &'static str {
        "receiving on the raw IPIP socket"
    }

    fn send_to(&self, packet: &[u8], to: SocketAddr) -> std::io::Result<usize> {
        self.0.send_to(packet, &to.into())
    }

    fn recv_from(&self, buf: &mut [u8]) -> std::io::Result<Option<(Range<usize>, IpAddr)>> {
        let n = (&self.0).read(buf)?;
        Ok(inner(&buf[..n]).map(|(r, src)| (r, IpAddr::V4(src))))
    }

    fn shutdown(&self) {
        let _ = SockRef::from(&self.0).shutdown(std::net::Shutdown::Read);
    }
}

/// What the userspace path is started with.
#[derive(Debug, Clone)]
pub(super) struct UserConfig {
    /// The TUN device's name ([`super::plan::DEVICE`]).
    pub name: String,
    /// Its MTU: the underlay's minus 20.
    pub mtu: u32,
    /// The overlay network (the source of the ICMP errors sent back).
    pub network: Ipv4Net,
    /// Our subnet: the device gets its network address as a /32.
    pub subnet: Ipv4Net,
    /// The outer source address, bound by the socket.
    pub local: Ipv4Addr,
    /// TUN offloads (the default; `WEFT_IPIP_OFFLOAD=0`: off), see [`super::offload`].
    pub offload: bool,
}

/// The TUN device, raw socket and forwarding threads of one lease.
#[derive(Debug)]
pub(super) struct UserDatapath {
    pub(super) index: u32,
    name: String,
    threads: Vec<JoinHandle<()>>,
    stopping: Arc<AtomicBool>,
    socket: Arc<RawIpip>,
    fatal: Fatal,
}

impl UserDatapath {
    /// Creates the TUN device and the raw socket in the namespace `ns`, gives the device
    /// its address and MTU over `netlink` (no route: the backend adds one per peer, as
    /// for the kernel device), and starts forwarding by the latest table.
    pub(super) async fn start(
        ns: Option<&Path>,
        netlink: &Netlink,
        cfg: &UserConfig,
        table: SharedTable,
        counters: Arc<Counters>,
        drops: &DropRegistry,
    ) -> Result<UserDatapath, DatapathError> {
        let device = udp::open_tun(ns, &cfg.name, cfg.offload)?;
        let offloads = cfg
            .offload
            .then(|| udp::tun_offload::enable(&device, &cfg.name));
        let local = cfg.local;
        let socket = netns::in_netns(ns, move || RawIpip::bind(local))?
            .map_err(|e| DatapathError::io(format!("open a raw IPIP socket on {local}"), e))?;
        let link = netlink.require_link(&cfg.name).await?;
        let (addr, prefix) = super::plan::address(cfg.subnet);
        let programmed = async {
            netlink.add_address(link.index, addr.into(), prefix).await?;
            netlink.set_up(link.index, Some(cfg.mtu)).await
        }
        .await;
        if let Err(e) = programmed {
            let _ = netlink.del_link(link.index).await;
            return Err(e);
        }
        let socket = Arc::new(socket);
        let stopping = Arc::new(AtomicBool::new(false));
        let fatal = Fatal::default();
        let outbound = Forwarder {
            tun: Arc::new(device),
            socket: socket.clone(),
            table,
            counters,
            drops: drops.register(),
            stopping: stopping.clone(),
            fatal: fatal.clone(),
            tun_name: cfg.name.as_str().into(),
        };
        let inbound = Forwarder {
            drops: drops.register(),
            ..outbound.clone()
        };
        let icmp_from = IcmpFrom::of(Some(cfg.network), None);
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(|e| DatapathError::io("spawn a forwarding thread", e))
        };
        let threads = if cfg.offload {
            vec![
                spawn(
                    "weft-tun-to-ipip",
                    Box::new(move || outbound.tun_to_ipip_offload(icmp_from)),
                )?,
                spawn(
                    "weft-ipip-to-tun",
                    Box::new(move || inbound.ipip_to_tun_offload()),
                )?,
            ]
        } else {
            vec![
                spawn(
                    "weft-tun-to-ipip",
                    Box::new(move || outbound.tun_to_udp(0, icmp_from)),
                )?,
                spawn("weft-ipip-to-tun", Box::new(move || inbound.udp_to_tun()))?,
            ]
        };
        tracing::info!(tun = %cfg.name, mtu = cfg.mtu, addr = %addr, local = %cfg.local, offloads = ?offloads, "ipip backend up in userspace (TUN device and raw IPIP socket)");
        Ok(UserDatapath {
            index: link.index,
            name: cfg.name.clone(),
            threads,
            stopping,
            socket,
            fatal,
        })
    }

    /// Why forwarding gave up, if it did.
    pub(super) fn failure(&self) -> Option<String> {
        self.fatal.get()
    }

    /// Stops forwarding and removes the TUN device (and with it its address and the
    /// routes through it).
    pub(super) async fn stop(self, netlink: &Netlink) -> Result<(), DatapathError> {
        self.stopping.store(true, Ordering::Relaxed);
        let deleted = netlink.del_link(self.index).await;
        self.socket.shutdown();
        join_within(self.threads, &self.name).await;
        deleted?;
        tracing::info!(tun = %self.name, "ipip userspace datapath down: TUN device and its routes removed");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outer(ihl_words: u8, proto: u8, inner_len: usize) -> Vec<u8> {
        let ihl = usize::from(ihl_words) * 4;
        let total = ihl + inner_len;
        let mut p = vec![0u8; total];
        p[0] = 0x40 | ihl_words;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[8] = 64;
        p[9] = proto;
        p[12..16].copy_from_slice(&[192, 0, 2, 7]);
        p[16..20].copy_from_slice(&[192, 0, 2, 1]);
        p
    }

    #[test]
    fn the_outer_header_is_stripped_by_its_ihl() {
        let p = outer(5, 4, 28);
        assert_eq!(inner(&p), Some((20..48, Ipv4Addr::new(192, 0, 2, 7))));
        // With options: IHL 6 words.
        let p = outer(6, 4, 28);
        assert_eq!(inner(&p), Some((24..52, Ipv4Addr::new(192, 0, 2, 7))));
        // Trailing bytes past the total length are not the inner packet's.
        let mut p = outer(5, 4, 28);
        p.extend_from_slice(&[0; 6]);
        assert_eq!(inner(&p).map(|(r, _)| r), Some(20..48));
    }

    #[test]
    fn what_is_not_ipip_is_refused() {
        assert_eq!(inner(&[]), None);
        assert_eq!(inner(&outer(5, 17, 8)), None, "UDP, not IPIP");
        assert_eq!(inner(&outer(4, 4, 8)), None, "IHL below 5");
        let mut p = outer(5, 4, 8);
        p[0] = 0x65;
        assert_eq!(inner(&p), None, "IPv6 version nibble");
        let mut p = outer(5, 4, 8);
        p[2..4].copy_from_slice(&100u16.to_be_bytes());
        assert_eq!(inner(&p), None, "total length past the end");
        assert_eq!(inner(&outer(5, 4, 0)[..19]), None, "truncated header");
    }
}
