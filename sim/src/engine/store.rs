//! The store side of the world: operations that reach the store after its latency and
//! whose results travel back, watches fed from the store's history, expiries at their
//! exact time, outages.
//!
//! The store is the core's [`StoreModel`](weft_core::store::StoreModel); each operation
//! goes through the one mapping from a node's `StoreOp` to store calls
//! (`StoreOp::call`), as in the daemon. A watch is known by the id of the operation that
//! asked for it, and its batches carry that id back to the node, which alone decides
//! whether a batch belongs to its current watch.

use std::collections::BTreeMap;
use std::sync::Arc;

use weft_core::lease::{LeaseAttrs, LeaseKey};
use weft_core::lease_table::{LeaseLog, LeaseTable, WatchBatch};
use weft_core::node::{OpId, StoreOp, StoreOutput};
use weft_core::store::{Revision, StoreError};

use super::{Ev, World, STORE_TIMEOUT};
use crate::time::SimTime;

/// A running watch, as the store side sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WatchCursor {
    /// The id of the node's operation that asked for it.
    pub id: OpId,
    pub next: Revision,
}

/// What every operation gets during an injected outage.
fn outage() -> StoreError {
    StoreError::Unavailable("memory store outage injected by set_unavailable".into())
}

impl World {
    fn latency(&self) -> std::time::Duration {
        self.cfg.store_latency
    }

    /// A node's operation reaches the store: perform it, send the result back.
    pub(crate) fn store_exec(&mut self, host: usize, inc: u32, id: OpId, op: StoreOp) {
        self.stats.store_ops += 1;
        let result = if self.store_down {
            Err(outage())
        } else if let Some(table) = self.shared_listing(&op) {
            Ok(StoreOutput::Leases(table))
        } else {
            match op.call(&mut self.store) {
                Some(result) => result,
                None => return,
            }
        };
        // An answer that cannot get back is a timeout for the client, though the
        // operation took effect.
        let (at, result) = if self.hosts[host].store_cut_down {
            (
                self.now + STORE_TIMEOUT,
                Err(StoreError::Timeout(STORE_TIMEOUT)),
            )
        } else {
            (self.now + self.latency(), result)
        };
        self.schedule(
            at,
            Ev::StoreResult {
                host,
                inc,
                id,
                result: Box::new(result),
            },
        );
    }

    /// A listing answered from the shared lease history, when there is one.
    fn shared_listing(&mut self, op: &StoreOp) -> Option<LeaseTable> {
        let StoreOp::List { prefix, .. } = op else {
            return None;
        };
        if *prefix != self.subnets_prefix {
            return None;
        }
        self.follow_log();
        self.lease_log.as_ref()?.listing(self.store.revision())
    }

    /// Brings the shared lease history up to the store's latest change.
    pub(crate) fn follow_log(&mut self) {
        let Some(log) = &mut self.lease_log else {
            return;
        };
        let next = log.current().revision() + 1;
        if next > self.store.revision() {
            return;
        }
        match self.store.events_since(&self.subnets_prefix, next) {
            Ok(events) => log.follow(&events),
            Err(_) => {
                // The history went past the log (a compaction): start it again from a
                // listing, decoded once.
                let listing = self.store.list(&self.subnets_prefix);
                let mut table = log.current().clone();
                table.replace(&listing);
                *log = LeaseLog::new(
                    table,
                    listing.revision,
                    weft_core::store::DEFAULT_HISTORY_LIMIT,
                );
            }
        }
    }

    /// A node's watch `id` from `from` reaches the store: it replaces the node's running
    /// watch.
    pub(crate) fn watch_open(&mut self, host: usize, inc: u32, id: OpId, from: Revision) {
        if !self.hosts[host].is_incarnation(inc) {
            return;
        }
        if self.hosts[host].store_cut_down {
            self.watch_lost(host, inc, id);
            return;
        }
        if self.store_down {
            self.hosts[host].watch = None;
            let at = self.now + self.latency();
            let batch = Err(outage());
            self.schedule(
                at,
                Ev::WatchDeliver {
                    host,
                    inc,
                    id,
                    batch: batch.map_err(Box::new),
                },
            );
            return;
        }
        self.hosts[host].watch = Some(WatchCursor { id, next: from });
        self.request_flush();
    }

    /// The watch `id` of a host breaks (its link to the store is cut): the client
    /// notices after its timeout.
    pub(crate) fn watch_lost(&mut self, host: usize, inc: u32, id: OpId) {
        self.hosts[host].watch = None;
        let batch = Err(StoreError::Timeout(STORE_TIMEOUT));
        self.schedule(
            self.now + STORE_TIMEOUT,
            Ev::WatchDeliver {
                host,
                inc,
                id,
                batch: batch.map_err(Box::new),
            },
        );
    }

    /// Cuts (or restores) the link between host `h` and the store: `up` is the
    /// direction to the store, `down` the one back. A running watch breaks when its
    /// direction is cut, as an etcd client's stream times out.
    pub fn cut_store(&mut self, h: usize, up: bool, down: bool) {
        let host = &mut self.hosts[h];
        host.store_trouble_at = self.now;
        host.store_cut_up = up;
        host.store_cut_down = down;
        if down {
            if let (Some(cursor), Some(inc)) = (host.watch, host.running_incarnation()) {
                self.watch_lost(h, inc, cursor.id);
            }
        }
    }

    /// Has every running watch look for news now (after a change or an outage).
    pub fn request_flush(&mut self) {
        if !self.flush_pending {
            self.flush_pending = true;
            self.schedule(self.now, Ev::WatchFlush);
        }
    }

    /// Sends every running watch what it has not seen yet (or its failure).
    pub(crate) fn watch_flush(&mut self) {
        self.flush_pending = false;
        self.follow_log();
        let revision = self.store.revision();
        let at = self.now + self.latency();
        // One batch for all the watches at the same point.
        let mut batches: BTreeMap<Revision, Arc<WatchBatch>> = BTreeMap::new();
        for host in 0..self.hosts.len() {
            let Some(inc) = self.hosts[host].running_incarnation() else {
                continue;
            };
            let Some(cursor) = self.hosts[host].watch else {
                continue;
            };
            if cursor.next > revision && !self.store_down {
                continue;
            }
            let events = if self.store_down {
                Err(outage())
            } else if let Some(b) = batches.get(&cursor.next) {
                Ok(b.clone())
            } else {
                let shared = self
                    .lease_log
                    .as_ref()
                    .and_then(|log| log.batch_since(cursor.next));
                let batch = match shared {
                    Some(b) => Ok(b),
                    None => self
                        .store
                        .events_since(&self.subnets_prefix, cursor.next)
                        .map(WatchBatch::from),
                };
                batch.map(|b| {
                    let b = Arc::new(b);
                    batches.insert(cursor.next, b.clone());
                    b
                })
            };
            let batch = match events {
                Ok(events) if events.is_empty() => {
                    if let Some(w) = &mut self.hosts[host].watch {
                        w.next = revision + 1;
                    }
                    continue;
                }
                Ok(events) => {
                    if let Some(w) = &mut self.hosts[host].watch {
                        w.next = revision + 1;
                    }
                    Ok(events)
                }
                Err(e) => {
                    self.hosts[host].watch = None;
                    Err(e)
                }
            };
            self.schedule(
                at,
                Ev::WatchDeliver {
                    host,
                    inc,
                    id: cursor.id,
                    batch: batch.map_err(Box::new),
                },
            );
        }
    }

    /// Keeps the next expiry scheduled and wakes the watches after a change.
    pub(crate) fn store_housekeeping(&mut self) {
        let revision = self.store.revision();
        if revision > self.flushed_revision {
            self.flushed_revision = revision;
            if self.cfg.watches {
                self.request_flush();
            }
        }
        self.follow_log();
        // The checker reads the store like a client, so it waits out an outage (in
        // which nothing but expiries can happen) and catches up afterwards.
        if revision >= self.live_next && !self.store_down {
            self.follow_store();
        }
        if let Some(t) = self.store.next_expiry() {
            let at = SimTime::from_timestamp(t, 0);
            if self.expiry_at.is_none_or(|s| at < s) {
                self.expiry_at = Some(at);
                self.schedule(at, Ev::StoreExpiry);
            }
        }
    }

    /// A batch (or the failure) of the watch `id` reaches a node, which ignores it if
    /// that is no longer its watch.
    pub(crate) fn watch_deliver(
        &mut self,
        host: usize,
        inc: u32,
        id: OpId,
        batch: Result<Arc<WatchBatch>, StoreError>,
    ) {
        if !self.hosts[host].is_incarnation(inc) {
            return;
        }
        // Changes on their way when the link back from the store was cut are lost with
        // it; the client learns of the cut by its timeout (`watch_lost`).
        if batch.is_ok() && self.hosts[host].store_cut_down {
            return;
        }
        let now = self.hosts[host].node_now(self.now);
        let Some(node) = self.hosts[host].node_mut() else {
            return;
        };
        match batch {
            Ok(batch) => node.handle_watch_batch(id, &batch, now),
            Err(e) => node.handle_watch_error(id, e, now),
        }
        self.dirty.push(host);
    }

    /// An operator writes a reservation (a lease without TTL) of `subnet` for `ip`.
    pub fn operator_reserve(&mut self, subnet: ipnet::Ipv4Net, ip: std::net::Ipv4Addr) {
        let key = format!("{}{}", self.subnets_prefix, LeaseKey::v4(subnet));
        let attrs = LeaseAttrs::new(ip, self.cfg.network.backend.kind);
        let written = if self.store_down {
            Err(outage())
        } else {
            self.store.put(&key, &attrs.encode())
        };
        let text = match written {
            Ok(_) => format!("operator reserves {subnet} for {ip}"),
            Err(e) => format!("operator reserves {subnet} for {ip}: {e}"),
        };
        self.note_step(text);
    }

    /// An operator deletes the lease `host` holds.
    pub fn operator_delete(&mut self, host: usize) {
        let Some(key) = self.hosts[host].lease_key() else {
            self.note_step(format!(
                "delete-lease {}: it holds none",
                self.hosts[host].name
            ));
            return;
        };
        let full = format!("{}{}", self.subnets_prefix, key);
        // An operator's delete revokes the lease outright: a holder cut off from the
        // store cannot know before its deadline, and another node may take the subnet
        // meanwhile. That overlap is the operator's doing, not the protocol's, so the
        // held-subnets invariant stops counting the old holder.
        if self.held.get(&key.primary()) == Some(&host) {
            self.held.remove(&key.primary());
        }
        let deleted = if self.store_down {
            Err(outage())
        } else {
            self.store.delete(&full)
        };
        let text = match deleted {
            Ok(true) => format!("operator deletes {full}"),
            Ok(false) => format!("operator deletes {full}: not there"),
            Err(e) => format!("operator deletes {full}: {e}"),
        };
        self.note_step(text);
    }
}
