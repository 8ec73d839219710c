//! What a node reports, turned into the trace and into the world's bookkeeping: the
//! subnet file, the subnets held, the containers' addresses, the errors seen.

use weft_core::allocator::{AcquiredHow, AllocEvent, LossReason};
use weft_core::node::NodeEvent;
use weft_core::router::RouteChange;

use super::World;
use crate::time::{format_duration, SimTime};

fn how(h: AcquiredHow) -> &'static str {
    match h {
        AcquiredHow::Reused => "reused",
        AcquiredHow::Previous => "previous",
        AcquiredHow::FromPublicIp => "from-public-ip",
        AcquiredHow::Random => "random",
    }
}

fn reason(r: LossReason) -> &'static str {
    match r {
        LossReason::Expired => "expired",
        LossReason::Deleted => "deleted by someone else",
        LossReason::Taken => "taken by someone else",
        LossReason::Claimed => "renewed by another node with our public IP",
    }
}

impl World {
    pub(crate) fn node_event(&mut self, h: usize, ev: NodeEvent) {
        let name = self.hosts[h].name.clone();
        let routes = self.cfg.trace_routes;
        match ev {
            NodeEvent::Lease(AllocEvent::Acquired { lease, how: h_ }) => {
                let expiry = lease
                    .expires_at
                    .map(|t| {
                        format!(
                            "expires at {}",
                            SimTime::from_timestamp(t, 0).to_string().trim()
                        )
                    })
                    .unwrap_or_else(|| "a reservation, never expires".into());
                self.log(
                    &name,
                    format_args!("acquired {} ({}), {expiry}", subnets(&lease.key), how(h_)),
                );
                self.hosts[h].subnet_file = Some(lease.key);
                if let Some(v4) = lease.key.ipv4 {
                    if !self.hosts[h].held_ever.contains(&v4) {
                        self.hosts[h].held_ever.push(v4);
                    }
                }
                self.hold(h, lease.key);
                self.build_guests(h, lease.key);
            }
            NodeEvent::Lease(AllocEvent::Renewed { lease }) => {
                if routes {
                    let expiry = lease
                        .expires_at
                        .map(|t| SimTime::from_timestamp(t, 0).to_string().trim().to_string())
                        .unwrap_or_default();
                    self.log(
                        &name,
                        format_args!("renewed {}, expires at {expiry}", lease.key.primary()),
                    );
                }
            }
            NodeEvent::Lease(AllocEvent::Lost { key, reason: r }) => {
                self.hosts[h].previous = Some(key);
                let since = self.hosts[h].store_trouble_at.max(self.outage_changed_at.0);
                if r == LossReason::Expired
                    && self.cfg.check
                    && !self.store_down
                    && self.now.as_duration() >= since.as_duration() + self.cfg.lease_ttl
                {
                    self.fail(format!(
                        "invariant: {name} let its lease {} run out, though it could reach the store for a whole TTL (since {})",
                        key.primary(),
                        since.to_string().trim()
                    ));
                }
                self.log(&name, format_args!("lost {}: {}", key.primary(), reason(r)));
                if r == LossReason::Claimed {
                    let ip = self.hosts[h].ip;
                    self.hosts[h].errors.push(format!(
                        "lease {} {} ({ip}); exiting",
                        key.primary(),
                        reason(r)
                    ));
                }
                if self.held.get(&key.primary()) == Some(&h) {
                    self.held.remove(&key.primary());
                }
                if let Some(run) = self.hosts[h].running_mut() {
                    run.guests.clear();
                }
            }
            NodeEvent::Lease(AllocEvent::AcquireFailed { error, retry_at }) => {
                let msg = error.to_string();
                let wait = retry_at.saturating_since(self.hosts[h].node_now(self.now));
                self.log(
                    &name,
                    format_args!("acquire failed: {msg}; retry in {}", format_duration(wait)),
                );
                self.hosts[h].errors.push(msg);
            }
            NodeEvent::Lease(AllocEvent::RenewFailed { error, retry_at }) => {
                let msg = error.to_string();
                let wait = retry_at.saturating_since(self.hosts[h].node_now(self.now));
                self.log(
                    &name,
                    format_args!("renew failed: {msg}; retry in {}", format_duration(wait)),
                );
                self.hosts[h].errors.push(msg);
            }
            NodeEvent::Route(change) => {
                if routes {
                    match change {
                        RouteChange::Add(r) if !self.announce(h, true, &r) => {}
                        RouteChange::Remove(r) if !self.announce(h, false, &r) => {}
                        RouteChange::Add(r) => self.log(
                            &name,
                            format_args!("route + {} via {}", r.subnet, r.public_ip),
                        ),
                        RouteChange::Remove(r) => self.log(
                            &name,
                            format_args!("route - {} via {}", r.subnet, r.public_ip),
                        ),
                    }
                }
            }
            NodeEvent::Skipped(s) => {
                self.hosts[h].skipped += 1;
                self.log(&name, format_args!("skipped {s:?}"));
            }
            NodeEvent::Synced { revision, leases } => {
                if routes {
                    self.log(
                        &name,
                        format_args!("synced {leases} leases at revision {revision}"),
                    );
                }
            }
            NodeEvent::StoreFailed { error, retry_at } => {
                let msg = error.to_string();
                let wait = retry_at.saturating_since(self.hosts[h].node_now(self.now));
                self.log(
                    &name,
                    format_args!("store failed: {msg}; retry in {}", format_duration(wait)),
                );
                self.hosts[h].errors.push(msg);
            }
        }
    }
}

impl World {
    /// Applies one route event to what host `h`'s node has announced; false (and the
    /// run fails) when it adds a route it had announced already or removes one it never
    /// announced: a datapath programmed from these events would go wrong. An add of a
    /// subnet announced with another next hop replaces it.
    fn announce(&mut self, h: usize, add: bool, r: &weft_core::router::Route) -> bool {
        let route = (r.subnet, r.public_ip);
        let announced = &mut self.hosts[h].announced;
        let ok = if add {
            // An add replaces the route to the same subnet (a new next hop), as `ip
            // route replace` does.
            let same: Vec<_> = announced
                .range(
                    (
                        r.subnet,
                        std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                    )..,
                )
                .take_while(|(n, _)| *n == r.subnet)
                .copied()
                .collect();
            for old in &same {
                announced.remove(old);
            }
            announced.insert(route) && !same.contains(&route)
        } else {
            announced.remove(&route)
        };
        if !ok {
            let name = self.hosts[h].name.clone();
            let what = if add {
                "added again"
            } else {
                "removed, never added"
            };
            self.fail(format!(
                "invariant: {name}'s route {} via {} {what}",
                r.subnet, r.public_ip
            ));
        }
        ok
    }
}

/// A lease's subnets for the trace: `10.5.1.0/24`, on a dual-stack network
/// `10.5.1.0/24 and fc00:0:0:1::/64`, on an IPv6-only one `fc00:0:0:1::/64`.
fn subnets(key: &weft_core::lease::LeaseKey) -> String {
    match (key.ipv4, key.ipv6) {
        (Some(v4), Some(v6)) => format!("{v4} and {v6}"),
        _ => key.primary().to_string(),
    }
}
