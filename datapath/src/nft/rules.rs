//! The rule set of weft's table, as data: what flannel's masquerade and forward rules
//! mean, written for one nftables table of our own. Pure; `super` applies it.
//!
//! Masquerade (postrouting, at source-NAT priority), first match wins:
//! 1. packets kube-proxy marked for masquerading (`0x4000`) are left to kube-proxy, as
//!    flannel leaves them, so that they are not translated twice;
//! 2. overlay to overlay is never translated: our containers to others, others to ours,
//!    and traffic between two other subnets routed through us (flannel lists the first
//!    two only; one rule over the whole network covers all three);
//! 3. traffic from outside the overlay to our own subnet is left alone (a node port,
//!    DNAT-ed to one of our containers, must keep the client's address);
//! 4. the overlay leaving it is masqueraded, except multicast;
//! 5. the host's own traffic into other nodes' subnets is masqueraded, so that replies
//!    come back over the overlay to an address the peer can route.
//!
//! Forward (filter, at filter priority, policy accept): accept what comes from or goes
//! to the overlay network -- flannel's `FLANNEL-FWD` rules.
//!
//! The same five rules (and two) are written once for IPv4 and once for IPv6 when the
//! network has an IPv6 half; the table is `inet`, so one table holds both.

use std::borrow::Cow;
use std::collections::HashSet;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use nftables::batch::Batch;
use nftables::expr::{BinaryOperation, Expression, Meta, MetaKey, NamedExpression, Payload};
use nftables::expr::{PayloadField, Prefix};
use nftables::schema::{Chain, NfListObject, Nftables, Rule, Table};
use nftables::stmt::{Match, NATFlag, Operator, Statement, NAT};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

/// The table's name; its family is `inet`.
pub const TABLE: &str = "weft";
/// The masquerade chain.
pub const POSTROUTING: &str = "postrouting";
/// The forward chain.
pub const FORWARD: &str = "forward";
/// kube-proxy's "masquerade this" mark (flannel's `KubeProxyMark`).
const KUBE_PROXY_MARK: u32 = 0x4000;
/// nftables' `srcnat` and `filter` priorities.
const SRCNAT_PRIORITY: i32 = 100;
const FILTER_PRIORITY: i32 = 0;

/// What the table should hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSpec {
    /// The overlay's IPv4 network and our subnet of it.
    pub v4: Option<(Ipv4Net, Ipv4Net)>,
    /// The overlay's IPv6 network and our subnet of it.
    pub v6: Option<(Ipv6Net, Ipv6Net)>,
    /// Masquerade (`--ip-masq`).
    pub masquerade: bool,
    /// `masquerade fully-random` (flannel's default, unless
    /// `--ip-masq-fully-random-disable`).
    pub fully_random: bool,
    /// Forward accept rules (`--iptables-forward-rules`).
    pub forward: bool,
}

impl RuleSpec {
    /// Whether there is anything to install at all.
    pub fn is_empty(&self) -> bool {
        (!self.masquerade && !self.forward) || (self.v4.is_none() && self.v6.is_none())
    }
}

/// One address family's half of the rules.
struct Family {
    /// `ip` or `ip6`.
    protocol: &'static str,
    network: IpNet,
    subnet: IpNet,
    multicast: IpNet,
}

fn families(spec: &RuleSpec) -> Vec<Family> {
    let mut out = Vec::new();
    if let Some((network, subnet)) = spec.v4 {
        out.push(Family {
            protocol: "ip",
            network: IpNet::V4(network),
            subnet: IpNet::V4(subnet),
            multicast: IpNet::V4(Ipv4Net::new([224, 0, 0, 0].into(), 4).expect("a /4")),
        });
    }
    if let Some((network, subnet)) = spec.v6 {
        out.push(Family {
            protocol: "ip6",
            network: IpNet::V6(network),
            subnet: IpNet::V6(subnet),
            multicast: IpNet::V6(
                Ipv6Net::new([0xff00, 0, 0, 0, 0, 0, 0, 0].into(), 8).expect("a /8"),
            ),
        });
    }
    out
}

fn table() -> Table<'static> {
    Table {
        family: NfFamily::INet,
        name: Cow::Borrowed(TABLE),
        handle: None,
    }
}

fn base_chain(name: &'static str, kind: NfChainType, hook: NfHook, prio: i32) -> Chain<'static> {
    Chain {
        family: NfFamily::INet,
        table: Cow::Borrowed(TABLE),
        name: Cow::Borrowed(name),
        _type: Some(kind),
        hook: Some(hook),
        prio: Some(prio),
        policy: Some(NfChainPolicy::Accept),
        ..Chain::default()
    }
}

/// `PROTO saddr|daddr [!=] NET`.
fn addr(
    protocol: &'static str,
    field: &'static str,
    op: Operator,
    net: IpNet,
) -> Statement<'static> {
    Statement::Match(Match {
        left: Expression::Named(NamedExpression::Payload(Payload::PayloadField(
            PayloadField {
                protocol: Cow::Borrowed(protocol),
                field: Cow::Borrowed(field),
            },
        ))),
        right: Expression::Named(NamedExpression::Prefix(Prefix {
            addr: Box::new(Expression::String(Cow::Owned(net.network().to_string()))),
            len: u32::from(net.prefix_len()),
        })),
        op,
    })
}

fn rule(
    chain: &'static str,
    comment: &str,
    expr: Vec<Statement<'static>>,
) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family: NfFamily::INet,
        table: Cow::Borrowed(TABLE),
        chain: Cow::Borrowed(chain),
        expr: Cow::Owned(expr),
        comment: Some(Cow::Owned(comment.to_string())),
        ..Rule::default()
    })
}

fn masquerade(fully_random: bool) -> Statement<'static> {
    let flags = fully_random.then(|| HashSet::from([NATFlag::FullyRandom]));
    Statement::Masquerade(Some(NAT {
        addr: None,
        family: None,
        port: None,
        flags,
    }))
}

fn masquerade_rules(spec: &RuleSpec, batch: &mut Batch<'static>) {
    batch.add(NfListObject::Chain(base_chain(
        POSTROUTING,
        NfChainType::NAT,
        NfHook::Postrouting,
        SRCNAT_PRIORITY,
    )));
    let marked = Statement::Match(Match {
        left: Expression::BinaryOperation(Box::new(BinaryOperation::AND(
            Expression::Named(NamedExpression::Meta(Meta { key: MetaKey::Mark })),
            Expression::Number(KUBE_PROXY_MARK),
        ))),
        right: Expression::Number(KUBE_PROXY_MARK),
        op: Operator::EQ,
    });
    batch.add(rule(
        POSTROUTING,
        "weft: marked by kube-proxy, which masquerades it",
        vec![marked, Statement::Return(None)],
    ));
    for f in families(spec) {
        let p = f.protocol;
        batch.add(rule(
            POSTROUTING,
            &format!("weft: {p} overlay to overlay, never masqueraded"),
            vec![
                addr(p, "saddr", Operator::EQ, f.network),
                addr(p, "daddr", Operator::EQ, f.network),
                Statement::Return(None),
            ],
        ));
        batch.add(rule(
            POSTROUTING,
            &format!("weft: {p} outside to our subnet, not masqueraded"),
            vec![
                addr(p, "saddr", Operator::NEQ, f.network),
                addr(p, "daddr", Operator::EQ, f.subnet),
                Statement::Return(None),
            ],
        ));
        batch.add(rule(
            POSTROUTING,
            &format!("weft: {p} overlay leaving it, masqueraded (not multicast)"),
            vec![
                addr(p, "saddr", Operator::EQ, f.network),
                addr(p, "daddr", Operator::NEQ, f.multicast),
                masquerade(spec.fully_random),
            ],
        ));
        batch.add(rule(
            POSTROUTING,
            &format!("weft: {p} host to other subnets, masqueraded"),
            vec![
                addr(p, "saddr", Operator::NEQ, f.network),
                addr(p, "daddr", Operator::EQ, f.network),
                masquerade(spec.fully_random),
            ],
        ));
    }
}

fn forward_rules(spec: &RuleSpec, batch: &mut Batch<'static>) {
    batch.add(NfListObject::Chain(base_chain(
        FORWARD,
        NfChainType::Filter,
        NfHook::Forward,
        FILTER_PRIORITY,
    )));
    for f in families(spec) {
        let p = f.protocol;
        for field in ["saddr", "daddr"] {
            let dir = if field == "saddr" { "from" } else { "to" };
            batch.add(rule(
                FORWARD,
                &format!("weft: {p} forwarded {dir} the overlay, accepted"),
                vec![
                    addr(p, field, Operator::EQ, f.network),
                    Statement::Accept(None),
                ],
            ));
        }
    }
}

/// One nft transaction that replaces the table with `spec`'s, atomically: nft applies
/// a JSON batch as one netlink transaction, so the old rules stay until the new ones
/// are all accepted, and a refused rule leaves the old table as it was. `add table`
/// first makes `delete table` safe when there is none.
pub fn replace(spec: &RuleSpec) -> Nftables<'static> {
    let mut batch = Batch::new();
    batch.add(NfListObject::Table(table()));
    batch.delete(NfListObject::Table(table()));
    batch.add(NfListObject::Table(table()));
    if spec.masquerade {
        masquerade_rules(spec, &mut batch);
    }
    if spec.forward {
        forward_rules(spec, &mut batch);
    }
    batch.to_nftables()
}

/// One nft transaction that removes the table, whether or not it exists.
pub fn remove() -> Nftables<'static> {
    let mut batch = Batch::new();
    batch.add(NfListObject::Table(table()));
    batch.delete(NfListObject::Table(table()));
    batch.to_nftables()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RuleSpec {
        RuleSpec {
            v4: Some((
                "10.5.0.0/16".parse().unwrap(),
                "10.5.7.0/24".parse().unwrap(),
            )),
            v6: Some((
                "fc00::/48".parse().unwrap(),
                "fc00:0:0:7::/64".parse().unwrap(),
            )),
            masquerade: true,
            fully_random: true,
            forward: true,
        }
    }

    fn rules_of(n: &Nftables<'_>) -> Vec<(String, String)> {
        let v = serde_json::to_value(n).unwrap();
        v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o["add"]["rule"].as_object())
            .map(|r| {
                (
                    r["chain"].as_str().unwrap().to_string(),
                    serde_json::to_string(&r["expr"]).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn the_table_is_replaced_in_one_batch_and_holds_both_families() {
        let n = replace(&spec());
        let v = serde_json::to_value(&n).unwrap();
        let cmds: Vec<String> = v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                let (cmd, obj) = o.as_object().unwrap().iter().next().unwrap();
                let (kind, _) = obj.as_object().unwrap().iter().next().unwrap();
                format!("{cmd} {kind}")
            })
            .collect();
        assert_eq!(&cmds[..3], ["add table", "delete table", "add table"]);
        let rules = rules_of(&n);
        // The mark rule, four masquerade rules and two forward rules per family.
        assert_eq!(rules.len(), 1 + 4 * 2 + 2 * 2, "{rules:#?}");
        assert_eq!(rules.iter().filter(|(c, _)| c == POSTROUTING).count(), 9);
        let ip6: Vec<_> = rules
            .iter()
            .filter(|(_, e)| e.contains("\"ip6\""))
            .collect();
        assert_eq!(ip6.len(), 6);
        assert!(rules.iter().any(|(_, e)| e.contains("ff00::")));
        assert!(rules.iter().any(|(_, e)| e.contains("224.0.0.0")));
    }

    #[test]
    fn overlay_to_overlay_returns_before_any_masquerade() {
        let rules = rules_of(&replace(&spec()));
        let pos = |needle: &str| rules.iter().position(|(_, e)| e.contains(needle)).unwrap();
        let first_masq = pos("masquerade");
        let overlay = rules
            .iter()
            .position(|(_, e)| e.matches("10.5.0.0").count() == 2 && e.contains("return"))
            .expect("a rule overlay -> overlay: return");
        assert!(overlay < first_masq);
        assert!(rules[first_masq].1.contains("fully-random"));
    }

    #[test]
    fn flags_choose_the_chains() {
        let mut s = spec();
        s.masquerade = false;
        assert!(rules_of(&replace(&s)).iter().all(|(c, _)| c == FORWARD));
        s.forward = false;
        assert!(s.is_empty());
        assert!(rules_of(&replace(&s)).is_empty());
        s.masquerade = true;
        s.fully_random = false;
        let rules = rules_of(&replace(&s));
        assert!(rules.iter().all(|(c, _)| c == POSTROUTING));
        assert!(!rules.iter().any(|(_, e)| e.contains("fully-random")));
        s.v6 = None;
        assert!(!rules_of(&replace(&s))
            .iter()
            .any(|(_, e)| e.contains("ip6")));
    }

    #[test]
    fn remove_is_add_then_delete() {
        let v = serde_json::to_value(remove()).unwrap();
        let objs = v["nftables"].as_array().unwrap();
        assert_eq!(objs.len(), 2);
        assert_eq!(objs[1]["delete"]["table"]["name"], TABLE);
        assert_eq!(objs[1]["delete"]["table"]["family"], "inet");
    }
}
