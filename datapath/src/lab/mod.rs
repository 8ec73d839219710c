//! The single-host lab: N weft nodes in network namespaces on one host, with containers
//! behind each, real TUN devices and kernel routes, leases in one store (an embedded
//! sled database unless told otherwise).
//!
//! [`up`] plans the lab ([`spec`]), builds the namespaces and links over netlink
//! ([`topology`]), runs every node's daemon in this one process ([`nodes`]: sled being
//! single-process; each node's TUN device, socket and netlink handle are opened inside
//! its namespace), wires the containers as soon as each node's status shows its lease
//! ([`running`]), answers `status` and `node stop|start` from other shells over a Unix
//! socket ([`control`]), and tears everything down again when stopped. The state file
//! ([`state`]) lets `exec` and `down` work from another shell, and `down` clean up after
//! a crash. [`play`] runs a scenario file against a lab built from it: the lab is a
//! second world beside the simulator, behind the same walker.

pub mod control;
pub mod nodes;
pub mod play;
pub mod probe;
pub mod report;
pub mod running;
pub mod spec;
pub mod state;
pub mod topology;
mod up;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use weft_core::store::StoreError;

pub use control::{LabStatus, NodeReport, Request, Response};
pub use running::Running;
pub use spec::{LabSpec, NodeSpec};
pub use state::LabState;
pub use up::{down, exec, status, up, UpOptions};

use crate::DatapathError;

/// Why a lab command failed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// Not root.
    #[error(
        "weft lab needs root: it creates network namespaces, links and TUN devices (try sudo)"
    )]
    NotRoot,
    /// No `/dev/net/tun`.
    #[error("weft lab needs TUN support: /dev/net/tun is missing (modprobe tun)")]
    NoTun,
    /// Another lab's process is alive in the same state directory.
    #[error("a lab is already up in {dir} (pid {pid}); run weft lab down first")]
    AlreadyUp {
        /// The state directory.
        dir: PathBuf,
        /// Its process.
        pid: u32,
    },
    /// The state file (or a directory beside it) could not be read or written.
    #[error("cannot use {path}: {cause}")]
    State {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        cause: std::io::Error,
    },
    /// The state file is not what weft writes.
    #[error("{path} is corrupt; remove it after checking `ip netns`: {cause}")]
    CorruptState {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        cause: serde_json::Error,
    },
    /// The lab's network config is unusable.
    #[error("the lab's network config: {0}")]
    Config(String),
    /// The scenario file is unreadable or invalid.
    #[error(transparent)]
    Scenario(#[from] weft_sim::scenario::ScenarioError),
    /// The scenario asks for something only the simulator can do.
    #[error(transparent)]
    Refused(#[from] weft_sim::walk::Refused),
    /// The store could not be opened.
    #[error("cannot open store {url}: {cause}")]
    OpenStore {
        /// Its URL.
        url: String,
        /// Why.
        cause: weft_stores::OpenError,
    },
    /// A store operation failed.
    #[error("{what}: {cause}")]
    Store {
        /// What was being done.
        what: String,
        /// The store's error.
        cause: StoreError,
    },
    /// A namespace, link or address could not be made or removed.
    #[error("{what}: {cause}")]
    Build {
        /// What was being built.
        what: String,
        /// The datapath's error.
        cause: DatapathError,
    },
    /// A node's subnet has no address left for one of its containers.
    #[error("container {container}: no address left in its node's subnet {subnet}")]
    NoRoom {
        /// The container.
        container: String,
        /// The subnet.
        subnet: IpNet,
    },
    /// No node or container of that name.
    #[error("no node or container {name:?} in the lab (have: {have})")]
    NoNode {
        /// The name asked for.
        name: String,
        /// The names there are.
        have: String,
    },
    /// The node is already running.
    #[error("{0} is already running")]
    AlreadyRunning(String),
    /// The node is not running.
    #[error("{0} is not running")]
    NotRunning(String),
    /// A node ended while the lab waited for it.
    #[error("node {node} failed: {error}")]
    NodeFailed {
        /// The node.
        node: String,
        /// How it ended.
        error: String,
    },
    /// A node of `weft lab up` could not get a lease.
    #[error("no lease for {0}")]
    NoLease(String),
    /// A node did not reach a state in time.
    #[error("{node}: no {what} after {waited:?}")]
    Timeout {
        /// The node.
        node: String,
        /// What was awaited.
        what: String,
        /// How long.
        waited: Duration,
    },
    /// No lab answers on the control socket.
    #[error("no running lab answers on {path}: {cause}")]
    Control {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        cause: std::io::Error,
    },
    /// A control message was malformed, or the lab refused a request.
    #[error("{0}")]
    Protocol(String),
    /// A command could not be run in a namespace.
    #[error("cannot run {command:?}: {cause}")]
    Exec {
        /// The program.
        command: String,
        /// Why.
        cause: std::io::Error,
    },
    /// The lab's process did not stop when asked.
    #[error("the lab's process (pid {0}) did not stop within 30 s")]
    DidNotStop(u32),
    /// Interrupted by a signal.
    #[error("interrupted")]
    Interrupted,
}

/// Refuses to start without root or `/dev/net/tun`, saying which is missing.
pub fn check_prerequisites() -> Result<(), LabError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(LabError::NotRoot);
    }
    if !Path::new("/dev/net/tun").exists() {
        return Err(LabError::NoTun);
    }
    Ok(())
}

/// Whether the process `pid` is alive.
pub fn alive(pid: u32) -> bool {
    use nix::sys::signal::kill;
    use nix::unistd::Pid;
    i32::try_from(pid).is_ok_and(|p| p > 0 && kill(Pid::from_raw(p), None).is_ok())
}

/// The store a lab in `dir` owns unless given another.
pub fn default_store(dir: &Path) -> PathBuf {
    dir.join("store")
}

/// `sled:` URL of [`default_store`].
pub fn default_store_url(dir: &Path) -> String {
    format!("sled:{}", default_store(dir).display())
}

/// Removes what the lab made: namespaces, then its files (and `owned_store`).
pub async fn clean(
    lab: &mut LabState,
    dir: &Path,
    owned_store: Option<&Path>,
) -> Result<(), LabError> {
    topology::teardown(lab, dir).await?;
    for node in &lab.nodes {
        let _ = std::fs::remove_dir_all(dir.join(&node.name));
    }
    if let Some(store) = owned_store {
        let _ = std::fs::remove_dir_all(store);
    }
    let _ = std::fs::remove_file(control::socket(dir));
    let _ = std::fs::remove_file(state::file(dir));
    let _ = std::fs::remove_dir(dir);
    Ok(())
}

/// Takes over `dir` for a new lab run by this process: refuses when another lab's
/// process is alive there, cleans up after one that died, and records the new lab.
pub async fn claim(dir: &Path, prefix: &str, store: String) -> Result<LabState, LabError> {
    if let Some(mut old) = LabState::load(dir)? {
        if alive(old.pid) {
            return Err(LabError::AlreadyUp {
                dir: dir.to_path_buf(),
                pid: old.pid,
            });
        }
        tracing::warn!(pid = old.pid, "cleaning up a lab whose process is gone");
        let owned = owned_store(&old, dir);
        clean(&mut old, dir, owned.as_deref()).await?;
    }
    let state = LabState {
        pid: std::process::id(),
        prefix: prefix.to_string(),
        store,
        ..LabState::default()
    };
    state.save(dir)?;
    Ok(state)
}

/// The store directory of `lab` if the lab owns it (it is [`default_store`]).
fn owned_store(lab: &LabState, dir: &Path) -> Option<PathBuf> {
    (lab.store == default_store_url(dir)).then(|| default_store(dir))
}

/// A container's address and namespace by its scenario name: `node` (its first
/// container) or `node/container`.
pub fn container(lab: &LabState, spec: &str) -> Result<(PathBuf, Ipv4Addr), LabError> {
    let (node, name) = match spec.split_once('/') {
        Some((n, c)) => (n, Some(c)),
        None => (spec, None),
    };
    let no_such = || LabError::NoNode {
        name: spec.to_string(),
        have: lab.names().join(", "),
    };
    let node = lab
        .nodes
        .iter()
        .find(|n| n.name == node)
        .ok_or_else(no_such)?;
    let c = match name {
        Some(c) => node
            .containers
            .iter()
            .find(|x| x.name == format!("{}-{c}", node.name)),
        None => node.containers.first(),
    }
    .ok_or_else(no_such)?;
    let ip = c.ip.ok_or_else(no_such)?;
    Ok((crate::netns::path(&format!("{}{}", lab.prefix, c.name)), ip))
}
