//! Runs one scenario file and prints its trace: `cargo run -p weft-sim --example run -- FILE [SEED]`.
//! (`weft sim run` is the full command; this needs no binary build.)

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: run FILE [SEED]");
        std::process::exit(2);
    };
    let seed = args.next().and_then(|s| s.parse().ok());
    let (scenario, source) = match weft_sim::scenario::load(std::path::Path::new(&path)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let outcome = weft_sim::run(
        &path,
        &scenario,
        &source,
        &weft_sim::RunOptions { seed, replay: None },
    );
    print!("{}", outcome.trace);
    std::process::exit(i32::from(!outcome.passed()));
}
