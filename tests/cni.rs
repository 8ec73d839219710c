//! The CNI plugin through the real Debian plugins (`bridge`, `host-local` from
//! containernetworking-plugins): ADD, CHECK and DEL of two containers in network
//! namespaces of their own, behind a host namespace of the test's own, and the two
//! containers reaching each other with the addresses the plugin gave them; then two
//! containers on two nodes of a lab, across the overlay. Root; under CI=true a machine
//! that cannot run it fails the test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::net::{Ipv4Addr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::lab::Lab;
use weft_datapath::netns;

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
    /// The host's network namespace, as a path.
    host: PathBuf,
    bin: PathBuf,
    conf: String,
}

impl Plugin {
    /// Runs the plugin in the host namespace, as a runtime would.
    fn run(&self, command: &str, container: &str, conf: &str) -> Output {
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", self.host.display()))
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
    let plugin = Plugin {
        host: netns::path(&host),
        bin,
        conf,
    };

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

/// The plugin's configuration for a node whose subnet.env is `subnet_env`, keeping its
/// state under `dir`.
fn node_conf(dir: &Path, subnet_env: &Path) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "weft-lab",
        "type": "flannel",
        "subnetFile": subnet_env,
        "dataDir": dir.join("data"),
        "ipam": {"dataDir": dir.join("ipam")},
    })
    .to_string()
}

#[test]
fn containers_on_two_lab_nodes_reach_each_other_with_the_plugins_addresses() {
    if !can_run() {
        return;
    }
    // Two nodes on the udp backend, with no containers of the lab's own: the plugin
    // makes them, on the bridge it creates in each node's namespace.
    let lab = Lab::up(2, &["--containers", "0"]);
    let status = lab.status();
    let network = status.network.expect("the lab's overlay network");
    let tag = std::process::id();
    let containers = [format!("wcni{tag}n1"), format!("wcni{tag}n2")];
    let _guard = Namespaces(containers.to_vec());
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_weft"), bin.join("flannel")).unwrap();

    let mut added = Vec::new();
    for (node, container) in ["n1", "n2"].into_iter().zip(&containers) {
        let s = lab.wait_status(node, "a lease", |s| s.holds_lease() && s.mtu.is_some());
        let subnet = s.lease.as_ref().unwrap().subnet.expect("an IPv4 subnet");
        // What the daemon would write for this node (the lab's nodes keep theirs in
        // memory); IPMASQ=true, so the bridge masquerades nothing and the peer sees the
        // container's own address.
        let node_dir = dir.path().join(node);
        std::fs::create_dir(&node_dir).unwrap();
        let subnet_env = node_dir.join("subnet.env");
        let gateway = Ipv4Addr::from(u32::from(subnet.network()) + 1);
        std::fs::write(
            &subnet_env,
            format!(
                "FLANNEL_NETWORK={network}\nFLANNEL_SUBNET={gateway}/{}\nFLANNEL_MTU={}\nFLANNEL_IPMASQ=true\n",
                subnet.prefix_len(),
                s.mtu.unwrap()
            ),
        )
        .unwrap();
        ip(&["netns", "add", container]);
        let plugin = Plugin {
            host: lab.ns(node),
            bin: bin.clone(),
            conf: node_conf(&node_dir, &subnet_env),
        };
        let result = plugin.ok("ADD", container, &plugin.conf);
        let address: Ipv4Addr = address(&result).parse().unwrap();
        assert!(
            subnet.contains(&address),
            "{node}: {address} not in {subnet}"
        );
        added.push((plugin, address));
    }
    let (a1, a2) = (added[0].1, added[1].1);

    // n1's container reaches n2's across the overlay...
    let ping = Command::new("ip")
        .args([
            "netns",
            "exec",
            &containers[0],
            "ping",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "2",
        ])
        .arg(a2.to_string())
        .output()
        .unwrap();
    assert!(ping.status.success(), "{ping:?}");
    // ...and n2's container sees the datagram come from n1's container's own address.
    let listener = netns::in_netns(Some(&netns::path(&containers[1])), move || {
        UdpSocket::bind((a2, 9999)).unwrap()
    })
    .unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let sender = netns::in_netns(Some(&netns::path(&containers[0])), move || {
        UdpSocket::bind((a1, 0)).unwrap()
    })
    .unwrap();
    sender.send_to(b"across the overlay", (a2, 9999)).unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = listener.recv_from(&mut buf).expect("the datagram arrives");
    assert_eq!(&buf[..n], b"across the overlay");
    assert_eq!(
        from.ip(),
        std::net::IpAddr::V4(a1),
        "the source is the container's"
    );

    for ((plugin, _), container) in added.iter().zip(&containers) {
        plugin.ok("DEL", container, &plugin.conf);
    }
    lab.down();
}
