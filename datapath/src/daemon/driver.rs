//! The daemon's shell around a node: the shared [`NodeDriver`] performs its store
//! operations and timeouts; this file acts on what the node says -- the subnet file, the
//! backend, weft's nftables table, logs, the published [`NodeStatus`], systemd's
//! notifications -- and stops on request.
//!
//! The nftables table is installed for each lease acquired, checked every
//! `--iptables-resync` seconds (restored when someone flushed or deleted it) and removed
//! when the node stops. A failure there (no nft, a kernel without NAT) does not stop the
//! node, whose overlay works without it: it is logged -- once until it changes --,
//! counted (`firewall_failed`), reported in the status, and retried at the next resync.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;
use tracing::Instrument;
use weft_core::allocator::{AllocEvent, LossReason};
use weft_core::lease::Lease;
use weft_core::node::NodeEvent;
use weft_core::router::RouteChange;
use weft_core::subnet_env::SubnetEnv;
use weft_core::Timestamp;
use weft_stores::clock::wall_now;
use weft_stores::NodeDriver;

use super::{subnet_file, DaemonError, NodeStatus};
use crate::backend::Backend;
use crate::nft::{Firewall, NftError, Resync};

/// How often the backend's counters are sampled into the status (see `status`).
const COUNTER_SAMPLE: Duration = Duration::from_millis(250);

/// What the subnet file says besides the lease.
#[derive(Debug, Clone)]
pub struct SubnetFileSettings {
    /// Where it is written.
    pub path: PathBuf,
    /// FLANNEL_NETWORK.
    pub network: Option<ipnet::Ipv4Net>,
    /// FLANNEL_IPV6_NETWORK.
    pub ipv6_network: Option<ipnet::Ipv6Net>,
    /// FLANNEL_MTU.
    pub mtu: u32,
    /// FLANNEL_IPMASQ.
    pub ip_masq: bool,
}

/// See the module docs.
#[derive(Debug)]
pub struct Driver {
    name: String,
    driver: NodeDriver,
    backend: Box<dyn Backend>,
    firewall: Firewall,
    /// The last firewall error logged, so that one that repeats is logged once.
    firewall_error: Option<NftError>,
    subnet_file: SubnetFileSettings,
    ready: bool,
    /// The lease table has been listed once: a later listing is a re-list, logged.
    listed: bool,
    status: watch::Sender<NodeStatus>,
}

impl Driver {
    pub fn new(
        name: String,
        driver: NodeDriver,
        backend: Box<dyn Backend>,
        firewall: Firewall,
        subnet_file: SubnetFileSettings,
        status: watch::Sender<NodeStatus>,
    ) -> Self {
        Driver {
            name,
            driver,
            backend,
            firewall,
            firewall_error: None,
            subnet_file,
            ready: false,
            listed: false,
            status,
        }
    }

    async fn on_acquired(&mut self, lease: &Lease) -> Result<(), DaemonError> {
        let kind = self.backend.kind().as_str();
        self.backend
            .lease_acquired(lease)
            .await
            .map_err(|cause| DaemonError::Backend {
                what: "starting",
                kind,
                cause,
            })?;
        // The rules before subnet.env, as flanneld orders them: a container started
        // as soon as the file appears is masqueraded from its first packet.
        if self.firewall.enabled() {
            self.install_firewall(&lease.key).await;
        }
        let s = &self.subnet_file;
        let env = SubnetEnv::for_lease(s.network, s.ipv6_network, &lease.key, s.mtu, s.ip_masq);
        // subnet_file keeps the binary's anyhow errors (see the crate's Cargo.toml).
        subnet_file::write(&s.path, &env).map_err(|e| DaemonError::SubnetFile(format!("{e:#}")))?;
        tracing::info!(path = %s.path.display(), "wrote subnet file");
        if !self.ready {
            self.ready = true;
            super::notify::ready();
        }
        Ok(())
    }

    /// Acts on one event; an error ends the node.
    async fn on_event(&mut self, event: NodeEvent, now: Timestamp) -> Result<(), DaemonError> {
        match event {
            NodeEvent::Lease(AllocEvent::Acquired { lease, how }) => {
                tracing::info!(subnet = %lease.key, how = ?how, expires_in = ?lease.expires_at.map(|t| t.saturating_since(now)), "lease acquired");
                self.status.send_modify(|s| s.count("acquired", None));
                self.on_acquired(&lease).await?;
            }
            NodeEvent::Lease(AllocEvent::Renewed { lease }) => {
                tracing::info!(subnet = %lease.key, expires_in = ?lease.expires_at.map(|t| t.saturating_since(now)), "lease renewed");
                self.status.send_modify(|s| s.count("renewed", None));
            }
            NodeEvent::Lease(AllocEvent::Lost { key, reason }) => {
                if reason == LossReason::Deleted {
                    return Err(DaemonError::LeaseDeleted {
                        key: key.to_string(),
                    });
                }
                if reason == LossReason::Claimed {
                    return Err(DaemonError::LeaseClaimed {
                        key: key.to_string(),
                    });
                }
                tracing::warn!(subnet = %key, reason = ?reason, "lease lost; acquiring again");
                self.status.send_modify(|s| s.count("lost", None));
            }
            NodeEvent::Lease(AllocEvent::AcquireFailed { error, retry_at }) => {
                tracing::warn!(%error, retry_in = ?retry_at.saturating_since(now), "cannot acquire a lease");
                let store = alloc_store_error(&error);
                self.status.send_modify(|s| {
                    s.count("acquire_failed", store);
                    s.report(format!("cannot acquire a lease: {error}"));
                });
            }
            NodeEvent::Lease(AllocEvent::RenewFailed { error, retry_at }) => {
                tracing::warn!(%error, retry_in = ?retry_at.saturating_since(now), "cannot renew the lease");
                self.status.send_modify(|s| {
                    s.count("renew_failed", Some(&error));
                    s.report(format!("cannot renew the lease: {error}"));
                });
            }
            NodeEvent::Route(change) => {
                match &change {
                    RouteChange::Add(r) => {
                        tracing::info!(subnet = %r.subnet, via = %r.public_ip, "route added")
                    }
                    RouteChange::Remove(r) => {
                        tracing::info!(subnet = %r.subnet, via = %r.public_ip, "route removed")
                    }
                }
                if let Err(e) = self.backend.route_changed(&change).await {
                    tracing::warn!(error = %e, "the backend could not apply a route change");
                }
            }
            NodeEvent::Skipped(s) => {
                let mut total = 0;
                self.status.send_modify(|status| {
                    status.skipped_leases += 1;
                    total = status.skipped_leases;
                });
                tracing::warn!(key = %s.key, error = %s.error, skipped_total = total, "skipping an entry that is not a valid lease");
            }
            NodeEvent::Synced { revision, leases } => {
                if std::mem::replace(&mut self.listed, true) {
                    // After a compaction, a store outage or a watch that was lost.
                    tracing::info!(
                        revision,
                        leases,
                        "lease table listed again; the watch resumes from it"
                    );
                } else {
                    tracing::debug!(revision, leases, "lease table loaded");
                }
                self.status.send_modify(|s| s.count("synced", None));
            }
            NodeEvent::StoreFailed { error, retry_at } => {
                tracing::warn!(%error, retry_in = ?retry_at.saturating_since(now), "store operation failed");
                self.status.send_modify(|s| {
                    s.count("store_failed", Some(&error));
                    s.report(format!("store operation failed: {error}"));
                });
            }
        }
        Ok(())
    }

    /// Installs weft's table for our lease `key`.
    async fn install_firewall(&mut self, key: &weft_core::lease::LeaseKey) {
        match self.firewall.install(key).await {
            Ok(()) => {
                let after_failure = self.firewall_error.take().is_some();
                tracing::info!(table = crate::nft::TABLE, spec = ?self.firewall.spec_for(key), after_failure, "installed the nftables table");
                self.status
                    .send_modify(|s| s.count("firewall_applied", None));
            }
            Err(e) => self.firewall_failed(e),
        }
    }

    /// Logs (once until it changes), counts and reports a firewall error.
    fn firewall_failed(&mut self, e: NftError) {
        if self.firewall_error.as_ref() != Some(&e) {
            tracing::warn!(error = %e, "the nftables table is not in place; retrying at every resync");
        }
        self.status.send_modify(|s| {
            s.count("firewall_failed", None);
            s.report(e.to_string());
        });
        self.firewall_error = Some(e);
    }

    /// Checks weft's table, restoring it when it is gone or changed; retries an
    /// install that failed.
    async fn resync_firewall(&mut self) {
        let failed = self.firewall_error.is_some();
        if let (true, Some(lease)) = (failed, self.driver.node().lease()) {
            let key = lease.key;
            self.install_firewall(&key).await;
            return;
        }
        match self.firewall.resync().await {
            Ok(Resync::Restored) => {
                self.firewall_error = None;
                tracing::warn!(
                    table = crate::nft::TABLE,
                    "the nftables table was missing or changed; restored it"
                );
                self.status
                    .send_modify(|s| s.count("firewall_restored", None));
            }
            Ok(Resync::Intact | Resync::Idle) => {}
            Err(e) => self.firewall_failed(e),
        }
    }

    /// Hands the backend the node's new forwarding table (before the events that go
    /// with it, so that a datapath started for a new lease forwards by it at once), then
    /// acts on every event, then publishes what changed.
    async fn drain(&mut self) -> Result<(), DaemonError> {
        let now = wall_now();
        if let Some(table) = self.driver.node_mut().poll_forward_table() {
            self.backend.forward_table(table);
        }
        while let Some(event) = self.driver.node_mut().poll_event() {
            self.on_event(event, now).await?;
        }
        let (node, store) = (self.driver.node(), self.driver.stats());
        self.status.send_if_modified(|s| {
            let moved = s.update_from(node);
            s.update_store(store) || moved
        });
        Ok(())
    }

    /// Runs until `shutdown` turns true or the node fails; then stops the datapath
    /// (keeping the lease in the store).
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<(), DaemonError> {
        let span = tracing::info_span!("node", name = %self.name);
        let result = self.event_loop(&mut shutdown).instrument(span).await;
        if result.is_ok() {
            super::notify::stopping();
        }
        if let Err(e) = self.firewall.remove().await {
            tracing::warn!(error = %e, "cannot remove the nftables table");
        } else if self.firewall.enabled() {
            tracing::info!(table = crate::nft::TABLE, "removed the nftables table");
        }
        let kind = self.backend.kind().as_str();
        let stopped = self
            .backend
            .stop()
            .await
            .map_err(|cause| DaemonError::Backend {
                what: "stopping",
                kind,
                cause,
            });
        match self.driver.node().lease() {
            Some(lease) => {
                tracing::info!(subnet = %lease.key, "stopping; the lease is kept for the next start")
            }
            None => tracing::info!("stopping"),
        }
        result.and(stopped)
    }

    async fn event_loop(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), DaemonError> {
        let mut sample = tokio::time::interval(COUNTER_SAMPLE);
        sample.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut watchdog = super::notify::watchdog_interval().map(|every| {
            tracing::info!(every = ?every, "systemd watchdog enabled");
            let mut interval = tokio::time::interval(every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval
        });
        let mut resync = self.firewall.enabled().then(|| {
            let every = self.firewall.resync_every();
            let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval
        });
        loop {
            self.drain().await?;
            tokio::select! {
                () = tick(&mut resync) => self.resync_firewall().await,
                () = self.driver.step() => {}
                _ = sample.tick() => {
                    if let Some(why) = self.backend.failure() {
                        let kind = self.backend.kind().as_str();
                        return Err(DaemonError::Backend {
                            what: "running",
                            kind,
                            cause: crate::DatapathError::Failed(why),
                        });
                    }
                    let counters = self.backend.counters();
                    let device = self.backend.device().await;
                    let kind = self.backend.kind().as_str();
                    self.status.send_if_modified(|s| {
                        let named = s.backend.as_deref() != Some(kind);
                        if named {
                            s.backend = Some(kind.to_string());
                        }
                        s.update_counters(&counters, device) || named
                    });
                }
                () = tick(&mut watchdog) => super::notify::watchdog(),
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// The next tick of `interval`, or never when there is none.
async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// The store error inside an allocator's failure, if it is one.
fn alloc_store_error(
    e: &weft_core::allocator::AllocError,
) -> Option<&weft_core::store::StoreError> {
    match e {
        weft_core::allocator::AllocError::Store(s) => Some(s),
        weft_core::allocator::AllocError::OutOfSubnets { .. }
        | weft_core::allocator::AllocError::NoSpace => None,
    }
}
