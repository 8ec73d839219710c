//! Chaos on real parts: four hosts in namespaces on one underlay, a real `weft daemon`
//! (udp backend) on each, a real three-member etcd cluster, a container behind each
//! host and pings between them. Faults, one after another on the same cluster: kill -9
//! of a daemon at the moment its renewal is due, kill -9 of the etcd leader, an
//! underlay link cut (the host's link down and its etcd connections broken), loss and
//! a narrow link (nftables and tbf: this kernel has no netem), and a compaction of etcd while a host is cut off. After each:
//! no two leases share a subnet or a public IP, every live host holds the subnet it had
//! (in etcd and in its subnet.env), and every container reaches every other again
//! within a stated bound. Each fault's time to recover is printed. And a full disk
//! under a daemon's sled store (a small tmpfs): the running daemon goes on renewing,
//! a start on the full disk fails at once and clearly, and with room again the daemon
//! starts on the subnet it had. Root only.

#![allow(clippy::unwrap_used)]

mod common;
mod underlay;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use underlay::{can_run, run, Underlay, PREFIX};
use weft_stores::testing::{skip_unless, Etcd, EtcdConfig};

const UDP: &str = r#"{"Network":"10.5.0.0/16","SubnetLen":24,"Backend":{"Type":"udp"}}"#;

/// The daemons' lease TTL: short, so that renewals happen within the test.
const TTL: u32 = 10;

/// How long the mesh may take to answer again once a fault is over.
const RECOVERY: Duration = Duration::from_secs(20);

/// The leases in etcd: subnet key -> (PublicIP, etcd lease id).
fn leases(etcd: &Etcd) -> BTreeMap<String, (Ipv4Addr, i64)> {
    let out = etcd.etcdctl(&[
        "get",
        "--prefix",
        &format!("{PREFIX}/subnets/"),
        "-w",
        "json",
    ]);
    assert!(out.status.success(), "{out:?}");
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut leases = BTreeMap::new();
    for kv in reply["kvs"].as_array().into_iter().flatten() {
        let key = String::from_utf8(base64(kv["key"].as_str().unwrap())).unwrap();
        let value: serde_json::Value =
            serde_json::from_slice(&base64(kv["value"].as_str().unwrap())).unwrap();
        let ip = value["PublicIP"].as_str().unwrap().parse().unwrap();
        leases.insert(key, (ip, kv["lease"].as_i64().unwrap_or(0)));
    }
    leases
}

/// Decodes standard base64 (etcdctl's JSON output encodes keys and values so).
fn base64(text: &str) -> Vec<u8> {
    let digit = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {text}"),
    };
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes().filter(|&c| c != b'=') {
        acc = (acc << 6) | u32::from(digit(c));
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// The index of the member etcd reports as leader.
fn leader(etcd: &Etcd, members: usize) -> usize {
    let out = etcd.etcdctl(&["endpoint", "status", "-w", "json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let by_endpoint: BTreeMap<String, (u64, u64)> = status
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let id = s["Status"]["header"]["member_id"].as_u64().unwrap();
            let leader = s["Status"]["leader"].as_u64().unwrap();
            (s["Endpoint"].as_str().unwrap().to_string(), (id, leader))
        })
        .collect();
    let leader = by_endpoint.values().next().unwrap().1;
    (0..members)
        .find(|&i| {
            by_endpoint
                .iter()
                .any(|(e, (id, _))| e.ends_with(&etcd.endpoint(i)) && *id == leader)
        })
        .expect("a leader among the members")
}

/// etcd's current revision.
fn revision(etcd: &Etcd) -> i64 {
    let out = etcd.etcdctl(&["get", "/", "-w", "json"]);
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    reply["header"]["revision"].as_i64().unwrap()
}

/// What holds after every fault: distinct subnets and public IPs among the leases, and
/// each host in `live` holding the subnet it had, in etcd and in its subnet.env.
fn check(net: &Underlay, etcd: &Etcd, live: &[usize]) {
    let leases = leases(etcd);
    let mut ips: Vec<Ipv4Addr> = leases.values().map(|(ip, _)| *ip).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(
        ips.len(),
        leases.len(),
        "two leases share a public IP: {leases:?}"
    );
    for &i in live {
        let h = &net.hosts[i - 1];
        let key = net.lease_key(i);
        let (ip, _) = leases
            .get(&key)
            .unwrap_or_else(|| panic!("h{i}'s lease {key} is gone: {leases:?}"));
        assert_eq!(*ip, h.ip, "{key} names another host");
        let env = std::fs::read_to_string(&h.env).unwrap();
        let env_subnet: ipnet::Ipv4Net = env
            .lines()
            .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(env_subnet.trunc(), h.subnet.unwrap(), "h{i}'s subnet.env");
    }
}

/// One ping from container `from` to container `to`, waiting at most 1 s.
fn ping_once(net: &Underlay, from: usize, to: usize) -> bool {
    let ns = net.hosts[from - 1].container.clone().unwrap();
    Command::new("ip")
        .args(["netns", "exec", &ns, "ping", "-c", "1", "-W", "1"])
        .arg(net.container_ip(to).to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// Waits until every container in `hosts` answers every other's ping, for at most
/// [`RECOVERY`]; returns how long that took, counted from `since`.
fn recovery_since(net: &Underlay, hosts: &[usize], what: &str, since: Instant) -> Duration {
    let start = since;
    let mut pending: Vec<(usize, usize)> = hosts
        .iter()
        .flat_map(|&a| hosts.iter().filter(move |&&b| b != a).map(move |&b| (a, b)))
        .collect();
    while !pending.is_empty() {
        assert!(
            start.elapsed() < RECOVERY,
            "{what}: no ping for {pending:?} within {RECOVERY:?}\n{}",
            logs(net, hosts)
        );
        pending.retain(|&(a, b)| !ping_once(net, a, b));
    }
    let took = start.elapsed();
    eprintln!("chaos: {what}: mesh answers {} ms after", took.as_millis());
    took
}

/// [`recovery_since`] now.
fn recovery(net: &Underlay, hosts: &[usize], what: &str) -> Duration {
    recovery_since(net, hosts, what, Instant::now())
}

fn logs(net: &Underlay, hosts: &[usize]) -> String {
    hosts
        .iter()
        .map(|&i| format!("--- h{i} ---\n{}", net.log(i)))
        .collect()
}

/// Waits until host `i`'s lease is renewed (its etcd lease id changes from `from`);
/// returns the new id.
fn renewed(net: &Underlay, etcd: &Etcd, i: usize, from: i64, patience: Duration) -> i64 {
    let key = net.lease_key(i);
    let deadline = Instant::now() + patience;
    loop {
        let id = leases(etcd).get(&key).map_or(from, |l| l.1);
        if id != from {
            return id;
        }
        assert!(
            Instant::now() < deadline,
            "h{i} did not renew within {patience:?}\n{}",
            net.log(i)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn lease_id(net: &Underlay, etcd: &Etcd, i: usize) -> i64 {
    leases(etcd)[&net.lease_key(i)].1
}

/// Cuts host `i` off: its underlay link down and its etcd connections broken.
fn cut(net: &mut Underlay, i: usize) {
    net.ip(i, &["link", "set", "eth0", "down"]);
    net.disconnect_store(i);
}

/// Undoes [`cut`]; the default route went with the link, so it is put back.
fn heal(net: &mut Underlay, i: usize) {
    net.ip(i, &["link", "set", "eth0", "up"]);
    let router = if net.hosts[i - 1].ip.octets()[0] == 192 {
        "192.0.2.254"
    } else {
        "198.51.100.254"
    };
    net.ip(i, &["route", "replace", "default", "via", router]);
    net.connect_store(i);
}

fn tc(net: &Underlay, i: usize, args: &[&str]) {
    let mut all = vec!["netns", "exec", &net.hosts[i - 1].ns, "tc"];
    all.extend_from_slice(args);
    run("ip", &all);
}

#[test]
fn faults_on_a_three_member_etcd_lose_no_lease_and_the_mesh_recovers() {
    let test = "faults_on_a_three_member_etcd_lose_no_lease_and_the_mesh_recovers";
    if !can_run(test) {
        return;
    }
    let config = EtcdConfig {
        members: 3,
        ..EtcdConfig::default()
    };
    let Some(mut etcd) = skip_unless(test, Etcd::start_with(config)) else {
        return;
    };
    let ips = ["192.0.2.1", "192.0.2.2", "198.51.100.3", "198.51.100.4"];
    let mut net = Underlay::with_members("ch", &ips, &etcd, 3);
    net.lease_ttl = TTL;
    net.set_config(UDP);
    for i in 1..=3 {
        net.start(i);
        net.add_container(i);
    }
    recovery(&net, &[1, 2, 3], "start");
    check(&net, &etcd, &[1, 2, 3]);

    // kill -9 of a daemon when its renewal is due, on each host in turn, at offsets
    // spread over the moment; restarted 0.5 s later it takes its own lease back.
    for (round, i) in [1usize, 2, 3].into_iter().enumerate() {
        let before = lease_id(&net, &etcd, i);
        renewed(&net, &etcd, i, before, Duration::from_secs(u64::from(TTL)));
        let due = Instant::now() + Duration::from_millis(u64::from(TTL) * 500);
        let at = due - Duration::from_millis(100) + Duration::from_millis(100 * round as u64);
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        net.kill_9(i);
        let killed = Instant::now();
        assert!(
            leases(&etcd).contains_key(&net.lease_key(i)),
            "h{i}'s lease vanished with its daemon"
        );
        std::thread::sleep(Duration::from_millis(500));
        net.start(i); // asserts the same subnet
        let what = format!("kill -9 of h{i} at its renewal, restarted 0.5 s later");
        recovery_since(&net, &[1, 2, 3], &what, killed);
        check(&net, &etcd, &[1, 2, 3]);
        let now = lease_id(&net, &etcd, i);
        renewed(&net, &etcd, i, now, Duration::from_secs(u64::from(TTL)));
    }

    // kill -9 of the etcd leader: every daemon renews on the two members left.
    let dead = leader(&etcd, 3);
    let ids: Vec<i64> = (1..=3).map(|i| lease_id(&net, &etcd, i)).collect();
    let killed = Instant::now();
    etcd.kill(dead);
    for i in 1..=3 {
        renewed(
            &net,
            &etcd,
            i,
            ids[i - 1],
            Duration::from_secs(u64::from(TTL)),
        );
    }
    eprintln!(
        "chaos: kill -9 of etcd member {dead} (the leader): all three renewed {} ms after",
        killed.elapsed().as_millis()
    );
    recovery(&net, &[1, 2, 3], "kill -9 of the etcd leader");
    check(&net, &etcd, &[1, 2, 3]);
    etcd.restart(dead).unwrap();

    // An underlay cut of h2 across its renewal, shorter than its lease: the lease
    // stays (polled throughout), and h2 renews once it is back.
    let id = renewed(
        &net,
        &etcd,
        2,
        lease_id(&net, &etcd, 2),
        Duration::from_secs(u64::from(TTL)),
    );
    cut(&mut net, 2);
    let until = Instant::now() + Duration::from_millis(u64::from(TTL) * 600);
    while Instant::now() < until {
        assert!(
            leases(&etcd).contains_key(&net.lease_key(2)),
            "h2's lease vanished while it was cut off"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    heal(&mut net, 2);
    let healed = Instant::now();
    renewed(&net, &etcd, 2, id, Duration::from_secs(u64::from(TTL)));
    eprintln!(
        "chaos: link cut of h2 for {} s: renewed {} ms after the cut healed",
        TTL * 6 / 10,
        healed.elapsed().as_millis()
    );
    recovery(&net, &[1, 2, 3], "link cut of h2");
    check(&net, &etcd, &[1, 2, 3]);

    // Loss and a narrow link on h1's underlay (this kernel has no netem: 10% of the
    // packets through eth0 are dropped by an nftables rule, both ways, and tbf holds
    // its egress to 20 Mbit/s): pings still get through, a TCP transfer arrives whole,
    // and once the faults are gone the mesh answers at once.
    let rules = net.dir.path().join("loss.nft");
    std::fs::write(
        &rules,
        "table inet chaos {\n\
         chain out { type filter hook output priority 0; oifname \"eth0\" numgen random mod 100 < 10 drop; }\n\
         chain in { type filter hook input priority 0; iifname \"eth0\" numgen random mod 100 < 10 drop; }\n\
         }\n",
    )
    .unwrap();
    let h1 = net.hosts[0].ns.clone();
    run(
        "ip",
        &["netns", "exec", &h1, "nft", "-f", rules.to_str().unwrap()],
    );
    tc(
        &net,
        1,
        &[
            "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "20mbit", "burst", "32kbit",
            "latency", "50ms",
        ],
    );
    let sent_at = Instant::now();
    let [sent, got] = net.tcp_transfer(1, 3, net.container_ip(3).into(), 4 << 20);
    assert_eq!(sent, got, "c1 -> c3 under loss: (bytes, checksum)");
    eprintln!(
        "chaos: 4 MiB c1 -> c3 with 10% loss at 20 Mbit/s: intact in {} ms",
        sent_at.elapsed().as_millis()
    );
    recovery(&net, &[1, 2, 3], "10% loss and 20 Mbit/s on h1");
    run(
        "ip",
        &[
            "netns", "exec", &h1, "nft", "delete", "table", "inet", "chaos",
        ],
    );
    tc(&net, 1, &["qdisc", "del", "dev", "eth0", "root"]);
    recovery(&net, &[1, 2, 3], "loss removed");
    check(&net, &etcd, &[1, 2, 3]);

    // A compaction while h3 is cut off: h4 joins, etcd compacts past h3's watch; once
    // back, h3 re-lists and routes to h4.
    cut(&mut net, 3);
    net.start(4);
    net.add_container(4);
    // Compacting at the revision of h4's lease would keep that revision, where h3's
    // watch resumes: two writes elsewhere move etcd past it first.
    for _ in 0..2 {
        assert!(etcd.etcdctl(&["put", "/chaos/tick", "x"]).status.success());
    }
    let rev = revision(&etcd);
    let out = etcd.etcdctl(&["compact", &rev.to_string()]);
    assert!(out.status.success(), "{out:?}");
    heal(&mut net, 3);
    recovery(&net, &[1, 2, 3, 4], "compaction while h3 was cut off");
    check(&net, &etcd, &[1, 2, 3, 4]);
    assert!(
        net.log(3).contains("lease table listed again"),
        "h3 never re-listed after the compaction:\n{}",
        net.log(3)
    );
    for i in 1..=4 {
        assert!(net.is_running(i), "h{i}'s daemon exited:\n{}", net.log(i));
    }
}

/// A tmpfs of `size` mounted on a fresh temporary directory, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_str().unwrap().to_string();
        run(
            "mount",
            &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", &path],
        );
        Tmpfs { dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Writes zeros to `path` until the file system is full; returns how much it wrote.
fn fill(path: &std::path::Path) -> u64 {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    let block = vec![0u8; 64 << 10];
    let mut written = 0u64;
    loop {
        match file.write(&block) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    let _ = file.sync_all();
    written
}

#[test]
fn a_full_disk_under_sled_loses_no_lease_and_a_start_on_it_fails_clearly() {
    let test = "a_full_disk_under_sled_loses_no_lease_and_a_start_on_it_fails_clearly";
    if !can_run(test) {
        return;
    }
    let fs = Tmpfs::mount("16m");
    let store = format!("sled:{}", fs.dir.path().join("db").display());
    let conf = fs.dir.path().join("net-conf.json");
    std::fs::write(
        &conf,
        r#"{"Network":"10.5.0.0/16","SubnetLen":24,"Backend":{"Type":"alloc"}}"#,
    )
    .unwrap();
    let out = common::weft(&["config", "set", "--store", &store, conf.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let env_dir = tempfile::tempdir().unwrap();
    let env_path = env_dir.path().join("subnet.env");
    let daemon =
        common::Daemon::start(&store, "192.0.2.1", &env_path, &["--subnet-lease-ttl", "6"]);
    let env = daemon.wait_for_subnet_env();
    let renewals = |log: &str| log.matches("lease renewed").count();
    let deadline = Instant::now() + Duration::from_secs(10);
    while renewals(&daemon.log()) == 0 {
        assert!(Instant::now() < deadline, "no renewal:\n{}", daemon.log());
        std::thread::sleep(Duration::from_millis(100));
    }

    // A full disk costs a running daemon nothing: sled writes into the segment it
    // allocated whole when it opened, and every renewal is still made durable.
    let filler = fs.dir.path().join("filler");
    let wrote = fill(&filler);
    let before = renewals(&daemon.log());
    let deadline = Instant::now() + Duration::from_secs(15);
    while renewals(&daemon.log()) < before + 2 {
        assert!(
            Instant::now() < deadline,
            "no renewals on a full disk:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("chaos: sled's tmpfs full ({wrote} bytes of filler): two more renewals");
    let (status, log) = daemon.stop();
    assert!(status.success(), "a clean stop on a full disk: {log}");
    assert!(
        !log.contains("lease lost") && !log.contains("panicked"),
        "{log}"
    );
    assert_eq!(std::fs::read_to_string(&env_path).unwrap(), env);

    // Starting on the full disk fails at once, naming the cause once.
    let started = Instant::now();
    let out = common::weft(&[
        "daemon",
        "--store",
        &store,
        "--public-ip",
        "192.0.2.1",
        "--subnet-file",
        env_path.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started on a full disk: {err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(err.matches("No space left on device").count(), 1, "{err}");
    assert_eq!(std::fs::read_to_string(&env_path).unwrap(), env);

    // With room again, it starts on the same subnet (found in the store: the
    // subnet.env that could tell it is removed first).
    std::fs::remove_file(&filler).unwrap();
    std::fs::remove_file(&env_path).unwrap();
    let daemon =
        common::Daemon::start(&store, "192.0.2.1", &env_path, &["--subnet-lease-ttl", "6"]);
    let again = daemon.wait_for_subnet_env();
    assert_eq!(again, env, "another subnet after the disk was full");
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");

    let subnet = env
        .lines()
        .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))
        .unwrap()
        .replace(".1/24", ".0/24");
    let out = common::weft(&["leases", "--store", &store]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        table.contains(&subnet) && table.contains("192.0.2.1"),
        "{table}"
    );
}

/// A TUN device deleted under a running daemon is gone for good: every read of its
/// descriptor fails. The forwarding thread must not loop on it forever: it gives up
/// after 5 s of failures in a row, and the daemon stops with the cause and a non-zero
/// exit, for a supervisor to restart it. For the udp and the wireguard backend.
#[test]
fn a_tun_device_deleted_under_a_daemon_ends_it_with_a_clear_error() {
    let test = "a_tun_device_deleted_under_a_daemon_ends_it_with_a_clear_error";
    if !can_run(test) {
        return;
    }
    let Some(etcd) = skip_unless(test, Etcd::start_with(EtcdConfig::default())) else {
        return;
    };
    let wireguard = r#"{"Network":"10.6.0.0/16","SubnetLen":24,"Backend":{"Type":"wireguard"}}"#;
    for (kind, config) in [("udp", UDP), ("wireguard", wireguard)] {
        let mut net = Underlay::new("gone", &["192.0.2.1"], &etcd);
        net.set_config(config);
        let key = net.dir.path().join("wgkey").display().to_string();
        net.start_env(1, &[], &[("WIREGUARD_KEY_FILE", &key)]);
        net.ip(1, &["link", "del", "weft0"]);
        let deleted = Instant::now();
        let status = net.wait_exit(1, Duration::from_secs(20));
        let log = net.log(1);
        let Some(status) = status else {
            panic!("{kind}: the daemon still runs 20 s after its TUN device went; log:\n{log}");
        };
        let took = deleted.elapsed();
        println!("{kind}: the daemon exited {took:?} after its TUN device was deleted ({status})");
        assert!(!status.success(), "{kind}: {status}; log:\n{log}");
        assert!(
            took >= Duration::from_secs(5) && took < Duration::from_secs(10),
            "{kind}: gave up after {took:?}; log:\n{log}"
        );
        assert!(
            log.contains(&format!(
                "running the {kind} backend: reading the TUN device weft0 failed"
            )) && log.contains("giving up"),
            "{kind}: {log}"
        );
        // The first failure is logged once, not every 10 ms.
        let warned = log
            .matches("reading the TUN device weft0 failed; retrying")
            .count();
        assert_eq!(warned, 1, "{kind}: {log}");
    }
}
