//! The byte formats of the sled backend's trees.
//!
//! Small and explicit rather than serde, so that the layout on disk is written down here
//! and a damaged record is a decoding error naming what is wrong, never a panic. Numbers
//! are big-endian, so that sled's byte order of keys is their numeric order.
//!
//! - `entries`: key bytes -> entry record:
//!   `FORMAT, create_revision u64, mod_revision u64, 0 | 1 expires_at u64, value...`
//! - `expiries`: `expires_at u64, key bytes` -> empty: the entries with a TTL in expiry order.
//! - `events`: `revision u64` -> `FORMAT, PUT, key_len u32, key, entry record` or
//!   `FORMAT, DELETE, key_len u32, key`.
//! - `meta`: `revision`, `compact_revision` -> u64; `format` -> FORMAT.

use weft_core::store::{Entry, Revision, WatchEvent};
use weft_core::Timestamp;

/// The version of every record layout above; bumped on any change.
pub(crate) const FORMAT: u8 = 1;

const PUT: u8 = 1;
const DELETE: u8 = 2;

/// Why a stored record could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Corrupt(String);

fn corrupt(what: impl Into<String>) -> Corrupt {
    Corrupt(what.into())
}

pub(crate) fn encode_u64(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

pub(crate) fn decode_u64(bytes: &[u8]) -> Result<u64, Corrupt> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| {
        corrupt(format!(
            "{} bytes where a u64 (8 bytes) was expected",
            bytes.len()
        ))
    })?;
    Ok(u64::from_be_bytes(arr))
}

/// Reads a u64 at `at`, returning it and the rest.
fn take_u64<'a>(bytes: &'a [u8], what: &str) -> Result<(u64, &'a [u8]), Corrupt> {
    if bytes.len() < 8 {
        return Err(corrupt(format!("truncated before {what}")));
    }
    let (n, rest) = bytes.split_at(8);
    Ok((decode_u64(n)?, rest))
}

fn take_u8<'a>(bytes: &'a [u8], what: &str) -> Result<(u8, &'a [u8]), Corrupt> {
    match bytes.split_first() {
        Some((b, rest)) => Ok((*b, rest)),
        None => Err(corrupt(format!("truncated before {what}"))),
    }
}

/// An entry's record, without its key (which is the tree key).
pub(crate) fn encode_entry(entry: &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(26 + entry.value.len());
    out.push(FORMAT);
    out.extend_from_slice(&encode_u64(entry.create_revision));
    out.extend_from_slice(&encode_u64(entry.mod_revision));
    match entry.expires_at {
        None => out.push(0),
        Some(at) => {
            out.push(1);
            out.extend_from_slice(&encode_u64(at.as_millis()));
        }
    }
    out.extend_from_slice(&entry.value);
    out
}

pub(crate) fn decode_entry(key: &str, bytes: &[u8]) -> Result<Entry, Corrupt> {
    let (format, rest) = take_u8(bytes, "the format byte")?;
    if format != FORMAT {
        return Err(corrupt(format!(
            "record format {format}, expected {FORMAT}"
        )));
    }
    let (create_revision, rest) = take_u64(rest, "create_revision")?;
    let (mod_revision, rest) = take_u64(rest, "mod_revision")?;
    let (has_expiry, rest) = take_u8(rest, "the expiry flag")?;
    let (expires_at, value) = match has_expiry {
        0 => (None, rest),
        1 => {
            let (at, rest) = take_u64(rest, "expires_at")?;
            (Some(Timestamp::from_millis(at)), rest)
        }
        other => return Err(corrupt(format!("expiry flag {other}, expected 0 or 1"))),
    };
    if create_revision == 0 || mod_revision < create_revision {
        return Err(corrupt(format!(
            "revisions out of order: created {create_revision}, modified {mod_revision}"
        )));
    }
    Ok(Entry {
        key: key.to_string(),
        value: value.to_vec(),
        create_revision,
        mod_revision,
        expires_at,
    })
}

/// The `expiries` key of an entry that expires at `at`.
pub(crate) fn expiry_key(at: Timestamp, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + key.len());
    out.extend_from_slice(&encode_u64(at.as_millis()));
    out.extend_from_slice(key.as_bytes());
    out
}

pub(crate) fn decode_expiry_key(bytes: &[u8]) -> Result<(Timestamp, String), Corrupt> {
    let (at, key) = take_u64(bytes, "the expiry time")?;
    let key = std::str::from_utf8(key).map_err(|_| corrupt("expiry key is not UTF-8"))?;
    Ok((Timestamp::from_millis(at), key.to_string()))
}

fn push_key(out: &mut Vec<u8>, kind: u8, key: &str) {
    out.push(FORMAT);
    out.push(kind);
    // Keys longer than 4 GiB cannot reach here: sled and etcd refuse far smaller ones.
    let len = u32::try_from(key.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(key.as_bytes());
}

pub(crate) fn encode_event(event: &WatchEvent) -> Vec<u8> {
    let mut out = Vec::new();
    match event {
        WatchEvent::Put(entry) => {
            push_key(&mut out, PUT, &entry.key);
            out.extend_from_slice(&encode_entry(entry));
        }
        WatchEvent::Delete { key, .. } => push_key(&mut out, DELETE, key),
    }
    out
}

pub(crate) fn decode_event(revision: Revision, bytes: &[u8]) -> Result<WatchEvent, Corrupt> {
    let (format, rest) = take_u8(bytes, "the format byte")?;
    if format != FORMAT {
        return Err(corrupt(format!("event format {format}, expected {FORMAT}")));
    }
    let (kind, rest) = take_u8(rest, "the event kind")?;
    if rest.len() < 4 {
        return Err(corrupt("truncated before the key length"));
    }
    let (len, rest) = rest.split_at(4);
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if rest.len() < len {
        return Err(corrupt("truncated inside the key"));
    }
    let (key, rest) = rest.split_at(len);
    let key = std::str::from_utf8(key).map_err(|_| corrupt("event key is not UTF-8"))?;
    match kind {
        PUT => {
            let entry = decode_entry(key, rest)?;
            if entry.mod_revision != revision {
                return Err(corrupt(format!(
                    "event at revision {revision} holds an entry modified at {}",
                    entry.mod_revision
                )));
            }
            Ok(WatchEvent::Put(entry))
        }
        DELETE if rest.is_empty() => Ok(WatchEvent::Delete {
            key: key.to_string(),
            revision,
        }),
        DELETE => Err(corrupt("trailing bytes after a delete event")),
        other => Err(corrupt(format!(
            "event kind {other}, expected {PUT} or {DELETE}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(expires_at: Option<u64>) -> Entry {
        Entry {
            key: "/coreos.com/network/subnets/10.5.34.0-24".to_string(),
            value: br#"{"PublicIP":"192.0.2.2"}"#.to_vec(),
            create_revision: 3,
            mod_revision: 7,
            expires_at: expires_at.map(Timestamp::from_millis),
        }
    }

    #[test]
    fn entries_round_trip() {
        for e in [entry(None), entry(Some(1_700_000_000_123))] {
            assert_eq!(decode_entry(&e.key, &encode_entry(&e)), Ok(e));
        }
    }

    #[test]
    fn events_round_trip() {
        let put = WatchEvent::Put(entry(Some(5)));
        assert_eq!(decode_event(7, &encode_event(&put)), Ok(put));
        let del = WatchEvent::Delete {
            key: "/k".to_string(),
            revision: 9,
        };
        assert_eq!(decode_event(9, &encode_event(&del)), Ok(del));
    }

    #[test]
    fn expiry_keys_sort_by_time_then_key() {
        let a = expiry_key(Timestamp::from_millis(2), "/a");
        let b = expiry_key(Timestamp::from_millis(256), "/a");
        let c = expiry_key(Timestamp::from_millis(256), "/b");
        assert!(a < b && b < c);
        assert_eq!(
            decode_expiry_key(&c),
            Ok((Timestamp::from_millis(256), "/b".to_string()))
        );
    }

    #[test]
    fn every_truncation_and_garbage_is_an_error_not_a_panic() {
        let e = entry(Some(5));
        let record = encode_entry(&e);
        // Cutting inside the header must fail; cutting the value short just shortens it.
        for cut in 0..26 {
            assert!(
                decode_entry(&e.key, &record[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let event = encode_event(&WatchEvent::Put(e));
        for cut in 0..event.len() - e_value_len() {
            assert!(decode_event(7, &event[..cut]).is_err(), "cut at {cut}");
        }
        for garbage in [&b"not a record"[..], b"\x01", b"\xff\xff", b""] {
            assert!(decode_entry("/k", garbage).is_err());
            assert!(decode_event(1, garbage).is_err());
            // Any 8+ bytes of UTF-8 are a well-formed expiry key; only check it never panics.
            let _ = decode_expiry_key(garbage);
        }
        assert!(decode_event(8, &encode_event(&WatchEvent::Put(entry(None)))).is_err());
    }

    fn e_value_len() -> usize {
        entry(None).value.len()
    }
}
