//! `weft daemon`: the shell around `weft_core::node::Node` on a real host.
//!
//! It reads the network config (from the store, or a file), picks the external
//! interface, builds the node, performs the node's store operations on tokio tasks,
//! writes `subnet.env` whenever the lease changes, runs the backend's datapath (`udp`:
//! a TUN device and a UDP socket; `alloc`: nothing), and sleeps until the node's next
//! timeout. `weft lab` runs many of these nodes in one process, one per namespace.

mod driver;
mod notify;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use weft_core::config::{BackendType, NetworkConfig};
use weft_core::node::{Node, NodeConfig};
use weft_core::store::{config_key, Store};
use weft_datapath::backend::BackendSetup;
use weft_datapath::iface::IfaceSelector;
use weft_datapath::netlink::Netlink;
use weft_stores::clock::wall_now;
use weft_stores::{NodeDriver, OpenError};

use crate::etcd_args::EtcdArgs;
use crate::subnet_file;
use driver::{Driver, SubnetFileSettings};

/// Arguments of `weft daemon` (flannel's flag names where flannel has one).
#[derive(Debug, clap::Args)]
pub struct DaemonArgs {
    /// Where the leases live: memory:, sled:PATH (embedded, one process per directory),
    /// etcd://HOST:PORT[,HOST:PORT...] (a cluster; several members fail over).
    #[arg(long, env = "WEFT_STORE", default_value = "sled:/var/lib/weft")]
    pub store: String,
    /// The key prefix in the store (flannel's default).
    #[arg(long, default_value = weft_core::store::DEFAULT_PREFIX)]
    pub etcd_prefix: String,
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// The interface (name or IP address) to carry the overlay over; repeat to give
    /// alternatives, tried in order. Default: the interface of the default route.
    #[arg(long)]
    pub iface: Vec<String>,
    /// A regex matched against interface names and addresses, when no --iface matched.
    #[arg(long)]
    pub iface_regex: Vec<String>,
    /// This node's public IPv4 address, recorded in its lease. Default: the external
    /// interface's address.
    #[arg(long)]
    pub public_ip: Option<Ipv4Addr>,
    /// This node's public IPv6 address, for dual-stack networks.
    #[arg(long)]
    pub public_ipv6: Option<Ipv6Addr>,
    /// Where to write subnet.env (and read the previous run's subnet from).
    #[arg(long, default_value = "/run/flannel/subnet.env")]
    pub subnet_file: PathBuf,
    /// Read the network config from this file instead of the store's config key.
    #[arg(long)]
    pub net_config_path: Option<PathBuf>,
    /// Renew the lease this many minutes before it expires.
    #[arg(long, default_value_t = 60)]
    pub subnet_lease_renew_margin: u64,
    /// The TTL of the lease, in seconds (flannel: 24 h).
    #[arg(long, default_value_t = 24 * 3600)]
    pub subnet_lease_ttl: u64,
    /// Record FLANNEL_IPMASQ=true in subnet.env.
    #[arg(long)]
    pub ip_masq: bool,
    /// The TUN device of the udp backend.
    #[arg(long, default_value = "weft0")]
    pub tun_name: String,
}

/// Everything one node needs; built by `weft daemon` from flags, by `weft lab` per node.
#[derive(Debug)]
pub struct NodeSetup {
    /// A name for logs.
    pub name: String,
    /// The store, shared by every node of the process.
    pub store: Arc<dyn Store>,
    /// The store key prefix.
    pub prefix: String,
    /// The network config.
    pub config: NetworkConfig,
    /// The network namespace the node lives in (`None`: ours).
    pub netns: Option<PathBuf>,
    /// How to pick the external interface.
    pub iface: IfaceSelector,
    /// The public IP, overriding the interface's.
    pub public_ip: Option<Ipv4Addr>,
    /// The public IPv6 address.
    pub public_ipv6: Option<Ipv6Addr>,
    /// subnet.env's path.
    pub subnet_file: PathBuf,
    /// FLANNEL_IPMASQ.
    pub ip_masq: bool,
    /// The lease TTL.
    pub lease_ttl: Duration,
    /// The renewal margin.
    pub renew_margin: Duration,
    /// The udp backend's TUN device name.
    pub tun_name: String,
    /// Where to write drop and forwarding counters every second, if anywhere.
    pub stats_file: Option<PathBuf>,
}

/// Reads the network config from the file, or from the store, waiting for the store's
/// config key to appear as flannel does.
pub async fn network_config(
    file: Option<&std::path::Path>,
    prefix: &str,
    store: &dyn Store,
) -> Result<NetworkConfig> {
    if let Some(path) = file {
        return Ok(crate::cmd_config::load(path)?.1);
    }
    let key = config_key(prefix);
    let mut logged = false;
    loop {
        match store.get(&key).await {
            Ok(Some(entry)) => {
                let text = String::from_utf8_lossy(&entry.value);
                return NetworkConfig::parse(&text)
                    .with_context(|| format!("invalid network config in {key}"));
            }
            Ok(None) if !logged => {
                tracing::info!(%key, "waiting for the network config to be written (weft config set)");
                logged = true;
            }
            Ok(None) => {}
            Err(e) if !e.is_transient() => {
                return Err(e).with_context(|| format!("cannot read the network config {key}"));
            }
            Err(e) => tracing::warn!(%key, error = %e, "cannot read the network config; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Runs one node until `shutdown` turns true (or it fails).
pub async fn run_node(setup: NodeSetup, shutdown: watch::Receiver<bool>) -> Result<()> {
    let config = &setup.config;
    let kind = config.backend.kind;
    // The udp backend needs the interface (its MTU, its address); alloc only wants it.
    let netlink = if kind == BackendType::Udp || setup.public_ip.is_none() {
        Some(Netlink::open(setup.netns.as_deref()).context("cannot talk netlink")?)
    } else {
        Netlink::open(setup.netns.as_deref()).ok()
    };
    let external = match &netlink {
        Some(nl) => match setup.iface.select(nl).await {
            Ok(ext) => Some(ext),
            Err(e) if kind == BackendType::Alloc && setup.public_ip.is_some() => {
                tracing::debug!(error = %e, "no external interface; assuming a 1500-byte MTU");
                None
            }
            Err(e) => return Err(e).context("cannot choose the external interface"),
        },
        None => None,
    };
    let Some(public_ip) = setup.public_ip.or(external.as_ref().map(|e| e.ip)) else {
        bail!("cannot tell this node's public IP; pass --public-ip or --iface");
    };
    let underlay_mtu = external.as_ref().map_or(1500, |e| e.link.mtu);
    let mtu = config.mtu(underlay_mtu);

    let backend = weft_datapath::backend::create(BackendSetup {
        netns: setup.netns.clone(),
        netlink,
        network: config.clone(),
        mtu,
        public_ip,
        external: external.clone(),
        device_name: setup.tun_name.clone(),
    })?;
    let previous = subnet_file::read(&setup.subnet_file).and_then(|env| env.previous_key());
    let mut node_config =
        NodeConfig::for_network(&setup.prefix, config, public_ip, setup.public_ipv6)?;
    let alloc = &mut node_config.alloc;
    alloc.backend_data = backend.lease_data();
    alloc.previous = previous;
    alloc.lease_ttl = setup.lease_ttl;
    alloc.renew_margin = setup.renew_margin;
    tracing::info!(
        node = %setup.name,
        %public_ip,
        iface = ?external.as_ref().map(|e| &e.link.name),
        network = ?config.network,
        backend = kind.as_str(),
        mtu,
        previous = ?previous.map(|k| k.to_string()),
        "starting"
    );
    let node = Node::new(node_config, rand::random(), wall_now());
    let subnet_file = SubnetFileSettings {
        path: setup.subnet_file.clone(),
        network: config.network,
        ipv6_network: config.ipv6_network,
        mtu,
        ip_masq: setup.ip_masq,
    };
    Driver::new(
        setup.name,
        NodeDriver::new(setup.store, node),
        backend,
        subnet_file,
        setup.stats_file,
    )
    .run(shutdown)
    .await
}

/// A watch that turns true on SIGTERM or SIGINT.
pub fn shutdown_on_signals() -> Result<watch::Receiver<bool>> {
    let (tx, rx) = watch::channel(false);
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = sigterm.recv() => {}
            _ = sigint.recv() => {}
        }
        let _ = tx.send(true);
    });
    Ok(rx)
}

/// Opens the store, waiting (with capped backoff) while it is unreachable: etcd may
/// come up after the node. Anything else (a bad URL, a refused certificate or password)
/// ends the daemon with the reason.
async fn open_store(args: &DaemonArgs) -> Result<Arc<dyn Store>> {
    let options = args.etcd.store_options();
    let mut delay = Duration::from_secs(1);
    let mut logged = false;
    loop {
        match weft_stores::open_with(&args.store, &options).await {
            Ok(store) => return Ok(Arc::from(store)),
            Err(OpenError::Store { error: source, .. }) if source.is_transient() => {
                if !logged {
                    tracing::warn!(store = %args.store, error = %source, "cannot reach the store; retrying");
                    logged = true;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// `weft daemon`.
pub async fn run(args: DaemonArgs) -> Result<()> {
    let mut shutdown = shutdown_on_signals()?;
    let store = tokio::select! {
        store = open_store(&args) => store?,
        _ = shutdown.changed() => return Ok(()),
    };
    let config = tokio::select! {
        config = network_config(args.net_config_path.as_deref(), &args.etcd_prefix, store.as_ref()) => config?,
        _ = shutdown.changed() => {
            tracing::info!("stopping before the network config arrived");
            return Ok(());
        }
    };
    let setup = NodeSetup {
        name: "local".into(),
        store,
        prefix: args.etcd_prefix,
        config,
        netns: None,
        iface: IfaceSelector {
            ifaces: args.iface,
            regexes: args.iface_regex,
        },
        public_ip: args.public_ip,
        public_ipv6: args.public_ipv6,
        subnet_file: args.subnet_file,
        ip_masq: args.ip_masq,
        lease_ttl: Duration::from_secs(args.subnet_lease_ttl.max(1)),
        renew_margin: Duration::from_secs(args.subnet_lease_renew_margin * 60),
        tun_name: args.tun_name,
        stats_file: None,
    };
    run_node(setup, shutdown).await
}
