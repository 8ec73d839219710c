//! Shrinking a failed run: a smaller event file that still fails the same way.
//!
//! Delta debugging over what an event file holds. Each candidate is replayed
//! leniently ([`Replay::lenient`]): once the scenario is cut down, the run leaves the
//! recorded path, and decisions the file does not have are taken plainly (a datagram
//! delivered, a start seeded as a seeded run would) rather than failing the replay.
//! A candidate is kept when its run fails with the same [`signature`] as the original.
//! In order, until nothing more goes:
//!
//! 1. the run ends one second after the failure;
//! 2. nodes go, with every step and expectation that names them;
//! 3. steps go, in halves, quarters... then one at a time;
//! 4. expectations go, the same way;
//! 5. datagram fates are made plain (delivered, no duplicate, no corruption), the same
//!    way.
//!
//! The result is the event file of the last kept run: its decisions are the ones that
//! run took, so `weft sim replay` reproduces it strictly.

use std::time::Duration;

use crate::record::{Decision, EventFile, Replay};
use crate::time::parse_duration;
use crate::underlay::Fate;

/// How big an event file is, in the units shrinking removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    /// Nodes in the scenario.
    pub nodes: usize,
    /// Steps.
    pub steps: usize,
    /// Expectations.
    pub expects: usize,
    /// Datagrams whose fate is not a plain delivery.
    pub faults: usize,
    /// Decisions recorded.
    pub decisions: usize,
    /// The scenario's duration.
    pub duration: Duration,
}

/// What [`shrink`] found.
#[derive(Debug)]
pub struct Shrunk {
    /// The smaller file (the original when nothing could go).
    pub file: EventFile,
    /// The original's size.
    pub before: Size,
    /// The result's size.
    pub after: Size,
    /// Runs tried.
    pub runs: usize,
}

/// What makes two failures "the same": the message up to its second `:` (`check failed:
/// a should hold none but holds 10.5.#.#/#`, `invariant: overlapping ...`), with every
/// run of digits replaced by `#`, since times, subnets and counts move as the run
/// shrinks.
pub fn signature(message: &str) -> String {
    let head: Vec<&str> = message.splitn(3, ':').take(2).collect();
    let mut out = String::new();
    let mut in_digits = false;
    for c in head.join(":").chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('#');
            }
            in_digits = true;
        } else {
            out.push(c);
            in_digits = false;
        }
    }
    out.trim().to_string()
}

/// The message part of an event file's `failure` line (`at 12.3s: message`).
fn message(failure: &str) -> &str {
    match failure.strip_prefix("at ") {
        Some(rest) => rest.split_once(": ").map_or(rest, |(_, m)| m),
        None => failure,
    }
}

/// The virtual time of an event file's `failure` line, if it has one.
fn failure_time(failure: &str) -> Option<Duration> {
    let at = failure.strip_prefix("at ")?.split_once(": ")?.0;
    let secs: f64 = at.strip_suffix('s')?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

fn plain(fate: &Fate) -> bool {
    matches!(
        fate,
        Fate::Deliver {
            duplicate: None,
            corrupt: None,
            ..
        }
    )
}

fn array_len(doc: &toml::Table, key: &str) -> usize {
    doc.get(key)
        .and_then(toml::Value::as_array)
        .map_or(0, Vec::len)
}

fn size(doc: &toml::Table, file: &EventFile, duration: Duration) -> Size {
    Size {
        nodes: array_len(doc, "node"),
        steps: array_len(doc, "step"),
        expects: array_len(doc, "expect"),
        faults: file
            .decisions
            .iter()
            .filter(|d| matches!(d, Decision::Packet { fate, .. } if !plain(fate)))
            .count(),
        decisions: file.decisions.len(),
        duration,
    }
}

/// Whether `value` (a step's or expectation's `node`, `from` or `to`) names `node`:
/// `"a"`, `"a/c1"`, or a list holding one of those.
fn names(value: &toml::Value, node: &str) -> bool {
    match value {
        toml::Value::String(s) => s == node || s.split_once('/').is_some_and(|(n, _)| n == node),
        toml::Value::Array(items) => items.iter().any(|v| names(v, node)),
        _ => false,
    }
}

/// `doc` without node `node`: its `[[node]]`, the steps and expectations that name it
/// alone, and its name in the lists of the others (a partition of `a` from `[b, c]`
/// becomes one from `[c]`).
fn without_node(doc: &toml::Table, node: &str) -> toml::Table {
    let mut doc = doc.clone();
    if let Some(toml::Value::Array(nodes)) = doc.get_mut("node") {
        nodes.retain(|n| n.get("name").and_then(toml::Value::as_str) != Some(node));
    }
    for key in ["step", "expect"] {
        let Some(toml::Value::Array(items)) = doc.get_mut(key) else {
            continue;
        };
        items.retain_mut(|item| {
            let Some(table) = item.as_table_mut() else {
                return true;
            };
            for field in ["node", "from", "to"] {
                match table.get_mut(field) {
                    Some(toml::Value::Array(list)) => {
                        list.retain(|v| !names(v, node));
                        if list.is_empty() {
                            return false;
                        }
                    }
                    Some(v) if names(v, node) => return false,
                    _ => {}
                }
            }
            true
        });
    }
    doc
}

/// `doc` without the items `drop` of its array `key`.
fn without_items(doc: &toml::Table, key: &str, drop: std::ops::Range<usize>) -> toml::Table {
    let mut doc = doc.clone();
    if let Some(toml::Value::Array(items)) = doc.get_mut(key) {
        let mut i = 0;
        items.retain(|_| {
            i += 1;
            !drop.contains(&(i - 1))
        });
    }
    doc
}

/// The chunks delta debugging tries for `n` items: halves, quarters... single items.
fn chunks(n: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    if n == 0 {
        return out;
    }
    let mut size = n.div_ceil(2);
    loop {
        out.extend(
            (0..n)
                .step_by(size)
                .map(|start| start..(start + size).min(n)),
        );
        if size == 1 {
            return out;
        }
        size = size.div_ceil(2);
    }
}

/// The state of a shrink: the smallest failing candidate so far.
struct Search<'a> {
    path: &'a str,
    want: String,
    doc: toml::Table,
    file: EventFile,
    runs: usize,
    budget: usize,
}

impl Search<'_> {
    /// Runs `doc` on `decisions`; keeps it when it fails the same way.
    fn try_candidate(&mut self, doc: toml::Table, decisions: Vec<Decision>) -> bool {
        if self.runs >= self.budget {
            return false;
        }
        self.runs += 1;
        let Ok(text) = toml::to_string(&doc) else {
            return false;
        };
        let Ok(scenario) = crate::scenario::parse(self.path, &text) else {
            return false;
        };
        let file = EventFile {
            decisions,
            scenario: text.clone(),
            ..self.file.clone()
        };
        let outcome = crate::run::run_lenient(self.path, &scenario, &text, &file);
        let same = outcome
            .failure
            .as_ref()
            .is_some_and(|f| signature(&f.message) == self.want);
        match (same, outcome.event_file) {
            (true, Some(file)) => {
                self.doc = doc;
                self.file = file;
                true
            }
            _ => false,
        }
    }

    fn decisions(&self) -> Vec<Decision> {
        self.file.decisions.clone()
    }

    /// Tries every chunk of the array `key`, from halves to single items.
    fn drop_items(&mut self, key: &str) -> bool {
        let mut shrank = false;
        let mut again = true;
        while again {
            again = false;
            for chunk in chunks(array_len(&self.doc, key)) {
                if chunk.end > array_len(&self.doc, key) {
                    break;
                }
                let doc = without_items(&self.doc, key, chunk);
                if self.try_candidate(doc, self.decisions()) {
                    shrank = true;
                    again = true;
                    break;
                }
            }
        }
        shrank
    }

    fn drop_nodes(&mut self) -> bool {
        let mut shrank = false;
        let mut again = true;
        while again {
            again = false;
            let names: Vec<String> = self
                .doc
                .get("node")
                .and_then(toml::Value::as_array)
                .map(|nodes| {
                    nodes
                        .iter()
                        .filter_map(|n| n.get("name")?.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            for name in names {
                let doc = without_node(&self.doc, &name);
                if self.try_candidate(doc, self.decisions()) {
                    shrank = true;
                    again = true;
                    break;
                }
            }
        }
        shrank
    }

    /// Makes the fates of chunks of the faulty datagrams plain.
    fn plain_fates(&mut self) -> bool {
        let mut shrank = false;
        let mut again = true;
        while again {
            again = false;
            let faulty: Vec<usize> = self
                .file
                .decisions
                .iter()
                .enumerate()
                .filter(|(_, d)| matches!(d, Decision::Packet { fate, .. } if !plain(fate)))
                .map(|(i, _)| i)
                .collect();
            let delivery = Replay::new(&self.file).lenient().plain_delivery();
            for chunk in chunks(faulty.len()) {
                let mut decisions = self.decisions();
                for &i in &faulty[chunk] {
                    if let Decision::Packet { fate, .. } = &mut decisions[i] {
                        *fate = delivery;
                    }
                }
                if self.try_candidate(self.doc.clone(), decisions) {
                    shrank = true;
                    again = true;
                    break;
                }
            }
        }
        shrank
    }

    /// Ends the run a second after its failure.
    fn cut_duration(&mut self) -> bool {
        let Some(at) = failure_time(&self.file.failure) else {
            return false;
        };
        let end = at.as_secs() + 1;
        if self.duration() <= Duration::from_secs(end) {
            return false;
        }
        let mut doc = self.doc.clone();
        doc.insert("duration".into(), toml::Value::String(format!("{end}s")));
        // What was due after the new end goes too (a scenario may not name it).
        let after_end = |item: &toml::Value| {
            item.get("at")
                .and_then(toml::Value::as_str)
                .and_then(|at| parse_duration(at).ok())
                .is_some_and(|at| at > Duration::from_secs(end))
        };
        for key in ["step", "expect"] {
            if let Some(toml::Value::Array(items)) = doc.get_mut(key) {
                items.retain(|item| !after_end(item));
            }
        }
        self.try_candidate(doc, self.decisions())
    }

    fn duration(&self) -> Duration {
        crate::scenario::parse(self.path, &toml::to_string(&self.doc).unwrap_or_default())
            .map(|s| s.duration.get_ref().0)
            .unwrap_or_default()
    }
}

/// Shrinks the failed run of `file`, trying at most `budget` runs.
pub fn shrink(file: &EventFile, budget: usize) -> Result<Shrunk, String> {
    let doc: toml::Table = file
        .scenario
        .parse()
        .map_err(|e| format!("the event file's scenario is not TOML: {e}"))?;
    let path = file.scenario_path.clone();
    let mut search = Search {
        path: &path,
        want: signature(message(&file.failure)),
        doc,
        file: file.clone(),
        runs: 0,
        budget,
    };
    // The original must fail, leniently, as recorded; its own run gives the decisions
    // from which every candidate starts.
    let doc = search.doc.clone();
    if !search.try_candidate(doc, file.decisions.clone()) {
        return Err(format!(
            "replaying the file does not fail as recorded ({})",
            file.failure
        ));
    }
    let before = size(&search.doc, file, search.duration());
    search.cut_duration();
    loop {
        let shrank = search.drop_nodes()
            | search.drop_items("step")
            | search.drop_items("expect")
            | search.plain_fates();
        if !shrank || search.runs >= search.budget {
            break;
        }
    }
    let after = size(&search.doc, &search.file, search.duration());
    Ok(Shrunk {
        file: search.file,
        before,
        after,
        runs: search.runs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_ignore_numbers_and_details_past_the_second_colon() {
        assert_eq!(
            signature("check failed: a should hold none but holds 10.5.3.0/24"),
            "check failed: a should hold none but holds #.#.#.#/#"
        );
        assert_eq!(
            signature("invariant: overlapping leases: 10.5.1.0/24 and 10.5.1.0/25"),
            "invariant: overlapping leases"
        );
        assert_eq!(message("at 12.5s: check failed: x"), "check failed: x");
        assert_eq!(
            failure_time("at 12.5s: check failed: x"),
            Some(Duration::from_millis(12_500))
        );
    }

    #[test]
    fn chunks_go_from_halves_to_single_items() {
        assert_eq!(chunks(0), Vec::<std::ops::Range<usize>>::new());
        assert_eq!(chunks(1), vec![0..1]);
        assert_eq!(chunks(3), vec![0..2, 2..3, 0..1, 1..2, 2..3]);
    }

    #[test]
    fn a_node_goes_with_what_names_it_alone() {
        let doc: toml::Table = r#"
            [[node]]
            name = "a"
            [[node]]
            name = "b"
            [[node]]
            name = "c"
            [[step]]
            do = "partition"
            from = "a"
            to = ["store", "b"]
            [[step]]
            do = "ping"
            from = "b/c1"
            to = "c"
            [[expect]]
            check = "holds"
            node = "b"
        "#
        .parse()
        .unwrap_or_default();
        let out = without_node(&doc, "b");
        assert_eq!(array_len(&out, "node"), 2);
        assert_eq!(array_len(&out, "expect"), 0);
        let steps = out["step"].as_array().cloned().unwrap_or_default();
        assert_eq!(steps.len(), 1, "{steps:?}");
        assert_eq!(steps[0]["to"], toml::Value::Array(vec!["store".into()]));
    }
}
