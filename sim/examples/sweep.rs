//! A scenario sweep with nothing but the simulator: `sweep FILE... --seeds A..B` runs
//! every file over every seed and stops at the first failure, printing it; exit code 1
//! then, 0 when every run passed, 2 on bad arguments or an unreadable file. With
//! `SWEEP_TRACE` set in the environment it prints every run's trace.
//!
//! `scripts/mutants` runs it after each mutation of weft-core: it needs only weft-core
//! and weft-sim rebuilt, where `weft sim run` needs the whole binary (the stores, the
//! datapath) relinked on a machine whose two cores are shared.

use std::path::Path;
use std::process::ExitCode;

use weft_sim::{run, RunOptions};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut files = Vec::new();
    let mut seeds = 0..10u64;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--seeds" {
            let parsed = it.next().and_then(|r| {
                let (a, b) = r.split_once("..")?;
                Some(a.parse().ok()?..b.parse().ok()?)
            });
            match parsed {
                Some(r) => seeds = r,
                None => {
                    eprintln!("usage: sweep FILE... [--seeds A..B]");
                    return ExitCode::from(2);
                }
            }
        } else {
            files.push(a.clone());
        }
    }
    for file in &files {
        let (scenario, source) = match weft_sim::scenario::load(Path::new(file)) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        };
        for seed in seeds.clone() {
            let opts = RunOptions {
                seed: Some(seed),
                replay: None,
            };
            let outcome = run(file, &scenario, &source, &opts);
            if std::env::var_os("SWEEP_TRACE").is_some() {
                print!("{}", outcome.trace);
            }
            if let Some(f) = outcome.failure {
                println!("{file}: FAILED with seed {seed}: {}", f.describe());
                return ExitCode::from(1);
            }
        }
    }
    ExitCode::SUCCESS
}
