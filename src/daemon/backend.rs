//! The backends the daemon can run: flannel's `alloc` (lease only) and `udp` (TUN +
//! UDP encapsulation, through weft-datapath).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use weft_core::lease::{Lease, LeaseKey};
use weft_core::node::Node;
use weft_datapath::netlink::Netlink;
use weft_datapath::udp::{UdpBackend, UdpConfig};

/// A backend and, for udp, its running datapath.
#[derive(Debug)]
pub enum Backend {
    /// Lease only: nothing to program.
    Alloc,
    /// flannel's udp backend.
    Udp {
        /// The namespace the node lives in (`None`: ours).
        netns: Option<PathBuf>,
        /// Netlink in that namespace.
        netlink: Netlink,
        /// TUN name, MTU, network, public IP and port; the subnet is filled in per lease.
        template: UdpConfig,
        /// The running datapath and the lease it serves.
        running: Option<(LeaseKey, UdpBackend)>,
    },
}

impl Backend {
    /// A udp backend whose datapath starts with the first lease.
    pub fn udp(netns: Option<PathBuf>, netlink: Netlink, template: UdpConfig) -> Self {
        Backend::Udp {
            netns,
            netlink,
            template,
            running: None,
        }
    }

    /// Brings the datapath in line with a newly acquired lease: started on the first
    /// lease, restarted when the subnet changed, untouched when it is the same.
    pub async fn lease_acquired(&mut self, lease: &Lease, node: &Arc<Mutex<Node>>) -> Result<()> {
        let Backend::Udp {
            netns,
            netlink,
            template,
            running,
        } = self
        else {
            return Ok(());
        };
        if running.as_ref().is_some_and(|(k, _)| *k == lease.key) {
            return Ok(());
        }
        if let Some((_, old)) = running.take() {
            old.stop().await.context("stopping the udp datapath")?;
        }
        let cfg = UdpConfig {
            subnet: Ipv4Net::new(lease.key.ipv4.network(), lease.key.ipv4.prefix_len())
                .context("lease subnet")?,
            ..template.clone()
        };
        let backend = UdpBackend::start(netns.as_deref(), netlink, &cfg, node.clone())
            .await
            .context("starting the udp datapath")?;
        *running = Some((lease.key, backend));
        Ok(())
    }

    /// The datapath's packet counters, as JSON (`null` without a datapath).
    pub fn counters_json(&self) -> serde_json::Value {
        use std::sync::atomic::Ordering::Relaxed;
        let Backend::Udp {
            running: Some((_, backend)),
            ..
        } = self
        else {
            return serde_json::Value::Null;
        };
        let c = backend.counters();
        serde_json::json!({
            "tun_rx": c.tun_rx.load(Relaxed),
            "udp_tx": c.udp_tx.load(Relaxed),
            "udp_rx": c.udp_rx.load(Relaxed),
            "tun_tx": c.tun_tx.load(Relaxed),
            "icmp_tx": c.icmp_tx.load(Relaxed),
            "errors": c.errors.load(Relaxed),
        })
    }

    /// Stops the datapath, removing the TUN device and its route.
    pub async fn stop(&mut self) -> Result<()> {
        if let Backend::Udp { running, .. } = self {
            if let Some((_, backend)) = running.take() {
                backend.stop().await.context("stopping the udp datapath")?;
            }
        }
        Ok(())
    }
}
