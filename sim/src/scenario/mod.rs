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
pub use validate::STORE;

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
    let scenario: Scenario = toml::from_str(source).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        ScenarioError::at(file, source, span, e.message().trim().to_string())
    })?;
    validate::check(&scenario)
        .map_err(|(span, message)| ScenarioError::at(file, source, span, message))?;
    Ok(scenario)
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
