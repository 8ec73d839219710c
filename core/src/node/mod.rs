//! The node: the one object a driver talks to.
//!
//! It ties the lease table, the allocator, the route table and the forwarding table
//! together and owns every decision about the store conversation (see [`store`]): the
//! initial listing, the watch that follows it -- held back until the node has reported on
//! its lease --, which watch a batch belongs to, the re-list after a compaction, and the
//! retries after failures, with jitter.
//!
//! A driver holds no policy. It loops:
//! 1. performs every [`Node::poll_store_op`] (a one-shot operation through
//!    [`StoreOp::call`], a watch by starting it and tagging its batches with the op's id),
//!    feeding each result to [`Node::handle_store_result`] and each watch batch or failure
//!    to [`Node::handle_watch_events`] / [`Node::handle_watch_error`];
//! 2. acts on every [`Node::poll_event`];
//! 3. hands [`Node::poll_forward_table`] to its datapath when it returns one;
//! 4. sleeps until [`Node::poll_timeout`] (or the next input) and calls
//!    [`Node::handle_timeout`].
//!
//! Every `poll_*` may change its answer only after a `handle_*` call (or [`Node::new`]).

mod config;
mod store;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::allocator::{AllocEvent, Allocator};
use crate::forward::{ForwardTable, Peer};
use crate::lease::{Lease, Skipped};
use crate::lease_table::{LeaseTable, TableChange};
use crate::router::{RouteChange, RouteTable, Routes, Underlay};
use crate::store::{subnets_prefix, Revision, StoreError};
pub use crate::store::{StoreOp, StoreOutput};
use crate::subnet::SubnetSpace;
use crate::time::Timestamp;
use crate::timer::TimerTable;

pub use crate::forward::{DropCounters, DropReason, Inbound, Outbound, ThreadDrops};
pub use config::{NodeConfig, NodeConfigError};
use store::WatchState;
pub use store::PROBE_EVERY;

/// Identifies a store operation so that its result finds its way back; for a watch, it
/// identifies the watch, and every batch of it carries it.
pub type OpId = u64;

/// What happened, for the driver to act on and log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent {
    /// Something about our own lease.
    Lease(AllocEvent),
    /// A route to program or remove.
    Route(RouteChange),
    /// A store entry under the subnets prefix that is not a valid lease (reported once
    /// per key and value); it is skipped and never overwritten.
    Skipped(Skipped),
    /// The lease table was (re)loaded from a listing.
    Synced {
        /// The listing's revision.
        revision: Revision,
        /// How many valid leases it held.
        leases: usize,
    },
    /// A listing or watch failed; the node tries again at `retry_at`.
    StoreFailed {
        /// The failure.
        error: StoreError,
        /// When the node tries again.
        retry_at: Timestamp,
    },
}

/// Whether a lease-table change can change a route: a renewal (the same subnets and
/// attributes, a later expiry) cannot, and then the forwarding table is left as it is,
/// as it is when route events are on and the renewal makes none.
fn moves_routes(change: &TableChange) -> bool {
    match change {
        TableChange::Upsert {
            old: Some(old),
            new,
        } => old.key != new.key || old.attrs != new.attrs,
        TableChange::Upsert { old: None, .. } | TableChange::Remove { .. } => true,
    }
}

/// See the module docs.
#[derive(Debug)]
pub struct Node {
    subnets_prefix: String,
    table: LeaseTable,
    routes: RouteTable,
    allocator: Allocator,
    /// The networks, for the forwarding table.
    spaces: (Option<SubnetSpace>, Option<SubnetSpace>),
    /// The forwarding table as last built; rebuilt from the routes when `forward_stale`,
    /// at the next poll (a node of a large cluster hears many changes between two
    /// packets, and keeps no second copy of its routes).
    forward: Arc<ForwardTable>,
    forward_stale: bool,
    /// The routes changed since the forwarding table was last polled.
    forward_dirty: bool,
    /// Whether route changes are reported as [`NodeEvent::Route`].
    route_events: bool,
    /// Which address the forwarding table sends IPv6 subnets' packets to.
    underlay: Underlay,
    next_op: OpId,
    listing_op: Option<OpId>,
    alloc_op: Option<OpId>,
    /// The probe asking whether the store is back, while one is out.
    probe_op: Option<OpId>,
    /// What the probe lists: the network config's key, one small entry.
    probe_prefix: String,
    watch: WatchState,
    /// The allocator has said something about our lease (acquired, or failed to): the
    /// first watch waits for this.
    lease_reported: bool,
    /// A listing failed and must be retried when the retry timer fires.
    relist_on_retry: bool,
    store_retries: u32,
    retry_min: Duration,
    retry_max: Duration,
    /// Jitter for the store retries; its own stream, apart from the allocator's.
    rng: ChaCha8Rng,
    ops: VecDeque<(OpId, StoreOp)>,
    events: VecDeque<NodeEvent>,
    timers: TimerTable,
    /// The latest `now` we were given, to notice the clock going back.
    last_now: Timestamp,
}

impl Node {
    /// A node that will acquire a lease under `config.prefix`; `seed` drives its random
    /// choices (the subnet drawn, the jitter of its retries). Its first operation is a
    /// listing of the store.
    pub fn new(config: NodeConfig, seed: u64, now: Timestamp) -> Self {
        let subnets_prefix = subnets_prefix(&config.prefix);
        let (retry_min, retry_max) = (config.alloc.retry_min, config.alloc.retry_max);
        let table = config.lease_table();
        let spaces = (config.alloc.v4_space, config.alloc.v6_space);
        let forward = ForwardTable::new(spaces.0, spaces.1);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(1);
        let mut node = Node {
            table,
            routes: match (config.alloc.v4_space, config.alloc.public_ipv6) {
                (None, Some(ip6)) => RouteTable::of_v6_node(ip6),
                _ => RouteTable::of_node(config.alloc.public_ip),
            },
            allocator: Allocator::new(config.alloc, &subnets_prefix, seed),
            spaces,
            forward: Arc::new(forward),
            forward_stale: false,
            forward_dirty: true,
            route_events: true,
            underlay: Underlay::PerFamily,
            subnets_prefix,
            next_op: 0,
            listing_op: None,
            alloc_op: None,
            probe_op: None,
            probe_prefix: crate::store::config_key(&config.prefix),
            watch: WatchState::Idle,
            lease_reported: false,
            relist_on_retry: false,
            store_retries: 0,
            retry_min,
            retry_max,
            rng,
            ops: VecDeque::new(),
            events: VecDeque::new(),
            timers: TimerTable::default(),
            last_now: now,
        };
        node.pump();
        node
    }

    /// The lease we hold, if any.
    pub fn lease(&self) -> Option<&Lease> {
        self.allocator.lease()
    }

    /// Whether the node gave up because its lease was deleted by someone else (flannel
    /// exits in that case; the daemon does too).
    pub fn is_stopped(&self) -> bool {
        self.allocator.is_stopped()
    }

    /// Whether to report route changes as [`NodeEvent::Route`] (on by default). A
    /// driver that programs nothing from them (the simulator when it does not trace
    /// them) turns them off and saves working them out for every lease change; the
    /// routes themselves, [`Node::routes`] and the forwarding table are the same either
    /// way.
    pub fn set_route_events(&mut self, on: bool) {
        self.route_events = on;
    }

    /// The routes to every peer.
    pub fn routes(&self) -> Routes<'_> {
        self.routes.of(&self.table)
    }

    /// Every lease the node knows of.
    pub fn leases(&self) -> &LeaseTable {
        &self.table
    }

    /// Whether a watch is running (asked for and not failed), as opposed to idle or
    /// held back until the lease is reported.
    pub fn is_watching(&self) -> bool {
        matches!(self.watch, WatchState::Running { .. })
    }

    /// When the earliest retry waiting on a store failure is due (the watch's, or the
    /// allocator's create or renewal), while one waits: the probe of the store cuts
    /// such a wait short once the store answers again.
    pub fn store_retry_at(&self) -> Option<Timestamp> {
        [
            self.timers.get(crate::timer::Timer::WatchRetry),
            self.allocator.store_retry_at(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The forwarding table as it is now, whether or not it was polled.
    pub fn forward_table(&self) -> Arc<ForwardTable> {
        if self.forward_stale {
            Arc::new(self.build_forward_table())
        } else {
            self.forward.clone()
        }
    }

    fn build_forward_table(&self) -> ForwardTable {
        let mut table = ForwardTable::new(self.spaces.0, self.spaces.1);
        let (v4, v6) = match self.allocator.lease().map(|l| l.key) {
            Some(k) => (k.ipv4_net(), k.ipv6.map(IpNet::V6)),
            None => (None, None),
        };
        table.set_own(v4, v6);
        for (subnet, public_ip) in self.routes().forward_peers(self.underlay) {
            table.insert(Peer { subnet, public_ip });
        }
        table
    }

    /// Which underlay address the forwarding table sends each subnet's packets to.
    pub fn forward_underlay(&self) -> Underlay {
        self.underlay
    }

    /// Which underlay address the forwarding table sends each subnet's packets to
    /// ([`Underlay::PerFamily`] until told otherwise): the backend's choice, given once
    /// after [`Node::new`]. The routes and their events are not changed by it, only the
    /// forwarding table, which is rebuilt at the next [`Node::poll_forward_table`].
    pub fn set_forward_underlay(&mut self, underlay: Underlay) {
        if self.underlay != underlay {
            self.underlay = underlay;
            self.routes_changed();
        }
    }

    /// A new forwarding table to hand to the datapath, when it changed since the last
    /// call (the first call always returns one). Poll again after every `handle_*` call.
    pub fn poll_forward_table(&mut self) -> Option<Arc<ForwardTable>> {
        if std::mem::take(&mut self.forward_stale) {
            self.forward = Arc::new(self.build_forward_table());
        }
        std::mem::take(&mut self.forward_dirty).then(|| self.forward.clone())
    }

    /// The routes may have changed: the forwarding table is rebuilt at the next poll.
    fn routes_changed(&mut self) {
        self.forward_stale = true;
        self.forward_dirty = true;
    }

    /// The route changes that one lease-table change causes, reported (when route
    /// events are on) and into the forwarding table.
    fn table_changed(&mut self, change: &TableChange) {
        if self.route_events {
            let mut changes = Vec::new();
            self.routes.apply(change, &mut changes);
            self.emit_routes(changes);
        } else if moves_routes(change) {
            self.routes_changed();
        }
    }

    fn push_op(&mut self, op: StoreOp) -> OpId {
        self.next_op += 1;
        self.ops.push_back((self.next_op, op));
        self.next_op
    }

    /// Route changes go to the forwarding table and out as events.
    fn emit_routes(&mut self, changes: Vec<RouteChange>) {
        if changes.is_empty() {
            return;
        }
        self.routes_changed();
        if self.route_events {
            self.events
                .extend(changes.into_iter().map(NodeEvent::Route));
        }
    }

    fn set_own(&mut self, own: Option<&Lease>) {
        let key = own.map(|l| l.key);
        let (v4, v6) = match key {
            Some(k) => (k.ipv4_net(), k.ipv6.map(IpNet::V6)),
            None => (None, None),
        };
        if self.forward.own() != (v4, v6) || self.forward_stale {
            self.routes_changed();
        }
    }

    /// Moves the allocator's requests and reports into the node's queues, keeping the
    /// route table's idea of "our own lease" in step, and releases a held-back watch
    /// once the lease has been reported on.
    fn pump(&mut self) {
        if self.allocator.take_listing_request() {
            self.list();
        }
        while let Some(op) = self.allocator.poll_op() {
            // Only the newest allocator operation counts; an older result is stale.
            self.alloc_op = Some(self.push_op(op));
        }
        while let Some(event) = self.allocator.poll_event() {
            self.lease_reported = true;
            let mut changes = Vec::new();
            match &event {
                AllocEvent::Acquired { lease, .. } => {
                    self.routes
                        .set_own(Some(lease.key), &self.table, &mut changes);
                    let lease = lease.clone();
                    self.set_own(Some(&lease));
                }
                AllocEvent::Lost { .. } => {
                    // A peer that took the subnet becomes a route here (see `set_own`).
                    self.routes.set_own(None, &self.table, &mut changes);
                    self.set_own(None);
                }
                _ => {}
            }
            self.events.push_back(NodeEvent::Lease(event));
            self.emit_routes(changes);
        }
        self.release_held_watch();
    }

    /// The next store operation to perform, with the id its result (or, for a watch,
    /// its every batch) must carry. Changes after [`Node::new`] and every `handle_*`
    /// call: poll until `None` after each.
    pub fn poll_store_op(&mut self) -> Option<(OpId, StoreOp)> {
        self.ops.pop_front()
    }

    /// The next event. Changes after [`Node::new`] and every `handle_*` call: poll until
    /// `None` after each.
    pub fn poll_event(&mut self) -> Option<NodeEvent> {
        self.events.pop_front()
    }

    /// When [`Node::handle_timeout`] is next due. Changes after every `handle_*` call
    /// (a result can arm a renewal, a failure a retry); a timeout that has passed stays
    /// the answer until `handle_timeout` is called.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        [
            self.timers.next_timeout(),
            self.allocator.timers.next_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Every `handle_*` starts here. A clock that went back (an NTP step, an operator)
    /// would leave every timer far in the future: the lease would not be renewed and
    /// its expiry would look like a deletion. So the timers move back with the clock,
    /// and a held lease is renewed at once, since the real time that passed since the
    /// last call is unknown. (A clock that jumps forward cannot be told from a long
    /// pause; timers then fire early, which is safe.)
    fn observe_clock(&mut self, now: Timestamp) {
        if now < self.last_now {
            let back = self.last_now.saturating_since(now);
            self.timers.shift_back(back);
            self.allocator.clock_went_back(back, now);
        }
        self.last_now = now;
    }

    /// Fires every timer due at `now`; a spurious call does nothing (but lets the node
    /// notice a clock that went back).
    pub fn handle_timeout(&mut self, now: Timestamp) {
        self.observe_clock(now);
        for timer in self.timers.take_expired(now) {
            match timer {
                crate::timer::Timer::WatchRetry => self.resume_store(),
                crate::timer::Timer::StoreProbe => self.probe(now),
                _ => {}
            }
        }
        for timer in self.allocator.timers.take_expired(now) {
            self.allocator.handle_timer(timer, &self.table, now);
        }
        self.pump();
        self.schedule_probe(now);
    }
}
