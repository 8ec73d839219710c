//! Acquisition: deciding which subnet to take, in flannel's order.

use crate::lease::{Lease, LeaseKey};
use crate::lease_table::LeaseTable;
use crate::store::StoreOp;
use crate::subnet::SubnetSpace;
use crate::time::Timestamp;
use crate::timer::{Timer, TimerTable};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeSet, VecDeque};

use super::*;

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
            table_followed: false,
            own_key: None,
            retries: 0,
            sent_at: None,
            deadline: None,
            wants_listing: true,
            store_wait: None,
            unanswered_write: false,
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

    /// The TTL of the lease a listing asked for now would be followed by the creation
    /// (or renewal) of: while acquiring, with no lease held. `None` otherwise (a
    /// re-list while holding one, a reservation held).
    pub fn acquiring_ttl(&self) -> Option<std::time::Duration> {
        (self.lease.is_none() && self.phase == Phase::NeedTable).then_some(self.cfg.lease_ttl)
    }

    /// The next store operation to perform. Poll again after every `handle_*` call.
    pub fn poll_op(&mut self) -> Option<StoreOp> {
        self.ops.pop_front()
    }

    /// The next event. Poll again after every `handle_*` call.
    pub fn poll_event(&mut self) -> Option<AllocEvent> {
        self.events.pop_front()
    }

    pub(super) fn full_key(&self, key: &LeaseKey) -> String {
        format!("{}{}", self.subnets_prefix, key)
    }

    /// Whether `full` is the store key of our lease `key`. Every watch event of every
    /// peer is asked this, so the key is written out once per lease, not per event.
    pub(super) fn is_own_full_key(&mut self, full: &str, key: LeaseKey) -> bool {
        self.own_full_key(key) == full
    }

    /// The store key of our lease `key`, written out once per lease.
    pub(super) fn own_full_key(&mut self, key: LeaseKey) -> &str {
        if self.own_key.as_ref().is_none_or(|(k, _)| *k != key) {
            self.own_key = Some((key, self.full_key(&key)));
        }
        self.own_key.as_ref().map_or("", |(_, f)| f.as_str())
    }

    pub(super) fn backoff(&mut self, now: Timestamp) -> Timestamp {
        let delay = crate::timer::backoff(
            self.cfg.retry_min,
            self.cfg.retry_max,
            self.retries,
            &mut self.rng,
        );
        self.retries = self.retries.saturating_add(1);
        now + delay
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

    pub(super) fn start_acquiring(&mut self, relist: bool, table: &LeaseTable, now: Timestamp) {
        if relist {
            self.phase = Phase::NeedTable;
            self.wants_listing = true;
        } else {
            self.acquire(table, now);
        }
    }

    pub(super) fn acquire(&mut self, table: &LeaseTable, now: Timestamp) {
        self.sent_at = Some(now);
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
                self.cfg.is_own_address(&l.attrs)
                    && self.in_v4_space(&l.key)
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
        // 3. The subnet our public IP points at, if free.
        if let Some(key) = self.pointed_at().filter(|k| self.is_free(k, table)) {
            self.create(key, AcquiredHow::FromPublicIp);
            return;
        }
        // 4. A uniformly random free subnet.
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

    /// Whether `key`'s IPv4 part fits the config: in the IPv4 space, or absent when
    /// there is none (an IPv6-only network).
    fn in_v4_space(&self, key: &LeaseKey) -> bool {
        match (self.cfg.v4_space, key.ipv4_net()) {
            (Some(space), Some(net)) => space.contains(&net),
            (None, None) => true,
            _ => false,
        }
    }

    fn is_free(&self, key: &LeaseKey, table: &LeaseTable) -> bool {
        let v4_ok = self.in_v4_space(key) && key.ipv4.is_none_or(|n| !table.is_v4_taken(n));
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

    /// The subnet our public IP points at: the one at the IP's position in the space,
    /// counted modulo its size (with its paired IPv6 subnet, in dual stack). Nodes that
    /// join at once all work from about the same listing; drawing at random, two of
    /// 1,000 joiners in 4,096 subnets pick the same one about 120 times, and each such
    /// pair costs a create round trip and a retry. The nodes of one underlay network have
    /// consecutive addresses, which point at different subnets, so they rarely race for
    /// one; a subnet that is taken, or was just lost in a race, falls through to the
    /// random draw.
    fn pointed_at(&self) -> Option<LeaseKey> {
        let Some(space) = self.cfg.v4_space else {
            // IPv6 only: the IPv6 address points into the IPv6 space.
            let space = self.cfg.v6_space?;
            let ip = self.cfg.public_ipv6?;
            let offset = u128::from(ip) % space.len();
            let IpNet::V6(ipv6) = space.subnet_at(space.min_index() + offset) else {
                return None;
            };
            return Some(LeaseKey {
                ipv4: None,
                ipv6: Some(ipv6),
            });
        };
        let offset = u128::from(u32::from(self.cfg.public_ip)) % space.len();
        let IpNet::V4(ipv4) = space.subnet_at(space.min_index() + offset) else {
            return None;
        };
        let ipv6 = match self.cfg.v6_space {
            None => None,
            Some(v6_space) => Some(pair_of(&space, &v6_space, ipv4)?),
        };
        Some(LeaseKey {
            ipv4: Some(ipv4),
            ipv6,
        })
    }

    fn pick_random(&mut self, table: &LeaseTable) -> Result<LeaseKey, AllocError> {
        let conflicted_v4: BTreeSet<Ipv4Net> = self
            .recent_conflicts
            .iter()
            .filter_map(|k| k.ipv4)
            .collect();
        // A subnet of a key that a create just found existing is taken, though the
        // table may not show it yet.
        let conflicted_v6: BTreeSet<Ipv6Net> = self
            .recent_conflicts
            .iter()
            .filter_map(|k| k.ipv6)
            .collect();
        let v4_taken = |n: Ipv4Net| table.is_v4_taken(n) || conflicted_v4.contains(&n);
        let v6_taken = |n: Ipv6Net| table.is_v6_taken(n) || conflicted_v6.contains(&n);
        // IPv6-only: an IPv6 subnet alone, drawn as the IPv4 one is on an IPv4 network.
        // flannel's etcd allocator walks an IPv4 range here too
        // (pkg/subnet/etcd/local_manager.go:234-248, SubnetMin = SubnetMax = 0/0 overlaps
        // every lease) and so cannot place a second IPv6-only node.
        let Some(v4_space) = self.cfg.v4_space else {
            let Some(space) = self.cfg.v6_space else {
                return Err(AllocError::NoSpace);
            };
            let v6 = pick_free(&mut self.rng, &space, |n| {
                let IpNet::V6(n) = n else { return true };
                v6_taken(n)
            })
            .map_err(|taken| out_of(&space, taken))?;
            let IpNet::V6(ipv6) = v6 else {
                unreachable!("the v6 space yields IPv6 subnets")
            };
            return Ok(LeaseKey::v6(ipv6));
        };
        // Dual stack: an IPv4 subnet whose paired IPv6 subnet is free, first (see
        // `pick_v6`). Two nodes that draw different IPv4 subnets this way lease different
        // IPv6 ones; drawing the IPv4 subnet alone, a node whose pair was taken could
        // draw at random the IPv6 subnet another node was pairing at the same time (the
        // simulator's scenario 26 found it).
        if let Some(v6_space) = self.cfg.v6_space {
            let paired = pick_free(&mut self.rng, &v4_space, |n| {
                let IpNet::V4(n) = n else { return true };
                v4_taken(n) || pair_of(&v4_space, &v6_space, n).is_none_or(v6_taken)
            });
            if let Ok(IpNet::V4(ipv4)) = paired {
                if let Some(ipv6) = pair_of(&v4_space, &v6_space, ipv4) {
                    return Ok(LeaseKey::dual(ipv4, ipv6));
                }
            }
        }
        let v4 = pick_free(&mut self.rng, &v4_space, |n| {
            let IpNet::V4(n) = n else { return true };
            v4_taken(n)
        })
        .map_err(|taken| out_of(&v4_space, taken))?;
        let IpNet::V4(ipv4) = v4 else {
            unreachable!("the v4 space yields IPv4 subnets")
        };
        let ipv6 = match self.cfg.v6_space {
            None => None,
            Some(space) => Some(self.pick_v6(&v4_space, &space, ipv4, &v6_taken)?),
        };
        Ok(LeaseKey {
            ipv4: Some(ipv4),
            ipv6,
        })
    }
}

/// The IPv6 subnet paired with the IPv4 subnet `v4`: the one at the same position in
/// its space (modulo its size).
fn pair_of(v4_space: &SubnetSpace, v6_space: &SubnetSpace, v4: Ipv4Net) -> Option<Ipv6Net> {
    let i = v4_space.index_of(&IpNet::V4(v4))?;
    let offset = (i - v4_space.min_index()) % v6_space.len();
    match v6_space.subnet_at(v6_space.min_index() + offset) {
        IpNet::V6(paired) => Some(paired),
        IpNet::V4(_) => None,
    }
}

impl Allocator {
    /// The IPv6 subnet to lease with the IPv4 subnet `v4`: the one at the same position
    /// in its space, when free. A dual-stack lease is one key holding both subnets, and
    /// create-if-absent protects only the whole key: two nodes drawing the same IPv4
    /// subnet with different IPv6 ones (or the reverse) would both succeed. Pairing the
    /// two makes every such race a race for the same key, which the store settles. Only
    /// when the paired subnet is taken (a lease written by someone else) is one drawn at
    /// random. The simulator's dual-stack scenario found this (its IPv6 overlap check).
    fn pick_v6(
        &mut self,
        v4_space: &SubnetSpace,
        space: &SubnetSpace,
        v4: Ipv4Net,
        taken: &impl Fn(Ipv6Net) -> bool,
    ) -> Result<Ipv6Net, AllocError> {
        if let Some(paired) = pair_of(v4_space, space, v4) {
            if !taken(paired) {
                return Ok(paired);
            }
        }
        let v6 = pick_free(&mut self.rng, space, |n| {
            let IpNet::V6(n) = n else { return true };
            taken(n)
        })
        .map_err(|taken| out_of(space, taken))?;
        match v6 {
            IpNet::V6(n) => Ok(n),
            IpNet::V4(_) => unreachable!("the v6 space yields IPv6 subnets"),
        }
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
