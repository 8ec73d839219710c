//! What a running lab is made of, kept in a file so that `status`, `exec` and `down`
//! (from another shell, or after a crash of `up`) know what exists.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// Every namespace the lab makes starts with this, unless `--prefix` says otherwise.
pub const DEFAULT_PREFIX: &str = "weft-lab-";

/// One container: a namespace behind its node's bridge.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Container {
    /// Short name, e.g. `n1-c1`.
    pub name: String,
    /// Its address in the node's subnet.
    pub ip: Option<Ipv4Addr>,
}

/// One node: a namespace on the underlay bridge running a weft node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Node {
    /// Short name, e.g. `n1`.
    pub name: String,
    /// Its underlay (public) address.
    pub public_ip: Ipv4Addr,
    /// Its leased subnet, once known.
    pub subnet: Option<String>,
    /// Its containers.
    pub containers: Vec<Container>,
}

/// The whole lab.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Lab {
    /// The PID of `weft lab up`.
    pub pid: u32,
    /// The prefix of every namespace name.
    pub prefix: String,
    /// The store URL the nodes use.
    pub store: String,
    /// Every namespace made so far, in creation order (deleted in reverse).
    pub namespaces: Vec<String>,
    /// The nodes.
    pub nodes: Vec<Node>,
    /// True once every node holds a lease and every container is wired.
    pub ready: bool,
}

/// The state file in `dir`.
pub fn file(dir: &Path) -> PathBuf {
    dir.join("lab.json")
}

impl Lab {
    /// Reads the state file, `None` if there is none.
    pub fn load(dir: &Path) -> Result<Option<Lab>> {
        let path = file(dir);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map(Some).with_context(|| {
                format!(
                    "{} is corrupt; remove it after checking `ip netns`",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Writes the state file atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let path = file(dir);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// The namespace of a node or container, by short name (`n1`, `n1-c1`).
    pub fn namespace_of(&self, name: &str) -> Option<String> {
        let known = self
            .nodes
            .iter()
            .any(|n| n.name == name || n.containers.iter().any(|c| c.name == name));
        known.then(|| format!("{}{name}", self.prefix))
    }
}
