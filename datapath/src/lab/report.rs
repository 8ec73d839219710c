//! What the lab prints: its nodes as a table (state, lease, routes, containers), the
//! hints `weft lab up` gives, and the connectivity check it runs once ready.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use super::control::LabStatus;
use super::probe;
use crate::netns;

/// The lab as a table: one line per node, then how each exited node ended.
pub fn table(status: &LabStatus) -> String {
    let mut out = String::new();
    let mut network = status.network.map(|n| n.to_string());
    let mut underlay = status.underlay.to_string();
    if let Some(v6) = status.ipv6_network {
        // IPv6-only: the IPv6 network alone (the underlay keeps both families).
        network = Some(match network {
            Some(n) => format!("{n} and {v6}"),
            None => v6.to_string(),
        });
        underlay = format!("{underlay} and {}", super::topology::UNDERLAY6);
    }
    let network = network.unwrap_or_else(|| "(unknown)".to_string());
    let _ = writeln!(
        out,
        "weft lab: {} nodes on overlay {network}, underlay {underlay}; store {}",
        status.nodes.len(),
        status.store
    );
    if !status.live {
        let _ = writeln!(
            out,
            "the lab's process (pid {}) did not answer: node states unknown (if it is gone, run weft lab down to clean up)",
            status.pid
        );
    }
    let _ = writeln!(
        out,
        "{:<8} {:<14} {:<8} {:<16} {:<34} CONTAINERS",
        "NODE", "PUBLIC IP", "STATE", "SUBNET", "ROUTES"
    );
    let mut ended = Vec::new();
    for n in &status.nodes {
        // A stopped node keeps its last lease in the store.
        let lease = n
            .status
            .as_ref()
            .and_then(|s| s.lease.as_ref().or(s.last_lease.as_ref()));
        let (state, subnet, routes) = match &n.status {
            None => ("?".to_string(), "-".to_string(), "-".to_string()),
            Some(s) => {
                if let Some(e) = &s.error {
                    ended.push(format!("{} {}: {e}", n.name, s.state.as_str()));
                }
                let routes: Vec<String> = s.routes.iter().map(|r| r.subnet.to_string()).collect();
                (
                    s.state.as_str().to_string(),
                    // An IPv6-only lease shows its IPv6 subnet.
                    lease
                        .and_then(|l| {
                            l.subnet
                                .map(|s| s.to_string())
                                .or(l.ipv6_subnet.map(|s| s.to_string()))
                        })
                        .unwrap_or_else(|| "-".to_string()),
                    if routes.is_empty() {
                        "-".to_string()
                    } else {
                        routes.join(",")
                    },
                )
            }
        };
        let containers: Vec<String> = n
            .containers
            .iter()
            .map(|c| {
                let ips = c.ip.map(|ip| format!(" {ip}")).unwrap_or_default();
                let ips6 = c.ipv6.map(|ip| format!(" {ip}")).unwrap_or_default();
                format!("{}{ips}{ips6}", c.name)
            })
            .collect();
        let _ = writeln!(
            out,
            "{:<8} {:<14} {:<8} {:<16} {:<34} {}",
            n.name,
            n.public_ip,
            state,
            subnet,
            routes,
            containers.join(", ")
        );
        if let Some(ip6) = n.public_ipv6 {
            // The IPv6 half of a dual-stack node, under its IPv4 one.
            let subnet6 = lease
                .and_then(|l| l.ipv6_subnet)
                .map_or_else(|| "-".to_string(), |s| s.to_string());
            let _ = writeln!(out, "{:<8} {ip6:<23} IPv6 subnet {subnet6}", "");
        }
    }
    for line in ended {
        let _ = writeln!(out, "  {line}");
    }
    out
}

/// What to try next, after `weft lab up`'s table.
pub fn hints(status: &LabStatus) -> String {
    let mut out = String::new();
    let firsts: Vec<_> = status
        .nodes
        .iter()
        .filter_map(|n| n.containers.first())
        .collect();
    if let (Some(a), Some(Some(ip))) = (firsts.first(), firsts.last().map(|c| c.ip)) {
        let _ = writeln!(out, "try:  weft lab exec {} -- ping -c 3 {ip}", a.name);
    }
    out + "      weft lab status | weft lab exec n1 -- ip route | weft lab down\n"
}

/// Pings from each node's first container to every other node's first container, and
/// says how each went.
pub async fn connectivity(status: &LabStatus, prefix: &str) -> String {
    let firsts: Vec<(String, Ipv4Addr)> = status
        .nodes
        .iter()
        .filter_map(|n| n.containers.first())
        .filter_map(|c| Some((c.name.clone(), c.ip?)))
        .collect();
    let mut out = String::from("connectivity across the overlay (ICMP echo):\n");
    let mut ident = 0x7700u16;
    for (from, _) in &firsts {
        for (to, ip) in &firsts {
            if from == to {
                continue;
            }
            ident = ident.wrapping_add(1);
            let ns: PathBuf = netns::path(&format!("{prefix}{from}"));
            let (ip, id) = (*ip, ident);
            let rtt = tokio::task::spawn_blocking(move || {
                probe::echo(ns, ip, id, Duration::from_secs(2))
            })
            .await
            .ok()
            .flatten();
            let _ = match rtt {
                Some(rtt) => writeln!(
                    out,
                    "  {from} -> {to} ({ip}): ok, {:.2} ms",
                    rtt.as_secs_f64() * 1e3
                ),
                None => writeln!(out, "  {from} -> {to} ({ip}): NO REPLY"),
            };
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::control::NodeReport;
    use super::super::state::Container;
    use super::super::topology::UNDERLAY;
    use super::*;
    use crate::daemon::{LeaseStatus, NodeState, NodeStatus, RouteStatus};

    fn lab(live: bool) -> LabStatus {
        let lease = |key: &str, subnet: &str| {
            Some(LeaseStatus {
                key: key.into(),
                subnet: Some(subnet.parse().unwrap_or(UNDERLAY)),
                ipv6_subnet: None,
            })
        };
        let running = NodeStatus {
            lease: lease("10.77.3.0-24", "10.77.3.0/24"),
            routes: vec![RouteStatus {
                subnet: "10.77.9.0/24".parse().unwrap_or_else(|_| UNDERLAY.into()),
                via: Ipv4Addr::new(192, 0, 2, 12).into(),
            }],
            ..NodeStatus::default()
        };
        let exited = NodeStatus {
            state: NodeState::Exited,
            error: Some("our lease 10.77.9.0-24 was deleted by someone else".into()),
            last_lease: lease("10.77.9.0-24", "10.77.9.0/24"),
            ..NodeStatus::default()
        };
        LabStatus {
            pid: 42,
            live,
            ready: true,
            store: "sled:/tmp/s".into(),
            network: "10.77.0.0/16".parse().ok(),
            ipv6_network: None,
            underlay: UNDERLAY,
            nodes: vec![
                NodeReport {
                    name: "n1".into(),
                    public_ip: Ipv4Addr::new(192, 0, 2, 11),
                    public_ipv6: None,
                    containers: vec![Container {
                        name: "n1-c1".into(),
                        ip: Some(Ipv4Addr::new(10, 77, 3, 2)),
                        ipv6: None,
                    }],
                    status: live.then_some(running),
                },
                NodeReport {
                    name: "n2".into(),
                    public_ip: Ipv4Addr::new(192, 0, 2, 12),
                    public_ipv6: None,
                    containers: vec![Container {
                        name: "n2-c1".into(),
                        ip: Some(Ipv4Addr::new(10, 77, 9, 2)),
                        ipv6: None,
                    }],
                    status: live.then_some(exited),
                },
            ],
        }
    }

    #[test]
    fn the_table_shows_the_configs_network_and_each_nodes_state_lease_and_routes() {
        let text = table(&lab(true));
        assert!(text.contains("on overlay 10.77.0.0/16"), "{text}");
        assert!(!text.contains("10.5.0.0/16"), "{text}");
        let n1 = text
            .lines()
            .find(|l| l.starts_with("n1 "))
            .unwrap_or_default();
        for part in ["running", "10.77.3.0/24", "10.77.9.0/24", "n1-c1 10.77.3.2"] {
            assert!(n1.contains(part), "{part} missing in {n1:?}");
        }
        let n2 = text
            .lines()
            .find(|l| l.starts_with("n2 "))
            .unwrap_or_default();
        assert!(n2.contains("exited"), "{n2:?}");
        assert!(
            text.contains("n2 exited: our lease 10.77.9.0-24 was deleted"),
            "{text}"
        );
    }

    #[test]
    fn a_dual_stack_table_shows_the_ipv6_network_and_each_nodes_ipv6_subnet() {
        let mut status = lab(true);
        status.ipv6_network = "fc00::/48".parse().ok();
        let n1 = &mut status.nodes[0];
        n1.public_ipv6 = "2001:db8:0:2::b".parse().ok();
        n1.containers[0].ipv6 = "fc00:0:0:3::2".parse().ok();
        if let Some(lease) = n1.status.as_mut().and_then(|s| s.lease.as_mut()) {
            lease.ipv6_subnet = "fc00:0:0:3::/64".parse().ok();
        }
        let text = table(&status);
        assert!(
            text.contains("on overlay 10.77.0.0/16 and fc00::/48"),
            "{text}"
        );
        assert!(text.contains("n1-c1 10.77.3.2 fc00:0:0:3::2"), "{text}");
        let v6 = text
            .lines()
            .find(|l| l.contains("2001:db8:0:2::b"))
            .unwrap_or_default();
        assert!(v6.contains("IPv6 subnet fc00:0:0:3::/64"), "{text}");
    }

    #[test]
    fn a_lab_whose_process_is_gone_says_so_and_claims_no_state() {
        let text = table(&lab(false));
        assert!(text.contains("(pid 42) did not answer"), "{text}");
        let n1 = text
            .lines()
            .find(|l| l.starts_with("n1 "))
            .unwrap_or_default();
        assert!(n1.contains(" ? ") && !n1.contains("running"), "{n1:?}");
    }

    #[test]
    fn hints_name_a_real_container_and_address() {
        // From the first node's container to the last node's.
        let text = hints(&lab(true));
        assert!(
            text.contains("weft lab exec n1-c1 -- ping -c 3 10.77.9.2"),
            "{text}"
        );
    }
}
