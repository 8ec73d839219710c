//! Masquerade and forward rules on the real kernel: two hosts in namespaces on one
//! underlay (see `underlay`), host-gw between them, real `weft daemon` processes and a
//! real etcd, and a namespace standing in for the outside world, which the underlay
//! router reaches but which has no route back to the overlay.
//!
//! A container behind the host started with `--ip-masq` reaches the outside world with
//! its source rewritten to the host's address, while its traffic to a container on the
//! other host keeps its own source; a container behind the host without `--ip-masq`
//! cannot reach the outside world at all (the control: masquerading is what makes the
//! way back). weft's table `inet weft` comes back within the resync period after it is
//! flushed or deleted by hand, and is gone after a clean stop. Root, etcd and nft only;
//! under `CI=true` a test that cannot run fails.

#![allow(clippy::unwrap_used)]

mod underlay;

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use underlay::{can_run, run, wait_or_show, Underlay};
use weft_datapath::netns;
use weft_stores::testing::etcd_or_skip;

const HOST_GW: &str = r#"{"Network":"10.5.0.0/16","SubnetLen":24,"Backend":{"Type":"host-gw"}}"#;
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 100);

/// Whether `nft` runs here; panics under CI=true when it does not.
fn nft_present(test: &str) -> bool {
    if Command::new("nft").arg("--version").output().is_ok() {
        return true;
    }
    let why = format!("{test}: needs nft (Debian's nftables; scripts/install-deps)");
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{why}: CI=true, so this is a failure"
    );
    eprintln!("\n*** SKIPPED {why} ***\n");
    false
}

/// `nft ARGS` in namespace `ns`: its stdout, or `None` when nft fails.
fn nft(ns: &str, args: &[&str]) -> Option<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "nft"])
        .args(args)
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8(out.stdout).unwrap())
}

/// weft's table in `ns`, as `nft list` prints it, if there is one.
fn weft_table(ns: &str) -> Option<String> {
    nft(ns, &["list", "table", "inet", "weft"])
}

/// A TCP listener on `port` inside namespace `ns`.
fn listen(ns: &str, port: u16) -> TcpListener {
    let l = netns::in_netns(Some(&netns::path(ns)), move || {
        TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
    })
    .unwrap()
    .unwrap();
    l.set_nonblocking(true).unwrap();
    l
}

/// Connects from namespace `from` to `to`, sends a line, and returns the source
/// address `listener` saw, or `None` when nothing arrived within three seconds.
fn source_seen(from: &str, to: SocketAddr, listener: &TcpListener) -> Option<Ipv4Addr> {
    let connecting = {
        let from = netns::path(from);
        std::thread::spawn(move || {
            netns::in_netns(Some(&from), move || {
                TcpStream::connect_timeout(&to, Duration::from_secs(3))
                    .and_then(|mut s| std::io::Write::write_all(&mut s, b"hello\n"))
            })
        })
    };
    let deadline = Instant::now() + Duration::from_secs(4);
    let seen = loop {
        match listener.accept() {
            Ok((mut stream, peer)) => {
                stream.set_nonblocking(false).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(2)))
                    .unwrap();
                let mut line = [0u8; 6];
                stream.read_exact(&mut line).unwrap();
                assert_eq!(&line, b"hello\n");
                match peer {
                    SocketAddr::V4(a) => break Some(*a.ip()),
                    SocketAddr::V6(a) => panic!("an IPv6 peer {a}"),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    break None;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    let _ = connecting.join().unwrap();
    seen
}

#[test]
fn masquerade_rewrites_only_traffic_leaving_the_overlay_and_the_table_follows_the_daemon() {
    let test = "masquerade_rewrites_only_traffic_leaving_the_overlay";
    if !can_run(test) || !nft_present(test) {
        return;
    }
    let Some(etcd) = etcd_or_skip(test) else {
        return;
    };
    let started = Instant::now();
    let mut net = Underlay::new("mq", &["192.0.2.1", "192.0.2.2"], &etcd);
    net.set_config(HOST_GW);
    net.start_with(1, &["--ip-masq", "--iptables-resync", "1"]);
    net.start(2);
    let c1 = net.add_container(1);
    let c2 = net.add_container(2);
    let outside = net.add_outside(OUTSIDE);
    let (h1, h2) = (net.hosts[0].ns.clone(), net.hosts[1].ns.clone());
    let (c1_ns, c2_ns) = (
        net.hosts[0].container.clone().unwrap(),
        net.hosts[1].container.clone().unwrap(),
    );
    assert!(net.ping(1, 2), "c1 cannot ping c2 over host-gw");

    // h1 has weft's table, with the masquerade and forward chains; h2 (no --ip-masq)
    // has the forward rules only, flanneld's default.
    let table = weft_table(&h1).expect("h1 has no table inet weft");
    for want in [
        "type nat hook postrouting priority srcnat",
        "ip saddr 10.5.0.0/16 ip daddr 10.5.0.0/16 return",
        "ip saddr 10.5.0.0/16 ip daddr != 224.0.0.0/4 masquerade",
        "type filter hook forward priority filter",
        "ip saddr 10.5.0.0/16 accept",
        "ip daddr 10.5.0.0/16 accept",
    ] {
        assert!(table.contains(want), "h1: no {want:?} in\n{table}");
    }
    let table2 = weft_table(&h2).expect("h2 has no table inet weft");
    assert!(!table2.contains("masquerade"), "h2 masquerades:\n{table2}");
    assert!(table2.contains("ip saddr 10.5.0.0/16 accept"), "{table2}");
    let env1 = std::fs::read_to_string(&net.hosts[0].env).unwrap();
    assert!(env1.contains("FLANNEL_IPMASQ=true"), "{env1}");

    // Out of the overlay: the world sees h1's address; c2, not masqueraded, gets no
    // answer, since the world has no route back to 10.5.0.0/16.
    let world = listen(&outside, 7777);
    let to_world = SocketAddr::from((OUTSIDE, 7777));
    assert_eq!(
        source_seen(&c1_ns, to_world, &world),
        Some(Ipv4Addr::new(192, 0, 2, 1)),
        "c1 -> outside is not masqueraded to h1's address\n{}",
        net.log(1)
    );
    assert_eq!(
        source_seen(&c2_ns, to_world, &world),
        None,
        "c2 -> outside got through without masquerading: the test proves nothing"
    );

    // Within the overlay, across hosts: the container's own source, both ways.
    let at_c2 = listen(&c2_ns, 7778);
    assert_eq!(
        source_seen(&c1_ns, SocketAddr::from((c2, 7778)), &at_c2),
        Some(c1)
    );
    let at_c1 = listen(&c1_ns, 7779);
    assert_eq!(
        source_seen(&c2_ns, SocketAddr::from((c1, 7779)), &at_c1),
        Some(c2)
    );

    // Someone flushes the table, then deletes it: it comes back within the resync
    // period (1 s here), and masquerading works again.
    for (how, args) in [
        ("flushed", ["flush", "table", "inet", "weft"]),
        ("deleted", ["delete", "table", "inet", "weft"]),
    ] {
        nft(&h1, &args).unwrap_or_else(|| panic!("cannot {how} the table"));
        let back = Instant::now();
        wait_or_show(
            &format!("the {how} table to come back"),
            Duration::from_secs(10),
            || weft_table(&h1).as_deref() == Some(table.as_str()),
            || net.log(1),
        );
        eprintln!("{test}: table {how}, back in {:?}", back.elapsed());
        assert_eq!(
            source_seen(&c1_ns, to_world, &world),
            Some(Ipv4Addr::new(192, 0, 2, 1)),
            "not masqueraded after the table was {how} and restored"
        );
    }
    let log = net.log(1);
    assert!(
        log.contains("the nftables table was missing or changed; restored it"),
        "{log}"
    );

    // A clean stop (SIGTERM) takes the table with it.
    net.stop(1);
    assert_eq!(weft_table(&h1), None, "h1's table outlived its daemon");
    net.stop(2);
    assert_eq!(weft_table(&h2), None, "h2's table outlived its daemon");
    run("true", &[]);
    eprintln!("{test}: {:?}", started.elapsed());
}

/// A namespace of the test's own, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("wk{}{tag}", std::process::id());
        run("ip", &["netns", "add", &name]);
        Netns(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// The dual-stack rule set as the real kernel takes it (the datapath cannot carry IPv6
/// through host-gw yet, so the IPv6 half is checked here, through the library the
/// daemon uses): both families' rules are in the table, a listing matches the one
/// taken at install, a flush is noticed and repaired, and removing leaves nothing.
#[test]
fn dual_stack_rules_are_taken_by_the_kernel_resynced_and_removed() {
    use weft_datapath::nft::{Firewall, FirewallSettings, Resync};
    let test = "dual_stack_rules_are_taken_by_the_kernel";
    if !can_run(test) || !nft_present(test) {
        return;
    }
    let ns = Netns::new("mq6");
    let config = weft_core::NetworkConfig::parse(
        r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"host-gw"}}"#,
    )
    .unwrap();
    let settings = FirewallSettings {
        ip_masq: true,
        fully_random: true,
        forward_rules: true,
        resync: Duration::from_secs(1),
    };
    let key: weft_core::lease::LeaseKey = "10.5.7.0-24&fc00:0:0:7::-64".parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut fw = Firewall::new(Some(netns::path(&ns.0)), settings, &config);
    rt.block_on(fw.install(&key)).unwrap();
    let table = weft_table(&ns.0).expect("no table inet weft");
    for want in [
        "ip6 saddr fc00::/48 ip6 daddr fc00::/48 return",
        "ip6 saddr != fc00::/48 ip6 daddr fc00:0:0:7::/64 return",
        "ip6 saddr fc00::/48 ip6 daddr != ff00::/8 masquerade fully-random",
        "ip6 saddr != fc00::/48 ip6 daddr fc00::/48 masquerade fully-random",
        "ip6 saddr fc00::/48 accept",
        "ip6 daddr fc00::/48 accept",
        "ip saddr 10.5.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random",
        "ip saddr != 10.5.0.0/16 ip daddr 10.5.7.0/24 return",
        "meta mark & 0x00004000 == 0x00004000 return",
    ] {
        assert!(table.contains(want), "no {want:?} in\n{table}");
    }
    assert_eq!(rt.block_on(fw.resync()).unwrap(), Resync::Intact);
    nft(&ns.0, &["flush", "chain", "inet", "weft", "forward"]).unwrap();
    assert_eq!(rt.block_on(fw.resync()).unwrap(), Resync::Restored);
    assert_eq!(weft_table(&ns.0).as_deref(), Some(table.as_str()));
    // A rule added by someone else into our table is a change too.
    nft(
        &ns.0,
        &[
            "add",
            "rule",
            "inet",
            "weft",
            "forward",
            "ip",
            "saddr",
            "10.9.0.0/16",
            "drop",
        ],
    )
    .unwrap();
    assert_eq!(rt.block_on(fw.resync()).unwrap(), Resync::Restored);
    assert_eq!(weft_table(&ns.0).as_deref(), Some(table.as_str()));
    rt.block_on(fw.remove()).unwrap();
    assert_eq!(weft_table(&ns.0), None);
    // Removing twice is fine (a stop after someone deleted the table).
    rt.block_on(fw.remove()).unwrap();
}

/// Without nft the node still runs its overlay: the failure is logged once (not at
/// every resync), and the daemon keeps its lease and stops cleanly.
#[test]
fn without_nft_the_node_runs_and_says_so_once() {
    let test = "without_nft_the_node_runs_and_says_so_once";
    if !can_run(test) {
        return;
    }
    let Some(etcd) = etcd_or_skip(test) else {
        return;
    };
    let mut net = Underlay::new("mqn", &["192.0.2.1", "192.0.2.2"], &etcd);
    net.set_config(HOST_GW);
    let empty = net.dir.path().join("no-nft-here");
    std::fs::create_dir(&empty).unwrap();
    let path = empty.display().to_string();
    net.start_env(
        1,
        &["--ip-masq", "--iptables-resync", "1"],
        &[("PATH", &path)],
    );
    net.start(2);
    net.add_container(1);
    net.add_container(2);
    assert!(net.ping(1, 2), "the overlay does not work without nft");
    std::thread::sleep(Duration::from_secs(3));
    let log = net.log(1);
    assert_eq!(
        log.matches("the nft program is missing").count(),
        1,
        "logged other than once over 3 resyncs:\n{log}"
    );
    assert!(log.contains("install Debian's nftables package"), "{log}");
    net.stop(1);
    let log = net.log(1);
    assert!(log.contains("stopping; the lease is kept"), "{log}");
}
