//! `weft config check` and `weft config set`.

use std::path::Path;

use anyhow::{Context, Result};
use weft_core::config::{BackendType, NetworkConfig};
use weft_core::store::config_key;

use crate::etcd_args::EtcdArgs;

/// The underlay MTU assumed when printing per-backend MTUs.
const TYPICAL_UNDERLAY_MTU: u32 = 1500;

/// Reads and validates a config file, naming the file in any error.
pub fn load(file: &Path) -> Result<(String, NetworkConfig)> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read network config {}", file.display()))?;
    let config = NetworkConfig::parse(&text)
        .with_context(|| format!("invalid network config {}", file.display()))?;
    Ok((text, config))
}

/// A human summary of a valid config: its warnings, range, subnet count, MTU per
/// backend.
pub fn describe(config: &NetworkConfig) -> String {
    let mut out = String::new();
    for warning in &config.warnings {
        out += &format!("warning: {warning}\n");
    }
    for (family, space) in [("IPv4", config.ipv4_space()), ("IPv6", config.ipv6_space())] {
        if let Some(space) = space {
            out += &format!(
                "{family} network {}: subnets /{} from {} to {} ({} subnets)\n",
                space.network(),
                space.subnet_len(),
                space.min(),
                space.max(),
                space.len()
            );
        }
    }
    out += &format!(
        "backend: {}\nMTU on a {TYPICAL_UNDERLAY_MTU}-byte underlay:",
        config.backend.kind.as_str()
    );
    for kind in [
        BackendType::Udp,
        BackendType::Vxlan,
        BackendType::HostGw,
        BackendType::Wireguard,
        BackendType::Ipip,
        BackendType::Alloc,
    ] {
        let mark = if kind == config.backend.kind { "*" } else { "" };
        // The backend's own `MTU` option replaces the underlay's, as in flannel.
        let mtu = if kind == config.backend.kind {
            config.container_mtu(TYPICAL_UNDERLAY_MTU)
        } else {
            TYPICAL_UNDERLAY_MTU - kind.overhead()
        };
        out += &format!(" {}{mark} {mtu}", kind.as_str());
    }
    out.push('\n');
    out += &format!("devices: {}\n", devices(config));
    out
}

/// What the configured backend creates on each node, as `weft daemon` creates it.
fn devices(config: &NetworkConfig) -> String {
    let b = &config.backend;
    let ipv6_only = config.ipv4_space().is_none();
    if let Some(why) = weft_datapath::backend::ipv6_only_refusal(config).filter(|_| ipv6_only) {
        return format!("none: {why}");
    }
    match b.kind {
        BackendType::Vxlan if ipv6_only => {
            let vni = b.vni.unwrap_or(1);
            format!(
                "IPv6 only: one vxlan device flannel-v6.{vni} (VNI {vni}, UDP port {}, nolearning, over the IPv6 underlay; MTU 20 bytes less than IPv4's) with this node's IPv6 subnet address /128, no flannel.{vni}; per peer a neighbour, an FDB entry to its PublicIPv6 and a route",
                b.port
            )
        }
        BackendType::Udp if ipv6_only => format!(
            "IPv6 only: a TUN device (weft0, --tun-name, MTU 20 bytes less) with this node's IPv6 subnet address /128 and the IPv6 network's route, and a UDP socket on [PublicIPv6]:{}; every datagram over the IPv6 underlay to each peer's PublicIPv6 (flannel's udp backend has no IPv6)",
            b.port
        ),
        BackendType::Wireguard if ipv6_only => format!(
            "IPv6 only (Mode separate): a TUN device (weft0, --tun-name) with this node's IPv6 subnet address /128 and the IPv6 network's route, and one UDP socket on [PublicIPv6]:{} speaking WireGuard (userspace); per peer a session to its PublicIPv6 and the port of its BackendV6Data; no IPv4 socket",
            b.wireguard.as_ref().map_or(51821, |w| w.listen_port_v6)
        ),
        BackendType::HostGw if ipv6_only => {
            "IPv6 only: none; per peer a route `IPv6 subnet via its PublicIPv6` on the external interface (peers must share its network)".to_string()
        }
        BackendType::Udp if config.enable_ipv6 => format!(
            "a TUN device (weft0, --tun-name) with this node's subnet address /32 and its IPv6 subnet address /128, and a UDP socket on port {} (IPv4); routes to the network and the IPv6 network through the TUN device; IPv6 inner packets travel over the IPv4 underlay to each peer's PublicIP (flannel's udp backend carries no IPv6)",
            b.port
        ),
        BackendType::Udp => format!(
            "a TUN device (weft0, --tun-name) and a UDP socket on port {}; routes to the network through the TUN device",
            b.port
        ),
        BackendType::Vxlan => {
            let vni = b.vni.unwrap_or(1);
            let direct = if b.vxlan.is_some_and(|v| v.direct_routing) {
                "; peers on the interface's own network get a plain route via their public IP (DirectRouting)"
            } else {
                ""
            };
            let v6 = if config.enable_ipv6 {
                format!("; for IPv6 a second device flannel-v6.{vni} (MTU 20 bytes less) with the IPv6 subnet address /128, and the same per peer")
            } else {
                String::new()
            };
            format!(
                "a vxlan device flannel.{vni} (VNI {vni}, UDP port {}, nolearning) with this node's subnet address /32; per peer a neighbour, an FDB entry and a route{direct}{v6}",
                b.port
            )
        }
        BackendType::HostGw => {
            "none; per peer a route `subnet via its public IP` on the external interface (peers must share its network)".to_string()
        }
        BackendType::Wireguard => {
            let wg = b.wireguard.as_ref();
            let keepalive = match wg.map_or(0, |w| w.persistent_keepalive) {
                0 => "no persistent keepalive".to_string(),
                s => format!("a keepalive every {s} s"),
            };
            let psk = if wg.is_some_and(|w| w.psk.is_some()) {
                "with the PSK"
            } else {
                "no PSK"
            };
            let v6 = match wg.filter(|_| config.enable_ipv6) {
                None => String::new(),
                Some(w) => {
                    let sessions = match w.mode {
                        weft_core::config::WireguardMode::Separate => "a second session per peer for IPv6, to its PublicIPv6 and the port of its BackendV6Data",
                        weft_core::config::WireguardMode::Auto => "one session per peer for both families, to the endpoint flannel's auto mode picks",
                        weft_core::config::WireguardMode::Ipv4 => "one session per peer for both families, to its PublicIP",
                        weft_core::config::WireguardMode::Ipv6 => "one session per peer for both families, to its PublicIPv6 and the port of its BackendV6Data",
                    };
                    format!(
                        "; for IPv6 (Mode {}) the TUN device also gets the IPv6 subnet address /128 and the IPv6 network's route, a second UDP socket on [PublicIPv6]:{}, and {sessions}",
                        w.mode.as_str(),
                        w.listen_port_v6
                    )
                }
            };
            format!(
                "a TUN device (weft0, --tun-name) and a UDP socket on port {} speaking WireGuard (userspace); the private key in /run/flannel/wgkey (WIREGUARD_KEY_FILE), made on first start; per peer a WireGuard session to its public IP and the port its lease gives, {keepalive}, {psk}; routes to the network through the TUN device{v6}",
                b.port
            )
        }
        BackendType::Ipip => {
            let direct = if b.ipip.is_some_and(|o| o.direct_routing) {
                "; peers on the interface's own network get a plain route via their public IP on it instead (DirectRouting)"
            } else {
                ""
            };
            format!(
                "an ipip device flannel.ipip (IP protocol 4, local the external interface's address) with this node's subnet address /32 -- or, where the kernel has no IPIP, a TUN device flannel.ipip and a raw IPIP socket, the same packets on the wire (userspace); per peer a route `subnet via its public IP dev flannel.ipip onlink`{direct}; IPv4 only"
            )
        }
        BackendType::Alloc => "none (leases only)".to_string(),
    }
}

/// `weft config check FILE`.
pub fn check(file: &Path) -> Result<()> {
    let (_, config) = load(file)?;
    print!("{}: valid\n{}", file.display(), describe(&config));
    Ok(())
}

/// `weft config set --store URL FILE`.
pub async fn set(store_url: &str, prefix: &str, etcd: &EtcdArgs, file: &Path) -> Result<()> {
    let (text, config) = load(file)?;
    // The error names the store URL and the cause itself.
    let store = weft_stores::open_with(store_url, &etcd.store_options()).await?;
    let key = config_key(prefix);
    store
        .put(&key, text.trim().as_bytes())
        .await
        .with_context(|| format!("cannot write {key}"))?;
    print!("wrote {key}\n{}", describe(&config));
    Ok(())
}
