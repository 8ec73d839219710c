//! flannel's vxlan backend: a kernel vxlan device, and per remote vxlan lease a
//! permanent neighbour, an FDB entry and a route, all over netlink.
//!
//! The device is named `flannel.<VNI>`, as flannel names it, not `weft.<VNI>`: the
//! kernel allows one vxlan device per VNI and port, so a node moving from flanneld to
//! weft takes over the device flanneld left behind instead of failing to create a second
//! one, and the tools, docs and host configs written for flannel (NetworkManager's and
//! systemd-networkd's unmanaged `flannel.*`, firewall rules, `ip -d link show
//! flannel.1` in runbooks) keep applying. Its MTU is the underlay's (or the config's
//! `MTU`) minus 50, its address our subnet's network address as a /32 (so that no
//! broadcast route appears and host-to-container traffic has an overlay source), its
//! MAC the VTEP MAC derived by [`plan::vtep_mac`], stable across restarts and reboots.
//! It is bound to the underlay interface and its address, `nolearning` unless the config
//! says `Learning`, and carries `GBP` when the config asks for it.
//!
//! For each remote vxlan lease (flannel's `handleSubnetEvents`): the neighbour
//! `subnet.network -> VtepMAC`, the FDB entry `VtepMAC -> PublicIP` and the route
//! `subnet via subnet.network dev flannel.<VNI> onlink`; with `DirectRouting`, a peer on
//! the underlay interface's own network gets `subnet via PublicIP` instead. What is
//! wanted is kept apart from what is programmed, and [`plan::plan`] computes the
//! difference, so a changed MAC or public IP replaces the entries and a gone lease
//! removes them. A clean stop deletes the device (and with it its neighbours, FDB
//! entries and routes) and the direct routes.

pub mod plan;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use async_trait::async_trait;
use ipnet::Ipv4Net;
use weft_core::config::BackendType;
use weft_core::lease::{Lease, RawJson};
use weft_core::router::RouteChange;

use super::peers::{directly_connected, PeerChange, PeerFilter};
use super::{Backend, BackendSetup, Counter, CounterKind, DeviceStats};
use crate::iface::ExternalInterface;
use crate::netlink::{Ipv4Route, Netlink, VxlanDevice};
use crate::DatapathError;
use plan::{Op, Peer};

/// A remote vxlan lease, as its route says.
#[derive(Debug, Clone)]
struct Wanted {
    public_ip: Ipv4Addr,
    data: Option<RawJson>,
}

/// The device of the current lease.
#[derive(Debug, Clone, Copy)]
struct Running {
    subnet: Ipv4Net,
    index: u32,
}

/// See the module docs.
#[derive(Debug)]
pub struct VxlanBackend {
    netlink: Netlink,
    external: ExternalInterface,
    device: VxlanDevice,
    direct_routing: bool,
    running: Option<Running>,
    wanted: BTreeMap<Ipv4Net, Wanted>,
    programmed: BTreeMap<Ipv4Net, Peer>,
    filter: PeerFilter,
    bad_data: u64,
    errors: u64,
}

impl VxlanBackend {
    /// A vxlan backend for `setup`; the device is created with the first lease.
    pub fn new(setup: BackendSetup) -> Result<VxlanBackend, DatapathError> {
        let netlink = setup.netlink.clone().ok_or_else(|| {
            DatapathError::Unsupported("the vxlan backend needs netlink".to_string())
        })?;
        let external = setup.external.clone().ok_or_else(|| {
            DatapathError::Unsupported(
                "the vxlan backend needs the external interface (--iface)".to_string(),
            )
        })?;
        super::ipv4_network(&setup)?;
        let backend = &setup.network.backend;
        let vni = backend.vni.unwrap_or(weft_core::config::DEFAULT_VXLAN_VNI);
        let options = backend.vxlan.unwrap_or_default();
        let device = VxlanDevice {
            name: format!("flannel.{vni}"),
            vni,
            port: backend.port,
            underlay: external.link.index,
            local: external.ip,
            mac: plan::vtep_mac(setup.public_ip, vni),
            mtu: setup.mtu,
            learning: options.learning,
            gbp: options.gbp,
        };
        tracing::info!(
            device = %device.name, vni, port = device.port, mtu = device.mtu,
            vtep_mac = %device.mac, underlay = %external.link.name, local = %device.local,
            gbp = options.gbp, learning = options.learning, direct_routing = options.direct_routing,
            "vxlan backend configured"
        );
        Ok(VxlanBackend {
            netlink,
            external,
            device,
            direct_routing: options.direct_routing,
            running: None,
            wanted: BTreeMap::new(),
            programmed: BTreeMap::new(),
            filter: PeerFilter::new(BackendType::Vxlan),
            bad_data: 0,
            errors: 0,
        })
    }

    /// (Re)creates the device for `subnet`: one left by an earlier run (or by flanneld)
    /// goes first, so that its VNI, port, MAC and addresses are surely ours.
    async fn create_device(&mut self, subnet: Ipv4Net) -> Result<Running, DatapathError> {
        let nl = &self.netlink;
        if let Some(old) = nl.link(&self.device.name).await? {
            tracing::info!(device = %self.device.name, "replacing an existing device of that name");
            nl.del_link(old.index).await?;
        }
        let link = nl.add_vxlan(&self.device).await?;
        let configured = async {
            nl.add_address(link.index, IpAddr::V4(subnet.network()), 32)
                .await?;
            nl.set_up(link.index, None).await?;
            // udev or systemd-networkd may give a new device a MAC of their choosing
            // (flannel issue 1795); the VTEP MAC peers know must win.
            if nl.link_mac(link.index).await? != Some(self.device.mac) {
                tracing::warn!(device = %self.device.name, "the device's MAC was changed behind our back; setting it again");
                nl.set_mac(link.index, self.device.mac).await?;
            }
            Ok::<_, DatapathError>(())
        }
        .await;
        if let Err(e) = configured {
            let _ = nl.del_link(link.index).await;
            return Err(e);
        }
        tracing::info!(device = %self.device.name, addr = %subnet.network(), vtep_mac = %self.device.mac, "vxlan device up");
        Ok(Running {
            subnet,
            index: link.index,
        })
    }

    /// What `subnet` should be programmed as, from its lease (`None`: nothing).
    async fn desired(&mut self, subnet: Ipv4Net) -> Result<Option<Peer>, DatapathError> {
        let Some(w) = self.wanted.get(&subnet) else {
            return Ok(None);
        };
        // Our own lease may be announced as a route before the node knows it is ours
        // (a restart finds it in the first listing); it is never a peer.
        if self.running.is_some_and(|r| r.subnet == subnet) {
            return Ok(None);
        }
        if self.direct_routing {
            let networks = self.netlink.ipv4_networks(self.external.link.index).await?;
            if directly_connected(&networks, w.public_ip) {
                return Ok(Some(Peer::Direct {
                    public_ip: w.public_ip,
                }));
            }
        }
        match plan::peer_mac(w.data.as_ref()) {
            Ok(mac) => Ok(Some(Peer::Encap {
                mac,
                public_ip: w.public_ip,
            })),
            Err(why) => {
                self.bad_data += 1;
                tracing::warn!(%subnet, via = %w.public_ip, bad_total = self.bad_data, "cannot program a vxlan lease: {why}");
                Ok(None)
            }
        }
    }

    /// Brings `subnet`'s entries in line with its lease.
    async fn sync(&mut self, subnet: Ipv4Net) -> Result<(), DatapathError> {
        let Some(running) = self.running else {
            return Ok(());
        };
        let new = self.desired(subnet).await?;
        let old = self.programmed.get(&subnet).copied();
        let shared = match old {
            Some(Peer::Encap { mac, public_ip }) => self
                .programmed
                .iter()
                .any(|(s, p)| *s != subnet && *p == Peer::Encap { mac, public_ip }),
            _ => false,
        };
        let ops = plan::plan(old, new, shared);
        if ops.is_empty() {
            return Ok(());
        }
        // Until every operation succeeded, nothing is known to be programmed.
        self.programmed.remove(&subnet);
        for op in ops {
            if let Err(e) = self.apply(running.index, subnet, old, op).await {
                self.errors += 1;
                return Err(e);
            }
        }
        match new {
            Some(peer) => {
                tracing::info!(%subnet, peer = ?peer, "vxlan peer programmed");
                self.programmed.insert(subnet, peer);
            }
            None => tracing::info!(%subnet, "vxlan peer removed"),
        }
        Ok(())
    }

    /// Performs one operation of the plan from `old`.
    async fn apply(
        &self,
        dev: u32,
        subnet: Ipv4Net,
        old: Option<Peer>,
        op: Op,
    ) -> Result<(), DatapathError> {
        let nl = &self.netlink;
        let gw = subnet.network();
        let underlay = self.external.link.index;
        match op {
            Op::DelRoute => match old {
                Some(peer) => {
                    nl.del_ipv4_route(&route_for(subnet, peer, dev, underlay))
                        .await
                }
                None => Ok(()),
            },
            Op::DelNeighbour => nl.del_neighbour(dev, gw).await,
            Op::DelFdb(mac, ip) => nl.del_fdb(dev, mac, ip).await,
            Op::SetNeighbour(mac) => nl.replace_neighbour(dev, gw, mac).await,
            Op::SetFdb(mac, ip) => nl.replace_fdb(dev, mac, ip).await,
            Op::SetRoute(peer) => {
                nl.replace_ipv4_route(&route_for(subnet, peer, dev, underlay))
                    .await
            }
        }
    }
}

/// The kernel route for `subnet` reached as `peer`.
fn route_for(subnet: Ipv4Net, peer: Peer, vxlan: u32, underlay: u32) -> Ipv4Route {
    match peer {
        Peer::Encap { .. } => Ipv4Route {
            dst: subnet,
            gateway: Some(subnet.network()),
            oif: vxlan,
            onlink: true,
        },
        Peer::Direct { public_ip } => Ipv4Route {
            dst: subnet,
            gateway: Some(public_ip),
            oif: underlay,
            onlink: false,
        },
    }
}

#[async_trait]
impl Backend for VxlanBackend {
    fn kind(&self) -> BackendType {
        BackendType::Vxlan
    }

    fn lease_data(&self) -> Option<RawJson> {
        Some(plan::lease_data(self.device.vni, self.device.mac))
    }

    async fn lease_acquired(&mut self, lease: &Lease) -> Result<(), DatapathError> {
        if self.running.is_some_and(|r| r.subnet == lease.key.ipv4) {
            return Ok(());
        }
        self.running = Some(self.create_device(lease.key.ipv4).await?);
        // Entries on the old device went with it; direct routes stay and are replaced.
        self.programmed
            .retain(|_, p| matches!(p, Peer::Direct { .. }));
        // A peer that cannot be programmed is no reason to stop the node: it is
        // logged and counted, and tried again at its next change.
        let subnets: Vec<Ipv4Net> = self.wanted.keys().copied().collect();
        for subnet in subnets {
            if let Err(e) = self.sync(subnet).await {
                tracing::warn!(%subnet, error = %e, "cannot program a vxlan peer");
            }
        }
        Ok(())
    }

    async fn route_changed(&mut self, change: &RouteChange) -> Result<(), DatapathError> {
        let subnet = match self.filter.classify(change) {
            PeerChange::Up {
                subnet,
                public_ip,
                data,
            } => {
                self.wanted.insert(subnet, Wanted { public_ip, data });
                subnet
            }
            PeerChange::Down { subnet } => {
                self.wanted.remove(&subnet);
                subnet
            }
            PeerChange::Ignore => return Ok(()),
        };
        self.sync(subnet).await
    }

    fn counters(&self) -> Vec<Counter> {
        let direct = self
            .programmed
            .values()
            .filter(|p| matches!(p, Peer::Direct { .. }))
            .count() as u64;
        use CounterKind::{Level, Total};
        [
            (Level, "peers", self.programmed.len() as u64),
            (Level, "peers_direct", direct),
            (Total, "leases_foreign", self.filter.foreign_total),
            (Total, "leases_bad_data", self.bad_data),
            (Total, "errors", self.errors),
        ]
        .into_iter()
        .map(|(kind, name, value)| Counter::new(kind, name, value))
        .collect()
    }

    async fn device(&self) -> Option<DeviceStats> {
        self.running.as_ref()?;
        let link = self.netlink.link(&self.device.name).await.ok()??;
        Some(DeviceStats {
            name: link.name,
            stats: link.stats?,
        })
    }

    async fn stop(&mut self) -> Result<(), DatapathError> {
        let mut result = Ok(());
        for (subnet, peer) in std::mem::take(&mut self.programmed) {
            if let Peer::Direct { public_ip } = peer {
                let route = route_for(
                    subnet,
                    Peer::Direct { public_ip },
                    0,
                    self.external.link.index,
                );
                if let Err(e) = self.netlink.del_ipv4_route(&route).await {
                    result = Err(e);
                }
            }
        }
        if let Some(running) = self.running.take() {
            self.netlink.del_link(running.index).await?;
            tracing::info!(device = %self.device.name, "vxlan backend down: device, neighbours, FDB entries and routes removed");
        }
        result
    }
}
