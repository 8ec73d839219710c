//! The node's store conversation: listing, watching, and recovering from failures.
//!
//! - The node lists the subnets prefix first, and again whenever its view may have a
//!   gap (a compaction, a failed listing, the allocator's asking).
//! - The watch resumes from the listing's revision + 1, so nothing between the two is
//!   missed. The *first* watch is held back until the allocator has reported on the
//!   lease (acquired it, or failed to): a fleet that starts at once (a cold start of the
//!   whole cluster) then does not have the store stream every node's new lease to every
//!   other node while they are all still acquiring; each watch catches up afterwards from
//!   the store's history, in large batches.
//! - A watch is identified by the id of the operation that asked for it; a batch of a
//!   watch the node has replaced or given up is ignored, so a driver needs no
//!   bookkeeping of its own.
//! - After a failure the node retries with exponential backoff and jitter, so that the
//!   nodes of a cluster do not all re-list at the same instant after an outage.
//! - While a retry waits on a store failure, the node asks the store every
//!   [`PROBE_EVERY`] or so (jittered) whether it is back, with the cheapest question it
//!   has (a listing of the one config key). The first answer brings every retry that
//!   waits on the store forward to now: a node learns the store is back within about
//!   two seconds, not at its next backoff step (up to 36 s), while the expensive
//!   operations (the listing, the watch, the create) stay backed off until then.

use std::time::Duration;

use super::{moves_routes, Node, NodeEvent, OpId};
use crate::lease_table::{LeaseTable, TableChange, WatchBatch};
use crate::store::{Listing, Revision, StoreError, StoreOp, StoreOutput, WatchEvent};
use crate::time::Timestamp;
use crate::timer::{backoff, Timer};

/// How often a node waiting on a store failure asks whether the store is back (plus up
/// to a fifth of it in jitter).
pub const PROBE_EVERY: Duration = Duration::from_millis(1500);

/// Where the node's watch stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WatchState {
    /// None runs; one starts after the next listing (or retry).
    Idle,
    /// Wanted from this revision, held back until the lease is reported on.
    Held { from: Revision },
    /// Asked for by operation `op`; its batches carry that id.
    Running { op: OpId },
}

impl Node {
    pub(super) fn list(&mut self) {
        if self.listing_op.is_none() {
            let prefix = self.subnets_prefix.clone();
            let prepare_lease = self.allocator.acquiring_ttl();
            self.listing_op = Some(self.push_op(StoreOp::List {
                prefix,
                prepare_lease,
            }));
        }
    }

    fn start_watch(&mut self, from: Revision) {
        if !self.lease_reported {
            self.watch = WatchState::Held { from };
            return;
        }
        let prefix = self.subnets_prefix.clone();
        let op = self.push_op(StoreOp::Watch { prefix, from });
        self.watch = WatchState::Running { op };
        self.allocator.set_table_followed(true);
    }

    pub(super) fn release_held_watch(&mut self) {
        if let (true, WatchState::Held { from }) = (self.lease_reported, self.watch) {
            self.start_watch(from);
        }
    }

    pub(super) fn resume_store(&mut self) {
        if self.relist_on_retry || !self.table.is_synced() {
            self.relist_on_retry = false;
            // The watch, if broken too, restarts from the listing's revision.
            self.list();
        } else if self.watch == WatchState::Idle {
            self.start_watch(self.table.revision() + 1);
        }
    }

    /// Whether some retry waits on a store failure past `at`.
    fn waits_on_store(&self, at: Timestamp) -> bool {
        [
            self.timers.get(Timer::WatchRetry),
            self.allocator.store_retry_at(),
        ]
        .into_iter()
        .flatten()
        .any(|retry| retry > at)
    }

    /// Arms the probe while a retry waits on a store failure past the next probe,
    /// disarms it once none waits.
    pub(super) fn schedule_probe(&mut self, now: Timestamp) {
        if !self.waits_on_store(now) {
            self.timers.stop(Timer::StoreProbe);
        } else if self.probe_op.is_none()
            && self.timers.get(Timer::StoreProbe).is_none()
            && self.waits_on_store(now + PROBE_EVERY)
        {
            let delay = backoff(PROBE_EVERY, PROBE_EVERY, 0, &mut self.rng);
            self.timers.set(Timer::StoreProbe, now + delay);
        }
    }

    /// The probe timer fired: ask the store, if a retry still waits on it.
    pub(super) fn probe(&mut self, now: Timestamp) {
        if self.probe_op.is_none() && self.waits_on_store(now) {
            let prefix = self.probe_prefix.clone();
            self.probe_op = Some(self.push_op(StoreOp::List {
                prefix,
                prepare_lease: None,
            }));
        }
    }

    /// The store answered the probe: every retry waiting on its failure goes now.
    fn store_back(&mut self, now: Timestamp) {
        self.store_retries = 0;
        if self.timers.get(Timer::WatchRetry).is_some() {
            self.timers.stop(Timer::WatchRetry);
            self.resume_store();
        }
        self.allocator.store_is_back(now);
        for timer in self.allocator.timers.take_expired(now) {
            self.allocator.handle_timer(timer, &self.table, now);
        }
    }

    fn store_failed(&mut self, error: StoreError, now: Timestamp) {
        let delay = backoff(
            self.retry_min,
            self.retry_max,
            self.store_retries,
            &mut self.rng,
        );
        self.store_retries = self.store_retries.saturating_add(1);
        let retry_at = now + delay;
        self.timers.set(Timer::WatchRetry, retry_at);
        self.events
            .push_back(NodeEvent::StoreFailed { error, retry_at });
    }

    /// The result of the one-shot operation `id` (a listing, a create, a renewal).
    /// Results of superseded operations are ignored. Poll everything again afterwards.
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
                Ok(StoreOutput::Leases(table)) if table.decodes_like(&self.table) => {
                    self.adopt_listing(table, now)
                }
                Ok(StoreOutput::Leases(_)) => {
                    let error = StoreError::Backend(
                        "a listing was answered with a lease table for another prefix or network"
                            .into(),
                    );
                    self.relist_on_retry = true;
                    self.store_failed(error, now);
                }
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
                Ok(StoreOutput::Listing(_) | StoreOutput::Leases(_)) => Err(StoreError::Backend(
                    "a create or renew was answered with a listing".into(),
                )),
                Err(e) => Err(e),
            };
            self.allocator.handle_result(result, &self.table, now);
        } else if self.probe_op == Some(id) {
            self.probe_op = None;
            if result.is_ok() {
                self.store_back(now);
            }
        }
        self.pump();
        self.schedule_probe(now);
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
        self.emit_routes(route_changes);
        self.synced(listing.revision, now);
    }

    /// A listing that came already decoded (see [`StoreOutput::Leases`]): the node takes
    /// the table as its own, and reports what differs from the one it had as a fresh
    /// decoding would.
    fn adopt_listing(&mut self, table: LeaseTable, now: Timestamp) {
        self.store_retries = 0;
        self.relist_on_retry = false;
        let old = std::mem::replace(&mut self.table, table);
        for (key, error) in self.table.skipped() {
            if !old.skipped().any(|(k, e)| k == key && e == error) {
                let skipped = crate::lease::Skipped {
                    key: key.clone(),
                    error: error.clone(),
                };
                self.events.push_back(NodeEvent::Skipped(skipped));
            }
        }
        if self.route_events {
            let mut route_changes = Vec::new();
            for change in diff(&old, &self.table) {
                self.routes.apply(&change, &mut route_changes);
            }
            self.emit_routes(route_changes);
        } else {
            self.routes_changed();
        }
        self.synced(self.table.revision(), now);
    }

    fn synced(&mut self, revision: Revision, now: Timestamp) {
        self.events.push_back(NodeEvent::Synced {
            revision,
            leases: self.table.len(),
        });
        match self.watch {
            WatchState::Idle | WatchState::Held { .. } => self.start_watch(revision + 1),
            // The running watch goes on from where it is: nothing is missed.
            WatchState::Running { .. } => {}
        }
        self.allocator.on_synced(&self.table, now);
    }

    fn is_current_watch(&self, id: OpId) -> bool {
        self.watch == WatchState::Running { op: id }
    }

    /// A batch of changes from the watch asked for by operation `id`. A batch of any
    /// other watch (one the node replaced or gave up) is ignored. Poll everything again
    /// afterwards.
    pub fn handle_watch_events(&mut self, id: OpId, events: &[WatchEvent], now: Timestamp) {
        self.observe_clock(now);
        if !self.is_current_watch(id) {
            return;
        }
        self.store_retries = 0;
        for event in events {
            self.apply_event(event, now);
        }
    }

    fn apply_event(&mut self, event: &WatchEvent, now: Timestamp) {
        let (change, skipped) = self.table.apply(event);
        self.events
            .extend(skipped.into_iter().map(NodeEvent::Skipped));
        if let Some(change) = change {
            self.table_changed(&change);
        }
        self.allocator.on_watch_event(event, &self.table, now);
        self.pump();
    }

    /// [`Node::handle_watch_events`] for a batch that may carry the lease tables its
    /// events lead to ([`crate::lease_table::LeaseLog`]): when the batch starts from the
    /// very table the node holds, the node takes the batch's tables instead of applying
    /// each event to its own, and decides about each event as it would have. Otherwise
    /// it applies the events. Poll everything again afterwards.
    pub fn handle_watch_batch(&mut self, id: OpId, batch: &WatchBatch, now: Timestamp) {
        self.observe_clock(now);
        if !self.is_current_watch(id) {
            return;
        }
        self.store_retries = 0;
        match &batch.shared {
            Some(shared) if shared.base.is_same(&self.table) => {
                // Nothing in it for our own decisions: the routes change, and that is
                // all the steps one by one would do.
                if !shared.concerns(self.allocator.watch_interest()) {
                    if let Some(last) = shared.steps.last() {
                        self.table = last.table.clone();
                        if shared
                            .steps
                            .iter()
                            .any(|s| s.change.as_ref().is_some_and(moves_routes))
                        {
                            self.routes_changed();
                        }
                        if self.route_events {
                            for step in &shared.steps {
                                if let Some(change) = &step.change {
                                    self.table_changed(change);
                                }
                            }
                        }
                    }
                    return;
                }
                for step in &shared.steps {
                    self.table = step.table.clone();
                    self.events
                        .extend(step.skipped.iter().cloned().map(NodeEvent::Skipped));
                    if let Some(change) = &step.change {
                        self.table_changed(change);
                    }
                    self.allocator.on_watch_event(&step.event, &self.table, now);
                    self.pump();
                }
            }
            _ => {
                for event in batch.events() {
                    self.apply_event(event, now);
                }
            }
        }
    }

    /// The watch asked for by operation `id` failed (it is over). On
    /// [`StoreError::Compacted`] the node re-lists at once; otherwise it restarts the
    /// watch from the last revision seen, after a backoff. The failure of any other
    /// watch is ignored. Poll everything again afterwards.
    pub fn handle_watch_error(&mut self, id: OpId, error: StoreError, now: Timestamp) {
        self.observe_clock(now);
        if !self.is_current_watch(id) {
            return;
        }
        self.watch = WatchState::Idle;
        self.allocator.set_table_followed(false);
        if let StoreError::Compacted { .. } = error {
            self.list();
        } else {
            self.store_failed(error, now);
        }
        self.pump();
        self.schedule_probe(now);
    }
}

/// The changes from `old` to `new`, as [`LeaseTable::replace`] reports them: the leases
/// added or changed, then those gone, each in key order.
fn diff(old: &LeaseTable, new: &LeaseTable) -> Vec<TableChange> {
    let mut changes: Vec<TableChange> = new
        .leases()
        .filter_map(|lease| {
            let before = old.get(&lease.key);
            (before != Some(lease)).then(|| TableChange::Upsert {
                old: before.cloned(),
                new: lease.clone(),
            })
        })
        .collect();
    changes.extend(
        old.leases()
            .filter(|l| new.get(&l.key).is_none())
            .map(|l| TableChange::Remove { lease: l.clone() }),
    );
    changes
}
