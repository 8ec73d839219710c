//! The world: hosts, the store, the underlay and the event loop over virtual time.
//!
//! Everything that happens is an event (`Ev`) in one queue ordered by (time, sequence); the
//! loop pops the earliest, lets the part of the world it concerns react (which
//! schedules further events), and checks the invariants. Nothing reads a wall clock.

mod attack;
mod check;
mod datapath;
mod events;
mod host;
mod probe;
mod store;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::IpNet;
use weft_core::config::NetworkConfig;
use weft_core::lease_table::{LeaseLog, WatchBatch};
use weft_core::node::NodeConfig;
use weft_core::node::{OpId, StoreOp, StoreOutput};
use weft_core::store::{subnets_prefix, Revision, StoreError, StoreModel, DEFAULT_PREFIX};

pub(crate) use check::forward_mismatch;
pub use check::LiveRoute;
pub use datapath::Guest;
pub use host::{Host, HostState, Running};
pub use probe::{Ping, Transfer};

use crate::hash::KeyMap;
use crate::queue::EventQueue;
use crate::record::{Decision, Replay};
use crate::rng;
use crate::time::SimTime;
use crate::underlay::{Fate, LinkFaults, PacketInfo, Underlay};

/// How long a node's store client waits for an answer that does not come (a cut link)
/// before it reports a timeout: etcd's client default.
pub const STORE_TIMEOUT: Duration = Duration::from_secs(5);

/// Events at one virtual instant beyond which the run is taken for a livelock (time
/// would never move on) and stopped with a failure rather than hanging.
const LIVELOCK_EVENTS: u64 = 1_000_000;

/// Where the random decisions come from.
#[derive(Debug)]
pub enum Decisions {
    /// Drawn from streams derived from this seed.
    Seeded(u64),
    /// Read from an event file.
    Replay(Replay),
}

/// How a world is set up.
#[derive(Debug)]
pub struct WorldConfig {
    /// The network config (flannel's net-conf).
    pub network: NetworkConfig,
    /// Lease TTL.
    pub lease_ttl: Duration,
    /// Renew this long before expiry.
    pub renew_margin: Duration,
    /// First retry delay.
    pub retry_min: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// One-way latency between nodes and the store.
    pub store_latency: Duration,
    /// Whether nodes get the store's watch events (off only for the 10,000-node join
    /// benchmark, see the README).
    pub watches: bool,
    /// The faults of every link at the start.
    pub faults: LinkFaults,
    /// Where the decisions come from.
    pub decisions: Decisions,
    /// Keep a list of every decision taken (for the event file).
    pub record: bool,
    /// Keep a readable trace.
    pub trace: bool,
    /// Trace route changes and renewals too.
    pub trace_routes: bool,
    /// Check the invariants after every event.
    pub check: bool,
    /// Among them, that every caught-up node routes to exactly the live leases: this
    /// one costs a walk of the node's routes, so a run of thousands of nodes checks it
    /// at its `converged` expectations instead.
    pub check_routes: bool,
    /// Containers are smoltcp interfaces (true) or light echo responders.
    pub full_containers: bool,
}

/// Why a run stopped early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// When.
    pub at: SimTime,
    /// What went wrong.
    pub message: String,
}

impl Failure {
    /// `at 12.345s: what went wrong`, the form event files record.
    pub fn describe(&self) -> String {
        format!("at {}: {}", self.at.to_string().trim(), self.message)
    }
}

/// Counters of a run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    /// Events processed.
    pub events: u64,
    /// Datagrams sent on the underlay.
    pub datagrams: u64,
    /// Datagrams delivered to a node's backend (duplicates counted).
    pub delivered: u64,
    /// Datagrams the underlay dropped.
    pub dropped: u64,
    /// Store operations performed.
    pub store_ops: u64,
}

/// Something due at a virtual time.
///
/// Kept small (48 bytes): every event is moved into the queue's slab and out of it, and
/// a datagram or a timer (most events) carries little; the rare store operations and
/// results, and a watch batch's error, wait behind a box.
#[derive(Debug)]
pub(crate) enum Ev {
    Custom(u64),
    StoreExec {
        host: usize,
        inc: u32,
        id: OpId,
        op: Box<StoreOp>,
    },
    StoreResult {
        host: usize,
        inc: u32,
        id: OpId,
        result: Box<Result<StoreOutput, StoreError>>,
    },
    WatchOpen {
        host: usize,
        inc: u32,
        id: OpId,
        from: Revision,
    },
    WatchDeliver {
        host: usize,
        inc: u32,
        id: OpId,
        batch: Result<std::sync::Arc<WatchBatch>, Box<StoreError>>,
    },
    WatchFlush,
    StoreExpiry,
    StoreRecover,
    NodeTimeout {
        host: usize,
        inc: u32,
    },
    ContainerWake {
        host: usize,
        inc: u32,
    },
    Datagram {
        from: Ipv4Addr,
        to: Ipv4Addr,
        payload: Vec<u8>,
    },
    PingAttempt(usize),
    PingDeadline(usize),
    TransferDeadline(usize),
}

const _: () = assert!(std::mem::size_of::<Ev>() <= 48);

/// The shared lease history of a world whose nodes report no route changes; `None`
/// when they do (their traces then come from each node's own decoding, as in the
/// daemon) or when the network runs no node.
fn lease_log(cfg: &WorldConfig) -> Option<LeaseLog> {
    if cfg.trace_routes {
        return None;
    }
    let ip = std::net::Ipv4Addr::UNSPECIFIED;
    let config = NodeConfig::for_network(
        DEFAULT_PREFIX,
        &cfg.network,
        ip,
        Some(std::net::Ipv6Addr::UNSPECIFIED),
    )
    .ok()?;
    Some(LeaseLog::new(
        config.lease_table(),
        0,
        weft_core::store::DEFAULT_HISTORY_LIMIT,
    ))
}

/// See the module docs.
#[derive(Debug)]
pub struct World {
    /// The current virtual time.
    pub now: SimTime,
    pub(crate) queue: EventQueue<Ev>,
    /// The store every node talks to: the core's model, its time the virtual clock.
    pub store: StoreModel,
    /// The store's leases decoded once for every node (when nodes report no route
    /// changes): their listings and watch batches share its tables.
    pub(crate) lease_log: Option<LeaseLog>,
    /// An injected store outage is under way: every operation and watch fails.
    pub store_down: bool,
    pub(crate) subnets_prefix: String,
    /// The hosts, in the order they were added.
    pub hosts: Vec<Host>,
    pub(crate) by_name: BTreeMap<String, usize>,
    /// Looked up for every datagram, never iterated.
    pub(crate) by_ip: KeyMap<Ipv4Addr, usize>,
    /// The underlay's links and partitions.
    pub underlay: Underlay,
    pub(crate) cfg: WorldConfig,
    pub(crate) expiry_at: Option<SimTime>,
    pub(crate) flush_pending: bool,
    /// The store revision the watches were last woken for.
    pub(crate) flushed_revision: Revision,
    /// The store's live leases as the invariant checker follows them.
    /// By the lease's [`weft_core::lease::LeaseKey::primary`] subnet (its IPv4 one; an IPv6-only lease's
    /// IPv6 one).
    pub(crate) live: BTreeMap<IpNet, check::LiveLease>,
    /// The IPv6 subnets of those leases, to check them for overlaps too.
    pub(crate) live6: BTreeMap<ipnet::Ipv6Net, IpNet>,
    pub(crate) live_next: Revision,
    /// The store revision of the last change to the live leases' routes.
    pub(crate) routes_revision: Revision,
    /// Bumped whenever `live` or `live6` may have changed.
    pub(crate) live_version: u64,
    /// [`World::live_routes`] as of `live_version`: checking a node after every event
    /// it hears compares it against the same routes many times over.
    pub(crate) live_routes_cache: Option<(u64, Vec<check::LiveRoute>)>,
    /// Subnets held by running nodes.
    pub(crate) held: BTreeMap<IpNet, usize>,
    /// Pings started so far.
    pub pings: Vec<Ping>,
    /// Transfers started so far.
    pub transfers: Vec<Transfer>,
    /// The failure that stopped the run, if any.
    pub failure: Option<Failure>,
    /// Counters.
    pub stats: Stats,
    /// The decisions taken, when recording.
    pub decisions: Vec<Decision>,
    trace: String,
    pub(crate) dirty: Vec<usize>,
    same_instant: u64,
    pub(crate) guests_dirty: Vec<usize>,
    /// Hosts whose node was fed something by the current event.
    pub(crate) touched: Vec<usize>,
    /// What containers sent and reported during one poll, kept for the next.
    pub(crate) scratch_packets: Vec<Vec<u8>>,
    pub(crate) scratch_app: Vec<crate::container::AppEvent>,
    /// An empty list of hosts with room, swapped in for `dirty` and `guests_dirty`.
    spare: Vec<usize>,
    /// Every network config in effect so far, the first the scenario's, the last the
    /// current one (`cfg.network`): a host runs with the one it started with.
    pub(crate) networks: Vec<NetworkConfig>,
    /// The network config was deleted from the store: hosts started now wait for it.
    pub(crate) config_deleted: bool,
    /// Hosts whose start waits for the network config to be written.
    pub(crate) waiting_for_config: Vec<usize>,
    /// The last time a store outage began or ended, and whether one is under way as
    /// of the last event: see [`Host::store_trouble_at`].
    pub(crate) outage_changed_at: (SimTime, bool),
}

impl World {
    /// An empty world: the store holds nothing, no host exists yet.
    pub fn new(cfg: WorldConfig) -> Self {
        let seed = match &cfg.decisions {
            Decisions::Seeded(s) => *s,
            Decisions::Replay(_) => 0,
        };
        World {
            now: SimTime::ZERO,
            queue: EventQueue::default(),
            store: StoreModel::new(SimTime::ZERO.to_timestamp(0)),
            lease_log: lease_log(&cfg),
            networks: vec![cfg.network.clone()],
            config_deleted: false,
            waiting_for_config: Vec::new(),
            outage_changed_at: (SimTime::ZERO, false),
            store_down: false,
            subnets_prefix: subnets_prefix(DEFAULT_PREFIX),
            hosts: Vec::new(),
            by_name: BTreeMap::new(),
            by_ip: KeyMap::default(),
            underlay: Underlay::new(rng::derive(seed, "underlay", 0), cfg.faults.clone()),
            cfg,
            expiry_at: None,
            flush_pending: false,
            flushed_revision: 0,
            live: BTreeMap::new(),
            live6: BTreeMap::new(),
            live_next: 1,
            routes_revision: 0,
            live_version: 0,
            live_routes_cache: None,
            held: BTreeMap::new(),
            pings: Vec::new(),
            transfers: Vec::new(),
            failure: None,
            stats: Stats::default(),
            decisions: Vec::new(),
            trace: String::new(),
            dirty: Vec::new(),
            same_instant: 0,
            guests_dirty: Vec::new(),
            touched: Vec::new(),
            scratch_packets: Vec::new(),
            scratch_app: Vec::new(),
            spare: Vec::new(),
        }
    }

    /// The network config.
    pub fn network(&self) -> &NetworkConfig {
        &self.cfg.network
    }

    /// The trace so far.
    pub fn trace(&self) -> &str {
        &self.trace
    }

    /// Appends a line to the trace, stamped with virtual time.
    pub fn log(&mut self, who: &str, what: std::fmt::Arguments<'_>) {
        if self.cfg.trace {
            let _ = writeln!(self.trace, "{} {:<6} {}", self.now, who, what);
        }
    }

    /// Records a step for the event file and the trace.
    pub fn note_step(&mut self, text: String) {
        self.log("step", format_args!("{text}"));
        if self.cfg.record {
            self.decisions.push(Decision::Step { at: self.now, text });
        }
    }

    /// Stops the run: the first failure wins.
    pub fn fail(&mut self, message: String) {
        if self.failure.is_none() {
            self.log("FAIL", format_args!("{message}"));
            self.failure = Some(Failure {
                at: self.now,
                message,
            });
        }
    }

    pub(crate) fn schedule(&mut self, at: SimTime, ev: Ev) {
        self.queue.push(at.max(self.now), ev);
    }

    /// Schedules a driver event that [`World::run_until`] hands back.
    pub fn schedule_custom(&mut self, at: SimTime, tag: u64) {
        self.schedule(at, Ev::Custom(tag));
    }

    /// Ends a store outage at `at`.
    pub fn schedule_recover(&mut self, at: SimTime) {
        self.schedule(at, Ev::StoreRecover);
    }

    /// The seed for the `incarnation`-th start of host `index`.
    pub(crate) fn node_seed(&mut self, index: usize, incarnation: u32) -> u64 {
        let name = self.hosts[index].name.clone();
        let seed = match &self.cfg.decisions {
            Decisions::Seeded(seed) => rng::derive(
                *seed,
                "node",
                ((index as u64) << 20) | u64::from(incarnation),
            ),
            Decisions::Replay(r) => match r.node_seed(&name, incarnation) {
                Ok(s) => s,
                Err(_) if r.is_lenient() => {
                    rng::derive(0, "node", ((index as u64) << 20) | u64::from(incarnation))
                }
                Err(e) => {
                    self.fail(e);
                    0
                }
            },
        };
        if self.cfg.record {
            self.decisions.push(Decision::NodeSeed {
                at: self.now,
                node: name,
                incarnation,
                seed,
            });
        }
        seed
    }

    /// Sends a datagram on the underlay: decides its fate and schedules its arrival.
    pub(crate) fn send_datagram(&mut self, from: Ipv4Addr, to: Ipv4Addr, mut payload: Vec<u8>) {
        self.stats.datagrams += 1;
        let n = self.stats.datagrams;
        let info = PacketInfo {
            from,
            to,
            len: payload.len(),
        };
        let fate = match &self.cfg.decisions {
            Decisions::Seeded(_) => self.underlay.decide(&info),
            Decisions::Replay(r) => match r.packet(n, from, to) {
                Ok(f) => f,
                Err(_) if r.is_lenient() => r.plain_delivery(),
                Err(e) => {
                    self.fail(e);
                    return;
                }
            },
        };
        if self.cfg.record {
            self.decisions.push(Decision::Packet {
                at: self.now,
                n,
                from,
                to,
                fate,
            });
        }
        match fate {
            Fate::Drop(_) => self.stats.dropped += 1,
            Fate::Deliver {
                delay,
                duplicate,
                corrupt,
            } => {
                if let Some((index, mask)) = corrupt {
                    if let Some(b) = payload.get_mut(index as usize) {
                        *b ^= mask;
                    }
                }
                if let Some(d) = duplicate {
                    let copy = payload.clone();
                    self.schedule(
                        self.now + d,
                        Ev::Datagram {
                            from,
                            to,
                            payload: copy,
                        },
                    );
                }
                self.schedule(self.now + delay, Ev::Datagram { from, to, payload });
            }
        }
    }

    /// Processes events up to and including `until`, or until a failure. Returns the tag
    /// of a custom event when one comes due (time stands at it), `None` otherwise.
    pub fn run_until(&mut self, until: SimTime) -> Option<u64> {
        // What the driver did since the last call (start a host, a ping...).
        self.after_event();
        while self.failure.is_none() {
            if self.queue.peek_time() == Some(self.now) {
                self.same_instant += 1;
                if self.same_instant > LIVELOCK_EVENTS {
                    self.fail(format!(
                        "livelock: more than {LIVELOCK_EVENTS} events at one instant"
                    ));
                    break;
                }
            } else {
                self.same_instant = 0;
            }
            match self.queue.peek_time() {
                Some(t) if t <= until => {}
                _ => break,
            }
            let Some((at, ev)) = self.queue.pop() else {
                break;
            };
            self.now = at;
            self.stats.events += 1;
            self.store.advance_to(at.to_timestamp(0));
            if let Ev::Custom(tag) = ev {
                return Some(tag);
            }
            self.handle(ev);
            self.after_event();
        }
        if self.failure.is_none() {
            self.now = self.now.max(until);
        }
        None
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Custom(_) => {}
            Ev::StoreExec { host, inc, id, op } => self.store_exec(host, inc, id, *op),
            Ev::StoreResult {
                host,
                inc,
                id,
                result,
            } => self.store_result(host, inc, id, *result),
            Ev::WatchOpen {
                host,
                inc,
                id,
                from,
            } => self.watch_open(host, inc, id, from),
            Ev::WatchDeliver {
                host,
                inc,
                id,
                batch,
            } => self.watch_deliver(host, inc, id, batch.map_err(|e| *e)),
            Ev::WatchFlush => self.watch_flush(),
            Ev::StoreExpiry => {
                self.expiry_at = None;
            }
            Ev::StoreRecover => {
                self.store_down = false;
                self.note_step("store recovers".into());
            }
            Ev::NodeTimeout { host, inc } => self.node_timeout(host, inc),
            Ev::ContainerWake { host, inc } => self.container_wake(host, inc),
            Ev::Datagram { from, to, payload } => self.datagram(from, to, payload),
            Ev::PingAttempt(i) => self.ping_attempt(i),
            Ev::PingDeadline(i) => self.ping_deadline(i),
            Ev::TransferDeadline(i) => self.transfer_deadline(i),
        }
    }

    /// After every event: keep the store's expiry and watch machinery scheduled, poll
    /// what the event touched, check the invariants.
    fn after_event(&mut self) {
        if self.outage_changed_at.1 != self.store_down {
            self.outage_changed_at = (self.now, self.store_down);
        }
        self.store_housekeeping();
        // In the order the hosts were touched, so that traces read naturally. The lists
        // are swapped with spares rather than taken, so that an event allocates nothing.
        while !self.dirty.is_empty() || !self.guests_dirty.is_empty() {
            let mut dirty = std::mem::replace(&mut self.dirty, std::mem::take(&mut self.spare));
            for &h in &dirty {
                if self.cfg.check && !self.touched.contains(&h) {
                    self.touched.push(h);
                }
                self.sync_host(h);
            }
            dirty.clear();
            self.spare = dirty;
            let mut guests =
                std::mem::replace(&mut self.guests_dirty, std::mem::take(&mut self.spare));
            for &h in &guests {
                self.poll_guests(h);
            }
            guests.clear();
            self.spare = guests;
        }
        if self.cfg.check {
            self.check_invariants();
        }
    }
}
