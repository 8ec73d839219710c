//! flanneld's unit-file line, with `flanneld` replaced by `weft daemon`, runs weft with
//! the same result on a real etcd: in Go's one-dash spelling, from `FLANNELD_*`
//! variables alone, and under the name `flanneld`; the health server answers /healthz,
//! /readyz and /metrics (parsed as the Prometheus text format); a Kubernetes flag is
//! refused by name.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::weft;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use weft_stores::testing::etcd_or_skip;

const CONFIG: &str = r#"{"Network":"10.5.0.0/16","SubnetLen":24,"Backend":{"Type":"alloc"}}"#;

/// A daemon process, stopped by SIGTERM to its PID however the test ends.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0.id() as i32), Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

fn spawn(program: &Path, args: &[&str], env: &[(&str, String)]) -> Proc {
    let child = Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    Proc(child)
}

fn wait_for_file(path: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if text.contains("FLANNEL_SUBNET=") {
                return text;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} never written",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn get(port: u16, path: &str) -> (u16, String) {
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(conn, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// Every sample of a Prometheus text exposition, `name{labels}` -> value; panics on a
/// line that is neither a comment nor a sample.
/// The samples of an exposition, after checking it parses as the OpenMetrics text format
/// it says it is (HELP and TYPE before each family, `_total` on counters, cumulative
/// histogram buckets ending in +Inf, `# EOF`).
fn samples(text: &str) -> Vec<(String, f64)> {
    if let Err(e) = openmetrics_parser::openmetrics::parse_openmetrics(text) {
        panic!("not OpenMetrics text: {e:?}\n{text}");
    }
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').expect("a sample line");
            let ok = name
                .chars()
                .take_while(|c| *c != '{')
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
            assert!(ok, "not a metric name: {name}");
            (name.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn flanneld_command_lines_run_weft() {
    let Some(etcd) = etcd_or_skip("flanneld_command_lines_run_weft") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("net-conf.json");
    std::fs::write(&conf, CONFIG).unwrap();
    let out = weft(&[
        "config",
        "set",
        "--store",
        &etcd.url(),
        conf.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let endpoints = format!("http://{}", etcd.endpoint(0));
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_weft"));

    // flanneld's unit line, Go spellings, flanneld replaced by `weft daemon`.
    let env1 = dir.path().join("one.env");
    let port = free_port();
    let one = spawn(
        &bin,
        &[
            "daemon",
            &format!("-etcd-endpoints={endpoints}"),
            "-iface=lo",
            "-public-ip=192.0.2.1",
            &format!("-subnet-file={}", env1.display()),
            "-ip-masq",
            "-healthz-ip=127.0.0.1",
            &format!("-healthz-port={port}"),
            "-v=1",
        ],
        &[],
    );
    let text = wait_for_file(&env1);
    assert!(text.contains("FLANNEL_IPMASQ=true"), "{text}");
    assert_eq!(get(port, "/healthz"), (200, "weft is running".to_string()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(port, "/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, metrics) = get(port, "/metrics");
    assert_eq!(code, 200);
    let samples = samples(&metrics);
    assert!(
        samples.contains(&("weft_lease_held".to_string(), 1.0)),
        "{metrics}"
    );
    let value = |name: &str| samples.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
    let left = value("weft_lease_expiry_seconds").expect("seconds to expiry");
    assert!((86_000.0..=86_400.0).contains(&left), "{metrics}");
    assert_eq!(
        value(r#"weft_node_events_total{event="acquired"}"#),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        value(r#"weft_node_events_total{event="synced"}"#) >= Some(1.0),
        "{metrics}"
    );
    // The store was really timed: the listing and the create went to etcd and back.
    for op in ["list", "create"] {
        let count = value(&format!(
            r#"weft_store_operation_duration_seconds_count{{op="{op}"}}"#
        ));
        assert!(count >= Some(1.0), "{op}: {metrics}");
        let inf = value(&format!(
            r#"weft_store_operation_duration_seconds_bucket{{le="+Inf",op="{op}"}}"#
        ));
        assert_eq!(inf, count, "{op}: {metrics}");
    }
    assert_eq!(value("weft_watch_reconnects_total"), Some(0.0), "{metrics}");
    assert!(metrics.trim_end().ends_with("# EOF"), "{metrics}");
    assert_eq!(get(port, "/nope").0, 404);
    drop(one);

    // The same settings from FLANNELD_* variables alone.
    let env2 = dir.path().join("two.env");
    let two = spawn(
        &bin,
        &["daemon"],
        &[
            ("FLANNELD_ETCD_ENDPOINTS", endpoints.clone()),
            ("FLANNELD_IFACE", "lo".into()),
            ("FLANNELD_PUBLIC_IP", "192.0.2.2".into()),
            ("FLANNELD_SUBNET_FILE", env2.display().to_string()),
            ("FLANNELD_IP_MASQ", "true".into()),
        ],
    );
    let text = wait_for_file(&env2);
    assert!(text.contains("FLANNEL_IPMASQ=true"), "{text}");
    drop(two);

    // The binary under flanneld's name is the daemon.
    let flanneld = dir.path().join("flanneld");
    std::os::unix::fs::symlink(&bin, &flanneld).unwrap();
    let env3 = dir.path().join("three.env");
    let three = spawn(
        &flanneld,
        &[
            &format!("--etcd-endpoints={endpoints}"),
            "--iface=lo",
            "--public-ip=192.0.2.3",
            &format!("--subnet-file={}", env3.display()),
        ],
        &[],
    );
    let text = wait_for_file(&env3);
    assert!(text.contains("FLANNEL_IPMASQ=false"), "{text}");
    drop(three);
    let subnets: std::collections::BTreeSet<String> = [&env1, &env2, &env3]
        .iter()
        .map(|p| {
            let t = std::fs::read_to_string(p).unwrap();
            t.lines()
                .find(|l| l.starts_with("FLANNEL_SUBNET="))
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(subnets.len(), 3, "three nodes, three subnets: {subnets:?}");

    // Kubernetes flags and bad values are refused with their names.
    let out = weft(&["daemon", "-kube-subnet-mgr", "--public-ip", "192.0.2.9"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--kube-subnet-mgr is not supported by weft"),
        "{err}"
    );
    let out = weft(&["daemon", "-subnet-lease-renew-margin=1440"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("1..=1439"));
    let out = weft(&["daemon", "--etcd-endpoints=https://127.0.0.1:1"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--etcd-cafile"),
        "{out:?}"
    );
}
