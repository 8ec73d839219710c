//! The CNI plugin: what flannel's CNI plugin does, for container runtimes on weft nodes.
//!
//! A runtime runs it as the plugin of type `flannel` (or `weft-cni`): install the `weft`
//! binary under that name in the CNI plugin directory. Like flannel's, it is a
//! meta-plugin: on ADD it reads `subnet.env` (the netconf's `subnetFile`, by default
//! `/run/flannel/subnet.env`), fills in the delegate's configuration -- type `bridge`,
//! `isGateway`, `ipMasq` (unless weft masquerades), `mtu`, and `host-local` IPAM over
//! this node's subnet with a route to the whole overlay network --, keeps it under the
//! netconf's `dataDir` (`/var/lib/cni/flannel/<container id>`) and runs the delegate
//! (found in `CNI_PATH`) with it. DEL runs the delegate with the configuration kept at
//! ADD (a missing one is success, as the CNI spec asks); CHECK checks that the kept
//! configuration is for the subnet the node still holds.
//!
//! Errors are CNI errors: a JSON object with `code` and `msg` on stdout, exit code 1.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};
use ipnet::IpNet;
use serde_json::{json, Map, Value};

const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";
const DEFAULT_DATA_DIR: &str = "/var/lib/cni/flannel";
const SUPPORTED: [&str; 6] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0", "0.2.0"];

/// What a subnet.env says, as flannel's CNI plugin reads it.
#[derive(Debug, Default)]
struct SubnetEnv {
    networks: Vec<IpNet>,
    subnet: Option<IpNet>,
    ipv6_networks: Vec<IpNet>,
    ipv6_subnet: Option<IpNet>,
    mtu: Option<u32>,
    ip_masq: Option<bool>,
}

fn cidr(path: &Path, key: &str, text: &str) -> Result<IpNet> {
    let net: IpNet = text
        .parse()
        .map_err(|e| anyhow!("{}: {key}={text} is not a CIDR: {e}", path.display()))?;
    Ok(net.trunc())
}

fn read_subnet_env(path: &Path) -> Result<SubnetEnv> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "failed to load 'subnet.env' file {}; is weft daemon running on this node?",
            path.display()
        )
    })?;
    let mut env = SubnetEnv::default();
    let list = |key, value: &str| -> Result<Vec<IpNet>> {
        let mut nets = Vec::new();
        for n in value.split(',') {
            let n = cidr(path, key, n)?;
            if !nets.contains(&n) {
                nets.push(n);
            }
        }
        Ok(nets)
    };
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        match key {
            "FLANNEL_NETWORK" => env.networks = list(key, value)?,
            "FLANNEL_SUBNET" => env.subnet = Some(cidr(path, key, value)?),
            "FLANNEL_IPV6_NETWORK" => env.ipv6_networks = list(key, value)?,
            "FLANNEL_IPV6_SUBNET" => env.ipv6_subnet = Some(cidr(path, key, value)?),
            "FLANNEL_MTU" => {
                let mtu = value.parse().map_err(|e| {
                    anyhow!(
                        "{}: FLANNEL_MTU={value} is not a number: {e}",
                        path.display()
                    )
                })?;
                env.mtu = Some(mtu);
            }
            "FLANNEL_IPMASQ" => env.ip_masq = Some(value == "true"),
            _ => {}
        }
    }
    let mut missing = Vec::new();
    if env.networks.is_empty() && env.ipv6_networks.is_empty() {
        missing.extend(["FLANNEL_NETWORK", "FLANNEL_IPV6_NETWORK"]);
    }
    if env.subnet.is_none() && env.ipv6_subnet.is_none() {
        missing.extend(["FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET"]);
    }
    if env.mtu.is_none() {
        missing.push("FLANNEL_MTU");
    }
    if env.ip_masq.is_none() {
        missing.push("FLANNEL_IPMASQ");
    }
    if !missing.is_empty() {
        bail!("{} is missing {}", path.display(), missing.join(", "));
    }
    Ok(env)
}

fn object(v: Option<&Value>, what: &str) -> Result<Map<String, Value>> {
    match v {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(other) => bail!("'{what}' must be a dictionary, not {other}"),
    }
}

/// The delegate's configuration for ADD, as flannel's plugin builds it.
fn delegate_config(conf: &Map<String, Value>, env: &SubnetEnv) -> Result<Map<String, Value>> {
    let mut delegate = object(conf.get("delegate"), "delegate")?;
    if delegate.get("type").is_some_and(|t| !t.is_string()) {
        bail!("'delegate' dictionary, if present, must have (string) 'type' field");
    }
    if delegate.contains_key("name") {
        bail!("'delegate' dictionary must not have 'name' field, it'll be set by flannel");
    }
    if delegate.contains_key("ipam") {
        bail!("'delegate' dictionary must not have 'ipam' field, it'll be set by flannel");
    }
    if let Some(rc) = conf.get("runtimeConfig") {
        delegate.insert("runtimeConfig".into(), rc.clone());
    }
    delegate.insert(
        "name".into(),
        conf.get("name").cloned().unwrap_or(Value::Null),
    );
    delegate.entry("type").or_insert_with(|| json!("bridge"));
    delegate
        .entry("ipMasq")
        .or_insert_with(|| json!(!env.ip_masq.unwrap_or(false)));
    delegate.entry("mtu").or_insert_with(|| json!(env.mtu));
    if delegate.get("type") == Some(&json!("bridge")) {
        delegate.entry("isGateway").or_insert(json!(true));
    }
    if let Some(v) = conf.get("cniVersion").filter(|v| v.as_str() != Some("")) {
        delegate.insert("cniVersion".into(), v.clone());
    }
    let mut ipam = object(conf.get("ipam"), "ipam")?;
    ipam.entry("type").or_insert_with(|| json!("host-local"));
    let ranges: Vec<Value> = [env.subnet, env.ipv6_subnet]
        .into_iter()
        .flatten()
        .map(|n| json!([{ "subnet": n.to_string() }]))
        .collect();
    ipam.insert("ranges".into(), Value::Array(ranges));
    let mut routes = match ipam.get("routes") {
        None => Vec::new(),
        Some(Value::Array(r)) => r.clone(),
        Some(other) => bail!("failed to read IPAM routes: 'ipam.routes' is {other}"),
    };
    for n in env.networks.iter().chain(&env.ipv6_networks) {
        routes.push(json!({ "dst": n.to_string() }));
    }
    ipam.insert("routes".into(), Value::Array(routes));
    delegate.insert("ipam".into(), Value::Object(ipam));
    Ok(delegate)
}

/// Runs the plugin `kind` from `CNI_PATH` with `config` on stdin and the caller's CNI
/// environment; its stdout becomes ours.
fn run_delegate(kind: &str, config: &[u8]) -> Result<()> {
    let path = std::env::var("CNI_PATH").unwrap_or_default();
    let plugin = path
        .split(':')
        .map(|d| Path::new(d).join(kind))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("failed to find plugin {kind:?} in path [{path}]"))?;
    let mut child = Command::new(&plugin)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", plugin.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(config)?;
    }
    let out = child.wait_with_output()?;
    std::io::stdout().write_all(&out.stdout)?;
    if !out.status.success() {
        // The delegate already printed its CNI error; pass its failure on.
        std::process::exit(out.status.code().unwrap_or(1));
    }
    Ok(())
}

fn scratch_path(conf: &Map<String, Value>) -> Result<PathBuf> {
    let dir = conf
        .get("dataDir")
        .and_then(Value::as_str)
        .unwrap_or(DEFAULT_DATA_DIR);
    let id = std::env::var("CNI_CONTAINERID").context("CNI_CONTAINERID is not set")?;
    if id.is_empty() || id.contains('/') {
        bail!("CNI_CONTAINERID {id:?} is not a container id");
    }
    Ok(Path::new(dir).join(id))
}

fn save_scratch(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

fn kept(path: &Path, bytes: &[u8]) -> Result<Map<String, Value>> {
    serde_json::from_slice(bytes)
        .with_context(|| format!("{} is not the config ADD kept", path.display()))
}

/// CHECK: the container was added by this plugin (its config is kept) for the subnet
/// this node still holds. flannel's plugin answers CHECK without looking at anything;
/// delegating it to `bridge` would not do either: the bridge plugin (1.1) checks the
/// overlay route without the gateway it installed itself, and fails every container.
fn check(conf: &Map<String, Value>) -> Result<()> {
    let path = scratch_path(conf)?;
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "the container was not added by this plugin ({})",
            path.display()
        )
    })?;
    let saved = kept(&path, &bytes)?;
    let file = conf
        .get("subnetFile")
        .and_then(Value::as_str)
        .unwrap_or(DEFAULT_SUBNET_FILE);
    let env = read_subnet_env(Path::new(file))?;
    let now = json!(env.subnet.map(|n| n.to_string()));
    let then = &saved["ipam"]["ranges"][0][0]["subnet"];
    if *then != now {
        bail!("the container has an address of {then}, but this node now holds {now}");
    }
    Ok(())
}

fn plugin(conf: &Map<String, Value>) -> Result<()> {
    let command = std::env::var("CNI_COMMAND").context("CNI_COMMAND is not set")?;
    match command.as_str() {
        "VERSION" => {
            let versions: Vec<&str> = SUPPORTED.to_vec();
            println!(
                "{}",
                json!({"cniVersion": "1.0.0", "supportedVersions": versions})
            );
            Ok(())
        }
        "ADD" => {
            let file = conf
                .get("subnetFile")
                .and_then(Value::as_str)
                .unwrap_or(DEFAULT_SUBNET_FILE);
            let env = read_subnet_env(Path::new(file))?;
            let delegate = delegate_config(conf, &env)?;
            let bytes = serde_json::to_vec(&delegate)?;
            save_scratch(&scratch_path(conf)?, &bytes)
                .context("cannot keep the delegate's config")?;
            let kind = delegate["type"].as_str().unwrap_or("bridge").to_string();
            run_delegate(&kind, &bytes)
        }
        "CHECK" => check(conf),
        "DEL" => {
            let path = scratch_path(conf)?;
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
            };
            let saved = kept(&path, &bytes)?;
            let kind = saved
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("bridge");
            run_delegate(kind, &bytes)?;
            let _ = std::fs::remove_file(&path);
            Ok(())
        }
        other => bail!("unknown CNI_COMMAND {other:?} (ADD, DEL, CHECK, VERSION)"),
    }
}

/// Runs as a CNI plugin: the netconf on stdin, the command in `CNI_COMMAND`. Returns the
/// process exit code; errors are printed as CNI errors.
pub fn main() -> u8 {
    let mut input = Vec::new();
    let parsed = std::io::stdin()
        .read_to_end(&mut input)
        .map_err(anyhow::Error::from)
        .and_then(|_| {
            if input.iter().all(u8::is_ascii_whitespace)
                && std::env::var("CNI_COMMAND").as_deref() == Ok("VERSION")
            {
                return Ok(Map::new());
            }
            serde_json::from_slice::<Map<String, Value>>(&input)
                .context("failed to load flannel netconf file")
        });
    match parsed.and_then(|conf| plugin(&conf)) {
        Ok(()) => 0,
        Err(e) => {
            let err = json!({"cniVersion": "1.0.0", "code": 999, "msg": format!("{e:#}")});
            println!("{err}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> SubnetEnv {
        SubnetEnv {
            networks: vec!["10.5.0.0/16".parse().expect("net")],
            subnet: Some("10.5.4.0/24".parse().expect("net")),
            mtu: Some(1472),
            ip_masq: Some(true),
            ..SubnetEnv::default()
        }
    }

    #[test]
    fn the_delegate_is_filled_in_as_flannel_does() {
        let conf: Map<String, Value> =
            serde_json::from_str(r#"{"cniVersion":"1.0.0","name":"cbr0","type":"flannel"}"#)
                .expect("conf");
        let d = delegate_config(&conf, &env()).expect("delegate");
        let want = json!({
            "cniVersion": "1.0.0", "name": "cbr0", "type": "bridge", "isGateway": true,
            "ipMasq": false, "mtu": 1472,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.5.4.0/24"}]],
                     "routes": [{"dst": "10.5.0.0/16"}]}
        });
        assert_eq!(serde_json::to_value(&d).expect("json"), want);
        let bad: Map<String, Value> =
            serde_json::from_str(r#"{"name":"x","delegate":{"name":"no"}}"#).expect("conf");
        let err = delegate_config(&bad, &env()).expect_err("refused");
        assert!(err.to_string().contains("must not have 'name'"), "{err}");
    }
}
