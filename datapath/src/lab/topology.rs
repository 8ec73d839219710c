//! Building the lab's namespaces and links over netlink: an underlay bridge joining the
//! nodes, and behind each node a `cni0` bridge with its containers, wired as the CNI
//! bridge plugin would wire them (gateway = the subnet's first address on the bridge,
//! one veth per container, a default route via the gateway).

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use weft_datapath::netlink::Netlink;
use weft_datapath::netns;

use super::state::{Container, Lab};

/// The underlay network the nodes' public addresses are on (TEST-NET-1).
pub const UNDERLAY_PREFIX: u8 = 24;

/// A node's public address.
pub fn public_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 10 + i as u8)
}

/// Creates a namespace, recording it in the state file first so that a crash in
/// between still leaves it known to `weft lab down`.
async fn new_namespace(lab: &mut Lab, dir: &Path, short: &str) -> Result<(String, PathBuf)> {
    let name = format!("{}{short}", lab.prefix);
    lab.namespaces.push(name.clone());
    lab.save(dir)?;
    netns::add(&name).await?;
    Ok((name.clone(), netns::path(&name)))
}

async fn lo_up(nl: &Netlink) -> Result<()> {
    let lo = nl.require_link("lo").await?;
    nl.set_up(lo.index, None).await?;
    Ok(())
}

/// The underlay: one namespace holding the bridge every node's veth plugs into.
pub async fn underlay(lab: &mut Lab, dir: &Path) -> Result<(Netlink, u32)> {
    let (_, path) = new_namespace(lab, dir, "underlay").await?;
    let nl = Netlink::open(Some(&path))?;
    lo_up(&nl).await?;
    let bridge = nl.add_bridge("br0").await?;
    Ok((nl, bridge.index))
}

/// Node `short` (the `index`-th, from 1): a namespace with `eth0` on the underlay bridge
/// at `ip`, and IP forwarding on. Returns its namespace path.
pub async fn node(
    lab: &mut Lab,
    dir: &Path,
    underlay: &Netlink,
    bridge: u32,
    (index, short, ip): (usize, &str, Ipv4Addr),
) -> Result<PathBuf> {
    let (_, path) = new_namespace(lab, dir, short).await?;
    let (host_side, peer) = (format!("u{index}"), format!("u{index}-eth0"));
    underlay
        .add_veth_to_netns(&host_side, &peer, &path, Some(bridge))
        .await?;
    let nl = Netlink::open(Some(&path))?;
    lo_up(&nl).await?;
    let eth = nl.require_link(&peer).await?;
    nl.rename(eth.index, "eth0").await?;
    nl.add_address(eth.index, IpAddr::V4(ip), UNDERLAY_PREFIX)
        .await?;
    nl.set_up(eth.index, None).await?;
    netns::in_netns(Some(&path), || {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
    })?
    .context("cannot enable IP forwarding in the node")?;
    Ok(path)
}

/// Container `name` (the node's `j`-th, from 1) of node `node_short`, behind the node's
/// `cni0` bridge, named `{node_short}-{name}`.
pub async fn container(
    lab: &mut Lab,
    dir: &Path,
    (node_short, node_ns): (&str, &Path),
    subnet: Ipv4Net,
    mtu: u32,
    (j, name): (usize, &str),
) -> Result<Container> {
    let short = format!("{node_short}-{name}");
    let (_, path) = new_namespace(lab, dir, &short).await?;
    let node_nl = Netlink::open(Some(node_ns))?;
    let gateway = first_host(subnet, 1);
    let bridge = node_nl.add_bridge("cni0").await?;
    node_nl
        .add_address(bridge.index, IpAddr::V4(gateway), subnet.prefix_len())
        .await?;
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
    let ip = first_host(subnet, 1 + j as u32);
    nl.add_address(eth.index, IpAddr::V4(ip), subnet.prefix_len())
        .await?;
    nl.set_up(eth.index, Some(mtu)).await?;
    nl.replace_route(Ipv4Net::default(), eth.index, Some(gateway))
        .await?;
    Ok(Container {
        name: short,
        ip: Some(ip),
    })
}

fn first_host(subnet: Ipv4Net, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + n)
}

/// Deletes every namespace the lab recorded (in reverse order), which takes their
/// links, TUN devices and routes with them.
pub async fn teardown(lab: &mut Lab, dir: &Path) -> Result<()> {
    while let Some(name) = lab.namespaces.pop() {
        if netns::exists(&name) {
            netns::del(&name)
                .await
                .with_context(|| format!("cannot delete namespace {name}"))?;
        }
        lab.save(dir)?;
    }
    Ok(())
}
