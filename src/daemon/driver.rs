//! The node's event loop: performs its store operations, acts on its events (subnet
//! file, datapath, logs), and sleeps until its next timeout or a shutdown request.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{bail, Result};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;
use weft_core::allocator::{AllocEvent, LossReason};
use weft_core::lease::Lease;
use weft_core::node::{Node, NodeEvent, OpId, StoreOp, StoreOutput};
use weft_core::router::RouteChange;
use weft_core::store::{Store, StoreError, WatchEvent};
use weft_core::subnet_env::SubnetEnv;
use weft_core::Timestamp;
use weft_stores::clock::wall_now;

use super::backend::Backend;
use crate::subnet_file;

/// What the store tasks report back to the loop.
#[derive(Debug)]
enum Msg {
    Done(OpId, Result<StoreOutput, StoreError>),
    Watch(u64, Result<Vec<WatchEvent>, StoreError>),
}

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
    store: Arc<dyn Store>,
    node: Arc<Mutex<Node>>,
    backend: Backend,
    subnet_file: SubnetFileSettings,
    tx: mpsc::UnboundedSender<Msg>,
    rx: mpsc::UnboundedReceiver<Msg>,
    watch: Option<(u64, JoinHandle<()>)>,
    watch_gen: u64,
    /// The node's first watch, held back until the node has reported on its lease.
    deferred_watch: Option<(OpId, StoreOp)>,
    lease_reported: bool,
    skipped: u64,
    ready: bool,
    stats_file: Option<PathBuf>,
}

fn lock(node: &Mutex<Node>) -> MutexGuard<'_, Node> {
    node.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Driver {
    pub fn new(
        name: String,
        store: Arc<dyn Store>,
        node: Node,
        backend: Backend,
        subnet_file: SubnetFileSettings,
        stats_file: Option<PathBuf>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Driver {
            name,
            store,
            node: Arc::new(Mutex::new(node)),
            backend,
            subnet_file,
            tx,
            rx,
            watch: None,
            watch_gen: 0,
            deferred_watch: None,
            lease_reported: false,
            skipped: 0,
            ready: false,
            stats_file,
        }
    }

    /// Performs `op`, except the node's first watch, which waits until the node has
    /// acquired its lease (or reported that it cannot yet): the watch resumes from the
    /// listing's revision either way, so nothing is missed, and a fleet that starts at
    /// once (a cold start of the whole cluster) does not have etcd stream every node's
    /// new lease to every other node while they are all still acquiring; each watch
    /// catches up afterwards from etcd's history, in large batches.
    fn perform(&mut self, id: OpId, op: StoreOp) {
        if matches!(op, StoreOp::Watch { .. }) && !self.lease_reported && self.watch_gen == 0 {
            self.deferred_watch = Some((id, op));
            return;
        }
        let store = self.store.clone();
        let tx = self.tx.clone();
        if let StoreOp::Watch { prefix, from } = op {
            if let Some((_, task)) = self.watch.take() {
                task.abort();
            }
            self.watch_gen += 1;
            let generation = self.watch_gen;
            let task = tokio::spawn(async move {
                weft_stores::forward_watch(store.as_ref(), &prefix, from, |batch| {
                    tx.send(Msg::Watch(generation, batch)).is_ok()
                })
                .await;
            });
            self.watch = Some((generation, task));
            return;
        }
        tokio::spawn(async move {
            if let Some(result) = weft_stores::perform(store.as_ref(), op).await {
                let _ = tx.send(Msg::Done(id, result));
            }
        });
    }

    async fn on_acquired(&mut self, lease: &Lease) -> Result<()> {
        self.backend.lease_acquired(lease, &self.node).await?;
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
            NodeEvent::Route(RouteChange::Add(r)) => {
                tracing::info!(subnet = %r.subnet, via = %r.public_ip, "route added");
            }
            NodeEvent::Route(RouteChange::Remove(r)) => {
                tracing::info!(subnet = %r.subnet, via = %r.public_ip, "route removed");
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

    async fn drain(&mut self, now: Timestamp) -> Result<()> {
        loop {
            let (ops, events): (Vec<_>, Vec<_>) = {
                let mut node = lock(&self.node);
                (
                    std::iter::from_fn(|| node.poll_store_op()).collect(),
                    std::iter::from_fn(|| node.poll_event()).collect(),
                )
            };
            let deferred = self.deferred_watch.is_some() && self.lease_reported;
            if ops.is_empty() && events.is_empty() && !deferred {
                return Ok(());
            }
            for (id, op) in ops {
                self.perform(id, op);
            }
            for event in events {
                self.lease_reported |= matches!(event, NodeEvent::Lease(_));
                self.on_event(event, now).await?;
            }
            if self.lease_reported {
                if let Some((id, op)) = self.deferred_watch.take() {
                    self.perform(id, op);
                }
            }
        }
    }

    /// Runs until `shutdown` turns true or the node fails; then stops the datapath
    /// (keeping the lease in the store).
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<()> {
        let span = tracing::info_span!("node", name = %self.name);
        let result = self.event_loop(&mut shutdown).instrument(span).await;
        if let Some((_, task)) = self.watch.take() {
            task.abort();
        }
        let stopped = self.backend.stop().await;
        match lock(&self.node).lease() {
            Some(lease) => {
                tracing::info!(subnet = %lease.key, "stopping; the lease is kept for the next start")
            }
            None => tracing::info!("stopping"),
        }
        result.and(stopped)
    }

    /// Drop counts by reason and the datapath's packet counts, as JSON.
    fn stats(&self) -> serde_json::Value {
        let node = lock(&self.node);
        let drops: serde_json::Map<String, serde_json::Value> = node
            .drops()
            .iter()
            .map(|(reason, n)| (reason.as_str().to_string(), n.into()))
            .collect();
        let routes: Vec<String> = node
            .routes()
            .routes()
            .map(|r| r.subnet.to_string())
            .collect();
        let lease = node.lease().map(|l| l.key.to_string());
        drop(node);
        serde_json::json!({
            "lease": lease,
            "routes": routes,
            "drops": drops,
            "forward": self.backend.counters_json(),
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
        self.drain(wall_now()).await?;
        let mut stats_tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let sleep = match lock(&self.node).poll_timeout() {
                Some(at) => at.saturating_since(wall_now()),
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                msg = self.rx.recv() => {
                    let now = wall_now();
                    let current = self.watch.as_ref().map(|(g, _)| *g);
                    let mut node = lock(&self.node);
                    match msg {
                        Some(Msg::Done(id, result)) => node.handle_store_result(id, result, now),
                        Some(Msg::Watch(generation, batch)) if current == Some(generation) => {
                            match batch {
                                Ok(events) => node.handle_watch_events(&events, now),
                                Err(e) => node.handle_watch_error(e, now),
                            }
                        }
                        Some(Msg::Watch(..)) => {}
                        None => bail!("internal channel closed"),
                    }
                }
                _ = tokio::time::sleep(sleep) => lock(&self.node).handle_timeout(wall_now()),
                _ = stats_tick.tick() => self.write_stats(),
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        return Ok(());
                    }
                }
            }
            self.drain(wall_now()).await?;
        }
    }
}
