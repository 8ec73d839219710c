use super::*;

const GOOD: &str = r#"
name = "t"
duration = "10s"
[network]
config = { Network = "10.5.0.0/16", Backend = { Type = "udp" } }
lease_ttl = "1m"
renew_margin = "10s"
[[node]]
name = "a"
ip = "192.0.2.1"
[[node]]
name = "b"
ip = "192.0.2.2"
containers = ["web", "db"]
[[step]]
do = "ping"
at = "1s"
from = "a"
to = "b/db"
within = "2s"
"#;

#[test]
fn a_good_file_parses() {
    let s = parse("good.toml", GOOD).unwrap();
    assert_eq!(s.nodes.len(), 2);
    assert_eq!(s.steps.len(), 1);
    assert_eq!(s.network.network_config().unwrap().subnet_len, 24);
}

fn error(text: &str) -> String {
    parse("bad.toml", text).unwrap_err().to_string()
}

#[test]
fn bad_files_name_the_line_and_what_was_expected() {
    let unknown_key = GOOD.replace("within = \"2s\"", "within = \"2s\"\ncolour = 1");
    assert_eq!(
        error(&unknown_key),
        r#"bad.toml:15:1: unknown field `colour`, expected one of `at`, `from`, `to`, `within`, `expect`"#
    );
    let bad_time = GOOD.replace("at = \"1s\"", "at = \"soon\"");
    assert_eq!(
        error(&bad_time),
        r#"bad.toml:15:1: "soon" is not a duration (want e.g. 250ms, 1.5s, 10m, 2h, 1d)"#
    );
    let late = GOOD.replace("at = \"1s\"", "at = \"1h\"");
    assert_eq!(
        error(&late),
        r#"bad.toml:15:1: at = 1h is after the end of the scenario (duration = 10s)"#
    );
    let unknown_node = GOOD.replace("to = \"b/db\"", "to = \"c\"");
    assert_eq!(
        error(&unknown_node),
        r#"bad.toml:15:1: unknown node "c" (the nodes are: a, b)"#
    );
    let unknown_container = GOOD.replace("to = \"b/db\"", "to = \"b/cache\"");
    assert_eq!(
        error(&unknown_container),
        r#"bad.toml:15:1: node "b" has no container "cache""#
    );
    let bad_config = GOOD.replace("10.5.0.0/16", "10.5.0.0/30");
    assert_eq!(
        error(&bad_config),
        r#"bad.toml:5:10: network config: Network 10.5.0.0/30 is invalid: the prefix must be at most /28 to hold four subnets"#
    );
    let bad_action = GOOD.replace("do = \"ping\"", "do = \"dance\"");
    assert_eq!(
        error(&bad_action),
        r#"bad.toml:16:6: unknown variant `dance`, expected one of `start`, `stop`, `crash`, `restart`, `partition`, `heal`, `faults`, `store_outage`, `store_recover`, `clock_jump`, `ping`, `tcp`, `delete_lease`, `reserve`, `compact`, `spoof`, `put`, `change_ip`, `set_config`, `delete_config`"#
    );
}
