//! The allocator against an independent reference model, firezone-style: random
//! sequences of [`Transition`]s (joins, restarts, leaves, operator deletes and
//! reservations, lost store answers, compaction, clock skew, time passing, outages) are
//! applied to a reference state and to real nodes over the store model
//! (`support::Cluster`), and the invariants are checked after every store operation,
//! watch delivery and expiry, not only after every step.
//!
//! The reference is its own simple code: the range is integer arithmetic on the
//! addresses written out below, the store's leases are read from their keys and JSON
//! values by hand, and what a node should hold is decided from a map of who holds what,
//! never by calling the allocator, `SubnetSpace` or the lease codecs.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use proptest::prelude::*;
use support::{ip, Cluster, PREFIX};
use weft_core::store::{subnets_prefix, Entry, Revision};
use weft_core::subnet::SubnetSpace;

const TTL: Duration = Duration::from_secs(300);
const MARGIN: Duration = Duration::from_secs(60);
/// Longer than the longest retry backoff (30 s + 20 % jitter).
const SETTLED: Duration = Duration::from_secs(40);
const IPS: u8 = 10;

// The range, as integers: 10.5.0.0/24 cut into /28s, SubnetMin 10.5.0.32 and SubnetMax
// 10.5.0.144 inside it: 8 subnets for 10 public IPs, so that exhaustion, contention and
// the edges of the range come up all the time.
const NETWORK: &str = "10.5.0.0/24";
const SUBNET_LEN: u8 = 28;
const SUBNET_SIZE: u32 = 16;
const MIN: u32 = 0x0a05_0020;
const MAX: u32 = 0x0a05_0090;
const RANGE: u32 = (MAX - MIN) / SUBNET_SIZE + 1;

#[derive(Debug, Clone)]
enum Transition {
    /// Start the node with this public IP (if not running).
    Join(u8),
    /// Start several nodes at once: their acquisitions interleave.
    JoinMany(Vec<u8>),
    /// Stop the node and start it again at once (crash + restart).
    Restart(u8),
    /// Stop the node, keeping its lease in the store to run out.
    Leave(u8),
    /// The operator deletes whatever lease this public IP has in the store.
    OperatorDelete(u8),
    /// The operator reserves the `slot`-th subnet of the range for public IP `ip`
    /// (when that subnet is free and that IP holds nothing and runs no node).
    Reserve { slot: u8, ip: u8 },
    /// The next store answer to this node is lost (the operation takes effect).
    LoseAnswer(u8),
    /// The store drops its whole history: every watch behind re-lists.
    Compact,
    /// This node's clock jumps to this many seconds away from the store's.
    ClockSkew { node: u8, offset_s: i8 },
    /// Let time pass; long ones are clock jumps past every TTL.
    Advance(u64),
    /// The store is unreachable for this long: renewals fail.
    Outage(u64),
}

fn transition() -> impl Strategy<Value = Transition> {
    prop_oneof![
        4 => (1..=IPS).prop_map(Transition::Join),
        2 => prop::collection::vec(1..=IPS, 2..6).prop_map(Transition::JoinMany),
        2 => (1..=IPS).prop_map(Transition::Restart),
        2 => (1..=IPS).prop_map(Transition::Leave),
        1 => (1..=IPS).prop_map(Transition::OperatorDelete),
        1 => (0..RANGE as u8, 1..=IPS + 2).prop_map(|(slot, ip)| Transition::Reserve { slot, ip }),
        2 => (1..=IPS).prop_map(Transition::LoseAnswer),
        1 => Just(Transition::Compact),
        1 => (1..=IPS, -20i8..=20).prop_map(|(node, offset_s)| Transition::ClockSkew { node, offset_s }),
        3 => prop_oneof![1..120u64, 120..1000u64].prop_map(Transition::Advance),
        1 => (1..700u64).prop_map(Transition::Outage),
    ]
}

/// One lease as the reference reads it from the store: its subnet as integers, its
/// holder, its incarnation.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StoredLease {
    start: u32,
    len: u8,
    holder: Ipv4Addr,
    create_revision: Revision,
    reservation: bool,
    expires_at: Option<weft_core::Timestamp>,
}

/// Reads `<prefix>/subnets/10.5.0.32-28` and `{"PublicIP":"192.0.2.1",...}` by hand.
fn read_lease(e: &Entry) -> Result<StoredLease, String> {
    let prefix = subnets_prefix(PREFIX);
    let name = e
        .key
        .strip_prefix(&prefix)
        .ok_or_else(|| format!("{} is not under {prefix}", e.key))?;
    let (addr, len) = name
        .split_once('-')
        .ok_or_else(|| format!("{} has no length", e.key))?;
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("bad address in {}", e.key))?;
    let len: u8 = len
        .parse()
        .map_err(|_| format!("bad length in {}", e.key))?;
    let value: serde_json::Value =
        serde_json::from_slice(&e.value).map_err(|err| format!("{}: {err}", e.key))?;
    let holder = value["PublicIP"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{} has no PublicIP", e.key))?;
    Ok(StoredLease {
        start: u32::from(addr),
        len,
        holder,
        create_revision: e.create_revision,
        reservation: e.expires_at.is_none(),
        expires_at: e.expires_at,
    })
}

fn stored(c: &Cluster) -> Result<Vec<StoredLease>, String> {
    let listing = c.store.list(&subnets_prefix(PREFIX));
    listing.entries.iter().map(read_lease).collect()
}

fn key_of(start: u32) -> String {
    format!(
        "{}{}-{SUBNET_LEN}",
        subnets_prefix(PREFIX),
        Ipv4Addr::from(start)
    )
}

fn slot_start(slot: u8) -> u32 {
    MIN + u32::from(slot) * SUBNET_SIZE
}

/// The invariants, after every store operation: no two live leases overlap; every lease
/// lies in [SubnetMin, SubnetMax] on a SubnetLen boundary; at most one live lease per
/// public IP; a node that holds a lease holds exactly what the store says, unless a
/// change to its key is on its way to it (or it is cut off from the store).
fn invariants(c: &Cluster) -> Result<(), String> {
    let leases = stored(c)?;
    let mut per_ip = BTreeMap::<Ipv4Addr, u32>::new();
    for l in &leases {
        let shown = format!("{}/{}", Ipv4Addr::from(l.start), l.len);
        if l.len != SUBNET_LEN || l.start % SUBNET_SIZE != 0 || l.start < MIN || l.start > MAX {
            return Err(format!(
                "lease {shown} is not a /{SUBNET_LEN} in [{}, {}]",
                Ipv4Addr::from(MIN),
                Ipv4Addr::from(MAX)
            ));
        }
        let n = per_ip.entry(l.holder).or_default();
        *n += 1;
        if *n > 1 {
            return Err(format!("{} holds {n} live leases", l.holder));
        }
    }
    let mut spans: Vec<(u64, u64)> = leases
        .iter()
        .map(|l| {
            let start = u64::from(l.start);
            (start, start + (1u64 << (32 - u32::from(l.len))))
        })
        .collect();
    spans.sort_unstable();
    for w in spans.windows(2) {
        if w[0].1 > w[1].0 {
            return Err(format!(
                "leases at {} and {} overlap",
                Ipv4Addr::from(w[0].0 as u32),
                Ipv4Addr::from(w[1].0 as u32)
            ));
        }
    }
    if c.is_unavailable() {
        return Ok(());
    }
    let prefix = subnets_prefix(PREFIX);
    for (addr, n) in &c.nodes {
        let Some(held) = n.node.lease() else { continue };
        let Some(from) = n.watch_from() else {
            continue; // its watch is down: it learns on the next listing
        };
        let key = format!("{prefix}{}", held.key);
        let told = c
            .store
            .events_since(&prefix, from)
            .map_or(true, |events| events.iter().any(|e| e.key() == key));
        let found = c
            .store
            .get(&key)
            .ok()
            .flatten()
            .map(read_lease)
            .transpose()?;
        match found {
            Some(l) if l.holder == *addr && l.create_revision == held.create_revision => {}
            _ if told => {}
            other => {
                return Err(format!(
                    "{addr} holds {key} (created at {}), the store has {other:?}",
                    held.create_revision
                ))
            }
        }
    }
    Ok(())
}

/// What the reference expects, decided by its own rules.
#[derive(Debug, Default)]
struct Reference {
    /// The reservations the operator wrote: subnet start -> public IP.
    reserved: BTreeMap<u32, Ipv4Addr>,
    /// The subnet a running node must hold once things have settled, where the rules
    /// say exactly which and no other node can take it first: its reservation, or its
    /// own lease while it stays live (reuse by public IP).
    expect: BTreeMap<Ipv4Addr, u32>,
    /// The subnet a node that joined alone must have taken by the end of its step, if it
    /// took one then: its subnet file's subnet, free when it joined. (Later, anyone may
    /// have taken it first.)
    at_join: BTreeMap<Ipv4Addr, u32>,
    /// The lease incarnation each running node held at the end of the last step; it
    /// must keep it while it can reach the store (no loss and re-acquire).
    steady: BTreeMap<Ipv4Addr, (u32, Revision)>,
    /// Running nodes whose lease the operator deleted: they lose it (and give up) when
    /// they learn, which may be a while if their watch is down.
    deleted: BTreeSet<Ipv4Addr>,
    /// The store's revision when the last outage ended: a lease last written before it
    /// may still lapse, because a node backs off its retries for up to 36 s whether or
    /// not its lease runs out meanwhile (a known limit of the retry policy, not checked
    /// here); once written after it, a lease must stay.
    outage_ended_at: Revision,
    /// Answers lost (and outages ended) since the last settled check: each may cost a
    /// node one more retry backoff before it is served.
    lost: u32,
}

impl Reference {
    /// Forgets what `addr` was expected to keep (an operator delete, a leave, a jump).
    fn forget(&mut self, addr: Ipv4Addr) {
        self.expect.remove(&addr);
        self.steady.remove(&addr);
    }

    /// The subnet a node joining with `addr` must end up with, if the rules say one:
    /// `alone` when no other node acquires in the same step.
    fn on_join(&mut self, c: &Cluster, addr: Ipv4Addr, alone: bool) -> Result<(), String> {
        if c.nodes.contains_key(&addr) {
            return Ok(());
        }
        let leases = stored(c)?;
        let reserved = self.reserved.iter().find(|(_, ip)| **ip == addr);
        let own = leases.iter().find(|l| l.holder == addr);
        // Live long enough that retries (after lost answers) still find it.
        let lasting = |l: &StoredLease| {
            l.expires_at
                .is_none_or(|at| at > c.now + SETTLED * (3 + self.lost))
        };
        if let Some((start, _)) = reserved {
            self.expect.insert(addr, *start);
        } else if let Some(l) = own {
            if lasting(l) {
                self.expect.insert(addr, l.start);
            }
        } else if let Some(prev) = c.subnet_files.get(&addr) {
            let start = u32::from(prev.ipv4.expect("IPv4 lease").network());
            let free = !leases.iter().any(|l| l.start == start);
            if alone && free && !c.is_unavailable() {
                self.at_join.insert(addr, start);
            }
        }
        Ok(())
    }
}

fn apply(c: &mut Cluster, r: &mut Reference, t: &Transition) -> Result<(), String> {
    match t {
        Transition::Join(i) => {
            r.on_join(c, ip(*i), true)?;
            c.start(ip(*i));
        }
        Transition::JoinMany(is) => {
            for i in is {
                r.on_join(c, ip(*i), false)?;
                c.start(ip(*i));
            }
        }
        Transition::Restart(i) => {
            let addr = ip(*i);
            let running = c.nodes.contains_key(&addr);
            c.stop(addr);
            // Its lease is still live: it gets it back. (Cut off, the lease may run out
            // in the meantime, and then anything goes.)
            // A new incarnation of the node: it holds nothing until it has re-acquired.
            r.steady.remove(&addr);
            r.deleted.remove(&addr);
            if running && !c.is_unavailable() {
                r.on_join(c, addr, true)?;
            }
            c.start(addr);
        }
        Transition::Leave(i) => {
            r.forget(ip(*i));
            r.deleted.remove(&ip(*i));
            c.stop(ip(*i));
        }
        Transition::OperatorDelete(i) => {
            let addr = ip(*i);
            let leases = stored(c)?;
            if let Some(l) = leases.iter().find(|l| l.holder == addr) {
                c.store.delete(&key_of(l.start)).unwrap();
                r.reserved.remove(&l.start);
                r.forget(addr);
                r.deleted.insert(addr);
                c.check_op("an operator delete");
            }
        }
        Transition::Reserve { slot, ip: i } => {
            let (addr, start) = (ip(*i), slot_start(*slot));
            let leases = stored(c)?;
            let free = !leases.iter().any(|l| l.start == start);
            let idle = !c.nodes.contains_key(&addr) && !leases.iter().any(|l| l.holder == addr);
            if free && idle {
                let value = format!(r#"{{"PublicIP":"{addr}","BackendType":"alloc"}}"#);
                c.store.put(&key_of(start), value.as_bytes()).unwrap();
                r.reserved.insert(start, addr);
                c.check_op("an operator reservation");
            }
        }
        Transition::LoseAnswer(i) => {
            c.lose_next_answer.insert(ip(*i));
            r.lost += 1;
        }
        Transition::Compact => {
            let rev = c.store.revision() + 1;
            c.store.compact(rev).unwrap();
            c.check_op("a compaction");
        }
        Transition::ClockSkew { node, offset_s } => {
            let addr = ip(*node);
            c.offsets.insert(addr, i64::from(*offset_s) * 1000);
            r.steady.remove(&addr);
        }
        Transition::Advance(s) => c.advance(Duration::from_secs(*s)),
        Transition::Outage(s) => {
            c.set_unavailable(true);
            c.advance(Duration::from_secs(*s));
            c.set_unavailable(false);
            c.check_op("the end of an outage");
            // Only reservations are sure to outlive an outage.
            r.steady.clear();
            r.outage_ended_at = c.store.revision();
            // The retry pending when it ends may be a full backoff away, and what it
            // finds (a lapsed lease) costs another round: one more backoff to settle.
            r.lost += 1;
            let reserved: BTreeMap<_, _> = r.reserved.iter().map(|(s, ip)| (*ip, *s)).collect();
            r.expect.retain(|ip, s| reserved.get(ip) == Some(s));
        }
    }
    c.settle();
    Ok(())
}

/// After every step: no lease was lost and re-acquired while its node could reach the
/// store, and the reservations are all there, as written.
fn check_step(c: &Cluster, r: &mut Reference) -> Result<(), String> {
    for (addr, want) in std::mem::take(&mut r.at_join) {
        let held = c
            .held(addr)
            .map(|k| u32::from(k.ipv4.expect("IPv4 lease").network()));
        if held.is_some_and(|h| h != want) {
            return Err(format!(
                "{addr} joined alone and took {:?}, not its subnet file's free {}",
                held.map(Ipv4Addr::from),
                Ipv4Addr::from(want)
            ));
        }
    }
    let leases = stored(c)?;
    for (start, addr) in &r.reserved {
        let l = leases.iter().find(|l| l.start == *start);
        if !l.is_some_and(|l| l.holder == *addr && l.reservation) {
            return Err(format!(
                "the reservation of {} for {addr} is gone or changed: {l:?}",
                Ipv4Addr::from(*start)
            ));
        }
    }
    for (addr, n) in &c.nodes {
        if r.deleted.contains(addr) {
            continue;
        }
        let lease = n.node.lease();
        let recovered = lease.is_some_and(|l| l.mod_revision > r.outage_ended_at);
        let held = lease.map(|l| {
            (
                u32::from(l.key.ipv4.expect("IPv4 lease").network()),
                l.create_revision,
            )
        });
        if let Some(before) = r.steady.get(addr) {
            if held != Some(*before) {
                return Err(format!(
                    "{addr} lost {} (created at {}) while it could reach the store: now {held:?}",
                    Ipv4Addr::from(before.0),
                    before.1
                ));
            }
        }
        match held {
            Some(h) if recovered => {
                r.steady.insert(*addr, h);
            }
            _ => {
                r.steady.remove(addr);
            }
        }
    }
    r.steady.retain(|addr, _| c.nodes.contains_key(addr));
    Ok(())
}

/// Once things have settled with the store up: every running node holds what the
/// reference expects, and a lease, unless the range is full.
fn check_settled(c: &Cluster, r: &Reference) -> Result<(), String> {
    let leases = stored(c)?;
    for (addr, n) in &c.nodes {
        let held = n
            .node
            .lease()
            .map(|l| u32::from(l.key.ipv4.expect("IPv4 lease").network()));
        if let Some(want) = r.expect.get(addr) {
            if held != Some(*want) {
                return Err(format!(
                    "{addr} holds {:?}, the reference expects {}",
                    held.map(Ipv4Addr::from),
                    Ipv4Addr::from(*want)
                ));
            }
        }
        if held.is_none() && !n.node.is_stopped() && (leases.len() as u32) < RANGE {
            return Err(format!(
                "{addr} holds nothing though {} of {RANGE} subnets are taken",
                leases.len()
            ));
        }
    }
    Ok(())
}

fn run(seed: u64, transitions: Vec<Transition>) -> Result<(), TestCaseError> {
    let net: ipnet::IpNet = NETWORK.parse().unwrap();
    let space = SubnetSpace::new(
        net,
        SUBNET_LEN,
        Ipv4Addr::from(MIN).into(),
        Ipv4Addr::from(MAX).into(),
    )
    .unwrap();
    let mut c = Cluster::new(space, TTL, MARGIN, seed);
    c.after_each_op = Some(invariants);
    let mut r = Reference::default();
    let fail = |c: &Cluster, step: &str, e: String| {
        TestCaseError::fail(format!("{step}: {e}\nviolations: {:#?}", c.violations))
    };
    for (i, t) in transitions.iter().enumerate() {
        let step = format!("step {i} {t:?}");
        apply(&mut c, &mut r, t).map_err(|e| fail(&c, &step, e))?;
        if let Some(v) = c.violations.first() {
            return Err(fail(&c, &step, v.clone()));
        }
        check_step(&c, &mut r).map_err(|e| fail(&c, &step, e))?;
        let settled = SETTLED * (1 + r.lost);
        if matches!(t, Transition::Advance(s) if Duration::from_secs(*s) >= settled) {
            check_settled(&c, &r).map_err(|e| fail(&c, &step, e))?;
            r.lost = 0;
        }
    }
    // Finally, with the store up and time to settle, every node is served.
    c.advance(SETTLED * (1 + r.lost));
    if let Some(v) = c.violations.first() {
        return Err(fail(&c, "the end", v.clone()));
    }
    check_step(&c, &mut r).map_err(|e| fail(&c, "the end", e))?;
    check_settled(&c, &r).map_err(|e| fail(&c, "the end", e))?;
    Ok(())
}

/// The reference's own range arithmetic agrees with the numbers it is built from.
#[test]
fn the_range_is_eight_subnets_inside_the_network() {
    assert_eq!(RANGE, 8);
    assert_eq!(Ipv4Addr::from(MIN), Ipv4Addr::new(10, 5, 0, 32));
    assert_eq!(Ipv4Addr::from(MAX), Ipv4Addr::new(10, 5, 0, 144));
    let used: BTreeSet<u32> = (0..RANGE as u8).map(slot_start).collect();
    assert_eq!(used.len(), 8);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1_200,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("regressions"),
        )),
        ..ProptestConfig::default()
    })]

    #[test]
    fn allocator_keeps_its_invariants(
        seed in any::<u64>(),
        transitions in prop::collection::vec(transition(), 1..25),
    ) {
        run(seed, transitions)?;
    }
}
