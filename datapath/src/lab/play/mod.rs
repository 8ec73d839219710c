//! `weft lab play SCENARIO`: a simulator scenario file run against real namespaces.
//!
//! The lab takes its nodes, addresses, containers, network config and lease timing from
//! the scenario, then performs the steps and checks the expectations on the scenario's
//! timeline in real time, so one file checks both worlds. Steps that only a simulator
//! can perform (partitions, link faults, store outages, clock jumps, compaction) are
//! refused up front, naming the step and its line. In the lab a crash is a stop: a
//! node's daemon runs in this process, and its TUN device has to go with it.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use weft_core::lease::LeaseKey;
use weft_core::store::{subnets_prefix, DEFAULT_PREFIX};
use weft_datapath::netns;
use weft_sim::scenario::{Expect, PingExpect, Scenario, Step, SubnetExpect};

use super::state::Lab;
use super::{probe, LabSpec, NodeSpec, Running};

/// How long a check may take to come true: the lab runs in real time, its nodes write
/// their state once a second.
const GRACE: Duration = Duration::from_secs(3);

fn line_of(source: &str, offset: usize) -> usize {
    source[..offset.min(source.len())].matches('\n').count() + 1
}

/// Refuses a scenario that uses what only the simulator can do.
pub fn check_supported(file: &str, scenario: &Scenario, source: &str) -> Result<()> {
    for step in &scenario.steps {
        let name = match step.get_ref() {
            Step::Partition { .. } => "partition",
            Step::Heal { .. } => "heal",
            Step::Faults { .. } => "faults",
            Step::StoreOutage { .. } => "store_outage",
            Step::StoreRecover { .. } => "store_recover",
            Step::ClockJump { .. } => "clock_jump",
            Step::Compact { .. } => "compact",
            _ => continue,
        };
        bail!(
            "{file}:{}: step {name:?} needs the simulator (weft sim run); weft lab play runs start, stop, crash, restart, ping, tcp, delete_lease and reserve",
            line_of(source, step.span().start)
        );
    }
    if scenario.underlay.is_some() {
        bail!("{file}: [underlay] link faults need the simulator (weft sim run)");
    }
    for node in &scenario.nodes {
        let node = node.get_ref();
        if node.ip.octets()[..3] != [192, 0, 2] || node.ip.octets()[3] == 0 {
            bail!(
                "{file}: node {} has IP {}: the lab's underlay is 192.0.2.0/24",
                node.name,
                node.ip
            );
        }
        if node.previous_subnet.is_some() {
            bail!(
                "{file}: node {}: previous_subnet needs the simulator",
                node.name
            );
        }
    }
    Ok(())
}

/// The lab a scenario describes.
pub fn spec(scenario: &Scenario) -> Result<LabSpec> {
    let config = scenario.network.config.get_ref();
    let config_text = match config {
        toml::Value::String(json) => json.clone(),
        other => serde_json::to_string(other).context("the scenario's network config")?,
    };
    Ok(LabSpec {
        nodes: scenario
            .nodes
            .iter()
            .map(|n| {
                let n = n.get_ref();
                NodeSpec {
                    name: n.name.clone(),
                    ip: n.ip,
                    containers: n.container_names(),
                    start: n.start,
                }
            })
            .collect(),
        config_text,
        lease_ttl: scenario.network.lease_ttl.0,
        renew_margin: scenario.network.renew_margin.0,
        reservations: scenario
            .network
            .reservations
            .iter()
            .map(|r| (r.subnet, r.ip))
            .collect(),
    })
}

/// One timed item of the scenario.
enum Item<'a> {
    Step(&'a Step),
    Expect(&'a Expect),
}

/// Plays the scenario against a built lab; returns how many items failed.
pub async fn play(lab: &mut Lab, running: &mut Running, scenario: &Scenario) -> Result<usize> {
    let mut items: Vec<(Duration, Item)> = scenario
        .steps
        .iter()
        .map(|s| (s.get_ref().at(), Item::Step(s.get_ref())))
        .chain(
            scenario
                .expects
                .iter()
                .map(|e| (e.get_ref().at(), Item::Expect(e.get_ref()))),
        )
        .collect();
    items.sort_by_key(|(at, _)| *at);
    let mut player = Player {
        previous: BTreeMap::new(),
        failures: 0,
    };
    let t0 = tokio::time::Instant::now();
    for (at, item) in items {
        tokio::time::sleep_until(t0 + at).await;
        let (what, result) = match item {
            Item::Step(step) => player.step(lab, running, step).await,
            Item::Expect(expect) => player.expect(lab, running, expect).await,
        };
        let stamp = format!("{:>8.3}s", at.as_secs_f64());
        match result {
            Ok(detail) => println!("{stamp} ok    {what}{detail}"),
            Err(e) => {
                player.failures += 1;
                println!("{stamp} FAIL  {what}: {e:#}");
            }
        }
    }
    Ok(player.failures)
}

struct Player {
    /// The lease each node held before it was last stopped.
    previous: BTreeMap<String, Option<String>>,
    failures: usize,
}

fn container(lab: &Lab, spec: &str) -> Result<(String, Ipv4Addr)> {
    let (node, name) = match spec.split_once('/') {
        Some((n, c)) => (n, Some(c)),
        None => (spec, None),
    };
    let node = lab
        .nodes
        .iter()
        .find(|n| n.name == node)
        .with_context(|| format!("no node {node:?}"))?;
    let c = match name {
        Some(c) => node
            .containers
            .iter()
            .find(|x| x.name == format!("{}-{c}", node.name)),
        None => node.containers.first(),
    }
    .with_context(|| format!("{spec}: no such container (is its node running?)"))?;
    Ok((
        c.name.clone(),
        c.ip.context("container without an address")?,
    ))
}

impl Player {
    async fn step(
        &mut self,
        lab: &mut Lab,
        running: &mut Running,
        step: &Step,
    ) -> (String, Result<String>) {
        match step {
            Step::Start { node, .. } | Step::Restart { node, .. } => {
                // A node that stopped on its own (its lease deleted) held, before, the
                // lease its last stats recorded.
                if !self.previous.contains_key(node) {
                    let lease = running.stats(node)["lease"].as_str().map(str::to_string);
                    self.previous.insert(node.clone(), lease);
                }
                let r = async {
                    running.start(node)?;
                    running.wire(lab).await?;
                    Ok(String::new())
                };
                (format!("start {node}"), r.await)
            }
            Step::Stop { node, .. } | Step::Crash { node, .. } => {
                let lease = running.stats(node)["lease"].as_str().map(str::to_string);
                self.previous.insert(node.clone(), lease);
                let reply = running.nodes.stop(node).await;
                let r = if reply.starts_with("ok") {
                    Ok(String::new())
                } else {
                    Err(anyhow::anyhow!(reply))
                };
                (format!("stop {node}"), r)
            }
            Step::Ping {
                from,
                to,
                within,
                expect,
                ..
            } => {
                let what = format!("ping {from} -> {to}");
                (what, self.ping(lab, from, to, within.0, *expect).await)
            }
            Step::Tcp {
                from,
                to,
                bytes,
                within,
                ..
            } => {
                let what = format!("tcp {from} -> {to} {bytes} bytes");
                (what, tcp(lab, from, to, *bytes, within.0).await)
            }
            Step::DeleteLease { node, .. } => {
                let r = async {
                    let lease = running.stats(node)["lease"].as_str().map(str::to_string);
                    let lease = lease.with_context(|| format!("{node} holds no lease"))?;
                    let key = format!("{}{lease}", subnets_prefix(DEFAULT_PREFIX));
                    running.store.delete(&key).await?;
                    Ok(format!(" ({lease})"))
                };
                (format!("delete the lease of {node}"), r.await)
            }
            Step::Reserve { subnet, ip, .. } => {
                let r = async {
                    let key = format!(
                        "{}{}",
                        subnets_prefix(DEFAULT_PREFIX),
                        LeaseKey::v4(*subnet)
                    );
                    let value = serde_json::json!({ "PublicIP": ip.to_string() }).to_string();
                    running.store.put(&key, value.as_bytes()).await?;
                    Ok(String::new())
                };
                (format!("reserve {subnet} for {ip}"), r.await)
            }
            _ => (
                "a simulator-only step".into(),
                Err(anyhow::anyhow!("refused")),
            ),
        }
    }

    async fn ping(
        &self,
        lab: &Lab,
        from: &str,
        to: &str,
        within: Duration,
        expect: PingExpect,
    ) -> Result<String> {
        let (src, _) = container(lab, from)?;
        let (_, dst) = container(lab, to)?;
        let ns = netns::path(&format!("{}{src}", lab.prefix));
        let deadline = Instant::now() + within;
        let mut ident = 0x5a00u16;
        loop {
            ident = ident.wrapping_add(1);
            let left = deadline.saturating_duration_since(Instant::now());
            let wait = left.min(Duration::from_secs(1));
            let (ns2, id) = (ns.clone(), ident);
            let rtt = tokio::task::spawn_blocking(move || probe::echo(ns2, dst, id, wait)).await?;
            match (rtt, expect) {
                (Some(rtt), PingExpect::Ok) => {
                    return Ok(format!(" ({:.2} ms)", rtt.as_secs_f64() * 1e3))
                }
                (Some(_), PingExpect::Fail) => bail!("a reply arrived, none was expected"),
                (None, _) if Instant::now() < deadline => continue,
                (None, PingExpect::Ok) => bail!("no reply within {within:?}"),
                (None, PingExpect::Fail) => return Ok(" (no reply, as expected)".into()),
            }
        }
    }

    async fn expect(
        &self,
        lab: &Lab,
        running: &mut Running,
        expect: &Expect,
    ) -> (String, Result<String>) {
        let what = match expect {
            Expect::Holds { node, subnet, .. } => format!("{node} holds {subnet:?}"),
            Expect::Leases { count, .. } => format!("{count} leases"),
            Expect::Routes { node, count, .. } => format!("{node} has {count} routes"),
            Expect::Error { node, contains, .. } => format!("{node} reported {contains:?}"),
            Expect::Stopped { node, .. } => format!("{node} stopped"),
            Expect::Converged { .. } => "converged".to_string(),
        };
        let deadline = Instant::now() + GRACE;
        loop {
            let result = self.check(lab, running, expect).await;
            if result.is_ok() || Instant::now() > deadline {
                return (what, result);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn check(&self, lab: &Lab, running: &mut Running, expect: &Expect) -> Result<String> {
        let _ = lab;
        match expect {
            Expect::Holds { node, subnet, .. } => {
                let held = if running.nodes.stops.contains_key(node) {
                    running.stats(node)["lease"].as_str().map(str::to_string)
                } else {
                    None
                };
                let ok = match subnet {
                    SubnetExpect::Any => held.is_some(),
                    SubnetExpect::None => held.is_none(),
                    SubnetExpect::Previous => {
                        held.is_some() && self.previous.get(node) == Some(&held)
                    }
                    SubnetExpect::Exactly(net) => held == Some(LeaseKey::v4(*net).to_string()),
                };
                if ok {
                    Ok(format!(" ({})", held.as_deref().unwrap_or("none")))
                } else {
                    bail!("it holds {held:?}")
                }
            }
            Expect::Leases { count, .. } => {
                let n = running.leases().await?.len();
                if n == *count {
                    Ok(String::new())
                } else {
                    bail!("the store holds {n}")
                }
            }
            Expect::Routes { node, count, .. } => {
                let n = running.stats(node)["routes"].as_array().map_or(0, Vec::len);
                if n == *count {
                    Ok(String::new())
                } else {
                    bail!("it has {n}")
                }
            }
            Expect::Error { node, contains, .. } => match running.nodes.failure(node) {
                Some(e) if e.contains(contains.as_str()) => Ok(String::new()),
                other => bail!("its error is {other:?}"),
            },
            Expect::Stopped { node, .. } => match running.nodes.failure(node) {
                Some(e) if e.contains("deleted") => Ok(String::new()),
                other => bail!("not stopped by a deletion ({other:?})"),
            },
            Expect::Converged { .. } => {
                let leases = running.leases().await?;
                for name in running.nodes.stops.keys() {
                    let stats = running.stats(name);
                    let own = stats["lease"].as_str().unwrap_or_default().to_string();
                    let mut want: Vec<String> = leases
                        .iter()
                        .filter(|(k, _)| **k != own)
                        .map(|(k, _)| k.replace('-', "/"))
                        .collect();
                    let mut have: Vec<String> = stats["routes"]
                        .as_array()
                        .map(|r| {
                            r.iter()
                                .filter_map(|x| x.as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default();
                    want.sort();
                    have.sort();
                    if want != have {
                        bail!("{name} routes {have:?}, live peer leases {want:?}");
                    }
                }
                Ok(String::new())
            }
        }
    }
}

async fn tcp(lab: &Lab, from: &str, to: &str, bytes: u64, within: Duration) -> Result<String> {
    let (src, _) = container(lab, from)?;
    let (dst_name, dst) = container(lab, to)?;
    let src_ns = netns::path(&format!("{}{src}", lab.prefix));
    let dst_ns = netns::path(&format!("{}{dst_name}", lab.prefix));
    let start = Instant::now();
    let run = move || -> Result<u64> {
        let listener = netns::in_netns(Some(&dst_ns), || TcpListener::bind("0.0.0.0:0"))??;
        let port = listener.local_addr()?.port();
        let receiver = std::thread::spawn(move || -> std::io::Result<u64> {
            let (mut conn, _) = listener.accept()?;
            conn.set_read_timeout(Some(within))?;
            let mut buf = vec![0u8; 1 << 16];
            let mut total = 0u64;
            loop {
                match conn.read(&mut buf)? {
                    0 => return Ok(total),
                    n => total += n as u64,
                }
            }
        });
        let addr = SocketAddr::from((dst, port));
        let mut conn = netns::in_netns(Some(&src_ns), move || {
            TcpStream::connect_timeout(&addr, within)
        })??;
        conn.set_write_timeout(Some(within))?;
        let chunk = vec![0x5au8; 1 << 16];
        let mut sent = 0u64;
        while sent < bytes {
            let n = chunk.len().min((bytes - sent) as usize);
            conn.write_all(&chunk[..n])?;
            sent += n as u64;
        }
        drop(conn);
        let got = receiver
            .join()
            .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
        Ok(got)
    };
    let got = tokio::task::spawn_blocking(run).await??;
    let took = start.elapsed();
    if got != bytes {
        bail!("{got} of {bytes} bytes arrived");
    }
    if took > within {
        bail!("took {took:?}, more than {within:?}");
    }
    Ok(format!(" ({:.2} s)", took.as_secs_f64()))
}
