//! The packet path's parsers: IP headers, TTL decrement, ICMP answers, VXLAN headers.
//! None may panic on any input, and a decremented packet must still parse.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weft_core::wire::{icmp, ip, vxlan};

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = ip::parse(data) {
        let mut copy = data.to_vec();
        if header.ttl > 1 && ip::decrement_ttl(&mut copy).is_ok() {
            assert_eq!(ip::parse(&copy).expect("still valid").ttl, header.ttl - 1);
        }
    }
    let mut out = [0u8; 576];
    let _ = icmp::net_unreachable_v4(data, std::net::Ipv4Addr::new(10, 5, 0, 0), &mut out);
    if let Ok(p) = vxlan::Packet::new_checked(data) {
        let _ = vxlan::Repr::parse(&p);
    }
});
