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
    assert_eq!(lease["backend_type"], "alloc");
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

#[test]
fn systemd_hears_ready_once_subnet_env_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sled:{}", dir.path().join("db").display());
    let conf = dir.path().join("net-conf.json");
    std::fs::write(&conf, CONFIG).unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let env_path = dir.path().join("subnet.env");
    let d = Daemon::start_with_env(
        &store,
        "192.0.2.1",
        &env_path,
        &["--net-config-path", conf.to_str().unwrap()],
        &[("NOTIFY_SOCKET", socket_path.as_os_str())],
    );
    let mut buf = [0u8; 64];
    let n = socket.recv(&mut buf).expect("READY=1 within 20 s");
    assert_eq!(&buf[..n], b"READY=1");
    assert!(env_path.exists(), "subnet.env is written before READY=1");
    d.stop();
}
