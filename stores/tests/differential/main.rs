//! The differential test: every backend against the store model, the one definition of
//! the Store contract (`weft_core::store::StoreModel`).
//!
//! Each proptest case is a random sequence of `get`, `list(prefix)`, `create(key, value,
//! ttl or none)`, `renew(key, create_revision, value, ttl)`, `put`, `delete` and time
//! passing, over six keys under two prefixes (plus `ab`, which the prefix `a` matches and
//! `a/` does not) so that creates collide and renewals meet other incarnations. Values
//! are arbitrary bytes or lease JSON. A renewal claims the key's live incarnation, an
//! earlier one of the same key, another key's, 0, or a revision not reached yet, chosen
//! from the model's state when it runs. A few requests are invalid (the empty key, a zero
//! or sub-millisecond TTL). Every step runs on the backend and on a fresh model, and
//! every answer is compared (see `check`):
//!
//! - entries: key, value, `create_revision`, `mod_revision`, `expires_at`; listings: the
//!   keys in order and the revision; `delete`: whether the key existed; errors: the same
//!   variant for the same key, a `Conflict` naming the revision each store was given and
//!   the same incarnation found. An error only the backend gives (unavailable, backend)
//!   is a failure too.
//! - revisions: a case is the store's only writer, so the backend's revisions must be the
//!   model's plus one offset fixed by the listing before the case (0 for a fresh memory
//!   or sled store, etcd's revision for etcd): one-to-one, increasing in the same places,
//!   and with no revision skipped or added on either side. `create_revision` and
//!   `mod_revision` go through the same map.
//! - watch: a watch on one of the prefixes, opened from the revision before the case and
//!   read by its own task while the case runs, and a second one opened after the case
//!   from a revision within it (history replay); each is read until the event of a final
//!   `put` under the watched prefix, and compared event by event (kind, key, value, mapped
//!   revisions, expiry) with the model's `events_since`. A `Put` event must also be
//!   exactly what the write that made it answered.
//!
//! The memory backend wraps the model, so its test checks the wrapper (the clock, lazy
//! expiry, the async watch woken by changes and by the clock), not the model: a model
//! that is wrong is caught by the sled and etcd tests (a model whose `renew` ignored the
//! claimed revision passed on memory and failed on sled at once).
//!
//! Time, honestly per backend (`run::Time`):
//!
//! - memory and sled run on a manual clock that the case moves and the model with it, in
//!   steps on the same grid as the TTLs (1 ms to 30 s), so expiries land exactly on the
//!   instants the case moves to and are compared exactly: the same `expires_at`, the same
//!   deletions at the same revisions in (expiry time, key) order. A fresh store per case.
//! - etcd keeps its own time, in whole seconds. In the main etcd test the TTLs are 1 h to
//!   1 day, so that nothing expires during a case, and time passing does nothing; the
//!   model's clock is moved to the wall clock before each step, and etcd's `expires_at`
//!   must lie within a second before the model's and the call's duration plus a second
//!   after (etcd rounds TTLs up to seconds and weft's lease IDs round expiries down).
//!   TTLs far apart catch a renewal that keeps or takes the wrong one.
//! - etcd's expiry is checked in its own test, a few cases with real 2 s TTLs (and 1 h
//!   ones): steps, one wait until the model's short leases are due and etcd has revoked
//!   them, then more steps. After the wait what is expired or not must agree, and the
//!   listing compare in full. etcd revokes leases that ran out together in an order of its
//!   own, so those deletions compare as a set of keys within the same revisions. A case
//!   whose steps before the wait take longer than the TTL fails and says so.
//! - One etcd per test, a fresh key prefix per case, its keys deleted after it so that no
//!   lease of one case runs out during another and moves its revisions.
//!
//! Left out, on purpose:
//!
//! - `list("")`: on a shared etcd it lists other cases. (`get("")` is compared: this
//!   test found the model answering "absent" where sled and etcd refuse the empty key;
//!   the model now refuses it too.)
//! - compaction: not a `Store` call, store-wide on etcd, and racing the watch read while
//!   the case runs; the conformance suite checks it.
//! - etcd: renewing a lease after its TTL but before etcd revokes it succeeds (a known
//!   defect, being fixed elsewhere); the expiry cases renew only after etcd has revoked.
//!   sled's visibility before flush and undecodable event-log records (known, being fixed
//!   elsewhere) cannot show here: steps are sequential and nothing is corrupted.
//!
//! `PROPTEST_CASES` overrides each test's number of cases. Failures are saved in
//! `main.regressions` next to this file and replayed first on every run.

mod case;
mod check;
mod run;
mod tally;
mod watch;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseResult, TestRunner};
use weft_core::Timestamp;
use weft_stores::testing::etcd_or_skip;
use weft_stores::{Clock, EtcdOptions, EtcdStore, MemoryStore, SledStore};

use case::Case;
use run::{Subject, Time};
use tally::Tally;

/// Where the manual clocks start: an ordinary wall-clock time.
const START: Timestamp = Timestamp::from_millis(1_700_000_000_000);
/// Steps per case, at most.
const STEPS: usize = 40;

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Runs `cases` cases of `strategy` through `body`, prints how long they took and what
/// they did, and fails with the smallest failing case.
fn check_cases<S: Strategy<Value = Case>>(
    name: &str,
    cases: u32,
    strategy: S,
    tally: &Tally,
    body: impl Fn(Case) -> TestCaseResult,
) {
    let config = Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        source_file: Some(file!()),
        ..Config::default()
    };
    let started = Instant::now();
    let result = TestRunner::new(config).run(&strategy, body);
    eprintln!(
        "differential {name}: {cases} cases in {:.1?}: {tally}",
        started.elapsed()
    );
    if let Err(e) = result {
        panic!("{name} differs from the model: {e}");
    }
}

#[test]
fn memory_agrees_with_the_model() {
    let rt = runtime();
    let tally = Tally::default();
    check_cases("memory", cases(512), case::case(STEPS), &tally, |case| {
        rt.block_on(async {
            let (clock, hand) = Clock::manual(START);
            let subject = Subject {
                store: Arc::new(MemoryStore::new(clock)),
                time: Time::Manual(hand),
                root: "/weft-difftest/".to_string(),
                patience: Duration::from_secs(10),
            };
            run::run(&subject, &case, &tally).await
        })
    });
}

#[test]
fn sled_agrees_with_the_model() {
    let rt = runtime();
    let tally = Tally::default();
    check_cases("sled", cases(256), case::case(STEPS), &tally, |case| {
        rt.block_on(async {
            let dir = tempfile::tempdir().expect("temporary directory");
            let (clock, hand) = Clock::manual(START);
            let store = SledStore::open(dir.path(), clock).expect("open sled store");
            let subject = Subject {
                store: Arc::new(store),
                time: Time::Manual(hand),
                root: "/weft-difftest/".to_string(),
                patience: Duration::from_secs(10),
            };
            run::run(&subject, &case, &tally).await
        })
    });
}

/// One etcd for the test; each case under a prefix of its own.
fn on_etcd(
    test: &str,
    name: &str,
    cases: u32,
    strategy: impl Strategy<Value = Case>,
    time: fn() -> Time,
) {
    let Some(etcd) = etcd_or_skip(test) else {
        return;
    };
    let rt = runtime();
    let store = rt
        .block_on(EtcdStore::connect(
            &etcd.endpoints(),
            &EtcdOptions::default(),
        ))
        .expect("connect to the test etcd");
    let store: Arc<dyn weft_core::store::Store> = Arc::new(store);
    let tally = Tally::default();
    let next = AtomicU64::new(0);
    check_cases(name, cases, strategy, &tally, |case| {
        let subject = Subject {
            store: store.clone(),
            time: time(),
            root: format!("/weft-difftest/{}/", next.fetch_add(1, Ordering::Relaxed)),
            patience: Duration::from_secs(15),
        };
        rt.block_on(run::run(&subject, &case, &tally))
    });
    drop(etcd);
}

#[test]
fn etcd_agrees_with_the_model() {
    on_etcd(
        "etcd_agrees_with_the_model",
        "etcd",
        cases(160),
        case::case(STEPS),
        || Time::Wall,
    );
}

#[test]
fn etcd_expiry_agrees_with_the_model() {
    on_etcd(
        "etcd_expiry_agrees_with_the_model",
        "etcd expiry",
        cases(10),
        case::expiry_case(12),
        || Time::WallExpiring,
    );
}
