//! What the ipip backend asks of the kernel, computed without one: the device, its
//! address and each peer's route, as flannel's `pkg/backend/ipip/ipip.go` programs
//! them. Kept apart from the netlink calls so that a test without root (and on a
//! kernel without IPIP) can hold the plan against flannel's.

use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};

use crate::netlink::{GatewayRoute, IpipDevice};

/// The device's name, flannel's `tunnelName`: the kernel ipip device, or the TUN device
/// of the userspace path, which plays its role (routes, firewall rules and runbooks
/// written for flannel's `flannel.ipip` keep applying).
pub const DEVICE: &str = "flannel.ipip";

/// The outer IPv4 header the tunnel adds: the overlay MTU is the underlay's minus this.
pub const OVERHEAD: u32 = 20;

/// The kernel device: local address the external interface's (flannel's `Local:
/// be.extIface.IfaceAddr`, so that it is not the namespace's catch-all `tunl0`), any
/// remote, and the overlay MTU. flannel leaves the rest of its `netlink.Iptun` at Go's
/// zero values, which vishvananda/netlink sends as they are (`addIptunAttrs`):
/// `PMtuDisc` 0 (`nopmtudisc`), `Ttl` 0 (inherit), `Tos` 0 -- where the kernel's own
/// default, without the attribute, would be `pmtudisc`.
pub fn device(local: Ipv4Addr, mtu: u32) -> IpipDevice {
    IpipDevice {
        name: DEVICE.to_string(),
        local,
        mtu,
        pmtudisc: false,
        ttl: 0,
        tos: 0,
    }
}

/// The device's address: our subnet's network address as a /32, so that no broadcast
/// route appears and host-to-container traffic has an overlay source (flannel's
/// `EnsureV4AddressOnLink(IP4Net{IP: lease.Subnet.IP, PrefixLen: 32})`).
pub fn address(subnet: Ipv4Net) -> (Ipv4Addr, u8) {
    (subnet.network(), 32)
}

/// How a peer is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Through the tunnel device.
    Tunnel,
    /// `DirectRouting` and the peer on the underlay interface's own network: straight
    /// over the underlay interface, unencapsulated.
    Direct,
}

/// The route to a peer's `subnet`: `subnet via PublicIP dev <tunnel> onlink`, or with
/// [`Via::Direct`] the same gateway on the underlay interface. flannel's `GetRoute`
/// keeps `FLAG_ONLINK` for the direct route too; so do we.
pub fn route(
    subnet: Ipv4Net,
    public_ip: Ipv4Addr,
    via: Via,
    tunnel: u32,
    underlay: u32,
) -> GatewayRoute {
    GatewayRoute {
        dst: IpNet::V4(subnet),
        gateway: Some(public_ip.into()),
        oif: match via {
            Via::Tunnel => tunnel,
            Via::Direct => underlay,
        },
        onlink: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    /// flannel's `configureIPIPDevice`: `netlink.Iptun{Name: "flannel.ipip", Local:
    /// IfaceAddr}`, MTU `Iface.MTU - 20`, the lease's network address /32.
    #[test]
    fn the_device_is_flannels() {
        let d = device(Ipv4Addr::new(192, 0, 2, 1), 1500 - OVERHEAD);
        assert_eq!(
            d,
            IpipDevice {
                name: "flannel.ipip".into(),
                local: Ipv4Addr::new(192, 0, 2, 1),
                mtu: 1480,
                pmtudisc: false,
                ttl: 0,
                tos: 0,
            }
        );
        assert!(d.name.len() < 16, "IFNAMSIZ");
        assert_eq!(
            address(net("10.5.34.0/24")),
            (Ipv4Addr::new(10, 5, 34, 0), 32)
        );
    }

    /// flannel's `GetRoute`: `Dst: lease.Subnet, Gw: lease.PublicIP, LinkIndex: the
    /// tunnel, Flags: FLAG_ONLINK`; with `DirectRouting` and a directly reachable peer,
    /// `LinkIndex: ExtIface.Index`, the rest unchanged.
    #[test]
    fn routes_are_flannels_with_and_without_direct_routing() {
        let (tunnel, underlay) = (7, 2);
        let peer = Ipv4Addr::new(192, 0, 2, 3);
        let s = net("10.5.3.0/24");
        let t = route(s, peer, Via::Tunnel, tunnel, underlay);
        assert_eq!(
            t,
            GatewayRoute {
                dst: IpNet::V4(s),
                gateway: Some(peer.into()),
                oif: tunnel,
                onlink: true
            }
        );
        let d = route(s, peer, Via::Direct, tunnel, underlay);
        assert_eq!(d, GatewayRoute { oif: underlay, ..t });
    }
}
