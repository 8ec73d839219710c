//! The byte formats of the sled trees (see `record`), for the fuzz target
//! `fuzz/fuzz_targets/sled_record.rs`: records on disk are input like any other, and a
//! damaged one must be an error, never a panic. Not an API.

use weft_core::store::{Entry, Revision, WatchEvent};
use weft_core::Timestamp;

use super::record;

/// Decodes an `entries` record of `key`.
pub fn decode_entry(key: &str, bytes: &[u8]) -> Result<Entry, String> {
    record::decode_entry(key, bytes).map_err(|e| e.to_string())
}

/// Encodes an `entries` record.
pub fn encode_entry(entry: &Entry) -> Vec<u8> {
    record::encode_entry(entry)
}

/// Decodes an `events` record stored under `revision`.
pub fn decode_event(revision: Revision, bytes: &[u8]) -> Result<WatchEvent, String> {
    record::decode_event(revision, bytes).map_err(|e| e.to_string())
}

/// Encodes an `events` record.
pub fn encode_event(event: &WatchEvent) -> Vec<u8> {
    record::encode_event(event)
}

/// Decodes an `expiries` key.
pub fn decode_expiry_key(bytes: &[u8]) -> Result<(Timestamp, String), String> {
    record::decode_expiry_key(bytes).map_err(|e| e.to_string())
}

/// Encodes an `expiries` key.
pub fn expiry_key(at: Timestamp, key: &str) -> Vec<u8> {
    record::expiry_key(at, key)
}

/// Decodes a `meta` number (a revision).
pub fn decode_u64(bytes: &[u8]) -> Result<u64, String> {
    record::decode_u64(bytes).map_err(|e| e.to_string())
}
