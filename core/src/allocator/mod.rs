//! The allocator: acquires this node's subnet lease in flannel's order, renews it before
//! it expires, and reacts when it is lost.
//!
//! Acquisition order: a lease that already records our public IP (reuse it); else the
//! subnet of our previous `subnet.env`, if free; else the subnet our public IP points at
//! (its position in the space, modulo the space's size), if free; else a subnet drawn
//! uniformly at random from *all* free subnets in `[SubnetMin, SubnetMax]`. flannel draws
//! at random from the first 100 free ones; the pointed-at first choice is weft's, so that
//! nodes of one underlay network joining at once rarely race for a subnet. Decisions read the node's
//! [`LeaseTable`], kept current by the watch, so an acquisition costs one store round
//! trip, not a listing of every lease. A lost create race marks the subnet taken and
//! draws again; a store failure backs off and re-lists before deciding again, because a
//! create that timed out may have taken effect.

use std::collections::{BTreeSet, VecDeque};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ipnet::IpNet;
use rand_chacha::ChaCha8Rng;

use crate::config::BackendType;
use crate::lease::{Lease, LeaseAttrs, LeaseKey, RawJson};
use crate::store::{StoreError, StoreOp};
use crate::subnet::SubnetSpace;
use crate::time::Timestamp;
use crate::timer::{Timer, TimerTable};

mod acquire;
mod lifecycle;

/// flannel's lease TTL.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(24 * 3600);
/// flannel's `--subnet-lease-renew-margin` default (60 minutes).
pub const DEFAULT_RENEW_MARGIN: Duration = Duration::from_secs(60 * 60);
/// Consecutive lost create races after which the allocator re-lists the store.
const CONFLICTS_BEFORE_RELIST: u32 = 16;
/// Random draws before falling back to enumerating the free subnets.
const RANDOM_DRAWS: u32 = 64;
/// The shortest wait between two renewal attempts near the lease's end.
const RENEW_RETRY_FLOOR: Duration = Duration::from_millis(100);

/// What the allocator is told about its node.
#[derive(Debug, Clone)]
pub struct AllocatorConfig {
    /// The IPv4 subnets to allocate from; `None` on an IPv6-only network
    /// (`EnableIPv4: false`), whose leases hold an IPv6 subnet alone.
    pub v4_space: Option<SubnetSpace>,
    /// The IPv6 subnets to allocate from, when IPv6 is enabled.
    pub v6_space: Option<SubnetSpace>,
    /// The node's public IPv4 address; `0.0.0.0` on an IPv6-only network, which is what
    /// flannel records there (its zero `ip.IP4`, pkg/lease/lease.go:43).
    pub public_ip: Ipv4Addr,
    /// The node's public IPv6 address.
    pub public_ipv6: Option<Ipv6Addr>,
    /// The backend type recorded in the lease (`None`: left out, as flanneld's udp and
    /// alloc backends do; see [`BackendType::lease_type`]).
    pub backend_type: Option<String>,
    /// The backend data recorded in the lease.
    pub backend_data: Option<RawJson>,
    /// The IPv6 backend data recorded in the lease (flannel's `BackendV6Data`: vxlan's
    /// second device's VNI and VTEP MAC).
    pub backend_v6_data: Option<RawJson>,
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
    /// A config with flannel's defaults for a node with `public_ip` running `backend`.
    pub fn new(v4_space: SubnetSpace, public_ip: Ipv4Addr, backend: BackendType) -> Self {
        AllocatorConfig {
            v4_space: Some(v4_space),
            v6_space: None,
            public_ip,
            public_ipv6: None,
            backend_type: backend.lease_type().map(str::to_string),
            backend_data: None,
            backend_v6_data: None,
            lease_ttl: DEFAULT_LEASE_TTL,
            renew_margin: DEFAULT_RENEW_MARGIN,
            previous: None,
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(30),
        }
    }

    /// A config with flannel's defaults for a node with `public_ipv6` running `backend`
    /// on an IPv6-only network: leases of `v6_space` alone, `PublicIP` 0.0.0.0.
    pub fn v6_only(v6_space: SubnetSpace, public_ipv6: Ipv6Addr, backend: BackendType) -> Self {
        let mut cfg = AllocatorConfig::new(v6_space, Ipv4Addr::UNSPECIFIED, backend);
        cfg.v4_space = None;
        cfg.v6_space = Some(v6_space);
        cfg.public_ipv6 = Some(public_ipv6);
        cfg
    }

    /// Whether a lease recording `attrs` records this node's public address: its IPv4
    /// one, or on an IPv6-only network (where every lease says `PublicIP` 0.0.0.0) its
    /// IPv6 one. flannel compares the IPv4 address alone
    /// (pkg/subnet/etcd/local_manager.go:128-136), so on an IPv6-only network it would
    /// take any peer's lease for its own.
    pub(crate) fn is_own_address(&self, attrs: &LeaseAttrs) -> bool {
        match self.v4_space {
            Some(_) => attrs.public_ip == self.public_ip,
            None => self.public_ipv6.is_some() && attrs.public_ipv6 == self.public_ipv6,
        }
    }

    fn attrs(&self) -> LeaseAttrs {
        LeaseAttrs {
            public_ip: self.public_ip,
            public_ipv6: self.public_ipv6,
            backend_type: self.backend_type.clone(),
            backend_data: self.backend_data.clone(),
            backend_v6_data: self.backend_v6_data.clone(),
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
    /// The config gives neither an IPv4 nor an IPv6 space to allocate from.
    #[error("no subnet space to allocate from: the config enables neither IPv4 nor IPv6")]
    NoSpace,
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
    /// The free subnet our public IP points at (see `Allocator::pointed_at`).
    FromPublicIp,
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
    /// Another node renewed it, recording our public IP: two nodes are configured with
    /// one public IP, and by flannel's rule (reuse the lease that records our address)
    /// the newcomer took ours. Both cannot use one subnet, nor can either take another
    /// (the rule would hand it the same lease again): the allocator stops, as for a
    /// deletion, and the newcomer keeps the lease.
    Claimed,
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
    /// Our lease was deleted, or claimed, by someone else; nothing more to do.
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
    /// Whether the node's watch keeps the table current (see
    /// [`Allocator::set_table_followed`]): until it does, a lost create race re-lists.
    table_followed: bool,
    /// Our lease's key and its store key, written out once (see `is_own_full_key`).
    own_key: Option<(LeaseKey, String)>,
    retries: u32,
    /// When (on our clock) the last create or renewal was sent: the store's TTL runs
    /// from a moment after it.
    sent_at: Option<Timestamp>,
    /// When (on our clock) the lease we hold runs out at the latest. The store's
    /// `expires_at` is in the store's time base; comparing it with our clock would make
    /// a node whose clock runs ahead expire (and re-acquire) at once, and one whose
    /// clock runs behind take an expiry for a deletion.
    deadline: Option<Timestamp>,
    wants_listing: bool,
    /// The timer (a retry of the acquisition, or of the renewal) armed after the store
    /// failed, while it waits: the node brings it forward when the store answers again
    /// ([`Allocator::store_is_back`]).
    store_wait: Option<Timer>,
    /// A write of our lease (a renewal) failed without an answer: it may have happened
    /// all the same, so the next unexplained write of our value may be ours.
    unanswered_write: bool,
    ops: VecDeque<StoreOp>,
    events: VecDeque<AllocEvent>,
    pub(crate) timers: TimerTable,
}
