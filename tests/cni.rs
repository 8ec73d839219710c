//! The CNI plugin through the real Debian plugins (`bridge`, `host-local` from
//! containernetworking-plugins): ADD, CHECK and DEL of two containers in network
//! namespaces of their own, behind a host namespace of the test's own, and the two
//! containers reaching each other with the addresses the plugin gave them. Root; under
//! CI=true a machine that cannot run it fails the test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const PLUGINS: &str = "/usr/lib/cni";

fn can_run() -> bool {
    let root = nix::unistd::geteuid().is_root();
    let plugins = Path::new(PLUGINS).join("bridge").exists();
    if root && plugins {
        return true;
    }
    let why = format!("the CNI test needs root and {PLUGINS}/bridge (root: {root}, plugins: {plugins}; apt-get install containernetworking-plugins)");
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{why}: CI=true, so this is a failure"
    );
    eprintln!("\n*** SKIPPED {why} ***\n");
    false
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?}: {out:?}");
}

/// The namespaces this test made, deleted however it ends.
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

struct Plugin {
    host: String,
    bin: PathBuf,
    conf: String,
}

impl Plugin {
    /// Runs the plugin in the host namespace, as a runtime would.
    fn run(&self, command: &str, container: &str, conf: &str) -> Output {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.host])
            .arg(self.bin.join("flannel"))
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container)
            .env("CNI_NETNS", format!("/var/run/netns/{container}"))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", format!("{}:{PLUGINS}", self.bin.display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    fn ok(&self, command: &str, container: &str, conf: &str) -> serde_json::Value {
        let out = self.run(command, container, conf);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{command} {container}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null)
    }
}

fn address(result: &serde_json::Value) -> String {
    let a = result["ips"][0]["address"].as_str().expect("an address");
    a.split('/').next().unwrap().to_string()
}

#[test]
fn add_check_del_through_the_real_bridge_and_host_local_plugins() {
    if !can_run() {
        return;
    }
    let tag = std::process::id();
    let (host, c1, c2) = (
        format!("wcni{tag}h"),
        format!("wcni{tag}a"),
        format!("wcni{tag}b"),
    );
    let _guard = Namespaces(vec![host.clone(), c1.clone(), c2.clone()]);
    for ns in [&host, &c1, &c2] {
        ip(&["netns", "add", ns]);
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_weft"), bin.join("flannel")).unwrap();
    let subnet_env = dir.path().join("subnet.env");
    std::fs::write(
        &subnet_env,
        "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.4.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "weft-test",
        "type": "flannel",
        "subnetFile": subnet_env,
        "dataDir": data,
        "ipam": {"dataDir": dir.path().join("ipam")},
        "delegate": {"bridge": "wcni0"},
    })
    .to_string();
    let plugin = Plugin { host, bin, conf };

    let version = plugin.ok("VERSION", &c1, "");
    assert!(
        version["supportedVersions"].to_string().contains("1.0.0"),
        "{version}"
    );

    let r1 = plugin.ok("ADD", &c1, &plugin.conf);
    let r2 = plugin.ok("ADD", &c2, &plugin.conf);
    let (a1, a2) = (address(&r1), address(&r2));
    assert!(
        a1.starts_with("10.5.4.") && a2.starts_with("10.5.4.") && a1 != a2,
        "{r1} {r2}"
    );
    // What flannel's plugin hands the bridge plugin, kept for DEL.
    let kept: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join(&c1)).unwrap()).unwrap();
    assert_eq!(kept["type"], "bridge");
    assert_eq!(kept["isGateway"], true);
    assert_eq!(
        kept["ipMasq"], true,
        "weft does not masquerade, so the bridge does"
    );
    assert_eq!(kept["mtu"], 1472);
    assert_eq!(kept["ipam"]["ranges"][0][0]["subnet"], "10.5.4.0/24");
    assert_eq!(kept["ipam"]["routes"][0]["dst"], "10.5.0.0/16");

    // The containers reach each other, and route the overlay through the bridge.
    let ping = Command::new("ip")
        .args(["netns", "exec", &c1, "ping", "-c", "1", "-W", "2", &a2])
        .output()
        .unwrap();
    assert!(ping.status.success(), "{ping:?}");
    let routes = Command::new("ip")
        .args(["netns", "exec", &c1, "ip", "route"])
        .output()
        .unwrap();
    let routes = String::from_utf8_lossy(&routes.stdout);
    assert!(routes.contains("10.5.0.0/16 via 10.5.4.1"), "{routes}");

    // CHECK against what ADD returned; once the node holds another subnet, it fails.
    let mut check: serde_json::Value = serde_json::from_str(&plugin.conf).unwrap();
    check["prevResult"] = r1.clone();
    plugin.ok("CHECK", &c1, &check.to_string());
    let env = std::fs::read_to_string(&subnet_env).unwrap();
    std::fs::write(&subnet_env, env.replace("10.5.4.1/24", "10.5.9.1/24")).unwrap();
    let out = plugin.run("CHECK", &c1, &check.to_string());
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    std::fs::write(&subnet_env, env).unwrap();

    // DEL removes the container's interface and the kept config; a second DEL is fine.
    plugin.ok("DEL", &c1, &plugin.conf);
    assert!(!data.join(&c1).exists());
    let links = Command::new("ip")
        .args(["netns", "exec", &c1, "ip", "-o", "link"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&links.stdout).contains("eth0"));
    plugin.ok("DEL", &c1, &plugin.conf);

    // A node without subnet.env: a CNI error naming the file.
    std::fs::remove_file(&subnet_env).unwrap();
    let out = plugin.run("ADD", &c1, &plugin.conf);
    assert_eq!(out.status.code(), Some(1));
    let err: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(err["msg"].as_str().unwrap().contains("subnet.env"), "{err}");
    plugin.ok("DEL", &c2, &plugin.conf);
}
