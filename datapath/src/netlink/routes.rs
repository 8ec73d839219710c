//! What the kernel backends program beyond links and addresses: a vxlan device, routes
//! via a gateway (optionally `onlink`), and the networks an interface is directly on.

use std::net::Ipv4Addr;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
};
use rtnetlink::{LinkUnspec, LinkVxlan, RouteMessageBuilder};

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
    /// The source address of encapsulated packets.
    pub local: Ipv4Addr,
    /// Its MAC address: the VTEP MAC peers put in their neighbour and FDB entries.
    pub mac: Mac,
    /// Its MTU.
    pub mtu: u32,
    /// Kernel FDB learning (flannel's default: off).
    pub learning: bool,
    /// The Group Based Policy extension.
    pub gbp: bool,
}

/// An IPv4 route of the main table, as far as the backends care.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ipv4Route {
    /// The destination.
    pub dst: Ipv4Net,
    /// The gateway, if any.
    pub gateway: Option<Ipv4Addr>,
    /// The output link.
    pub oif: u32,
    /// Whether the gateway is taken as on the link without a covering route.
    pub onlink: bool,
}

impl Ipv4Route {
    fn message(&self) -> RouteMessage {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(self.dst.network(), self.dst.prefix_len())
            .output_interface(self.oif);
        if let Some(gw) = self.gateway {
            b = b.gateway(gw);
        }
        if self.onlink {
            b = b.onlink();
        }
        b.build()
    }

    fn of(msg: &RouteMessage) -> Option<Ipv4Route> {
        let mut dst = Ipv4Addr::UNSPECIFIED;
        let (mut gateway, mut oif) = (None, None);
        let mut table = u32::from(msg.header.table);
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = *a,
                RouteAttribute::Gateway(RouteAddress::Inet(a)) => gateway = Some(*a),
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::Table(t) => table = *t,
                _ => {}
            }
        }
        if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
            return None;
        }
        Some(Ipv4Route {
            dst: Ipv4Net::new(dst, msg.header.destination_prefix_length).ok()?,
            gateway,
            oif: oif?,
            onlink: msg.header.flags.contains(RouteFlags::Onlink),
        })
    }
}

impl Netlink {
    /// Creates a vxlan device (down, without addresses) and returns it.
    pub async fn add_vxlan(&self, dev: &VxlanDevice) -> Result<Link, DatapathError> {
        let mut msg = LinkVxlan::new(&dev.name, dev.vni)
            .dev(dev.underlay)
            .local(dev.local)
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

    /// The IPv4 routes of the main table that have an output link.
    pub async fn ipv4_main_routes(&self) -> Result<Vec<Ipv4Route>, DatapathError> {
        Ok(self
            .ipv4_routes()
            .await?
            .iter()
            .filter_map(Ipv4Route::of)
            .collect())
    }

    /// Adds `route`, replacing the route to the same destination.
    pub async fn replace_ipv4_route(&self, route: &Ipv4Route) -> Result<(), DatapathError> {
        self.handle
            .route()
            .add(route.message())
            .replace()
            .execute()
            .await
            .map_err(|e| DatapathError::netlink(format!("add route {}", route.dst), e))
    }

    /// Deletes `route`, whoever added it; one already gone is fine.
    pub async fn del_ipv4_route(&self, route: &Ipv4Route) -> Result<(), DatapathError> {
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
