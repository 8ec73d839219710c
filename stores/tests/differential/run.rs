//! Running one case against a backend and the model side by side.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestCaseResult};
use weft_core::store::{Revision, Store, StoreError, StoreModel, WatchEvent};
use weft_core::Timestamp;
use weft_stores::clock::wall_now;
use weft_stores::ManualClock;

use crate::case::{Case, Key, Op, Rev, KEYS, PREFIXES};
use crate::check::{Checker, Expiry};
use crate::tally::{bump, Tally};
use crate::watch::Collector;

const S: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

/// TTLs on a manual clock: from the shortest valid one up, on the same grid as the time
/// steps, so that expiries fall exactly on the instants the case moves to.
const MANUAL_TTLS: [Duration; 6] = [
    MS,
    S,
    Duration::from_millis(1_500),
    Duration::from_secs(2),
    Duration::from_secs(5),
    Duration::from_secs(30),
];
/// Time steps on a manual clock.
const MANUAL_STEPS: [Duration; 7] = [
    MS,
    Duration::from_millis(499),
    Duration::from_millis(500),
    S,
    Duration::from_secs(2),
    Duration::from_secs(10),
    Duration::from_secs(60),
];
/// TTLs on etcd that outlive any case, far enough apart that a renewal taking the wrong
/// one shows through etcd's whole seconds (one of them a fraction, which etcd rounds up).
const LONG_TTLS: [Duration; 4] = [
    Duration::from_secs(3_600),
    Duration::from_millis(3_600_500),
    Duration::from_secs(7_200),
    Duration::from_secs(86_400),
];
/// The TTLs of etcd's expiry cases: mostly one waited out, and one that outlives the case.
const SHORT_TTL: Duration = Duration::from_secs(2);
const EXPIRING_TTLS: [Duration; 4] = [SHORT_TTL, SHORT_TTL, SHORT_TTL, Duration::from_secs(3_600)];

/// How time passes for a backend.
#[derive(Debug)]
pub enum Time {
    /// memory and sled: a manual clock that the case moves, and the model with it, so
    /// that expiries are compared exactly, each at its revision.
    Manual(ManualClock),
    /// etcd, with TTLs that outlive the case: `Advance` does nothing, and before each
    /// step the model is moved to the wall clock, so that expiries compare.
    Wall,
    /// etcd, with short TTLs: `Advance` waits until the short leases have run out in
    /// the model and etcd has revoked them.
    WallExpiring,
}

impl Time {
    fn ttls(&self) -> &'static [Duration] {
        match self {
            Time::Manual(_) => &MANUAL_TTLS,
            Time::Wall => &LONG_TTLS,
            Time::WallExpiring => &EXPIRING_TTLS,
        }
    }

    fn now(&self) -> Timestamp {
        match self {
            Time::Manual(clock) => clock.now(),
            Time::Wall | Time::WallExpiring => wall_now(),
        }
    }
}

/// A backend to run a case on.
#[derive(Debug)]
pub struct Subject {
    pub store: Arc<dyn Store>,
    pub time: Time,
    /// The case's keys live under this; nothing else in the store does.
    pub root: String,
    /// How long, in real time, to wait for an event or an expiry.
    pub patience: Duration,
}

pub fn failed(what: &str, e: impl fmt::Display) -> TestCaseError {
    TestCaseError::fail(format!("{what}: {e}"))
}

/// Runs `case` on `subject` and on a fresh model; see the crate docs.
pub async fn run(subject: &Subject, case: &Case, tally: &Tally) -> TestCaseResult {
    let store = &*subject.store;
    let base = store
        .list(&subject.root)
        .await
        .map_err(|e| failed("listing before the case", e))?;
    prop_assert!(
        base.entries.is_empty(),
        "the case's root is not fresh: {base:?}"
    );
    let (expiry, order) = match subject.time {
        Time::Manual(_) => (Expiry::Exact, true),
        Time::Wall => (Expiry::Granted, true),
        Time::WallExpiring => (Expiry::Granted, false),
    };
    let mut run = Run {
        subject,
        model: StoreModel::new(subject.time.now()),
        check: Checker::new(0, base.revision, expiry, order),
        incarnations: BTreeMap::new(),
        tally,
    };
    let prefix = format!("{}{}", subject.root, PREFIXES[case.watch]);
    let live = Collector::start(store, &prefix, run.check.to_backend(1)).await?;
    for (i, op) in case.ops.iter().enumerate() {
        run.step(&format!("step {i} {op:?}"), op).await?;
    }
    // The last change, under the watched prefix: a watch has delivered everything
    // before it once it delivers this.
    let sentinel = format!("{prefix}~end");
    run.put("the closing put", &sentinel, b"end").await?;
    let events = live.until(&sentinel, subject.patience).await?;
    let expected = run.events_since(&prefix, 1)?;
    run.check
        .events("the watch open through the case", &expected, &events)?;
    bump(&tally.events, events.len() as u64);

    let from = run
        .check
        .replay_point(1 + u64::from(case.replay_from) * run.model.revision() / 256);
    let replay = Collector::start(store, &prefix, run.check.to_backend(from)).await?;
    let events = replay.until(&sentinel, subject.patience).await?;
    let expected = run.events_since(&prefix, from)?;
    run.check.events(
        &format!("a watch from revision {from} after the case"),
        &expected,
        &events,
    )?;
    bump(&tally.events, events.len() as u64);

    if !matches!(subject.time, Time::Manual(_)) {
        // Leases left behind would run out during a later case on the same etcd and move
        // its revisions; keys deleted first leave their leases nothing to delete.
        for entry in store
            .list(&subject.root)
            .await
            .map_err(|e| failed("cleanup", e))?
            .entries
        {
            store
                .delete(&entry.key)
                .await
                .map_err(|e| failed("cleanup", e))?;
        }
    }
    Ok(())
}

struct Run<'a> {
    subject: &'a Subject,
    model: StoreModel,
    check: Checker,
    /// The create revisions (the model's) each key has had, oldest first.
    incarnations: BTreeMap<String, Vec<Revision>>,
    tally: &'a Tally,
}

impl Run<'_> {
    fn key(&self, key: Key) -> String {
        match key {
            Key::Named(i) => format!("{}{}", self.subject.root, KEYS[i]),
            Key::Empty => String::new(),
        }
    }

    fn events_since(&self, prefix: &str, from: Revision) -> Result<Vec<WatchEvent>, TestCaseError> {
        self.model
            .events_since(prefix, from)
            .map_err(|e| failed("the model's history", e))
    }

    /// The revision a renewal claims, the model's and the backend's.
    fn claimed(&self, key: &str, choice: Rev) -> (Revision, Revision) {
        let current = self
            .model
            .get(key)
            .ok()
            .flatten()
            .map(|e| e.create_revision);
        let own = self.incarnations.get(key).map_or(&[][..], Vec::as_slice);
        let stale = own.iter().rev().find(|r| Some(**r) != current).copied();
        let foreign = self
            .incarnations
            .iter()
            .filter(|(k, _)| *k != key)
            .flat_map(|(_, revs)| revs.iter().copied())
            .max();
        let model = match choice {
            Rev::Current => current.or(stale).or(foreign),
            Rev::Stale => stale.or(foreign),
            Rev::Foreign => foreign,
            Rev::Zero => Some(0),
            Rev::Future => None,
        }
        .unwrap_or(self.model.revision() + 7);
        let backend = if model == 0 {
            0
        } else {
            self.check.to_backend(model)
        };
        (model, backend)
    }

    /// Before a step on the wall clock: the model moves to now, and must find nothing
    /// due, since only `Advance` waits for expiry.
    fn tick(&mut self, what: &str) -> TestCaseResult {
        if matches!(self.subject.time, Time::Manual(_)) {
            return Ok(());
        }
        let before = self.model.revision();
        prop_assert!(
            !self.model.advance_to(wall_now()),
            "{}: a lease ran out in the model before the step that waits for it ({} at revision \
             {}): the case ran slower than its TTL of {:?}, the machine is too loaded for this check",
            what,
            self.model.events_since("", before + 1).map(|e| format!("{e:?}")).unwrap_or_default(),
            before,
            SHORT_TTL
        );
        Ok(())
    }

    async fn step(&mut self, what: &str, op: &Op) -> TestCaseResult {
        bump(&self.tally.steps, 1);
        self.tick(what)?;
        let store = &*self.subject.store;
        let ttls = self.subject.time.ttls();
        match op {
            Op::Get(key) => {
                let key = self.key(*key);
                let model = self.model.get(&key).map(|e| e.cloned());
                let backend = store.get(&key).await;
                self.check.answer(what, &model, &backend, None, |m, b| {
                    self.check.maybe_entry(what, m.as_ref(), b.as_ref())
                })?;
            }
            Op::List(prefix) => {
                let prefix = format!("{}{}", self.subject.root, PREFIXES[*prefix]);
                let model = Ok(self.model.list(&prefix));
                let backend = store.list(&prefix).await;
                self.check.answer(what, &model, &backend, None, |m, b| {
                    self.check.listing(what, m, b)
                })?;
            }
            Op::Create { key, value, ttl } => {
                let (key, ttl) = (self.key(*key), ttl.resolve(ttls));
                let started = Instant::now();
                let backend = store.create(&key, &value.0, ttl).await;
                let took = started.elapsed();
                let model = self.model.create(&key, &value.0, ttl);
                self.wrote(what, model, backend, took, None)?;
            }
            Op::Renew {
                key,
                rev,
                value,
                ttl,
            } => {
                let (key, ttl) = (self.key(*key), ttl.resolve(ttls));
                let (m_rev, b_rev) = self.claimed(&key, *rev);
                let what = format!("{what} claiming revision {m_rev} (backend {b_rev})");
                let started = Instant::now();
                let backend = store.renew(&key, b_rev, &value.0, ttl).await;
                let took = started.elapsed();
                let model = self.model.renew(&key, m_rev, &value.0, ttl);
                self.wrote(&what, model, backend, took, Some((m_rev, b_rev)))?;
            }
            Op::Put { key, value } => {
                let key = self.key(*key);
                self.put(what, &key, &value.0).await?;
            }
            Op::Delete(key) => {
                let key = self.key(*key);
                let backend = store.delete(&key).await;
                let model = self.model.delete(&key);
                self.tally_error(&model);
                self.check.answer(what, &model, &backend, None, |m, b| {
                    prop_assert_eq!(m, b, "{}: whether the key existed", what);
                    Ok(())
                })?;
            }
            Op::Advance(i) => self.advance(what, *i).await?,
        }
        Ok(())
    }

    async fn put(&mut self, what: &str, key: &str, value: &[u8]) -> TestCaseResult {
        self.tick(what)?;
        let started = Instant::now();
        let backend = self.subject.store.put(key, value).await;
        let took = started.elapsed();
        let model = self.model.put(key, value);
        self.wrote(what, model, backend, took, None)
    }

    fn tally_error<T>(&self, result: &Result<T, StoreError>) {
        let t = self.tally;
        match result {
            Ok(_) => {}
            Err(StoreError::AlreadyExists { .. }) => bump(&t.already_exists, 1),
            Err(StoreError::NotFound { .. }) => bump(&t.not_found, 1),
            Err(StoreError::Conflict { .. }) => bump(&t.conflict, 1),
            Err(StoreError::Invalid(_)) => bump(&t.invalid, 1),
            Err(_) => {}
        }
    }

    /// Compares the answers of a write and records what it made.
    fn wrote(
        &mut self,
        what: &str,
        model: Result<weft_core::store::Entry, StoreError>,
        backend: Result<weft_core::store::Entry, StoreError>,
        took: Duration,
        given: Option<(Revision, Revision)>,
    ) -> TestCaseResult {
        self.tally_error(&model);
        if let (Ok(m), Ok(b)) = (&model, &backend) {
            self.check.wrote(m, b, took);
        }
        self.check.answer(what, &model, &backend, given, |m, b| {
            self.check.entry(what, m, b)
        })?;
        if let Ok(m) = &model {
            bump(&self.tally.written, 1);
            let revs = self.incarnations.entry(m.key.clone()).or_default();
            if revs.last() != Some(&m.create_revision) {
                revs.push(m.create_revision);
            }
        }
        Ok(())
    }

    async fn advance(&mut self, what: &str, i: usize) -> TestCaseResult {
        let before = self.model.revision();
        match &self.subject.time {
            Time::Manual(clock) => {
                clock.advance(MANUAL_STEPS[i % MANUAL_STEPS.len()]);
                self.model.advance_to(clock.now());
            }
            Time::Wall => {}
            Time::WallExpiring => self.wait_for_expiry(what).await?,
        }
        let after = self.model.revision();
        bump(&self.tally.expired, after - before);
        self.check.expired(before + 1..=after);
        Ok(())
    }

    /// Waits until every short lease has run out in the model, then until etcd has
    /// revoked them too, and compares what is left. Renewing a lease after its TTL but
    /// before etcd revokes it is a known etcd-backend defect (the renewal succeeds), so
    /// no step runs in that window.
    async fn wait_for_expiry(&mut self, what: &str) -> TestCaseResult {
        let root = &self.subject.root;
        let horizon = wall_now() + Duration::from_secs(60);
        let due = self
            .model
            .list(root)
            .entries
            .iter()
            .filter_map(|e| e.expires_at)
            .filter(|at| *at < horizon)
            .max();
        if let Some(due) = due {
            tokio::time::sleep(due.saturating_since(wall_now()) + 10 * MS).await;
        }
        self.model.advance_to(wall_now());
        let expected = self.model.list(root);
        let keys = |l: &weft_core::store::Listing| {
            l.entries.iter().map(|e| e.key.clone()).collect::<Vec<_>>()
        };
        let deadline = Instant::now() + self.subject.patience;
        loop {
            let listing = self
                .subject
                .store
                .list(root)
                .await
                .map_err(|e| failed(what, e))?;
            if keys(&listing) == keys(&expected) {
                return self.check.listing(what, &expected, &listing);
            }
            prop_assert!(
                Instant::now() < deadline,
                "{}: etcd still lists {:?} {:?} after the short TTLs ran out, the model {:?}",
                what,
                keys(&listing),
                self.subject.patience,
                keys(&expected)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
