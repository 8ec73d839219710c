//! Building the lab's namespaces and links over netlink: an underlay bridge joining the
//! nodes, and behind each node a `cni0` bridge with its containers, wired as the CNI
//! bridge plugin would wire them (gateway = the subnet's first address on the bridge,
//! one veth per container, a default route via the gateway). A dual-stack lab gives
//! each node an IPv6 underlay address too, and each container an IPv6 address in its
//! node's IPv6 subnet, numbered the same way. The addressing is pure and tested; the
//! building needs root.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::state::{Container, LabState};
use super::LabError;
use crate::netlink::{GatewayRoute, Netlink};
use crate::netns;
use crate::DatapathError;

/// The underlay network the nodes' public addresses are on (TEST-NET-1).
pub const UNDERLAY: Ipv4Net = match Ipv4Net::new(Ipv4Addr::new(192, 0, 2, 0), 24) {
    Ok(net) => net,
    Err(_) => panic!("a /24 is a valid prefix"),
};

/// The underlay's IPv6 network in a dual-stack lab (in the documentation prefix, the
/// IPv6 counterpart of TEST-NET-1).
pub const UNDERLAY6: Ipv6Net =
    match Ipv6Net::new(Ipv6Addr::new(0x2001, 0xdb8, 0, 2, 0, 0, 0, 0), 64) {
        Ok(net) => net,
        Err(_) => panic!("a /64 is a valid prefix"),
    };

/// A node's IPv6 underlay address, beside its IPv4 one `ip`: the same host number in
/// [`UNDERLAY6`] (`192.0.2.11` -> `2001:db8:0:2::b`).
pub fn public_ipv6(ip: Ipv4Addr) -> Ipv6Addr {
    let host = u16::from(ip.octets()[3]);
    let s = UNDERLAY6.network().segments();
    Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, host)
}

/// The most nodes `weft lab up` makes: their addresses stay below the broadcast one.
pub const MAX_NODES: u8 = 200;

/// The public address of `weft lab up`'s `i`-th node (from 1): `192.0.2.(10+i)`.
pub fn public_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 10u8.saturating_add(i.min(MAX_NODES)))
}

/// Whether `ip` can be a node's address on the underlay: inside it, neither its network
/// nor its broadcast address.
pub fn on_underlay(ip: Ipv4Addr) -> bool {
    UNDERLAY.contains(&ip) && ip != UNDERLAY.network() && ip != UNDERLAY.broadcast()
}

/// The `n`-th address of `subnet` (0 is the network address).
fn nth(subnet: Ipv4Net, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()).saturating_add(n))
}

/// The `n`-th address of an IPv6 `subnet`.
fn nth6(subnet: Ipv6Net, n: u32) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(subnet.network()).saturating_add(u128::from(n)))
}

/// The gateway of a node's containers: the first address of its subnet, on `cni0`, as
/// the CNI bridge plugin puts it.
pub fn gateway(subnet: Ipv4Net) -> Ipv4Addr {
    nth(subnet, 1)
}

/// The IPv6 gateway of a node's containers: the first address of its IPv6 subnet.
pub fn gateway6(subnet: Ipv6Net) -> Ipv6Addr {
    nth6(subnet, 1)
}

/// The IPv6 address of a node's `j`-th container (from 1), numbered as the IPv4 one;
/// `None` when the subnet has no room for it.
pub fn container_ipv6(subnet: Ipv6Net, j: usize) -> Option<Ipv6Addr> {
    let n = u32::try_from(j).ok()?.checked_add(1)?;
    let bits = 128 - u32::from(subnet.prefix_len());
    let fits = bits >= 64 || u128::from(n) < (1u128 << bits);
    fits.then(|| nth6(subnet, n))
}

/// The address of a node's `j`-th container (from 1): the gateway's successors; `None`
/// when the subnet has no room for it (the broadcast address is never given out).
pub fn container_ip(subnet: Ipv4Net, j: usize) -> Option<Ipv4Addr> {
    let n = u32::try_from(j).ok()?.checked_add(1)?;
    let size = 1u64 << (32 - u32::from(subnet.prefix_len()));
    (u64::from(n) + 1 < size).then(|| nth(subnet, n))
}

fn netlink(what: impl Into<String>) -> impl FnOnce(DatapathError) -> LabError {
    let what = what.into();
    move |cause| LabError::Build { what, cause }
}

/// Creates a namespace, recording it in the state file first so that a crash in
/// between still leaves it known to `weft lab down`.
async fn new_namespace(
    lab: &mut LabState,
    dir: &Path,
    short: &str,
) -> Result<(String, PathBuf), LabError> {
    let name = format!("{}{short}", lab.prefix);
    lab.namespaces.push(name.clone());
    lab.save(dir)?;
    netns::add(&name)
        .await
        .map_err(netlink(format!("creating namespace {name}")))?;
    Ok((name.clone(), netns::path(&name)))
}

async fn lo_up(nl: &Netlink) -> Result<(), DatapathError> {
    let lo = nl.require_link("lo").await?;
    nl.set_up(lo.index, None).await
}

/// The underlay: one namespace holding the bridge every node's veth plugs into.
pub async fn underlay(lab: &mut LabState, dir: &Path) -> Result<(Netlink, u32), LabError> {
    let (_, path) = new_namespace(lab, dir, "underlay").await?;
    let built = async {
        let nl = Netlink::open(Some(&path))?;
        lo_up(&nl).await?;
        let bridge = nl.add_bridge("br0").await?;
        Ok((nl, bridge.index))
    };
    built.await.map_err(netlink("building the underlay bridge"))
}

/// Node `short` (the `index`-th, from 1): a namespace with `eth0` on the underlay bridge
/// at `ip` (and `ipv6`, in [`UNDERLAY6`]), and IP forwarding on. Returns its namespace
/// path.
pub async fn node(
    lab: &mut LabState,
    dir: &Path,
    underlay: &Netlink,
    bridge: u32,
    (index, short, ip, ipv6): (usize, &str, Ipv4Addr, Option<Ipv6Addr>),
) -> Result<PathBuf, LabError> {
    let (_, path) = new_namespace(lab, dir, short).await?;
    let built = async {
        let (host_side, peer) = (format!("u{index}"), format!("u{index}-eth0"));
        underlay
            .add_veth_to_netns(&host_side, &peer, &path, Some(bridge))
            .await?;
        let nl = Netlink::open(Some(&path))?;
        lo_up(&nl).await?;
        let eth = nl.require_link(&peer).await?;
        nl.rename(eth.index, "eth0").await?;
        nl.add_address(eth.index, IpAddr::V4(ip), UNDERLAY.prefix_len())
            .await?;
        if let Some(ipv6) = ipv6 {
            nl.add_address_nodad(eth.index, IpAddr::V6(ipv6), UNDERLAY6.prefix_len())
                .await?;
        }
        nl.set_up(eth.index, None).await?;
        netns::in_netns(Some(&path), move || {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")?;
            if ipv6.is_some() {
                std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1")?;
            }
            Ok(())
        })?
        .map_err(|e: std::io::Error| DatapathError::Io {
            what: "enabling IP forwarding".into(),
            cause: e,
        })
    };
    built
        .await
        .map_err(netlink(format!("building node {short}")))?;
    Ok(path)
}

/// Container `name` (the node's `j`-th, from 1) of node `node_short`, behind the node's
/// `cni0` bridge, named `{node_short}-{name}`; in `subnet6` too when the node has one.
pub async fn container(
    lab: &mut LabState,
    dir: &Path,
    (node_short, node_ns): (&str, &Path),
    (subnet, subnet6): (Option<Ipv4Net>, Option<Ipv6Net>),
    mtu: u32,
    (j, name): (usize, &str),
) -> Result<Container, LabError> {
    let short = format!("{node_short}-{name}");
    // An IPv6-only lab's containers have no IPv4 address at all.
    let ipv4 = match subnet {
        Some(s) => Some((
            s,
            container_ip(s, j).ok_or_else(|| LabError::NoRoom {
                container: short.clone(),
                subnet: IpNet::V4(s),
            })?,
        )),
        None => None,
    };
    let ipv6 = match subnet6 {
        Some(s) => Some((
            s,
            container_ipv6(s, j).ok_or_else(|| LabError::NoRoom {
                container: short.clone(),
                subnet: IpNet::V6(s),
            })?,
        )),
        None => None,
    };
    let (_, path) = new_namespace(lab, dir, &short).await?;
    let built = async {
        let node_nl = Netlink::open(Some(node_ns))?;
        let bridge = node_nl.add_bridge("cni0").await?;
        if let Some((s, _)) = ipv4 {
            node_nl
                .add_address(bridge.index, IpAddr::V4(gateway(s)), s.prefix_len())
                .await?;
        }
        let host_side = format!("veth{j}");
        let peer = format!("c{j}-eth0");
        node_nl
            .add_veth_to_netns(&host_side, &peer, &path, Some(bridge.index))
            .await?;
        let host = node_nl.require_link(&host_side).await?;
        node_nl.set_up(host.index, Some(mtu)).await?;

        let nl = Netlink::open(Some(&path))?;
        lo_up(&nl).await?;
        let eth = nl.require_link(&peer).await?;
        nl.rename(eth.index, "eth0").await?;
        if let Some((s, ip)) = ipv4 {
            nl.add_address(eth.index, IpAddr::V4(ip), s.prefix_len())
                .await?;
        }
        nl.set_up(eth.index, Some(mtu)).await?;
        if let Some((s, _)) = ipv4 {
            nl.replace_route(Ipv4Net::default(), eth.index, Some(gateway(s)))
                .await?;
        }
        if let Some((s, ip6)) = ipv6 {
            let gateway6 = gateway6(s);
            node_nl
                .add_address_nodad(bridge.index, IpAddr::V6(gateway6), s.prefix_len())
                .await?;
            nl.add_address_nodad(eth.index, IpAddr::V6(ip6), s.prefix_len())
                .await?;
            nl.replace_gateway_route(&GatewayRoute {
                dst: IpNet::V6(Ipv6Net::default()),
                gateway: Some(IpAddr::V6(gateway6)),
                oif: eth.index,
                onlink: false,
            })
            .await?;
        }
        Ok(())
    };
    built
        .await
        .map_err(netlink(format!("building container {short}")))?;
    Ok(Container {
        name: short,
        ip: ipv4.map(|(_, a)| a),
        ipv6: ipv6.map(|(_, a)| a),
    })
}

/// Deletes every namespace the lab recorded (in reverse order), which takes their
/// links, TUN devices and routes with them.
pub async fn teardown(lab: &mut LabState, dir: &Path) -> Result<(), LabError> {
    while let Some(name) = lab.namespaces.pop() {
        if netns::exists(&name) {
            netns::del(&name)
                .await
                .map_err(netlink(format!("deleting namespace {name}")))?;
        }
        lab.save(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> Ipv4Net {
        text.parse().unwrap_or(UNDERLAY)
    }

    #[test]
    fn nodes_sit_on_the_underlay_from_192_0_2_11() {
        assert_eq!(public_ip(1), Ipv4Addr::new(192, 0, 2, 11));
        assert_eq!(public_ip(MAX_NODES), Ipv4Addr::new(192, 0, 2, 210));
        assert!((1..=MAX_NODES).all(|i| on_underlay(public_ip(i))));
        assert!(on_underlay(Ipv4Addr::new(192, 0, 2, 1)));
        for off in [
            [192, 0, 2, 0],
            [192, 0, 2, 255],
            [192, 0, 3, 1],
            [10, 0, 0, 1],
        ] {
            assert!(!on_underlay(Ipv4Addr::from(off)), "{off:?}");
        }
    }

    #[test]
    fn containers_follow_the_gateway_as_the_cni_bridge_plugin_numbers_them() {
        let subnet = net("10.5.34.0/24");
        assert_eq!(gateway(subnet), Ipv4Addr::new(10, 5, 34, 1));
        assert_eq!(container_ip(subnet, 1), Some(Ipv4Addr::new(10, 5, 34, 2)));
        assert_eq!(
            container_ip(subnet, 253),
            Some(Ipv4Addr::new(10, 5, 34, 254))
        );
        assert_eq!(container_ip(subnet, 254), None, "the broadcast address");
    }

    #[test]
    fn a_dual_stack_lab_numbers_ipv6_as_it_numbers_ipv4() {
        assert_eq!(
            public_ipv6(public_ip(1)),
            "2001:db8:0:2::b"
                .parse::<Ipv6Addr>()
                .unwrap_or(Ipv6Addr::UNSPECIFIED)
        );
        assert!(UNDERLAY6.contains(&public_ipv6(public_ip(MAX_NODES))));
        let s: Ipv6Net = "fc00:0:0:3::/64".parse().unwrap_or_default();
        let at = |t: &str| t.parse::<Ipv6Addr>().ok();
        assert_eq!(Some(gateway6(s)), at("fc00:0:0:3::1"));
        assert_eq!(container_ipv6(s, 1), at("fc00:0:0:3::2"));
        let tiny: Ipv6Net = "fc00::10/126".parse().unwrap_or_default();
        assert_eq!(container_ipv6(tiny, 2), at("fc00::13"));
        assert_eq!(container_ipv6(tiny, 3), None);
    }

    #[test]
    fn a_small_subnet_has_room_for_few_containers() {
        // A /28 (scenario 14's size): 16 addresses, the gateway and 13 containers.
        let subnet = net("10.5.0.16/28");
        assert_eq!(container_ip(subnet, 13), Some(Ipv4Addr::new(10, 5, 0, 30)));
        assert_eq!(container_ip(subnet, 14), None);
        let tiny = net("10.5.0.4/30");
        assert_eq!(container_ip(tiny, 1), Some(Ipv4Addr::new(10, 5, 0, 6)));
        assert_eq!(container_ip(tiny, 2), None);
    }
}
