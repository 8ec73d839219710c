//! Masquerade and forward rules: one nftables table of weft's own, `inet weft`.
//!
//! flannel adds its rules to iptables' chains and re-checks them one by one; weft keeps
//! every rule in a table no one else writes to, so that installing is one atomic
//! replacement of the table, checking is one listing compared with what was installed,
//! and cleaning up is deleting the table. [`rules`] says what the table holds; this
//! file runs `nft -j` (Debian's `nftables`) through the `nftables` crate, which builds
//! the JSON batch from typed values, in the node's network namespace.
//!
//! A limit of any nftables table, flannel's own nftables mode included: an `accept` in
//! our forward chain ends only our chain, so a `drop` policy in another table's forward
//! chain (Docker's, through iptables-nft) still drops. Our forward rules open the way
//! where nothing else closes it; they cannot overrule another table.

pub mod rules;

use std::path::PathBuf;
use std::time::Duration;

use nftables::helper::{self, NftablesError};
use nftables::schema::Nftables;
use serde_json::Value;
use weft_core::config::NetworkConfig;
use weft_core::lease::LeaseKey;

pub use rules::{RuleSpec, TABLE};

/// Why nft could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NftError {
    /// The `nft` program is not installed (or not on `PATH`).
    #[error(
        "cannot {what}: the nft program is missing (install Debian's nftables package): {cause}"
    )]
    Missing {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        cause: String,
    },
    /// nft ran and refused (the kernel lacks nf_tables or NAT, we are not root...).
    #[error("cannot {what}: nft refused: {stderr}")]
    Refused {
        /// What was being done.
        what: &'static str,
        /// nft's own words.
        stderr: String,
    },
    /// nft could not be run or its answer not read.
    #[error("cannot {what}: {cause}")]
    Run {
        /// What was being done.
        what: &'static str,
        /// The cause.
        cause: String,
    },
}

fn nft_error(what: &'static str, e: NftablesError) -> NftError {
    match e {
        NftablesError::NftExecution { inner, .. }
            if inner.kind() == std::io::ErrorKind::NotFound =>
        {
            NftError::Missing {
                what,
                cause: inner.to_string(),
            }
        }
        NftablesError::NftFailed { stderr, .. } => NftError::Refused {
            what,
            stderr: stderr.trim().to_string(),
        },
        other => NftError::Run {
            what,
            cause: other.to_string(),
        },
    }
}

/// What the daemon's flags ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallSettings {
    /// `--ip-masq`: masquerade the overlay's traffic leaving it.
    pub ip_masq: bool,
    /// `--ip-masq-fully-random-disable` turns this off.
    pub fully_random: bool,
    /// `--iptables-forward-rules`: accept forwarding to and from the overlay.
    pub forward_rules: bool,
    /// `--iptables-resync`: how often the table is checked and restored.
    pub resync: Duration,
}

impl FirewallSettings {
    /// No rules at all (the lab, tests).
    pub fn none() -> Self {
        FirewallSettings {
            ip_masq: false,
            fully_random: true,
            forward_rules: false,
            resync: Duration::from_secs(5),
        }
    }
}

/// What a resync found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resync {
    /// Nothing installed yet, or nothing to install.
    Idle,
    /// The table is as installed.
    Intact,
    /// The table was missing or changed, and was put back.
    Restored,
}

/// weft's table in one network namespace: what it should hold, and what nft listed
/// right after installing it, to compare later listings with.
#[derive(Debug)]
pub struct Firewall {
    netns: Option<PathBuf>,
    settings: FirewallSettings,
    network: (Option<ipnet::Ipv4Net>, Option<ipnet::Ipv6Net>),
    installed: Option<(RuleSpec, Value)>,
}

impl Firewall {
    /// The table for a node of `network` in `netns` (`None`: ours), nothing installed.
    pub fn new(
        netns: Option<PathBuf>,
        settings: FirewallSettings,
        network: &NetworkConfig,
    ) -> Self {
        Firewall {
            netns,
            settings,
            network: (network.network, network.ipv6_network),
            installed: None,
        }
    }

    /// Whether the flags ask for any rule.
    pub fn enabled(&self) -> bool {
        self.settings.ip_masq || self.settings.forward_rules
    }

    /// How often to resync.
    pub fn resync_every(&self) -> Duration {
        self.settings.resync.max(Duration::from_secs(1))
    }

    /// The rules for a node holding `key`.
    pub fn spec_for(&self, key: &LeaseKey) -> RuleSpec {
        let (v4, v6) = self.network;
        RuleSpec {
            v4: v4.zip(key.ipv4),
            v6: v6.zip(key.ipv6),
            masquerade: self.settings.ip_masq,
            fully_random: self.settings.fully_random,
            forward: self.settings.forward_rules,
        }
    }

    /// Installs (atomically replaces) the table for our lease `key`.
    pub async fn install(&mut self, key: &LeaseKey) -> Result<(), NftError> {
        let spec = self.spec_for(key);
        if spec.is_empty() {
            return Ok(());
        }
        self.installed = None;
        self.apply("install weft's nftables table", rules::replace(&spec))
            .await?;
        let listed = self.list().await?.ok_or_else(|| NftError::Run {
            what: "list weft's nftables table",
            cause: "the table was installed, then not found".into(),
        })?;
        self.installed = Some((spec, listed));
        Ok(())
    }

    /// Lists the table and, when it is gone or differs from what was installed
    /// (flushed, a rule deleted or added), installs it again.
    pub async fn resync(&mut self) -> Result<Resync, NftError> {
        let Some((spec, want)) = self.installed.clone() else {
            return Ok(Resync::Idle);
        };
        if self.list().await?.as_ref() == Some(&want) {
            return Ok(Resync::Intact);
        }
        self.apply("restore weft's nftables table", rules::replace(&spec))
            .await?;
        if let Some(listed) = self.list().await? {
            self.installed = Some((spec, listed));
        }
        Ok(Resync::Restored)
    }

    /// Deletes the table (if there is one), on a clean stop.
    pub async fn remove(&mut self) -> Result<(), NftError> {
        if !self.enabled() {
            return Ok(());
        }
        self.installed = None;
        self.apply("remove weft's nftables table", rules::remove())
            .await
    }

    async fn apply(&self, what: &'static str, batch: Nftables<'static>) -> Result<(), NftError> {
        self.blocking(what, move || {
            helper::apply_ruleset(&batch).map_err(|e| nft_error(what, e))
        })
        .await
    }

    /// The table as nft lists it, without handles, or `None` when there is none.
    async fn list(&self) -> Result<Option<Value>, NftError> {
        let what = "list weft's nftables table";
        self.blocking(what, move || {
            let args = ["list", "table", "inet", TABLE];
            match helper::get_current_ruleset_raw(helper::DEFAULT_NFT, args) {
                Ok(text) => {
                    let value: Value = serde_json::from_str(&text).map_err(|e| NftError::Run {
                        what,
                        cause: format!("nft's JSON: {e}"),
                    })?;
                    Ok(Some(fingerprint(value)))
                }
                Err(NftablesError::NftFailed { stderr, .. })
                    if stderr.contains("No such file or directory") =>
                {
                    Ok(None)
                }
                Err(e) => Err(nft_error(what, e)),
            }
        })
        .await
    }

    /// Runs `f` (which runs nft) off the async threads, inside our namespace: nft is a
    /// child process, and a child starts in the namespace of the thread that forks it.
    async fn blocking<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce() -> Result<T, NftError> + Send + 'static,
    ) -> Result<T, NftError> {
        let ns = self.netns.clone();
        let joined = tokio::task::spawn_blocking(move || crate::netns::in_netns(ns.as_deref(), f))
            .await
            .map_err(|e| NftError::Run {
                what,
                cause: format!("the nft task failed: {e}"),
            })?;
        joined.map_err(|e| NftError::Run {
            what,
            cause: e.to_string(),
        })?
    }
}

/// A listing, comparable across time: nft's `metainfo` (its version) and every object
/// `handle` (which change when the table is rebuilt) left out.
fn fingerprint(mut value: Value) -> Value {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(map) => {
                map.remove("handle");
                map.values_mut().for_each(strip);
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    if let Some(items) = value.get_mut("nftables").and_then(Value::as_array_mut) {
        items.retain(|o| o.get("metainfo").is_none());
    }
    strip(&mut value);
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_ignores_handles_and_the_nft_version() {
        let a = serde_json::json!({"nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "inet", "name": "weft", "handle": 3}},
            {"rule": {"chain": "forward", "handle": 7, "expr": [{"accept": null}]}}
        ]});
        let b = serde_json::json!({"nftables": [
            {"metainfo": {"version": "1.1.0"}},
            {"table": {"family": "inet", "name": "weft", "handle": 9}},
            {"rule": {"chain": "forward", "handle": 12, "expr": [{"accept": null}]}}
        ]});
        assert_eq!(fingerprint(a.clone()), fingerprint(b));
        let flushed = serde_json::json!({"nftables": [
            {"table": {"family": "inet", "name": "weft", "handle": 3}}
        ]});
        assert_ne!(fingerprint(a), fingerprint(flushed));
    }

    #[test]
    fn a_missing_nft_is_named() {
        let e = nft_error(
            "install",
            NftablesError::NftExecution {
                program: "nft".into(),
                inner: std::io::Error::from(std::io::ErrorKind::NotFound),
            },
        );
        assert!(matches!(e, NftError::Missing { .. }));
        assert!(e.to_string().contains("install Debian's nftables"), "{e}");
    }

    #[test]
    fn the_spec_follows_the_lease_and_the_flags() {
        let net = NetworkConfig::parse(
            r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48"}"#,
        )
        .unwrap();
        let mut settings = FirewallSettings::none();
        settings.ip_masq = true;
        let fw = Firewall::new(None, settings, &net);
        assert!(fw.enabled());
        let key: LeaseKey = "10.5.7.0-24&fc00:0:0:7::-64".parse().unwrap();
        let spec = fw.spec_for(&key);
        assert_eq!(
            spec.v4,
            Some(("10.5.0.0/16".parse().unwrap(), key.ipv4.unwrap()))
        );
        assert_eq!(spec.v6.map(|(_, s)| s), key.ipv6);
        assert!(spec.masquerade && !spec.forward);
        let v4only: LeaseKey = "10.5.7.0-24".parse().unwrap();
        assert_eq!(fw.spec_for(&v4only).v6, None);
        assert!(!Firewall::new(None, FirewallSettings::none(), &net).enabled());
    }
}
