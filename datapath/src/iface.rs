//! Choosing the external interface: flannel's `--iface`, `--iface-regex`, or the
//! interface of the default route.

use std::net::{Ipv4Addr, Ipv6Addr};

use regex::Regex;

use crate::netlink::{Link, Netlink};
use crate::DatapathError;

/// The interface the overlay is carried over, and the address it is reached at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalInterface {
    /// The link.
    pub link: Link,
    /// Its IPv4 address: the node's public IP unless overridden. `0.0.0.0` on a host
    /// with IPv6 alone running an IPv6-only network ([`IfaceSelector::ipv6_only`]),
    /// which is the `PublicIP` flannel records there.
    pub ip: Ipv4Addr,
    /// Its first global IPv6 address, if it has one: the node's public IPv6 address
    /// unless overridden (flannel's `ExtV6Addr`).
    pub ipv6: Option<Ipv6Addr>,
}

/// How to pick the interface.
#[derive(Debug, Clone, Default)]
pub struct IfaceSelector {
    /// `--iface`: names or IP addresses, tried in order.
    pub ifaces: Vec<String>,
    /// `--iface-regex`: patterns matched against names and addresses, tried in order.
    pub regexes: Vec<String>,
    /// `--iface-can-reach`: the interface the main table routes this address out of,
    /// when neither of the above is given.
    pub can_reach: Option<Ipv4Addr>,
    /// The network is IPv6-only (`EnableIPv4: false`): an `--iface` (or `--iface-regex`)
    /// link with a global IPv6 address and no IPv4 one will do, its IPv4 address
    /// standing as `0.0.0.0`. Set by the daemon from the network config.
    pub ipv6_only: bool,
}

async fn with_ip(
    nl: &Netlink,
    link: Link,
    ipv6_only: bool,
) -> Result<Option<ExternalInterface>, DatapathError> {
    let ip = nl.ipv4_addresses(link.index).await?.into_iter().next();
    match ip {
        Some(ip) => Ok(Some(external(nl, link, ip).await?)),
        None if ipv6_only => {
            let found = external(nl, link, Ipv4Addr::UNSPECIFIED).await?;
            Ok(found.ipv6.is_some().then_some(found))
        }
        None => Ok(None),
    }
}

async fn external(
    nl: &Netlink,
    link: Link,
    ip: Ipv4Addr,
) -> Result<ExternalInterface, DatapathError> {
    let ipv6 = nl.ipv6_addresses(link.index).await?.into_iter().next();
    Ok(ExternalInterface { link, ip, ipv6 })
}

impl IfaceSelector {
    /// Picks the interface in the namespace `nl` talks to. The first `--iface` that
    /// exists with an IPv4 address wins, then the first link matching a regex, then, with
    /// neither flag, the default route's link.
    pub async fn select(&self, nl: &Netlink) -> Result<ExternalInterface, DatapathError> {
        let links = nl.links().await?;
        for want in &self.ifaces {
            if let Ok(ip) = want.parse::<Ipv4Addr>() {
                for link in &links {
                    if nl.ipv4_addresses(link.index).await?.contains(&ip) {
                        return external(nl, link.clone(), ip).await;
                    }
                }
            } else if let Some(link) = links.iter().find(|l| &l.name == want) {
                if let Some(found) = with_ip(nl, link.clone(), self.ipv6_only).await? {
                    return Ok(found);
                }
            }
        }
        for pattern in &self.regexes {
            let re = Regex::new(pattern).map_err(|e| {
                DatapathError::NotFound(format!(
                    "--iface-regex {pattern:?} is not a valid regex: {e}"
                ))
            })?;
            for link in &links {
                let ips = nl.ipv4_addresses(link.index).await?;
                if re.is_match(&link.name) {
                    if let Some(found) = with_ip(nl, link.clone(), self.ipv6_only).await? {
                        return Ok(found);
                    }
                }
                if let Some(ip) = ips.iter().find(|ip| re.is_match(&ip.to_string())) {
                    return external(nl, link.clone(), *ip).await;
                }
            }
        }
        if !self.ifaces.is_empty() || !self.regexes.is_empty() {
            let which = if self.ipv6_only {
                "an IPv4 or a global IPv6 address"
            } else {
                "an IPv4 address"
            };
            return Err(DatapathError::NotFound(format!(
                "no interface with {which} matches --iface {:?} / --iface-regex {:?}",
                self.ifaces, self.regexes
            )));
        }
        let index = match self.can_reach {
            Some(dst) => nl.route_link_to(dst).await?.ok_or_else(|| {
                DatapathError::NotFound(format!(
                    "no route reaches {dst} (--iface-can-reach); pass --iface"
                ))
            })?,
            None => nl.default_route_link().await?.ok_or_else(|| {
                DatapathError::NotFound(
                    "there is no default route to take the interface from; pass --iface".into(),
                )
            })?,
        };
        let link = links
            .into_iter()
            .find(|l| l.index == index)
            .ok_or_else(|| {
                DatapathError::NotFound(format!("the default route's link {index} is gone"))
            })?;
        let name = link.name.clone();
        with_ip(nl, link, self.ipv6_only).await?.ok_or_else(|| {
            DatapathError::NotFound(format!(
                "the default route's interface {name} has no IPv4 address"
            ))
        })
    }
}
