//! What a running lab is made of, kept in a file so that `status`, `exec` and `down`
//! (from another shell, or after a crash of `up`) know what exists.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use super::LabError;

/// Every namespace the lab makes starts with this, unless `--prefix` says otherwise.
pub const DEFAULT_PREFIX: &str = "weft-lab-";

/// One container: a namespace behind its node's bridge.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Container {
    /// Short name, e.g. `n1-c1`.
    pub name: String,
    /// Its address in the node's subnet.
    pub ip: Option<Ipv4Addr>,
    /// Its address in the node's IPv6 subnet (dual-stack labs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
}

/// One node: a namespace on the underlay bridge running a weft node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Node {
    /// Short name, e.g. `n1`.
    pub name: String,
    /// Its underlay (public) address.
    pub public_ip: Ipv4Addr,
    /// Its IPv6 underlay address (dual-stack labs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ipv6: Option<Ipv6Addr>,
    /// Its leased subnet, once known.
    pub subnet: Option<String>,
    /// Its leased IPv6 subnet, once known (dual-stack labs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_subnet: Option<String>,
    /// Its containers.
    pub containers: Vec<Container>,
}

/// The whole lab.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct LabState {
    /// The PID of the process running the lab (`weft lab up` or `weft lab play`).
    pub pid: u32,
    /// The prefix of every namespace name.
    pub prefix: String,
    /// The store URL the nodes use.
    pub store: String,
    /// The overlay network of the lab's config (absent in the files of older labs).
    pub network: Option<Ipv4Net>,
    /// The overlay's IPv6 network, when the config enables IPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_network: Option<Ipv6Net>,
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

impl LabState {
    /// Reads the state file, `None` if there is none.
    pub fn load(dir: &Path) -> Result<Option<LabState>, LabError> {
        let path = file(dir);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|cause| LabError::CorruptState { path, cause }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(cause) => Err(LabError::State { path, cause }),
        }
    }

    /// Writes the state file atomically: a reader in another shell sees the old file
    /// or the new one, never half of one.
    pub fn save(&self, dir: &Path) -> Result<(), LabError> {
        let path = file(dir);
        let failed = |cause| LabError::State {
            path: path.clone(),
            cause,
        };
        std::fs::create_dir_all(dir).map_err(failed)?;
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::from);
        text.and_then(|text| std::fs::write(&tmp, text))
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(failed)
    }

    /// Every node and container name, for messages.
    pub fn names(&self) -> Vec<String> {
        self.nodes
            .iter()
            .flat_map(|n| {
                std::iter::once(n.name.clone()).chain(n.containers.iter().map(|c| c.name.clone()))
            })
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn lab() -> LabState {
        LabState {
            pid: 4242,
            prefix: "wt-".into(),
            store: "sled:/run/x/store".into(),
            network: "10.5.0.0/16".parse().ok(),
            ipv6_network: None,
            namespaces: vec!["wt-underlay".into(), "wt-n1".into(), "wt-n1-c1".into()],
            nodes: vec![Node {
                name: "n1".into(),
                public_ip: Ipv4Addr::new(192, 0, 2, 11),
                public_ipv6: None,
                subnet: Some("10.5.3.0/24".into()),
                ipv6_subnet: None,
                containers: vec![Container {
                    name: "n1-c1".into(),
                    ip: Some(Ipv4Addr::new(10, 5, 3, 2)),
                    ipv6: None,
                }],
            }],
            ready: true,
        }
    }

    #[test]
    fn the_state_file_round_trips_and_a_missing_one_is_no_lab() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let sub = dir.path().join("lab");
        assert_eq!(LabState::load(&sub).ok(), Some(None));
        let state = lab();
        assert!(state.save(&sub).is_ok());
        assert_eq!(LabState::load(&sub).ok(), Some(Some(state)));
        assert!(
            !sub.join("lab.json.tmp").exists(),
            "the temporary file is renamed"
        );
    }

    #[test]
    fn a_corrupt_state_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::write(file(dir.path()), "{\"pid\": 1,").expect("written");
        let err = LabState::load(dir.path()).expect_err("corrupt");
        let text = err.to_string();
        assert!(text.contains("lab.json is corrupt"), "{text}");
    }

    #[test]
    fn a_state_file_of_an_older_weft_without_the_network_still_loads() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let old =
            r#"{"pid":1,"prefix":"p-","store":"sled:/s","namespaces":[],"nodes":[],"ready":false}"#;
        std::fs::write(file(dir.path()), old).expect("written");
        let state = LabState::load(dir.path()).ok().flatten().expect("loads");
        assert_eq!(state.network, None);
    }

    #[test]
    fn names_map_to_namespaces_only_when_the_lab_has_them() {
        let state = lab();
        assert_eq!(state.namespace_of("n1-c1").as_deref(), Some("wt-n1-c1"));
        assert_eq!(state.namespace_of("n1").as_deref(), Some("wt-n1"));
        assert_eq!(state.namespace_of("n2"), None);
        assert_eq!(state.names(), ["n1", "n1-c1"]);
    }
}
