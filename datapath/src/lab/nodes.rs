//! The lab's nodes as this process runs them: one daemon task per running node, each
//! with its own stop switch, and one status channel per node that outlives its starts
//! and stops, so that whoever waits on a node keeps waiting across a restart.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use super::LabError;
use crate::daemon::{run_node, DaemonError, NodeSetup, NodeStatus};

/// One node: its status, and its stop switch while it runs.
#[derive(Debug)]
struct LabNode {
    status: watch::Sender<NodeStatus>,
    stop: Option<watch::Sender<bool>>,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct Nodes {
    nodes: BTreeMap<String, LabNode>,
    tasks: JoinSet<(String, Result<(), DaemonError>)>,
}

impl Nodes {
    /// Knows node `name` (not running yet).
    pub fn add(&mut self, name: &str) {
        let (status, _) = watch::channel(NodeStatus {
            state: crate::daemon::NodeState::Stopped,
            ..NodeStatus::default()
        });
        self.nodes
            .insert(name.to_string(), LabNode { status, stop: None });
    }

    fn node(&mut self, name: &str) -> Result<&mut LabNode, LabError> {
        let have = self.nodes.keys().cloned().collect::<Vec<_>>().join(", ");
        self.nodes.get_mut(name).ok_or_else(|| LabError::NoNode {
            name: name.to_string(),
            have,
        })
    }

    /// Whether `name`'s daemon runs (it may have ended on its own since: see its status).
    pub fn is_running(&self, name: &str) -> bool {
        self.nodes
            .get(name)
            .is_some_and(|n| n.stop.is_some() && !n.status.borrow().ended())
    }

    /// Starts `name`'s daemon with `setup`. Its status says `running` at once (with no
    /// lease yet), so nobody sees the lease of its previous run as current.
    pub fn start(&mut self, name: &str, setup: NodeSetup) -> Result<(), LabError> {
        let node = self.node(name)?;
        if node.stop.is_some() && !node.status.borrow().ended() {
            return Err(LabError::AlreadyRunning(name.to_string()));
        }
        node.status.send_replace(NodeStatus::default());
        let (stop, stopped) = watch::channel(false);
        node.stop = Some(stop);
        let status = node.status.clone();
        let name = name.to_string();
        self.tasks
            .spawn(async move { (name.clone(), run_node(setup, stopped, status).await) });
        Ok(())
    }

    /// Stops `name`'s daemon and waits until its datapath is gone.
    pub async fn stop(&mut self, name: &str) -> Result<(), LabError> {
        let node = self.node(name)?;
        let Some(stop) = node.stop.take() else {
            return Err(LabError::NotRunning(name.to_string()));
        };
        let mut status = node.status.subscribe();
        if status.borrow().ended() {
            return Err(LabError::NotRunning(name.to_string()));
        }
        let _ = stop.send(true);
        // The daemon publishes its end last, after its backend stopped.
        let _ = status.wait_for(NodeStatus::ended).await;
        Ok(())
    }

    /// Stops every node and waits for every daemon task.
    pub async fn stop_all(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(stop) = node.stop.take() {
                let _ = stop.send(true);
            }
        }
        while let Some(done) = self.tasks.join_next().await {
            if let Ok((name, Err(e))) = done {
                tracing::error!(node = %name, error = %e, "node failed while stopping");
            }
        }
    }

    /// Logs the daemons that ended on their own (their status says so already).
    pub fn reap(&mut self) {
        while let Some(done) = self.tasks.try_join_next() {
            if let Ok((name, Err(e))) = done {
                tracing::warn!(node = %name, error = %e, "node exited");
            }
        }
    }

    /// `name`'s status now.
    pub fn status(&self, name: &str) -> Option<NodeStatus> {
        self.nodes.get(name).map(|n| n.status.borrow().clone())
    }

    /// Waits (at most `timeout`) until `name`'s status satisfies `pred`; returns it.
    pub async fn wait_for(
        &self,
        name: &str,
        timeout: Duration,
        what: &str,
        pred: impl FnMut(&NodeStatus) -> bool,
    ) -> Result<NodeStatus, LabError> {
        let mut rx = self
            .nodes
            .get(name)
            .ok_or_else(|| LabError::NoNode {
                name: name.to_string(),
                have: self.nodes.keys().cloned().collect::<Vec<_>>().join(", "),
            })?
            .status
            .subscribe();
        let waited = tokio::time::timeout(timeout, async {
            rx.wait_for(pred).await.map(|status| status.clone())
        })
        .await;
        match waited {
            Ok(Ok(status)) => Ok(status),
            // The sender lives in `self`: it cannot close while we borrow it.
            Ok(Err(_)) | Err(_) => Err(LabError::Timeout {
                node: name.to_string(),
                what: what.to_string(),
                waited: timeout,
            }),
        }
    }
}
