//! One walker for every world a scenario runs against.
//!
//! A scenario is data: its steps and expectations, each at a time. [`walk`] takes them
//! in one order -- by time; at one instant the steps before the expectations, each in
//! file order -- and hands them to a [`ScenarioWorld`]: the simulator's
//! [`crate::engine::World`] in virtual time, `weft lab play` in real namespaces in real
//! time. What a world cannot perform it refuses through the trait, and [`check`] asks
//! before a world is built: [`ScenarioWorld::refuse`] takes no `self`, so a world has no
//! way to find out late that it cannot play a file.

use std::ops::{ControlFlow, Range};
use std::time::Duration;

use toml::Spanned;

use crate::scenario::{Expect, FaultFields, NodeSection, Scenario, Step};

/// Why a world cannot perform something a scenario asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// What is refused, as the reader finds it in the file: `step "partition"`,
    /// `[underlay]`, `node a`.
    pub what: String,
    /// Why, and what to use instead: `needs the simulator (weft sim run)`.
    pub why: String,
}

/// A scenario refused by a world, naming the file and the line of what was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {what} {why}")]
pub struct Refused {
    /// The scenario file, as given.
    pub file: String,
    /// The 1-based line of the refused step or section.
    pub line: usize,
    /// See [`Refusal::what`].
    pub what: String,
    /// See [`Refusal::why`].
    pub why: String,
}

/// A world a scenario runs against. The walker calls [`ScenarioWorld::plan`] once, then
/// for each item of the timeline [`ScenarioWorld::wait`] and [`ScenarioWorld::step`] or
/// [`ScenarioWorld::expect`], then [`ScenarioWorld::finish`] once.
pub trait ScenarioWorld {
    /// Why a world of this kind cannot perform `step`, `None` if it can. Every world
    /// answers for every step (write it as an exhaustive `match`, so that a new step
    /// is a compile error in every world until each has said whether it can).
    fn refuse(step: &Step) -> Option<Refusal>;

    /// Why this kind of world cannot build `node`, `None` if it can.
    fn refuse_node(node: &NodeSection) -> Option<Refusal> {
        let _ = node;
        None
    }

    /// Why this kind of world cannot give every link the faults of `[underlay]`.
    fn refuse_underlay(faults: &FaultFields) -> Option<Refusal> {
        let _ = faults;
        None
    }

    /// The times of every item, in walking order, before the first `wait`: a simulated
    /// world schedules them among its own events here.
    fn plan(&mut self, times: &[Duration]) {
        let _ = times;
    }

    /// Lets the world run until the `index`-th item, due `at` after the start. `Break`
    /// stops the walk (a failed run, an interrupt); `finish` is still called.
    fn wait(&mut self, index: usize, at: Duration) -> ControlFlow<()>;

    /// Performs a step; the world reports how it went.
    fn step(&mut self, step: &Step);

    /// Checks an expectation; the world reports how it went.
    fn expect(&mut self, expect: &Expect);

    /// Called last: `Some(end)` after the last item, to run on to the scenario's end;
    /// `None` when a `wait` stopped the walk.
    fn finish(&mut self, end: Option<Duration>);
}

/// One timed item of a scenario.
#[derive(Debug, Clone, Copy)]
pub enum Item<'a> {
    /// A step.
    Step(&'a Step),
    /// An expectation.
    Expect(&'a Expect),
}

/// The scenario's items in walking order: by time; at one instant the steps before the
/// expectations, each kind in file order.
pub fn timeline(scenario: &Scenario) -> Vec<(Duration, Item<'_>)> {
    let mut items: Vec<(Duration, Item<'_>)> = scenario
        .steps
        .iter()
        .map(|s| (s.get_ref().at(), Item::Step(s.get_ref())))
        .chain(
            scenario
                .expects
                .iter()
                .map(|e| (e.get_ref().at(), Item::Expect(e.get_ref()))),
        )
        .collect();
    // Stable: equal times keep the order above.
    items.sort_by_key(|(at, _)| *at);
    items
}

/// When the scenario ends: its duration, or later if a ping or transfer is still
/// allowed to run then.
pub fn end(scenario: &Scenario) -> Duration {
    let mut end = scenario.duration.get_ref().0;
    for s in &scenario.steps {
        if let Step::Ping { at, within, .. } | Step::Tcp { at, within, .. } = s.get_ref() {
            end = end.max(at.0 + within.0);
        }
    }
    end
}

fn line_of(source: &str, span: Range<usize>) -> usize {
    source[..span.start.min(source.len())].matches('\n').count() + 1
}

fn refused<T>(file: &str, source: &str, item: &Spanned<T>, r: Refusal) -> Refused {
    Refused {
        file: file.to_string(),
        line: line_of(source, item.span()),
        what: r.what,
        why: r.why,
    }
}

/// The first thing in `scenario` (whose text is `source`, from `file`) that worlds of
/// kind `W` refuse: the underlay, then the nodes, then the steps, in file order.
pub fn check<W: ScenarioWorld>(
    file: &str,
    scenario: &Scenario,
    source: &str,
) -> Result<(), Refused> {
    if let Some(underlay) = &scenario.underlay {
        if let Some(r) = W::refuse_underlay(underlay.get_ref()) {
            return Err(refused(file, source, underlay, r));
        }
    }
    for node in &scenario.nodes {
        if let Some(r) = W::refuse_node(node.get_ref()) {
            return Err(refused(file, source, node, r));
        }
    }
    for step in &scenario.steps {
        if let Some(r) = W::refuse(step.get_ref()) {
            return Err(refused(file, source, step, r));
        }
    }
    Ok(())
}

/// Walks the scenario's timeline against `world`. Check it with [`check`] first: a step
/// the world refuses is handed to it all the same.
pub fn walk<W: ScenarioWorld>(world: &mut W, scenario: &Scenario) {
    let items = timeline(scenario);
    let times: Vec<Duration> = items.iter().map(|(at, _)| *at).collect();
    world.plan(&times);
    for (index, (at, item)) in items.into_iter().enumerate() {
        if world.wait(index, at).is_break() {
            world.finish(None);
            return;
        }
        match item {
            Item::Step(step) => world.step(step),
            Item::Expect(expect) => world.expect(expect),
        }
    }
    world.finish(Some(end(scenario)));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A world that writes down what it is asked, and cannot partition.
    #[derive(Default)]
    struct Notebook(Vec<String>);

    impl ScenarioWorld for Notebook {
        fn refuse(step: &Step) -> Option<Refusal> {
            matches!(step, Step::Partition { .. }).then(|| Refusal {
                what: format!("step {:?}", step.name()),
                why: "cannot be written down".into(),
            })
        }

        fn wait(&mut self, index: usize, at: Duration) -> ControlFlow<()> {
            self.0.push(format!("wait {index} {}ms", at.as_millis()));
            ControlFlow::Continue(())
        }

        fn step(&mut self, step: &Step) {
            self.0.push(format!("step {}", step.name()));
        }

        fn expect(&mut self, _: &Expect) {
            self.0.push("expect".into());
        }

        fn finish(&mut self, end: Option<Duration>) {
            self.0.push(format!("finish {end:?}"));
        }
    }

    const FILE: &str = r#"
name = "t"
duration = "10s"
[network]
config = { Network = "10.5.0.0/16", Backend = { Type = "udp" } }
[[node]]
name = "a"
ip = "192.0.2.1"
[[node]]
name = "b"
ip = "192.0.2.2"
[[expect]]
check = "converged"
at = "2s"
[[step]]
do = "stop"
at = "2s"
node = "b"
[[step]]
do = "ping"
at = "1s"
from = "a"
to = "b"
within = "20s"
"#;

    #[test]
    fn items_come_by_time_steps_before_expectations_and_the_end_waits_for_pings() {
        let scenario = crate::scenario::parse("t.toml", FILE).expect("parses");
        let mut world = Notebook::default();
        walk(&mut world, &scenario);
        assert_eq!(
            world.0,
            [
                "wait 0 1000ms",
                "step ping",
                "wait 1 2000ms",
                "step stop",
                "wait 2 2000ms",
                "expect",
                "finish Some(21s)",
            ]
        );
    }

    #[test]
    fn a_refused_step_is_named_with_its_line() {
        let scenario = crate::scenario::parse("t.toml", FILE).expect("parses");
        assert_eq!(check::<Notebook>("t.toml", &scenario, FILE), Ok(()));
        let text = FILE.replace(
            "do = \"stop\"\nat = \"2s\"\nnode = \"b\"",
            "do = \"partition\"\nat = \"2s\"\nfrom = \"a\"\nto = \"b\"",
        );
        let scenario = crate::scenario::parse("t.toml", &text).expect("parses");
        let refused = check::<Notebook>("t.toml", &scenario, &text).expect_err("refused");
        assert_eq!(
            refused.to_string(),
            "t.toml:15: step \"partition\" cannot be written down"
        );
        // The simulator performs every step.
        assert_eq!(
            check::<crate::engine::World>("t.toml", &scenario, &text),
            Ok(())
        );
    }
}
