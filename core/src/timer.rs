//! The node's timers: one small table indexed by an enum, the next timeout being the
//! earliest armed one (as in quinn-proto's `connection/timer.rs`).

use std::time::Duration;

use rand::Rng;

use crate::time::Timestamp;

/// The wait before retry number `attempt` (0 for the first): `min` doubled per attempt,
/// capped at `max`, plus up to 20 % jitter drawn from `rng`, so that many nodes that
/// failed together (an etcd outage) do not retry together.
pub fn backoff(min: Duration, max: Duration, attempt: u32, rng: &mut impl Rng) -> Duration {
    let base = min.saturating_mul(1u32 << attempt.min(16)).min(max);
    let jitter_ms = rng.random_range(0..=base.as_millis() as u64 / 5);
    base + Duration::from_millis(jitter_ms)
}

/// Every timer a node can arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Timer {
    /// Renew our lease before it expires.
    Renew = 0,
    /// Our lease runs out unless a renewal succeeds first.
    Expiry = 1,
    /// Try acquiring (or renewing) again after a failure.
    AllocRetry = 2,
    /// Restart the watch, or the listing, after a store failure.
    WatchRetry = 3,
    /// Ask the store whether it is back, while a retry waits on its failure.
    StoreProbe = 4,
}

const COUNT: usize = 5;
const ALL: [Timer; COUNT] = [
    Timer::Renew,
    Timer::Expiry,
    Timer::AllocRetry,
    Timer::WatchRetry,
    Timer::StoreProbe,
];

/// When each timer fires, if armed.
#[derive(Debug, Clone, Copy, Default)]
pub struct TimerTable([Option<Timestamp>; COUNT]);

impl TimerTable {
    /// Arms `timer` for `at`, replacing any earlier setting.
    pub fn set(&mut self, timer: Timer, at: Timestamp) {
        self.0[timer as usize] = Some(at);
    }

    /// Disarms `timer`.
    pub fn stop(&mut self, timer: Timer) {
        self.0[timer as usize] = None;
    }

    /// When `timer` fires, if armed.
    pub fn get(&self, timer: Timer) -> Option<Timestamp> {
        self.0[timer as usize]
    }

    /// Moves every armed timer `d` earlier (the clock they are read against went back).
    pub fn shift_back(&mut self, d: std::time::Duration) {
        for t in self.0.iter_mut().flatten() {
            *t = *t - d;
        }
    }

    /// The earliest armed timer's deadline.
    pub fn next_timeout(&self) -> Option<Timestamp> {
        self.0.iter().flatten().min().copied()
    }

    /// Disarms and returns every timer due at `now`, in enum order.
    pub fn take_expired(&mut self, now: Timestamp) -> Vec<Timer> {
        ALL.into_iter()
            .filter(|t| {
                let due = self.0[*t as usize].is_some_and(|at| at <= now);
                if due {
                    self.0[*t as usize] = None;
                }
                due
            })
            .collect()
    }
}
