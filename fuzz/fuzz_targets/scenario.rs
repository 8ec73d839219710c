//! The scenario parser and validator (`weft sim`, `weft lab play`): any text is a
//! scenario or an error naming a line and column inside the text, never a panic; an
//! accepted scenario's network config is usable or a clear error.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weft_sim::scenario;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match scenario::parse("fuzz.toml", text) {
        Ok(s) => {
            if let Ok(config) = s.network.network_config() {
                assert!(config.ipv4_space().is_some() || config.ipv6_space().is_some());
            }
            let _ = s.network.config_json();
        }
        Err(e) => {
            assert_eq!(e.file, "fuzz.toml");
            let lines = text.matches('\n').count() + 1;
            assert!(
                e.line >= 1 && e.line <= lines,
                "line {} of {lines}: {e}",
                e.line
            );
            assert!(e.column >= 1, "{e}");
            assert!(!e.message.is_empty());
        }
    }
});
