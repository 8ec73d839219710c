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

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::subnet::SubnetSpace;

/// The backends weft implements, as listed in error messages.
const SUPPORTED: &str = "alloc, udp, vxlan, host-gw";

/// Backend types flannel has (or had) that weft does not implement.
const FLANNEL_ONLY_BACKENDS: [&str; 8] = [
    "ipip",
    "ipsec",
    "wireguard",
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

/// Why a network config was rejected. Each message names the field, the value as written
/// and the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The text is not JSON; serde_json's message gives the line and column.
    #[error("network config is not valid JSON: {0}")]
    Json(String),
    /// The document is JSON but not an object (flannel reads a top-level `null` as `{}`,
    /// and so does weft).
    #[error("network config is invalid: expected a JSON object, found {found}")]
    NotAnObject {
        /// The JSON type found instead.
        found: &'static str,
    },
    /// A field holds the wrong JSON type, e.g. `"SubnetLen": "24"`.
    #[error("{field} {value} is invalid: expected {expected}, found {found}")]
    WrongType {
        /// The field, e.g. `SubnetLen` or `Backend.Port`.
        field: &'static str,
        /// The value as written (shortened when long).
        value: String,
        /// What the field takes.
        expected: &'static str,
        /// The JSON type found instead.
        found: &'static str,
    },
    /// A field holds the right JSON type but not a usable value: a CIDR or address that
    /// does not parse or is of the other family, a negative or fractional integer.
    /// (flannel panics on an IPv6 `Network` and accepts an IPv4 `IPv6Network`.)
    #[error("{field} {value} is invalid: expected {expected}")]
    InvalidValue {
        /// The field.
        field: &'static str,
        /// The value as written (shortened when long).
        value: String,
        /// What the field takes.
        expected: &'static str,
    },
    /// An integer backend option is out of range: a udp `Port` of 0 (flannel would bind
    /// a random port no peer knows) or above 65535, a `VNI` beyond 24 bits.
    #[error("{field} {value} is invalid: must be between {min} and {max}")]
    OutOfRange {
        /// The field, e.g. `Backend.Port`.
        field: &'static str,
        /// The value as written.
        value: i128,
        /// The smallest accepted value.
        min: u32,
        /// The largest accepted value.
        max: u32,
    },
    /// `EnableIPv4` and `EnableIPv6` are both false. flannel starts anyway and allocates
    /// nothing; weft refuses.
    #[error("EnableIPv4 and EnableIPv6 are both false: at least one must be true")]
    NoAddressFamily,
    /// An address family is enabled but its network is not given.
    #[error("{field} is missing: it is required when {enabled_by} is true")]
    MissingNetwork {
        /// `Network` or `IPv6Network`.
        field: &'static str,
        /// `EnableIPv4` or `EnableIPv6`.
        enabled_by: &'static str,
    },
    /// The network is `0.0.0.0/0` or `::/0`, which flannel cannot tell from "not set"
    /// and rejects as missing.
    #[error("{field} {network} is invalid: flannel treats the whole address space as no network")]
    WholeAddressSpace {
        /// `Network` or `IPv6Network`.
        field: &'static str,
        /// The network as written.
        network: IpNet,
    },
    /// With no subnet length given, the network is too small to hold four subnets of
    /// at least four addresses: the prefix must be at most /28 (IPv6: /124).
    #[error("{field} {network} is invalid: the prefix must be at most /{max_prefix} to hold four subnets")]
    NetworkTooSmall {
        /// `Network` or `IPv6Network`.
        field: &'static str,
        /// The network.
        network: IpNet,
        /// The longest usable prefix.
        max_prefix: u8,
    },
    /// The subnet length leaves a host fewer than four addresses: it must be at most 30
    /// (IPv6: 126).
    #[error("{field} {len} is invalid: must be at most {max}")]
    SubnetLenTooLong {
        /// `SubnetLen` or `IPv6SubnetLen`.
        field: &'static str,
        /// The length as written.
        len: u64,
        /// The longest usable length.
        max: u8,
    },
    /// The network holds fewer than four subnets of this length (the first is never
    /// allocated): the length must be at least the network prefix + 2.
    #[error("{field} {len} is invalid: {network_field} {network} must hold at least four subnets, so it must be at least {min}")]
    TooFewSubnets {
        /// `SubnetLen` or `IPv6SubnetLen`.
        field: &'static str,
        /// The length as written.
        len: u64,
        /// `Network` or `IPv6Network`.
        network_field: &'static str,
        /// The network.
        network: IpNet,
        /// The shortest usable length.
        min: u8,
    },
    /// `SubnetMin` or `SubnetMax` (or the IPv6 ones) lies outside the network.
    #[error("{field} {addr} is invalid: not inside {network_field} {network}")]
    BoundOutsideNetwork {
        /// The bound's field.
        field: &'static str,
        /// The bound.
        addr: IpAddr,
        /// `Network` or `IPv6Network`.
        network_field: &'static str,
        /// The network.
        network: IpNet,
    },
    /// A bound is not the first address of a subnet.
    #[error(
        "{field} {addr} is invalid: not on a /{subnet_len} boundary ({len_field} is {subnet_len})"
    )]
    BoundNotAligned {
        /// The bound's field.
        field: &'static str,
        /// The bound.
        addr: IpAddr,
        /// `SubnetLen` or `IPv6SubnetLen`.
        len_field: &'static str,
        /// The subnet length in effect.
        subnet_len: u8,
    },
    /// The lower bound is above the upper one, leaving nothing to allocate. flannel
    /// accepts this and then finds no free subnet; weft refuses it up front.
    #[error(
        "{min_field} {min} is invalid: above {max_field} {max}, which leaves no subnet to allocate"
    )]
    BoundsReversed {
        /// `SubnetMin` or `IPv6SubnetMin`.
        min_field: &'static str,
        /// The lower bound in effect.
        min: IpAddr,
        /// `SubnetMax` or `IPv6SubnetMax`.
        max_field: &'static str,
        /// The upper bound in effect.
        max: IpAddr,
    },
    /// `Backend` is given (possibly as `null`) without a `Type`.
    #[error("Backend.Type is missing: expected one of {SUPPORTED}")]
    MissingBackendType,
    /// A backend flannel has but weft does not implement, e.g. `wireguard`.
    #[error("Backend.Type {kind:?} is not supported by weft (supported: {SUPPORTED})")]
    UnsupportedBackend {
        /// The type as written.
        kind: String,
    },
    /// A backend type neither weft nor flannel knows.
    #[error("Backend.Type {kind:?} is not a known backend type (supported: {SUPPORTED})")]
    UnknownBackend {
        /// The type as written.
        kind: String,
    },
}

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
}

impl BackendType {
    /// Every backend weft implements.
    pub const ALL: [BackendType; 4] = [
        BackendType::Alloc,
        BackendType::Udp,
        BackendType::Vxlan,
        BackendType::HostGw,
    ];

    /// The name used in configs and lease values.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendType::Alloc => "alloc",
            BackendType::Udp => "udp",
            BackendType::Vxlan => "vxlan",
            BackendType::HostGw => "host-gw",
        }
    }

    /// The backend called `name`, matched case-insensitively as flannel does (`"VXLAN"`
    /// is vxlan).
    pub fn from_name(name: &str) -> Option<Self> {
        let name = name.to_lowercase();
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }

    /// Bytes of encapsulation overhead: the overlay MTU is the underlay MTU minus this.
    pub fn overhead(self) -> u32 {
        match self {
            BackendType::Alloc | BackendType::HostGw => 0,
            BackendType::Udp => 28,
            BackendType::Vxlan => 50,
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
    /// The whole object as written, for backend options weft does not interpret here;
    /// an empty object when the config has no `Backend`.
    pub raw: serde_json::Value,
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
}

impl NetworkConfig {
    /// Parses and validates a config JSON text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
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

    /// The overlay MTU over an underlay of `underlay_mtu` bytes (`FLANNEL_MTU`).
    pub fn mtu(&self, underlay_mtu: u32) -> u32 {
        underlay_mtu.saturating_sub(self.backend.kind.overhead())
    }
}

/// The top-level fields as decoded, before flannel's checks and defaults.
#[derive(Debug)]
struct Fields {
    enable_ipv4: bool,
    enable_ipv6: bool,
    network: Option<Ipv4Net>,
    ipv6_network: Option<Ipv6Net>,
    subnet_len: u64,
    ipv6_subnet_len: u64,
    subnet_min: Option<Ipv4Addr>,
    subnet_max: Option<Ipv4Addr>,
    ipv6_subnet_min: Option<Ipv6Addr>,
    ipv6_subnet_max: Option<Ipv6Addr>,
    backend: Option<Backend>,
}

/// The `Backend` object as decoded, before its type is resolved.
#[derive(Debug)]
struct Backend {
    type_name: String,
    members: Members,
    raw: Value,
}

impl Fields {
    /// Decodes every field flannel's Go struct has, as `json.Unmarshal` would: a field
    /// of the wrong type is an error even when its address family is disabled.
    fn decode(m: &Members) -> Result<Self, ConfigError> {
        Ok(Fields {
            enable_ipv4: m
                .field("EnableIPv4", "EnableIPv4", bool_of)?
                .unwrap_or(true),
            enable_ipv6: m
                .field("EnableIPv6", "EnableIPv6", bool_of)?
                .unwrap_or(false),
            network: m.field("Network", "Network", ipv4_net_of)?,
            ipv6_network: m.field("IPv6Network", "IPv6Network", ipv6_net_of)?,
            subnet_len: m.field("SubnetLen", "SubnetLen", uint_of)?.unwrap_or(0),
            ipv6_subnet_len: m
                .field("IPv6SubnetLen", "IPv6SubnetLen", uint_of)?
                .unwrap_or(0),
            subnet_min: m.field("SubnetMin", "SubnetMin", ipv4_addr_of)?,
            subnet_max: m.field("SubnetMax", "SubnetMax", ipv4_addr_of)?,
            // Go decodes these into pointers, so a later `null` clears an earlier value.
            ipv6_subnet_min: m.pointer_field("IPv6SubnetMin", ipv6_addr_of)?,
            ipv6_subnet_max: m.pointer_field("IPv6SubnetMax", ipv6_addr_of)?,
            backend: m.last("Backend").map(Backend::decode).transpose()?,
        })
    }

    fn validate(self) -> Result<NetworkConfig, ConfigError> {
        if !self.enable_ipv4 && !self.enable_ipv6 {
            return Err(ConfigError::NoAddressFamily);
        }
        let v4 = if self.enable_ipv4 {
            let network = self.network.ok_or(ConfigError::MissingNetwork {
                field: IPV4.network,
                enabled_by: IPV4.enable,
            })?;
            let layout = IPV4.layout(
                IpNet::V4(network),
                self.subnet_len,
                self.subnet_min,
                self.subnet_max,
            )?;
            Some((network, layout))
        } else {
            None
        };
        let v6 = if self.enable_ipv6 {
            let network = self.ipv6_network.ok_or(ConfigError::MissingNetwork {
                field: IPV6.network,
                enabled_by: IPV6.enable,
            })?;
            let layout = IPV6.layout(
                IpNet::V6(network),
                self.ipv6_subnet_len,
                self.ipv6_subnet_min,
                self.ipv6_subnet_max,
            )?;
            Some((network, layout))
        } else {
            None
        };
        Ok(NetworkConfig {
            enable_ipv4: self.enable_ipv4,
            network: v4.map(|(network, _)| network),
            subnet_len: v4.map_or(0, |(_, l)| l.subnet_len),
            subnet_min: v4.map_or(Ipv4Addr::UNSPECIFIED, |(_, l)| l.min),
            subnet_max: v4.map_or(Ipv4Addr::UNSPECIFIED, |(_, l)| l.max),
            enable_ipv6: self.enable_ipv6,
            ipv6_network: v6.map(|(network, _)| network),
            ipv6_subnet_len: v6.map_or(0, |(_, l)| l.subnet_len),
            ipv6_subnet_min: v6.map(|(_, l)| l.min),
            ipv6_subnet_max: v6.map(|(_, l)| l.max),
            backend: Backend::resolve(self.backend)?,
        })
    }
}

impl Backend {
    /// What flannel's `ParseConfig` checks: an object (or `null`) with a string `Type`.
    fn decode(text: &RawValue) -> Result<Self, ConfigError> {
        let raw = value_of(text)?;
        let members = match &raw {
            // From the text: `raw` has lost the members' order and duplicates.
            Value::Object(_) => Members::parse(text.get())?,
            Value::Null => Members::default(),
            other => {
                return Err(wrong_type(
                    "Backend",
                    other,
                    r#"an object such as {"Type": "vxlan"}"#,
                ))
            }
        };
        let type_name = members
            .field("Type", "Backend.Type", string_of)?
            .unwrap_or_default();
        Ok(Backend {
            type_name,
            members,
            raw,
        })
    }

    /// What flannel checks when it starts the backend: the type, then the options
    /// that backend reads.
    fn resolve(backend: Option<Self>) -> Result<BackendConfig, ConfigError> {
        let Some(backend) = backend else {
            return Ok(BackendConfig {
                kind: BackendType::Udp,
                port: DEFAULT_UDP_PORT,
                vni: None,
                raw: Value::Object(serde_json::Map::new()),
            });
        };
        let name = backend.type_name;
        if name.is_empty() {
            return Err(ConfigError::MissingBackendType);
        }
        let Some(kind) = BackendType::from_name(&name) else {
            return Err(
                if FLANNEL_ONLY_BACKENDS.contains(&name.to_lowercase().as_str()) {
                    ConfigError::UnsupportedBackend { kind: name }
                } else {
                    ConfigError::UnknownBackend { kind: name }
                },
            );
        };
        let m = &backend.members;
        let (port, vni) = match kind {
            BackendType::Udp => (port(m, 1, DEFAULT_UDP_PORT)?, None),
            BackendType::Vxlan => {
                for (key, label) in [
                    ("GBP", "Backend.GBP"),
                    ("Learning", "Backend.Learning"),
                    ("DirectRouting", "Backend.DirectRouting"),
                ] {
                    m.field(key, label, bool_of)?;
                }
                let vni = match m.field("VNI", "Backend.VNI", int_of)? {
                    None => DEFAULT_VXLAN_VNI,
                    Some(vni) => in_range("Backend.VNI", vni, 0, MAX_VNI)?,
                };
                // The kernel picks its default port when flannel passes 0.
                (port(m, 0, DEFAULT_VXLAN_PORT)?, Some(vni))
            }
            // flannel's host-gw and alloc read no options.
            BackendType::HostGw | BackendType::Alloc => (0, None),
        };
        Ok(BackendConfig {
            kind,
            port,
            vni,
            raw: backend.raw,
        })
    }
}

/// `Backend.Port`: `default` when absent (or 0 where 0 is allowed), else in `[min, 65535]`.
fn port(m: &Members, min: u32, default: u16) -> Result<u16, ConfigError> {
    match m.field("Port", "Backend.Port", int_of)? {
        None => Ok(default),
        Some(0) if min == 0 => Ok(default),
        Some(p) => {
            let p = in_range("Backend.Port", p, min, u32::from(u16::MAX))?;
            Ok(u16::try_from(p).unwrap_or(default))
        }
    }
}

fn in_range(field: &'static str, value: i128, min: u32, max: u32) -> Result<u32, ConfigError> {
    u32::try_from(value)
        .ok()
        .filter(|v| (min..=max).contains(v))
        .ok_or(ConfigError::OutOfRange {
            field,
            value,
            min,
            max,
        })
}

/// One address family's field names and limits.
#[derive(Debug)]
struct Family {
    enable: &'static str,
    network: &'static str,
    subnet_len: &'static str,
    subnet_min: &'static str,
    subnet_max: &'static str,
    /// The longest network prefix that holds four subnets of four addresses.
    max_network_prefix: u8,
    /// The longest subnet: four addresses.
    max_subnet_len: u8,
    /// The subnet length given to each host when the network is big enough.
    default_subnet_len: u8,
}

const IPV4: Family = Family {
    enable: "EnableIPv4",
    network: "Network",
    subnet_len: "SubnetLen",
    subnet_min: "SubnetMin",
    subnet_max: "SubnetMax",
    max_network_prefix: 28,
    max_subnet_len: 30,
    default_subnet_len: 24,
};

const IPV6: Family = Family {
    enable: "EnableIPv6",
    network: "IPv6Network",
    subnet_len: "IPv6SubnetLen",
    subnet_min: "IPv6SubnetMin",
    subnet_max: "IPv6SubnetMax",
    max_network_prefix: 124,
    max_subnet_len: 126,
    default_subnet_len: 64,
};

/// A family's subnets after flannel's defaults.
#[derive(Debug, Clone, Copy)]
struct Layout<A> {
    subnet_len: u8,
    min: A,
    max: A,
}

/// An address as an integer, so that one implementation of the rules serves both families.
trait FamilyAddr: Copy + Into<IpAddr> {
    fn as_u128(self) -> u128;
    fn from_u128(bits: u128) -> Self;
}

impl FamilyAddr for Ipv4Addr {
    fn as_u128(self) -> u128 {
        u32::from(self).into()
    }
    fn from_u128(bits: u128) -> Self {
        // Callers stay inside an IPv4 network, so the bits fit.
        Ipv4Addr::from(bits as u32)
    }
}

impl FamilyAddr for Ipv6Addr {
    fn as_u128(self) -> u128 {
        self.into()
    }
    fn from_u128(bits: u128) -> Self {
        bits.into()
    }
}

impl Family {
    /// flannel's `CheckNetworkConfig` for one family, in flannel's order. `subnet_len` 0
    /// and absent or all-zero bounds mean "derive it".
    fn layout<A: FamilyAddr>(
        &self,
        network: IpNet,
        subnet_len: u64,
        min: Option<A>,
        max: Option<A>,
    ) -> Result<Layout<A>, ConfigError> {
        let prefix = network.prefix_len();
        if prefix == 0 {
            return Err(ConfigError::WholeAddressSpace {
                field: self.network,
                network,
            });
        }
        let subnet_len = if subnet_len > 0 {
            if subnet_len > u64::from(self.max_subnet_len) {
                return Err(ConfigError::SubnetLenTooLong {
                    field: self.subnet_len,
                    len: subnet_len,
                    max: self.max_subnet_len,
                });
            }
            // The first subnet is never allocated, so two would leave one host.
            if subnet_len < u64::from(prefix) + 2 {
                return Err(ConfigError::TooFewSubnets {
                    field: self.subnet_len,
                    len: subnet_len,
                    network_field: self.network,
                    network,
                    min: prefix + 2,
                });
            }
            u8::try_from(subnet_len).unwrap_or(self.max_subnet_len)
        } else if prefix > self.max_network_prefix {
            return Err(ConfigError::NetworkTooSmall {
                field: self.network,
                network,
                max_prefix: self.max_network_prefix,
            });
        } else {
            self.default_subnet_len.max(prefix + 2)
        };

        let size = 1u128 << (network.max_prefix_len() - subnet_len);
        let first = ip_bits(network.network());
        let last = ip_bits(network.broadcast()) - (size - 1);
        let bound = |field, given: Option<A>, default: u128| match given {
            Some(addr) if addr.as_u128() != 0 => {
                if network.contains(&addr.into()) {
                    Ok(addr)
                } else {
                    Err(ConfigError::BoundOutsideNetwork {
                        field,
                        addr: addr.into(),
                        network_field: self.network,
                        network,
                    })
                }
            }
            // Skip the first subnet: its first address is the network's own.
            _ => Ok(A::from_u128(default)),
        };
        let min = bound(self.subnet_min, min, first + size)?;
        let max = bound(self.subnet_max, max, last)?;
        for (field, addr) in [(self.subnet_min, min), (self.subnet_max, max)] {
            if addr.as_u128() & (size - 1) != 0 {
                return Err(ConfigError::BoundNotAligned {
                    field,
                    addr: addr.into(),
                    len_field: self.subnet_len,
                    subnet_len,
                });
            }
        }
        if min.as_u128() > max.as_u128() {
            return Err(ConfigError::BoundsReversed {
                min_field: self.subnet_min,
                min: min.into(),
                max_field: self.subnet_max,
                max: max.into(),
            });
        }
        Ok(Layout {
            subnet_len,
            min,
            max,
        })
    }
}

fn ip_bits(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => a.as_u128(),
        IpAddr::V6(a) => a.as_u128(),
    }
}

/// A JSON object's members in document order, duplicates kept.
///
/// Go's decoder matches keys case-insensitively and lets each member overwrite what an
/// earlier one set; serde_json's `Map` keeps neither the order nor the duplicates.
#[derive(Debug, Default)]
struct Members(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;
        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Members, M::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(MembersVisitor)
    }
}

impl Members {
    fn parse(text: &str) -> Result<Self, ConfigError> {
        serde_json::from_str(text).map_err(json_error)
    }

    /// The values given for `key`, in order.
    fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a RawValue> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| go_key_matches(k, key))
            .map(|(_, v)| &**v)
    }

    fn last<'a>(&'a self, key: &'a str) -> Option<&'a RawValue> {
        self.all(key).last()
    }

    /// A plain (non-pointer) Go field: every value must decode, and `null` (decoded to
    /// `None`) leaves the field as it was.
    fn field<T>(
        &self,
        key: &str,
        label: &'static str,
        decode: fn(&'static str, &Value) -> Result<Option<T>, ConfigError>,
    ) -> Result<Option<T>, ConfigError> {
        let mut out = None;
        for raw in self.all(key) {
            if let Some(v) = decode(label, &value_of(raw)?)? {
                out = Some(v);
            }
        }
        Ok(out)
    }

    /// A Go pointer field: `null` resets it.
    fn pointer_field<T>(
        &self,
        key: &'static str,
        decode: fn(&'static str, &Value) -> Result<Option<T>, ConfigError>,
    ) -> Result<Option<T>, ConfigError> {
        let mut out = None;
        for raw in self.all(key) {
            out = decode(key, &value_of(raw)?)?;
        }
        Ok(out)
    }
}

/// Go's `encoding/json` key match: equal under Unicode case folding. The field names are
/// ASCII, and the only non-ASCII characters that fold to ASCII letters are `ſ` (to s)
/// and the Kelvin sign (to k).
fn go_key_matches(key: &str, field: &str) -> bool {
    let fold = |c: char| match c {
        '\u{17F}' => 's',
        '\u{212A}' => 'k',
        c => c.to_ascii_lowercase(),
    };
    key.chars().map(fold).eq(field.chars().map(fold))
}

fn json_error(e: serde_json::Error) -> ConfigError {
    ConfigError::Json(e.to_string())
}

fn value_of(raw: &RawValue) -> Result<Value, ConfigError> {
    serde_json::from_str(raw.get()).map_err(json_error)
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The value as written, cut short so that one bad field cannot flood a log line.
fn shown(v: &Value) -> String {
    const LIMIT: usize = 60;
    let text = v.to_string();
    match text.char_indices().nth(LIMIT) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text,
    }
}

fn wrong_type(field: &'static str, v: &Value, expected: &'static str) -> ConfigError {
    ConfigError::WrongType {
        field,
        value: shown(v),
        expected,
        found: json_type(v),
    }
}

fn invalid(field: &'static str, v: &Value, expected: &'static str) -> ConfigError {
    ConfigError::InvalidValue {
        field,
        value: shown(v),
        expected,
    }
}

fn bool_of(field: &'static str, v: &Value) -> Result<Option<bool>, ConfigError> {
    match v {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(*b)),
        other => Err(wrong_type(field, other, "true or false")),
    }
}

fn string_of(field: &'static str, v: &Value) -> Result<Option<String>, ConfigError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        other => Err(wrong_type(field, other, "a string")),
    }
}

/// Go's `uint`.
fn uint_of(field: &'static str, v: &Value) -> Result<Option<u64>, ConfigError> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| invalid(field, v, "a non-negative integer")),
        other => Err(wrong_type(field, other, "a non-negative integer")),
    }
}

/// Go's `int`.
fn int_of(field: &'static str, v: &Value) -> Result<Option<i128>, ConfigError> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_i64()
            .map(i128::from)
            .or(n.as_u64().map(i128::from))
            .map(Some)
            .ok_or_else(|| invalid(field, v, "an integer")),
        other => Err(wrong_type(field, other, "an integer")),
    }
}

const IPV4_CIDR: &str = "an IPv4 CIDR such as \"10.5.0.0/16\"";
const IPV6_CIDR: &str = "an IPv6 CIDR such as \"fc00::/48\"";

/// flannel's `IP4Net`: Go hands it `null` too, which does not parse.
fn ipv4_net_of(field: &'static str, v: &Value) -> Result<Option<Ipv4Net>, ConfigError> {
    let Value::String(s) = v else {
        return Err(wrong_type(field, v, IPV4_CIDR));
    };
    match s.parse::<IpNet>() {
        Ok(IpNet::V4(net)) => Ok(Some(net.trunc())),
        _ => Err(invalid(field, v, IPV4_CIDR)),
    }
}

fn ipv6_net_of(field: &'static str, v: &Value) -> Result<Option<Ipv6Net>, ConfigError> {
    let Value::String(s) = v else {
        return Err(wrong_type(field, v, IPV6_CIDR));
    };
    match s.parse::<IpNet>() {
        Ok(IpNet::V6(net)) => Ok(Some(net.trunc())),
        _ => Err(invalid(field, v, IPV6_CIDR)),
    }
}

/// flannel's `IP4`: Go's `net.ParseIP` then `To4`, so `::ffff:10.5.1.0` is accepted
/// as `10.5.1.0`.
fn ipv4_addr_of(field: &'static str, v: &Value) -> Result<Option<Ipv4Addr>, ConfigError> {
    const EXPECTED: &str = "an IPv4 address such as \"10.5.1.0\"";
    let Value::String(s) = v else {
        return Err(wrong_type(field, v, EXPECTED));
    };
    match s.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => Ok(Some(a)),
        Ok(IpAddr::V6(a)) => a
            .to_ipv4_mapped()
            .map(Some)
            .ok_or_else(|| invalid(field, v, EXPECTED)),
        Err(_) => Err(invalid(field, v, EXPECTED)),
    }
}

/// flannel's `*IP6`: `null` is "not set", and an IPv4 address becomes `::ffff:a.b.c.d`.
fn ipv6_addr_of(field: &'static str, v: &Value) -> Result<Option<Ipv6Addr>, ConfigError> {
    const EXPECTED: &str = "an IPv6 address such as \"fc00:0:0:1::\"";
    match v {
        Value::Null => Ok(None),
        Value::String(s) => match s.parse::<IpAddr>() {
            Ok(IpAddr::V6(a)) => Ok(Some(a)),
            Ok(IpAddr::V4(a)) => Ok(Some(a.to_ipv6_mapped())),
            Err(_) => Err(invalid(field, v, EXPECTED)),
        },
        other => Err(wrong_type(field, other, EXPECTED)),
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use proptest::prelude::*;

    use super::*;

    fn parse(text: &str) -> NetworkConfig {
        NetworkConfig::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    /// Parses `text` expecting a rejection whose message names `field`.
    fn reject(text: &str, field: &str) -> ConfigError {
        let err = NetworkConfig::parse(text).expect_err(text);
        assert!(
            err.to_string().contains(field),
            "{err:?} does not name {field}"
        );
        err
    }

    fn v4(s: &str) -> Ipv4Addr {
        s.parse().expect("IPv4 address")
    }

    fn v6(s: &str) -> Ipv6Addr {
        s.parse().expect("IPv6 address")
    }

    /// The configs of a file under `core/tests/configs/`.
    fn table(text: &str) -> impl Iterator<Item = &str> {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
    }

    fn summary(c: &NetworkConfig) -> String {
        let mut out = String::new();
        for space in [c.ipv4_space(), c.ipv6_space()].into_iter().flatten() {
            let _ = write!(
                out,
                "{} /{} [{} .. {}] ({} subnets); ",
                space.network(),
                space.subnet_len(),
                space.min().addr(),
                space.max().addr(),
                space.len()
            );
        }
        let b = &c.backend;
        let _ = write!(out, "{} port {}", b.kind, b.port);
        if let Some(vni) = b.vni {
            let _ = write!(out, " vni {vni}");
        }
        out
    }

    #[test]
    fn accepts_the_flannel_readme_example() {
        let c = parse(
            r#"{"Network":"10.5.0.0/16","SubnetLen":24,"Backend":{"Type":"udp","Port":8285}}"#,
        );
        assert!(c.enable_ipv4 && !c.enable_ipv6);
        assert_eq!(c.network, Some("10.5.0.0/16".parse().expect("cidr")));
        assert_eq!(c.subnet_len, 24);
        assert_eq!(
            (c.subnet_min, c.subnet_max),
            (v4("10.5.1.0"), v4("10.5.255.0"))
        );
        assert_eq!(
            (c.backend.kind, c.backend.port, c.backend.vni),
            (BackendType::Udp, 8285, None)
        );
        assert_eq!(c.backend.raw["Port"], 8285);
        assert_eq!(c.ipv4_space().map(|s| s.len()), Some(255));
        assert_eq!(c.ipv6_space(), None);
        assert_eq!(c.mtu(1500), 1472);
    }

    #[test]
    fn accepts_kube_flannel_default_and_derives_vxlan_defaults() {
        let c = parse(
            r#"{"Network":"10.244.0.0/16","EnableNFTables":false,"Backend":{"Type":"vxlan"}}"#,
        );
        assert_eq!(c.subnet_len, 24);
        assert_eq!(
            (c.subnet_min, c.subnet_max),
            (v4("10.244.1.0"), v4("10.244.255.0"))
        );
        assert_eq!(c.backend.kind, BackendType::Vxlan);
        assert_eq!(
            (c.backend.port, c.backend.vni),
            (DEFAULT_VXLAN_PORT, Some(1))
        );
        assert_eq!(c.mtu(1500), 1450);
    }

    #[test]
    fn accepts_dual_stack() {
        let c = parse(
            r#"{"Network":"10.42.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"host-gw"}}"#,
        );
        assert!(c.enable_ipv4 && c.enable_ipv6);
        assert_eq!(c.ipv6_network, Some("fc00::/48".parse().expect("cidr")));
        assert_eq!(c.ipv6_subnet_len, 64);
        assert_eq!(c.ipv6_subnet_min, Some(v6("fc00:0:0:1::")));
        assert_eq!(c.ipv6_subnet_max, Some(v6("fc00:0:0:ffff::")));
        assert_eq!(c.ipv6_space().map(|s| s.len()), Some(0xffff));
        assert_eq!((c.backend.port, c.mtu(1500)), (0, 1500));
    }

    #[test]
    fn disabled_family_is_empty_even_when_written() {
        let c = parse(
            r#"{"EnableIPv4":false,"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48"}"#,
        );
        assert_eq!(
            (c.network, c.subnet_len, c.subnet_min),
            (None, 0, Ipv4Addr::UNSPECIFIED)
        );
        assert_eq!(c.ipv4_space(), None);
        let c = parse(r#"{"Network":"10.5.0.0/16","IPv6Network":"fc00::/48","IPv6SubnetLen":200}"#);
        assert_eq!((c.ipv6_network, c.ipv6_subnet_min), (None, None));
    }

    #[test]
    fn no_backend_means_udp_on_8285() {
        let c = parse(r#"{"Network":"10.5.0.0/16"}"#);
        assert_eq!(
            (c.backend.kind, c.backend.port),
            (BackendType::Udp, DEFAULT_UDP_PORT)
        );
        assert_eq!(c.backend.raw, serde_json::json!({}));
    }

    #[test]
    fn subnet_len_defaults_follow_flannel() {
        for (network, len) in [
            ("10.0.0.0/8", 24),
            ("10.5.0.0/22", 24),
            ("10.5.0.0/23", 25),
            ("10.5.0.0/28", 30),
        ] {
            let c = parse(&format!(r#"{{"Network":"{network}"}}"#));
            assert_eq!(c.subnet_len, len, "{network}");
        }
        for (network, len) in [
            ("fc00::/32", 64),
            ("fc00::/62", 64),
            ("fc00::/63", 65),
            ("fc00::/124", 126),
        ] {
            let c = parse(&format!(
                r#"{{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"{network}"}}"#
            ));
            assert_eq!(c.ipv6_subnet_len, len, "{network}");
        }
    }

    #[test]
    fn network_is_truncated_to_its_prefix() {
        let c = parse(r#"{"Network":"10.5.1.7/16"}"#);
        assert_eq!(c.network, Some("10.5.0.0/16".parse().expect("cidr")));
        assert_eq!(c.subnet_min, v4("10.5.1.0"));
    }

    #[test]
    fn keys_and_backend_type_match_case_insensitively() {
        let c = parse(
            r#"{"network":"10.5.0.0/16","SUBNETLEN":26,"backend":{"type":"VxLaN","port":4789,"vni":7}}"#,
        );
        assert_eq!(c.subnet_len, 26);
        assert_eq!(
            (c.backend.kind, c.backend.port, c.backend.vni),
            (BackendType::Vxlan, 4789, Some(7))
        );
        // Go folds the Kelvin sign to k and the long s to s.
        assert!(go_key_matches("Bac\u{212A}end", "Backend"));
        assert!(go_key_matches("\u{17F}ubnetLen", "SubnetLen"));
        assert!(!go_key_matches("Subnet_Len", "SubnetLen"));
    }

    #[test]
    fn later_members_win_and_null_keeps_plain_fields() {
        let c = parse(
            r#"{"Network":"10.6.0.0/16","SubnetLen":20,"network":"10.5.0.0/16","SubnetLen":null}"#,
        );
        assert_eq!(c.network, Some("10.5.0.0/16".parse().expect("cidr")));
        assert_eq!(c.subnet_len, 20);
        // IPv6SubnetMin is a pointer in flannel: null resets it to the default.
        let c = parse(
            r#"{"EnableIPv6":true,"Network":"10.5.0.0/16","IPv6Network":"fc00::/48","IPv6SubnetMin":"fc00:0:0:5::","IPv6SubnetMin":null}"#,
        );
        assert_eq!(c.ipv6_subnet_min, Some(v6("fc00:0:0:1::")));
    }

    #[test]
    fn zero_means_unset() {
        let c = parse(
            r#"{"Network":"10.5.0.0/16","SubnetLen":0,"SubnetMin":"0.0.0.0","SubnetMax":"0.0.0.0"}"#,
        );
        assert_eq!(
            (c.subnet_len, c.subnet_min, c.subnet_max),
            (24, v4("10.5.1.0"), v4("10.5.255.0"))
        );
    }

    #[test]
    fn top_level_null_is_an_empty_object() {
        let err = reject("null", "Network");
        assert_eq!(
            err,
            ConfigError::MissingNetwork {
                field: "Network",
                enabled_by: "EnableIPv4"
            }
        );
    }

    #[test]
    fn rejects_malformed_json_with_position() {
        let err =
            NetworkConfig::parse("{\"Network\": \"10.5.0.0/16\",\n}").expect_err("trailing comma");
        assert!(
            matches!(&err, ConfigError::Json(m) if m.contains("line 2 column 1")),
            "{err}"
        );
    }

    #[test]
    fn rejects_a_document_that_is_not_an_object() {
        let err = reject(r#"["10.5.0.0/16"]"#, "network config");
        assert_eq!(err, ConfigError::NotAnObject { found: "an array" });
    }

    #[test]
    fn rejects_a_mistyped_value() {
        let err = reject(r#"{"Network":"10.5.0.0/16","SubnetLen":"24"}"#, "SubnetLen");
        assert!(matches!(
            err,
            ConfigError::WrongType {
                field: "SubnetLen",
                found: "a string",
                ..
            }
        ));
        assert_eq!(
            err.to_string(),
            r#"SubnetLen "24" is invalid: expected a non-negative integer, found a string"#
        );
        let err = reject(
            r#"{"Network":"10.5.0.0/16","Backend":{"Type":"udp","Port":"8285"}}"#,
            "Backend.Port",
        );
        assert!(matches!(
            err,
            ConfigError::WrongType {
                field: "Backend.Port",
                ..
            }
        ));
    }

    #[test]
    fn rejects_an_unparsable_value() {
        let err = reject(r#"{"Network":"10.5.0.0/33"}"#, "Network");
        assert!(matches!(
            err,
            ConfigError::InvalidValue {
                field: "Network",
                ..
            }
        ));
        let err = reject(r#"{"Network":"fc00::/48"}"#, "Network");
        assert!(matches!(
            err,
            ConfigError::InvalidValue {
                field: "Network",
                ..
            }
        ));
        let err = reject(r#"{"Network":"10.5.0.0/16","SubnetLen":-1}"#, "SubnetLen");
        assert!(matches!(
            err,
            ConfigError::InvalidValue {
                field: "SubnetLen",
                ..
            }
        ));
    }

    #[test]
    fn rejects_a_port_out_of_range() {
        let err = reject(
            r#"{"Network":"10.5.0.0/16","Backend":{"Type":"udp","Port":70000}}"#,
            "Backend.Port",
        );
        assert_eq!(
            err.to_string(),
            "Backend.Port 70000 is invalid: must be between 1 and 65535"
        );
        let err = reject(
            r#"{"Network":"10.5.0.0/16","Backend":{"Type":"udp","Port":0}}"#,
            "Backend.Port",
        );
        assert!(matches!(
            err,
            ConfigError::OutOfRange {
                value: 0,
                min: 1,
                ..
            }
        ));
        let err = reject(
            r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":16777216}}"#,
            "Backend.VNI",
        );
        assert!(matches!(
            err,
            ConfigError::OutOfRange {
                field: "Backend.VNI",
                ..
            }
        ));
    }

    #[test]
    fn rejects_no_address_family() {
        let err = reject(
            r#"{"EnableIPv4":false,"Network":"10.5.0.0/16"}"#,
            "EnableIPv4",
        );
        assert_eq!(err, ConfigError::NoAddressFamily);
    }

    #[test]
    fn rejects_a_missing_network() {
        let err = reject(r#"{"SubnetLen":24}"#, "Network");
        assert!(matches!(
            err,
            ConfigError::MissingNetwork {
                field: "Network",
                ..
            }
        ));
        let err = reject(
            r#"{"Network":"10.5.0.0/16","EnableIPv6":true}"#,
            "IPv6Network",
        );
        assert!(matches!(
            err,
            ConfigError::MissingNetwork {
                field: "IPv6Network",
                ..
            }
        ));
    }

    #[test]
    fn rejects_the_whole_address_space() {
        let err = reject(r#"{"Network":"0.0.0.0/0"}"#, "Network");
        assert!(matches!(
            err,
            ConfigError::WholeAddressSpace {
                field: "Network",
                ..
            }
        ));
    }

    #[test]
    fn rejects_a_network_longer_than_28_without_subnet_len() {
        let err = reject(r#"{"Network":"10.5.0.0/29"}"#, "Network");
        assert!(matches!(
            err,
            ConfigError::NetworkTooSmall { max_prefix: 28, .. }
        ));
        let err = reject(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/125"}"#,
            "IPv6Network",
        );
        assert!(matches!(
            err,
            ConfigError::NetworkTooSmall {
                max_prefix: 124,
                ..
            }
        ));
    }

    #[test]
    fn rejects_subnet_len_above_30() {
        let err = reject(r#"{"Network":"10.5.0.0/16","SubnetLen":31}"#, "SubnetLen");
        assert!(matches!(
            err,
            ConfigError::SubnetLenTooLong {
                len: 31,
                max: 30,
                ..
            }
        ));
        assert_eq!(
            err.to_string(),
            "SubnetLen 31 is invalid: must be at most 30"
        );
        let err = reject(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetLen":127}"#,
            "IPv6SubnetLen",
        );
        assert!(matches!(
            err,
            ConfigError::SubnetLenTooLong { max: 126, .. }
        ));
    }

    #[test]
    fn rejects_fewer_than_four_subnets() {
        // flannel's rule is SubnetLen >= prefix + 2, checked only for an explicit SubnetLen.
        parse(r#"{"Network":"10.5.0.0/16","SubnetLen":18}"#);
        let err = reject(r#"{"Network":"10.5.0.0/16","SubnetLen":17}"#, "SubnetLen");
        assert!(matches!(
            err,
            ConfigError::TooFewSubnets {
                len: 17,
                min: 18,
                ..
            }
        ));
    }

    #[test]
    fn rejects_a_bound_outside_the_network() {
        let err = reject(
            r#"{"Network":"10.5.0.0/16","SubnetMax":"10.6.0.0"}"#,
            "SubnetMax",
        );
        assert!(matches!(
            err,
            ConfigError::BoundOutsideNetwork {
                field: "SubnetMax",
                ..
            }
        ));
    }

    #[test]
    fn rejects_a_bound_off_a_subnet_boundary() {
        let err = reject(
            r#"{"Network":"10.5.0.0/16","SubnetMin":"10.5.1.128"}"#,
            "SubnetMin",
        );
        assert!(matches!(
            err,
            ConfigError::BoundNotAligned {
                field: "SubnetMin",
                subnet_len: 24,
                ..
            }
        ));
        assert_eq!(
            err.to_string(),
            "SubnetMin 10.5.1.128 is invalid: not on a /24 boundary (SubnetLen is 24)"
        );
    }

    #[test]
    fn rejects_min_above_max() {
        let err = reject(
            r#"{"Network":"10.5.0.0/16","SubnetMin":"10.5.9.0","SubnetMax":"10.5.1.0"}"#,
            "SubnetMin",
        );
        assert!(matches!(err, ConfigError::BoundsReversed { .. }));
    }

    #[test]
    fn rejects_a_backend_without_type() {
        assert_eq!(
            reject(
                r#"{"Network":"10.5.0.0/16","Backend":{"Port":1}}"#,
                "Backend.Type"
            ),
            ConfigError::MissingBackendType
        );
        assert_eq!(
            reject(
                r#"{"Network":"10.5.0.0/16","Backend":null}"#,
                "Backend.Type"
            ),
            ConfigError::MissingBackendType
        );
    }

    #[test]
    fn rejects_flannel_backends_weft_lacks() {
        for kind in FLANNEL_ONLY_BACKENDS {
            let err = reject(
                &format!(r#"{{"Network":"10.5.0.0/16","Backend":{{"Type":"{kind}"}}}}"#),
                "Backend.Type",
            );
            assert_eq!(err, ConfigError::UnsupportedBackend { kind: kind.into() });
            assert!(err
                .to_string()
                .contains("is not supported by weft (supported: alloc, udp, vxlan, host-gw)"));
        }
    }

    #[test]
    fn rejects_an_unknown_backend() {
        let err = reject(
            r#"{"Network":"10.5.0.0/16","Backend":{"Type":"gre"}}"#,
            "Backend.Type",
        );
        assert_eq!(err, ConfigError::UnknownBackend { kind: "gre".into() });
        assert!(err.to_string().contains(SUPPORTED));
    }

    #[test]
    fn valid_table_snapshot() {
        let mut out = String::new();
        for text in table(include_str!("../tests/configs/valid.txt")) {
            let _ = writeln!(out, "{text}\n    -> {}", summary(&parse(text)));
        }
        insta::assert_snapshot!(out);
    }

    #[test]
    fn invalid_table_snapshot() {
        let mut out = String::new();
        for text in table(include_str!("../tests/configs/invalid.txt")) {
            let err = NetworkConfig::parse(text).expect_err(text);
            let _ = writeln!(out, "{text}\n    -> {err}");
        }
        insta::assert_snapshot!(out);
    }

    proptest! {
        /// Whatever the numbers, parsing never panics, and an accepted config has a
        /// non-empty space whose bounds are what the config says.
        #[test]
        fn accepted_configs_have_consistent_spaces(
            addr in any::<u32>(),
            prefix in 0u8..=32,
            len in prop::option::of(0u64..=34),
            min in prop::option::of(any::<u32>()),
            max in prop::option::of(any::<u32>()),
            addr6 in any::<u128>(),
            prefix6 in 0u8..=128,
            len6 in prop::option::of(0u64..=130),
        ) {
            let mut doc = serde_json::json!({
                "Network": format!("{}/{prefix}", Ipv4Addr::from(addr)),
                "EnableIPv6": true,
                "IPv6Network": format!("{}/{prefix6}", Ipv6Addr::from(addr6)),
            });
            if let Some(len) = len { doc["SubnetLen"] = len.into(); }
            if let Some(len6) = len6 { doc["IPv6SubnetLen"] = len6.into(); }
            if let Some(min) = min { doc["SubnetMin"] = Ipv4Addr::from(min).to_string().into(); }
            if let Some(max) = max { doc["SubnetMax"] = Ipv4Addr::from(max).to_string().into(); }
            if let Ok(c) = NetworkConfig::parse(&doc.to_string()) {
                let space = c.ipv4_space().expect("IPv4 space");
                prop_assert_eq!(space.min().addr(), IpAddr::V4(c.subnet_min));
                prop_assert_eq!(space.max().addr(), IpAddr::V4(c.subnet_max));
                prop_assert!(c.subnet_len >= prefix + 2 && c.subnet_len <= 30);
                if len.unwrap_or(0) == 0 {
                    prop_assert_eq!(c.subnet_len, 24.max(prefix + 2));
                }
                let space6 = c.ipv6_space().expect("IPv6 space");
                prop_assert!(c.ipv6_subnet_len >= prefix6 + 2 && c.ipv6_subnet_len <= 126);
                prop_assert_eq!(space6.min().addr(), c.ipv6_subnet_min.map(IpAddr::V6).expect("min"));
                prop_assert_eq!(space6.max().addr(), c.ipv6_subnet_max.map(IpAddr::V6).expect("max"));
            }
        }

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,80}") {
            let _ = NetworkConfig::parse(&text);
        }
    }
}
