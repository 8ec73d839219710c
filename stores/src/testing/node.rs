//! A node on its own task, for tests and benchmarks: the daemon's [`NodeDriver`], with
//! every [`NodeEvent`] handed to the caller.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use weft_core::node::{Node, NodeConfig, NodeEvent};
use weft_core::store::Store;

use crate::clock::wall_now;
use crate::driver::NodeDriver;

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
        let task = tokio::spawn(run(NodeDriver::new(store, node), events_tx, stop_rx));
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

async fn run(
    mut driver: NodeDriver,
    events: mpsc::UnboundedSender<NodeEvent>,
    mut stop: oneshot::Receiver<()>,
) -> Node {
    loop {
        while let Some(event) = driver.node_mut().poll_event() {
            let _ = events.send(event);
        }
        tokio::select! {
            () = driver.step() => {}
            _ = &mut stop => break,
        }
    }
    driver.into_node()
}
