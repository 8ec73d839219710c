//! Why packets are dropped, and the counters a forwarding thread keeps of it.
//!
//! Each forwarding thread owns one [`ThreadDrops`] and is its only writer, so counting a
//! drop is a plain load and store on a cache line no other thread writes: no lock and no
//! contended atomic on the packet path. Readers (stats, metrics) sum every thread's
//! counters through the [`DropRegistry`] the threads registered with.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// Not a well-formed IP packet (truncated, bad version, bad checksum).
    Malformed = 0,
    /// Its TTL would reach zero on this hop.
    TtlExpired = 1,
    /// No peer holds a subnet containing the destination.
    NoRoute = 2,
    /// We hold no lease yet, so nothing is addressed to us.
    NoLease = 3,
    /// Received from an address that is no peer's public IP.
    UnknownPeer = 4,
    /// Received from a peer, but the inner source is not in that peer's subnet.
    SpoofedSource = 5,
    /// Received, but the inner destination is not in our subnet.
    NotOurSubnet = 6,
}

const REASONS: usize = 7;

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; REASONS] = [
        DropReason::Malformed,
        DropReason::TtlExpired,
        DropReason::NoRoute,
        DropReason::NoLease,
        DropReason::UnknownPeer,
        DropReason::SpoofedSource,
        DropReason::NotOurSubnet,
    ];

    /// A short name for logs and counters.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::TtlExpired => "ttl_expired",
            DropReason::NoRoute => "no_route",
            DropReason::NoLease => "no_lease",
            DropReason::UnknownPeer => "unknown_peer",
            DropReason::SpoofedSource => "spoofed_source",
            DropReason::NotOurSubnet => "not_our_subnet",
        }
    }
}

/// Drop counts by reason: a snapshot, or a sum over threads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounters([u64; REASONS]);

impl DropCounters {
    /// How many packets were dropped for `reason`.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason as usize]
    }

    /// All drops.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Each reason with its count, in a fixed order.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.into_iter().map(|r| (r, self.get(r)))
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &DropCounters) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }
}

/// The drop counters of one forwarding thread; see the module docs. Only the thread
/// that owns it counts into it; anyone may read it.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct ThreadDrops([AtomicU64; REASONS]);

impl ThreadDrops {
    /// Counts one drop for `reason`. Single writer: a load and a store, no
    /// read-modify-write.
    pub fn count(&self, reason: DropReason) {
        let c = &self.0[reason as usize];
        c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn snapshot(&self) -> DropCounters {
        let mut out = DropCounters::default();
        for (o, c) in out.0.iter_mut().zip(&self.0) {
            *o = c.load(Ordering::Relaxed);
        }
        out
    }
}

/// Every forwarding thread's [`ThreadDrops`], summed on read. The registry's lock is
/// taken when a thread starts and when someone reads, never per packet.
#[derive(Debug, Default)]
pub struct DropRegistry(Mutex<Vec<Arc<ThreadDrops>>>);

impl DropRegistry {
    /// Counters for one more thread.
    pub fn register(&self) -> Arc<ThreadDrops> {
        let drops = Arc::new(ThreadDrops::default());
        self.threads().push(drops.clone());
        drops
    }

    /// The sum over every registered thread.
    pub fn total(&self) -> DropCounters {
        let mut sum = DropCounters::default();
        for t in self.threads().iter() {
            sum.add(&t.snapshot());
        }
        sum
    }

    fn threads(&self) -> std::sync::MutexGuard<'_, Vec<Arc<ThreadDrops>>> {
        // Nothing panics while holding it; a poisoned list is still a list.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_thread_counts_alone_and_the_registry_sums() {
        let registry = Arc::new(DropRegistry::default());
        let threads: Vec<_> = (0..4u64)
            .map(|i| {
                let drops = registry.register();
                std::thread::spawn(move || {
                    for _ in 0..1000 * (i + 1) {
                        drops.count(DropReason::NoRoute);
                    }
                    drops.count(DropReason::Malformed);
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        let total = registry.total();
        assert_eq!(total.get(DropReason::NoRoute), 10_000);
        assert_eq!(total.get(DropReason::Malformed), 4);
        assert_eq!(total.total(), 10_004);
    }
}
