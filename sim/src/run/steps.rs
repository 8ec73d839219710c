//! The scenario's steps, applied to the world.

use super::faults_from;
use crate::engine::World;
use crate::scenario::{PingExpect, Step, STORE};
use crate::time::format_duration;

fn endpoint(w: &World, text: &str) -> (usize, usize) {
    let (node, container) = text.split_once('/').unwrap_or((text, ""));
    let h = w.host_index(node).unwrap_or(0);
    let c = w.hosts[h]
        .container_names
        .iter()
        .position(|c| c == container)
        .unwrap_or(0);
    (h, c)
}

fn hosts_of<'a>(w: &World, names: impl Iterator<Item = &'a String>) -> Vec<usize> {
    names.filter_map(|n| w.host_index(n)).collect()
}

pub(super) fn step(w: &mut World, s: &Step) {
    let host = |w: &World, n: &str| w.host_index(n).unwrap_or(0);
    match s {
        Step::Start { node, .. } | Step::Restart { node, .. } => {
            let h = host(w, node);
            w.start_host(h);
        }
        Step::Stop { node, .. } => {
            let h = host(w, node);
            w.stop_host(h, "stops");
        }
        Step::Crash { node, .. } => {
            let h = host(w, node);
            w.stop_host(h, "crashes");
        }
        Step::Partition {
            from, to, one_way, ..
        } => {
            let (a, b) = (hosts_of(w, from.iter()), hosts_of(w, to.iter()));
            let to_store = to.iter().any(|n| n == STORE);
            let from_store = from.iter().any(|n| n == STORE);
            for &x in &a {
                let down = w.hosts[x].store_cut_down;
                if to_store {
                    w.cut_store(x, true, down || !*one_way);
                }
            }
            for &y in &b {
                let up = w.hosts[y].store_cut_up;
                if from_store {
                    w.cut_store(y, up || !*one_way, true);
                }
            }
            for &x in &a {
                for &y in &b {
                    let (ix, iy) = (w.hosts[x].ip, w.hosts[y].ip);
                    w.underlay.block(ix, iy);
                    if !one_way {
                        w.underlay.block(iy, ix);
                    }
                }
            }
            let names = |v: &[usize], store: bool| {
                let mut n: Vec<String> = v.iter().map(|h| w.hosts[*h].name.clone()).collect();
                if store {
                    n.push(STORE.into());
                }
                n.join(",")
            };
            let arrow = if *one_way { "->" } else { "<->" };
            let text = format!(
                "partition {} {arrow} {}",
                names(&a, from_store),
                names(&b, to_store)
            );
            w.note_step(text);
        }
        Step::Heal { from, to, .. } => match (from, to) {
            (Some(from), Some(to)) => {
                let (a, b) = (hosts_of(w, from.iter()), hosts_of(w, to.iter()));
                for &x in &a {
                    for &y in &b {
                        let (ix, iy) = (w.hosts[x].ip, w.hosts[y].ip);
                        w.underlay.heal(Some((ix, iy)));
                        w.underlay.heal(Some((iy, ix)));
                    }
                }
                let store = from.iter().chain(to.iter()).any(|n| n == STORE);
                for h in a.into_iter().chain(b) {
                    if store {
                        w.cut_store(h, false, false);
                    }
                }
                w.note_step("heal the named partitions".into());
            }
            _ => {
                w.underlay.heal(None);
                for h in 0..w.hosts.len() {
                    w.cut_store(h, false, false);
                }
                for h in 0..w.hosts.len() {
                    w.cut_store(h, false, false);
                }
                w.note_step("heal every partition".into());
            }
        },
        Step::Faults {
            from,
            to,
            latency,
            jitter,
            loss,
            duplicate,
            reorder,
            reorder_delay,
            corrupt,
            mtu,
            ..
        } => {
            let fields = crate::scenario::FaultFields {
                latency: *latency,
                jitter: *jitter,
                loss: *loss,
                duplicate: *duplicate,
                reorder: *reorder,
                reorder_delay: *reorder_delay,
                corrupt: *corrupt,
                mtu: *mtu,
            };
            match (from, to) {
                (Some(from), Some(to)) => {
                    for x in hosts_of(w, from.iter()) {
                        for y in hosts_of(w, to.iter()) {
                            let (ix, iy) = (w.hosts[x].ip, w.hosts[y].ip);
                            for (p, q) in [(ix, iy), (iy, ix)] {
                                let f = faults_from(w.underlay.faults(p, q), &fields);
                                w.underlay.set_faults(Some((p, q)), f);
                            }
                        }
                    }
                }
                _ => {
                    let f = faults_from(
                        w.underlay.faults(
                            std::net::Ipv4Addr::UNSPECIFIED,
                            std::net::Ipv4Addr::UNSPECIFIED,
                        ),
                        &fields,
                    );
                    w.underlay.set_faults(None, f);
                }
            }
            w.note_step(format!("link faults now {}", describe_faults(&fields)));
        }
        Step::StoreOutage { for_, .. } => {
            w.store_down = true;
            w.request_flush();
            match for_ {
                Some(d) => {
                    w.note_step(format!("store outage for {}", format_duration(d.0)));
                    w.schedule_recover(w.now + d.0);
                }
                None => w.note_step("store outage".into()),
            }
        }
        Step::StoreRecover { .. } => {
            w.store_down = false;
            w.note_step("store recovers".into());
        }
        Step::ClockJump { node, by, .. } => {
            let h = host(w, node);
            w.clock_jump(h, by.millis());
        }
        Step::Ping {
            from,
            to,
            within,
            expect,
            ..
        } => {
            let (a, b) = (endpoint(w, from), endpoint(w, to));
            let want = *expect == PingExpect::Ok;
            let (an, bn) = (w.endpoint_name(a), w.endpoint_name(b));
            let what = if want { "must reply" } else { "must not reply" };
            w.log(
                "ping",
                format_args!(
                    "{an} -> {bn} starts ({what} within {})",
                    format_duration(within.0)
                ),
            );
            w.start_ping(a, b, within.0, Some(want));
        }
        Step::Tcp {
            from,
            to,
            bytes,
            within,
            ..
        } => {
            let (a, b) = (endpoint(w, from), endpoint(w, to));
            let (an, bn) = (w.endpoint_name(a), w.endpoint_name(b));
            w.log(
                "tcp",
                format_args!(
                    "{an} -> {bn} starts: {bytes} bytes within {}",
                    format_duration(within.0)
                ),
            );
            w.start_transfer(a, b, *bytes, within.0);
        }
        Step::DeleteLease { node, .. } => {
            let h = host(w, node);
            w.operator_delete(h);
        }
        Step::Reserve { subnet, ip, .. } => w.operator_reserve(*subnet, *ip),
        Step::Compact { .. } => {
            let r = w.store.revision();
            let _ = w.store.compact(r);
            w.note_step(format!("store compacts its history up to revision {r}"));
        }
        Step::Spoof {
            from,
            to,
            source,
            count,
            via,
            ..
        } => {
            let a = host(w, from);
            let (b, c) = endpoint(w, to);
            let addr = w.endpoint_addr((b, c));
            let target = via.as_deref().map_or(b, |v| host(w, v));
            match addr {
                Some(addr) => w.spoof(a, target, addr, *source, *count),
                None => {
                    let name = w.endpoint_name((b, c));
                    w.note_step(format!("spoof to {name}: it has no address (no lease)"));
                }
            }
        }
        Step::Put { key, value, .. } => w.put_raw(key, value),
        Step::ChangeIp { node, ip, .. } => {
            let h = host(w, node);
            w.change_ip(h, *ip);
        }
        Step::SetConfig { config, .. } => {
            match (
                crate::scenario::network_config(config),
                crate::scenario::config_json(config),
            ) {
                (Ok(network), Ok(json)) => w.set_config(network, &json),
                (Err(e), _) | (_, Err(e)) => w.fail(format!("set_config: {e}")),
            }
        }
        Step::DeleteConfig { .. } => w.delete_config(),
    }
}

fn describe_faults(f: &crate::scenario::FaultFields) -> String {
    let mut parts = Vec::new();
    if let Some(d) = f.latency {
        parts.push(format!("latency {}", format_duration(d.0)));
    }
    if let Some(d) = f.jitter {
        parts.push(format!("jitter {}", format_duration(d.0)));
    }
    for (name, p) in [
        ("loss", f.loss),
        ("duplicate", f.duplicate),
        ("reorder", f.reorder),
        ("corrupt", f.corrupt),
    ] {
        if let Some(p) = p {
            parts.push(format!("{name} {p}"));
        }
    }
    if let Some(d) = f.reorder_delay {
        parts.push(format!("reorder_delay {}", format_duration(d.0)));
    }
    if let Some(m) = f.mtu {
        parts.push(format!("mtu {m}"));
    }
    parts.join(", ")
}
