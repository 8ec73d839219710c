//! The event-file parser (`weft sim replay FILE`): any text is an event file or an
//! error, never a panic; what it accepts renders back to a file that parses equal, the
//! replay finds every decision it holds, and the scenario inside goes through the
//! scenario parser.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weft_sim::record::{Decision, EventFile, Replay};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(file) = EventFile::parse(text) else {
        return;
    };
    let rendered = file.render();
    let again = EventFile::parse(&rendered).expect("a rendered event file parses");
    assert_eq!(again, file, "{rendered}");
    let replay = Replay::new(&file);
    for (i, d) in file.decisions.iter().enumerate() {
        // The last decision for a node start or a datagram is the one replayed.
        let later = &file.decisions[i + 1..];
        match d {
            Decision::NodeSeed {
                node,
                incarnation,
                seed,
                ..
            } => {
                let replaced = later.iter().any(|l| {
                    matches!(l, Decision::NodeSeed { node: n, incarnation: k, .. } if n == node && k == incarnation)
                });
                if !replaced {
                    assert_eq!(replay.node_seed(node, *incarnation), Ok(*seed));
                }
            }
            Decision::Packet {
                n, from, to, fate, ..
            } => {
                let replaced = later
                    .iter()
                    .any(|l| matches!(l, Decision::Packet { n: m, .. } if m == n));
                if !replaced {
                    assert_eq!(replay.packet(*n, *from, *to), Ok(*fate));
                }
            }
            Decision::Step { .. } => {}
        }
    }
    let _ = weft_sim::scenario::parse("fuzz.events", &file.scenario);
});
