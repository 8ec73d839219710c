//! A light container for large runs: it answers and sends pings built directly with
//! smoltcp's wire types, without a full interface and its sockets. The scenario tests
//! use [`crate::container::Container`]; the mass-ping benchmark uses this.

use std::net::Ipv4Addr;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{Icmpv4Packet, Icmpv4Repr, IpProtocol, Ipv4Packet, Ipv4Repr};

use crate::container::AppEvent;

/// See the module docs.
#[derive(Debug)]
pub struct LightContainer {
    /// Its overlay address.
    pub addr: Ipv4Addr,
    out: Vec<Vec<u8>>,
}

fn echo(src: Ipv4Addr, dst: Ipv4Addr, icmp: &Icmpv4Repr<'_>) -> Vec<u8> {
    let caps = ChecksumCapabilities::default();
    let ip = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Icmp,
        payload_len: icmp.buffer_len(),
        hop_limit: 64,
    };
    let mut buf = vec![0; ip.buffer_len() + icmp.buffer_len()];
    let mut packet = Ipv4Packet::new_unchecked(&mut buf[..]);
    ip.emit(&mut packet, &caps);
    icmp.emit(
        &mut Icmpv4Packet::new_unchecked(packet.payload_mut()),
        &caps,
    );
    buf
}

impl LightContainer {
    /// A container at `addr`.
    pub fn new(addr: Ipv4Addr) -> Self {
        LightContainer {
            addr,
            out: Vec::new(),
        }
    }

    /// Queues an echo request to `dst`.
    pub fn send_ping(&mut self, dst: Ipv4Addr, ident: u16, seq: u16) {
        let data = ident.to_be_bytes();
        let repr = Icmpv4Repr::EchoRequest {
            ident: 1,
            seq_no: seq,
            data: &data,
        };
        self.out.push(echo(self.addr, dst, &repr));
    }

    /// A packet from the node: answers echo requests, reports echo replies.
    pub fn receive(&mut self, packet: &[u8], events: &mut Vec<AppEvent>) {
        let caps = ChecksumCapabilities::default();
        let Ok(ip) = Ipv4Packet::new_checked(packet) else {
            return;
        };
        let Ok(ip_repr) = Ipv4Repr::parse(&ip, &caps) else {
            return;
        };
        if ip_repr.next_header != IpProtocol::Icmp || ip_repr.dst_addr != self.addr {
            return;
        }
        let Ok(icmp) = Icmpv4Packet::new_checked(ip.payload()) else {
            return;
        };
        match Icmpv4Repr::parse(&icmp, &caps) {
            Ok(Icmpv4Repr::EchoRequest {
                ident,
                seq_no,
                data,
            }) => {
                let reply = Icmpv4Repr::EchoReply {
                    ident,
                    seq_no,
                    data,
                };
                self.out.push(echo(self.addr, ip_repr.src_addr, &reply));
            }
            Ok(Icmpv4Repr::EchoReply {
                seq_no,
                data: &[a, b, ..],
                ..
            }) => {
                events.push(AppEvent::EchoReply {
                    ident: u16::from_be_bytes([a, b]),
                    seq: seq_no,
                });
            }
            _ => {}
        }
    }

    /// Hands over what it sent.
    pub fn drain(&mut self, out: &mut Vec<Vec<u8>>) {
        out.append(&mut self.out);
    }
}
