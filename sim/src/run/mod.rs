//! Running a scenario: build the world from the file, walk its steps and checks at
//! their times (the one walker, [`crate::walk`]), and report.

mod checks;
mod steps;
mod world;

use std::time::Duration;

use weft_core::lease::LeaseKey;

use crate::engine::Host;
use crate::engine::{Decisions, Failure, Stats, World, WorldConfig};
use crate::record::{EventFile, Replay};
use crate::scenario::Scenario;
use crate::time::SimTime;
use crate::underlay::LinkFaults;
use crate::walk::walk;

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

pub(crate) fn faults_from(base: &LinkFaults, f: &crate::scenario::FaultFields) -> LinkFaults {
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

/// Runs `scenario` (whose text is `source`, found at `path`).
pub fn run(path: &str, scenario: &Scenario, source: &str, opts: &RunOptions) -> Outcome {
    let seed = opts.seed.unwrap_or(scenario.seed);
    let (decisions, seed) = match &opts.replay {
        Some(file) => (Decisions::Replay(Replay::new(file)), file.seed),
        None => (Decisions::Seeded(seed), seed),
    };
    run_with(path, scenario, source, decisions, seed)
}

/// Runs `scenario` on the decisions of `file`, leniently (see [`Replay::lenient`]).
pub fn run_lenient(path: &str, scenario: &Scenario, source: &str, file: &EventFile) -> Outcome {
    let decisions = Decisions::Replay(Replay::new(file).lenient());
    run_with(path, scenario, source, decisions, file.seed)
}

fn run_with(
    path: &str,
    scenario: &Scenario,
    source: &str,
    decisions: Decisions,
    seed: u64,
) -> Outcome {
    let replayed = matches!(decisions, Decisions::Replay(_));
    let network = match scenario.network.simulated_config() {
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
        check_routes: scenario.check_routes_every_event,
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
            if replayed {
                "replayed from an event file".to_string()
            } else {
                seed.to_string()
            }
        ),
    );
    for r in &scenario.network.reservations {
        w.operator_reserve(r.subnet, r.ip);
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
    walk(&mut w, scenario);
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
