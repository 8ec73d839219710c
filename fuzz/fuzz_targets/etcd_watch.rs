//! etcd watch payloads as the etcd store decodes them: the events of a response (keys,
//! values, revisions and lease IDs that any etcd client or a misbehaving server chose)
//! become watch events that never go back before the cursor or before each other, each
//! put carrying its key (lossily, when not UTF-8), its value and its lease's expiry (a
//! weft lease ID's own, else the one etcd gave, else now); the events then go through a
//! node's lease table. Nothing panics.
#![no_main]
use std::collections::BTreeMap;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use weft_core::lease_table::LeaseTable;
use weft_core::store::{Listing, WatchEvent};
use weft_core::Timestamp;
use weft_stores::etcd::decode::{self, RawEventKind, RawKv};

const PREFIX: &str = "/coreos.com/network/subnets/";

#[derive(Debug, Arbitrary)]
enum Key {
    Subnet(u8, u8),
    Raw(Vec<u8>),
}

#[derive(Debug, Arbitrary)]
enum Value {
    Lease([u8; 4]),
    Raw(Vec<u8>),
}

#[derive(Debug, Arbitrary)]
enum LeaseId {
    None,
    /// One weft granted, expiring this many seconds from now (before or after).
    Weft(i32, u32),
    /// Any other: etcd's expiry for it, if it answered (its TTL in seconds).
    Foreign(i64, Option<i64>),
}

#[derive(Debug, Arbitrary)]
struct Event {
    put: bool,
    key: Key,
    value: Value,
    create_revision: i64,
    mod_revision: i64,
    lease: LeaseId,
}

#[derive(Debug, Arbitrary)]
struct Input {
    next: u64,
    now_s: u32,
    events: Vec<Event>,
}

fuzz_target!(|input: Input| {
    // 2023 onwards: where weft's lease IDs can record an expiry.
    let now = Timestamp::from_millis((1_700_000_000 + u64::from(input.now_s)) * 1000);
    let mut etcd_ttls = BTreeMap::new();
    let raw: Vec<(RawEventKind, RawKv)> = input
        .events
        .iter()
        .take(64)
        .map(|e| {
            let key = match &e.key {
                Key::Subnet(a, b) => format!("{PREFIX}10.5.{a}.0-{}", b % 33).into_bytes(),
                Key::Raw(bytes) => bytes.clone(),
            };
            let value = match &e.value {
                Value::Lease(ip) => format!(
                    r#"{{"PublicIP":"{}","BackendType":"udp"}}"#,
                    std::net::Ipv4Addr::from(*ip)
                )
                .into_bytes(),
                Value::Raw(bytes) => bytes.clone(),
            };
            let lease = match e.lease {
                LeaseId::None => 0,
                LeaseId::Weft(secs, random) => {
                    let at = Timestamp::from_millis(
                        now.as_millis()
                            .saturating_add_signed(i64::from(secs) * 1000),
                    );
                    decode::weft_lease_id(at, random).unwrap_or(0)
                }
                LeaseId::Foreign(id, ttl) => {
                    if let Some(ttl) = ttl {
                        etcd_ttls.insert(id, ttl);
                    }
                    id
                }
            };
            let kind = if e.put {
                RawEventKind::Put
            } else {
                RawEventKind::Delete
            };
            let kv = RawKv {
                key,
                value,
                create_revision: e.create_revision,
                mod_revision: e.mod_revision,
                lease,
            };
            (kind, kv)
        })
        .collect();

    // What the store's `expiries` does: the ID's own expiry, else etcd's answer.
    let mut expiries = BTreeMap::new();
    for id in decode::leases_wanted(input.next, &raw) {
        assert_ne!(id, 0);
        let at = match decode::expiry_in_id(id, now) {
            Some(at) => at,
            None => match etcd_ttls.get(&id) {
                Some(ttl) => now + Duration::from_secs(u64::try_from(*ttl).unwrap_or(0)),
                None => continue,
            },
        };
        expiries.insert(id, at);
    }
    let (events, cursor) = decode::watch_events(input.next, &raw, &expiries, now);

    // The reference: every event at or after the cursor and the one before it.
    let mut floor = input.next;
    let mut want = Vec::new();
    for (kind, kv) in &raw {
        let rev = u64::try_from(kv.mod_revision).unwrap_or(0);
        if rev >= floor {
            floor = rev;
            want.push((kind, kv, rev));
        }
    }
    assert_eq!(events.len(), want.len());
    for (event, (kind, kv, rev)) in events.iter().zip(&want) {
        assert_eq!(event.revision(), *rev);
        assert_eq!(event.key(), String::from_utf8_lossy(&kv.key));
        match (event, kind) {
            (WatchEvent::Put(entry), RawEventKind::Put) => {
                assert_eq!(entry.value, kv.value);
                assert_eq!(entry.mod_revision, *rev);
                let expected =
                    (kv.lease != 0).then(|| expiries.get(&kv.lease).copied().unwrap_or(now));
                assert_eq!(entry.expires_at, expected);
            }
            (WatchEvent::Delete { .. }, RawEventKind::Delete) => {}
            _ => panic!("{event:?} is not a {kind:?}"),
        }
    }
    assert_eq!(
        cursor,
        events.last().map_or(input.next, |e| e.revision() + 1)
    );

    // The node's lease table takes whatever came.
    let mut table = LeaseTable::new(PREFIX).within(Some("10.5.0.0/16".parse().expect("net")), None);
    let _ = table.replace(&Listing {
        entries: Vec::new(),
        revision: input.next.saturating_sub(1),
    });
    for event in &events {
        let _ = table.apply(event);
    }
    let puts = events
        .iter()
        .filter(|e| matches!(e, WatchEvent::Put(_)))
        .count();
    assert!(table.len() <= puts);
});
