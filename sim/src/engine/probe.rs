//! Pings and TCP transfers between containers: the end-to-end checks that traffic
//! really crosses the overlay through the core's forwarding decisions.

use std::net::Ipv4Addr;
use std::time::Duration;

use super::datapath::Guest;
use super::{Ev, World};
use crate::time::{format_duration, SimTime};

/// A container, by host index and container index.
pub type Endpoint = (usize, usize);

/// One ping: an echo request every second until a reply or the deadline.
#[derive(Debug, Clone)]
pub struct Ping {
    /// Sender.
    pub from: Endpoint,
    /// Receiver.
    pub to: Endpoint,
    /// When it started.
    pub started: SimTime,
    /// When it gives up.
    pub deadline: SimTime,
    /// Whether a reply is expected (checked at the deadline); `None`: not checked.
    pub expect_reply: Option<bool>,
    /// Requests sent.
    pub attempts: u16,
    /// When the first reply came.
    pub replied: Option<SimTime>,
}

/// One TCP transfer.
#[derive(Debug, Clone)]
pub struct Transfer {
    /// Sender.
    pub from: Endpoint,
    /// Receiver.
    pub to: Endpoint,
    /// Bytes to send.
    pub bytes: u64,
    /// When it started.
    pub started: SimTime,
    /// When it must be done.
    pub deadline: SimTime,
    /// When the receiver had every byte.
    pub done: Option<SimTime>,
}

const PING_INTERVAL: Duration = Duration::from_secs(1);

impl World {
    /// A label such as `a/c0`.
    pub fn endpoint_name(&self, e: Endpoint) -> String {
        let h = &self.hosts[e.0];
        format!(
            "{}/{}",
            h.name,
            h.container_names.get(e.1).map_or("?", |s| s.as_str())
        )
    }

    /// The current address of a container, if its node holds a lease.
    pub fn endpoint_addr(&self, e: Endpoint) -> Option<Ipv4Addr> {
        self.hosts[e.0].running()?.guests.get(e.1).map(Guest::addr)
    }

    /// Starts a ping now; `expect_reply` is checked at the deadline.
    pub fn start_ping(
        &mut self,
        from: Endpoint,
        to: Endpoint,
        within: Duration,
        expect_reply: Option<bool>,
    ) -> usize {
        let i = self.pings.len();
        self.pings.push(Ping {
            from,
            to,
            started: self.now,
            deadline: self.now + within,
            expect_reply,
            attempts: 0,
            replied: None,
        });
        self.ping_attempt(i);
        if expect_reply.is_some() {
            let at = self.now + within;
            self.schedule(at, Ev::PingDeadline(i));
        }
        i
    }

    pub(crate) fn ping_attempt(&mut self, i: usize) {
        let p = &self.pings[i];
        if p.replied.is_some() || self.now >= p.deadline {
            return;
        }
        let (from, to) = (p.from, p.to);
        let seq = p.attempts;
        self.pings[i].attempts += 1;
        if let Some(dst) = self.endpoint_addr(to) {
            if let Some(run) = self.hosts[from.0].running_mut() {
                match run.guests.get_mut(from.1) {
                    Some(Guest::Full(c)) => c.send_ping(dst, i as u16, seq),
                    Some(Guest::Light(c)) => c.send_ping(dst, i as u16, seq),
                    None => {}
                }
                self.guests_dirty.push(from.0);
            }
        }
        let next = self.now + PING_INTERVAL;
        if next < self.pings[i].deadline {
            self.schedule(next, Ev::PingAttempt(i));
        }
    }

    pub(crate) fn ping_reply(&mut self, h: usize, ident: u16, _seq: u16) {
        // Ping ids wrap at 65,536 in the ICMP ident; match the newest ping with that
        // ident from this host.
        let mut i = ident as usize;
        while i + 65_536 < self.pings.len() {
            i += 65_536;
        }
        let Some(p) = self.pings.get_mut(i) else {
            return;
        };
        if p.from.0 != h || p.replied.is_some() {
            return;
        }
        p.replied = Some(self.now);
        if p.expect_reply.is_some() {
            let (from, to) = (p.from, p.to);
            let rtt = self.now.as_duration() - p.started.as_duration();
            let attempts = p.attempts;
            let (a, b) = (self.endpoint_name(from), self.endpoint_name(to));
            self.log(
                "ping",
                format_args!(
                    "{a} -> {b}: reply {} after the first request ({attempts} sent)",
                    format_duration(rtt)
                ),
            );
        }
    }

    pub(crate) fn ping_deadline(&mut self, i: usize) {
        let p = self.pings[i].clone();
        let (a, b) = (self.endpoint_name(p.from), self.endpoint_name(p.to));
        let got = p.replied.is_some();
        match p.expect_reply {
            Some(true) if !got => self.fail(format!(
                "ping {a} -> {b}: no reply within {}",
                format_duration(p.deadline.as_duration() - p.started.as_duration())
            )),
            Some(false) if got => {
                self.fail(format!("ping {a} -> {b}: a reply came, none was expected"))
            }
            Some(false) => self.log(
                "ping",
                format_args!("{a} -> {b}: no reply, as expected ({} sent)", p.attempts),
            ),
            _ => {}
        }
    }

    /// Starts a TCP transfer now: the receiver listens, the sender connects.
    pub fn start_transfer(
        &mut self,
        from: Endpoint,
        to: Endpoint,
        bytes: u64,
        within: Duration,
    ) -> usize {
        let id = self.transfers.len();
        self.transfers.push(Transfer {
            from,
            to,
            bytes,
            started: self.now,
            deadline: self.now + within,
            done: None,
        });
        let port = 5000 + (id % 1000) as u16;
        let dst = self.endpoint_addr(to);
        if let Some(Guest::Full(c)) = self.hosts[to.0]
            .running_mut()
            .and_then(|r| r.guests.get_mut(to.1))
        {
            c.tcp_receive(id as u32, port, bytes);
        }
        if let (Some(dst), Some(Guest::Full(c))) = (
            dst,
            self.hosts[from.0]
                .running_mut()
                .and_then(|r| r.guests.get_mut(from.1)),
        ) {
            c.tcp_send(id as u32, dst, port, bytes);
        }
        self.guests_dirty.push(to.0);
        self.guests_dirty.push(from.0);
        let at = self.now + within;
        self.schedule(at, Ev::TransferDeadline(id));
        id
    }

    pub(crate) fn transfer_done(&mut self, id: u32) {
        let Some(t) = self.transfers.get_mut(id as usize) else {
            return;
        };
        if t.done.is_some() {
            return;
        }
        t.done = Some(self.now);
        let t = t.clone();
        let took = self.now.as_duration() - t.started.as_duration();
        let (a, b) = (self.endpoint_name(t.from), self.endpoint_name(t.to));
        self.log(
            "tcp",
            format_args!(
                "{a} -> {b}: {} bytes delivered intact in {}",
                t.bytes,
                format_duration(took)
            ),
        );
    }

    pub(crate) fn transfer_deadline(&mut self, id: usize) {
        let t = self.transfers[id].clone();
        if t.done.is_none() {
            let (a, b) = (self.endpoint_name(t.from), self.endpoint_name(t.to));
            let side = |e: Endpoint| match self.hosts[e.0].running().and_then(|r| r.guests.get(e.1))
            {
                Some(Guest::Full(c)) => c
                    .transfer_status(id as u32)
                    .unwrap_or_else(|| "no socket".into()),
                _ => "no container".into(),
            };
            let status = format!("{}; {}", side(t.from), side(t.to));
            self.fail(format!(
                "tcp {a} -> {b}: {} bytes not delivered within {} ({status})",
                t.bytes,
                format_duration(t.deadline.as_duration() - t.started.as_duration())
            ));
        }
    }
}
