//! The vxlan backend's pure half: the VTEP MAC, the lease's BackendData, and the
//! netlink operations that take one remote subnet from what is programmed to what is
//! wanted. Nothing here touches the kernel, so all of it is unit-tested.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde_json::Value;
use weft_core::lease::RawJson;

use crate::netlink::Mac;

/// The VTEP MAC of the node with public IP `public_ip` on VNI `vni`: `0e`, the VNI's
/// low byte, then the four bytes of the public IP (VNI 1, 192.0.2.1:
/// `0e:01:c0:00:02:01`).
///
/// Derived rather than random (flannel's choice, which changes at every reboot unless
/// its Kubernetes annotation survives, leaving stale entries on peers) or persisted (a
/// file to lose): the same node always advertises the same MAC, across restarts,
/// reboots and reinstalls, with nothing stored. `0x0e` has the locally-administered bit
/// set and the multicast bit clear, and is the prefix flannel itself uses on Windows
/// (`MacPrefix` `0E-2A`). Two nodes of one VNI never share a MAC, since they never
/// share a public IP; a MAC only has to be unique within its VNI, so two VNIs sharing a
/// low byte do not clash.
pub fn vtep_mac(public_ip: Ipv4Addr, vni: u32) -> Mac {
    let [a, b, c, d] = public_ip.octets();
    Mac([0x0e, vni.to_be_bytes()[3], a, b, c, d])
}

/// The VTEP MAC of the IPv6 device (`flannel-v6.<VNI>`) of the node with public IPv6
/// address `public_ipv6`: as [`vtep_mac`], from the address's last four bytes
/// (VNI 1, 2001:db8::c000:201: `0e:01:c0:00:02:01`). Stable for the same reasons;
/// nodes whose public IPv6 addresses agree in their last 32 bits would share it, which
/// one underlay prefix (a /64 or shorter per link) gives them only when they differ
/// in the prefix alone, and that no single underlay network does.
pub fn vtep_mac_v6(public_ipv6: Ipv6Addr, vni: u32) -> Mac {
    let [.., a, b, c, d] = public_ipv6.octets();
    Mac([0x0e, vni.to_be_bytes()[3], a, b, c, d])
}

/// Our lease's `BackendData`, byte for byte what flannel's `json.Marshal` writes for its
/// `vxlanLeaseAttrs{VNI, VtepMAC}`: `{"VNI":1,"VtepMAC":"0e:01:c0:00:02:01"}`; its
/// `BackendV6Data` has the same form, with the IPv6 device's MAC (flannel's
/// `newSubnetAttrs`).
pub fn lease_data(vni: u32, mac: Mac) -> RawJson {
    RawJson::new(&format!(r#"{{"VNI":{vni},"VtepMAC":"{mac}"}}"#))
        .expect("the format is valid JSON")
}

/// A peer's VTEP MAC, from its lease's `BackendData`, decoded as Go's `json.Unmarshal`
/// would: keys matched case-insensitively, the last one winning.
pub fn peer_mac(data: Option<&RawJson>) -> Result<Mac, String> {
    let data = data.ok_or("the lease has no BackendData")?;
    let mac = weft_core::config::go_object_field(data.get(), "VtepMAC")
        .map_err(|e| format!("BackendData {} is not an object: {e}", data.get()))?
        .ok_or_else(|| format!("BackendData {} has no VtepMAC", data.get()))?;
    let mac: Value = serde_json::from_str(mac.get())
        .map_err(|e| format!("VtepMAC {} is not JSON: {e}", mac.get()))?;
    match mac {
        Value::String(s) => s.parse().map_err(|e: crate::netlink::BadMac| e.to_string()),
        other => Err(format!("VtepMAC {other} is not a string")),
    }
}

/// How one remote subnet is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// Through the vxlan device: neighbour `subnet.network -> mac`, FDB entry
    /// `mac -> public_ip`, route `subnet via subnet.network dev <vxlan> onlink`.
    Encap {
        /// The peer's VTEP MAC.
        mac: Mac,
        /// The peer's public IP (of the subnet's family).
        public_ip: IpAddr,
    },
    /// `DirectRouting`: route `subnet via public_ip` over the underlay, nothing else.
    Direct {
        /// The peer's public IP.
        public_ip: IpAddr,
    },
}

/// One netlink operation for one subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Delete the subnet's route.
    DelRoute,
    /// Delete the neighbour `subnet.network`.
    DelNeighbour,
    /// Delete the FDB entry `mac -> ip`.
    DelFdb(Mac, IpAddr),
    /// Set the neighbour `subnet.network -> mac`.
    SetNeighbour(Mac),
    /// Set the FDB entry `mac -> ip`.
    SetFdb(Mac, IpAddr),
    /// Set (replace) the subnet's route for this peer.
    SetRoute(Peer),
}

/// The operations that take one subnet from `old` (programmed) to `new` (wanted), in
/// order: removals first, then flannel's order -- neighbour, FDB entry, and the route
/// last, so that the kernel never resolves the gateway by a broadcast that has nowhere
/// to go. `fdb_shared` says another subnet uses `old`'s FDB entry (two leases of one
/// node), which must then stay. Replacing needs no deletion: a neighbour and a route are
/// replaced in place, and an FDB entry is deleted only when its MAC or IP changes.
pub fn plan(old: Option<Peer>, new: Option<Peer>, fdb_shared: bool) -> Vec<Op> {
    let mut ops = Vec::new();
    if old == new {
        return ops;
    }
    if new.is_none() && old.is_some() {
        ops.push(Op::DelRoute);
    }
    if let Some(Peer::Encap { mac, public_ip }) = old {
        if !matches!(new, Some(Peer::Encap { .. })) {
            ops.push(Op::DelNeighbour);
        }
        if !fdb_shared && new != old {
            ops.push(Op::DelFdb(mac, public_ip));
        }
    }
    match new {
        Some(peer @ Peer::Encap { mac, public_ip }) => {
            ops.push(Op::SetNeighbour(mac));
            ops.push(Op::SetFdb(mac, public_ip));
            ops.push(Op::SetRoute(peer));
        }
        Some(peer @ Peer::Direct { .. }) => ops.push(Op::SetRoute(peer)),
        None => {}
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP1: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    const IP2: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn the_v6_vtep_mac_is_derived_from_the_public_ipv6_and_vni() {
        let ip: Ipv6Addr = "2001:db8:1::c000:203".parse().unwrap();
        assert_eq!(vtep_mac_v6(ip, 1).to_string(), "0e:01:c0:00:02:03");
        assert_eq!(vtep_mac_v6(ip, 1), vtep_mac_v6(ip, 1), "stable");
        let other: Ipv6Addr = "2001:db8:1::2".parse().unwrap();
        assert_eq!(vtep_mac_v6(other, 2).to_string(), "0e:02:00:00:00:02");
    }

    fn encap(mac_last: u8, public_ip: IpAddr) -> Peer {
        Peer::Encap {
            mac: Mac([0x0e, 1, 192, 0, 2, mac_last]),
            public_ip,
        }
    }

    #[test]
    fn the_vtep_mac_is_derived_from_the_public_ip_and_vni() {
        let mac = vtep_mac(Ipv4Addr::new(192, 0, 2, 1), 1);
        assert_eq!(mac.to_string(), "0e:01:c0:00:02:01");
        assert_eq!(mac, vtep_mac(Ipv4Addr::new(192, 0, 2, 1), 1), "stable");
        assert_ne!(mac, vtep_mac(Ipv4Addr::new(192, 0, 2, 2), 1));
        assert_eq!(
            vtep_mac(Ipv4Addr::new(10, 0, 0, 1), 4096).to_string(),
            "0e:00:0a:00:00:01"
        );
        // Locally administered, unicast.
        assert_eq!(mac.0[0] & 0b11, 0b10);
    }

    #[test]
    fn lease_data_is_byte_identical_to_flannels() {
        let data = lease_data(1, Mac([0xee, 0xdd, 0x0b, 0x59, 0x5b, 0x58]));
        // flannel's own example, DESIGN.md.
        assert_eq!(data.get(), r#"{"VNI":1,"VtepMAC":"ee:dd:0b:59:5b:58"}"#);
        assert_eq!(
            peer_mac(Some(&data)),
            Ok(Mac([0xee, 0xdd, 0x0b, 0x59, 0x5b, 0x58]))
        );
    }

    #[test]
    fn peer_macs_decode_as_go_does_and_bad_ones_say_why() {
        let raw = |s: &str| RawJson::new(s).unwrap();
        let mac = Mac([0xee, 0xdd, 0x0b, 0x59, 0x5b, 0x58]);
        let ok = raw(r#"{"vni":1,"vtepmac":"00:00:00:00:00:00","VtepMac":"EE-DD-0B-59-5B-58"}"#);
        assert_eq!(peer_mac(Some(&ok)), Ok(mac));
        for (bad, why) in [
            (None, "no BackendData"),
            (Some(raw("[]")), "not an object"),
            (Some(raw(r#"{"VNI":1}"#)), "no VtepMAC"),
            (Some(raw(r#"{"VtepMAC":7}"#)), "not a string"),
            (Some(raw(r#"{"VtepMAC":"ee:dd"}"#)), "not a MAC address"),
        ] {
            let err = peer_mac(bad.as_ref()).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
    }

    #[test]
    fn a_new_peer_gets_neighbour_fdb_then_route() {
        let p = encap(2, IP2);
        let Peer::Encap { mac, .. } = p else {
            unreachable!()
        };
        assert_eq!(
            plan(None, Some(p), false),
            vec![Op::SetNeighbour(mac), Op::SetFdb(mac, IP2), Op::SetRoute(p)]
        );
        assert_eq!(plan(Some(p), Some(p), false), vec![]);
    }

    #[test]
    fn a_gone_peer_loses_all_three_unless_the_fdb_entry_is_shared() {
        let p = encap(2, IP2);
        let Peer::Encap { mac, .. } = p else {
            unreachable!()
        };
        assert_eq!(
            plan(Some(p), None, false),
            vec![Op::DelRoute, Op::DelNeighbour, Op::DelFdb(mac, IP2)]
        );
        assert_eq!(
            plan(Some(p), None, true),
            vec![Op::DelRoute, Op::DelNeighbour]
        );
        let d = Peer::Direct { public_ip: IP2 };
        assert_eq!(plan(Some(d), None, false), vec![Op::DelRoute]);
    }

    #[test]
    fn a_changed_mac_or_ip_replaces_the_entries() {
        let old = encap(2, IP2);
        let Peer::Encap { mac: old_mac, .. } = old else {
            unreachable!()
        };
        let new = encap(9, IP2);
        let Peer::Encap { mac, .. } = new else {
            unreachable!()
        };
        assert_eq!(
            plan(Some(old), Some(new), false),
            vec![
                Op::DelFdb(old_mac, IP2),
                Op::SetNeighbour(mac),
                Op::SetFdb(mac, IP2),
                Op::SetRoute(new)
            ]
        );
        let moved = Peer::Encap {
            mac: old_mac,
            public_ip: IP1,
        };
        assert_eq!(
            plan(Some(old), Some(moved), false),
            vec![
                Op::DelFdb(old_mac, IP2),
                Op::SetNeighbour(old_mac),
                Op::SetFdb(old_mac, IP1),
                Op::SetRoute(moved)
            ]
        );
    }

    #[test]
    fn switching_to_direct_routing_drops_the_encap_entries() {
        let old = encap(2, IP2);
        let Peer::Encap { mac, .. } = old else {
            unreachable!()
        };
        let d = Peer::Direct { public_ip: IP2 };
        assert_eq!(
            plan(Some(old), Some(d), false),
            vec![Op::DelNeighbour, Op::DelFdb(mac, IP2), Op::SetRoute(d)]
        );
        assert_eq!(
            plan(Some(d), Some(old), false),
            vec![
                Op::SetNeighbour(mac),
                Op::SetFdb(mac, IP2),
                Op::SetRoute(old)
            ]
        );
    }
}
