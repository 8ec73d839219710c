//! The lease value a weft node writes is byte for byte the one flanneld v0.20.2 writes
//! for the same backend (the fixtures in `fixtures/flanneld-leases/`, whose README says
//! where each byte comes from in flannel's code), and both spellings -- flanneld's and
//! the one older weft versions wrote -- still read back.
//!
//! Each node is the real `weft_core::node::Node`, set up as the daemon sets it up
//! (`NodeConfig::for_network`, the backend's `BackendData`), acquiring its lease
//! against the store model; the bytes compared are the ones it stored.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, Ipv6Addr};

use weft_core::allocator::AllocEvent;
use weft_core::lease::{LeaseAttrs, RawJson};
use weft_core::node::{Node, NodeConfig, NodeEvent};
use weft_core::store::{subnets_prefix, StoreModel};
use weft_core::{NetworkConfig, Timestamp};
use weft_datapath::backend::vxlan::plan;

const PREFIX: &str = "/coreos.com/network";
const PUBLIC_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/tests/fixtures/flanneld-leases/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The value a node of `config` stores for its lease, with `backend_data` as its
/// backend gives it.
fn stored_value(
    config: &str,
    public_ipv6: Option<Ipv6Addr>,
    backend_data: Option<RawJson>,
) -> String {
    stored_value_v6(config, public_ipv6, backend_data, None)
}

/// [`stored_value`], with `BackendV6Data` too; returns the value (the key is checked
/// to be flannel's dual-stack form when the node has an IPv6 subnet).
fn stored_value_v6(
    config: &str,
    public_ipv6: Option<Ipv6Addr>,
    backend_data: Option<RawJson>,
    backend_v6_data: Option<RawJson>,
) -> String {
    let network = NetworkConfig::parse(config).expect("config");
    let mut node_config =
        NodeConfig::for_network(PREFIX, &network, PUBLIC_IP, public_ipv6).expect("node config");
    node_config.alloc.backend_data = backend_data;
    node_config.alloc.backend_v6_data = backend_v6_data;
    let now = Timestamp::from_millis(1_700_000_000_000);
    let mut store = StoreModel::new(now);
    let mut node = Node::new(node_config, 1, now);
    for _ in 0..100 {
        while let Some((id, op)) = node.poll_store_op() {
            if let Some(result) = op.call(&mut store) {
                node.handle_store_result(id, result, now);
            }
        }
        while let Some(event) = node.poll_event() {
            if let NodeEvent::Lease(AllocEvent::Acquired { lease, .. }) = event {
                let key = format!("{}{}", subnets_prefix(PREFIX), lease.key);
                if let Some(v6) = lease.key.ipv6 {
                    // An IPv6-only lease's IPv4 part is flannel's empty ip.IP4Net.
                    let v4 = lease.key.ipv4.map_or("0.0.0.0-0".to_string(), |n| {
                        format!("{}-{}", n.network(), n.prefix_len())
                    });
                    let want = format!("{v4}&{}-{}", v6.network(), v6.prefix_len());
                    assert!(key.ends_with(&format!("/subnets/{want}")), "{key}");
                }
                let entry = store.get(&key).expect("get").expect("the lease is stored");
                return String::from_utf8(entry.value.clone()).expect("utf-8");
            }
        }
    }
    panic!("the node acquired no lease");
}

#[test]
fn udp_lease_is_flanneld_s() {
    let got = stored_value(
        r#"{"Network":"10.5.0.0/16","Backend":{"Type":"udp"}}"#,
        None,
        None,
    );
    assert_eq!(got, fixture("udp"));
}

#[test]
fn alloc_lease_is_flanneld_s() {
    let got = stored_value(
        r#"{"Network":"10.5.0.0/16","Backend":{"Type":"alloc"}}"#,
        None,
        None,
    );
    assert_eq!(got, fixture("alloc"));
}

#[test]
fn vxlan_lease_is_flanneld_s() {
    let data = plan::lease_data(1, plan::vtep_mac(PUBLIC_IP, 1));
    let got = stored_value(
        r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#,
        None,
        Some(data),
    );
    assert_eq!(got, fixture("vxlan"));
    let ip6: Ipv6Addr = "2001:db8::2".parse().unwrap();
    let dual = stored_value_v6(
        r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#,
        Some(ip6),
        Some(plan::lease_data(1, plan::vtep_mac(PUBLIC_IP, 1))),
        Some(plan::lease_data(1, plan::vtep_mac_v6(ip6, 1))),
    );
    assert_eq!(dual, fixture("vxlan-dual-stack"));
    // IPv6-only: the second device alone, so no BackendData.
    let v6_only = stored_value_v6(
        r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#,
        Some(ip6),
        None,
        Some(plan::lease_data(1, plan::vtep_mac_v6(ip6, 1))),
    );
    assert_eq!(v6_only, fixture("vxlan-ipv6-only"));
}

#[test]
fn host_gw_lease_is_flanneld_s() {
    let got = stored_value(
        r#"{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"}}"#,
        None,
        None,
    );
    assert_eq!(got, fixture("host-gw"));
    let dual = stored_value(
        r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"host-gw"}}"#,
        Some("2001:db8::2".parse().unwrap()),
        None,
    );
    assert_eq!(dual, fixture("host-gw-dual-stack"));
    let v6_only = stored_value(
        r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"host-gw"}}"#,
        Some("2001:db8::2".parse().unwrap()),
        None,
    );
    assert_eq!(v6_only, fixture("host-gw-ipv6-only"));
}

#[test]
fn flanneld_s_and_older_weft_s_values_both_read_and_flanneld_s_round_trip() {
    for name in [
        "udp",
        "alloc",
        "vxlan",
        "host-gw",
        "host-gw-dual-stack",
        "vxlan-dual-stack",
    ] {
        let text = fixture(name);
        let attrs = LeaseAttrs::decode(name, text.as_bytes()).expect(name);
        assert_eq!(attrs.public_ip, PUBLIC_IP, "{name}");
        assert_eq!(String::from_utf8(attrs.encode()).unwrap(), text, "{name}");
    }
    for name in ["vxlan-ipv6-only", "host-gw-ipv6-only"] {
        let text = fixture(name);
        let attrs = LeaseAttrs::decode(name, text.as_bytes()).expect(name);
        assert_eq!(attrs.public_ip, Ipv4Addr::UNSPECIFIED, "{name}");
        assert_eq!(String::from_utf8(attrs.encode()).unwrap(), text, "{name}");
    }
    // What weft wrote before it matched flanneld, and flanneld's own oldest udp form.
    for old in [
        r#"{"PublicIP":"192.0.2.2","PublicIPv6":null,"BackendType":"udp"}"#,
        r#"{"PublicIP":"192.0.2.2"}"#,
    ] {
        let attrs = LeaseAttrs::decode("old", old.as_bytes()).expect(old);
        assert_eq!(attrs.public_ip, PUBLIC_IP);
    }
}
