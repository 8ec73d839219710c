//! A node whose clock disagrees with the store's: leases are timed on the node's own
//! clock, and a clock that goes back is noticed and survived.
//!
//! Regression tests for two bugs the simulator found (scenario 11-clock-jump): a node
//! whose clock ran more than a TTL ahead of the store's lost its lease right after every
//! acquisition (it compared the store's `expires_at` with its own clock) and churned the
//! store in a loop; a node whose clock went back stopped renewing, and when the store
//! expired its lease it took the expiry for an operator's delete and exited.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::{ip, space, PREFIX};
use weft_core::allocator::{AllocEvent, AllocatorConfig};
use weft_core::config::BackendType;
use weft_core::node::{Node, NodeConfig, NodeEvent, StoreOp};
use weft_core::store::{subnets_prefix, StoreModel};
use weft_core::Timestamp;

const TTL: Duration = Duration::from_secs(60);
const MARGIN: Duration = Duration::from_secs(20);

/// One node and the store, the node's clock `offset_ms` away from the store's. Store
/// operations complete at once; the node is woken when it asked to be, measured as a
/// daemon does, on a monotonic clock: the wake-up it asked for before its clock jumped
/// comes at the same real time.
struct Solo {
    store: StoreModel,
    node: Node,
    offset_ms: i64,
    now: Timestamp,
    wake: Option<Timestamp>,
    /// The running watch: its id and the next revision it wants.
    watch: Option<(u64, u64)>,
    events: Vec<AllocEvent>,
}

impl Solo {
    fn new(offset_ms: i64) -> Self {
        let now = Timestamp::from_millis(1_700_000_000_000);
        let mut alloc = AllocatorConfig::new(space("10.5.0.0/16", 24), ip(1), BackendType::Udp);
        alloc.lease_ttl = TTL;
        alloc.renew_margin = MARGIN;
        let config = NodeConfig {
            prefix: PREFIX.into(),
            alloc,
        };
        let local = Timestamp::from_millis(now.as_millis().saturating_add_signed(offset_ms));
        let mut s = Solo {
            store: StoreModel::new(now),
            node: Node::new(config, 7, local),
            offset_ms,
            now,
            wake: None,
            watch: None,
            events: Vec::new(),
        };
        s.pump();
        s
    }

    fn local(&self) -> Timestamp {
        Timestamp::from_millis(self.now.as_millis().saturating_add_signed(self.offset_ms))
    }

    fn to_store_time(&self, local: Timestamp) -> Timestamp {
        Timestamp::from_millis(local.as_millis().saturating_add_signed(-self.offset_ms))
    }

    fn pump(&mut self) {
        for _ in 0..1000 {
            let mut progressed = false;
            while let Some((id, op)) = self.node.poll_store_op() {
                progressed = true;
                if let StoreOp::Watch { from, .. } = op {
                    self.watch = Some((id, from));
                    continue;
                }
                let result = op.call(&mut self.store).unwrap();
                let local = self.local();
                self.node.handle_store_result(id, result, local);
            }
            if let Some((watch, from)) = self.watch {
                let events = self
                    .store
                    .events_since(&subnets_prefix(PREFIX), from)
                    .unwrap();
                if let Some(last) = events.last() {
                    self.watch = Some((watch, last.revision() + 1));
                    let local = self.local();
                    self.node.handle_watch_events(watch, &events, local);
                    progressed = true;
                }
            }
            while let Some(e) = self.node.poll_event() {
                if let NodeEvent::Lease(l) = e {
                    self.events.push(l);
                }
            }
            if !progressed {
                // Ask for the wake-up on the monotonic clock: keep an earlier one.
                let asked = self
                    .node
                    .poll_timeout()
                    .map(|t| self.to_store_time(t).max(self.now));
                self.wake = match (self.wake.filter(|w| *w >= self.now), asked) {
                    (Some(w), Some(a)) => Some(w.min(a)),
                    (w, a) => w.or(a),
                };
                return;
            }
        }
        panic!("the node does not settle: it loops");
    }

    fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        let mut done = false;
        for _ in 0..100_000 {
            let next = [self.wake, self.store.next_expiry()]
                .into_iter()
                .flatten()
                .filter(|t| *t <= until)
                .min();
            let Some(next) = next else {
                done = true;
                break;
            };
            self.now = self.now.max(next);
            self.store.advance_to(self.now);
            if self.wake.is_some_and(|w| w <= self.now) {
                self.wake = None;
                let local = self.local();
                self.node.handle_timeout(local);
            }
            self.pump();
        }
        assert!(done, "the node never stops waking: it loops");
        self.now = until;
        self.store.advance_to(until);
        self.pump();
    }

    fn acquisitions(&self) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, AllocEvent::Acquired { .. }))
            .count()
    }

    fn losses(&self) -> Vec<&AllocEvent> {
        self.events
            .iter()
            .filter(|e| matches!(e, AllocEvent::Lost { .. }))
            .collect()
    }
}

#[test]
fn a_clock_far_ahead_of_the_store_keeps_its_lease() {
    let mut s = Solo::new(10 * 60 * 1000);
    s.run_for(10 * TTL);
    assert_eq!(s.acquisitions(), 1, "{:?}", s.events);
    assert!(s.losses().is_empty(), "{:?}", s.losses());
    assert!(s.node.lease().is_some());
    assert_eq!(s.store.list(&subnets_prefix(PREFIX)).entries.len(), 1);
}

#[test]
fn a_clock_far_behind_the_store_keeps_its_lease() {
    let mut s = Solo::new(-10 * 60 * 1000);
    s.run_for(10 * TTL);
    assert_eq!(s.acquisitions(), 1, "{:?}", s.events);
    assert!(s.losses().is_empty(), "{:?}", s.losses());
}

#[test]
fn a_clock_that_goes_back_is_noticed_and_the_lease_renewed() {
    let mut s = Solo::new(0);
    s.run_for(Duration::from_secs(30));
    s.offset_ms -= 10 * 60 * 1000;
    s.run_for(10 * TTL);
    assert!(
        !s.node.is_stopped(),
        "an expiry taken for a deletion: {:?}",
        s.events
    );
    assert!(s.losses().is_empty(), "{:?}", s.losses());
    assert_eq!(s.acquisitions(), 1);
}
