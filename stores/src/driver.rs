//! The one async driver of a `weft_core::node::Node`: the daemon, the lab and the tests
//! all run their nodes through it.
//!
//! It holds no policy. It performs each store operation the node asks for on a task of
//! its own (through the one mapping in `StoreOp::call`), runs the watch the node asks for
//! -- replacing the one it had: a node has one watch at a time -- and tags every batch with
//! the id of the operation that asked for it, and sleeps until the node's next timeout.
//! Which watch is current, when to re-list, how long to back off: the node decides, and
//! the simulator's driver feeds it the same way, so both run exactly the same behaviour.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use weft_core::node::{Node, OpId, StoreOp, StoreOutput};
use weft_core::store::{Revision, Store, StoreError, WatchEvent};

use crate::clock::wall_now;

/// What the store tasks hand back to the driver.
#[derive(Debug)]
enum Input {
    Done(
        OpId,
        &'static str,
        Duration,
        Result<StoreOutput, StoreError>,
    ),
    Watch(OpId, Result<Vec<WatchEvent>, StoreError>),
}

/// The upper bounds, in seconds, of the [`Latency`] buckets: 1 ms to 10 s, the range of
/// a store round trip from loopback to a store that is timing out.
pub const LATENCY_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How long one kind of store operation took, as a histogram over [`LATENCY_BUCKETS`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Latency {
    /// Operations per bucket (not cumulative); the last one is past the largest bound.
    pub buckets: Vec<u64>,
    /// Their total time, in microseconds.
    pub sum_micros: u64,
    /// How many there were.
    pub count: u64,
    /// How many of them failed.
    pub errors: u64,
}

impl Latency {
    fn observe(&mut self, took: Duration, failed: bool) {
        if self.buckets.len() != LATENCY_BUCKETS.len() + 1 {
            self.buckets = vec![0; LATENCY_BUCKETS.len() + 1];
        }
        let secs = took.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|&bound| secs <= bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i] += 1;
        self.sum_micros = self
            .sum_micros
            .saturating_add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
        self.count += 1;
        self.errors += u64::from(failed);
    }
}

/// What the driver did with the store: the latency of every operation by kind (`list`,
/// `create`, `renew`), and the watches it ran.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DriverStats {
    /// Latency by operation.
    pub ops: BTreeMap<String, Latency>,
    /// Watches started: the first, then one for every reconnect or re-list.
    pub watches_started: u64,
    /// Watch events delivered to the node.
    pub watch_events: u64,
    /// Watches that ended in an error (the node then re-lists or resumes).
    pub watch_errors: u64,
}

/// The name of a store operation, for [`DriverStats`].
fn op_name(op: &StoreOp) -> &'static str {
    match op {
        StoreOp::List { .. } => "list",
        StoreOp::Create { .. } => "create",
        StoreOp::Renew { .. } => "renew",
        StoreOp::Watch { .. } => "watch",
    }
}

/// See the module docs.
#[derive(Debug)]
pub struct NodeDriver {
    store: Arc<dyn Store>,
    node: Node,
    tx: mpsc::UnboundedSender<Input>,
    rx: mpsc::UnboundedReceiver<Input>,
    watch: Option<WatchTask>,
    stats: DriverStats,
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
            stats: DriverStats::default(),
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

    /// What the driver did with the store so far.
    pub fn stats(&self) -> &DriverStats {
        &self.stats
    }

    /// Starts every store operation the node has asked for.
    pub fn perform_pending(&mut self) {
        while let Some((id, op)) = self.node.poll_store_op() {
            let (store, tx) = (self.store.clone(), self.tx.clone());
            if let StoreOp::Watch { prefix, from } = op {
                self.stats.watches_started += 1;
                self.watch = Some(WatchTask(tokio::spawn(async move {
                    forward_watch(store.as_ref(), &prefix, from, |batch| {
                        tx.send(Input::Watch(id, batch)).is_ok()
                    })
                    .await;
                })));
                continue;
            }
            tokio::spawn(async move {
                let started = Instant::now();
                if let Some(result) = crate::perform(store.as_ref(), &op).await {
                    let took = started.elapsed();
                    let _ = tx.send(Input::Done(id, op_name(&op), took, result));
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
                    Some(Input::Done(id, op, took, result)) => {
                        self.stats.ops.entry(op.to_string()).or_default().observe(took, result.is_err());
                        self.node.handle_store_result(id, result, now);
                    }
                    Some(Input::Watch(id, Ok(events))) => {
                        self.stats.watch_events += events.len() as u64;
                        self.node.handle_watch_events(id, &events, now);
                    }
                    Some(Input::Watch(id, Err(e))) => {
                        self.stats.watch_errors += 1;
                        self.node.handle_watch_error(id, e, now);
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_hold_their_upper_bound_and_overflow_goes_last() {
        let mut l = Latency::default();
        l.observe(Duration::from_millis(1), false);
        l.observe(Duration::from_micros(1_001), false);
        l.observe(Duration::from_secs(10), true);
        l.observe(Duration::from_secs(11), false);
        assert_eq!(l.buckets.len(), LATENCY_BUCKETS.len() + 1);
        assert_eq!(l.buckets[0], 1, "1 ms is in the 1 ms bucket: {l:?}");
        assert_eq!(l.buckets[1], 1, "just over 1 ms is in the next: {l:?}");
        assert_eq!(l.buckets[LATENCY_BUCKETS.len() - 1], 1, "10 s: {l:?}");
        assert_eq!(
            l.buckets[LATENCY_BUCKETS.len()],
            1,
            "past the last bound: {l:?}"
        );
        assert_eq!((l.count, l.errors), (4, 1));
        assert_eq!(l.sum_micros, 21_002_001);
    }
}
