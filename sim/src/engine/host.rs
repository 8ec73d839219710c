//! A host: one node's core, its containers, its subnet file, its clock offset; and how
//! the world drives its node -- starts, stops, store operations out, results and
//! timeouts in.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use weft_core::forward::{ForwardTable, ThreadDrops};
use weft_core::lease::LeaseKey;
use weft_core::node::{Node, NodeConfig, StoreOp};
use weft_core::store::{StoreError, DEFAULT_PREFIX};
use weft_core::Timestamp;

use super::datapath::Guest;
use super::store::WatchCursor;
use super::{Ev, World, STORE_TIMEOUT};
use crate::time::SimTime;

/// A running node.
#[derive(Debug)]
pub struct Running {
    /// The core.
    pub node: Node,
    /// Containers, present while the node holds a lease.
    pub guests: Vec<Guest>,
    /// The forwarding table the node last published: every packet is decided by it.
    pub table: Arc<ForwardTable>,
    /// The host's packet drops, by reason.
    pub drops: ThreadDrops,
    pub(crate) seed: u64,
    /// How many times containers were (re)built, for their seeds.
    pub(crate) builds: u64,
    /// Whether a watch was reported stopped already.
    reported_stop: bool,
}

/// Whether the host runs.
#[derive(Debug)]
pub enum HostState {
    /// Not running (never started, stopped, crashed, or exited).
    Down,
    /// Running.
    Up(Box<Running>),
}

/// See the module docs.
#[derive(Debug)]
pub struct Host {
    /// Its name.
    pub name: String,
    /// Its public IP.
    pub ip: Ipv4Addr,
    /// Its container names.
    pub container_names: Vec<String>,
    /// Running or not.
    pub state: HostState,
    /// What its `subnet.env` says: survives crashes.
    pub subnet_file: Option<LeaseKey>,
    /// The subnet it held when it last went down.
    pub previous: Option<LeaseKey>,
    /// Its clock minus the store's, in milliseconds.
    pub clock_offset_ms: i64,
    /// Starts so far.
    pub incarnation: u32,
    /// Errors it reported, as displayed.
    pub errors: Vec<String>,
    /// It exited because its lease was deleted by someone else.
    pub exited: bool,
    pub(crate) watch: Option<WatchCursor>,
    pub(crate) timeout_at: Option<SimTime>,
    pub(crate) wake_at: Option<SimTime>,
    /// Listings and creates whose results are still to come back: until they do, the
    /// node's routes may still change. (Renewals change only the node's own lease.)
    pub(crate) in_flight: std::collections::BTreeSet<weft_core::node::OpId>,
    /// Requests from this node to the store are lost.
    pub store_cut_up: bool,
    /// Answers and watch events from the store to this node are lost.
    pub store_cut_down: bool,
    /// Store entries its nodes reported as no lease and skipped, since its last start.
    pub skipped: usize,
    /// Every IPv4 subnet it has held, in any incarnation: a packet it sends may carry a
    /// source in one of them (one still in flight from before a move), never another.
    pub held_ever: Vec<ipnet::Ipv4Net>,
    /// The network config it last started with, an index into the world's networks.
    pub network: usize,
    /// The routes its node has announced (route events applied in order), since its
    /// last start: they must always equal the node's routes.
    pub announced: std::collections::BTreeSet<(ipnet::IpNet, std::net::IpAddr)>,
    /// The last time its way to the store was in doubt (a cut or heal of its link, a
    /// jump of its clock, a start): a lease may run out only within a TTL of it.
    pub store_trouble_at: SimTime,
    /// Since when its node has been seen waiting to retry after a store failure, while
    /// it waits: see [`World::check_store_wait`].
    pub store_wait_seen: Option<SimTime>,
    /// The store revision of the last route-moving change after which its forwarding
    /// table was checked against its routes (see `World::check_invariants`).
    pub forward_checked: u64,
    /// What the last successful check of its routes against the live leases saw.
    pub(crate) routes_checked: Option<super::check::RoutesChecked>,
}

impl Host {
    /// A host that is not running yet.
    pub fn new(
        name: &str,
        ip: Ipv4Addr,
        containers: Vec<String>,
        subnet_file: Option<LeaseKey>,
    ) -> Self {
        Host {
            name: name.to_string(),
            ip,
            container_names: containers,
            state: HostState::Down,
            subnet_file,
            previous: None,
            clock_offset_ms: 0,
            incarnation: 0,
            errors: Vec::new(),
            exited: false,
            watch: None,
            timeout_at: None,
            wake_at: None,
            in_flight: Default::default(),
            store_cut_up: false,
            store_cut_down: false,
            skipped: 0,
            held_ever: Vec::new(),
            network: 0,
            announced: Default::default(),
            store_trouble_at: SimTime::ZERO,
            store_wait_seen: None,
            forward_checked: 0,
            routes_checked: None,
        }
    }

    pub(crate) fn is_incarnation(&self, inc: u32) -> bool {
        self.running_incarnation() == Some(inc)
    }

    pub(crate) fn running_incarnation(&self) -> Option<u32> {
        matches!(self.state, HostState::Up(_)).then_some(self.incarnation)
    }

    /// The node's clock at virtual time `t`.
    pub fn node_now(&self, t: SimTime) -> Timestamp {
        t.to_timestamp(self.clock_offset_ms)
    }

    /// Its public IPv6 address, for dual-stack networks: 2001:db8:: followed by its IPv4
    /// address.
    pub fn ipv6(&self) -> Ipv6Addr {
        Ipv6Addr::from((0x2001_0db8u128 << 96) | u128::from(u32::from(self.ip)))
    }

    /// The running node, if any.
    pub fn node(&self) -> Option<&Node> {
        match &self.state {
            HostState::Up(r) => Some(&r.node),
            HostState::Down => None,
        }
    }

    pub(crate) fn node_mut(&mut self) -> Option<&mut Node> {
        match &mut self.state {
            HostState::Up(r) => Some(&mut r.node),
            HostState::Down => None,
        }
    }

    /// The running part, if up, its forwarding table brought up to date first: the
    /// node builds it only when asked, so that a node hearing of many leases between
    /// two packets builds it once.
    pub(crate) fn running_table(&mut self) -> Option<&Running> {
        let run = self.running_mut()?;
        if let Some(table) = run.node.poll_forward_table() {
            run.table = table;
        }
        Some(run)
    }

    /// The running part, if up.
    pub fn running(&self) -> Option<&Running> {
        match &self.state {
            HostState::Up(r) => Some(r),
            HostState::Down => None,
        }
    }

    pub(crate) fn running_mut(&mut self) -> Option<&mut Running> {
        match &mut self.state {
            HostState::Up(r) => Some(r),
            HostState::Down => None,
        }
    }

    /// The lease key the running node holds.
    pub fn lease_key(&self) -> Option<LeaseKey> {
        self.node()?.lease().map(|l| l.key)
    }

    /// Whether it runs.
    pub fn is_up(&self) -> bool {
        matches!(self.state, HostState::Up(_))
    }
}

impl World {
    /// Adds a host (not started).
    pub fn add_host(&mut self, host: Host) -> usize {
        let i = self.hosts.len();
        self.by_name.insert(host.name.clone(), i);
        self.by_ip.insert(host.ip, i);
        self.hosts.push(host);
        i
    }

    /// The index of the host called `name`.
    pub fn host_index(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// Starts host `h` (a fresh process: it reads its subnet file, nothing else).
    pub fn start_host(&mut self, h: usize) {
        if self.hosts[h].is_up() {
            return;
        }
        if self.config_deleted {
            // The daemon waits for the config key; so does this host, until set_config.
            if !self.waiting_for_config.contains(&h) {
                self.waiting_for_config.push(h);
            }
            let name = self.hosts[h].name.clone();
            self.note_step(format!("{name} waits for the network config to be written"));
            return;
        }
        self.hosts[h].incarnation += 1;
        let inc = self.hosts[h].incarnation;
        let seed = self.node_seed(h, inc);
        let host = &mut self.hosts[h];
        let config = NodeConfig::for_network(
            DEFAULT_PREFIX,
            &self.cfg.network,
            host.ip,
            Some(host.ipv6()),
        );
        let mut config = match config {
            Ok(config) => config,
            Err(e) => {
                let name = host.name.clone();
                self.fail(format!("{name} cannot start: {e}"));
                return;
            }
        };
        let alloc = &mut config.alloc;
        alloc.lease_ttl = self.cfg.lease_ttl;
        alloc.renew_margin = self.cfg.renew_margin;
        alloc.retry_min = self.cfg.retry_min;
        alloc.retry_max = self.cfg.retry_max;
        alloc.previous = host.subnet_file;
        let mut node = Node::new(config, seed, host.node_now(self.now));
        node.set_route_events(self.cfg.trace_routes);
        let table = node.poll_forward_table().unwrap_or_default();
        host.exited = false;
        host.skipped = 0;
        host.announced.clear();
        host.store_trouble_at = self.now;
        host.store_wait_seen = None;
        host.forward_checked = 0;
        host.network = self.networks.len() - 1;
        host.watch = None;
        host.timeout_at = None;
        host.wake_at = None;
        host.in_flight.clear();
        host.state = HostState::Up(Box::new(Running {
            node,
            guests: Vec::new(),
            table,
            drops: ThreadDrops::default(),
            seed,
            builds: 0,
            reported_stop: false,
        }));
        let what = match host.subnet_file {
            Some(k) => format!("starts (subnet file: {k})"),
            None => "starts".to_string(),
        };
        let name = host.name.clone();
        self.note_step(format!("{name} {what}"));
        self.dirty.push(h);
    }

    /// Takes host `h` down: `why` is "stops" or "crashes". Either way the process and
    /// its memory are gone; the lease stays in the store until it expires, and the
    /// subnet file stays on disk.
    pub fn stop_host(&mut self, h: usize, why: &str) {
        let host = &mut self.hosts[h];
        let held = host.lease_key();
        if held.is_some() {
            host.previous = held;
        }
        host.state = HostState::Down;
        host.watch = None;
        if let Some(k) = held {
            if self.held.get(&k.primary()) == Some(&h) {
                self.held.remove(&k.primary());
            }
        }
        let name = host.name.clone();
        self.note_step(format!("{name} {why}"));
    }

    /// Drains what the node of `h` wants done and said, and reschedules its timers.
    pub(crate) fn sync_host(&mut self, h: usize) {
        let inc = self.hosts[h].incarnation;
        let latency = self.cfg.store_latency;
        let Some(run) = self.hosts[h].running_mut() else {
            return;
        };
        let node = &mut run.node;
        let mut ops = Vec::new();
        while let Some(op) = node.poll_store_op() {
            ops.push(op);
        }
        let mut events = Vec::new();
        while let Some(ev) = node.poll_event() {
            events.push(ev);
        }
        let stopped = node.is_stopped();
        let at = self.now + latency;
        for (id, op) in ops {
            let cut = self.hosts[h].store_cut_up;
            match op {
                StoreOp::Watch { .. } if cut => self.watch_lost(h, inc, id),
                StoreOp::Watch { from, .. } => {
                    if self.cfg.watches {
                        self.schedule(
                            at,
                            Ev::WatchOpen {
                                host: h,
                                inc,
                                id,
                                from,
                            },
                        );
                    }
                }
                op => {
                    if !matches!(op, StoreOp::Renew { .. }) {
                        self.hosts[h].in_flight.insert(id);
                    }
                    let ev = if cut {
                        // The request is lost: the client times out.
                        let result = Err(StoreError::Timeout(STORE_TIMEOUT));
                        (
                            self.now + STORE_TIMEOUT,
                            Ev::StoreResult {
                                host: h,
                                inc,
                                id,
                                result: Box::new(result),
                            },
                        )
                    } else {
                        (
                            at,
                            Ev::StoreExec {
                                host: h,
                                inc,
                                id,
                                op: Box::new(op),
                            },
                        )
                    };
                    self.schedule(ev.0, ev.1);
                }
            }
        }
        for ev in events {
            self.node_event(h, ev);
        }
        if stopped {
            if let Some(r) = self.hosts[h].running_mut() {
                if !r.reported_stop {
                    r.reported_stop = true;
                    self.hosts[h].exited = true;
                    self.stop_host(h, "exits: its lease was deleted by someone else");
                    return;
                }
            }
        }
        self.reschedule_timeout(h);
    }

    fn reschedule_timeout(&mut self, h: usize) {
        let host = &self.hosts[h];
        let Some(node) = host.node() else { return };
        let mut next = node
            .poll_timeout()
            .map(|t| SimTime::from_timestamp(t, host.clock_offset_ms).max(self.now));
        // A daemon sleeps on a monotonic clock: a wake-up it asked for before its wall
        // clock jumped still comes at the same real time, and is how the node notices
        // the jump. Keep an earlier pending one.
        if let Some(pending) = host.timeout_at.filter(|t| *t >= self.now) {
            if next.is_none_or(|n| pending < n) {
                next = Some(pending);
            }
        }
        if next != host.timeout_at {
            let inc = host.incarnation;
            self.hosts[h].timeout_at = next;
            if let Some(at) = next {
                self.schedule(at, Ev::NodeTimeout { host: h, inc });
            }
        }
    }

    pub(crate) fn node_timeout(&mut self, h: usize, inc: u32) {
        let host = &mut self.hosts[h];
        if !host.is_incarnation(inc) || host.timeout_at != Some(self.now) {
            return;
        }
        host.timeout_at = None;
        // A wait on the store ends at its own timer if nothing cut it short: check it
        // before the timer clears it.
        self.check_store_wait(h);
        let host = &mut self.hosts[h];
        let now = host.node_now(self.now);
        if let Some(node) = host.node_mut() {
            node.handle_timeout(now);
        }
        self.dirty.push(h);
    }

    /// A store result reaches host `h`.
    pub(crate) fn store_result(
        &mut self,
        h: usize,
        inc: u32,
        id: weft_core::node::OpId,
        result: Result<weft_core::node::StoreOutput, weft_core::store::StoreError>,
    ) {
        let host = &mut self.hosts[h];
        if !host.is_incarnation(inc) {
            return;
        }
        host.in_flight.remove(&id);
        let now = host.node_now(self.now);
        if let Some(node) = host.node_mut() {
            node.handle_store_result(id, result, now);
        }
        self.dirty.push(h);
    }

    /// The clock of `h` jumps by `by_ms`.
    pub fn clock_jump(&mut self, h: usize, by_ms: i64) {
        self.hosts[h].clock_offset_ms += by_ms;
        self.hosts[h].store_trouble_at = self.now;
        let name = self.hosts[h].name.clone();
        let off = self.hosts[h].clock_offset_ms;
        self.note_step(format!(
            "{name} clock jumps {by_ms:+}ms (now {off:+}ms from the store)"
        ));
        // The node's pending wake-up stays where it was in real time (see
        // `reschedule_timeout`); the node sees the new clock at its next call.
        self.dirty.push(h);
    }
}
