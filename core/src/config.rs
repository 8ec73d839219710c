//! The network config: flannel's `net-conf.json`, parsed and validated with flannel's rules.
//!
//! PLACEHOLDER interface -- validation and tests are being written.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::subnet::SubnetSpace;

/// Why a network config was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The text is not JSON of the expected shape.
    #[error("network config is not valid JSON: {0}")]
    Json(String),
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
    /// The name used in configs and lease values.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendType::Alloc => "alloc",
            BackendType::Udp => "udp",
            BackendType::Vxlan => "vxlan",
            BackendType::HostGw => "host-gw",
        }
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

/// The `Backend` object of the config.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendConfig {
    /// `Type`.
    pub kind: BackendType,
    /// `Port` (udp: default 8285; vxlan: default 8472).
    pub port: u16,
    /// The whole object as written, for backend options weft does not interpret here.
    pub raw: serde_json::Value,
}

/// A validated network config.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfig {
    /// `EnableIPv4` (default true).
    pub enable_ipv4: bool,
    /// `Network`.
    pub network: Option<Ipv4Net>,
    /// `SubnetLen`.
    pub subnet_len: u8,
    /// `SubnetMin`.
    pub subnet_min: Ipv4Addr,
    /// `SubnetMax`.
    pub subnet_max: Ipv4Addr,
    /// `EnableIPv6` (default false).
    pub enable_ipv6: bool,
    /// `IPv6Network`.
    pub ipv6_network: Option<Ipv6Net>,
    /// `IPv6SubnetLen`.
    pub ipv6_subnet_len: u8,
    /// `IPv6SubnetMin`.
    pub ipv6_subnet_min: Option<Ipv6Addr>,
    /// `IPv6SubnetMax`.
    pub ipv6_subnet_max: Option<Ipv6Addr>,
    /// `Backend`.
    pub backend: BackendConfig,
}

impl NetworkConfig {
    /// Parses and validates a config JSON text.
    pub fn parse(_text: &str) -> Result<Self, ConfigError> {
        Err(ConfigError::Json("not implemented".into()))
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
}
