//! Running a scenario: build the world from the file, play its steps and checks at
//! their times, and report.

use std::time::Duration;

use weft_core::lease::{LeaseAttrs, LeaseKey};

use crate::engine::Host;
use crate::engine::{Decisions, Failure, Stats, World, WorldConfig};
use crate::record::{EventFile, Replay};
use crate::scenario::{Expect, PingExpect, Scenario, Step, SubnetExpect, STORE};
use crate::time::{format_duration, SimTime};
use crate::underlay::LinkFaults;

/// How to run a scenario.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The seed; the scenario's own when `None`.
    pub seed: Option<u64>,
    /// Take decisions from this event file instead of a seed.
    pub replay: Option<EventFile>,
}

/// What a run did.
#[derive(Debug)]
pub struct Outcome {
    /// The scenario's name.
    pub name: String,
    /// The seed used (0 on replay).
    pub seed: u64,
    /// The failure, if the run failed.
    pub failure: Option<Failure>,
    /// The trace.
    pub trace: String,
    /// Virtual time simulated.
    pub simulated: Duration,
    /// Counters.
    pub stats: Stats,
    /// For a failed run: everything needed to replay it.
    pub event_file: Option<EventFile>,
}

impl Outcome {
    /// Whether every check passed and no invariant broke.
    pub fn passed(&self) -> bool {
        self.failure.is_none()
    }
}

fn faults_from(base: &LinkFaults, f: &crate::scenario::FaultFields) -> LinkFaults {
    let mut l = base.clone();
    if let Some(d) = f.latency {
        l.latency = d.0;
    }
    if let Some(d) = f.jitter {
        l.jitter = d.0;
    }
    if let Some(p) = f.loss {
        l.loss = p;
    }
    if let Some(p) = f.duplicate {
        l.duplicate = p;
    }
    if let Some(p) = f.reorder {
        l.reorder = p;
    }
    if let Some(d) = f.reorder_delay {
        l.reorder_delay = d.0;
    }
    if let Some(p) = f.corrupt {
        l.corrupt = p;
    }
    if let Some(m) = f.mtu {
        l.mtu = m;
    }
    l
}

const STEP: u64 = 1 << 40;
const EXPECT: u64 = 2 << 40;

/// Runs `scenario` (whose text is `source`, found at `path`).
pub fn run(path: &str, scenario: &Scenario, source: &str, opts: &RunOptions) -> Outcome {
    let seed = opts.seed.unwrap_or(scenario.seed);
    let (decisions, seed) = match &opts.replay {
        Some(file) => (Decisions::Replay(Replay::new(file)), file.seed),
        None => (Decisions::Seeded(seed), seed),
    };
    let network = match scenario.network.network_config() {
        Ok(n) => n,
        Err(e) => {
            return Outcome {
                name: scenario.name.clone(),
                seed,
                failure: Some(Failure {
                    at: SimTime::ZERO,
                    message: e,
                }),
                trace: String::new(),
                simulated: Duration::ZERO,
                stats: Stats::default(),
                event_file: None,
            }
        }
    };
    let faults = match &scenario.underlay {
        Some(u) => faults_from(&LinkFaults::default(), u.get_ref()),
        None => LinkFaults::default(),
    };
    let mut w = World::new(WorldConfig {
        network,
        lease_ttl: scenario.network.lease_ttl.0,
        renew_margin: scenario.network.renew_margin.0,
        retry_min: scenario.network.retry_min.0,
        retry_max: scenario.network.retry_max.0,
        store_latency: scenario.store.latency.0,
        watches: true,
        faults,
        decisions,
        record: true,
        trace: true,
        trace_routes: scenario.trace_routes,
        check: true,
        full_containers: true,
    });
    if let Some(limit) = scenario.store.history_limit {
        w.store.set_history_limit(limit);
    }
    w.log(
        "sim",
        format_args!(
            "scenario {:?}, seed {}",
            scenario.name,
            if opts.replay.is_some() {
                "replayed from an event file".to_string()
            } else {
                seed.to_string()
            }
        ),
    );
    for r in &scenario.network.reservations {
        let key = format!("{}{}", w_prefix(&w), LeaseKey::v4(r.subnet));
        let attrs = LeaseAttrs::new(r.ip, w_backend(&w));
        let _ = w.store.put(&key, &attrs.encode());
        w.note_step(format!("operator reserves {} for {}", r.subnet, r.ip));
    }
    for n in &scenario.nodes {
        let n = n.get_ref();
        let h = w.add_host(Host::new(
            &n.name,
            n.ip,
            n.container_names(),
            n.previous_subnet.map(LeaseKey::v4),
        ));
        if n.start {
            w.start_host(h);
        }
    }
    for (i, s) in scenario.steps.iter().enumerate() {
        w.schedule_custom(SimTime::from_duration(s.get_ref().at()), STEP | i as u64);
    }
    for (i, e) in scenario.expects.iter().enumerate() {
        w.schedule_custom(SimTime::from_duration(e.get_ref().at()), EXPECT | i as u64);
    }
    let mut end = SimTime::from_duration(scenario.duration.get_ref().0);
    for s in &scenario.steps {
        if let Step::Ping { at, within, .. } | Step::Tcp { at, within, .. } = s.get_ref() {
            end = end.max(SimTime::from_duration(at.0 + within.0));
        }
    }
    while let Some(tag) = w.run_until(end) {
        let i = (tag % STEP) as usize;
        if tag & EXPECT == EXPECT {
            expect(&mut w, scenario.expects[i].get_ref());
        } else {
            step(&mut w, scenario.steps[i].get_ref());
        }
    }
    summary(&mut w);
    let failure = w.failure.clone();
    let event_file = failure.as_ref().map(|f| EventFile {
        scenario_path: path.to_string(),
        seed,
        failure: f.describe(),
        scenario: source.to_string(),
        decisions: std::mem::take(&mut w.decisions),
    });
    Outcome {
        name: scenario.name.clone(),
        seed,
        failure,
        trace: w.trace().to_string(),
        simulated: w.now.as_duration(),
        stats: w.stats,
        event_file,
    }
}

fn w_prefix(_w: &World) -> String {
    weft_core::store::subnets_prefix(weft_core::store::DEFAULT_PREFIX)
}

fn w_backend(w: &World) -> &'static str {
    w.network().backend.kind.as_str()
}

fn endpoint(w: &World, text: &str) -> (usize, usize) {
    let (node, container) = text.split_once('/').unwrap_or((text, ""));
    let h = w.host_index(node).unwrap_or(0);
    let c = w.hosts[h]
        .container_names
        .iter()
        .position(|c| c == container)
        .unwrap_or(0);
    (h, c)
}

fn hosts_of<'a>(w: &World, names: impl Iterator<Item = &'a String>) -> Vec<usize> {
    names.filter_map(|n| w.host_index(n)).collect()
}

fn step(w: &mut World, s: &Step) {
    let host = |w: &World, n: &str| w.host_index(n).unwrap_or(0);
    match s {
        Step::Start { node, .. } | Step::Restart { node, .. } => {
            let h = host(w, node);
            w.start_host(h);
        }
        Step::Stop { node, .. } => {
            let h = host(w, node);
            w.stop_host(h, "stops");
        }
        Step::Crash { node, .. } => {
            let h = host(w, node);
            w.stop_host(h, "crashes");
        }
        Step::Partition {
            from, to, one_way, ..
        } => {
            let (a, b) = (hosts_of(w, from.iter()), hosts_of(w, to.iter()));
            let to_store = to.iter().any(|n| n == STORE);
            let from_store = from.iter().any(|n| n == STORE);
            for &x in &a {
                let down = w.hosts[x].store_cut_down;
                if to_store {
                    w.cut_store(x, true, down || !*one_way);
                }
            }
            for &y in &b {
                let up = w.hosts[y].store_cut_up;
                if from_store {
                    w.cut_store(y, up || !*one_way, true);
                }
            }
            for &x in &a {
                for &y in &b {
                    let (ix, iy) = (w.hosts[x].ip, w.hosts[y].ip);
                    w.underlay.block(ix, iy);
                    if !one_way {
                        w.underlay.block(iy, ix);
                    }
                }
            }
            let names = |v: &[usize], store: bool| {
                let mut n: Vec<String> = v.iter().map(|h| w.hosts[*h].name.clone()).collect();
                if store {
                    n.push(STORE.into());
                }
                n.join(",")
            };
            let arrow = if *one_way { "->" } else { "<->" };
            let text = format!(
                "partition {} {arrow} {}",
                names(&a, from_store),
                names(&b, to_store)
            );
            w.note_step(text);
        }
        Step::Heal { from, to, .. } => match (from, to) {
            (Some(from), Some(to)) => {
                let (a, b) = (hosts_of(w, from.iter()), hosts_of(w, to.iter()));
                for &x in &a {
                    for &y in &b {
                        let (ix, iy) = (w.hosts[x].ip, w.hosts[y].ip);
                        w.underlay.heal(Some((ix, iy)));
                        w.underlay.heal(Some((iy, ix)));
                    }
                }
                let store = from.iter().chain(to.iter()).any(|n| n == STORE);
                for h in a.into_iter().chain(b) {
                    if store {
                        w.cut_store(h, false, false);
                    }
                }
                w.note_step("heal the named partitions".into());
            }
            _ => {
                w.underlay.heal(None);
                for h in 0..w.hosts.len() {
                    w.cut_store(h, false, false);
                }
                for h in 0..w.hosts.len() {
                    w.cut_store(h, false, false);
                }
                w.note_step("heal every partition".into());
            }
        },
        Step::Faults {
            from,
            to,
            latency,
            jitter,
            loss,
            duplicate,
            reorder,
            reorder_delay,
            corrupt,
            mtu,
            ..
        } => {
            let fields = crate::scenario::FaultFields {
                latency: *latency,
                jitter: *jitter,
                loss: *loss,
                duplicate: *duplicate,
                reorder: *reorder,
                reorder_delay: *reorder_delay,
                corrupt: *corrupt,
                mtu: *mtu,
            };
            match (from, to) {
                (Some(from), Some(to)) => {
                    for x in hosts_of(w, from.iter()) {
                        for y in hosts_of(w, to.iter()) {
                            let (ix, iy) = (w.hosts[x].ip, w.hosts[y].ip);
                            for (p, q) in [(ix, iy), (iy, ix)] {
                                let f = faults_from(w.underlay.faults(p, q), &fields);
                                w.underlay.set_faults(Some((p, q)), f);
                            }
                        }
                    }
                }
                _ => {
                    let f = faults_from(
                        w.underlay.faults(
                            std::net::Ipv4Addr::UNSPECIFIED,
                            std::net::Ipv4Addr::UNSPECIFIED,
                        ),
                        &fields,
                    );
                    w.underlay.set_faults(None, f);
                }
            }
            w.note_step(format!("link faults now {}", describe_faults(&fields)));
        }
        Step::StoreOutage { for_, .. } => {
            w.store.set_unavailable(true);
            w.request_flush();
            match for_ {
                Some(d) => {
                    w.note_step(format!("store outage for {}", format_duration(d.0)));
                    w.schedule_recover(w.now + d.0);
                }
                None => w.note_step("store outage".into()),
            }
        }
        Step::StoreRecover { .. } => {
            w.store.set_unavailable(false);
            w.note_step("store recovers".into());
        }
        Step::ClockJump { node, by, .. } => {
            let h = host(w, node);
            w.clock_jump(h, by.millis());
        }
        Step::Ping {
            from,
            to,
            within,
            expect,
            ..
        } => {
            let (a, b) = (endpoint(w, from), endpoint(w, to));
            let want = *expect == PingExpect::Ok;
            let (an, bn) = (w.endpoint_name(a), w.endpoint_name(b));
            let what = if want { "must reply" } else { "must not reply" };
            w.log(
                "ping",
                format_args!(
                    "{an} -> {bn} starts ({what} within {})",
                    format_duration(within.0)
                ),
            );
            w.start_ping(a, b, within.0, Some(want));
        }
        Step::Tcp {
            from,
            to,
            bytes,
            within,
            ..
        } => {
            let (a, b) = (endpoint(w, from), endpoint(w, to));
            let (an, bn) = (w.endpoint_name(a), w.endpoint_name(b));
            w.log(
                "tcp",
                format_args!(
                    "{an} -> {bn} starts: {bytes} bytes within {}",
                    format_duration(within.0)
                ),
            );
            w.start_transfer(a, b, *bytes, within.0);
        }
        Step::DeleteLease { node, .. } => {
            let h = host(w, node);
            w.operator_delete(h);
        }
        Step::Reserve { subnet, ip, .. } => {
            let key = format!("{}{}", w_prefix(w), LeaseKey::v4(*subnet));
            let _ = w
                .store
                .put(&key, &LeaseAttrs::new(*ip, w_backend(w)).encode());
            w.note_step(format!("operator reserves {subnet} for {ip}"));
        }
        Step::Compact { .. } => {
            let r = w.store.revision();
            let _ = w.store.compact(r);
            w.note_step(format!("store compacts its history up to revision {r}"));
        }
    }
}

fn describe_faults(f: &crate::scenario::FaultFields) -> String {
    let mut parts = Vec::new();
    if let Some(d) = f.latency {
        parts.push(format!("latency {}", format_duration(d.0)));
    }
    if let Some(d) = f.jitter {
        parts.push(format!("jitter {}", format_duration(d.0)));
    }
    for (name, p) in [
        ("loss", f.loss),
        ("duplicate", f.duplicate),
        ("reorder", f.reorder),
        ("corrupt", f.corrupt),
    ] {
        if let Some(p) = p {
            parts.push(format!("{name} {p}"));
        }
    }
    if let Some(d) = f.reorder_delay {
        parts.push(format!("reorder_delay {}", format_duration(d.0)));
    }
    if let Some(m) = f.mtu {
        parts.push(format!("mtu {m}"));
    }
    parts.join(", ")
}

fn expect(w: &mut World, e: &Expect) {
    let host = |w: &World, n: &str| w.host_index(n).unwrap_or(0);
    let result: Result<String, String> = match e {
        Expect::Holds { node, subnet, .. } => {
            let h = host(w, node);
            let held = w.hosts[h].lease_key().map(|k| k.ipv4);
            let show =
                |k: Option<ipnet::Ipv4Net>| k.map_or("nothing".to_string(), |k| k.to_string());
            let ok = match subnet {
                SubnetExpect::Exactly(n) => held == Some(*n),
                SubnetExpect::Previous => {
                    held.is_some() && held == w.hosts[h].previous.map(|k| k.ipv4)
                }
                SubnetExpect::Any => held.is_some(),
                SubnetExpect::None => held.is_none(),
            };
            let want = match subnet {
                SubnetExpect::Exactly(n) => n.to_string(),
                SubnetExpect::Previous => format!(
                    "its previous subnet ({})",
                    show(w.hosts[h].previous.map(|k| k.ipv4))
                ),
                SubnetExpect::Any => "a subnet".into(),
                SubnetExpect::None => "nothing".into(),
            };
            if ok {
                Ok(format!("{node} holds {}", show(held)))
            } else {
                Err(format!(
                    "{node} should hold {want} but holds {}",
                    show(held)
                ))
            }
        }
        Expect::Leases { count, .. } => {
            let n = w
                .store
                .list(&weft_core::store::subnets_prefix(
                    weft_core::store::DEFAULT_PREFIX,
                ))
                .map(|l| l.entries.len())
                .unwrap_or(usize::MAX);
            if n == *count {
                Ok(format!("the store holds {n} leases"))
            } else {
                Err(format!(
                    "the store should hold {count} leases but holds {n}"
                ))
            }
        }
        Expect::Routes { node, count, .. } => {
            let h = host(w, node);
            let n = w.hosts[h].node().map_or(0, |n| n.routes().len());
            if n == *count {
                Ok(format!("{node} has {n} routes"))
            } else {
                Err(format!("{node} should have {count} routes but has {n}"))
            }
        }
        Expect::Error { node, contains, .. } => {
            let h = host(w, node);
            if w.hosts[h]
                .errors
                .iter()
                .any(|m| m.contains(contains.as_str()))
            {
                Ok(format!("{node} reported an error containing {contains:?}"))
            } else {
                Err(format!("{node} reported no error containing {contains:?}"))
            }
        }
        Expect::Stopped { node, .. } => {
            let h = host(w, node);
            if w.hosts[h].exited {
                Ok(format!("{node} exited"))
            } else {
                Err(format!("{node} should have exited but has not"))
            }
        }
        Expect::Converged { .. } => {
            let mut problems = Vec::new();
            for h in 0..w.hosts.len() {
                if !w.hosts[h].is_up() {
                    continue;
                }
                if !w.caught_up(h) {
                    problems.push(format!("{} has not caught up", w.hosts[h].name));
                } else if let Some(m) = w.route_mismatch(h) {
                    problems.push(m);
                }
            }
            if problems.is_empty() {
                Ok("every running node routes to every live peer lease".into())
            } else {
                Err(format!("not converged: {}", problems.join("; ")))
            }
        }
    };
    match result {
        Ok(m) => w.log("check", format_args!("ok: {m}")),
        Err(m) => w.fail(format!("check failed: {m}")),
    }
}

fn summary(w: &mut World) {
    if !w.trace().is_empty() {
        let lines: Vec<String> = w
            .hosts
            .iter()
            .map(|h| {
                let state = match (h.is_up(), h.lease_key(), h.node()) {
                    (false, _, _) => "down".to_string(),
                    (true, Some(k), Some(n)) => {
                        format!("holds {}, {} routes", k.ipv4, n.routes().len())
                    }
                    (true, _, _) => "holds nothing".to_string(),
                };
                format!("{}: {state}", h.name)
            })
            .collect();
        for l in lines {
            w.log("end", format_args!("{l}"));
        }
        let s = w.stats;
        w.log("end", format_args!("{} events, {} store operations, {} datagrams ({} dropped by the underlay, {} delivered)", s.events, s.store_ops, s.datagrams, s.dropped, s.delivered));
        match w.failure.clone() {
            None => w.log("end", format_args!("PASSED")),
            Some(f) => w.log("end", format_args!("FAILED at {}: {}", f.at, f.message)),
        }
    }
}
