//! The node's view of every lease in the store, kept current from a listing and the
//! watch that follows it.
//!
//! Both the allocator (which subnets are free, does a lease already hold our public IP)
//! and the router (which peers to route to) read it. Lookups are logarithmic, so that an
//! acquisition does not cost a listing of the whole store as it does in flannel.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::lease::{Lease, LeaseError, LeaseKey, Skipped};
use crate::store::{Listing, Revision, WatchEvent};

/// One change to the table, as the router and the allocator need to hear it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableChange {
    /// A lease appeared or changed (`old` is what it was before, if anything).
    Upsert {
        /// The lease before the change.
        old: Option<Lease>,
        /// The lease now.
        new: Lease,
    },
    /// A lease went away (deleted, expired, or overwritten with garbage).
    Remove {
        /// The lease as it was.
        lease: Lease,
    },
}

/// Every valid lease under the subnets prefix, indexed by subnet and by public IP.
#[derive(Debug, Clone, Default)]
pub struct LeaseTable {
    subnets_prefix: String,
    leases: BTreeMap<LeaseKey, Lease>,
    v6_taken: BTreeSet<Ipv6Net>,
    by_public_ip: BTreeMap<Ipv4Addr, BTreeSet<LeaseKey>>,
    /// Keys that name a subnet but whose value is not a lease: the subnet is occupied in
    /// the store (a create would fail), yet no peer can be routed to.
    unusable: BTreeMap<LeaseKey, LeaseError>,
    /// Every entry skipped so far, by full store key, so each is reported once.
    skipped: BTreeMap<String, LeaseError>,
    revision: Revision,
    synced: bool,
    /// The overlay networks; leases outside them are skipped (when set).
    networks: Option<(Ipv4Net, Option<Ipv6Net>)>,
}

impl LeaseTable {
    /// An empty, unsynced table for the leases under `subnets_prefix`.
    pub fn new(subnets_prefix: &str) -> Self {
        LeaseTable {
            subnets_prefix: subnets_prefix.to_string(),
            ..Default::default()
        }
    }

    /// The same table, skipping (and reporting once) every lease whose IPv4 subnet lies
    /// outside `v4`, or whose IPv6 subnet lies outside `v6`: someone else's mistake
    /// must neither be routed to nor stop the node.
    pub fn within(mut self, v4: Ipv4Net, v6: Option<Ipv6Net>) -> Self {
        self.networks = Some((v4, v6));
        self
    }

    /// Decodes an entry as a lease of this table's networks.
    fn decode(&self, entry: &crate::store::Entry) -> Result<Lease, LeaseError> {
        let lease = Lease::from_entry(&self.subnets_prefix, entry)?;
        if let Some((v4, v6)) = self.networks {
            let outside = |network: IpNet| LeaseError::OutsideNetwork {
                key: lease.key.to_string(),
                network,
            };
            if !v4.contains(&lease.key.ipv4) {
                return Err(outside(IpNet::V4(v4)));
            }
            if let (Some(v6), Some(key)) = (v6, lease.key.ipv6) {
                if !v6.contains(&key) {
                    return Err(outside(IpNet::V6(v6)));
                }
            }
        }
        Ok(lease)
    }

    /// Whether a listing has been applied.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// The store revision the table reflects.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// The number of valid leases.
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// Whether there are no valid leases.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// Every valid lease, by key.
    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.leases.values()
    }

    /// The lease with this exact key.
    pub fn get(&self, key: &LeaseKey) -> Option<&Lease> {
        self.leases.get(key)
    }

    /// The entries skipped so far (bad keys or values), by store key.
    pub fn skipped(&self) -> &BTreeMap<String, LeaseError> {
        &self.skipped
    }

    /// Whether some lease (valid or not) occupies this IPv4 subnet.
    pub fn is_v4_taken(&self, subnet: Ipv4Net) -> bool {
        let probe = LeaseKey::v4(subnet);
        let hit = |k: Option<&LeaseKey>| k.is_some_and(|k| k.ipv4 == subnet);
        hit(self.leases.range(probe..).next().map(|(k, _)| k))
            || hit(self.unusable.range(probe..).next().map(|(k, _)| k))
    }

    /// Whether some lease occupies this IPv6 subnet.
    pub fn is_v6_taken(&self, subnet: Ipv6Net) -> bool {
        self.v6_taken.contains(&subnet)
    }

    /// The IPv4 subnets of all occupied keys within `[min, max]`, in order.
    pub fn v4_taken_in(&self, min: Ipv4Net, max: Ipv4Net) -> BTreeSet<Ipv4Net> {
        let lo = LeaseKey::v4(min);
        let in_range = |k: &&LeaseKey| k.ipv4 <= max;
        self.leases
            .range(lo..)
            .map(|(k, _)| k)
            .take_while(in_range)
            .chain(
                self.unusable
                    .range(lo..)
                    .map(|(k, _)| k)
                    .take_while(in_range),
            )
            .map(|k| k.ipv4)
            .collect()
    }

    /// The IPv6 subnets taken within `[min, max]`, in order.
    pub fn v6_taken_in(&self, min: Ipv6Net, max: Ipv6Net) -> BTreeSet<Ipv6Net> {
        self.v6_taken.range(min..=max).copied().collect()
    }

    /// The leases that record `ip` as their public IP, lowest subnet first.
    pub fn by_public_ip(&self, ip: Ipv4Addr) -> impl Iterator<Item = &Lease> {
        self.by_public_ip
            .get(&ip)
            .into_iter()
            .flatten()
            .filter_map(|k| self.leases.get(k))
    }

    fn insert(&mut self, lease: Lease) -> Option<Lease> {
        self.unusable.remove(&lease.key);
        if let Some(v6) = lease.key.ipv6 {
            self.v6_taken.insert(v6);
        }
        self.by_public_ip
            .entry(lease.attrs.public_ip)
            .or_default()
            .insert(lease.key);
        let old = self.leases.insert(lease.key, lease);
        if let Some(old) = &old {
            self.unindex_ip(old);
        }
        old
    }

    fn unindex_ip(&mut self, old: &Lease) {
        let current_ip = self.leases.get(&old.key).map(|l| l.attrs.public_ip);
        if current_ip == Some(old.attrs.public_ip) {
            return;
        }
        if let Some(keys) = self.by_public_ip.get_mut(&old.attrs.public_ip) {
            keys.remove(&old.key);
            if keys.is_empty() {
                self.by_public_ip.remove(&old.attrs.public_ip);
            }
        }
    }

    fn remove(&mut self, key: &LeaseKey) -> Option<Lease> {
        self.unusable.remove(key);
        let old = self.leases.remove(key)?;
        if let Some(v6) = key.ipv6 {
            self.v6_taken.remove(&v6);
        }
        self.unindex_ip(&old);
        Some(old)
    }

    fn note_skipped(&mut self, key: &str, error: LeaseError, out: &mut Vec<Skipped>) {
        if self.skipped.get(key) != Some(&error) {
            self.skipped.insert(key.to_string(), error.clone());
            out.push(Skipped {
                key: key.to_string(),
                error,
            });
        }
    }

    fn parse_key(&self, full: &str) -> Option<Result<LeaseKey, LeaseError>> {
        let name = full.strip_prefix(&self.subnets_prefix)?;
        Some(name.parse())
    }

    /// Replaces the whole table with a listing. Returns the changes against what the
    /// table held before, and the entries newly skipped as invalid.
    pub fn replace(&mut self, listing: &Listing) -> (Vec<TableChange>, Vec<Skipped>) {
        let mut before = std::mem::take(&mut self.leases);
        self.v6_taken.clear();
        self.by_public_ip.clear();
        self.unusable.clear();
        let mut changes = Vec::new();
        let mut skipped = Vec::new();
        let mut seen_bad = BTreeSet::new();
        for entry in &listing.entries {
            match self.decode(entry) {
                Ok(lease) => {
                    let old = before.remove(&lease.key);
                    if old.as_ref() != Some(&lease) {
                        changes.push(TableChange::Upsert {
                            old,
                            new: lease.clone(),
                        });
                    }
                    self.insert(lease);
                }
                Err(error) => {
                    if let Some(Ok(key)) = self.parse_key(&entry.key) {
                        self.unusable.insert(key, error.clone());
                    }
                    seen_bad.insert(entry.key.clone());
                    self.note_skipped(&entry.key, error, &mut skipped);
                }
            }
        }
        self.skipped.retain(|k, _| seen_bad.contains(k));
        changes.extend(
            before
                .into_values()
                .map(|lease| TableChange::Remove { lease }),
        );
        self.revision = listing.revision;
        self.synced = true;
        (changes, skipped)
    }

    /// Applies one watch event. Events at or below the table's revision were already
    /// seen (through the listing) and change nothing.
    pub fn apply(&mut self, event: &WatchEvent) -> (Option<TableChange>, Vec<Skipped>) {
        let mut skipped = Vec::new();
        if event.revision() <= self.revision {
            return (None, skipped);
        }
        self.revision = event.revision();
        let key = match self.parse_key(event.key()) {
            None => return (None, skipped),
            Some(Ok(key)) => key,
            Some(Err(error)) => {
                if matches!(event, WatchEvent::Put(_)) {
                    self.note_skipped(event.key(), error, &mut skipped);
                } else {
                    self.skipped.remove(event.key());
                }
                return (None, skipped);
            }
        };
        let change = match event {
            WatchEvent::Put(entry) => match self.decode(entry) {
                Ok(lease) => {
                    self.skipped.remove(&entry.key);
                    let old = self.insert(lease.clone());
                    (old.as_ref() != Some(&lease))
                        .then_some(TableChange::Upsert { old, new: lease })
                }
                Err(error) => {
                    self.note_skipped(&entry.key, error.clone(), &mut skipped);
                    let old = self.remove(&key);
                    self.unusable.insert(key, error);
                    old.map(|lease| TableChange::Remove { lease })
                }
            },
            WatchEvent::Delete { key: full, .. } => {
                self.skipped.remove(full);
                self.remove(&key).map(|lease| TableChange::Remove { lease })
            }
        };
        (change, skipped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Entry;

    fn entry(name: &str, revision: Revision) -> Entry {
        Entry {
            key: format!("/n/subnets/{name}"),
            value: br#"{"PublicIP":"192.0.2.7"}"#.to_vec(),
            create_revision: revision,
            mod_revision: revision,
            expires_at: None,
        }
    }

    #[test]
    fn leases_outside_the_network_are_skipped_once_and_never_routed() {
        let network: Ipv4Net = "10.5.0.0/16".parse().expect("net");
        let mut table = LeaseTable::new("/n/subnets/").within(network, None);
        let listing = Listing {
            entries: vec![entry("10.5.1.0-24", 1), entry("10.6.1.0-24", 2)],
            revision: 2,
        };
        let (changes, skipped) = table.replace(&listing);
        assert_eq!(changes.len(), 1);
        assert_eq!(table.len(), 1);
        assert_eq!(skipped.len(), 1);
        assert!(
            matches!(&skipped[0].error, LeaseError::OutsideNetwork { key, .. } if key == "10.6.1.0-24"),
            "{skipped:?}"
        );
        // The same entry again, by a listing or a watch, is not reported again.
        let (_, again) = table.replace(&listing);
        assert!(again.is_empty());
        let (change, skipped) = table.apply(&WatchEvent::Put(entry("10.7.0.0-24", 3)));
        assert_eq!((change, skipped.len()), (None, 1));
        assert_eq!(table.len(), 1);
    }
}
