//! The JSON layer: the config decoded as Go's `encoding/json` would decode it into
//! flannel's structs, before any of flannel's checks or defaults.
//!
//! serde_json's `Value` keeps neither member order nor duplicates, and Go's decoder
//! depends on both, so objects are read as [`Members`] and each field is decoded from the
//! raw text of every member whose key matches it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

use super::ConfigError;

/// The top-level fields as decoded, before flannel's checks and defaults.
#[derive(Debug)]
pub(super) struct Fields {
    pub(super) enable_ipv4: bool,
    pub(super) enable_ipv6: bool,
    pub(super) network: Option<Ipv4Net>,
    pub(super) ipv6_network: Option<Ipv6Net>,
    pub(super) subnet_len: u64,
    pub(super) ipv6_subnet_len: u64,
    pub(super) subnet_min: Option<Ipv4Addr>,
    pub(super) subnet_max: Option<Ipv4Addr>,
    pub(super) ipv6_subnet_min: Option<Ipv6Addr>,
    pub(super) ipv6_subnet_max: Option<Ipv6Addr>,
    pub(super) backend: Option<Backend>,
}

/// The `Backend` object as decoded, before its type is resolved.
#[derive(Debug)]
pub(super) struct Backend {
    pub(super) type_name: String,
    pub(super) members: Members,
    pub(super) raw: Value,
}

impl Fields {
    /// Decodes every field flannel's Go struct has, as `json.Unmarshal` would: a field
    /// of the wrong type is an error even when its address family is disabled.
    pub(super) fn decode(m: &Members) -> Result<Self, ConfigError> {
        Ok(Fields {
            enable_ipv4: m
                .field("EnableIPv4", "EnableIPv4", bool_of)?
                .unwrap_or(true),
            enable_ipv6: m
                .field("EnableIPv6", "EnableIPv6", bool_of)?
                .unwrap_or(false),
            network: m.field("Network", "Network", ipv4_net_of)?,
            ipv6_network: m.field("IPv6Network", "IPv6Network", ipv6_net_of)?,
            subnet_len: m.field("SubnetLen", "SubnetLen", uint_of)?.unwrap_or(0),
            ipv6_subnet_len: m
                .field("IPv6SubnetLen", "IPv6SubnetLen", uint_of)?
                .unwrap_or(0),
            subnet_min: m.field("SubnetMin", "SubnetMin", ipv4_addr_of)?,
            subnet_max: m.field("SubnetMax", "SubnetMax", ipv4_addr_of)?,
            // Go decodes these into pointers, so a later `null` clears an earlier value.
            ipv6_subnet_min: m.pointer_field("IPv6SubnetMin", ipv6_addr_of)?,
            ipv6_subnet_max: m.pointer_field("IPv6SubnetMax", ipv6_addr_of)?,
            backend: m.last("Backend").map(Backend::decode).transpose()?,
        })
    }
}

impl Backend {
    /// What flannel's `ParseConfig` checks: an object (or `null`) with a string `Type`.
    fn decode(text: &RawValue) -> Result<Self, ConfigError> {
        let raw = value_of(text)?;
        let members = match &raw {
            // From the text: `raw` has lost the members' order and duplicates.
            Value::Object(_) => Members::parse(text.get())?,
            Value::Null => Members::default(),
            other => {
                return Err(wrong_type(
                    "Backend",
                    other,
                    r#"an object such as {"Type": "vxlan"}"#,
                ))
            }
        };
        let type_name = members
            .field("Type", "Backend.Type", string_of)?
            .unwrap_or_default();
        Ok(Backend {
            type_name,
            members,
            raw,
        })
    }
}

/// A JSON object's members in document order, duplicates kept.
///
/// Go's decoder matches keys case-insensitively and lets each member overwrite what an
/// earlier one set; serde_json's `Map` keeps neither the order nor the duplicates.
#[derive(Debug, Default)]
pub(super) struct Members(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;
        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Members, M::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(MembersVisitor)
    }
}

/// The member `key` of the JSON object `text` as Go's `json.Unmarshal` fills a struct
/// field: the last member whose key matches Go's case-insensitive rule, verbatim;
/// `Ok(None)` when none does. An error when `text` is not an object. For decoders of
/// flannel's JSON outside the config (a peer's `BackendData`).
pub fn go_object_field(text: &str, key: &str) -> Result<Option<Box<RawValue>>, serde_json::Error> {
    let members: Members = serde_json::from_str(text)?;
    Ok(members
        .0
        .into_iter()
        .rev()
        .find(|(k, _)| go_key_matches(k, key))
        .map(|(_, v)| v))
}

impl Members {
    pub(super) fn parse(text: &str) -> Result<Self, ConfigError> {
        serde_json::from_str(text).map_err(json_error)
    }

    /// The values given for `key`, in order.
    fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a RawValue> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| go_key_matches(k, key))
            .map(|(_, v)| &**v)
    }

    fn last<'a>(&'a self, key: &'a str) -> Option<&'a RawValue> {
        self.all(key).last()
    }

    /// A plain (non-pointer) Go field: every value must decode, and `null` (decoded to
    /// `None`) leaves the field as it was.
    pub(super) fn field<T>(
        &self,
        key: &str,
        label: &'static str,
        decode: fn(&'static str, &Value) -> Result<Option<T>, ConfigError>,
    ) -> Result<Option<T>, ConfigError> {
        let mut out = None;
        for raw in self.all(key) {
            if let Some(v) = decode(label, &value_of(raw)?)? {
                out = Some(v);
            }
        }
        Ok(out)
    }

    /// A Go pointer field: `null` resets it.
    fn pointer_field<T>(
        &self,
        key: &'static str,
        decode: fn(&'static str, &Value) -> Result<Option<T>, ConfigError>,
    ) -> Result<Option<T>, ConfigError> {
        let mut out = None;
        for raw in self.all(key) {
            out = decode(key, &value_of(raw)?)?;
        }
        Ok(out)
    }
}

/// Go's `encoding/json` key match: equal under Unicode case folding. The field names are
/// ASCII, and the only non-ASCII characters that fold to ASCII letters are `ſ` (to s)
/// and the Kelvin sign (to k).
pub(super) fn go_key_matches(key: &str, field: &str) -> bool {
    let fold = |c: char| match c {
        '\u{17F}' => 's',
        '\u{212A}' => 'k',
        c => c.to_ascii_lowercase(),
    };
    key.chars().map(fold).eq(field.chars().map(fold))
}

pub(super) fn json_error(e: serde_json::Error) -> ConfigError {
    ConfigError::Json(e.to_string())
}

fn value_of(raw: &RawValue) -> Result<Value, ConfigError> {
    serde_json::from_str(raw.get()).map_err(json_error)
}

pub(super) fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The value as written, cut short so that one bad field cannot flood a log line.
fn shown(v: &Value) -> String {
    const LIMIT: usize = 60;
    let text = v.to_string();
    match text.char_indices().nth(LIMIT) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text,
    }
}

fn wrong_type(field: &'static str, v: &Value, expected: &'static str) -> ConfigError {
    ConfigError::WrongType {
        field,
        value: shown(v),
        expected,
        found: json_type(v),
    }
}

fn invalid(field: &'static str, v: &Value, expected: &'static str) -> ConfigError {
    ConfigError::InvalidValue {
        field,
        value: shown(v),
        expected,
    }
}

pub(super) fn bool_of(field: &'static str, v: &Value) -> Result<Option<bool>, ConfigError> {
    match v {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(*b)),
        other => Err(wrong_type(field, other, "true or false")),
    }
}

pub(super) fn string_of(field: &'static str, v: &Value) -> Result<Option<String>, ConfigError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        other => Err(wrong_type(field, other, "a string")),
    }
}

/// Go's `uint`.
fn uint_of(field: &'static str, v: &Value) -> Result<Option<u64>, ConfigError> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| invalid(field, v, "a non-negative integer")),
        other => Err(wrong_type(field, other, "a non-negative integer")),
    }
}

/// Go's `int`.
pub(super) fn int_of(field: &'static str, v: &Value) -> Result<Option<i128>, ConfigError> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_i64()
            .map(i128::from)
            .or(n.as_u64().map(i128::from))
            .map(Some)
            .ok_or_else(|| invalid(field, v, "an integer")),
        other => Err(wrong_type(field, other, "an integer")),
    }
}

const IPV4_CIDR: &str = "an IPv4 CIDR such as \"10.5.0.0/16\"";
const IPV6_CIDR: &str = "an IPv6 CIDR such as \"fc00::/48\"";

/// flannel's `IP4Net`: Go hands it `null` too, which does not parse.
fn ipv4_net_of(field: &'static str, v: &Value) -> Result<Option<Ipv4Net>, ConfigError> {
    let Value::String(s) = v else {
        return Err(wrong_type(field, v, IPV4_CIDR));
    };
    match s.parse::<IpNet>() {
        Ok(IpNet::V4(net)) => Ok(Some(net)),
        _ => Err(invalid(field, v, IPV4_CIDR)),
    }
}

fn ipv6_net_of(field: &'static str, v: &Value) -> Result<Option<Ipv6Net>, ConfigError> {
    let Value::String(s) = v else {
        return Err(wrong_type(field, v, IPV6_CIDR));
    };
    match s.parse::<IpNet>() {
        Ok(IpNet::V6(net)) => Ok(Some(net)),
        _ => Err(invalid(field, v, IPV6_CIDR)),
    }
}

/// flannel's `IP4`: Go's `net.ParseIP` then `To4`, so `::ffff:10.5.1.0` is accepted
/// as `10.5.1.0`.
fn ipv4_addr_of(field: &'static str, v: &Value) -> Result<Option<Ipv4Addr>, ConfigError> {
    const EXPECTED: &str = "an IPv4 address such as \"10.5.1.0\"";
    let Value::String(s) = v else {
        return Err(wrong_type(field, v, EXPECTED));
    };
    match s.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => Ok(Some(a)),
        Ok(IpAddr::V6(a)) => a
            .to_ipv4_mapped()
            .map(Some)
            .ok_or_else(|| invalid(field, v, EXPECTED)),
        Err(_) => Err(invalid(field, v, EXPECTED)),
    }
}

/// flannel's `*IP6`: `null` is "not set", and an IPv4 address becomes `::ffff:a.b.c.d`.
fn ipv6_addr_of(field: &'static str, v: &Value) -> Result<Option<Ipv6Addr>, ConfigError> {
    const EXPECTED: &str = "an IPv6 address such as \"fc00:0:0:1::\"";
    match v {
        Value::Null => Ok(None),
        Value::String(s) => match s.parse::<IpAddr>() {
            Ok(IpAddr::V6(a)) => Ok(Some(a)),
            Ok(IpAddr::V4(a)) => Ok(Some(a.to_ipv6_mapped())),
            Err(_) => Err(invalid(field, v, EXPECTED)),
        },
        other => Err(wrong_type(field, other, EXPECTED)),
    }
}
