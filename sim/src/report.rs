//! A simulation report people can look at: one self-contained HTML page (no script, no
//! external resource) with an SVG timeline per run and the summary table.
//!
//! The timeline is drawn from the run's trace, the same deterministic text the snapshot
//! tests pin down, so the picture shows exactly what the trace says: per node, the
//! lease it held (a bar labelled with the subnet), its starts, crashes, stops and exits,
//! and its clock jumps; one row for the store (outages) and one for the network
//! (partitions, until healed); pings answered (green) and unanswered (red) and TCP
//! transfers (blue: started, finished). A failed run gets a red line at the failure.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use crate::run::Outcome;

const LEFT: f64 = 130.0;
const WIDTH: f64 = 860.0;
const ROW: f64 = 30.0;
/// Words in the trace's second column that are not node names.
const NOT_NODES: [&str; 7] = ["sim", "step", "ping", "tcp", "check", "end", "FAIL"];

/// One line of a trace: virtual seconds, who, what.
struct Line<'a> {
    at: f64,
    who: &'a str,
    text: &'a str,
}

fn parse_line(line: &str) -> Option<Line<'_>> {
    let line = line.trim_start();
    let (time, rest) = line.split_once(' ')?;
    let at: f64 = time.strip_suffix('s')?.parse().ok()?;
    let rest = rest.trim_start();
    let (who, text) = rest.split_once(' ').unwrap_or((rest, ""));
    Some(Line {
        at,
        who,
        text: text.trim_start(),
    })
}

/// Something drawn on a row.
#[derive(Debug, Clone, PartialEq)]
enum Mark {
    /// A bar from..to with a label.
    Bar(f64, f64, String, &'static str),
    /// A point event with a label.
    Dot(f64, String, &'static str),
}

#[derive(Debug, Default)]
struct Timeline {
    rows: BTreeMap<String, Vec<Mark>>,
    order: Vec<String>,
}

impl Timeline {
    fn row(&mut self, name: &str) -> &mut Vec<Mark> {
        if !self.rows.contains_key(name) {
            self.order.push(name.to_string());
        }
        self.rows.entry(name.to_string()).or_default()
    }
}

/// The node a step line is about: `a starts`, `b crashes`, `c clock jumps …`.
fn step_node<'a>(text: &'a str, nodes: &[&str]) -> Option<&'a str> {
    let first = text.split_whitespace().next()?;
    nodes.contains(&first).then_some(first)
}

fn timeline(trace: &str, end: f64) -> Timeline {
    let lines: Vec<Line<'_>> = trace.lines().filter_map(parse_line).collect();
    let mut nodes: Vec<&str> = Vec::new();
    for l in &lines {
        let started = l.who == "step" && l.text.split_whitespace().nth(1) == Some("starts");
        let name = if started {
            l.text.split_whitespace().next()
        } else {
            (!NOT_NODES.contains(&l.who)).then_some(l.who)
        };
        if let Some(n) = name.filter(|n| !nodes.contains(n)) {
            nodes.push(n);
        }
    }
    let mut t = Timeline::default();
    t.row("store");
    t.row("network");
    for n in &nodes {
        t.row(n);
    }
    t.row("probes");
    let mut holding: BTreeMap<&str, (f64, String)> = BTreeMap::new();
    let mut outage: Option<f64> = None;
    let mut partition: Option<(f64, String)> = None;
    let close =
        |t: &mut Timeline, node: &str, at: f64, holding: &mut BTreeMap<&str, (f64, String)>| {
            if let Some((from, subnet)) = holding.remove(node) {
                t.row(node).push(Mark::Bar(from, at, subnet, "#7fb3d5"));
            }
        };
    for l in &lines {
        match l.who {
            "step" => {
                let text = l.text;
                if let Some(node) = step_node(text, &nodes) {
                    let what = text[node.len()..].trim();
                    let colour = if what.starts_with("starts") {
                        "#2e7d32"
                    } else if what.starts_with("crashes") || what.starts_with("exits") {
                        "#c62828"
                    } else {
                        "#616161"
                    };
                    if !what.starts_with("starts") && !what.starts_with("clock") {
                        close(&mut t, node, l.at, &mut holding);
                    }
                    let label = what.split(':').next().unwrap_or(what).to_string();
                    t.row(node).push(Mark::Dot(l.at, label, colour));
                } else if text.starts_with("store outage") {
                    outage = Some(l.at);
                } else if text.starts_with("store recovers") {
                    if let Some(from) = outage.take() {
                        t.row("store")
                            .push(Mark::Bar(from, l.at, "outage".into(), "#e57373"));
                    }
                } else if text.starts_with("partition") {
                    partition = Some((l.at, text.trim_start_matches("partition ").to_string()));
                } else if text.starts_with("heal") {
                    if let Some((from, what)) = partition.take() {
                        t.row("network")
                            .push(Mark::Bar(from, l.at, what, "#ffb74d"));
                    }
                } else {
                    t.row("store")
                        .push(Mark::Dot(l.at, text.to_string(), "#6a1b9a"));
                }
            }
            "ping" if l.text.contains(": reply") || l.text.contains("as expected") => {
                let what = l.text.split(':').next().unwrap_or("").to_string();
                t.row("probes")
                    .push(Mark::Dot(l.at, format!("ping {what}"), "#2e7d32"));
            }
            "ping" if l.text.contains("no reply") => {
                t.row("probes")
                    .push(Mark::Dot(l.at, format!("ping {}", l.text), "#c62828"));
            }
            "tcp" => {
                let colour = if l.text.contains("intact") {
                    "#1565c0"
                } else {
                    "#90caf9"
                };
                let label = l.text.split(':').next().unwrap_or("").to_string();
                t.row("probes")
                    .push(Mark::Dot(l.at, format!("tcp {label}"), colour));
            }
            who if nodes.contains(&who) => {
                if let Some(rest) = l.text.strip_prefix("acquired ") {
                    close(&mut t, who, l.at, &mut holding);
                    let subnet = rest.split(" (").next().unwrap_or(rest).to_string();
                    let name = nodes.iter().find(|n| **n == who).copied().unwrap_or(who);
                    holding.insert(name, (l.at, subnet));
                } else if l.text.starts_with("lost ") {
                    close(&mut t, who, l.at, &mut holding);
                }
            }
            _ => {}
        }
    }
    let open: Vec<&str> = holding.keys().copied().collect();
    for node in open {
        close(&mut t, node, end, &mut holding);
    }
    if let (Some(from), true) = (outage, end > 0.0) {
        t.row("store")
            .push(Mark::Bar(from, end, "outage".into(), "#e57373"));
    }
    if let Some((from, what)) = partition {
        t.row("network").push(Mark::Bar(from, end, what, "#ffb74d"));
    }
    t
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn svg(outcome: &Outcome) -> String {
    let end = outcome.simulated.as_secs_f64().max(0.001);
    let t = timeline(&outcome.trace, end);
    let x = |at: f64| LEFT + (at / end).clamp(0.0, 1.0) * WIDTH;
    let height = ROW * (t.order.len() as f64 + 1.0);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" font-family="sans-serif" font-size="11">"#,
        w = LEFT + WIDTH + 20.0
    );
    for i in 0..=10 {
        let at = end * f64::from(i) / 10.0;
        let _ = write!(
            s,
            r##"<line x1="{0}" y1="0" x2="{0}" y2="{1}" stroke="#eee"/><text x="{0}" y="{2}" fill="#777" text-anchor="middle">{3}</text>"##,
            x(at),
            height - ROW,
            height - 10.0,
            human(at)
        );
    }
    for (i, name) in t.order.iter().enumerate() {
        let y = ROW * i as f64;
        let _ = write!(
            s,
            r##"<text x="4" y="{}" font-weight="bold">{}</text><line x1="{LEFT}" y1="{}" x2="{}" y2="{}" stroke="#ccc"/>"##,
            y + 19.0,
            esc(name),
            y + 15.0,
            LEFT + WIDTH,
            y + 15.0
        );
        for mark in &t.rows[name] {
            match mark {
                Mark::Bar(from, to, label, colour) => {
                    let _ = write!(
                        s,
                        r##"<rect x="{}" y="{}" width="{}" height="18" fill="{colour}" rx="3"><title>{}</title></rect><text x="{}" y="{}" fill="#000">{}</text>"##,
                        x(*from),
                        y + 6.0,
                        (x(*to) - x(*from)).max(1.0),
                        esc(label),
                        x(*from) + 3.0,
                        y + 19.0,
                        esc(label)
                    );
                }
                Mark::Dot(at, label, colour) => {
                    let _ = write!(
                        s,
                        r#"<circle cx="{}" cy="{}" r="5" fill="{colour}"><title>{} {}</title></circle>"#,
                        x(*at),
                        y + 15.0,
                        human(*at),
                        esc(label)
                    );
                }
            }
        }
    }
    if let Some(f) = &outcome.failure {
        let at = f.at.as_duration().as_secs_f64();
        let _ = write!(
            s,
            r##"<line x1="{0}" y1="0" x2="{0}" y2="{1}" stroke="#c62828" stroke-width="2"><title>{2}</title></line>"##,
            x(at),
            height - ROW,
            esc(&f.message)
        );
    }
    s.push_str("</svg>");
    s
}

fn human(secs: f64) -> String {
    let whole = secs.round() as u64;
    match (secs >= 120.0, whole % 60) {
        (true, 0) => format!("{}m", whole / 60),
        (true, s) => format!("{}m{s:02}s", whole / 60),
        (false, _) => format!("{secs:.1}s"),
    }
}

/// The runs of one `weft sim run`, rendered as one page.
#[derive(Debug, Default)]
pub struct Report {
    sections: Vec<String>,
    rows: Vec<String>,
}

impl Report {
    /// An empty report.
    pub fn new() -> Self {
        Report::default()
    }

    /// Adds a run of the scenario file `label`: its timeline, and a row of the summary.
    pub fn add(&mut self, label: &str, outcome: &Outcome, wall: Duration) {
        let result = match &outcome.failure {
            None => "passed".to_string(),
            Some(f) => format!("FAILED {}", f.describe()),
        };
        let class = if outcome.failure.is_some() {
            "fail"
        } else {
            "pass"
        };
        self.rows.push(format!(
            r#"<tr class="{class}"><td>{}</td><td>{}</td><td>{}</td><td>{:.1}s</td><td>{}</td><td>{}</td><td>{}</td><td>{:.3}s</td></tr>"#,
            esc(label),
            outcome.seed,
            esc(&result),
            outcome.simulated.as_secs_f64(),
            outcome.stats.events,
            outcome.stats.store_ops,
            outcome.stats.datagrams,
            wall.as_secs_f64()
        ));
        self.sections.push(format!(
            r#"<section class="{class}"><h2>{} <small>seed {} &middot; {}</small></h2>{}</section>"#,
            esc(&outcome.name),
            outcome.seed,
            esc(&result),
            svg(outcome)
        ));
    }

    /// Adds only the summary row of a run (a seed sweep draws the failed runs alone).
    pub fn add_row_only(&mut self, label: &str, outcome: &Outcome, wall: Duration) {
        let sections = self.sections.len();
        self.add(label, outcome, wall);
        self.sections.truncate(sections);
    }

    /// The page.
    pub fn render(&self) -> String {
        format!(
            r#"<!DOCTYPE html><html><head><meta charset="utf-8"><title>weft simulation report</title><style>
body{{font-family:sans-serif;margin:24px;color:#222}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}} tr.fail td{{background:#fdecea}}
section{{margin:18px 0;border-top:1px solid #ddd}} section.fail h2{{color:#c62828}}
</style></head><body><h1>weft simulation report</h1><table><tr><th>scenario</th><th>seed</th>
<th>result</th><th>simulated</th><th>events</th><th>store ops</th><th>datagrams</th><th>wall</th></tr>
{}</table>{}</body></html>
"#,
            self.rows.join("\n"),
            self.sections.join("\n")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "     0.000s sim    scenario \"x\", seed 0
     0.000s step   a starts
     0.008s a      acquired 10.5.1.0/24 (random), expires at 60.006s
     5.000s step   store outage for 10s
    15.000s step   store recovers
    20.000s step   partition a <-> store
    30.000s step   a crashes
    31.000s step   heal every partition
    32.000s ping   b/c0 -> a/c0: no reply within 3s
";

    #[test]
    fn the_trace_becomes_bars_and_marks() {
        let t = timeline(TRACE, 40.0);
        assert_eq!(t.order, ["store", "network", "a", "probes"]);
        let a = &t.rows["a"];
        assert!(
            a.contains(&Mark::Bar(0.008, 30.0, "10.5.1.0/24".into(), "#7fb3d5")),
            "{a:?}"
        );
        assert!(
            matches!(&a[..], [Mark::Dot(_, s, _), Mark::Bar(..), Mark::Dot(at, l, _)] if s == "starts" && *at == 30.0 && l == "crashes"),
            "{a:?}"
        );
        assert_eq!(
            t.rows["store"],
            [Mark::Bar(5.0, 15.0, "outage".into(), "#e57373")]
        );
        assert_eq!(
            t.rows["network"],
            [Mark::Bar(20.0, 31.0, "a <-> store".into(), "#ffb74d")]
        );
        assert!(matches!(&t.rows["probes"][..], [Mark::Dot(at, _, "#c62828")] if *at == 32.0));
    }
}
