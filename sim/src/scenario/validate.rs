//! Checks that serde cannot express: names that must exist, times within the run,
//! probabilities in range, a network config that flannel's rules accept.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use weft_core::config::{BackendType, NetworkConfig};

use crate::time::format_duration;

use super::model::{Expect, FaultFields, NetworkSection, Scenario, Step};

/// The name that stands for the store in partitions.
pub const STORE: &str = "store";

type Failure = (Range<usize>, String);

impl NetworkSection {
    /// The flannel network config as JSON text, from a JSON string or a TOML table of
    /// the same fields (what a real world writes to its store's config key).
    pub fn config_json(&self) -> Result<String, String> {
        config_json(self.config.get_ref())
    }

    /// The flannel network config, from a JSON string or a TOML table of the same fields;
    /// any backend (`weft lab play` runs them all on the real kernel).
    pub fn network_config(&self) -> Result<NetworkConfig, String> {
        network_config(self.config.get_ref())
    }

    /// [`NetworkSection::network_config`], refusing a backend the simulator does not
    /// model (see [`simulated`]).
    pub fn simulated_config(&self) -> Result<NetworkConfig, String> {
        simulated(self.network_config()?)
    }
}

/// The flannel network config JSON of `value`, a JSON string or a TOML table of its
/// fields (`[network] config` and the `set_config` step).
pub fn config_json(value: &toml::Value) -> Result<String, String> {
    Ok(match value {
        toml::Value::String(text) => text.clone(),
        table @ toml::Value::Table(_) => serde_json::to_string(table).map_err(|e| e.to_string())?,
        other => {
            return Err(format!(
                "config must be flannel's JSON as a string or a table of its fields, not a {}",
                other.type_str()
            ))
        }
    })
}

/// The flannel network config of `value` (see [`config_json`]), with an IPv4 network,
/// or IPv6 alone (`EnableIPv4: false`) with the alloc backend: the simulated datapath
/// and containers are IPv4, so an IPv6-only scenario checks leases and routes only.
/// Any backend (`weft lab play` runs them all on the real kernel).
pub fn network_config(value: &toml::Value) -> Result<NetworkConfig, String> {
    let json = config_json(value)?;
    let config = NetworkConfig::parse(&json).map_err(|e| format!("network config: {e}"))?;
    if config.ipv4_space().is_none()
        && !(config.ipv6_space().is_some() && config.backend.kind == BackendType::Alloc)
    {
        return Err(
            "network config: the simulator needs an IPv4 Network (IPv6 alone only with the alloc backend: its containers are IPv4)"
                .into(),
        );
    }
    Ok(config)
}

/// `config`, if the simulator models its backend: its datapath is flannel's udp one
/// (or none, for alloc).
pub fn simulated(config: NetworkConfig) -> Result<NetworkConfig, String> {
    if !matches!(config.backend.kind, BackendType::Udp | BackendType::Alloc) {
        return Err(format!(
            "network config: backend {} is not simulated (want udp or alloc); \
             weft lab play runs this scenario with it on the real kernel",
            config.backend.kind
        ));
    }
    Ok(config)
}

fn probability(name: &str, p: Option<f64>) -> Result<(), String> {
    match p {
        Some(p) if !(0.0..=1.0).contains(&p) => Err(format!(
            "{name} = {p} is not a probability (want 0.0 to 1.0)"
        )),
        _ => Ok(()),
    }
}

impl FaultFields {
    pub(crate) fn check(&self) -> Result<(), String> {
        probability("loss", self.loss)?;
        probability("duplicate", self.duplicate)?;
        probability("reorder", self.reorder)?;
        probability("corrupt", self.corrupt)?;
        if let Some(mtu) = self.mtu {
            if !(68..=65535).contains(&mtu) {
                return Err(format!("mtu = {mtu} is out of range (want 68 to 65535)"));
            }
        }
        Ok(())
    }
}

struct Names {
    containers: BTreeMap<String, BTreeSet<String>>,
}

impl Names {
    fn node(&self, name: &str) -> Result<(), String> {
        if self.containers.contains_key(name) {
            return Ok(());
        }
        let known: Vec<_> = self.containers.keys().map(String::as_str).collect();
        Err(format!(
            "unknown node {name:?} (the nodes are: {})",
            known.join(", ")
        ))
    }

    fn endpoint(&self, text: &str) -> Result<(), String> {
        let (node, container) = match text.split_once('/') {
            Some((n, c)) => (n, Some(c)),
            None => (text, None),
        };
        self.node(node)?;
        if let Some(c) = container {
            if !self.containers[node].contains(c) {
                return Err(format!("node {node:?} has no container {c:?}"));
            }
        }
        Ok(())
    }

    fn all<'a>(&self, names: impl IntoIterator<Item = &'a String>) -> Result<(), String> {
        names.into_iter().try_for_each(|n| self.node(n))
    }

    /// Node names, or `store` for the link between nodes and the store.
    fn all_or_store<'a>(&self, names: impl IntoIterator<Item = &'a String>) -> Result<(), String> {
        names
            .into_iter()
            .filter(|n| n.as_str() != STORE)
            .try_for_each(|n| self.node(n))
    }
}

pub(super) fn check(s: &Scenario) -> Result<(), Failure> {
    let duration = s.duration.get_ref().0;
    if duration.is_zero() {
        return Err((s.duration.span(), "duration must be above zero".into()));
    }
    let config = s
        .network
        .network_config()
        .map_err(|m| (s.network.config.span(), m))?;
    if s.network.renew_margin.0 >= s.network.lease_ttl.0 {
        return Err((
            s.network.config.span(),
            "renew_margin must be shorter than lease_ttl".into(),
        ));
    }
    if let Some(u) = &s.underlay {
        u.get_ref().check().map_err(|m| (u.span(), m))?;
    }
    let mut names = Names {
        containers: BTreeMap::new(),
    };
    let mut ips = BTreeSet::new();
    for node in &s.nodes {
        let (span, n) = (node.span(), node.get_ref());
        if n.name.is_empty() || n.name.contains('/') {
            return Err((
                span,
                format!("node name {:?} must be non-empty, without '/'", n.name),
            ));
        }
        if !ips.insert(n.ip) && !n.duplicate_ip {
            return Err((span, format!("two nodes have the public IP {}", n.ip)));
        }
        let containers: BTreeSet<String> = n.container_names().into_iter().collect();
        if containers.len() != n.container_names().len() || containers.len() > 200 {
            return Err((span, "container names must be distinct, at most 200".into()));
        }
        if let (Some(prev), Some(net)) = (n.previous_subnet, config.network) {
            if !net.contains(&prev) {
                return Err((span, format!("previous_subnet {prev} is not in {net}")));
            }
        }
        if names
            .containers
            .insert(n.name.clone(), containers)
            .is_some()
        {
            return Err((span, format!("two nodes are called {:?}", n.name)));
        }
    }
    let within = |at: std::time::Duration| {
        if at > duration {
            Err(format!(
                "at = {} is after the end of the scenario (duration = {})",
                format_duration(at),
                format_duration(duration)
            ))
        } else {
            Ok(())
        }
    };
    for step in &s.steps {
        let span = step.span();
        check_step(step.get_ref(), &names, &within).map_err(|m| (span, m))?;
    }
    for expect in &s.expects {
        let span = expect.span();
        let e = expect.get_ref();
        within(e.at()).map_err(|m| (span.clone(), m))?;
        match e {
            Expect::Holds { node, .. }
            | Expect::Routes { node, .. }
            | Expect::Error { node, .. }
            | Expect::Stopped { node, .. }
            | Expect::Skipped { node, .. } => names.node(node).map_err(|m| (span, m))?,
            Expect::Drops { node, reason, .. } => {
                names.node(node).map_err(|m| (span.clone(), m))?;
                if !weft_core::forward::DropReason::ALL
                    .iter()
                    .any(|r| r.as_str() == reason)
                {
                    let known: Vec<&str> = weft_core::forward::DropReason::ALL
                        .iter()
                        .map(|r| r.as_str())
                        .collect();
                    return Err((
                        span,
                        format!(
                            "no drop reason {reason:?} (want one of {})",
                            known.join(", ")
                        ),
                    ));
                }
            }
            Expect::Leases { .. } | Expect::Converged { .. } | Expect::AllLeased { .. } => {}
        }
    }
    Ok(())
}

fn check_step(
    step: &Step,
    names: &Names,
    within: &dyn Fn(std::time::Duration) -> Result<(), String>,
) -> Result<(), String> {
    within(step.at())?;
    match step {
        Step::Start { node, .. }
        | Step::Stop { node, .. }
        | Step::Crash { node, .. }
        | Step::Restart { node, .. }
        | Step::ClockJump { node, .. }
        | Step::ChangeIp { node, .. }
        | Step::DeleteLease { node, .. } => names.node(node),
        Step::Spoof {
            from,
            to,
            count,
            via,
            ..
        } => {
            names.node(from)?;
            if let Some(via) = via {
                names.node(via)?;
            }
            names.endpoint(to)?;
            if *count == 0 || *count > 1000 {
                return Err("count must be 1 to 1000".into());
            }
            Ok(())
        }
        Step::SetConfig { config, .. } => network_config(config).and_then(simulated).map(|_| ()),
        Step::Put { key, .. } if key.is_empty() => Err("key must not be empty".into()),
        Step::Partition { from, to, .. } => {
            names.all_or_store(from.iter())?;
            names.all_or_store(to.iter())
        }
        Step::Heal { from, to, .. } => {
            if from.is_some() != to.is_some() {
                return Err("heal takes both from and to, or neither".into());
            }
            names.all_or_store(from.iter().flat_map(|n| n.iter()))?;
            names.all_or_store(to.iter().flat_map(|n| n.iter()))
        }
        Step::Faults {
            from,
            to,
            loss,
            duplicate,
            reorder,
            corrupt,
            mtu,
            ..
        } => {
            if from.is_some() != to.is_some() {
                return Err("faults takes both from and to, or neither".into());
            }
            names.all(from.iter().flat_map(|n| n.iter()))?;
            names.all(to.iter().flat_map(|n| n.iter()))?;
            FaultFields {
                loss: *loss,
                duplicate: *duplicate,
                reorder: *reorder,
                corrupt: *corrupt,
                mtu: *mtu,
                ..FaultFields::default()
            }
            .check()
        }
        Step::Ping {
            from, to, within, ..
        }
        | Step::Tcp {
            from, to, within, ..
        } => {
            names.endpoint(from)?;
            names.endpoint(to)?;
            if within.0.is_zero() {
                return Err("within must be above zero".into());
            }
            Ok(())
        }
        Step::StoreOutage { .. }
        | Step::StoreRecover { .. }
        | Step::Reserve { .. }
        | Step::Put { .. }
        | Step::DeleteConfig { .. }
        | Step::Compact { .. } => Ok(()),
    }
}
