//! The node's view of every lease in the store, kept current from a listing and the
//! watch that follows it.
//!
//! Both the allocator (which subnets are free, does a lease already hold our public IP)
//! and the router (which peers to route to) read it. Lookups are logarithmic, so that an
//! acquisition does not cost a listing of the whole store as it does in flannel.

mod log;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use imbl::{OrdMap, OrdSet};
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

pub use log::{LeaseLog, WatchBatch};

/// What the table holds, in persistent maps: a clone is cheap and shares everything with
/// the original until one of them changes, and then only the changed paths are copied.
/// This is what lets a simulator's thousands of nodes share one lease history
/// ([`LeaseLog`]) instead of each holding a copy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Contents {
    leases: OrdMap<LeaseKey, Held>,
    /// How many leases have an IPv6 subnet and a public IPv6 address (an IPv6 route).
    v6_routable: usize,
    /// The IPv6 subnet of every lease that has one.
    v6: OrdMap<Ipv6Net, LeaseKey>,
    by_public_ip: OrdMap<Ipv4Addr, OrdSet<LeaseKey>>,
    /// Keys that name a subnet but whose value is not a lease: the subnet is occupied in
    /// the store (a create would fail), yet no peer can be routed to.
    unusable: OrdMap<LeaseKey, LeaseError>,
    /// Every entry skipped so far, by full store key, so each is reported once.
    skipped: OrdMap<String, LeaseError>,
}

/// A lease as the table holds it: shared, with the addresses every peer's route
/// decisions read kept beside the key, so that walking the table touches no lease.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    public_ip: Ipv4Addr,
    public_ipv6: Option<std::net::Ipv6Addr>,
    lease: Arc<Lease>,
}

impl Held {
    fn new(lease: Lease) -> Self {
        Held {
            public_ip: lease.attrs.public_ip,
            public_ipv6: lease.attrs.public_ipv6,
            lease: Arc::new(lease),
        }
    }

    fn v6_routable(&self) -> bool {
        self.lease.key.ipv6.is_some() && self.public_ipv6.is_some()
    }
}

impl std::ops::Deref for Held {
    type Target = Lease;
    fn deref(&self) -> &Lease {
        &self.lease
    }
}

/// Every valid lease under the subnets prefix, indexed by subnet and by public IP.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseTable {
    subnets_prefix: Arc<str>,
    contents: Arc<Contents>,
    revision: Revision,
    synced: bool,
    /// The overlay networks (no IPv4 one on an IPv6-only network); leases outside them
    /// are skipped (when set).
    networks: Option<(Option<Ipv4Net>, Option<Ipv6Net>)>,
    /// The subnet lengths of those networks; leases of another length are skipped (when
    /// set).
    subnet_lens: Option<(Option<u8>, Option<u8>)>,
}

impl LeaseTable {
    /// An empty, unsynced table for the leases under `subnets_prefix`.
    pub fn new(subnets_prefix: &str) -> Self {
        LeaseTable {
            subnets_prefix: subnets_prefix.into(),
            ..Default::default()
        }
    }

    /// The same table, skipping (and reporting once) every lease whose IPv4 subnet lies
    /// outside `v4`, or whose IPv6 subnet lies outside `v6`: someone else's mistake
    /// must neither be routed to nor stop the node. On an IPv6-only network (`v4`
    /// `None`) a lease without an IPv6 subnet lies outside it too.
    pub fn within(mut self, v4: Option<Ipv4Net>, v6: Option<Ipv6Net>) -> Self {
        self.networks = Some((v4, v6));
        self
    }

    /// The same table, skipping (and reporting once) every lease whose IPv4 subnet is
    /// not a /`v4` or whose IPv6 subnet is not a /`v6`: every node writes subnets of the
    /// network's `SubnetLen`, and one of another size written by someone else (a /16
    /// over the whole network, a /25 inside a peer's /24) would overlap the leases of
    /// others and draw their traffic.
    pub fn of_subnet_len(mut self, v4: Option<u8>, v6: Option<u8>) -> Self {
        self.subnet_lens = Some((v4, v6));
        self
    }

    /// Whether `other` is this very table: the same contents (one shared copy), at the
    /// same revision. A table derived from `other` by the same changes is equal in
    /// content but not the same; see [`LeaseLog`].
    pub fn is_same(&self, other: &LeaseTable) -> bool {
        Arc::ptr_eq(&self.contents, &other.contents)
            && self.revision == other.revision
            && self.synced == other.synced
    }

    /// Whether `other` decodes the same store entries the same way (the same prefix
    /// and networks), so that one can stand for the other's listing.
    pub fn decodes_like(&self, other: &LeaseTable) -> bool {
        self.subnets_prefix == other.subnets_prefix
            && self.networks == other.networks
            && self.subnet_lens == other.subnet_lens
    }

    fn contents_mut(&mut self) -> &mut Contents {
        Arc::make_mut(&mut self.contents)
    }

    /// Decodes an entry as a lease of this table's networks.
    fn decode(&self, entry: &crate::store::Entry) -> Result<Lease, LeaseError> {
        let lease = Lease::from_entry(&self.subnets_prefix, entry)?;
        if let Some((v4, v6)) = self.networks {
            let outside = |network: IpNet| LeaseError::OutsideNetwork {
                key: lease.key.to_string(),
                network,
            };
            match (v4, lease.key.ipv4) {
                (Some(v4), Some(key)) if !v4.contains(&key) => return Err(outside(IpNet::V4(v4))),
                // An IPv6-only lease on an IPv4 network, or an IPv4-only one on an
                // IPv6-only network: no subnet of ours.
                (Some(v4), None) => return Err(outside(IpNet::V4(v4))),
                _ => {}
            }
            match (v6, lease.key.ipv6) {
                (Some(v6), Some(key)) if !v6.contains(&key) => return Err(outside(IpNet::V6(v6))),
                (Some(v6), None) if v4.is_none() => return Err(outside(IpNet::V6(v6))),
                _ => {}
            }
        }
        if let Some((v4, v6)) = self.subnet_lens {
            let wrong = |want: u8| LeaseError::WrongSize {
                key: lease.key.to_string(),
                want,
            };
            if let (Some(v4), Some(key)) = (v4, lease.key.ipv4) {
                if key.prefix_len() != v4 {
                    return Err(wrong(v4));
                }
            }
            if let (Some(v6), Some(key)) = (v6, lease.key.ipv6) {
                if key.prefix_len() != v6 {
                    return Err(wrong(v6));
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
        self.contents.leases.len()
    }

    /// Whether there are no valid leases.
    pub fn is_empty(&self) -> bool {
        self.contents.leases.is_empty()
    }

    /// Every valid lease's key, public IPv4 address and public IPv6 address, by key:
    /// [`LeaseTable::leases`] for those who need only these.
    pub fn addresses(
        &self,
    ) -> impl Iterator<Item = (&LeaseKey, Ipv4Addr, Option<std::net::Ipv6Addr>)> {
        self.contents
            .leases
            .iter()
            .map(|(k, h)| (k, h.public_ip, h.public_ipv6))
    }

    /// How many leases have no IPv4 subnet (IPv6-only leases). They sort first; on an
    /// IPv4 or dual-stack network there are none and this costs nothing.
    pub fn v6_only_len(&self) -> usize {
        self.contents
            .leases
            .keys()
            .take_while(|k| k.ipv4.is_none())
            .count()
    }

    /// How many leases have both an IPv6 subnet and a public IPv6 address.
    pub fn v6_routable(&self) -> usize {
        self.contents.v6_routable
    }

    /// Every valid lease, by key.
    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.contents.leases.values().map(|l| &**l)
    }

    /// The valid leases from the first whose key is `from` or after it, by key.
    pub fn leases_from(&self, from: LeaseKey) -> impl Iterator<Item = &Lease> {
        self.contents.leases.range(from..).map(|(_, l)| &**l)
    }

    /// The valid leases up to the last whose key is `to`, by key, last first.
    pub fn leases_back_from(&self, to: LeaseKey) -> impl Iterator<Item = &Lease> {
        self.contents.leases.range(..=to).rev().map(|(_, l)| &**l)
    }

    /// Every valid lease with an IPv6 subnet, by that subnet.
    pub fn leases_by_v6(&self) -> impl Iterator<Item = &Lease> {
        let c = &self.contents;
        c.v6.values().filter_map(|k| c.leases.get(k).map(|l| &**l))
    }

    /// The lease whose IPv6 subnet is `subnet`.
    pub fn get_v6(&self, subnet: &Ipv6Net) -> Option<&Lease> {
        let c = &self.contents;
        c.v6.get(subnet).and_then(|k| c.leases.get(k)).map(|l| &**l)
    }

    /// The lease with this exact key.
    pub fn get(&self, key: &LeaseKey) -> Option<&Lease> {
        self.contents.leases.get(key).map(|l| &**l)
    }

    /// The entries skipped so far (bad keys or values), by store key.
    pub fn skipped(&self) -> impl Iterator<Item = (&String, &LeaseError)> {
        self.contents.skipped.iter()
    }

    /// Whether some lease (valid or not) occupies this IPv4 subnet.
    pub fn is_v4_taken(&self, subnet: Ipv4Net) -> bool {
        let probe = LeaseKey::v4(subnet);
        let hit = |k: Option<&LeaseKey>| k.is_some_and(|k| k.ipv4 == Some(subnet));
        let c = &self.contents;
        hit(c.leases.range(probe..).next().map(|(k, _)| k))
            || hit(c.unusable.range(probe..).next().map(|(k, _)| k))
    }

    /// Whether some lease occupies this IPv6 subnet.
    pub fn is_v6_taken(&self, subnet: Ipv6Net) -> bool {
        self.contents.v6.contains_key(&subnet)
    }

    /// The IPv4 subnets of all occupied keys within `[min, max]`, in order.
    pub fn v4_taken_in(&self, min: Ipv4Net, max: Ipv4Net) -> BTreeSet<Ipv4Net> {
        let lo = LeaseKey::v4(min);
        let in_range = |k: &&LeaseKey| k.ipv4 <= Some(max);
        let c = &self.contents;
        c.leases
            .range(lo..)
            .map(|(k, _)| k)
            .take_while(in_range)
            .chain(c.unusable.range(lo..).map(|(k, _)| k).take_while(in_range))
            .filter_map(|k| k.ipv4)
            .collect()
    }

    /// The IPv6 subnets taken within `[min, max]`, in order.
    pub fn v6_taken_in(&self, min: Ipv6Net, max: Ipv6Net) -> BTreeSet<Ipv6Net> {
        self.contents.v6.range(min..=max).map(|(n, _)| *n).collect()
    }

    /// The leases that record `ip` as their public IP, lowest subnet first.
    pub fn by_public_ip(&self, ip: Ipv4Addr) -> impl Iterator<Item = &Lease> {
        let c = &self.contents;
        c.by_public_ip
            .get(&ip)
            .into_iter()
            .flatten()
            .filter_map(|k| c.leases.get(k).map(|l| &**l))
    }

    fn insert(&mut self, lease: Lease) -> Option<Lease> {
        let c = self.contents_mut();
        c.unusable.remove(&lease.key);
        if let Some(v6) = lease.key.ipv6 {
            c.v6.insert(v6, lease.key);
        }
        c.by_public_ip
            .entry(lease.attrs.public_ip)
            .or_default()
            .insert(lease.key);
        let held = Held::new(lease);
        c.v6_routable += usize::from(held.v6_routable());
        let old = c.leases.insert(held.lease.key, held);
        if let Some(old) = &old {
            c.v6_routable -= usize::from(old.v6_routable());
        }
        let old = old.map(|h| Arc::unwrap_or_clone(h.lease));
        if let Some(old) = &old {
            self.unindex_ip(old);
        }
        old
    }

    fn unindex_ip(&mut self, old: &Lease) {
        let current_ip = self.get(&old.key).map(|l| l.attrs.public_ip);
        if current_ip == Some(old.attrs.public_ip) {
            return;
        }
        let c = self.contents_mut();
        if let Some(keys) = c.by_public_ip.get_mut(&old.attrs.public_ip) {
            keys.remove(&old.key);
            if keys.is_empty() {
                c.by_public_ip.remove(&old.attrs.public_ip);
            }
        }
    }

    fn remove(&mut self, key: &LeaseKey) -> Option<Lease> {
        if !self.contents.unusable.contains_key(key) && !self.contents.leases.contains_key(key) {
            return None;
        }
        let c = self.contents_mut();
        c.unusable.remove(key);
        let old = c.leases.remove(key)?;
        c.v6_routable -= usize::from(old.v6_routable());
        let old = Arc::unwrap_or_clone(old.lease);
        if let Some(v6) = key.ipv6 {
            c.v6.remove(&v6);
        }
        self.unindex_ip(&old);
        Some(old)
    }

    fn unskip(&mut self, key: &str) {
        if self.contents.skipped.contains_key(key) {
            self.contents_mut().skipped.remove(key);
        }
    }

    fn note_skipped(&mut self, key: &str, error: LeaseError, out: &mut Vec<Skipped>) {
        if self.contents.skipped.get(key) != Some(&error) {
            self.contents_mut()
                .skipped
                .insert(key.to_string(), error.clone());
            out.push(Skipped {
                key: key.to_string(),
                error,
            });
        }
    }

    fn parse_key(&self, full: &str) -> Option<Result<LeaseKey, LeaseError>> {
        let name = full.strip_prefix(&*self.subnets_prefix)?;
        Some(name.parse())
    }

    /// Replaces the whole table with a listing. Returns the changes against what the
    /// table held before, and the entries newly skipped as invalid.
    pub fn replace(&mut self, listing: &Listing) -> (Vec<TableChange>, Vec<Skipped>) {
        let before_skipped = std::mem::take(&mut self.contents_mut().skipped);
        let mut before = std::mem::take(&mut self.contents_mut().leases);
        *self.contents_mut() = Contents {
            skipped: before_skipped,
            ..Contents::default()
        };
        let mut changes = Vec::new();
        let mut skipped = Vec::new();
        let mut seen_bad = BTreeSet::new();
        for entry in &listing.entries {
            match self.decode(entry) {
                Ok(lease) => {
                    let old = before
                        .remove(&lease.key)
                        .map(|h| Arc::unwrap_or_clone(h.lease));
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
                        self.contents_mut().unusable.insert(key, error.clone());
                    }
                    seen_bad.insert(entry.key.clone());
                    self.note_skipped(&entry.key, error, &mut skipped);
                }
            }
        }
        if self.contents.skipped.keys().any(|k| !seen_bad.contains(k)) {
            let c = self.contents_mut();
            c.skipped = std::mem::take(&mut c.skipped)
                .into_iter()
                .filter(|(k, _)| seen_bad.contains(k))
                .collect();
        }
        changes.extend(before.into_iter().map(|(_, h)| TableChange::Remove {
            lease: Arc::unwrap_or_clone(h.lease),
        }));
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
                    self.unskip(event.key());
                }
                return (None, skipped);
            }
        };
        let change = match event {
            WatchEvent::Put(entry) => match self.decode(entry) {
                Ok(lease) => {
                    self.unskip(&entry.key);
                    let old = self.insert(lease.clone());
                    (old.as_ref() != Some(&lease))
                        .then_some(TableChange::Upsert { old, new: lease })
                }
                Err(error) => {
                    self.note_skipped(&entry.key, error.clone(), &mut skipped);
                    let old = self.remove(&key);
                    self.contents_mut().unusable.insert(key, error);
                    old.map(|lease| TableChange::Remove { lease })
                }
            },
            WatchEvent::Delete { key: full, .. } => {
                self.unskip(full);
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
        let mut table = LeaseTable::new("/n/subnets/").within(Some(network), None);
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

    #[test]
    fn a_listing_reports_what_changed_since_the_table_it_replaces_and_nothing_else() {
        // What a daemon's node gets after a compaction: the store's listing, diffed
        // against its table. A lease whose value changed meanwhile (a reservation moved
        // to another host) must be reported, or its route stays on the old host.
        let mut table = LeaseTable::new("/n/subnets/");
        let first = Listing {
            entries: vec![
                entry("10.5.1.0-24", 1),
                entry("10.5.2.0-24", 2),
                entry("10.5.4.0-24", 3),
            ],
            revision: 3,
        };
        assert_eq!(table.replace(&first).0.len(), 3);
        let mut moved = entry("10.5.1.0-24", 1);
        moved.value = br#"{"PublicIP":"192.0.2.9"}"#.to_vec();
        moved.mod_revision = 5;
        let second = Listing {
            entries: vec![moved, entry("10.5.2.0-24", 2), entry("10.5.3.0-24", 4)],
            revision: 6,
        };
        let (changes, skipped) = table.replace(&second);
        assert!(skipped.is_empty());
        let ip = |l: &Lease| l.attrs.public_ip.to_string();
        let described: Vec<String> = changes
            .iter()
            .map(|c| match c {
                TableChange::Upsert { old, new } => format!(
                    "upsert {} {} -> {}",
                    new.key,
                    old.as_ref().map_or("none".into(), ip),
                    ip(new)
                ),
                TableChange::Remove { lease } => format!("remove {}", lease.key),
            })
            .collect();
        assert_eq!(
            described,
            [
                "upsert 10.5.1.0-24 192.0.2.7 -> 192.0.2.9",
                "upsert 10.5.3.0-24 none -> 192.0.2.7",
                "remove 10.5.4.0-24",
            ]
        );
        assert_eq!(table.revision(), 6);
    }

    #[test]
    fn leases_of_another_size_are_skipped_never_routed_nor_taken_for_their_neighbours() {
        let network: Ipv4Net = "10.5.0.0/16".parse().expect("net");
        let mut table = LeaseTable::new("/n/subnets/")
            .within(Some(network), None)
            .of_subnet_len(Some(24), None);
        let listing = Listing {
            entries: vec![
                entry("10.5.0.0-16", 1),
                entry("10.5.1.0-24", 2),
                entry("10.5.2.0-25", 3),
            ],
            revision: 3,
        };
        let (changes, skipped) = table.replace(&listing);
        assert_eq!((changes.len(), table.len()), (1, 1), "{skipped:?}");
        let keys: Vec<&str> = skipped
            .iter()
            .filter_map(|s| match &s.error {
                LeaseError::WrongSize { key, want: 24 } => Some(key.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(keys, ["10.5.0.0-16", "10.5.2.0-25"]);
        // Neither makes the /24s it overlaps look taken.
        assert!(!table.is_v4_taken("10.5.2.0/24".parse().expect("net")));
        assert!(!table.is_v4_taken("10.5.0.0/24".parse().expect("net")));
        let (change, skipped) = table.apply(&WatchEvent::Put(entry("10.5.8.0-23", 4)));
        assert_eq!((change, skipped.len(), table.len()), (None, 1, 1));
    }

    #[test]
    fn a_flannel_ipv6_only_lease_is_skipped_never_routed_as_0_0_0_0_slash_0() {
        // flanneld with EnableIPv4: false writes MakeSubnetKey(ip.IP4Net{}, sn6) and
        // PublicIP 0.0.0.0. On a dual-stack network such a lease has no IPv4 subnet of
        // ours; it must not become a route to every IPv4 address.
        let (v4, v6) = ("10.5.0.0/16".parse().ok(), "fc00::/48".parse().ok());
        let mut table = LeaseTable::new("/n/subnets/").within(v4, v6);
        let v6_only = Entry {
            value: br#"{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::7","BackendType":"vxlan"}"#
                .to_vec(),
            ..entry("0.0.0.0-0&fc00:0:0:5::-64", 2)
        };
        let listing = Listing {
            entries: vec![entry("10.5.1.0-24&fc00:0:0:1::-64", 1), v6_only],
            revision: 2,
        };
        let (_, skipped) = table.replace(&listing);
        assert_eq!(table.len(), 1);
        assert!(
            matches!(&skipped[..], [Skipped { error: LeaseError::OutsideNetwork { key, .. }, .. }]
                if key == "0.0.0.0-0&fc00:0:0:5::-64"),
            "{skipped:?}"
        );
        assert!(table
            .get_v6(&"fc00:0:0:5::/64".parse().expect("net"))
            .is_none());
    }

    #[test]
    fn an_ipv6_only_table_holds_ipv6_only_leases_and_skips_the_others() {
        let v6: Ipv6Net = "fc00::/48".parse().expect("net");
        let mut table = LeaseTable::new("/n/subnets/")
            .within(None, Some(v6))
            .of_subnet_len(None, Some(64));
        let v6_entry = |name: &str, ip: &str, revision| Entry {
            value: format!(r#"{{"PublicIP":"0.0.0.0","PublicIPv6":"{ip}"}}"#).into_bytes(),
            ..entry(name, revision)
        };
        let listing = Listing {
            entries: vec![
                v6_entry("0.0.0.0-0&fc00:0:0:5::-64", "2001:db8::5", 1),
                v6_entry("0.0.0.0-0&fc00:0:0:6::-64", "2001:db8::6", 2),
                // IPv4 alone: nothing of an IPv6-only network.
                entry("10.5.1.0-24", 3),
                // Outside the IPv6 network, and of the wrong size.
                v6_entry("0.0.0.0-0&fc01:0:0:1::-64", "2001:db8::9", 4),
                v6_entry("0.0.0.0-0&fc00:0:0:7::-80", "2001:db8::9", 5),
            ],
            revision: 5,
        };
        let (changes, skipped) = table.replace(&listing);
        assert_eq!((changes.len(), table.len(), skipped.len()), (2, 2, 3));
        // Two IPv6-only leases share the (absent) IPv4 subnet yet neither takes the other's.
        assert!(table.is_v6_taken("fc00:0:0:5::/64".parse().expect("net")));
        assert!(table.is_v6_taken("fc00:0:0:6::/64".parse().expect("net")));
        assert!(!table.is_v6_taken("fc00:0:0:7::/64".parse().expect("net")));
        let unspecified = Ipv4Addr::UNSPECIFIED;
        assert_eq!(table.by_public_ip(unspecified).count(), 2);
        assert_eq!(table.v6_only_len(), 2);
    }
}
