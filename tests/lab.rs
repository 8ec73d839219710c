//! `weft lab` against the real kernel: namespaces, veth pairs, TUN devices, routes.
//! Root only; see `common::lab::can_run_lab`.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use common::lab::{can_run_lab, in_ns, Lab};
use weft_datapath::daemon::NodeState;

/// A deterministic byte stream (xorshift), and a checksum of it.
fn stream_byte(state: &mut u64) -> u8 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    (*state >> 24) as u8
}

fn fnv(hash: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *hash ^= u64::from(*b);
        *hash = hash.wrapping_mul(0x100000001b3);
    }
}

#[test]
fn three_nodes_full_mesh_ping_and_a_100_mb_tcp_transfer() {
    full_mesh_and_transfer("udp");
}

#[test]
fn three_vxlan_nodes_full_mesh_ping_and_a_100_mb_tcp_transfer() {
    full_mesh_and_transfer("vxlan");
}

#[test]
fn three_host_gw_nodes_full_mesh_ping_and_a_100_mb_tcp_transfer() {
    full_mesh_and_transfer("host-gw");
}

#[test]
fn three_wireguard_nodes_full_mesh_ping_and_a_100_mb_tcp_transfer() {
    full_mesh_and_transfer("wireguard");
}

#[test]
fn three_ipip_nodes_full_mesh_ping_and_a_100_mb_tcp_transfer() {
    full_mesh_and_transfer("ipip");
}

/// `weft lab up --backend BACKEND` with three nodes: every container pings every other,
/// and 100 MB cross the overlay intact.
fn full_mesh_and_transfer(backend: &str) {
    if !can_run_lab(&format!("full mesh and transfer over {backend}")) {
        return;
    }
    let lab = Lab::up(3, &["--backend", backend]);
    let status = lab.node_status("n1");
    assert_eq!(status.backend.as_deref(), Some(backend), "{status:?}");
    // The device the backend forwards through, as flannel names it.
    let device = match backend {
        "udp" | "wireguard" => Some("weft0"),
        "vxlan" => Some("flannel.1"),
        // The kernel's ipip device, or the TUN device in its place (userspace IPIP).
        "ipip" => Some("flannel.ipip"),
        _ => None,
    };
    if let Some(device) = device {
        lab.wait_status("n1", device, |s| {
            s.device.as_ref().is_some_and(|d| d.name == device)
        });
    }
    let containers = lab.containers();
    assert_eq!(containers.len(), 3);
    for from in &containers {
        for to in &containers {
            if from != to {
                let ip = lab.container_ip(to);
                assert!(lab.ping(from, ip), "{from} cannot ping {to} ({ip})");
            }
        }
    }

    const SIZE: usize = 100 * 1024 * 1024;
    let receiver_ip = lab.container_ip("n3-c1");
    let listener = in_ns(&lab.ns("n3-c1"), || {
        TcpListener::bind("0.0.0.0:5001").unwrap()
    });
    let receiver = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let (mut total, mut hash, mut buf) = (0usize, 0xcbf29ce484222325u64, vec![0u8; 1 << 16]);
        loop {
            let n = conn.read(&mut buf).unwrap();
            if n == 0 {
                return (total, hash);
            }
            fnv(&mut hash, &buf[..n]);
            total += n;
        }
    });
    let to = SocketAddr::from((receiver_ip, 5001));
    let mut conn = in_ns(&lab.ns("n1-c1"), move || {
        TcpStream::connect_timeout(&to, Duration::from_secs(10)).unwrap()
    });
    conn.set_write_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let (mut state, mut hash, mut chunk) = (
        0x9e3779b97f4a7c15u64,
        0xcbf29ce484222325u64,
        vec![0u8; 1 << 16],
    );
    let mut sent = 0;
    while sent < SIZE {
        let n = chunk.len().min(SIZE - sent);
        for b in &mut chunk[..n] {
            *b = stream_byte(&mut state);
        }
        fnv(&mut hash, &chunk[..n]);
        conn.write_all(&chunk[..n]).unwrap();
        sent += n;
    }
    drop(conn);
    let (received, received_hash) = receiver.join().unwrap();
    assert_eq!(received, SIZE);
    assert_eq!(received_hash, hash, "the bytes arrived intact");
    lab.down();
}

/// The namespaces whose names start with `prefix`.
fn namespaces(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_dual_stack_vxlan_lab_reaches_every_container_over_ipv6_and_ipv4() {
    dual_stack_full_mesh("vxlan");
}

#[test]
fn a_dual_stack_host_gw_lab_reaches_every_container_over_ipv6_and_ipv4() {
    dual_stack_full_mesh("host-gw");
}

/// `weft lab up --backend BACKEND --dual-stack` with three nodes: the IPv6 network and
/// subnets shown, every container pinging every other over IPv6 and IPv4, and nothing
/// left once it is down.
fn dual_stack_full_mesh(backend: &str) {
    if !can_run_lab(&format!("dual-stack full mesh over {backend}")) {
        return;
    }
    let lab = Lab::up(3, &["--backend", backend, "--dual-stack"]);
    let status = lab.status();
    assert_eq!(
        status.ipv6_network,
        "fc00::/48".parse().ok(),
        "the config enables IPv6"
    );
    let table = String::from_utf8_lossy(&lab.weft(&["status"]).stdout).to_string();
    assert!(table.contains("and fc00::/48"), "{table}");
    for node in &status.nodes {
        let lease = node.status.as_ref().and_then(|s| s.lease.clone());
        let subnet6 = lease.and_then(|l| l.ipv6_subnet);
        let subnet6 = subnet6.unwrap_or_else(|| panic!("{}: no IPv6 subnet: {node:?}", node.name));
        assert!(
            table.contains(&format!("IPv6 subnet {subnet6}")),
            "{subnet6} not shown:\n{table}"
        );
        let c = &node.containers[0];
        assert!(
            c.ipv6.is_some_and(|a| subnet6.contains(&a)),
            "{} outside its node's {subnet6}",
            c.name
        );
    }
    // n1 routes both peers' IPv6 subnets.
    lab.wait_status("n1", "routes to both peers' IPv6 subnets", |s| {
        s.routes
            .iter()
            .filter(|r| r.subnet.addr().is_ipv6())
            .count()
            == 2
    });
    let containers = lab.containers();
    assert_eq!(containers.len(), 3);
    for from in &containers {
        for to in containers.iter().filter(|c| *c != from) {
            let (ip6, ip4) = (lab.container_ipv6(to), lab.container_ip(to));
            assert!(lab.ping(from, ip6), "{from} cannot ping {to} at {ip6}");
            assert!(lab.ping(from, ip4), "{from} cannot ping {to} at {ip4}");
        }
    }
    let prefix = lab.prefix.clone();
    assert!(!namespaces(&prefix).is_empty());
    lab.down();
    assert_eq!(namespaces(&prefix), Vec::<String>::new(), "the lab is gone");
}

#[test]
fn an_ipv6_only_vxlan_lab_reaches_every_container_over_ipv6() {
    ipv6_only_full_mesh("vxlan");
}

#[test]
fn an_ipv6_only_host_gw_lab_reaches_every_container_over_ipv6() {
    ipv6_only_full_mesh("host-gw");
}

#[test]
fn an_ipv6_only_wireguard_lab_reaches_every_container_over_ipv6() {
    ipv6_only_full_mesh("wireguard");
}

#[test]
fn an_ipv6_only_udp_lab_reaches_every_container_over_ipv6() {
    ipv6_only_full_mesh("udp");
}

/// `weft lab up --backend BACKEND --ipv6` with three nodes: no IPv4 network, each node
/// an IPv6 subnet alone (flannel's key `0.0.0.0-0&…`), containers with IPv6 addresses
/// only, every container pinging every other, and nothing left once it is down.
fn ipv6_only_full_mesh(backend: &str) {
    if !can_run_lab(&format!("IPv6-only full mesh over {backend}")) {
        return;
    }
    let lab = Lab::up(3, &["--backend", backend, "--ipv6"]);
    let status = lab.status();
    assert_eq!(status.network, None, "no IPv4 network");
    assert_eq!(status.ipv6_network, "fc00::/48".parse().ok());
    for node in &status.nodes {
        let lease = node.status.as_ref().and_then(|s| s.lease.clone());
        let lease = lease.unwrap_or_else(|| panic!("{}: no lease: {node:?}", node.name));
        assert_eq!(lease.subnet, None, "{}: an IPv4 subnet", node.name);
        let subnet6 = lease.ipv6_subnet.expect("an IPv6 subnet");
        assert_eq!(
            lease.key,
            format!("0.0.0.0-0&{}-{}", subnet6.network(), subnet6.prefix_len())
        );
        let c = &node.containers[0];
        assert!(c.ip.is_none(), "{}: an IPv4 address", c.name);
        assert!(
            c.ipv6.is_some_and(|a| subnet6.contains(&a)),
            "{} outside its node's {subnet6}",
            c.name
        );
    }
    lab.wait_status("n1", "routes to both peers' IPv6 subnets", |s| {
        s.routes.len() == 2 && s.routes.iter().all(|r| r.subnet.addr().is_ipv6())
    });
    if backend == "vxlan" {
        // The second device alone, as flannel has it without IPv4.
        let out = std::process::Command::new("ip")
            .args(["-n", &format!("{}n1", lab.prefix), "-o", "link", "show"])
            .output()
            .unwrap();
        let links = String::from_utf8_lossy(&out.stdout);
        assert!(
            links.contains(": flannel-v6.1:") && !links.contains(": flannel.1:"),
            "{links}"
        );
    }
    let containers = lab.containers();
    assert_eq!(containers.len(), 3);
    for from in &containers {
        for to in containers.iter().filter(|c| *c != from) {
            let ip6 = lab.container_ipv6(to);
            assert!(lab.ping(from, ip6), "{from} cannot ping {to} at {ip6}");
        }
    }
    let prefix = lab.prefix.clone();
    lab.down();
    assert_eq!(namespaces(&prefix), Vec::<String>::new(), "the lab is gone");
}

#[test]
fn a_restarted_node_keeps_its_subnet_and_a_stopped_one_loses_its_routes() {
    if !can_run_lab("a_restarted_node_keeps_its_subnet_and_a_stopped_one_loses_its_routes") {
        return;
    }
    let lab = Lab::up(2, &["--subnet-lease-ttl", "6"]);
    let n2_lease = lab
        .wait_status("n2", "a lease", |s| s.lease.is_some())
        .lease
        .unwrap();
    let n2_subnet = ipnet::IpNet::V4(n2_lease.subnet.expect("an IPv4 subnet"));
    let target = lab.container_ip("n2-c1");
    assert!(lab.ping("n1-c1", target));

    let out = lab.weft(&["node", "stop", "n2"]);
    assert!(out.status.success(), "{out:?}");
    let stopped = lab.node_status("n2");
    assert_eq!(stopped.state, NodeState::Stopped, "{stopped:?}");
    assert_eq!(
        stopped.last_lease.as_ref(),
        Some(&n2_lease),
        "kept in the store"
    );
    let table = String::from_utf8_lossy(&lab.weft(&["status"]).stdout).to_string();
    let line = table
        .lines()
        .find(|l| l.starts_with("n2 "))
        .unwrap_or_default();
    assert!(line.contains("stopped"), "{table}");
    assert!(!lab.ping("n1-c1", target), "n2 is stopped");
    // Its lease runs out (TTL 6 s) and n1's watch drops the route.
    lab.wait_status("n1", "n2's route gone", |s| {
        !s.routes.iter().any(|r| r.subnet == n2_subnet)
    });

    let out = lab.weft(&["node", "start", "n2"]);
    assert!(out.status.success(), "{out:?}");
    let again = lab.wait_status("n2", "a lease again", |s| s.lease.is_some());
    assert_eq!(again.lease, Some(n2_lease), "same subnet after the restart");
    lab.wait_status("n1", "n2's route back", |s| {
        s.routes.iter().any(|r| r.subnet == n2_subnet)
    });
    assert!(lab.ping("n1-c1", target), "traffic resumes");
    lab.down();
}

fn ipv4_udp(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, dport: u16, payload: &[u8]) -> Vec<u8> {
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, UdpPacket, UdpRepr};
    let udp = UdpRepr {
        src_port: 40000,
        dst_port: dport,
    };
    let ip = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Udp,
        payload_len: udp.header_len() + payload.len(),
        hop_limit: ttl,
    };
    let mut buf = vec![0u8; ip.buffer_len() + udp.header_len() + payload.len()];
    let caps = ChecksumCapabilities::default();
    let mut p = Ipv4Packet::new_unchecked(&mut buf[..]);
    ip.emit(&mut p, &caps);
    let mut u = UdpPacket::new_unchecked(p.payload_mut());
    udp.emit(
        &mut u,
        &IpAddress::Ipv4(src),
        &IpAddress::Ipv4(dst),
        payload.len(),
        |b| b.copy_from_slice(payload),
        &caps,
    );
    buf
}

#[test]
fn flannel_datagrams_are_delivered_and_hostile_ones_are_dropped_and_counted() {
    if !can_run_lab("flannel_datagrams_are_delivered_and_hostile_ones_are_dropped_and_counted") {
        return;
    }
    let lab = Lab::up(3, &[]);
    let (c1, c2, c3) = (
        lab.container_ip("n1-c1"),
        lab.container_ip("n2-c1"),
        lab.container_ip("n3-c1"),
    );
    let n2 = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 12), 8285));
    let listener = in_ns(&lab.ns("n2-c1"), || {
        UdpSocket::bind("0.0.0.0:9999").unwrap()
    });
    listener
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    // Sockets in the peers' namespaces, on their public IPs (not the daemon's port).
    let from_n1 = in_ns(&lab.ns("n1"), || UdpSocket::bind("192.0.2.11:0").unwrap());
    let mut buf = [0u8; 2048];

    // The counters as they stand before it, so that `before` below is read only once
    // the datagram's own TUN write is counted: the status is a snapshot, and a snapshot
    // taken before that write was published counted it in `after` (CI: 5 vs 4).
    let start = lab
        .wait_status("n2", "counters", |s| s.packets.contains_key("tun_tx"))
        .packets["tun_tx"];
    // A hand-built flannel datagram: the inner packet, as is, to port 8285.
    from_n1
        .send_to(&ipv4_udp(c1, c2, 64, 9999, b"flannel"), n2)
        .unwrap();
    let (n, _) = listener
        .recv_from(&mut buf)
        .expect("the flannel datagram reaches n2-c1");
    assert_eq!(&buf[..n], b"flannel");
    let before = lab.wait_status("n2", "the flannel datagram counted", |s| {
        s.packets.get("tun_tx").copied() >= Some(start + 1)
    });

    // Hostile: garbage, a truncated packet, a spoofed inner source (n3's subnet, sent by
    // n1), a destination outside n2's subnet, and a well-formed one from no peer.
    let good = ipv4_udp(c1, c2, 64, 9999, b"never");
    from_n1
        .send_to(b"\x00\x01garbage that is no IP packet", n2)
        .unwrap();
    from_n1.send_to(&good[..good.len() - 4], n2).unwrap();
    from_n1
        .send_to(&ipv4_udp(c3, c2, 64, 9999, b"spoofed"), n2)
        .unwrap();
    from_n1
        .send_to(&ipv4_udp(c1, c3, 64, 9999, b"elsewhere"), n2)
        .unwrap();
    let underlay = lab.ns("underlay");
    let stranger = in_ns(&underlay, || {
        let status = std::process::Command::new("ip")
            .args(["addr", "add", "192.0.2.99/24", "dev", "br0"])
            .status()
            .unwrap();
        assert!(status.success());
        UdpSocket::bind("192.0.2.99:0").unwrap()
    });
    stranger.send_to(&good, n2).unwrap();

    let after = lab.wait_status("n2", "every hostile datagram counted", |s| {
        let d = |reason: &str| s.drops.get(reason).copied().unwrap_or(0);
        d("malformed") >= 2
            && d("spoofed_source") >= 1
            && d("not_our_subnet") >= 1
            && d("unknown_peer") >= 1
    });
    assert_eq!(
        after.packets.get("tun_tx"),
        before.packets.get("tun_tx"),
        "nothing hostile written to TUN"
    );
    listener
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    assert!(
        listener.recv_from(&mut buf).is_err(),
        "nothing hostile reached the container"
    );
    // And the daemon keeps forwarding.
    assert!(lab.ping("n1-c1", c2));

    // What /metrics makes of it: per backend, the drops by reason and the TUN device's
    // bytes as the kernel counts them.
    let last = lab.wait_status("n2", "the TUN device's counters", |s| {
        s.device.as_ref().is_some_and(|d| d.stats.tx_bytes > 0)
    });
    let text = weft_datapath::daemon::health::metrics(&last);
    let tun = &last
        .device
        .as_ref()
        .map(|d| d.name.clone())
        .unwrap_or_default();
    for line in [
        r#"weft_packets_dropped_total{backend="udp",reason="spoofed_source"} "#.to_string(),
        r#"weft_datapath_packets_total{backend="udp",path="tun_tx"} "#.to_string(),
        format!(r#"weft_device_bytes_total{{backend="udp",device="{tun}",direction="tx"}} "#),
    ] {
        assert!(text.contains(&line), "no {line:?} in\n{text}");
    }
    lab.down();
}

#[test]
fn a_packet_leaves_the_tun_as_flannels_udp_backend_sends_it() {
    if !can_run_lab("a_packet_leaves_the_tun_as_flannels_udp_backend_sends_it") {
        return;
    }
    use socket2::{Domain, Protocol, Socket, Type};
    let lab = Lab::up(2, &[]);
    let (c1, c2) = (lab.container_ip("n1-c1"), lab.container_ip("n2-c1"));
    // A raw UDP socket in n2 sees a copy of every UDP datagram n2 receives, IP header
    // included.
    let raw = in_ns(&lab.ns("n2"), || {
        Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::UDP)).unwrap()
    });
    raw.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let sender = in_ns(&lab.ns("n1-c1"), || UdpSocket::bind("0.0.0.0:0").unwrap());
    let mut found = None;
    for _ in 0..5 {
        sender.send_to(b"on the wire", (c2, 9999)).unwrap();
        let mut bytes = [0u8; 2048];
        while let Ok(n) = (&raw).read(&mut bytes) {
            let bytes = &bytes[..n];
            let outer = smoltcp::wire::Ipv4Packet::new_checked(bytes).unwrap();
            let udp = smoltcp::wire::UdpPacket::new_checked(outer.payload()).unwrap();
            if udp.dst_port() == 8285 {
                found = Some((outer.src_addr(), outer.dst_addr(), udp.payload().to_vec()));
                break;
            }
        }
        if found.is_some() {
            break;
        }
    }
    let (src, dst, inner) = found.expect("a datagram to port 8285 was captured");
    assert_eq!(
        (src, dst),
        (Ipv4Addr::new(192, 0, 2, 11), Ipv4Addr::new(192, 0, 2, 12))
    );
    // The payload is the inner IP packet as is: no header of flannel's own.
    let ip = smoltcp::wire::Ipv4Packet::new_checked(&inner[..]).unwrap();
    assert!(ip.verify_checksum());
    assert_eq!((ip.src_addr(), ip.dst_addr()), (c1, c2));
    // 64 from the container, -1 by n1's kernel (cni0 -> weft0), -1 by weft.
    assert_eq!(ip.hop_limit(), 62);
    let udp = smoltcp::wire::UdpPacket::new_checked(ip.payload()).unwrap();
    assert_eq!(udp.payload(), b"on the wire");
    lab.down();
}

/// `weft lab play SCENARIO EXTRA...` in a state directory and namespace prefix of its
/// own; asserts that it succeeds with all six pings of scenario 01 and leaves no
/// namespace behind. Returns its output and its log.
fn play_three_node_scenario(scenario: &str, tag: &str, extra: &[&str]) -> (String, String) {
    let dir = format!("/run/weft-test-play{tag}-{}", std::process::id());
    let prefix = format!("wp{tag}{}-", std::process::id());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .args([
            "lab",
            "play",
            scenario,
            "--state-dir",
            &dir,
            "--prefix",
            &prefix,
        ])
        .args(extra)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.matches(" ok    ping ").count(), 6, "{stdout}");
    assert!(
        stdout.contains("all steps and expectations held in the lab"),
        "{stdout}"
    );
    let left: Vec<_> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !left.iter().any(|n: &String| n.starts_with(&prefix)),
        "left behind: {left:?}"
    );
    (stdout, String::from_utf8_lossy(&out.stderr).to_string())
}

#[test]
fn the_simulators_three_node_scenario_also_passes_in_the_lab() {
    if !can_run_lab("the_simulators_three_node_scenario_also_passes_in_the_lab") {
        return;
    }
    // The very file tests/sim_scenarios.rs runs in the simulator.
    let scenario = format!(
        "{}/scenarios/01-join-and-ping.toml",
        env!("CARGO_MANIFEST_DIR")
    );
    let (stdout, _) = play_three_node_scenario(&scenario, "", &[]);
    assert!(stdout.contains("on the udp backend"), "{stdout}");
}

#[test]
fn a_scenario_plays_in_the_lab_on_the_backend_it_names_or_on_backend() {
    if !can_run_lab("a_scenario_plays_in_the_lab_on_the_backend_it_names_or_on_backend") {
        return;
    }
    let original = format!(
        "{}/scenarios/01-join-and-ping.toml",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&original).unwrap();
    let udp = r#"Backend = { Type = "udp" }"#;
    assert!(text.contains(udp), "scenario 01 names udp");
    let dir = tempfile::tempdir().unwrap();
    let vxlan = dir.path().join("01-on-vxlan.toml");
    std::fs::write(&vxlan, text.replace(udp, r#"Backend = { Type = "vxlan" }"#)).unwrap();

    // The simulator refuses it, and says where it runs.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["sim", "run", vxlan.to_str().unwrap()])
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("backend vxlan is not simulated") && said.contains("weft lab play"),
        "{said}"
    );

    // The lab plays it on vxlan, and scenario 01 itself on host-gw by flag: every
    // node's daemon starts on that backend.
    for (file, tag, extra, kind) in [
        (vxlan.to_str().unwrap(), "x", &[][..], "vxlan"),
        (&original, "g", &["--backend", "host-gw"][..], "host-gw"),
    ] {
        let (stdout, log) = play_three_node_scenario(file, tag, extra);
        assert!(
            stdout.contains(&format!("on the {kind} backend")),
            "{stdout}"
        );
        let starts = log
            .lines()
            .filter(|l| l.contains("starting node=") && l.contains(&format!("backend=\"{kind}\"")))
            .count();
        assert_eq!(starts, 3, "{log}");
    }
}

#[test]
fn lab_play_refuses_what_only_the_simulator_can_do() {
    if !can_run_lab("lab_play_refuses_what_only_the_simulator_can_do") {
        return;
    }
    let scenario = format!(
        "{}/scenarios/03-partition-past-ttl.toml",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .args([
            "lab",
            "play",
            &scenario,
            "--state-dir",
            "/run/weft-test-refuse",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("step \"partition\" needs the simulator"),
        "{err}"
    );
}

/// Runs `command` (a program and its arguments) inside the namespace at `ns`, which must
/// succeed.
fn run_in(ns: &std::path::Path, command: &[&str]) -> String {
    let command: Vec<String> = command.iter().map(|s| s.to_string()).collect();
    let out = in_ns(ns, move || {
        std::process::Command::new(&command[0])
            .args(&command[1..])
            .output()
            .unwrap()
    });
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// A `sha256sum` child fed through its stdin: what both ends of a transfer hash with.
struct Sha256 {
    child: std::process::Child,
}

impl Sha256 {
    fn new() -> Sha256 {
        let child = std::process::Command::new("sha256sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("sha256sum (coreutils)");
        Sha256 { child }
    }

    fn update(&mut self, bytes: &[u8]) {
        self.child.stdin.as_mut().unwrap().write_all(bytes).unwrap();
    }

    fn finish(mut self) -> String {
        drop(self.child.stdin.take());
        let out = self.child.wait_with_output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    }
}

/// Sends `size` bytes over TCP from container `from` to container `to` (port 5002):
/// 1 MiB of xorshift bytes, each copy stamped with its index so that no two MiB are
/// alike; returns (bytes received, sha256 sent, sha256 received).
fn sha256_transfer(lab: &Lab, from: &str, to: &str, size: usize) -> (usize, String, String) {
    let receiver_ip = lab.container_ip(to);
    let listener = in_ns(&lab.ns(to), || TcpListener::bind("0.0.0.0:5002").unwrap());
    let receiver = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let (mut total, mut hash, mut buf) = (0usize, Sha256::new(), vec![0u8; 1 << 16]);
        loop {
            let n = conn.read(&mut buf).unwrap();
            if n == 0 {
                return (total, hash.finish());
            }
            hash.update(&buf[..n]);
            total += n;
        }
    });
    let to = SocketAddr::from((receiver_ip, 5002));
    let mut conn = in_ns(&lab.ns(from), move || {
        TcpStream::connect_timeout(&to, Duration::from_secs(10)).unwrap()
    });
    conn.set_write_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut state = 0x9e3779b97f4a7c15u64;
    let mut block: Vec<u8> = (0..1 << 20).map(|_| stream_byte(&mut state)).collect();
    let (mut sent, mut hash) = (0usize, Sha256::new());
    for index in 0u64.. {
        if sent >= size {
            break;
        }
        block[..8].copy_from_slice(&index.to_be_bytes());
        let n = block.len().min(size - sent);
        hash.update(&block[..n]);
        conn.write_all(&block[..n]).unwrap();
        sent += n;
    }
    drop(conn);
    let (received, received_hash) = receiver.join().unwrap();
    (received, hash.finish(), received_hash)
}

/// The udp backend with TUN offloads on (the default): 1 GB crosses the overlay intact,
/// and it did cross as super-packets both ways (the kernel handed TSO super-packets to
/// n1's weft, and n2's weft wrote coalesced ones), not one packet at a time.
#[test]
fn a_1_gb_tcp_transfer_over_udp_with_offloads_arrives_intact() {
    if !can_run_lab("a_1_gb_tcp_transfer_over_udp_with_offloads_arrives_intact") {
        return;
    }
    let lab = Lab::up(2, &[]);
    const SIZE: usize = 1 << 30;
    let started = std::time::Instant::now();
    let (received, sent_hash, received_hash) = sha256_transfer(&lab, "n1-c1", "n2-c1", SIZE);
    eprintln!("1 GiB over the udp backend in {:?}", started.elapsed());
    assert_eq!(received, SIZE);
    assert_eq!(received_hash, sent_hash, "the bytes arrived intact");
    let (n1, n2) = (lab.node_status("n1"), lab.node_status("n2"));
    assert!(
        n1.totals.get("tso_reads").copied().unwrap_or(0) > 0,
        "{n1:?}"
    );
    assert!(
        n2.totals.get("gro_writes").copied().unwrap_or(0) > 0,
        "{n2:?}"
    );
    // Nothing of the transfer was refused on the way in (a stray packet the kernel
    // routes into the TUN device before the peers are known may be counted as no_route).
    for reason in [
        "malformed",
        "spoofed_source",
        "unknown_peer",
        "not_our_subnet",
    ] {
        assert_eq!(
            n2.drops.get(reason).copied().unwrap_or(0),
            0,
            "{:?}",
            n2.drops
        );
    }
    lab.down();
}

/// With TUN offloads on, the underlay still carries flannel's format: during a bulk TCP
/// transfer every datagram to port 8285 is one complete inner IP packet (its length
/// exact, its IP and TCP checksums valid) no bigger than the TUN MTU, and full-size ones
/// are exactly the MTU.
#[test]
fn with_offloads_every_datagram_on_the_underlay_is_one_ip_packet_within_the_tun_mtu() {
    if !can_run_lab(
        "with_offloads_every_datagram_on_the_underlay_is_one_ip_packet_within_the_tun_mtu",
    ) {
        return;
    }
    use smoltcp::wire::{IpAddress, IpProtocol, Ipv4Packet, TcpPacket, UdpPacket};
    use socket2::{Domain, Protocol, Socket, Type};
    let lab = Lab::up(2, &[]);
    let (n1, n2) = (lab.ns("n1"), lab.ns("n2"));
    // veth keeps a UDP GSO send whole up to the receiving socket; a NIC cuts it. With at
    // most one segment per packet, n1's underlay device cuts it in software as a NIC
    // would, so that n2 sees each datagram as a wire would carry it.
    run_in(
        &n1,
        &["ip", "link", "set", "dev", "eth0", "gso_max_segs", "1"],
    );
    let link = run_in(&n1, &["ip", "-o", "link", "show", "weft0"]);
    let mtu: usize = link
        .split_whitespace()
        .skip_while(|w| *w != "mtu")
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("no mtu in {link}"));
    let raw = in_ns(&n2, || {
        Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::UDP)).unwrap()
    });
    raw.set_recv_buffer_size(32 << 20).unwrap();
    raw.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let done = done.clone();
        std::thread::spawn(move || {
            let (mut datagrams, mut full, mut tcp) = (0usize, 0usize, 0usize);
            let mut bytes = vec![0u8; 1 << 16];
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while !done.load(std::sync::atomic::Ordering::Relaxed)
                && std::time::Instant::now() < deadline
            {
                let Ok(n) = (&raw).read(&mut bytes) else {
                    continue;
                };
                let outer = Ipv4Packet::new_checked(&bytes[..n]).unwrap();
                let udp = UdpPacket::new_checked(outer.payload()).unwrap();
                if udp.dst_port() != 8285 {
                    continue;
                }
                datagrams += 1;
                let inner = udp.payload();
                assert!(
                    inner.len() <= mtu,
                    "a {}-byte datagram over MTU {mtu}",
                    inner.len()
                );
                full += usize::from(inner.len() == mtu);
                let ip = Ipv4Packet::new_checked(inner).unwrap();
                assert_eq!(
                    usize::from(ip.total_len()),
                    inner.len(),
                    "one packet per datagram"
                );
                assert!(ip.verify_checksum());
                if ip.next_header() == IpProtocol::Tcp {
                    let t = TcpPacket::new_checked(ip.payload()).unwrap();
                    let (src, dst) = (
                        IpAddress::Ipv4(ip.src_addr()),
                        IpAddress::Ipv4(ip.dst_addr()),
                    );
                    assert!(t.verify_checksum(&src, &dst), "a complete TCP checksum");
                    tcp += 1;
                }
            }
            (datagrams, full, tcp)
        })
    };
    let (received, sent_hash, received_hash) = sha256_transfer(&lab, "n1-c1", "n2-c1", 64 << 20);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (datagrams, full, tcp) = reader.join().unwrap();
    assert_eq!((received, received_hash), (64 << 20, sent_hash));
    // 64 MiB is at least 46,000 full-size segments; the raw socket may miss some.
    assert!(
        tcp > 10_000 && full > 10_000,
        "{datagrams} datagrams, {tcp} TCP, {full} of MTU {mtu}"
    );
    let status = lab.node_status("n1");
    assert!(
        status.totals.get("tso_reads").copied().unwrap_or(0) > 0,
        "offloads on: {status:?}"
    );
    lab.down();
}
