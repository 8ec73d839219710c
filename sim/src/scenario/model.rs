//! The shape of a scenario file, as serde reads it.

use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::{Deserialize, Deserializer};
use toml::Spanned;

use crate::time::parse_duration;

/// A duration written as `"250ms"`, `"1.5s"`, `"10m"`, `"2h"`, `"1d"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text)
            .map(Dur)
            .map_err(serde::de::Error::custom)
    }
}

/// A signed duration for clock jumps: `"+30m"`, `"-5m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offset(pub i64);

impl Offset {
    /// Milliseconds, signed.
    pub fn millis(self) -> i64 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Offset {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let (sign, rest) = match text.strip_prefix('-') {
            Some(rest) => (-1, rest),
            None => (1, text.strip_prefix('+').unwrap_or(&text)),
        };
        let d = parse_duration(rest).map_err(serde::de::Error::custom)?;
        let ms = i64::try_from(d.as_millis()).map_err(serde::de::Error::custom)?;
        Ok(Offset(sign * ms))
    }
}

/// One name or a list of names.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Names {
    /// `"a"`
    One(String),
    /// `["a", "b"]`
    Many(Vec<String>),
}

impl Names {
    /// The names, in order.
    pub fn iter(&self) -> impl Iterator<Item = &String> {
        match self {
            Names::One(n) => std::slice::from_ref(n).iter(),
            Names::Many(v) => v.iter(),
        }
    }
}

/// A whole scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// A one-line title.
    pub name: String,
    /// What the scenario shows, for readers.
    #[serde(default)]
    pub description: String,
    /// How long to simulate.
    pub duration: Spanned<Dur>,
    /// The seed used when none is given on the command line.
    #[serde(default)]
    pub seed: u64,
    /// Whether the trace lists every route change, renewal and listing (default), or
    /// only leases, steps and checks (for large scenarios).
    #[serde(default = "yes")]
    pub trace_routes: bool,
    /// Whether the invariant "a caught-up node routes to exactly the live leases" is
    /// checked after every event (default), or only by `converged` expectations: the
    /// check walks the node's routes, which for thousands of nodes costs more than the
    /// run itself.
    #[serde(default = "yes")]
    pub check_routes_every_event: bool,
    /// The overlay network and lease timing.
    pub network: NetworkSection,
    /// The store's behaviour.
    #[serde(default)]
    pub store: StoreSection,
    /// The faults of every link at the start.
    #[serde(default)]
    pub underlay: Option<Spanned<FaultFields>>,
    /// The nodes (with those of the node groups, once parsed).
    #[serde(default, rename = "node")]
    pub nodes: Vec<Spanned<NodeSection>>,
    /// Groups of alike nodes, for large clusters; parsing turns each into its nodes and
    /// their start and restart steps.
    #[serde(default, rename = "node_group")]
    pub node_groups: Vec<Spanned<NodeGroup>>,
    /// Timed actions.
    #[serde(default, rename = "step")]
    pub steps: Vec<Spanned<Step>>,
    /// Timed checks.
    #[serde(default, rename = "expect")]
    pub expects: Vec<Spanned<Expect>>,
}

/// `[network]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSection {
    /// flannel's net-conf: a JSON string, or the same fields as a TOML table.
    pub config: Spanned<toml::Value>,
    /// Lease TTL (flannel: 24h).
    #[serde(default = "default_ttl")]
    pub lease_ttl: Dur,
    /// Renew this long before expiry (flannel: 1h).
    #[serde(default = "default_margin")]
    pub renew_margin: Dur,
    /// First retry delay after a failure.
    #[serde(default = "default_retry_min")]
    pub retry_min: Dur,
    /// Longest retry delay.
    #[serde(default = "default_retry_max")]
    pub retry_max: Dur,
    /// Reservations an operator wrote before the start.
    #[serde(default, rename = "reservation")]
    pub reservations: Vec<Reservation>,
}

fn default_ttl() -> Dur {
    Dur(Duration::from_secs(24 * 3600))
}
fn default_margin() -> Dur {
    Dur(Duration::from_secs(3600))
}
fn default_retry_min() -> Dur {
    Dur(Duration::from_secs(1))
}
fn default_retry_max() -> Dur {
    Dur(Duration::from_secs(30))
}

/// A lease with no TTL, written by an operator.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reservation {
    /// The reserved subnet.
    pub subnet: Ipv4Net,
    /// The public IP it is reserved for.
    pub ip: Ipv4Addr,
}

/// `[store]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// One-way latency between a node and the store.
    #[serde(default = "default_store_latency")]
    pub latency: Dur,
    /// Past changes kept for watches.
    #[serde(default)]
    pub history_limit: Option<usize>,
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            latency: default_store_latency(),
            history_limit: None,
        }
    }
}

fn default_store_latency() -> Dur {
    Dur(Duration::from_millis(2))
}

/// Link faults; every field optional (unset keeps what the link had).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultFields {
    /// Base one-way delay.
    pub latency: Option<Dur>,
    /// Uniform extra delay up to this.
    pub jitter: Option<Dur>,
    /// Loss probability.
    pub loss: Option<f64>,
    /// Duplication probability.
    pub duplicate: Option<f64>,
    /// Reordering probability.
    pub reorder: Option<f64>,
    /// How far a reordered datagram is held back.
    pub reorder_delay: Option<Dur>,
    /// Corruption probability.
    pub corrupt: Option<f64>,
    /// Underlay MTU.
    pub mtu: Option<usize>,
}

/// `[[node]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// The node's name in steps and traces.
    pub name: String,
    /// Its public (underlay) IP.
    pub ip: Ipv4Addr,
    /// Its containers: a count (named `c0`, `c1`, ...) or a list of names.
    #[serde(default)]
    pub containers: Option<Containers>,
    /// The subnet its `subnet.env` records from an earlier life.
    #[serde(default)]
    pub previous_subnet: Option<Ipv4Net>,
    /// Whether it starts at time 0 (default) or waits for a `start` step.
    #[serde(default = "yes")]
    pub start: bool,
    /// It is deliberately given the public IP of another node (a misconfiguration the
    /// scenario attacks with); without it two nodes of one IP are an error.
    #[serde(default)]
    pub duplicate_ip: bool,
}

/// `[[node_group]]`: `count` nodes named `name` and a number (`n0000`...), their public
/// IPs counting up from `first_ip`, started in waves and perhaps restarted in waves.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeGroup {
    /// The names' prefix.
    pub name: String,
    /// How many nodes.
    pub count: usize,
    /// The first node's public IP.
    pub first_ip: Ipv4Addr,
    /// Each node's containers.
    #[serde(default)]
    pub containers: Option<Containers>,
    /// When they start (default: all at time 0).
    #[serde(default)]
    pub start: Option<Waves>,
    /// A rolling restart: the first `count` nodes stop and start again, wave by wave.
    #[serde(default)]
    pub restart: Option<Waves>,
}

/// Nodes taken in order, in `waves` equal waves, the first at `at`, the others evenly
/// spread until `at + over`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Waves {
    /// The first wave.
    pub at: Dur,
    /// From the first wave to the last.
    #[serde(default)]
    pub over: Dur,
    /// How many waves.
    pub waves: usize,
    /// How many of the group's nodes (default all).
    #[serde(default)]
    pub count: Option<usize>,
}

impl Waves {
    /// When node `i` of `n` goes.
    pub fn time_of(&self, i: usize, n: usize) -> Duration {
        let waves = self.waves.clamp(1, n.max(1));
        let wave = i * waves / n.max(1);
        if waves == 1 {
            return self.at.0;
        }
        self.at.0 + self.over.0 * wave as u32 / (waves - 1) as u32
    }
}

fn yes() -> bool {
    true
}

/// How a node's containers are given.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Containers {
    /// `containers = 2`
    Count(u8),
    /// `containers = ["web", "db"]`
    Names(Vec<String>),
}

impl NodeSection {
    /// The container names, `c0` when none were given.
    pub fn container_names(&self) -> Vec<String> {
        match &self.containers {
            None => vec!["c0".into()],
            Some(Containers::Count(n)) => (0..*n).map(|i| format!("c{i}")).collect(),
            Some(Containers::Names(v)) => v.clone(),
        }
    }
}

/// What a ping is expected to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PingExpect {
    /// A reply arrives within the deadline.
    #[default]
    Ok,
    /// No reply arrives within the deadline.
    Fail,
}

/// `[[step]]`: an action at a time, chosen by `do`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "do", rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// Start a node that is not running.
    Start { at: Dur, node: String },
    /// Stop a node gracefully (its lease stays in the store until it expires).
    Stop { at: Dur, node: String },
    /// Crash a node: it loses its memory, keeps its subnet file.
    Crash { at: Dur, node: String },
    /// Start a stopped or crashed node again.
    Restart { at: Dur, node: String },
    /// Cut the underlay between two groups (both ways unless `one_way`, then only
    /// `from -> to`).
    Partition {
        at: Dur,
        from: Names,
        to: Names,
        #[serde(default)]
        one_way: bool,
    },
    /// Undo partitions: between two groups (both ways), or all of them.
    Heal {
        at: Dur,
        #[serde(default)]
        from: Option<Names>,
        #[serde(default)]
        to: Option<Names>,
    },
    /// Change link faults: of the links `from -> to` (both ways), or of every link.
    Faults {
        at: Dur,
        #[serde(default)]
        from: Option<Names>,
        #[serde(default)]
        to: Option<Names>,
        #[serde(default)]
        latency: Option<Dur>,
        #[serde(default)]
        jitter: Option<Dur>,
        #[serde(default)]
        loss: Option<f64>,
        #[serde(default)]
        duplicate: Option<f64>,
        #[serde(default)]
        reorder: Option<f64>,
        #[serde(default)]
        reorder_delay: Option<Dur>,
        #[serde(default)]
        corrupt: Option<f64>,
        #[serde(default)]
        mtu: Option<usize>,
    },
    /// Make the store unreachable, for a while or until `store_recover`.
    StoreOutage {
        at: Dur,
        #[serde(default, rename = "for")]
        for_: Option<Dur>,
    },
    /// End a store outage.
    StoreRecover { at: Dur },
    /// Move one node's clock by a signed offset ("+30m", "-5m").
    ClockJump { at: Dur, node: String, by: Offset },
    /// Ping from one container to another ("node" or "node/container"), once a
    /// second until a reply or the deadline.
    Ping {
        at: Dur,
        from: String,
        to: String,
        within: Dur,
        #[serde(default)]
        expect: PingExpect,
    },
    /// Send `bytes` over TCP from one container to another; must complete in time.
    Tcp {
        at: Dur,
        from: String,
        to: String,
        bytes: u64,
        within: Dur,
    },
    /// An operator deletes the lease a node holds.
    DeleteLease { at: Dur, node: String },
    /// An operator writes a reservation.
    Reserve {
        at: Dur,
        subnet: Ipv4Net,
        ip: Ipv4Addr,
    },
    /// Compact the store's history up to its current revision.
    Compact { at: Dur },
    /// A node sends `count` ICMP echo requests to a container ("node/container") whose
    /// inner source is `source`, an address it does not hold: a hostile or broken peer.
    /// With `via`, they go to that node's public IP instead of the container's node's.
    Spoof {
        at: Dur,
        from: String,
        to: String,
        source: Ipv4Addr,
        #[serde(default = "one")]
        count: u32,
        /// The node whose public IP the datagrams go to (default: `to`'s node).
        #[serde(default)]
        via: Option<String>,
    },
    /// Someone writes `value` (text, as is) at `key` under the subnets prefix, with no
    /// TTL: garbage, or a lease no node should take for one.
    Put { at: Dur, key: String, value: String },
    /// A node that is down gets another public IP (a DHCP lease, a moved VM); it keeps
    /// its subnet file.
    ChangeIp { at: Dur, node: String, ip: Ipv4Addr },
    /// An operator writes a new network config (as `weft config set`): nodes started
    /// from now on run with it, as a daemon reads the config when it starts.
    SetConfig { at: Dur, config: toml::Value },
    /// An operator deletes the network config: a node started from now on waits for it
    /// to be written again, as the daemon does.
    DeleteConfig { at: Dur },
}

fn one() -> u32 {
    1
}

impl Step {
    /// Its name, as the file's `do` writes it (`"partition"`).
    pub fn name(&self) -> &'static str {
        match self {
            Step::Start { .. } => "start",
            Step::Stop { .. } => "stop",
            Step::Crash { .. } => "crash",
            Step::Restart { .. } => "restart",
            Step::Partition { .. } => "partition",
            Step::Heal { .. } => "heal",
            Step::Faults { .. } => "faults",
            Step::StoreOutage { .. } => "store_outage",
            Step::StoreRecover { .. } => "store_recover",
            Step::ClockJump { .. } => "clock_jump",
            Step::Ping { .. } => "ping",
            Step::Tcp { .. } => "tcp",
            Step::DeleteLease { .. } => "delete_lease",
            Step::Reserve { .. } => "reserve",
            Step::Compact { .. } => "compact",
            Step::Spoof { .. } => "spoof",
            Step::Put { .. } => "put",
            Step::ChangeIp { .. } => "change_ip",
            Step::SetConfig { .. } => "set_config",
            Step::DeleteConfig { .. } => "delete_config",
        }
    }

    /// When it happens.
    pub fn at(&self) -> Duration {
        match self {
            Step::Start { at, .. }
            | Step::Stop { at, .. }
            | Step::Crash { at, .. }
            | Step::Restart { at, .. }
            | Step::Partition { at, .. }
            | Step::Heal { at, .. }
            | Step::Faults { at, .. }
            | Step::StoreOutage { at, .. }
            | Step::StoreRecover { at }
            | Step::ClockJump { at, .. }
            | Step::Ping { at, .. }
            | Step::Tcp { at, .. }
            | Step::DeleteLease { at, .. }
            | Step::Reserve { at, .. }
            | Step::Spoof { at, .. }
            | Step::Put { at, .. }
            | Step::ChangeIp { at, .. }
            | Step::SetConfig { at, .. }
            | Step::DeleteConfig { at }
            | Step::Compact { at } => at.0,
        }
    }
}

/// Which subnet a node is expected to hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubnetExpect {
    /// This one.
    Exactly(Ipv4Net),
    /// The one it held before its last crash or stop.
    Previous,
    /// Some subnet.
    Any,
    /// None.
    None,
}

impl<'de> Deserialize<'de> for SubnetExpect {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match text.as_str() {
            "previous" => Ok(SubnetExpect::Previous),
            "any" => Ok(SubnetExpect::Any),
            "none" => Ok(SubnetExpect::None),
            s => s.parse().map(SubnetExpect::Exactly).map_err(|_| {
                serde::de::Error::custom(format!(
                    "{s:?} is not a subnet, \"previous\", \"any\" or \"none\""
                ))
            }),
        }
    }
}

/// `[[expect]]`: a check at a time, chosen by `check`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "check", rename_all = "snake_case", deny_unknown_fields)]
pub enum Expect {
    /// The node holds this subnet (or "previous", "any", "none").
    Holds {
        at: Dur,
        node: String,
        subnet: SubnetExpect,
    },
    /// The store holds this many leases.
    Leases { at: Dur, count: usize },
    /// The node has this many routes.
    Routes { at: Dur, node: String, count: usize },
    /// The node reported an error containing this text by now.
    Error {
        at: Dur,
        node: String,
        contains: String,
    },
    /// The node stopped because its lease was deleted.
    Stopped { at: Dur, node: String },
    /// Every running node's routes equal the live peer leases.
    Converged { at: Dur },
    /// Every node runs and holds a lease, no two of them overlapping.
    AllLeased { at: Dur },
    /// The running node's core has dropped exactly `count` packets for `reason` (a
    /// drop reason's name: `spoofed_source`, `unknown_peer`...) since it started.
    Drops {
        at: Dur,
        node: String,
        reason: String,
        count: u64,
    },
    /// The running node has reported exactly `count` store entries under the subnets
    /// prefix that are no lease of its network, and skipped them.
    Skipped { at: Dur, node: String, count: usize },
}

impl Expect {
    /// When it is checked.
    pub fn at(&self) -> Duration {
        match self {
            Expect::Holds { at, .. }
            | Expect::Leases { at, .. }
            | Expect::Routes { at, .. }
            | Expect::Error { at, .. }
            | Expect::Stopped { at, .. }
            | Expect::Converged { at }
            | Expect::AllLeased { at }
            | Expect::Drops { at, .. }
            | Expect::Skipped { at, .. } => at.0,
        }
    }
}
