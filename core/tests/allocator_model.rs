//! The allocator against a reference model: random sequences of joins, restarts, leaves,
//! store outages (failed renewals), clock jumps and concurrent acquisitions, over the
//! real memory store, with the invariants checked after every step.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use proptest::prelude::*;
use support::{ip, space, Cluster};
use weft_core::lease::LeaseKey;

const TTL: Duration = Duration::from_secs(300);
const MARGIN: Duration = Duration::from_secs(60);
/// Longer than the longest retry backoff (30 s + 20 % jitter).
const SETTLED: Duration = Duration::from_secs(40);
const IPS: u8 = 10;

#[derive(Debug, Clone)]
enum Step {
    /// Start the node with this public IP (if not running).
    Join(u8),
    /// Start several nodes at once: their acquisitions interleave.
    JoinMany(Vec<u8>),
    /// Stop the node and start it again at once (crash + restart).
    Restart(u8),
    /// Stop the node, keeping its lease in the store to run out.
    Leave(u8),
    /// Let time pass; long ones are clock jumps past every TTL.
    Advance(u64),
    /// The store is unreachable for this long: renewals fail.
    Outage(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (1..=IPS).prop_map(Step::Join),
        2 => prop::collection::vec(1..=IPS, 2..6).prop_map(Step::JoinMany),
        2 => (1..=IPS).prop_map(Step::Restart),
        2 => (1..=IPS).prop_map(Step::Leave),
        3 => prop_oneof![1..120u64, 120..1000u64].prop_map(Step::Advance),
        1 => (1..700u64).prop_map(Step::Outage),
    ]
}

/// What the model expects that the real thing must agree with.
#[derive(Debug, Default)]
struct Model {
    /// The subnet each running node held before its last restart.
    expect_same: BTreeMap<Ipv4Addr, LeaseKey>,
}

fn check(c: &Cluster, model: &Model) -> Result<(), TestCaseError> {
    let leases = c.leases();
    // No two live leases overlap; every lease is in the range, on a boundary.
    let mut seen = BTreeSet::new();
    for lease in &leases {
        prop_assert!(
            c.space.contains(&lease.key.ipv4_net()),
            "lease {} outside {:?}",
            lease.key,
            c.space
        );
        prop_assert!(seen.insert(lease.key.ipv4), "two leases on {}", lease.key);
    }
    prop_assert!(leases.len() as u128 <= c.space.len());
    // A node that believes it holds a lease holds it in the store, under its own IP,
    // and no two nodes believe they hold the same subnet.
    let mut believed = BTreeSet::new();
    for (addr, n) in &c.nodes {
        if let Some(held) = n.node.lease() {
            prop_assert!(believed.insert(held.key), "two nodes hold {}", held.key);
            if !c.is_unavailable() {
                let stored = leases.iter().find(|l| l.key == held.key);
                prop_assert!(
                    stored.is_some(),
                    "{addr} holds {} missing from the store",
                    held.key
                );
                prop_assert_eq!(stored.unwrap().attrs.public_ip, *addr);
            }
        }
    }
    // A restarted node got its subnet back.
    for (addr, key) in &model.expect_same {
        if let Some(held) = c.held(*addr) {
            prop_assert_eq!(held, *key, "{} restarted into another subnet", addr);
        }
    }
    Ok(())
}

/// Once things have settled with the store up: every running node holds a lease, unless
/// the range is full.
fn check_liveness(c: &Cluster) -> Result<(), TestCaseError> {
    let leases = c.leases();
    let full = leases.len() as u128 >= c.space.len();
    for (addr, n) in &c.nodes {
        if n.node.lease().is_none() && !n.node.is_stopped() {
            prop_assert!(
                full,
                "{addr} holds nothing though {} of {} are taken",
                leases.len(),
                c.space.len()
            );
        }
    }
    Ok(())
}

fn run(seed: u64, steps: Vec<Step>) -> Result<(), TestCaseError> {
    // 8 subnets, the first skipped: 7 allocatable for 10 public IPs, so exhaustion
    // and contention are common.
    let mut c = Cluster::new(space("10.5.0.0/25", 28), TTL, MARGIN, seed);
    let mut model = Model::default();
    for step in steps {
        match &step {
            Step::Join(i) => {
                let addr = ip(*i);
                // Back after its lease ran out: the subnet file's subnet, if still free.
                let leases = c.leases();
                let own = leases.iter().any(|l| l.attrs.public_ip == addr);
                if let Some(prev) = c.subnet_files.get(&addr).copied() {
                    let free = !leases.iter().any(|l| l.key.ipv4 == prev.ipv4);
                    if !c.nodes.contains_key(&addr) && !own && free {
                        model.expect_same.insert(addr, prev);
                    }
                }
                c.start(addr);
            }
            Step::JoinMany(is) => is.iter().for_each(|i| c.start(ip(*i))),
            Step::Restart(i) => {
                let addr = ip(*i);
                model.expect_same.remove(&addr);
                if let Some(held) = c.held(addr) {
                    model.expect_same.insert(addr, held);
                }
                c.stop(addr);
                c.start(addr);
            }
            Step::Leave(i) => {
                model.expect_same.remove(&ip(*i));
                c.stop(ip(*i));
            }
            Step::Advance(s) => c.advance(Duration::from_secs(*s)),
            Step::Outage(s) => {
                c.set_unavailable(true);
                c.advance(Duration::from_secs(*s));
                c.set_unavailable(false);
                // What a node held before the outage may be gone now.
                model.expect_same.clear();
            }
        }
        c.settle();
        check(&c, &model)?;
        if matches!(step, Step::Advance(s) if Duration::from_secs(s) >= SETTLED) {
            check_liveness(&c)?;
        }
    }
    // Finally, with the store up and time to settle, every node is served.
    c.advance(SETTLED);
    check(&c, &model)?;
    check_liveness(&c)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 10_000,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("regressions"),
        )),
        ..ProptestConfig::default()
    })]

    #[test]
    fn allocator_keeps_its_invariants(seed in any::<u64>(), steps in prop::collection::vec(step(), 1..25)) {
        run(seed, steps)?;
    }
}
