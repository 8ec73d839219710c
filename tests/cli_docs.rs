//! Shell completions and the manual page come from the same clap definitions as
//! `--help`, so they name every subcommand and flag there is.

#![allow(clippy::unwrap_used)]

mod common;

use common::weft;

#[test]
fn completions_know_every_subcommand_and_flag() {
    let out = weft(&["completions", "bash"]);
    assert!(out.status.success(), "{out:?}");
    let script = String::from_utf8_lossy(&out.stdout);
    for word in [
        "docker-opts",
        "leases",
        "daemon",
        "lab",
        "sim",
        "--etcd-prefix",
        "--output",
    ] {
        assert!(script.contains(word), "bash completion lacks {word}");
    }
    let out = weft(&["completions", "zsh"]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("#compdef weft"));
    let out = weft(&["completions", "tcsh"]);
    assert!(!out.status.success(), "an unknown shell is refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("possible values"));
}

#[test]
fn the_manual_page_is_roff_naming_the_subcommands() {
    let out = weft(&["man"]);
    assert!(out.status.success(), "{out:?}");
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        page.starts_with(".ie") || page.contains(".TH weft"),
        "{page}"
    );
    assert!(
        page.contains("docker\\-opts") && page.contains("daemon"),
        "{page}"
    );
}
