//! The kernel backends with IPv6, on the real kernel: three hosts in namespaces on a
//! dual-stack underlay, a real `weft daemon` process on each, one real etcd (see
//! `underlay`). For host-gw and vxlan with dual stack: every container reaches every
//! container on the other hosts over both families (ping, and a TCP transfer whose
//! checksum must match), the kernel holds the IPv6 entries flannel would program
//! (vxlan: the second device `flannel-v6.1`, its neighbours, FDB entries and routes;
//! host-gw: `subnet via PublicIPv6`), and a stopped node's entries of both families
//! leave its peers once its lease is deleted. IPv6-only (`EnableIPv4: false`) the same
//! over IPv6 alone: flannel's lease (key `0.0.0.0-0&…`, `PublicIP` 0.0.0.0), vxlan's
//! `flannel-v6.1` alone, host-gw's routes via `PublicIPv6`, containers with no IPv4 at
//! all. Root only.

#![allow(clippy::unwrap_used)]

mod underlay;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use underlay::{can_run, wait_or_show, wait_until, Underlay};
use weft_stores::testing::{etcd_or_skip, Etcd};

const BYTES: u64 = 256 * 1024;

fn dual_stack(backend: &str) -> String {
    format!(
        r#"{{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{{"Type":"{backend}"}}}}"#
    )
}

fn ipv6_only(backend: &str) -> String {
    format!(
        r#"{{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{{"Type":"{backend}"}}}}"#
    )
}

/// Three hosts of an IPv6-only network running `config` (the underlay keeps both
/// families), each with a container that has an IPv6 address alone.
fn three_hosts_v6_only(tag: &str, etcd: &Etcd, config: &str) -> Underlay {
    let mut net = Underlay::new(tag, &["192.0.2.1", "192.0.2.2", "192.0.2.3"], etcd);
    net.enable_ipv6();
    net.set_config(config);
    for i in 1..=3 {
        net.start6(i);
        net.add_container_v6_only(i);
    }
    net
}

/// Three dual-stack hosts running `config`, each with a dual-stack container.
fn three_hosts(tag: &str, etcd: &Etcd, config: &str) -> Underlay {
    let mut net = Underlay::new(tag, &["192.0.2.1", "192.0.2.2", "192.0.2.3"], etcd);
    net.enable_ipv6();
    net.set_config(config);
    for i in 1..=3 {
        net.start(i);
        net.add_container(i);
        net.add_container6(i);
    }
    net
}

/// [`three_hosts`], each daemon also serving /metrics on its loopback (port 9110).
fn three_hosts_with_metrics(
    tag: &str,
    etcd: &Etcd,
    config: &str,
    env: &[(&str, &str)],
) -> Underlay {
    let mut net = Underlay::new(tag, &["192.0.2.1", "192.0.2.2", "192.0.2.3"], etcd);
    net.enable_ipv6();
    net.set_config(config);
    for i in 1..=3 {
        let key = net
            .dir
            .path()
            .join(format!("h{i}.wgkey"))
            .display()
            .to_string();
        let mut env: Vec<(&str, &str)> = env.to_vec();
        env.push(("WIREGUARD_KEY_FILE", &key));
        net.start_env(
            i,
            &["--healthz-ip", "127.0.0.1", "--healthz-port", "9110"],
            &env,
        );
        net.add_container(i);
        net.add_container6(i);
    }
    net
}

/// Sends `payload` as one UDP datagram from host `i`'s namespace (from its underlay
/// address, an ephemeral port) to `to`.
fn send_from_host(net: &Underlay, i: usize, to: std::net::SocketAddr, payload: &[u8]) {
    let ns = weft_datapath::netns::path(&net.hosts[i - 1].ns);
    let (from, payload) = (net.hosts[i - 1].ip, payload.to_vec());
    weft_datapath::netns::in_netns(Some(&ns), move || {
        let s = std::net::UdpSocket::bind((from, 0)).unwrap();
        s.send_to(&payload, to).unwrap();
    })
    .unwrap();
}

/// An IPv6/UDP packet from `src` to `dst` (port 9), hop limit 64, checksum 0.
fn udp6_packet(src: std::net::Ipv6Addr, dst: std::net::Ipv6Addr, data: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 48 + data.len()];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&((8 + data.len()) as u16).to_be_bytes());
    p[6] = 17;
    p[7] = 64;
    p[8..24].copy_from_slice(&src.octets());
    p[24..40].copy_from_slice(&dst.octets());
    p[40..42].copy_from_slice(&9u16.to_be_bytes());
    p[42..44].copy_from_slice(&9u16.to_be_bytes());
    p[44..46].copy_from_slice(&((8 + data.len()) as u16).to_be_bytes());
    p[48..].copy_from_slice(data);
    p
}

#[test]
fn udp_dual_stack_three_hosts_mesh_offloads_icmpv6_and_spoofed_ipv6_sources() {
    let test = "udp_dual_stack_three_hosts_mesh_offloads_icmpv6_and_spoofed_ipv6_sources";
    if !can_run(test) {
        return;
    }
    let Some(etcd) = etcd_or_skip(test) else {
        return;
    };
    let started = Instant::now();
    let net = three_hosts_with_metrics("u6", &etcd, &dual_stack("udp"), &[]);
    assert_mesh_both_families(&net, &[1, 2, 3]);
    let total = |i: usize, name: &str| {
        net.metric(
            i,
            &format!(r#"weft_datapath_{name}_total{{backend="udp"}} "#),
        )
    };
    for i in 1..=3 {
        // The TUN device carries both families: our IPv6 subnet's network address /128
        // beside the IPv4 one, and the route of the whole IPv6 network.
        let s6 = net.subnet6(i);
        let addrs = net.ip(i, &["-6", "addr", "show", "dev", "weft0"]);
        assert!(
            addrs.contains(&format!("inet6 {}/128", s6.network())),
            "h{i}: {addrs}"
        );
        let r = route6_to(&net, i, "fc00::/48".parse().unwrap());
        assert!(r.contains("dev weft0"), "h{i}: {r:?}");
        // flannel's udp lease with the IPv6 address beside: no BackendType, no data.
        let value = etcd_get(&etcd, &net.lease_key_in(i, &etcd));
        assert_eq!(
            value,
            format!(r#"{{"PublicIP":"192.0.2.{i}","PublicIPv6":"2001:db8:1::{i}"}}"#)
        );
    }
    // TCP over IPv6 alone: h1 reads it from its TUN device as super-packets and cuts
    // them (TSO), h2 joins the received segments again (GRO coalescing).
    let (tso, gro) = (total(1, "tso_reads"), total(2, "gro_writes"));
    let [sent, got] = net.tcp_transfer(1, 2, IpAddr::V6(net.container_ip6(2)), 8 << 20);
    assert_eq!(got, sent);
    // The daemon publishes its counters every 250 ms: wait for them.
    wait_until(
        "h1 segments IPv6 TCP super-packets",
        Duration::from_secs(5),
        || total(1, "tso_reads") > tso,
    );
    wait_until(
        "h2 coalesces IPv6 TCP segments",
        Duration::from_secs(5),
        || total(2, "gro_writes") > gro,
    );

    // A destination in the IPv6 network that no lease holds: ICMPv6 "no route" back.
    let c1 = net.hosts[0].container.clone().unwrap();
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &c1,
            "ping",
            "-6",
            "-c",
            "1",
            "-W",
            "2",
            "fc00:0:0:ff00::1",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("From fc00:: ") && text.contains("Destination unreachable: No route"),
        "{text}"
    );

    // h1 sends h2 a datagram whose inner IPv6 packet claims c3's address: dropped and
    // counted as spoofed; one from c1's own address is not.
    let spoofed = |i| {
        net.metric(
            i,
            r#"weft_packets_dropped_total{backend="udp",reason="spoofed_source"} "#,
        )
    };
    let before = spoofed(2);
    let to = std::net::SocketAddr::from((net.hosts[1].ip, 8285));
    send_from_host(
        &net,
        1,
        to,
        &udp6_packet(net.container_ip6(3), net.container_ip6(2), b"spoofed"),
    );
    wait_until(
        "h2 counts the spoofed IPv6 source",
        Duration::from_secs(5),
        || spoofed(2) > before,
    );
    send_from_host(
        &net,
        1,
        to,
        &udp6_packet(net.container_ip6(1), net.container_ip6(2), b"genuine"),
    );
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(spoofed(2), before + 1);
    eprintln!("{test}: {:?}", started.elapsed());
}

/// `wg pubkey` of host `i`'s key file.
fn wg_pubkey_of(net: &Underlay, i: usize) -> String {
    use std::io::Write;
    let private = std::fs::read_to_string(net.dir.path().join(format!("h{i}.wgkey"))).unwrap();
    let mut child = std::process::Command::new("wg")
        .arg("pubkey")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("wg (wireguard-tools, scripts/install-deps)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(private.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A captured Ethernet frame's UDP datagram: (IPv6 outer, destination port, payload).
fn udp_of(frame: &[u8]) -> Option<(bool, u16, &[u8])> {
    let ip = frame.get(14..)?;
    let (v6, udp) = match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0800 if ip.get(9) == Some(&17) => (false, ip.get(usize::from(ip[0] & 0x0f) * 4..)?),
        0x86dd if ip.get(6) == Some(&17) => (true, ip.get(40..)?),
        _ => return None,
    };
    Some((
        v6,
        u16::from_be_bytes([*udp.first()?, *udp.get(1)?]),
        udp.get(8..)?,
    ))
}

#[test]
fn wireguard_dual_stack_separate_three_hosts_mesh_leases_and_no_plaintext_ipv6() {
    wireguard_dual_stack(
        "wireguard_dual_stack_separate_three_hosts_mesh_leases_and_no_plaintext_ipv6",
        &dual_stack("wireguard"),
        true,
    );
}

#[test]
fn wireguard_dual_stack_auto_one_session_per_peer_over_ipv4() {
    // auto with public (not RFC 1918) IPv4 addresses: flannel's selectMode picks IPv4,
    // so both families ride one session over the IPv4 underlay.
    wireguard_dual_stack(
        "wireguard_dual_stack_auto_one_session_per_peer_over_ipv4",
        &dual_stack("wireguard").replace(
            r#""Type":"wireguard""#,
            r#""Type":"wireguard","Mode":"auto""#,
        ),
        false,
    );
}

/// A 3-host dual-stack wireguard mesh on `config`; `separate`: the IPv6 sessions run
/// over the IPv6 underlay to port 51821 (else every datagram is IPv4).
fn wireguard_dual_stack(test: &str, config: &str, separate: bool) {
    if !can_run(test) || !underlay::capture::have_tcpdump(test) {
        return;
    }
    let Some(etcd) = etcd_or_skip(test) else {
        return;
    };
    let started = Instant::now();
    let net = three_hosts_with_metrics("g6", &etcd, config, &[]);
    assert_mesh_both_families(&net, &[1, 2, 3]);
    for i in 1..=3 {
        // flannel's newSubnetAttrs, byte for byte: one key for both families, the IPv4
        // data with ListenPort, the IPv6 data with ListenPortV6.
        let key = wg_pubkey_of(&net, i);
        let value = etcd_get(&etcd, &net.lease_key_in(i, &etcd));
        assert_eq!(
            value,
            format!(
                r#"{{"PublicIP":"192.0.2.{i}","PublicIPv6":"2001:db8:1::{i}","BackendType":"wireguard","BackendData":{{"PublicKey":"{key}","Port":51820}},"BackendV6Data":{{"PublicKey":"{key}","Port":51821}}}}"#
            )
        );
        let addrs = net.ip(i, &["-6", "addr", "show", "dev", "weft0"]);
        assert!(
            addrs.contains(&format!("inet6 {}/128", net.subnet6(i).network())),
            "h{i}: {addrs}"
        );
    }
    // On h3's underlay port while both peers reach c3 over IPv6: WireGuard messages
    // only, the IPv6 sessions on [PublicIPv6]:51821 (separate mode), and c3's IPv6
    // address nowhere in the clear.
    let capture = net.capture(3, "udp", 400, Duration::from_secs(20));
    let c3 = net.container_ip6(3);
    for a in [1, 2] {
        assert!(
            net.ping_ip(a, IpAddr::V6(c3)),
            "c{a} cannot ping c3 over IPv6"
        );
        let [sent, got] = net.tcp_transfer(a, 3, IpAddr::V6(c3), 64 * 1024);
        assert_eq!(got, sent);
    }
    let (frames, log) = capture.finish();
    let datagrams: Vec<(bool, u16, &[u8])> = frames.iter().filter_map(|f| udp_of(f)).collect();
    assert!(!datagrams.is_empty(), "nothing captured\n{log}");
    let v6_to_51821 = datagrams
        .iter()
        .filter(|(v6, port, _)| *v6 && *port == 51821)
        .count();
    if separate {
        assert!(
            v6_to_51821 > 0,
            "no IPv6 datagram to port 51821 in {} captured",
            datagrams.len()
        );
    } else {
        assert!(
            datagrams.iter().all(|(v6, _, _)| !*v6),
            "auto over IPv4: an IPv6 datagram on the underlay"
        );
    }
    for (v6, port, payload) in &datagrams {
        let t = payload.first().copied().unwrap_or(0);
        assert!(
            (1..=4).contains(&t) && payload.get(1..4) == Some(&[0, 0, 0][..]),
            "not WireGuard (IPv6 outer: {v6}, port {port}): {:02x?}",
            &payload[..8.min(payload.len())]
        );
    }
    for f in &frames {
        assert!(
            !f.windows(16).any(|w| w == c3.octets()),
            "c3's IPv6 address in the clear on the underlay"
        );
    }
    eprintln!("{test}: {:?}", started.elapsed());
}

/// Every container pings every container of the other `hosts` over both families,
/// and sends each a TCP stream that arrives whole and unchanged.
fn assert_mesh_both_families(net: &Underlay, hosts: &[usize]) {
    assert_mesh_over(net, hosts, |b| {
        vec![
            IpAddr::V4(net.container_ip(b)),
            IpAddr::V6(net.container_ip6(b)),
        ]
    });
}

/// [`assert_mesh_both_families`] over IPv6 alone (an IPv6-only network's containers
/// have no IPv4 address).
fn assert_mesh_ipv6(net: &Underlay, hosts: &[usize]) {
    assert_mesh_over(net, hosts, |b| vec![IpAddr::V6(net.container_ip6(b))]);
}

/// Every container pings every other container of `hosts` at each of `addrs(b)`, and
/// sends each a TCP stream that arrives whole and unchanged.
fn assert_mesh_over(net: &Underlay, hosts: &[usize], addrs: impl Fn(usize) -> Vec<IpAddr>) {
    for &a in hosts {
        for &b in hosts.iter().filter(|b| **b != a) {
            for to in addrs(b) {
                assert!(net.ping_ip(a, to), "c{a} cannot ping c{b} at {to}");
                let [sent, got] = net.tcp_transfer(a, b, to, BYTES);
                assert_eq!(got, sent, "c{a} -> c{b} at {to}: (bytes, checksum)");
            }
        }
    }
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

/// Host `i`'s IPv6 route to `s`, as `ip -6 route` shows it ("" for none).
fn route6_to(net: &Underlay, i: usize, s: ipnet::Ipv6Net) -> String {
    let routes = net.ip(i, &["-6", "route", "show", &s.to_string()]);
    routes.lines().next().unwrap_or_default().to_string()
}

/// Host `i`'s IPv4 route to `s` ("" for none).
fn route_to(net: &Underlay, i: usize, s: ipnet::Ipv4Net) -> String {
    let routes = net.ip(i, &["route", "show", &s.to_string()]);
    routes.lines().next().unwrap_or_default().to_string()
}

#[test]
fn host_gw_dual_stack_three_hosts_mesh_restore_and_lease_removal() {
    let test = "host_gw_dual_stack_three_hosts_mesh_restore_and_lease_removal";
    if !can_run(test) {
        return;
    }
    let Some(etcd) = etcd_or_skip(test) else {
        return;
    };
    let started = Instant::now();
    let mut net = three_hosts("h6", &etcd, &dual_stack("host-gw"));
    assert_mesh_both_families(&net, &[1, 2, 3]);
    for i in 1..=3 {
        for p in (1..=3).filter(|p| *p != i) {
            let r = route6_to(&net, i, net.subnet6(p));
            assert!(
                r.contains(&format!("via 2001:db8:1::{p} dev eth0")),
                "h{i} -> h{p}: {r:?}"
            );
        }
        let value = etcd_get(&etcd, &net.lease_key_in(i, &etcd));
        assert_eq!(
            value,
            format!(
                r#"{{"PublicIP":"192.0.2.{i}","PublicIPv6":"2001:db8:1::{i}","BackendType":"host-gw"}}"#
            )
        );
        let log = net.log(i);
        assert!(!log.contains("IPv6 routes are not programmed"), "{log}");
    }

    // An IPv6 route deleted by hand comes back at the next check; meanwhile h3 stops
    // and its lease is deleted: its routes of both families leave the peers.
    let s2 = net.subnet6(2);
    net.ip(1, &["-6", "route", "del", &s2.to_string()]);
    let (s3, s3v6) = (net.hosts[2].subnet.unwrap(), net.subnet6(3));
    let key3 = net.lease_key_in(3, &etcd);
    net.stop(3);
    etcd_del(&etcd, &key3);
    for i in [1, 2] {
        wait_until(&format!("h{i} forgets h3"), Duration::from_secs(10), || {
            route_to(&net, i, s3).is_empty() && route6_to(&net, i, s3v6).is_empty()
        });
    }
    wait_or_show(
        "h1 restores its IPv6 route to h2",
        Duration::from_secs(25),
        || route6_to(&net, 1, s2).contains("via 2001:db8:1::2"),
        || format!("{}\n{}", net.ip(1, &["-6", "route"]), net.log(1)),
    );
    assert!(net.ping_ip(1, IpAddr::V6(net.container_ip6(2))));
    assert!(net.log(1).contains("restored_total=1"));
    net.stop(1);
    let routes = net.ip(1, &["-6", "route", "show"]);
    assert!(
        !routes
            .lines()
            .any(|l| l.starts_with("fc00:") && l.contains(" via ")),
        "a clean stop removes the IPv6 routes: {routes}"
    );
    eprintln!("{test}: {:?}", started.elapsed());
}

/// Host `i`'s IPv6 neighbours, FDB entries and routes on `flannel-v6.1`, sorted lines.
fn vxlan6_entries(net: &Underlay, i: usize) -> Vec<String> {
    let mut out: Vec<String> = net
        .ip(i, &["-6", "neigh", "show", "dev", "flannel-v6.1"])
        .lines()
        .chain(net.fdb(i, "flannel-v6.1").lines())
        .chain(
            net.ip(
                i,
                &[
                    "-6",
                    "route",
                    "show",
                    "root",
                    "fc00::/48",
                    "dev",
                    "flannel-v6.1",
                ],
            )
            .lines(),
        )
        .map(|l| l.trim().to_string())
        // The kernel's own: link-local neighbours, multicast FDB entries, the prefix
        // route of the device's /128.
        .filter(|l| {
            !l.is_empty()
                && !l.starts_with("fe80")
                && !l.starts_with("33:33")
                && !l.contains("proto kernel")
        })
        .collect();
    out.sort();
    out
}

#[test]
fn vxlan_dual_stack_three_hosts_second_device_mesh_and_lease_removal() {
    let test = "vxlan_dual_stack_three_hosts_second_device_mesh_and_lease_removal";
    if !can_run(test) {
        return;
    }
    let Some(etcd) = etcd_or_skip(test) else {
        return;
    };
    let started = Instant::now();
    let mut net = three_hosts("x6", &etcd, &dual_stack("vxlan"));
    assert_mesh_both_families(&net, &[1, 2, 3]);
    let mac6 = |p: usize| format!("0e:01:00:00:00:0{p}");
    for i in 1..=3 {
        let link = net.ip(i, &["-d", "link", "show", "flannel-v6.1"]);
        for want in [
            "vxlan id 1 ",
            &format!("local 2001:db8:1::{i} dev eth0 "),
            "dstport 8472 ",
            "nolearning",
            "mtu 1430 ",
            &format!("link/ether {}", mac6(i)),
        ] {
            assert!(link.contains(want), "h{i}: no {want:?} in\n{link}");
        }
        let v4 = net.ip(i, &["link", "show", "flannel.1"]);
        assert!(v4.contains("mtu 1450 "), "h{i}: {v4}");
        let addr = net.ip(i, &["-6", "-o", "addr", "show", "dev", "flannel-v6.1"]);
        let s6 = net.subnet6(i);
        assert!(
            addr.contains(&format!("inet6 {}/128 ", s6.network())),
            "h{i}: {addr}"
        );
        let value = etcd_get(&etcd, &net.lease_key_in(i, &etcd));
        assert_eq!(
            value,
            format!(
                r#"{{"PublicIP":"192.0.2.{i}","PublicIPv6":"2001:db8:1::{i}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"0e:01:c0:00:02:0{i}"}},"BackendV6Data":{{"VNI":1,"VtepMAC":"{}"}}}}"#,
                mac6(i)
            )
        );
        let neigh = net.ip(i, &["-6", "neigh", "show", "dev", "flannel-v6.1"]);
        let fdb = net.fdb(i, "flannel-v6.1");
        for p in (1..=3).filter(|p| *p != i) {
            let s = net.subnet6(p);
            assert!(
                neigh.contains(&format!("{} lladdr {} PERMANENT", s.network(), mac6(p))),
                "h{i}: {neigh}"
            );
            assert!(
                fdb.contains(&format!("{} dst 2001:db8:1::{p} self permanent", mac6(p))),
                "h{i}: {fdb}"
            );
            let route = route6_to(&net, i, s);
            assert!(
                route.contains(&format!("via {} dev flannel-v6.1", s.network()))
                    && route.contains("onlink"),
                "h{i}: {route}"
            );
        }
        assert_eq!(
            vxlan6_entries(&net, i).len(),
            6,
            "h{i}: {:?}",
            vxlan6_entries(&net, i)
        );
    }

    // h3 stops cleanly, then its lease is deleted: its entries leave the peers.
    let (s3, s3v6) = (net.hosts[2].subnet.unwrap(), net.subnet6(3));
    let key3 = net.lease_key_in(3, &etcd);
    net.stop(3);
    etcd_del(&etcd, &key3);
    for i in [1, 2] {
        wait_or_show(
            &format!("h{i} forgets h3"),
            Duration::from_secs(10),
            || {
                let e = vxlan6_entries(&net, i);
                e.len() == 3
                    && !e
                        .iter()
                        .any(|l| l.contains(&mac6(3)) || l.contains(&s3v6.network().to_string()))
                    && route_to(&net, i, s3).is_empty()
            },
            || format!("{:?}\n{}", vxlan6_entries(&net, i), net.log(i)),
        );
    }
    assert!(net.ping_ip(1, IpAddr::V6(net.container_ip6(2))));
    net.stop(1);
    assert!(
        !net.ip(1, &["link", "show"]).contains("flannel"),
        "a clean stop removes both devices"
    );
    eprintln!("{test}: {:?}", started.elapsed());
}

/// The IPv4 routes of host `i` via a peer's underlay address (none on an IPv6-only
/// network: the hosts' own default route goes via the underlay router, .254).
fn ipv4_routes_via_peers(net: &Underlay, i: usize) -> Vec<String> {
    net.ip(i, &["route", "show"])
        .lines()
        .filter(|l| (1..=3).any(|p| l.contains(&format!("via 192.0.2.{p} "))))
        .map(String::from)
        .collect()
}

/// What every IPv6-only test checks on each host: no IPv4 lines in its subnet.env (the
/// daemon wrote them), its `FLANNEL_MTU` the `mtu` of the device that carries the
/// overlay over the IPv6 underlay (so that containers never send what it cannot carry),
/// flannel's lease at flannel's key (the empty IPv4 net first), `value(i)` byte for
/// byte, and no IPv4 route to a peer.
fn assert_ipv6_only_hosts(net: &Underlay, etcd: &Etcd, mtu: u32, value: impl Fn(usize) -> String) {
    for i in 1..=3 {
        let env = std::fs::read_to_string(&net.hosts[i - 1].env).unwrap();
        assert!(
            env.starts_with("FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=")
                && !env.contains("FLANNEL_NETWORK")
                && !env.contains("FLANNEL_SUBNET")
                && env.contains(&format!("\nFLANNEL_MTU={mtu}\n")),
            "h{i}: {env}"
        );
        let key = net.lease_key6(i);
        assert!(key.contains("/subnets/0.0.0.0-0&fc00:"), "{key}");
        assert_eq!(net.lease_key_in6(i, etcd), key, "h{i}'s key in etcd");
        assert_eq!(etcd_get(etcd, &key), value(i), "h{i}'s lease value");
        assert_eq!(ipv4_routes_via_peers(net, i), Vec::<String>::new(), "h{i}");
    }
}

#[test]
fn host_gw_ipv6_only_three_hosts_mesh_leases_and_routes_via_public_ipv6() {
    let test = "host_gw_ipv6_only_three_hosts_mesh_leases_and_routes_via_public_ipv6";
    if !can_run(test) {
        return;
    }
    let Some(etcd) = etcd_or_skip(test) else {
        return;
    };
    let started = Instant::now();
    let net = three_hosts_v6_only("o6", &etcd, &ipv6_only("host-gw"));
    assert_mesh_ipv6(&net, &[1, 2, 3]);
    // flannel's host-gw lease without IPv4: PublicIP keeps its zero value
    // (pkg/backend/hostgw/hostgw.go:64-88).
    assert_ipv6_only_hosts(&net, &etcd, 1500, |i| {
        format!(
            r#"{{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8:1::{i}","BackendType":"host-gw"}}"#
        )
    });
    for i in 1..=3 {
        for p in (1..=3).filter(|p| *p != i) {
            let r = route6_to(&net, i, net.subnet6(p));
            assert!(
                r.contains(&format!("via 2001:db8:1::{p} dev eth0")),
                "h{i} -> h{p}: {r:?}"
            );
        }
    }
    eprintln!("{test}: {:?}", started.elapsed());
}

#[test]
fn vxlan_ipv6_only_three_hosts_second_device_alone_mesh_and_leases() {
    let test = "vxlan_ipv6_only_three_hosts_second_device_alone_mesh_and_leases";
    if !can_run(test) {
        return;
    }
    let Some(etcd) = etcd_or_skip(test) else {
        return;
    };
    let started = Instant::now();
    let net = three_hosts_v6_only("o7", &etcd, &ipv6_only("vxlan"));
    assert_mesh_ipv6(&net, &[1, 2, 3]);
    let mac6 = |p: usize| format!("0e:01:00:00:00:0{p}");
    // flannel's vxlan lease without IPv4: no BackendData, the second device's
    // BackendV6Data (pkg/backend/vxlan/vxlan.go:92-120).
    assert_ipv6_only_hosts(&net, &etcd, 1430, |i| {
        format!(
            r#"{{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8:1::{i}","BackendType":"vxlan","BackendV6Data":{{"VNI":1,"VtepMAC":"{}"}}}}"#,
            mac6(i)
        )
    });
    for i in 1..=3 {
        let links = net.ip(i, &["-o", "link", "show"]);
        assert!(
            links.contains(": flannel-v6.1:") && !links.contains(": flannel.1:"),
            "h{i}: the second device alone: {links}"
        );
        let link = net.ip(i, &["-d", "link", "show", "flannel-v6.1"]);
        for want in [
            "vxlan id 1 ",
            &format!("local 2001:db8:1::{i} dev eth0 "),
            "dstport 8472 ",
            "nolearning",
            "mtu 1430 ",
            &format!("link/ether {}", mac6(i)),
        ] {
            assert!(link.contains(want), "h{i}: no {want:?} in\n{link}");
        }
        let neigh = net.ip(i, &["-6", "neigh", "show", "dev", "flannel-v6.1"]);
        let fdb = net.fdb(i, "flannel-v6.1");
        for p in (1..=3).filter(|p| *p != i) {
            let s = net.subnet6(p);
            assert!(
                neigh.contains(&format!("{} lladdr {} PERMANENT", s.network(), mac6(p))),
                "h{i}: {neigh}"
            );
            assert!(
                fdb.contains(&format!("{} dst 2001:db8:1::{p} self permanent", mac6(p))),
                "h{i}: {fdb}"
            );
            let route = route6_to(&net, i, s);
            assert!(
                route.contains(&format!("via {} dev flannel-v6.1", s.network()))
                    && route.contains("onlink"),
                "h{i}: {route}"
            );
        }
        assert_eq!(
            vxlan6_entries(&net, i).len(),
            6,
            "h{i}: {:?}",
            vxlan6_entries(&net, i)
        );
    }
    eprintln!("{test}: {:?}", started.elapsed());
}

#[test]
fn udp_ipv6_only_three_hosts_mesh_over_the_ipv6_underlay() {
    let test = "udp_ipv6_only_three_hosts_mesh_over_the_ipv6_underlay";
    if !can_run(test) {
        return;
    }
    let Some(etcd) = etcd_or_skip(test) else {
        return;
    };
    let started = Instant::now();
    let net = three_hosts_v6_only("o8", &etcd, &ipv6_only("udp"));
    assert_mesh_ipv6(&net, &[1, 2, 3]);
    // weft's udp lease (flannel's udp writes PublicIP alone; it has no IPv6).
    assert_ipv6_only_hosts(&net, &etcd, 1452, |i| {
        format!(r#"{{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8:1::{i}"}}"#)
    });
    for i in 1..=3 {
        // The TUN device: the IPv6 subnet's address alone, the IPv6 network's route,
        // 20 bytes less than over IPv4 (1500 - 28 - 20).
        let s6 = net.subnet6(i);
        let addrs = net.ip(i, &["addr", "show", "dev", "weft0"]);
        assert!(
            addrs.contains(&format!("inet6 {}/128", s6.network()))
                && !addrs.contains("inet ")
                && addrs.contains("mtu 1452 "),
            "h{i}: {addrs}"
        );
        let r = route6_to(&net, i, "fc00::/48".parse().unwrap());
        assert!(r.contains("dev weft0"), "h{i}: {r:?}");
        // One IPv6 socket on [PublicIPv6]:8285, none on IPv4.
        let ss = underlay::run(
            "ip",
            &[
                "netns",
                "exec",
                &net.hosts[i - 1].ns,
                "ss",
                "-Hunl",
                "sport",
                "= :8285",
            ],
        );
        assert!(
            ss.contains(&format!("[2001:db8:1::{i}]:8285")) && !ss.contains("192.0.2."),
            "h{i}: {ss}"
        );
    }
    eprintln!("{test}: {:?}", started.elapsed());
}

#[test]
fn wireguard_ipv6_only_separate_three_hosts_mesh_and_leases() {
    let test = "wireguard_ipv6_only_separate_three_hosts_mesh_and_leases";
    if !can_run(test) {
        return;
    }
    let Some(etcd) = etcd_or_skip(test) else {
        return;
    };
    let started = Instant::now();
    let mut net = Underlay::new("o9", &["192.0.2.1", "192.0.2.2", "192.0.2.3"], &etcd);
    net.enable_ipv6();
    net.set_config(&ipv6_only("wireguard"));
    for i in 1..=3 {
        let key = net.dir.path().join(format!("h{i}.wgkey"));
        let key = key.display().to_string();
        net.start6_env(i, &[("WIREGUARD_KEY_FILE", &key)]);
        net.add_container_v6_only(i);
    }
    assert_mesh_ipv6(&net, &[1, 2, 3]);
    // flannel's wireguard lease without IPv4: no BackendData, BackendV6Data with the
    // key and ListenPortV6 (pkg/backend/wireguard/wireguard.go:76-96).
    assert_ipv6_only_hosts(&net, &etcd, 1420, |i| {
        format!(
            r#"{{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8:1::{i}","BackendType":"wireguard","BackendV6Data":{{"PublicKey":"{}","Port":51821}}}}"#,
            wg_pubkey_of(&net, i)
        )
    });
    for i in 1..=3 {
        let ss = underlay::run(
            "ip",
            &["netns", "exec", &net.hosts[i - 1].ns, "ss", "-Hunl"],
        );
        assert!(
            ss.contains(&format!("[2001:db8:1::{i}]:51821")) && !ss.contains(":51820"),
            "h{i}: the IPv6 socket alone: {ss}"
        );
    }
    eprintln!("{test}: {:?}", started.elapsed());
}

/// Hosts with no IPv4 address at all (not even on the underlay): an IPv6-only network
/// still runs, the daemon taking `eth0` for its IPv6 address alone (flannel's ExtAddr
/// nil, PublicIP 0.0.0.0), on host-gw, vxlan and udp.
#[test]
fn ipv6_only_hosts_without_any_ipv4_address_mesh_on_host_gw_vxlan_and_udp() {
    let test = "ipv6_only_hosts_without_any_ipv4_address_mesh_on_host_gw_vxlan_and_udp";
    if !can_run(test) {
        return;
    }
    let Some(etcd) = etcd_or_skip(test) else {
        return;
    };
    for (tag, backend) in [("n6", "host-gw"), ("n7", "vxlan"), ("n8", "udp")] {
        let mut net = Underlay::new(tag, &["192.0.2.1", "192.0.2.2", "192.0.2.3"], &etcd);
        net.enable_ipv6();
        net.drop_ipv4();
        net.set_config(&ipv6_only(backend));
        for i in 1..=3 {
            assert_eq!(
                net.ip(i, &["-4", "addr", "show", "dev", "eth0"]),
                "",
                "h{i}"
            );
            net.start6(i);
            net.add_container_v6_only(i);
        }
        assert_mesh_ipv6(&net, &[1, 2, 3]);
        for i in 1..=3 {
            let value = etcd_get(&etcd, &net.lease_key6(i));
            assert!(
                value.starts_with(&format!(
                    r#"{{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8:1::{i}""#
                )),
                "{backend}: h{i}: {value}"
            );
        }
    }
}

/// Host `i`'s kernel entries naming host `p`'s subnets, VTEP MACs or addresses (routes
/// of both families; for vxlan also neighbours and FDB entries on both devices). On
/// an IPv6-only network `p` has no IPv4 subnet.
fn entries_for(net: &Underlay, i: usize, p: usize) -> Vec<String> {
    let (s4, s6) = (net.hosts[p - 1].subnet, net.subnet6(p));
    let mut lines: Vec<String> = Vec::new();
    if let Some(s4) = s4 {
        lines.extend(
            net.ip(i, &["route", "show", &s4.to_string()])
                .lines()
                .map(String::from),
        );
    }
    lines.extend(
        net.ip(i, &["-6", "route", "show", &s6.to_string()])
            .lines()
            .map(String::from),
    );
    for (dev, family) in [("flannel.1", "-4"), ("flannel-v6.1", "-6")] {
        if net
            .ip(i, &["-o", "link", "show"])
            .contains(&format!(": {dev}:"))
        {
            let neigh = net.ip(i, &[family, "neigh", "show", "dev", dev]);
            let want: Vec<String> = s4
                .map(|s| s.network().to_string())
                .into_iter()
                .chain([s6.network().to_string()])
                .collect();
            lines.extend(
                neigh
                    .lines()
                    .filter(|l| want.iter().any(|w| l.starts_with(&format!("{w} "))))
                    .map(String::from),
            );
            let ip4 = net.hosts[p - 1].ip.to_string();
            let ip6 = underlay::host_ipv6(net.hosts[p - 1].ip, p).to_string();
            lines.extend(
                net.fdb(i, dev)
                    .lines()
                    .filter(|l| {
                        l.contains(&format!("dst {ip4} ")) || l.contains(&format!("dst {ip6} "))
                    })
                    .map(String::from),
            );
        }
    }
    lines.retain(|l| !l.trim().is_empty());
    lines
}

/// A node stopped cleanly keeps its lease (flannel's behaviour, for a quick restart);
/// when it does not come back, the lease's TTL ends it and the peers drop every entry
/// for it of both families. Checked for host-gw and vxlan, with a 6 s TTL.
#[test]
fn a_stopped_nodes_entries_leave_its_peers_within_its_lease_ttl() {
    let test = "a_stopped_nodes_entries_leave_its_peers_within_its_lease_ttl";
    if !can_run(test) {
        return;
    }
    let Some(etcd) = etcd_or_skip(test) else {
        return;
    };
    for (tag, backend) in [("tg", "host-gw"), ("tx", "vxlan")] {
        let net = entries_leave_within_ttl(&etcd, tag, backend, false);
        assert_mesh_both_families(&net, &[1, 2]);
    }
}

/// [`a_stopped_nodes_entries_leave_its_peers_within_its_lease_ttl`] on an IPv6-only
/// network: the peers drop the stopped node's IPv6 route (host-gw), or its
/// neighbour, FDB entry and route on `flannel-v6.1` (vxlan), once its lease runs out.
#[test]
fn an_ipv6_only_stopped_nodes_entries_leave_its_peers_within_its_lease_ttl() {
    let test = "an_ipv6_only_stopped_nodes_entries_leave_its_peers_within_its_lease_ttl";
    if !can_run(test) {
        return;
    }
    let Some(etcd) = etcd_or_skip(test) else {
        return;
    };
    for (tag, backend) in [("og", "host-gw"), ("ox", "vxlan")] {
        let net = entries_leave_within_ttl(&etcd, tag, backend, true);
        assert_mesh_ipv6(&net, &[1, 2]);
    }
}

/// Three hosts on `backend` (IPv6-only when `v6_only`, else dual stack) with a 6 s
/// TTL; h3 stops cleanly, keeps its lease a while, and once the TTL ends it h1 and h2
/// hold no entry for it. Returns the lab with h1 and h2 still running.
fn entries_leave_within_ttl(etcd: &Etcd, tag: &str, backend: &str, v6_only: bool) -> Underlay {
    const TTL: u32 = 6;
    let mut net = Underlay::new(tag, &["192.0.2.1", "192.0.2.2", "192.0.2.3"], etcd);
    net.lease_ttl = TTL;
    net.enable_ipv6();
    if v6_only {
        net.set_config(&ipv6_only(backend));
    } else {
        net.set_config(&dual_stack(backend));
    }
    for i in 1..=3 {
        if v6_only {
            net.start6(i);
            net.add_container_v6_only(i);
        } else {
            net.start(i);
            net.add_container(i);
            net.add_container6(i);
        }
    }
    for i in [1, 2] {
        let e = entries_for(&net, i, 3);
        // vxlan: neighbour, FDB entry and route per family; host-gw: a route.
        let per_family = if backend == "vxlan" { 3 } else { 1 };
        let want = per_family * if v6_only { 1 } else { 2 };
        assert_eq!(e.len(), want, "{backend}: h{i}'s entries for h3: {e:?}");
    }
    let key3 = if v6_only {
        net.lease_key6(3)
    } else {
        net.lease_key_in(3, etcd)
    };
    net.stop(3);
    let stopped = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !etcd_get(etcd, &key3).is_empty(),
        "{backend}: a clean stop kept no lease"
    );
    assert!(
        !entries_for(&net, 1, 3).is_empty(),
        "{backend}: h1 dropped h3 while its lease lived"
    );
    // etcd grants one second more than the TTL (see the etcd store).
    let patience = Duration::from_secs(u64::from(TTL) + 1 + 4);
    for i in [1, 2] {
        wait_or_show(
            &format!("{backend}: h{i} forgets h3 once its lease expires"),
            patience.saturating_sub(stopped.elapsed()),
            || entries_for(&net, i, 3).is_empty(),
            || format!("{:?}\n{}", entries_for(&net, i, 3), net.log(i)),
        );
    }
    eprintln!(
        "{backend} (IPv6-only: {v6_only}): h3's entries left its peers {} ms after its clean stop (TTL {TTL} s)",
        stopped.elapsed().as_millis()
    );
    assert!(
        etcd_get(etcd, &key3).is_empty(),
        "{backend}: h3's lease outlived its TTL"
    );
    net
}
