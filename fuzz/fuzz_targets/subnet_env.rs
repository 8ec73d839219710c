//! The subnet.env parser: never panics, and rendering what it read parses back equal.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weft_core::subnet_env::SubnetEnv;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(env) = SubnetEnv::parse(text) {
            let rendered = env.render();
            let again = SubnetEnv::parse(&rendered).expect("rendered file parses");
            assert_eq!(again.render(), rendered);
        }
    }
});
