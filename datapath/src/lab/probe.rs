//! Traffic between the lab's containers, made inside their namespaces by this process:
//! an ICMP echo on a raw socket (no `ping` binary needed), for `weft lab up`'s
//! connectivity check and `lab play`'s pings, and a TCP transfer for its `tcp` steps.
//! Both block; callers run them on a blocking thread.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{Icmpv4Packet, Icmpv4Repr, Ipv4Packet};
use socket2::{Domain, Protocol, Socket, Type};

use crate::netns;

/// One echo from `from` (a namespace) to `to`: the round-trip time, or `None` on no
/// reply within `timeout`.
pub fn echo(from: PathBuf, to: Ipv4Addr, ident: u16, timeout: Duration) -> Option<Duration> {
    netns::in_netns(Some(&from), move || -> std::io::Result<Option<Duration>> {
        let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?;
        let caps = ChecksumCapabilities::default();
        let data = b"weft lab probe";
        let request = Icmpv4Repr::EchoRequest {
            ident,
            seq_no: 1,
            data,
        };
        let mut buf = vec![0u8; request.buffer_len()];
        request.emit(&mut Icmpv4Packet::new_unchecked(&mut buf[..]), &caps);
        let start = Instant::now();
        socket.send_to(&buf, &SocketAddr::from((to, 0)).into())?;
        let mut reply = [0u8; 1500];
        while start.elapsed() < timeout {
            socket.set_read_timeout(Some(
                timeout
                    .saturating_sub(start.elapsed())
                    .max(Duration::from_millis(1)),
            ))?;
            let n = match (&socket).read(&mut reply) {
                Ok(n) => n,
                Err(_) => return Ok(None),
            };
            let Ok(ip) = Ipv4Packet::new_checked(&reply[..n]) else {
                continue;
            };
            if ip.src_addr() != to {
                continue;
            }
            let Ok(icmp) = Icmpv4Packet::new_checked(ip.payload()) else {
                continue;
            };
            if let Ok(Icmpv4Repr::EchoReply { ident: i, .. }) = Icmpv4Repr::parse(&icmp, &caps) {
                if i == ident {
                    return Ok(Some(start.elapsed()));
                }
            }
        }
        Ok(None)
    })
    .ok()
    .and_then(|r| r.ok())
    .flatten()
}

/// Sends `bytes` over TCP from namespace `from` to a listener this function opens in
/// namespace `to` at `to_ip`, each socket operation bounded by `within`. Returns how
/// many bytes arrived.
pub fn transfer(
    from: PathBuf,
    to: PathBuf,
    to_ip: Ipv4Addr,
    bytes: u64,
    within: Duration,
) -> std::io::Result<u64> {
    let listener = netns::in_netns(Some(&to), || TcpListener::bind("0.0.0.0:0"))
        .map_err(std::io::Error::other)??;
    let port = listener.local_addr()?.port();
    let receiver = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut conn, _) = listener.accept()?;
        conn.set_read_timeout(Some(within))?;
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0u64;
        loop {
            match conn.read(&mut buf)? {
                0 => return Ok(total),
                n => total += n as u64,
            }
        }
    });
    let addr = SocketAddr::from((to_ip, port));
    let mut conn = netns::in_netns(Some(&from), move || {
        TcpStream::connect_timeout(&addr, within)
    })
    .map_err(std::io::Error::other)??;
    conn.set_write_timeout(Some(within))?;
    let chunk = vec![0x5au8; 1 << 16];
    let mut sent = 0u64;
    while sent < bytes {
        let n = usize::try_from(bytes - sent).map_or(chunk.len(), |left| left.min(chunk.len()));
        conn.write_all(&chunk[..n])?;
        sent += n as u64;
    }
    drop(conn);
    receiver
        .join()
        .map_err(|_| std::io::Error::other("the receiving thread panicked"))?
}
