//! The ipip backend on a real kernel: three hosts in namespaces on one underlay, a real
//! `weft daemon` process on each, one real etcd (see `underlay`). On a kernel with IPIP
//! the daemons use the kernel's device; on one without (these Firecracker machines, and
//! CI) they carry IPIP themselves, over a TUN device and a raw socket, and say so once.
//! Checked: containers reach each other (ping, a TCP transfer with its checksum), the
//! device, routes and lease are flannel's, a stopped node's routes leave its peers within
//! its TTL, the underlay carries IP protocol 4 between the public IPs and no inner packet
//! bare (tcpdump as the witness), and hand-built IPIP packets from a non-peer or with a
//! spoofed inner source are dropped and counted while a valid one is delivered. Root only.

#![allow(clippy::unwrap_used)]

mod underlay;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, UdpPacket, UdpRepr};
use socket2::{Domain, Protocol, Socket, Type};
use underlay::capture::have_tcpdump;
use underlay::{can_run, wait_or_show, Underlay};
use weft_datapath::netns;
use weft_stores::testing::etcd_or_skip;

const IPIP: &str = r#"{"Network":"10.5.0.0/16","SubnetLen":24,"Backend":{"Type":"ipip"}}"#;
const HEALTHZ: [&str; 4] = ["--healthz-ip", "127.0.0.1", "--healthz-port", "9110"];
const FALLBACK: &str = "the kernel has no IPIP support";

fn etcd_get(etcd: &weft_stores::testing::Etcd, key: &str) -> String {
    let out = etcd.etcdctl(&["get", "--print-value-only", key]);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Host `i`'s route to host `p`'s subnet, as `ip route` shows it ("" for none).
fn route_to(net: &Underlay, i: usize, p: usize) -> String {
    let s = net.hosts[p - 1].subnet.unwrap();
    let routes = net.ip(i, &["route", "show", &s.to_string()]);
    routes.lines().next().unwrap_or_default().trim().to_string()
}

/// Whether the daemon of host `i` took the userspace path (its one log line says so).
fn userspace(net: &Underlay, i: usize) -> bool {
    let log = net.log(i);
    let lines = log.lines().filter(|l| l.contains(FALLBACK)).count();
    assert!(lines <= 1, "h{i} said it more than once:\n{log}");
    lines == 1
}

fn dropped(net: &Underlay, i: usize, reason: &str) -> u64 {
    net.metric(
        i,
        &format!(r#"weft_packets_dropped_total{{backend="ipip",reason="{reason}"}} "#),
    )
}

#[test]
fn ipip_three_hosts_mesh_transfer_routes_lease_and_expiry() {
    let test = "ipip_three_hosts_mesh_transfer_routes_lease_and_expiry";
    if !can_run(test) {
        return;
    }
    let Some(etcd) = etcd_or_skip(test) else {
        return;
    };
    const TTL: u32 = 6;
    let mut net = Underlay::new("ii", &["192.0.2.1", "192.0.2.2", "192.0.2.3"], &etcd);
    net.lease_ttl = TTL;
    net.set_config(IPIP);
    for i in 1..=3 {
        net.start(i);
        net.add_container(i);
    }
    net.assert_mesh(&[1, 2, 3]);

    let kernel_has_ipip = !userspace(&net, 1);
    eprintln!(
        "ipip: {} path",
        if kernel_has_ipip {
            "kernel"
        } else {
            "userspace"
        }
    );
    for i in 1..=3 {
        let ip = format!("192.0.2.{i}");
        assert_eq!(userspace(&net, i), !kernel_has_ipip, "h{i}: {}", net.log(i));
        // The device flannel makes (or the TUN device in its place): its name, MTU
        // 1500 - 20, our subnet's network address /32.
        let link = net.ip(i, &["-d", "link", "show", "flannel.ipip"]);
        assert!(link.contains(" mtu 1480 "), "h{i}: {link}");
        if kernel_has_ipip {
            // `ip -d` prints "ipip ipip remote any local 192.0.2.1 ttl inherit nopmtudisc".
            for want in [
                "link/ipip ",
                &format!("remote any local {ip} "),
                "ttl inherit",
                "nopmtudisc",
            ] {
                assert!(link.contains(want), "h{i}: no {want:?} in\n{link}");
            }
        } else {
            assert!(link.contains("tun type tun"), "h{i}: {link}");
        }
        let s = net.hosts[i - 1].subnet.unwrap();
        let addr = net.ip(i, &["-4", "-o", "addr", "show", "dev", "flannel.ipip"]);
        assert!(
            addr.contains(&format!("inet {}/32 ", s.network())),
            "h{i}: {addr}"
        );
        // flanneld's ipip lease, byte for byte: LeaseAttrs{PublicIP, BackendType}, no
        // BackendData (omitempty), PublicIPv6 a nil pointer.
        assert_eq!(
            etcd_get(&etcd, &net.lease_key(i)),
            format!(r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"ipip"}}"#)
        );
        assert!(
            std::fs::read_to_string(&net.hosts[i - 1].env)
                .unwrap()
                .contains("FLANNEL_MTU=1480\n"),
            "h{i}"
        );
        // flannel's GetRoute per peer: `subnet via PublicIP dev flannel.ipip onlink`.
        for p in (1..=3).filter(|p| *p != i) {
            let s = net.hosts[p - 1].subnet.unwrap();
            assert_eq!(
                route_to(&net, i, p),
                format!("{s} via 192.0.2.{p} dev flannel.ipip proto static onlink"),
                "h{i} -> h{p}"
            );
        }
    }

    // A TCP transfer each way between two pairs, checksums intact.
    for (from, to) in [(1, 2), (3, 1)] {
        let to_ip = IpAddr::V4(net.container_ip(to));
        let started = Instant::now();
        let [sent, received] = net.tcp_transfer(from, to, to_ip, 8 << 20);
        assert_eq!(
            sent, received,
            "c{from} -> c{to}: the stream arrived altered"
        );
        eprintln!(
            "ipip: c{from} -> c{to}: 8 MiB in {} ms",
            started.elapsed().as_millis()
        );
    }

    // A clean stop keeps the lease; its TTL ends it, and the peers' routes with it.
    net.stop(3);
    let stopped = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !route_to(&net, 1, 3).is_empty(),
        "h1 dropped h3 while its lease lived"
    );
    // etcd grants one second more than the TTL (see the etcd store).
    let patience = Duration::from_secs(u64::from(TTL) + 1 + 4);
    for i in [1, 2] {
        wait_or_show(
            &format!("h{i} forgets h3 once its lease expires"),
            patience.saturating_sub(stopped.elapsed()),
            || route_to(&net, i, 3).is_empty(),
            || format!("{}\n{}", route_to(&net, i, 3), net.log(i)),
        );
    }
    eprintln!(
        "ipip: h3's routes left its peers {} ms after its clean stop (TTL {TTL} s)",
        stopped.elapsed().as_millis()
    );
    net.assert_mesh(&[1, 2]);
}

/// `DirectRouting`: a peer on the underlay interface's own network gets the plain
/// route on it (flannel's `GetRoute` with `ExtIface.Index`), one behind the underlay
/// router the tunnel; both reachable, and restored when deleted by hand.
#[test]
fn ipip_direct_routing_and_routes_restored_when_deleted() {
    let test = "ipip_direct_routing_and_routes_restored_when_deleted";
    if !can_run(test) {
        return;
    }
    let Some(etcd) = etcd_or_skip(test) else {
        return;
    };
    let mut net = Underlay::new("id", &["192.0.2.1", "192.0.2.2", "198.51.100.3"], &etcd);
    net.set_config(
        r#"{"Network":"10.5.0.0/16","SubnetLen":24,"Backend":{"Type":"ipip","DirectRouting":true}}"#,
    );
    for i in 1..=3 {
        net.start(i);
        net.add_container(i);
    }
    net.assert_mesh(&[1, 2, 3]);
    let s = |p: usize| net.hosts[p - 1].subnet.unwrap();
    assert_eq!(
        route_to(&net, 1, 2),
        format!("{} via 192.0.2.2 dev eth0 proto static onlink", s(2))
    );
    assert_eq!(
        route_to(&net, 1, 3),
        format!(
            "{} via 198.51.100.3 dev flannel.ipip proto static onlink",
            s(3)
        )
    );
    assert_eq!(
        route_to(&net, 3, 1),
        format!(
            "{} via 192.0.2.1 dev flannel.ipip proto static onlink",
            s(1)
        )
    );
    // flannel's routeCheck: routes deleted by hand come back within a check (10 s),
    // and none that is in place is ever re-added.
    let (r2, r3) = (route_to(&net, 1, 2), route_to(&net, 1, 3));
    for s in [s(2), s(3)] {
        net.ip(1, &["route", "del", &s.to_string()]);
    }
    assert!(route_to(&net, 1, 2).is_empty() && route_to(&net, 1, 3).is_empty());
    let deleted = Instant::now();
    wait_or_show(
        "h1's deleted routes come back",
        Duration::from_secs(10 + 3),
        || route_to(&net, 1, 2) == r2 && route_to(&net, 1, 3) == r3,
        || net.log(1),
    );
    eprintln!(
        "ipip: routes deleted by hand restored after {} ms",
        deleted.elapsed().as_millis()
    );
    let restored = |i: usize| {
        net.log(i)
            .lines()
            .filter(|l| l.contains("ipip route was missing or altered; restored"))
            .count()
    };
    assert_eq!(restored(1), 2, "{}", net.log(1));
    // h2 and h3 have checked at least once by now, and found nothing to restore.
    assert_eq!((restored(2), restored(3)), (0, 0));

    // A clean stop takes the direct routes too (the tunnel's go with the device).
    net.stop(1);
    let routes = net.ip(1, &["route", "show", "root", "10.5.0.0/16"]);
    assert!(
        routes.lines().all(|l| !l.contains(" via ")),
        "h1 left routes behind:\n{routes}"
    );
    assert!(net
        .ip(1, &["link", "show"])
        .lines()
        .all(|l| !l.contains("flannel.ipip")));
}

/// One IPv4 frame of a capture, taken apart by hand (Ethernet, then the IPv4 header).
struct Frame {
    protocol: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    /// What follows the IPv4 header.
    payload: Vec<u8>,
}

fn ipv4_frame(frame: &[u8]) -> Option<Frame> {
    // Ethernet: 6 + 6 bytes of MACs, then the EtherType.
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    let packet = Ipv4Packet::new_checked(ip).ok()?;
    let ihl = usize::from(packet.header_len());
    let total = usize::from(packet.total_len()).min(ip.len());
    Some(Frame {
        protocol: ip[9],
        src: packet.src_addr(),
        dst: packet.dst_addr(),
        payload: ip[ihl..total].to_vec(),
    })
}

fn in_overlay(a: Ipv4Addr) -> bool {
    a.octets()[..2] == [10, 5]
}

#[test]
fn ipip_on_the_wire_is_protocol_4_between_public_ips() {
    let test = "ipip_on_the_wire_is_protocol_4_between_public_ips";
    if !can_run(test) || !have_tcpdump(test) {
        return;
    }
    let Some(etcd) = etcd_or_skip(test) else {
        return;
    };
    let mut net = Underlay::new("iw", &["192.0.2.1", "192.0.2.2"], &etcd);
    net.set_config(IPIP);
    for i in 1..=2 {
        net.start_with(i, &HEALTHZ);
        net.add_container(i);
    }
    net.assert_mesh(&[1, 2]);
    // Everything IPv4 on h1's underlay port, while the containers ping and talk TCP.
    let capture = net.capture(1, "ip", 2000, Duration::from_secs(30));
    assert!(net.ping(1, 2) && net.ping(2, 1));
    let to_ip = IpAddr::V4(net.container_ip(2));
    let [sent, received] = net.tcp_transfer(1, 2, to_ip, 256 << 10);
    assert_eq!(sent, received);
    let (frames, text) = capture.finish();
    let (c1, c2) = (net.container_ip(1), net.container_ip(2));
    let publics = [Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2)];
    let (mut ipip, mut icmp, mut tcp) = (0, 0, 0);
    for f in frames.iter().filter_map(|f| ipv4_frame(f)) {
        assert!(
            !in_overlay(f.src) && !in_overlay(f.dst),
            "an inner packet on the underlay unencapsulated: {} -> {} proto {}\n{text}",
            f.src,
            f.dst,
            f.protocol
        );
        // The underlay router's own chatter (IGMP to 224.0.0.22) is no node's.
        if !publics.contains(&f.src) && !publics.contains(&f.dst) {
            continue;
        }
        assert_eq!(
            f.protocol, 4,
            "{} -> {}: only IPIP between the nodes\n{text}",
            f.src, f.dst
        );
        assert!(
            publics.contains(&f.src) && publics.contains(&f.dst) && f.src != f.dst,
            "IPIP between {} and {}, not the nodes' public IPs",
            f.src,
            f.dst
        );
        // TSO super-packets are cut before they leave: every packet fits the underlay.
        assert!(
            f.payload.len() + 20 <= 1500,
            "{} bytes of IPIP on a 1500-byte underlay",
            f.payload.len() + 20
        );
        // No extra header: the inner IPv4 packet right after the outer header.
        let inner = Ipv4Packet::new_checked(&f.payload[..]).expect("an inner IPv4 packet");
        let pair = (inner.src_addr(), inner.dst_addr());
        assert!(
            pair == (c1, c2) || pair == (c2, c1),
            "inner {pair:?} is not between the containers"
        );
        let from_h1 = f.src == publics[0];
        assert_eq!(
            from_h1,
            inner.src_addr() == c1,
            "outer and inner directions agree"
        );
        ipip += 1;
        match inner.next_header() {
            IpProtocol::Icmp => icmp += 1,
            IpProtocol::Tcp => tcp += 1,
            other => panic!("unexpected inner protocol {other}"),
        }
    }
    eprintln!("ipip on the wire: {ipip} IPIP packets ({icmp} ICMP, {tcp} TCP inside)");
    // The userspace path's TUN offloads (unless WEFT_IPIP_OFFLOAD=0): h1 read TCP
    // super-packets and cut them, h2 wrote coalesced segments.
    let offloads = std::env::var("WEFT_IPIP_OFFLOAD").as_deref() != Ok("0");
    if userspace(&net, 1) && offloads {
        let total = |i, name: &str| {
            net.metric(
                i,
                &format!(r#"weft_datapath_{name}_total{{backend="ipip"}} "#),
            )
        };
        let (tso, gro) = (total(1, "tso_reads"), total(2, "gro_writes"));
        eprintln!("ipip offloads: h1 cut {tso} TSO reads, h2 wrote {gro} coalesced");
        assert!(tso > 0 && gro > 0, "tso_reads {tso}, gro_writes {gro}");
    }
    // tcpdump may drop frames under load ("dropped by kernel"); what it kept is enough.
    assert!(
        icmp >= 4 && tcp >= 20,
        "{ipip} IPIP packets: {icmp} ICMP, {tcp} TCP\n{text}"
    );
}

/// An IPv4/UDP packet from `src` to `dst:port` carrying `payload`, checksums right.
fn udp_packet(src: Ipv4Addr, dst: Ipv4Addr, port: u16, payload: &[u8]) -> Vec<u8> {
    let caps = ChecksumCapabilities::default();
    let udp = UdpRepr {
        src_port: 40000,
        dst_port: port,
    };
    let ip = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Udp,
        payload_len: udp.header_len() + payload.len(),
        hop_limit: 64,
    };
    let mut buf = vec![0u8; ip.buffer_len() + ip.payload_len];
    let mut packet = Ipv4Packet::new_unchecked(&mut buf[..]);
    ip.emit(&mut packet, &caps);
    udp.emit(
        &mut UdpPacket::new_unchecked(packet.payload_mut()),
        &IpAddress::Ipv4(src),
        &IpAddress::Ipv4(dst),
        payload.len(),
        |b| b.copy_from_slice(payload),
        &caps,
    );
    buf
}

/// Sends `inner` as IPIP from namespace `ns` to `to`: a raw socket of protocol 4, the
/// kernel writing the outer header from the namespace's own address.
fn send_ipip(ns: &str, to: Ipv4Addr, inner: Vec<u8>) {
    netns::in_netns(Some(&netns::path(ns)), move || {
        let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(4))).unwrap();
        let to = SocketAddr::V4(SocketAddrV4::new(to, 0));
        s.send_to(&inner, &to.into()).unwrap();
    })
    .unwrap();
}

#[test]
fn ipip_hostile_packets_are_dropped_and_counted_a_valid_one_delivered() {
    let test = "ipip_hostile_packets_are_dropped_and_counted_a_valid_one_delivered";
    if !can_run(test) {
        return;
    }
    let Some(etcd) = etcd_or_skip(test) else {
        return;
    };
    let mut net = Underlay::new("ih", &["192.0.2.1", "192.0.2.2"], &etcd);
    net.set_config(IPIP);
    for i in 1..=2 {
        net.start_with(i, &HEALTHZ);
        net.add_container(i);
    }
    net.assert_mesh(&[1, 2]);
    if !userspace(&net, 1) {
        // The kernel's device does not check inner sources (nor does flannel's): the
        // counted drops are the userspace path's.
        eprintln!(
            "\n*** {test}: the kernel has IPIP; the userspace checks were not exercised ***\n"
        );
        return;
    }
    let outside = net.add_outside(Ipv4Addr::new(198, 51, 100, 9));
    let h2 = net.hosts[1].ns.clone();
    let (c1, c2) = (net.container_ip(1), net.container_ip(2));
    let h1 = Ipv4Addr::new(192, 0, 2, 1);
    // A UDP listener in container 1: what reaches it was delivered.
    let c1_ns = netns::path(net.hosts[0].container.as_ref().unwrap());
    let listener = netns::in_netns(Some(&c1_ns), || UdpSocket::bind("0.0.0.0:7777"))
        .unwrap()
        .unwrap();
    listener
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let receive = || {
        let mut buf = [0u8; 256];
        let mut got = Vec::new();
        while let Ok((n, from)) = listener.recv_from(&mut buf) {
            got.push((String::from_utf8_lossy(&buf[..n]).to_string(), from.ip()));
        }
        got
    };
    let before = |reason| dropped(&net, 1, reason);
    let (unknown0, spoofed0) = (before("unknown_peer"), before("spoofed_source"));

    // From a host that is no peer, a well-formed inner packet from c2 to c1.
    send_ipip(&outside, h1, udp_packet(c2, c1, 7777, b"from a stranger"));
    // From peer h2, an inner source outside its subnet.
    let forged = Ipv4Addr::new(10, 5, 250, 9);
    send_ipip(&h2, h1, udp_packet(forged, c1, 7777, b"spoofed inside"));
    let got = receive();
    assert!(got.is_empty(), "hostile packets were delivered: {got:?}");
    let counted = |reason: &str, was: u64| {
        wait_or_show(
            &format!("a {reason} drop counted on h1"),
            Duration::from_secs(5),
            || dropped(&net, 1, reason) > was,
            || net.log(1),
        );
    };
    counted("unknown_peer", unknown0);
    counted("spoofed_source", spoofed0);

    // From peer h2, c2's address inside: delivered.
    send_ipip(&h2, h1, udp_packet(c2, c1, 7777, b"a valid one"));
    let got = receive();
    assert_eq!(got, vec![("a valid one".to_string(), IpAddr::V4(c2))]);
    assert_eq!(dropped(&net, 1, "unknown_peer"), unknown0 + 1);
    assert_eq!(dropped(&net, 1, "spoofed_source"), spoofed0 + 1);
}
