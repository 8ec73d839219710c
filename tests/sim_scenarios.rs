//! Every scenario in scenarios/ runs in the simulator and its trace is checked against
//! a snapshot (tests/snapshots/); runs are deterministic per seed; a failed run's
//! event file replays to the same failure without the seed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;

use weft_sim::record::EventFile;
use weft_sim::{Outcome, RunOptions};

fn run(path: &str, seed: Option<u64>) -> Outcome {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    let (scenario, source) = weft_sim::scenario::load(&full).expect("scenario loads");
    weft_sim::run(path, &scenario, &source, &RunOptions { seed, replay: None })
}

/// One snapshot test per scenario file, and the list of the files they cover.
macro_rules! scenarios {
    ($($name:ident => $file:literal),+ $(,)?) => {
        $(
            #[test]
            fn $name() {
                let outcome = run(concat!("scenarios/", $file), None);
                insta::assert_snapshot!(stringify!($name), outcome.trace);
                assert!(outcome.passed(), "{:?}", outcome.failure);
            }
        )+
        /// Every file a test above runs.
        const COVERED: &[&str] = &[$($file),+];
    };
}

scenarios! {
    join_and_ping => "01-join-and-ping.toml",
    restart_reclaims_subnet => "02-restart-reclaims-subnet.toml",
    partition_past_ttl => "03-partition-past-ttl.toml",
    store_outage_across_renewal => "04-store-outage-across-renewal.toml",
    subnet_exhaustion => "05-subnet-exhaustion.toml",
    reservation => "06-reservation.toml",
    mass_join_100 => "07-mass-join-100.toml",
    tcp_under_loss => "08-tcp-under-loss.toml",
    one_way_partition => "09-one-way-partition.toml",
    crash_during_acquisition => "10-crash-during-acquisition.toml",
    clock_jump => "11-clock-jump.toml",
    operator_deletes_lease => "12-operator-deletes-lease.toml",
    store_outage_past_ttl => "13-store-outage-past-ttl.toml",
    chaos => "14-chaos.toml",
    create_answer_lost => "15-create-answer-lost.toml",
    delete_while_cut_off => "16-delete-while-cut-off.toml",
    dual_stack => "17-dual-stack.toml",
    subnet_range_and_compaction => "19-subnet-range-and-compaction.toml",
    spoofed_inner_source => "20-spoofed-inner-source.toml",
    garbage_under_subnets => "21-garbage-under-subnets.toml",
    public_ip_changes => "22-public-ip-changes.toml",
    duplicate_public_ip => "23-duplicate-public-ip.toml",
    network_config_changes => "24-network-config-changes.toml",
    store_back_wakes_renewal => "25-store-back-wakes-renewal.toml",
    dual_stack_foreign_pairing => "26-dual-stack-foreign-pairing.toml",
    subnet_range_narrowed => "27-subnet-range-narrowed.toml",
    takeover_seen_in_a_listing => "28-takeover-seen-in-a-listing.toml",
    reservation_moved_while_cut_off => "29-reservation-moved-while-cut-off.toml",
    ipv6_only => "30-ipv6-only.toml",
}

/// Scenarios too large for a snapshot of their whole trace (tens of thousands of
/// lines): the snapshot holds the trace's length, a digest of it (so that any change
/// shows, and determinism is checked like the others'), and its check lines.
macro_rules! large_scenarios {
    ($($name:ident => $file:literal),+ $(,)?) => {
        $(
            #[test]
            fn $name() {
                let outcome = run(concat!("scenarios/", $file), None);
                insta::assert_snapshot!(stringify!($name), digest(&outcome.trace));
                assert!(outcome.passed(), "{:?}", outcome.failure);
            }
        )+
        /// Every file a test above runs.
        const COVERED_LARGE: &[&str] = &[$($file),+];
    };
}

large_scenarios! {
    mass_join_10000 => "18-mass-join-10000.toml",
}

/// A trace's length, its FNV-1a digest and its check and end lines.
fn digest(trace: &str) -> String {
    let hash = trace.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut out = format!("{} lines, FNV-1a {hash:016x}\n", trace.lines().count());
    for line in trace.lines() {
        let what = line.split_whitespace().nth(1);
        if what == Some("check") || (what == Some("end") && !line.contains(": holds")) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The scenario files in scenarios/ (walked, not counted by hand) and the files the
/// tests above run are the same set: a new file without a test, or a test whose file
/// was renamed or removed, fails here by name.
#[test]
fn every_scenario_file_has_a_test_and_every_test_a_file() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut on_disk = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).expect("read scenarios/") {
        let path = entry.expect("a directory entry").path();
        if path.extension().is_some_and(|x| x == "toml") {
            let name = path.file_name().expect("a file name").to_string_lossy();
            on_disk.insert(name.into_owned());
        }
    }
    let all: Vec<&str> = COVERED.iter().chain(COVERED_LARGE).copied().collect();
    let covered: BTreeSet<String> = all.iter().map(|f| f.to_string()).collect();
    assert_eq!(all.len(), covered.len(), "a file is listed twice");
    let untested: Vec<_> = on_disk.difference(&covered).collect();
    let missing: Vec<_> = covered.difference(&on_disk).collect();
    assert!(
        untested.is_empty(),
        "add a line to scenarios! for {untested:?}"
    );
    assert!(
        missing.is_empty(),
        "scenarios! lists files not in scenarios/: {missing:?}"
    );
}

#[test]
fn one_seed_one_trace_another_seed_another_trace() {
    let file = "scenarios/08-tcp-under-loss.toml";
    let a = run(file, Some(7));
    let b = run(file, Some(7));
    assert_eq!(a.trace, b.trace, "same seed, same bytes");
    let c = run(file, Some(8));
    // The first line names the seed, so whole traces always differ; the decisions
    // (every line after it) must differ too.
    let (head_a, body_a) = a.trace.split_once('\n').expect("a trace of several lines");
    let (head_c, body_c) = c.trace.split_once('\n').expect("a trace of several lines");
    assert!(
        head_a.ends_with("seed 7") && head_c.ends_with("seed 8"),
        "{head_a} / {head_c}"
    );
    assert_ne!(body_a, body_c, "another seed, other decisions");
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
