//! The whole packet path of a real node: leases chosen by the fuzzer are written to a
//! store model (valid ones of several shapes, leases of our own public IP, leases off
//! the network's geometry, garbage), a `Node` acquires its own lease and learns the rest
//! by listing and watching, more leases come and go (and time passes) while it runs, and
//! then datagrams from chosen senders go through `accept_inbound` and `route_outbound`
//! of the forwarding table the node published.
//!
//! What the table promises, checked against the store's contents (decoded here, not by
//! the node's view of them):
//! - `Deliver` only for a well-formed packet addressed to our subnet whose source lies in
//!   a lease, not ours and not of our public IP, that records the sender's address;
//!   and always `Deliver` for such a packet when exactly one lease holds the source;
//! - `Send { peer }` only to the holder of a lease holding the destination, with the TTL
//!   one lower and the packet still well formed; `Local` only for our own subnet;
//!   `Unreachable` only when no routable lease holds the destination;
//! - only a sent packet is modified; nothing panics.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use arbitrary::Arbitrary;
use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;
use weft_core::lease::{Lease, LeaseAttrs};
use weft_core::node::{Inbound, Node, NodeConfig, OpId, Outbound, ThreadDrops};
use weft_core::store::{subnets_prefix, StoreModel, StoreOp};
use weft_core::{NetworkConfig, Timestamp};

const PREFIX: &str = "/coreos.com/network";

/// The networks a case runs on: dense and sparse IPv4, one dual stack, one with a
/// SubnetMin/SubnetMax inside the network.
const NETWORKS: [&str; 4] = [
    r#"{"Network":"10.5.0.0/16","SubnetLen":24,"Backend":{"Type":"udp"}}"#,
    r#"{"Network":"10.0.0.0/8","SubnetLen":26,"Backend":{"Type":"vxlan"}}"#,
    r#"{"Network":"10.5.0.0/16","SubnetLen":24,"EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetLen":64}"#,
    r#"{"Network":"10.6.0.0/20","SubnetLen":26,"SubnetMin":"10.6.1.0","SubnetMax":"10.6.2.0"}"#,
];

fn v4_pool(i: u8) -> Ipv4Addr {
    match i % 8 {
        7 => Ipv4Addr::new(198, 51, 100, 7),
        n => Ipv4Addr::new(192, 0, 2, n + 1),
    }
}

fn v6_pool(i: u8) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(i % 4) + 1)
}

/// Which subnet a lease key names.
#[derive(Debug, Arbitrary)]
enum Subnet {
    /// The `i`-th subnet of the network (the allocator's geometry).
    Nth(u8),
    /// Any IPv4 subnet at all (off the geometry, overlapping, outside the network).
    Any([u8; 4], u8),
    /// A key that is not a subnet.
    Garbage(String),
}

#[derive(Debug, Arbitrary)]
enum Value {
    Udp,
    Vxlan(u8),
    /// Dual stack: the v6 subnet index and the public IPv6.
    Dual(u8, u8),
    Garbage(Vec<u8>),
}

#[derive(Debug, Arbitrary)]
struct LeaseSpec {
    subnet: Subnet,
    holder: u8,
    value: Value,
    /// TTL in seconds; `None` for a reservation.
    ttl: Option<u16>,
}

#[derive(Debug, Arbitrary)]
enum Change {
    Put(LeaseSpec),
    Delete(Subnet),
    /// Time passes: expiries, renewals, retries.
    Advance(u16),
}

#[derive(Debug, Arbitrary)]
enum Addr {
    /// A host in the subnet of the `k`-th lease in the store (of the packet's family).
    InLease(u8, u32),
    /// A host in our own subnet.
    Own(u32),
    /// Anywhere.
    Any(u128),
}

#[derive(Debug, Arbitrary)]
enum Sender {
    Pool(u8),
    Pool6(u8),
    /// The public IP recorded in the first lease holding the source, as an honest peer.
    HolderOfSource,
}

#[derive(Debug, Arbitrary)]
enum Bytes {
    Built {
        v6: bool,
        src: Addr,
        dst: Addr,
        ttl: u8,
        payload: u8,
        flip: Option<(u8, u8)>,
        cut: Option<u8>,
    },
    Raw(Vec<u8>),
}

#[derive(Debug, Arbitrary)]
struct Input {
    network: u8,
    own: u8,
    seed: u64,
    before: Vec<LeaseSpec>,
    changes: Vec<Change>,
    packets: Vec<(Sender, Bytes)>,
}

struct Case {
    config: NetworkConfig,
    store: StoreModel,
    node: Node,
    watch: Option<(OpId, u64)>,
    now: Timestamp,
    public_ip: Ipv4Addr,
}

impl Case {
    fn subnet_key(&self, s: &Subnet) -> String {
        let prefix = subnets_prefix(PREFIX);
        let v4 = self
            .config
            .ipv4_space()
            .expect("every network here has IPv4");
        match s {
            Subnet::Nth(i) => {
                let n = v4.subnet_at(u128::from(*i) % v4.total_in_network());
                format!("{prefix}{}-{}", n.addr(), n.prefix_len())
            }
            Subnet::Any(a, len) => format!("{prefix}{}-{}", Ipv4Addr::from(*a), len % 33),
            Subnet::Garbage(text) => format!("{prefix}{text}"),
        }
    }

    fn value(&self, spec: &LeaseSpec) -> Vec<u8> {
        let mut attrs = LeaseAttrs::new(v4_pool(spec.holder), weft_core::config::BackendType::Udp);
        match &spec.value {
            Value::Udp => {}
            Value::Vxlan(mac) => {
                attrs.backend_type = Some("vxlan".into());
                let data = format!(r#"{{"VNI":1,"VtepMAC":"ee:dd:0b:59:5b:{mac:02x}"}}"#);
                attrs.backend_data = weft_core::lease::RawJson::new(&data).ok();
            }
            Value::Dual(_, ip6) => attrs.public_ipv6 = Some(v6_pool(*ip6)),
            Value::Garbage(bytes) => return bytes.clone(),
        }
        attrs.encode()
    }

    fn key(&self, spec: &LeaseSpec) -> String {
        let key = self.subnet_key(&spec.subnet);
        match (&spec.value, self.config.ipv6_space()) {
            (Value::Dual(i, _), Some(v6)) => {
                let n = v6.subnet_at(u128::from(*i) % v6.total_in_network());
                format!("{key}&{}-{}", n.addr(), n.prefix_len())
            }
            _ => key,
        }
    }

    fn put(&mut self, spec: &LeaseSpec) {
        let (key, value) = (self.key(spec), self.value(spec));
        let ttl = spec.ttl.map(|s| Duration::from_secs(u64::from(s).max(1)));
        let _ = self.store.delete(&key);
        let _ = self.store.create(&key, &value, ttl);
    }

    /// Performs the node's operations and delivers its watch until nothing moves.
    fn drive(&mut self) {
        let prefix = subnets_prefix(PREFIX);
        for _ in 0..10_000 {
            let mut moved = false;
            while let Some((id, op)) = self.node.poll_store_op() {
                moved = true;
                match op.call(&mut self.store) {
                    Some(result) => self.node.handle_store_result(id, result, self.now),
                    None => {
                        if let StoreOp::Watch { from, .. } = op {
                            self.watch = Some((id, from));
                        }
                    }
                }
            }
            if let Some((id, from)) = self.watch {
                match self.store.events_since(&prefix, from) {
                    Ok(events) if events.is_empty() => {}
                    Ok(events) => {
                        let last = events.last().map_or(from, |e| e.revision());
                        self.watch = Some((id, last + 1));
                        self.node.handle_watch_events(id, &events, self.now);
                        moved = true;
                    }
                    Err(e) => {
                        self.watch = None;
                        self.node.handle_watch_error(id, e, self.now);
                        moved = true;
                    }
                }
            }
            while self.node.poll_event().is_some() {}
            if !moved {
                return;
            }
        }
        panic!("the node and the store never settle");
    }

    fn advance(&mut self, secs: u16) {
        let until = self.now + Duration::from_secs(u64::from(secs));
        // Every timer and expiry on the way fires at its time (bounded: each step moves).
        for _ in 0..1_000 {
            let next = [self.node.poll_timeout(), self.store.next_expiry()]
                .into_iter()
                .flatten()
                .filter(|t| *t <= until)
                .min();
            let Some(next) = next else { break };
            self.now = self.now.max(next);
            self.store.advance_to(self.now);
            self.node.handle_timeout(self.now);
            self.drive();
        }
        self.now = until;
        self.store.advance_to(until);
        self.node.handle_timeout(until);
        self.drive();
    }

    /// Every valid lease in the store, decoded here.
    fn leases(&self) -> Vec<Lease> {
        let prefix = subnets_prefix(PREFIX);
        self.store
            .list(&prefix)
            .entries
            .iter()
            .filter_map(|e| Lease::from_entry(&prefix, e).ok())
            .collect()
    }
}

/// The subnets of a lease with the public address each is reached at.
fn nets_of(lease: &Lease) -> Vec<(IpNet, Option<IpAddr>)> {
    let mut nets: Vec<_> = lease
        .key
        .ipv4
        .map(|v4| (IpNet::V4(v4), Some(IpAddr::V4(lease.attrs.public_ip))))
        .into_iter()
        .collect();
    if let Some(v6) = lease.key.ipv6 {
        nets.push((IpNet::V6(v6), lease.attrs.public_ipv6.map(IpAddr::V6)));
    }
    nets
}

fn host_in(net: IpNet, host: u32) -> IpAddr {
    match net {
        IpNet::V4(n) => {
            let span = 1u64 << (32 - u32::from(n.prefix_len()));
            let at = u64::from(u32::from(n.network())) + u64::from(host) % span;
            IpAddr::V4(Ipv4Addr::from(at as u32))
        }
        IpNet::V6(n) => {
            let span = 1u128
                .checked_shl(128 - u32::from(n.prefix_len()))
                .unwrap_or(0);
            let host = u128::from(host);
            let off = if span == 0 { host } else { host % span };
            IpAddr::V6(Ipv6Addr::from(u128::from(n.network()).wrapping_add(off)))
        }
    }
}

fn sum(data: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for pair in data.chunks(2) {
        s += u32::from(pair[0]) << 8 | u32::from(*pair.get(1).unwrap_or(&0));
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// An IPv4 or IPv6 packet (UDP payload of `payload` bytes), by RFC 791 and 8200.
fn packet(src: IpAddr, dst: IpAddr, ttl: u8, payload: usize) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let total = 20 + payload;
            let mut b = vec![0u8; total];
            b[0] = 0x45;
            b[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            b[8] = ttl;
            b[9] = 17;
            b[12..16].copy_from_slice(&s.octets());
            b[16..20].copy_from_slice(&d.octets());
            let c = !sum(&b[..20]);
            b[10..12].copy_from_slice(&c.to_be_bytes());
            b
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut b = vec![0u8; 40 + payload];
            b[0] = 0x60;
            b[4..6].copy_from_slice(&(payload as u16).to_be_bytes());
            b[6] = 17;
            b[7] = ttl;
            b[8..24].copy_from_slice(&s.octets());
            b[24..40].copy_from_slice(&d.octets());
            b
        }
        _ => Vec::new(),
    }
}

/// (src, dst, ttl) of a well-formed packet, read by hand.
fn header(b: &[u8]) -> Option<(IpAddr, IpAddr, u8)> {
    match b.first()? >> 4 {
        4 => {
            let ihl = usize::from(b[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([*b.get(2)?, *b.get(3)?]));
            if b.len() < 20
                || ihl < 20
                || total < ihl
                || b.len() < total
                || sum(&b[..ihl]) != 0xffff
            {
                return None;
            }
            let a = |at: usize| IpAddr::V4(Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3]));
            Some((a(12), a(16), b[8]))
        }
        6 => {
            if b.len() < 40 || b.len() < 40 + usize::from(u16::from_be_bytes([b[4], b[5]])) {
                return None;
            }
            let a = |at: usize| {
                let o: [u8; 16] = b[at..at + 16].try_into().expect("16 bytes");
                IpAddr::V6(Ipv6Addr::from(o))
            };
            Some((a(8), a(24), b[7]))
        }
        _ => None,
    }
}

fuzz_target!(|input: Input| {
    let config = NetworkConfig::parse(NETWORKS[usize::from(input.network) % NETWORKS.len()])
        .expect("the fixed networks are valid");
    let public_ip = v4_pool(input.own % 4);
    let mut node_config =
        NodeConfig::for_network(PREFIX, &config, public_ip, Some(v6_pool(input.own % 4)))
            .expect("a node config");
    node_config.alloc.lease_ttl = Duration::from_secs(600);
    node_config.alloc.renew_margin = Duration::from_secs(60);
    let now = Timestamp::from_millis(1_700_000_000_000);
    let mut case = Case {
        store: StoreModel::new(now),
        node: Node::new(node_config, input.seed, now),
        config,
        watch: None,
        now,
        public_ip,
    };
    for spec in input.before.iter().take(64) {
        case.put(spec);
    }
    case.drive();
    for change in input.changes.iter().take(32) {
        match change {
            Change::Put(spec) => case.put(spec),
            Change::Delete(s) => {
                let key = case.subnet_key(s);
                let _ = case.store.delete(&key);
            }
            Change::Advance(secs) => case.advance(*secs),
        }
        case.drive();
    }

    let table = case.node.forward_table();
    let own = case.node.lease().map(|l| l.key);
    assert_eq!(
        table.own(),
        (
            own.and_then(|k| k.ipv4.map(IpNet::V4)),
            own.and_then(|k| k.ipv6.map(IpNet::V6))
        ),
        "the table's own subnets are the node's lease"
    );
    let is_own = |a: IpAddr| {
        own.is_some_and(|k| match a {
            IpAddr::V4(a) => k.ipv4.is_some_and(|n| n.contains(&a)),
            IpAddr::V6(a) => k.ipv6.is_some_and(|n| n.contains(&a)),
        })
    };
    let leases = case.leases();
    let v4_net = case.config.ipv4_space().map(|s| s.network());
    let v6_net = case.config.ipv6_space().map(|s| s.network());
    let in_network = |n: &IpNet| match n {
        IpNet::V4(_) => v4_net.is_some_and(|net| net.contains(n)),
        IpNet::V6(_) => v6_net.is_some_and(|net| net.contains(n)),
    };
    // Leases the node may route: not its own, not recording its own public IP; each
    // subnet with its peer's address and whether the whole lease lies in the networks
    // (a lease partly outside them is skipped, and must then be neither routed nor
    // expected to be).
    let peers: Vec<(IpNet, IpAddr, bool)> = leases
        .iter()
        .filter(|l| Some(l.key) != own && l.attrs.public_ip != case.public_ip)
        .flat_map(|l| {
            let nets = nets_of(l);
            let inside = nets.iter().all(|(n, _)| in_network(n));
            nets.into_iter()
                .filter_map(move |(n, ip)| Some((n, ip?, inside)))
        })
        .collect();
    let all_nets: Vec<IpNet> = leases.iter().flat_map(nets_of).map(|(n, _)| n).collect();

    let drops = ThreadDrops::default();
    for (sender, bytes) in input.packets.iter().take(16) {
        let pkt = match bytes {
            Bytes::Raw(raw) => raw.clone(),
            Bytes::Built {
                v6,
                src,
                dst,
                ttl,
                payload,
                flip,
                cut,
            } => {
                let of_family: Vec<IpNet> = all_nets
                    .iter()
                    .copied()
                    .filter(|n| matches!(n, IpNet::V6(_)) == *v6)
                    .collect();
                let resolve = |a: &Addr| -> IpAddr {
                    let fallback = if *v6 {
                        IpAddr::V6(Ipv6Addr::new(0xfc00, 0, 0, 1, 0, 0, 0, 1))
                    } else {
                        IpAddr::V4(Ipv4Addr::new(10, 5, 1, 1))
                    };
                    let own_net = own.and_then(|k| {
                        if *v6 {
                            k.ipv6.map(IpNet::V6)
                        } else {
                            k.ipv4.map(IpNet::V4)
                        }
                    });
                    match a {
                        Addr::InLease(k, host) => of_family
                            .get(usize::from(*k) % of_family.len().max(1))
                            .map_or(fallback, |n| host_in(*n, *host)),
                        Addr::Own(host) => own_net.map_or(fallback, |n| host_in(n, *host)),
                        Addr::Any(x) if *v6 => IpAddr::V6(Ipv6Addr::from(*x)),
                        Addr::Any(x) => IpAddr::V4(Ipv4Addr::from(*x as u32)),
                    }
                };
                let mut b = packet(resolve(src), resolve(dst), *ttl, usize::from(*payload % 64));
                if let Some((at, mask)) = flip {
                    if let Some(x) = b.get_mut(usize::from(*at)) {
                        *x ^= mask;
                    }
                }
                if let Some(len) = cut {
                    b.truncate(usize::from(*len));
                }
                b
            }
        };
        let parsed = header(&pkt);
        let from = match sender {
            Sender::Pool(i) => IpAddr::V4(v4_pool(*i)),
            Sender::Pool6(i) => IpAddr::V6(v6_pool(*i)),
            Sender::HolderOfSource => parsed
                .and_then(|(src, _, _)| peers.iter().find(|(n, _, _)| n.contains(&src)))
                .map_or(IpAddr::V4(v4_pool(7)), |(_, ip, _)| *ip),
        };

        let verdict = table.accept_inbound(from, &pkt, &drops);
        if verdict == Inbound::Deliver {
            let (src, dst, _) = parsed
                .unwrap_or_else(|| panic!("only a well-formed packet is delivered: {pkt:02x?}"));
            assert!(is_own(dst), "delivered to {dst}, not our subnet {own:?}");
            assert!(
                peers
                    .iter()
                    .any(|(n, ip, _)| n.contains(&src) && *ip == from),
                "delivered from {from} with source {src}, which no lease of {from} holds"
            );
        }
        if let Some((src, dst, _)) = parsed {
            let holders: Vec<_> = all_nets.iter().filter(|n| n.contains(&src)).collect();
            let honest = holders.len() == 1
                && peers
                    .iter()
                    .any(|(n, ip, inside)| n.contains(&src) && *ip == from && *inside);
            if honest && is_own(dst) {
                assert_eq!(verdict, Inbound::Deliver, "{from} sent {src} -> {dst}");
            }
        }

        let mut out = pkt.clone();
        match table.route_outbound(&mut out, &drops) {
            Outbound::Send { peer } => {
                let (_, dst, ttl) = parsed
                    .unwrap_or_else(|| panic!("only a well-formed packet is sent: {pkt:02x?}"));
                assert!(!is_own(dst));
                assert!(
                    peers
                        .iter()
                        .any(|(n, ip, _)| n.contains(&dst) && *ip == peer),
                    "{dst} sent to {peer}, which holds no lease of it"
                );
                let (_, _, after) = header(&out).expect("a sent packet is still well formed");
                assert_eq!(after, ttl - 1);
            }
            Outbound::Local => {
                let (_, dst, _) = parsed
                    .unwrap_or_else(|| panic!("only a well-formed packet is local: {pkt:02x?}"));
                assert!(is_own(dst));
                assert_eq!(out, pkt);
            }
            Outbound::Unreachable => {
                let (_, dst, _) = parsed.unwrap_or_else(|| {
                    panic!("only a well-formed packet is unroutable: {pkt:02x?}")
                });
                assert!(
                    !peers
                        .iter()
                        .any(|(n, _, inside)| n.contains(&dst) && *inside),
                    "{dst} is unreachable, yet a lease routes it: {peers:?}; node's leases {:?}, skipped {:?}, routes {:?}, lookup {:?}, table {:?}",
                    case.node.leases().leases().map(|l| (l.key, l.attrs.public_ip)).collect::<Vec<_>>(),
                    case.node.leases().skipped().collect::<Vec<_>>(), case.node.routes(), table.lookup(dst), table
                );
                assert_eq!(out, pkt);
            }
            Outbound::Drop(_) => assert_eq!(out, pkt),
        }
    }
});
