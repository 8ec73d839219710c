//! `weft config check` on flannel's examples and on every invalid case of the core's
//! table: accepted with a summary, or rejected with a non-zero exit and the core's
//! message, which names the field.

#![allow(clippy::unwrap_used)]

mod common;

use common::weft;
use weft_core::NetworkConfig;

fn cases(name: &str) -> Vec<String> {
    let path = format!("{}/core/tests/configs/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

fn check(json: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("net-conf.json");
    std::fs::write(&file, json).unwrap();
    weft(&["config", "check", file.to_str().unwrap()])
}

#[test]
fn wireguard_reports_its_mtu_and_what_it_creates() {
    let out = check(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard"}}"#);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("wireguard* 1420"), "{text}");
    assert!(
        text.contains("UDP socket on port 51820 speaking WireGuard")
            && text.contains("/run/flannel/wgkey (WIREGUARD_KEY_FILE)")
            && text.contains("no persistent keepalive, no PSK"),
        "{text}"
    );
    // flannel's `MTU` is the underlay's.
    let out = check(
        r#"{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard","MTU":9000,"ListenPort":4000,"PersistentKeepaliveInterval":25}}"#,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("wireguard* 8920"), "{text}");
    assert!(
        text.contains("port 4000") && text.contains("a keepalive every 25 s"),
        "{text}"
    );
    let out = check(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard","Mode":"x"}}"#);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Backend.Mode"));
}

#[test]
fn ipip_reports_its_mtu_and_devices_and_refuses_ipv6() {
    let out = check(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"ipip"}}"#);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("backend: ipip\n"), "{text}");
    assert!(text.contains(" ipip* 1480"), "{text}");
    assert!(
        text.contains("an ipip device flannel.ipip")
            && text.contains("a TUN device flannel.ipip and a raw IPIP socket")
            && text.contains("`subnet via its public IP dev flannel.ipip onlink`")
            && !text.contains("DirectRouting"),
        "{text}"
    );
    let out = check(
        r#"{"Network":"10.5.0.0/16","Backend":{"Type":"ipip","DirectRouting":true,"MTU":9000}}"#,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(" ipip* 8980") && text.contains("(DirectRouting)"),
        "{text}"
    );
    let out = check(
        r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"ipip"}}"#,
    );
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"ipip\" carries IPv4 only"), "{err}");
}

#[test]
fn flannel_documented_examples_are_accepted_with_a_summary() {
    let out =
        check(r#"{"Network":"10.5.0.0/16","SubnetLen":24,"Backend":{"Type":"udp","Port":8285}}"#);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("subnets /24 from 10.5.1.0/24 to 10.5.255.0/24 (255 subnets)"),
        "{text}"
    );
    assert!(
        text.contains("udp* 1472") && text.contains("vxlan 1450"),
        "{text}"
    );

    assert!(
        text.contains("devices: a TUN device (weft0, --tun-name) and a UDP socket on port 8285"),
        "{text}"
    );

    let out = check(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("vxlan* 1450"), "{text}");
    assert!(
        text.contains("devices: a vxlan device flannel.1 (VNI 1, UDP port 8472, nolearning)"),
        "{text}"
    );
    let out = check(
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":4096,"Port":4789,"DirectRouting":true}}"#,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("flannel.4096 (VNI 4096, UDP port 4789") && text.contains("DirectRouting"),
        "{text}"
    );
    let out = check(
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("second device flannel-v6.1 (MTU 20 bytes less)"),
        "{text}"
    );
    let out = check(
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"udp"}}"#,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("with this node's subnet address /32 and its IPv6 subnet address /128")
            && text.contains("IPv6 inner packets travel over the IPv4 underlay"),
        "{text}"
    );
    let out = check(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("host-gw* 1500") && text.contains("devices: none; per peer a route"),
        "{text}"
    );
}

#[test]
fn an_ipv6_only_config_shows_the_ipv6_devices_alone_and_the_backends_that_refuse_it() {
    let v6_only = |backend: &str| {
        check(&format!(
            r#"{{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{{"Type":"{backend}"}}}}"#
        ))
    };
    let out = v6_only("vxlan");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("IPv6 network fc00::/48: subnets /64") && !text.contains("IPv4 network"),
        "{text}"
    );
    assert!(
        text.contains("devices: IPv6 only: one vxlan device flannel-v6.1 (VNI 1")
            && text.contains("no flannel.1;"),
        "{text}"
    );
    let text = String::from_utf8_lossy(&v6_only("host-gw").stdout).to_string();
    assert!(
        text.contains("route `IPv6 subnet via its PublicIPv6`"),
        "{text}"
    );
    let text = String::from_utf8_lossy(&v6_only("udp").stdout).to_string();
    assert!(
        text.contains("devices: IPv6 only: a TUN device")
            && text.contains("UDP socket on [PublicIPv6]:8285"),
        "{text}"
    );
    // flannel's config accepts it; weft's daemon refuses it, and the check says why.
    let out = check(
        r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"wireguard","Mode":"ipv6"}}"#,
    );
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("devices: none: the wireguard backend runs IPv6-only networks (EnableIPv4: false) in Mode \"separate\" (the default) only"),
        "{text}"
    );
}

#[test]
fn every_valid_table_entry_is_accepted() {
    for json in cases("valid.txt") {
        let out = check(&json);
        assert!(out.status.success(), "{json}: {out:?}");
    }
}

#[test]
fn every_invalid_table_entry_is_rejected_with_the_cores_message() {
    for json in cases("invalid.txt") {
        let out = check(&json);
        assert!(!out.status.success(), "{json} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        let expected = NetworkConfig::parse(&json).unwrap_err().to_string();
        assert!(err.contains("invalid network config"), "{json}: {err}");
        assert!(err.contains(&expected), "{json}: {err} lacks {expected}");
    }
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let out = weft(&["config", "check", "/nonexistent/net-conf.json"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot read network config /nonexistent/net-conf.json"),
        "{err}"
    );
}

#[test]
fn an_empty_file_says_empty_and_host_bits_warn() {
    let out = check("");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("network config is empty"), "{err}");
    assert!(!err.contains("EOF"), "{err}");
    let out = check(r#"{"Network":"10.5.0.1/16","Backend":{"Type":"udp"}}"#);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("warning: Network 10.5.0.1/16 has host bits set: using 10.5.0.0/16")
            && text.contains("IPv4 network 10.5.0.0/16"),
        "{text}"
    );
}
