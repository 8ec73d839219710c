//! `weft daemon` with the alloc backend on the embedded sled store, run as a real process.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{weft, Daemon};

const CONFIG: &str = r#"{"Network":"10.5.0.0/16","SubnetLen":24,"Backend":{"Type":"alloc"}}"#;

#[test]
fn acquires_writes_subnet_env_and_reclaims_after_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sled:{}", dir.path().join("db").display());
    let conf = dir.path().join("net-conf.json");
    std::fs::write(&conf, CONFIG).unwrap();
    let out = weft(&["config", "set", "--store", &store, conf.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");

    let env_path = dir.path().join("subnet.env");
    let first = Daemon::start(&store, "192.0.2.1", &env_path, &[]);
    let env = first.wait_for_subnet_env();
    let lines: Vec<&str> = env.lines().collect();
    assert_eq!(lines[0], "FLANNEL_NETWORK=10.5.0.0/16");
    assert!(
        lines[1].starts_with("FLANNEL_SUBNET=10.5.") && lines[1].ends_with(".1/24"),
        "{env}"
    );
    // The alloc backend adds no overhead: the MTU is lo's own.
    assert_eq!(lines[2..], ["FLANNEL_MTU=65536", "FLANNEL_IPMASQ=false"]);
    let subnet = lines[1].to_string();

    // A second daemon on the same directory fails at once and says why.
    let started = std::time::Instant::now();
    let out = weft(&[
        "daemon",
        "--store",
        &store,
        "--public-ip",
        "192.0.2.9",
        "--subnet-file",
        dir.path().join("other.env").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(10));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.matches("locked by another process").count(),
        1,
        "the cause is named once: {err}"
    );

    let (status, log) = first.stop();
    assert!(status.success(), "SIGTERM is a clean stop: {log}");
    assert!(
        !log.contains('\u{1b}'),
        "a log written to a pipe has no colour escapes: {log:?}"
    );
    assert!(log.contains("the lease is kept"), "{log}");

    // The lease is still there, with its expiry.
    let out = weft(&["leases", "--store", &store]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let net = subnet
        .trim_start_matches("FLANNEL_SUBNET=")
        .replace(".1/24", ".0/24");
    assert!(
        table.contains(&net) && table.contains("192.0.2.1") && table.contains("23h59m"),
        "{table}"
    );

    // The same, for scripts.
    let out = weft(&["leases", "--store", &store, "-o", "json"]);
    assert!(out.status.success(), "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let lease = &doc["leases"][0];
    assert_eq!(doc["leases"].as_array().map(Vec::len), Some(1), "{doc}");
    assert_eq!(lease["subnet"].as_str(), Some(net.as_str()), "{doc}");
    assert_eq!(lease["public_ip"], "192.0.2.1");
    // As recorded: flanneld's alloc backend (and so weft's) writes no BackendType.
    assert_eq!(lease["backend_type"], serde_json::Value::Null, "{doc}");
    let left = lease["expires_in_s"].as_u64().unwrap();
    assert!((86_000..=86_400).contains(&left), "{doc}");
    assert!(doc["revision"].as_u64() >= Some(1), "{doc}");

    // Restarted, with the subnet file gone, it reclaims the same subnet by its IP.
    std::fs::remove_file(&env_path).unwrap();
    let again = Daemon::start(&store, "192.0.2.1", &env_path, &[]);
    let env = again.wait_for_subnet_env();
    assert!(env.contains(&subnet), "{env} lacks {subnet}");
    again.stop();
}

#[test]
fn another_public_ip_gets_another_subnet_while_the_first_lease_lives() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sled:{}", dir.path().join("db").display());
    let conf = dir.path().join("net-conf.json");
    std::fs::write(&conf, CONFIG).unwrap();
    let a_env = dir.path().join("a.env");
    let b_env = dir.path().join("b.env");
    let conf_arg = ["--net-config-path", conf.to_str().unwrap()];
    let a = Daemon::start(&store, "192.0.2.1", &a_env, &conf_arg);
    let a_subnet = a.wait_for_subnet_env();
    a.stop();
    let b = Daemon::start(&store, "192.0.2.2", &b_env, &conf_arg);
    let b_subnet = b.wait_for_subnet_env();
    b.stop();
    let pick = |s: &str| s.lines().nth(1).unwrap().to_string();
    assert_ne!(pick(&a_subnet), pick(&b_subnet));
    let out = weft(&["leases", "--store", &store]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("192.0.2.1") && table.contains("192.0.2.2") && table.contains("2 leases"),
        "{table}"
    );
}

#[test]
fn a_daemon_without_config_waits_and_says_for_which_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sled:{}", dir.path().join("db").display());
    let d = Daemon::start(&store, "192.0.2.1", &dir.path().join("s.env"), &[]);
    std::thread::sleep(Duration::from_millis(1500));
    let (_, log) = d.stop();
    assert!(
        log.contains("waiting for the network config")
            && log.contains("/coreos.com/network/config"),
        "{log}"
    );
}

/// A datagram socket standing in for systemd's `$NOTIFY_SOCKET`.
struct FakeSystemd {
    socket: std::os::unix::net::UnixDatagram,
    path: std::path::PathBuf,
}

impl FakeSystemd {
    fn bind(dir: &std::path::Path) -> FakeSystemd {
        let path = dir.join("notify.sock");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        FakeSystemd { socket, path }
    }

    /// The next message, or None when none comes within `wait`.
    fn recv(&self, wait: Duration) -> Option<String> {
        self.socket.set_read_timeout(Some(wait)).unwrap();
        let mut buf = [0u8; 256];
        let n = self.socket.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Every message until `READY=1` (bounded), READY=1 included.
    fn until_ready(&self) -> Vec<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        while !seen.iter().any(|m| m == "READY=1") {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.recv(left.max(Duration::from_millis(1))) {
                Some(m) => seen.push(m),
                None => panic!("no READY=1 within 20 s; got {seen:?}"),
            }
        }
        seen
    }

    /// Every message that arrives within `window`.
    fn during(&self, window: Duration) -> Vec<String> {
        let deadline = std::time::Instant::now() + window;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return seen;
            }
            match self.recv(left) {
                Some(m) => seen.push(m),
                None => return seen,
            }
        }
    }
}

/// A daemon on a fresh sled store with a network config, its notifications going to
/// `systemd`, with the extra environment `env`.
fn daemon_under(
    dir: &std::path::Path,
    systemd: &FakeSystemd,
    env: &[(&str, &std::ffi::OsStr)],
) -> Daemon {
    let store = format!("sled:{}", dir.join("db").display());
    let conf = dir.join("net-conf.json");
    std::fs::write(&conf, CONFIG).unwrap();
    let mut env = env.to_vec();
    env.push(("NOTIFY_SOCKET", systemd.path.as_os_str()));
    Daemon::start_with_env(
        &store,
        "192.0.2.1",
        &dir.join("subnet.env"),
        &["--net-config-path", conf.to_str().unwrap()],
        &env,
    )
}

#[test]
fn systemd_hears_ready_once_subnet_env_is_written_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let systemd = FakeSystemd::bind(dir.path());
    let d = daemon_under(dir.path(), &systemd, &[]);
    assert_eq!(
        systemd.until_ready(),
        ["READY=1"],
        "READY=1 comes first, alone"
    );
    assert!(
        dir.path().join("subnet.env").exists(),
        "subnet.env is written before READY=1"
    );
    let (status, log) = d.stop();
    assert!(status.success(), "{log}");
    let after = systemd.during(Duration::from_millis(200));
    assert_eq!(
        after,
        ["STOPPING=1"],
        "SIGTERM begins a clean stop, and systemd hears of it: {log}"
    );
}

#[test]
fn systemd_watchdog_hears_a_ping_every_half_watchdog_usec() {
    let dir = tempfile::tempdir().unwrap();
    let systemd = FakeSystemd::bind(dir.path());
    let d = daemon_under(
        dir.path(),
        &systemd,
        &[("WATCHDOG_USEC", "200000".as_ref())],
    );
    systemd.until_ready();
    let second = systemd.during(Duration::from_secs(1));
    let pings = second.iter().filter(|m| *m == "WATCHDOG=1").count();
    assert!(
        pings >= 2,
        "WATCHDOG=1 every 100 ms, at least twice in a second: {second:?}\n{}",
        d.log()
    );
    assert!(second.iter().all(|m| m == "WATCHDOG=1"), "{second:?}");
    d.stop();
}

#[test]
fn systemd_watchdog_meant_for_another_pid_is_not_ours() {
    let dir = tempfile::tempdir().unwrap();
    let systemd = FakeSystemd::bind(dir.path());
    // The test's own PID: certainly not the daemon's.
    let other = std::process::id().to_string();
    let d = daemon_under(
        dir.path(),
        &systemd,
        &[
            ("WATCHDOG_USEC", "200000".as_ref()),
            ("WATCHDOG_PID", other.as_ref()),
        ],
    );
    let before = systemd.until_ready();
    let second = systemd.during(Duration::from_secs(1));
    assert!(
        !before.iter().chain(&second).any(|m| m == "WATCHDOG=1"),
        "no WATCHDOG=1 for a watchdog meant for PID {other}: {before:?} {second:?}"
    );
    d.stop();
}

#[test]
fn log_format_json_writes_one_json_object_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sled:{}", dir.path().join("db").display());
    let conf = dir.path().join("net-conf.json");
    std::fs::write(&conf, CONFIG).unwrap();
    let d = Daemon::start_with_global(
        &["--log-format", "json"],
        &store,
        "192.0.2.1",
        &dir.path().join("subnet.env"),
        &["--net-config-path", conf.to_str().unwrap()],
        &[],
    );
    d.wait_for_subnet_env();
    let (status, log) = d.stop();
    assert!(status.success(), "{log}");
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.len() >= 3, "a start and a stop log something: {log}");
    let mut messages = Vec::new();
    for line in &lines {
        let doc: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}\n{log}"));
        let message = doc["fields"]["message"]
            .as_str()
            .or(doc["message"].as_str())
            .unwrap_or_else(|| panic!("no message: {line}"));
        assert!(doc["level"].is_string(), "{line}");
        messages.push(message.to_string());
    }
    assert!(
        messages.iter().any(|m| m == "wrote subnet file"),
        "{messages:?}"
    );
}
