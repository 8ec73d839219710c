//! `weft docker-opts` writes what flannel's `mk-docker-opts.sh` writes, byte for byte:
//! each case in `tests/fixtures/docker-opts/` was recorded from the script itself (see
//! the README there), and the same arguments and environment must give the same file
//! and the same exit code.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/docker-opts")
}

#[test]
fn every_recorded_case_is_reproduced_byte_for_byte() {
    let cases = std::fs::read_to_string(fixtures().join("cases.txt")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for line in cases.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split('|').collect();
        let [name, env_file, args, code] = fields[..] else {
            panic!("bad case line {line:?}");
        };
        let out = dir.path().join(format!("{name}.out"));
        let result = Command::new(env!("CARGO_BIN_EXE_weft"))
            .arg("docker-opts")
            .arg("-f")
            .arg(fixtures().join(env_file))
            .arg("-d")
            .arg(&out)
            .args(args.split_whitespace())
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("EXTRA_OPTS", "--log-level=debug")
            .output()
            .unwrap();
        let want_code: i32 = code.parse().unwrap();
        assert_eq!(
            result.status.code(),
            Some(want_code),
            "{name}: {}",
            String::from_utf8_lossy(&result.stderr)
        );
        let expected = fixtures().join(format!("{name}.out"));
        match std::fs::read(&expected) {
            Ok(want) => assert_eq!(
                String::from_utf8_lossy(&std::fs::read(&out).unwrap()),
                String::from_utf8_lossy(&want),
                "{name}"
            ),
            Err(_) => assert!(!out.exists(), "{name}: the script wrote nothing"),
        }
        checked += 1;
    }
    assert_eq!(checked, 8, "every recorded case ran");
}

/// Like the script, it fails (after writing the file) when the host already routes the
/// subnet through a gateway. Run in a network namespace of its own (`unshare --net`,
/// root), where a veth pair carries such a route.
#[test]
fn a_subnet_already_routed_via_a_gateway_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "needs root (unshare --net): CI=true, so this is a failure"
        );
        eprintln!("SKIPPED a_subnet_already_routed_via_a_gateway_is_refused: needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("docker_opts.env");
    let script = format!(
        "ip link add d0 type veth peer name d1 && ip addr add 192.0.2.1/24 dev d0 \
         && ip link set d1 up && ip link set d0 up \
         && ip route add 10.5.4.0/24 via 192.0.2.2 && exec {} docker-opts -f {} -d {}",
        env!("CARGO_BIN_EXE_weft"),
        fixtures().join("plain.env").display(),
        out.display()
    );
    let result = Command::new("unshare")
        .args(["--net", "sh", "-c", &script])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(1), "{err}");
    assert!(
        err.contains("Your routing table already contains the subnet: 10.5.4.0/24 via 192.0.2.2"),
        "{err}"
    );
    assert!(out.exists(), "written first, as the script does");
}
