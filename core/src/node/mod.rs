//! The node: the one object a driver talks to.
//!
//! It ties the lease table, the allocator and the route table together and owns the
//! store conversation: the initial listing, the watch that follows it from the listing's
//! revision + 1, the re-list after a compaction, and the retries after failures.
//!
//! A driver loops: perform every [`Node::poll_store_op`], feeding each result to
//! [`Node::handle_store_result`] and each watch batch to [`Node::handle_watch_events`];
//! act on every [`Node::poll_event`]; call [`Node::handle_timeout`] when
//! [`Node::poll_timeout`] says so. Poll ops, events and the timeout again after every
//! `handle_*` call.

mod forward;

use std::collections::VecDeque;
use std::time::Duration;

use crate::allocator::{AllocEvent, Allocator, AllocatorConfig, LossReason};
use crate::lease::{Lease, Skipped};
use crate::lease_table::{LeaseTable, TableChange};
use crate::router::{RouteChange, RouteTable};
use crate::store::{subnets_prefix, Listing, Revision, StoreError, WatchEvent};
pub use crate::store::{StoreOp, StoreOutput};
use crate::time::Timestamp;
use crate::timer::{Timer, TimerTable};

pub use forward::{DropCounters, DropReason, Inbound, Outbound};

/// Identifies a store operation so that its result finds its way back.
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

/// How the node is set up.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The store key prefix (flannel's `/coreos.com/network`).
    pub prefix: String,
    /// The allocator's settings.
    pub alloc: AllocatorConfig,
}

/// See the module docs.
#[derive(Debug)]
pub struct Node {
    subnets_prefix: String,
    table: LeaseTable,
    routes: RouteTable,
    allocator: Allocator,
    next_op: OpId,
    listing_op: Option<OpId>,
    alloc_op: Option<OpId>,
    /// A watch is running (as far as we know).
    watching: bool,
    /// A listing failed and must be retried when the retry timer fires.
    relist_on_retry: bool,
    store_retries: u32,
    retry_min: Duration,
    retry_max: Duration,
    ops: VecDeque<(OpId, StoreOp)>,
    events: VecDeque<NodeEvent>,
    timers: TimerTable,
    drops: DropCounters,
    /// The latest `now` we were given, to notice the clock going back.
    last_now: Timestamp,
}

impl Node {
    /// A node that will acquire a lease under `config.prefix`; `seed` drives its random
    /// choices. Its first operation is a listing of the store.
    pub fn new(config: NodeConfig, seed: u64, now: Timestamp) -> Self {
        let subnets_prefix = subnets_prefix(&config.prefix);
        let (retry_min, retry_max) = (config.alloc.retry_min, config.alloc.retry_max);
        let v4 = match config.alloc.v4_space.network() {
            ipnet::IpNet::V4(n) => n,
            ipnet::IpNet::V6(_) => unreachable!("the IPv4 space is IPv4"),
        };
        let v6 = config.alloc.v6_space.and_then(|s| match s.network() {
            ipnet::IpNet::V6(n) => Some(n),
            ipnet::IpNet::V4(_) => None,
        });
        let mut node = Node {
            table: LeaseTable::new(&subnets_prefix).within(v4, v6),
            routes: RouteTable::new(),
            allocator: Allocator::new(config.alloc, &subnets_prefix, seed),
            subnets_prefix,
            next_op: 0,
            listing_op: None,
            alloc_op: None,
            watching: false,
            relist_on_retry: false,
            store_retries: 0,
            retry_min,
            retry_max,
            ops: VecDeque::new(),
            events: VecDeque::new(),
            timers: TimerTable::default(),
            drops: DropCounters::default(),
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

    /// The routes to every peer.
    pub fn routes(&self) -> &RouteTable {
        &self.routes
    }

    /// Every lease the node knows of.
    pub fn leases(&self) -> &LeaseTable {
        &self.table
    }

    fn push_op(&mut self, op: StoreOp) -> OpId {
        self.next_op += 1;
        self.ops.push_back((self.next_op, op));
        self.next_op
    }

    fn list(&mut self) {
        if self.listing_op.is_none() {
            let prefix = self.subnets_prefix.clone();
            self.listing_op = Some(self.push_op(StoreOp::List { prefix }));
        }
    }

    /// Moves the allocator's requests and reports into the node's queues, keeping the
    /// route table's idea of "our own lease" in step.
    fn pump(&mut self) {
        if self.allocator.take_listing_request() {
            self.list();
        }
        while let Some(op) = self.allocator.poll_op() {
            // Only the newest allocator operation counts; an older result is stale.
            self.alloc_op = Some(self.push_op(op));
        }
        while let Some(event) = self.allocator.poll_event() {
            let mut changes = Vec::new();
            match &event {
                AllocEvent::Acquired { lease, .. } => {
                    self.routes.set_own(Some(lease.key), &mut changes);
                }
                AllocEvent::Lost { key, reason } => {
                    self.routes.set_own(None, &mut changes);
                    if *reason == LossReason::Taken {
                        if let Some(lease) = self.table.get(key).cloned() {
                            let change = TableChange::Upsert {
                                old: None,
                                new: lease,
                            };
                            self.routes.apply(&change, &mut changes);
                        }
                    }
                }
                _ => {}
            }
            self.events.push_back(NodeEvent::Lease(event));
            self.events
                .extend(changes.into_iter().map(NodeEvent::Route));
        }
    }

    /// The next store operation to perform, with the id its result must carry. Poll
    /// again after every `handle_*` call.
    pub fn poll_store_op(&mut self) -> Option<(OpId, StoreOp)> {
        self.ops.pop_front()
    }

    /// The next event. Poll again after every `handle_*` call.
    pub fn poll_event(&mut self) -> Option<NodeEvent> {
        self.events.pop_front()
    }

    /// When [`Node::handle_timeout`] is next due.
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
            if timer == Timer::WatchRetry {
                self.resume_store();
            }
        }
        for timer in self.allocator.timers.take_expired(now) {
            self.allocator.handle_timer(timer, &self.table, now);
        }
        self.pump();
    }

    fn resume_store(&mut self) {
        if self.relist_on_retry || !self.table.is_synced() {
            self.relist_on_retry = false;
            // The watch, if broken too, restarts from the listing's revision.
            self.list();
        } else if !self.watching {
            self.watching = true;
            let from = self.table.revision() + 1;
            let prefix = self.subnets_prefix.clone();
            self.push_op(StoreOp::Watch { prefix, from });
        }
    }

    fn store_failed(&mut self, error: StoreError, now: Timestamp) {
        let shift = self.store_retries.min(16);
        let delay = self
            .retry_min
            .saturating_mul(1 << shift)
            .min(self.retry_max);
        self.store_retries += 1;
        let retry_at = now + delay;
        self.timers.set(Timer::WatchRetry, retry_at);
        self.events
            .push_back(NodeEvent::StoreFailed { error, retry_at });
    }

    /// The result of the operation `id`. Results of superseded operations are ignored.
    pub fn handle_store_result(
        &mut self,
        id: OpId,
        result: Result<StoreOutput, StoreError>,
        now: Timestamp,
    ) {
        self.observe_clock(now);
        if self.listing_op == Some(id) {
            self.listing_op = None;
            match result {
                Ok(StoreOutput::Listing(listing)) => self.apply_listing(&listing, now),
                Ok(StoreOutput::Entry(_)) => {
                    let error = StoreError::Backend("a listing was answered with an entry".into());
                    self.relist_on_retry = true;
                    self.store_failed(error, now);
                }
                Err(error) => {
                    self.relist_on_retry = true;
                    self.store_failed(error, now);
                }
            }
        } else if self.alloc_op == Some(id) {
            self.alloc_op = None;
            let result = match result {
                Ok(StoreOutput::Entry(entry)) => Ok(entry),
                Ok(StoreOutput::Listing(_)) => Err(StoreError::Backend(
                    "a create or renew was answered with a listing".into(),
                )),
                Err(e) => Err(e),
            };
            self.allocator.handle_result(result, &self.table, now);
        }
        self.pump();
    }

    fn apply_listing(&mut self, listing: &Listing, now: Timestamp) {
        self.store_retries = 0;
        self.relist_on_retry = false;
        let (changes, skipped) = self.table.replace(listing);
        self.events
            .extend(skipped.into_iter().map(NodeEvent::Skipped));
        let mut route_changes = Vec::new();
        for change in &changes {
            self.routes.apply(change, &mut route_changes);
        }
        self.events
            .extend(route_changes.into_iter().map(NodeEvent::Route));
        self.events.push_back(NodeEvent::Synced {
            revision: listing.revision,
            leases: self.table.len(),
        });
        if !self.watching {
            self.watching = true;
            let prefix = self.subnets_prefix.clone();
            let from = listing.revision + 1;
            self.push_op(StoreOp::Watch { prefix, from });
        }
        self.allocator.on_synced(&self.table, now);
    }

    /// A batch of changes from the running watch.
    pub fn handle_watch_events(&mut self, events: &[WatchEvent], now: Timestamp) {
        self.observe_clock(now);
        self.store_retries = 0;
        for event in events {
            let (change, skipped) = self.table.apply(event);
            self.events
                .extend(skipped.into_iter().map(NodeEvent::Skipped));
            if let Some(change) = change {
                let mut route_changes = Vec::new();
                self.routes.apply(&change, &mut route_changes);
                self.events
                    .extend(route_changes.into_iter().map(NodeEvent::Route));
            }
            self.allocator.on_watch_event(event, &self.table, now);
            self.pump();
        }
    }

    /// The running watch failed. On [`StoreError::Compacted`] the node re-lists at once;
    /// otherwise it restarts the watch from the last revision seen, after a backoff.
    pub fn handle_watch_error(&mut self, error: StoreError, now: Timestamp) {
        self.observe_clock(now);
        if let StoreError::Compacted { .. } = error {
            self.watching = false;
            self.list();
        } else {
            self.watching = false;
            self.store_failed(error, now);
        }
        self.pump();
    }
}
