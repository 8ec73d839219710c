//! Where a store's "now" comes from: the system clock, or a clock its caller moves.
//!
//! Expiry is the only thing in a store that depends on time. The daemon and the lab want
//! the wall clock; the simulator and the tests want time that moves only when they say so,
//! so that a lease expires at exactly the same point of every run.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use weft_core::Timestamp;

/// The time base of a store.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// The system clock, as milliseconds since the Unix epoch: the daemon and the lab.
    #[default]
    Wall,
    /// A clock that moves only when its holder moves it: the simulator and tests.
    Manual(ManualClock),
}

impl Clock {
    /// A manual clock starting at `start`, and the handle that moves it.
    pub fn manual(start: Timestamp) -> (Clock, ManualClock) {
        let handle = ManualClock::new(start);
        (Clock::Manual(handle.clone()), handle)
    }

    /// Whether this is a [`Clock::Manual`].
    pub fn is_manual(&self) -> bool {
        matches!(self, Clock::Manual(_))
    }

    /// The current time in this time base.
    pub fn now(&self) -> Timestamp {
        match self {
            Clock::Wall => wall_now(),
            Clock::Manual(m) => m.now(),
        }
    }

    /// Waits until this clock reads `deadline` or later. The wall clock may jump, so callers
    /// re-read `now` after waking rather than trusting that the deadline has passed.
    pub(crate) async fn sleep_until(&self, deadline: Timestamp) {
        match self {
            Clock::Wall => {
                let wait = deadline.saturating_since(wall_now());
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
            }
            Clock::Manual(m) => {
                let mut rx = m.tx.subscribe();
                if rx.wait_for(|now| *now >= deadline).await.is_err() {
                    // Unreachable while `m` holds the sender; never wake rather than spin.
                    std::future::pending::<()>().await;
                }
            }
        }
    }
}

/// The system clock as a [`Timestamp`]; the epoch if the system clock is set before it.
pub fn wall_now() -> Timestamp {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    Timestamp::from_millis(u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX))
}

/// A shared handle on a clock that its holders move by hand. Clones share one clock.
///
/// It never runs backwards: moving it to an earlier time does nothing. It needs no async
/// runtime; tasks waiting on it (a store's watch waiting for the next expiry) are woken
/// when it moves.
#[derive(Debug, Clone)]
pub struct ManualClock {
    tx: Arc<watch::Sender<Timestamp>>,
}

impl ManualClock {
    /// A clock reading `start`.
    pub fn new(start: Timestamp) -> Self {
        ManualClock {
            tx: Arc::new(watch::Sender::new(start)),
        }
    }

    /// The time it reads.
    pub fn now(&self) -> Timestamp {
        *self.tx.borrow()
    }

    /// Moves the clock forward to `t` (an earlier `t` is ignored) and returns the time it
    /// now reads.
    pub fn advance_to(&self, t: Timestamp) -> Timestamp {
        self.tx.send_if_modified(|now| {
            if t > *now {
                *now = t;
                true
            } else {
                false
            }
        });
        self.now()
    }

    /// Moves the clock forward by `d` and returns the time it now reads.
    pub fn advance(&self, d: Duration) -> Timestamp {
        self.advance_to(self.now() + d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_never_runs_backwards() {
        let (clock, handle) = Clock::manual(Timestamp::from_millis(1_000));
        assert_eq!(clock.now(), Timestamp::from_millis(1_000));
        assert_eq!(
            handle.advance(Duration::from_millis(500)),
            Timestamp::from_millis(1_500)
        );
        assert_eq!(
            handle.advance_to(Timestamp::from_millis(10)),
            Timestamp::from_millis(1_500)
        );
        assert_eq!(clock.now(), Timestamp::from_millis(1_500));
    }

    #[tokio::test]
    async fn sleep_until_wakes_when_the_manual_clock_passes_the_deadline() {
        let (clock, handle) = Clock::manual(Timestamp::ZERO);
        let waiter = tokio::spawn(async move {
            clock.sleep_until(Timestamp::from_millis(2_000)).await;
        });
        handle.advance_to(Timestamp::from_millis(1_000));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        handle.advance_to(Timestamp::from_millis(2_000));
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("waiter wakes")
            .expect("waiter does not panic");
    }

    #[test]
    fn wall_clock_is_after_2020() {
        assert!(wall_now() > Timestamp::from_millis(1_577_836_800_000));
    }
}
