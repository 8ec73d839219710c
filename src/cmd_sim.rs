//! `weft sim`: run scenario files in the deterministic simulator, sweep seeds, replay a
//! failed run from its event file.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use weft_sim::record::EventFile;
use weft_sim::{Outcome, RunOptions};

/// `weft sim ...`
#[derive(Debug, Args)]
pub struct SimArgs {
    #[command(subcommand)]
    command: SimCommand,
}

#[derive(Debug, Subcommand)]
enum SimCommand {
    /// Run scenario files (or every *.toml in the folders given): print each trace and
    /// a summary table; write an event file for every failed run.
    Run {
        /// Scenario files or folders of them.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Run with this seed instead of each scenario's own.
        #[arg(long, conflicts_with = "seeds")]
        seed: Option<u64>,
        /// Run every seed in A..B (B excluded) with a progress bar; traces are not
        /// printed.
        #[arg(long, value_parser = parse_range)]
        seeds: Option<(u64, u64)>,
        /// Where event files of failed runs go.
        #[arg(long, default_value = ".")]
        events_dir: PathBuf,
        /// Print only the summary table.
        #[arg(long, short)]
        quiet: bool,
        /// Also write one self-contained HTML page: a timeline per run (leases,
        /// restarts, partitions, outages, pings, transfers, the failure) and the
        /// summary. With --seeds, only failed runs get a timeline.
        #[arg(long, value_name = "FILE.html")]
        report: Option<PathBuf>,
    },
    /// Replay a failed run from its event file, without its seed: the decisions come
    /// from the file. Exits non-zero when the run fails (as it should).
    Replay {
        /// The event file a failed `weft sim run` wrote.
        events: PathBuf,
    },
    /// Shrink a failed run: write a smaller event file that still fails the same way
    /// (fewer nodes, steps, expectations and faulty datagrams, a shorter run), found by
    /// delta debugging over lenient replays. Replay the result with `weft sim replay`.
    Shrink {
        /// The event file a failed `weft sim run` wrote.
        events: PathBuf,
        /// Where to write the smaller file (default: EVENTS with `.shrunk` before its
        /// extension).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Give up after this many runs.
        #[arg(long, default_value_t = 2_000)]
        max_runs: usize,
    },
}

fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("{s:?} is not a range A..B"))?;
    let a: u64 = a.parse().map_err(|_| format!("{a:?} is not a number"))?;
    let b: u64 = b.parse().map_err(|_| format!("{b:?} is not a number"))?;
    if b <= a {
        return Err(format!("the range {s} is empty"));
    }
    Ok((a, b))
}

/// Every scenario file named: files as given, folders' *.toml sorted by name.
fn scenario_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("cannot read {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "toml"))
                .collect();
            found.sort();
            if found.is_empty() {
                bail!("{} holds no *.toml scenario", p.display());
            }
            files.extend(found);
        } else {
            files.push(p.clone());
        }
    }
    Ok(files)
}

struct Row {
    scenario: String,
    seeds: String,
    passed: u64,
    failed: u64,
    simulated: std::time::Duration,
    events: u64,
    wall: std::time::Duration,
}

fn write_event_file(dir: &Path, path: &Path, outcome: &Outcome) -> Result<Option<PathBuf>> {
    let Some(file) = &outcome.event_file else {
        return Ok(None);
    };
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("scenario");
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let out = dir.join(format!("{stem}-seed{}.events", outcome.seed));
    std::fs::write(&out, file.render())
        .with_context(|| format!("cannot write {}", out.display()))?;
    Ok(Some(out))
}

fn print_table(rows: &[Row]) {
    let width = rows
        .iter()
        .map(|r| r.scenario.len())
        .max()
        .unwrap_or(8)
        .max(8);
    println!(
        "{:<width$}  {:>10}  {:>6}  {:>10}  {:>10}  {:>9}",
        "scenario", "seeds", "result", "simulated", "events", "wall"
    );
    for r in rows {
        let result = if r.failed == 0 {
            "passed".to_string()
        } else {
            format!("{} FAILED", r.failed)
        };
        let _ = r.passed;
        println!(
            "{:<width$}  {:>10}  {:>6}  {:>9.1}s  {:>10}  {:>8.3}s",
            r.scenario,
            r.seeds,
            result,
            r.simulated.as_secs_f64(),
            r.events,
            r.wall.as_secs_f64()
        );
    }
}

/// What `weft sim run` was asked to do.
struct RunRequest<'a> {
    paths: &'a [PathBuf],
    seed: Option<u64>,
    seeds: Option<(u64, u64)>,
    events_dir: &'a Path,
    quiet: bool,
    report: Option<&'a Path>,
}

fn run_files(req: &RunRequest<'_>) -> Result<bool> {
    let RunRequest {
        paths,
        seed,
        seeds,
        events_dir,
        quiet,
        ..
    } = *req;
    let mut report = req.report.map(|_| weft_sim::report::Report::new());
    let files = scenario_files(paths)?;
    let mut rows = Vec::new();
    let mut all_ok = true;
    for path in &files {
        let (scenario, source) = weft_sim::scenario::load(path)?;
        let label = path.display().to_string();
        let seed_list: Vec<u64> = match seeds {
            Some((a, b)) => (a..b).collect(),
            None => vec![seed.unwrap_or(scenario.seed)],
        };
        let bar = seeds.map(|_| {
            let bar = indicatif::ProgressBar::new(seed_list.len() as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:30}] {pos}/{len} seeds, {elapsed}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_message(label.clone());
            bar
        });
        let mut row = Row {
            scenario: label.clone(),
            seeds: match seeds {
                Some((a, b)) => format!("{a}..{b}"),
                None => seed_list[0].to_string(),
            },
            passed: 0,
            failed: 0,
            simulated: std::time::Duration::ZERO,
            events: 0,
            wall: std::time::Duration::ZERO,
        };
        for s in seed_list {
            let start = Instant::now();
            let opts = RunOptions {
                seed: Some(s),
                replay: None,
            };
            let outcome = weft_sim::run(&label, &scenario, &source, &opts);
            let wall = start.elapsed();
            row.wall += wall;
            if let Some(r) = &mut report {
                if seeds.is_some() && outcome.failure.is_none() {
                    r.add_row_only(&label, &outcome, wall);
                } else {
                    r.add(&label, &outcome, wall);
                }
            }
            row.simulated += outcome.simulated;
            row.events += outcome.stats.events;
            if bar.is_none() && !quiet {
                print!("{}", outcome.trace);
                println!();
            }
            if let Some(f) = &outcome.failure {
                row.failed += 1;
                all_ok = false;
                let written = write_event_file(events_dir, path, &outcome)?;
                let msg = format!(
                    "{label}: FAILED with seed {s} at virtual time {}: {}{}",
                    f.at.to_string().trim(),
                    f.message,
                    written
                        .map(|p| format!(
                            "\n  event file: {} (replay: weft sim replay {})",
                            p.display(),
                            p.display()
                        ))
                        .unwrap_or_default()
                );
                // Not ProgressBar::println: that prints nothing when the bar is hidden
                // (stderr not a terminal, as in CI).
                match &bar {
                    Some(b) => b.suspend(|| eprintln!("{msg}")),
                    None => eprintln!("{msg}"),
                }
                if bar.is_none() && quiet {
                    // The events that led there: the end of the trace.
                    let lines: Vec<&str> = outcome.trace.lines().collect();
                    for l in &lines[lines.len().saturating_sub(20)..] {
                        eprintln!("  {l}");
                    }
                }
            } else {
                row.passed += 1;
            }
            if let Some(b) = &bar {
                b.inc(1);
            }
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        rows.push(row);
    }
    print_table(&rows);
    if let (Some(r), Some(path)) = (report, req.report) {
        std::fs::write(path, r.render())
            .with_context(|| format!("cannot write the report {}", path.display()))?;
        eprintln!("report: {}", path.display());
    }
    Ok(all_ok)
}

fn replay(events: &Path) -> Result<bool> {
    let text = std::fs::read_to_string(events)
        .with_context(|| format!("cannot read {}", events.display()))?;
    let file = EventFile::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", events.display()))?;
    let label = format!(
        "{} (replayed from {})",
        file.scenario_path,
        events.display()
    );
    let scenario = weft_sim::scenario::parse(&label, &file.scenario)?;
    let opts = RunOptions {
        seed: None,
        replay: Some(file.clone()),
    };
    let start = Instant::now();
    let outcome = weft_sim::run(&file.scenario_path, &scenario, &file.scenario, &opts);
    print!("{}", outcome.trace);
    println!();
    match &outcome.failure {
        Some(f) => {
            let again = f.describe();
            if again == file.failure {
                println!("replay reproduced the failure: {again}");
            } else {
                println!(
                    "replay failed differently:\n  recorded: {}\n  now:      {again}",
                    file.failure
                );
            }
        }
        None => println!(
            "replay did NOT reproduce the failure (recorded: {})",
            file.failure
        ),
    }
    println!(
        "{} events in {:.3}s of wall time",
        outcome.stats.events,
        start.elapsed().as_secs_f64()
    );
    Ok(outcome.passed())
}

fn shrink(events: &Path, output: Option<&Path>, max_runs: usize) -> Result<bool> {
    let text = std::fs::read_to_string(events)
        .with_context(|| format!("cannot read {}", events.display()))?;
    let file = EventFile::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", events.display()))?;
    let start = Instant::now();
    let shrunk = weft_sim::shrink::shrink(&file, max_runs)
        .map_err(|e| anyhow::anyhow!("{}: {e}", events.display()))?;
    let out = output.map_or_else(|| events.with_extension("shrunk.events"), Path::to_path_buf);
    std::fs::write(&out, shrunk.file.render())
        .with_context(|| format!("cannot write {}", out.display()))?;
    let (b, a) = (shrunk.before, shrunk.after);
    println!("failure: {}", shrunk.file.failure);
    println!(
        "nodes {} -> {}, steps {} -> {}, expectations {} -> {}, faulty datagrams {} -> {}, decisions {} -> {}, duration {:?} -> {:?}",
        b.nodes, a.nodes, b.steps, a.steps, b.expects, a.expects, b.faults, a.faults,
        b.decisions, a.decisions, b.duration, a.duration
    );
    println!(
        "{} runs in {:.2}s; wrote {} (replay: weft sim replay {})",
        shrunk.runs,
        start.elapsed().as_secs_f64(),
        out.display(),
        out.display()
    );
    Ok(true)
}

/// Runs `weft sim`. `Ok(false)` means some run failed.
pub fn run(args: SimArgs) -> Result<bool> {
    match args.command {
        SimCommand::Run {
            paths,
            seed,
            seeds,
            events_dir,
            quiet,
            report,
        } => run_files(&RunRequest {
            paths: &paths,
            seed,
            seeds,
            events_dir: &events_dir,
            quiet,
            report: report.as_deref(),
        }),
        SimCommand::Replay { events } => replay(&events),
        SimCommand::Shrink {
            events,
            output,
            max_runs,
        } => shrink(&events, output.as_deref(), max_runs),
    }
}
