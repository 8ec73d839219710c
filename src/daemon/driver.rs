//! The daemon's event loop: performs the node's store operations and acts on its events.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use weft_core::allocator::{AllocEvent, LossReason};
use weft_core::config::NetworkConfig;
use weft_core::node::{Node, NodeConfig, NodeEvent, OpId, StoreOp, StoreOutput};
use weft_core::router::RouteChange;
use weft_core::store::{Store, StoreError, WatchEvent};
use weft_core::subnet_env::SubnetEnv;
use weft_core::Timestamp;
use weft_stores::clock::wall_now;

use super::DaemonArgs;
use crate::subnet_file;

/// What the store tasks report back to the loop.
#[derive(Debug)]
enum Msg {
    Done(OpId, Result<StoreOutput, StoreError>),
    Watch(u64, Result<Vec<WatchEvent>, StoreError>),
}

pub struct Driver {
    store: Arc<dyn Store>,
    node: Node,
    network: Option<ipnet::Ipv4Net>,
    ipv6_network: Option<ipnet::Ipv6Net>,
    mtu: u32,
    ip_masq: bool,
    subnet_file: std::path::PathBuf,
    tx: mpsc::UnboundedSender<Msg>,
    rx: mpsc::UnboundedReceiver<Msg>,
    watch: Option<(u64, JoinHandle<()>)>,
    watch_gen: u64,
    /// The node's first watch, held back until the node has reported on its lease.
    deferred_watch: Option<(OpId, StoreOp)>,
    lease_reported: bool,
    skipped: u64,
}

impl Driver {
    pub fn new(
        store: Arc<dyn Store>,
        node_config: NodeConfig,
        config: &NetworkConfig,
        args: &DaemonArgs,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Driver {
            store,
            node: Node::new(node_config, rand::random(), wall_now()),
            network: config.network,
            ipv6_network: config.ipv6_network,
            mtu: args
                .underlay_mtu
                .saturating_sub(config.backend.kind.overhead()),
            ip_masq: args.ip_masq,
            subnet_file: args.subnet_file.clone(),
            tx,
            rx,
            watch: None,
            watch_gen: 0,
            deferred_watch: None,
            lease_reported: false,
            skipped: 0,
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
        match op {
            StoreOp::Watch { prefix, from } => {
                if let Some((_, task)) = self.watch.take() {
                    task.abort();
                }
                self.watch_gen += 1;
                let generation = self.watch_gen;
                let task = tokio::spawn(async move {
                    let mut watch = match store.watch(&prefix, from).await {
                        Ok(w) => w,
                        Err(e) => {
                            let _ = tx.send(Msg::Watch(generation, Err(e)));
                            return;
                        }
                    };
                    loop {
                        let batch = watch.next().await;
                        let failed = batch.is_err();
                        if tx.send(Msg::Watch(generation, batch)).is_err() || failed {
                            return;
                        }
                    }
                });
                self.watch = Some((generation, task));
            }
            op => {
                tokio::spawn(async move {
                    let result = match op {
                        StoreOp::List { prefix } => {
                            store.list(&prefix).await.map(StoreOutput::Listing)
                        }
                        StoreOp::Create { key, value, ttl } => store
                            .create(&key, &value, ttl)
                            .await
                            .map(StoreOutput::Entry),
                        StoreOp::Renew {
                            key,
                            create_revision,
                            value,
                            ttl,
                        } => store
                            .renew(&key, create_revision, &value, ttl)
                            .await
                            .map(StoreOutput::Entry),
                        StoreOp::Watch { .. } => unreachable!("handled above"),
                    };
                    let _ = tx.send(Msg::Done(id, result));
                });
            }
        }
    }

    /// Acts on one event; an error ends the daemon.
    fn on_event(&mut self, event: NodeEvent, now: Timestamp) -> Result<()> {
        match event {
            NodeEvent::Lease(AllocEvent::Acquired { lease, how }) => {
                tracing::info!(subnet = %lease.key, how = ?how, expires_in = ?lease.expires_at.map(|t| t.saturating_since(now)), "lease acquired");
                let env = SubnetEnv::for_lease(
                    self.network,
                    self.ipv6_network,
                    &lease.key,
                    self.mtu,
                    self.ip_masq,
                );
                subnet_file::write(&self.subnet_file, &env)?;
                tracing::info!(path = %self.subnet_file.display(), "wrote subnet file");
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
                tracing::info!(subnet = %r.subnet, via = %r.public_ip, "peer lease added");
            }
            NodeEvent::Route(RouteChange::Remove(r)) => {
                tracing::info!(subnet = %r.subnet, via = %r.public_ip, "peer lease removed");
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

    fn drain(&mut self, now: Timestamp) -> Result<()> {
        loop {
            let mut progressed = false;
            while let Some((id, op)) = self.node.poll_store_op() {
                self.perform(id, op);
                progressed = true;
            }
            while let Some(event) = self.node.poll_event() {
                self.lease_reported |= matches!(event, NodeEvent::Lease(_));
                self.on_event(event, now)?;
                progressed = true;
            }
            if self.lease_reported {
                if let Some((id, op)) = self.deferred_watch.take() {
                    self.perform(id, op);
                    progressed = true;
                }
            }
            if !progressed {
                return Ok(());
            }
        }
    }

    pub async fn run(mut self) -> Result<()> {
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sigint = signal(SignalKind::interrupt())?;
        self.drain(wall_now())?;
        loop {
            let sleep = match self.node.poll_timeout() {
                Some(at) => at.saturating_since(wall_now()),
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                msg = self.rx.recv() => {
                    let now = wall_now();
                    match msg {
                        Some(Msg::Done(id, result)) => self.node.handle_store_result(id, result, now),
                        Some(Msg::Watch(generation, batch)) => {
                            if self.watch.as_ref().map(|(g, _)| *g) == Some(generation) {
                                match batch {
                                    Ok(events) => self.node.handle_watch_events(&events, now),
                                    Err(e) => self.node.handle_watch_error(e, now),
                                }
                            }
                        }
                        None => bail!("internal channel closed"),
                    }
                }
                _ = tokio::time::sleep(sleep) => self.node.handle_timeout(wall_now()),
                _ = sigterm.recv() => break,
                _ = sigint.recv() => break,
            }
            self.drain(wall_now())?;
        }
        if let Some((_, task)) = self.watch.take() {
            task.abort();
        }
        match self.node.lease() {
            Some(lease) => {
                tracing::info!(subnet = %lease.key, "stopping; the lease is kept for the next start")
            }
            None => tracing::info!("stopping"),
        }
        Ok(())
    }
}
