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
    /// The config enables neither an IPv4 nor an IPv6 network (config validation
    /// refuses this first; a config built in code may still say it).
    #[error("the network config has neither an IPv4 network (Network) nor an IPv6 one (EnableIPv6 with IPv6Network)")]
    NoNetwork,
    /// The config enables IPv6 but the node has no public IPv6 address to record.
    #[error("the network config enables IPv6 (EnableIPv6), but this node has no public IPv6 address; give one (--public-ipv6)")]
    NoPublicIpv6,
}

impl NodeConfig {
    /// The empty lease table of a node with this config: its prefix, and leases outside
    /// its networks skipped.
    pub fn lease_table(&self) -> crate::lease_table::LeaseTable {
        let prefix = crate::store::subnets_prefix(&self.prefix);
        let table = crate::lease_table::LeaseTable::new(&prefix);
        let v4 = self.alloc.v4_space.and_then(|s| match s.network() {
            ipnet::IpNet::V4(n) => Some(n),
            ipnet::IpNet::V6(_) => None,
        });
        let v6 = self.alloc.v6_space.and_then(|s| match s.network() {
            ipnet::IpNet::V6(n) => Some(n),
            ipnet::IpNet::V4(_) => None,
        });
        if v4.is_none() && v6.is_none() {
            return table;
        }
        table.within(v4, v6).of_subnet_len(
            self.alloc.v4_space.map(|s| s.subnet_len()),
            self.alloc.v6_space.map(|s| s.subnet_len()),
        )
    }

    /// The settings of a node with `public_ip` (and `public_ipv6`) on `network`: the
    /// allocator's IPv4 space and, when the config enables IPv6, its IPv6 space (on an
    /// IPv6-only network, `EnableIPv4: false`, the IPv6 space alone, and the lease's
    /// `PublicIP` 0.0.0.0 as flannel writes it, whatever `public_ip` says), the
    /// backend type recorded in the lease, and flannel's defaults for the rest (TTL,
    /// renewal margin, retry delays), which the caller may then change.
    pub fn for_network(
        prefix: &str,
        network: &NetworkConfig,
        public_ip: Ipv4Addr,
        public_ipv6: Option<Ipv6Addr>,
    ) -> Result<NodeConfig, NodeConfigError> {
        let alloc = match (network.ipv4_space(), network.ipv6_space()) {
            (Some(v4), v6) => {
                let mut alloc = AllocatorConfig::new(v4, public_ip, network.backend.kind);
                alloc.v6_space = v6;
                if v6.is_some() {
                    alloc.public_ipv6 = Some(public_ipv6.ok_or(NodeConfigError::NoPublicIpv6)?);
                }
                alloc
            }
            (None, Some(v6)) => {
                let ip6 = public_ipv6.ok_or(NodeConfigError::NoPublicIpv6)?;
                AllocatorConfig::v6_only(v6, ip6, network.backend.kind)
            }
            (None, None) => return Err(NodeConfigError::NoNetwork),
        };
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
        assert_eq!(cfg.alloc.v4_space, v4.ipv4_space());
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

    #[test]
    fn an_ipv6_only_network_gives_the_ipv6_space_alone_and_public_ip_0_0_0_0() {
        let v6 = NetworkConfig::parse(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#,
        )
        .expect("config");
        let ip6: Ipv6Addr = "2001:db8::1".parse().expect("ip");
        let cfg = NodeConfig::for_network("/p", &v6, Ipv4Addr::new(192, 0, 2, 1), Some(ip6))
            .expect("node config");
        assert_eq!(cfg.alloc.v4_space, None);
        assert_eq!(cfg.alloc.v6_space, v6.ipv6_space());
        assert_eq!(cfg.alloc.public_ipv6, Some(ip6));
        // flannel's vxlan backend leaves PublicIP at its zero value (pkg/backend/vxlan/vxlan.go:96-106).
        assert_eq!(cfg.alloc.public_ip, Ipv4Addr::UNSPECIFIED);
        assert_eq!(
            NodeConfig::for_network("/p", &v6, Ipv4Addr::new(192, 0, 2, 1), None).err(),
            Some(NodeConfigError::NoPublicIpv6)
        );
    }
}
