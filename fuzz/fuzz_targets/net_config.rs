//! The network config parser: never panics, and an accepted config has a usable range.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weft_core::NetworkConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(config) = NetworkConfig::parse(text) {
            assert!(config.ipv4_space().is_some() || config.ipv6_space().is_some());
        }
    }
});
