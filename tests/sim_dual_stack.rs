//! The dual-stack scenario over many seeds: no two leases ever share an IPv4 or an IPv6
//! subnet, whatever the order in which concurrent joiners reach the store. Before the
//! allocator paired each IPv6 subnet with its IPv4 one, seeds 31, 56 and 79 (of 0..300)
//! broke the overlap invariants: a dual-stack lease is one key, and create-if-absent
//! protected only the pair.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use weft_sim::RunOptions;

#[test]
fn no_seed_of_the_dual_stack_scenario_overlaps_subnets() {
    let path = "scenarios/17-dual-stack.toml";
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    let (scenario, source) = weft_sim::scenario::load(&full).expect("scenario loads");
    let failed: Vec<String> = (0..100)
        .filter_map(|seed| {
            let opts = RunOptions {
                seed: Some(seed),
                replay: None,
            };
            let outcome = weft_sim::run(path, &scenario, &source, &opts);
            outcome
                .failure
                .map(|f| format!("seed {seed}: {}", f.describe()))
        })
        .collect();
    assert!(failed.is_empty(), "{failed:#?}");
}
