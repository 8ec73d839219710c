//! `lab play`'s expectations, checked against the nodes' statuses and the store at the
//! instant they are due: the statuses are current (each node publishes on every
//! change), so no check needs a grace period.

use std::collections::BTreeSet;

use ipnet::{IpNet, Ipv4Net};
use weft_sim::scenario::{Expect, SubnetExpect};

use super::super::LabError;
use super::LabWorld;
use crate::daemon::NodeState;

fn failed(message: String) -> Result<String, LabError> {
    Err(LabError::Protocol(message))
}

fn show(subnet: Option<Ipv4Net>) -> String {
    subnet.map_or_else(|| "nothing".to_string(), |s| s.to_string())
}

impl LabWorld {
    /// Checks `expect` now; says what was checked, and how it went.
    pub(super) fn check(&self, expect: &Expect) -> (String, Result<String, LabError>) {
        match expect {
            Expect::Holds { node, subnet, .. } => {
                (format!("{node} holds {subnet:?}"), self.holds(node, subnet))
            }
            Expect::Leases { count, .. } => (format!("{count} leases"), self.leases(*count)),
            Expect::Routes { node, count, .. } => {
                let result = self.status(node).and_then(|s| match s.routes.len() {
                    n if n == *count => Ok(String::new()),
                    n => failed(format!("it has {n}")),
                });
                (format!("{node} has {count} routes"), result)
            }
            Expect::Error { node, contains, .. } => {
                let result = self.status(node).and_then(|s| {
                    let all: Vec<&String> = s.reported.iter().chain(&s.error).collect();
                    if all.iter().any(|e| e.contains(contains.as_str())) {
                        Ok(String::new())
                    } else {
                        failed(format!("it reported {all:?}"))
                    }
                });
                (format!("{node} reported {contains:?}"), result)
            }
            Expect::Stopped { node, .. } => {
                let result = self.status(node).and_then(|s| match (&s.state, &s.error) {
                    (NodeState::Exited, Some(e)) if e.contains("deleted") => Ok(String::new()),
                    (state, error) => failed(format!(
                        "not stopped by a deletion: {}, {error:?}",
                        state.as_str()
                    )),
                });
                (format!("{node} stopped"), result)
            }
            Expect::Converged { .. } => ("converged".to_string(), self.converged()),
            Expect::AllLeased { .. } => ("all leased".to_string(), self.all_leased()),
            Expect::Drops {
                node,
                reason,
                count,
                ..
            } => {
                let result = self.status(node).and_then(|s| {
                    match s.drops.get(reason.as_str()).copied().unwrap_or(0) {
                        n if n == *count => Ok(String::new()),
                        n => failed(format!("it dropped {n}")),
                    }
                });
                (format!("{node} dropped {count} {reason}"), result)
            }
            Expect::Skipped { node, .. } => (
                format!("{node} skipped entries"),
                failed("refused: the count of skipped entries needs the simulator".into()),
            ),
        }
    }

    /// Every node runs and holds a lease, no two of them overlapping.
    fn all_leased(&self) -> Result<String, LabError> {
        let mut held: Vec<(Ipv4Net, String)> = Vec::new();
        for report in self.running.status().nodes {
            let lease = report
                .status
                .filter(|s| s.state == NodeState::Running)
                .and_then(|s| s.lease.and_then(|l| l.subnet));
            match lease {
                Some(subnet) => held.push((subnet, report.name)),
                None => return failed(format!("{} holds no lease", report.name)),
            }
        }
        held.sort();
        for pair in held.windows(2) {
            if pair[0].0.contains(&pair[1].0.network()) {
                return failed(format!(
                    "{} holds {} and {} holds {}: they overlap",
                    pair[0].1, pair[0].0, pair[1].1, pair[1].0
                ));
            }
        }
        Ok(format!(" ({} nodes)", held.len()))
    }

    fn holds(&self, node: &str, want: &SubnetExpect) -> Result<String, LabError> {
        let status = self.status(node)?;
        let held = status
            .lease
            .as_ref()
            .filter(|_| status.state == NodeState::Running)
            .and_then(|l| l.subnet);
        let ok = match want {
            SubnetExpect::Any => held.is_some(),
            SubnetExpect::None => held.is_none(),
            SubnetExpect::Previous => {
                held.is_some() && self.previous.get(node).copied().flatten() == held
            }
            SubnetExpect::Exactly(net) => held == Some(*net),
        };
        if ok {
            Ok(format!(" ({})", show(held)))
        } else if *want == SubnetExpect::Previous {
            let before = self.previous.get(node).copied().flatten();
            failed(format!("it holds {}, before {}", show(held), show(before)))
        } else {
            failed(format!("it holds {}", show(held)))
        }
    }

    fn leases(&self, count: usize) -> Result<String, LabError> {
        let n = self.rt.block_on(self.running.leases())?.len();
        if n == count {
            Ok(String::new())
        } else {
            failed(format!("the store holds {n}"))
        }
    }

    /// Every running node routes to every live lease but its own, and to nothing else.
    fn converged(&self) -> Result<String, LabError> {
        let leases = self.rt.block_on(self.running.leases())?;
        for report in self.running.status().nodes {
            let Some(status) = report.status.filter(|s| s.state == NodeState::Running) else {
                continue;
            };
            let own = status.lease.as_ref().and_then(|l| l.subnet);
            let want: BTreeSet<Ipv4Net> = leases
                .iter()
                .map(|(_, subnet)| *subnet)
                .filter(|s| Some(*s) != own)
                .collect();
            let have: BTreeSet<Ipv4Net> = status
                .routes
                .iter()
                .filter_map(|r| match r.subnet {
                    IpNet::V4(net) => Some(net),
                    IpNet::V6(_) => None,
                })
                .collect();
            if want != have {
                return failed(format!(
                    "{} routes {have:?}, live peer leases {want:?}",
                    report.name
                ));
            }
        }
        Ok(String::new())
    }
}
