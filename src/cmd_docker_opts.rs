//! `weft docker-opts`: the Docker daemon options for this node's subnet, as flannel's
//! `mk-docker-opts.sh` writes them, byte for byte, with the same flags.
//!
//! The options come from `subnet.env`: `--bip` from `FLANNEL_SUBNET`, `--mtu` from
//! `FLANNEL_MTU`, and `--ip-masq` as the opposite of `FLANNEL_IPMASQ` (when the overlay
//! masquerades, Docker must not). Each is written as `DOCKER_OPT_<NAME>="…"` (`-i`) and
//! all of them together, after the value the combined key already has in the
//! environment, as `<KEY>=" …"` (`-c`; the script's leading space kept). Like the
//! script, it refuses an invalid `FLANNEL_IPMASQ` before writing anything, and fails
//! after writing when the host already routes the subnet via a gateway.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

/// Arguments of `weft docker-opts`: mk-docker-opts.sh's own.
#[derive(Debug, clap::Args)]
pub struct DockerOptsArgs {
    /// The flannel env file to read.
    #[arg(short = 'f', default_value = "/run/flannel/subnet.env")]
    flannel_env: PathBuf,
    /// The Docker env file to write.
    #[arg(short = 'd', default_value = "/run/docker_opts.env")]
    docker_env: PathBuf,
    /// Write each option as its own variable, e.g. DOCKER_OPT_MTU="--mtu=1472".
    #[arg(short = 'i')]
    individual: bool,
    /// Write every option in one variable (DOCKER_OPTS unless -k says otherwise).
    #[arg(short = 'c')]
    combined: bool,
    /// Leave --ip-masq out (for older Docker versions).
    #[arg(short = 'm')]
    no_ip_masq: bool,
    /// The name of the combined variable; its value in the environment comes first.
    #[arg(short = 'k', default_value = "DOCKER_OPTS")]
    key: String,
}

/// The `KEY=VALUE` lines of a subnet.env (a missing file reads as empty, as the
/// script's `[ -f … ] && .` does).
fn read_env(args: &DockerOptsArgs) -> Result<BTreeMap<String, String>> {
    let text = match std::fs::read_to_string(&args.flannel_env) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read {}", args.flannel_env.display()))
        }
    };
    Ok(text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .collect())
}

/// The options by variable name, in the order the script's `set | grep` lists them
/// (sorted by name).
fn options(
    env: &BTreeMap<String, String>,
    ip_masq: bool,
) -> Result<BTreeMap<&'static str, String>> {
    let mut opts = BTreeMap::new();
    let set = |name: &str| env.get(name).filter(|v| !v.is_empty());
    if let Some(subnet) = set("FLANNEL_SUBNET") {
        opts.insert("DOCKER_OPT_BIP", format!("--bip={subnet}"));
    }
    if let Some(mtu) = set("FLANNEL_MTU") {
        opts.insert("DOCKER_OPT_MTU", format!("--mtu={mtu}"));
    }
    if let (Some(masq), true) = (set("FLANNEL_IPMASQ"), ip_masq) {
        let docker = match masq.as_str() {
            "true" => "false",
            "false" => "true",
            other => bail!("Invalid value of FLANNEL_IPMASQ: {other}"),
        };
        opts.insert("DOCKER_OPT_IPMASQ", format!("--ip-masq={docker}"));
    }
    Ok(opts)
}

/// What the script writes for `env`, with `prior` the combined key's value in the
/// environment.
fn render(
    args: &DockerOptsArgs,
    env: &BTreeMap<String, String>,
    prior: Option<&str>,
) -> Result<String> {
    let opts = options(env, !args.no_ip_masq)?;
    // Neither -i nor -c means both.
    let (individual, combined) = match (args.individual, args.combined) {
        (false, false) => (true, true),
        both => both,
    };
    let mut out = String::new();
    let mut all = match prior.filter(|p| !p.is_empty()) {
        Some(p) => format!("{p} "),
        None => String::new(),
    };
    for (name, value) in &opts {
        if individual {
            let _ = writeln!(out, "{name}=\"{value}\"");
        }
        all.push(' ');
        all.push_str(value);
    }
    if combined {
        let _ = writeln!(out, "{}=\"{all}\"", args.key);
    }
    Ok(out)
}

/// The subnet's network (`10.5.4.1/24` -> `10.5.4.0/24`), for the route check.
fn network_of(subnet: &str) -> Option<ipnet::Ipv4Net> {
    subnet.parse::<ipnet::Ipv4Net>().ok().map(|n| n.trunc())
}

/// `weft docker-opts`.
pub async fn run(args: &DockerOptsArgs) -> Result<()> {
    let env = read_env(args)?;
    let prior = std::env::var(&args.key).ok();
    let text = render(args, &env, prior.as_deref())?;
    std::fs::write(&args.docker_env, text)
        .with_context(|| format!("cannot write {}", args.docker_env.display()))?;
    // The script refuses a host that already routes the subnet through a gateway:
    // Docker's bridge would never get its traffic.
    if let Some(net) = env.get("FLANNEL_SUBNET").and_then(|s| network_of(s)) {
        if let Ok(nl) = weft_datapath::netlink::Netlink::open(None) {
            if let Some(via) = nl.gateway_route(net).await.ok().flatten() {
                bail!("Your routing table already contains the subnet: {net} via {via}");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> DockerOptsArgs {
        use clap::Parser;
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(flatten)]
            a: DockerOptsArgs,
        }
        let argv = std::iter::once("weft").chain(extra.iter().copied());
        Cli::parse_from(argv).a
    }

    #[test]
    fn an_invalid_ipmasq_is_refused_and_a_valid_one_inverted() {
        let mut env = BTreeMap::new();
        env.insert("FLANNEL_SUBNET".to_string(), "10.5.4.1/24".to_string());
        env.insert("FLANNEL_IPMASQ".to_string(), "yes".to_string());
        let err = render(&args(&[]), &env, None).expect_err("refused");
        assert_eq!(err.to_string(), "Invalid value of FLANNEL_IPMASQ: yes");
        env.insert("FLANNEL_IPMASQ".to_string(), "true".to_string());
        let text = render(&args(&["-c"]), &env, None).expect("rendered");
        assert_eq!(text, "DOCKER_OPTS=\" --bip=10.5.4.1/24 --ip-masq=false\"\n");
        assert_eq!(
            network_of("10.5.4.1/24").map(|n| n.to_string()),
            Some("10.5.4.0/24".into())
        );
    }
}
