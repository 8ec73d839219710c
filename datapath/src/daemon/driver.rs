//! The daemon's shell around a node: the shared [`NodeDriver`] performs its store
//! operations and timeouts; this file acts on what the node says -- the subnet file, the
//! backend, logs -- and stops on request.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::sync::watch;
use tracing::Instrument;
use weft_core::allocator::{AllocEvent, LossReason};
use weft_core::lease::Lease;
use weft_core::node::NodeEvent;
use weft_core::router::RouteChange;
use weft_core::subnet_env::SubnetEnv;
use weft_core::Timestamp;
use weft_datapath::backend::Backend;
use weft_stores::clock::wall_now;
use weft_stores::NodeDriver;

use crate::subnet_file;

/// What the subnet file says besides the lease.
#[derive(Debug, Clone)]
pub struct SubnetFileSettings {
    pub path: PathBuf,
    pub network: Option<ipnet::Ipv4Net>,
    pub ipv6_network: Option<ipnet::Ipv6Net>,
    pub mtu: u32,
    pub ip_masq: bool,
}

pub struct Driver {
    name: String,
    driver: NodeDriver,
    backend: Box<dyn Backend>,
    subnet_file: SubnetFileSettings,
    skipped: u64,
    ready: bool,
    stats_file: Option<PathBuf>,
}

impl Driver {
    pub fn new(
        name: String,
        driver: NodeDriver,
        backend: Box<dyn Backend>,
        subnet_file: SubnetFileSettings,
        stats_file: Option<PathBuf>,
    ) -> Self {
        Driver {
            name,
            driver,
            backend,
            subnet_file,
            skipped: 0,
            ready: false,
            stats_file,
        }
    }

    async fn on_acquired(&mut self, lease: &Lease) -> Result<()> {
        let kind = self.backend.kind().as_str();
        self.backend
            .lease_acquired(lease)
            .await
            .with_context(|| format!("starting the {kind} backend"))?;
        let s = &self.subnet_file;
        let env = SubnetEnv::for_lease(s.network, s.ipv6_network, &lease.key, s.mtu, s.ip_masq);
        subnet_file::write(&s.path, &env)?;
        tracing::info!(path = %s.path.display(), "wrote subnet file");
        if !self.ready {
            self.ready = true;
            super::notify::ready();
        }
        Ok(())
    }

    /// Acts on one event; an error ends the node.
    async fn on_event(&mut self, event: NodeEvent, now: Timestamp) -> Result<()> {
        match event {
            NodeEvent::Lease(AllocEvent::Acquired { lease, how }) => {
                tracing::info!(subnet = %lease.key, how = ?how, expires_in = ?lease.expires_at.map(|t| t.saturating_since(now)), "lease acquired");
                self.on_acquired(&lease).await?;
            }
            NodeEvent::Lease(AllocEvent::Renewed { lease }) => {
                tracing::info!(subnet = %lease.key, expires_in = ?lease.expires_at.map(|t| t.saturating_since(now)), "lease renewed");
            }
            NodeEvent::Lease(AllocEvent::Lost { key, reason }) => {
                if reason == LossReason::Deleted {
                    bail!("our lease {key} was deleted by someone else; exiting (as flannel does)");
                }
                tracing::warn!(subnet = %key, reason = ?reason, "lease lost; acquiring again");
            }
            NodeEvent::Lease(AllocEvent::AcquireFailed { error, retry_at }) => {
                tracing::warn!(%error, retry_in = ?retry_at.saturating_since(now), "cannot acquire a lease");
            }
            NodeEvent::Lease(AllocEvent::RenewFailed { error, retry_at }) => {
                tracing::warn!(%error, retry_in = ?retry_at.saturating_since(now), "cannot renew the lease");
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
                self.skipped += 1;
                tracing::warn!(key = %s.key, error = %s.error, skipped_total = self.skipped, "skipping an entry that is not a valid lease");
            }
            NodeEvent::Synced { revision, leases } => {
                tracing::debug!(revision, leases, "lease table loaded");
            }
            NodeEvent::StoreFailed { error, retry_at } => {
                tracing::warn!(%error, retry_in = ?retry_at.saturating_since(now), "store operation failed");
            }
        }
        Ok(())
    }

    /// Hands the backend the node's new forwarding table (before the events that go
    /// with it, so that a datapath started for a new lease forwards by it at once), then
    /// acts on every event.
    async fn drain(&mut self) -> Result<()> {
        let now = wall_now();
        if let Some(table) = self.driver.node_mut().poll_forward_table() {
            self.backend.forward_table(table);
        }
        while let Some(event) = self.driver.node_mut().poll_event() {
            self.on_event(event, now).await?;
        }
        Ok(())
    }

    /// Runs until `shutdown` turns true or the node fails; then stops the datapath
    /// (keeping the lease in the store).
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<()> {
        let span = tracing::info_span!("node", name = %self.name);
        let result = self.event_loop(&mut shutdown).instrument(span).await;
        let stopped = self.backend.stop().await.context("stopping the backend");
        match self.driver.node().lease() {
            Some(lease) => {
                tracing::info!(subnet = %lease.key, "stopping; the lease is kept for the next start")
            }
            None => tracing::info!("stopping"),
        }
        result.and(stopped)
    }

    /// The lease, routes and the backend's counters, as JSON.
    fn stats(&self) -> serde_json::Value {
        let node = self.driver.node();
        let mut forward = serde_json::Map::new();
        let mut drops = serde_json::Map::new();
        for c in self.backend.counters() {
            match c.name.strip_prefix("drop_") {
                Some(reason) => drops.insert(reason.to_string(), c.value.into()),
                None => forward.insert(c.name.to_string(), c.value.into()),
            };
        }
        let routes: Vec<String> = node
            .routes()
            .routes()
            .map(|r| r.subnet.to_string())
            .collect();
        serde_json::json!({
            "lease": node.lease().map(|l| l.key.to_string()),
            "routes": routes,
            "forward": forward,
            "drops": drops,
            "skipped_leases": self.skipped,
        })
    }

    fn write_stats(&self) {
        if let Some(path) = &self.stats_file {
            let tmp = path.with_extension("tmp");
            let written = std::fs::write(&tmp, self.stats().to_string())
                .and_then(|()| std::fs::rename(&tmp, path));
            if let Err(e) = written {
                tracing::debug!(error = %e, "cannot write the stats file");
            }
        }
    }

    async fn event_loop(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<()> {
        let mut stats_tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            self.drain().await?;
            tokio::select! {
                () = self.driver.step() => {}
                _ = stats_tick.tick() => self.write_stats(),
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        return Ok(());
                    }
                }
            }
        }
    }
}
