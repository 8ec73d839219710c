//! The wireguard backend on the real kernel: hosts in namespaces on one underlay, a real
//! `weft daemon` process on each, one real etcd (see `underlay`). Containers reach each
//! other; on the wire (tcpdump, an observer weft does not write) there are WireGuard
//! messages only, and no plaintext inner packet; a restarted node keeps its key and the
//! sessions recover; random bytes, replayed packets and a valid handshake from a key no
//! lease names are dropped, counted, and change nothing for the containers; and a node
//! running Debian's `wireguard-go`, configured with `wg` from the leases in the store
//! and writing its own lease as flannel does, talks with weft's nodes both ways. Root
//! only; `wireguard-go` and `wg` from scripts/install-deps.

#![allow(clippy::unwrap_used)]

mod underlay;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use smoltcp::wire::{IpProtocol, Ipv4Packet, UdpPacket};
use underlay::capture::have_tcpdump;
use underlay::{can_run, run, wait_or_show, Underlay, PREFIX};
use weft_datapath::netns;
use weft_stores::testing::{etcd_or_skip, Etcd};

const WIREGUARD: &str =
    r#"{"Network":"10.5.0.0/16","SubnetLen":24,"Backend":{"Type":"wireguard"}}"#;
const PORT: u16 = 51820;

fn etcd_get(etcd: &Etcd, key: &str) -> String {
    let out = etcd.etcdctl(&["get", "--print-value-only", key]);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn lease_value(net: &Underlay, etcd: &Etcd, i: usize) -> String {
    let s = net.hosts[i - 1].subnet.unwrap();
    etcd_get(
        etcd,
        &format!("{PREFIX}/subnets/{}-{}", s.network(), s.prefix_len()),
    )
}

fn key_file(net: &Underlay, i: usize) -> String {
    net.dir
        .path()
        .join(format!("h{i}.wgkey"))
        .display()
        .to_string()
}

/// Starts host `i`'s daemon with its own key file and a health server on its loopback.
fn start(net: &mut Underlay, i: usize) -> ipnet::Ipv4Net {
    let key = key_file(net, i);
    net.start_env(
        i,
        &["--healthz-ip", "127.0.0.1", "--healthz-port", "9110"],
        &[("WIREGUARD_KEY_FILE", &key)],
    )
}

/// `wg pubkey` of a private key's text.
fn wg_pubkey(private: &str) -> String {
    let mut child = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
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

fn have_wireguard_tools(test: &str) -> bool {
    let found = ["wg", "wireguard-go"].iter().all(|p| {
        Command::new("sh")
            .args(["-c", &format!("command -v {p}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if found {
        return true;
    }
    let why = format!("{test}: needs wireguard-go and wireguard-tools (scripts/install-deps)");
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{why}: CI=true, so this is a failure"
    );
    eprintln!("\n*** SKIPPED {why} ***\n");
    false
}

/// A metric of host `i`'s daemon, read from its /metrics inside its namespace.
fn metric(net: &Underlay, i: usize, line_start: &str) -> u64 {
    let ns = netns::path(&net.hosts[i - 1].ns);
    let text = netns::in_netns(Some(&ns), || {
        let mut s = TcpStream::connect(("127.0.0.1", 9110)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        text
    })
    .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
}

fn dropped(net: &Underlay, i: usize, reason: &str) -> u64 {
    metric(
        net,
        i,
        &format!(r#"weft_packets_dropped_total{{backend="wireguard",reason="{reason}"}} "#),
    )
}

/// A counter once it stands still for 600 ms (more than two of the daemon's 250 ms
/// samples), so that nothing counted before the call is counted after it.
fn settled(read: impl Fn() -> u64) -> u64 {
    let mut last = read();
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(600));
        let now = read();
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("a counter still moves after 12 s: {last}");
}

/// A captured frame's IPv4 addresses, UDP ports and payload.
struct Datagram {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    dport: u16,
    payload: Vec<u8>,
}

/// Takes an Ethernet frame apart by hand (no weft parser); `None` if not IPv4/UDP.
fn parse_udp(frame: &[u8]) -> Option<Datagram> {
    if frame.len() < 14 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = Ipv4Packet::new_checked(&frame[14..]).ok()?;
    if ip.next_header() != IpProtocol::Udp {
        return None;
    }
    let udp = UdpPacket::new_checked(ip.payload()).ok()?;
    Some(Datagram {
        src: ip.src_addr(),
        dst: ip.dst_addr(),
        dport: udp.dst_port(),
        payload: udp.payload().to_vec(),
    })
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Sends datagrams to host `i`'s WireGuard port from the underlay namespace.
fn send_from_underlay(net: &Underlay, i: usize, datagrams: Vec<Vec<u8>>) {
    let ul = netns::path(&format!("{}ul", net.prefix));
    let to = SocketAddr::from((net.hosts[i - 1].ip, PORT));
    netns::in_netns(Some(&ul), move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        for d in datagrams {
            s.send_to(&d, to).unwrap();
        }
    })
    .unwrap();
}

/// xorshift bytes: deterministic "random" input.
fn noise(state: &mut u64, n: usize) -> Vec<u8> {
    (0..n)
        .map(|_| {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            *state as u8
        })
        .collect()
}

#[test]
fn wireguard_mesh_encrypted_on_the_wire_restart_and_hostile_input() {
    let test = "wireguard_mesh_encrypted_on_the_wire_restart_and_hostile_input";
    if !can_run(test) || !have_tcpdump(test) || !have_wireguard_tools(test) {
        return;
    }
    let Some(etcd) = etcd_or_skip(test) else {
        return;
    };
    let started = Instant::now();
    let mut net = Underlay::new("wg", &["192.0.2.1", "192.0.2.2", "192.0.2.3"], &etcd);
    net.set_config(WIREGUARD);
    for i in 1..=3 {
        start(&mut net, i);
        net.add_container(i);
    }
    // flannel's lease: its type, and the public key of the key file with its port.
    let mut keys = Vec::new();
    for i in 1..=3 {
        let private = std::fs::read_to_string(key_file(&net, i)).unwrap();
        let public = wg_pubkey(&private);
        let value = lease_value(&net, &etcd, i);
        let ip = net.hosts[i - 1].ip;
        assert_eq!(
            value,
            format!(
                r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"wireguard","BackendData":{{"PublicKey":"{public}","Port":51820}}}}"#
            )
        );
        keys.push(public);
    }
    net.assert_mesh(&[1, 2, 3]);

    // On the wire at host 3: WireGuard messages on its port, and no inner packet.
    let capture = net.capture(3, "ip and udp", 200, Duration::from_secs(20));
    // A new session with host 3 (handshake types 1 and 2) as well as data (type 4).
    net.stop(3);
    start(&mut net, 3);
    for (a, b) in [(1, 3), (3, 2)] {
        assert!(net.ping(a, b), "c{a} cannot ping c{b} during the capture");
    }
    let (frames, log) = capture.finish();
    let datagrams: Vec<Datagram> = frames.iter().filter_map(|f| parse_udp(f)).collect();
    assert!(!datagrams.is_empty(), "nothing captured\n{log}");
    let mut types = std::collections::BTreeSet::new();
    let c = |i: usize| net.container_ip(i);
    for d in &datagrams {
        assert!(
            d.dport == PORT || d.src == net.hosts[2].ip,
            "a datagram to port {}",
            d.dport
        );
        let t = d.payload[0];
        assert!(
            (1..=4).contains(&t) && d.payload[1..4] == [0, 0, 0],
            "not WireGuard: {:02x?}",
            &d.payload[..8.min(d.payload.len())]
        );
        types.insert(t);
        for (a, b) in [(1, 3), (3, 1), (2, 3), (3, 2)] {
            let pair = [c(a).octets(), c(b).octets()].concat();
            assert!(
                !contains(&d.payload, &pair),
                "a plaintext c{a} -> c{b} header in {d:?}",
                d = d.payload.len()
            );
        }
    }
    assert!(
        types.contains(&1) && types.contains(&2) && types.contains(&4),
        "{types:?}"
    );

    // Restart: the key is kept, the lease says the same, the sessions recover.
    net.stop(1);
    start(&mut net, 1);
    assert!(lease_value(&net, &etcd, 1).contains(&keys[0]));
    for (a, b) in [(1, 2), (3, 1), (2, 1)] {
        assert!(net.ping(a, b), "after h1's restart c{a} cannot ping c{b}");
    }

    // Hostile input on host 3's port, from the underlay. c3 listens on UDP port 9, where
    // the forged message below would go if its bytes were taken for a packet.
    let (c1, c3) = (net.container_ip(1), net.container_ip(3));
    let c3_ns = netns::path(net.hosts[2].container.as_ref().unwrap());
    let listener = netns::in_netns(Some(&c3_ns), || UdpSocket::bind("0.0.0.0:9"))
        .unwrap()
        .unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let tun_tx = |net: &Underlay| {
        metric(
            net,
            3,
            r#"weft_datapath_packets_total{backend="wireguard",path="tun_tx"} "#,
        )
    };
    let before = (
        dropped(&net, 3, "wg_not_wireguard"),
        dropped(&net, 3, "wg_replay"),
        dropped(&net, 3, "wg_unknown_key"),
        dropped(&net, 3, "wg_bad_auth"),
        dropped(&net, 3, "wg_unknown_index"),
    );
    // The daemon samples its counters every 250 ms: the pings above are counted once
    // the count stands still.
    let delivered = settled(|| tun_tx(&net));
    let mut state = 0x9e3779b97f4a7c15u64;
    let mut hostile: Vec<Vec<u8>> = (0..50)
        .map(|k| {
            let mut d = noise(&mut state, 1 + (k * 37) % 200);
            d[0] = [0u8, 5, 9, 0xff][k % 4];
            d
        })
        .collect();
    // Data messages h1 and h2 sent to h3 during the capture, replayed as they were
    // (those of sessions the restarts ended are for an index h3 no longer has).
    let replayed: Vec<Vec<u8>> = datagrams
        .iter()
        .filter(|d| d.dst == net.hosts[2].ip && d.payload[0] == 4)
        .map(|d| d.payload.clone())
        .collect();
    // h2's last one is on the session h2 and h3 still have.
    let live = datagrams
        .iter()
        .rev()
        .find(|d| d.src == net.hosts[1].ip && d.dst == net.hosts[2].ip && d.payload[0] == 4)
        .map(|d| d.payload.clone())
        .expect("a data message from h2 to h3");
    hostile.extend(replayed.iter().cloned());
    hostile.push(live.clone());
    // A forged data message on that live session: a fresh counter, then in place of
    // the ciphertext a plaintext packet for c3, and a tag of noise.
    let mut forged = live[..16].to_vec();
    let counter = u64::from_le_bytes(forged[8..16].try_into().unwrap()) + 1000;
    forged[8..16].copy_from_slice(&counter.to_le_bytes());
    forged.extend(udp_packet(c1, c3, b"forged!!"));
    forged.extend(noise(&mut state, 16));
    hostile.push(forged);
    // A valid handshake initiation for h3's key, from a key no lease names.
    let h3: [u8; 32] = weft_core::wg_key::parse(&keys[2]).unwrap();
    let stranger = boringtun::x25519::StaticSecret::from([7u8; 32]);
    let mut tunn = boringtun::noise::Tunn::new(
        stranger,
        boringtun::x25519::PublicKey::from(h3),
        None,
        None,
        1,
        None,
    );
    let mut buf = vec![0u8; 256];
    match tunn.format_handshake_initiation(&mut buf, false) {
        boringtun::noise::TunnResult::WriteToNetwork(d) => hostile.push(d.to_vec()),
        other => panic!("no initiation: {other:?}"),
    }
    send_from_underlay(&net, 3, hostile);
    wait_or_show(
        "h3 counts the hostile datagrams",
        Duration::from_secs(5),
        || {
            dropped(&net, 3, "wg_not_wireguard") >= before.0 + 50
                && dropped(&net, 3, "wg_replay") > before.1
                && dropped(&net, 3, "wg_unknown_key") > before.2
                && dropped(&net, 3, "wg_bad_auth") > before.3
                && dropped(&net, 3, "wg_replay") + dropped(&net, 3, "wg_unknown_index")
                    > before.1 + before.4 + replayed.len() as u64
        },
        || {
            let now: Vec<String> = [
                "wg_not_wireguard",
                "wg_replay",
                "wg_unknown_key",
                "wg_bad_auth",
                "wg_unknown_index",
                "wg_bad_handshake",
                "wg_bad_mac",
                "wg_unexpected",
            ]
            .iter()
            .map(|r| format!("{r} {}", dropped(&net, 3, r)))
            .collect();
            format!("before {before:?}, now {now:?}")
        },
    );
    assert_eq!(
        settled(|| tun_tx(&net)),
        delivered,
        "a hostile datagram reached the TUN device"
    );
    let mut got = [0u8; 64];
    if let Ok((n, from)) = listener.recv_from(&mut got) {
        panic!("c3 got {:?} from {from}", &got[..n]);
    }
    for (a, b) in [(1, 3), (3, 2)] {
        assert!(
            net.ping(a, b),
            "after the hostile input c{a} cannot ping c{b}"
        );
    }
    // A peer with a valid session (a lease names its key) may send only from its own
    // subnet: a packet it seals with another node's container as source is dropped after
    // decryption, counted, and never written; one from its own subnet is delivered.
    let spoof_before = dropped(&net, 3, "spoofed_source");
    let mut peer = FakePeer::new(&net, &etcd, &keys[2]);
    peer.send_sealed(&udp_packet(c1, c3, b"spoofed!"));
    wait_or_show(
        "h3 drops a sealed packet with a spoofed inner source",
        Duration::from_secs(5),
        || dropped(&net, 3, "spoofed_source") > spoof_before,
        || format!("spoofed_source {}", dropped(&net, 3, "spoofed_source")),
    );
    peer.send_sealed(&udp_packet(Ipv4Addr::new(10, 5, 99, 7), c3, b"genuine!"));
    // c3 gets the genuine one, and it is the first thing it gets.
    let mut got = [0u8; 64];
    let (n, from) = listener
        .recv_from(&mut got)
        .expect("c3 never got the fake peer's packet from its own subnet");
    assert_eq!(
        (&got[..n], from),
        (&b"genuine!"[..], SocketAddr::from(([10, 5, 99, 7], 9))),
        "c3 got a packet with a spoofed inner source"
    );
    assert_eq!(dropped(&net, 3, "spoofed_source"), spoof_before + 1);
    // Under load (more than 100 initiations a second, each with a valid MAC1 for h3's
    // key), h3 answers with cookie replies (type 3) instead of doing the handshake's
    // Diffie-Hellman, counts them, and forwarding goes on; the last reply opens for the
    // initiator, whose next initiation then carries a MAC2.
    let under_load = dropped(&net, 3, "wg_under_load");
    let ul = netns::path(&format!("{}ul", net.prefix));
    let flood = netns::in_netns(Some(&ul), || UdpSocket::bind("192.0.2.254:0"))
        .unwrap()
        .unwrap();
    flood
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut initiator = boringtun::noise::Tunn::new(
        boringtun::x25519::StaticSecret::from([13u8; 32]),
        boringtun::x25519::PublicKey::from(h3),
        None,
        None,
        5,
        None,
    );
    let to = SocketAddr::from((net.hosts[2].ip, PORT));
    // A cookie reply opens only for the initiation it answers, the initiator's last.
    // h3's rate limiter starts a new count on its timer: a flood the reset cuts short
    // may leave the last initiations under the limit, answered by nothing; so flood
    // again, a bounded number of times, until the last one is answered.
    let (mut cookies, mut opened) = (0, false);
    let mut reply = [0u8; 256];
    for _ in 0..10 {
        for _ in 0..300 {
            if let boringtun::noise::TunnResult::WriteToNetwork(d) =
                initiator.format_handshake_initiation(&mut buf, true)
            {
                flood.send_to(d, to).unwrap();
            }
        }
        let mut last = Vec::new();
        while let Ok((n, _)) = flood.recv_from(&mut reply) {
            assert_eq!(
                (reply[0], n),
                (3, 64),
                "not a cookie reply: {:02x?}",
                &reply[..n]
            );
            cookies += 1;
            last = reply[..n].to_vec();
        }
        if !last.is_empty()
            && matches!(
                initiator.decapsulate(None, &last, &mut buf),
                boringtun::noise::TunnResult::Done
            )
        {
            opened = true;
            break;
        }
    }
    assert!(cookies > 0, "no cookie reply to the initiations");
    wait_or_show(
        "h3 counts the initiations it answered with a cookie",
        Duration::from_secs(5),
        || dropped(&net, 3, "wg_under_load") >= under_load + cookies,
        || {
            format!(
                "wg_under_load {}, {cookies} cookies",
                dropped(&net, 3, "wg_under_load")
            )
        },
    );
    assert!(
        opened,
        "no flood's last cookie reply opened for its initiator"
    );
    match initiator.format_handshake_initiation(&mut buf, true) {
        boringtun::noise::TunnResult::WriteToNetwork(d) => {
            assert_ne!(d[132..148], [0u8; 16], "no MAC2 after the cookie");
        }
        other => panic!("no initiation: {other:?}"),
    }
    for (a, b) in [(1, 3), (3, 2)] {
        assert!(net.ping(a, b), "under load c{a} cannot ping c{b}");
    }
    eprintln!(
        "{test}: {:?} ({} datagrams captured)",
        started.elapsed(),
        datagrams.len()
    );
}

/// An IPv4/UDP packet from `src` to `dst` (port 9 both ways, `payload`), its
/// header checksum computed by hand.
fn udp_packet(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8; 8]) -> Vec<u8> {
    let mut p = vec![0u8; 36];
    p[..12].copy_from_slice(&[0x45, 0, 0, 36, 0, 1, 0x40, 0, 64, 17, 0, 0]);
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let sum: u32 = p[..20]
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    let folded = (sum & 0xffff) + (sum >> 16);
    let csum = !((folded & 0xffff) + (folded >> 16)) as u16;
    p[10..12].copy_from_slice(&csum.to_be_bytes());
    // UDP: ports 9, length 16, no checksum (allowed in IPv4).
    p[20..28].copy_from_slice(&[0, 9, 0, 9, 0, 16, 0, 0]);
    p[28..].copy_from_slice(payload);
    p
}

/// A WireGuard peer the test plays itself, at the underlay router's address: a lease
/// (10.5.99.0/24) names its key, so host 3 shakes hands with it.
struct FakePeer {
    socket: UdpSocket,
    tunn: boringtun::noise::Tunn,
    to: SocketAddr,
}

impl FakePeer {
    fn new(net: &Underlay, etcd: &Etcd, h3_key: &str) -> FakePeer {
        let secret = boringtun::x25519::StaticSecret::from([11u8; 32]);
        let public = boringtun::x25519::PublicKey::from(&secret);
        let value = format!(
            r#"{{"PublicIP":"192.0.2.254","PublicIPv6":null,"BackendType":"wireguard","BackendData":{{"PublicKey":"{}","Port":{PORT}}}}}"#,
            weft_core::wg_key::format(public.as_bytes())
        );
        let out = etcd.etcdctl(&["put", &format!("{PREFIX}/subnets/10.5.99.0-24"), &value]);
        assert!(out.status.success(), "{out:?}");
        let ul = netns::path(&format!("{}ul", net.prefix));
        let socket = netns::in_netns(Some(&ul), || UdpSocket::bind(("192.0.2.254", PORT)))
            .unwrap()
            .unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let h3: [u8; 32] = weft_core::wg_key::parse(h3_key).unwrap();
        let tunn = boringtun::noise::Tunn::new(
            secret,
            boringtun::x25519::PublicKey::from(h3),
            None,
            None,
            77,
            None,
        );
        let mut peer = FakePeer {
            socket,
            tunn,
            to: SocketAddr::from((net.hosts[2].ip, PORT)),
        };
        // Until host 3 has the lease's peer, its initiations go unanswered.
        let mut buf = vec![0u8; 2048];
        let mut out = vec![0u8; 2048];
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(
                Instant::now() < deadline,
                "h3 never answered the fake peer's handshake"
            );
            if let boringtun::noise::TunnResult::WriteToNetwork(d) =
                peer.tunn.format_handshake_initiation(&mut out, true)
            {
                peer.socket.send_to(d, peer.to).unwrap();
            }
            let Ok((n, _)) = peer.socket.recv_from(&mut buf) else {
                continue;
            };
            if buf[0] != 2 {
                continue;
            }
            match peer.tunn.decapsulate(None, &buf[..n], &mut out) {
                boringtun::noise::TunnResult::WriteToNetwork(d) => {
                    // The keepalive that confirms the session.
                    peer.socket.send_to(d, peer.to).unwrap();
                    return peer;
                }
                boringtun::noise::TunnResult::Done => return peer,
                other => panic!("the handshake response: {other:?}"),
            }
        }
    }

    fn send_sealed(&mut self, packet: &[u8]) {
        let mut out = vec![0u8; packet.len() + 64];
        match self.tunn.encapsulate(packet, &mut out) {
            boringtun::noise::TunnResult::WriteToNetwork(d) => {
                assert_eq!(d[0], 4, "not a data message");
                self.socket.send_to(d, self.to).unwrap();
            }
            other => panic!("sealing: {other:?}"),
        }
    }
}

/// wireguard-go on a TUN device in host `i`'s namespace, in the foreground so that it is
/// stopped by its PID; killed, it leaves its control socket, which is removed too.
struct WireguardGo(Child, std::path::PathBuf);

impl Drop for WireguardGo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_file(&self.1);
    }
}

#[test]
fn interop_with_wireguard_go_configured_from_the_leases() {
    let test = "interop_with_wireguard_go_configured_from_the_leases";
    if !can_run(test) || !have_tcpdump(test) || !have_wireguard_tools(test) {
        return;
    }
    let Some(etcd) = etcd_or_skip(test) else {
        return;
    };
    let mut net = Underlay::new("wgo", &["192.0.2.1", "192.0.2.2", "192.0.2.3"], &etcd);
    // flannel's PSK and PersistentKeepaliveInterval: wireguard-go gets the same PSK (a
    // handshake with a different one, or none, fails), and keepalives must flow while
    // nothing else does.
    let psk = run("wg", &["genpsk"]);
    let psk = psk.trim();
    net.set_config(&format!(
        r#"{{"Network":"10.5.0.0/16","SubnetLen":24,"Backend":{{"Type":"wireguard","PSK":"{psk}","PersistentKeepaliveInterval":1}}}}"#
    ));
    for i in [1, 2] {
        start(&mut net, i);
        net.add_container(i);
    }
    // Host 3: wireguard-go, its key from `wg genkey`, its lease written as flanneld's.
    // Its control socket is /var/run/wireguard/DEVICE.sock, one directory for every
    // namespace: the device is named for this process, so that runs side by side
    // (other checkouts' tests) do not take each other's.
    let ns3 = net.hosts[2].ns.clone();
    let dev = format!("wgo{}", std::process::id() % 1_000_000);
    let dev = dev.as_str();
    let wg_go = WireguardGo(
        Command::new("ip")
            .args(["netns", "exec", &ns3, "wireguard-go", "-f", dev])
            .env("WG_PROCESS_FOREGROUND", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        format!("/var/run/wireguard/{dev}.sock").into(),
    );
    wait_or_show(
        "wireguard-go creates its device",
        Duration::from_secs(10),
        || {
            Command::new("ip")
                .args(["-n", &ns3, "link", "show", dev])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        },
        String::new,
    );
    let private = run("wg", &["genkey"]);
    let public = wg_pubkey(&private);
    let key_path = net.dir.path().join("h3.wg-go.key");
    std::fs::write(&key_path, &private).unwrap();
    let psk_path = net.dir.path().join("h3.wg-go.psk");
    std::fs::write(&psk_path, psk).unwrap();
    let s3: ipnet::Ipv4Net = "10.5.99.0/24".parse().unwrap();
    let ip3 = net.hosts[2].ip;
    let value = format!(
        r#"{{"PublicIP":"{ip3}","PublicIPv6":null,"BackendType":"wireguard","BackendData":{{"PublicKey":"{public}","Port":51820}}}}"#
    );
    let out = etcd.etcdctl(&["put", &format!("{PREFIX}/subnets/10.5.99.0-24"), &value]);
    assert!(out.status.success(), "{out:?}");
    net.hosts[2].subnet = Some(s3);
    let wg = |args: &[&str]| {
        let mut all = vec!["netns", "exec", &ns3, "wg"];
        all.extend_from_slice(args);
        run("ip", &all)
    };
    wg(&[
        "set",
        dev,
        "listen-port",
        "51820",
        "private-key",
        key_path.to_str().unwrap(),
    ]);
    // Its peers, from the weft leases in the store: key, endpoint, allowed subnet.
    for i in [1, 2] {
        let lease: serde_json::Value = serde_json::from_str(&lease_value(&net, &etcd, i)).unwrap();
        let key = lease["BackendData"]["PublicKey"]
            .as_str()
            .unwrap()
            .to_string();
        let port = lease["BackendData"]["Port"].as_u64().unwrap();
        let endpoint = format!("{}:{port}", lease["PublicIP"].as_str().unwrap());
        let allowed = net.hosts[i - 1].subnet.unwrap().to_string();
        wg(&[
            "set",
            dev,
            "peer",
            &key,
            "endpoint",
            &endpoint,
            "allowed-ips",
            &allowed,
            "preshared-key",
            psk_path.to_str().unwrap(),
        ]);
    }
    net.ip(
        3,
        &["addr", "add", &format!("{}/32", s3.network()), "dev", dev],
    );
    net.ip(3, &["link", "set", dev, "mtu", "1420", "up"]);
    net.ip(3, &["route", "add", "10.5.0.0/16", "dev", dev]);
    net.add_container(3);
    net.assert_mesh(&[1, 2, 3]);
    let shown = wg(&["show", dev, "latest-handshakes"]);
    assert_eq!(shown.lines().count(), 2, "{shown}");
    assert!(
        shown.lines().all(|l| !l.ends_with("\t0")),
        "a peer never shook hands: {shown}"
    );
    // Idle: weft's nodes still send wireguard-go a keepalive (an empty data message,
    // 32 bytes) every second; wireguard-go, configured without one, sends none.
    let capture = net.capture(3, "ip and udp", 100, Duration::from_millis(4500));
    std::thread::sleep(Duration::from_millis(4500));
    let (frames, log) = capture.finish();
    let datagrams: Vec<Datagram> = frames.iter().filter_map(|f| parse_udp(f)).collect();
    for i in [1, 2] {
        let keepalives = datagrams
            .iter()
            .filter(|d| d.src == net.hosts[i - 1].ip && d.dst == ip3)
            .filter(|d| d.payload.len() == 32 && d.payload[0] == 4)
            .count();
        assert!(
            keepalives >= 3,
            "{keepalives} keepalives from h{i} in 4.5 s idle ({} datagrams)\n{log}",
            datagrams.len()
        );
    }
    drop(wg_go);
}
