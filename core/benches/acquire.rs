//! Acquisition cost against the number of leases already in the store.
//!
//! - `weft/warm`: a node whose lease table is current (kept by its watch) acquires a
//!   subnet: the allocator's decision plus one create in the store model (no lock, no async).
//! - `flannel/list-every-attempt`: flannel's strategy in the same store: list every
//!   lease, decode them all, collect the first 100 free subnets, pick one, create.
//! - `weft/cold-join`: a brand-new node: one listing, decoding every lease into its
//!   table, then the decision and the create. Linear by nature (the listing), paid once
//!   per start, not per attempt.
//!
//! Run: `cargo bench -p weft-core --bench acquire`.

#![allow(clippy::unwrap_used, missing_docs)]

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use ipnet::IpNet;
use rand::{Rng, SeedableRng};
use weft_core::allocator::{AllocEvent, Allocator, AllocatorConfig};
use weft_core::config::BackendType;
use weft_core::lease::{decode_all, LeaseAttrs};
use weft_core::lease_table::LeaseTable;
use weft_core::store::subnets_prefix;
use weft_core::store::{StoreModel, StoreOp};
use weft_core::subnet::SubnetSpace;
use weft_core::Timestamp;

const PREFIX: &str = "/coreos.com/network";
const TTL: Duration = Duration::from_secs(24 * 3600);

fn space() -> SubnetSpace {
    // 10.0.0.0/8 in /24s: 65,535 allocatable subnets.
    SubnetSpace::new(
        "10.0.0.0/8".parse().unwrap(),
        24,
        "10.0.1.0".parse().unwrap(),
        "10.255.255.0".parse().unwrap(),
    )
    .unwrap()
}

/// A store holding `n` leases on random subnets, each with its own public IP.
fn populated(n: usize) -> StoreModel {
    let mut store = StoreModel::new(Timestamp::from_millis(1_700_000_000_000));
    let space = space();
    let sp = subnets_prefix(PREFIX);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(n as u64);
    let mut made = 0;
    while made < n {
        let index = rng.random_range(space.min_index()..=space.max_index());
        let IpNet::V4(subnet) = space.subnet_at(index) else {
            unreachable!()
        };
        let key = format!("{sp}{}-{}", subnet.network(), subnet.prefix_len());
        let ip = Ipv4Addr::from(0xC000_0000u32 + made as u32);
        if store
            .create(
                &key,
                &LeaseAttrs::new(ip, BackendType::Udp).encode(),
                Some(TTL),
            )
            .is_ok()
        {
            made += 1;
        }
    }
    store
}

fn config() -> AllocatorConfig {
    AllocatorConfig::new(space(), Ipv4Addr::new(198, 51, 100, 1), BackendType::Udp)
}

fn create(store: &RefCell<StoreModel>, op: StoreOp) -> (String, weft_core::store::Entry) {
    let StoreOp::Create { key, value, ttl } = op else {
        panic!("expected a create, got {op:?}")
    };
    let entry = store.borrow_mut().create(&key, &value, ttl).unwrap();
    (key, entry)
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("acquire");
    group.sample_size(30);
    let sp = subnets_prefix(PREFIX);
    for n in [100usize, 1_000, 10_000] {
        let store = RefCell::new(populated(n));
        let now = store.borrow().now();
        let mut table = LeaseTable::new(&sp);
        table.replace(&store.borrow().list(&sp));
        let last_key: RefCell<Option<String>> = RefCell::new(None);
        let cleanup = || {
            if let Some(k) = last_key.borrow_mut().take() {
                store.borrow_mut().delete(&k).unwrap();
            }
        };
        let mut seed = 0u64;

        group.bench_with_input(BenchmarkId::new("weft/warm", n), &n, |b, _| {
            b.iter_batched(
                || {
                    cleanup();
                    seed += 1;
                    Allocator::new(config(), &sp, seed)
                },
                |mut alloc| {
                    alloc.on_synced(&table, now);
                    let (key, entry) = create(&store, alloc.poll_op().unwrap());
                    alloc.handle_result(Ok(entry), &table, now);
                    assert!(matches!(
                        alloc.poll_event(),
                        Some(AllocEvent::Acquired { .. })
                    ));
                    *last_key.borrow_mut() = Some(key);
                },
                BatchSize::PerIteration,
            )
        });

        group.bench_with_input(
            BenchmarkId::new("flannel/list-every-attempt", n),
            &n,
            |b, _| {
                let space = space();
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
                b.iter_batched(
                    cleanup,
                    |()| {
                        let listing = store.borrow().list(&sp);
                        let (leases, _) = decode_all(&sp, &listing.entries);
                        let taken: BTreeSet<_> = leases.iter().filter_map(|l| l.key.ipv4).collect();
                        let mut free = Vec::with_capacity(100);
                        let mut index = space.min_index();
                        while free.len() < 100 && index <= space.max_index() {
                            let IpNet::V4(s) = space.subnet_at(index) else {
                                unreachable!()
                            };
                            if !taken.contains(&s) {
                                free.push(s);
                            }
                            index += 1;
                        }
                        let s = free[rng.random_range(0..free.len())];
                        let key = format!("{sp}{}-{}", s.network(), s.prefix_len());
                        let value =
                            LeaseAttrs::new(Ipv4Addr::new(198, 51, 100, 1), BackendType::Udp)
                                .encode();
                        store.borrow_mut().create(&key, &value, Some(TTL)).unwrap();
                        *last_key.borrow_mut() = Some(key);
                    },
                    BatchSize::PerIteration,
                )
            },
        );

        group.bench_with_input(BenchmarkId::new("weft/cold-join", n), &n, |b, _| {
            b.iter_batched(
                || {
                    cleanup();
                    seed += 1;
                    Allocator::new(config(), &sp, seed)
                },
                |mut alloc| {
                    let mut fresh = LeaseTable::new(&sp);
                    fresh.replace(&store.borrow().list(&sp));
                    alloc.on_synced(&fresh, now);
                    let (key, entry) = create(&store, alloc.poll_op().unwrap());
                    alloc.handle_result(Ok(entry), &fresh, now);
                    *last_key.borrow_mut() = Some(key);
                },
                BatchSize::PerIteration,
            )
        });
        cleanup();
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
