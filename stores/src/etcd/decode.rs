//! What etcd sends, turned into store entries and watch events, without I/O.
//!
//! A watch response is bytes someone else wrote (any etcd client may write under the
//! prefix) and numbers a server chose; this is the one place they become [`Entry`] and
//! [`WatchEvent`] values, kept pure so that it can be tested and fuzzed over any input
//! (`fuzz/fuzz_targets/etcd_watch.rs`). etcd-client's `KeyValue` cannot be built outside
//! that crate, so the decoding reads the plain fields of a [`RawKv`].

use std::collections::BTreeMap;

use weft_core::store::{Entry, Revision, WatchEvent};
use weft_core::Timestamp;

/// The fields of an etcd key-value that weft reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawKv {
    /// The key's bytes (etcd allows any).
    pub key: Vec<u8>,
    /// The value's bytes.
    pub value: Vec<u8>,
    /// etcd's `create_revision`.
    pub create_revision: i64,
    /// etcd's `mod_revision`.
    pub mod_revision: i64,
    /// The etcd lease the key is attached to; 0 for none.
    pub lease: i64,
}

impl From<&etcd_client::KeyValue> for RawKv {
    fn from(kv: &etcd_client::KeyValue) -> Self {
        RawKv {
            key: kv.key().to_vec(),
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            lease: kv.lease(),
        }
    }
}

/// The kind of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawEventKind {
    /// The key was written.
    Put,
    /// The key was deleted (or its lease ran out).
    Delete,
}

impl From<etcd_client::EventType> for RawEventKind {
    fn from(t: etcd_client::EventType) -> Self {
        match t {
            etcd_client::EventType::Put => RawEventKind::Put,
            etcd_client::EventType::Delete => RawEventKind::Delete,
        }
    }
}

/// A revision as etcd sends it (an `i64`); a negative one, which no honest server sends,
/// reads as 0, which every cursor is past.
pub fn revision(r: i64) -> Revision {
    Revision::try_from(r).unwrap_or(0)
}

/// An entry from an etcd key-value whose lease expires at `expires_at` (if known). A key
/// that is not UTF-8 is shown lossily: it is not a subnet key either way, and the lease
/// table skips it. A key with a lease whose expiry could not be had still expires: it
/// says `now` rather than look like a reservation.
pub fn to_entry(kv: &RawKv, expires_at: Option<Timestamp>, now: Timestamp) -> Entry {
    Entry {
        key: String::from_utf8_lossy(&kv.key).into_owned(),
        value: kv.value.clone(),
        create_revision: revision(kv.create_revision),
        mod_revision: revision(kv.mod_revision),
        expires_at: (kv.lease != 0).then(|| expires_at.unwrap_or(now)),
    }
}

/// The events of one response that a watch whose cursor is `next` returns: those at or
/// after the cursor, the cursor moving with each. Events of one revision (a transaction)
/// all pass; an event at a revision lower than one already taken, which only a
/// misbehaving server sends, is dropped, so that the watch never goes back in time nor
/// returns a change twice. The indices are into `events`.
pub fn fresh_events(next: Revision, events: &[(RawEventKind, RawKv)]) -> Vec<usize> {
    let mut floor = next;
    let mut fresh = Vec::new();
    for (i, (_, kv)) in events.iter().enumerate() {
        let rev = revision(kv.mod_revision);
        if rev >= floor {
            floor = rev;
            fresh.push(i);
        }
    }
    fresh
}

/// The expiry a weft lease ID records, if `id` is one and a plausible one at `now` (see
/// `lease_id`): such a lease's expiry needs no round trip to etcd.
pub fn expiry_in_id(id: i64, now: Timestamp) -> Option<Timestamp> {
    super::lease_id::decode_plausible(id, now)
}

/// The ID weft grants a lease expiring at `expires_at` with, `random` telling apart
/// grants of one second (see `lease_id`); `None` for an expiry out of its range.
pub fn weft_lease_id(expires_at: Timestamp, random: u32) -> Option<i64> {
    super::lease_id::encode(expires_at, random)
}

/// The lease IDs whose expiry the fresh puts of `events` need (see [`fresh_events`]).
pub fn leases_wanted(next: Revision, events: &[(RawEventKind, RawKv)]) -> Vec<i64> {
    fresh_events(next, events)
        .into_iter()
        .filter(|i| events[*i].0 == RawEventKind::Put)
        .map(|i| events[i].1.lease)
        .filter(|id| *id != 0)
        .collect()
}

/// The watch events of one response for a watch whose cursor is `next`, given the
/// expiries of the leases involved, and the cursor after them: in order, each at a
/// revision at or after the one before, none before `next`.
pub fn watch_events(
    next: Revision,
    events: &[(RawEventKind, RawKv)],
    expiries: &BTreeMap<i64, Timestamp>,
    now: Timestamp,
) -> (Vec<WatchEvent>, Revision) {
    let mut cursor = next;
    let mut out = Vec::new();
    for i in fresh_events(next, events) {
        let (kind, kv) = &events[i];
        let event = match kind {
            RawEventKind::Put => {
                WatchEvent::Put(to_entry(kv, expiries.get(&kv.lease).copied(), now))
            }
            RawEventKind::Delete => WatchEvent::Delete {
                key: String::from_utf8_lossy(&kv.key).into_owned(),
                revision: revision(kv.mod_revision),
            },
        };
        cursor = event.revision().saturating_add(1);
        out.push(event);
    }
    (out, cursor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, rev: i64, lease: i64) -> RawKv {
        RawKv {
            key: key.as_bytes().to_vec(),
            value: b"v".to_vec(),
            create_revision: rev,
            mod_revision: rev,
            lease,
        }
    }

    const NOW: Timestamp = Timestamp::from_millis(1_000);

    #[test]
    fn events_before_the_cursor_or_going_back_are_dropped_and_a_transaction_passes() {
        let events = [
            (RawEventKind::Put, kv("/a", 4, 0)),
            (RawEventKind::Put, kv("/b", 5, 0)),
            (RawEventKind::Delete, kv("/c", 5, 0)),
            (RawEventKind::Put, kv("/old", 3, 0)),
            (RawEventKind::Put, kv("/d", 7, 9)),
        ];
        let expiries = BTreeMap::from([(9, Timestamp::from_millis(5_000))]);
        let (out, cursor) = watch_events(5, &events, &expiries, NOW);
        let revs: Vec<_> = out
            .iter()
            .map(|e| (e.key().to_string(), e.revision()))
            .collect();
        assert_eq!(revs, [("/b".into(), 5), ("/c".into(), 5), ("/d".into(), 7)]);
        assert_eq!(cursor, 8);
        let WatchEvent::Put(d) = &out[2] else {
            panic!("a put")
        };
        assert_eq!(d.expires_at, Some(Timestamp::from_millis(5_000)));
        assert_eq!(leases_wanted(5, &events), [9]);
    }

    #[test]
    fn a_lease_of_unknown_expiry_expires_now_and_a_negative_revision_is_never_fresh() {
        let (out, cursor) = watch_events(
            1,
            &[(RawEventKind::Put, kv("/a", -3, 0))],
            &BTreeMap::new(),
            NOW,
        );
        assert!(out.is_empty());
        assert_eq!(cursor, 1);
        assert_eq!(to_entry(&kv("/a", 2, 77), None, NOW).expires_at, Some(NOW));
        assert_eq!(to_entry(&kv("/a", 2, 0), None, NOW).expires_at, None);
    }
}
