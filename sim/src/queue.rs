//! The event queue: events ordered by (time, sequence number).
//!
//! The sequence number makes the order of events due at the same instant the order in
//! which they were scheduled, which is what makes a run reproducible; it also makes
//! cancellation cheap: a cancelled event is simply left in the queue and recognised as
//! stale by its owner when it comes out.
//!
//! Most events are due within a millisecond or two (a datagram's flight, a store round
//! trip) while others wait for minutes or hours (a renewal, a driver's schedule of
//! pings): a single heap makes every one of them pay for the depth the far ones give it.
//! So time is cut into ticks of [`TICK_BITS`] bits of microseconds; only the events of
//! the current tick (and any scheduled for earlier) sit in a binary heap ordered by
//! `(time, sequence)`, and every later one waits, unordered, in a hierarchical timer
//! wheel (as in the Linux kernel or tokio): level `k` holds the events whose tick first
//! differs from the current one in its `k`-th group of [`LEVEL_BITS`] bits, in the slot
//! of that group's value. When the heap runs dry the earliest non-empty slot is
//! emptied: the current tick moves to its start, and its events go to the heap (those
//! of that tick) or down to lower levels. An event moves at most once per level, in
//! O(1) each time.
//!
//! The order is exactly the one heap's: every event in the heap is due in a tick up to
//! the current one and every event in the wheel in a later tick, so the heap's head is
//! always the earliest of all, and events due at one instant always meet in the heap
//! before the first of them comes out, ordered there by their sequence numbers.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::time::SimTime;

/// An event's place in the order, `(time, sequence)`, and its slot in the slab.
#[derive(Debug, Clone, Copy)]
struct Key {
    at: u64,
    seq: u64,
    slot: u32,
}

impl Key {
    /// `(time, sequence)` as one number, compared without branches.
    fn order(&self) -> u128 {
        (u128::from(self.at) << 64) | u128::from(self.seq)
    }
}

/// Reversed, so that the max-heap yields the earliest first. The sequence numbers are
/// unique, so two keys are equal only if they are one.
impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        other.order().cmp(&self.order())
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.order() == other.order()
    }
}

impl Eq for Key {}

/// A tick is 2^10 µs (about a millisecond): a datagram's flight on a LAN-like link
/// mostly stays within the current tick or the next.
const TICK_BITS: u32 = 16;
/// Each level of the wheel resolves this many bits of the tick: 64 slots, whose
/// occupancy fits one `u64`.
const LEVEL_BITS: u32 = 6;
const SLOTS: usize = 1 << LEVEL_BITS;
/// Enough levels for every tick a `u64` of microseconds can name.
const LEVELS: usize = (64 - TICK_BITS as usize).div_ceil(LEVEL_BITS as usize);

fn tick(at: u64) -> u64 {
    at >> TICK_BITS
}

/// Events of type `E` due at virtual times.
///
/// The heap and the wheel hold only small keys; the events themselves (some of which
/// carry store operations or packets) wait in a slab and are moved once in and once
/// out, rather than at every level of every sift.
pub struct EventQueue<E> {
    /// The events due in a tick up to `current`.
    near: BinaryHeap<Key>,
    /// The wheel's slots, level by level: `wheel[level * SLOTS + slot]`.
    wheel: Vec<Vec<Key>>,
    /// Per level, which slots hold anything.
    occupied: [u64; LEVELS],
    /// How many events the wheel holds.
    in_wheel: usize,
    /// The current tick: every event in the wheel is due in a later one.
    current: u64,
    /// An empty list with room, swapped in for a slot being emptied.
    spare: Vec<Key>,
    slots: Vec<Option<E>>,
    free: Vec<u32>,
    seq: u64,
}

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
            wheel: (0..LEVELS * SLOTS).map(|_| Vec::new()).collect(),
            occupied: [0; LEVELS],
            in_wheel: 0,
            current: 0,
            spare: Vec::new(),
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
        self.place(Key {
            at: at.0,
            seq: self.seq,
            slot,
        });
    }

    /// Puts a key in the heap if it is due by the current tick, else in its slot of
    /// the wheel.
    fn place(&mut self, key: Key) {
        let t = tick(key.at);
        if t <= self.current {
            self.near.push(key);
            return;
        }
        // The highest group of bits in which the tick differs from the current one.
        let level = ((63 - (t ^ self.current).leading_zeros()) / LEVEL_BITS) as usize;
        let slot = ((t >> (level as u32 * LEVEL_BITS)) as usize) & (SLOTS - 1);
        self.wheel[level * SLOTS + slot].push(key);
        self.occupied[level] |= 1 << slot;
        self.in_wheel += 1;
    }

    /// Refills the heap from the wheel, if it is empty and the wheel is not.
    #[inline]
    fn refill(&mut self) {
        if self.near.is_empty() && self.in_wheel > 0 {
            self.cascade();
        }
    }

    /// Empties the wheel's earliest slots until the heap holds something.
    #[inline(never)]
    fn cascade(&mut self) {
        while self.near.is_empty() && self.in_wheel > 0 {
            // The lowest level holding anything holds the earliest ticks, and in it the
            // lowest occupied slot: every slot of a level lies past the current tick's
            // own group of bits there.
            let Some(level) = self.occupied.iter().position(|&o| o != 0) else {
                return;
            };
            let slot = self.occupied[level].trailing_zeros() as usize;
            self.occupied[level] &= !(1 << slot);
            let shift = level as u32 * LEVEL_BITS;
            // The slot's first tick: the current tick's higher groups, this level's
            // group the slot, the lower groups zero.
            let high = self.current >> shift >> LEVEL_BITS << LEVEL_BITS;
            self.current = (high | slot as u64) << shift;
            let mut keys = std::mem::replace(
                &mut self.wheel[level * SLOTS + slot],
                std::mem::take(&mut self.spare),
            );
            self.in_wheel -= keys.len();
            for key in keys.drain(..) {
                self.place(key);
            }
            self.spare = keys;
        }
    }

    /// The time of the earliest event.
    pub fn peek_time(&mut self) -> Option<SimTime> {
        self.refill();
        self.near.peek().map(|k| SimTime(k.at))
    }

    /// Removes and returns the earliest event.
    pub fn pop(&mut self) -> Option<(SimTime, E)> {
        self.refill();
        let Key { at, slot, .. } = self.near.pop()?;
        let event = self.slots[slot as usize].take()?;
        self.free.push(slot);
        Some((SimTime(at), event))
    }

    /// How many events are scheduled (stale ones included).
    pub fn len(&self) -> usize {
        self.near.len() + self.in_wheel
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

    /// Events at one instant pushed while the wheel stands at different ticks (one far
    /// ahead, one after a peek moved the current tick on) still come out in the order
    /// they were pushed.
    #[test]
    fn ties_across_levels_keep_scheduling_order() {
        let mut q = EventQueue::default();
        let far = SimTime(3_600_000_000);
        q.push(far, "first");
        q.push(SimTime(2_000), "early");
        assert_eq!(q.pop().map(|(_, e)| e), Some("early"));
        q.push(far, "second");
        // The peek empties the wheel down to the hour's tick.
        assert_eq!(q.peek_time(), Some(far));
        // Scheduled earlier than the current tick now, but after what came out.
        q.push(SimTime(5_000), "late");
        q.push(far, "third");
        q.push(SimTime(u64::MAX), "end");
        let order: Vec<_> = std::iter::from_fn(|| q.pop().map(|(_, e)| e)).collect();
        assert_eq!(order, ["late", "first", "second", "third", "end"]);
        assert!(q.is_empty());
    }

    /// Events pushed in any order, due now, within a tick, a few ticks on, or up to
    /// hours later (every level of the wheel), come out as an ordered set of
    /// `(time, sequence)` gives them; peeks in between change nothing.
    #[test]
    fn one_order_whatever_the_distance() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut q = EventQueue::default();
        let mut reference = std::collections::BTreeSet::new();
        let mut seq = 0u64;
        let mut now = 0u64;
        let tick = 1u64 << TICK_BITS;
        for _ in 0..50_000 {
            if rng.random_bool(0.55) || reference.is_empty() {
                // Many at the same instant or on a tick's boundary.
                let at = now
                    + match rng.random_range(0..7) {
                        0 => 0,
                        1 => rng.random_range(0..2 * tick),
                        2 => tick - now % tick,
                        3 => rng.random_range(0..100 * tick),
                        4 => rng.random_range(0..10_000_000 * tick),
                        5 => 1 << rng.random_range(0..40),
                        _ => rng.random_range(0..(1 << 50)),
                    };
                seq += 1;
                q.push(SimTime(at), seq);
                reference.insert((at, seq));
            } else if rng.random_bool(0.2) {
                assert_eq!(q.peek_time().map(|t| t.0), reference.first().map(|e| e.0));
            } else {
                let want = reference.pop_first();
                let got = q.pop().map(|(t, s)| (t.0, s));
                assert_eq!(got, want);
                now = got.map_or(now, |(t, _)| t);
            }
            assert_eq!(q.len(), reference.len());
        }
        while let Some(want) = reference.pop_first() {
            assert_eq!(q.pop().map(|(t, s)| (t.0, s)), Some(want));
        }
        assert!(q.is_empty());
        assert_eq!(q.pop().map(|(t, s)| (t.0, s)), None);
    }
}
