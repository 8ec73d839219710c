//! Leases: the key and value codecs, byte-compatible with flannel.
//!
//! A lease key names the subnet (`10.5.34.0-24`, dual stack `10.5.34.0-24&fc00::-64`);
//! the value is flannel's `LeaseAttrs` JSON. `BackendData` is kept as the exact JSON text
//! it was written with, so another backend's data round-trips untouched.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::config::BackendType;
use crate::store::{Entry, Revision};
use crate::time::Timestamp;

/// Why a lease key or value could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// The key is not of the form `A.B.C.D-LEN` or `A.B.C.D-LEN&V6ADDR-LEN`.
    #[error("lease key {key:?} is not a subnet key (want e.g. 10.5.34.0-24 or 10.5.34.0-24&fc00::-64): {reason}")]
    BadKey {
        /// The key as found (without the store prefix).
        key: String,
        /// What was wrong.
        reason: String,
    },
    /// The value is not flannel's lease JSON.
    #[error("lease value of {key} is not valid lease JSON: {reason}")]
    BadValue {
        /// The key whose value failed.
        key: String,
        /// serde's description of the problem.
        reason: String,
    },
    /// The key names a subnet of another size than the network's subnets.
    #[error("lease {key} is not of the network's subnet length /{want}")]
    WrongSize {
        /// The key (without the store prefix).
        key: String,
        /// The network's subnet length (of the family that is wrong).
        want: u8,
    },
    /// The key names a subnet outside the overlay network.
    #[error("lease {key} is outside the network {network}")]
    OutsideNetwork {
        /// The key (without the store prefix).
        key: String,
        /// The network it should lie in.
        network: IpNet,
    },
}

/// The subnet(s) a lease is for: its key.
///
/// At least one family is set (the parser and the constructors see to it). flannel writes
/// an IPv6-only lease's key with the empty IPv4 net in front, `0.0.0.0-0&fc00::-64`
/// (pkg/subnet/subnet.go:62-68 `MakeSubnetKey` formats the zero `ip.IP4Net`); here that
/// is `ipv4: None`, so no code can mistake it for a /0 that overlaps every IPv4 subnet
/// (flannel's own allocator does: pkg/subnet/etcd/local_manager.go:241-248).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaseKey {
    /// The IPv4 subnet; `None` for an IPv6-only lease.
    pub ipv4: Option<Ipv4Net>,
    /// The IPv6 subnet, for dual-stack and IPv6-only leases.
    pub ipv6: Option<Ipv6Net>,
}

/// flannel's key part for "no IPv4 subnet": the zero `ip.IP4Net`.
const NO_IPV4: &str = "0.0.0.0-0";

impl LeaseKey {
    /// A key for an IPv4-only lease.
    pub fn v4(ipv4: Ipv4Net) -> Self {
        LeaseKey {
            ipv4: Some(ipv4),
            ipv6: None,
        }
    }

    /// A key for a dual-stack lease.
    pub fn dual(ipv4: Ipv4Net, ipv6: Ipv6Net) -> Self {
        LeaseKey {
            ipv4: Some(ipv4),
            ipv6: Some(ipv6),
        }
    }

    /// A key for an IPv6-only lease (`0.0.0.0-0&fc00::-64` in the store).
    pub fn v6(ipv6: Ipv6Net) -> Self {
        LeaseKey {
            ipv4: None,
            ipv6: Some(ipv6),
        }
    }

    /// The IPv4 subnet as an `IpNet`, if the lease has one.
    pub fn ipv4_net(&self) -> Option<IpNet> {
        self.ipv4.map(IpNet::V4)
    }

    /// The subnet that names the lease in logs and traces: the IPv4 one, else the IPv6
    /// one.
    pub fn primary(&self) -> IpNet {
        match (self.ipv4, self.ipv6) {
            (Some(v4), _) => IpNet::V4(v4),
            (None, Some(v6)) => IpNet::V6(v6),
            // Never built (see the type's invariant); flannel's empty net stands in.
            (None, None) => IpNet::V4(Ipv4Net::default()),
        }
    }
}

impl fmt::Display for LeaseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ipv4 {
            Some(v4) => write!(f, "{}-{}", v4.network(), v4.prefix_len())?,
            None => f.write_str(NO_IPV4)?,
        }
        if let Some(v6) = self.ipv6 {
            write!(f, "&{}-{}", v6.network(), v6.prefix_len())?;
        }
        Ok(())
    }
}

fn parse_part<A: FromStr>(key: &str, part: &str, max_len: u8) -> Result<(A, u8), LeaseError> {
    let bad = |reason: String| LeaseError::BadKey {
        key: key.to_string(),
        reason,
    };
    let (addr, len) = part
        .rsplit_once('-')
        .ok_or_else(|| bad(format!("{part:?} has no '-LEN'")))?;
    let addr = addr
        .parse::<A>()
        .map_err(|_| bad(format!("{addr:?} is not an address")))?;
    let len: u8 = len
        .parse()
        .map_err(|_| bad(format!("{len:?} is not a prefix length")))?;
    if len > max_len {
        return Err(bad(format!("prefix length {len} exceeds {max_len}")));
    }
    Ok((addr, len))
}

impl FromStr for LeaseKey {
    type Err = LeaseError;

    fn from_str(key: &str) -> Result<Self, LeaseError> {
        let bad = |reason: &str| LeaseError::BadKey {
            key: key.to_string(),
            reason: reason.to_string(),
        };
        let (v4, v6) = match key.split_once('&') {
            Some((v4, v6)) => (v4, Some(v6)),
            None => (key, None),
        };
        let ipv4 = if v4 == NO_IPV4 {
            // flannel's IPv6-only key; alone it names no subnet at all.
            if v6.is_none() {
                return Err(bad(
                    "0.0.0.0-0 (no IPv4 subnet) needs an IPv6 subnet after '&'",
                ));
            }
            None
        } else {
            let (addr, len) = parse_part::<Ipv4Addr>(key, v4, 32)?;
            let ipv4 = Ipv4Net::new(addr, len).map_err(|_| bad("bad IPv4 prefix"))?;
            if ipv4.network() != addr {
                return Err(bad("IPv4 address is not the subnet's network address"));
            }
            Some(ipv4)
        };
        let ipv6 = match v6 {
            None => None,
            Some(v6) => {
                let (addr, len) = parse_part::<Ipv6Addr>(key, v6, 128)?;
                let net = Ipv6Net::new(addr, len).map_err(|_| bad("bad IPv6 prefix"))?;
                if net.network() != addr {
                    return Err(bad("IPv6 address is not the subnet's network address"));
                }
                Some(net)
            }
        };
        Ok(LeaseKey { ipv4, ipv6 })
    }
}

/// A JSON document kept exactly as written (flannel's `json.RawMessage`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RawJson(Box<RawValue>);

impl RawJson {
    /// Wraps a JSON text; fails if it is not valid JSON.
    pub fn new(text: &str) -> Result<Self, serde_json::Error> {
        RawValue::from_string(text.to_string()).map(RawJson)
    }

    /// The JSON text as written.
    pub fn get(&self) -> &str {
        self.0.get()
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl Eq for RawJson {}

/// flannel's `LeaseAttrs`: what a lease says about the node holding it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseAttrs {
    /// The node's public (underlay) IPv4 address.
    #[serde(rename = "PublicIP")]
    pub public_ip: Ipv4Addr,
    /// The node's public IPv6 address; flannel writes `null` when there is none.
    #[serde(rename = "PublicIPv6", default)]
    pub public_ipv6: Option<Ipv6Addr>,
    /// The backend that wrote the lease (`udp`, `vxlan`, `host-gw`, `alloc`...).
    #[serde(
        rename = "BackendType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub backend_type: Option<String>,
    /// Backend-specific data, kept verbatim.
    #[serde(
        rename = "BackendData",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub backend_data: Option<RawJson>,
    /// Backend-specific IPv6 data, kept verbatim.
    #[serde(
        rename = "BackendV6Data",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub backend_v6_data: Option<RawJson>,
}

impl LeaseAttrs {
    /// Attributes of a node with public IP `public_ip` running `backend`, with the
    /// `BackendType` flanneld records for it (none for udp and alloc).
    pub fn new(public_ip: Ipv4Addr, backend: BackendType) -> Self {
        LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: backend.lease_type().map(str::to_string),
            backend_data: None,
            backend_v6_data: None,
        }
    }

    /// Decodes a stored value; `key` only names the lease in the error.
    pub fn decode(key: &str, value: &[u8]) -> Result<Self, LeaseError> {
        serde_json::from_slice(value).map_err(|e| LeaseError::BadValue {
            key: key.to_string(),
            reason: e.to_string(),
        })
    }

    /// Encodes as flannel does: `{"PublicIP":"192.0.2.2","PublicIPv6":null,...}`.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("lease attrs always serialize")
    }
}

/// A decoded lease as read from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The subnet(s).
    pub key: LeaseKey,
    /// What the holder says about itself.
    pub attrs: LeaseAttrs,
    /// When it expires; `None` for a reservation.
    pub expires_at: Option<Timestamp>,
    /// The store revision at which this incarnation was created.
    pub create_revision: Revision,
    /// The store revision of its last change.
    pub mod_revision: Revision,
}

impl Lease {
    /// Decodes a store entry found under `subnets_prefix`.
    pub fn from_entry(subnets_prefix: &str, entry: &Entry) -> Result<Self, LeaseError> {
        let name = entry
            .key
            .strip_prefix(subnets_prefix)
            .ok_or_else(|| LeaseError::BadKey {
                key: entry.key.clone(),
                reason: format!("not under {subnets_prefix}"),
            })?;
        let key: LeaseKey = name.parse()?;
        let attrs = LeaseAttrs::decode(&entry.key, &entry.value)?;
        Ok(Lease {
            key,
            attrs,
            expires_at: entry.expires_at,
            create_revision: entry.create_revision,
            mod_revision: entry.mod_revision,
        })
    }

    /// Whether this is a reservation (no TTL).
    pub fn is_reservation(&self) -> bool {
        self.expires_at.is_none()
    }
}

/// A store entry that is not a valid lease, with the reason; listings skip these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The full store key.
    pub key: String,
    /// Why it was skipped.
    pub error: LeaseError,
}

/// Decodes every entry of a listing under `subnets_prefix`, keeping the good leases and
/// reporting the rest instead of failing: someone else's garbage must not stop a node.
pub fn decode_all<'a>(
    subnets_prefix: &str,
    entries: impl IntoIterator<Item = &'a Entry>,
) -> (Vec<Lease>, Vec<Skipped>) {
    let mut leases = Vec::new();
    let mut skipped = Vec::new();
    for entry in entries {
        match Lease::from_entry(subnets_prefix, entry) {
            Ok(lease) => leases.push(lease),
            Err(error) => skipped.push(Skipped {
                key: entry.key.clone(),
                error,
            }),
        }
    }
    (leases, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_round_trips() {
        for k in [
            "10.5.34.0-24",
            "10.5.34.0-24&fc00::-64",
            "10.244.0.0-16",
            "0.0.0.0-0&fc00:0:0:5::-64",
        ] {
            let key: LeaseKey = k.parse().unwrap();
            assert_eq!(key.to_string(), k);
        }
    }

    #[test]
    fn an_ipv6_only_key_is_flannels_empty_ipv4_net_and_an_ipv6_subnet() {
        // flannel's MakeSubnetKey(ip.IP4Net{}, sn6) (pkg/subnet/subnet.go:62-68).
        let v6: Ipv6Net = "fc00:0:0:5::/64".parse().unwrap();
        let key = LeaseKey::v6(v6);
        assert_eq!(key.to_string(), "0.0.0.0-0&fc00:0:0:5::-64");
        let parsed: LeaseKey = "0.0.0.0-0&fc00:0:0:5::-64".parse().unwrap();
        assert_eq!(parsed, key);
        assert_eq!(parsed.ipv4, None);
        assert_eq!(parsed.primary(), IpNet::V6(v6));
    }

    #[test]
    fn bad_keys_are_errors() {
        for k in [
            "",
            "config",
            "10.5.34.0",
            "10.5.34.0-33",
            "10.5.34.1-24",
            "10.5.34.0-24&zz-64",
            "10.5.34.0-x",
            "0.0.0.0-0",
            "0.0.0.0-0&",
        ] {
            let err = k.parse::<LeaseKey>().unwrap_err();
            assert!(matches!(err, LeaseError::BadKey { .. }), "{k}: {err}");
        }
    }

    #[test]
    fn value_matches_flannel_bytes() {
        let flannel = r#"{"PublicIP":"192.0.2.2","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"ee:dd:0b:59:5b:58"}}"#;
        let attrs = LeaseAttrs::decode("k", flannel.as_bytes()).unwrap();
        assert_eq!(attrs.public_ip, Ipv4Addr::new(192, 0, 2, 2));
        assert_eq!(
            attrs.backend_data.as_ref().unwrap().get(),
            r#"{"VNI":1,"VtepMAC":"ee:dd:0b:59:5b:58"}"#
        );
        assert_eq!(String::from_utf8(attrs.encode()).unwrap(), flannel);
    }

    #[test]
    fn old_udp_value_decodes() {
        let attrs = LeaseAttrs::decode("k", br#"{"PublicIP":"192.0.2.1"}"#).unwrap();
        assert_eq!(attrs.public_ip, Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(attrs.backend_type, None);
    }

    #[test]
    fn garbage_value_is_an_error_not_a_panic() {
        for v in [
            &b"not json"[..],
            b"{}",
            b"{\"PublicIP\":7}",
            b"\xff\xfe",
            b"",
        ] {
            assert!(LeaseAttrs::decode("k", v).is_err());
        }
    }
}
