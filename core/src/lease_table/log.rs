//! One lease history for many nodes.
//!
//! A driver that serves many nodes from one store (the simulator) would otherwise have
//! every node decode every listing and every watch event into a table of its own: work
//! and memory that grow with nodes × leases. A [`LeaseLog`] follows the store once and
//! keeps the table as it stood after each change; since [`LeaseTable`] is made of
//! persistent maps, those tables share all but the paths each change touched. A node
//! whose table *is* (not merely equals, see [`LeaseTable::is_same`]) the log's table at
//! some revision can take the log's tables for the changes after it instead of working
//! them out again: it ends up holding the very same table as every other node that
//! followed the log, and a change costs it only its own decisions about it.
//!
//! Nothing is taken on trust: a [`WatchBatch`] names the table it applies to, and a node
//! whose table is another one applies the batch's events itself, as from any watch.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use super::{LeaseTable, TableChange};
use crate::lease::Skipped;
use crate::store::{Revision, WatchEvent};

/// One change as the log applied it.
#[derive(Debug)]
pub(crate) struct Step {
    pub event: WatchEvent,
    /// The table after the change.
    pub table: LeaseTable,
    /// What [`LeaseTable::apply`] said about it.
    pub change: Option<TableChange>,
    pub skipped: Vec<Skipped>,
}

/// See the module docs.
#[derive(Debug)]
pub struct LeaseLog {
    /// The table at the oldest revision kept.
    base: LeaseTable,
    /// Every change since, oldest first.
    steps: VecDeque<Arc<Step>>,
    limit: usize,
}

impl LeaseLog {
    /// A log starting from `table` (configured as the nodes' tables are, see
    /// [`LeaseTable::decodes_like`]), keeping at most `limit` past changes.
    pub fn new(mut table: LeaseTable, revision: Revision, limit: usize) -> Self {
        table.revision = revision;
        table.synced = true;
        LeaseLog {
            base: table,
            steps: VecDeque::new(),
            limit: limit.max(1),
        }
    }

    /// The table as it stands after every change followed.
    pub fn current(&self) -> &LeaseTable {
        self.steps.back().map_or(&self.base, |s| &s.table)
    }

    /// Applies the next changes of the store, in revision order (each one once: events
    /// at or below the current revision are ignored).
    pub fn follow(&mut self, events: &[WatchEvent]) {
        for event in events {
            if event.revision() <= self.current().revision() {
                continue;
            }
            let mut table = self.current().clone();
            let (change, skipped) = table.apply(event);
            self.steps.push_back(Arc::new(Step {
                event: event.clone(),
                table,
                change,
                skipped,
            }));
            while self.steps.len() > self.limit {
                if let Some(old) = self.steps.pop_front() {
                    self.base = old.table.clone();
                }
            }
        }
    }

    /// The table a listing taken at store revision `revision` decodes to, when the log
    /// is there (the revision of its last change); `None` otherwise.
    pub fn listing(&self, revision: Revision) -> Option<LeaseTable> {
        let current = self.current();
        (current.revision() == revision).then(|| current.clone())
    }

    /// The log's table at `revision`: after the last change at or before it.
    fn table_at(&self, revision: Revision) -> Option<&LeaseTable> {
        if revision < self.base.revision() {
            return None;
        }
        let i = self
            .steps
            .partition_point(|s| s.event.revision() <= revision);
        Some(if i == 0 {
            &self.base
        } else {
            &self.steps[i - 1].table
        })
    }

    /// The log's changes from revision `from` on, as a batch that a node whose table
    /// is the log's table before `from` can take as is; `None` when the log no longer
    /// goes back that far. The log must have followed every change of the store under
    /// the nodes' prefix for the batch to be what a watch from `from` yields.
    pub fn batch_since(&self, from: Revision) -> Option<WatchBatch> {
        let base = self.table_at(from.saturating_sub(1))?;
        let start = self.steps.partition_point(|s| s.event.revision() < from);
        let steps: Vec<Arc<Step>> = self.steps.range(start..).cloned().collect();
        let keys = steps.iter().map(|s| s.event.key().to_string()).collect();
        let deletions = steps
            .iter()
            .any(|s| matches!(s.event, WatchEvent::Delete { .. }));
        let skipped = steps.iter().any(|s| !s.skipped.is_empty());
        Some(WatchBatch {
            events: Vec::new(),
            shared: Some(Shared {
                base: base.clone(),
                steps,
                keys,
                deletions,
                skipped,
            }),
        })
    }
}

#[derive(Debug)]
pub(crate) struct Shared {
    /// The table the steps start from.
    pub base: LeaseTable,
    pub steps: Vec<Arc<Step>>,
    /// The store keys the steps are about.
    pub keys: BTreeSet<String>,
    /// Whether some step is a deletion.
    pub deletions: bool,
    /// Whether some step skipped an entry.
    pub skipped: bool,
}

impl Shared {
    /// Whether some step may concern a node whose allocator's interest is `interest`
    /// (see `Allocator::watch_interest`).
    pub fn concerns(&self, interest: (Option<&str>, bool)) -> bool {
        let (key, deletions) = interest;
        self.skipped || (deletions && self.deletions) || key.is_some_and(|k| self.keys.contains(k))
    }
}

/// A batch of watch events, perhaps with the tables they lead to (see the module docs).
/// Hand it to [`Node::handle_watch_batch`](crate::node::Node::handle_watch_batch).
#[derive(Debug)]
pub struct WatchBatch {
    events: Vec<WatchEvent>,
    pub(crate) shared: Option<Shared>,
}

impl From<Vec<WatchEvent>> for WatchBatch {
    fn from(events: Vec<WatchEvent>) -> Self {
        WatchBatch {
            events,
            shared: None,
        }
    }
}

impl WatchBatch {
    /// The events, in revision order.
    pub fn events(&self) -> impl Iterator<Item = &WatchEvent> {
        let shared = self
            .shared
            .iter()
            .flat_map(|s| s.steps.iter().map(|s| &s.event));
        self.events.iter().chain(shared)
    }

    /// How many events it holds.
    pub fn len(&self) -> usize {
        self.events.len() + self.shared.as_ref().map_or(0, |s| s.steps.len())
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreModel;
    use crate::time::Timestamp;
    use std::time::Duration;

    const PREFIX: &str = "/n/subnets/";

    fn table() -> LeaseTable {
        let v4 = "10.5.0.0/16".parse().expect("net");
        LeaseTable::new(PREFIX).within(Some(v4), None)
    }

    type Change<'a> = Box<dyn Fn(&mut StoreModel) + 'a>;

    /// The log's table after every change is the one a node decodes from a listing at
    /// that revision (the simulator hands it out as one), and a batch from any
    /// revision leads a node holding the log's table there to the log's latest table,
    /// whether it takes the batch's tables or applies its events itself.
    #[test]
    fn the_log_agrees_with_listings_and_with_applying_the_events() {
        let mut store = StoreModel::new(Timestamp::ZERO);
        let mut log = LeaseLog::new(table(), 0, 100);
        let ttl = Some(Duration::from_secs(60));
        let good = |ip: u8| format!(r#"{{"PublicIP":"192.0.2.{ip}"}}"#).into_bytes();
        let mut snapshots = vec![log.current().clone()];
        let changes: Vec<Change> = vec![
            Box::new(|s| drop(s.create("/n/subnets/10.5.1.0-24", &good(1), ttl))),
            Box::new(|s| drop(s.create("/n/subnets/10.5.2.0-24", &good(2), None))),
            Box::new(|s| drop(s.put("/n/subnets/10.5.3.0-24", b"garbage"))),
            Box::new(|s| drop(s.put("/n/subnets/not-a-subnet", &good(4)))),
            Box::new(|s| drop(s.put("/n/subnets/10.6.1.0-24", &good(5)))),
            Box::new(|s| drop(s.put("/n/subnets/10.5.1.0-24", &good(9)))),
            Box::new(|s| drop(s.put("/n/subnets/10.5.3.0-24", &good(3)))),
            Box::new(|s| drop(s.delete("/n/subnets/10.5.2.0-24"))),
            Box::new(|s| drop(s.delete("/n/subnets/not-a-subnet"))),
            Box::new(|s| {
                s.advance_to(Timestamp::from_millis(61_000));
            }),
        ];
        for change in changes {
            change(&mut store);
            let from = log.current().revision() + 1;
            let events = store.events_since(PREFIX, from).expect("events");
            log.follow(&events);
            let listing = store.list(PREFIX);
            let mut fresh = table();
            fresh.replace(&listing);
            let shared = log.listing(listing.revision).expect("the log is there");
            assert_eq!(shared, fresh, "at revision {}", listing.revision);
            snapshots.push(shared);
        }
        for base in &snapshots {
            let batch = log.batch_since(base.revision() + 1).expect("kept");
            let shared = batch.shared.as_ref().expect("shared");
            assert!(shared.base.is_same(base));
            let mut applied = base.clone();
            for event in batch.events() {
                applied.apply(event);
            }
            assert_eq!(&applied, log.current());
        }
    }
}
