//! `weft sim` as a user runs it: exit codes, the summary table, event files, replay.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn weft() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_weft"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

#[test]
fn passing_scenarios_exit_zero_with_a_summary_table() {
    let out = weft()
        .args([
            "sim",
            "run",
            "-q",
            "scenarios/01-join-and-ping.toml",
            "scenarios/09-one-way-partition.toml",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("scenario"), "{stdout}");
    assert_eq!(stdout.matches("passed").count(), 2, "{stdout}");
}

#[test]
fn a_failure_exits_non_zero_writes_an_event_file_and_replays() {
    let dir = tempfile::tempdir().unwrap();
    let out = weft()
        .args([
            "sim",
            "run",
            "tests/fixtures/failing",
            "--seeds",
            "5..7",
            "--events-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("FAILED with seed 5 at virtual time 18.000s"),
        "{stderr}"
    );
    let events = dir.path().join("lossy-ping-too-strict-seed5.events");
    assert!(events.exists(), "{stderr}");
    assert!(dir
        .path()
        .join("lossy-ping-too-strict-seed6.events")
        .exists());

    let replay = weft()
        .args(["sim", "replay"])
        .arg(&events)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&replay.stdout);
    assert_eq!(
        replay.status.code(),
        Some(1),
        "the replayed run fails again"
    );
    assert!(
        stdout.contains("replay reproduced the failure: at 18.000s: check failed"),
        "{stdout}"
    );
}

#[test]
fn a_bad_scenario_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "name = \"x\"\nduration = \"1s\"\nspeed = 3\n").unwrap();
    let out = weft().args(["sim", "run"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.toml:3:1: unknown field `speed`"),
        "{stderr}"
    );
}

/// The number after `label ` in `weft sim shrink`'s summary line, before and after.
fn shrunk(summary: &str, label: &str) -> (usize, usize) {
    let at = summary.find(&format!("{label} ")).expect(label) + label.len() + 1;
    let mut parts = summary[at..].split_whitespace();
    let before = parts.next().unwrap().parse().unwrap();
    assert_eq!(parts.next(), Some("->"));
    let after = parts.next().unwrap().trim_end_matches(',').parse().unwrap();
    (before, after)
}

#[test]
fn a_failed_run_shrinks_to_the_nodes_step_and_datagram_that_fail_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = weft()
        .args(["sim", "run", "-q", "--seed", "0", "--events-dir"])
        .arg(dir.path())
        .arg("tests/fixtures/sim-shrink-lossy.toml")
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    let events = dir.path().join("sim-shrink-lossy-seed0.events");
    let small = dir.path().join("small.events");
    let out = weft()
        .args(["sim", "shrink"])
        .arg(&events)
        .arg("-o")
        .arg(&small)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{out:?}");
    // One ping between two nodes fails when one of its datagrams is lost: the two
    // nodes, that ping, that loss; nothing else.
    assert_eq!(shrunk(&stdout, "nodes"), (4, 2), "{stdout}");
    assert_eq!(shrunk(&stdout, "steps"), (4, 1), "{stdout}");
    assert_eq!(shrunk(&stdout, "expectations"), (2, 0), "{stdout}");
    assert_eq!(shrunk(&stdout, "faulty datagrams").1, 1, "{stdout}");
    let (before, after) = shrunk(&stdout, "decisions");
    assert!(after < before, "{stdout}");
    let text = std::fs::read_to_string(&small).unwrap();
    assert_eq!(text.matches("drop loss").count(), 1, "{text}");
    // It fails the same way, replayed strictly.
    let out = weft().args(["sim", "replay"]).arg(&small).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("replay reproduced the failure: at 90.300s: ping c/c0 -> d/c0"),
        "{stdout}"
    );
}
