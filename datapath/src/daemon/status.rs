//! What a running node's shell tells whoever runs it: its state, lease, routes and the
//! backend's counters, as one value published on a `tokio::sync::watch` channel.
//!
//! The shell publishes a new value whenever the node's lease or routes change and when
//! it ends, so a caller (the lab) awaits the condition it needs instead of polling. The
//! counters move on the forwarding threads, which tell no one (no lock, no channel per
//! packet); the shell samples them a few times a second and publishes when they moved.
//! The value is serde-serializable, so that `weft lab status --json` shows exactly it.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use weft_core::node::Node;

use weft_stores::DriverStats;

use crate::backend::{Counter, CounterKind, DeviceStats};
use crate::netlink::LinkStats;

/// Whether a node's daemon runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Started and not ended (it may not hold a lease yet).
    #[default]
    Running,
    /// Stopped on request; its lease stays in the store until it runs out.
    Stopped,
    /// Ended on its own: see [`NodeStatus::error`].
    Exited,
}

impl NodeState {
    /// `running`, `stopped`, `exited`.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Running => "running",
            NodeState::Stopped => "stopped",
            NodeState::Exited => "exited",
        }
    }
}

/// A lease, as the status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseStatus {
    /// Its key as the store writes it (`10.5.3.0-24`).
    pub key: String,
    /// Its IPv4 subnet; none for an IPv6-only lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<Ipv4Net>,
    /// Its IPv6 subnet, for a dual-stack lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_subnet: Option<Ipv6Net>,
}

/// A route to a peer's subnet.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RouteStatus {
    /// The peer's subnet.
    pub subnet: IpNet,
    /// The peer's public address.
    pub via: IpAddr,
}

/// The backend's device and its counters, as the status shows them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DeviceStatus {
    /// Its name.
    pub name: String,
    /// The kernel's counters of it.
    pub stats: LinkStats,
}

/// See the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Running, stopped or exited.
    pub state: NodeState,
    /// Why it exited (or failed to start), when it did.
    pub error: Option<String>,
    /// The node's public address, once known.
    pub public_ip: Option<Ipv4Addr>,
    /// The lease it holds now (none while acquiring, and once ended).
    pub lease: Option<LeaseStatus>,
    /// The last lease it held in this run: once it stopped, the one it keeps in the
    /// store until the TTL runs out; once it exited, the one it lost.
    pub last_lease: Option<LeaseStatus>,
    /// The overlay MTU, once the datapath is set up.
    pub mtu: Option<u32>,
    /// The routes to peers, by subnet (empty once stopped: the datapath is gone).
    pub routes: Vec<RouteStatus>,
    /// The backend's type (`udp`, `vxlan`...), once it runs.
    #[serde(default)]
    pub backend: Option<String>,
    /// The backend's packet counts by path (`tun_rx`, `udp_tx`...).
    #[serde(default)]
    pub packets: BTreeMap<String, u64>,
    /// The backend's drops, by reason (`malformed`, `spoofed_source`...).
    pub drops: BTreeMap<String, u64>,
    /// The backend's other counters (`errors`, `routes_restored`...).
    #[serde(default)]
    pub totals: BTreeMap<String, u64>,
    /// The backend's levels (`peers`, `routes`...).
    #[serde(default)]
    pub levels: BTreeMap<String, u64>,
    /// The device it forwards through and the kernel's counters of it.
    #[serde(default)]
    pub device: Option<DeviceStatus>,
    /// The store operations' latencies and the watches run.
    #[serde(default)]
    pub store: DriverStats,
    /// Entries under the subnets prefix that were not valid leases, skipped.
    pub skipped_leases: u64,
    /// When the held lease expires, in Unix milliseconds (`None` for a reservation or
    /// without a lease).
    #[serde(default)]
    pub lease_expires_at_ms: Option<u64>,
    /// What the node reported so far, by kind: `acquired`, `acquire_failed`, `renewed`,
    /// `renew_failed`, `lost`, `synced` (listings: the first and every re-list),
    /// `store_failed` (a listing or watch that failed), and for weft's nftables table
    /// `firewall_applied`, `firewall_restored` (found flushed, changed or deleted, and
    /// put back), `firewall_failed` (nft missing or refusing).
    #[serde(default)]
    pub events: BTreeMap<String, u64>,
    /// Store errors the node saw, by kind (`unavailable`, `timeout`, `conflict`, …).
    #[serde(default)]
    pub store_errors: BTreeMap<String, u64>,
    /// The last few errors it reported and carried on after (cannot acquire, cannot
    /// renew, a failed store operation), oldest first.
    pub reported: Vec<String>,
}

/// A store error's kind, for counters.
fn store_error_kind(e: &weft_core::store::StoreError) -> &'static str {
    use weft_core::store::StoreError as E;
    match e {
        E::AlreadyExists { .. } => "already_exists",
        E::NotFound { .. } => "not_found",
        E::Conflict { .. } => "conflict",
        E::Compacted { .. } => "compacted",
        E::Unavailable(_) => "unavailable",
        E::Timeout(_) => "timeout",
        E::Locked(_) => "locked",
        E::Invalid(_) => "invalid",
        E::Backend(_) => "backend",
    }
}

/// How many reported errors a status keeps.
const REPORTED: usize = 8;

impl NodeStatus {
    /// Whether it runs and holds a lease.
    pub fn holds_lease(&self) -> bool {
        self.state == NodeState::Running && self.lease.is_some()
    }

    /// Whether it has ended, stopped or exited.
    pub fn ended(&self) -> bool {
        self.state != NodeState::Running
    }

    /// Takes the node's lease and routes; returns whether anything changed.
    pub(crate) fn update_from(&mut self, node: &Node) -> bool {
        let lease = node.lease().map(|l| LeaseStatus {
            key: l.key.to_string(),
            subnet: l.key.ipv4,
            ipv6_subnet: l.key.ipv6,
        });
        let mut routes: Vec<RouteStatus> = node
            .routes()
            .routes()
            .map(|r| RouteStatus {
                subnet: r.subnet,
                via: r.public_ip,
            })
            .collect();
        routes.sort();
        let expires = node
            .lease()
            .and_then(|l| l.expires_at)
            .map(|t| t.as_millis());
        let changed =
            (&lease, &routes, expires) != (&self.lease, &self.routes, self.lease_expires_at_ms);
        self.lease_expires_at_ms = expires;
        if lease.is_some() {
            self.last_lease.clone_from(&lease);
        }
        self.lease = lease;
        self.routes = routes;
        changed
    }

    /// Takes the backend's counters and device stats; returns whether any moved.
    pub(crate) fn update_counters(
        &mut self,
        counters: &[Counter],
        device: Option<DeviceStats>,
    ) -> bool {
        let mut changed = false;
        for c in counters {
            let map = match c.kind {
                CounterKind::Packets => &mut self.packets,
                CounterKind::Dropped => &mut self.drops,
                CounterKind::Total => &mut self.totals,
                CounterKind::Level => &mut self.levels,
            };
            if map.get(c.name) != Some(&c.value) {
                map.insert(c.name.to_string(), c.value);
                changed = true;
            }
        }
        let device = device.map(|d| DeviceStatus {
            name: d.name,
            stats: d.stats,
        });
        if device.is_some() && device != self.device {
            self.device = device;
            changed = true;
        }
        changed
    }

    /// Takes the driver's store statistics; returns whether they moved.
    pub(crate) fn update_store(&mut self, stats: &DriverStats) -> bool {
        if &self.store == stats {
            return false;
        }
        self.store.clone_from(stats);
        true
    }

    /// Counts one event of `kind`, and the store error it carries, if any.
    pub(crate) fn count(&mut self, kind: &str, error: Option<&weft_core::store::StoreError>) {
        *self.events.entry(kind.to_string()).or_default() += 1;
        if let Some(e) = error {
            *self
                .store_errors
                .entry(store_error_kind(e).to_string())
                .or_default() += 1;
        }
    }

    /// Notes an error the node reported and carried on after.
    pub(crate) fn report(&mut self, error: String) {
        if self.reported.len() == REPORTED {
            self.reported.remove(0);
        }
        self.reported.push(error);
    }

    /// The node ended: stopped when `error` is `None`, exited otherwise.
    pub(crate) fn end(&mut self, error: Option<String>) {
        self.state = match error {
            None => NodeState::Stopped,
            Some(_) => NodeState::Exited,
        };
        self.error = error;
        self.lease = None;
        self.routes.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_split_into_traffic_and_drops_and_report_movement() {
        let mut s = NodeStatus::default();
        let counters = [
            Counter::new(CounterKind::Packets, "tun_rx", 3),
            Counter::new(CounterKind::Dropped, "malformed", 2),
            Counter::new(CounterKind::Total, "errors", 1),
            Counter::new(CounterKind::Level, "peers", 4),
        ];
        assert!(s.update_counters(&counters, None));
        assert_eq!(s.packets["tun_rx"], 3);
        assert_eq!(s.drops["malformed"], 2);
        assert_eq!(s.totals["errors"], 1);
        assert_eq!(s.levels["peers"], 4);
        assert!(!s.update_counters(&counters, None), "nothing moved");
    }

    #[test]
    fn an_ended_node_says_how_and_keeps_its_last_lease() {
        let held = LeaseStatus {
            key: "10.5.3.0-24".into(),
            subnet: "10.5.3.0/24".parse().ok(),
            ipv6_subnet: None,
        };
        let mut s = NodeStatus {
            lease: Some(held.clone()),
            last_lease: Some(held.clone()),
            routes: vec![RouteStatus {
                subnet: "10.5.4.0/24".parse().unwrap_or_default(),
                via: Ipv4Addr::new(192, 0, 2, 2).into(),
            }],
            ..NodeStatus::default()
        };
        s.end(Some("our lease was deleted".into()));
        assert_eq!(s.state, NodeState::Exited);
        assert!(s.ended() && !s.holds_lease());
        assert_eq!(
            (s.lease.as_ref(), s.last_lease.as_ref()),
            (None, Some(&held))
        );
        assert!(s.routes.is_empty(), "the datapath is gone");
        let json = serde_json::to_string(&s).unwrap_or_default();
        assert!(json.contains(r#""state":"exited""#), "{json}");
        let back: NodeStatus = serde_json::from_str(&json).unwrap_or_default();
        assert_eq!(back, s);
    }
}
