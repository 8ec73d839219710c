//! What the kernel backends program beyond links and addresses: a vxlan device, routes
//! via a gateway (optionally `onlink`), and the networks an interface is directly on,
//! for either IP family.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
};
use rtnetlink::{LinkIpIp, LinkUnspec, LinkVxlan, RouteMessageBuilder};

use super::neigh::Mac;
use super::{gone, Link, Netlink};
use crate::DatapathError;

/// A vxlan device to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanDevice {
    /// Its name (`flannel.1`).
    pub name: String,
    /// The VNI.
    pub vni: u32,
    /// The UDP destination port (8472).
    pub port: u16,
    /// The underlay link it sends through.
    pub underlay: u32,
    /// The source address of encapsulated packets (an IPv6 one for flannel's
    /// `flannel-v6.<VNI>`).
    pub local: IpAddr,
    /// Its MAC address: the VTEP MAC peers put in their neighbour and FDB entries.
    pub mac: Mac,
    /// Its MTU.
    pub mtu: u32,
    /// Kernel FDB learning (flannel's default: off).
    pub learning: bool,
    /// The Group Based Policy extension.
    pub gbp: bool,
}

/// A kernel ipip device to create (flannel's `netlink.Iptun`): any remote, the given
/// local address, bound to no underlay link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpipDevice {
    /// Its name (`flannel.ipip`).
    pub name: String,
    /// The outer source address: the external interface's.
    pub local: Ipv4Addr,
    /// Its MTU.
    pub mtu: u32,
    /// Path MTU discovery on the tunnel (outer DF copied from the inner packet).
    pub pmtudisc: bool,
    /// The outer TTL; 0 inherits the inner packet's.
    pub ttl: u8,
    /// The outer TOS; 0 for none.
    pub tos: u8,
}

/// A route of the main table (IPv4 or IPv6), as far as the backends care.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct GatewayRoute {
    /// The destination.
    pub dst: IpNet,
    /// The gateway, if any, of the destination's family.
    pub gateway: Option<IpAddr>,
    /// The output link.
    pub oif: u32,
    /// Whether the gateway is taken as on the link without a covering route.
    pub onlink: bool,
}

impl GatewayRoute {
    fn message(&self) -> RouteMessage {
        let mut msg = match self.dst {
            IpNet::V4(dst) => {
                let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(dst.network(), dst.prefix_len())
                    .output_interface(self.oif);
                if let Some(IpAddr::V4(gw)) = self.gateway {
                    b = b.gateway(gw);
                }
                b.build()
            }
            IpNet::V6(dst) => {
                let mut b = RouteMessageBuilder::<Ipv6Addr>::new()
                    .destination_prefix(dst.network(), dst.prefix_len())
                    .output_interface(self.oif);
                if let Some(IpAddr::V6(gw)) = self.gateway {
                    b = b.gateway(gw);
                }
                b.build()
            }
        };
        if self.onlink {
            msg.header.flags |= RouteFlags::Onlink;
        }
        msg
    }

    fn of(msg: &RouteMessage) -> Option<GatewayRoute> {
        let (mut dst, mut gateway, mut oif) = (None, None, None);
        let mut table = u32::from(msg.header.table);
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = Some(IpAddr::V4(*a)),
                RouteAttribute::Destination(RouteAddress::Inet6(a)) => dst = Some(IpAddr::V6(*a)),
                RouteAttribute::Gateway(RouteAddress::Inet(a)) => gateway = Some(IpAddr::V4(*a)),
                RouteAttribute::Gateway(RouteAddress::Inet6(a)) => gateway = Some(IpAddr::V6(*a)),
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::Table(t) => table = *t,
                _ => {}
            }
        }
        if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
            return None;
        }
        let dst = dst.unwrap_or(match msg.header.address_family {
            rtnetlink::packet_route::AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        });
        Some(GatewayRoute {
            dst: IpNet::new(dst, msg.header.destination_prefix_length).ok()?,
            gateway,
            oif: oif?,
            onlink: msg.header.flags.contains(RouteFlags::Onlink),
        })
    }
}

impl Netlink {
    /// Creates a vxlan device (down, without addresses) and returns it.
    pub async fn add_vxlan(&self, dev: &VxlanDevice) -> Result<Link, DatapathError> {
        let msg = LinkVxlan::new(&dev.name, dev.vni).dev(dev.underlay);
        let msg = match dev.local {
            IpAddr::V4(a) => msg.local(a),
            IpAddr::V6(a) => msg.local6(a),
        };
        let mut msg = msg
            .port(dev.port)
            .learning(dev.learning)
            .mtu(dev.mtu)
            .address(dev.mac.0.to_vec());
        if dev.gbp {
            msg = msg.gbp();
        }
        self.handle
            .link()
            .add(msg.build())
            .execute()
            .await
            .map_err(|e| {
                DatapathError::netlink(
                    format!(
                        "create vxlan device {} (VNI {}, port {}; another vxlan device with \
                         this VNI and port would clash)",
                        dev.name, dev.vni, dev.port
                    ),
                    e,
                )
            })?;
        self.require_link(&dev.name).await
    }

    /// Creates an ipip device (down, without addresses) and returns it. A kernel
    /// without IPIP support answers `EOPNOTSUPP` ("Unknown device type"), which
    /// [`DatapathError::is_unsupported`] recognises.
    pub async fn add_ipip(&self, dev: &IpipDevice) -> Result<Link, DatapathError> {
        let msg = LinkIpIp::new(&dev.name)
            .local(dev.local)
            .mtu(dev.mtu)
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| DatapathError::netlink(format!("create ipip device {}", dev.name), e))?;
        self.require_link(&dev.name).await
    }

    /// The MAC address of link `index`, if it has one.
    pub async fn link_mac(&self, index: u32) -> Result<Option<Mac>, DatapathError> {
        let msgs: Vec<_> = self
            .handle
            .link()
            .get()
            .match_index(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| DatapathError::netlink(format!("read link {index}"), e))?;
        Ok(msgs
            .iter()
            .flat_map(|m| m.attributes.iter())
            .find_map(|a| match a {
                LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
                _ => None,
            })
            .map(Mac))
    }

    /// Sets the MAC address of link `index`.
    pub async fn set_mac(&self, index: u32, mac: Mac) -> Result<(), DatapathError> {
        let msg = LinkUnspec::new_with_index(index).address(mac.0.to_vec());
        self.handle
            .link()
            .set(msg.build())
            .execute()
            .await
            .map_err(|e| DatapathError::netlink(format!("set the MAC of link {index} to {mac}"), e))
    }

    /// The IPv4 networks link `index` is directly on (its addresses with their prefixes).
    pub async fn ipv4_networks(&self, index: u32) -> Result<Vec<Ipv4Net>, DatapathError> {
        let prefixes = self.ipv4_prefixes(index).await?;
        Ok(prefixes.iter().map(Ipv4Net::trunc).collect())
    }

    /// The global IPv6 networks link `index` is directly on (its addresses with their
    /// prefixes; link-local ones left out, since no peer is reached by them).
    pub async fn ipv6_networks(&self, index: u32) -> Result<Vec<Ipv6Net>, DatapathError> {
        let prefixes = self.ipv6_prefixes(index).await?;
        Ok(prefixes.iter().map(Ipv6Net::trunc).collect())
    }

    /// The networks of `family`'s (that of `like`) link `index` is directly on.
    pub async fn networks(&self, index: u32, like: IpAddr) -> Result<Vec<IpNet>, DatapathError> {
        Ok(match like {
            IpAddr::V4(_) => self
                .ipv4_networks(index)
                .await?
                .into_iter()
                .map(IpNet::V4)
                .collect(),
            IpAddr::V6(_) => self
                .ipv6_networks(index)
                .await?
                .into_iter()
                .map(IpNet::V6)
                .collect(),
        })
    }

    /// The routes of the main table, of both families, that have an output link.
    pub async fn main_routes(&self) -> Result<Vec<GatewayRoute>, DatapathError> {
        let mut routes: Vec<GatewayRoute> = self
            .ipv4_routes()
            .await?
            .iter()
            .filter_map(GatewayRoute::of)
            .collect();
        let v6: Vec<RouteMessage> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv6Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(|e| DatapathError::netlink("list IPv6 routes", e))?;
        routes.extend(v6.iter().filter_map(GatewayRoute::of));
        Ok(routes)
    }

    /// Adds `route`, replacing the route to the same destination.
    pub async fn replace_gateway_route(&self, route: &GatewayRoute) -> Result<(), DatapathError> {
        self.handle
            .route()
            .add(route.message())
            .replace()
            .execute()
            .await
            .map_err(|e| DatapathError::netlink(format!("add route {}", route.dst), e))
    }

    /// Deletes `route`, whoever added it; one already gone is fine.
    pub async fn del_gateway_route(&self, route: &GatewayRoute) -> Result<(), DatapathError> {
        let mut msg = route.message();
        // The kernel deletes only a route of the protocol and scope named, unless
        // these are left unspecified, as `ip route del` does.
        msg.header.protocol = RouteProtocol::Unspec;
        msg.header.scope = RouteScope::NoWhere;
        match self.handle.route().del(msg).execute().await {
            Err(e) if !gone(&e) => Err(DatapathError::netlink(
                format!("delete route {}", route.dst),
                e,
            )),
            _ => Ok(()),
        }
    }
}
