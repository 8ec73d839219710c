//! The datapath of a host: its containers behind the TUN device, the decision of the
//! node's published forwarding table for every packet they send (route_outbound) and
//! receive (accept_inbound) -- the same table and code the daemon's forwarding threads
//! use --, and the underlay between hosts.

use std::net::{IpAddr, Ipv4Addr};

use weft_core::lease::LeaseKey;
use weft_core::node::{Inbound, Outbound};
use weft_core::subnet::first_host;
use weft_core::wire::icmp::net_unreachable_v4;

use super::{Ev, World};
use crate::container::{AppEvent, Container};
use crate::light::LightContainer;
use crate::rng;
use crate::time::SimTime;

/// A container of either kind.
#[derive(Debug)]
pub enum Guest {
    /// A smoltcp interface.
    Full(Box<Container>),
    /// An echo responder built on smoltcp's wire types.
    Light(LightContainer),
}

impl Guest {
    /// Its overlay address.
    pub fn addr(&self) -> Ipv4Addr {
        match self {
            Guest::Full(c) => c.addr,
            Guest::Light(c) => c.addr,
        }
    }
}

impl World {
    /// Gives host `h`'s containers addresses in `key`: .2, .3, ... (.1 is the node's).
    pub(crate) fn build_guests(&mut self, h: usize, key: LeaseKey) {
        let full = self.cfg.full_containers;
        let mtu = self.cfg.network.mtu(self.cfg.faults.mtu as u32) as usize;
        let now = self.now;
        let names = self.hosts[h].container_names.clone();
        let Some(run) = self.hosts[h].running_mut() else {
            return;
        };
        run.builds += 1;
        // The simulated containers are IPv4 hosts: an IPv6-only node has none.
        let Some(v4) = key.ipv4 else {
            run.guests = Vec::new();
            return;
        };
        let IpAddr::V4(gateway) = first_host(&ipnet::IpNet::V4(v4)).addr() else {
            return;
        };
        let base = u32::from(gateway);
        run.guests = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let addr = Ipv4Addr::from(base + 1 + i as u32);
                if full {
                    let seed = rng::derive(run.seed, "iface", (run.builds << 16) | i as u64);
                    Guest::Full(Box::new(Container::new(
                        name,
                        addr,
                        v4.prefix_len(),
                        gateway,
                        mtu,
                        seed,
                        now,
                    )))
                } else {
                    Guest::Light(LightContainer::new(addr))
                }
            })
            .collect();
        self.guests_dirty.push(h);
    }

    pub(crate) fn container_wake(&mut self, h: usize, inc: u32) {
        let host = &mut self.hosts[h];
        if !host.is_incarnation(inc) || host.wake_at != Some(self.now) {
            return;
        }
        host.wake_at = None;
        self.poll_guests(h);
    }

    /// Polls every container of `h` until none has anything more to send, routing what
    /// they send, and reschedules their wake-up.
    pub(crate) fn poll_guests(&mut self, h: usize) {
        let now = self.now;
        let mut wake: Option<SimTime> = None;
        // Polled after every packet a container gets: the lists are the world's, reused.
        let mut out = std::mem::take(&mut self.scratch_packets);
        let mut app = std::mem::take(&mut self.scratch_app);
        for _round in 0..32 {
            let Some(run) = self.hosts[h].running_mut() else {
                break;
            };
            wake = None;
            for g in &mut run.guests {
                match g {
                    Guest::Full(c) => {
                        if let Some(at) = c.poll(now, &mut out, &mut app) {
                            wake = Some(wake.map_or(at, |w| w.min(at)));
                        }
                    }
                    Guest::Light(c) => c.drain(&mut out),
                }
            }
            for e in app.drain(..) {
                self.app_event(h, e);
            }
            if out.is_empty() {
                break;
            }
            for packet in out.drain(..) {
                self.tun_outbound(h, packet);
            }
        }
        out.clear();
        app.clear();
        self.scratch_packets = out;
        self.scratch_app = app;
        if !self.hosts[h].is_up() {
            return;
        }
        let host = &mut self.hosts[h];
        if let Some(at) = wake {
            if host.wake_at.is_none_or(|w| at < w || w < now) {
                host.wake_at = Some(at);
                let inc = host.incarnation;
                self.schedule(at, Ev::ContainerWake { host: h, inc });
            }
        }
    }

    /// A container of `h` sent `packet`: ask the core where it goes.
    fn tun_outbound(&mut self, h: usize, mut packet: Vec<u8>) {
        let Some(run) = self.hosts[h].running_table() else {
            return;
        };
        match run.table.route_outbound(&mut packet, &run.drops) {
            Outbound::Send {
                peer: IpAddr::V4(peer),
            } => {
                let from = self.hosts[h].ip;
                self.send_datagram(from, peer, packet);
            }
            Outbound::Local => self.deliver_local(h, packet),
            Outbound::Unreachable => {
                let Some(key) = self.hosts[h].lease_key() else {
                    return;
                };
                let Some(v4) = key.ipv4 else { return };
                let IpAddr::V4(gw) = first_host(&ipnet::IpNet::V4(v4)).addr() else {
                    return;
                };
                let mut out = [0u8; 576];
                if let Some(n) = net_unreachable_v4(&packet, gw, &mut out) {
                    self.deliver_local(h, out[..n].to_vec());
                }
            }
            Outbound::Send { .. } | Outbound::Drop(_) => {}
        }
    }

    /// A datagram arrives at `to` on the backend port.
    pub(crate) fn datagram(
        &mut self,
        from: std::net::Ipv4Addr,
        to: std::net::Ipv4Addr,
        packet: Vec<u8>,
    ) {
        let Some(&h) = self.by_ip.get(&to) else {
            return;
        };
        let Some(run) = self.hosts[h].running_table() else {
            return;
        };
        if run
            .table
            .accept_inbound(IpAddr::V4(from), &packet, &run.drops)
            == Inbound::Deliver
        {
            self.stats.delivered += 1;
            if let Some(problem) = self.misdelivered(h, from, &packet) {
                let name = self.hosts[h].name.clone();
                self.fail(format!("invariant: {name} delivered {problem}"));
                return;
            }
            self.deliver_local(h, packet);
        }
    }

    /// What is wrong with `packet`, which came from the public IP `from`, if its inner
    /// source lies in no subnet the host at `from` has ever held: only a peer's own
    /// containers may send through it. Checked from the hosts' own history, not with the
    /// forwarding table that made the decision.
    /// Nor may a node accept a packet for an address outside the lease it holds.
    fn misdelivered(&self, h: usize, from: Ipv4Addr, packet: &[u8]) -> Option<String> {
        let Ok(header) = weft_core::wire::ip::parse(packet) else {
            return Some(format!("an unparsable packet from {from}"));
        };
        let (IpAddr::V4(src), IpAddr::V4(dst)) = (header.src, header.dst) else {
            return None;
        };
        if self.hosts[h]
            .lease_key()
            .is_none_or(|k| !k.ipv4.is_some_and(|n| n.contains(&dst)))
        {
            return Some(format!(
                "a packet for {dst} from {from}, outside the lease it holds"
            ));
        }
        let sender = self.by_ip.get(&from).map(|&s| &self.hosts[s]);
        match sender {
            Some(s) if s.held_ever.iter().any(|n| n.contains(&src)) => None,
            Some(s) => Some(format!(
                "a packet from {src} sent by {} ({from}), which never held a subnet containing it",
                s.name
            )),
            None => Some(format!(
                "a packet from {src} sent by {from}, which is no node"
            )),
        }
    }

    /// Hands an IP packet to the container of `h` it is addressed to.
    fn deliver_local(&mut self, h: usize, packet: Vec<u8>) {
        let Ok(header) = weft_core::wire::ip::parse(&packet) else {
            return;
        };
        let IpAddr::V4(dst) = header.dst else { return };
        let held = self.hosts[h].lease_key();
        let Some(run) = self.hosts[h].running_mut() else {
            return;
        };
        let Some(guest) = run.guests.iter_mut().find(|g| g.addr() == dst) else {
            return;
        };
        if held.is_none_or(|k| !k.ipv4.is_some_and(|n| n.contains(&dst))) || guest.addr() != dst {
            let name = self.hosts[h].name.clone();
            self.fail(format!(
                "invariant: a packet for {dst} was delivered to a container of {name}, which does not hold it"
            ));
            return;
        }
        let mut app = std::mem::take(&mut self.scratch_app);
        match guest {
            Guest::Full(c) => c.receive(packet),
            Guest::Light(c) => c.receive(packet, &mut app),
        }
        for e in app.drain(..) {
            self.app_event(h, e);
        }
        self.scratch_app = app;
        self.guests_dirty.push(h);
    }

    pub(crate) fn app_event(&mut self, h: usize, e: AppEvent) {
        match e {
            AppEvent::EchoReply { ident, seq } => self.ping_reply(h, ident, seq),
            AppEvent::Received { id } => self.transfer_done(id),
            AppEvent::Corrupted { id, offset } => self.fail(format!(
                "transfer {id} received a wrong byte at offset {offset}: corruption got through"
            )),
        }
    }
}
