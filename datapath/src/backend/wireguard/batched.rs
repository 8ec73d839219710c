//! The batched forwarding loops, the default (`WEFT_WG_BATCH=0` keeps the one packet per
//! syscall loops of [`super::forward`], for comparison): the udp backend's batching and
//! offloads, with every packet sealed or opened on its own on the way.
//!
//! Outbound, the TUN device has offloads (`vnet_hdr`, TSO): one read brings a TCP
//! super-packet, which the udp backend's [`offload::segment`] cuts into the packets the
//! kernel would have sent; each is routed alone by the forwarding table and sealed by its
//! peer's session straight into the send buffer, 32 bytes longer (boringtun does not
//! pad), so that one peer's equal-sized packets stay equal-sized and a run of them
//! leaves in one `sendmsg` with UDP GSO ([`batch::Runs`]). Inbound, one `recvmmsg`
//! (`quinn-udp`) takes up to [`RECV_BATCH`] buffers of GRO-coalesced datagrams; each
//! datagram is opened alone, checked alone, and what is accepted goes through the udp
//! backend's [`Coalescer`], which writes one flow's TCP segments as one super-packet.
//!
//! Buffers are allocated once per thread; nothing is allocated per packet (boringtun
//! queues, with an allocation, only packets that wait for a handshake). A session's lock
//! is held for one seal or one open, never across a syscall.

use std::io::{ErrorKind, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::Cache;
use boringtun::noise::TunnResult;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use weft_core::forward::{DropReason, Inbound, Outbound, ThreadDrops};

use super::forward::{count, Forwarder, WgDrop, MAX_DATAGRAM};
use super::peers::PeerMap;
use crate::backend::udp::batch::{Run, Runs};
use crate::backend::udp::offload::{self, Coalescer, Segments, VnetHdr, VNET_HDR_LEN};
use crate::backend::udp::{IcmpFrom, ICMP_ROOM};

/// The biggest IP packet.
const MAX_PACKET: usize = 65_535;
/// What sealing adds to a packet: type, index, counter (16 bytes) and the tag (16).
const SEAL: usize = 32;
/// How many TUN reads after a wake-up, without blocking, before what was read is sent.
const TUN_BATCH: usize = 64;
/// The send buffer: several GSO sends' worth of sealed packets.
const SEND_BUFFER: usize = 8 * MAX_PACKET;
/// One read from the TUN device: the virtio header and a super-packet, with room to
/// spare, so that a read that fills it is known to be truncated.
const VNET_READ: usize = VNET_HDR_LEN + 2 * MAX_PACKET;
/// The segments of one super-packet (at an MSS of 536 a 64 KiB one needs about 75 KiB).
const SEGMENTED_ROOM: usize = 2 * MAX_PACKET;
/// How many messages one `recvmmsg` asks for.
const RECV_BATCH: usize = 8;
/// One received message: up to 64 KiB of GRO-coalesced datagrams.
const GRO_BUFFER: usize = 1 << 16;
/// How long a thread waits for I/O before it looks at the stop flag again.
const IDLE: Duration = Duration::from_millis(200);

fn add(c: &AtomicU64, n: usize) {
    c.fetch_add(n as u64, Ordering::Relaxed);
}

/// The socket's batching state, shared by both threads; also turns on UDP GRO and makes
/// the socket non-blocking.
pub(super) fn socket_state(socket: &std::net::UdpSocket) -> std::io::Result<UdpSocketState> {
    let state = UdpSocketState::new(UdpSockRef::from(socket))?;
    if state.max_gso_segments() <= 1 {
        tracing::info!("the kernel offers no UDP GSO: one datagram per send");
    }
    if state.gro_segments() <= 1 {
        tracing::info!("the kernel offers no UDP GRO: one datagram per received buffer");
    }
    Ok(state)
}

/// Waits until `socket` is ready for `flags` or [`IDLE`] passed.
fn wait(socket: &std::net::UdpSocket, flags: PollFlags) {
    let mut fds = [PollFd::new(socket.as_fd(), flags)];
    let timeout = PollTimeout::try_from(IDLE).unwrap_or(PollTimeout::NONE);
    let _ = poll(&mut fds, timeout);
}

/// Segments one read (virtio header and packet) into `out`.
fn segment_read(read: &[u8], out: &mut [u8]) -> Result<Segments, offload::OffloadError> {
    let hdr = VnetHdr::parse(read).ok_or(offload::OffloadError::Truncated)?;
    if read.len() == VNET_READ {
        return Err(offload::OffloadError::Truncated);
    }
    offload::segment(&hdr, &read[VNET_HDR_LEN..], out)
}

impl Forwarder {
    /// TUN -> table -> peer -> seal -> UDP, batched, until the device goes away. The TUN
    /// device has offloads: every read starts with a virtio header.
    pub(super) fn tun_to_udp_batched(self, drops: Arc<ThreadDrops>, icmp_from: IcmpFrom) {
        if let Err(e) = self.tun.set_nonblock() {
            tracing::warn!(error = %e, "cannot make the TUN device non-blocking");
        }
        let mut read_buf = vec![0u8; VNET_READ];
        let mut plain = vec![0u8; SEGMENTED_ROOM];
        let mut sealed = vec![0u8; SEND_BUFFER];
        let mut reply = [0u8; VNET_HDR_LEN + ICMP_ROOM];
        let mut table = Cache::new(self.table.clone());
        let mut peers = Cache::new(self.peers.clone());
        // A run goes out by one socket; the smaller GSO limit of the two holds for both.
        let max_segments = [&self.sockets.v4, &self.sockets.v6]
            .into_iter()
            .flatten()
            .filter_map(|side| side.state.as_ref().map(|s| s.max_gso_segments()))
            .min()
            .unwrap_or(1);
        let mut runs = Runs::new(max_segments);
        let mut bad_logged = false;
        // Where the next sealed packet goes, and how many reads since the last wait.
        let (mut end, mut batch) = (0, 0);
        let mut streak = self.tun_streak();
        while !self.stopping() {
            if batch == TUN_BATCH {
                self.send_run(&sealed, runs.finish(), peers.load());
                (end, batch) = (0, 0);
            }
            let read = if batch == 0 {
                self.tun.recv_timeout(&mut read_buf, IDLE)
            } else {
                self.tun.recv(&mut read_buf)
            };
            let n = match read {
                Ok(n) => {
                    streak.ok();
                    n
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
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
            let segments = match segment_read(&read_buf[..n], &mut plain) {
                Ok(s) => s,
                Err(e) => {
                    count(&self.counters.tun_rx);
                    drops.count(DropReason::Malformed);
                    if !bad_logged {
                        bad_logged = true;
                        tracing::warn!(error = %e, "a packet from the TUN device could not be segmented (logged once)");
                    }
                    continue;
                }
            };
            add(&self.counters.tun_rx, segments.count);
            let table = table.load();
            for i in 0..segments.count {
                let start = i * segments.segment;
                let len = segments.segment.min(segments.len - start);
                let packet = &mut plain[start..start + len];
                match table.route_outbound(packet, &drops) {
                    Outbound::Send { peer: ip } => {
                        let map = peers.load();
                        let Some(peer) = map.by_ip.get(&ip) else {
                            self.counters.dropped_for(WgDrop::NoPeerKey);
                            continue;
                        };
                        // Room for the sealed packet, or for a handshake initiation.
                        let room = (len + SEAL).max(148);
                        if end + room > sealed.len() {
                            self.send_run(&sealed, runs.finish(), map);
                            end = 0;
                        }
                        let result = peer
                            .tunn()
                            .encapsulate(packet, &mut sealed[end..end + room]);
                        match result {
                            TunnResult::WriteToNetwork(d) if d.first() == Some(&4) => {
                                let sealed_len = d.len();
                                if let Some(run) = runs.push(ip, end, sealed_len) {
                                    self.send_run(&sealed, Some(run), map);
                                }
                                end += sealed_len;
                            }
                            TunnResult::WriteToNetwork(d) => {
                                // No session yet: boringtun keeps the packet and asks
                                // for a handshake, sent on its own.
                                if d.first() == Some(&1) {
                                    count(&self.counters.handshakes);
                                }
                                self.send(d, peer.endpoint);
                            }
                            other => {
                                self.sent(other, peer);
                            }
                        }
                    }
                    Outbound::Unreachable => {
                        let out = &mut reply[VNET_HDR_LEN..];
                        if let Some(len) = icmp_from.unreachable(packet, out) {
                            reply[..VNET_HDR_LEN].fill(0);
                            if self.tun.send(&reply[..VNET_HDR_LEN + len]).is_ok() {
                                count(&self.counters.icmp_tx);
                            }
                        }
                    }
                    Outbound::Local | Outbound::Drop(_) => {}
                }
            }
        }
    }

    /// Sends `run` (if any) to its peer's endpoint in one syscall, waiting while the
    /// socket buffer is full.
    fn send_run(&self, buf: &[u8], run: Option<Run>, peers: &PeerMap) {
        let Some(run) = run else { return };
        let Some(peer) = peers.by_ip.get(&run.peer) else {
            return add(&self.counters.errors, run.count);
        };
        let Some((socket, state)) = self
            .sockets
            .for_addr(&peer.endpoint)
            .and_then(|side| Some((&side.socket, side.state.as_ref()?)))
        else {
            return add(&self.counters.errors, run.count);
        };
        let transmit = Transmit {
            destination: peer.endpoint,
            ecn: None,
            contents: &buf[run.start..run.start + run.len],
            segment_size: (run.count > 1).then_some(run.segment),
            src_ip: None,
        };
        loop {
            match state.send(UdpSockRef::from(&**socket), &transmit) {
                Ok(()) => return add(&self.counters.wg_tx, run.count),
                Err(e) if e.kind() == ErrorKind::WouldBlock && !self.stopping() => {
                    wait(socket, PollFlags::POLLOUT);
                }
                Err(_) => return add(&self.counters.errors, run.count),
            }
        }
    }

    /// UDP -> open -> checks -> TUN, batched, until the socket is shut down; accepted TCP
    /// segments are coalesced before they are written.
    pub(super) fn udp_to_tun_batched(self, state: &UdpSocketState, drops: Arc<ThreadDrops>) {
        let mut storage = vec![0u8; RECV_BATCH * GRO_BUFFER];
        let mut plain = vec![0u8; MAX_DATAGRAM];
        let mut coalescer = Coalescer::default();
        let counters = self.counters.clone();
        let tun = self.tun.clone();
        let mut write = |b: &[u8], segments: usize| match tun.send(b) {
            Ok(_) => add(&counters.tun_tx, segments),
            Err(_) => add(&counters.errors, segments),
        };
        let mut meta = [RecvMeta::default(); RECV_BATCH];
        let mut table = Cache::new(self.table.clone());
        let mut peers = Cache::new(self.peers.clone());
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
            let map = peers.load();
            for (m, chunk) in meta[..n].iter().zip(storage.chunks(GRO_BUFFER)) {
                let buf = &chunk[..m.len.min(GRO_BUFFER)];
                let from = SocketAddr::new(m.addr.ip().to_canonical(), m.addr.port());
                // A zero-length datagram is still one (and not WireGuard).
                let datagrams = buf
                    .chunks(m.stride.max(1))
                    .chain(buf.is_empty().then_some(buf));
                for datagram in datagrams {
                    count(&self.counters.wg_rx);
                    let Some(peer) = self.peer_of(datagram, from, &mut plain, map) else {
                        continue;
                    };
                    let result = peer
                        .tunn()
                        .decapsulate(Some(from.ip()), datagram, &mut plain);
                    match result {
                        TunnResult::WriteToTunnelV4(packet, _)
                        | TunnResult::WriteToTunnelV6(packet, _) => {
                            if table.accept_inbound(peer.public_ip, packet, &drops)
                                == Inbound::Deliver
                            {
                                coalescer.push(packet, &mut write);
                            }
                        }
                        other => {
                            if self.sent(other, &peer) {
                                // A handshake answered: send what waited for it. The
                                // session is locked for each packet, not for the send.
                                for _ in 0..256 {
                                    let next = peer.tunn().decapsulate(None, &[], &mut plain);
                                    match next {
                                        TunnResult::WriteToNetwork(d) => {
                                            self.send(d, peer.endpoint)
                                        }
                                        _ => break,
                                    }
                                }
                            }
                        }
                    }
                }
            }
            // Nothing waits past a wake-up: what was received is written before the next.
            coalescer.flush(&mut write);
        }
    }
}
