//! A container: a smoltcp interface (`Medium::Ip`) behind its node's TUN device.
//!
//! It answers pings (smoltcp's interface replies to echo requests by itself), sends
//! pings from an ICMP socket, and runs TCP transfers whose bytes follow a pattern the
//! receiver checks. Its clock is virtual time, its random seed its own.

use std::collections::{BTreeMap, VecDeque};
use std::net::Ipv4Addr;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, ChecksumCapabilities, Device, DeviceCapabilities, Medium};
use smoltcp::socket::{icmp, tcp};
use smoltcp::wire::{HardwareAddress, Icmpv4Packet, Icmpv4Repr, IpAddress, IpCidr};

use crate::time::SimTime;

/// The packets between an interface and its node: what the node delivered, what the
/// interface sent.
#[derive(Debug, Default)]
struct Pipe {
    rx: VecDeque<Vec<u8>>,
    tx: Vec<Vec<u8>>,
    mtu: usize,
}

struct RxToken(Vec<u8>);
struct TxToken<'a>(&'a mut Vec<Vec<u8>>);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0; len];
        let r = f(&mut buf);
        self.0.push(buf);
        r
    }
}

impl Device for Pipe {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(
        &mut self,
        _: smoltcp::time::Instant,
    ) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let packet = self.rx.pop_front()?;
        Some((RxToken(packet), TxToken(&mut self.tx)))
    }

    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<Self::TxToken<'_>> {
        Some(TxToken(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        // Default checksum capabilities: verify and fill everything, as a kernel would,
        // so that a corrupted datagram is dropped here and not accepted.
        caps.checksum = ChecksumCapabilities::default();
        caps
    }
}

/// What a container's applications report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppEvent {
    /// An echo reply for ping `ident`, attempt `seq`.
    EchoReply {
        /// The ping.
        ident: u16,
        /// The attempt.
        seq: u16,
    },
    /// The receiving end of transfer `id` has all its bytes, all as sent.
    Received {
        /// The transfer.
        id: u32,
    },
    /// The receiving end of transfer `id` got a byte that differs from what was sent.
    Corrupted {
        /// The transfer.
        id: u32,
        /// Offset of the first wrong byte.
        offset: u64,
    },
}

#[derive(Debug)]
enum Role {
    Send { total: u64, sent: u64 },
    Receive { total: u64, got: u64, bad: bool },
}

/// The byte at `offset` of every transfer: a pattern that catches reordering and
/// corruption that TCP's checksum missed.
fn pattern(offset: u64) -> u8 {
    (offset.wrapping_mul(31).wrapping_add(offset >> 8) % 251) as u8
}

/// One container.
pub struct Container {
    /// Its name within its node.
    pub name: String,
    /// Its overlay address.
    pub addr: Ipv4Addr,
    iface: Interface,
    pipe: Pipe,
    sockets: SocketSet<'static>,
    icmp: SocketHandle,
    transfers: BTreeMap<u32, (SocketHandle, Role)>,
}

impl std::fmt::Debug for Container {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Container")
            .field("name", &self.name)
            .field("addr", &self.addr)
            .finish()
    }
}

const ICMP_IDENT_BIND: u16 = 0x7e57;

impl Container {
    /// A container at `addr`/`prefix_len` whose default route is `gateway` (its node).
    pub fn new(
        name: &str,
        addr: Ipv4Addr,
        prefix_len: u8,
        gateway: Ipv4Addr,
        mtu: usize,
        seed: u64,
        now: SimTime,
    ) -> Self {
        let mut pipe = Pipe {
            mtu,
            ..Pipe::default()
        };
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = seed;
        let mut iface = Interface::new(config, &mut pipe, now.to_smoltcp());
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(addr), prefix_len));
        });
        let _ = iface.routes_mut().add_default_ipv4_route(gateway);
        let mut sockets = SocketSet::new(Vec::new());
        let buffer =
            || icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 16], vec![0; 2048]);
        let mut socket = icmp::Socket::new(buffer(), buffer());
        let _ = socket.bind(icmp::Endpoint::Ident(ICMP_IDENT_BIND));
        let icmp = sockets.add(socket);
        Container {
            name: name.to_string(),
            addr,
            iface,
            pipe,
            sockets,
            icmp,
            transfers: BTreeMap::new(),
        }
    }

    /// A packet from the node for this container.
    pub fn receive(&mut self, packet: Vec<u8>) {
        self.pipe.rx.push_back(packet);
    }

    /// Queues an echo request to `dst`; ping `ident`, attempt `seq`.
    pub fn send_ping(&mut self, dst: Ipv4Addr, ident: u16, seq: u16) {
        let socket = self.sockets.get_mut::<icmp::Socket>(self.icmp);
        let data = ident.to_be_bytes();
        let repr = Icmpv4Repr::EchoRequest {
            ident: ICMP_IDENT_BIND,
            seq_no: seq,
            data: &data,
        };
        if let Ok(buf) = socket.send(repr.buffer_len(), IpAddress::Ipv4(dst)) {
            repr.emit(
                &mut Icmpv4Packet::new_unchecked(buf),
                &ChecksumCapabilities::default(),
            );
        }
    }

    fn tcp_socket() -> tcp::Socket<'static> {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 32 * 1024]),
            tcp::SocketBuffer::new(vec![0; 32 * 1024]),
        );
        s.set_nagle_enabled(false);
        s
    }

    /// Listens on `port` for transfer `id` of `total` bytes.
    pub fn tcp_receive(&mut self, id: u32, port: u16, total: u64) {
        let mut s = Self::tcp_socket();
        let _ = s.listen(port);
        let h = self.sockets.add(s);
        let role = Role::Receive {
            total,
            got: 0,
            bad: false,
        };
        self.transfers.insert(id, (h, role));
    }

    /// Connects to `dst:port` and sends `total` bytes for transfer `id`.
    pub fn tcp_send(&mut self, id: u32, dst: Ipv4Addr, port: u16, total: u64) {
        let mut s = Self::tcp_socket();
        // smoltcp has no persist timer: a lost window update after a zero window
        // leaves both ends waiting for ever (the simulator found this under loss).
        // Its keep-alive doubles as the window probe. Only while data is pending: a
        // keep-alive sent after the FIN carries a byte at the FIN's sequence number,
        // which a receiver that missed the FIN takes for data (seen with seed 3 of
        // scenario 08).
        s.set_keep_alive(Some(smoltcp::time::Duration::from_secs(1)));
        let local = 40_000 + (id % 20_000) as u16;
        if s.connect(self.iface.context(), (IpAddress::Ipv4(dst), port), local)
            .is_ok()
        {
            let h = self.sockets.add(s);
            self.transfers
                .insert(id, (h, Role::Send { total, sent: 0 }));
        }
    }

    /// One side of transfer `id`, described: its TCP state and its byte count.
    pub fn transfer_status(&self, id: u32) -> Option<String> {
        let (handle, role) = self.transfers.get(&id)?;
        let s = self.sockets.get::<tcp::Socket>(*handle);
        Some(match role {
            Role::Send { total, sent } => {
                format!("sender {} with {sent} of {total} bytes queued", s.state())
            }
            Role::Receive { total, got, .. } => {
                format!("receiver {} with {got} of {total} bytes", s.state())
            }
        })
    }

    /// Runs the interface and the applications at `now`: packets it sends are appended
    /// to `out`, application events to `events`. Returns when it next needs polling.
    pub fn poll(
        &mut self,
        now: SimTime,
        out: &mut Vec<Vec<u8>>,
        events: &mut Vec<AppEvent>,
    ) -> Option<SimTime> {
        let t = now.to_smoltcp();
        for _ in 0..64 {
            self.iface.poll(t, &mut self.pipe, &mut self.sockets);
            if !self.run_apps(events) {
                break;
            }
        }
        out.append(&mut self.pipe.tx);
        self.iface
            .poll_at(t, &self.sockets)
            .map(SimTime::from_smoltcp)
            .map(|at| at.max(now))
    }

    /// Returns whether an application queued something to send.
    fn run_apps(&mut self, events: &mut Vec<AppEvent>) -> bool {
        let mut queued = false;
        let socket = self.sockets.get_mut::<icmp::Socket>(self.icmp);
        while let Ok((payload, _from)) = socket.recv() {
            let Ok(packet) = Icmpv4Packet::new_checked(payload) else {
                continue;
            };
            if let Ok(Icmpv4Repr::EchoReply {
                seq_no,
                data: &[a, b, ..],
                ..
            }) = Icmpv4Repr::parse(&packet, &ChecksumCapabilities::default())
            {
                events.push(AppEvent::EchoReply {
                    ident: u16::from_be_bytes([a, b]),
                    seq: seq_no,
                });
            }
        }
        for (id, (handle, role)) in &mut self.transfers {
            let s = self.sockets.get_mut::<tcp::Socket>(*handle);
            match role {
                Role::Send { total, sent } => {
                    while *sent < *total && s.can_send() {
                        let mut chunk = [0u8; 4096];
                        let n = ((*total - *sent) as usize).min(chunk.len());
                        for (i, b) in chunk[..n].iter_mut().enumerate() {
                            *b = pattern(*sent + i as u64);
                        }
                        match s.send_slice(&chunk[..n]) {
                            Ok(0) | Err(_) => break,
                            Ok(k) => {
                                *sent += k as u64;
                                queued = true;
                            }
                        }
                    }
                    if *sent == *total && s.may_send() && s.send_queue() == 0 {
                        s.set_keep_alive(None);
                        s.close();
                    }
                }
                Role::Receive { total, got, bad } => {
                    let mut chunk = [0u8; 4096];
                    while let Ok(n) = s.recv_slice(&mut chunk) {
                        if n == 0 {
                            break;
                        }
                        for (i, b) in chunk[..n].iter().enumerate() {
                            let offset = *got + i as u64;
                            if !*bad && *b != pattern(offset) {
                                *bad = true;
                                events.push(AppEvent::Corrupted { id: *id, offset });
                            }
                        }
                        let before = *got;
                        *got += n as u64;
                        queued = true;
                        if before < *total && *got >= *total && !*bad {
                            events.push(AppEvent::Received { id: *id });
                            s.close();
                        }
                    }
                }
            }
        }
        queued
    }
}
