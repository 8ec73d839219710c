//! The simulator's speed, in two runs (build in release mode):
//!
//! ```text
//! cargo run --release -p weft-sim --example bench
//! ```
//!
//! 1. 100 nodes for 24 simulated hours (lease TTL 1 h, renewed 15 min before expiry),
//!    every node pinging a random peer every simulated minute and every pair of nodes
//!    pinging once every simulated hour, invariants checked after every event.
//! 2. 10,000 nodes starting at the same instant: run until every one holds a lease,
//!    then check that no two leases overlap; without watches, then with them.
//! 3. `scenarios/18-mass-join-10000.toml`: 10,000 nodes with watches join over a
//!    simulated minute, then 1,000 restart; every expectation must pass.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use rand::Rng;
use weft_core::config::NetworkConfig;
use weft_sim::engine::{Decisions, Host, World, WorldConfig};
use weft_sim::rng;
use weft_sim::time::SimTime;
use weft_sim::underlay::LinkFaults;

fn world(network: &str, ttl: Duration, margin: Duration, watches: bool, seed: u64) -> World {
    World::new(WorldConfig {
        network: NetworkConfig::parse(network).expect("valid config"),
        lease_ttl: ttl,
        renew_margin: margin,
        retry_min: Duration::from_millis(100),
        retry_max: Duration::from_secs(30),
        store_latency: Duration::from_millis(2),
        watches,
        faults: LinkFaults {
            latency: Duration::from_micros(300),
            jitter: Duration::from_micros(200),
            ..LinkFaults::default()
        },
        decisions: Decisions::Seeded(seed),
        record: false,
        trace: false,
        trace_routes: false,
        check: true,
        check_routes: true,
        full_containers: false,
    })
}

fn public_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 1)) + i as u32)
}

fn mass_ping() {
    const NODES: usize = 100;
    const HOURS: u64 = 24;
    let mut w = world(
        r#"{"Network":"10.5.0.0/16","SubnetLen":24,"Backend":{"Type":"udp"}}"#,
        Duration::from_secs(3600),
        Duration::from_secs(900),
        true,
        1,
    );
    for i in 0..NODES {
        let h = w.add_host(Host::new(
            &format!("n{i}"),
            public_ip(i),
            vec!["c0".into()],
            None,
        ));
        w.start_host(h);
    }
    let mut pick = rng::stream(1, "bench-pings", 0);
    let start = Instant::now();
    let minute = Duration::from_secs(60);
    let mut pings = 0u64;
    // Custom events carry a ping as (from << 16) | to; one more tag marks each minute.
    const MINUTE_TICK: u64 = u64::MAX;
    w.schedule_custom(SimTime::ZERO, MINUTE_TICK);
    let end = SimTime::from_duration(Duration::from_secs(HOURS * 3600));
    let mut minutes = 0u64;
    // Pings go out until the end; the last replies come in just after it.
    while let Some(tag) = w.run_until(end + Duration::from_secs(5)) {
        if tag != MINUTE_TICK {
            let (from, to) = ((tag >> 16) as usize, (tag & 0xffff) as usize);
            w.start_ping((from, 0), (to, 0), Duration::from_secs(5), None);
            pings += 1;
            continue;
        }
        let base = w.now;
        if base >= end {
            continue;
        }
        // Every node pings a random peer at a random moment of this minute.
        for i in 0..NODES {
            let mut j = pick.random_range(0..NODES - 1);
            if j >= i {
                j += 1;
            }
            let at = base + Duration::from_micros(pick.random_range(0..60_000_000));
            w.schedule_custom(at, ((i as u64) << 16) | j as u64);
        }
        // Every pair once an hour, at a random moment of the hour.
        if minutes % 60 == 0 {
            for i in 0..NODES {
                for j in i + 1..NODES {
                    let at = base + Duration::from_micros(pick.random_range(0..3_600_000_000));
                    w.schedule_custom(at, ((i as u64) << 16) | j as u64);
                }
            }
        }
        minutes += 1;
        w.schedule_custom(base + minute, MINUTE_TICK);
    }
    let wall = start.elapsed();
    if let Some(f) = &w.failure {
        panic!("the run failed: {}", f.describe());
    }
    let replied = w.pings.iter().filter(|p| p.replied.is_some()).count();
    let simulated = w.now.as_duration();
    let renewals = w.stats.store_ops;
    println!("1. {NODES} nodes, {HOURS} simulated hours, {pings} pings ({replied} replied)");
    println!(
        "   wall {:.3}s: {:.0} simulated s per wall s, {:.0} datagrams per wall s ({} datagrams, {} events, {} store operations)",
        wall.as_secs_f64(),
        simulated.as_secs_f64() / wall.as_secs_f64(),
        w.stats.datagrams as f64 / wall.as_secs_f64(),
        w.stats.datagrams,
        w.stats.events,
        renewals
    );
    for p in w.pings.iter().filter(|p| p.replied.is_none()).take(5) {
        eprintln!("unreplied: {:?}", p);
    }
    for h in &w.hosts {
        if let Some(r) = h.running() {
            let drops = r.drops.snapshot();
            if drops.total() > 0 {
                eprintln!(
                    "{} drops {:?}",
                    h.name,
                    drops.iter().filter(|d| d.1 > 0).collect::<Vec<_>>()
                );
            }
        }
    }
    assert_eq!(
        replied as u64, pings,
        "every ping between running nodes is answered"
    );
}

/// `watches`: whether nodes follow the store's watch. With it, every node ends up
/// knowing every other node's lease; the simulated nodes share one lease history, so
/// this costs memory for N nodes plus the leases, not N × leases. Without it, nodes
/// learn of taken subnets by losing create races and re-listing.
fn mass_join(nodes: usize, watches: bool) {
    let mut w = world(
        r#"{"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{"Type":"udp"}}"#,
        Duration::from_secs(24 * 3600),
        Duration::from_secs(3600),
        watches,
        2,
    );
    let nodes_ = nodes;
    #[allow(non_snake_case)]
    let NODES = nodes_;
    for i in 0..NODES {
        let h = w.add_host(Host::new(
            &format!("n{i}"),
            public_ip(i),
            vec!["c0".into()],
            None,
        ));
        w.start_host(h);
    }
    let start = Instant::now();
    let mut t = SimTime::ZERO;
    let all_leased = loop {
        t = t + Duration::from_millis(2);
        w.run_until(t);
        if let Some(f) = &w.failure {
            panic!("the run failed: {}", f.describe());
        }
        let leased = w.hosts.iter().filter(|h| h.lease_key().is_some()).count();
        if leased == NODES {
            break t;
        }
        assert!(
            t < SimTime::from_duration(Duration::from_secs(600)),
            "only {leased} leased after 10 minutes"
        );
    };
    let wall = start.elapsed();
    let mut subnets: Vec<_> = w
        .hosts
        .iter()
        .filter_map(|h| h.lease_key())
        .filter_map(|k| k.ipv4)
        .collect();
    subnets.sort();
    let overlaps = subnets
        .windows(2)
        .filter(|p| p[0].contains(&p[1].network()))
        .count();
    let in_store = w
        .store
        .list(&weft_core::store::subnets_prefix(
            weft_core::store::DEFAULT_PREFIX,
        ))
        .entries
        .len();
    let with = if watches {
        "with watches"
    } else {
        "without watches"
    };
    println!("2. {NODES} nodes join at once ({with}): all leased at virtual {}, {in_store} leases in the store, {overlaps} overlaps", all_leased.to_string().trim());
    println!(
        "   wall {:.3}s ({} events, {} store operations)",
        wall.as_secs_f64(),
        w.stats.events,
        w.stats.store_ops
    );
    assert_eq!(overlaps, 0);
    assert_eq!(in_store, NODES);
}

fn scenario_18() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scenarios/18-mass-join-10000.toml"
    );
    let (scenario, source) =
        weft_sim::scenario::load(std::path::Path::new(path)).expect("scenario 18 loads");
    let start = Instant::now();
    let outcome = weft_sim::run(path, &scenario, &source, &weft_sim::RunOptions::default());
    let wall = start.elapsed();
    assert!(
        outcome.passed(),
        "scenario 18 failed: {:?}",
        outcome.failure
    );
    let end = outcome
        .trace
        .lines()
        .rev()
        .find(|l| l.contains(" events, "))
        .unwrap_or_default()
        .trim()
        .to_string();
    println!("3. scenario 18: 10,000 nodes with watches join over a minute, 1,000 restart: passed");
    println!("   wall {:.3}s ({end})", wall.as_secs_f64());
}

fn main() {
    // `bench` runs all; `bench ping`, `bench join`, `bench join-watch N`, `bench
    // scenario-18` one each.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(10_000);
    match args.first().map(String::as_str) {
        Some("ping") => mass_ping(),
        Some("join") => mass_join(10_000, false),
        Some("join-watch") => mass_join(n, true),
        Some("scenario-18") => scenario_18(),
        _ => {
            mass_ping();
            mass_join(10_000, false);
            mass_join(n, true);
            scenario_18();
        }
    }
}
