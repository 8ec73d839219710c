//! Allocation at scale against one real etcd: N nodes (default 1,000), each with its own
//! public IP, join at once; then flannel's strategy does the same on a fresh etcd, as
//! the baseline.
//!
//! - weft: every node is a real `weft_core::node::Node` driven by
//!   `weft_stores::testing::NodeRunner` (as the daemon drives it) against its own
//!   `EtcdStore`: one listing, with the lease grant its create needs sent beside it
//!   (the node's listing says it is acquiring: `Store::prepare_lease`), then the subnet
//!   its public IP points at or, when that one is taken, a random free subnet from its
//!   lease table, created with a txn; a lost race retries with the same lease. Then its
//!   watch, from the listing's revision.
//! - flannel: what flanneld's etcd v3 subnet manager does per attempt: list every
//!   lease, collect the first 100 free subnets from SubnetMin, pick one at random, grant
//!   a lease, txn on version == 0; on a lost race, start over (flannel gives up after
//!   10 attempts; here every node goes on until it succeeds, and the report says how
//!   many would have given up). flannel leaks the lease of a lost race; so does this.
//!   Once it holds its lease a node watches the leases, as flanneld does.
//!
//! `--connections shared` (the default) gives every simulated node its own store and
//! counters on one gRPC connection, as tasks of one process; `per-node` opens one
//! connection per node, as separate hosts would, which on one small machine mostly
//! measures the client's and etcd's per-connection overhead.
//!
//! Only the nodes' own requests are counted. The report gives the wall time until all
//! hold a lease, p50/p99 acquisition latency from the common start, round trips and
//! txn conflicts per node, and checks that no subnet and no public IP is held twice.
//!
//! Run: `cargo run --release -p weft-stores --example etcd_scale -- [--nodes 1000]
//! [--network 10.0.0.0/12] [--connections shared|per-node] [--data-root DIR]
//! [--prepare on|off] [--ips consecutive|scattered]`
//!
//! The nodes' public IPs are consecutive by default, as on one underlay network; weft's
//! first choice of subnet is the one its IP points at, so they rarely race.
//! `--ips scattered` spreads them so that those first choices collide as at random.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, WatchOptions};
use ipnet::{IpNet, Ipv4Net};
use rand::Rng;
use weft_core::allocator::{AllocEvent, AllocatorConfig};
use weft_core::config::BackendType;
use weft_core::lease::{decode_all, LeaseAttrs};
use weft_core::node::{NodeConfig, NodeEvent};
use weft_core::store::{subnets_prefix, Store, StoreError};
use weft_core::subnet::SubnetSpace;
use weft_core::NetworkConfig;
use weft_stores::testing::{Etcd, EtcdConfig, NodeRunner};
use weft_stores::{EtcdOptions, EtcdStats, EtcdStore, RtKind};

const PREFIX: &str = "/coreos.com/network";
const TTL: Duration = Duration::from_secs(24 * 3600);
const PATIENCE: Duration = Duration::from_secs(120);

struct Args {
    /// Whether the nodes' hints to grant their lease beside the listing reach the store
    /// (`--prepare off`: as before `Store::prepare_lease`, for comparison).
    prepare: bool,
    /// `--ips scattered`, see [`SCATTERED`].
    scattered: bool,
    nodes: usize,
    network: String,
    shared: bool,
    data_root: Option<std::path::PathBuf>,
}

fn args() -> Args {
    let mut args = Args {
        prepare: true,
        scattered: false,
        nodes: 1000,
        network: "10.0.0.0/12".to_string(),
        shared: true,
        data_root: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--nodes" => args.nodes = value.parse().expect("--nodes N"),
            "--network" => args.network = value,
            "--connections" => args.shared = value == "shared",
            "--data-root" => args.data_root = Some(value.into()),
            "--prepare" => args.prepare = value != "off",
            "--ips" => {
                args.scattered = match value.as_str() {
                    "consecutive" => false,
                    "scattered" => true,
                    _ => panic!("--ips consecutive|scattered"),
                }
            }
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

/// One node's outcome.
struct Joined {
    subnet: Ipv4Net,
    public_ip: Ipv4Addr,
    latency: Duration,
    round_trips: u64,
    conflicts: u64,
    attempts: u64,
}

struct Report {
    name: &'static str,
    wall: Duration,
    nodes: Vec<Joined>,
    /// CPU time etcd and this process spent from the start until all held a lease.
    etcd_cpu: Duration,
    own_cpu: Duration,
}

/// User + system CPU time of a process so far, from /proc (Linux).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = after
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name and state.
    let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

impl Report {
    fn percentile(&self, p: f64) -> Duration {
        let mut l: Vec<Duration> = self.nodes.iter().map(|n| n.latency).collect();
        l.sort();
        let i = ((l.len() as f64 - 1.0) * p).round() as usize;
        l[i]
    }

    fn per_node(&self, f: impl Fn(&Joined) -> u64) -> f64 {
        self.nodes.iter().map(f).sum::<u64>() as f64 / self.nodes.len() as f64
    }

    fn print(&self) {
        let subnets: BTreeSet<_> = self.nodes.iter().map(|n| n.subnet).collect();
        let ips: BTreeSet<_> = self.nodes.iter().map(|n| n.public_ip).collect();
        println!(
            "{:<8} nodes {:>5}  wall {:>7.2?}  p50 {:>7.2?}  p99 {:>7.2?}  round trips/node {:>6.2} (max {})  conflicts/node {:>6.2} (max {})  duplicate subnets {}  duplicate IPs {}  cpu etcd {:.1?} nodes {:.1?}",
            self.name,
            self.nodes.len(),
            self.wall,
            self.percentile(0.5),
            self.percentile(0.99),
            self.per_node(|n| n.round_trips),
            self.nodes.iter().map(|n| n.round_trips).max().unwrap_or(0),
            self.per_node(|n| n.conflicts),
            self.nodes.iter().map(|n| n.conflicts).max().unwrap_or(0),
            self.nodes.len() - subnets.len(),
            self.nodes.len() - ips.len(),
            self.etcd_cpu,
            self.own_cpu,
        );
    }
}

/// `--ips scattered`: the nodes' addresses drawn at random (seeded, distinct) from
/// 198.18.0.0/15 instead of consecutive, so that the subnets they point at (weft's first
/// choice, see `AcquiredHow::FromPublicIp`) collide as a random draw's would.
static SCATTERED: std::sync::OnceLock<Vec<u32>> = std::sync::OnceLock::new();

fn scatter(nodes: usize) {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let mut offsets: Vec<u32> = (1..0x2_0000).collect();
    offsets.shuffle(&mut rand::rngs::StdRng::seed_from_u64(7));
    offsets.truncate(nodes);
    let _ = SCATTERED.set(offsets);
}

fn public_ip(i: usize) -> Ipv4Addr {
    // 198.18.0.0/15, the benchmarking range: one address per node.
    let offset = SCATTERED.get().map_or(i as u32 + 1, |s| s[i]);
    Ipv4Addr::from(0xC612_0000u32 + offset)
}

/// A node's store, noting what its counters said when the node's create succeeded:
/// every node has a store (and counters) of its own.
#[derive(Debug)]
struct Phases {
    store: EtcdStore,
    prepare: bool,
    at_lease: std::sync::Mutex<Option<EtcdStats>>,
}

#[async_trait::async_trait]
impl Store for Phases {
    async fn get(&self, key: &str) -> Result<Option<weft_core::store::Entry>, StoreError> {
        self.store.get(key).await
    }
    async fn list(&self, prefix: &str) -> Result<weft_core::store::Listing, StoreError> {
        self.store.list(prefix).await
    }
    fn prepare_lease(&self, ttl: Duration) {
        if self.prepare {
            self.store.prepare_lease(ttl);
        }
    }
    async fn create(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<weft_core::store::Entry, StoreError> {
        let r = self.store.create(key, value, ttl).await;
        if r.is_ok() {
            self.at_lease
                .lock()
                .unwrap()
                .get_or_insert(self.store.stats());
        }
        r
    }
    async fn renew(
        &self,
        key: &str,
        create_revision: weft_core::store::Revision,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<weft_core::store::Entry, StoreError> {
        self.store.renew(key, create_revision, value, ttl).await
    }
    async fn put(&self, key: &str, value: &[u8]) -> Result<weft_core::store::Entry, StoreError> {
        self.store.put(key, value).await
    }
    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        self.store.delete(key).await
    }
    async fn watch(
        &self,
        prefix: &str,
        from: weft_core::store::Revision,
    ) -> Result<Box<dyn weft_core::store::Watch>, StoreError> {
        self.store.watch(prefix, from).await
    }
}

/// Round trips per node by kind of request, over `stats`; `sequential` the ones the
/// nodes waited on in turn until they held their lease: every request before the
/// create succeeded, less the grants prepared beside a listing (they run while the
/// listing does) and the revokes (sent in the background).
fn breakdown(name: &str, stats: &[EtcdStats], at_lease: &[EtcdStats]) -> String {
    use std::fmt::Write as _;
    let n = stats.len().max(1) as f64;
    let kind = |s: &EtcdStats, k: RtKind| s.by_kind[k as usize];
    let sequential: u64 = at_lease
        .iter()
        .map(|s| s.round_trips - s.prepared_grants - kind(s, RtKind::Revoke))
        .sum();
    let before: u64 = at_lease.iter().map(|s| s.round_trips).sum();
    let mut out = format!(
        "{name:<8} round trips per node: sequential until leased {:.2} (requests until leased {:.2}); all requests by kind:",
        sequential as f64 / n,
        before as f64 / n
    );
    for k in RtKind::ALL {
        let total: u64 = stats.iter().map(|s| kind(s, k)).sum();
        if total > 0 {
            let _ = write!(out, " {} {:.2}", k.name(), total as f64 / n);
        }
    }
    let prepared: u64 = stats.iter().map(|s| s.prepared_grants).sum();
    let _ = write!(
        out,
        " (of the grants, prepared beside a listing {:.2})",
        prepared as f64 / n
    );
    out
}

fn start_etcd(args: &Args) -> Etcd {
    Etcd::start_with(EtcdConfig {
        data_root: args.data_root.clone(),
        ..EtcdConfig::default()
    })
    .unwrap_or_else(|e| panic!("cannot start etcd: {e}"))
}

async fn weft(args: &Args, space: SubnetSpace) -> Report {
    let etcd = start_etcd(args);
    let first = EtcdStore::connect(&etcd.endpoints(), &EtcdOptions::default())
        .await
        .expect("connect");
    let mut stores = Vec::with_capacity(args.nodes);
    for _ in 0..args.nodes {
        let store = if args.shared {
            first.sharing_connection()
        } else {
            EtcdStore::connect(&etcd.endpoints(), &EtcdOptions::default())
                .await
                .expect("connect")
        };
        store.set_prepare_ahead(args.prepare);
        stores.push(store);
    }
    let etcd_pid = etcd.pid(0).expect("etcd runs");
    let (etcd_cpu0, own_cpu0) = (cpu_time(etcd_pid), cpu_time(std::process::id()));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, store) in stores.into_iter().enumerate() {
        let alloc = AllocatorConfig::new(space, public_ip(i), BackendType::Alloc);
        let config = NodeConfig {
            prefix: PREFIX.to_string(),
            alloc,
        };
        let prepare = args.prepare;
        tasks.spawn(async move {
            let phases = Arc::new(Phases {
                store: store.clone(),
                prepare,
                at_lease: Default::default(),
            });
            let shared: Arc<dyn Store> = phases.clone();
            let mut node = NodeRunner::spawn(shared, config, i as u64 + 1);
            let acquired = node
                .wait_for(PATIENCE, |e| {
                    matches!(e, NodeEvent::Lease(AllocEvent::Acquired { .. }))
                })
                .await
                .expect("a lease within the patience");
            let latency = start.elapsed();
            let NodeEvent::Lease(AllocEvent::Acquired { lease, .. }) = acquired else {
                unreachable!()
            };
            // The node runs on, following the watch; its events are read and dropped,
            // as a daemon consumes them (left unread they would pile up in memory).
            let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
            let drain = tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = &mut stopped => break,
                        e = node.next_event(Duration::from_secs(3600)) => if e.is_none() { break },
                    }
                }
                node
            });
            (
                i,
                lease.key.ipv4.expect("an IPv4 lease"),
                latency,
                phases,
                (stop, drain),
            )
        });
    }
    let mut joined = Vec::new();
    let mut running = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (i, subnet, latency, phases, node) = done.expect("node task");
        joined.push((i, subnet, latency, phases));
        running.push(node);
    }
    let wall = start.elapsed();
    let etcd_cpu = cpu_time(etcd_pid).saturating_sub(etcd_cpu0);
    let own_cpu = cpu_time(std::process::id()).saturating_sub(own_cpu0);
    // Let background revokes of lost races land before counting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut all_stats = Vec::new();
    let mut at_lease = Vec::new();
    let nodes: Vec<Joined> = joined
        .into_iter()
        .map(|(i, subnet, latency, store)| {
            let stats = store.store.stats();
            all_stats.push(stats);
            at_lease.push(store.at_lease.lock().unwrap().unwrap_or(stats));
            Joined {
                subnet,
                public_ip: public_ip(i),
                latency,
                round_trips: stats.round_trips,
                conflicts: stats.txn_conflicts,
                attempts: stats.txn_conflicts + 1,
            }
        })
        .collect();
    for (stop, drain) in running {
        let _ = stop.send(());
        drain.await.expect("node task").stop().await;
    }
    check_store(&etcd, args.nodes).await;
    println!("{}", breakdown("weft", &all_stats, &at_lease));
    // The last to be leased, and what they spent.
    let mut order: Vec<usize> = (0..nodes.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(nodes[i].latency));
    for &i in order.iter().take(3) {
        let s = &all_stats[i];
        let kinds: Vec<String> = RtKind::ALL
            .iter()
            .filter(|k| s.by_kind[**k as usize] > 0)
            .map(|k| format!("{} {}", k.name(), s.by_kind[*k as usize]))
            .collect();
        println!(
            "weft     slowest: leased after {:.2?}: {} conflicts, requests {}",
            nodes[i].latency,
            s.txn_conflicts,
            kinds.join(" ")
        );
    }
    Report {
        name: "weft",
        wall,
        nodes,
        etcd_cpu,
        own_cpu,
    }
}

/// What etcd holds: exactly one lease per node, no subnet twice, no public IP twice.
async fn check_store(etcd: &Etcd, nodes: usize) {
    let store = EtcdStore::connect(&etcd.endpoints(), &EtcdOptions::default())
        .await
        .expect("connect");
    let sp = subnets_prefix(PREFIX);
    let listing = store.list(&sp).await.expect("list");
    let (leases, skipped) = decode_all(&sp, &listing.entries);
    let ips: BTreeSet<_> = leases.iter().map(|l| l.attrs.public_ip).collect();
    assert!(skipped.is_empty());
    assert_eq!(leases.len(), nodes, "one lease per node in etcd");
    assert_eq!(ips.len(), nodes, "no public IP holds two leases");
}

/// flannel's first-100-free pick.
fn flannel_pick(space: &SubnetSpace, taken: &BTreeSet<Ipv4Net>) -> Option<Ipv4Net> {
    let mut free = Vec::with_capacity(100);
    let mut index = space.min_index();
    while free.len() < 100 && index <= space.max_index() {
        if let IpNet::V4(s) = space.subnet_at(index) {
            if !taken.contains(&s) {
                free.push(s);
            }
        }
        index += 1;
    }
    (!free.is_empty()).then(|| free[rand::rng().random_range(0..free.len())])
}

async fn flannel_node(
    client: &mut Client,
    space: SubnetSpace,
    ip: Ipv4Addr,
) -> (Ipv4Net, u64, u64, i64) {
    let sp = subnets_prefix(PREFIX);
    let value = LeaseAttrs::new(ip, BackendType::Alloc).encode();
    let (mut round_trips, mut conflicts) = (0, 0);
    loop {
        round_trips += 1;
        let resp = client
            .get(sp.clone(), Some(GetOptions::new().with_prefix()))
            .await
            .expect("list");
        let entries: Vec<_> = resp
            .kvs()
            .iter()
            .map(|kv| weft_core::store::Entry {
                key: String::from_utf8_lossy(kv.key()).into_owned(),
                value: kv.value().to_vec(),
                create_revision: 0,
                mod_revision: 0,
                expires_at: None,
            })
            .collect();
        let (leases, _) = decode_all(&sp, &entries);
        let taken: BTreeSet<_> = leases.iter().filter_map(|l| l.key.ipv4).collect();
        let subnet = flannel_pick(&space, &taken).expect("out of subnets");
        let key = format!("{sp}{}-{}", subnet.network(), subnet.prefix_len());
        round_trips += 1;
        let lease = client
            .lease_grant(TTL.as_secs() as i64, None)
            .await
            .expect("grant");
        round_trips += 1;
        let txn = Txn::new()
            .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key,
                value.clone(),
                Some(PutOptions::new().with_lease(lease.id())),
            )]);
        let resp = client.txn(txn).await.expect("txn");
        if resp.succeeded() {
            let revision = resp.header().map_or(0, |h| h.revision());
            return (subnet, round_trips, conflicts, revision);
        }
        conflicts += 1;
    }
}

async fn flannel(args: &Args, space: SubnetSpace) -> Report {
    let etcd = start_etcd(args);
    let urls: Vec<String> = etcd
        .endpoints()
        .iter()
        .map(|e| format!("http://{e}"))
        .collect();
    let first = Client::connect(&urls, None).await.expect("connect");
    let mut clients = Vec::with_capacity(args.nodes);
    for _ in 0..args.nodes {
        clients.push(if args.shared {
            first.clone()
        } else {
            Client::connect(&urls, None).await.expect("connect")
        });
    }
    let sp = subnets_prefix(PREFIX);
    let etcd_pid = etcd.pid(0).expect("etcd runs");
    let (etcd_cpu0, own_cpu0) = (cpu_time(etcd_pid), cpu_time(std::process::id()));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let (watch_tx, mut watch_rx) = tokio::sync::mpsc::unbounded_channel();
    for (i, mut client) in clients.into_iter().enumerate() {
        let (watch_tx, sp) = (watch_tx.clone(), sp.clone());
        tasks.spawn(async move {
            let (subnet, round_trips, conflicts, revision) =
                flannel_node(&mut client, space, public_ip(i)).await;
            // Then it watches the leases, as flanneld does, until the run ends.
            let opts = WatchOptions::new()
                .with_prefix()
                .with_start_revision(revision + 1);
            let mut stream = client.watch(sp.clone(), Some(opts)).await.expect("watch");
            let _ = watch_tx.send(tokio::spawn(async move {
                // Each event decoded as flanneld decodes it (the subnet key, the lease's
                // JSON): on this one machine the nodes share its cores, and a baseline
                // that skipped the work every real node does would look faster for it.
                let mut decoded = 0u64;
                while let Ok(Some(resp)) = stream.message().await {
                    for event in resp.events() {
                        let Some(kv) = event.kv() else { continue };
                        let key = String::from_utf8_lossy(kv.key());
                        let subnet = key.strip_prefix(sp.as_str()).unwrap_or(&key);
                        let parsed = subnet.parse::<weft_core::lease::LeaseKey>().is_ok()
                            && LeaseAttrs::decode(&key, kv.value()).is_ok();
                        decoded += u64::from(parsed);
                    }
                }
                std::hint::black_box(decoded);
            }));
            Joined {
                subnet,
                public_ip: public_ip(i),
                latency: start.elapsed(),
                round_trips: round_trips + 1,
                conflicts,
                attempts: conflicts + 1,
            }
        });
    }
    drop(watch_tx);
    let mut nodes = Vec::new();
    while let Some(done) = tasks.join_next().await {
        nodes.push(done.expect("flannel node"));
    }
    let wall = start.elapsed();
    while let Some(watcher) = watch_rx.recv().await {
        watcher.abort();
    }
    let etcd_cpu = cpu_time(etcd_pid).saturating_sub(etcd_cpu0);
    let own_cpu = cpu_time(std::process::id()).saturating_sub(own_cpu0);
    check_store(&etcd, args.nodes).await;
    Report {
        name: "flannel",
        wall,
        nodes,
        etcd_cpu,
        own_cpu,
    }
}

fn main() {
    let args = args();
    if args.scattered {
        scatter(args.nodes);
    }
    let config = NetworkConfig::parse(&format!(
        r#"{{"Network":"{}","SubnetLen":24,"Backend":{{"Type":"alloc"}}}}"#,
        args.network
    ))
    .expect("network config");
    let space = config.ipv4_space().expect("IPv4 space");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "{} nodes joining at once; network {} ({} subnets /24); one etcd; {}",
        args.nodes,
        args.network,
        space.len(),
        if args.shared {
            "one gRPC connection shared by the nodes"
        } else {
            "one connection per node"
        }
    );
    let weft = runtime.block_on(weft(&args, space));
    weft.print();
    let flannel = runtime.block_on(flannel(&args, space));
    flannel.print();
    let over_10 = flannel.nodes.iter().filter(|n| n.attempts > 10).count();
    println!(
        "flannel: {over_10} nodes needed more than flannel's 10 attempts (flanneld would have failed them)"
    );
    println!(
        "flannel/weft: wall {:.2}x, p99 {:.2}x, round trips per node {:.2}x, conflicts per node {:.2} vs {:.2}",
        flannel.wall.as_secs_f64() / weft.wall.as_secs_f64(),
        flannel.percentile(0.99).as_secs_f64() / weft.percentile(0.99).as_secs_f64(),
        flannel.per_node(|n| n.round_trips) / weft.per_node(|n| n.round_trips),
        flannel.per_node(|n| n.conflicts),
        weft.per_node(|n| n.conflicts),
    );
}
