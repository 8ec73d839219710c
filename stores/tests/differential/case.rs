//! What one case is: a sequence of store operations over a few colliding keys, and the
//! watch whose events are compared.

use std::fmt;
use std::time::Duration;

use proptest::prelude::*;

/// The keys of a case, relative to its root: two prefixes, so that listings and watches
/// of one leave out the other, and `ab`, which the prefix `a` matches and `a/` does not.
pub const KEYS: [&str; 6] = ["a/1", "a/2", "a/3", "b/1", "b/2", "ab"];

/// The prefixes listed and watched, relative to the case's root (`""` is the root).
pub const PREFIXES: [&str; 4] = ["", "a/", "a", "b/"];

/// A key of [`KEYS`], or the empty key, which every backend must refuse as invalid.
#[derive(Debug, Clone, Copy)]
pub enum Key {
    Named(usize),
    Empty,
}

/// A TTL: none (a reservation), the i-th of the backend's table of valid TTLs, or one
/// that every backend must refuse.
#[derive(Debug, Clone, Copy)]
pub enum Ttl {
    None,
    Valid(usize),
    Zero,
    SubMilli,
}

impl Ttl {
    pub fn resolve(self, table: &[Duration]) -> Option<Duration> {
        match self {
            Ttl::None => None,
            Ttl::Valid(i) => Some(table[i % table.len()]),
            Ttl::Zero => Some(Duration::ZERO),
            Ttl::SubMilli => Some(Duration::from_micros(500)),
        }
    }
}

/// Which `create_revision` a renewal claims, decided from the model's state when the
/// renewal runs and translated to the backend's revisions.
#[derive(Debug, Clone, Copy)]
pub enum Rev {
    /// The key's live incarnation (or, when it has none, as [`Rev::Stale`]).
    Current,
    /// An earlier incarnation of the same key (or, when it has none, as [`Rev::Foreign`]).
    Stale,
    /// An incarnation of another key (or, when there is none, as [`Rev::Future`]).
    Foreign,
    /// Revision 0, which no incarnation ever has.
    Zero,
    /// A revision the store has not reached yet.
    Future,
}

/// A value: arbitrary bytes, or lease JSON as weft and flannel write it.
#[derive(Clone)]
pub struct Value(pub Vec<u8>);

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b\"{}\"", self.0.escape_ascii())
    }
}

/// One step of a case.
#[derive(Debug, Clone)]
pub enum Op {
    Get(Key),
    List(usize),
    Create {
        key: Key,
        value: Value,
        ttl: Ttl,
    },
    Renew {
        key: Key,
        rev: Rev,
        value: Value,
        ttl: Ttl,
    },
    Put {
        key: Key,
        value: Value,
    },
    Delete(Key),
    /// Let time pass by the i-th of the backend's table of steps (see `run::Time`).
    Advance(usize),
}

/// One case: the steps, the prefix watched (an index into [`PREFIXES`]), and where in
/// the case's history the second, replaying watch starts (a share of 256).
#[derive(Debug, Clone)]
pub struct Case {
    pub ops: Vec<Op>,
    pub watch: usize,
    pub replay_from: u8,
}

const LEASES: [&[u8]; 3] = [
    br#"{"PublicIP":"192.0.2.1"}"#,
    br#"{"PublicIP":"192.0.2.2","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"ee:dd:0b:59:5b:58"}}"#,
    br#"{"PublicIP":"192.0.2.3","BackendType":"udp"}"#,
];

fn key() -> impl Strategy<Value = Key> {
    prop_oneof![
        30 => (0..KEYS.len()).prop_map(Key::Named),
        1 => Just(Key::Empty),
    ]
}

/// Keys for `get`, the empty one included: every store refuses it as invalid.
fn get_key() -> impl Strategy<Value = Key> {
    key()
}

fn ttl() -> impl Strategy<Value = Ttl> {
    prop_oneof![
        6 => Just(Ttl::None),
        20 => (0..16usize).prop_map(Ttl::Valid),
        1 => Just(Ttl::Zero),
        1 => Just(Ttl::SubMilli),
    ]
}

fn rev() -> impl Strategy<Value = Rev> {
    prop_oneof![
        8 => Just(Rev::Current),
        3 => Just(Rev::Stale),
        1 => Just(Rev::Foreign),
        1 => Just(Rev::Zero),
        1 => Just(Rev::Future),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => prop::collection::vec(any::<u8>(), 0..12).prop_map(Value),
        1 => prop::sample::select(&LEASES[..]).prop_map(|v| Value(v.to_vec())),
    ]
}

/// Any step; `advance` says whether time may pass.
pub fn op(advance: bool) -> impl Strategy<Value = Op> {
    let advance_weight = if advance { 3 } else { 0 };
    prop_oneof![
        2 => get_key().prop_map(Op::Get),
        2 => (0..PREFIXES.len()).prop_map(Op::List),
        5 => (key(), value(), ttl()).prop_map(|(key, value, ttl)| Op::Create { key, value, ttl }),
        5 => (key(), rev(), value(), ttl())
            .prop_map(|(key, rev, value, ttl)| Op::Renew { key, rev, value, ttl }),
        2 => (key(), value()).prop_map(|(key, value)| Op::Put { key, value }),
        2 => key().prop_map(Op::Delete),
        advance_weight => (0..16usize).prop_map(Op::Advance),
    ]
}

/// Up to `len` steps of any kind.
pub fn case(len: usize) -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(op(true), 1..len),
        0..PREFIXES.len(),
        any::<u8>(),
    )
        .prop_map(|(ops, watch, replay_from)| Case {
            ops,
            watch,
            replay_from,
        })
}

/// Creates, steps without time passing, then one wait for the short TTLs to run out,
/// then more steps: the etcd expiry cases, where waiting costs real seconds, so each
/// starts with creates to have leases that run out.
pub fn expiry_case(len: usize) -> impl Strategy<Value = Case> {
    let create = (0..KEYS.len(), value(), 0..16usize).prop_map(|(key, value, ttl)| Op::Create {
        key: Key::Named(key),
        value,
        ttl: Ttl::Valid(ttl),
    });
    (
        prop::collection::vec(create, 1..KEYS.len()),
        prop::collection::vec(op(false), 0..len),
        prop::collection::vec(op(false), 0..len),
        0..PREFIXES.len(),
        any::<u8>(),
    )
        .prop_map(|(mut ops, before, after, watch, replay_from)| {
            ops.extend(before);
            ops.push(Op::Advance(0));
            ops.extend(after);
            Case {
                ops,
                watch,
                replay_from,
            }
        })
}
