//! `weft daemon`: the shell around `weft_core::node::Node` on a real host.
//!
//! It reads the network config (from the store, or a file), builds the node, performs the
//! node's store operations on tokio tasks, writes `subnet.env` whenever the lease
//! changes, and sleeps until the node's next timeout. Only the `alloc` backend exists so
//! far: it leases a subnet and programs nothing.

mod driver;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use weft_core::allocator::AllocatorConfig;
use weft_core::config::{BackendType, NetworkConfig};
use weft_core::node::NodeConfig;
use weft_core::store::{config_key, Store};
use weft_stores::OpenError;

use crate::etcd_args::EtcdArgs;
use crate::subnet_file;

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
    /// This node's public (underlay) IPv4 address, recorded in its lease. Default: the
    /// source address of the default route.
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
    /// The MTU of the underlay interface; the overlay MTU subtracts the backend's
    /// encapsulation overhead from it.
    #[arg(long, default_value_t = 1500)]
    pub underlay_mtu: u32,
}

/// The source address the kernel would use for the default route. Connecting a UDP
/// socket sends nothing; it only makes the kernel pick a route and a source.
fn default_route_ipv4() -> Option<Ipv4Addr> {
    let socket = UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    match socket.local_addr().ok()?.ip() {
        IpAddr::V4(ip) if !ip.is_unspecified() => Some(ip),
        _ => None,
    }
}

/// Reads the network config from the file, or from the store, waiting for the store's
/// config key to appear as flannel does.
async fn network_config(args: &DaemonArgs, store: &dyn Store) -> Result<NetworkConfig> {
    if let Some(path) = &args.net_config_path {
        return Ok(crate::cmd_config::load(path)?.1);
    }
    let key = config_key(&args.etcd_prefix);
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
            Err(OpenError::Store { source, .. }) if source.is_transient() => {
                if !logged {
                    tracing::warn!(store = %args.store, error = %source, "cannot reach the store; retrying");
                    logged = true;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
            Err(e) => return Err(e).with_context(|| format!("cannot open store {}", args.store)),
        }
    }
}

/// `weft daemon`.
pub async fn run(args: DaemonArgs) -> Result<()> {
    let public_ip = match args.public_ip.or_else(default_route_ipv4) {
        Some(ip) => ip,
        None => bail!("cannot find a default route to take the public IP from; pass --public-ip"),
    };
    let store = open_store(&args).await?;
    let config = network_config(&args, store.as_ref()).await?;
    if config.backend.kind != BackendType::Alloc {
        bail!(
            "backend type {:?} is not supported by weft daemon yet (supported: alloc)",
            config.backend.kind.as_str()
        );
    }
    let Some(v4_space) = config.ipv4_space() else {
        bail!("weft daemon needs an IPv4 network (EnableIPv4 with Network)");
    };
    let previous = subnet_file::read(&args.subnet_file).and_then(|env| env.previous_key());
    let mut alloc = AllocatorConfig::new(v4_space, public_ip, config.backend.kind.as_str());
    alloc.v6_space = config.ipv6_space();
    alloc.public_ipv6 = args.public_ipv6;
    if alloc.v6_space.is_some() && alloc.public_ipv6.is_none() {
        bail!("the network config enables IPv6; pass --public-ipv6");
    }
    alloc.previous = previous;
    alloc.lease_ttl = Duration::from_secs(args.subnet_lease_ttl.max(1));
    alloc.renew_margin = Duration::from_secs(args.subnet_lease_renew_margin * 60);
    tracing::info!(
        %public_ip,
        store = %args.store,
        network = ?config.network,
        backend = config.backend.kind.as_str(),
        previous = ?previous.map(|k| k.to_string()),
        "starting"
    );
    let node_config = NodeConfig {
        prefix: args.etcd_prefix.clone(),
        alloc,
    };
    driver::Driver::new(store, node_config, &config, &args)
        .run()
        .await
}
