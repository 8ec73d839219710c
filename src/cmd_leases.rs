//! `weft leases`: the lease table of a store.

use std::fmt::Write as _;

use anyhow::{Context, Result};
use weft_core::lease::decode_all;
use weft_core::store::subnets_prefix;
use weft_core::Timestamp;

use crate::etcd_args::EtcdArgs;

/// Arguments of `weft leases`.
#[derive(Debug, clap::Args)]
pub struct LeasesArgs {
    /// Where the leases live: memory:, sled:PATH, etcd://HOST:PORT[,HOST:PORT...].
    #[arg(long, env = "WEFT_STORE")]
    store: String,
    /// The key prefix in the store.
    #[arg(long, default_value = weft_core::store::DEFAULT_PREFIX)]
    etcd_prefix: String,
    #[command(flatten)]
    etcd: EtcdArgs,
    /// How to print: a table for people, or JSON for scripts.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

/// The output formats of `weft leases`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns and a summary line.
    Table,
    /// One JSON document: the revision, the leases, the entries skipped.
    Json,
}

fn human(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// Renders leases as a table; entries that are not leases are listed after it.
pub fn table(listing: &weft_core::store::Listing, prefix: &str, now: Timestamp) -> String {
    let sp = subnets_prefix(prefix);
    let (leases, skipped) = decode_all(&sp, &listing.entries);
    let mut out = format!(
        "{:<20} {:<16} {:<9} {}\n",
        "SUBNET", "PUBLIC IP", "BACKEND", "EXPIRES IN"
    );
    for lease in &leases {
        let expires = match lease.expires_at {
            None => "never (reservation)".to_string(),
            Some(at) if at <= now => "expired".to_string(),
            Some(at) => human(at.saturating_since(now)),
        };
        // An IPv6-only lease: its IPv6 subnet and address alone (its PublicIP is
        // flannel's 0.0.0.0).
        let (mut subnet, public) = match (lease.key.ipv4, lease.attrs.public_ipv6) {
            (None, Some(ip6)) => (String::new(), ip6.to_string()),
            (v4, _) => (
                v4.map(|n| n.to_string()).unwrap_or_default(),
                lease.attrs.public_ip.to_string(),
            ),
        };
        if let Some(v6) = lease.key.ipv6 {
            if subnet.is_empty() {
                let _ = write!(subnet, "{v6}");
            } else {
                let _ = write!(subnet, " {v6}");
            }
        }
        let _ = writeln!(
            out,
            "{:<20} {:<16} {:<9} {}",
            subnet,
            public,
            lease.attrs.backend_type.as_deref().unwrap_or("-"),
            expires
        );
    }
    let _ = writeln!(
        out,
        "{} leases at revision {}",
        leases.len(),
        listing.revision
    );
    for s in &skipped {
        let _ = writeln!(out, "skipped {}: {}", s.key, s.error);
    }
    out
}

/// Renders leases as one JSON document: `revision`, `leases` (subnets, public
/// addresses, backend type and data verbatim, expiry in Unix milliseconds and seconds
/// from now, `null` for a reservation) and `skipped` (key and reason).
pub fn json(
    listing: &weft_core::store::Listing,
    prefix: &str,
    now: Timestamp,
) -> serde_json::Value {
    let sp = subnets_prefix(prefix);
    let (leases, skipped) = decode_all(&sp, &listing.entries);
    let leases: Vec<serde_json::Value> = leases
        .iter()
        .map(|l| {
            serde_json::json!({
                "subnet": l.key.ipv4.map(|n| n.to_string()),
                "ipv6_subnet": l.key.ipv6.map(|n| n.to_string()),
                "public_ip": l.attrs.public_ip.to_string(),
                "public_ipv6": l.attrs.public_ipv6.map(|a| a.to_string()),
                "backend_type": l.attrs.backend_type,
                "backend_data": l.attrs.backend_data,
                "expires_at_ms": l.expires_at.map(|t| t.as_millis()),
                "expires_in_s": l.expires_at.map(|t| t.saturating_since(now).as_secs()),
            })
        })
        .collect();
    let skipped: Vec<serde_json::Value> = skipped
        .iter()
        .map(|s| serde_json::json!({"key": s.key, "error": s.error.to_string()}))
        .collect();
    serde_json::json!({
        "revision": listing.revision,
        "leases": leases,
        "skipped": skipped,
    })
}

/// `weft leases --store URL`.
pub async fn run(args: &LeasesArgs) -> Result<()> {
    // The error names the store URL and the cause itself.
    let store = weft_stores::open_with(&args.store, &args.etcd.store_options()).await?;
    let listing = store
        .list(&subnets_prefix(&args.etcd_prefix))
        .await
        .context("cannot list leases")?;
    let now = weft_stores::clock::wall_now();
    match args.output {
        Output::Table => print!("{}", table(&listing, &args.etcd_prefix, now)),
        Output::Json => println!("{:#}", json(&listing, &args.etcd_prefix, now)),
    }
    Ok(())
}
