//! `weft lab`: N weft nodes in network namespaces on one host, with containers behind
//! each, real TUN devices and kernel routes, leases in one embedded sled store.
//!
//! `up` builds the namespaces and links over netlink, runs every node's daemon in this
//! one process (sled being single-process; each node's TUN device, socket and netlink
//! handle are opened inside its namespace), wires the containers once the subnets are
//! known, and tears everything down again when stopped. The state file lets `status`,
//! `exec` and `down` work from another shell, and `down` clean up after a crash.

mod play;
mod probe;
mod state;
mod topology;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::task::JoinSet;
use weft_core::store::{config_key, Store, DEFAULT_PREFIX};
use weft_core::subnet_env::SubnetEnv;
use weft_datapath::iface::IfaceSelector;
use weft_datapath::netns;

use crate::daemon::{run_node, shutdown_on_signals, NodeSetup};
use state::Lab;

/// The network config a lab gets unless told otherwise.
const DEFAULT_CONFIG: &str =
    r#"{"Network":"10.5.0.0/16","SubnetLen":24,"Backend":{"Type":"udp","Port":8285}}"#;

/// `weft lab` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum LabCommand {
    /// Build the lab and run its nodes until SIGTERM/SIGINT, then tear it all down.
    Up(UpArgs),
    /// Show the lab's nodes, subnets and containers.
    Status(DirArg),
    /// Run a command inside a node's or a container's namespace.
    Exec {
        #[command(flatten)]
        dir: DirArg,
        /// A node (n1) or container (n1-c1).
        name: String,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Stop `weft lab up` (by its PID) and remove every namespace, link and file the lab
    /// made, also after a crash.
    Down(DirArg),
    /// Run a simulator scenario file against a lab built from it: its nodes, addresses,
    /// containers and network config, its steps and expectations in real time. Exits
    /// non-zero when an expectation fails; refuses simulator-only steps up front.
    Play {
        #[command(flatten)]
        dir: DirArg,
        /// The scenario file (scenarios/*.toml).
        scenario: PathBuf,
        /// The prefix of the lab's namespace names.
        #[arg(long, default_value = state::DEFAULT_PREFIX)]
        prefix: String,
    },
    /// Stop or start one node's daemon in a running lab (its namespace and containers
    /// stay; a stopped node keeps its lease until the TTL runs out).
    Node {
        #[command(flatten)]
        dir: DirArg,
        /// stop or start.
        #[arg(value_parser = ["stop", "start"])]
        action: String,
        /// The node (n1, n2, ...).
        name: String,
    },
}

/// Where the lab keeps its state.
#[derive(Debug, clap::Args)]
pub struct DirArg {
    /// The lab's state directory.
    #[arg(long, default_value = "/run/weft-lab")]
    pub state_dir: PathBuf,
}

/// Arguments of `weft lab up`.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    #[command(flatten)]
    dir: DirArg,
    /// How many nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=200))]
    nodes: u8,
    /// Containers per node.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=50))]
    containers: u8,
    /// Where the leases live. Default: sled in the state directory.
    #[arg(long)]
    store: Option<String>,
    /// The network config (flannel net-conf.json). Default: 10.5.0.0/16 in /24s, udp.
    #[arg(long)]
    net_config_path: Option<PathBuf>,
    /// Lease TTL in seconds.
    #[arg(long, default_value_t = 24 * 3600)]
    subnet_lease_ttl: u64,
    /// The prefix of the lab's namespace names, so that several labs can coexist.
    #[arg(long, default_value = state::DEFAULT_PREFIX)]
    prefix: String,
}

fn alive(pid: u32) -> bool {
    i32::try_from(pid).is_ok_and(|p| kill(Pid::from_raw(p), None).is_ok())
}

fn check_prerequisites() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "weft lab needs root: it creates network namespaces, links and TUN devices (try sudo)"
        );
    }
    if !Path::new("/dev/net/tun").exists() {
        bail!("weft lab needs TUN support: /dev/net/tun is missing (modprobe tun)");
    }
    Ok(())
}

/// Removes what the lab made: namespaces, then its files.
async fn clean(lab: &mut Lab, dir: &Path, owned_store: Option<&Path>) -> Result<()> {
    topology::teardown(lab, dir).await?;
    for node in &lab.nodes {
        let _ = std::fs::remove_dir_all(dir.join(&node.name));
    }
    if let Some(store) = owned_store {
        let _ = std::fs::remove_dir_all(store);
    }
    let _ = std::fs::remove_file(state::file(dir));
    let _ = std::fs::remove_dir(dir);
    Ok(())
}

fn default_store(dir: &Path) -> PathBuf {
    dir.join("store")
}

async fn up(args: UpArgs) -> Result<()> {
    check_prerequisites()?;
    let dir = args.dir.state_dir.clone();
    if let Some(mut old) = Lab::load(&dir)? {
        if alive(old.pid) {
            bail!(
                "a lab is already up (weft lab up, pid {}); run weft lab down first",
                old.pid
            );
        }
        tracing::warn!(pid = old.pid, "cleaning up a lab whose weft lab up is gone");
        clean(&mut old, &dir, Some(&default_store(&dir))).await?;
    }
    let owned_store = args.store.is_none().then(|| default_store(&dir));
    let store_url = args
        .store
        .clone()
        .unwrap_or_else(|| format!("sled:{}", default_store(&dir).display()));
    let mut lab = Lab {
        pid: std::process::id(),
        prefix: args.prefix.clone(),
        store: store_url,
        ..Lab::default()
    };
    lab.save(&dir)?;
    let result = build_and_run(&mut lab, &dir, &args).await;
    if let Err(e) = &result {
        tracing::error!(error = %format!("{e:#}"), "the lab failed; tearing it down");
    }
    let cleaned = clean(&mut lab, &dir, owned_store.as_deref()).await;
    tracing::info!("lab down: every namespace, link and file it made is gone");
    result.and(cleaned)
}

/// A node of a lab to be, by its short name.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Short name (`n1`, or a scenario's node name).
    pub name: String,
    /// Its underlay address, in 192.0.2.0/24.
    pub ip: Ipv4Addr,
    /// Its containers' short names (`c1`...), each becoming `{node}-{container}`.
    pub containers: Vec<String>,
    /// Whether its daemon starts with the lab.
    pub start: bool,
}

/// What a lab is made of, before it exists.
#[derive(Debug, Clone)]
pub struct LabSpec {
    /// The nodes.
    pub nodes: Vec<NodeSpec>,
    /// The network config JSON written to the store.
    pub config_text: String,
    /// Lease TTL.
    pub lease_ttl: Duration,
    /// Renewal margin.
    pub renew_margin: Duration,
    /// Reservations (subnet, public IP) an operator wrote before the nodes start.
    pub reservations: Vec<(ipnet::Ipv4Net, Ipv4Addr)>,
}

impl LabSpec {
    fn from_args(args: &UpArgs) -> Result<LabSpec> {
        let config_text = match &args.net_config_path {
            Some(p) => crate::cmd_config::load(p)?.0,
            None => DEFAULT_CONFIG.to_string(),
        };
        let ttl = Duration::from_secs(args.subnet_lease_ttl.max(1));
        Ok(LabSpec {
            nodes: (1..=usize::from(args.nodes))
                .map(|i| NodeSpec {
                    name: format!("n{i}"),
                    ip: topology::public_ip(i),
                    containers: (1..=args.containers).map(|j| format!("c{j}")).collect(),
                    start: true,
                })
                .collect(),
            config_text,
            lease_ttl: ttl,
            renew_margin: Duration::from_secs(60 * 60).min(ttl / 2),
            reservations: Vec::new(),
        })
    }
}

/// A built lab whose nodes run in this process.
pub struct Running {
    dir: PathBuf,
    spec: LabSpec,
    store: Arc<dyn Store>,
    config: weft_core::NetworkConfig,
    network: ipnet::Ipv4Net,
    paths: std::collections::BTreeMap<String, PathBuf>,
    nodes: Nodes,
}

impl Running {
    fn setup(&self, name: &str) -> Result<NodeSetup> {
        let path = self
            .paths
            .get(name)
            .with_context(|| format!("no node {name:?}"))?;
        Ok(NodeSetup {
            name: name.to_string(),
            store: self.store.clone(),
            prefix: DEFAULT_PREFIX.to_string(),
            config: self.config.clone(),
            netns: Some(path.clone()),
            iface: IfaceSelector {
                ifaces: vec!["eth0".into()],
                regexes: Vec::new(),
            },
            public_ip: None,
            public_ipv6: None,
            subnet_file: self.dir.join(name).join("subnet.env"),
            ip_masq: false,
            lease_ttl: self.spec.lease_ttl,
            renew_margin: self.spec.renew_margin,
            tun_name: "weft0".into(),
            stats_file: Some(self.dir.join(name).join("stats.json")),
        })
    }

    /// A node's stats.json (`null` until written).
    fn stats(&self, name: &str) -> serde_json::Value {
        std::fs::read_to_string(self.dir.join(name).join("stats.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    /// Every valid lease in the store, by key.
    async fn leases(&self) -> Result<Vec<(String, weft_core::lease::LeaseAttrs)>> {
        let prefix = weft_core::store::subnets_prefix(DEFAULT_PREFIX);
        let listing = self.store.list(&prefix).await?;
        let (leases, _) = weft_core::lease::decode_all(&prefix, &listing.entries);
        Ok(leases
            .into_iter()
            .map(|l| (l.key.to_string(), l.attrs))
            .collect())
    }

    /// Starts (or restarts) a node's daemon.
    fn start(&mut self, name: &str) -> Result<()> {
        let setup = self.setup(name)?;
        self.nodes.start(name, setup);
        Ok(())
    }

    /// Waits for a node's subnet, then wires its containers (once).
    async fn wire(&mut self, lab: &mut Lab) -> Result<()> {
        for k in 0..lab.nodes.len() {
            let name = lab.nodes[k].name.clone();
            let wanted = &self.spec.nodes[k].containers;
            if !self.nodes.stops.contains_key(&name)
                || lab.nodes[k].containers.len() == wanted.len()
            {
                continue;
            }
            let env_path = self.dir.join(&name).join("subnet.env");
            let env = wait_for_subnet(&env_path, &mut self.nodes.tasks).await?;
            let subnet = env
                .subnet
                .context("subnet.env without FLANNEL_SUBNET")?
                .trunc();
            let mtu = env.mtu.unwrap_or(1472);
            lab.nodes[k].subnet = Some(subnet.to_string());
            let path = self.paths[&name].clone();
            for (j, cname) in wanted.clone().iter().enumerate() {
                let c = topology::container(
                    lab,
                    &self.dir,
                    (&name, &path),
                    subnet,
                    mtu,
                    (j + 1, cname),
                )
                .await?;
                lab.nodes[k].containers.push(c);
            }
            lab.save(&self.dir)?;
        }
        Ok(())
    }
}

/// Builds the lab's namespaces, writes the config, starts the nodes that start with the
/// lab and wires their containers.
async fn build(lab: &mut Lab, dir: &Path, spec: LabSpec) -> Result<Running> {
    let config =
        weft_core::NetworkConfig::parse(&spec.config_text).context("the lab's network config")?;
    let network = config.network.context("the lab needs an IPv4 Network")?;
    let store: Arc<dyn Store> = Arc::from(
        weft_stores::open(&lab.store)
            .await
            .with_context(|| format!("cannot open store {}", lab.store))?,
    );
    store
        .put(
            &config_key(DEFAULT_PREFIX),
            spec.config_text.trim().as_bytes(),
        )
        .await
        .context("cannot write the network config")?;
    for (subnet, ip) in &spec.reservations {
        // A reservation as an operator writes one: the subnet key, no TTL.
        let key = format!(
            "{}{}",
            weft_core::store::subnets_prefix(DEFAULT_PREFIX),
            weft_core::lease::LeaseKey::v4(*subnet)
        );
        let value = serde_json::json!({ "PublicIP": ip.to_string() }).to_string();
        store
            .put(&key, value.as_bytes())
            .await
            .context("cannot write a reservation")?;
    }

    let (underlay, bridge) = topology::underlay(lab, dir).await?;
    let mut paths = std::collections::BTreeMap::new();
    for (i, node) in spec.nodes.iter().enumerate() {
        let path =
            topology::node(lab, dir, &underlay, bridge, (i + 1, &node.name, node.ip)).await?;
        lab.nodes.push(state::Node {
            name: node.name.clone(),
            public_ip: node.ip,
            subnet: None,
            containers: Vec::new(),
        });
        lab.save(dir)?;
        std::fs::create_dir_all(dir.join(&node.name))?;
        paths.insert(node.name.clone(), path);
    }
    let starting: Vec<String> = spec
        .nodes
        .iter()
        .filter(|n| n.start)
        .map(|n| n.name.clone())
        .collect();
    let mut running = Running {
        dir: dir.to_path_buf(),
        spec,
        store,
        config,
        network,
        paths,
        nodes: Nodes::default(),
    };
    for name in &starting {
        running.start(name)?;
    }
    running.wire(lab).await?;
    Ok(running)
}

async fn build_and_run(lab: &mut Lab, dir: &Path, args: &UpArgs) -> Result<()> {
    let mut shutdown = shutdown_on_signals()?;
    let mut running = build(lab, dir, LabSpec::from_args(args)?).await?;
    lab.ready = true;
    lab.save(dir)?;
    print!("{}", table(lab, running.network));
    print!("{}", connectivity(lab).await);

    let control_path = dir.join("control.sock");
    let _ = std::fs::remove_file(&control_path);
    let control = tokio::net::UnixListener::bind(&control_path)
        .with_context(|| format!("cannot listen on {}", control_path.display()))?;
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            Some(done) = running.nodes.tasks.join_next() => {
                if let Ok((name, Err(e))) = done {
                    tracing::error!(node = %name, error = %format!("{e:#}"), "node stopped");
                }
            }
            conn = control.accept() => {
                let Ok((stream, _)) = conn else { continue };
                let answer = match read_request(stream).await {
                    Ok((action, name, stream)) => {
                        let reply = match action.as_str() {
                            _ if !running.paths.contains_key(&name) => format!("error: no node {name:?}"),
                            "stop" => running.nodes.stop(&name).await,
                            "start" => match running.start(&name) {
                                Ok(()) => format!("ok: {name} started"),
                                Err(e) => format!("error: {e:#}"),
                            },
                            other => format!("error: unknown action {other:?}"),
                        };
                        (reply, stream)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "bad control request");
                        continue;
                    }
                };
                let (reply, mut stream) = answer;
                let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, reply.as_bytes()).await;
            }
        }
    }
    let _ = std::fs::remove_file(&control_path);
    tracing::info!("stopping the lab's nodes");
    running.nodes.stop_all().await;
    Ok(())
}

/// The running nodes, each with its own stop switch.
#[derive(Default)]
struct Nodes {
    tasks: JoinSet<(String, Result<()>)>,
    stops: std::collections::BTreeMap<String, tokio::sync::watch::Sender<bool>>,
    /// How each node that ended on its own failed.
    failures: std::collections::BTreeMap<String, String>,
}

impl Nodes {
    fn start(&mut self, name: &str, setup: NodeSetup) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let name = name.to_string();
        if let Some(old) = self.stops.insert(name.clone(), tx) {
            let _ = old.send(true);
        }
        self.tasks
            .spawn(async move { (name.clone(), run_node(setup, rx).await) });
    }

    /// Collects the nodes that ended on their own; returns how `name` failed, if it did.
    fn failure(&mut self, name: &str) -> Option<String> {
        while let Some(done) = self.tasks.try_join_next() {
            if let Ok((node, Err(e))) = done {
                self.stops.remove(&node);
                self.failures.insert(node, format!("{e:#}"));
            }
        }
        self.failures.get(name).cloned()
    }

    async fn stop(&mut self, name: &str) -> String {
        let Some(stop) = self.stops.remove(name) else {
            return format!("error: {name} is not running");
        };
        let _ = stop.send(true);
        // Wait until its datapath is gone, so the caller sees the effect.
        stop.closed().await;
        format!("ok: {name} stopped")
    }

    async fn stop_all(&mut self) {
        for stop in self.stops.values() {
            let _ = stop.send(true);
        }
        while let Some(done) = self.tasks.join_next().await {
            if let Ok((name, Err(e))) = done {
                tracing::error!(node = %name, error = %format!("{e:#}"), "node failed while stopping");
            }
        }
    }
}

async fn read_request(
    mut stream: tokio::net::UnixStream,
) -> Result<(String, String, tokio::net::UnixStream)> {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    let mut words = text.split_whitespace();
    match (words.next(), words.next()) {
        (Some(a), Some(n)) => Ok((a.to_string(), n.to_string(), stream)),
        _ => bail!("expected ACTION NAME, got {text:?}"),
    }
}

async fn node_control(dir: &Path, action: &str, name: &str) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let path = dir.join("control.sock");
    let mut stream = tokio::net::UnixStream::connect(&path)
        .await
        .with_context(|| format!("no running lab answers on {}", path.display()))?;
    stream
        .write_all(format!("{action} {name}").as_bytes())
        .await?;
    let mut reply = String::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_string(&mut reply)).await??;
    println!("{reply}");
    if reply.starts_with("error") {
        bail!("{name}: {action} failed");
    }
    Ok(())
}

/// Pings from each node's first container to every other node's, and reports.
async fn connectivity(lab: &Lab) -> String {
    let firsts: Vec<(String, Ipv4Addr)> = lab
        .nodes
        .iter()
        .filter_map(|n| n.containers.first())
        .filter_map(|c| Some((c.name.clone(), c.ip?)))
        .collect();
    let mut out = String::from("connectivity across the overlay (ICMP echo):\n");
    let mut ident = 0x7700u16;
    for (from, _) in &firsts {
        for (to, ip) in &firsts {
            if from == to {
                continue;
            }
            ident = ident.wrapping_add(1);
            let ns = netns::path(&format!("{}{from}", lab.prefix));
            let (ip, id) = (*ip, ident);
            let rtt = tokio::task::spawn_blocking(move || {
                probe::echo(ns, ip, id, Duration::from_secs(2))
            })
            .await
            .ok()
            .flatten();
            out += &match rtt {
                Some(rtt) => format!(
                    "  {from} -> {to} ({ip}): ok, {:.2} ms\n",
                    rtt.as_secs_f64() * 1e3
                ),
                None => format!("  {from} -> {to} ({ip}): NO REPLY\n"),
            };
        }
    }
    out
}

/// `weft lab play SCENARIO`.
async fn play_file(dir: &Path, file: &Path, prefix: &str) -> Result<()> {
    check_prerequisites()?;
    let (scenario, source) = weft_sim::scenario::load(file).map_err(|e| anyhow::anyhow!("{e}"))?;
    let name = file.display().to_string();
    play::check_supported(&name, &scenario, &source)?;
    let spec = play::spec(&scenario)?;
    let shutdown = shutdown_on_signals()?;
    if let Some(mut old) = Lab::load(dir)? {
        if alive(old.pid) {
            bail!(
                "a lab is already up in {}; run weft lab down first",
                dir.display()
            );
        }
        tracing::warn!(pid = old.pid, "cleaning up a lab whose process is gone");
        clean(&mut old, dir, Some(&default_store(dir))).await?;
    }
    let store = default_store(dir);
    let _ = std::fs::remove_dir_all(&store);
    let mut lab = Lab {
        pid: std::process::id(),
        prefix: prefix.to_string(),
        store: format!("sled:{}", store.display()),
        ..Lab::default()
    };
    lab.save(dir)?;
    println!("playing {name}: {}", scenario.name);
    let mut inner = shutdown.clone();
    let result = async {
        let mut running = build(&mut lab, dir, spec).await?;
        lab.ready = true;
        lab.save(dir)?;
        let failures = tokio::select! {
            failures = play::play(&mut lab, &mut running, &scenario) => failures,
            _ = inner.changed() => Err(anyhow::anyhow!("interrupted")),
        };
        running.nodes.stop_all().await;
        failures
    };
    let mut interrupted = shutdown.clone();
    let result: Result<usize> = tokio::select! {
        r = result => r,
        _ = interrupted.changed() => Err(anyhow::anyhow!("interrupted")),
    };
    let cleaned = clean(&mut lab, dir, Some(&store)).await;
    let failures = result?;
    cleaned?;
    if failures > 0 {
        bail!("{failures} expectation(s) or step(s) failed in the lab");
    }
    println!("all steps and expectations held in the lab");
    Ok(())
}

async fn wait_for_subnet(
    path: &Path,
    nodes: &mut JoinSet<(String, Result<()>)>,
) -> Result<SubnetEnv> {
    for _ in 0..600 {
        if let Ok(text) = std::fs::read_to_string(path) {
            return SubnetEnv::parse(&text)
                .with_context(|| format!("{} is malformed", path.display()));
        }
        if let Some(Ok((name, Err(e)))) = nodes.try_join_next() {
            return Err(e).with_context(|| format!("node {name} failed"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("no lease after 30 s ({} never appeared)", path.display())
}

fn table(lab: &Lab, network: ipnet::Ipv4Net) -> String {
    let mut out = format!(
        "weft lab: {} nodes on overlay {network}, underlay 192.0.2.0/24\n",
        lab.nodes.len()
    );
    out += &format!(
        "{:<6} {:<14} {:<16} {}\n",
        "NODE", "PUBLIC IP", "SUBNET", "CONTAINERS"
    );
    for n in &lab.nodes {
        let containers: Vec<String> = n
            .containers
            .iter()
            .map(|c| {
                format!(
                    "{} {}",
                    c.name,
                    c.ip.map(|i| i.to_string()).unwrap_or_default()
                )
            })
            .collect();
        out += &format!(
            "{:<6} {:<14} {:<16} {}\n",
            n.name,
            n.public_ip,
            n.subnet.as_deref().unwrap_or("-"),
            containers.join(", ")
        );
    }
    let first = lab.nodes.first().and_then(|n| n.containers.first());
    let last = lab.nodes.last().and_then(|n| n.containers.first());
    if let (Some(a), Some(b)) = (first, last) {
        if let Some(ip) = b.ip {
            out += &format!("try:  weft lab exec {} -- ping -c 3 {ip}\n", a.name);
        }
    }
    out += "      weft lab status | weft lab exec n1 -- ip route | weft lab down\n";
    out
}

async fn status(dir: &Path) -> Result<()> {
    let Some(lab) = Lab::load(dir)? else {
        println!("no lab is up (no {})", state::file(dir).display());
        return Ok(());
    };
    let running = if alive(lab.pid) {
        "running"
    } else {
        "NOT running (run weft lab down to clean up)"
    };
    println!(
        "weft lab up: pid {} {running}; store {}; ready: {}",
        lab.pid, lab.store, lab.ready
    );
    let network = "10.5.0.0/16".parse().unwrap_or_default();
    print!("{}", table(&lab, network));
    Ok(())
}

fn exec(dir: &Path, name: &str, command: &[String]) -> Result<()> {
    let lab = Lab::load(dir)?.context("no lab is up")?;
    let Some(ns) = lab.namespace_of(name) else {
        let names: Vec<String> = lab
            .nodes
            .iter()
            .flat_map(|n| {
                std::iter::once(n.name.clone()).chain(n.containers.iter().map(|c| c.name.clone()))
            })
            .collect();
        bail!(
            "no node or container {name:?} in the lab (have: {})",
            names.join(", ")
        );
    };
    let (program, rest) = command.split_first().context("no command given")?;
    let (program, rest) = (program.clone(), rest.to_vec());
    let status = netns::in_netns(Some(&netns::path(&ns)), move || {
        std::process::Command::new(&program).args(&rest).status()
    })?
    .with_context(|| format!("cannot run {:?}", command[0]))?;
    if !status.success() {
        std::process::exit(status.code().unwrap_or(1));
    }
    Ok(())
}

async fn down(dir: &Path) -> Result<()> {
    check_prerequisites()?;
    let Some(lab) = Lab::load(dir)? else {
        println!("no lab is up");
        return Ok(());
    };
    if lab.pid != std::process::id() && alive(lab.pid) {
        let pid = Pid::from_raw(i32::try_from(lab.pid)?);
        kill(pid, Signal::SIGTERM).context("cannot signal weft lab up")?;
        for _ in 0..300 {
            if !alive(lab.pid) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if alive(lab.pid) {
            bail!("weft lab up (pid {}) did not stop within 30 s", lab.pid);
        }
    }
    // Whatever `up` did not remove (it crashed, or was killed) goes now.
    if let Some(mut left) = Lab::load(dir)? {
        let owned = default_store(dir);
        let owned = left
            .store
            .ends_with(&*owned.to_string_lossy())
            .then_some(owned);
        clean(&mut left, dir, owned.as_deref()).await?;
    }
    println!("lab down");
    Ok(())
}

/// Runs a `weft lab` subcommand.
pub async fn run(command: LabCommand) -> Result<()> {
    match command {
        LabCommand::Up(args) => up(args).await,
        LabCommand::Status(d) => status(&d.state_dir).await,
        LabCommand::Exec { dir, name, command } => exec(&dir.state_dir, &name, &command),
        LabCommand::Down(d) => down(&d.state_dir).await,
        LabCommand::Play {
            dir,
            scenario,
            prefix,
        } => play_file(&dir.state_dir, &scenario, &prefix).await,
        LabCommand::Node { dir, action, name } => {
            node_control(&dir.state_dir, &action, &name).await
        }
    }
}
