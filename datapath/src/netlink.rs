//! Links, addresses and routes over netlink, in one network namespace; neighbours, FDB
//! entries ([`Mac`]), vxlan devices ([`VxlanDevice`]) and gateway routes ([`GatewayRoute`]).

mod neigh;
mod routes;

pub use neigh::{BadMac, Mac};
pub use routes::{GatewayRoute, IpipDevice, VxlanDevice};

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use futures::TryStreamExt;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::{netns, DatapathError};

/// One link as the kernel describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// MTU.
    pub mtu: u32,
    /// Its traffic counters, when the kernel gave them.
    pub stats: Option<LinkStats>,
}

/// A link's traffic counters, as `ip -s link` shows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LinkStats {
    /// Packets received.
    pub rx_packets: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets dropped on receive.
    pub rx_dropped: u64,
    /// Packets dropped on send.
    pub tx_dropped: u64,
}

fn link_of(msg: &LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        mtu: 0,
        stats: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Mtu(m) => link.mtu = *m,
            LinkAttribute::Stats64(s) => {
                link.stats = Some(LinkStats {
                    rx_packets: s.rx_packets,
                    tx_packets: s.tx_packets,
                    rx_bytes: s.rx_bytes,
                    tx_bytes: s.tx_bytes,
                    rx_dropped: s.rx_dropped,
                    tx_dropped: s.tx_dropped,
                })
            }
            _ => {}
        }
    }
    link
}

/// A netlink connection bound to the namespace it was opened in.
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: Handle,
}

fn exists(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -libc_eexist())
}

const fn libc_eexist() -> i32 {
    17
}

/// Whether the kernel said the thing to delete is not there (ENOENT, ESRCH).
fn gone(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -2 || m.raw_code() == -3)
}

impl Netlink {
    /// Opens a netlink connection in the namespace at `ns` (`None`: ours). Must be called
    /// within a tokio runtime, which drives the connection.
    pub fn open(ns: Option<&Path>) -> Result<Netlink, DatapathError> {
        let runtime = tokio::runtime::Handle::current();
        let (connection, handle) = netns::in_netns(ns, move || {
            let _guard = runtime.enter();
            rtnetlink::new_connection().map(|(c, h, _)| (c, h))
        })?
        .map_err(|e| DatapathError::io("open a netlink socket", e))?;
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    /// Every link.
    pub async fn links(&self) -> Result<Vec<Link>, DatapathError> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| DatapathError::netlink("list links", e))?;
        Ok(msgs.iter().map(link_of).collect())
    }

    /// The link named `name`, if it exists.
    pub async fn link(&self, name: &str) -> Result<Option<Link>, DatapathError> {
        Ok(self.links().await?.into_iter().find(|l| l.name == name))
    }

    /// The link named `name`, or an error saying it is missing.
    pub async fn require_link(&self, name: &str) -> Result<Link, DatapathError> {
        self.link(name)
            .await?
            .ok_or_else(|| DatapathError::NotFound(format!("no interface named {name}")))
    }

    /// Sets a link's MTU (if given) and brings it up.
    pub async fn set_up(&self, index: u32, mtu: Option<u32>) -> Result<(), DatapathError> {
        let mut msg = LinkUnspec::new_with_index(index).up();
        if let Some(mtu) = mtu {
            msg = msg.mtu(mtu);
        }
        self.handle
            .link()
            .set(msg.build())
            .execute()
            .await
            .map_err(|e| DatapathError::netlink(format!("set link {index} up"), e))
    }

    /// Renames a (down) link.
    pub async fn rename(&self, index: u32, name: &str) -> Result<(), DatapathError> {
        let msg = LinkUnspec::new_with_index(index).name(name.to_string());
        self.handle
            .link()
            .set(msg.build())
            .execute()
            .await
            .map_err(|e| DatapathError::netlink(format!("rename link {index} to {name}"), e))
    }

    /// Deletes a link.
    pub async fn del_link(&self, index: u32) -> Result<(), DatapathError> {
        self.handle
            .link()
            .del(index)
            .execute()
            .await
            .map_err(|e| DatapathError::netlink(format!("delete link {index}"), e))
    }

    /// Adds an address to a link; an address already there is fine.
    pub async fn add_address(
        &self,
        index: u32,
        addr: IpAddr,
        prefix_len: u8,
    ) -> Result<(), DatapathError> {
        match self
            .handle
            .address()
            .add(index, addr, prefix_len)
            .execute()
            .await
        {
            Err(e) if !exists(&e) => Err(DatapathError::netlink(
                format!("add {addr}/{prefix_len} to link {index}"),
                e,
            )),
            _ => Ok(()),
        }
    }

    /// Adds an address without duplicate address detection (`ip addr add … nodad`): an
    /// IPv6 address is usable at once instead of after a second or more of DAD, which
    /// the lab's addresses, unique by construction, never need. An address already
    /// there is fine.
    pub async fn add_address_nodad(
        &self,
        index: u32,
        addr: IpAddr,
        prefix_len: u8,
    ) -> Result<(), DatapathError> {
        use rtnetlink::packet_route::address::{AddressFlags, AddressHeaderFlags};
        let mut request = self.handle.address().add(index, addr, prefix_len);
        let message = request.message_mut();
        message.header.flags |= AddressHeaderFlags::Nodad;
        message
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
        match request.execute().await {
            Err(e) if !exists(&e) => Err(DatapathError::netlink(
                format!("add {addr}/{prefix_len} nodad to link {index}"),
                e,
            )),
            _ => Ok(()),
        }
    }

    /// Every address of a link, each with its prefix length.
    async fn prefixes(&self, index: u32) -> Result<Vec<IpNet>, DatapathError> {
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| DatapathError::netlink("list addresses", e))?;
        Ok(msgs
            .iter()
            .flat_map(|m| {
                m.attributes.iter().filter_map(|a| match a {
                    AddressAttribute::Address(ip) => IpNet::new(*ip, m.header.prefix_len).ok(),
                    _ => None,
                })
            })
            .collect())
    }

    /// The IPv4 addresses of a link, each with its prefix length (`192.0.2.1/24`).
    pub async fn ipv4_prefixes(&self, index: u32) -> Result<Vec<Ipv4Net>, DatapathError> {
        let prefixes = self.prefixes(index).await?;
        Ok(prefixes
            .into_iter()
            .filter_map(|p| match p {
                IpNet::V4(p) => Some(p),
                IpNet::V6(_) => None,
            })
            .collect())
    }

    /// The global IPv6 addresses of a link, each with its prefix length
    /// (`2001:db8::1/64`); link-local ones are left out.
    pub async fn ipv6_prefixes(&self, index: u32) -> Result<Vec<Ipv6Net>, DatapathError> {
        let prefixes = self.prefixes(index).await?;
        Ok(prefixes
            .into_iter()
            .filter_map(|p| match p {
                IpNet::V6(p) if (p.addr().segments()[0] & 0xffc0) != 0xfe80 => Some(p),
                _ => None,
            })
            .collect())
    }

    /// The global IPv6 addresses of a link.
    pub async fn ipv6_addresses(&self, index: u32) -> Result<Vec<Ipv6Addr>, DatapathError> {
        let prefixes = self.ipv6_prefixes(index).await?;
        Ok(prefixes.iter().map(Ipv6Net::addr).collect())
    }

    /// The IPv4 addresses of a link.
    pub async fn ipv4_addresses(&self, index: u32) -> Result<Vec<Ipv4Addr>, DatapathError> {
        let prefixes = self.ipv4_prefixes(index).await?;
        Ok(prefixes.iter().map(Ipv4Net::addr).collect())
    }

    /// Adds (or replaces) the route `dst` out of link `index`, optionally via a gateway.
    pub async fn replace_route(
        &self,
        dst: Ipv4Net,
        index: u32,
        gateway: Option<Ipv4Addr>,
    ) -> Result<(), DatapathError> {
        let mut msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.network(), dst.prefix_len())
            .output_interface(index);
        if let Some(gw) = gateway {
            msg = msg.gateway(gw);
        }
        self.handle
            .route()
            .add(msg.build())
            .replace()
            .execute()
            .await
            .map_err(|e| DatapathError::netlink(format!("add route {dst}"), e))
    }

    /// The IPv4 routes of the main table.
    pub async fn ipv4_routes(&self) -> Result<Vec<RouteMessage>, DatapathError> {
        self.handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(|e| DatapathError::netlink("list routes", e))
    }

    /// The gateway of a main-table route to exactly `dst`, if there is one with a
    /// gateway (`ip route show | grep DST | grep via`, mk-docker-opts.sh's check).
    pub async fn gateway_route(&self, dst: Ipv4Net) -> Result<Option<IpAddr>, DatapathError> {
        use rtnetlink::packet_route::route::RouteAddress;
        let to_dst = |r: &&RouteMessage| {
            r.header.destination_prefix_length == dst.prefix_len()
                && r.attributes.iter().any(|a| {
                    matches!(a, RouteAttribute::Destination(RouteAddress::Inet(d)) if *d == dst.network())
                })
        };
        Ok(self
            .ipv4_routes()
            .await?
            .iter()
            .filter(to_dst)
            .flat_map(|r| r.attributes.iter())
            .find_map(|a| match a {
                RouteAttribute::Gateway(RouteAddress::Inet(gw)) => Some(IpAddr::V4(*gw)),
                _ => None,
            }))
    }

    /// The interface the main table routes `dst` out of: the longest matching prefix,
    /// the default route included (`--iface-can-reach`).
    pub async fn route_link_to(&self, dst: Ipv4Addr) -> Result<Option<u32>, DatapathError> {
        use rtnetlink::packet_route::route::RouteAddress;
        let mut best: Option<(u8, u32)> = None;
        for r in self.ipv4_routes().await? {
            let len = r.header.destination_prefix_length;
            let net = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet(d)) => Some(*d),
                _ => None,
            });
            let covers = match net {
                None => len == 0,
                Some(n) => Ipv4Net::new(n, len).is_ok_and(|n| n.contains(&dst)),
            };
            let oif = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            });
            if let (true, Some(oif)) = (covers, oif) {
                if best.is_none_or(|(l, _)| len > l) {
                    best = Some((len, oif));
                }
            }
        }
        Ok(best.map(|(_, oif)| oif))
    }

    /// The interface index of the IPv4 default route, if there is one.
    pub async fn default_route_link(&self) -> Result<Option<u32>, DatapathError> {
        Ok(self
            .ipv4_routes()
            .await?
            .iter()
            .filter(|r| r.header.destination_prefix_length == 0)
            .flat_map(|r| r.attributes.iter())
            .find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            }))
    }

    /// Creates a bridge and brings it up.
    pub async fn add_bridge(&self, name: &str) -> Result<Link, DatapathError> {
        if self.link(name).await?.is_none() {
            self.handle
                .link()
                .add(LinkBridge::new(name).build())
                .execute()
                .await
                .map_err(|e| DatapathError::netlink(format!("create bridge {name}"), e))?;
        }
        let link = self.require_link(name).await?;
        self.set_up(link.index, None).await?;
        Ok(link)
    }

    /// Creates a veth pair `name` <-> `peer`, moves `peer` into the namespace at
    /// `peer_ns`, and attaches `name` to `bridge` (if given), up.
    pub async fn add_veth_to_netns(
        &self,
        name: &str,
        peer: &str,
        peer_ns: &Path,
        bridge: Option<u32>,
    ) -> Result<Link, DatapathError> {
        self.handle
            .link()
            .add(LinkVeth::new(name, peer).build())
            .execute()
            .await
            .map_err(|e| DatapathError::netlink(format!("create veth {name}"), e))?;
        let ns = std::fs::File::open(peer_ns)
            .map_err(|e| DatapathError::io(format!("open {}", peer_ns.display()), e))?;
        let peer_link = self.require_link(peer).await?;
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(peer_link.index)
                    .setns_by_fd(ns.as_raw_fd())
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| DatapathError::netlink(format!("move {peer} to its namespace"), e))?;
        let link = self.require_link(name).await?;
        if let Some(bridge) = bridge {
            self.handle
                .link()
                .set(
                    LinkUnspec::new_with_index(link.index)
                        .controller(bridge)
                        .build(),
                )
                .execute()
                .await
                .map_err(|e| DatapathError::netlink(format!("attach {name} to its bridge"), e))?;
        }
        self.set_up(link.index, None).await?;
        Ok(link)
    }
}
