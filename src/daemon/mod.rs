//! `weft daemon`: its flags, turned into a `weft_datapath::daemon::NodeSetup` for the
//! shell that runs the node (in weft-datapath, shared with `weft lab`); the signals that
//! stop it; the store it opens, waiting while etcd is unreachable.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use weft_core::store::Store;
use weft_datapath::daemon::{network_config, run_node, NodeSetup, NodeStatus};
use weft_datapath::iface::IfaceSelector;
use weft_stores::OpenError;

use crate::etcd_args::EtcdArgs;

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
        seed: rand::random(),
    };
    // Nobody watches a lone daemon's status; the channel just has no receivers.
    let (status, _) = watch::channel(NodeStatus::default());
    Ok(run_node(setup, shutdown, status).await?)
}
