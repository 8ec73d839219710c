use std::fmt::Write as _;
use std::net::IpAddr;

use proptest::prelude::*;

use super::decode::go_key_matches;
use super::*;

fn parse(text: &str) -> NetworkConfig {
    NetworkConfig::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// Parses `text` expecting a rejection whose message names `field`.
fn reject(text: &str, field: &str) -> ConfigError {
    let err = NetworkConfig::parse(text).expect_err(text);
    assert!(
        err.to_string().contains(field),
        "{err:?} does not name {field}"
    );
    err
}

fn v4(s: &str) -> Ipv4Addr {
    s.parse().expect("IPv4 address")
}

fn v6(s: &str) -> Ipv6Addr {
    s.parse().expect("IPv6 address")
}

/// The configs of a file under `core/tests/configs/`.
fn table(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

fn summary(c: &NetworkConfig) -> String {
    let mut out = String::new();
    for space in [c.ipv4_space(), c.ipv6_space()].into_iter().flatten() {
        let _ = write!(
            out,
            "{} /{} [{} .. {}] ({} subnets); ",
            space.network(),
            space.subnet_len(),
            space.min().addr(),
            space.max().addr(),
            space.len()
        );
    }
    let b = &c.backend;
    let _ = write!(out, "{} port {}", b.kind, b.port);
    if let Some(vni) = b.vni {
        let _ = write!(out, " vni {vni}");
    }
    out
}

#[test]
fn accepts_the_flannel_readme_example() {
    let c =
        parse(r#"{"Network":"10.5.0.0/16","SubnetLen":24,"Backend":{"Type":"udp","Port":8285}}"#);
    assert!(c.enable_ipv4 && !c.enable_ipv6);
    assert_eq!(c.network, Some("10.5.0.0/16".parse().expect("cidr")));
    assert_eq!(c.subnet_len, 24);
    assert_eq!(
        (c.subnet_min, c.subnet_max),
        (v4("10.5.1.0"), v4("10.5.255.0"))
    );
    assert_eq!(
        (c.backend.kind, c.backend.port, c.backend.vni),
        (BackendType::Udp, 8285, None)
    );
    assert_eq!(c.backend.raw["Port"], 8285);
    assert_eq!(c.ipv4_space().map(|s| s.len()), Some(255));
    assert_eq!(c.ipv6_space(), None);
    assert_eq!(c.mtu(1500), 1472);
}

#[test]
fn accepts_kube_flannel_default_and_derives_vxlan_defaults() {
    let c =
        parse(r#"{"Network":"10.244.0.0/16","EnableNFTables":false,"Backend":{"Type":"vxlan"}}"#);
    assert_eq!(c.subnet_len, 24);
    assert_eq!(
        (c.subnet_min, c.subnet_max),
        (v4("10.244.1.0"), v4("10.244.255.0"))
    );
    assert_eq!(c.backend.kind, BackendType::Vxlan);
    assert_eq!(
        (c.backend.port, c.backend.vni),
        (DEFAULT_VXLAN_PORT, Some(1))
    );
    assert_eq!(c.mtu(1500), 1450);
}

#[test]
fn vxlan_options_follow_flannel() {
    let c = parse(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#);
    assert_eq!(c.backend.vxlan, Some(VxlanOptions::default()));
    let c = parse(
        r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","mtu":9000,"gbp":true,"Learning":true,"directrouting":true}}"#,
    );
    assert_eq!(
        c.backend.vxlan,
        Some(VxlanOptions {
            mtu: Some(9000),
            gbp: true,
            learning: true,
            direct_routing: true
        })
    );
    // flannel's `MTU` is the underlay's: the device (and FLANNEL_MTU) get 50 less.
    assert_eq!(c.mtu(1500), 8950);
    // `null` keeps the defaults, as Go's decoder does.
    let c = parse(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","MTU":null,"GBP":null}}"#);
    assert_eq!(c.backend.vxlan, Some(VxlanOptions::default()));
    // Only vxlan reads them.
    let c = parse(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw","MTU":9000}}"#);
    assert_eq!((c.backend.vxlan, c.mtu(1500)), (None, 1500));
}

#[test]
fn ipip_options_follow_flannel() {
    let c = parse(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"ipip"}}"#);
    assert_eq!(c.backend.kind, BackendType::Ipip);
    assert_eq!(c.backend.ipip, Some(IpipOptions::default()));
    assert_eq!(c.backend.kind.lease_type(), Some("ipip"));
    // flannel's `expectMTU`: the interface's minus the outer IPv4 header.
    assert_eq!(c.mtu(1500), 1480);
    let c = parse(
        r#"{"Network":"10.5.0.0/16","Backend":{"Type":"IPIP","directrouting":true,"MTU":9000}}"#,
    );
    assert_eq!(
        c.backend.ipip,
        Some(IpipOptions {
            mtu: Some(9000),
            direct_routing: true
        })
    );
    assert_eq!(c.mtu(1500), 8980);
    reject(
        r#"{"Network":"10.5.0.0/16","Backend":{"Type":"ipip","DirectRouting":"yes"}}"#,
        "Backend.DirectRouting",
    );
    reject(
        r#"{"Network":"10.5.0.0/16","Backend":{"Type":"ipip","MTU":87}}"#,
        "Backend.MTU",
    );
}

#[test]
fn ipip_refuses_ipv6_as_flannel_carries_ipv4_only() {
    for text in [
        r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"ipip"}}"#,
        r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"ipip"}}"#,
    ] {
        let err = reject(text, "EnableIPv6");
        assert_eq!(err, ConfigError::Ipv4OnlyBackend { kind: "ipip" });
        assert!(err.to_string().contains("IPv4 only"), "{err}");
    }
}

#[test]
fn wireguard_options_follow_flannel() {
    let c = parse(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard"}}"#);
    let defaults = WireguardOptions {
        listen_port: 51820,
        listen_port_v6: 51821,
        psk: None,
        persistent_keepalive: 0,
        mtu: None,
        mode: WireguardMode::Separate,
    };
    assert_eq!(c.backend.wireguard, Some(defaults.clone()));
    assert_eq!((c.backend.port, c.mtu(1500)), (51820, 1420));
    assert_eq!(c.backend.kind.lease_type(), Some("wireguard"));
    let psk = "KmUuK1E6Ij0vNf/J6ZXLdOw0kfyTqAyUOWGZqKmnrkQ=";
    let c = parse(&format!(
        r#"{{"Network":"10.5.0.0/16","Backend":{{"Type":"WireGuard","listenport":5000,"ListenPortV6":5001,"PSK":"{psk}","PersistentKeepaliveInterval":25,"MTU":9000,"Mode":"auto"}}}}"#
    ));
    assert_eq!(
        c.backend.wireguard,
        Some(WireguardOptions {
            listen_port: 5000,
            listen_port_v6: 5001,
            psk: Some(crate::wg_key::parse(psk).unwrap()),
            persistent_keepalive: 25,
            mtu: Some(9000),
            mode: WireguardMode::Auto,
        })
    );
    // flannel's `MTU` is the underlay's: the overlay gets 80 less.
    assert_eq!((c.backend.port, c.mtu(1500)), (5000, 8920));
    // An empty PSK is none, as in flannel.
    let c = parse(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard","PSK":""}}"#);
    assert_eq!(c.backend.wireguard, Some(defaults));
}

#[test]
fn rejects_wireguard_options_that_cannot_work() {
    let bad = [
        (r#""ListenPort":0"#, "Backend.ListenPort"),
        (r#""ListenPortV6":65536"#, "Backend.ListenPortV6"),
        (r#""PSK":"not base64""#, "Backend.PSK"),
        (r#""PSK":"AAAA""#, "Backend.PSK"),
        (
            r#""PersistentKeepaliveInterval":-1"#,
            "Backend.PersistentKeepaliveInterval",
        ),
        (r#""MTU":100"#, "Backend.MTU"),
        (r#""Mode":"both""#, "Backend.Mode"),
        (r#""Mode":7"#, "Backend.Mode"),
    ];
    for (member, field) in bad {
        let err = reject(
            &format!(r#"{{"Network":"10.5.0.0/16","Backend":{{"Type":"wireguard",{member}}}}}"#),
            field,
        );
        // A secret is never echoed in an error.
        assert!(!err.to_string().contains("not base64"), "{err}");
    }
}

#[test]
fn rejects_vxlan_options_that_cannot_work() {
    for mtu in ["0", "117", "65536", "-1"] {
        let err = reject(
            &format!(r#"{{"Network":"10.5.0.0/16","Backend":{{"Type":"vxlan","MTU":{mtu}}}}}"#),
            "Backend.MTU",
        );
        assert!(
            err.to_string().contains("must be between 118 and 65535"),
            "{err}"
        );
    }
    let err = reject(
        r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","DirectRouting":"yes"}}"#,
        "Backend.DirectRouting",
    );
    assert!(matches!(err, ConfigError::WrongType { .. }));
}

#[test]
fn accepts_dual_stack() {
    let c = parse(
        r#"{"Network":"10.42.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"host-gw"}}"#,
    );
    assert!(c.enable_ipv4 && c.enable_ipv6);
    assert_eq!(c.ipv6_network, Some("fc00::/48".parse().expect("cidr")));
    assert_eq!(c.ipv6_subnet_len, 64);
    assert_eq!(c.ipv6_subnet_min, Some(v6("fc00:0:0:1::")));
    assert_eq!(c.ipv6_subnet_max, Some(v6("fc00:0:0:ffff::")));
    assert_eq!(c.ipv6_space().map(|s| s.len()), Some(0xffff));
    assert_eq!((c.backend.port, c.mtu(1500)), (0, 1500));
}

#[test]
fn disabled_family_is_empty_even_when_written() {
    let c = parse(
        r#"{"EnableIPv4":false,"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48"}"#,
    );
    assert_eq!(
        (c.network, c.subnet_len, c.subnet_min),
        (None, 0, Ipv4Addr::UNSPECIFIED)
    );
    assert_eq!(c.ipv4_space(), None);
    let c = parse(r#"{"Network":"10.5.0.0/16","IPv6Network":"fc00::/48","IPv6SubnetLen":200}"#);
    assert_eq!((c.ipv6_network, c.ipv6_subnet_min), (None, None));
}

#[test]
fn no_backend_means_udp_on_8285() {
    let c = parse(r#"{"Network":"10.5.0.0/16"}"#);
    assert_eq!(
        (c.backend.kind, c.backend.port),
        (BackendType::Udp, DEFAULT_UDP_PORT)
    );
    assert_eq!(c.backend.raw, serde_json::json!({}));
}

#[test]
fn subnet_len_defaults_follow_flannel() {
    for (network, len) in [
        ("10.0.0.0/8", 24),
        ("10.5.0.0/22", 24),
        ("10.5.0.0/23", 25),
        ("10.5.0.0/28", 30),
    ] {
        let c = parse(&format!(r#"{{"Network":"{network}"}}"#));
        assert_eq!(c.subnet_len, len, "{network}");
    }
    for (network, len) in [
        ("fc00::/32", 64),
        ("fc00::/62", 64),
        ("fc00::/63", 65),
        ("fc00::/124", 126),
    ] {
        let c = parse(&format!(
            r#"{{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"{network}"}}"#
        ));
        assert_eq!(c.ipv6_subnet_len, len, "{network}");
    }
}

#[test]
fn network_is_truncated_to_its_prefix() {
    let c = parse(r#"{"Network":"10.5.1.7/16"}"#);
    assert_eq!(c.network, Some("10.5.0.0/16".parse().expect("cidr")));
    assert_eq!(c.subnet_min, v4("10.5.1.0"));
}

#[test]
fn keys_and_backend_type_match_case_insensitively() {
    let c = parse(
        r#"{"network":"10.5.0.0/16","SUBNETLEN":26,"backend":{"type":"VxLaN","port":4789,"vni":7}}"#,
    );
    assert_eq!(c.subnet_len, 26);
    assert_eq!(
        (c.backend.kind, c.backend.port, c.backend.vni),
        (BackendType::Vxlan, 4789, Some(7))
    );
    // Go folds the Kelvin sign to k and the long s to s.
    assert!(go_key_matches("Bac\u{212A}end", "Backend"));
    assert!(go_key_matches("\u{17F}ubnetLen", "SubnetLen"));
    assert!(!go_key_matches("Subnet_Len", "SubnetLen"));
}

#[test]
fn later_members_win_and_null_keeps_plain_fields() {
    let c = parse(
        r#"{"Network":"10.6.0.0/16","SubnetLen":20,"network":"10.5.0.0/16","SubnetLen":null}"#,
    );
    assert_eq!(c.network, Some("10.5.0.0/16".parse().expect("cidr")));
    assert_eq!(c.subnet_len, 20);
    // IPv6SubnetMin is a pointer in flannel: null resets it to the default.
    let c = parse(
        r#"{"EnableIPv6":true,"Network":"10.5.0.0/16","IPv6Network":"fc00::/48","IPv6SubnetMin":"fc00:0:0:5::","IPv6SubnetMin":null}"#,
    );
    assert_eq!(c.ipv6_subnet_min, Some(v6("fc00:0:0:1::")));
}

#[test]
fn zero_means_unset() {
    let c = parse(
        r#"{"Network":"10.5.0.0/16","SubnetLen":0,"SubnetMin":"0.0.0.0","SubnetMax":"0.0.0.0"}"#,
    );
    assert_eq!(
        (c.subnet_len, c.subnet_min, c.subnet_max),
        (24, v4("10.5.1.0"), v4("10.5.255.0"))
    );
}

#[test]
fn top_level_null_is_an_empty_object() {
    let err = reject("null", "Network");
    assert_eq!(
        err,
        ConfigError::MissingNetwork {
            field: "Network",
            enabled_by: "EnableIPv4"
        }
    );
}

#[test]
fn rejects_malformed_json_with_position() {
    let err =
        NetworkConfig::parse("{\"Network\": \"10.5.0.0/16\",\n}").expect_err("trailing comma");
    assert!(
        matches!(&err, ConfigError::Json(m) if m.contains("line 2 column 1")),
        "{err}"
    );
}

#[test]
fn rejects_a_document_that_is_not_an_object() {
    let err = reject(r#"["10.5.0.0/16"]"#, "network config");
    assert_eq!(err, ConfigError::NotAnObject { found: "an array" });
}

#[test]
fn rejects_a_mistyped_value() {
    let err = reject(r#"{"Network":"10.5.0.0/16","SubnetLen":"24"}"#, "SubnetLen");
    assert!(matches!(
        err,
        ConfigError::WrongType {
            field: "SubnetLen",
            found: "a string",
            ..
        }
    ));
    assert_eq!(
        err.to_string(),
        r#"SubnetLen "24" is invalid: expected a non-negative integer, found a string"#
    );
    let err = reject(
        r#"{"Network":"10.5.0.0/16","Backend":{"Type":"udp","Port":"8285"}}"#,
        "Backend.Port",
    );
    assert!(matches!(
        err,
        ConfigError::WrongType {
            field: "Backend.Port",
            ..
        }
    ));
}

#[test]
fn rejects_an_unparsable_value() {
    let err = reject(r#"{"Network":"10.5.0.0/33"}"#, "Network");
    assert!(matches!(
        err,
        ConfigError::InvalidValue {
            field: "Network",
            ..
        }
    ));
    let err = reject(r#"{"Network":"fc00::/48"}"#, "Network");
    assert!(matches!(
        err,
        ConfigError::InvalidValue {
            field: "Network",
            ..
        }
    ));
    let err = reject(r#"{"Network":"10.5.0.0/16","SubnetLen":-1}"#, "SubnetLen");
    assert!(matches!(
        err,
        ConfigError::InvalidValue {
            field: "SubnetLen",
            ..
        }
    ));
}

#[test]
fn rejects_a_port_out_of_range() {
    let err = reject(
        r#"{"Network":"10.5.0.0/16","Backend":{"Type":"udp","Port":70000}}"#,
        "Backend.Port",
    );
    assert_eq!(
        err.to_string(),
        "Backend.Port 70000 is invalid: must be between 1 and 65535"
    );
    let err = reject(
        r#"{"Network":"10.5.0.0/16","Backend":{"Type":"udp","Port":0}}"#,
        "Backend.Port",
    );
    assert!(matches!(
        err,
        ConfigError::OutOfRange {
            value: 0,
            min: 1,
            ..
        }
    ));
    let err = reject(
        r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":16777216}}"#,
        "Backend.VNI",
    );
    assert!(matches!(
        err,
        ConfigError::OutOfRange {
            field: "Backend.VNI",
            ..
        }
    ));
}

#[test]
fn rejects_no_address_family() {
    let err = reject(
        r#"{"EnableIPv4":false,"Network":"10.5.0.0/16"}"#,
        "EnableIPv4",
    );
    assert_eq!(err, ConfigError::NoAddressFamily);
}

#[test]
fn rejects_a_missing_network() {
    let err = reject(r#"{"SubnetLen":24}"#, "Network");
    assert!(matches!(
        err,
        ConfigError::MissingNetwork {
            field: "Network",
            ..
        }
    ));
    let err = reject(
        r#"{"Network":"10.5.0.0/16","EnableIPv6":true}"#,
        "IPv6Network",
    );
    assert!(matches!(
        err,
        ConfigError::MissingNetwork {
            field: "IPv6Network",
            ..
        }
    ));
}

#[test]
fn rejects_the_whole_address_space() {
    let err = reject(r#"{"Network":"0.0.0.0/0"}"#, "Network");
    assert!(matches!(
        err,
        ConfigError::WholeAddressSpace {
            field: "Network",
            ..
        }
    ));
}

#[test]
fn rejects_a_network_longer_than_28_without_subnet_len() {
    let err = reject(r#"{"Network":"10.5.0.0/29"}"#, "Network");
    assert!(matches!(
        err,
        ConfigError::NetworkTooSmall { max_prefix: 28, .. }
    ));
    let err = reject(
        r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/125"}"#,
        "IPv6Network",
    );
    assert!(matches!(
        err,
        ConfigError::NetworkTooSmall {
            max_prefix: 124,
            ..
        }
    ));
}

#[test]
fn rejects_subnet_len_above_30() {
    let err = reject(r#"{"Network":"10.5.0.0/16","SubnetLen":31}"#, "SubnetLen");
    assert!(matches!(
        err,
        ConfigError::SubnetLenTooLong {
            len: 31,
            max: 30,
            ..
        }
    ));
    assert_eq!(
        err.to_string(),
        "SubnetLen 31 is invalid: must be at most 30"
    );
    let err = reject(
        r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetLen":127}"#,
        "IPv6SubnetLen",
    );
    assert!(matches!(
        err,
        ConfigError::SubnetLenTooLong { max: 126, .. }
    ));
}

#[test]
fn rejects_fewer_than_four_subnets() {
    // flannel's rule is SubnetLen >= prefix + 2, checked only for an explicit SubnetLen.
    parse(r#"{"Network":"10.5.0.0/16","SubnetLen":18}"#);
    let err = reject(r#"{"Network":"10.5.0.0/16","SubnetLen":17}"#, "SubnetLen");
    assert!(matches!(
        err,
        ConfigError::TooFewSubnets {
            len: 17,
            min: 18,
            ..
        }
    ));
}

#[test]
fn rejects_a_bound_outside_the_network() {
    let err = reject(
        r#"{"Network":"10.5.0.0/16","SubnetMax":"10.6.0.0"}"#,
        "SubnetMax",
    );
    assert!(matches!(
        err,
        ConfigError::BoundOutsideNetwork {
            field: "SubnetMax",
            ..
        }
    ));
}

#[test]
fn rejects_a_bound_off_a_subnet_boundary() {
    let err = reject(
        r#"{"Network":"10.5.0.0/16","SubnetMin":"10.5.1.128"}"#,
        "SubnetMin",
    );
    assert!(matches!(
        err,
        ConfigError::BoundNotAligned {
            field: "SubnetMin",
            subnet_len: 24,
            ..
        }
    ));
    assert_eq!(
        err.to_string(),
        "SubnetMin 10.5.1.128 is invalid: not on a /24 boundary (SubnetLen is 24)"
    );
}

#[test]
fn rejects_min_above_max() {
    let err = reject(
        r#"{"Network":"10.5.0.0/16","SubnetMin":"10.5.9.0","SubnetMax":"10.5.1.0"}"#,
        "SubnetMin",
    );
    assert!(matches!(err, ConfigError::BoundsReversed { .. }));
}

#[test]
fn rejects_a_backend_without_type() {
    assert_eq!(
        reject(
            r#"{"Network":"10.5.0.0/16","Backend":{"Port":1}}"#,
            "Backend.Type"
        ),
        ConfigError::MissingBackendType
    );
    assert_eq!(
        reject(
            r#"{"Network":"10.5.0.0/16","Backend":null}"#,
            "Backend.Type"
        ),
        ConfigError::MissingBackendType
    );
}

#[test]
fn rejects_flannel_backends_weft_lacks() {
    for kind in FLANNEL_ONLY_BACKENDS {
        let err = reject(
            &format!(r#"{{"Network":"10.5.0.0/16","Backend":{{"Type":"{kind}"}}}}"#),
            "Backend.Type",
        );
        assert_eq!(err, ConfigError::UnsupportedBackend { kind: kind.into() });
        assert!(err.to_string().contains(
            "is not supported by weft (supported: alloc, udp, vxlan, host-gw, wireguard, ipip)"
        ));
    }
}

#[test]
fn rejects_an_unknown_backend() {
    let err = reject(
        r#"{"Network":"10.5.0.0/16","Backend":{"Type":"gre"}}"#,
        "Backend.Type",
    );
    assert_eq!(err, ConfigError::UnknownBackend { kind: "gre".into() });
    assert!(err.to_string().contains(SUPPORTED));
}

#[test]
fn valid_table_snapshot() {
    let mut out = String::new();
    for text in table(include_str!("../../tests/configs/valid.txt")) {
        let _ = writeln!(out, "{text}\n    -> {}", summary(&parse(text)));
    }
    insta::assert_snapshot!(out);
}

#[test]
fn invalid_table_snapshot() {
    let mut out = String::new();
    for text in table(include_str!("../../tests/configs/invalid.txt")) {
        let err = NetworkConfig::parse(text).expect_err(text);
        let _ = writeln!(out, "{text}\n    -> {err}");
    }
    insta::assert_snapshot!(out);
}

proptest! {
    /// Whatever the numbers, parsing never panics, and an accepted config has a
    /// non-empty space whose bounds are what the config says.
    #[test]
    fn accepted_configs_have_consistent_spaces(
        addr in any::<u32>(),
        prefix in 0u8..=32,
        len in prop::option::of(0u64..=34),
        min in prop::option::of(any::<u32>()),
        max in prop::option::of(any::<u32>()),
        addr6 in any::<u128>(),
        prefix6 in 0u8..=128,
        len6 in prop::option::of(0u64..=130),
    ) {
        let mut doc = serde_json::json!({
            "Network": format!("{}/{prefix}", Ipv4Addr::from(addr)),
            "EnableIPv6": true,
            "IPv6Network": format!("{}/{prefix6}", Ipv6Addr::from(addr6)),
        });
        if let Some(len) = len { doc["SubnetLen"] = len.into(); }
        if let Some(len6) = len6 { doc["IPv6SubnetLen"] = len6.into(); }
        if let Some(min) = min { doc["SubnetMin"] = Ipv4Addr::from(min).to_string().into(); }
        if let Some(max) = max { doc["SubnetMax"] = Ipv4Addr::from(max).to_string().into(); }
        if let Ok(c) = NetworkConfig::parse(&doc.to_string()) {
            let space = c.ipv4_space().expect("IPv4 space");
            prop_assert_eq!(space.min().addr(), IpAddr::V4(c.subnet_min));
            prop_assert_eq!(space.max().addr(), IpAddr::V4(c.subnet_max));
            prop_assert!(c.subnet_len >= prefix + 2 && c.subnet_len <= 30);
            if len.unwrap_or(0) == 0 {
                prop_assert_eq!(c.subnet_len, 24.max(prefix + 2));
            }
            let space6 = c.ipv6_space().expect("IPv6 space");
            prop_assert!(c.ipv6_subnet_len >= prefix6 + 2 && c.ipv6_subnet_len <= 126);
            prop_assert_eq!(space6.min().addr(), c.ipv6_subnet_min.map(IpAddr::V6).expect("min"));
            prop_assert_eq!(space6.max().addr(), c.ipv6_subnet_max.map(IpAddr::V6).expect("max"));
        }
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,80}") {
        let _ = NetworkConfig::parse(&text);
    }
}

#[test]
fn an_empty_config_says_it_is_empty() {
    for text in ["", "  \n\t\n"] {
        let err = NetworkConfig::parse(text).expect_err("empty");
        assert_eq!(err, ConfigError::Empty);
        assert!(
            err.to_string().starts_with("network config is empty"),
            "{err}"
        );
    }
    // `null` is still flannel's `{}`: it lacks a Network, not text.
    assert!(matches!(
        NetworkConfig::parse("null"),
        Err(ConfigError::MissingNetwork { .. })
    ));
}

#[test]
fn a_network_with_host_bits_is_truncated_with_a_warning() {
    let c = parse(
        r#"{"Network":"10.5.0.1/16","EnableIPv6":true,"IPv6Network":"fc00::1/48","Backend":{"Type":"udp"}}"#,
    );
    assert_eq!(c.network, Some("10.5.0.0/16".parse().unwrap()));
    assert_eq!(c.ipv6_network, Some("fc00::/48".parse().unwrap()));
    assert_eq!(
        c.warnings,
        [
            "Network 10.5.0.1/16 has host bits set: using 10.5.0.0/16, as flannel does",
            "IPv6Network fc00::1/48 has host bits set: using fc00::/48, as flannel does",
        ]
    );
    assert_eq!(
        summary(&c),
        summary(&parse(
            r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"udp"}}"#
        ))
    );
    assert!(parse(r#"{"Network":"10.5.0.0/16"}"#).warnings.is_empty());
}

/// `FLANNEL_MTU` on an IPv6-only network is what its device carries over the IPv6
/// underlay: 20 bytes less for udp and vxlan, as their devices are; wireguard's 80 bytes
/// count an IPv6 header already; host-gw adds no header. Dual stack keeps IPv4's figure.
#[test]
fn containers_on_an_ipv6_only_network_get_the_ipv6_devices_mtu() {
    let v6_only = |backend: &str| {
        NetworkConfig::parse(&format!(
            r#"{{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{{"Type":"{backend}"}}}}"#
        ))
        .unwrap()
    };
    let got: Vec<_> = ["udp", "vxlan", "wireguard", "host-gw"]
        .iter()
        .map(|b| (v6_only(b).mtu(1500), v6_only(b).container_mtu(1500)))
        .collect();
    assert_eq!(
        got,
        [(1472, 1452), (1450, 1430), (1420, 1420), (1500, 1500)]
    );
    let dual = NetworkConfig::parse(
        r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#,
    )
    .unwrap();
    assert_eq!(dual.container_mtu(1500), 1450);
}
