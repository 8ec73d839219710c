//! The kernel backends, vxlan and host-gw, on the real kernel: three hosts in
//! namespaces on one underlay, a real `weft daemon` process on each, one real etcd
//! (see `underlay`). Checks that containers reach each other, that the kernel holds
//! the entries flannel would program, and that they follow the leases: a restarted node
//! keeps its VTEP MAC, a deleted lease takes its entries with it, a route deleted by
//! hand comes back, a peer off the underlay's network and a lease of another backend
//! are skipped with a log; and that weft's vxlan interoperates with a VTEP it does not
//! run (the kernel programmed by the test as flannel would, its lease in flannel's JSON),
//! checked on the wire with tcpdump. Root only.

#![allow(clippy::unwrap_used)]

mod underlay;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use underlay::capture::{have_tcpdump, parse_vxlan};
use underlay::{can_run, run, wait_or_show, wait_until, Underlay, PREFIX};
use weft_stores::testing::{etcd_or_skip, Etcd};

const VXLAN: &str = r#"{"Network":"10.5.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#;

/// Writes a lease of someone else's straight into etcd (no TTL: a reservation, so no
/// daemon takes its subnet).
fn put_lease(etcd: &Etcd, subnet: &str, value: &str) {
    let key = format!("{PREFIX}/subnets/{subnet}");
    let out = etcd.etcdctl(&["put", &key, value]);
    assert!(out.status.success(), "{out:?}");
}

fn etcd_get(etcd: &Etcd, key: &str) -> String {
    let out = etcd.etcdctl(&["get", "--print-value-only", key]);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn etcd_del(etcd: &Etcd, key: &str) {
    let out = etcd.etcdctl(&["del", key]);
    assert!(out.status.success(), "{out:?}");
}

/// Host `i`'s neighbours, FDB entries and routes for the overlay, sorted lines.
fn vxlan_entries(net: &Underlay, i: usize) -> Vec<String> {
    let mut out: Vec<String> = net
        .ip(i, &["neigh", "show", "dev", "flannel.1"])
        .lines()
        .chain(net.fdb(i, "flannel.1").lines())
        .chain(
            net.ip(
                i,
                &["route", "show", "root", "10.5.0.0/16", "dev", "flannel.1"],
            )
            .lines(),
        )
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    out.sort();
    out
}

fn vtep_mac(net: &Underlay, i: usize) -> String {
    let link = net.ip(i, &["-o", "link", "show", "flannel.1"]);
    let at = link.find("link/ether ").unwrap() + "link/ether ".len();
    link[at..at + 17].to_string()
}

fn subnet(net: &Underlay, i: usize) -> ipnet::Ipv4Net {
    net.hosts[i - 1].subnet.unwrap()
}

/// Host `i`'s route to `s`, as `ip route` shows it ("" for none).
fn route_to(net: &Underlay, i: usize, s: ipnet::Ipv4Net) -> String {
    let routes = net.ip(i, &["route", "show", &s.to_string()]);
    routes.lines().next().unwrap_or_default().to_string()
}

#[test]
fn vxlan_three_hosts_entries_restart_and_lease_removal() {
    let test = "vxlan_three_hosts_entries_restart_and_lease_removal";
    if !can_run(test) {
        return;
    }
    let Some(etcd) = etcd_or_skip(test) else {
        return;
    };
    let started = Instant::now();
    let mut net = Underlay::new("vx", &["192.0.2.1", "192.0.2.2", "192.0.2.3"], &etcd);
    net.set_config(VXLAN);
    put_lease(
        &etcd,
        "10.5.200.0-24",
        // flanneld's udp lease: no BackendType at all.
        r#"{"PublicIP":"192.0.2.9","PublicIPv6":null}"#,
    );
    for i in 1..=3 {
        net.start(i);
        net.add_container(i);
    }
    net.assert_mesh(&[1, 2, 3]);

    // The device as flannel creates it.
    for i in 1..=3 {
        let ip = format!("192.0.2.{i}");
        let link = net.ip(i, &["-d", "link", "show", "flannel.1"]);
        for want in [
            "vxlan id 1 ",
            &format!("local {ip} dev eth0 "),
            "dstport 8472 ",
            "nolearning",
            "mtu 1450 ",
            &format!("link/ether 0e:01:c0:00:02:0{i}"),
        ] {
            assert!(link.contains(want), "h{i}: no {want:?} in\n{link}");
        }
        let addr = net.ip(i, &["-4", "-o", "addr", "show", "dev", "flannel.1"]);
        let s = net.hosts[i - 1].subnet.unwrap();
        assert!(
            addr.contains(&format!("inet {}/32 ", s.network())),
            "h{i}: {addr}"
        );
        let value = etcd_get(&etcd, &net.lease_key(i));
        assert_eq!(
            value,
            format!(
                r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"0e:01:c0:00:02:0{i}"}}}}"#
            )
        );
    }
    // Per peer: neighbour, FDB entry, onlink route; nothing for the udp lease.
    for i in 1..=3 {
        let neigh = net.ip(i, &["neigh", "show", "dev", "flannel.1"]);
        let fdb = net.fdb(i, "flannel.1");
        let routes = net.ip(i, &["route", "show"]);
        for p in (1..=3).filter(|p| *p != i) {
            let s = net.hosts[p - 1].subnet.unwrap();
            let mac = format!("0e:01:c0:00:02:0{p}");
            assert!(
                neigh.contains(&format!("{} lladdr {mac} PERMANENT", s.network())),
                "h{i}: {neigh}"
            );
            assert!(
                fdb.contains(&format!("{mac} dst 192.0.2.{p} self permanent")),
                "h{i}: {fdb}"
            );
            let route = routes
                .lines()
                .find(|l| l.starts_with(&format!("{s} ")))
                .unwrap_or_default();
            assert!(
                route.contains(&format!("via {} dev flannel.1", s.network()))
                    && route.contains("onlink"),
                "h{i}: {routes}"
            );
        }
        assert!(
            !routes.contains("10.5.200.0"),
            "h{i} routed the udp lease: {routes}"
        );
        let log = net.log(i);
        assert_eq!(
            log.matches("ignoring a lease of another backend type")
                .count(),
            1,
            "h{i}: {log}"
        );
    }

    // A restart keeps the MAC, and the peers' entries do not change.
    let before = (vxlan_entries(&net, 1), vxlan_entries(&net, 3));
    net.stop(2);
    assert_eq!(
        (vxlan_entries(&net, 1), vxlan_entries(&net, 3)),
        before,
        "a clean stop keeps the lease"
    );
    net.start(2);
    wait_until(
        "h2 programs its peers again",
        Duration::from_secs(20),
        || vxlan_entries(&net, 2).len() == 6,
    );
    assert_eq!(vtep_mac(&net, 2), "0e:01:c0:00:02:02");
    assert_eq!((vxlan_entries(&net, 1), vxlan_entries(&net, 3)), before);
    net.assert_mesh(&[1, 2, 3]);

    // h3 stops cleanly, then its lease is deleted: its entries leave the peers.
    net.stop(3);
    etcd_del(&etcd, &net.lease_key(3));
    let s3 = net.hosts[2].subnet.unwrap();
    for i in [1, 2] {
        wait_until(&format!("h{i} forgets h3"), Duration::from_secs(10), || {
            let e = vxlan_entries(&net, i);
            e.len() == 3
                && !e.iter().any(|l| {
                    l.contains("0e:01:c0:00:02:03") || l.contains(&s3.network().to_string())
                })
        });
    }
    net.assert_mesh(&[1, 2]);
    eprintln!("{test}: {:?}", started.elapsed());
}

#[test]
fn vxlan_direct_routing_routes_same_network_peers_without_encapsulation() {
    let test = "vxlan_direct_routing_routes_same_network_peers_without_encapsulation";
    if !can_run(test) {
        return;
    }
    let Some(etcd) = etcd_or_skip(test) else {
        return;
    };
    let started = Instant::now();
    let mut net = Underlay::new("dr", &["192.0.2.1", "192.0.2.2", "198.51.100.3"], &etcd);
    net.set_config(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#);
    for i in 1..=3 {
        net.start(i);
        net.add_container(i);
    }
    net.assert_mesh(&[1, 2, 3]);
    let (s2, s3) = (net.hosts[1].subnet.unwrap(), net.hosts[2].subnet.unwrap());
    let routes = net.ip(1, &["route", "show"]);
    let line = |s: ipnet::Ipv4Net| {
        routes
            .lines()
            .find(|l| l.starts_with(&format!("{s} ")))
            .unwrap_or_default()
            .to_string()
    };
    assert!(line(s2).contains("via 192.0.2.2 dev eth0"), "{routes}");
    assert!(
        line(s3).contains(&format!("via {} dev flannel.1", s3.network())),
        "{routes}"
    );
    let neigh = net.ip(1, &["neigh", "show", "dev", "flannel.1"]);
    assert!(
        !neigh.contains(&s2.network().to_string()) && neigh.contains(&s3.network().to_string()),
        "{neigh}"
    );
    let fdb = net.fdb(1, "flannel.1");
    assert!(
        fdb.contains("0e:01:c6:33:64:03 dst 198.51.100.3 self permanent")
            && !fdb.contains("192.0.2.2"),
        "{fdb}"
    );
    // A clean stop removes the direct route too.
    net.stop(1);
    let routes = net.ip(1, &["route", "show"]);
    assert!(
        !routes
            .lines()
            .any(|l| l.starts_with("10.5.") && l.contains(" via ")),
        "{routes}"
    );
    eprintln!("{test}: {:?}", started.elapsed());
}

#[test]
fn host_gw_routes_restores_removes_stale_and_skips_a_peer_off_the_network() {
    let test = "host_gw_routes_restores_removes_stale_and_skips_a_peer_off_the_network";
    if !can_run(test) {
        return;
    }
    let Some(etcd) = etcd_or_skip(test) else {
        return;
    };
    let started = Instant::now();
    let mut net = Underlay::new("hg", &["192.0.2.1", "192.0.2.2", "192.0.2.3"], &etcd);
    net.set_config(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"}}"#);
    put_lease(
        &etcd,
        "10.5.201.0-24",
        r#"{"PublicIP":"198.51.100.9","PublicIPv6":null,"BackendType":"host-gw"}"#,
    );
    for i in 1..=3 {
        net.start(i);
        net.add_container(i);
    }
    net.assert_mesh(&[1, 2, 3]);
    for i in 1..=3 {
        for p in (1..=3).filter(|p| *p != i) {
            let r = route_to(&net, i, subnet(&net, p));
            assert!(
                r.contains(&format!("via 192.0.2.{p} dev eth0")),
                "h{i} -> h{p}: {r:?}"
            );
        }
        assert_eq!(
            route_to(&net, i, "10.5.201.0/24".parse().unwrap()),
            "",
            "h{i} routed a peer it cannot reach"
        );
        let log = net.log(i);
        let skipped: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("host-gw cannot route this peer"))
            .collect();
        assert_eq!(skipped.len(), 1, "h{i}: {log}");
        assert!(
            skipped[0].contains("10.5.201.0/24") && skipped[0].contains("unreachable_total=1"),
            "{}",
            skipped[0]
        );
    }

    // Deleted by hand: back within a check; one added by hand into the overlay: gone.
    let s2 = subnet(&net, 2);
    net.ip(1, &["route", "del", &s2.to_string()]);
    net.ip(
        1,
        &[
            "route",
            "add",
            "10.5.250.0/24",
            "via",
            "192.0.2.3",
            "dev",
            "eth0",
        ],
    );
    wait_or_show(
        "h1 restores its route to h2 and drops the stale one",
        Duration::from_secs(25),
        || {
            route_to(&net, 1, s2).contains("via 192.0.2.2")
                && route_to(&net, 1, "10.5.250.0/24".parse().unwrap()).is_empty()
        },
        || format!("{}\n{}", net.ip(1, &["route"]), net.log(1)),
    );
    assert!(net.ping(1, 2));
    let log = net.log(1);
    assert!(
        log.contains("restored_total=1") && log.contains("stale_total=1"),
        "{log}"
    );

    // h3's lease deleted after a clean stop: its routes leave the peers.
    let s3 = subnet(&net, 3);
    net.stop(3);
    etcd_del(&etcd, &net.lease_key(3));
    for i in [1, 2] {
        wait_until(&format!("h{i} forgets h3"), Duration::from_secs(10), || {
            route_to(&net, i, s3).is_empty()
        });
    }
    net.stop(1);
    let routes = net.ip(1, &["route", "show"]);
    assert!(
        !routes
            .lines()
            .any(|l| l.starts_with("10.5.") && l.contains(" via ")),
        "a clean stop removes the routes: {routes}"
    );
    eprintln!("{test}: {:?}", started.elapsed());
}

/// The leases in etcd as (subnet, PublicIP, VtepMAC), vxlan ones only.
fn vxlan_leases(etcd: &Etcd) -> Vec<(ipnet::Ipv4Net, Ipv4Addr, String)> {
    let out = etcd.etcdctl(&["get", "--prefix", &format!("{PREFIX}/subnets/")]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut leases = Vec::new();
    for kv in lines.chunks(2) {
        let [key, value] = kv else {
            panic!("etcdctl get: a key without a value: {text}")
        };
        let subnet = key.rsplit('/').next().unwrap().replace('-', "/");
        let v: serde_json::Value = serde_json::from_str(value).unwrap();
        if v["BackendType"] != "vxlan" {
            continue;
        }
        leases.push((
            subnet.parse().unwrap(),
            v["PublicIP"].as_str().unwrap().parse().unwrap(),
            v["BackendData"]["VtepMAC"].as_str().unwrap().to_string(),
        ));
    }
    leases
}

/// Host `i` made a VXLAN peer that weft does not run, as flannel would program it, with
/// `ip` and `bridge` only: its device, the subnet's network address on it, and for each
/// other vxlan lease a permanent neighbour, a permanent FDB entry and an onlink route.
/// Returns the device's MAC (the kernel's choice).
fn kernel_vtep(net: &Underlay, i: usize, subnet: ipnet::Ipv4Net, etcd: &Etcd) -> String {
    let local = net.hosts[i - 1].ip.to_string();
    let dev = [
        "link",
        "add",
        "flannel.1",
        "type",
        "vxlan",
        "id",
        "1",
        "local",
        &local,
        "dev",
        "eth0",
        "dstport",
        "8472",
        "nolearning",
    ];
    net.ip(i, &dev);
    net.ip(i, &["link", "set", "flannel.1", "mtu", "1450"]);
    let addr = format!("{}/32", subnet.network());
    net.ip(i, &["addr", "add", &addr, "dev", "flannel.1"]);
    net.ip(i, &["link", "set", "flannel.1", "up"]);
    let ns = net.hosts[i - 1].ns.clone();
    for (s, public, mac) in vxlan_leases(etcd) {
        if s == subnet {
            continue;
        }
        let (gw, public) = (s.network().to_string(), public.to_string());
        net.ip(
            i,
            &[
                "neigh",
                "replace",
                &gw,
                "lladdr",
                &mac,
                "dev",
                "flannel.1",
                "nud",
                "permanent",
            ],
        );
        run(
            "ip",
            &[
                "netns",
                "exec",
                &ns,
                "bridge",
                "fdb",
                "append",
                &mac,
                "dev",
                "flannel.1",
                "dst",
                &public,
                "self",
                "permanent",
            ],
        );
        net.ip(
            i,
            &[
                "route",
                "replace",
                &s.to_string(),
                "via",
                &gw,
                "dev",
                "flannel.1",
                "onlink",
            ],
        );
    }
    vtep_mac(net, i)
}

/// Writes a lease as flanneld does on etcd v3: the JSON of its vxlan backend, under an
/// etcd lease with flannel's 24 h TTL.
fn put_flannel_vxlan_lease(etcd: &Etcd, subnet: ipnet::Ipv4Net, public: Ipv4Addr, mac: &str) {
    let out = etcd.etcdctl(&["lease", "grant", "86400"]);
    assert!(out.status.success(), "{out:?}");
    let granted = String::from_utf8(out.stdout).unwrap();
    // "lease 694d8c6d3a6e1a0b granted with TTL(86400s)"
    let id = granted.split_whitespace().nth(1).unwrap().to_string();
    let key = format!(
        "{PREFIX}/subnets/{}-{}",
        subnet.network(),
        subnet.prefix_len()
    );
    let value = format!(
        r#"{{"PublicIP":"{public}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
    );
    let out = etcd.etcdctl(&["put", &format!("--lease={id}"), &key, &value]);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn vxlan_interop_with_a_kernel_vtep_weft_does_not_run() {
    let test = "vxlan_interop_with_a_kernel_vtep_weft_does_not_run";
    if !can_run(test) || !have_tcpdump(test) {
        return;
    }
    let Some(etcd) = etcd_or_skip(test) else {
        return;
    };
    let started = Instant::now();
    let mut net = Underlay::new("ki", &["192.0.2.1", "192.0.2.2", "192.0.2.3"], &etcd);
    net.set_config(VXLAN);
    for i in [1, 2] {
        net.start(i);
        net.add_container(i);
    }
    // Host 3: the kernel alone, programmed from the weft leases, and its lease in etcd.
    let s3: ipnet::Ipv4Net = "10.5.99.0/24".parse().unwrap();
    let mac3 = kernel_vtep(&net, 3, s3, &etcd);
    put_flannel_vxlan_lease(&etcd, s3, net.hosts[2].ip, &mac3);
    net.hosts[2].subnet = Some(s3);
    net.add_container(3);
    for i in [1, 2] {
        wait_or_show(
            &format!("h{i} programs the kernel peer"),
            Duration::from_secs(15),
            || {
                let neigh = net.ip(i, &["neigh", "show", "dev", "flannel.1"]);
                neigh.contains(&format!("10.5.99.0 lladdr {mac3} PERMANENT"))
                    && net
                        .fdb(i, "flannel.1")
                        .contains(&format!("{mac3} dst 192.0.2.3 self permanent"))
                    && route_to(&net, i, s3).contains("via 10.5.99.0 dev flannel.1")
            },
            || format!("{}\n{}", vxlan_entries(&net, i).join("\n"), net.log(i)),
        );
    }
    net.assert_mesh(&[1, 2, 3]);

    // On the wire: what crosses host 3's underlay port is VXLAN, VNI 1, on UDP 8472,
    // carrying the containers' packets, both ways and with both weft hosts.
    let capture = net.capture(3, "ip and udp", 64, Duration::from_secs(20));
    for (a, b) in [(3, 1), (2, 3)] {
        assert!(net.ping(a, b), "c{a} cannot ping c{b} during the capture");
    }
    let (frames, log) = capture.finish();
    let parsed: Vec<_> = frames
        .iter()
        .map(|f| parse_vxlan(f).unwrap_or_else(|e| panic!("not VXLAN ({e}): {f:02x?}\n{log}")))
        .collect();
    for f in &parsed {
        assert_eq!(f.udp_dst, 8472, "{f:?}");
        assert_eq!(f.flags, 0x08, "the I bit alone: {f:?}");
        assert_eq!(f.vni, 1, "{f:?}");
    }
    let c = |i: usize| net.container_ip(i);
    let h = |i: usize| net.hosts[i - 1].ip;
    for (a, b) in [(3, 1), (1, 3), (2, 3), (3, 2)] {
        assert!(
            parsed.iter().any(|f| f.inner_src == c(a)
                && f.inner_dst == c(b)
                && f.outer_src == h(a)
                && f.outer_dst == h(b)),
            "no c{a} -> c{b} inside h{a} -> h{b} VXLAN in {parsed:#?}"
        );
    }

    // Bulk traffic both ways between weft and the kernel peer.
    const SIZE: u64 = 16 * 1024 * 1024;
    for (a, b) in [(1, 3), (3, 2)] {
        let [sent, got] = net.tcp_transfer(a, b, net.container_ip(b).into(), SIZE);
        assert_eq!(
            sent, got,
            "c{a} -> c{b}: (bytes, checksum) sent and received"
        );
    }
    eprintln!(
        "{test}: {:?} ({} frames captured)",
        started.elapsed(),
        parsed.len()
    );
}
