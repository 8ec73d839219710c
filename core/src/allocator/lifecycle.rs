//! Holding a lease: store results, renewal, loss, and what the watch says about it.

use crate::lease::{Lease, LeaseKey};
use crate::lease_table::LeaseTable;
use crate::store::{Entry, StoreError, StoreOp, WatchEvent};
use crate::time::Timestamp;
use crate::timer::Timer;

use super::*;

impl Allocator {
    pub(super) fn hold(&mut self, key: LeaseKey, entry: &Entry, now: Timestamp) -> Lease {
        let lease = Lease {
            key,
            attrs: self.cfg.attrs(),
            expires_at: entry.expires_at,
            create_revision: entry.create_revision,
            mod_revision: entry.mod_revision,
        };
        self.lease = Some(lease.clone());
        self.unanswered_write = false;
        self.prefer = Some(key);
        self.phase = Phase::Holding;
        self.retries = 0;
        self.conflicts = 0;
        self.timers.stop(Timer::AllocRetry);
        // The lease lives `lease_ttl` from when the store wrote it, which is after we
        // sent the request: counting from the sending, on our own clock, errs on the
        // safe side whatever the store's clock says.
        self.deadline = lease
            .expires_at
            .map(|_| self.sent_at.unwrap_or(now) + self.cfg.lease_ttl);
        match self.deadline {
            Some(deadline) => {
                let ttl = deadline.saturating_since(now);
                let margin = self.cfg.renew_margin.min(ttl / 2);
                self.timers.set(Timer::Renew, deadline - margin);
                self.timers.set(Timer::Expiry, deadline);
            }
            None => {
                self.timers.stop(Timer::Renew);
                self.timers.stop(Timer::Expiry);
            }
        }
        lease
    }

    /// The result of the last [`StoreOp`] polled.
    pub fn handle_result(
        &mut self,
        result: Result<Entry, StoreError>,
        table: &LeaseTable,
        now: Timestamp,
    ) {
        let Phase::Pending(pending) = self.phase else {
            return;
        };
        self.store_wait = None;
        match (pending, result) {
            (Pending::Create(key, how), Ok(entry)) => {
                let lease = self.hold(key, &entry, now);
                self.events.push_back(AllocEvent::Acquired { lease, how });
            }
            (Pending::Claim(key), Ok(entry)) => {
                let lease = self.hold(key, &entry, now);
                self.events.push_back(AllocEvent::Acquired {
                    lease,
                    how: AcquiredHow::Reused,
                });
            }
            (Pending::Create(key, _), Err(StoreError::AlreadyExists { .. })) => {
                self.recent_conflicts.insert(key);
                self.conflicts += 1;
                // Without a watch the table is as old as its listing: a node that joined
                // with many others would draw again among subnets they have taken since,
                // and lose again (a straggler of 1,000 etcd joiners lost 6 in a row).
                // The etcd store answers a lost create with the listing (see its
                // `create`), so the re-listing costs no round trip there.
                let relist = !self.table_followed || self.conflicts >= CONFLICTS_BEFORE_RELIST;
                self.start_acquiring(relist, table, now);
            }
            (Pending::Claim(key), Err(e)) if !e.is_transient() => {
                // The lease changed under us; look again before deciding.
                self.recent_conflicts.insert(key);
                self.start_acquiring(true, table, now);
            }
            (Pending::Create(..) | Pending::Claim(_), Err(error)) => {
                // A create that timed out may have happened: re-list before deciding,
                // so that we reuse it rather than take a second subnet.
                let retry_at = self.backoff(now);
                self.timers.set(Timer::AllocRetry, retry_at);
                self.store_wait = Some(Timer::AllocRetry);
                self.phase = Phase::Backoff;
                self.events.push_back(AllocEvent::AcquireFailed {
                    error: AllocError::Store(error),
                    retry_at,
                });
            }
            (Pending::Renew, Ok(entry)) => {
                let Some(key) = self.lease.as_ref().map(|l| l.key) else {
                    return;
                };
                let lease = self.hold(key, &entry, now);
                self.events.push_back(AllocEvent::Renewed { lease });
            }
            (Pending::Renew, Err(StoreError::NotFound { .. })) => {
                self.lose(LossReason::Expired, table, now);
            }
            (Pending::Renew, Err(StoreError::Conflict { .. })) => {
                self.lose(LossReason::Taken, table, now);
            }
            (Pending::Renew, Err(error)) => {
                self.unanswered_write |= error.is_transient();
                // Back off, but never past half of what is left of the lease: a store
                // that comes back a little before the deadline must still find a
                // renewal coming (with 30 s of backoff, a lease was lost although the
                // store was back 3 s before it ran out).
                let mut retry_at = self.backoff(now);
                if let Some(deadline) = self.deadline {
                    let half = now + deadline.saturating_since(now) / 2;
                    retry_at = retry_at.min(half.max(now + RENEW_RETRY_FLOOR));
                }
                self.phase = Phase::Holding;
                self.timers.set(Timer::Renew, retry_at);
                self.store_wait = Some(Timer::Renew);
                self.events
                    .push_back(AllocEvent::RenewFailed { error, retry_at });
            }
        }
    }

    pub(super) fn lose(&mut self, reason: LossReason, table: &LeaseTable, now: Timestamp) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        self.timers.stop(Timer::Renew);
        self.timers.stop(Timer::Expiry);
        self.store_wait = None;
        self.deadline = None;
        self.events.push_back(AllocEvent::Lost {
            key: lease.key,
            reason,
        });
        match reason {
            LossReason::Deleted | LossReason::Claimed => {
                self.phase = Phase::Stopped;
                self.timers.stop(Timer::AllocRetry);
            }
            LossReason::Expired => {
                self.prefer = Some(lease.key);
                self.start_acquiring(true, table, now);
            }
            LossReason::Taken => {
                self.prefer = None;
                self.start_acquiring(true, table, now);
            }
        }
    }

    /// Our lease is gone from the store: deleted by someone else if it was still live
    /// by our own deadline, expired otherwise.
    pub(super) fn vanished(&mut self, _lease: &Lease, table: &LeaseTable, now: Timestamp) {
        let live = self.deadline.is_none_or(|at| now < at);
        let reason = if live {
            LossReason::Deleted
        } else {
            LossReason::Expired
        };
        self.lose(reason, table, now);
    }

    /// Whether `entry`, a later write of our lease that we did not make, records our
    /// public IP: another node configured with our address renewed it as its own. A
    /// write while our renewal is in flight, or after one went unanswered, may be ours
    /// and is given the benefit of the doubt (a twin is caught at its next renewal).
    fn claimed_by_twin(&mut self, lease: &Lease, entry: &Entry, ours: &[u8]) -> bool {
        if entry.mod_revision <= lease.mod_revision || self.phase != Phase::Holding {
            return false;
        }
        if std::mem::take(&mut self.unanswered_write) && entry.value == ours {
            if let Some(l) = &mut self.lease {
                l.mod_revision = entry.mod_revision;
            }
            return false;
        }
        crate::lease::LeaseAttrs::decode(&entry.key, &entry.value)
            .is_ok_and(|attrs| self.cfg.is_own_address(&attrs))
    }

    /// Our clock went back by at least `d` (we cannot tell how much real time passed
    /// since the last call): move every deadline back with it, and renew a lease we
    /// hold now rather than trust a renewal time that may have become late.
    pub(crate) fn clock_went_back(&mut self, d: std::time::Duration, now: Timestamp) {
        self.timers.shift_back(d);
        self.sent_at = self.sent_at.map(|t| t - d);
        self.deadline = self.deadline.map(|t| t - d);
        if self.phase == Phase::Holding && self.deadline.is_some() {
            self.timers.set(Timer::Renew, now);
        }
    }

    pub(super) fn renew(&mut self, now: Timestamp) {
        self.sent_at = Some(now);
        let Some(lease) = &self.lease else { return };
        self.ops.push_back(StoreOp::Renew {
            key: self.full_key(&lease.key),
            create_revision: lease.create_revision,
            value: self.cfg.attrs().encode(),
            ttl: (!lease.is_reservation()).then_some(self.cfg.lease_ttl),
        });
        self.phase = Phase::Pending(Pending::Renew);
    }

    /// A change seen by the watch (already applied to `table`).
    /// Which watch events [`Allocator::on_watch_event`] acts on: those about the key
    /// it returns (our lease's), and, when the flag is set, every deletion. Any other
    /// event changes nothing, so a driver may skip telling it.
    pub fn watch_interest(&mut self) -> (Option<&str>, bool) {
        let deletions = self.phase == Phase::Backoff && self.lease.is_none();
        match self.lease.as_ref().map(|l| l.key) {
            Some(key) => (Some(self.own_full_key(key)), deletions),
            None => (None, deletions),
        }
    }

    pub fn on_watch_event(&mut self, event: &WatchEvent, table: &LeaseTable, now: Timestamp) {
        let ours = match self.lease.as_ref().map(|l| l.key) {
            Some(key) => self.is_own_full_key(event.key(), key),
            None => false,
        };
        if let Some(lease) = self.lease.clone().filter(|_| ours) {
            {
                match event {
                    WatchEvent::Delete { .. } => self.vanished(&lease, table, now),
                    WatchEvent::Put(entry) if entry.create_revision != lease.create_revision => {
                        self.lose(LossReason::Taken, table, now);
                    }
                    WatchEvent::Put(entry) => {
                        let ours = self.cfg.attrs().encode();
                        if self.claimed_by_twin(&lease, entry, &ours) {
                            self.lose(LossReason::Claimed, table, now);
                        } else if entry.value != ours && self.phase == Phase::Holding {
                            // Someone overwrote our lease's value: write ours back.
                            self.renew(now);
                        }
                    }
                }
                return;
            }
        }
        // A subnet freed while we wait for one: try at once.
        if matches!(event, WatchEvent::Delete { .. })
            && self.phase == Phase::Backoff
            && self.lease.is_none()
        {
            self.timers.set(Timer::AllocRetry, now);
        }
    }

    /// A timer of ours fired.
    pub fn handle_timer(&mut self, timer: Timer, table: &LeaseTable, now: Timestamp) {
        if self.store_wait == Some(timer) {
            self.store_wait = None;
        }
        match timer {
            Timer::Renew if self.phase == Phase::Holding => self.renew(now),
            Timer::Expiry if self.lease.is_some() => {
                self.lose(LossReason::Expired, table, now);
            }
            Timer::AllocRetry if self.phase == Phase::Backoff => {
                self.start_acquiring(true, table, now);
            }
            _ => {}
        }
    }
}

impl Allocator {
    /// Whether the node's watch now keeps the lease table current. Until it does (the
    /// first watch is held back until the lease is reported on), the table is only as
    /// new as its listing, and a lost create race re-lists before drawing again.
    pub fn set_table_followed(&mut self, followed: bool) {
        self.table_followed = followed;
    }

    /// When the retry it armed after a store failure is due, while it waits for one.
    pub fn store_retry_at(&self) -> Option<Timestamp> {
        self.store_wait.and_then(|t| self.timers.get(t))
    }

    /// The store answered again: a retry waiting on a store failure is due now (the
    /// node fires it with the other due timers).
    pub fn store_is_back(&mut self, now: Timestamp) {
        if let Some(timer) = self.store_wait {
            if self.timers.get(timer).is_some_and(|at| at > now) {
                self.timers.set(timer, now);
            }
        }
    }
}
