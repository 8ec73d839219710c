//! The lease key parser: never panics, and what it accepts prints back as it read.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weft_core::lease::LeaseKey;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(key) = text.parse::<LeaseKey>() {
            let again: LeaseKey = key.to_string().parse().expect("a printed key parses");
            assert_eq!(again, key);
        }
    }
});
