//! How a node is set up: built from the network config, the same way by every driver.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::allocator::AllocatorConfig;
use crate::config::NetworkConfig;

/// How the node is set up.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The store key prefix (flannel's `/coreos.com/network`).
    pub prefix: String,
    /// The allocator's settings.
    pub alloc: AllocatorConfig,
}

/// Why a network config cannot run a node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeConfigError {
    /// The config has no IPv4 network (`EnableIPv4: false`, or no `Network`); weft's
    /// allocator needs one.
    #[error("the network config has no IPv4 network (EnableIPv4 with Network); weft needs one")]
    NoIpv4Network,
    /// The config enables IPv6 but the node has no public IPv6 address to record.
    #[error("the network config enables IPv6 (EnableIPv6), but this node has no public IPv6 address; give one (--public-ipv6)")]
    NoPublicIpv6,
}

impl NodeConfig {
    /// The empty lease table of a node with this config: its prefix, and leases outside
    /// its networks skipped.
    pub fn lease_table(&self) -> crate::lease_table::LeaseTable {
        let prefix = crate::store::subnets_prefix(&self.prefix);
        let mut table = crate::lease_table::LeaseTable::new(&prefix);
        if let ipnet::IpNet::V4(v4) = self.alloc.v4_space.network() {
            let v6 = self.alloc.v6_space.and_then(|s| match s.network() {
                ipnet::IpNet::V6(n) => Some(n),
                ipnet::IpNet::V4(_) => None,
            });
            table = table.within(v4, v6).of_subnet_len(
                self.alloc.v4_space.subnet_len(),
                self.alloc.v6_space.map(|s| s.subnet_len()),
            );
        }
        table
    }

    /// The settings of a node with `public_ip` (and `public_ipv6`) on `network`: the
    /// allocator's IPv4 space and, when the config enables IPv6, its IPv6 space, the
    /// backend type recorded in the lease, and flannel's defaults for the rest (TTL,
    /// renewal margin, retry delays), which the caller may then change.
    pub fn for_network(
        prefix: &str,
        network: &NetworkConfig,
        public_ip: Ipv4Addr,
        public_ipv6: Option<Ipv6Addr>,
    ) -> Result<NodeConfig, NodeConfigError> {
        let v4 = network.ipv4_space().ok_or(NodeConfigError::NoIpv4Network)?;
        let mut alloc = AllocatorConfig::new(v4, public_ip, network.backend.kind);
        alloc.v6_space = network.ipv6_space();
        if alloc.v6_space.is_some() {
            alloc.public_ipv6 = Some(public_ipv6.ok_or(NodeConfigError::NoPublicIpv6)?);
        }
        Ok(NodeConfig {
            prefix: prefix.to_string(),
            alloc,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_spaces_come_from_the_network_config() {
        let v4 = NetworkConfig::parse(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"udp"}}"#)
            .expect("config");
        let cfg = NodeConfig::for_network("/p", &v4, Ipv4Addr::new(192, 0, 2, 1), None)
            .expect("node config");
        assert_eq!(cfg.alloc.v4_space, v4.ipv4_space().expect("v4"));
        assert_eq!(cfg.alloc.v6_space, None);
        // flanneld's udp backend leaves BackendType out of its lease.
        assert_eq!(cfg.alloc.backend_type, None);

        let dual = NetworkConfig::parse(
            r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48"}"#,
        )
        .expect("config");
        let ip6: Ipv6Addr = "2001:db8::1".parse().expect("ip");
        let cfg = NodeConfig::for_network("/p", &dual, Ipv4Addr::new(192, 0, 2, 1), Some(ip6))
            .expect("node config");
        assert_eq!(cfg.alloc.v6_space, dual.ipv6_space());
        assert!(cfg.alloc.v6_space.is_some());
        assert_eq!(cfg.alloc.public_ipv6, Some(ip6));
        assert_eq!(
            NodeConfig::for_network("/p", &dual, Ipv4Addr::new(192, 0, 2, 1), None).err(),
            Some(NodeConfigError::NoPublicIpv6)
        );
    }
}
