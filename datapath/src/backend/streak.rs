//! How a forwarding thread lives with a device or socket that keeps failing.
//!
//! One failed read (a signal, a transient `ENOBUFS`) is worth a warning, a count and a
//! short pause before the next try. A device that is gone for good (the TUN device
//! deleted under us: every read answers `EBADFD`) would have the thread loop forever,
//! warning every 10 ms. So a thread keeps a [`Streak`] per device: the first failure of
//! a streak is logged, the rest only counted; after [`GIVE_UP_AFTER`] of failures with
//! no success between them, the thread gives up and records why in the backend's
//! [`Fatal`], which the daemon polls and stops on with a clear error and a non-zero exit
//! (a supervisor then restarts it, recreating the device).

use std::ops::ControlFlow;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a device or socket may keep failing, with no success in between, before
/// the thread using it gives up.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(5);

/// The pause after a failure, before trying again.
const PAUSE: Duration = Duration::from_millis(10);

/// How long [`join_within`] waits for forwarding threads to end.
pub const JOIN_WITHIN: Duration = Duration::from_secs(5);

/// Why a backend's forwarding gave up, set once by the first thread that did.
#[derive(Debug, Clone, Default)]
pub struct Fatal(Arc<OnceLock<String>>);

impl Fatal {
    /// Records `why`, unless an earlier failure was recorded.
    pub fn set(&self, why: String) {
        let _ = self.0.set(why);
    }

    /// The recorded failure, if any.
    pub fn get(&self) -> Option<String> {
        self.0.get().cloned()
    }
}

/// Failures of one device or socket in a row, see the module docs.
#[derive(Debug)]
pub struct Streak {
    /// What fails, for the messages: "reading the TUN device weft0".
    what: String,
    /// When the streak began, while one lasts.
    since: Option<Instant>,
    /// Failures in the streak.
    failures: u64,
}

impl Streak {
    pub fn new(what: impl Into<String>) -> Self {
        Streak {
            what: what.into(),
            since: None,
            failures: 0,
        }
    }

    /// A call succeeded: the streak, if any, ends.
    #[inline]
    pub fn ok(&mut self) {
        if self.since.is_some() {
            self.end();
        }
    }

    #[cold]
    fn end(&mut self) {
        if self.failures > 1 {
            tracing::info!(failures = self.failures, "{} works again", self.what);
        }
        self.since = None;
        self.failures = 0;
    }

    /// A call failed with `error`: logs the first failure of a streak, pauses, and
    /// breaks (after recording why in `fatal`) once the streak has lasted
    /// [`GIVE_UP_AFTER`].
    #[cold]
    pub fn failed(&mut self, error: &std::io::Error, fatal: &Fatal) -> ControlFlow<()> {
        self.failed_at(error, fatal, Instant::now(), GIVE_UP_AFTER)
    }

    fn failed_at(
        &mut self,
        error: &std::io::Error,
        fatal: &Fatal,
        now: Instant,
        give_up_after: Duration,
    ) -> ControlFlow<()> {
        self.failures += 1;
        let since = *self.since.get_or_insert(now);
        if self.failures == 1 {
            tracing::warn!(%error, "{} failed; retrying", self.what);
        }
        if now.duration_since(since) >= give_up_after {
            let why = format!(
                "{} failed {} times in a row for {:.1} s, last with: {error}; giving up",
                self.what,
                self.failures,
                now.duration_since(since).as_secs_f64()
            );
            tracing::error!("{why}");
            fatal.set(why);
            return ControlFlow::Break(());
        }
        std::thread::sleep(PAUSE);
        ControlFlow::Continue(())
    }
}

/// Joins `threads`, but waits at most [`JOIN_WITHIN`]: a thread stuck in a call that
/// deleting its device did not end is left behind, with a warning, rather than hold
/// the daemon's exit. Returns how many were left.
pub async fn join_within(threads: Vec<JoinHandle<()>>, what: &str) -> usize {
    let total = threads.len();
    let (done, mut finished) = tokio::sync::mpsc::unbounded_channel();
    for t in threads {
        let done = done.clone();
        std::thread::spawn(move || {
            let _ = t.join();
            let _ = done.send(());
        });
    }
    drop(done);
    let mut joined = 0;
    let deadline = tokio::time::Instant::now() + JOIN_WITHIN;
    while joined < total {
        match tokio::time::timeout_at(deadline, finished.recv()).await {
            Ok(Some(())) => joined += 1,
            Ok(None) => break,
            Err(_) => {
                tracing::warn!(
                    left = total - joined,
                    "{what}: forwarding threads did not end within {} s; leaving them",
                    JOIN_WITHIN.as_secs()
                );
                break;
            }
        }
    }
    total - joined
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streak_gives_up_only_after_its_time_and_a_success_resets_it() {
        let fatal = Fatal::default();
        let mut s = Streak::new("reading the TUN device t0");
        let e = std::io::Error::from_raw_os_error(77);
        let t0 = Instant::now();
        let limit = Duration::from_secs(5);
        assert!(s.failed_at(&e, &fatal, t0, limit).is_continue());
        assert!(s
            .failed_at(&e, &fatal, t0 + Duration::from_secs(4), limit)
            .is_continue());
        s.ok();
        // A new streak: 4 s more is not 5 s of failures in a row.
        assert!(s
            .failed_at(&e, &fatal, t0 + Duration::from_secs(6), limit)
            .is_continue());
        assert!(s
            .failed_at(&e, &fatal, t0 + Duration::from_secs(10), limit)
            .is_continue());
        assert_eq!(fatal.get(), None);
        assert!(s
            .failed_at(&e, &fatal, t0 + Duration::from_secs(11), limit)
            .is_break());
        let why = fatal.get().expect("recorded");
        assert!(
            why.starts_with("reading the TUN device t0 failed 3 times in a row for 5.0 s"),
            "{why}"
        );
        // The first reason stays.
        fatal.set("later".into());
        assert_eq!(fatal.get(), Some(why));
    }

    #[tokio::test]
    async fn join_within_leaves_a_stuck_thread_behind() {
        let quick = std::thread::spawn(|| {});
        let (_hold, stuck_rx) = std::sync::mpsc::channel::<()>();
        let stuck = std::thread::spawn(move || {
            let _ = stuck_rx.recv_timeout(Duration::from_secs(30));
        });
        let t = Instant::now();
        assert_eq!(join_within(vec![quick, stuck], "test").await, 1);
        let waited = t.elapsed();
        assert!(
            waited >= JOIN_WITHIN && waited < JOIN_WITHIN * 2,
            "{waited:?}"
        );
        assert_eq!(
            join_within(vec![std::thread::spawn(|| {})], "test").await,
            0
        );
    }
}
