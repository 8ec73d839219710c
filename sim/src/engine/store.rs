//! The store side of the world: operations that reach the store after its latency and
//! whose results travel back, watches fed from the store's history, expiries at their
//! exact time, outages.

use weft_core::lease::{LeaseAttrs, LeaseKey};
use weft_core::node::{OpId, StoreOp, StoreOutput};
use weft_core::store::{Revision, StoreError, WatchEvent};

use super::{Ev, World, STORE_TIMEOUT};
use crate::time::SimTime;

/// A running watch, as the store side sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WatchCursor {
    pub generation: u64,
    pub next: Revision,
}

impl World {
    fn latency(&self) -> std::time::Duration {
        self.cfg.store_latency
    }

    /// A node's operation reaches the store: perform it, send the result back.
    pub(crate) fn store_exec(&mut self, host: usize, inc: u32, id: OpId, op: StoreOp) {
        self.stats.store_ops += 1;
        let s = &self.store;
        let result = match &op {
            StoreOp::List { prefix } => s.list(prefix).map(StoreOutput::Listing),
            StoreOp::Create { key, value, ttl } => {
                s.create(key, value, *ttl).map(StoreOutput::Entry)
            }
            StoreOp::Renew {
                key,
                create_revision,
                value,
                ttl,
            } => s
                .renew(key, *create_revision, value, *ttl)
                .map(StoreOutput::Entry),
            StoreOp::Watch { .. } => return,
        };
        // An answer that cannot get back is a timeout for the client, though the
        // operation took effect.
        let at = if self.hosts[host].store_cut_down {
            self.now + STORE_TIMEOUT
        } else {
            self.now + self.latency()
        };
        let result = if self.hosts[host].store_cut_down {
            Err(StoreError::Timeout(STORE_TIMEOUT))
        } else {
            result
        };
        self.schedule(
            at,
            Ev::StoreResult {
                host,
                inc,
                id,
                result,
            },
        );
    }

    /// A node asks for a watch from `from`: it replaces the node's running watch.
    pub(crate) fn watch_open(&mut self, host: usize, inc: u32, from: Revision) {
        if !self.hosts[host].is_incarnation(inc) {
            return;
        }
        if self.hosts[host].store_cut_down {
            self.watch_lost(host, inc);
            return;
        }
        let h = &mut self.hosts[host];
        h.watch_generation += 1;
        let generation = h.watch_generation;
        if self.store.is_unavailable() {
            h.watch = None;
            let batch = Err(StoreError::Unavailable(
                "memory store outage injected by set_unavailable".into(),
            ));
            let at = self.now + self.latency();
            self.schedule(
                at,
                Ev::WatchDeliver {
                    host,
                    inc,
                    generation,
                    batch,
                },
            );
            return;
        }
        h.watch = Some(WatchCursor {
            generation,
            next: from,
        });
        self.request_flush();
    }

    /// Has every running watch look for news now (after a change or an outage).
    pub(crate) fn watch_lost(&mut self, host: usize, inc: u32) {
        let h = &mut self.hosts[host];
        h.watch = None;
        h.watch_generation += 1;
        let generation = h.watch_generation;
        let batch = Err(StoreError::Timeout(STORE_TIMEOUT));
        self.schedule(
            self.now + STORE_TIMEOUT,
            Ev::WatchDeliver {
                host,
                inc,
                generation,
                batch,
            },
        );
    }

    /// Cuts (or restores) the link between host `h` and the store: `up` is the
    /// direction to the store, `down` the one back. A running watch breaks when its
    /// direction is cut, as an etcd client's stream times out.
    pub fn cut_store(&mut self, h: usize, up: bool, down: bool) {
        let host = &mut self.hosts[h];
        host.store_cut_up = up;
        host.store_cut_down = down;
        if down && host.watch.is_some() {
            if let Some(inc) = host.running_incarnation() {
                self.watch_lost(h, inc);
            }
        }
    }

    pub fn request_flush(&mut self) {
        if !self.flush_pending {
            self.flush_pending = true;
            self.schedule(self.now, Ev::WatchFlush);
        }
    }

    /// Sends every running watch what it has not seen yet (or its failure).
    pub(crate) fn watch_flush(&mut self) {
        self.flush_pending = false;
        let revision = self.store.revision();
        let unavailable = self.store.is_unavailable();
        let at = self.now + self.latency();
        for host in 0..self.hosts.len() {
            let Some(inc) = self.hosts[host].running_incarnation() else {
                continue;
            };
            let Some(cursor) = self.hosts[host].watch else {
                continue;
            };
            if cursor.next > revision && !unavailable {
                continue;
            }
            let batch = match self.store.events_since(&self.subnets_prefix, cursor.next) {
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
                    generation: cursor.generation,
                    batch,
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
        // The checker reads the store like a client, so it waits out an outage (in
        // which nothing but expiries can happen) and catches up afterwards.
        if revision >= self.live_next && !self.store.is_unavailable() {
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

    /// A watch batch (or failure) reaches a node.
    pub(crate) fn watch_deliver(
        &mut self,
        host: usize,
        inc: u32,
        generation: u64,
        batch: Result<Vec<WatchEvent>, StoreError>,
    ) {
        if !self.hosts[host].is_incarnation(inc) || self.hosts[host].watch_generation != generation
        {
            return;
        }
        let now = self.hosts[host].node_now(self.now);
        let Some(node) = self.hosts[host].node_mut() else {
            return;
        };
        match batch {
            Ok(events) => node.handle_watch_events(&events, now),
            Err(e) => node.handle_watch_error(e, now),
        }
        self.dirty.push(host);
    }

    /// An operator writes a reservation (a lease without TTL) of `subnet` for `ip`.
    pub fn operator_reserve(&mut self, subnet: ipnet::Ipv4Net, ip: std::net::Ipv4Addr) {
        let key = format!("{}{}", self.subnets_prefix, LeaseKey::v4(subnet));
        let attrs = LeaseAttrs::new(ip, self.cfg.network.backend.kind.as_str());
        let text = match self.store.put(&key, &attrs.encode()) {
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
        if self.held.get(&key.ipv4) == Some(&host) {
            self.held.remove(&key.ipv4);
        }
        let text = match self.store.delete(&full) {
            Ok(true) => format!("operator deletes {full}"),
            Ok(false) => format!("operator deletes {full}: not there"),
            Err(e) => format!("operator deletes {full}: {e}"),
        };
        self.note_step(text);
    }
}
