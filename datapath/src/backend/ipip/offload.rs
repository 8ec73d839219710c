//! The userspace path's TUN offloads, the default (`WEFT_IPIP_OFFLOAD=0` keeps the one
//! packet per syscall loops of the udp backend): the TUN device gets a virtio header and
//! TSO, as the udp backend's does, so that one read brings a TCP super-packet, which
//! [`offload::segment`] cuts into the packets the kernel would have sent, each routed
//! alone by the forwarding table and sent as its own IPIP packet (a raw socket has no
//! GSO: one `sendto` per packet). Inbound, the raw socket is drained without blocking;
//! every packet is checked alone by [`ForwardTable::accept_inbound`], and what is
//! accepted goes through the udp backend's [`Coalescer`], which writes one flow's TCP
//! segments to the TUN device as one super-packet when the socket runs dry. The packets
//! on the wire are the same either way.

use std::io::ErrorKind;

use arc_swap::Cache;
use weft_core::forward::{DropReason, Inbound, Outbound};

use super::user::RawIpip;
use crate::backend::udp::offload::{Coalescer, VNET_HDR_LEN};
use crate::backend::udp::{
    add, count, segment_read, Carrier, Forwarder, IcmpFrom, ICMP_ROOM, IDLE, SEGMENTED_ROOM,
    VNET_READ,
};

/// The biggest IP packet: an outer header and the biggest inner one fit in two.
const MAX_PACKET: usize = 65_535;

impl Forwarder<RawIpip> {
    /// TUN (virtio header, TSO) -> table -> raw socket, until the device goes away.
    pub(super) fn tun_to_ipip_offload(self, icmp_from: IcmpFrom) {
        let mut read_buf = vec![0u8; VNET_READ];
        let mut plain = vec![0u8; SEGMENTED_ROOM];
        let mut reply = [0u8; VNET_HDR_LEN + ICMP_ROOM];
        let mut table = Cache::new(self.table.clone());
        let mut bad_logged = false;
        let mut streak = self.tun_streak();
        while !self.stopping() {
            let n = match self.tun.recv(&mut read_buf) {
                Ok(n) => {
                    streak.ok();
                    n
                }
                Err(e) => {
                    if !self.stopping() {
                        count(&self.counters.errors);
                        if streak.failed(&e, &self.fatal).is_break() {
                            return;
                        }
                    }
                    continue;
                }
            };
            let segments = match segment_read(&read_buf[..n], &mut plain) {
                Ok(s) => s,
                Err(e) => {
                    count(&self.counters.tun_rx);
                    self.drops.count(DropReason::Malformed);
                    if !bad_logged {
                        bad_logged = true;
                        tracing::warn!(error = %e, "a packet from the TUN device could not be segmented (logged once)");
                    }
                    continue;
                }
            };
            add(&self.counters.tun_rx, segments.count);
            if segments.count > 1 {
                count(&self.counters.tso_reads);
            }
            let table = table.load();
            for i in 0..segments.count {
                let start = i * segments.segment;
                let len = segments.segment.min(segments.len - start);
                let packet = &mut plain[start..start + len];
                match table.route_outbound(packet, &self.drops) {
                    Outbound::Send { peer } => {
                        match self.socket.send_to(packet, (peer, 0).into()) {
                            Ok(_) => count(&self.counters.udp_tx),
                            Err(_) => count(&self.counters.errors),
                        }
                    }
                    Outbound::Unreachable => {
                        // Written back behind an empty virtio header.
                        if let Some(len) = icmp_from.unreachable(packet, &mut reply[VNET_HDR_LEN..])
                        {
                            reply[..VNET_HDR_LEN].fill(0);
                            if self.tun.send(&reply[..VNET_HDR_LEN + len]).is_ok() {
                                count(&self.counters.icmp_tx);
                            }
                        }
                    }
                    // For our own subnet the kernel has a better route; already counted.
                    Outbound::Local | Outbound::Drop(_) => {}
                }
            }
        }
    }

    /// Raw socket -> table -> coalescer -> TUN (virtio header), until the socket is shut
    /// down or the backend stops.
    pub(super) fn ipip_to_tun_offload(self) {
        if let Err(e) = self.socket.set_nonblocking() {
            tracing::warn!(error = %e, "cannot make the raw IPIP socket non-blocking; without offloads instead");
            return self.udp_to_tun_vnet();
        }
        let mut buf = vec![0u8; MAX_PACKET];
        let mut coalescer = Coalescer::default();
        let mut table = Cache::new(self.table.clone());
        let mut streak = self.socket_streak();
        let tun = self.tun.clone();
        let counters = self.counters.clone();
        let mut write = |b: &[u8], segments: usize| match tun.send(b) {
            Ok(_) => {
                add(&counters.tun_tx, segments);
                if segments > 1 {
                    count(&counters.gro_writes);
                }
            }
            Err(_) => add(&counters.errors, segments),
        };
        while !self.stopping() {
            let (range, from) = match self.socket.recv_from(&mut buf) {
                Ok(Some(got)) => {
                    streak.ok();
                    got
                }
                Ok(None) => {
                    streak.ok();
                    count(&self.counters.udp_rx);
                    self.drops.count(DropReason::Malformed);
                    continue;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    // The socket ran dry: nothing waits past it.
                    coalescer.flush(&mut write);
                    self.socket.wait_readable(IDLE);
                    continue;
                }
                Err(e) => {
                    if !self.stopping() {
                        count(&self.counters.errors);
                        if streak.failed(&e, &self.fatal).is_break() {
                            return;
                        }
                    }
                    continue;
                }
            };
            count(&self.counters.udp_rx);
            let packet = &buf[range];
            if table.load().accept_inbound(from, packet, &self.drops) == Inbound::Deliver {
                coalescer.push(packet, &mut write);
            }
        }
    }

    /// The blocking receive loop for a TUN device with a virtio header: each accepted
    /// packet written alone behind an empty one.
    fn udp_to_tun_vnet(self) {
        let mut buf = vec![0u8; VNET_HDR_LEN + MAX_PACKET];
        let mut table = Cache::new(self.table.clone());
        let mut streak = self.socket_streak();
        while !self.stopping() {
            let (range, from) = match self.socket.recv_from(&mut buf[VNET_HDR_LEN..]) {
                Ok(Some(got)) => {
                    streak.ok();
                    got
                }
                Ok(None) => {
                    count(&self.counters.udp_rx);
                    self.drops.count(DropReason::Malformed);
                    continue;
                }
                Err(e) => {
                    if !self.stopping() {
                        count(&self.counters.errors);
                        if streak.failed(&e, &self.fatal).is_break() {
                            return;
                        }
                    }
                    continue;
                }
            };
            count(&self.counters.udp_rx);
            let (start, end) = (VNET_HDR_LEN + range.start, VNET_HDR_LEN + range.end);
            if table
                .load()
                .accept_inbound(from, &buf[start..end], &self.drops)
                == Inbound::Deliver
            {
                // The virtio header goes right before the packet, over the outer header.
                buf[start - VNET_HDR_LEN..start].fill(0);
                match self.tun.send(&buf[start - VNET_HDR_LEN..end]) {
                    Ok(_) => count(&self.counters.tun_tx),
                    Err(_) => count(&self.counters.errors),
                }
            }
        }
    }
}
