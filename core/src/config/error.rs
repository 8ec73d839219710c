//! [`ConfigError`]: every way a network config can be rejected.

use std::net::IpAddr;

use ipnet::IpNet;

use super::SUPPORTED;

/// Why a network config was rejected. Each message names the field, the value as written
/// and the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The text is empty, or only white space (an empty file, a key written empty).
    #[error(
        "network config is empty: expected a JSON object such as {{\"Network\": \"10.5.0.0/16\"}}"
    )]
    Empty,
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
    /// `EnableIPv6` with a backend that carries IPv4 only (ipip, as in flannel, whose
    /// ipip backend programs no IPv6 route: the IPv6 subnets would be unreachable).
    #[error("Backend.Type {kind:?} carries IPv4 only (as in flannel): remove EnableIPv6 (and IPv6Network), or use udp, vxlan, host-gw or wireguard for IPv6")]
    Ipv4OnlyBackend {
        /// The backend.
        kind: &'static str,
    },
    /// A backend type neither weft nor flannel knows.
    #[error("Backend.Type {kind:?} is not a known backend type (supported: {SUPPORTED})")]
    UnknownBackend {
        /// The type as written.
        kind: String,
    },
}
