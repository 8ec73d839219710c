//! `weft lab`: the command line of the single-host lab in `weft_datapath::lab`. The
//! lab itself (namespaces, nodes, the control socket, scenario playing) is the
//! library's; this file parses arguments, draws the seed and prints.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use weft_datapath::lab::{self, control, report, state, topology, LabSpec, UpOptions};

use crate::daemon::shutdown_on_signals;

/// `weft lab` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum LabCommand {
    /// Build the lab and run its nodes until SIGTERM/SIGINT, then tear it all down.
    Up(UpArgs),
    /// Show the lab's overlay network and, for each node, its state (running, stopped,
    /// exited), lease, routes and containers.
    Status {
        #[command(flatten)]
        dir: DirArg,
        /// Print the status as JSON (what the running lab answers), for scripts.
        #[arg(long)]
        json: bool,
        /// How to print, as `weft leases -o` does: `table` or `json` (as --json).
        #[arg(short = 'o', long, value_enum)]
        output: Option<crate::cmd_leases::Output>,
    },
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
        /// The backend, replacing the scenario config's `Backend.Type` (and its
        /// options): udp, vxlan, host-gw, wireguard, ipip or alloc. A scenario may also name
        /// one itself; the simulator runs only udp and alloc.
        #[arg(long, value_parser = ["udp", "vxlan", "host-gw", "wireguard", "ipip", "alloc"])]
        backend: Option<String>,
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
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=i64::from(topology::MAX_NODES)))]
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
    /// The backend, replacing the config's `Backend.Type` (and its options):
    /// udp, vxlan, host-gw, wireguard, ipip or alloc.
    #[arg(long, value_parser = ["udp", "vxlan", "host-gw", "wireguard", "ipip", "alloc"])]
    backend: Option<String>,
    /// Dual stack: IPv6 beside IPv4. Adds `"EnableIPv6": true` and, unless the config
    /// has one, `"IPv6Network": "fc00::/48"` (in /64s) to the config; each node gets an
    /// IPv6 underlay address in 2001:db8:0:2::/64 and each container an IPv6 address in
    /// its node's IPv6 subnet. On udp (IPv6 inner packets over the IPv4 underlay), vxlan or
    /// host-gw.
    #[arg(long, conflicts_with = "ipv6")]
    dual_stack: bool,
    /// IPv6 only: `"EnableIPv4": false`, `"EnableIPv6": true` and, unless the config has
    /// one, `"IPv6Network": "fc00::/48"`; the config's IPv4 `Network` and its ranges are
    /// dropped. Leases hold an IPv6 subnet alone (flannel's key `0.0.0.0-0&fc00:…-64`),
    /// containers get IPv6 addresses only; the nodes' underlay keeps both families. On
    /// vxlan (`flannel-v6.<VNI>` alone), host-gw, udp (over the IPv6 underlay) or
    /// wireguard (Mode separate).
    #[arg(long)]
    ipv6: bool,
    /// Lease TTL in seconds.
    #[arg(long, default_value_t = 24 * 3600)]
    subnet_lease_ttl: u64,
    /// The prefix of the lab's namespace names, so that several labs can coexist.
    #[arg(long, default_value = state::DEFAULT_PREFIX)]
    prefix: String,
}

/// `config` with `"Backend": {"Type": kind}` (the other backend's options dropped).
fn with_backend(config: &str, kind: &str) -> Result<String> {
    let mut value: serde_json::Value =
        serde_json::from_str(config).context("the network config is not JSON")?;
    let Some(object) = value.as_object_mut() else {
        bail!("the network config is not a JSON object");
    };
    object.insert("Backend".into(), serde_json::json!({ "Type": kind }));
    Ok(value.to_string())
}

/// The IPv6 network a dual-stack lab gets unless its config has one.
const DEFAULT_IPV6_NETWORK: &str = "fc00::/48";

/// `config` with IPv6 enabled, keeping an `IPv6Network` it already has.
fn with_ipv6(config: &str) -> Result<String> {
    let mut value: serde_json::Value =
        serde_json::from_str(config).context("the network config is not JSON")?;
    let Some(object) = value.as_object_mut() else {
        bail!("the network config is not a JSON object");
    };
    object.insert("EnableIPv6".into(), true.into());
    object
        .entry("IPv6Network")
        .or_insert_with(|| DEFAULT_IPV6_NETWORK.into());
    Ok(value.to_string())
}

/// `config` IPv6-only: IPv4 disabled and its fields dropped, IPv6 enabled, keeping an
/// `IPv6Network` it already has.
fn with_ipv6_only(config: &str) -> Result<String> {
    let mut value: serde_json::Value =
        serde_json::from_str(&with_ipv6(config)?).context("the network config is not JSON")?;
    let Some(object) = value.as_object_mut() else {
        bail!("the network config is not a JSON object");
    };
    for field in ["Network", "SubnetLen", "SubnetMin", "SubnetMax"] {
        object.remove(field);
    }
    object.insert("EnableIPv4".into(), false.into());
    Ok(value.to_string())
}

async fn up(args: UpArgs) -> Result<()> {
    let config_text = match &args.net_config_path {
        Some(path) => Some(crate::cmd_config::load(path)?.0),
        None => None,
    };
    let config_text = match &args.backend {
        Some(kind) => Some(with_backend(
            config_text.as_deref().unwrap_or(lab::spec::DEFAULT_CONFIG),
            kind,
        )?),
        None => config_text,
    };
    let base = || config_text.as_deref().unwrap_or(lab::spec::DEFAULT_CONFIG);
    let config_text = if args.dual_stack {
        Some(with_ipv6(base())?)
    } else if args.ipv6 {
        Some(with_ipv6_only(base())?)
    } else {
        config_text
    };
    let spec = LabSpec::generated(
        args.nodes,
        args.containers,
        config_text,
        Duration::from_secs(args.subnet_lease_ttl),
    )?;
    let opts = UpOptions {
        dir: args.dir.state_dir,
        spec,
        store: args.store,
        prefix: args.prefix,
        seed: rand::random(),
    };
    lab::up(opts, shutdown_on_signals()?, |text| print!("{text}")).await?;
    Ok(())
}

async fn status(dir: &Path, json: bool) -> Result<()> {
    let Some(status) = lab::status(dir).await? else {
        if json {
            println!("null");
        } else {
            println!("no lab is up (no {})", state::file(dir).display());
        }
        return Ok(());
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", report::table(&status));
    }
    Ok(())
}

async fn play(dir: &Path, file: &Path, prefix: &str, backend: Option<String>) -> Result<()> {
    let out = Box::new(|line: &str| println!("{line}"));
    let replace_config = backend.map(|kind| {
        Box::new(move |config: &str| with_backend(config, &kind).map_err(|e| format!("{e:#}")))
            as lab::play::ConfigEdit
    });
    let failures = lab::play::play(
        file,
        dir,
        prefix,
        replace_config,
        rand::random(),
        shutdown_on_signals()?,
        out,
    )
    .await?;
    if failures > 0 {
        bail!("{failures} expectation(s) or step(s) failed in the lab");
    }
    println!("all steps and expectations held in the lab");
    Ok(())
}

async fn node(dir: &Path, action: &str, node: String) -> Result<()> {
    let request = match action {
        "stop" => control::Request::Stop { node },
        _ => control::Request::Start { node },
    };
    match control::request(dir, &request).await? {
        control::Response::Done { message } => {
            println!("{message}");
            Ok(())
        }
        control::Response::Error { message } => bail!("{message}"),
        other => bail!("unexpected answer from the lab: {other:?}"),
    }
}

/// Runs a `weft lab` subcommand.
pub async fn run(command: LabCommand) -> Result<()> {
    match command {
        LabCommand::Up(args) => up(args).await,
        LabCommand::Status { dir, json, output } => {
            let json = json || output == Some(crate::cmd_leases::Output::Json);
            status(&dir.state_dir, json).await
        }
        LabCommand::Exec { dir, name, command } => {
            let status = lab::exec(&dir.state_dir, &name, &command)
                .with_context(|| format!("weft lab exec {name}"))?;
            if !status.success() {
                std::process::exit(status.code().unwrap_or(1));
            }
            Ok(())
        }
        LabCommand::Down(d) => {
            let was_up = lab::down(&d.state_dir).await?;
            println!("{}", if was_up { "lab down" } else { "no lab is up" });
            Ok(())
        }
        LabCommand::Play {
            dir,
            scenario,
            prefix,
            backend,
        } => play(&dir.state_dir, &scenario, &prefix, backend).await,
        LabCommand::Node { dir, action, name } => node(&dir.state_dir, &action, name).await,
    }
}
