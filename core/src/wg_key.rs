//! WireGuard keys as text, and the `BackendData` flannel's wireguard backend writes.
//!
//! A key is 32 bytes written as standard base64 with padding, 44 characters, as `wg
//! genkey`, `wg pubkey` and flannel's `wgtypes.Key.String` print it. flannel's lease
//! data is `{"PublicKey":"<key>","Port":51820}` (`wireguardLeaseAttrs`); leases of
//! flannel before the `Port` member have only `PublicKey`, and a peer's port then is
//! our own listen port, as flannel reads them.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::Value;

use crate::config::go_object_field;
use crate::lease::RawJson;

/// What is wrong with a key's text or with a lease's wireguard data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not base64 of exactly 32 bytes.
    #[error("not a WireGuard key (base64 of 32 bytes, 44 characters): {0}")]
    NotAKey(String),
    /// The lease data is not a JSON object with a string `PublicKey`.
    #[error("wireguard BackendData {data} has no PublicKey string")]
    NoPublicKey {
        /// The data, as written (cut to 100 characters).
        data: String,
    },
    /// The lease data's `Port` is not a port number.
    #[error("wireguard BackendData {data} has a Port that is not between 0 and 65535")]
    BadPort {
        /// The data, as written (cut to 100 characters).
        data: String,
    },
}

/// Decodes a key's text (surrounding whitespace allowed: a key file ends in a newline).
pub fn parse(text: &str) -> Result<[u8; 32], KeyError> {
    let text = text.trim();
    let bytes = STANDARD
        .decode(text)
        .map_err(|e| KeyError::NotAKey(e.to_string()))?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| KeyError::NotAKey(format!("{} bytes, not 32", bytes.len())))
}

/// A key's text.
pub fn format(key: &[u8; 32]) -> String {
    STANDARD.encode(key)
}

/// A peer's wireguard lease data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseData {
    /// Its public key.
    pub public_key: [u8; 32],
    /// Its listen port; `None` when the lease does not say (older flannel) or says 0.
    pub port: Option<u16>,
}

fn shown(data: &RawJson) -> String {
    data.get().chars().take(100).collect()
}

impl LeaseData {
    /// Reads `BackendData` (or `BackendV6Data`) as flannel's Go decoder would: keys
    /// matched case-insensitively, the last of duplicates winning.
    pub fn decode(data: &RawJson) -> Result<LeaseData, KeyError> {
        let no_key = || KeyError::NoPublicKey { data: shown(data) };
        let field = |key| go_object_field(data.get(), key).map_err(|_| no_key());
        let key = match field("PublicKey")?.map(|raw| serde_json::from_str(raw.get())) {
            Some(Ok(Value::String(s))) => parse(&s)?,
            _ => return Err(no_key()),
        };
        let port = match field("Port")?.map(|raw| serde_json::from_str::<Value>(raw.get())) {
            None | Some(Ok(Value::Null)) => None,
            Some(Ok(Value::Number(n))) => match n.as_u64().map(u16::try_from) {
                Some(Ok(0)) => None,
                Some(Ok(p)) => Some(p),
                _ => return Err(KeyError::BadPort { data: shown(data) }),
            },
            Some(_) => return Err(KeyError::BadPort { data: shown(data) }),
        };
        Ok(LeaseData {
            public_key: key,
            port,
        })
    }

    /// The data as flannel writes it: `{"PublicKey":"…","Port":51820}`.
    pub fn encode(&self) -> RawJson {
        let text = format!(
            r#"{{"PublicKey":"{}","Port":{}}}"#,
            format(&self.public_key),
            self.port.unwrap_or(0)
        );
        RawJson::new(&text).expect("base64 and a number make valid JSON")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "YIz1ZtVWyCmPq4zZzzgFAHaOwHcaqJn+9R+4NVhkE0k=";

    #[test]
    fn keys_round_trip_and_bad_ones_are_named() {
        let k = parse(&format!("{KEY}\n")).expect("a key");
        assert_eq!(format(&k), KEY);
        assert!(matches!(parse("abc"), Err(KeyError::NotAKey(_))));
        let short = STANDARD.encode([1u8; 31]);
        assert_eq!(
            parse(&short),
            Err(KeyError::NotAKey("31 bytes, not 32".into()))
        );
    }

    #[test]
    fn lease_data_is_flannels_and_older_leases_are_read() {
        let k = parse(KEY).unwrap();
        let data = LeaseData {
            public_key: k,
            port: Some(51820),
        };
        assert_eq!(
            data.encode().get(),
            format!(r#"{{"PublicKey":"{KEY}","Port":51820}}"#)
        );
        assert_eq!(LeaseData::decode(&data.encode()), Ok(data));
        let old = RawJson::new(&format!(r#"{{"publickey":"{KEY}"}}"#)).unwrap();
        assert_eq!(
            LeaseData::decode(&old),
            Ok(LeaseData {
                public_key: k,
                port: None
            })
        );
        for bad in [r#"{"VNI":1}"#, r#"{"PublicKey":7}"#, "[]", "null"] {
            let raw = RawJson::new(bad).unwrap();
            assert!(
                matches!(LeaseData::decode(&raw), Err(KeyError::NoPublicKey { .. })),
                "{bad}"
            );
        }
        let raw = RawJson::new(&format!(r#"{{"PublicKey":"{KEY}","Port":70000}}"#)).unwrap();
        assert!(matches!(
            LeaseData::decode(&raw),
            Err(KeyError::BadPort { .. })
        ));
    }
}
