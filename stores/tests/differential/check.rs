//! Comparing a backend's answers with the model's, modulo what may legitimately differ:
//! the revisions' absolute values, etcd's TTL granularity, and the order in which etcd
//! revokes leases that ran out together.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeInclusive;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestCaseResult};
use weft_core::store::{Entry, Listing, Revision, StoreError, WatchEvent};

/// How a backend's `expires_at` must relate to the model's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Equal: the backend and the model run on the same manual clock.
    Exact,
    /// etcd: the model's time is the wall clock just before the call; the expiry weft
    /// gives is the wall clock at its grant plus the TTL rounded up to whole seconds plus
    /// one, rounded down to the second (see `etcd::lease_id` and `EtcdStore::grant`). So
    /// it is never before the model's, and at most the call's duration plus two seconds
    /// after it (one for the extra second, under one for rounding the TTL up).
    Granted,
}

/// The comparison state of one case.
#[derive(Debug)]
pub struct Checker {
    /// backend revision = model revision + offset, for every revision of the case: the
    /// case is the store's only writer, so the two count the same changes in the same
    /// order (a one-to-one, order-preserving map, and no gaps on either side).
    offset: i128,
    expiry: Expiry,
    /// Whether the deletions of entries that ran out together come in the model's
    /// (expiry time, key) order; etcd revokes them in an order of its own.
    expiry_order: bool,
    /// How long the call that made each model revision took.
    took: BTreeMap<Revision, Duration>,
    /// What the backend answered for each of its revisions: its watch must say the same.
    answered: BTreeMap<Revision, Entry>,
    /// Model revisions that were deletions by expiry, each run of them due together.
    expiry_runs: Vec<RangeInclusive<Revision>>,
}

impl Checker {
    /// `model` and `backend` are the revisions the two stores are at before the case.
    pub fn new(model: Revision, backend: Revision, expiry: Expiry, expiry_order: bool) -> Self {
        Checker {
            offset: i128::from(backend) - i128::from(model),
            expiry,
            expiry_order,
            took: BTreeMap::new(),
            answered: BTreeMap::new(),
            expiry_runs: Vec::new(),
        }
    }

    /// The backend's revision for the model's `model`.
    pub fn to_backend(&self, model: Revision) -> Revision {
        Revision::try_from(i128::from(model) + self.offset).unwrap_or(0)
    }

    /// Records a successful write: how long it took, and what the backend answered.
    pub fn wrote(&mut self, model: &Entry, backend: &Entry, took: Duration) {
        self.took.insert(model.mod_revision, took);
        self.answered.insert(backend.mod_revision, backend.clone());
    }

    /// Records that the model's revisions `run` were deletions by expiry.
    pub fn expired(&mut self, run: RangeInclusive<Revision>) {
        if !run.is_empty() {
            self.expiry_runs.push(run);
        }
    }

    pub fn revision(&self, what: &str, model: Revision, backend: Revision) -> TestCaseResult {
        prop_assert_eq!(
            self.to_backend(model),
            backend,
            "{}: the backend's revision {} is not the model's {} (+ {})",
            what,
            backend,
            model,
            self.offset
        );
        Ok(())
    }

    pub fn entry(&self, what: &str, model: &Entry, backend: &Entry) -> TestCaseResult {
        let what = format!("{what}: model {model:?}, backend {backend:?}");
        prop_assert_eq!(&model.key, &backend.key, "{}: key", what);
        prop_assert_eq!(&model.value, &backend.value, "{}: value", what);
        self.revision(
            &format!("{what}: create_revision"),
            model.create_revision,
            backend.create_revision,
        )?;
        self.revision(
            &format!("{what}: mod_revision"),
            model.mod_revision,
            backend.mod_revision,
        )?;
        match (self.expiry, model.expires_at, backend.expires_at) {
            (Expiry::Exact, m, b) => prop_assert_eq!(m, b, "{}: expires_at", what),
            (Expiry::Granted, Some(m), Some(b)) => {
                let took = self
                    .took
                    .get(&model.mod_revision)
                    .copied()
                    .unwrap_or(Duration::ZERO);
                let late = took + Duration::from_secs(2);
                prop_assert!(
                    m <= b && b <= m + late,
                    "{}: expires_at {} is not within [0 s, +{:?}] of the model's {}",
                    what,
                    b,
                    late,
                    m
                );
            }
            (Expiry::Granted, m, b) => prop_assert!(
                m.is_none() && b.is_none(),
                "{}: one is a reservation, the other a lease",
                what
            ),
        }
        Ok(())
    }

    pub fn maybe_entry(
        &self,
        what: &str,
        model: Option<&Entry>,
        backend: Option<&Entry>,
    ) -> TestCaseResult {
        match (model, backend) {
            (None, None) => Ok(()),
            (Some(m), Some(b)) => self.entry(what, m, b),
            (m, b) => Err(TestCaseError::fail(format!(
                "{what}: model {m:?}, backend {b:?}"
            ))),
        }
    }

    pub fn listing(&self, what: &str, model: &Listing, backend: &Listing) -> TestCaseResult {
        self.revision(
            &format!("{what}: listing"),
            model.revision,
            backend.revision,
        )?;
        let keys = |l: &Listing| l.entries.iter().map(|e| e.key.clone()).collect::<Vec<_>>();
        prop_assert_eq!(keys(model), keys(backend), "{}: listed keys", what);
        for (m, b) in model.entries.iter().zip(&backend.entries) {
            self.entry(what, m, b)?;
        }
        Ok(())
    }

    /// The same error: the same variant about the same key; a conflict reports the
    /// revision each store was given and the same incarnation found.
    pub fn error(
        &self,
        what: &str,
        model: &StoreError,
        backend: &StoreError,
        given: Option<(Revision, Revision)>,
    ) -> TestCaseResult {
        use StoreError::*;
        let what = format!("{what}: model {model:?}, backend {backend:?}");
        match (model, backend) {
            (AlreadyExists { key: m }, AlreadyExists { key: b })
            | (NotFound { key: m }, NotFound { key: b }) => prop_assert_eq!(m, b, "{}", what),
            (
                Conflict {
                    key: mk,
                    expected: me,
                    found: mf,
                },
                Conflict {
                    key: bk,
                    expected: be,
                    found: bf,
                },
            ) => {
                prop_assert_eq!(mk, bk, "{}", what);
                prop_assert_eq!(Some((*me, *be)), given, "{}: expected", what);
                self.revision(&format!("{what}: found"), *mf, *bf)?;
            }
            (Invalid(_), Invalid(_)) => {}
            _ => return Err(TestCaseError::fail(format!("{what}: different errors"))),
        }
        Ok(())
    }

    /// Compares two answers: both errors, or both values compared by `same`.
    pub fn answer<T: Debug>(
        &self,
        what: &str,
        model: &Result<T, StoreError>,
        backend: &Result<T, StoreError>,
        given: Option<(Revision, Revision)>,
        same: impl FnOnce(&T, &T) -> TestCaseResult,
    ) -> TestCaseResult {
        match (model, backend) {
            (Ok(m), Ok(b)) => same(m, b),
            (Err(m), Err(b)) => self.error(what, m, b, given),
            (m, b) => Err(TestCaseError::fail(format!(
                "{what}: model {m:?}, backend {b:?}"
            ))),
        }
    }

    /// The model's events and the backend's, one for one; a run of expiries may come in
    /// another order where `expiry_order` is off.
    pub fn events(
        &self,
        what: &str,
        model: &[WatchEvent],
        backend: &[WatchEvent],
    ) -> TestCaseResult {
        let what = format!("{what}:\n  model   {model:?}\n  backend {backend:?}\n ");
        prop_assert_eq!(model.len(), backend.len(), "{}: number of events", what);
        let mut i = 0;
        while i < model.len() {
            let run = self
                .run_at(model[i].revision())
                .filter(|_| !self.expiry_order);
            let n = run.map_or(1, |run| {
                model[i..]
                    .iter()
                    .take_while(|e| run.contains(&e.revision()))
                    .count()
            });
            let (m, b) = (&model[i..i + n], &backend[i..i + n]);
            if run.is_none() {
                self.event(&what, &m[0], &b[0])?;
            } else {
                let deleted = |events: &[WatchEvent]| {
                    let mut keys: Vec<_> = events
                        .iter()
                        .map(|e| match e {
                            WatchEvent::Delete { key, .. } => Some(key.clone()),
                            WatchEvent::Put(_) => None,
                        })
                        .collect();
                    keys.sort();
                    keys
                };
                prop_assert_eq!(
                    deleted(m),
                    deleted(b),
                    "{}: keys that ran out together",
                    what
                );
                // The run's revisions are the same; which key got which is etcd's choice.
                let (first, last) = run.map_or((0, 0), |r| (*r.start(), *r.end()));
                let range = self.to_backend(first)..=self.to_backend(last);
                for e in b {
                    prop_assert!(
                        range.contains(&e.revision()),
                        "{}: expiry {:?} outside the run {:?}",
                        what,
                        e,
                        range
                    );
                }
            }
            i += n;
        }
        Ok(())
    }

    /// Where a watch replaying from `from` may start and be compared: not within a run
    /// of expiries whose order is etcd's, where it would cut the run differently.
    pub fn replay_point(&self, from: Revision) -> Revision {
        match self.run_at(from).filter(|_| !self.expiry_order) {
            Some(run) => *run.start(),
            None => from,
        }
    }

    fn run_at(&self, revision: Revision) -> Option<&RangeInclusive<Revision>> {
        self.expiry_runs.iter().find(|r| r.contains(&revision))
    }

    fn event(&self, what: &str, model: &WatchEvent, backend: &WatchEvent) -> TestCaseResult {
        match (model, backend) {
            (WatchEvent::Put(m), WatchEvent::Put(b)) => {
                self.entry(what, m, b)?;
                if let Some(answered) = self.answered.get(&b.mod_revision) {
                    prop_assert_eq!(
                        answered,
                        b,
                        "{}: the event is not what the write answered",
                        what
                    );
                }
                Ok(())
            }
            (
                WatchEvent::Delete {
                    key: mk,
                    revision: mr,
                },
                WatchEvent::Delete {
                    key: bk,
                    revision: br,
                },
            ) => {
                prop_assert_eq!(mk, bk, "{}", what);
                self.revision(what, *mr, *br)
            }
            (m, b) => Err(TestCaseError::fail(format!(
                "{what}: model {m:?}, backend {b:?}"
            ))),
        }
    }
}
