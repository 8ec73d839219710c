//! The allocator: acquires this node's subnet lease in flannel's order, renews it before
//! it expires, and reacts when it is lost.
//!
//! Acquisition order: a lease that already records our public IP (reuse it); else the
//! subnet of our previous `subnet.env`, if free; else a subnet drawn uniformly at random
//! from *all* free subnets in `[SubnetMin, SubnetMax]`. Decisions read the node's
//! [`LeaseTable`], kept current by the watch, so an acquisition costs one store round
//! trip, not a listing of every lease. A lost create race marks the subnet taken and
//! draws again; a store failure backs off and re-lists before deciding again, because a
//! create that timed out may have taken effect.

use std::collections::{BTreeSet, VecDeque};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::lease::{Lease, LeaseAttrs, LeaseKey, RawJson};
use crate::lease_table::LeaseTable;
use crate::store::{Entry, StoreError, StoreOp, WatchEvent};
use crate::subnet::SubnetSpace;
use crate::time::Timestamp;
use crate::timer::{Timer, TimerTable};

/// flannel's lease TTL.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(24 * 3600);
/// flannel's `--subnet-lease-renew-margin` default (60 minutes).
pub const DEFAULT_RENEW_MARGIN: Duration = Duration::from_secs(60 * 60);
/// Consecutive lost create races after which the allocator re-lists the store.
const CONFLICTS_BEFORE_RELIST: u32 = 16;
/// Random draws before falling back to enumerating the free subnets.
const RANDOM_DRAWS: u32 = 64;

/// What the allocator is told about its node.
#[derive(Debug, Clone)]
pub struct AllocatorConfig {
    /// The IPv4 subnets to allocate from.
    pub v4_space: SubnetSpace,
    /// The IPv6 subnets to allocate from, when IPv6 is enabled.
    pub v6_space: Option<SubnetSpace>,
    /// The node's public IPv4 address.
    pub public_ip: Ipv4Addr,
    /// The node's public IPv6 address.
    pub public_ipv6: Option<Ipv6Addr>,
    /// The backend type recorded in the lease.
    pub backend_type: String,
    /// The backend data recorded in the lease.
    pub backend_data: Option<RawJson>,
    /// The TTL of a new or renewed lease.
    pub lease_ttl: Duration,
    /// Renew this long before expiry (at most half the TTL).
    pub renew_margin: Duration,
    /// The subnets of the previous run, from `subnet.env`.
    pub previous: Option<LeaseKey>,
    /// The first retry delay after a failure.
    pub retry_min: Duration,
    /// The longest retry delay.
    pub retry_max: Duration,
}

impl AllocatorConfig {
    /// A config with flannel's defaults for a node with `public_ip`.
    pub fn new(v4_space: SubnetSpace, public_ip: Ipv4Addr, backend_type: &str) -> Self {
        AllocatorConfig {
            v4_space,
            v6_space: None,
            public_ip,
            public_ipv6: None,
            backend_type: backend_type.to_string(),
            backend_data: None,
            lease_ttl: DEFAULT_LEASE_TTL,
            renew_margin: DEFAULT_RENEW_MARGIN,
            previous: None,
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(30),
        }
    }

    fn attrs(&self) -> LeaseAttrs {
        LeaseAttrs {
            public_ip: self.public_ip,
            public_ipv6: self.public_ipv6,
            backend_type: Some(self.backend_type.clone()),
            backend_data: self.backend_data.clone(),
            backend_v6_data: None,
        }
    }
}

/// Why an acquisition attempt failed (the allocator retries by itself).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// Every subnet in the range is taken.
    #[error("out of subnets: all {total} subnets from {min} to {max} are taken ({taken} leases in range)")]
    OutOfSubnets {
        /// The first subnet of the range.
        min: IpNet,
        /// The last subnet of the range.
        max: IpNet,
        /// How many subnets the range holds.
        total: u128,
        /// How many of them are taken.
        taken: u128,
    },
    /// The store failed while acquiring.
    #[error("store failed while acquiring a lease: {0}")]
    Store(StoreError),
}

/// How a lease was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcquiredHow {
    /// A lease recording our public IP already existed.
    Reused,
    /// The subnet of our previous `subnet.env` was free.
    Previous,
    /// A random free subnet.
    Random,
}

/// Why our lease was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossReason {
    /// It ran out before a renewal succeeded; the allocator acquires again, preferring
    /// the same subnet.
    Expired,
    /// Someone else deleted it while it was live; like flannel, the allocator stops.
    Deleted,
    /// Another incarnation of the key (someone else's lease) replaced it; the allocator
    /// acquires again.
    Taken,
}

/// What the allocator reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllocEvent {
    /// We hold a lease now.
    Acquired {
        /// The lease.
        lease: Lease,
        /// How it was found.
        how: AcquiredHow,
    },
    /// Our lease was renewed.
    Renewed {
        /// The lease with its new expiry.
        lease: Lease,
    },
    /// Our lease is gone.
    Lost {
        /// Its key.
        key: LeaseKey,
        /// Why.
        reason: LossReason,
    },
    /// An acquisition attempt failed; another follows at `retry_at`.
    AcquireFailed {
        /// What went wrong.
        error: AllocError,
        /// When the next attempt is due.
        retry_at: Timestamp,
    },
    /// A renewal failed; another follows at `retry_at`.
    RenewFailed {
        /// What went wrong.
        error: StoreError,
        /// When the next attempt is due.
        retry_at: Timestamp,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Create(LeaseKey, AcquiredHow),
    Claim(LeaseKey),
    Renew,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Acquiring, waiting for a fresh listing of the store.
    NeedTable,
    /// An operation is in flight.
    Pending(Pending),
    /// Holding a lease; renewal timer armed unless it is a reservation.
    Holding,
    /// Waiting for the retry timer.
    Backoff,
    /// Our lease was deleted by someone else; nothing more to do.
    Stopped,
}

/// The allocator state machine. [`crate::node::Node`] drives it, feeding it the lease
/// table; its methods are public so that tests and benchmarks can drive it alone.
#[derive(Debug)]
pub struct Allocator {
    cfg: AllocatorConfig,
    subnets_prefix: String,
    rng: ChaCha8Rng,
    phase: Phase,
    lease: Option<Lease>,
    prefer: Option<LeaseKey>,
    conflicts: u32,
    recent_conflicts: BTreeSet<LeaseKey>,
    retries: u32,
    wants_listing: bool,
    ops: VecDeque<StoreOp>,
    events: VecDeque<AllocEvent>,
    pub(crate) timers: TimerTable,
}

impl Allocator {
    /// An allocator for leases under `subnets_prefix`, drawing its random choices from
    /// `seed`. It starts out wanting a listing of the store.
    pub fn new(cfg: AllocatorConfig, subnets_prefix: &str, seed: u64) -> Self {
        Allocator {
            prefer: cfg.previous,
            cfg,
            subnets_prefix: subnets_prefix.to_string(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            phase: Phase::NeedTable,
            lease: None,
            conflicts: 0,
            recent_conflicts: BTreeSet::new(),
            retries: 0,
            wants_listing: true,
            ops: VecDeque::new(),
            events: VecDeque::new(),
            timers: TimerTable::default(),
        }
    }

    /// The lease we hold, if any.
    pub fn lease(&self) -> Option<&Lease> {
        self.lease.as_ref()
    }

    /// Whether the allocator gave up because our lease was deleted by someone else.
    pub fn is_stopped(&self) -> bool {
        self.phase == Phase::Stopped
    }

    /// Whether the allocator needs a fresh listing before it can decide; clears the
    /// request.
    pub fn take_listing_request(&mut self) -> bool {
        std::mem::take(&mut self.wants_listing)
    }

    /// The next store operation to perform. Poll again after every `handle_*` call.
    pub fn poll_op(&mut self) -> Option<StoreOp> {
        self.ops.pop_front()
    }

    /// The next event. Poll again after every `handle_*` call.
    pub fn poll_event(&mut self) -> Option<AllocEvent> {
        self.events.pop_front()
    }

    fn full_key(&self, key: &LeaseKey) -> String {
        format!("{}{}", self.subnets_prefix, key)
    }

    fn backoff(&mut self, now: Timestamp) -> Timestamp {
        let exp = self
            .cfg
            .retry_min
            .saturating_mul(1u32 << self.retries.min(16));
        let base = exp.min(self.cfg.retry_max);
        // Up to 20 % jitter so that many nodes failing together do not retry together.
        let jitter_ms = self.rng.random_range(0..=base.as_millis() as u64 / 5);
        self.retries = self.retries.saturating_add(1);
        now + base + Duration::from_millis(jitter_ms)
    }

    /// The table was (re)listed: decide if we were waiting for it.
    pub fn on_synced(&mut self, table: &LeaseTable, now: Timestamp) {
        self.recent_conflicts.clear();
        self.conflicts = 0;
        // A listing taken after our last write that lacks our lease means the lease went
        // away while the watch was not looking (a compaction, a reconnect).
        if let Some(lease) = self.lease.clone() {
            if table.revision() >= lease.mod_revision {
                match table.get(&lease.key) {
                    None => self.vanished(&lease, table, now),
                    Some(l) if l.create_revision != lease.create_revision => {
                        self.lose(LossReason::Taken, table, now);
                    }
                    Some(_) => {}
                }
            }
        }
        if self.phase == Phase::NeedTable {
            self.acquire(table, now);
        }
    }

    fn start_acquiring(&mut self, relist: bool, table: &LeaseTable, now: Timestamp) {
        if relist {
            self.phase = Phase::NeedTable;
            self.wants_listing = true;
        } else {
            self.acquire(table, now);
        }
    }

    fn acquire(&mut self, table: &LeaseTable, now: Timestamp) {
        if !table.is_synced() {
            self.phase = Phase::NeedTable;
            self.wants_listing = true;
            return;
        }
        let wants_v6 = self.cfg.v6_space.is_some();
        // 1. A lease already recording our public IP, in the current network.
        let reusable = table
            .by_public_ip(self.cfg.public_ip)
            .find(|l| {
                self.cfg.v4_space.contains(&l.key.ipv4_net())
                    && l.key.ipv6.is_some() == wants_v6
                    && !self.recent_conflicts.contains(&l.key)
            })
            .cloned();
        if let Some(lease) = reusable {
            self.ops.push_back(StoreOp::Renew {
                key: self.full_key(&lease.key),
                create_revision: lease.create_revision,
                value: self.cfg.attrs().encode(),
                ttl: (!lease.is_reservation()).then_some(self.cfg.lease_ttl),
            });
            self.phase = Phase::Pending(Pending::Claim(lease.key));
            return;
        }
        // 2. The subnet we had before, if free.
        if let Some(prev) = self.prefer.filter(|k| self.is_free(k, table)) {
            self.create(prev, AcquiredHow::Previous);
            return;
        }
        // 3. A uniformly random free subnet.
        match self.pick_random(table) {
            Ok(key) => self.create(key, AcquiredHow::Random),
            Err(error) => {
                let retry_at = self.backoff(now);
                self.timers.set(Timer::AllocRetry, retry_at);
                self.phase = Phase::Backoff;
                self.events
                    .push_back(AllocEvent::AcquireFailed { error, retry_at });
            }
        }
    }

    fn is_free(&self, key: &LeaseKey, table: &LeaseTable) -> bool {
        let v4_ok = self.cfg.v4_space.contains(&key.ipv4_net()) && !table.is_v4_taken(key.ipv4);
        let v6_ok = match (self.cfg.v6_space, key.ipv6) {
            (None, None) => true,
            (Some(space), Some(v6)) => space.contains(&IpNet::V6(v6)) && !table.is_v6_taken(v6),
            _ => false,
        };
        v4_ok && v6_ok && !self.recent_conflicts.contains(key)
    }

    fn create(&mut self, key: LeaseKey, how: AcquiredHow) {
        self.ops.push_back(StoreOp::Create {
            key: self.full_key(&key),
            value: self.cfg.attrs().encode(),
            ttl: Some(self.cfg.lease_ttl),
        });
        self.phase = Phase::Pending(Pending::Create(key, how));
    }

    fn pick_random(&mut self, table: &LeaseTable) -> Result<LeaseKey, AllocError> {
        let conflicted_v4: BTreeSet<Ipv4Net> =
            self.recent_conflicts.iter().map(|k| k.ipv4).collect();
        let v4 = pick_free(&mut self.rng, &self.cfg.v4_space, |n| {
            let IpNet::V4(n) = n else { return true };
            table.is_v4_taken(n) || conflicted_v4.contains(&n)
        })
        .map_err(|taken| out_of(&self.cfg.v4_space, taken))?;
        let IpNet::V4(ipv4) = v4 else {
            unreachable!("the v4 space yields IPv4 subnets")
        };
        let ipv6 = match self.cfg.v6_space {
            None => None,
            Some(space) => {
                let v6 = pick_free(&mut self.rng, &space, |n| {
                    let IpNet::V6(n) = n else { return true };
                    table.is_v6_taken(n)
                })
                .map_err(|taken| out_of(&space, taken))?;
                match v6 {
                    IpNet::V6(n) => Some(n),
                    IpNet::V4(_) => unreachable!("the v6 space yields IPv6 subnets"),
                }
            }
        };
        Ok(LeaseKey { ipv4, ipv6 })
    }
}

fn out_of(space: &SubnetSpace, taken: u128) -> AllocError {
    AllocError::OutOfSubnets {
        min: space.min(),
        max: space.max(),
        total: space.len(),
        taken,
    }
}

/// Draws a subnet uniformly from the free ones: a few random draws first (cheap while
/// the space is not crowded), then an exact walk over the free ones. Returns how many are
/// taken when none is free.
fn pick_free(
    rng: &mut ChaCha8Rng,
    space: &SubnetSpace,
    taken: impl Fn(IpNet) -> bool,
) -> Result<IpNet, u128> {
    for _ in 0..RANDOM_DRAWS {
        let index = rng.random_range(space.min_index()..=space.max_index());
        let subnet = space.subnet_at(index);
        if !taken(subnet) {
            return Ok(subnet);
        }
    }
    // Crowded: count exactly. Rejection sampling already failed many times, so the
    // taken subnets are a large share of the space and walking it is proportionate,
    // except for huge (IPv6) spaces, where 64 straight misses means "effectively full".
    const WALK_LIMIT: u128 = 1 << 20;
    if space.len() > WALK_LIMIT {
        return Err(space.len());
    }
    let free: Vec<u128> = (space.min_index()..=space.max_index())
        .filter(|i| !taken(space.subnet_at(*i)))
        .collect();
    if free.is_empty() {
        return Err(space.len());
    }
    let pick = free[rng.random_range(0..free.len())];
    Ok(space.subnet_at(pick))
}

impl Allocator {
    fn hold(&mut self, key: LeaseKey, entry: &Entry, now: Timestamp) -> Lease {
        let lease = Lease {
            key,
            attrs: self.cfg.attrs(),
            expires_at: entry.expires_at,
            create_revision: entry.create_revision,
            mod_revision: entry.mod_revision,
        };
        self.lease = Some(lease.clone());
        self.prefer = Some(key);
        self.phase = Phase::Holding;
        self.retries = 0;
        self.conflicts = 0;
        self.timers.stop(Timer::AllocRetry);
        match lease.expires_at {
            Some(expires_at) => {
                let ttl = expires_at.saturating_since(now);
                let margin = self.cfg.renew_margin.min(ttl / 2);
                self.timers.set(Timer::Renew, expires_at - margin);
                self.timers.set(Timer::Expiry, expires_at);
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
                let relist = self.conflicts >= CONFLICTS_BEFORE_RELIST;
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
                let retry_at = self.backoff(now);
                self.phase = Phase::Holding;
                self.timers.set(Timer::Renew, retry_at);
                self.events
                    .push_back(AllocEvent::RenewFailed { error, retry_at });
            }
        }
    }

    fn lose(&mut self, reason: LossReason, table: &LeaseTable, now: Timestamp) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        self.timers.stop(Timer::Renew);
        self.timers.stop(Timer::Expiry);
        self.events.push_back(AllocEvent::Lost {
            key: lease.key,
            reason,
        });
        match reason {
            LossReason::Deleted => {
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

    /// Our lease is gone from the store: deleted by someone else if it was still live,
    /// expired otherwise.
    fn vanished(&mut self, lease: &Lease, table: &LeaseTable, now: Timestamp) {
        let live = lease.expires_at.is_none_or(|at| now < at);
        let reason = if live {
            LossReason::Deleted
        } else {
            LossReason::Expired
        };
        self.lose(reason, table, now);
    }

    fn renew(&mut self) {
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
    pub fn on_watch_event(&mut self, event: &WatchEvent, table: &LeaseTable, now: Timestamp) {
        if let Some(lease) = self.lease.clone() {
            if event.key() == self.full_key(&lease.key) {
                match event {
                    WatchEvent::Delete { .. } => self.vanished(&lease, table, now),
                    WatchEvent::Put(entry) if entry.create_revision != lease.create_revision => {
                        self.lose(LossReason::Taken, table, now);
                    }
                    WatchEvent::Put(entry) => {
                        let ours = self.cfg.attrs().encode();
                        if entry.value != ours && self.phase == Phase::Holding {
                            // Someone overwrote our lease's value: write ours back.
                            self.renew();
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
        match timer {
            Timer::Renew if self.phase == Phase::Holding => self.renew(),
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
