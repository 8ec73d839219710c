//! A connectivity check run by `weft lab up` once the lab is ready: an ICMP echo from
//! each node's first container to every other node's, sent on a raw socket inside the
//! sending container's namespace (no `ping` binary needed).

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{Icmpv4Packet, Icmpv4Repr, Ipv4Packet};
use socket2::{Domain, Protocol, Socket, Type};
use weft_datapath::netns;

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
