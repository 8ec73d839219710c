//! flannel's wireguard backend, in userspace: the udp backend's TUN device and
//! forwarding table, every packet sealed for its peer by boringtun's WireGuard.
//!
//! flannel creates a kernel WireGuard device and configures one peer per lease with
//! `wgctrl`; where the kernel has no WireGuard module (these machines among them) that
//! cannot run. weft keeps flannel's contract -- the config options, the key file, the
//! lease data `{"PublicKey":"…","Port":51820}`, an overlay MTU 80 bytes below the
//! underlay's -- so weft nodes and flannel's share one store and talk to each other, and
//! carries the packets itself: packets the kernel routes into the TUN device are looked
//! up in the node's [`ForwardTable`] like the udp backend's, then sealed by the peer's
//! session ([`boringtun::noise::Tunn`], a maintained implementation; no cryptography of
//! weft's own) and sent to its endpoint; datagrams received on the port are opened by
//! the session they belong to, and the packet inside is written to the TUN device only
//! if it comes from that peer's subnet and goes to ours ([`ForwardTable::accept_inbound`]
//! with the peer's lease address: the session, not the outer source address, says who
//! sent it). What fails is dropped and counted by reason ([`forward::WgDrop`]).
//!
//! Dual stack (`EnableIPv6`) as flannel does it: one TUN device carries both families
//! (our IPv6 subnet's network address /128 and the IPv6 network's route beside the
//! IPv4 ones), a second socket listens on `[PublicIPv6]:ListenPortV6` (51821) beside
//! `PublicIP:ListenPort`, and `Mode` decides the sessions ([`peers`]): `separate` (the
//! default) one per family -- what flannel's two kernel devices `flannel-wg` and
//! `flannel-wg-v6` hold -- the IPv6 one over the IPv6 underlay; `auto`, `ipv4` and
//! `ipv6` one per peer for both families, to the endpoint the mode picks. The lease
//! carries flannel's `BackendData` `{"PublicKey":"…","Port":51820}` and
//! `BackendV6Data` `{"PublicKey":"…","Port":51821}`, one key for both (flannel reads one
//! key file for both devices). flannel's single device listens on `ListenPort` only and
//! still advertises `ListenPortV6` in `BackendV6Data`, so its `ipv6` and `auto` peers
//! that pick IPv6 send where it does not listen; weft listens where it advertises.
//! `Mode: ipv6` without `EnableIPv6` is a config error (there is no IPv6 endpoint).

mod batched;
mod forward;
pub mod key;
mod peers;

use crate::backend::streak::{join_within, Fatal};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use boringtun::noise::rate_limiter::RateLimiter;
use ipnet::{Ipv4Net, Ipv6Net};
use socket2::SockRef;
use weft_core::config::{BackendType, WireguardMode};
use weft_core::forward::{DropReason, DropRegistry, ForwardTable};
use weft_core::lease::{Lease, LeaseKey, RawJson};
use weft_core::router::{RouteChange, Underlay};
use weft_core::wg_key::LeaseData;

use super::peers::{PeerChange, PeerFilter};
use super::udp;
use super::{Backend, BackendSetup, Counter, CounterKind, DeviceStats};
use crate::netlink::Netlink;
use crate::{netns, DatapathError};
use forward::{Counters, Forwarder, Identity, Side, Sockets, WgDrop};
use peers::{PeerMap, PeerSet, PeerSpec, Slot};

/// Handshake initiations accepted per second before cookies are asked for.
const HANDSHAKES_PER_SECOND: u64 = 100;

/// The wireguard backend. The key is read (or made) when it is created, since the lease
/// it writes carries the public key; the TUN device and socket come with the first
/// lease.
pub struct WireguardBackend {
    netns: Option<PathBuf>,
    netlink: Netlink,
    tun_name: String,
    mtu: u32,
    /// The IPv4 network; none on an IPv6-only network (Mode `separate`: IPv6 sessions
    /// over the IPv6 socket alone).
    network: Option<Ipv4Net>,
    /// The IPv6 network, with `EnableIPv6`.
    network6: Option<Ipv6Net>,
    public_ip: std::net::Ipv4Addr,
    /// Our public IPv6 address, with `EnableIPv6`: the IPv6 socket binds it.
    public_ipv6: Option<Ipv6Addr>,
    port: u16,
    /// `ListenPortV6`.
    port6: u16,
    mode: WireguardMode,
    identity: Arc<Identity>,
    table: Arc<ArcSwap<ForwardTable>>,
    peers: Arc<ArcSwap<PeerMap>>,
    set: PeerSet,
    filter: PeerFilter,
    counters: Arc<Counters>,
    drops: DropRegistry,
    /// Batched syscalls and TUN offloads (the default) or one packet per syscall
    /// (`WEFT_WG_BATCH=0`, for comparison).
    batched: bool,
    running: Option<(LeaseKey, Running)>,
}

impl std::fmt::Debug for WireguardBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireguardBackend")
            .field("tun_name", &self.tun_name)
            .field("port", &self.port)
            .field("public_key", &self.public_key())
            .field("peers", &self.set)
            .finish_non_exhaustive()
    }
}

/// The TUN device, socket and threads of one lease.
struct Running {
    tun_index: u32,
    threads: Vec<JoinHandle<()>>,
    stopping: Arc<AtomicBool>,
    sockets: Vec<Arc<UdpSocket>>,
    /// Why forwarding gave up, once a thread did.
    fatal: Fatal,
}

impl WireguardBackend {
    /// A wireguard backend for `setup`, its key read from (or made in)
    /// `setup.wg_key_file`.
    pub fn new(setup: BackendSetup) -> Result<WireguardBackend, DatapathError> {
        let network = super::ipv4_network(&setup);
        let network6 = super::ipv6_network(&setup);
        if network.is_none() {
            if let Some(why) = super::ipv6_only_refusal(&setup.network) {
                return Err(DatapathError::Unsupported(why));
            }
            if network6.is_none() {
                return Err(DatapathError::Unsupported(
                    "the wireguard backend needs a Network or an IPv6Network".to_string(),
                ));
            }
        }
        let netlink = setup.netlink.clone().ok_or_else(|| {
            DatapathError::Unsupported("the wireguard backend needs netlink".to_string())
        })?;
        let options = setup.network.backend.wireguard.clone().ok_or_else(|| {
            DatapathError::Unsupported("a wireguard config without its options".to_string())
        })?;
        if options.mode == WireguardMode::Ipv6 && network6.is_none() {
            return Err(DatapathError::Unsupported(
                "the wireguard Mode \"ipv6\" reaches every peer at its PublicIPv6, but the \
                 network config does not enable IPv6 (EnableIPv6 with IPv6Network); use Mode \
                 \"separate\" (the default) or \"ipv4\""
                    .to_string(),
            ));
        }
        let public_ipv6 = match network6 {
            Some(_) => Some(setup.public_ipv6.ok_or_else(|| {
                DatapathError::Unsupported(
                    "the network config enables IPv6, but this node has no public IPv6 \
                     address for the wireguard IPv6 socket (--public-ipv6)"
                        .to_string(),
                )
            })?),
            None => None,
        };
        let (secret, public) = key::load_or_create(&setup.wg_key_file)?;
        let rate_limiter = Arc::new(RateLimiter::new(&public, HANDSHAKES_PER_SECOND));
        let keepalive = Some(options.persistent_keepalive).filter(|&s| s > 0);
        // Indices differ across restarts, so that a peer's datagrams for a session we
        // lost in a restart are not taken for a new session's.
        let first_index = rand_core::RngCore::next_u32(&mut rand_core::OsRng);
        let set = PeerSet::new(
            options.mode,
            public_ipv6.map(IpAddr::V6),
            secret.clone(),
            options.psk,
            keepalive,
            rate_limiter.clone(),
            first_index,
        );
        tracing::info!(key_file = %setup.wg_key_file.display(), public_key = %weft_core::wg_key::format(public.as_bytes()), port = options.listen_port, port6 = options.listen_port_v6, mode = options.mode.as_str(), "wireguard key ready");
        Ok(WireguardBackend {
            netns: setup.netns,
            netlink,
            tun_name: setup.device_name,
            mtu: setup.mtu,
            network,
            network6,
            public_ip: setup.public_ip,
            public_ipv6,
            port: options.listen_port,
            port6: options.listen_port_v6,
            mode: options.mode,
            identity: Arc::new(Identity {
                secret,
                public,
                rate_limiter,
            }),
            table: Arc::new(ArcSwap::from_pointee(ForwardTable::default())),
            peers: Arc::new(ArcSwap::from_pointee(PeerMap::default())),
            set,
            filter: PeerFilter::new(BackendType::Wireguard),
            counters: Arc::new(Counters::default()),
            drops: DropRegistry::default(),
            batched: std::env::var("WEFT_WG_BATCH").map_or(true, |v| v != "0"),
            running: None,
        })
    }

    /// Our public key, as `wg pubkey` prints it.
    pub fn public_key(&self) -> String {
        weft_core::wg_key::format(self.identity.public.as_bytes())
    }

    async fn start(
        &self,
        subnet: Option<Ipv4Net>,
        subnet6: Option<Ipv6Net>,
    ) -> Result<Running, DatapathError> {
        let ns = self.netns.as_deref();
        let device = udp::open_tun(ns, &self.tun_name, self.batched)?;
        let bind = SocketAddrV4::new(self.public_ip, self.port);
        // IPv6-only: no IPv4 socket at all, the IPv6 one carries every session.
        let socket4 = match self.network {
            Some(_) => Some(
                netns::in_netns(ns, move || super::udp::bind_socket(bind))?
                    .map_err(|e| DatapathError::io(format!("bind the wireguard port {bind}"), e))?,
            ),
            None => None,
        };
        let socket6 = match self.public_ipv6 {
            Some(ip6) => {
                let bind6 = SocketAddrV6::new(ip6, self.port6, 0, 0);
                let s = netns::in_netns(ns, move || super::udp::bind_socket_v6(bind6))?.map_err(
                    |e| DatapathError::io(format!("bind the wireguard IPv6 port {bind6}"), e),
                )?;
                Some(s)
            }
            None => None,
        };
        let link = self.netlink.require_link(&self.tun_name).await?;
        let v6 = self.network6.zip(subnet6);
        if let Err(e) = udp::program_tun(
            &self.netlink,
            link.index,
            self.mtu,
            self.network.zip(subnet),
            v6,
        )
        .await
        {
            let _ = self.netlink.del_link(link.index).await;
            return Err(e);
        }
        let offloads = self
            .batched
            .then(|| udp::tun_offload::enable(&device, &self.tun_name));
        let side = |socket: UdpSocket| -> Result<Side, DatapathError> {
            let socket = Arc::new(socket);
            let state = if self.batched {
                Some(Arc::new(batched::socket_state(&socket).map_err(|e| {
                    DatapathError::io("set up batched udp i/o", e)
                })?))
            } else {
                None
            };
            Ok(Side { socket, state })
        };
        let sockets = Arc::new(Sockets {
            v4: socket4.map(side).transpose()?,
            v6: socket6.map(side).transpose()?,
        });
        let stopping = Arc::new(AtomicBool::new(false));
        // The IPv4 socket, or IPv6-only the IPv6 one: new() made sure of one.
        let (main_socket, main_v6) = match (&sockets.v4, &sockets.v6) {
            (Some(s), _) => (s.socket.clone(), false),
            (None, Some(s)) => (s.socket.clone(), true),
            (None, None) => {
                return Err(DatapathError::Unsupported(
                    "the wireguard backend has neither an IPv4 nor an IPv6 socket".to_string(),
                ))
            }
        };
        let forwarder = Forwarder {
            tun: Arc::new(device),
            socket: main_socket,
            slot: Slot::for_socket(self.mode, main_v6),
            sockets: sockets.clone(),
            table: self.table.clone(),
            peers: self.peers.clone(),
            identity: self.identity.clone(),
            counters: self.counters.clone(),
            stopping: stopping.clone(),
            fatal: Fatal::default(),
            tun_name: self.tun_name.as_str().into(),
        };
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(|e| DatapathError::io("spawn a forwarding thread", e))
        };
        let icmp_from = udp::IcmpFrom::of(self.network, self.network6);
        let (out, tick) = (forwarder.clone(), forwarder.clone());
        let out_drops = self.drops.register();
        let mut threads = vec![spawn("weft-wg-timers", Box::new(move || tick.timers()))?];
        threads.push(if self.batched {
            spawn(
                "weft-wg-tun-out",
                Box::new(move || out.tun_to_udp_batched(out_drops, icmp_from)),
            )?
        } else {
            spawn(
                "weft-wg-tun-out",
                Box::new(move || out.tun_to_udp(out_drops, icmp_from)),
            )?
        });
        // One receiving thread per socket, each for the sessions of its slot.
        for (v6, side) in [(false, &sockets.v4), (true, &sockets.v6)] {
            let Some(side) = side else { continue };
            let inb = Forwarder {
                socket: side.socket.clone(),
                slot: Slot::for_socket(self.mode, v6),
                ..forwarder.clone()
            };
            let in_drops = self.drops.register();
            let name = if v6 {
                "weft-wg-udp6-in"
            } else {
                "weft-wg-udp-in"
            };
            threads.push(match side.state.clone() {
                Some(state) => spawn(
                    name,
                    Box::new(move || inb.udp_to_tun_batched(&state, in_drops)),
                )?,
                None => spawn(name, Box::new(move || inb.udp_to_tun(in_drops)))?,
            });
        }
        let sockets: Vec<Arc<UdpSocket>> = [&sockets.v4, &sockets.v6]
            .into_iter()
            .flatten()
            .map(|s| s.socket.clone())
            .collect();
        tracing::info!(tun = %self.tun_name, mtu = self.mtu, batched = self.batched, offloads = ?offloads, addr = ?subnet.map(|s| s.network()), route = ?self.network, addr6 = ?subnet6.map(|s| s.network()), route6 = ?self.network6, bind = %bind, port6 = self.public_ipv6.map(|_| self.port6), mode = self.mode.as_str(), "wireguard backend up");
        Ok(Running {
            tun_index: link.index,
            threads,
            stopping,
            sockets,
            fatal: forwarder.fatal.clone(),
        })
    }

    async fn stop_running(&self, running: Running) -> Result<(), DatapathError> {
        running.stopping.store(true, Ordering::Relaxed);
        let deleted = self.netlink.del_link(running.tun_index).await;
        for socket in &running.sockets {
            let _ = SockRef::from(&**socket).shutdown(std::net::Shutdown::Read);
        }
        join_within(running.threads, &self.tun_name).await;
        deleted?;
        tracing::info!(tun = %self.tun_name, "wireguard backend down: TUN device and route removed");
        Ok(())
    }

    fn publish_peers(&mut self) {
        self.peers.store(Arc::new(self.set.publish()));
    }
}

#[async_trait]
impl Backend for WireguardBackend {
    fn kind(&self) -> BackendType {
        BackendType::Wireguard
    }

    fn failure(&self) -> Option<String> {
        self.running.as_ref().and_then(|(_, r)| r.fatal.get())
    }

    fn forward_underlay(&self) -> Underlay {
        if self.network.is_none() {
            // IPv6-only (Mode separate): the IPv6 sessions, via PublicIPv6.
            return Underlay::PerFamily;
        }
        match self.mode {
            // The IPv6 sessions run over IPv6: IPv6 subnets via PublicIPv6.
            WireguardMode::Separate => Underlay::PerFamily,
            // One session per peer, found by its PublicIP, for both families.
            WireguardMode::Auto | WireguardMode::Ipv4 | WireguardMode::Ipv6 => Underlay::Ipv4,
        }
    }

    fn lease_data(&self) -> Option<RawJson> {
        // flannel's newSubnetAttrs writes BackendData only with IPv4 enabled
        // (pkg/backend/wireguard/wireguard.go:84-86).
        self.network?;
        Some(
            LeaseData {
                public_key: self.identity.public.to_bytes(),
                port: Some(self.port),
            }
            .encode(),
        )
    }

    fn lease_v6_data(&self) -> Option<RawJson> {
        // flannel's newSubnetAttrs: BackendV6Data whenever IPv6 is enabled, the same key
        // and ListenPortV6, whatever the mode.
        self.network6?;
        Some(
            LeaseData {
                public_key: self.identity.public.to_bytes(),
                port: Some(self.port6),
            }
            .encode(),
        )
    }

    async fn lease_acquired(&mut self, lease: &Lease) -> Result<(), DatapathError> {
        if self.running.as_ref().is_some_and(|(k, _)| *k == lease.key) {
            return Ok(());
        }
        if let Some((_, old)) = self.running.take() {
            self.stop_running(old).await?;
        }
        if self.network6.is_some() && lease.key.ipv6.is_none() {
            return Err(DatapathError::Unsupported(format!(
                "the network config enables IPv6, but the lease {} has no IPv6 subnet",
                lease.key
            )));
        }
        let subnet6 = lease.key.ipv6.filter(|_| self.network6.is_some());
        if self.network.is_some() && lease.key.ipv4.is_none() {
            return Err(DatapathError::Unsupported(format!(
                "the network config enables IPv4, but the lease {} has no IPv4 subnet",
                lease.key
            )));
        }
        let subnet = lease.key.ipv4.filter(|_| self.network.is_some());
        let running = self.start(subnet, subnet6).await?;
        self.running = Some((lease.key, running));
        Ok(())
    }

    async fn route_changed(&mut self, change: &RouteChange) -> Result<(), DatapathError> {
        match self.filter.classify(change) {
            PeerChange::Up {
                subnet,
                public_ip,
                data,
            } if subnet.addr().is_ipv4() || self.network6.is_some() => {
                match data.as_ref().map(LeaseData::decode) {
                    Some(Ok(d)) => {
                        // A lease without a port (flannel before it wrote one) is on our
                        // port of its family, as flannel reads it.
                        let default = if subnet.addr().is_ipv4() {
                            self.port
                        } else {
                            self.port6
                        };
                        let endpoint = SocketAddr::new(public_ip, d.port.unwrap_or(default));
                        self.set.upsert(
                            subnet,
                            PeerSpec {
                                public_key: d.public_key,
                                public_ip,
                                endpoint,
                            },
                        );
                    }
                    Some(Err(e)) => {
                        tracing::warn!(%subnet, via = %public_ip, error = %e, "a wireguard lease without a usable key: not reachable");
                        self.set.remove(&subnet);
                    }
                    None => {
                        tracing::warn!(%subnet, via = %public_ip, "a wireguard lease without BackendData: not reachable");
                        self.set.remove(&subnet);
                    }
                }
            }
            PeerChange::Up { .. } | PeerChange::Ignore => return Ok(()),
            PeerChange::Down { subnet } => self.set.remove(&subnet),
        }
        self.publish_peers();
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
            ("wg_tx", &c.wg_tx),
            ("wg_rx", &c.wg_rx),
            ("tun_tx", &c.tun_tx),
            ("icmp_tx", &c.icmp_tx),
        ]
        .into_iter()
        .map(|(name, v)| Counter::new(CounterKind::Packets, name, v.load(Relaxed)))
        .collect();
        out.push(Counter::new(
            CounterKind::Total,
            "handshakes_sent",
            c.handshakes.load(Relaxed),
        ));
        out.push(Counter::new(
            CounterKind::Total,
            "errors",
            c.errors.load(Relaxed),
        ));
        out.push(Counter::new(
            CounterKind::Level,
            "peers",
            self.peers.load().peers().count() as u64,
        ));
        let drops = self.drops.total();
        out.extend(
            DropReason::ALL
                .into_iter()
                .map(|r| Counter::new(CounterKind::Dropped, r.as_str(), drops.get(r))),
        );
        out.extend(WgDrop::ALL.into_iter().map(|r| {
            Counter::new(
                CounterKind::Dropped,
                r.as_str(),
                c.dropped[r as usize].load(Relaxed),
            )
        }));
        out
    }

    async fn device(&self) -> Option<DeviceStats> {
        self.running.as_ref()?;
        let link = self.netlink.link(&self.tun_name).await.ok()??;
        Some(DeviceStats {
            name: link.name,
            stats: link.stats?,
        })
    }

    async fn stop(&mut self) -> Result<(), DatapathError> {
        match self.running.take() {
            Some((_, running)) => self.stop_running(running).await,
            None => Ok(()),
        }
    }
}
