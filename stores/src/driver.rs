//! The one async driver of a `weft_core::node::Node`: the daemon, the lab and the tests
//! all run their nodes through it.
//!
//! It holds no policy. It performs each store operation the node asks for on a task of
//! its own (through the one mapping in `StoreOp::call`), runs the watch the node asks for
//! -- replacing the one it had: a node has one watch at a time -- and tags every batch with
//! the id of the operation that asked for it, and sleeps until the node's next timeout.
//! Which watch is current, when to re-list, how long to back off: the node decides, and
//! the simulator's driver feeds it the same way, so both run exactly the same behaviour.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use weft_core::node::{Node, OpId, StoreOp, StoreOutput};
use weft_core::store::{Revision, Store, StoreError, WatchEvent};

use crate::clock::wall_now;

/// What the store tasks hand back to the driver.
#[derive(Debug)]
enum Input {
    Done(OpId, Result<StoreOutput, StoreError>),
    Watch(OpId, Result<Vec<WatchEvent>, StoreError>),
}

/// See the module docs.
#[derive(Debug)]
pub struct NodeDriver {
    store: Arc<dyn Store>,
    node: Node,
    tx: mpsc::UnboundedSender<Input>,
    rx: mpsc::UnboundedReceiver<Input>,
    watch: Option<WatchTask>,
}

/// The watch's task, aborted when replaced or dropped.
#[derive(Debug)]
struct WatchTask(JoinHandle<()>);

impl Drop for WatchTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl NodeDriver {
    /// Drives `node` against `store`.
    pub fn new(store: Arc<dyn Store>, node: Node) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        NodeDriver {
            store,
            node,
            tx,
            rx,
            watch: None,
        }
    }

    /// The node, to read.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The node, to poll its events and forwarding table.
    pub fn node_mut(&mut self) -> &mut Node {
        &mut self.node
    }

    /// Starts every store operation the node has asked for.
    pub fn perform_pending(&mut self) {
        while let Some((id, op)) = self.node.poll_store_op() {
            let (store, tx) = (self.store.clone(), self.tx.clone());
            if let StoreOp::Watch { prefix, from } = op {
                self.watch = Some(WatchTask(tokio::spawn(async move {
                    forward_watch(store.as_ref(), &prefix, from, |batch| {
                        tx.send(Input::Watch(id, batch)).is_ok()
                    })
                    .await;
                })));
                continue;
            }
            tokio::spawn(async move {
                if let Some(result) = crate::perform(store.as_ref(), &op).await {
                    let _ = tx.send(Input::Done(id, result));
                }
            });
        }
    }

    /// Starts what the node asked for, then waits for one input -- a store result, a
    /// watch batch or failure, the node's timeout -- and hands it to the node. Poll the
    /// node's events and forwarding table afterwards. Cancel-safe: an input is handed
    /// over whole or stays queued.
    pub async fn step(&mut self) {
        self.perform_pending();
        let sleep = self
            .node
            .poll_timeout()
            .map_or(Duration::from_secs(3600), |at| {
                at.saturating_since(wall_now())
            });
        tokio::select! {
            input = self.rx.recv() => {
                let now = wall_now();
                match input {
                    Some(Input::Done(id, result)) => self.node.handle_store_result(id, result, now),
                    Some(Input::Watch(id, Ok(events))) => self.node.handle_watch_events(id, &events, now),
                    Some(Input::Watch(id, Err(e))) => self.node.handle_watch_error(id, e, now),
                    // The driver holds a sender: the channel never closes.
                    None => {}
                }
            }
            () = tokio::time::sleep(sleep) => self.node.handle_timeout(wall_now()),
        }
        self.perform_pending();
    }

    /// Stops the watch and returns the node (its lease stays in the store).
    pub fn into_node(self) -> Node {
        self.node
    }
}

/// Runs a watch of `prefix` from revision `from`, handing every batch (and the error
/// that ends it) to `deliver`, until the watch fails or `deliver` returns false.
pub async fn forward_watch(
    store: &dyn Store,
    prefix: &str,
    from: Revision,
    mut deliver: impl FnMut(Result<Vec<WatchEvent>, StoreError>) -> bool,
) {
    let mut watch = match store.watch(prefix, from).await {
        Ok(w) => w,
        Err(e) => {
            deliver(Err(e));
            return;
        }
    };
    loop {
        let batch = watch.next().await;
        let failed = batch.is_err();
        if !deliver(batch) || failed {
            return;
        }
    }
}
