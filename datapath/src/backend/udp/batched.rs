//! The batched forwarding loops, the default (`WEFT_UDP_BATCH=0` keeps the one packet
//! per syscall loops of the parent module, for comparison).
//!
//! UDP side, through `quinn-udp` (no `unsafe` of ours): one `recvmmsg` takes up to
//! [`RECV_BATCH`] messages, each a buffer of up to 64 datagrams the kernel coalesced
//! with UDP GRO; every datagram in it is still decided alone by the forwarding table
//! ([`batch::each_inbound`]). Outbound, packets read from the TUN device are laid back to
//! back in one buffer and each run of one peer's equal-sized packets leaves in one
//! `sendmsg` with UDP GSO ([`batch::Runs`]): the kernel cuts it into ordinary flannel
//! datagrams. TUN side (the `tun` crate, one packet per read): after a wake-up the
//! thread keeps reading without blocking, up to [`TUN_BATCH`] packets, before it sends.
//! Buffers are allocated once per thread; nothing is allocated per packet.
//!
//! Where the kernel lacks UDP GSO or GRO, `quinn-udp` falls back to one datagram per
//! send or receive, and the thread says so once in the log.
//!
//! With TUN offloads (`vnet_hdr`), each read brings a virtio header and possibly a TCP
//! super-packet: [`offload::segment`] cuts it, straight into the outbound buffer, into
//! the packets the kernel would have sent, and each of them is routed alone, so one
//! super-packet usually leaves as one GSO send. Inbound, accepted datagrams go through an
//! [`offload::Coalescer`], which joins each flow's TCP segments in a batch into one
//! super-packet per flow.

use std::io::{ErrorKind, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::time::Duration;

use arc_swap::Cache;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use weft_core::forward::Outbound;

use weft_core::forward::DropReason;

use super::batch::{self, Run, Runs};
use super::offload::{self, Coalescer, Segments, VnetHdr, VNET_HDR_LEN};
use super::{add, count, Forwarder, IcmpFrom, ICMP_ROOM, MAX_PACKET};

/// How many packets the TUN side reads, without blocking, before it sends what it has.
const TUN_BATCH: usize = 64;
/// The outbound buffer: several GSO sends' worth, so that a reset is rare.
const TUN_BUFFER: usize = 8 * MAX_PACKET;
/// The room one read needs in the outbound buffer with offloads: a super-packet's
/// segments repeat its headers (a 64 KiB one at an MSS of 536 needs about 75 KiB).
pub(in crate::backend) const SEGMENTED_ROOM: usize = 2 * MAX_PACKET;
/// One read from a TUN device with a virtio header: header and a super-packet, with room
/// to spare, so that a read that fills it is known to be truncated.
pub(in crate::backend) const VNET_READ: usize = VNET_HDR_LEN + 2 * MAX_PACKET;
/// How many messages one `recvmmsg` asks for.
const RECV_BATCH: usize = 8;
/// One received message: up to 64 KiB of GRO-coalesced datagrams.
const GRO_BUFFER: usize = 1 << 16;
/// How long a thread waits for I/O before it looks at the stop flag again.
pub(in crate::backend) const IDLE: Duration = Duration::from_millis(200);

/// The socket's batching state, shared by both threads.
pub(super) fn socket_state(socket: &UdpSocket) -> std::io::Result<UdpSocketState> {
    // Also turns on UDP GRO and makes the socket non-blocking.
    let state = UdpSocketState::new(UdpSockRef::from(socket))?;
    if state.max_gso_segments() <= 1 {
        tracing::info!("the kernel offers no UDP GSO: one datagram per send");
    }
    if state.gro_segments() <= 1 {
        tracing::info!("the kernel offers no UDP GRO: one datagram per received buffer");
    }
    Ok(state)
}

/// Segments one read from a TUN device with a virtio header into `out`.
pub(in crate::backend) fn segment_read(
    read: &[u8],
    out: &mut [u8],
) -> Result<Segments, offload::OffloadError> {
    let hdr = VnetHdr::parse(read).ok_or(offload::OffloadError::Truncated)?;
    if read.len() == VNET_READ {
        // It filled the buffer: the kernel may have cut it short.
        return Err(offload::OffloadError::Truncated);
    }
    offload::segment(&hdr, &read[VNET_HDR_LEN..], out)
}

/// Waits until `socket` is ready for `flags` or [`IDLE`] passed.
fn wait(socket: &UdpSocket, flags: PollFlags) {
    let mut fds = [PollFd::new(socket.as_fd(), flags)];
    let timeout = PollTimeout::try_from(IDLE).unwrap_or(PollTimeout::NONE);
    let _ = poll(&mut fds, timeout);
}

impl Forwarder {
    /// TUN -> core -> UDP, batched, until the device goes away. `vnet_hdr`: the device
    /// has TUN offloads (every read starts with a virtio header).
    pub(super) fn tun_to_udp_batched(
        self,
        state: &UdpSocketState,
        port: u16,
        icmp_from: IcmpFrom,
        vnet_hdr: bool,
    ) {
        if let Err(e) = self.tun.set_nonblock() {
            tracing::warn!(error = %e, "cannot make the TUN device non-blocking");
        }
        let mut buf = vec![0u8; TUN_BUFFER];
        // With offloads a read lands here and its segments in `buf`.
        let mut read_buf = vec![0u8; if vnet_hdr { VNET_READ } else { 0 }];
        let room = if vnet_hdr { SEGMENTED_ROOM } else { MAX_PACKET };
        let mut reply = [0u8; VNET_HDR_LEN + ICMP_ROOM];
        // An ICMP error written back to the device needs an (empty) virtio header too.
        let reply_at = if vnet_hdr { VNET_HDR_LEN } else { 0 };
        let mut table = Cache::new(self.table.clone());
        let mut runs = Runs::new(state.max_gso_segments());
        let mut bad_logged = false;
        // Where the next packet is read to, and how many were read since the last wait.
        let (mut end, mut batch) = (0, 0);
        let mut streak = self.tun_streak();
        while !self.stopping() {
            if batch == TUN_BATCH || end + room > buf.len() {
                self.send_run(state, &buf, runs.finish(), port);
                runs = Runs::new(state.max_gso_segments());
                (end, batch) = (0, 0);
            }
            let slot = if vnet_hdr {
                &mut read_buf[..]
            } else {
                &mut buf[end..end + MAX_PACKET]
            };
            let read = if batch == 0 {
                self.tun.recv_timeout(slot, IDLE)
            } else {
                self.tun.recv(slot)
            };
            let n = match read {
                Ok(n) => {
                    streak.ok();
                    n
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    // Nothing more for now: send what was read.
                    batch = TUN_BATCH;
                    continue;
                }
                Err(e) => {
                    batch = TUN_BATCH;
                    if !self.stopping() {
                        count(&self.counters.errors);
                        if streak.failed(&e, &self.fatal).is_break() {
                            return;
                        }
                    }
                    continue;
                }
            };
            batch += 1;
            let segments = if vnet_hdr {
                match segment_read(&read_buf[..n], &mut buf[end..]) {
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
                }
            } else {
                Segments {
                    segment: n,
                    count: 1,
                    len: n,
                }
            };
            add(&self.counters.tun_rx, segments.count);
            if segments.count > 1 {
                count(&self.counters.tso_reads);
            }
            let table = table.load();
            for i in 0..segments.count {
                let start = end + i * segments.segment;
                let len = segments.segment.min(segments.len - i * segments.segment);
                let packet = &mut buf[start..start + len];
                match table.route_outbound(packet, &self.drops) {
                    Outbound::Send { peer } => {
                        if let Some(run) = runs.push(peer, start, len) {
                            self.send_run(state, &buf, Some(run), port);
                        }
                    }
                    Outbound::Unreachable => {
                        let out = &mut reply[reply_at..];
                        if let Some(len) = icmp_from.unreachable(packet, out) {
                            reply[..reply_at].fill(0);
                            if self.tun.send(&reply[..reply_at + len]).is_ok() {
                                count(&self.counters.icmp_tx);
                            }
                        }
                    }
                    // As in the unbatched loop: nowhere to go, and already counted.
                    Outbound::Local | Outbound::Drop(_) => {}
                }
            }
            end += segments.len;
        }
    }

    /// Sends `run` (if any) in one syscall, waiting while the socket buffer is full.
    fn send_run(&self, state: &UdpSocketState, buf: &[u8], run: Option<Run>, port: u16) {
        let Some(run) = run else { return };
        let transmit = Transmit {
            destination: SocketAddr::new(run.peer, port),
            ecn: None,
            contents: &buf[run.start..run.start + run.len],
            segment_size: (run.count > 1).then_some(run.segment),
            src_ip: None,
        };
        loop {
            match state.send(UdpSockRef::from(&*self.socket), &transmit) {
                Ok(()) => return add(&self.counters.udp_tx, run.count),
                Err(e) if e.kind() == ErrorKind::WouldBlock && !self.stopping() => {
                    wait(&self.socket, PollFlags::POLLOUT);
                }
                Err(_) => return add(&self.counters.errors, run.count),
            }
        }
    }

    /// UDP -> core -> TUN, batched, until the socket is shut down. `vnet_hdr`: the device
    /// has TUN offloads, and accepted TCP segments are coalesced before they are written.
    pub(super) fn udp_to_tun_batched(self, state: &UdpSocketState, vnet_hdr: bool) {
        let mut storage = vec![0u8; RECV_BATCH * GRO_BUFFER];
        let mut coalescer = vnet_hdr.then(Coalescer::default);
        let mut write = |b: &[u8], segments: usize| match self.tun.send(b) {
            Ok(_) => {
                add(&self.counters.tun_tx, segments);
                if segments > 1 {
                    count(&self.counters.gro_writes);
                }
            }
            Err(_) => add(&self.counters.errors, segments),
        };
        let mut meta = [RecvMeta::default(); RECV_BATCH];
        let mut table = Cache::new(self.table.clone());
        let mut streak = self.socket_streak();
        while !self.stopping() {
            let received = {
                let mut chunks = storage.chunks_mut(GRO_BUFFER).map(IoSliceMut::new);
                let mut bufs: [IoSliceMut<'_>; RECV_BATCH] = std::array::from_fn(|_| {
                    chunks.next().unwrap_or_else(|| IoSliceMut::new(&mut []))
                });
                state.recv(UdpSockRef::from(&*self.socket), &mut bufs, &mut meta)
            };
            let n = match received {
                Ok(n) => {
                    streak.ok();
                    n
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    wait(&self.socket, PollFlags::POLLIN);
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
            if self.stopping() {
                break;
            }
            let table = table.load();
            for (m, chunk) in meta[..n].iter().zip(storage.chunks(GRO_BUFFER)) {
                let datagrams = &chunk[..m.len.min(GRO_BUFFER)];
                let received = batch::each_inbound(
                    table,
                    m.addr.ip(),
                    datagrams,
                    m.stride,
                    &self.drops,
                    |p| match &mut coalescer {
                        Some(c) => c.push(p, &mut write),
                        None => write(p, 1),
                    },
                );
                add(&self.counters.udp_rx, received);
            }
            // Nothing waits past a wake-up: what was received is written before the next.
            if let Some(c) = &mut coalescer {
                c.flush(&mut write);
            }
        }
    }
}
