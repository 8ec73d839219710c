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

/// Writes an echo packet into `buf` (whatever it held before), sized to fit.
pub(crate) fn echo_into(
    mut buf: Vec<u8>,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    icmp: &Icmpv4Repr<'_>,
) -> Vec<u8> {
    let caps = ChecksumCapabilities::default();
    let ip = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Icmp,
        payload_len: icmp.buffer_len(),
        hop_limit: 64,
    };
    buf.clear();
    buf.resize(ip.buffer_len() + icmp.buffer_len(), 0);
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
        self.out.push(echo_into(Vec::new(), self.addr, dst, &repr));
    }

    /// A packet from the node: answers echo requests (in the request's own buffer),
    /// reports echo replies.
    pub fn receive(&mut self, packet: Vec<u8>, events: &mut Vec<AppEvent>) {
        let caps = ChecksumCapabilities::default();
        let Ok(ip) = Ipv4Packet::new_checked(&packet[..]) else {
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
                // The request's data, out of the buffer the reply is written into.
                let mut short = [0u8; 64];
                let long;
                let data: &[u8] = match short.get_mut(..data.len()) {
                    Some(s) => {
                        s.copy_from_slice(data);
                        s
                    }
                    None => {
                        long = data.to_vec();
                        &long
                    }
                };
                let reply = Icmpv4Repr::EchoReply {
                    ident,
                    seq_no,
                    data,
                };
                let to = ip_repr.src_addr;
                self.out.push(echo_into(packet, self.addr, to, &reply));
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
