//! `weft`: the command line of the weft overlay network.
//!
//! The binary parses the command line and wires the libraries together: the sans-IO
//! core (`weft-core`), the store backends (`weft-stores`), the simulator (`weft-sim`)
//! and the real I/O (`weft-datapath`: backends, the daemon's shell, the lab). It alone
//! reads the OS random source and handles signals.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

mod cmd_cni;
mod cmd_config;
mod cmd_docker_opts;
mod cmd_leases;
mod cmd_sim;
mod daemon;
mod etcd_args;
mod lab;

/// weft: a flannel-compatible container overlay network.
///
/// Every node leases one subnet of the overlay network from a shared store (etcd in
/// production, an embedded sled database on one host) and writes it to subnet.env for
/// the container runtime's CNI plugin.
#[derive(Debug, Parser)]
#[command(name = "weft", version, propagate_version = true)]
struct Cli {
    /// How log lines are written to stderr: text for people and journald, json (one
    /// object a line) for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "WEFT_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// See [`Cli::log_format`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// One line of text an event, with its fields as key=value.
    Text,
    /// One JSON object an event: timestamp, level, fields.message, the other fields,
    /// and the spans.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate and store the network config (flannel's net-conf.json).
    #[command(subcommand)]
    Config(ConfigCommand),
    /// List the subnet leases in a store: subnet, public IP, backend, expiry.
    Leases(cmd_leases::LeasesArgs),
    /// Run the node daemon: acquire and renew this node's subnet lease, write
    /// subnet.env, and run the network config's backend (udp: a TUN device and flannel's
    /// UDP encapsulation; alloc: the lease only). Stops cleanly on SIGTERM or SIGINT,
    /// removing its TUN device and keeping the lease.
    Daemon(Box<daemon::DaemonArgs>),
    /// Write the Docker daemon options for this node's subnet (--bip, --mtu,
    /// --ip-masq) from subnet.env, exactly as flannel's mk-docker-opts.sh does, with its
    /// flags: -f subnet.env, -d output, -i individual, -c combined, -k key, -m no masq.
    DockerOpts(cmd_docker_opts::DockerOptsArgs),
    /// Run scenario files in the deterministic simulator, or replay a failed run.
    Sim(cmd_sim::SimArgs),
    /// Run as flannel's CNI plugin (the netconf on stdin, the command in CNI_COMMAND): a
    /// runtime runs it when the binary is installed as `flannel` or `weft-cni` in its
    /// CNI plugin directory. Delegates to the bridge plugin with host-local IPAM over
    /// this node's subnet, as flannel's plugin does.
    Cni,
    /// Print a shell completion script: `weft completions bash > /etc/bash_completion.d/weft`.
    Completions {
        /// The shell (bash, zsh, fish, elvish, powershell).
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `weft man > weft.1; man ./weft.1`.
    Man,
    /// A single-host lab: N nodes in network namespaces with containers behind them,
    /// on the udp, vxlan or host-gw backend (real TUN or vxlan devices and kernel
    /// routes), IPv4 or dual stack (`up --dual-stack`), leases in an embedded sled
    /// store (root).
    #[command(subcommand)]
    Lab(lab::LabCommand),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Check a network config file: print the derived subnet range, the number of
    /// subnets and the MTU per backend, or say exactly what is wrong.
    Check {
        /// The network config JSON file (flannel's net-conf.json).
        file: PathBuf,
    },
    /// Validate a network config file and write it to the store's config key.
    Set {
        /// Where the leases live: memory:, sled:PATH, etcd://HOST:PORT[,HOST:PORT...].
        #[arg(long, env = "WEFT_STORE")]
        store: String,
        /// The key prefix in the store.
        #[arg(long, default_value = weft_core::store::DEFAULT_PREFIX)]
        etcd_prefix: String,
        #[command(flatten)]
        etcd: etcd_args::EtcdArgs,
        /// The network config JSON file.
        file: PathBuf,
    },
}

fn init_tracing(verbose: bool, format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let level = if verbose { "debug" } else { "info" };
    let filter = EnvFilter::try_from_env("WEFT_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        // Colours for a person at a terminal; a file, a pipe or journald gets plain text.
        LogFormat::Text => subscriber.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => subscriber.json().with_ansi(false).init(),
    }
}

/// Whether this binary was started as a CNI plugin: under the name a runtime's netconf
/// gives as the plugin type (`flannel`, or `weft-cni`).
fn invoked_as_cni_plugin() -> bool {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let name = std::path::Path::new(&argv0).file_name().unwrap_or_default();
    name == "flannel" || name == "weft-cni"
}

/// The command line, as clap reads it. Run as `flanneld` it is `weft daemon`; for
/// `weft daemon`, Go's one-dash long flags (`-etcd-endpoints=…`) become clap's.
fn arguments() -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let argv0 = args.first().cloned().unwrap_or_default();
    if std::path::Path::new(&argv0).file_name() == Some("flanneld".as_ref()) {
        args.insert(1, "daemon".into());
    }
    // The global flags that may come before the subcommand (`weft --log-format json daemon`).
    let mut at = 1;
    loop {
        match args.get(at).map(|a| a.to_string_lossy()) {
            Some(a) if a == "--log-format" => at += 2,
            Some(a) if a.starts_with("--log-format=") => at += 1,
            _ => break,
        }
    }
    if args.get(at).is_some_and(|a| a == "daemon") {
        let command = Cli::command();
        let longs: Vec<String> = command
            .find_subcommand("daemon")
            .into_iter()
            .flat_map(|d| d.get_arguments())
            .filter_map(|a| a.get_long().map(str::to_string))
            .chain(["version", "help", "log-format"].map(String::from))
            .collect();
        let rest = args.split_off(at + 1);
        args.extend(daemon::flanneld::normalize(rest, &longs));
    }
    args
}

fn main() -> ExitCode {
    if invoked_as_cni_plugin() {
        return ExitCode::from(cmd_cni::main());
    }
    let cli = Cli::parse_from(arguments());
    // The simulator needs no runtime and no logging setup: its trace is its output.
    if let Command::Sim(args) = cli.command {
        return match cmd_sim::run(args) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("weft: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    match cli.command {
        Command::Cni => return ExitCode::from(cmd_cni::main()),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "weft", &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Command::Man => {
            return match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("weft: cannot write the manual page: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    let verbose = matches!(&cli.command, Command::Daemon(d) if d.verbosity > 0);
    init_tracing(verbose, cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Config(ConfigCommand::Check { file }) => cmd_config::check(&file),
            Command::Config(ConfigCommand::Set {
                store,
                etcd_prefix,
                etcd,
                file,
            }) => cmd_config::set(&store, &etcd_prefix, &etcd, &file).await,
            Command::Leases(args) => cmd_leases::run(&args).await,
            Command::DockerOpts(args) => cmd_docker_opts::run(&args).await,
            Command::Daemon(args) => daemon::run(*args).await,
            Command::Sim(_) | Command::Completions { .. } | Command::Man | Command::Cni => {
                unreachable!("handled before the runtime starts")
            }
            Command::Lab(command) => lab::run(command).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft: {e:#}");
            ExitCode::FAILURE
        }
    }
}
