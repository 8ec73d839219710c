//! A small real network for the kernel backends' tests, built with `ip` by the test
//! itself (not `weft lab`): an underlay namespace routing between two bridges,
//! 192.0.2.0/24 and 198.51.100.0/24; host namespaces on either, each joined by a veth
//! pair and running a real `weft daemon` process (the built binary, `ip netns exec`);
//! and a container namespace behind each host, on the host's subnet. The daemons share
//! one real etcd, reached through a [`proxy::Relay`] on each host's loopback.
//!
//! Everything is removed when the [`Underlay`] is dropped, even after a failed
//! assertion: each daemon is killed by its PID, the relays stop, the namespaces go (and
//! every link in them with them). Needs root and `ip`; without them a test says so
//! loudly and passes, except under `CI=true`, where it fails.

#![allow(dead_code, clippy::unwrap_used)]

pub mod capture;
mod containers;
pub mod proxy;
mod v6;

// Used by some of the test binaries that include this module, not all.
#[allow(unused_imports)]
pub use v6::host_ipv6;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use weft_datapath::netns;
use weft_stores::testing::Etcd;

pub const PREFIX: &str = "/coreos.com/network";

/// Whether this machine can build the network; panics under CI=true when it cannot.
pub fn can_run(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    let ip = Command::new("ip").arg("-V").output().is_ok();
    if root && ip {
        return true;
    }
    let why = format!("{test}: needs root and iproute2 (root: {root}, ip: {ip})");
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{why}: CI=true, so this is a failure"
    );
    eprintln!("\n*** SKIPPED {why} ***\n");
    false
}

/// Runs a command to completion, panicking with its stderr on failure; returns stdout.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Polls `done` every 200 ms until it holds, for at most `patience`.
pub fn wait_until(what: &str, patience: Duration, done: impl FnMut() -> bool) {
    wait_or_show(what, patience, done, String::new);
}

/// [`wait_until`], showing `context()` (a log) if it times out.
pub fn wait_or_show(
    what: &str,
    patience: Duration,
    mut done: impl FnMut() -> bool,
    context: impl Fn() -> String,
) {
    let deadline = Instant::now() + patience;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {patience:?}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

static SERIAL: AtomicU32 = AtomicU32::new(0);

/// One host: its namespace, address, daemon and container.
pub struct Host {
    pub ns: String,
    pub ip: Ipv4Addr,
    pub env: PathBuf,
    daemon: Option<Child>,
    starts: u32,
    pub log: PathBuf,
    /// Its lease's subnet, once known.
    pub subnet: Option<ipnet::Ipv4Net>,
    pub container: Option<String>,
}

/// See the module docs.
pub struct Underlay {
    pub prefix: String,
    pub dir: tempfile::TempDir,
    pub hosts: Vec<Host>,
    namespaces: Vec<String>,
    /// Each host's relays (by host index, 0-based), one per etcd member.
    relays: Vec<(usize, proxy::Relay)>,
    store: String,
    etcd_ports: Vec<u16>,
    /// `--subnet-lease-ttl` of the daemons started from now on, in seconds.
    pub lease_ttl: u32,
}

impl Underlay {
    /// The underlay namespace and one host per address in `ips` (192.0.2.x or
    /// 198.51.100.x), each with a relay to `etcd`.
    pub fn new(tag: &str, ips: &[&str], etcd: &Etcd) -> Underlay {
        Underlay::with_members(tag, ips, etcd, 1)
    }

    /// [`Underlay::new`] for a cluster: each host relays to every one of the first
    /// `members` members of `etcd`, and the daemons' store URL names them all.
    pub fn with_members(tag: &str, ips: &[&str], etcd: &Etcd, members: usize) -> Underlay {
        let k = SERIAL.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("wk{}{tag}{k}-", std::process::id());
        let etcd_ports: Vec<u16> = (0..members)
            .map(|i| {
                etcd.endpoint(i)
                    .rsplit(':')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        let endpoints: Vec<String> = etcd_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let mut net = Underlay {
            prefix,
            dir: tempfile::tempdir().unwrap(),
            hosts: Vec::new(),
            namespaces: Vec::new(),
            relays: Vec::new(),
            store: format!("etcd://{}", endpoints.join(",")),
            etcd_ports,
            lease_ttl: 600,
        };
        let ul = net.add_ns("ul");
        for (br, addr) in [("br0", "192.0.2.254/24"), ("br1", "198.51.100.254/24")] {
            run("ip", &["-n", &ul, "link", "add", br, "type", "bridge"]);
            run("ip", &["-n", &ul, "addr", "add", addr, "dev", br]);
            run("ip", &["-n", &ul, "link", "set", br, "up"]);
        }
        run(
            "ip",
            &[
                "netns",
                "exec",
                &ul,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
        );
        for (i, ip) in ips.iter().enumerate() {
            net.add_host(i + 1, ip.parse().unwrap());
        }
        net
    }

    pub(crate) fn add_ns(&mut self, name: &str) -> String {
        let ns = format!("{}{name}", self.prefix);
        run("ip", &["netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        run("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        ns
    }

    fn add_host(&mut self, i: usize, ip: Ipv4Addr) {
        let ns = self.add_ns(&format!("h{i}"));
        let ul = format!("{}ul", self.prefix);
        let (bridge, router) = if ip.octets()[0] == 192 {
            ("br0", "192.0.2.254")
        } else {
            ("br1", "198.51.100.254")
        };
        let port = format!("h{i}");
        run(
            "ip",
            &[
                "-n", &ul, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ],
        );
        run(
            "ip",
            &["-n", &ul, "link", "set", &port, "master", bridge, "up"],
        );
        run(
            "ip",
            &["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
        );
        run("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
        run("ip", &["-n", &ns, "route", "add", "default", "via", router]);
        run(
            "ip",
            &[
                "netns",
                "exec",
                &ns,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
        );
        self.hosts.push(Host {
            env: self.dir.path().join(format!("h{i}.env")),
            log: PathBuf::new(),
            ns,
            ip,
            daemon: None,
            starts: 0,
            subnet: None,
            container: None,
        });
        self.connect_store(i);
    }

    /// Host `i`'s relays to etcd (1-based), started.
    pub fn connect_store(&mut self, i: usize) {
        let ns = netns::path(&self.hosts[i - 1].ns);
        for &port in &self.etcd_ports {
            let target = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let relay = proxy::Relay::start(&ns, port, target);
            self.relays.push((i - 1, relay));
        }
    }

    /// Cuts host `i` off etcd (1-based): its relays stop and their connections break.
    pub fn disconnect_store(&mut self, i: usize) {
        self.relays.retain(|(h, _)| *h != i - 1);
    }

    /// Whether host `i`'s daemon process is still running.
    pub fn is_running(&mut self, i: usize) -> bool {
        let h = &mut self.hosts[i - 1];
        h.daemon
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// Waits up to `patience` for host `i`'s daemon to exit on its own; its exit
    /// status (the process reaped), or `None` if it still runs.
    pub fn wait_exit(&mut self, i: usize, patience: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + patience;
        loop {
            let child = self.hosts[i - 1].daemon.as_mut()?;
            if let Some(status) = child.try_wait().unwrap() {
                self.hosts[i - 1].daemon = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills host `i`'s daemon with SIGKILL by its PID, and reaps it.
    pub fn kill_9(&mut self, i: usize) {
        let mut child = self.hosts[i - 1].daemon.take().unwrap();
        kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
        child.wait().unwrap();
    }

    /// A namespace standing in for the world outside the overlay: on the underlay's
    /// 198.51.100.0/24 bridge at `ip`, its default route via the underlay router, which
    /// knows no route to the overlay. Returns the namespace.
    pub fn add_outside(&mut self, ip: Ipv4Addr) -> String {
        let ns = self.add_ns("out");
        let ul = format!("{}ul", self.prefix);
        run(
            "ip",
            &[
                "-n", &ul, "link", "add", "out", "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ],
        );
        run(
            "ip",
            &["-n", &ul, "link", "set", "out", "master", "br1", "up"],
        );
        run(
            "ip",
            &["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
        );
        run("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
        run(
            "ip",
            &[
                "-n",
                &ns,
                "route",
                "add",
                "default",
                "via",
                "198.51.100.254",
            ],
        );
        ns
    }

    /// Writes the network config into etcd with `weft config set`.
    pub fn set_config(&self, config: &str) {
        let path = self.dir.path().join("net-conf.json");
        std::fs::write(&path, config).unwrap();
        run(
            env!("CARGO_BIN_EXE_weft"),
            &[
                "config",
                "set",
                "--store",
                &self.store,
                path.to_str().unwrap(),
            ],
        );
    }

    /// Starts host `i`'s daemon (1-based) and waits for its subnet.env; returns its
    /// subnet.
    pub fn start(&mut self, i: usize) -> ipnet::Ipv4Net {
        self.start_with(i, &[])
    }

    /// [`Underlay::start`], with more `weft daemon` flags.
    pub fn start_with(&mut self, i: usize, flags: &[&str]) -> ipnet::Ipv4Net {
        self.start_env(i, flags, &[])
    }

    /// [`Underlay::start_with`], with variables in the daemon's environment.
    pub fn start_env(&mut self, i: usize, flags: &[&str], env: &[(&str, &str)]) -> ipnet::Ipv4Net {
        let text = self.launch(i, flags, env);
        let subnet: ipnet::Ipv4Net = text
            .lines()
            .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))
            .unwrap_or_else(|| panic!("h{i}: no FLANNEL_SUBNET in\n{text}"))
            .parse()
            .unwrap();
        let subnet = subnet.trunc();
        let h = &mut self.hosts[i - 1];
        if let Some(old) = h.subnet {
            assert_eq!(old, subnet, "h{i} came back on another subnet");
        }
        h.subnet = Some(subnet);
        subnet
    }

    /// Starts host `i`'s daemon on an IPv6-only network (`EnableIPv4: false`): its
    /// subnet.env has no IPv4 lines at all (flannel's WriteSubnetFile), only
    /// `FLANNEL_IPV6_SUBNET`; returns that subnet.
    pub fn start6(&mut self, i: usize) -> ipnet::Ipv6Net {
        self.start6_env(i, &[])
    }

    /// [`Underlay::start6`] with variables in the daemon's environment.
    pub fn start6_env(&mut self, i: usize, env: &[(&str, &str)]) -> ipnet::Ipv6Net {
        let text = self.launch(i, &[], env);
        assert!(
            !text.contains("FLANNEL_NETWORK=") && !text.contains("FLANNEL_SUBNET="),
            "h{i}: IPv4 lines in an IPv6-only subnet.env:\n{text}"
        );
        self.subnet6(i)
    }

    /// Starts host `i`'s daemon and waits (bounded) for its subnet.env; returns its text.
    fn launch(&mut self, i: usize, flags: &[&str], env: &[(&str, &str)]) -> String {
        let store = self.store.clone();
        let ttl = self.lease_ttl.to_string();
        let dir = self.dir.path().to_path_buf();
        let h = &mut self.hosts[i - 1];
        assert!(h.daemon.is_none(), "h{i} already runs");
        h.starts += 1;
        h.log = dir.join(format!("h{i}.{}.log", h.starts));
        let _ = std::fs::remove_file(&h.env);
        let log = std::fs::File::create(&h.log).unwrap();
        // By its path: a test may give the daemon a PATH without ip (or nft).
        let ip = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("ip");
        let child = Command::new(ip)
            .args(["netns", "exec", &h.ns, env!("CARGO_BIN_EXE_weft"), "daemon"])
            .args([
                "--store",
                &store,
                "--iface",
                "eth0",
                "--subnet-lease-ttl",
                &ttl,
            ])
            .args(flags)
            .arg("--subnet-file")
            .arg(&h.env)
            .env("WEFT_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        h.daemon = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        let text = loop {
            if let Ok(text) = std::fs::read_to_string(&h.env) {
                break text;
            }
            let exited = h.daemon.as_mut().unwrap().try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "h{i}: no subnet.env (exited: {exited:?}); log:\n{}",
                std::fs::read_to_string(&h.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        text
    }

    /// Stops host `i`'s daemon by SIGTERM to its PID (a clean stop: the lease stays).
    pub fn stop(&mut self, i: usize) {
        let h = &mut self.hosts[i - 1];
        let mut child = h.daemon.take().unwrap();
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("h{i} ignored SIGTERM for 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Host `i`'s current daemon log.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.hosts[i - 1].log).unwrap_or_default()
    }
}

impl Drop for Underlay {
    fn drop(&mut self) {
        for h in &mut self.hosts {
            if let Some(mut child) = h.daemon.take() {
                let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
                let _ = child.wait();
            }
        }
        self.relays.clear();
        for ns in self.namespaces.drain(..).rev() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
}
