//! Throwaway etcd servers for tests and benchmarks (feature `testing`).
//!
//! [`Etcd::start`] runs the system's `etcd` binary (Debian's `etcd-server`) as a child
//! process on free loopback ports with a temporary data directory, waits until it serves
//! requests, and stops it by its PID when dropped. A member can be killed with SIGKILL
//! and started again on the same ports and data directory, which is how tests take
//! etcd away from a running daemon.
//!
//! Tests that need etcd call [`etcd_or_skip`]: where etcd cannot start it fails the test
//! under `CI=true` and otherwise says so loudly and lets the test return early.
//! Traffic goes only to 127.0.0.1.
//!
//! [`NodeRunner`] drives a real `weft_core::node::Node` against any store on tokio, the
//! way the daemon does, minus the files: for tests and the scale benchmark.

mod node;
mod pki;

pub use node::NodeRunner;
pub use pki::Pki;

use std::fmt;
use std::fs::File;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The binaries, overridable for a machine that keeps them elsewhere.
fn etcd_bin() -> String {
    std::env::var("WEFT_ETCD_BIN").unwrap_or_else(|_| "etcd".to_string())
}

fn etcdctl_bin() -> String {
    std::env::var("WEFT_ETCDCTL_BIN").unwrap_or_else(|_| "etcdctl".to_string())
}

/// How long a member may take to serve requests after it is started.
const START_PATIENCE: Duration = Duration::from_secs(30);

/// Server-side TLS: the member serves HTTPS with `cert`/`key` and requires client
/// certificates signed by `client_ca`.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The server certificate (PEM), valid for 127.0.0.1.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA that client certificates must chain to (PEM).
    pub client_ca: PathBuf,
    /// A client certificate, key and CA for the helper's own `etcdctl` calls.
    pub etcdctl: ClientTls,
}

/// Client-side TLS files, as `etcdctl` and `weft --etcd-*file` take them.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// The CA that signed the server certificate.
    pub ca: PathBuf,
    /// The client certificate.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

/// How to start a cluster.
#[derive(Debug, Clone, Default)]
pub struct EtcdConfig {
    /// Number of members (default 1).
    pub members: usize,
    /// Serve clients over TLS with client-certificate authentication.
    pub tls: Option<ServerTls>,
    /// Where the data directories go (default: the system temporary directory).
    pub data_root: Option<PathBuf>,
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// A running etcd cluster of one or more members; see the module docs.
pub struct Etcd {
    config: EtcdConfig,
    dir: TempDir,
    members: Vec<Member>,
}

impl fmt::Debug for Etcd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Etcd")
            .field("dir", &self.dir.path())
            .field("endpoints", &self.endpoints())
            .finish()
    }
}

/// Why a cluster could not be started.
#[derive(Debug)]
pub struct StartError(String);

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// Starts a one-member etcd, or reports why not: under `CI=true` a failure panics (a test
/// that cannot run must not pass); elsewhere it prints a loud notice naming `test` and
/// returns `None`, and the test returns early.
pub fn etcd_or_skip(test: &str) -> Option<Etcd> {
    skip_unless(test, Etcd::start())
}

/// [`etcd_or_skip`] for a cluster started some other way.
pub fn skip_unless(test: &str, started: Result<Etcd, StartError>) -> Option<Etcd> {
    match started {
        Ok(etcd) => Some(etcd),
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("{test}: cannot start etcd under CI=true: {e}")
        }
        Err(e) => {
            eprintln!(
                "\n!!!!!!!! {test}: SKIPPED, cannot start etcd: {e}\n!!!!!!!! install it with \
                 `apt-get install -y etcd-server etcd-client` (scripts/test does)\n"
            );
            None
        }
    }
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> Result<u16, StartError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| StartError(format!("cannot find a free port: {e}")))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| StartError(format!("cannot find a free port: {e}")))
}

impl Etcd {
    /// A one-member cluster on plain HTTP.
    pub fn start() -> Result<Etcd, StartError> {
        Etcd::start_with(EtcdConfig::default())
    }

    /// A cluster as `config` says. Ports are probed free just before use; a member that
    /// loses the race for one is retried on new ports.
    pub fn start_with(mut config: EtcdConfig) -> Result<Etcd, StartError> {
        config.members = config.members.max(1);
        let mut last = None;
        for _ in 0..3 {
            match Etcd::try_start(config.clone()) {
                Ok(etcd) => return Ok(etcd),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| StartError("no attempt made".to_string())))
    }

    fn try_start(config: EtcdConfig) -> Result<Etcd, StartError> {
        let mut builder = tempfile::Builder::new();
        builder.prefix("weft-etcd-");
        let dir = match &config.data_root {
            Some(root) => builder.tempdir_in(root),
            None => builder.tempdir(),
        }
        .map_err(|e| StartError(format!("cannot make a data directory: {e}")))?;
        let mut members = Vec::new();
        for i in 0..config.members {
            members.push(Member {
                name: format!("m{i}"),
                client_port: free_port()?,
                peer_port: free_port()?,
                child: None,
            });
        }
        let mut etcd = Etcd {
            config,
            dir,
            members,
        };
        for i in 0..etcd.members.len() {
            etcd.spawn(i)?;
        }
        for i in 0..etcd.members.len() {
            etcd.wait_healthy(i)?;
        }
        Ok(etcd)
    }

    fn scheme(&self) -> &'static str {
        if self.config.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// One token for the whole cluster, unique to it.
    fn cluster_token(&self) -> String {
        format!("weft-{}", self.members[0].peer_port)
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The data directory of member `i`.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(&self.members[i].name)
    }

    /// The log file of member `i` (appended to across restarts).
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}.log", self.members[i].name))
    }

    fn spawn(&mut self, i: usize) -> Result<(), StartError> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .map_err(|e| StartError(format!("cannot open the etcd log: {e}")))?;
        let log2 = log
            .try_clone()
            .map_err(|e| StartError(format!("cannot open the etcd log: {e}")))?;
        let m = &self.members[i];
        let client_url = format!("{}://127.0.0.1:{}", self.scheme(), m.client_port);
        let peer_url = format!("http://127.0.0.1:{}", m.peer_port);
        let mut cmd = Command::new(etcd_bin());
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(self.data_dir(i))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &self.initial_cluster()])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.cluster_token()])
            // Quick elections, and leases as short as one second.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--log-level", "warn"]);
        if let Some(tls) = &self.config.tls {
            cmd.arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key)
                .arg("--trusted-ca-file")
                .arg(&tls.client_ca)
                .arg("--client-cert-auth");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| StartError(format!("cannot run {}: {e}", etcd_bin())))?;
        self.members[i].child = Some(child);
        Ok(())
    }

    fn wait_healthy(&mut self, i: usize) -> Result<(), StartError> {
        let deadline = Instant::now() + START_PATIENCE;
        loop {
            if let Some(child) = self.members[i].child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.members[i].child = None;
                    return Err(StartError(format!(
                        "etcd member {i} exited with {status}; log:\n{}",
                        self.log_tail(i)
                    )));
                }
            }
            let out = self.etcdctl_at(&[self.endpoint(i)], &["endpoint", "health"]);
            if out.as_ref().is_ok_and(|o| o.status.success()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(StartError(format!(
                    "etcd member {i} not healthy after {START_PATIENCE:?}; log:\n{}",
                    self.log_tail(i)
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_tail(&self, i: usize) -> String {
        let text = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// `127.0.0.1:PORT` of member `i`.
    pub fn endpoint(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.members[i].client_port)
    }

    /// Every member's `127.0.0.1:PORT`.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// The store URL naming every member: `etcd://127.0.0.1:P1,127.0.0.1:P2`.
    pub fn url(&self) -> String {
        format!("etcd://{}", self.endpoints().join(","))
    }

    /// The PID of member `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// Kills member `i` with SIGKILL (by its PID) and reaps it; its data directory stays.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its ports and data directory, and waits until it is
    /// healthy (which, for one member of several, needs a quorum of the others).
    pub fn restart(&mut self, i: usize) -> Result<(), StartError> {
        self.kill(i);
        // The ports were ours a moment ago; a member of an existing cluster rejoins.
        self.spawn(i)?;
        self.wait_healthy(i)
    }

    /// Runs `etcdctl ARGS` against every member (with the helper's client certificate
    /// under TLS) and returns its output.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        match self.etcdctl_at(&self.endpoints(), args) {
            Ok(out) => out,
            Err(e) => panic!("cannot run {}: {e}", etcdctl_bin()),
        }
    }

    fn etcdctl_at(&self, endpoints: &[String], args: &[&str]) -> std::io::Result<Output> {
        let endpoints: Vec<String> = endpoints
            .iter()
            .map(|e| format!("{}://{e}", self.scheme()))
            .collect();
        let mut cmd = Command::new(etcdctl_bin());
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .args(["--dial-timeout=2s", "--command-timeout=5s"]);
        if let Some(tls) = &self.config.tls {
            let c = &tls.etcdctl;
            cmd.arg(flag("--cacert", &c.ca))
                .arg(flag("--cert", &c.cert))
                .arg(flag("--key", &c.key));
        }
        cmd.args(args).stdin(Stdio::null()).output()
    }
}

fn flag(name: &str, path: &Path) -> String {
    format!("{name}={}", path.display())
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
