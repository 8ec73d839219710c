//! The daemon: the shell around `weft_core::node::Node` on a real host.
//!
//! [`run_node`] picks the external interface, builds the node and the backend the
//! network config names, and hands both to the shell (`driver`): the shared
//! [`weft_stores::NodeDriver`] performs the node's store operations and timeouts; the
//! shell writes `subnet.env` whenever the lease changes, installs weft's nftables table
//! for it (masquerade, forward rules; `crate::nft`), passes routes and forwarding
//! tables to the backend, and publishes a [`NodeStatus`] on every change. `weft daemon`
//! runs one node (the binary turns its flags into a [`NodeSetup`]); `weft lab` runs one
//! per namespace, all in one process, and watches their status.

mod driver;
pub mod health;
pub mod notify;
pub mod status;
pub mod subnet_file;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use weft_core::config::{BackendType, ConfigError, NetworkConfig};
use weft_core::node::{Node, NodeConfig, NodeConfigError};
use weft_core::store::{config_key, Store, StoreError};
use weft_stores::clock::wall_now;
use weft_stores::NodeDriver;

use crate::backend::BackendSetup;
use crate::iface::IfaceSelector;
use crate::netlink::Netlink;
use crate::nft::{Firewall, FirewallSettings};
use crate::DatapathError;
use driver::{Driver, SubnetFileSettings};
pub use status::{LeaseStatus, NodeState, NodeStatus, RouteStatus};

/// Why a node could not start, or why it ended.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The network config file could not be read.
    #[error("cannot read network config {path}: {cause}")]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// The OS error.
        cause: std::io::Error,
    },
    /// The network config (from a file or the store) breaks flannel's rules.
    #[error("invalid network config in {from}: {cause}")]
    Config {
        /// The file or the store key it came from.
        from: String,
        /// What is wrong with it.
        cause: ConfigError,
    },
    /// The store refused to give the network config.
    #[error("cannot read the network config {key}: {cause}")]
    ConfigKey {
        /// The key.
        key: String,
        /// The store's error.
        cause: StoreError,
    },
    /// The network config cannot run a node on this host.
    #[error(transparent)]
    NodeConfig(#[from] NodeConfigError),
    /// Netlink could not be opened (in the node's namespace).
    #[error("cannot talk netlink: {0}")]
    Netlink(DatapathError),
    /// No interface matched the selection.
    #[error("cannot choose the external interface: {0}")]
    Interface(DatapathError),
    /// Neither a public IP nor an interface to take one from.
    #[error("cannot tell this node's public IP; pass --public-ip or --iface")]
    NoPublicIp,
    /// The backend failed to start, to bring up a lease or to stop.
    #[error("{what} the {kind} backend: {cause}")]
    Backend {
        /// `starting`, `stopping`...
        what: &'static str,
        /// The backend type.
        kind: &'static str,
        /// Its error.
        cause: DatapathError,
    },
    /// `subnet.env` could not be written.
    #[error("{0}")]
    SubnetFile(String),
    /// Someone else deleted the node's lease: the node exits, as flannel's does.
    #[error("our lease {key} was deleted by someone else; exiting (as flannel does)")]
    LeaseDeleted {
        /// The lease's key.
        key: String,
    },
    /// Another node renewed the node's lease as its own, recording our public IP: two
    /// nodes have one public IP. This one exits; the other keeps the lease.
    #[error("our lease {key} was renewed by another node that records our public IP: two nodes are configured with one public IP (--public-ip); exiting")]
    LeaseClaimed {
        /// The lease's key.
        key: String,
    },
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
    /// FLANNEL_IPMASQ, and the masquerade and forward rules of weft's nftables table
    /// (`ip_masq` there is the same flag).
    pub firewall: FirewallSettings,
    /// The lease TTL.
    pub lease_ttl: Duration,
    /// The renewal margin.
    pub renew_margin: Duration,
    /// The udp backend's TUN device name.
    pub tun_name: String,
    /// The wireguard backend's key file.
    pub wg_key_file: PathBuf,
    /// The node's seed (its randomness: jitter, the choice of a free subnet), from the
    /// caller, which alone reads the OS random source.
    pub seed: u64,
}

/// Reads the network config from the file, or from the store, waiting for the store's
/// config key to appear as flannel does.
pub async fn network_config(
    file: Option<&Path>,
    prefix: &str,
    store: &dyn Store,
) -> Result<NetworkConfig, DaemonError> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|cause| DaemonError::ConfigFile {
            path: path.to_path_buf(),
            cause,
        })?;
        let config = NetworkConfig::parse(&text).map_err(|cause| DaemonError::Config {
            from: path.display().to_string(),
            cause,
        })?;
        warn_about(&config, &path.display().to_string());
        return Ok(config);
    }
    let key = config_key(prefix);
    let mut logged = false;
    loop {
        match store.get(&key).await {
            Ok(Some(entry)) => {
                let text = String::from_utf8_lossy(&entry.value);
                let config = NetworkConfig::parse(&text).map_err(|cause| DaemonError::Config {
                    from: key.clone(),
                    cause,
                })?;
                warn_about(&config, &key);
                return Ok(config);
            }
            Ok(None) if !logged => {
                tracing::info!(%key, "waiting for the network config to be written (weft config set)");
                logged = true;
            }
            Ok(None) => {}
            Err(cause) if !cause.is_transient() => {
                return Err(DaemonError::ConfigKey { key, cause });
            }
            Err(e) => tracing::warn!(%key, error = %e, "cannot read the network config; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Logs what the config accepted but deserves a word.
fn warn_about(config: &NetworkConfig, from: &str) {
    for warning in &config.warnings {
        tracing::warn!(config = %from, "{warning}");
    }
}

/// The rules the node's table holds: the flags', except with the alloc backend, which
/// moves no packets and so gets no rules (flanneld installs them whatever the
/// backend; weft's alloc is allocation only, and a daemon run for its leases alone --
/// tests among them -- should not rewrite the host's firewall).
fn firewall_settings(setup: &NodeSetup) -> FirewallSettings {
    let mut settings = setup.firewall.clone();
    if setup.config.backend.kind == BackendType::Alloc {
        if settings.ip_masq {
            tracing::warn!("the alloc backend moves no packets: no masquerade rules are installed for it (FLANNEL_IPMASQ=true is still written, as asked)");
        }
        settings.ip_masq = false;
        settings.forward_rules = false;
    }
    settings
}

/// Runs one node until `shutdown` turns true (or it fails), publishing its status on
/// `status` all along and its end last: stopped, or exited with the error returned.
pub async fn run_node(
    setup: NodeSetup,
    shutdown: watch::Receiver<bool>,
    status: watch::Sender<NodeStatus>,
) -> Result<(), DaemonError> {
    status.send_replace(NodeStatus::default());
    let result = start_and_run(setup, shutdown, &status).await;
    let error = result.as_ref().err().map(ToString::to_string);
    status.send_modify(|s| s.end(error));
    result
}

async fn start_and_run(
    setup: NodeSetup,
    shutdown: watch::Receiver<bool>,
    status: &watch::Sender<NodeStatus>,
) -> Result<(), DaemonError> {
    let config = &setup.config;
    let kind = config.backend.kind;
    // The udp backend needs the interface (its MTU, its address); alloc only wants it.
    let netlink =
        if matches!(kind, BackendType::Udp | BackendType::Wireguard) || setup.public_ip.is_none() {
            Some(Netlink::open(setup.netns.as_deref()).map_err(DaemonError::Netlink)?)
        } else {
            Netlink::open(setup.netns.as_deref()).ok()
        };
    // On an IPv6-only network an interface with IPv6 alone will do.
    let iface = IfaceSelector {
        ipv6_only: config.ipv4_space().is_none(),
        ..setup.iface.clone()
    };
    let external = match &netlink {
        Some(nl) => match iface.select(nl).await {
            Ok(ext) => Some(ext),
            Err(e) if kind == BackendType::Alloc && setup.public_ip.is_some() => {
                tracing::debug!(error = %e, "no external interface; assuming a 1500-byte MTU");
                None
            }
            Err(e) => return Err(DaemonError::Interface(e)),
        },
        None => None,
    };
    let public_ip = setup
        .public_ip
        .or(external.as_ref().map(|e| e.ip))
        .ok_or(DaemonError::NoPublicIp)?;
    // flannel takes the interface's IPv6 address when none is given.
    let public_ipv6 = if config.enable_ipv6 {
        setup.public_ipv6.or(external.as_ref().and_then(|e| e.ipv6))
    } else {
        setup.public_ipv6
    };
    let underlay_mtu = external.as_ref().map_or(1500, |e| e.link.mtu);
    let mtu = config.mtu(underlay_mtu);
    let container_mtu = config.container_mtu(underlay_mtu);
    status.send_modify(|s| {
        s.public_ip = Some(public_ip);
        s.mtu = Some(container_mtu);
    });

    let backend = crate::backend::create(BackendSetup {
        netns: setup.netns.clone(),
        netlink,
        network: config.clone(),
        mtu,
        public_ip,
        public_ipv6,
        external: external.clone(),
        device_name: setup.tun_name.clone(),
        wg_key_file: setup.wg_key_file.clone(),
    })
    .map_err(|cause| DaemonError::Backend {
        what: "creating",
        kind: kind.as_str(),
        cause,
    })?;
    let previous = subnet_file::read(&setup.subnet_file).and_then(|env| env.previous_key());
    let mut node_config = NodeConfig::for_network(&setup.prefix, config, public_ip, public_ipv6)?;
    let alloc = &mut node_config.alloc;
    alloc.backend_data = backend.lease_data();
    alloc.backend_v6_data = backend.lease_v6_data();
    alloc.previous = previous;
    alloc.lease_ttl = setup.lease_ttl;
    alloc.renew_margin = setup.renew_margin;
    tracing::info!(
        node = %setup.name,
        %public_ip,
        iface = ?external.as_ref().map(|e| &e.link.name),
        network = ?config.network,
        backend = kind.as_str(),
        mtu = container_mtu,
        previous = ?previous.map(|k| k.to_string()),
        "starting"
    );
    let mut node = Node::new(node_config, setup.seed, wall_now());
    node.set_forward_underlay(backend.forward_underlay());
    let subnet_file = SubnetFileSettings {
        path: setup.subnet_file.clone(),
        network: config.network,
        ipv6_network: config.ipv6_network,
        mtu: container_mtu,
        ip_masq: setup.firewall.ip_masq,
    };
    let firewall = Firewall::new(setup.netns.clone(), firewall_settings(&setup), config);
    Driver::new(
        setup.name,
        NodeDriver::new(setup.store, node),
        backend,
        firewall,
        subnet_file,
        status.clone(),
    )
    .run(shutdown)
    .await
}
