//! The network config: flannel's `net-conf.json`, parsed and validated with flannel's rules.
//!
//! flannel decodes this JSON with Go's `encoding/json` and checks it in
//! `pkg/subnet/config.go`; weft accepts the same documents, derives the same defaults and
//! names the field and the rule when it rejects one. The Go decoder's habits are part of
//! what users rely on, so they are reproduced:
//!
//! - keys match case-insensitively (`"network"` sets `Network`), unknown keys are ignored
//!   (kube-flannel's `EnableNFTables`), and of two members for one field the later wins;
//! - `null` leaves a number, a boolean or `IPv6SubnetMin`/`IPv6SubnetMax` at its default,
//!   but is an invalid `Network` or `SubnetMin` (Go hands it to their parsers);
//! - a `SubnetLen`, `SubnetMin` or `SubnetMax` of zero means "not set", `Network` is
//!   truncated to its prefix (`10.5.1.0/16` is `10.5.0.0/16`), and `0.0.0.0/0` counts as
//!   no network at all;
//! - the backend type matches case-insensitively, and no `Backend` at all means `udp`.
//!
//! Where flannel accepts a config that cannot work (and fails later, or panics), weft
//! rejects it up front; the variants of [`ConfigError`] say where that is the case.

mod decode;
mod error;
mod rules;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde_json::Value;

use crate::subnet::SubnetSpace;
pub use decode::go_object_field;
use decode::{json_error, json_type, Fields, Members};
pub use error::ConfigError;

/// The backends weft implements, as listed in error messages.
const SUPPORTED: &str = "alloc, udp, vxlan, host-gw, wireguard, ipip";

/// Backend types flannel has (or had) that weft does not implement.
const FLANNEL_ONLY_BACKENDS: [&str; 6] = [
    "ipsec",
    "extension",
    "aws-vpc",
    "gce",
    "ali-vpc",
    "tencent-vpc",
];

/// flannel's udp backend port.
pub const DEFAULT_UDP_PORT: u16 = 8285;
/// The kernel's VXLAN port, which flannel gets by leaving `Port` at 0.
pub const DEFAULT_VXLAN_PORT: u16 = 8472;
/// flannel's VXLAN network identifier.
pub const DEFAULT_VXLAN_VNI: u32 = 1;
/// VNIs are 24 bits on the wire.
const MAX_VNI: u32 = (1 << 24) - 1;
/// The smallest vxlan `MTU` that leaves an overlay MTU of 68, IPv4's minimum.
const MIN_VXLAN_MTU: u32 = 68 + 50;
/// flannel's wireguard `ListenPort`.
pub const DEFAULT_WIREGUARD_PORT: u16 = 51820;
/// flannel's wireguard `ListenPortV6`.
pub const DEFAULT_WIREGUARD_PORT_V6: u16 = 51821;
/// The smallest wireguard `MTU` that leaves an overlay MTU of 68, IPv4's minimum.
const MIN_WIREGUARD_MTU: u32 = 68 + 80;
/// The smallest ipip `MTU` that leaves an overlay MTU of 68, IPv4's minimum.
const MIN_IPIP_MTU: u32 = 68 + 20;

/// The backends weft knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BackendType {
    /// Allocation only, no datapath.
    Alloc,
    /// flannel's udp backend: TUN + UDP encapsulation.
    Udp,
    /// Kernel VXLAN.
    Vxlan,
    /// Plain routes via peers' public IPs.
    HostGw,
    /// WireGuard, in userspace over a TUN device (flannel's runs the kernel's).
    Wireguard,
    /// IPv4-in-IPv4 (IP protocol 4): the kernel's ipip device, or weft's own over a
    /// TUN device and a raw socket where the kernel has none. IPv4 only, as in flannel.
    Ipip,
}

impl BackendType {
    /// Every backend weft implements.
    pub const ALL: [BackendType; 6] = [
        BackendType::Alloc,
        BackendType::Udp,
        BackendType::Vxlan,
        BackendType::HostGw,
        BackendType::Wireguard,
        BackendType::Ipip,
    ];

    /// The name used in configs and lease values.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendType::Alloc => "alloc",
            BackendType::Udp => "udp",
            BackendType::Vxlan => "vxlan",
            BackendType::HostGw => "host-gw",
            BackendType::Wireguard => "wireguard",
            BackendType::Ipip => "ipip",
        }
    }

    /// The backend called `name`, matched case-insensitively as flannel does (`"VXLAN"`
    /// is vxlan).
    pub fn from_name(name: &str) -> Option<Self> {
        let name = name.to_lowercase();
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }

    /// The `BackendType` flanneld records in its lease for this backend: none for udp
    /// and alloc, whose `RegisterNetwork` fills in only the public IP, the name for the
    /// others. Matching it keeps a weft lease byte-identical to flanneld's.
    pub fn lease_type(self) -> Option<&'static str> {
        match self {
            BackendType::Alloc | BackendType::Udp => None,
            BackendType::Vxlan
            | BackendType::HostGw
            | BackendType::Wireguard
            | BackendType::Ipip => Some(self.as_str()),
        }
    }

    /// Bytes of encapsulation overhead: the overlay MTU is the underlay MTU minus this.
    pub fn overhead(self) -> u32 {
        match self {
            BackendType::Alloc | BackendType::HostGw => 0,
            BackendType::Udp => 28,
            BackendType::Vxlan => 50,
            // flannel's `overhead`: an IPv6 header (40), UDP (8), the data message's
            // type, index and counter (16) and the tag (16), whatever the family.
            BackendType::Wireguard => 80,
            // The outer IPv4 header, nothing else (flannel's `expectMTU`).
            BackendType::Ipip => 20,
        }
    }
}

impl fmt::Display for BackendType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `Backend` object of the config.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendConfig {
    /// `Type`.
    pub kind: BackendType,
    /// `Port` (udp: default 8285; vxlan: default 8472, which a `Port` of 0 also means;
    /// 0 for the backends without a port).
    pub port: u16,
    /// `VNI` for vxlan (default 1); `None` for the other backends.
    pub vni: Option<u32>,
    /// The other options of the vxlan backend; `None` for the other backends.
    pub vxlan: Option<VxlanOptions>,
    /// The options of the wireguard backend; `None` for the other backends (its
    /// `ListenPort` is also [`BackendConfig::port`]).
    pub wireguard: Option<WireguardOptions>,
    /// The options of the ipip backend; `None` for the other backends.
    pub ipip: Option<IpipOptions>,
    /// The whole object as written, for backend options weft does not interpret here;
    /// an empty object when the config has no `Backend`.
    pub raw: serde_json::Value,
}

/// The vxlan backend's options besides `VNI` and `Port`, as flannel's `VXLANConfig`
/// reads them (`pkg/backend/vxlan/vxlan.go`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VxlanOptions {
    /// `MTU`: the MTU of the packets on the underlay, replacing the external
    /// interface's; the vxlan device gets 50 bytes less, as in flannel. `None`: the
    /// interface's.
    pub mtu: Option<u32>,
    /// `GBP`: VXLAN Group Based Policy extension on the device (every node must agree).
    pub gbp: bool,
    /// `Learning`: the kernel learns FDB entries from received packets (default off:
    /// `nolearning`, every entry comes from a lease).
    pub learning: bool,
    /// `DirectRouting`: peers on the underlay interface's own network get a plain route
    /// via their public IP, without encapsulation.
    pub direct_routing: bool,
}

/// The ipip backend's options. flannel's `RegisterNetwork`
/// (`pkg/backend/ipip/ipip.go`) reads `DirectRouting` only; `MTU` is weft's, read as
/// the vxlan backend's is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IpipOptions {
    /// `MTU`: the MTU of the packets on the underlay, replacing the external
    /// interface's; the tunnel gets 20 bytes less. `None`: the interface's.
    pub mtu: Option<u32>,
    /// `DirectRouting`: peers on the underlay interface's own network get a plain route
    /// via their public IP, without encapsulation.
    pub direct_routing: bool,
}

/// The wireguard backend's options, as flannel's `RegisterNetwork` reads them
/// (`pkg/backend/wireguard/wireguard.go`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireguardOptions {
    /// `ListenPort` (default 51820): the UDP port of the IPv4 device.
    pub listen_port: u16,
    /// `ListenPortV6` (default 51821): the UDP port of the IPv6 device in `separate`
    /// mode.
    pub listen_port_v6: u16,
    /// `PSK`: a preshared key every node shares, base64 of 32 bytes as `wg genpsk`
    /// prints it; `None` for none.
    pub psk: Option<[u8; 32]>,
    /// `PersistentKeepaliveInterval`, in seconds (flannel multiplies the number by a
    /// second); 0 is off, the default.
    pub persistent_keepalive: u16,
    /// `MTU`: the MTU of the packets on the underlay, replacing the external
    /// interface's; the overlay gets 80 bytes less. `None`: the interface's.
    pub mtu: Option<u32>,
    /// `Mode`: `separate` (the default), `auto`, `ipv4` or `ipv6`.
    pub mode: WireguardMode,
}

/// flannel's wireguard `Mode`: which devices carry which family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WireguardMode {
    /// One device per family, each on its own port (flannel's default).
    #[default]
    Separate,
    /// One device for both families, each peer reached over the family flannel's
    /// `selectMode` picks.
    Auto,
    /// One device, every peer reached over IPv4.
    Ipv4,
    /// One device, every peer reached over IPv6.
    Ipv6,
}

impl WireguardMode {
    /// The name flannel's config uses.
    pub fn as_str(self) -> &'static str {
        match self {
            WireguardMode::Separate => "separate",
            WireguardMode::Auto => "auto",
            WireguardMode::Ipv4 => "ipv4",
            WireguardMode::Ipv6 => "ipv6",
        }
    }
}

/// A validated network config.
///
/// The fields of a disabled address family are empty (`None`, 0, `0.0.0.0`) even when
/// the config wrote them, so that [`NetworkConfig::ipv4_space`] and
/// [`NetworkConfig::ipv6_space`] are `Some` exactly when the family is enabled.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfig {
    /// `EnableIPv4` (default true).
    pub enable_ipv4: bool,
    /// `Network`, truncated to its prefix.
    pub network: Option<Ipv4Net>,
    /// `SubnetLen`, defaulted.
    pub subnet_len: u8,
    /// `SubnetMin`, defaulted to the network's second subnet.
    pub subnet_min: Ipv4Addr,
    /// `SubnetMax`, defaulted to the network's last subnet.
    pub subnet_max: Ipv4Addr,
    /// `EnableIPv6` (default false).
    pub enable_ipv6: bool,
    /// `IPv6Network`, truncated to its prefix.
    pub ipv6_network: Option<Ipv6Net>,
    /// `IPv6SubnetLen`, defaulted.
    pub ipv6_subnet_len: u8,
    /// `IPv6SubnetMin`, defaulted to the network's second subnet.
    pub ipv6_subnet_min: Option<Ipv6Addr>,
    /// `IPv6SubnetMax`, defaulted to the network's last subnet.
    pub ipv6_subnet_max: Option<Ipv6Addr>,
    /// `Backend`.
    pub backend: BackendConfig,
    /// What was accepted but deserves a word: a network written with host bits set.
    /// `weft config check` prints these, the daemon logs them.
    pub warnings: Vec<String>,
}

impl NetworkConfig {
    /// Parses and validates a config JSON text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        if text.trim().is_empty() {
            return Err(ConfigError::Empty);
        }
        let members = match serde_json::from_str::<Value>(text).map_err(json_error)? {
            Value::Object(_) => Members::parse(text)?,
            Value::Null => Members::default(),
            other => {
                return Err(ConfigError::NotAnObject {
                    found: json_type(&other),
                })
            }
        };
        Fields::decode(&members)?.validate()
    }

    /// The allocatable IPv4 subnets, when IPv4 is enabled.
    pub fn ipv4_space(&self) -> Option<SubnetSpace> {
        let network = self.network?;
        SubnetSpace::new(
            IpNet::V4(network),
            self.subnet_len,
            self.subnet_min.into(),
            self.subnet_max.into(),
        )
    }

    /// The allocatable IPv6 subnets, when IPv6 is enabled.
    pub fn ipv6_space(&self) -> Option<SubnetSpace> {
        let network = self.ipv6_network?;
        SubnetSpace::new(
            IpNet::V6(network),
            self.ipv6_subnet_len,
            self.ipv6_subnet_min?.into(),
            self.ipv6_subnet_max?.into(),
        )
    }

    /// The overlay MTU over an underlay of `underlay_mtu` bytes (`FLANNEL_MTU`). The
    /// vxlan, wireguard and ipip backends' `MTU` option stands for the underlay's, as in
    /// flannel.
    pub fn mtu(&self, underlay_mtu: u32) -> u32 {
        let underlay = self
            .backend
            .vxlan
            .and_then(|v| v.mtu)
            .or(self.backend.wireguard.as_ref().and_then(|w| w.mtu))
            .or(self.backend.ipip.and_then(|o| o.mtu))
            .unwrap_or(underlay_mtu);
        underlay.saturating_sub(self.backend.kind.overhead())
    }

    /// The MTU containers get (`FLANNEL_MTU`): [`NetworkConfig::mtu`], less the 20 bytes
    /// an IPv6 header takes beyond an IPv4 one when the network is IPv6 only and its udp
    /// or vxlan backend carries it over the IPv6 underlay (their devices are 20 bytes
    /// smaller there). flannel's vxlan writes the IPv4 figure in that case, which its
    /// IPv6 device cannot carry; wireguard's overhead counts an IPv6 header already.
    pub fn container_mtu(&self, underlay_mtu: u32) -> u32 {
        let ipv6_only = self.ipv4_space().is_none() && self.ipv6_space().is_some();
        let extra = match self.backend.kind {
            BackendType::Udp | BackendType::Vxlan if ipv6_only => 20,
            _ => 0,
        };
        self.mtu(underlay_mtu).saturating_sub(extra)
    }
}
