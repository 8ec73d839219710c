//! The sled backend's records as read back from disk: any bytes are a record or an
//! error naming what is wrong, never a panic, and what decodes re-encodes to exactly the
//! bytes it came from (one layout per record, so nothing read is silently changed).
//! The first byte picks the tree: entries, events, expiries, meta.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weft_stores::sled_store::codec;

const KEY: &str = "/coreos.com/network/subnets/10.5.1.0-24";

fuzz_target!(|data: &[u8]| {
    let Some((tree, rest)) = data.split_first() else {
        return;
    };
    match tree % 4 {
        0 => {
            if let Ok(entry) = codec::decode_entry(KEY, rest) {
                assert_eq!(entry.key, KEY);
                assert!(entry.create_revision >= 1 && entry.create_revision <= entry.mod_revision);
                assert_eq!(codec::encode_entry(&entry), rest);
            }
        }
        1 => {
            if rest.len() < 8 {
                return;
            }
            let (rev, bytes) = rest.split_at(8);
            let rev = codec::decode_u64(rev).expect("8 bytes are a u64");
            if let Ok(event) = codec::decode_event(rev, bytes) {
                assert_eq!(event.revision(), rev);
                assert_eq!(codec::encode_event(&event), bytes);
                assert_eq!(
                    codec::decode_event(rev, &codec::encode_event(&event)),
                    Ok(event)
                );
            }
        }
        2 => {
            if let Ok((at, key)) = codec::decode_expiry_key(rest) {
                assert_eq!(codec::expiry_key(at, &key), rest);
            }
        }
        _ => assert_eq!(codec::decode_u64(rest).is_ok(), rest.len() == 8),
    }
});
