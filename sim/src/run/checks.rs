//! The scenario's expectations, checked against the world, and the closing summary.

use crate::engine::World;
use crate::scenario::{Expect, SubnetExpect};

/// In a run without per-event route checks, one node in this many has its forwarding
/// table checked at `converged` (see there).
const FORWARD_SAMPLE: usize = 100;

pub(super) fn expect(w: &mut World, e: &Expect) {
    let host = |w: &World, n: &str| w.host_index(n).unwrap_or(0);
    let result: Result<String, String> = match e {
        Expect::Holds { node, subnet, .. } => {
            let h = host(w, node);
            let held = w.hosts[h].lease_key().map(|k| k.primary());
            let show = |k: Option<ipnet::IpNet>| k.map_or("nothing".to_string(), |k| k.to_string());
            let ok = match subnet {
                SubnetExpect::Exactly(n) => held == Some(ipnet::IpNet::V4(*n)),
                SubnetExpect::Previous => {
                    held.is_some() && held == w.hosts[h].previous.map(|k| k.primary())
                }
                SubnetExpect::Any => held.is_some(),
                SubnetExpect::None => held.is_none(),
            };
            let want = match subnet {
                SubnetExpect::Exactly(n) => n.to_string(),
                SubnetExpect::Previous => format!(
                    "its previous subnet ({})",
                    show(w.hosts[h].previous.map(|k| k.primary()))
                ),
                SubnetExpect::Any => "a subnet".into(),
                SubnetExpect::None => "nothing".into(),
            };
            if ok {
                Ok(format!("{node} holds {}", show(held)))
            } else {
                Err(format!(
                    "{node} should hold {want} but holds {}",
                    show(held)
                ))
            }
        }
        Expect::Leases { count, .. } => {
            let n = w
                .store
                .list(&weft_core::store::subnets_prefix(
                    weft_core::store::DEFAULT_PREFIX,
                ))
                .entries
                .len();
            if n == *count {
                Ok(format!("the store holds {n} leases"))
            } else {
                Err(format!(
                    "the store should hold {count} leases but holds {n}"
                ))
            }
        }
        Expect::Routes { node, count, .. } => {
            let h = host(w, node);
            let n = w.hosts[h].node().map_or(0, |n| n.routes().len());
            if n == *count {
                Ok(format!("{node} has {n} routes"))
            } else {
                Err(format!("{node} should have {count} routes but has {n}"))
            }
        }
        Expect::Error { node, contains, .. } => {
            let h = host(w, node);
            if w.hosts[h]
                .errors
                .iter()
                .any(|m| m.contains(contains.as_str()))
            {
                Ok(format!("{node} reported an error containing {contains:?}"))
            } else {
                Err(format!("{node} reported no error containing {contains:?}"))
            }
        }
        Expect::Stopped { node, .. } => {
            let h = host(w, node);
            if w.hosts[h].exited {
                Ok(format!("{node} exited"))
            } else {
                Err(format!("{node} should have exited but has not"))
            }
        }
        Expect::AllLeased { .. } => {
            let mut held: Vec<(ipnet::IpNet, usize)> = Vec::new();
            let mut problems = Vec::new();
            for (h, host) in w.hosts.iter().enumerate() {
                match host.lease_key() {
                    Some(k) => held.push((k.primary(), h)),
                    None if host.is_up() => problems.push(format!("{} holds no lease", host.name)),
                    None => problems.push(format!("{} is down", host.name)),
                }
            }
            held.sort();
            for pair in held.windows(2) {
                let ((a, ha), (b, hb)) = (pair[0], pair[1]);
                if a.contains(&b.network()) {
                    let (na, nb) = (&w.hosts[ha].name, &w.hosts[hb].name);
                    problems.push(format!("{na} holds {a} and {nb} holds {b}: they overlap"));
                }
            }
            if problems.is_empty() {
                Ok(format!(
                    "all {} nodes hold a lease, no two overlapping",
                    held.len()
                ))
            } else {
                let more = problems.len().saturating_sub(5);
                problems.truncate(5);
                let more = if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                };
                Err(format!("not all leased: {}{more}", problems.join("; ")))
            }
        }
        Expect::Drops {
            node,
            reason,
            count,
            ..
        } => {
            let h = host(w, node);
            let n = w.hosts[h].running().map_or(0, |r| {
                r.drops
                    .snapshot()
                    .iter()
                    .find(|(r, _)| r.as_str() == reason)
                    .map_or(0, |(_, n)| n)
            });
            if n == *count {
                Ok(format!("{node} dropped {n} packets as {reason}"))
            } else {
                Err(format!(
                    "{node} should have dropped {count} packets as {reason} but dropped {n}"
                ))
            }
        }
        Expect::Skipped { node, count, .. } => {
            let h = host(w, node);
            let n = w.hosts[h].skipped;
            if n == *count && w.hosts[h].is_up() {
                Ok(format!("{node} skipped {n} entries that are no lease"))
            } else {
                Err(format!(
                    "{node} should run and have skipped {count} entries but skipped {n} (running: {})",
                    w.hosts[h].is_up()
                ))
            }
        }
        Expect::Converged { .. } => {
            let live = w.live_routes();
            let mut problems = Vec::new();
            // A forwarding table is built when first asked for and then kept: asking
            // every node of a run too large for per-event route checks for its table
            // would build and keep one per node, each the size of the cluster (10 GB and
            // 50 s for scenario 18's 10,000 nodes). There, the nodes with containers
            // (whose tables are in use) and one in FORWARD_SAMPLE are checked.
            let check_table = |w: &World, h: usize| {
                w.cfg.check_routes
                    || h % FORWARD_SAMPLE == 0
                    || w.hosts[h].running().is_some_and(|r| !r.guests.is_empty())
            };
            for h in 0..w.hosts.len() {
                if !w.hosts[h].is_up() {
                    continue;
                }
                if !w.caught_up(h) {
                    problems.push(format!("{} has not caught up", w.hosts[h].name));
                } else if let Some(m) = w.route_mismatch_with(h, &live) {
                    problems.push(m);
                } else if let Some(m) = check_table(w, h)
                    .then(|| w.hosts[h].running_table())
                    .flatten()
                    .and_then(crate::engine::forward_mismatch)
                {
                    let name = &w.hosts[h].name;
                    problems.push(format!(
                        "{name}'s forwarding table disagrees with its routes: {m}"
                    ));
                }
            }
            if problems.is_empty() {
                Ok("every running node routes to every live peer lease".into())
            } else {
                Err(format!("not converged: {}", problems.join("; ")))
            }
        }
    };
    match result {
        Ok(m) => w.log("check", format_args!("ok: {m}")),
        Err(m) => w.fail(format!("check failed: {m}")),
    }
}

pub(super) fn summary(w: &mut World) {
    if !w.trace().is_empty() {
        let lines: Vec<String> = w
            .hosts
            .iter()
            .map(|h| {
                let state = match (h.is_up(), h.lease_key(), h.node()) {
                    (false, _, _) => "down".to_string(),
                    (true, Some(k), Some(n)) => {
                        format!("holds {}, {} routes", k.primary(), n.routes().len())
                    }
                    (true, _, _) => "holds nothing".to_string(),
                };
                {
                    let drops: Vec<String> = h
                        .running()
                        .map(|r| {
                            r.drops
                                .snapshot()
                                .iter()
                                .filter(|(_, count)| *count > 0)
                                .map(|(reason, count)| format!("{count} {}", reason.as_str()))
                                .collect()
                        })
                        .unwrap_or_default();
                    if drops.is_empty() {
                        format!("{}: {state}", h.name)
                    } else {
                        format!("{}: {state}; the core dropped {}", h.name, drops.join(", "))
                    }
                }
            })
            .collect();
        for l in lines {
            w.log("end", format_args!("{l}"));
        }
        let s = w.stats;
        w.log("end", format_args!("{} events, {} store operations, {} datagrams ({} dropped by the underlay, {} delivered)", s.events, s.store_ops, s.datagrams, s.dropped, s.delivered));
        match w.failure.clone() {
            None => w.log("end", format_args!("PASSED")),
            Some(f) => w.log("end", format_args!("FAILED at {}: {}", f.at, f.message)),
        }
    }
}
