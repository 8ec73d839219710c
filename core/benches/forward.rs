//! Forwarding decisions per second on one thread, by the node's published table.
//!
//! - `outbound/N` and `inbound/N`: `route_outbound` / `accept_inbound` over a batch of
//!   packets to (from) random peers of a table with N routes, N = 10 and 10,000 (a /8
//!   network in /24 subnets: the dense index). The cost per decision should not grow
//!   with N.
//! - `outbound-while-publishing/N`: the same, reading the table through an
//!   `arc_swap::Cache` as the udp datapath does, while another thread publishes a new
//!   table (one more route changed) every millisecond, as a control plane under churn
//!   would. No lock is shared between the two threads.
//!
//! Each iteration decides a batch of 1,024 packets; criterion's throughput is in
//! decisions (elements) per second. Run: `cargo bench -p weft-core --bench forward`.

#![allow(clippy::unwrap_used, missing_docs)]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, Cache};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ipnet::{IpNet, Ipv4Net};
use rand::{Rng, SeedableRng};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{IpProtocol, Ipv4Packet, Ipv4Repr};
use weft_core::forward::{ForwardTable, Inbound, Outbound, Peer, ThreadDrops};
use weft_core::subnet::SubnetSpace;

const BATCH: usize = 1024;

fn space() -> SubnetSpace {
    SubnetSpace::new(
        "10.0.0.0/8".parse().unwrap(),
        24,
        "10.0.1.0".parse().unwrap(),
        "10.255.255.0".parse().unwrap(),
    )
    .unwrap()
}

fn subnet(i: u32) -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::from(0x0A00_0000 + ((i + 1) << 8)), 24).unwrap()
}

fn peer_ip(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0xC633_0000 + i))
}

/// A table of `n` routes, our own subnet being 10.255.255.0/24.
fn table(n: u32) -> ForwardTable {
    let mut t = ForwardTable::new(Some(space()), None);
    for i in 0..n {
        t.insert(Peer {
            subnet: IpNet::V4(subnet(i)),
            public_ip: peer_ip(i),
        });
    }
    t.set_own(Some("10.255.255.0/24".parse().unwrap()), None);
    t
}

fn packet(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let repr = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Udp,
        payload_len: 64,
        hop_limit: 64,
    };
    let mut buf = vec![0; repr.buffer_len() + 64];
    repr.emit(
        &mut Ipv4Packet::new_unchecked(&mut buf[..]),
        &ChecksumCapabilities::default(),
    );
    buf
}

/// `BATCH` packets from us to random peers' hosts, and the same from them to us.
fn packets(n: u32) -> (Vec<Outgoing>, Vec<(IpAddr, Vec<u8>)>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(u64::from(n));
    let us = Ipv4Addr::new(10, 255, 255, 2);
    let mut out = Vec::new();
    let mut inb = Vec::new();
    for _ in 0..BATCH {
        let i = rng.random_range(0..n);
        let host = Ipv4Addr::from(u32::from(subnet(i).network()) + 2);
        let p = packet(us, host);
        let header = [p[8], p[9], p[10], p[11]];
        out.push(Outgoing { packet: p, header });
        inb.push((peer_ip(i), packet(host, us)));
    }
    (out, inb)
}

/// A packet to send, and its TTL, protocol and checksum bytes as built: restored before
/// each decision (4 bytes), so that every round decrements the same TTL.
struct Outgoing {
    packet: Vec<u8>,
    header: [u8; 4],
}

impl Outgoing {
    fn fresh(&mut self) -> &mut [u8] {
        self.packet[8..12].copy_from_slice(&self.header);
        &mut self.packet
    }
}

fn outbound(table: &ForwardTable, batch: &mut [Outgoing], drops: &ThreadDrops) -> usize {
    let mut sent = 0;
    for p in batch.iter_mut() {
        if let Outbound::Send { .. } = table.route_outbound(p.fresh(), drops) {
            sent += 1;
        }
    }
    sent
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("forward");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_secs(1));
    for n in [10u32, 10_000] {
        let t = table(n);
        let (mut out, inb) = packets(n);
        let drops = ThreadDrops::default();
        group.bench_with_input(BenchmarkId::new("outbound", n), &n, |b, _| {
            b.iter(|| assert_eq!(outbound(&t, &mut out, &drops), BATCH))
        });
        group.bench_with_input(BenchmarkId::new("inbound", n), &n, |b, _| {
            b.iter(|| {
                let delivered = inb
                    .iter()
                    .filter(|(from, p)| t.accept_inbound(*from, p, &drops) == Inbound::Deliver)
                    .count();
                assert_eq!(delivered, BATCH);
            })
        });

        let shared = Arc::new(ArcSwap::from_pointee(table(n)));
        let stop = Arc::new(AtomicBool::new(false));
        let publisher = {
            let (shared, stop) = (shared.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut current = table(n);
                let mut published = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // One route moves to another peer, as a lease change would.
                    let i = (published % u64::from(n)) as u32;
                    current.insert(Peer {
                        subnet: IpNet::V4(subnet(i)),
                        public_ip: peer_ip(i + (published as u32 & 1)),
                    });
                    shared.store(Arc::new(current.clone()));
                    published += 1;
                    std::thread::sleep(Duration::from_millis(1));
                }
                published
            })
        };
        let mut cache = Cache::new(shared.clone());
        group.bench_with_input(
            BenchmarkId::new("outbound-while-publishing", n),
            &n,
            |b, _| {
                b.iter(|| {
                    let mut sent = 0;
                    for p in out.iter_mut() {
                        // One load per packet, as the datapath's threads do.
                        let table = cache.load();
                        if let Outbound::Send { .. } = table.route_outbound(p.fresh(), &drops) {
                            sent += 1;
                        }
                    }
                    assert_eq!(sent, BATCH);
                })
            },
        );
        stop.store(true, Ordering::Relaxed);
        let published = publisher.join().unwrap();
        eprintln!("forward/outbound-while-publishing/{n}: {published} tables published meanwhile");
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
