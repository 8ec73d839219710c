//! Scenario files: the network, the nodes, timed steps and expectations, as TOML.
//!
//! A scenario is data, like raft-rs's test scripts: the simulator runs it and writes a
//! trace. Unknown keys, bad durations, probabilities outside `[0, 1]`, unknown node or
//! container names and steps after the end are errors that name the file, the line and
//! what was expected. See `scenarios/README.md` for the format by example.

mod model;
mod validate;

use std::path::Path;

pub use model::*;
pub use validate::{config_json, network_config, STORE};

/// Why a scenario file was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct ScenarioError {
    /// The file (as given).
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What was wrong, and what was expected.
    pub message: String,
}

impl ScenarioError {
    pub(crate) fn at(
        file: &str,
        source: &str,
        span: std::ops::Range<usize>,
        message: String,
    ) -> Self {
        let start = span.start.min(source.len());
        let before = &source[..start];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        ScenarioError {
            file: file.to_string(),
            line,
            column,
            message,
        }
    }
}

/// Parses and checks a scenario; `file` only names it in errors.
pub fn parse(file: &str, source: &str) -> Result<Scenario, ScenarioError> {
    let mut scenario: Scenario = toml::from_str(source).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        ScenarioError::at(file, source, span, e.message().trim().to_string())
    })?;
    expand_groups(&mut scenario)
        .map_err(|(span, message)| ScenarioError::at(file, source, span, message))?;
    validate::check(&scenario)
        .map_err(|(span, message)| ScenarioError::at(file, source, span, message))?;
    Ok(scenario)
}

/// Turns every node group into its nodes and their start and restart steps.
fn expand_groups(s: &mut Scenario) -> Result<(), (std::ops::Range<usize>, String)> {
    use toml::Spanned;
    for group in std::mem::take(&mut s.node_groups) {
        let span = group.span();
        let g = group.into_inner();
        let width = g.count.saturating_sub(1).to_string().len();
        let name = |i: usize| format!("{}{i:0width$}", g.name);
        let first = u32::from(g.first_ip);
        if first.checked_add(g.count as u32).is_none() || g.count > u32::MAX as usize {
            return Err((
                span,
                format!(
                    "node group {}: too many nodes for first_ip {}",
                    g.name, g.first_ip
                ),
            ));
        }
        for i in 0..g.count {
            let node = model::NodeSection {
                name: name(i),
                ip: std::net::Ipv4Addr::from(first + i as u32),
                containers: g.containers.clone(),
                previous_subnet: None,
                start: g.start.is_none(),
                duplicate_ip: false,
            };
            s.nodes.push(Spanned::new(span.clone(), node));
        }
        if let Some(w) = &g.start {
            let n = w.count.unwrap_or(g.count).min(g.count);
            for i in 0..n {
                let at = model::Dur(w.time_of(i, n));
                let step = Step::Start { at, node: name(i) };
                s.steps.push(Spanned::new(span.clone(), step));
            }
        }
        if let Some(w) = &g.restart {
            let n = w.count.unwrap_or(g.count).min(g.count);
            for i in 0..n {
                let at = model::Dur(w.time_of(i, n));
                let stop = Step::Stop { at, node: name(i) };
                s.steps.push(Spanned::new(span.clone(), stop));
                let start = Step::Restart { at, node: name(i) };
                s.steps.push(Spanned::new(span.clone(), start));
            }
        }
    }
    Ok(())
}

/// Reads and parses a scenario file.
pub fn load(path: &Path) -> Result<(Scenario, String), ScenarioError> {
    let name = path.display().to_string();
    let source = std::fs::read_to_string(path).map_err(|e| ScenarioError {
        file: name.clone(),
        line: 0,
        column: 0,
        message: format!("cannot read: {e}"),
    })?;
    let scenario = parse(&name, &source)?;
    Ok((scenario, source))
}

#[cfg(test)]
mod tests;
