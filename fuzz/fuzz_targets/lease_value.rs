//! The lease value decoder: never panics on bytes someone else wrote into the store, and
//! what it accepts re-encodes to something that decodes to the same attributes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weft_core::lease::LeaseAttrs;

fuzz_target!(|data: &[u8]| {
    if let Ok(attrs) = LeaseAttrs::decode("fuzz", data) {
        let again = LeaseAttrs::decode("fuzz", &attrs.encode()).expect("re-encoded value decodes");
        assert_eq!(again, attrs);
    }
});
