//! What the cases of a test did, as evidence that the interesting paths ran.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// What the cases did, summed over a test: evidence that the interesting paths ran.
#[derive(Debug, Default)]
pub struct Tally {
    pub steps: AtomicU64,
    pub written: AtomicU64,
    pub already_exists: AtomicU64,
    pub not_found: AtomicU64,
    pub conflict: AtomicU64,
    pub invalid: AtomicU64,
    pub expired: AtomicU64,
    pub events: AtomicU64,
}

pub fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        write!(
            f,
            "{} steps, {} writes, {} AlreadyExists, {} NotFound, {} Conflict, {} Invalid, \
             {} expiries, {} watch events compared",
            get(&self.steps),
            get(&self.written),
            get(&self.already_exists),
            get(&self.not_found),
            get(&self.conflict),
            get(&self.invalid),
            get(&self.expired),
            get(&self.events),
        )
    }
}
