//! The simulator as a [`ScenarioWorld`]: it can perform every step, in virtual time.
//!
//! The walker's items become custom events scheduled once, before the run starts, so
//! that each takes its place among the world's own events at its instant exactly as if
//! the file had been read into the event queue: the traces do not depend on the walker.

use std::ops::ControlFlow;
use std::time::Duration;

use super::checks::{expect, summary};
use super::steps::step;
use crate::engine::World;
use crate::scenario::{Expect, Step};
use crate::time::SimTime;
use crate::walk::{Refusal, ScenarioWorld};

impl ScenarioWorld for World {
    fn refuse(step: &Step) -> Option<Refusal> {
        match step {
            Step::Start { .. }
            | Step::Stop { .. }
            | Step::Crash { .. }
            | Step::Restart { .. }
            | Step::Partition { .. }
            | Step::Heal { .. }
            | Step::Faults { .. }
            | Step::StoreOutage { .. }
            | Step::StoreRecover { .. }
            | Step::ClockJump { .. }
            | Step::Ping { .. }
            | Step::Tcp { .. }
            | Step::DeleteLease { .. }
            | Step::Reserve { .. }
            | Step::Compact { .. }
            | Step::Spoof { .. }
            | Step::Put { .. }
            | Step::ChangeIp { .. }
            | Step::SetConfig { .. }
            | Step::DeleteConfig { .. } => None,
        }
    }

    fn plan(&mut self, times: &[Duration]) {
        for (index, at) in times.iter().enumerate() {
            self.schedule_custom(SimTime::from_duration(*at), index as u64);
        }
    }

    fn wait(&mut self, index: usize, at: Duration) -> ControlFlow<()> {
        match self.run_until(SimTime::from_duration(at)) {
            Some(tag) if tag == index as u64 => ControlFlow::Continue(()),
            Some(tag) => {
                self.fail(format!(
                    "the walker waited for item {index}, the world scheduled item {tag}"
                ));
                ControlFlow::Break(())
            }
            // A failure stopped the run.
            None => ControlFlow::Break(()),
        }
    }

    fn step(&mut self, s: &Step) {
        step(self, s);
    }

    fn expect(&mut self, e: &Expect) {
        expect(self, e);
    }

    fn finish(&mut self, end: Option<Duration>) {
        // A walk stopped by a failure ends where it failed.
        if let Some(end) = end {
            while self.run_until(SimTime::from_duration(end)).is_some() {}
        }
        summary(self);
    }
}
