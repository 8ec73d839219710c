//! A `weft lab up` run as a child process for the duration of a test, with helpers to
//! act inside its namespaces. Needs root and /dev/net/tun; without them a test says so
//! loudly and passes, except under CI=true, where it fails.

#![allow(dead_code, clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use weft_datapath::daemon::NodeStatus;
use weft_datapath::lab::LabStatus;
use weft_datapath::netns;

/// Whether this machine can run a lab; panics under CI=true when it cannot.
pub fn can_run_lab(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    let tun = Path::new("/dev/net/tun").exists();
    if root && tun {
        return true;
    }
    let why = format!("{test}: needs root and /dev/net/tun (root: {root}, tun: {tun})");
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{why}: CI=true, so this is a failure"
    );
    eprintln!("\n*** SKIPPED {why} ***\n");
    false
}

static SERIAL: AtomicU32 = AtomicU32::new(0);

/// A running lab.
pub struct Lab {
    child: Option<Child>,
    pub dir: PathBuf,
    pub prefix: String,
    pub state: serde_json::Value,
}

impl Lab {
    /// `weft lab up` with these extra arguments; waits (bounded) until it is ready.
    pub fn up(nodes: u8, extra: &[&str]) -> Lab {
        let k = SERIAL.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("wt{}x{k}-", std::process::id());
        let dir = PathBuf::from(format!("/run/weft-test-{}-{k}", std::process::id()));
        let log =
            std::fs::File::create(format!("/tmp/weft-test-lab-{}-{k}.log", std::process::id()))
                .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_weft"))
            .args([
                "lab",
                "up",
                "--nodes",
                &nodes.to_string(),
                "--prefix",
                &prefix,
            ])
            .arg("--state-dir")
            .arg(&dir)
            .args(extra)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut lab = Lab {
            child: Some(child),
            dir,
            prefix,
            state: serde_json::Value::Null,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(text) = std::fs::read_to_string(lab.dir.join("lab.json")) {
                if let Ok(state) = serde_json::from_str::<serde_json::Value>(&text) {
                    if state["ready"] == true {
                        lab.state = state;
                        return lab;
                    }
                }
            }
            if let Some(status) = lab.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("weft lab up exited early: {status}; see /tmp/weft-test-lab-*.log");
            }
            assert!(Instant::now() < deadline, "lab not ready after 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The namespace path of a node or container (`n1`, `n1-c1`).
    pub fn ns(&self, name: &str) -> PathBuf {
        netns::path(&format!("{}{name}", self.prefix))
    }

    /// A container's address.
    pub fn container_ip(&self, name: &str) -> Ipv4Addr {
        for node in self.state["nodes"].as_array().unwrap() {
            for c in node["containers"].as_array().unwrap() {
                if c["name"] == name {
                    return c["ip"].as_str().unwrap().parse().unwrap();
                }
            }
        }
        panic!("no container {name}");
    }

    /// A container's IPv6 address (dual-stack labs).
    pub fn container_ipv6(&self, name: &str) -> Ipv6Addr {
        for node in self.state["nodes"].as_array().unwrap() {
            for c in node["containers"].as_array().unwrap() {
                if c["name"] == name {
                    let ip = c["ipv6"].as_str();
                    return ip
                        .unwrap_or_else(|| panic!("{name}: no IPv6"))
                        .parse()
                        .unwrap();
                }
            }
        }
        panic!("no container {name}");
    }

    /// All container names.
    pub fn containers(&self) -> Vec<String> {
        self.state["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|n| n["containers"].as_array().unwrap().iter())
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    }

    /// The lab as `weft lab status -o json` shows it (the running lab's own answer).
    pub fn status(&self) -> LabStatus {
        let out = self.weft(&["status", "-o", "json"]);
        assert!(out.status.success(), "weft lab status -o json: {out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// A node's status, from [`Lab::status`] (`None` if the lab did not answer).
    pub fn try_node_status(&self, node: &str) -> Option<NodeStatus> {
        let status = self.status();
        let report = status.nodes.into_iter().find(|n| n.name == node);
        assert!(report.is_some(), "no node {node}");
        report.and_then(|n| n.status)
    }

    /// A node's status; the lab must answer.
    pub fn node_status(&self, node: &str) -> NodeStatus {
        self.try_node_status(node)
            .unwrap_or_else(|| panic!("the lab did not answer for {node}"))
    }

    /// Waits (bounded) until a node's status satisfies `pred`, returning it.
    pub fn wait_status(
        &self,
        node: &str,
        what: &str,
        pred: impl Fn(&NodeStatus) -> bool,
    ) -> NodeStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = self.try_node_status(node);
            if let Some(s) = s.as_ref().filter(|s| pred(s)) {
                return s.clone();
            }
            assert!(
                Instant::now() < deadline,
                "{node}: {what} not seen in 30 s; status: {s:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs `weft lab ARGS` against this lab.
    pub fn weft(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_weft"));
        cmd.arg("lab")
            .arg(args[0])
            .arg("--state-dir")
            .arg(&self.dir)
            .args(&args[1..]);
        cmd.output().unwrap()
    }

    /// `ping -c 1` from a namespace, true on a reply (a few tries: ARP and the first
    /// datagram may take a moment).
    pub fn ping(&self, from: &str, to: impl Into<IpAddr>) -> bool {
        let to: IpAddr = to.into();
        (0..5).any(|_| {
            let out = self.weft(&[
                "exec",
                from,
                "--",
                "ping",
                "-c",
                "1",
                "-W",
                "1",
                &to.to_string(),
            ]);
            out.status.success()
        })
    }

    /// Stops `weft lab up` by SIGTERM to its PID and checks it removed everything.
    pub fn down(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.wait();
        // Whatever is left (a crash) goes by `weft lab down`.
        let _ = self.weft(&["down"]);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `f` inside the namespace at `ns`, on its own thread.
pub fn in_ns<T: Send + 'static>(ns: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    netns::in_netns(Some(ns), f).unwrap()
}
