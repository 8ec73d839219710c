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
//! Only IPv4 for now (`EnableIPv6` is refused, as by the udp backend); `Mode` is read
//! but, with one family, every mode is one device on `ListenPort`.

mod batched;
mod forward;
pub mod key;
mod peers;

use std::net::{IpAddr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use boringtun::noise::rate_limiter::RateLimiter;
use ipnet::{IpNet, Ipv4Net};
use socket2::SockRef;
use weft_core::config::BackendType;
use weft_core::forward::{DropReason, DropRegistry, ForwardTable};
use weft_core::lease::{Lease, LeaseKey, RawJson};
use weft_core::router::RouteChange;
use weft_core::wg_key::LeaseData;

use super::peers::{PeerChange, PeerFilter};
use super::udp;
use super::{Backend, BackendSetup, Counter, CounterKind, DeviceStats};
use crate::netlink::Netlink;
use crate::{netns, DatapathError};
use forward::{Counters, Forwarder, Identity, WgDrop};
use peers::{PeerMap, PeerSet, PeerSpec};

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
    network: Ipv4Net,
    public_ip: std::net::Ipv4Addr,
    port: u16,
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
    socket: Arc<UdpSocket>,
}

impl WireguardBackend {
    /// A wireguard backend for `setup`, its key read from (or made in)
    /// `setup.wg_key_file`.
    pub fn new(setup: BackendSetup) -> Result<WireguardBackend, DatapathError> {
        let network = super::ipv4_network(&setup)?;
        if setup.network.enable_ipv6 {
            return Err(DatapathError::Unsupported(
                "weft's wireguard backend carries IPv4 only for now; EnableIPv6 needs the \
                 vxlan or host-gw backend"
                    .to_string(),
            ));
        }
        let netlink = setup.netlink.clone().ok_or_else(|| {
            DatapathError::Unsupported("the wireguard backend needs netlink".to_string())
        })?;
        let options = setup.network.backend.wireguard.clone().ok_or_else(|| {
            DatapathError::Unsupported("a wireguard config without its options".to_string())
        })?;
        let (secret, public) = key::load_or_create(&setup.wg_key_file)?;
        let rate_limiter = Arc::new(RateLimiter::new(&public, HANDSHAKES_PER_SECOND));
        let keepalive = Some(options.persistent_keepalive).filter(|&s| s > 0);
        // Indices differ across restarts, so that a peer's datagrams for a session we
        // lost in a restart are not taken for a new session's.
        let first_index = rand_core::RngCore::next_u32(&mut rand_core::OsRng);
        let set = PeerSet::new(
            secret.clone(),
            options.psk,
            keepalive,
            rate_limiter.clone(),
            first_index,
        );
        tracing::info!(key_file = %setup.wg_key_file.display(), public_key = %weft_core::wg_key::format(public.as_bytes()), port = options.listen_port, "wireguard key ready");
        Ok(WireguardBackend {
            netns: setup.netns,
            netlink,
            tun_name: setup.device_name,
            mtu: setup.mtu,
            network,
            public_ip: setup.public_ip,
            port: options.listen_port,
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

    async fn start(&self, subnet: Ipv4Net) -> Result<Running, DatapathError> {
        let ns = self.netns.as_deref();
        let device = open_tun(ns, &self.tun_name, self.batched)?;
        let bind = SocketAddrV4::new(self.public_ip, self.port);
        let socket = netns::in_netns(ns, move || super::udp::bind_socket(bind))?
            .map_err(|e| DatapathError::io(format!("bind the wireguard port {bind}"), e))?;
        let link = self.netlink.require_link(&self.tun_name).await?;
        let result = async {
            self.netlink
                .add_address(link.index, IpAddr::V4(subnet.network()), 32)
                .await?;
            self.netlink.set_up(link.index, Some(self.mtu)).await?;
            self.netlink
                .replace_route(self.network, link.index, None)
                .await
        }
        .await;
        if let Err(e) = result {
            let _ = self.netlink.del_link(link.index).await;
            return Err(e);
        }
        let offloads = self
            .batched
            .then(|| udp::tun_offload::enable(&device, &self.tun_name));
        let socket = Arc::new(socket);
        let stopping = Arc::new(AtomicBool::new(false));
        let forwarder = Forwarder {
            tun: Arc::new(device),
            socket: socket.clone(),
            table: self.table.clone(),
            peers: self.peers.clone(),
            identity: self.identity.clone(),
            counters: self.counters.clone(),
            stopping: stopping.clone(),
        };
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(|e| DatapathError::io("spawn a forwarding thread", e))
        };
        let (out, inb, tick) = (forwarder.clone(), forwarder.clone(), forwarder);
        let (out_drops, in_drops) = (self.drops.register(), self.drops.register());
        let icmp_from = self.network.network();
        let timers = spawn("weft-wg-timers", Box::new(move || tick.timers()))?;
        let threads = if self.batched {
            let state = Arc::new(
                batched::socket_state(&socket)
                    .map_err(|e| DatapathError::io("set up batched udp i/o", e))?,
            );
            let state2 = state.clone();
            vec![
                spawn(
                    "weft-wg-tun-out",
                    Box::new(move || out.tun_to_udp_batched(&state2, out_drops, icmp_from)),
                )?,
                spawn(
                    "weft-wg-udp-in",
                    Box::new(move || inb.udp_to_tun_batched(&state, in_drops)),
                )?,
                timers,
            ]
        } else {
            vec![
                spawn(
                    "weft-wg-tun-out",
                    Box::new(move || out.tun_to_udp(out_drops, icmp_from)),
                )?,
                spawn("weft-wg-udp-in", Box::new(move || inb.udp_to_tun(in_drops)))?,
                timers,
            ]
        };
        tracing::info!(tun = %self.tun_name, mtu = self.mtu, batched = self.batched, offloads = ?offloads, addr = %subnet.network(), route = %self.network, bind = %bind, "wireguard backend up");
        Ok(Running {
            tun_index: link.index,
            threads,
            stopping,
            socket,
        })
    }

    async fn stop_running(&self, running: Running) -> Result<(), DatapathError> {
        running.stopping.store(true, Ordering::Relaxed);
        let deleted = self.netlink.del_link(running.tun_index).await;
        let _ = SockRef::from(&*running.socket).shutdown(std::net::Shutdown::Read);
        let threads = running.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
        deleted?;
        tracing::info!(tun = %self.tun_name, "wireguard backend down: TUN device and route removed");
        Ok(())
    }

    fn publish_peers(&mut self) {
        self.peers.store(Arc::new(self.set.publish()));
    }
}

/// Opens the TUN device in the namespace `ns`, as the udp backend does; `vnet_hdr`:
/// every read and write starts with a virtio header (the batched loops, with offloads).
fn open_tun(ns: Option<&Path>, name: &str, vnet_hdr: bool) -> Result<tun::Device, DatapathError> {
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

#[async_trait]
impl Backend for WireguardBackend {
    fn kind(&self) -> BackendType {
        BackendType::Wireguard
    }

    fn lease_data(&self) -> Option<RawJson> {
        Some(
            LeaseData {
                public_key: self.identity.public.to_bytes(),
                port: Some(self.port),
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
        let running = self.start(lease.key.ipv4).await?;
        self.running = Some((lease.key, running));
        Ok(())
    }

    async fn route_changed(&mut self, change: &RouteChange) -> Result<(), DatapathError> {
        match self.filter.classify(change) {
            PeerChange::Up {
                subnet: subnet @ IpNet::V4(_),
                public_ip,
                data,
            } => match data.as_ref().map(LeaseData::decode) {
                Some(Ok(d)) => {
                    let endpoint = SocketAddr::new(public_ip, d.port.unwrap_or(self.port));
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
            },
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
