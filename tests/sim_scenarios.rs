//! Every scenario in scenarios/ runs in the simulator and its trace is checked against
//! a snapshot (tests/snapshots/); runs are deterministic per seed; a failed run's
//! event file replays to the same failure without the seed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use weft_sim::record::EventFile;
use weft_sim::{Outcome, RunOptions};

fn run(path: &str, seed: Option<u64>) -> Outcome {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    let (scenario, source) = weft_sim::scenario::load(&full).expect("scenario loads");
    weft_sim::run(path, &scenario, &source, &RunOptions { seed, replay: None })
}

macro_rules! scenario {
    ($name:ident, $file:literal) => {
        #[test]
        fn $name() {
            let outcome = run(concat!("scenarios/", $file), None);
            insta::assert_snapshot!(stringify!($name), outcome.trace);
            assert!(outcome.passed(), "{:?}", outcome.failure);
        }
    };
}

scenario!(join_and_ping, "01-join-and-ping.toml");
scenario!(restart_reclaims_subnet, "02-restart-reclaims-subnet.toml");
scenario!(partition_past_ttl, "03-partition-past-ttl.toml");
scenario!(
    store_outage_across_renewal,
    "04-store-outage-across-renewal.toml"
);
scenario!(subnet_exhaustion, "05-subnet-exhaustion.toml");
scenario!(reservation, "06-reservation.toml");
scenario!(mass_join_100, "07-mass-join-100.toml");
scenario!(tcp_under_loss, "08-tcp-under-loss.toml");
scenario!(one_way_partition, "09-one-way-partition.toml");
scenario!(crash_during_acquisition, "10-crash-during-acquisition.toml");
scenario!(clock_jump, "11-clock-jump.toml");
scenario!(operator_deletes_lease, "12-operator-deletes-lease.toml");
scenario!(store_outage_past_ttl, "13-store-outage-past-ttl.toml");
scenario!(chaos, "14-chaos.toml");
scenario!(create_answer_lost, "15-create-answer-lost.toml");
scenario!(delete_while_cut_off, "16-delete-while-cut-off.toml");
scenario!(dual_stack, "17-dual-stack.toml");

#[test]
fn every_scenario_file_has_a_test() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let files = std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "toml")
        })
        .count();
    assert_eq!(files, 17, "add a scenario! line for the new file");
}

#[test]
fn one_seed_one_trace_another_seed_another_trace() {
    let file = "scenarios/08-tcp-under-loss.toml";
    let a = run(file, Some(7));
    let b = run(file, Some(7));
    assert_eq!(a.trace, b.trace, "same seed, same bytes");
    let c = run(file, Some(8));
    assert_ne!(a.trace, c.trace, "another seed, other decisions");
    assert!(a.passed() && c.passed());
}

#[test]
fn an_event_file_replays_the_failure_without_the_seed() {
    let path = "tests/fixtures/failing/lossy-ping-too-strict.toml";
    let failed = run(path, Some(3));
    let failure = failed.failure.clone().expect("the fixture fails");
    let text = failed
        .event_file
        .as_ref()
        .expect("a failed run has an event file")
        .render();
    assert!(
        text.contains(" packet 1 192.0.2."),
        "it lists datagram fates"
    );

    let file = EventFile::parse(&text).expect("the event file parses back");
    assert_eq!(file, *failed.event_file.as_ref().unwrap());
    let scenario = weft_sim::scenario::parse("replayed", &file.scenario).unwrap();
    let replayed = weft_sim::run(
        path,
        &scenario,
        &file.scenario,
        &RunOptions {
            seed: Some(12345), // ignored: decisions come from the file
            replay: Some(file.clone()),
        },
    );
    assert_eq!(replayed.failure, Some(failure));
    // The same run, but for the first line, which says where decisions came from.
    let body = |t: &str| t.lines().skip(1).collect::<Vec<_>>().join("\n");
    assert_eq!(body(&replayed.trace), body(&failed.trace));
}
