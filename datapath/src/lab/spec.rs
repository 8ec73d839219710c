//! What a lab is made of, before it exists: its nodes, their underlay addresses and
//! containers, the network config and the lease timing; from `weft lab up`'s counts or
//! from a scenario file. Pure, so that planning is tested without root.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ipnet::{Ipv4Net, Ipv6Net};
use weft_core::config::NetworkConfig;
use weft_sim::scenario::Scenario;

use super::{topology, LabError};

/// The network config a lab gets unless told otherwise.
pub const DEFAULT_CONFIG: &str =
    r#"{"Network":"10.5.0.0/16","SubnetLen":24,"Backend":{"Type":"udp","Port":8285}}"#;

/// A node of a lab to be, by its short name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// Short name (`n1`, or a scenario's node name).
    pub name: String,
    /// Its underlay address, in [`topology::UNDERLAY`].
    pub ip: Ipv4Addr,
    /// Its IPv6 underlay address, in [`topology::UNDERLAY6`], when the config enables
    /// IPv6.
    pub ipv6: Option<Ipv6Addr>,
    /// Its containers' short names (`c1`...), each becoming `{node}-{container}`.
    pub containers: Vec<String>,
    /// Whether its daemon starts with the lab.
    pub start: bool,
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct LabSpec {
    /// The nodes.
    pub nodes: Vec<NodeSpec>,
    /// The network config JSON written to the store.
    pub config_text: String,
    /// The same, parsed.
    pub config: NetworkConfig,
    /// The overlay's IPv4 network; none on an IPv6-only network (`EnableIPv4: false`).
    pub network: Option<Ipv4Net>,
    /// The overlay's IPv6 network, when the config enables IPv6.
    pub ipv6_network: Option<Ipv6Net>,
    /// Lease TTL.
    pub lease_ttl: Duration,
    /// Renewal margin.
    pub renew_margin: Duration,
    /// Reservations (subnet, public IP) an operator wrote before the nodes start.
    pub reservations: Vec<(Ipv4Net, Ipv4Addr)>,
}

/// Parses a lab's network config: flannel's rules, an IPv4 network to give out (or,
/// IPv6-only, none), and a backend that carries what the config enables. Refused here,
/// before anything is built, rather than by the first node's daemon in a half-built lab.
fn parse_config(text: &str) -> Result<(NetworkConfig, Option<Ipv4Net>), LabError> {
    let config = NetworkConfig::parse(text).map_err(|e| LabError::Config(e.to_string()))?;
    let network = config.network.filter(|_| config.enable_ipv4);
    if network.is_none() {
        if let Some(why) = crate::backend::ipv6_only_refusal(&config) {
            return Err(LabError::Config(why));
        }
    }
    Ok((config, network))
}

impl LabSpec {
    /// `nodes` nodes `n1`, `n2`... at [`topology::public_ip`], each with `containers`
    /// containers `c1`, `c2`...; the config `config_text` (default [`DEFAULT_CONFIG`]),
    /// renewing an hour before the TTL runs out, or halfway for short TTLs.
    pub fn generated(
        nodes: u8,
        containers: u8,
        config_text: Option<String>,
        lease_ttl: Duration,
    ) -> Result<LabSpec, LabError> {
        if nodes > topology::MAX_NODES {
            return Err(LabError::Config(format!(
                "{nodes} nodes: a lab has at most {} on its underlay",
                topology::MAX_NODES
            )));
        }
        let config_text = config_text.unwrap_or_else(|| DEFAULT_CONFIG.to_string());
        let (config, network) = parse_config(&config_text)?;
        let lease_ttl = lease_ttl.max(Duration::from_secs(1));
        let ipv6_network = config.ipv6_network.filter(|_| config.enable_ipv6);
        Ok(LabSpec {
            nodes: (1..=nodes)
                .map(|i| NodeSpec {
                    name: format!("n{i}"),
                    ip: topology::public_ip(i),
                    ipv6: ipv6_network.map(|_| topology::public_ipv6(topology::public_ip(i))),
                    containers: (1..=containers).map(|j| format!("c{j}")).collect(),
                    start: true,
                })
                .collect(),
            config_text,
            config,
            network,
            ipv6_network,
            lease_ttl,
            renew_margin: Duration::from_secs(60 * 60).min(lease_ttl / 2),
            reservations: Vec::new(),
        })
    }

    /// The lab a scenario describes: its nodes (addresses, containers, whether they
    /// start), config, lease timing and reservations. What the lab cannot build is
    /// refused before, by `walk::check` (see `play`).
    pub fn from_scenario(
        scenario: &Scenario,
        edit_config: Option<super::play::ConfigEdit>,
    ) -> Result<LabSpec, LabError> {
        let config_text = scenario.network.config_json().map_err(LabError::Config)?;
        let config_text = match edit_config {
            Some(edit) => edit(&config_text).map_err(LabError::Config)?,
            None => config_text,
        };
        let (config, network) = parse_config(&config_text)?;
        let ipv6_network = config.ipv6_network.filter(|_| config.enable_ipv6);
        Ok(LabSpec {
            nodes: scenario
                .nodes
                .iter()
                .map(|n| {
                    let n = n.get_ref();
                    NodeSpec {
                        name: n.name.clone(),
                        ip: n.ip,
                        ipv6: ipv6_network.map(|_| topology::public_ipv6(n.ip)),
                        containers: n.container_names(),
                        start: n.start,
                    }
                })
                .collect(),
            config_text,
            config,
            network,
            ipv6_network,
            lease_ttl: scenario.network.lease_ttl.0,
            renew_margin: scenario.network.renew_margin.0,
            reservations: scenario
                .network
                .reservations
                .iter()
                .map(|r| (r.subnet, r.ip))
                .collect(),
        })
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_lab_numbers_its_nodes_and_containers_from_one() {
        let spec = LabSpec::generated(3, 2, None, Duration::from_secs(6)).expect("valid");
        let names: Vec<&str> = spec.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["n1", "n2", "n3"]);
        assert_eq!(spec.nodes[1].ip, Ipv4Addr::new(192, 0, 2, 12));
        assert_eq!(spec.nodes[2].containers, ["c1", "c2"]);
        assert!(spec.nodes.iter().all(|n| n.start));
        assert_eq!(
            spec.network.map(|n| n.to_string()).as_deref(),
            Some("10.5.0.0/16")
        );
        // A short TTL renews halfway, not an hour before it runs out.
        assert_eq!(spec.renew_margin, Duration::from_secs(3));
    }

    #[test]
    fn a_generated_lab_takes_the_network_of_its_config() {
        let config = r#"{"Network":"10.77.0.0/16","SubnetLen":20,"Backend":{"Type":"udp"}}"#;
        let spec = LabSpec::generated(1, 0, Some(config.into()), Duration::from_secs(3600))
            .expect("valid");
        assert_eq!(
            spec.network.map(|n| n.to_string()).as_deref(),
            Some("10.77.0.0/16")
        );
        assert_eq!(spec.config.subnet_len, 20);
        assert!(spec.nodes[0].containers.is_empty());
    }

    #[test]
    fn a_dual_stack_lab_gives_its_nodes_ipv6_underlay_addresses_and_udp_may_run_it() {
        let dual = r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#;
        let spec =
            LabSpec::generated(2, 1, Some(dual.into()), Duration::from_secs(60)).expect("valid");
        assert_eq!(
            spec.ipv6_network.map(|n| n.to_string()).as_deref(),
            Some("fc00::/48")
        );
        assert_eq!(
            spec.nodes[1].ipv6.map(|a| a.to_string()).as_deref(),
            Some("2001:db8:0:2::c")
        );
        let v4 = LabSpec::generated(1, 1, None, Duration::from_secs(60)).expect("valid");
        assert_eq!((v4.ipv6_network, v4.nodes[0].ipv6), (None, None));

        let udp = dual.replace("vxlan", "udp");
        LabSpec::generated(2, 1, Some(udp), Duration::from_secs(60)).expect("udp does dual stack");
    }

    #[test]
    fn a_bad_config_is_an_error_naming_the_field() {
        let bad = r#"{"Network":"10.5.0.0/16","SubnetLen":31}"#;
        let err = LabSpec::generated(1, 1, Some(bad.into()), Duration::from_secs(60))
            .expect_err("SubnetLen 31 is refused");
        assert!(err.to_string().contains("SubnetLen"), "{err}");
    }

    #[test]
    fn an_ipv6_only_lab_runs_every_backend_and_refuses_a_one_session_wireguard_mode() {
        for kind in ["vxlan", "host-gw", "udp", "alloc"] {
            let v6_only = format!(
                r#"{{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{{"Type":"{kind}"}}}}"#
            );
            let spec = LabSpec::generated(2, 1, Some(v6_only), Duration::from_secs(60))
                .expect("an IPv6-only lab");
            assert_eq!(spec.network, None, "{kind}");
            assert_eq!(
                spec.ipv6_network.map(|n| n.to_string()).as_deref(),
                Some("fc00::/48")
            );
            assert!(spec.nodes.iter().all(|n| n.ipv6.is_some()), "{kind}");
        }
        // No Backend: flannel's default, udp, which runs it too.
        let v6_only = r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48"}"#;
        LabSpec::generated(1, 1, Some(v6_only.into()), Duration::from_secs(60))
            .expect("udp runs IPv6-only");
        // wireguard in Mode separate (the default) runs it; a one-session mode cannot.
        let wg = |mode: &str| {
            format!(
                r#"{{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{{"Type":"wireguard"{mode}}}}}"#
            )
        };
        LabSpec::generated(1, 1, Some(wg("")), Duration::from_secs(60))
            .expect("wireguard separate runs IPv6-only");
        let err = LabSpec::generated(1, 1, Some(wg(r#","Mode":"auto""#)), Duration::from_secs(60))
            .expect_err("refused");
        let text = err.to_string();
        assert!(
            text.contains("the wireguard backend runs IPv6-only networks (EnableIPv4: false) in Mode \"separate\" (the default) only: Mode \"auto\""),
            "{text}"
        );
    }

    #[test]
    fn a_scenario_gives_its_nodes_config_timing_and_reservations() {
        let text = r#"
name = "t"
duration = "30s"
[network]
config = { Network = "10.9.0.0/16", Backend = { Type = "udp" } }
lease_ttl = "1m"
renew_margin = "10s"
[[network.reservation]]
subnet = "10.9.7.0/24"
ip = "192.0.2.3"
[[node]]
name = "a"
ip = "192.0.2.1"
[[node]]
name = "b"
ip = "192.0.2.2"
containers = ["web", "db"]
start = false
"#;
        let scenario = weft_sim::scenario::parse("t.toml", text).expect("parses");
        let spec = LabSpec::from_scenario(&scenario, None).expect("a lab");
        assert_eq!(
            spec.network.map(|n| n.to_string()).as_deref(),
            Some("10.9.0.0/16")
        );
        assert_eq!(spec.lease_ttl, Duration::from_secs(60));
        assert_eq!(spec.renew_margin, Duration::from_secs(10));
        assert_eq!(
            spec.node("a").map(|n| n.containers.clone()),
            Some(vec!["c0".into()])
        );
        let b = spec.node("b").expect("b");
        assert_eq!((b.ip, b.start), (Ipv4Addr::new(192, 0, 2, 2), false));
        assert_eq!(b.containers, ["web", "db"]);
        assert_eq!(spec.reservations.len(), 1);
        assert_eq!(spec.reservations[0].1, Ipv4Addr::new(192, 0, 2, 3));
    }
}
