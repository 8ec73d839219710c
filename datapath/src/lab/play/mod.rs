//! `weft lab play SCENARIO`: a simulator scenario file run against real namespaces.
//!
//! The lab takes its nodes, addresses, containers, network config and lease timing from
//! the scenario, then the one walker (`weft_sim::walk`) performs the steps and checks
//! the expectations on the scenario's timeline in real time, so one file checks both
//! worlds. What only a simulator can do (partitions, link faults, store outages, clock
//! jumps, compaction) the lab refuses through the walker's trait, before it builds
//! anything, naming the step and its line. In the lab a crash is a stop: a node's daemon
//! runs in this process, and its TUN device has to go with it.
//!
//! The walker is synchronous (the simulator's world is); the lab's world runs it on a
//! blocking thread and waits for the nodes, the store and the clock through the
//! runtime's handle. Nodes publish their status as it changes, so every check reads the
//! state of that instant and every start waits exactly until the node holds its lease.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::Path;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use tokio::runtime::Handle;
use tokio::sync::watch;
use weft_sim::scenario::{Expect, FaultFields, NodeSection, PingExpect, Scenario, Step};
use weft_sim::walk::{self, Refusal, ScenarioWorld};

mod expect;

use super::running::Running;
use super::spec::LabSpec;
use super::{check_prerequisites, claim, container, probe, topology, LabError};
use crate::daemon::NodeStatus;

/// What the lab can play, for refusals.
const CAN: &str =
    "weft lab play runs start, stop, crash, restart, ping, tcp, delete_lease and reserve";

fn needs_the_simulator(what: String) -> Refusal {
    Refusal {
        what,
        why: format!("needs the simulator (weft sim run); {CAN}"),
    }
}

/// A change to the scenario's network config (JSON) before the lab uses it, such as
/// `--backend`; its error is the reason, shown as a config error.
pub type ConfigEdit = Box<dyn FnOnce(&str) -> Result<String, String> + Send>;

/// The lab as a world a scenario runs against.
pub struct LabWorld {
    pub(super) rt: Handle,
    pub(super) running: Running,
    t0: tokio::time::Instant,
    at: Duration,
    /// The subnet each node held in its previous run.
    pub(super) previous: BTreeMap<String, Option<Ipv4Net>>,
    failures: usize,
    shutdown: watch::Receiver<bool>,
    interrupted: bool,
    out: Box<dyn FnMut(&str) + Send>,
}

impl std::fmt::Debug for LabWorld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LabWorld")
            .field("at", &self.at)
            .field("failures", &self.failures)
            .finish_non_exhaustive()
    }
}

impl ScenarioWorld for LabWorld {
    fn refuse(step: &Step) -> Option<Refusal> {
        match step {
            Step::Start { .. }
            | Step::Stop { .. }
            | Step::Crash { .. }
            | Step::Restart { .. }
            | Step::Ping { .. }
            | Step::Tcp { .. }
            | Step::DeleteLease { .. }
            | Step::Reserve { .. } => None,
            Step::Partition { .. }
            | Step::Heal { .. }
            | Step::Faults { .. }
            | Step::StoreOutage { .. }
            | Step::StoreRecover { .. }
            | Step::ClockJump { .. }
            | Step::Compact { .. }
            | Step::Spoof { .. }
            | Step::Put { .. }
            | Step::ChangeIp { .. }
            | Step::SetConfig { .. }
            | Step::DeleteConfig { .. } => {
                Some(needs_the_simulator(format!("step {:?}", step.name())))
            }
        }
    }

    fn refuse_node(node: &NodeSection) -> Option<Refusal> {
        if !topology::on_underlay(node.ip) {
            return Some(Refusal {
                what: format!("node {} has IP {}:", node.name, node.ip),
                why: format!("the lab's underlay is {}", topology::UNDERLAY),
            });
        }
        node.previous_subnet
            .map(|_| needs_the_simulator(format!("node {}: previous_subnet", node.name)))
    }

    fn refuse_underlay(_: &FaultFields) -> Option<Refusal> {
        Some(needs_the_simulator("[underlay] link faults".into()))
    }

    fn wait(&mut self, _index: usize, at: Duration) -> ControlFlow<()> {
        self.at = at;
        let due = self.t0 + at;
        let shutdown = &mut self.shutdown;
        let interrupted = self.rt.block_on(async {
            tokio::select! {
                () = tokio::time::sleep_until(due) => false,
                Ok(()) = shutdown.changed() => true,
            }
        });
        self.interrupted |= interrupted;
        if interrupted {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }

    fn step(&mut self, step: &Step) {
        let (what, result) = self.perform(step);
        self.report(&what, result);
    }

    fn expect(&mut self, expect: &Expect) {
        let (what, result) = self.check(expect);
        self.report(&what, result);
    }

    fn finish(&mut self, _end: Option<Duration>) {
        // Nothing is checked after the last item: the lab does not wait for the end.
        for report in self.running.status().nodes {
            let line = match &report.status {
                Some(s) if s.holds_lease() => format!(
                    "end   {}: holds {}, {} routes",
                    report.name,
                    s.lease
                        .as_ref()
                        .and_then(|l| l.subnet)
                        .map_or_else(String::new, |s| s.to_string()),
                    s.routes.len()
                ),
                Some(s) => format!("end   {}: {}", report.name, s.state.as_str()),
                None => format!("end   {}: unknown", report.name),
            };
            (self.out)(&line);
        }
    }
}

impl LabWorld {
    fn report(&mut self, what: &str, result: Result<String, LabError>) {
        let mut stamp = format!("{:>8.3}s", self.at.as_secs_f64());
        // Real time does not stop for a slow step: say when an item ran late.
        let late = self.t0.elapsed().saturating_sub(self.at);
        if late > Duration::from_millis(500) {
            stamp += &format!(" (late by {:.1}s)", late.as_secs_f64());
        }
        let line = match result {
            Ok(detail) => format!("{stamp} ok    {what}{detail}"),
            Err(e) => {
                self.failures += 1;
                format!("{stamp} FAIL  {what}: {e}")
            }
        };
        (self.out)(&line);
    }

    pub(super) fn status(&self, node: &str) -> Result<NodeStatus, LabError> {
        self.running
            .nodes
            .status(node)
            .ok_or_else(|| LabError::NoNode {
                name: node.to_string(),
                have: self.running.state.names().join(", "),
            })
    }

    fn perform(&mut self, step: &Step) -> (String, Result<String, LabError>) {
        let rt = self.rt.clone();
        match step {
            Step::Start { node, .. } | Step::Restart { node, .. } => {
                // What it held in the run that ended, for `holds = "previous"`.
                let last = self.status(node).ok().and_then(|s| s.last_lease);
                self.previous
                    .insert(node.clone(), last.and_then(|l| l.subnet));
                let running = &mut self.running;
                let result = running
                    .start(node)
                    .and_then(|()| rt.block_on(running.wire()));
                let detail = |unwired: Vec<String>| match unwired.as_slice() {
                    [] => String::new(),
                    why => format!(" (no lease yet for {})", why.join("; ")),
                };
                (format!("start {node}"), result.map(detail))
            }
            Step::Stop { node, .. } | Step::Crash { node, .. } => {
                let result = rt.block_on(self.running.nodes.stop(node));
                (format!("stop {node}"), result.map(|()| String::new()))
            }
            Step::Ping {
                from,
                to,
                within,
                expect,
                ..
            } => (
                format!("ping {from} -> {to}"),
                self.ping(from, to, within.0, *expect),
            ),
            Step::Tcp {
                from,
                to,
                bytes,
                within,
                ..
            } => (
                format!("tcp {from} -> {to} {bytes} bytes"),
                self.tcp(from, to, *bytes, within.0),
            ),
            Step::DeleteLease { node, .. } => {
                let result = self.status(node).and_then(|s| {
                    let lease = s.lease.ok_or_else(|| LabError::NotRunning(node.clone()))?;
                    rt.block_on(self.running.delete_lease(&lease.key))?;
                    Ok(format!(" ({})", lease.key))
                });
                (format!("delete the lease of {node}"), result)
            }
            Step::Reserve { subnet, ip, .. } => {
                let result = rt.block_on(self.running.reserve(*subnet, *ip));
                (
                    format!("reserve {subnet} for {ip}"),
                    result.map(|()| String::new()),
                )
            }
            Step::Partition { .. }
            | Step::Heal { .. }
            | Step::Faults { .. }
            | Step::StoreOutage { .. }
            | Step::StoreRecover { .. }
            | Step::ClockJump { .. }
            | Step::Compact { .. }
            | Step::Spoof { .. }
            | Step::Put { .. }
            | Step::ChangeIp { .. }
            | Step::SetConfig { .. }
            | Step::DeleteConfig { .. } => (
                format!("step {:?}", step.name()),
                Err(LabError::Protocol("refused: it needs the simulator".into())),
            ),
        }
    }

    fn ping(
        &self,
        from: &str,
        to: &str,
        within: Duration,
        expect: PingExpect,
    ) -> Result<String, LabError> {
        let (ns, _) = container(&self.running.state, from)?;
        let (_, dst) = container(&self.running.state, to)?;
        let deadline = Instant::now() + within;
        let mut ident = 0x5a00u16;
        loop {
            ident = ident.wrapping_add(1);
            let wait = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_secs(1));
            // On the walker's blocking thread: the echo may block.
            let rtt = probe::echo(ns.clone(), dst, ident, wait);
            match (rtt, expect) {
                (Some(rtt), PingExpect::Ok) => {
                    return Ok(format!(" ({:.2} ms)", rtt.as_secs_f64() * 1e3))
                }
                (Some(_), PingExpect::Fail) => {
                    return Err(LabError::Protocol(
                        "a reply arrived, none was expected".into(),
                    ))
                }
                (None, _) if Instant::now() < deadline => continue,
                (None, PingExpect::Ok) => {
                    return Err(LabError::Protocol(format!("no reply within {within:?}")))
                }
                (None, PingExpect::Fail) => return Ok(" (no reply, as expected)".into()),
            }
        }
    }

    fn tcp(&self, from: &str, to: &str, bytes: u64, within: Duration) -> Result<String, LabError> {
        let (src, _) = container(&self.running.state, from)?;
        let (dst_ns, dst) = container(&self.running.state, to)?;
        let start = Instant::now();
        let got =
            probe::transfer(src, dst_ns, dst, bytes, within).map_err(|cause| LabError::Exec {
                command: format!("tcp {from} -> {to}"),
                cause,
            })?;
        let took = start.elapsed();
        if got != bytes {
            return Err(LabError::Protocol(format!(
                "{got} of {bytes} bytes arrived"
            )));
        }
        if took > within {
            return Err(LabError::Protocol(format!(
                "took {took:?}, more than {within:?}"
            )));
        }
        Ok(format!(" ({:.2} s)", took.as_secs_f64()))
    }
}

/// `weft lab play`: refuses what the lab cannot do (before anything else, root or not),
/// builds the lab the scenario in `file` describes in `dir` (its namespaces' names
/// starting with `prefix`), walks the scenario against it, reporting each item through
/// `out`, and removes everything. Returns how many steps and expectations failed.
pub async fn play(
    file: &Path,
    dir: &Path,
    prefix: &str,
    edit_config: Option<ConfigEdit>,
    seed: u64,
    shutdown: watch::Receiver<bool>,
    mut out: Box<dyn FnMut(&str) + Send>,
) -> Result<usize, LabError> {
    let (scenario, text) = weft_sim::scenario::load(file)?;
    let name = file.display().to_string();
    walk::check::<LabWorld>(&name, &scenario, &text)?;
    let spec = LabSpec::from_scenario(&scenario, edit_config)?;
    check_prerequisites()?;
    let store = super::default_store(dir);
    let mut state = claim(dir, prefix, super::default_store_url(dir)).await?;
    // A scenario starts from an empty store.
    let _ = std::fs::remove_dir_all(&store);
    out(&format!(
        "playing {name}: {}, on the {} backend",
        scenario.name, spec.config.backend.kind
    ));
    let mut running = match Running::open(dir, spec, state.clone(), seed).await {
        Ok(running) => running,
        Err(e) => {
            super::clean(&mut state, dir, Some(&store)).await?;
            return Err(e);
        }
    };
    let mut interrupt = shutdown.clone();
    let built = tokio::select! {
        built = running.build() => built,
        _ = interrupt.changed() => Err(LabError::Interrupted),
    };
    if let Err(e) = built {
        running.teardown(Some(&store)).await?;
        return Err(e);
    }
    // Should the walker's thread panic, the lab is lost to this process; the state file
    // still names everything, for `weft lab down`.
    let (mut running, result) = walk_on_a_blocking_thread(running, scenario, shutdown, out).await?;
    let cleaned = running.teardown(Some(&store)).await;
    let failures = result?;
    cleaned?;
    Ok(failures)
}

/// The walk itself, on a blocking thread (see the module docs); hands the lab back
/// for its teardown with the number of failures, or the interrupt.
async fn walk_on_a_blocking_thread(
    running: Running,
    scenario: Scenario,
    shutdown: watch::Receiver<bool>,
    out: Box<dyn FnMut(&str) + Send>,
) -> Result<(Running, Result<usize, LabError>), LabError> {
    let rt = Handle::current();
    let walker = tokio::task::spawn_blocking(move || {
        let mut world = LabWorld {
            rt,
            running,
            t0: tokio::time::Instant::now(),
            at: Duration::ZERO,
            previous: BTreeMap::new(),
            failures: 0,
            shutdown,
            interrupted: false,
            out,
        };
        walk::walk(&mut world, &scenario);
        let result = if world.interrupted {
            Err(LabError::Interrupted)
        } else {
            Ok(world.failures)
        };
        (world.running, result)
    });
    walker
        .await
        .map_err(|e| LabError::Protocol(format!("the scenario walker failed: {e}")))
}

#[cfg(test)]
mod tests;
