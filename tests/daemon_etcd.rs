//! `weft daemon` (alloc backend) on a real etcd, as real processes: three nodes get
//! distinct subnets in flannel's format; etcd killed with -9 and restarted under them
//! loses no lease; a restarted node reclaims its subnet; someone else's bad data is
//! skipped and left alone; a missing config is waited for; TLS flags work end to end.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{weft, Daemon};
use weft_stores::testing::{etcd_or_skip, skip_unless, Etcd, EtcdConfig, Pki};

const CONFIG: &str = r#"{"Network":"10.5.0.0/16","SubnetLen":24,"Backend":{"Type":"alloc"}}"#;
const PREFIX: &str = "/coreos.com/network";

fn set_config(dir: &Path, url: &str, extra: &[&str]) {
    let conf = dir.join("net-conf.json");
    std::fs::write(&conf, CONFIG).unwrap();
    let mut args = vec!["config", "set", "--store", url];
    args.extend_from_slice(extra);
    args.push(conf.to_str().unwrap());
    let out = weft(&args);
    assert!(out.status.success(), "{out:?}");
}

fn subnet_of(env: &str) -> String {
    env.lines()
        .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))
        .unwrap()
        .replace(".1/24", ".0-24")
}

fn wait_until(what: &str, patience: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + patience;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {patience:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The subnet keys etcdctl shows, each with its value.
fn etcd_leases(etcd: &Etcd) -> Vec<(String, String)> {
    let out = etcd.etcdctl(&["get", "--prefix", &format!("{PREFIX}/subnets/")]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    lines
        .chunks(2)
        .map(|kv| (kv[0].to_string(), kv[1].to_string()))
        .collect()
}

#[test]
fn three_daemons_share_one_etcd_and_survive_its_kill_9() {
    let Some(mut etcd) = etcd_or_skip("three_daemons_share_one_etcd_and_survive_its_kill_9") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = etcd.url();
    set_config(dir.path(), &url, &[]);
    // Short leases, renewed every 3 s, so that the outage below outlasts one.
    let extra = ["--subnet-lease-ttl", "6"];
    let ips = ["192.0.2.1", "192.0.2.2", "192.0.2.3"];
    let envs: Vec<_> = (0..3)
        .map(|i| dir.path().join(format!("{i}.env")))
        .collect();
    let mut daemons: Vec<Daemon> = (0..3)
        .map(|i| Daemon::start(&url, ips[i], &envs[i], &extra))
        .collect();
    let subnets: Vec<String> = daemons
        .iter()
        .map(|d| subnet_of(&d.wait_for_subnet_env()))
        .collect();
    assert!(
        subnets[0] != subnets[1] && subnets[1] != subnets[2] && subnets[0] != subnets[2],
        "{subnets:?}"
    );

    // etcdctl shows flannel's keys and JSON: its alloc backend records no BackendType.
    let mut want: Vec<(String, String)> = (0..3)
        .map(|i| {
            let key = format!("{PREFIX}/subnets/{}", subnets[i]);
            let value = format!(r#"{{"PublicIP":"{}","PublicIPv6":null}}"#, ips[i]);
            (key, value)
        })
        .collect();
    want.sort();
    assert_eq!(etcd_leases(&etcd), want);
    let config = etcd.etcdctl(&["get", &format!("{PREFIX}/config"), "--print-value-only"]);
    assert_eq!(String::from_utf8_lossy(&config.stdout).trim(), CONFIG);

    // etcd dies hard for longer than a lease lives, and comes back on its data dir.
    etcd.kill(0);
    std::thread::sleep(Duration::from_secs(8));
    etcd.restart(0).unwrap();
    for d in &daemons {
        // Each node's lease ran out on its clock while etcd was away: it says so, then
        // takes the same subnet back (etcd kept it: a restart extends leases).
        wait_until(
            "re-acquired after the outage",
            Duration::from_secs(60),
            || {
                let log = d.log();
                let lost = log.find("lease lost");
                lost.is_some_and(|at| log[at..].contains("lease acquired"))
            },
        );
    }
    for (i, env) in envs.iter().enumerate() {
        let text = std::fs::read_to_string(env).unwrap();
        assert_eq!(subnet_of(&text), subnets[i], "node {i} kept its subnet");
    }
    assert_eq!(etcd_leases(&etcd), want, "no lease lost, none added");

    // A node restarted without its subnet file reclaims its subnet by its public IP.
    let (status, _) = daemons.remove(0).stop();
    assert!(status.success());
    std::fs::remove_file(&envs[0]).unwrap();
    let again = Daemon::start(&url, ips[0], &envs[0], &extra);
    assert_eq!(subnet_of(&again.wait_for_subnet_env()), subnets[0]);
    assert!(again.log().contains("Reused"), "{}", again.log());
    assert_eq!(etcd_leases(&etcd), want);
    for d in daemons.into_iter().chain([again]) {
        let (status, log) = d.stop();
        assert!(status.success(), "{log}");
    }
}

#[test]
fn a_daemon_waits_for_the_config_and_skips_bad_data_without_touching_it() {
    let Some(etcd) = etcd_or_skip("a_daemon_waits_for_the_config_and_skips_bad_data") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = etcd.url();
    let env = dir.path().join("s.env");
    let d = Daemon::start(&url, "192.0.2.1", &env, &[]);
    wait_until("waiting for the config", Duration::from_secs(20), || {
        d.log().contains("waiting for the network config")
    });
    assert!(d.log().contains(&format!("{PREFIX}/config")), "{}", d.log());

    // Someone else's garbage: not JSON, not a subnet key, a lease outside the network.
    let bad = [
        ("10.5.7.0-24", "not json"),
        ("garbage", r#"{"PublicIP":"192.0.2.8"}"#),
        ("10.9.0.0-24", r#"{"PublicIP":"192.0.2.9"}"#),
    ];
    for (name, value) in bad {
        let out = etcd.etcdctl(&["put", &format!("{PREFIX}/subnets/{name}"), value]);
        assert!(out.status.success(), "{out:?}");
    }
    set_config(dir.path(), &url, &[]);
    let subnet = subnet_of(&d.wait_for_subnet_env());
    assert_ne!(subnet, "10.5.7.0-24", "an occupied subnet is not taken");
    std::thread::sleep(Duration::from_millis(500));
    let (status, log) = d.stop();
    assert!(status.success(), "{log}");
    assert_eq!(log.matches("waiting for the network config").count(), 1);
    for (name, _) in bad {
        let key = format!("{PREFIX}/subnets/{name}");
        let reports = log
            .lines()
            .filter(|l| l.contains("skipping") && l.contains(&key))
            .count();
        assert_eq!(reports, 1, "{key} reported once:\n{log}");
    }
    assert!(log.contains("skipped_total=3"), "{log}");
    // Left exactly as they were.
    let leases = etcd_leases(&etcd);
    for (name, value) in bad {
        let key = format!("{PREFIX}/subnets/{name}");
        assert!(leases.contains(&(key, value.to_string())), "{leases:?}");
    }
}

#[test]
fn tls_flags_reach_etcd_and_wrong_files_fail_clearly() {
    let pki = Pki::new();
    let config = EtcdConfig {
        tls: Some(pki.server()),
        ..EtcdConfig::default()
    };
    let Some(etcd) = skip_unless("tls_flags_reach_etcd", Etcd::start_with(config)) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = etcd.url();
    let path = |name: &str| pki.path(name).display().to_string();
    let (ca, cert, key) = (path("ca.pem"), path("ca-client.pem"), path("ca-client.key"));
    let good = [
        "--etcd-cafile",
        &ca,
        "--etcd-certfile",
        &cert,
        "--etcd-keyfile",
        &key,
    ];
    set_config(dir.path(), &url, &good);
    let env = dir.path().join("s.env");
    let d = Daemon::start(&url, "192.0.2.1", &env, &good);
    let subnet = subnet_of(&d.wait_for_subnet_env());
    let mut leases = vec!["leases", "--store", &url];
    leases.extend_from_slice(&good);
    let out = weft(&leases);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&subnet.replace("-24", "/24")),
        "{out:?}"
    );
    d.stop();

    // Without a client certificate, or with a rogue one, each command fails at once and
    // says which flags to check.
    let rogue = (path("rogue-client.pem"), path("rogue-client.key"));
    let cases: [Vec<&str>; 2] = [
        vec!["--etcd-cafile", &ca],
        vec![
            "--etcd-cafile",
            &ca,
            "--etcd-certfile",
            &rogue.0,
            "--etcd-keyfile",
            &rogue.1,
        ],
    ];
    for flags in cases {
        let mut args = vec!["leases", "--store", &url];
        args.extend_from_slice(&flags);
        let started = Instant::now();
        let out = weft(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flags:?}: {out:?}");
        assert!(err.contains("--etcd-certfile"), "{flags:?}: {err}");
        assert!(started.elapsed() < Duration::from_secs(10));

        let mut args = vec!["daemon", "--store", &url, "--public-ip", "192.0.2.5"];
        let other = dir.path().join("other.env").display().to_string();
        args.extend_from_slice(&["--subnet-file", &other]);
        args.extend_from_slice(&flags);
        let out = weft(&args);
        assert!(!out.status.success(), "{flags:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--etcd-certfile"), "{flags:?}: {err}");
    }
}
