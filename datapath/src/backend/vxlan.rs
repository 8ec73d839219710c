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
//!
//! With IPv6 (`EnableIPv6`), a second device does the same for the IPv6 subnets, as
//! flannel's does: `flannel-v6.<VNI>`, bound to the underlay interface's IPv6 address,
//! its address our IPv6 subnet's network address as a /128, its MAC [`plan::vtep_mac_v6`]
//! (advertised in the lease's `BackendV6Data`), and per remote lease the neighbour, FDB
//! entry (to its `PublicIPv6`) and onlink route of its IPv6 subnet. Its MTU is 20 bytes
//! less than the IPv4 device's: flannel gives both the underlay's minus 50, which an IPv6
//! outer header (40 bytes, not 20) overflows on a full-sized packet; minus 70 fits.
//! IPv6-only (`EnableIPv4: false`) has the second device alone.

pub mod plan;

use std::collections::BTreeMap;
use std::net::IpAddr;

use async_trait::async_trait;
use ipnet::IpNet;
use weft_core::config::BackendType;
use weft_core::lease::{Lease, RawJson};
use weft_core::router::RouteChange;

use super::peers::{directly_connected, PeerChange, PeerFilter};
use super::{Backend, BackendSetup, Counter, CounterKind, DeviceStats};
use crate::iface::ExternalInterface;
use crate::netlink::{GatewayRoute, Netlink, VxlanDevice};
use crate::DatapathError;
use plan::{Op, Peer};

/// What an IPv6 outer header adds over an IPv4 one.
const IPV6_EXTRA_OVERHEAD: u32 = 20;

/// A remote vxlan lease, as its route says.
#[derive(Debug, Clone)]
struct Wanted {
    public_ip: IpAddr,
    data: Option<RawJson>,
}

/// The device of the current lease, for one family.
#[derive(Debug, Clone, Copy)]
struct Running {
    subnet: IpNet,
    index: u32,
}

/// One family's device: what to create, and what runs.
#[derive(Debug, Clone)]
struct Device {
    spec: VxlanDevice,
    running: Option<Running>,
}

/// Which of [`VxlanBackend::devices`] carries a subnet of this family.
fn family(ip: IpAddr) -> usize {
    usize::from(ip.is_ipv6())
}

/// See the module docs.
#[derive(Debug)]
pub struct VxlanBackend {
    netlink: Netlink,
    external: ExternalInterface,
    /// The IPv4 device (`flannel.<VNI>`) and the IPv6 one (`flannel-v6.<VNI>`), each
    /// when its family is enabled.
    devices: [Option<Device>; 2],
    direct_routing: bool,
    wanted: BTreeMap<IpNet, Wanted>,
    programmed: BTreeMap<IpNet, Peer>,
    filter: PeerFilter,
    bad_data: u64,
    errors: u64,
}

impl VxlanBackend {
    /// A vxlan backend for `setup`; the devices are created with the first lease.
    pub fn new(setup: BackendSetup) -> Result<VxlanBackend, DatapathError> {
        let netlink = setup.netlink.clone().ok_or_else(|| {
            DatapathError::Unsupported("the vxlan backend needs netlink".to_string())
        })?;
        let external = setup.external.clone().ok_or_else(|| {
            DatapathError::Unsupported(
                "the vxlan backend needs the external interface (--iface)".to_string(),
            )
        })?;
        let overlay = super::overlay_networks(&setup)?;
        let backend = &setup.network.backend;
        let vni = backend.vni.unwrap_or(weft_core::config::DEFAULT_VXLAN_VNI);
        let options = backend.vxlan.unwrap_or_default();
        let spec = |name: String, local: IpAddr, mac, mtu| VxlanDevice {
            name,
            vni,
            port: backend.port,
            underlay: external.link.index,
            local,
            mac,
            mtu,
            learning: options.learning,
            gbp: options.gbp,
        };
        let v4 = overlay.iter().any(|n| matches!(n, IpNet::V4(_))).then(|| {
            spec(
                format!("flannel.{vni}"),
                IpAddr::V4(external.ip),
                plan::vtep_mac(setup.public_ip, vni),
                setup.mtu,
            )
        });
        let v6 = match overlay.iter().any(|n| matches!(n, IpNet::V6(_))) {
            false => None,
            true => {
                let local = external.ipv6.ok_or_else(|| {
                    DatapathError::Unsupported(format!(
                        "the network config enables IPv6, but {} has no global IPv6 address \
                         for flannel-v6.{vni} to send from",
                        external.link.name
                    ))
                })?;
                let public = setup.public_ipv6.unwrap_or(local);
                Some(spec(
                    format!("flannel-v6.{vni}"),
                    IpAddr::V6(local),
                    plan::vtep_mac_v6(public, vni),
                    setup.mtu.saturating_sub(IPV6_EXTRA_OVERHEAD),
                ))
            }
        };
        for d in v4.iter().chain(&v6) {
            tracing::info!(
                device = %d.name, vni, port = d.port, mtu = d.mtu,
                vtep_mac = %d.mac, underlay = %external.link.name, local = %d.local,
                gbp = options.gbp, learning = options.learning, direct_routing = options.direct_routing,
                "vxlan backend configured"
            );
        }
        let device = |spec| Device {
            spec,
            running: None,
        };
        Ok(VxlanBackend {
            netlink,
            external,
            devices: [v4.map(device), v6.map(device)],
            direct_routing: options.direct_routing,
            wanted: BTreeMap::new(),
            programmed: BTreeMap::new(),
            filter: PeerFilter::new(BackendType::Vxlan),
            bad_data: 0,
            errors: 0,
        })
    }

    /// The running device that carries `subnet`'s family.
    fn running_for(&self, subnet: IpNet) -> Option<Running> {
        self.devices[family(subnet.addr())]
            .as_ref()
            .and_then(|d| d.running)
    }

    /// (Re)creates the device `spec` for `subnet`: one left by an earlier run (or by
    /// flanneld) goes first, so that its VNI, port, MAC and addresses are surely ours.
    async fn create_device(
        nl: &Netlink,
        spec: &VxlanDevice,
        subnet: IpNet,
    ) -> Result<Running, DatapathError> {
        if let Some(old) = nl.link(&spec.name).await? {
            tracing::info!(device = %spec.name, "replacing an existing device of that name");
            nl.del_link(old.index).await?;
        }
        let link = nl.add_vxlan(spec).await?;
        let host = match subnet {
            IpNet::V4(_) => 32,
            IpNet::V6(_) => 128,
        };
        let configured = async {
            nl.add_address(link.index, subnet.network(), host).await?;
            nl.set_up(link.index, None).await?;
            // udev or systemd-networkd may give a new device a MAC of their choosing
            // (flannel issue 1795); the VTEP MAC peers know must win.
            if nl.link_mac(link.index).await? != Some(spec.mac) {
                tracing::warn!(device = %spec.name, "the device's MAC was changed behind our back; setting it again");
                nl.set_mac(link.index, spec.mac).await?;
            }
            Ok::<_, DatapathError>(())
        }
        .await;
        if let Err(e) = configured {
            let _ = nl.del_link(link.index).await;
            return Err(e);
        }
        tracing::info!(device = %spec.name, addr = %subnet.network(), vtep_mac = %spec.mac, "vxlan device up");
        Ok(Running {
            subnet,
            index: link.index,
        })
    }

    /// What `subnet` should be programmed as, from its lease (`None`: nothing).
    async fn desired(&mut self, subnet: IpNet) -> Result<Option<Peer>, DatapathError> {
        let Some(w) = self.wanted.get(&subnet) else {
            return Ok(None);
        };
        // Our own lease may be announced as a route before the node knows it is ours
        // (a restart finds it in the first listing); it is never a peer.
        if self.running_for(subnet).is_some_and(|r| r.subnet == subnet) {
            return Ok(None);
        }
        if self.direct_routing {
            let networks = self
                .netlink
                .networks(self.external.link.index, w.public_ip)
                .await?;
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
    async fn sync(&mut self, subnet: IpNet) -> Result<(), DatapathError> {
        let Some(running) = self.running_for(subnet) else {
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
        subnet: IpNet,
        old: Option<Peer>,
        op: Op,
    ) -> Result<(), DatapathError> {
        let nl = &self.netlink;
        let gw = subnet.network();
        let underlay = self.external.link.index;
        match op {
            Op::DelRoute => match old {
                Some(peer) => {
                    nl.del_gateway_route(&route_for(subnet, peer, dev, underlay))
                        .await
                }
                None => Ok(()),
            },
            Op::DelNeighbour => nl.del_neighbour(dev, gw).await,
            Op::DelFdb(mac, ip) => nl.del_fdb(dev, mac, ip).await,
            Op::SetNeighbour(mac) => nl.replace_neighbour(dev, gw, mac).await,
            Op::SetFdb(mac, ip) => nl.replace_fdb(dev, mac, ip).await,
            Op::SetRoute(peer) => {
                nl.replace_gateway_route(&route_for(subnet, peer, dev, underlay))
                    .await
            }
        }
    }
}

/// The kernel route for `subnet` reached as `peer`.
fn route_for(subnet: IpNet, peer: Peer, vxlan: u32, underlay: u32) -> GatewayRoute {
    match peer {
        Peer::Encap { .. } => GatewayRoute {
            dst: subnet,
            gateway: Some(subnet.network()),
            oif: vxlan,
            onlink: true,
        },
        Peer::Direct { public_ip } => GatewayRoute {
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
        let d = self.devices[0].as_ref()?;
        Some(plan::lease_data(d.spec.vni, d.spec.mac))
    }

    fn lease_v6_data(&self) -> Option<RawJson> {
        let d = self.devices[1].as_ref()?;
        Some(plan::lease_data(d.spec.vni, d.spec.mac))
    }

    async fn lease_acquired(&mut self, lease: &Lease) -> Result<(), DatapathError> {
        let subnets = [lease.key.ipv4_net(), lease.key.ipv6.map(IpNet::V6)];
        for (i, subnet) in subnets.into_iter().enumerate() {
            let Some(device) = self.devices[i].as_ref() else {
                continue;
            };
            let Some(subnet) = subnet else {
                return Err(DatapathError::Unsupported(format!(
                    "{} needs an IPv6 subnet, and the lease {} has none",
                    device.spec.name, lease.key
                )));
            };
            if device.running.is_some_and(|r| r.subnet == subnet) {
                continue;
            }
            let running = Self::create_device(&self.netlink, &device.spec, subnet).await?;
            if let Some(d) = self.devices[i].as_mut() {
                d.running = Some(running);
            }
            // Entries on the old device went with it; direct routes stay and are replaced.
            self.programmed
                .retain(|s, p| family(s.addr()) != i || matches!(p, Peer::Direct { .. }));
            // A peer that cannot be programmed is no reason to stop the node: it is
            // logged and counted, and tried again at its next change.
            let subnets: Vec<IpNet> = self
                .wanted
                .keys()
                .filter(|s| family(s.addr()) == i)
                .copied()
                .collect();
            for subnet in subnets {
                if let Err(e) = self.sync(subnet).await {
                    tracing::warn!(%subnet, error = %e, "cannot program a vxlan peer");
                }
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
        // The IPv4 device when there is one (flannel's `flannel.<VNI>`), else the IPv6 one.
        let d = self
            .devices
            .iter()
            .flatten()
            .find(|d| d.running.is_some())?;
        let link = self.netlink.link(&d.spec.name).await.ok()??;
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
                if let Err(e) = self.netlink.del_gateway_route(&route).await {
                    result = Err(e);
                }
            }
        }
        for d in self.devices.iter_mut().flatten() {
            if let Some(running) = d.running.take() {
                self.netlink.del_link(running.index).await?;
                tracing::info!(device = %d.spec.name, "vxlan device down: its neighbours, FDB entries and routes removed with it");
            }
        }
        result
    }
}
