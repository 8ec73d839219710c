//! The pure part of batched forwarding: which outbound packets go out together in one
//! UDP GSO send, and the per-datagram verdicts of a received (possibly GRO-coalesced)
//! buffer. No I/O here, so that both can be tested against hand-built packets.
//!
//! UDP GSO (`UDP_SEGMENT`) sends one buffer as several datagrams of `segment` bytes each,
//! the last one possibly shorter, all to one destination. On the wire each is an ordinary
//! flannel datagram: one inner IP packet, no header of ours. So a run is consecutive
//! packets for one peer, lying back to back in the batch buffer, all of one size except a
//! shorter last one. UDP GRO is the mirror image: the kernel hands over one buffer of
//! datagrams of `stride` bytes from one sender, the last possibly shorter; every one of
//! them is still decided alone by the forwarding table.

use std::net::IpAddr;

use weft_core::forward::{ForwardTable, Inbound, ThreadDrops};

/// The biggest UDP payload of one IPv4 GSO send: 65,535 minus the IP and UDP headers.
pub(crate) const MAX_GSO_BYTES: usize = 65_535 - 20 - 8;

/// Consecutive packets for one peer in the batch buffer, sent with one syscall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Run {
    /// The peer's public IP.
    pub peer: IpAddr,
    /// Where the first packet starts in the batch buffer.
    pub start: usize,
    /// The size of every packet but the last (which may be shorter).
    pub segment: usize,
    /// The bytes of all its packets.
    pub len: usize,
    /// How many packets.
    pub count: usize,
}

/// Builds [`Run`]s as packets are routed, one at a time; see the module docs.
#[derive(Debug)]
pub(crate) struct Runs {
    current: Option<Run>,
    max_segments: usize,
}

impl Runs {
    /// Runs of at most `max_segments` packets (1: the kernel has no GSO, one packet per
    /// send).
    pub fn new(max_segments: usize) -> Self {
        Runs {
            current: None,
            max_segments: max_segments.max(1),
        }
    }

    /// The packet of `len` bytes at `start` goes to `peer`. Returns the run it closes when
    /// it cannot join the current one (then it starts the next).
    pub fn push(&mut self, peer: IpAddr, start: usize, len: usize) -> Option<Run> {
        if let Some(run) = &mut self.current {
            let joins = run.peer == peer
                && run.start + run.len == start
                // A shorter packet ended the run: GSO allows only the last to be short.
                && run.len == run.segment * run.count
                && len <= run.segment
                && run.count < self.max_segments
                && run.len + len <= MAX_GSO_BYTES;
            if joins {
                run.len += len;
                run.count += 1;
                return None;
            }
        }
        self.current.replace(Run {
            peer,
            start,
            segment: len,
            len,
            count: 1,
        })
    }

    /// The run in progress, if any, ending it.
    pub fn finish(&mut self) -> Option<Run> {
        self.current.take()
    }
}

/// Decides each datagram of a received buffer of `stride`-byte datagrams (the last may be
/// shorter) from `from`, exactly as if each had come alone; calls `deliver` with every
/// accepted one, in order, and returns how many datagrams the buffer held.
pub(crate) fn each_inbound(
    table: &ForwardTable,
    from: IpAddr,
    buf: &[u8],
    stride: usize,
    drops: &ThreadDrops,
    mut deliver: impl FnMut(&[u8]),
) -> usize {
    if buf.is_empty() {
        // A zero-length datagram is still a datagram, and still malformed.
        let _ = table.accept_inbound(from, buf, drops);
        return 1;
    }
    let mut n = 0;
    for datagram in buf.chunks(stride.max(1)) {
        n += 1;
        if table.accept_inbound(from, datagram, drops) == Inbound::Deliver {
            deliver(datagram);
        }
    }
    n
}

#[cfg(test)]
mod tests;
