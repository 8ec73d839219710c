//! Decisions and event files.
//!
//! Every random decision a run takes -- each node's seed at each start, each
//! datagram's fate on the underlay -- is a [`Decision`]; steps taken (crashes,
//! partitions, outages) are listed beside them for the reader. A failed run writes
//! them, with the scenario itself, to an event file; [`EventFile::parse`] reads it back,
//! and a replay takes its decisions from the file instead of the random streams, so it
//! needs neither the seed nor the scenario file.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::time::Duration;

use crate::time::SimTime;
use crate::underlay::Fate;

/// One decision, or one step for the reader.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// A node (re)started with this seed.
    NodeSeed {
        /// When.
        at: SimTime,
        /// Which node.
        node: String,
        /// Its start count, from 1.
        incarnation: u32,
        /// The seed its core and containers drew from.
        seed: u64,
    },
    /// The `n`-th datagram on the underlay met this fate.
    Packet {
        /// When it was sent.
        at: SimTime,
        /// Its number in the run, from 1.
        n: u64,
        /// Sender.
        from: Ipv4Addr,
        /// Receiver.
        to: Ipv4Addr,
        /// What happened to it.
        fate: Fate,
    },
    /// A scenario step, listed for the reader (replay takes steps from the scenario).
    Step {
        /// When.
        at: SimTime,
        /// What.
        text: String,
    },
}

/// A failed run, written so that it can be replayed.
#[derive(Debug, Clone, PartialEq)]
pub struct EventFile {
    /// Where the scenario came from (informational).
    pub scenario_path: String,
    /// The seed of the failed run (informational: replay does not use it).
    pub seed: u64,
    /// The failure, as reported.
    pub failure: String,
    /// The scenario file's text.
    pub scenario: String,
    /// Every decision, in order.
    pub decisions: Vec<Decision>,
}

const SCENARIO_BEGIN: &str = "--- scenario";
const SCENARIO_END: &str = "--- end of scenario";

impl EventFile {
    /// The file's text.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# weft sim event file: every random decision of a failed run."
        );
        let _ = writeln!(s, "# Replay it with: weft sim replay FILE");
        let _ = writeln!(s, "path {}", self.scenario_path);
        let _ = writeln!(s, "seed {}", self.seed);
        let _ = writeln!(s, "failure {}", self.failure.replace('\n', " / "));
        let _ = writeln!(s, "{SCENARIO_BEGIN}");
        s.push_str(&self.scenario);
        if !self.scenario.ends_with('\n') {
            s.push('\n');
        }
        let _ = writeln!(s, "{SCENARIO_END}");
        for d in &self.decisions {
            let _ = match d {
                Decision::NodeSeed {
                    at,
                    node,
                    incarnation,
                    seed,
                } => writeln!(s, "{} node {node} {incarnation} seed {seed}", stamp(*at)),
                Decision::Packet {
                    at,
                    n,
                    from,
                    to,
                    fate,
                } => writeln!(s, "{} packet {n} {from}>{to} {fate}", stamp(*at)),
                Decision::Step { at, text } => writeln!(s, "{} step {text}", stamp(*at)),
            };
        }
        s
    }

    /// Reads what [`EventFile::render`] wrote; the error names the line.
    pub fn parse(text: &str) -> Result<EventFile, String> {
        let mut file = EventFile {
            scenario_path: String::new(),
            seed: 0,
            failure: String::new(),
            scenario: String::new(),
            decisions: Vec::new(),
        };
        let mut in_scenario = false;
        for (i, line) in text.lines().enumerate() {
            // A file that went through an editor or a mail client may end its lines with
            // CRs: they are not part of the line, however many (`lines` strips one, so
            // keeping the rest would change the text at each render and parse, as the
            // event_file fuzz target found).
            let line = line.trim_end_matches('\r');
            let bad = |what: &str| format!("line {}: {what}: {line:?}", i + 1);
            if in_scenario {
                if line == SCENARIO_END {
                    in_scenario = false;
                } else {
                    file.scenario.push_str(line);
                    file.scenario.push('\n');
                }
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            if line == SCENARIO_BEGIN {
                in_scenario = true;
                continue;
            }
            let (head, rest) = line.split_once(' ').unwrap_or((line, ""));
            match head {
                "path" => file.scenario_path = rest.to_string(),
                "seed" => file.seed = rest.parse().map_err(|_| bad("bad seed"))?,
                "failure" => file.failure = rest.to_string(),
                t => {
                    let at = unstamp(t).map_err(bad)?;
                    file.decisions
                        .push(parse_decision(at, rest).ok_or_else(|| bad("not a decision"))?);
                }
            }
        }
        if file.scenario.is_empty() {
            return Err("the event file holds no scenario".into());
        }
        Ok(file)
    }
}

/// Virtual time as `seconds.micros` followed by `s`: exact, and readable.
fn stamp(t: SimTime) -> String {
    format!("{}.{:06}s", t.0 / 1_000_000, t.0 % 1_000_000)
}

/// Reads what [`stamp`] wrote. A time that does not fit in virtual time (u64
/// microseconds, about 584,554 years) is an error: the file is crafted or damaged, and
/// wrapping around would replay a decision at another time.
fn unstamp(text: &str) -> Result<SimTime, &'static str> {
    const SHAPE: &str = "expected a time such as 12.000345s";
    let (s, us) = text
        .strip_suffix('s')
        .and_then(|t| t.split_once('.'))
        .ok_or(SHAPE)?;
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    if us.len() != 6 || !digits(s) || !digits(us) {
        return Err(SHAPE);
    }
    const RANGE: &str = "time out of range (at most 18446744073709.551615s)";
    let secs: u64 = s.parse().map_err(|_| RANGE)?;
    let micros: u64 = us.parse().map_err(|_| SHAPE)?;
    secs.checked_mul(1_000_000)
        .and_then(|t| t.checked_add(micros))
        .map(SimTime)
        .ok_or(RANGE)
}

fn parse_decision(at: SimTime, rest: &str) -> Option<Decision> {
    let (kind, rest) = rest.split_once(' ')?;
    match kind {
        "node" => {
            let mut w = rest.split(' ');
            let node = w.next()?.to_string();
            let incarnation = w.next()?.parse().ok()?;
            (w.next()? == "seed").then_some(())?;
            let seed = w.next()?.parse().ok()?;
            Some(Decision::NodeSeed {
                at,
                node,
                incarnation,
                seed,
            })
        }
        "packet" => {
            let (n, rest) = rest.split_once(' ')?;
            let (ends, fate) = rest.split_once(' ')?;
            let (from, to) = ends.split_once('>')?;
            Some(Decision::Packet {
                at,
                n: n.parse().ok()?,
                from: from.parse().ok()?,
                to: to.parse().ok()?,
                fate: Fate::parse(fate)?,
            })
        }
        "step" => Some(Decision::Step {
            at,
            text: rest.to_string(),
        }),
        _ => None,
    }
}

/// Decisions to take from an event file instead of the random streams.
#[derive(Debug, Default)]
pub struct Replay {
    seeds: BTreeMap<(String, u32), u64>,
    packets: BTreeMap<u64, (Ipv4Addr, Ipv4Addr, Fate)>,
    /// See [`Replay::lenient`].
    lenient: Option<Duration>,
    /// A lenient replay's fates by link, in order, and how many of each it has used.
    by_link: BTreeMap<(Ipv4Addr, Ipv4Addr), Vec<Fate>>,
    used: std::cell::RefCell<BTreeMap<(Ipv4Addr, Ipv4Addr), usize>>,
}

impl Replay {
    /// The decisions of `file`.
    pub fn new(file: &EventFile) -> Self {
        let mut r = Replay::default();
        for d in &file.decisions {
            match d {
                Decision::NodeSeed {
                    node,
                    incarnation,
                    seed,
                    ..
                } => {
                    r.seeds.insert((node.clone(), *incarnation), *seed);
                }
                Decision::Packet {
                    n, from, to, fate, ..
                } => {
                    r.packets.insert(*n, (*from, *to, *fate));
                }
                Decision::Step { .. } => {}
            }
        }
        r
    }

    /// A replay that does not fail where the run leaves the file's path -- as it does
    /// once the scenario is cut down (see `shrink`). Datagrams take the fates the file
    /// gave the datagrams of their link, in order (the third from b to c gets the third
    /// fate recorded from b to c), so that removing traffic elsewhere does not shift
    /// them; a datagram past the file's on its link is delivered after the median
    /// delay of the file's deliveries, neither duplicated nor corrupted. A start the file
    /// has no seed for draws one as a seeded run would.
    pub fn lenient(mut self) -> Self {
        for (from, to, fate) in self.packets.values() {
            self.by_link.entry((*from, *to)).or_default().push(*fate);
        }
        let mut delays: Vec<Duration> = self
            .packets
            .values()
            .filter_map(|(_, _, fate)| match fate {
                Fate::Deliver { delay, .. } => Some(*delay),
                Fate::Drop(_) => None,
            })
            .collect();
        delays.sort();
        self.lenient = Some(delays.get(delays.len() / 2).copied().unwrap_or_default());
        self
    }

    /// Whether this replay is [`Replay::lenient`].
    pub fn is_lenient(&self) -> bool {
        self.lenient.is_some()
    }

    /// A lenient replay's delivery for a datagram the file does not decide.
    pub fn plain_delivery(&self) -> Fate {
        Fate::Deliver {
            delay: self.lenient.unwrap_or_default(),
            duplicate: None,
            corrupt: None,
        }
    }

    /// The seed node `node` started with the `incarnation`-th time.
    pub fn node_seed(&self, node: &str, incarnation: u32) -> Result<u64, String> {
        self.seeds
            .get(&(node.to_string(), incarnation))
            .copied()
            .ok_or_else(|| {
                format!("replay diverged: no seed for start {incarnation} of node {node}")
            })
    }

    /// The fate of datagram `n`, which must be `from -> to` (a lenient replay: see
    /// [`Replay::lenient`]).
    pub fn packet(&self, n: u64, from: Ipv4Addr, to: Ipv4Addr) -> Result<Fate, String> {
        if self.lenient.is_some() {
            let mut used = self.used.borrow_mut();
            let k = used.entry((from, to)).or_default();
            let fate = self
                .by_link
                .get(&(from, to))
                .and_then(|f| f.get(*k))
                .copied();
            *k += 1;
            return Ok(fate.unwrap_or_else(|| self.plain_delivery()));
        }
        match self.packets.get(&n) {
            Some((f, t, fate)) if (*f, *t) == (from, to) => Ok(*fate),
            Some((f, t, _)) => Err(format!(
                "replay diverged: datagram {n} is {from}>{to} here but {f}>{t} in the file"
            )),
            None => Err(format!(
                "replay diverged: datagram {n} ({from}>{to}) is not in the file"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with_decision(line: &str) -> String {
        format!(
            "path x\nseed 1\nfailure f\n{SCENARIO_BEGIN}\nname = \"x\"\n{SCENARIO_END}\n{line}\n"
        )
    }

    #[test]
    fn a_stamp_renders_and_parses_back_at_the_extremes() {
        for t in [0, 1, 999_999, 1_000_000, u64::MAX - 1, u64::MAX] {
            let text = file_with_decision(&format!("{} step s", stamp(SimTime(t))));
            let file = EventFile::parse(&text).expect("parses");
            assert!(
                matches!(file.decisions[..], [Decision::Step { at, .. }] if at == SimTime(t)),
                "{t}: {:?}",
                file.decisions
            );
        }
    }

    #[test]
    fn carriage_returns_end_lines_and_a_rendered_file_parses_back_equal() {
        let text = file_with_decision("1.000000s step s").replace('\n', "\r\r\n");
        let file = EventFile::parse(&text).expect("parses");
        assert_eq!(file.scenario, "name = \"x\"\n");
        assert_eq!(file.scenario_path, "x");
        assert_eq!(EventFile::parse(&file.render()), Ok(file));
        let bare = EventFile::parse("path x\r\n--- scenario\n\r\r\r\n--- end of scenario\n")
            .expect("parses");
        assert_eq!(EventFile::parse(&bare.render()), Ok(bare));
    }

    #[test]
    fn a_time_past_the_range_is_an_error_naming_the_line_not_a_panic() {
        // 18446744073709s is the largest whole second that fits in u64 microseconds
        // with .551615 after it; anything later must be refused, in debug and release.
        for stamp in [
            "18446744073710.000000s",
            "18446744073709.551616s",
            "99999999999999999999.000000s",
            "18446744073709551615.000000s",
        ] {
            let text = file_with_decision(&format!("{stamp} step a starts"));
            let err = EventFile::parse(&text).expect_err(stamp);
            assert!(err.contains("line 7"), "{err}");
            assert!(err.contains("out of range"), "{err}");
            assert!(err.contains(stamp), "{err}");
        }
        let text = file_with_decision("18446744073709.551615s step a starts");
        let file = EventFile::parse(&text).expect("the last representable instant");
        assert_eq!(
            file.decisions,
            vec![Decision::Step {
                at: SimTime(u64::MAX),
                text: "a starts".into()
            }]
        );
    }
}
