//! A small synchronous driver for nodes over the memory store, for the allocator tests:
//! store operations run one at a time, round-robin across nodes, so that concurrent
//! acquisitions really interleave (two nodes list, both pick, one create loses).

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use weft_core::allocator::{AllocEvent, AllocatorConfig};
use weft_core::config::BackendType;
use weft_core::lease::{decode_all, Lease, LeaseKey};
use weft_core::node::{Node, NodeConfig, NodeEvent, OpId, StoreOp, StoreOutput};
use weft_core::store::{subnets_prefix, StoreError, StoreModel};
use weft_core::subnet::SubnetSpace;
use weft_core::Timestamp;

pub const PREFIX: &str = "/coreos.com/network";

#[derive(Debug)]
pub struct SimNode {
    pub node: Node,
    pub ip: Ipv4Addr,
    queue: VecDeque<(OpId, StoreOp)>,
    /// The running watch: its id and the next revision it wants.
    watch: Option<(OpId, u64)>,
    pub events: Vec<NodeEvent>,
}

impl SimNode {
    /// The next revision the node's running watch wants, if it has one running.
    pub fn watch_from(&self) -> Option<u64> {
        self.watch.map(|(_, from)| from)
    }
}

/// A check run after every store operation (see `Cluster::after_each_op`).
pub type OpCheck = fn(&Cluster) -> Result<(), String>;

/// Nodes by public IP, a store, and the subnet file each IP's node left behind.
#[derive(Debug)]
pub struct Cluster {
    pub store: StoreModel,
    pub space: SubnetSpace,
    pub ttl: Duration,
    pub margin: Duration,
    pub nodes: BTreeMap<Ipv4Addr, SimNode>,
    pub subnet_files: BTreeMap<Ipv4Addr, LeaseKey>,
    pub now: Timestamp,
    seed: u64,
    /// An injected outage: every operation and watch fails while it lasts.
    unavailable: bool,
    /// Each node's clock, this many milliseconds away from the store's (default 0).
    pub offsets: BTreeMap<Ipv4Addr, i64>,
    /// Nodes whose next store answer is lost: the operation takes effect, the node is
    /// told it timed out.
    pub lose_next_answer: BTreeSet<Ipv4Addr>,
    /// Nodes whose watch delivers nothing for now (a stream that lags behind the
    /// store): they learn of changes only from the answers to their own operations.
    pub watch_paused: BTreeSet<Ipv4Addr>,
    /// Called after every store operation, watch delivery and expiry; what it returns
    /// as an error is collected in `violations`.
    pub after_each_op: Option<OpCheck>,
    /// What `after_each_op` found, in order.
    pub violations: Vec<String>,
    /// Whether `space` is an IPv6 space whose nodes run IPv6-only (`EnableIPv4:
    /// false`): each keyed by its IPv4 address here, recording [`ip6`] of it.
    pub v6_only: bool,
}

impl Cluster {
    pub fn new(space: SubnetSpace, ttl: Duration, margin: Duration, seed: u64) -> Self {
        let now = Timestamp::from_millis(1_700_000_000_000);
        Cluster {
            store: StoreModel::new(now),
            space,
            ttl,
            margin,
            nodes: BTreeMap::new(),
            subnet_files: BTreeMap::new(),
            now,
            seed,
            unavailable: false,
            offsets: BTreeMap::new(),
            lose_next_answer: BTreeSet::new(),
            watch_paused: BTreeSet::new(),
            after_each_op: None,
            violations: Vec::new(),
            v6_only: false,
        }
    }

    /// The time on `ip`'s clock.
    pub fn node_now(&self, ip: Ipv4Addr) -> Timestamp {
        let offset = self.offsets.get(&ip).copied().unwrap_or(0);
        Timestamp::from_millis(self.now.as_millis().saturating_add_signed(offset))
    }

    /// The store's time when `ip`'s clock reads `t`.
    fn store_time_of(&self, ip: Ipv4Addr, t: Timestamp) -> Timestamp {
        let offset = self.offsets.get(&ip).copied().unwrap_or(0);
        Timestamp::from_millis(t.as_millis().saturating_add_signed(-offset))
    }

    /// Runs the per-operation check, if any.
    pub fn check_op(&mut self, what: &str) {
        if let Some(check) = self.after_each_op {
            if let Err(e) = check(self) {
                self.violations.push(format!("after {what}: {e}"));
            }
        }
    }

    /// Injects (or ends) a store outage; expiry goes on meanwhile.
    pub fn set_unavailable(&mut self, unavailable: bool) {
        self.unavailable = unavailable;
    }

    pub fn is_unavailable(&self) -> bool {
        self.unavailable
    }

    pub fn start(&mut self, ip: Ipv4Addr) {
        if self.nodes.contains_key(&ip) {
            return;
        }
        let mut alloc = if self.v6_only {
            AllocatorConfig::v6_only(self.space, ip6(ip.octets()[3]), BackendType::Alloc)
        } else {
            AllocatorConfig::new(self.space, ip, BackendType::Alloc)
        };
        alloc.lease_ttl = self.ttl;
        alloc.renew_margin = self.margin;
        alloc.previous = self.subnet_files.get(&ip).copied();
        self.seed = self.seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        let node = Node::new(
            NodeConfig {
                prefix: PREFIX.into(),
                alloc,
            },
            self.seed,
            self.node_now(ip),
        );
        self.nodes.insert(
            ip,
            SimNode {
                node,
                ip,
                queue: VecDeque::new(),
                watch: None,
                events: Vec::new(),
            },
        );
        self.collect(ip);
    }

    /// Graceful stop or crash: both keep the lease in the store and the subnet file.
    pub fn stop(&mut self, ip: Ipv4Addr) {
        self.nodes.remove(&ip);
    }

    fn collect(&mut self, ip: Ipv4Addr) {
        let Some(n) = self.nodes.get_mut(&ip) else {
            return;
        };
        while let Some(op) = n.node.poll_store_op() {
            if let StoreOp::Watch { from, .. } = op.1 {
                n.watch = Some((op.0, from));
            } else {
                n.queue.push_back(op);
            }
        }
        while let Some(ev) = n.node.poll_event() {
            if let NodeEvent::Lease(AllocEvent::Acquired { lease, .. }) = &ev {
                self.subnet_files.insert(ip, lease.key);
            }
            n.events.push(ev);
        }
    }

    fn execute(&mut self, op: &StoreOp) -> Result<StoreOutput, StoreError> {
        if self.unavailable {
            return Err(StoreError::Unavailable(
                "outage injected by the test".into(),
            ));
        }
        op.call(&mut self.store).expect("watches are not queued")
    }

    fn deliver_watches(&mut self) -> bool {
        let prefix = subnets_prefix(PREFIX);
        let ips: Vec<_> = self.nodes.keys().copied().collect();
        let mut any = false;
        for ip in ips {
            let Some((id, from)) = self.nodes[&ip].watch else {
                continue;
            };
            if self.watch_paused.contains(&ip) {
                continue;
            }
            let result = if self.unavailable {
                Err(StoreError::Unavailable(
                    "outage injected by the test".into(),
                ))
            } else {
                self.store.events_since(&prefix, from)
            };
            let now = self.node_now(ip);
            let n = self.nodes.get_mut(&ip).unwrap();
            match result {
                Ok(events) if events.is_empty() => continue,
                Ok(events) => {
                    n.watch = Some((id, events.last().unwrap().revision() + 1));
                    n.node.handle_watch_events(id, &events, now);
                }
                Err(e) => {
                    n.watch = None;
                    n.node.handle_watch_error(id, e, now);
                }
            }
            any = true;
            self.collect(ip);
            self.check_op(&format!("a watch delivery to {ip}"));
        }
        any
    }

    /// Runs store operations round-robin until no node has any left.
    pub fn settle(&mut self) {
        for _ in 0..100_000 {
            let mut progressed = self.deliver_watches();
            let ips: Vec<_> = self.nodes.keys().copied().collect();
            for ip in ips {
                let Some((id, op)) = self.nodes.get_mut(&ip).unwrap().queue.pop_front() else {
                    continue;
                };
                let mut result = self.execute(&op);
                self.check_op(&format!("{ip}'s {}", op_name(&op)));
                if self.lose_next_answer.remove(&ip) {
                    result = Err(StoreError::Timeout(Duration::from_secs(5)));
                }
                let now = self.node_now(ip);
                self.nodes
                    .get_mut(&ip)
                    .unwrap()
                    .node
                    .handle_store_result(id, result, now);
                self.collect(ip);
                self.check_op(&format!("{ip} handled an answer"));
                progressed = true;
            }
            if !progressed {
                return;
            }
        }
        panic!("the cluster did not settle: livelock");
    }

    /// Moves time forward to `until`, firing every node timer and store expiry on the way.
    pub fn advance(&mut self, d: Duration) {
        let until = self.now + d;
        loop {
            self.settle();
            let next = self
                .nodes
                .iter()
                .filter_map(|(ip, n)| Some(self.store_time_of(*ip, n.node.poll_timeout()?)))
                .chain(self.store.next_expiry())
                .filter(|t| *t <= until)
                .min();
            let Some(next) = next else { break };
            self.now = self.now.max(next);
            if self.store.advance_to(self.now) {
                self.check_op("an expiry");
            }
            let ips: Vec<_> = self.nodes.keys().copied().collect();
            for ip in ips {
                let now = self.node_now(ip);
                self.nodes.get_mut(&ip).unwrap().node.handle_timeout(now);
                self.collect(ip);
            }
        }
        self.now = until;
        if self.store.advance_to(until) {
            self.check_op("an expiry");
        }
        self.settle();
    }

    /// Every live lease in the store.
    pub fn leases(&self) -> Vec<Lease> {
        let prefix = subnets_prefix(PREFIX);
        let listing = self.store.list(&prefix);
        let (leases, skipped) = decode_all(&prefix, &listing.entries);
        assert!(skipped.is_empty(), "{skipped:?}");
        leases
    }

    pub fn held(&self, ip: Ipv4Addr) -> Option<LeaseKey> {
        self.nodes.get(&ip)?.node.lease().map(|l| l.key)
    }
}

fn op_name(op: &StoreOp) -> String {
    match op {
        StoreOp::List { .. } => "list".into(),
        StoreOp::Create { key, .. } => format!("create {key}"),
        StoreOp::Renew { key, .. } => format!("renew {key}"),
        StoreOp::Watch { .. } => "watch".into(),
    }
}

pub fn space(network: &str, subnet_len: u8) -> SubnetSpace {
    let net: ipnet::IpNet = network.parse().unwrap();
    let probe = SubnetSpace::new(net, subnet_len, net.network(), net.network()).unwrap();
    let total = probe.total_in_network();
    let min = probe.subnet_at(1).addr();
    let max = probe.subnet_at(total - 1).addr();
    SubnetSpace::new(net, subnet_len, min, max).unwrap()
}

pub fn ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, i)
}

/// The public IPv6 address of node `i` of an IPv6-only cluster.
pub fn ip6(i: u8) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(i))
}
