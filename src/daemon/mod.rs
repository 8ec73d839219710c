//! `weft daemon`: its flags, turned into a `weft_datapath::daemon::NodeSetup` for the
//! shell that runs the node (in weft-datapath, shared with `weft lab`); the signals that
//! stop it; the store it opens, waiting while etcd is unreachable.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use weft_core::store::Store;
use weft_datapath::daemon::{network_config, run_node, NodeSetup, NodeStatus};
use weft_datapath::iface::IfaceSelector;
use weft_datapath::nft::FirewallSettings;
use weft_stores::OpenError;

use crate::etcd_args::EtcdArgs;

pub mod flanneld;

/// Arguments of `weft daemon`: flanneld's flags (also in Go's one-dash spelling, and
/// from `FLANNELD_*` variables, the command line winning), plus weft's own.
#[derive(Debug, clap::Args)]
pub struct DaemonArgs {
    /// Where the leases live: memory:, sled:PATH (embedded, one process per directory),
    /// etcd://HOST:PORT[,HOST:PORT...] (a cluster; several members fail over).
    #[arg(long, env = "WEFT_STORE", default_value = "sled:/var/lib/weft")]
    pub store: String,
    /// flanneld's etcd members, a comma list of http://HOST:PORT (or https://, which
    /// needs --etcd-cafile); overrides --store.
    #[arg(long, env = "FLANNELD_ETCD_ENDPOINTS", conflicts_with = "store")]
    pub etcd_endpoints: Option<String>,
    /// The key prefix in the store (flannel's default).
    #[arg(long, env = "FLANNELD_ETCD_PREFIX", default_value = weft_core::store::DEFAULT_PREFIX)]
    pub etcd_prefix: String,
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// The interface (name or IP address) to carry the overlay over; repeat to give
    /// alternatives, tried in order. Default: the interface of the default route.
    #[arg(long, env = "FLANNELD_IFACE")]
    pub iface: Vec<String>,
    /// A regex matched against interface names and addresses, when no --iface matched.
    #[arg(long, env = "FLANNELD_IFACE_REGEX")]
    pub iface_regex: Vec<String>,
    /// Without --iface or --iface-regex: the interface the routes to this address use
    /// (as `ip route get ADDRESS` says).
    #[arg(long, env = "FLANNELD_IFACE_CAN_REACH")]
    pub iface_can_reach: Option<Ipv4Addr>,
    /// This node's public IPv4 address, recorded in its lease. Default: the external
    /// interface's address.
    #[arg(long, env = "FLANNELD_PUBLIC_IP")]
    pub public_ip: Option<Ipv4Addr>,
    /// This node's public IPv6 address, for dual-stack networks.
    #[arg(long, env = "FLANNELD_PUBLIC_IPV6")]
    pub public_ipv6: Option<Ipv6Addr>,
    /// Where to write subnet.env (and read the previous run's subnet from).
    #[arg(
        long,
        env = "FLANNELD_SUBNET_FILE",
        default_value = "/run/flannel/subnet.env"
    )]
    pub subnet_file: PathBuf,
    /// Read the network config from this file instead of the store's config key.
    #[arg(long, env = "FLANNELD_NET_CONFIG_PATH")]
    pub net_config_path: Option<PathBuf>,
    /// Renew the lease this many minutes before it expires (1 to 1439).
    #[arg(long, env = "FLANNELD_SUBNET_LEASE_RENEW_MARGIN", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=1439))]
    pub subnet_lease_renew_margin: u64,
    /// The TTL of the lease, in seconds (flannel: 24 h).
    #[arg(long, default_value_t = 24 * 3600)]
    pub subnet_lease_ttl: u64,
    /// Masquerade traffic from the overlay leaving it (IPv4, and IPv6 when the network
    /// has an IPv6 half), with rules in weft's nftables table `inet weft`; records
    /// FLANNEL_IPMASQ=true in subnet.env. Needs nft (Debian's nftables).
    #[arg(long, env = "FLANNELD_IP_MASQ")]
    pub ip_masq: bool,
    /// Masquerade without `fully-random` port selection.
    #[arg(long, env = "FLANNELD_IP_MASQ_FULLY_RANDOM_DISABLE")]
    pub ip_masq_fully_random_disable: bool,
    /// The address of the health server (/healthz, /readyz, /metrics).
    #[arg(long, env = "FLANNELD_HEALTHZ_IP", default_value = "0.0.0.0")]
    pub healthz_ip: std::net::IpAddr,
    /// The port of the health server; 0 (the default) runs none.
    #[arg(long, env = "FLANNELD_HEALTHZ_PORT", default_value_t = 0)]
    pub healthz_port: u16,
    /// How often, in seconds, weft's nftables table is checked, and restored when someone
    /// flushed, changed or deleted it.
    #[arg(long, env = "FLANNELD_IPTABLES_RESYNC", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub iptables_resync: u64,
    /// Accept forwarding to and from the overlay network (a forward chain in weft's
    /// nftables table; it cannot overrule another table's drop policy).
    #[arg(long, env = "FLANNELD_IPTABLES_FORWARD_RULES", default_value_t = true,
          action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub iptables_forward_rules: bool,
    /// flanneld's log verbosity: 0 logs at info, 1 and more at debug (WEFT_LOG wins).
    #[arg(short = 'v', env = "FLANNELD_V", default_value_t = 0)]
    pub verbosity: u8,
    /// The TUN device of the udp backend.
    #[arg(long, default_value = "weft0")]
    pub tun_name: String,
    /// flanneld's Kubernetes flags: refused, weft has no Kubernetes subnet manager.
    #[arg(long, hide = true, num_args = 0..=1, default_missing_value = "true")]
    pub kube_subnet_mgr: Option<String>,
    #[arg(long, hide = true)]
    #[doc(hidden)]
    pub kube_api_url: Option<String>,
    #[arg(long, hide = true)]
    #[doc(hidden)]
    pub kubeconfig_file: Option<String>,
    #[arg(long, hide = true)]
    #[doc(hidden)]
    pub kube_annotation_prefix: Option<String>,
    #[arg(long, hide = true, num_args = 0..=1, default_missing_value = "true")]
    #[doc(hidden)]
    pub set_node_network_unavailable: Option<String>,
}

impl DaemonArgs {
    /// Refuses flanneld's Kubernetes flags, by name.
    fn refuse_kubernetes(&self) -> Result<()> {
        let given = [
            ("kube-subnet-mgr", self.kube_subnet_mgr.is_some()),
            ("kube-api-url", self.kube_api_url.is_some()),
            ("kubeconfig-file", self.kubeconfig_file.is_some()),
            (
                "kube-annotation-prefix",
                self.kube_annotation_prefix.is_some(),
            ),
            (
                "set-node-network-unavailable",
                self.set_node_network_unavailable.is_some(),
            ),
        ];
        let named: Vec<String> = given
            .iter()
            .filter(|(_, g)| *g)
            .map(|(n, _)| format!("--{n}"))
            .collect();
        if !named.is_empty() {
            bail!(
                "{} is not supported by weft: weft keeps leases in etcd (or sled), not in the Kubernetes API; use --etcd-endpoints",
                named.join(", ")
            );
        }
        Ok(())
    }

    /// The store URL and its options: `--etcd-endpoints` when given, else `--store`.
    fn store(&self) -> Result<(String, weft_stores::StoreOptions)> {
        let options = self.etcd.store_options();
        let Some(endpoints) = &self.etcd_endpoints else {
            return Ok((self.store.clone(), options));
        };
        let (url, tls) = flanneld::etcd_store_url(endpoints)?;
        if tls && self.etcd.etcd_cafile.is_none() {
            bail!("--etcd-endpoints uses https: give --etcd-cafile (and --etcd-certfile/--etcd-keyfile if etcd asks for a client certificate)");
        }
        if !tls && self.etcd.etcd_cafile.is_some() {
            bail!("--etcd-cafile is given but --etcd-endpoints uses http; use https:// endpoints");
        }
        Ok((url, options))
    }
}

/// A watch that turns true on the first SIGTERM or SIGINT: the daemon (or the lab)
/// then stops cleanly. A second one, while that stop is under way (a device, a store or
/// a thread that does not let go), ends the process at once with exit code 1 and a line
/// saying so; what the clean stop had not removed yet stays behind.
pub fn shutdown_on_signals() -> Result<watch::Receiver<bool>> {
    shutdown_on_signals_then(|| std::process::exit(1))
}

/// [`shutdown_on_signals`], with `force` called on the second signal.
fn shutdown_on_signals_then(
    force: impl FnOnce() + Send + 'static,
) -> Result<watch::Receiver<bool>> {
    let (tx, rx) = watch::channel(false);
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let mut next = async || {
            tokio::select! {
                _ = sigterm.recv() => "SIGTERM",
                _ = sigint.recv() => "SIGINT",
            }
        };
        let first = next().await;
        tracing::info!("{first}: stopping cleanly (a second signal exits at once)");
        let _ = tx.send(true);
        let second = next().await;
        tracing::warn!("{second} during the stop: exiting at once, without finishing it");
        force();
    });
    Ok(rx)
}

/// Opens the store, waiting (with capped backoff) while it is unreachable: etcd may
/// come up after the node. Anything else (a bad URL, a refused certificate or password)
/// ends the daemon with the reason.
async fn open_store(url: &str, options: &weft_stores::StoreOptions) -> Result<Arc<dyn Store>> {
    let mut delay = Duration::from_secs(1);
    let mut logged = false;
    loop {
        match weft_stores::open_with(url, options).await {
            Ok(store) => return Ok(Arc::from(store)),
            Err(OpenError::Store { error: source, .. }) if source.is_transient() => {
                if !logged {
                    tracing::warn!(store = %url, error = %source, "cannot reach the store; retrying");
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
    args.refuse_kubernetes()?;
    // Checked before anything starts: a bad endpoint list is a usage error.
    let (url, options) = args.store()?;
    let mut shutdown = shutdown_on_signals()?;
    let store = tokio::select! {
        store = open_store(&url, &options) => store?,
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
            can_reach: args.iface_can_reach,
            // Set by the daemon once it has read the network config.
            ipv6_only: false,
        },
        public_ip: args.public_ip,
        public_ipv6: args.public_ipv6,
        subnet_file: args.subnet_file,
        // flannel has no flag for it, only the variable.
        wg_key_file: weft_datapath::backend::wireguard::key::key_file_from_env(),
        firewall: FirewallSettings {
            ip_masq: args.ip_masq,
            fully_random: !args.ip_masq_fully_random_disable,
            forward_rules: args.iptables_forward_rules,
            resync: Duration::from_secs(args.iptables_resync),
        },
        lease_ttl: Duration::from_secs(args.subnet_lease_ttl.max(1)),
        renew_margin: Duration::from_secs(args.subnet_lease_renew_margin * 60),
        tun_name: args.tun_name,
        seed: rand::random(),
    };
    let (status, watcher) = watch::channel(NodeStatus::default());
    let health = if args.healthz_port == 0 {
        None
    } else {
        let addr = std::net::SocketAddr::new(args.healthz_ip, args.healthz_port);
        Some(weft_datapath::daemon::health::serve(addr, watcher, shutdown.clone()).await?)
    };
    let result = run_node(setup, shutdown, status).await;
    if let Some(task) = health {
        task.abort();
    }
    Ok(result?)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use nix::sys::signal::{raise, Signal};

    use super::shutdown_on_signals_then;

    /// The real signal path: the test process signals itself (tokio's handler takes
    /// the signals, so the default action never runs).
    #[tokio::test]
    async fn the_first_signal_stops_cleanly_and_a_second_forces_the_exit() {
        let (forced, was_forced) = std::sync::mpsc::channel();
        let mut shutdown = shutdown_on_signals_then(move || {
            let _ = forced.send(());
        })
        .unwrap();
        raise(Signal::SIGTERM).unwrap();
        tokio::time::timeout(Duration::from_secs(5), shutdown.changed())
            .await
            .expect("the first signal is seen")
            .unwrap();
        assert!(*shutdown.borrow());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(was_forced.try_recv().is_err(), "one signal forces nothing");
        raise(Signal::SIGINT).unwrap();
        tokio::task::spawn_blocking(move || was_forced.recv_timeout(Duration::from_secs(5)))
            .await
            .unwrap()
            .expect("the second signal forces the exit");
    }
}
