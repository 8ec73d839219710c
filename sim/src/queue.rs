//! The event queue: a binary heap ordered by (time, sequence number).
//!
//! The sequence number makes the order of events due at the same instant the order in
//! which they were scheduled, which is what makes a run reproducible; it also makes
//! cancellation cheap: a cancelled event is simply left in the heap and recognised as
//! stale by its owner when it comes out.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::time::SimTime;

/// What the heap orders: `(time, sequence, slot)`, reversed so that the max-heap yields
/// the earliest first. The sequence numbers are unique, so the slot never decides.
type Key = Reverse<(SimTime, u64, u32)>;

/// Events of type `E` due at virtual times.
///
/// The heaps hold only small keys; the events themselves (some of which carry store
/// operations or packets) wait in a slab and are moved once in and once out, rather
/// than at every level of every sift.
///
/// Most events are due within a few milliseconds (a datagram's flight, a store round
/// trip) while others wait for minutes (a renewal, a driver's schedule of pings); the
/// near ones go to a heap of their own, kept shallow by the far ones' absence. Which
/// heap holds an event changes nothing of the order: the earliest of the two heads
/// comes out first.
pub struct EventQueue<E> {
    near: BinaryHeap<Key>,
    far: BinaryHeap<Key>,
    /// The time of the last event out: "near" is within [`NEAR`] of it.
    last: SimTime,
    slots: Vec<Option<E>>,
    free: Vec<u32>,
    seq: u64,
}

/// How far ahead of the last event an event counts as near, in microseconds.
const NEAR: u64 = 10_000;

impl<E> std::fmt::Debug for EventQueue<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventQueue")
            .field("len", &self.len())
            .field("seq", &self.seq)
            .finish()
    }
}

impl<E> Default for EventQueue<E> {
    fn default() -> Self {
        EventQueue {
            near: BinaryHeap::with_capacity(1024),
            far: BinaryHeap::with_capacity(1024),
            last: SimTime::ZERO,
            slots: Vec::with_capacity(1024),
            free: Vec::new(),
            seq: 0,
        }
    }
}

impl<E> EventQueue<E> {
    /// Schedules `event` at `at`, after everything already scheduled for `at`.
    pub fn push(&mut self, at: SimTime, event: E) {
        self.seq += 1;
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(event);
                slot
            }
            None => {
                let slot = u32::try_from(self.slots.len()).expect("fewer than 2^32 events queued");
                self.slots.push(Some(event));
                slot
            }
        };
        let key = Reverse((at, self.seq, slot));
        if at.0 < self.last.0.saturating_add(NEAR) {
            self.near.push(key);
        } else {
            self.far.push(key);
        }
    }

    /// The heap whose head comes first.
    fn first(&mut self) -> Option<&mut BinaryHeap<Key>> {
        match (self.near.peek(), self.far.peek()) {
            (Some(n), Some(f)) if f > n => Some(&mut self.far),
            (Some(_), _) => Some(&mut self.near),
            (None, Some(_)) => Some(&mut self.far),
            (None, None) => None,
        }
    }

    /// The time of the earliest event.
    pub fn peek_time(&self) -> Option<SimTime> {
        let near = self.near.peek().map(|Reverse((at, _, _))| *at);
        let far = self.far.peek().map(|Reverse((at, _, _))| *at);
        match (near, far) {
            (Some(n), Some(f)) => Some(n.min(f)),
            (n, f) => n.or(f),
        }
    }

    /// Removes and returns the earliest event.
    pub fn pop(&mut self) -> Option<(SimTime, E)> {
        let Reverse((at, _, slot)) = self.first()?.pop()?;
        self.last = at;
        let event = self.slots[slot as usize].take()?;
        self.free.push(slot);
        Some((at, event))
    }

    /// How many events are scheduled (stale ones included).
    pub fn len(&self) -> usize {
        self.near.len() + self.far.len()
    }

    /// Whether nothing is scheduled.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_first_and_ties_in_scheduling_order() {
        let mut q = EventQueue::default();
        q.push(SimTime(5), "c");
        q.push(SimTime(1), "a");
        q.push(SimTime(5), "d");
        q.push(SimTime(1), "b");
        let order: Vec<_> = std::iter::from_fn(|| q.pop().map(|(_, e)| e)).collect();
        assert_eq!(order, ["a", "b", "c", "d"]);
    }

    /// Near and far events, pushed in any order, come out as one queue would give them.
    #[test]
    fn near_and_far_heaps_keep_one_order() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut q = EventQueue::default();
        let mut reference = std::collections::BTreeSet::new();
        let mut seq = 0u64;
        let mut now = 0u64;
        for _ in 0..5_000 {
            if rng.random_bool(0.6) || reference.is_empty() {
                // Due now, soon, or much later; many at the same instant.
                let at = now
                    + match rng.random_range(0..4) {
                        0 => 0,
                        1 => rng.random_range(0..2 * NEAR),
                        2 => NEAR,
                        _ => rng.random_range(0..1_000 * NEAR),
                    };
                seq += 1;
                q.push(SimTime(at), seq);
                reference.insert((at, seq));
            } else {
                let want = reference.pop_first();
                let got = q.pop().map(|(t, s)| (t.0, s));
                assert_eq!(got, want);
                now = got.map_or(now, |(t, _)| t);
                assert_eq!(q.peek_time().map(|t| t.0), reference.first().map(|e| e.0));
            }
        }
        while let Some(want) = reference.pop_first() {
            assert_eq!(q.pop().map(|(t, s)| (t.0, s)), Some(want));
        }
        assert!(q.is_empty());
    }
}
