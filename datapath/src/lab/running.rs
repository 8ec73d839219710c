//! A lab being built and run by this process: its store, its namespaces (recorded in
//! the state file as they are made), its nodes' daemons and their containers, wired as
//! soon as each node's status shows a lease.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use weft_core::lease::LeaseKey;
use weft_core::store::{config_key, subnets_prefix, Store, DEFAULT_PREFIX};

use super::control::{LabStatus, NodeReport};
use super::nodes::Nodes;
use super::spec::LabSpec;
use super::state::{self, LabState};
use super::{topology, LabError};
use crate::daemon::NodeSetup;
use crate::iface::IfaceSelector;

/// How long a starting node may take to hold a lease before the lab gives up on it.
const LEASE_WAIT: Duration = Duration::from_secs(30);

/// See the module docs.
#[derive(Debug)]
pub struct Running {
    dir: PathBuf,
    spec: LabSpec,
    /// What exists, as the state file records it.
    pub state: LabState,
    store: Arc<dyn Store>,
    paths: BTreeMap<String, PathBuf>,
    /// The nodes' daemons and statuses.
    pub nodes: Nodes,
    seed: u64,
    starts: u64,
}

impl Running {
    /// Opens the lab's store (`state.store`) and writes the network config and the
    /// reservations to it; builds nothing yet. `seed` seeds every node start.
    pub async fn open(
        dir: &Path,
        spec: LabSpec,
        mut state: LabState,
        seed: u64,
    ) -> Result<Running, LabError> {
        state.network = spec.network;
        state.ipv6_network = spec.ipv6_network;
        state.save(dir)?;
        let store: Arc<dyn Store> =
            Arc::from(weft_stores::open(&state.store).await.map_err(|cause| {
                LabError::OpenStore {
                    url: state.store.clone(),
                    cause,
                }
            })?);
        let running = Running {
            dir: dir.to_path_buf(),
            spec,
            state,
            store,
            paths: BTreeMap::new(),
            nodes: Nodes::default(),
            seed,
            starts: 0,
        };
        let config = running.spec.config_text.trim().as_bytes().to_vec();
        running
            .put(
                &config_key(DEFAULT_PREFIX),
                &config,
                "writing the network config",
            )
            .await?;
        for (subnet, ip) in running.spec.reservations.clone() {
            running.reserve(subnet, ip).await?;
        }
        Ok(running)
    }

    async fn put(&self, key: &str, value: &[u8], what: &str) -> Result<(), LabError> {
        self.store
            .put(key, value)
            .await
            .map(|_| ())
            .map_err(|cause| LabError::Store {
                what: what.to_string(),
                cause,
            })
    }

    /// Writes a reservation as an operator writes one: the subnet's key, no TTL.
    pub async fn reserve(&self, subnet: Ipv4Net, ip: Ipv4Addr) -> Result<(), LabError> {
        let key = format!("{}{}", subnets_prefix(DEFAULT_PREFIX), LeaseKey::v4(subnet));
        let value = format!(r#"{{"PublicIP":"{ip}"}}"#);
        self.put(&key, value.as_bytes(), "writing a reservation")
            .await
    }

    /// Deletes a lease (by its key, `10.5.3.0-24`), as an operator would.
    pub async fn delete_lease(&self, key: &str) -> Result<(), LabError> {
        let key = format!("{}{key}", subnets_prefix(DEFAULT_PREFIX));
        self.store
            .delete(&key)
            .await
            .map(|_| ())
            .map_err(|cause| LabError::Store {
                what: format!("deleting {key}"),
                cause,
            })
    }

    /// Every valid lease in the store: its key and its IPv4 subnet.
    pub async fn leases(&self) -> Result<Vec<(String, Ipv4Net)>, LabError> {
        let prefix = subnets_prefix(DEFAULT_PREFIX);
        let listing = self
            .store
            .list(&prefix)
            .await
            .map_err(|cause| LabError::Store {
                what: "listing the leases".into(),
                cause,
            })?;
        let (leases, _) = weft_core::lease::decode_all(&prefix, &listing.entries);
        Ok(leases
            .into_iter()
            .filter_map(|l| Some((l.key.to_string(), l.key.ipv4?)))
            .collect())
    }

    /// Builds the namespaces, starts the nodes that start with the lab and wires their
    /// containers. On an error, [`Running::teardown`] removes what was made.
    pub async fn build(&mut self) -> Result<(), LabError> {
        let (underlay, bridge) = topology::underlay(&mut self.state, &self.dir).await?;
        for (i, node) in self.spec.nodes.clone().iter().enumerate() {
            let at = (i + 1, node.name.as_str(), node.ip, node.ipv6);
            let path = topology::node(&mut self.state, &self.dir, &underlay, bridge, at).await?;
            self.state.nodes.push(state::Node {
                name: node.name.clone(),
                public_ip: node.ip,
                public_ipv6: node.ipv6,
                subnet: None,
                ipv6_subnet: None,
                containers: Vec::new(),
            });
            self.state.save(&self.dir)?;
            let node_dir = self.dir.join(&node.name);
            std::fs::create_dir_all(&node_dir).map_err(|cause| LabError::State {
                path: node_dir,
                cause,
            })?;
            self.paths.insert(node.name.clone(), path);
            self.nodes.add(&node.name);
        }
        for node in self.spec.nodes.clone() {
            if node.start {
                self.start(&node.name)?;
            }
        }
        if let Some(reason) = self.wire().await?.into_iter().next() {
            return Err(LabError::NoLease(reason));
        }
        self.state.ready = true;
        self.state.save(&self.dir)
    }

    /// Starts (or restarts) a node's daemon, with a seed of its own for each start.
    pub fn start(&mut self, name: &str) -> Result<(), LabError> {
        let path = self
            .paths
            .get(name)
            .cloned()
            .ok_or_else(|| LabError::NoNode {
                name: name.to_string(),
                have: self
                    .spec
                    .nodes
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        self.starts += 1;
        let setup = NodeSetup {
            name: name.to_string(),
            store: self.store.clone(),
            prefix: DEFAULT_PREFIX.to_string(),
            config: self.spec.config.clone(),
            netns: Some(path),
            iface: IfaceSelector {
                can_reach: None,
                ifaces: vec!["eth0".into()],
                regexes: Vec::new(),
                ipv6_only: false,
            },
            public_ip: None,
            public_ipv6: None,
            subnet_file: self.dir.join(name).join("subnet.env"),
            wg_key_file: self.dir.join(name).join("wgkey"),
            firewall: crate::nft::FirewallSettings::none(),
            lease_ttl: self.spec.lease_ttl,
            renew_margin: self.spec.renew_margin,
            tun_name: "weft0".into(),
            seed: weft_sim::rng::derive(self.seed, "lab node start", self.starts),
        };
        self.nodes.start(name, setup)
    }

    /// Waits for each running node's lease, then wires its containers (once). A node
    /// that reports it cannot get one (out of subnets) is left unwired, not waited for:
    /// returns why, one line per such node. A node that ended is an error.
    pub async fn wire(&mut self) -> Result<Vec<String>, LabError> {
        let mut unwired = Vec::new();
        for k in 0..self.state.nodes.len() {
            let name = self.state.nodes[k].name.clone();
            let wanted = self
                .spec
                .node(&name)
                .map(|n| n.containers.clone())
                .unwrap_or_default();
            let have = self.state.nodes[k].containers.len();
            if !self.nodes.is_running(&name) || have >= wanted.len() {
                continue;
            }
            let status = self
                .nodes
                .wait_for(&name, LEASE_WAIT, "a lease", |s| {
                    s.holds_lease() || s.ended() || !s.reported.is_empty()
                })
                .await?;
            if status.ended() {
                return Err(LabError::NodeFailed {
                    node: name,
                    error: status.error.unwrap_or_else(|| "it stopped".into()),
                });
            }
            let Some(lease) = &status.lease else {
                let why = status.reported.last().cloned().unwrap_or_default();
                unwired.push(format!("{name}: {why}"));
                continue;
            };
            let (subnet, subnet6) = (lease.subnet, lease.ipv6_subnet);
            self.state.nodes[k].subnet = subnet.map(|s| s.to_string());
            self.state.nodes[k].ipv6_subnet = subnet6.map(|s| s.to_string());
            let path = self.paths[&name].clone();
            let mtu = status.mtu.unwrap_or(1472);
            for (j, cname) in wanted.iter().enumerate().skip(have) {
                let c = topology::container(
                    &mut self.state,
                    &self.dir,
                    (&name, &path),
                    (subnet, subnet6),
                    mtu,
                    (j + 1, cname),
                )
                .await?;
                self.state.nodes[k].containers.push(c);
                self.state.save(&self.dir)?;
            }
        }
        Ok(unwired)
    }

    /// The whole lab, with every node's status now.
    pub fn status(&self) -> LabStatus {
        LabStatus {
            pid: self.state.pid,
            live: true,
            ready: self.state.ready,
            store: self.state.store.clone(),
            network: self.spec.network,
            ipv6_network: self.spec.ipv6_network,
            underlay: topology::UNDERLAY,
            nodes: self
                .state
                .nodes
                .iter()
                .map(|n| NodeReport {
                    name: n.name.clone(),
                    public_ip: n.public_ip,
                    public_ipv6: n.public_ipv6,
                    containers: n.containers.clone(),
                    status: self.nodes.status(&n.name),
                })
                .collect(),
        }
    }

    /// Stops every node, then removes every namespace and file the lab made (the store
    /// too when it is `owned_store`).
    pub async fn teardown(&mut self, owned_store: Option<&Path>) -> Result<(), LabError> {
        self.nodes.stop_all().await;
        super::clean(&mut self.state, &self.dir, owned_store).await
    }
}
