//! Neighbours (ARP entries) and bridge FDB entries, for the vxlan backend: what
//! `ip neigh replace … nud permanent` and `bridge fdb append … self permanent` do.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::RouteType;
use rtnetlink::packet_route::AddressFamily;

use super::{gone, Netlink};
use crate::DatapathError;

/// An Ethernet (MAC) address, shown as the kernel and Go's `net.HardwareAddr` show
/// it: six lowercase hex pairs separated by colons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// Why a text is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a MAC address (six hex pairs separated by ':' or '-')")]
pub struct BadMac(pub String);

impl FromStr for Mac {
    type Err = BadMac;

    /// Six hex pairs separated by `:` or `-`, in either case: the 48-bit forms Go's
    /// `net.ParseMAC` accepts.
    fn from_str(s: &str) -> Result<Self, BadMac> {
        let bad = || BadMac(s.to_string());
        let sep = if s.contains('-') { '-' } else { ':' };
        let mut out = [0u8; 6];
        let mut parts = s.split(sep);
        for byte in &mut out {
            let part = parts.next().filter(|p| p.len() == 2).ok_or_else(bad)?;
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        match parts.next() {
            None => Ok(Mac(out)),
            Some(_) => Err(bad()),
        }
    }
}

fn neighbour_message(family: AddressFamily, index: u32) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family;
    msg.header.ifindex = index;
    msg
}

/// The address family of `ip`, and `ip` as a neighbour address.
fn family_of(ip: IpAddr) -> (AddressFamily, NeighbourAddress) {
    match ip {
        IpAddr::V4(a) => (AddressFamily::Inet, NeighbourAddress::Inet(a)),
        IpAddr::V6(a) => (AddressFamily::Inet6, NeighbourAddress::Inet6(a)),
    }
}

impl Netlink {
    /// Sets the permanent neighbour `ip -> mac` on link `index` (created or replaced).
    pub async fn replace_neighbour(
        &self,
        index: u32,
        ip: IpAddr,
        mac: Mac,
    ) -> Result<(), DatapathError> {
        self.handle
            .neighbours()
            .add(index, ip)
            .link_layer_address(&mac.0)
            .state(NeighbourState::Permanent)
            .kind(RouteType::Unicast)
            .replace()
            .execute()
            .await
            .map_err(|e| DatapathError::netlink(format!("set neighbour {ip} -> {mac}"), e))
    }

    /// Removes the neighbour `ip` from link `index`; one already gone is fine.
    pub async fn del_neighbour(&self, index: u32, ip: IpAddr) -> Result<(), DatapathError> {
        let (family, dst) = family_of(ip);
        let mut msg = neighbour_message(family, index);
        msg.attributes.push(NeighbourAttribute::Destination(dst));
        match self.handle.neighbours().del(msg).execute().await {
            Err(e) if !gone(&e) => Err(DatapathError::netlink(format!("delete neighbour {ip}"), e)),
            _ => Ok(()),
        }
    }

    /// Sets the permanent FDB entry `mac -> dst` of the vxlan device `index` (its own
    /// table: `self`), replacing the destination of an entry for `mac`.
    pub async fn replace_fdb(
        &self,
        index: u32,
        mac: Mac,
        dst: IpAddr,
    ) -> Result<(), DatapathError> {
        self.handle
            .neighbours()
            .add_bridge(index, &mac.0)
            .destination(dst)
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| DatapathError::netlink(format!("set fdb entry {mac} -> {dst}"), e))
    }

    /// Removes the FDB entry `mac -> dst` of the vxlan device `index`; one already gone
    /// is fine.
    pub async fn del_fdb(&self, index: u32, mac: Mac, dst: IpAddr) -> Result<(), DatapathError> {
        let mut msg = neighbour_message(AddressFamily::Bridge, index);
        msg.header.flags = NeighbourFlags::Own;
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
        msg.attributes
            .push(NeighbourAttribute::Destination(family_of(dst).1));
        match self.handle.neighbours().del(msg).execute().await {
            Err(e) if !gone(&e) => Err(DatapathError::netlink(
                format!("delete fdb entry {mac} -> {dst}"),
                e,
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_print_and_parse_as_go_does() {
        let mac = Mac([0x0e, 0x01, 0xc0, 0, 2, 0xab]);
        assert_eq!(mac.to_string(), "0e:01:c0:00:02:ab");
        assert_eq!("0e:01:c0:00:02:ab".parse(), Ok(mac));
        assert_eq!("0E-01-C0-00-02-AB".parse(), Ok(mac));
        for bad in [
            "",
            "0e:01:c0:00:02",
            "0e:01:c0:00:02:ab:00",
            "0e:1:c0:00:02:ab",
            "zz:01:c0:00:02:ab",
            "0e:01-c0:00:02:ab",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
    }
}
