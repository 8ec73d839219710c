//! `weft sim run --report` writes one self-contained page that a browser draws: the
//! test renders it in headless Chromium (Debian's `chromium`) and checks that the
//! screenshot shows the timelines, not a blank page. Under CI=true a machine without
//! Chromium fails the test; elsewhere it says so loudly and passes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::weft;

#[test]
fn a_report_renders_in_chromium_with_a_timeline_per_run() {
    let dir = tempfile::tempdir().unwrap();
    let html = dir.path().join("report.html");
    let root = env!("CARGO_MANIFEST_DIR");
    let chaos = format!("{root}/scenarios/14-chaos.toml");
    let outage = format!("{root}/scenarios/13-store-outage-past-ttl.toml");
    let out = weft(&[
        "sim",
        "run",
        "-q",
        &chaos,
        &outage,
        "--report",
        html.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let page = std::fs::read_to_string(&html).unwrap();
    assert_eq!(page.matches("<svg").count(), 2, "one timeline per run");
    // 10.5.0.48/28: a subnet the chaos scenario's nodes lease (its snapshot,
    // tests/snapshots/sim_scenarios__chaos.snap, shows which).
    for want in ["outage", "10.5.0.48/28", "b,c -&gt; store", "passed"] {
        assert!(page.contains(want), "the report lacks {want}");
    }
    assert_eq!(
        page.matches("://").count(),
        page.matches("http://www.w3.org/2000/svg").count(),
        "self-contained: no address but the SVG namespace"
    );

    let Ok(chromium) = which("chromium") else {
        let why = "the report test needs chromium (apt-get install chromium)";
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{why}: CI=true, so this is a failure"
        );
        eprintln!("\n*** SKIPPED {why} ***\n");
        return;
    };
    let png = dir.path().join("report.png");
    let status = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1100,1000",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.path().join("profile").display()
        ))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", html.display()))
        .output()
        .unwrap();
    assert!(png.exists(), "no screenshot: {status:?}");
    let decoder = png::Decoder::new(std::fs::File::open(&png).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let bytes = &buf[..info.buffer_size()];
    let channels = info.color_type.samples();
    let pixels = bytes.chunks(channels);
    let total = pixels.len();
    // Lease bars are blue, outages red, partitions orange: count clearly coloured pixels.
    let coloured = bytes
        .chunks(channels)
        .filter(|p| {
            let (r, g, b) = (i32::from(p[0]), i32::from(p[1]), i32::from(p[2]));
            (r - g).abs() > 40 || (g - b).abs() > 40 || (r - b).abs() > 40
        })
        .count();
    assert!(
        coloured * 100 > total * 2,
        "the screenshot is (nearly) blank: {coloured} of {total} pixels coloured"
    );
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}
