//! flannel's rules: the checks and defaults of `CheckNetworkConfig` for each address
//! family, and the backend options flannel reads when it starts a backend.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde_json::Value;

use super::decode::{bool_of, int_of, string_of, Backend, Fields, Members};
use super::{
    BackendConfig, BackendType, ConfigError, IpipOptions, NetworkConfig, VxlanOptions,
    WireguardMode, WireguardOptions, DEFAULT_UDP_PORT, DEFAULT_VXLAN_PORT, DEFAULT_VXLAN_VNI,
    DEFAULT_WIREGUARD_PORT, DEFAULT_WIREGUARD_PORT_V6, FLANNEL_ONLY_BACKENDS, MAX_VNI,
    MIN_IPIP_MTU, MIN_VXLAN_MTU, MIN_WIREGUARD_MTU,
};

impl Fields {
    /// Applies flannel's checks and defaults to the decoded fields.
    pub(super) fn validate(self) -> Result<NetworkConfig, ConfigError> {
        if !self.enable_ipv4 && !self.enable_ipv6 {
            return Err(ConfigError::NoAddressFamily);
        }
        // flannel parses a CIDR with Go's ParseCIDR, which keeps only the prefix: a
        // network written with host bits set is used truncated. So is weft's, with a
        // warning, since the subnets then start elsewhere than the text suggests.
        let mut warnings = Vec::new();
        let mut truncated = |field: &str, written: IpNet| {
            let net = written.trunc();
            if net != written {
                warnings.push(format!(
                    "{field} {written} has host bits set: using {net}, as flannel does"
                ));
            }
            net
        };
        let network = self
            .network
            .map(|n| match truncated(IPV4.network, n.into()) {
                IpNet::V4(n) => n,
                IpNet::V6(_) => unreachable!("an IPv4 network truncates to IPv4"),
            });
        let ipv6_network = self
            .ipv6_network
            .map(|n| match truncated(IPV6.network, n.into()) {
                IpNet::V6(n) => n,
                IpNet::V4(_) => unreachable!("an IPv6 network truncates to IPv6"),
            });
        let v4 = if self.enable_ipv4 {
            let network = network.ok_or(ConfigError::MissingNetwork {
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
            let network = ipv6_network.ok_or(ConfigError::MissingNetwork {
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
            backend: ipv4_only(Backend::resolve(self.backend)?, self.enable_ipv6)?,
            warnings,
        })
    }
}

/// A backend flannel has for IPv4 only (ipip: its `RegisterNetwork` sets no IPv6
/// route) refuses `EnableIPv6`, rather than leaving the IPv6 subnets unreachable.
fn ipv4_only(backend: BackendConfig, enable_ipv6: bool) -> Result<BackendConfig, ConfigError> {
    if backend.kind == BackendType::Ipip && enable_ipv6 {
        return Err(ConfigError::Ipv4OnlyBackend {
            kind: backend.kind.as_str(),
        });
    }
    Ok(backend)
}

impl Backend {
    /// What flannel checks when it starts the backend: the type, then the options
    /// that backend reads.
    fn resolve(backend: Option<Self>) -> Result<BackendConfig, ConfigError> {
        let Some(backend) = backend else {
            return Ok(BackendConfig {
                kind: BackendType::Udp,
                port: DEFAULT_UDP_PORT,
                vni: None,
                vxlan: None,
                wireguard: None,
                ipip: None,
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
        let mut wireguard = None;
        let mut ipip = None;
        let (port, vni, vxlan) = match kind {
            BackendType::Udp => (port(m, 1, DEFAULT_UDP_PORT)?, None, None),
            BackendType::Wireguard => {
                let options = wireguard_options(m)?;
                let port = options.listen_port;
                wireguard = Some(options);
                (port, None, None)
            }
            BackendType::Vxlan => {
                let flag = |key, label| -> Result<bool, ConfigError> {
                    Ok(m.field(key, label, bool_of)?.unwrap_or(false))
                };
                let options = VxlanOptions {
                    gbp: flag("GBP", "Backend.GBP")?,
                    learning: flag("Learning", "Backend.Learning")?,
                    direct_routing: flag("DirectRouting", "Backend.DirectRouting")?,
                    // flannel takes 0 too, and then fails creating a device of MTU -50.
                    mtu: m
                        .field("MTU", "Backend.MTU", int_of)?
                        .map(|mtu| in_range("Backend.MTU", mtu, MIN_VXLAN_MTU, 65_535))
                        .transpose()?,
                };
                let vni = match m.field("VNI", "Backend.VNI", int_of)? {
                    None => DEFAULT_VXLAN_VNI,
                    Some(vni) => in_range("Backend.VNI", vni, 0, MAX_VNI)?,
                };
                // The kernel picks its default port when flannel passes 0.
                (port(m, 0, DEFAULT_VXLAN_PORT)?, Some(vni), Some(options))
            }
            BackendType::Ipip => {
                ipip = Some(IpipOptions {
                    direct_routing: m
                        .field("DirectRouting", "Backend.DirectRouting", bool_of)?
                        .unwrap_or(false),
                    mtu: m
                        .field("MTU", "Backend.MTU", int_of)?
                        .map(|mtu| in_range("Backend.MTU", mtu, MIN_IPIP_MTU, 65_535))
                        .transpose()?,
                });
                (0, None, None)
            }
            // flannel's host-gw and alloc read no options.
            BackendType::HostGw | BackendType::Alloc => (0, None, None),
        };
        Ok(BackendConfig {
            kind,
            port,
            vni,
            vxlan,
            wireguard,
            ipip,
            raw: backend.raw,
        })
    }
}

/// What flannel's wireguard `RegisterNetwork` decodes, checked where flannel would
/// fail later (a port of 0 no peer can know, a PSK `wgtypes.ParseKey` refuses, a mode
/// it answers "no valid Mode configured" to).
fn wireguard_options(m: &Members) -> Result<WireguardOptions, ConfigError> {
    let listen_port = |key, label, default: u16| -> Result<u16, ConfigError> {
        match m.field(key, label, int_of)? {
            None => Ok(default),
            Some(p) => Ok(in_range(label, p, 1, u32::from(u16::MAX))? as u16),
        }
    };
    let psk = match m.field("PSK", "Backend.PSK", string_of)? {
        None => None,
        Some(s) if s.is_empty() => None,
        Some(s) => Some(
            crate::wg_key::parse(&s).map_err(|_| ConfigError::InvalidValue {
                field: "Backend.PSK",
                value: "(not shown: a secret)".to_string(),
                expected: "a key as `wg genpsk` prints it: base64 of 32 bytes",
            })?,
        ),
    };
    let mode = match m.field("Mode", "Backend.Mode", string_of)? {
        None => WireguardMode::Separate,
        Some(name) => match name.as_str() {
            "separate" => WireguardMode::Separate,
            "auto" => WireguardMode::Auto,
            "ipv4" => WireguardMode::Ipv4,
            "ipv6" => WireguardMode::Ipv6,
            _ => {
                return Err(ConfigError::InvalidValue {
                    field: "Backend.Mode",
                    value: format!("{name:?}"),
                    expected: "one of \"separate\", \"auto\", \"ipv4\", \"ipv6\"",
                })
            }
        },
    };
    Ok(WireguardOptions {
        listen_port: listen_port("ListenPort", "Backend.ListenPort", DEFAULT_WIREGUARD_PORT)?,
        listen_port_v6: listen_port(
            "ListenPortV6",
            "Backend.ListenPortV6",
            DEFAULT_WIREGUARD_PORT_V6,
        )?,
        psk,
        persistent_keepalive: match m.field(
            "PersistentKeepaliveInterval",
            "Backend.PersistentKeepaliveInterval",
            int_of,
        )? {
            None => 0,
            Some(s) => in_range("Backend.PersistentKeepaliveInterval", s, 0, 65_535)? as u16,
        },
        mtu: m
            .field("MTU", "Backend.MTU", int_of)?
            .map(|mtu| in_range("Backend.MTU", mtu, MIN_WIREGUARD_MTU, 65_535))
            .transpose()?,
        mode,
    })
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
