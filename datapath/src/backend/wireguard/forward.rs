//! The forwarding threads: TUN -> forwarding table -> peer -> seal -> UDP, and
//! UDP -> open -> the peer's allowed sources and ours -> TUN, plus a timer thread that
//! drives every session's handshakes, rekeying and keepalives.
//!
//! Here the loops of one packet per syscall (`WEFT_WG_BATCH=0`; the batched ones, the
//! default, are in [`super::batched`]), buffers allocated once per thread; sealing and
//! opening happen in place in those buffers (boringtun allocates only to queue the
//! packets that wait for a handshake). Each peer's session sits behind its own lock,
//! held for one packet and never across a syscall: boringtun's `Tunn` takes
//! `&mut self`, and the three threads share it.

use crate::backend::streak::{Fatal, Streak};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, Cache};
use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use quinn_udp::UdpSocketState;
use weft_core::forward::{ForwardTable, Inbound, Outbound, ThreadDrops};

use super::peers::{Peer, PeerMap, Slot};
use crate::backend::udp::{IcmpFrom, ICMP_ROOM};

/// The biggest IP packet.
const MAX_PACKET: usize = 65_535;
/// A sealed packet is 32 bytes longer; a handshake message at most 148 bytes.
pub(super) const MAX_DATAGRAM: usize = MAX_PACKET + 148;
/// How often the timer thread visits every session: boringtun's timers have a
/// resolution of a quarter second at best.
pub(super) const TICK: Duration = Duration::from_millis(100);

/// Why a datagram or a packet was dropped, beyond the forwarding table's reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WgDrop {
    /// A handshake message whose MAC1 (keyed by our public key) does not verify.
    BadMac = 0,
    /// A data message that does not decrypt (no such session key, or forged).
    BadAuth = 1,
    /// A data message whose counter was already seen or is too old.
    Replay = 2,
    /// A handshake initiation, well formed for our key, from a key no lease names.
    UnknownKey = 3,
    /// A handshake initiation that does not decrypt with our key, or a replayed one.
    BadHandshake = 4,
    /// A message for a session index we never gave out (or no longer have).
    UnknownIndex = 5,
    /// Not a WireGuard message: wrong type or length.
    NotWireguard = 6,
    /// A handshake refused under load; a cookie reply was sent instead.
    UnderLoad = 7,
    /// A packet the forwarding table routes to a peer whose lease names no key.
    NoPeerKey = 8,
    /// A message out of order for the session's state (a response to no initiation).
    Unexpected = 9,
}

impl WgDrop {
    pub(super) const ALL: [WgDrop; 10] = [
        WgDrop::BadMac,
        WgDrop::BadAuth,
        WgDrop::Replay,
        WgDrop::UnknownKey,
        WgDrop::BadHandshake,
        WgDrop::UnknownIndex,
        WgDrop::NotWireguard,
        WgDrop::UnderLoad,
        WgDrop::NoPeerKey,
        WgDrop::Unexpected,
    ];

    pub(super) fn as_str(self) -> &'static str {
        match self {
            WgDrop::BadMac => "wg_bad_mac",
            WgDrop::BadAuth => "wg_bad_auth",
            WgDrop::Replay => "wg_replay",
            WgDrop::UnknownKey => "wg_unknown_key",
            WgDrop::BadHandshake => "wg_bad_handshake",
            WgDrop::UnknownIndex => "wg_unknown_index",
            WgDrop::NotWireguard => "wg_not_wireguard",
            WgDrop::UnderLoad => "wg_under_load",
            WgDrop::NoPeerKey => "wg_no_peer_key",
            WgDrop::Unexpected => "wg_unexpected",
        }
    }

    fn of(e: &WireGuardError) -> WgDrop {
        use WireGuardError as E;
        match e {
            E::InvalidMac => WgDrop::BadMac,
            E::InvalidAeadTag => WgDrop::BadAuth,
            E::InvalidCounter | E::DuplicateCounter => WgDrop::Replay,
            E::WrongIndex | E::NoCurrentSession => WgDrop::UnknownIndex,
            E::WrongKey | E::InvalidTai64nTimestamp | E::WrongTai64nTimestamp => {
                WgDrop::BadHandshake
            }
            E::UnderLoad => WgDrop::UnderLoad,
            E::InvalidPacket | E::IncorrectPacketLength | E::WrongPacketType => {
                WgDrop::NotWireguard
            }
            E::UnexpectedPacket
            | E::DestinationBufferTooSmall
            | E::LockFailed
            | E::ConnectionExpired => WgDrop::Unexpected,
        }
    }
}

/// The backend's counters, shared by its threads.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) tun_rx: AtomicU64,
    pub(super) wg_tx: AtomicU64,
    pub(super) wg_rx: AtomicU64,
    pub(super) tun_tx: AtomicU64,
    pub(super) icmp_tx: AtomicU64,
    pub(super) handshakes: AtomicU64,
    pub(super) errors: AtomicU64,
    pub(super) dropped: [AtomicU64; WgDrop::ALL.len()],
}

impl Counters {
    pub(super) fn dropped_for(&self, why: WgDrop) {
        count(&self.dropped[why as usize]);
    }
}

pub(super) fn count(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Our side of every handshake.
pub(super) struct Identity {
    pub(super) secret: StaticSecret,
    pub(super) public: PublicKey,
    pub(super) rate_limiter: Arc<RateLimiter>,
}

/// One of the backend's sockets (the IPv4 one on `ListenPort`, the IPv6 one on
/// `ListenPortV6`) and, with batching, its `quinn-udp` state.
pub(super) struct Side {
    pub(super) socket: Arc<UdpSocket>,
    pub(super) state: Option<Arc<UdpSocketState>>,
}

/// The backend's sockets, by family: a datagram leaves by the one of its endpoint's.
#[derive(Default)]
pub(super) struct Sockets {
    pub(super) v4: Option<Side>,
    pub(super) v6: Option<Side>,
}

impl Sockets {
    /// The socket that sends to `to`.
    pub(super) fn for_addr(&self, to: &SocketAddr) -> Option<&Side> {
        if to.is_ipv4() {
            self.v4.as_ref()
        } else {
            self.v6.as_ref()
        }
    }
}

/// What the threads work with.
#[derive(Clone)]
pub(super) struct Forwarder {
    pub(super) tun: Arc<tun::Device>,
    /// The socket this thread receives on (for the receiving threads).
    pub(super) socket: Arc<UdpSocket>,
    /// The sessions a handshake received on `socket` is for.
    pub(super) slot: Slot,
    /// Every socket, for sending.
    pub(super) sockets: Arc<Sockets>,
    pub(super) table: Arc<ArcSwap<ForwardTable>>,
    pub(super) peers: Arc<ArcSwap<PeerMap>>,
    pub(super) identity: Arc<Identity>,
    pub(super) counters: Arc<Counters>,
    pub(super) stopping: Arc<AtomicBool>,
    /// Where a thread that gives up says why.
    pub(super) fatal: Fatal,
    /// The TUN device's name, for messages.
    pub(super) tun_name: Arc<str>,
}

impl Forwarder {
    pub(super) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// A streak for reading the TUN device.
    pub(super) fn tun_streak(&self) -> Streak {
        Streak::new(format!("reading the TUN device {}", self.tun_name))
    }

    /// A streak for receiving on this thread's socket.
    pub(super) fn socket_streak(&self) -> Streak {
        let at = self
            .socket
            .local_addr()
            .map_or_else(|_| "?".into(), |a| a.to_string());
        Streak::new(format!("receiving on the wireguard port {at}"))
    }

    pub(super) fn send(&self, datagram: &[u8], to: SocketAddr) {
        let Some(side) = self.sockets.for_addr(&to) else {
            return count(&self.counters.errors);
        };
        match side.socket.send_to(datagram, to) {
            Ok(_) => count(&self.counters.wg_tx),
            Err(_) => count(&self.counters.errors),
        }
    }

    /// Sends what a session call asks to send; `true` when it did.
    pub(super) fn sent(&self, result: TunnResult<'_>, peer: &Peer) -> bool {
        match result {
            TunnResult::WriteToNetwork(datagram) => {
                self.send(datagram, peer.endpoint);
                true
            }
            TunnResult::Err(WireGuardError::ConnectionExpired) | TunnResult::Done => false,
            TunnResult::Err(e) => {
                self.counters.dropped_for(WgDrop::of(&e));
                false
            }
            // Only decapsulation hands out packets for the TUN device.
            TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..) => false,
        }
    }

    /// TUN -> table -> peer -> seal -> UDP, until the device goes away.
    pub(super) fn tun_to_udp(self, drops: Arc<ThreadDrops>, icmp_from: IcmpFrom) {
        let mut buf = vec![0u8; MAX_PACKET];
        let mut out = vec![0u8; MAX_DATAGRAM];
        let mut reply = [0u8; ICMP_ROOM];
        let mut table = Cache::new(self.table.clone());
        let mut peers = Cache::new(self.peers.clone());
        let mut streak = self.tun_streak();
        while !self.stopping() {
            let n = match self.tun.recv(&mut buf) {
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
            count(&self.counters.tun_rx);
            let packet = &mut buf[..n];
            match table.load().route_outbound(packet, &drops) {
                Outbound::Send { peer } => {
                    let Some(peer) = peers.load().by_ip.get(&peer).cloned() else {
                        self.counters.dropped_for(WgDrop::NoPeerKey);
                        continue;
                    };
                    let result = peer.tunn().encapsulate(packet, &mut out);
                    if let TunnResult::WriteToNetwork(d) = &result {
                        if d.first() == Some(&1) {
                            count(&self.counters.handshakes);
                        }
                    }
                    self.sent(result, &peer);
                }
                Outbound::Unreachable => {
                    if let Some(len) = icmp_from.unreachable(packet, &mut reply) {
                        if self.tun.send(&reply[..len]).is_ok() {
                            count(&self.counters.icmp_tx);
                        }
                    }
                }
                Outbound::Local | Outbound::Drop(_) => {}
            }
        }
    }

    /// UDP -> open -> checks -> TUN, until the socket is shut down.
    pub(super) fn udp_to_tun(self, drops: Arc<ThreadDrops>) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut out = vec![0u8; MAX_DATAGRAM];
        let mut table = Cache::new(self.table.clone());
        let mut peers = Cache::new(self.peers.clone());
        let mut streak = self.socket_streak();
        while !self.stopping() {
            let (n, from) = match self.socket.recv_from(&mut buf) {
                Ok(r) => {
                    streak.ok();
                    r
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
            count(&self.counters.wg_rx);
            let datagram = &buf[..n];
            let Some(peer) = self.peer_of(datagram, from, &mut out, peers.load()) else {
                continue;
            };
            let result = peer.tunn().decapsulate(Some(from.ip()), datagram, &mut out);
            match result {
                TunnResult::WriteToTunnelV4(packet, _) | TunnResult::WriteToTunnelV6(packet, _) => {
                    // The session proves the peer; its lease says which sources it may
                    // use, and the table which destinations are ours.
                    if table.load().accept_inbound(peer.public_ip, packet, &drops)
                        == Inbound::Deliver
                    {
                        match self.tun.send(packet) {
                            Ok(_) => count(&self.counters.tun_tx),
                            Err(_) => count(&self.counters.errors),
                        }
                    }
                }
                other => {
                    if self.sent(other, &peer) {
                        // A handshake answered: send what waited for it.
                        // The session is locked for each packet, not across the send.
                        for _ in 0..256 {
                            let next = peer.tunn().decapsulate(None, &[], &mut out);
                            match next {
                                TunnResult::WriteToNetwork(d) => self.send(d, peer.endpoint),
                                _ => break,
                            }
                        }
                    }
                }
            }
        }
    }

    /// The peer a datagram is for, after the checks that need no session: a MAC on
    /// handshake messages (a cookie reply is sent from here under load), the sender's key
    /// for an initiation, our index for the rest. `None`: dropped and counted.
    pub(super) fn peer_of(
        &self,
        datagram: &[u8],
        from: SocketAddr,
        out: &mut [u8],
        peers: &PeerMap,
    ) -> Option<Arc<Peer>> {
        let id = &self.identity;
        let packet = match id
            .rate_limiter
            .verify_packet(Some(from.ip()), datagram, out)
        {
            Ok(p) => p,
            Err(TunnResult::WriteToNetwork(cookie)) => {
                self.counters.dropped_for(WgDrop::UnderLoad);
                let _ = self.socket.send_to(cookie, from);
                return None;
            }
            Err(TunnResult::Err(e)) => {
                self.counters.dropped_for(WgDrop::of(&e));
                return None;
            }
            Err(_) => {
                self.counters.dropped_for(WgDrop::Unexpected);
                return None;
            }
        };
        let index = match packet {
            Packet::HandshakeInit(init) => {
                let half = match parse_handshake_anon(&id.secret, &id.public, &init) {
                    Ok(h) => h,
                    Err(e) => {
                        self.counters.dropped_for(WgDrop::of(&e));
                        return None;
                    }
                };
                let peer = peers
                    .by_key
                    .get(&(half.peer_static_public, self.slot))
                    .cloned();
                if peer.is_none() {
                    self.counters.dropped_for(WgDrop::UnknownKey);
                }
                return peer;
            }
            Packet::HandshakeResponse(p) => p.receiver_idx,
            Packet::PacketCookieReply(p) => p.receiver_idx,
            Packet::PacketData(p) => p.receiver_idx,
        };
        let peer = peers.by_index.get(&(index >> 8)).cloned();
        if peer.is_none() {
            self.counters.dropped_for(WgDrop::UnknownIndex);
            // A peer still sending on a session we lost (we restarted) would wait 15 s
            // for an answer before it shook hands again: start the new session now.
            // Only from the peer's own endpoint, and boringtun sends no second
            // initiation while one is under way.
            if let Some(p) = peers.by_ip.get(&from.ip()).filter(|p| p.endpoint == from) {
                let result = p.tunn().format_handshake_initiation(out, false);
                if matches!(result, TunnResult::WriteToNetwork(_)) {
                    count(&self.counters.handshakes);
                }
                self.sent(result, p);
            }
        }
        peer
    }

    /// Every [`TICK`]: each session's timers (handshake retries, rekeying, keepalives,
    /// expiry); every second, the handshake rate limiter's count is reset.
    pub(super) fn timers(self) {
        let mut out = vec![0u8; MAX_DATAGRAM];
        let mut peers = Cache::new(self.peers.clone());
        let mut last_reset = Instant::now();
        while !self.stopping() {
            std::thread::sleep(TICK);
            if last_reset.elapsed() >= Duration::from_secs(1) {
                self.identity.rate_limiter.reset_count();
                last_reset = Instant::now();
            }
            for peer in peers.load().peers() {
                let result = peer.tunn().update_timers(&mut out);
                if let TunnResult::WriteToNetwork(d) = &result {
                    if d.first() == Some(&1) {
                        count(&self.counters.handshakes);
                    }
                }
                self.sent(result, peer);
            }
        }
    }
}
