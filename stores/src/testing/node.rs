//! A thin async driver of `weft_core::node::Node`, as the daemon's, for tests and
//! benchmarks: it performs the node's store operations on tokio tasks, runs its watch,
//! fires its timeouts by the wall clock, and hands every [`NodeEvent`] to the caller.
//!
//! Like the daemon, it opens the node's first watch only once the node has reported on
//! its lease (acquired, or failed to): see `src/daemon/driver.rs` for why.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use weft_core::node::{Node, NodeConfig, NodeEvent, OpId, StoreOp, StoreOutput};
use weft_core::store::{Store, StoreError, WatchEvent};

use crate::clock::wall_now;

enum Msg {
    Done(OpId, Result<StoreOutput, StoreError>),
    Watch(u64, Result<Vec<WatchEvent>, StoreError>),
}

/// A node running on its own task; see the module docs.
#[derive(Debug)]
pub struct NodeRunner {
    events: mpsc::UnboundedReceiver<NodeEvent>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Node>,
}

impl NodeRunner {
    /// Starts a node with `config` and `seed` against `store`.
    pub fn spawn(store: Arc<dyn Store>, config: NodeConfig, seed: u64) -> NodeRunner {
        let (events_tx, events) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let node = Node::new(config, seed, wall_now());
        let task = tokio::spawn(run(store, node, events_tx, stop_rx));
        NodeRunner {
            events,
            stop: Some(stop_tx),
            task,
        }
    }

    /// The next event, or `None` if none comes within `patience`.
    pub async fn next_event(&mut self, patience: Duration) -> Option<NodeEvent> {
        tokio::time::timeout(patience, self.events.recv())
            .await
            .ok()
            .flatten()
    }

    /// Reads events until one matches `wanted` and returns it; `None` after `patience`.
    pub async fn wait_for(
        &mut self,
        patience: Duration,
        mut wanted: impl FnMut(&NodeEvent) -> bool,
    ) -> Option<NodeEvent> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let event = self.next_event(left).await?;
            if wanted(&event) {
                return Some(event);
            }
        }
    }

    /// Stops the node (its lease stays in the store) and returns it for inspection.
    pub async fn stop(mut self) -> Node {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.await {
            Ok(node) => node,
            Err(e) => panic!("node task failed: {e}"),
        }
    }
}

fn perform(store: &Arc<dyn Store>, id: OpId, op: StoreOp, tx: &mpsc::UnboundedSender<Msg>) {
    let (store, tx) = (store.clone(), tx.clone());
    tokio::spawn(async move {
        if let Some(result) = crate::perform(store.as_ref(), op).await {
            let _ = tx.send(Msg::Done(id, result));
        }
    });
}

fn watch(
    store: &Arc<dyn Store>,
    prefix: String,
    from: u64,
    generation: u64,
    tx: &mpsc::UnboundedSender<Msg>,
) -> JoinHandle<()> {
    let (store, tx) = (store.clone(), tx.clone());
    tokio::spawn(async move {
        crate::forward_watch(store.as_ref(), &prefix, from, |batch| {
            tx.send(Msg::Watch(generation, batch)).is_ok()
        })
        .await;
    })
}

async fn run(
    store: Arc<dyn Store>,
    mut node: Node,
    events: mpsc::UnboundedSender<NodeEvent>,
    mut stop: oneshot::Receiver<()>,
) -> Node {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut watcher: Option<(u64, JoinHandle<()>)> = None;
    let mut generation = 0;
    // The first watch waits for the node's first word on its lease.
    let mut deferred: Option<(String, u64)> = None;
    let mut reported = false;
    loop {
        while let Some((id, op)) = node.poll_store_op() {
            match op {
                StoreOp::Watch { prefix, from } if !reported && generation == 0 => {
                    deferred = Some((prefix, from));
                }
                StoreOp::Watch { prefix, from } => {
                    if let Some((_, task)) = watcher.take() {
                        task.abort();
                    }
                    generation += 1;
                    let task = watch(&store, prefix, from, generation, &tx);
                    watcher = Some((generation, task));
                }
                op => perform(&store, id, op, &tx),
            }
        }
        while let Some(event) = node.poll_event() {
            reported |= matches!(event, NodeEvent::Lease(_));
            let _ = events.send(event);
        }
        if reported {
            if let Some((prefix, from)) = deferred.take() {
                generation += 1;
                let task = watch(&store, prefix, from, generation, &tx);
                watcher = Some((generation, task));
            }
        }
        let sleep = node.poll_timeout().map_or(Duration::from_secs(3600), |at| {
            at.saturating_since(wall_now())
        });
        tokio::select! {
            msg = rx.recv() => {
                let now = wall_now();
                match msg {
                    Some(Msg::Done(id, result)) => node.handle_store_result(id, result, now),
                    Some(Msg::Watch(g, batch)) if watcher.as_ref().map(|w| w.0) == Some(g) => {
                        match batch {
                            Ok(batch) => node.handle_watch_events(&batch, now),
                            Err(e) => node.handle_watch_error(e, now),
                        }
                    }
                    Some(Msg::Watch(..)) => {}
                    None => break,
                }
            }
            () = tokio::time::sleep(sleep) => node.handle_timeout(wall_now()),
            _ = &mut stop => break,
        }
    }
    if let Some((_, task)) = watcher.take() {
        task.abort();
    }
    node
}
