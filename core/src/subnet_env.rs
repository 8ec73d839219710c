//! `subnet.env`: the file flannel leaves for the CNI plugin and for its own next start.
//!
//! Rendering and parsing only; the daemon writes the file atomically (temp file +
//! rename). The format is flannel's, line for line:
//!
//! ```text
//! FLANNEL_NETWORK=10.5.0.0/16
//! FLANNEL_SUBNET=10.5.4.1/24
//! FLANNEL_MTU=1472
//! FLANNEL_IPMASQ=false
//! ```
//!
//! An IPv6-only node's file has no `FLANNEL_NETWORK`/`FLANNEL_SUBNET` lines at all,
//! only `FLANNEL_IPV6_NETWORK`/`FLANNEL_IPV6_SUBNET` (flannel's pkg/subnet/subnet.go:78-87
//! writes each pair only when its family is enabled).

use std::fmt::Write as _;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::lease::LeaseKey;
use crate::subnet::first_host;

/// Why a `subnet.env` could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubnetEnvError {
    /// A line is not `NAME=VALUE`.
    #[error("line {line}: {text:?} is not NAME=VALUE")]
    Syntax {
        /// 1-based line number.
        line: usize,
        /// The line.
        text: String,
    },
    /// A known variable has a value that does not parse.
    #[error("line {line}: {name}={value:?} is not a valid {what}")]
    Value {
        /// 1-based line number.
        line: usize,
        /// The variable.
        name: String,
        /// Its value.
        value: String,
        /// What it should have been.
        what: &'static str,
    },
}

/// The contents of `subnet.env`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubnetEnv {
    /// `FLANNEL_NETWORK`: the overlay network.
    pub network: Option<Ipv4Net>,
    /// `FLANNEL_SUBNET`: the node's first host address with the subnet's length.
    pub subnet: Option<Ipv4Net>,
    /// `FLANNEL_IPV6_NETWORK`.
    pub ipv6_network: Option<Ipv6Net>,
    /// `FLANNEL_IPV6_SUBNET`.
    pub ipv6_subnet: Option<Ipv6Net>,
    /// `FLANNEL_MTU`.
    pub mtu: Option<u32>,
    /// `FLANNEL_IPMASQ`.
    pub ipmasq: Option<bool>,
}

impl SubnetEnv {
    /// The file for a node holding `lease` in `network`, as flannel writes it.
    pub fn for_lease(
        network: Option<Ipv4Net>,
        ipv6_network: Option<Ipv6Net>,
        lease: &LeaseKey,
        mtu: u32,
        ipmasq: bool,
    ) -> Self {
        let host4 = lease.ipv4.and_then(|n| match first_host(&IpNet::V4(n)) {
            IpNet::V4(n) => Some(n),
            IpNet::V6(_) => None,
        });
        let host6 = lease.ipv6.map(|n| match first_host(&IpNet::V6(n)) {
            IpNet::V6(n) => n,
            IpNet::V4(_) => unreachable!("first host of a v6 subnet is v6"),
        });
        SubnetEnv {
            network: network.filter(|_| host4.is_some()),
            subnet: host4,
            ipv6_network: ipv6_network.filter(|_| host6.is_some()),
            ipv6_subnet: host6,
            mtu: Some(mtu),
            ipmasq: Some(ipmasq),
        }
    }

    /// The file's text, in flannel's order.
    pub fn render(&self) -> String {
        let mut s = String::new();
        if let (Some(n), Some(sn)) = (self.network, self.subnet) {
            let _ = writeln!(s, "FLANNEL_NETWORK={n}");
            let _ = writeln!(s, "FLANNEL_SUBNET={sn}");
        }
        if let (Some(n), Some(sn)) = (self.ipv6_network, self.ipv6_subnet) {
            let _ = writeln!(s, "FLANNEL_IPV6_NETWORK={n}");
            let _ = writeln!(s, "FLANNEL_IPV6_SUBNET={sn}");
        }
        if let Some(mtu) = self.mtu {
            let _ = writeln!(s, "FLANNEL_MTU={mtu}");
        }
        if let Some(m) = self.ipmasq {
            let _ = writeln!(s, "FLANNEL_IPMASQ={m}");
        }
        s
    }

    /// Parses a file's text. Unknown variables, blank lines and `#` comments are
    /// ignored; a malformed known variable is an error naming its line.
    pub fn parse(text: &str) -> Result<Self, SubnetEnvError> {
        let mut env = SubnetEnv::default();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let (name, value) = trimmed
                .split_once('=')
                .ok_or_else(|| SubnetEnvError::Syntax {
                    line,
                    text: raw.to_string(),
                })?;
            let value = value.trim().trim_matches('"');
            let bad = |what| SubnetEnvError::Value {
                line,
                name: name.to_string(),
                value: value.to_string(),
                what,
            };
            match name.trim() {
                "FLANNEL_NETWORK" => {
                    env.network = Some(value.parse().map_err(|_| bad("IPv4 CIDR"))?)
                }
                "FLANNEL_SUBNET" => env.subnet = Some(value.parse().map_err(|_| bad("IPv4 CIDR"))?),
                "FLANNEL_IPV6_NETWORK" => {
                    env.ipv6_network = Some(value.parse().map_err(|_| bad("IPv6 CIDR"))?)
                }
                "FLANNEL_IPV6_SUBNET" => {
                    env.ipv6_subnet = Some(value.parse().map_err(|_| bad("IPv6 CIDR"))?)
                }
                "FLANNEL_MTU" => env.mtu = Some(value.parse().map_err(|_| bad("MTU"))?),
                "FLANNEL_IPMASQ" => env.ipmasq = Some(value.parse().map_err(|_| bad("boolean"))?),
                _ => {}
            }
        }
        Ok(env)
    }

    /// The lease key this file records, to be preferred on the next acquisition (an
    /// IPv6-only key when it records an IPv6 subnet alone).
    pub fn previous_key(&self) -> Option<LeaseKey> {
        let ipv4 = self.subnet.map(|n| n.trunc());
        let ipv6 = self.ipv6_subnet.map(|n| n.trunc());
        (ipv4.is_some() || ipv6.is_some()).then_some(LeaseKey { ipv4, ipv6 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_flannel_and_parses_back() {
        let key: LeaseKey = "10.5.4.0-24".parse().unwrap();
        let env = SubnetEnv::for_lease(
            Some("10.5.0.0/16".parse().unwrap()),
            None,
            &key,
            1472,
            false,
        );
        let text = env.render();
        assert_eq!(
            text,
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.4.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n"
        );
        let back = SubnetEnv::parse(&text).unwrap();
        assert_eq!(back, env);
        assert_eq!(back.previous_key(), Some(key));
    }

    #[test]
    fn dual_stack_lines() {
        let key: LeaseKey = "10.5.4.0-24&fc00:0:0:4::-64".parse().unwrap();
        let env = SubnetEnv::for_lease(
            Some("10.5.0.0/16".parse().unwrap()),
            Some("fc00::/48".parse().unwrap()),
            &key,
            1450,
            true,
        );
        let text = env.render();
        assert!(
            text.contains("FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:4::1/64\n"),
            "{text}"
        );
        assert_eq!(SubnetEnv::parse(&text).unwrap().previous_key(), Some(key));
    }

    #[test]
    fn ipv6_only_has_no_ipv4_lines() {
        // flannel's WriteSubnetFile with EnableIPv4 false (pkg/subnet/subnet.go:78-89).
        let key: LeaseKey = "0.0.0.0-0&fc00:0:0:4::-64".parse().unwrap();
        let env = SubnetEnv::for_lease(None, Some("fc00::/48".parse().unwrap()), &key, 1430, false);
        let text = env.render();
        assert_eq!(
            text,
            "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:4::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n"
        );
        let back = SubnetEnv::parse(&text).unwrap();
        assert_eq!(back, env);
        assert_eq!(back.previous_key(), Some(key));
        assert_eq!(
            SubnetEnv::parse("FLANNEL_MTU=1430\n")
                .unwrap()
                .previous_key(),
            None
        );
    }

    #[test]
    fn malformed_values_name_the_line() {
        let err =
            SubnetEnv::parse("FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=banana\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 2: FLANNEL_SUBNET=\"banana\" is not a valid IPv4 CIDR"
        );
        assert!(SubnetEnv::parse("garbage line").is_err());
    }
}
