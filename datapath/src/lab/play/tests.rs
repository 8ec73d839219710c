//! `lab play` without root: what the lab refuses, and that it refuses before it builds.

use super::*;

const SCENARIO: &str = r#"
name = "partitioned"
duration = "30s"
[network]
config = { Network = "10.5.0.0/16", Backend = { Type = "udp" } }
[[node]]
name = "a"
ip = "192.0.2.1"
[[node]]
name = "b"
ip = "192.0.2.2"
[[step]]
do = "ping"
at = "1s"
from = "a"
to = "b"
within = "5s"
[[step]]
do = "partition"
at = "10s"
from = "a"
to = "b"
"#;

/// Plays `text` from a file in a fresh directory; returns the error and whether
/// the lab's state directory came into being.
fn refusal(text: &str) -> (String, bool) {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let file = tmp.path().join("partitioned.toml");
    std::fs::write(&file, text).expect("written");
    let dir = tmp.path().join("lab");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let (_keep, shutdown) = watch::channel(false);
    let result = rt.block_on(play(
        &file,
        &dir,
        "wt-refuse-",
        None,
        1,
        shutdown,
        Box::new(|_| {}),
    ));
    let err = result.expect_err("refused").to_string();
    (err, dir.exists())
}

#[test]
fn a_simulator_only_step_is_refused_by_name_and_line_before_anything_is_built() {
    let (err, built) = refusal(SCENARIO);
    assert!(
        err.ends_with("partitioned.toml:18: step \"partition\" needs the simulator (weft sim run); weft lab play runs start, stop, crash, restart, ping, tcp, delete_lease and reserve"),
        "{err}"
    );
    assert!(!built, "no state directory, no namespace: refused up front");
}

#[test]
fn link_faults_and_addresses_off_the_underlay_are_refused_too() {
    let faults = SCENARIO.replace(
        "[[node]]\nname = \"a\"",
        "[underlay]\nloss = 0.1\n\n[[node]]\nname = \"a\"",
    );
    let (err, built) = refusal(&faults);
    assert!(
        err.contains(":6: [underlay] link faults needs the simulator"),
        "{err}"
    );
    assert!(!built);
    let elsewhere = SCENARIO.replace("192.0.2.2", "198.51.100.2");
    let (err, _) = refusal(&elsewhere);
    assert!(
        err.contains(":9: node b has IP 198.51.100.2: the lab's underlay is 192.0.2.0/24"),
        "{err}"
    );
}

#[test]
fn the_lab_performs_what_its_refusals_say_and_refuses_the_rest() {
    use weft_sim::scenario::{Dur, Names, Offset};
    let at = Dur(Duration::from_secs(1));
    let node = || "a".to_string();
    let names = || Names::One("a".into());
    let performed = [
        Step::Start { at, node: node() },
        Step::Stop { at, node: node() },
        Step::Crash { at, node: node() },
        Step::Restart { at, node: node() },
        Step::Ping {
            at,
            from: node(),
            to: node(),
            within: at,
            expect: PingExpect::Ok,
        },
        Step::Tcp {
            at,
            from: node(),
            to: node(),
            bytes: 1,
            within: at,
        },
        Step::DeleteLease { at, node: node() },
        Step::Reserve {
            at,
            subnet: "10.5.1.0/24".parse().unwrap_or_default(),
            ip: [192, 0, 2, 1].into(),
        },
    ];
    for step in &performed {
        assert_eq!(LabWorld::refuse(step), None, "{}", step.name());
        assert!(
            CAN.contains(step.name()),
            "the refusal names {}",
            step.name()
        );
    }
    let refused = [
        Step::Partition {
            at,
            from: names(),
            to: names(),
            one_way: false,
        },
        Step::Heal {
            at,
            from: None,
            to: None,
        },
        Step::Faults {
            at,
            from: None,
            to: None,
            latency: None,
            jitter: None,
            loss: Some(0.5),
            duplicate: None,
            reorder: None,
            reorder_delay: None,
            corrupt: None,
            mtu: None,
        },
        Step::StoreOutage { at, for_: None },
        Step::StoreRecover { at },
        Step::ClockJump {
            at,
            node: node(),
            by: Offset(1000),
        },
        Step::Compact { at },
    ];
    for step in &refused {
        let refusal = LabWorld::refuse(step).map(|r| r.what);
        assert_eq!(refusal, Some(format!("step {:?}", step.name())));
    }
}
