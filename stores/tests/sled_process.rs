//! The sled backend across processes: a writer killed with SIGKILL loses nothing it
//! acknowledged, and a second process cannot open the directory while it is in use.
//!
//! The writer is this test binary itself, re-run with `WEFT_SLED_CHILD_DIR` set so that
//! only `child_writer` runs, which then writes until killed (or for at most 60 s). The
//! child is `#[ignore]`d: an ordinary run never runs it (where it could only pass
//! without doing anything), its parent runs it explicitly with `--ignored`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use weft_core::store::{Revision, Store, StoreError};
use weft_stores::{Clock, SledStore};

const CHILD_ENV: &str = "WEFT_SLED_CHILD_DIR";
const ACKS_BEFORE_KILL: usize = 150;

fn value(i: u64, round: u64) -> Vec<u8> {
    format!("lease {i} round {round}").into_bytes()
}

/// The child: creates leases and renews every third one, printing `ACK key create_rev
/// mod_rev round` for each write only after the store has returned from it.
#[test]
#[ignore = "the writer child of kill_9_loses_no_acknowledged_write, which runs it"]
fn child_writer() {
    let dir = std::env::var_os(CHILD_ENV)
        .expect("run by kill_9_loses_no_acknowledged_write, with WEFT_SLED_CHILD_DIR set");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("child runtime");
    runtime.block_on(async {
        let store = SledStore::open(&dir, Clock::Wall).expect("child opens the store");
        let mut out = std::io::stdout().lock();
        writeln!(out, "READY").expect("stdout");
        out.flush().expect("stdout");
        let ttl = Some(Duration::from_secs(3600));
        let started = Instant::now();
        for i in 0..100_000u64 {
            if started.elapsed() > Duration::from_secs(60) {
                break;
            }
            let key = format!("/kill/{i:06}");
            let e = store.create(&key, &value(i, 0), ttl).await.expect("create");
            writeln!(out, "ACK {key} {} {} 0", e.create_revision, e.mod_revision).expect("stdout");
            out.flush().expect("stdout");
            if i % 3 == 0 {
                let e = store
                    .renew(&key, e.create_revision, &value(i, 1), ttl)
                    .await
                    .expect("renew");
                writeln!(out, "ACK {key} {} {} 1", e.create_revision, e.mod_revision)
                    .expect("stdout");
                out.flush().expect("stdout");
            }
        }
    });
}

/// What the child acknowledged about one key: its last acknowledged write.
#[derive(Debug, Clone, Copy)]
struct Ack {
    create_revision: Revision,
    mod_revision: Revision,
    round: u64,
}

fn parse_ack(line: &str) -> Option<(String, Ack)> {
    let mut parts = line.strip_prefix("ACK ")?.split(' ');
    let key = parts.next()?.to_string();
    let mut num = || parts.next()?.parse::<u64>().ok();
    let ack = Ack {
        create_revision: num()?,
        mod_revision: num()?,
        round: num()?,
    };
    Some((key, ack))
}

/// Kills the writer if the test fails before it does, so that no child outlives it.
struct Reaper(std::process::Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn kill_9_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let child = Command::new(std::env::current_exe().expect("test binary path"))
        .args([
            "--exact",
            "child_writer",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the writer");
    let mut child = Reaper(child);
    let stdout = child.0.stdout.take().expect("child stdout");
    let mut lines = BufReader::new(stdout).lines();

    let mut acks: BTreeMap<String, Ack> = BTreeMap::new();
    let mut ready = false;
    while acks.len() < ACKS_BEFORE_KILL {
        let Some(line) = lines.next() else {
            panic!("the writer exited early (status {:?})", child.0.wait());
        };
        let line = line.expect("read the writer's output");
        // libtest prints "test child_writer ... " before the child's first line.
        ready |= line.ends_with("READY");
        if let Some((key, ack)) = parse_ack(&line) {
            acks.insert(key, ack);
        }
    }
    assert!(ready);

    // While the writer holds the directory, another process cannot open it, and is told
    // so at once rather than left waiting.
    let started = Instant::now();
    let err = SledStore::open(dir.path(), Clock::Wall).expect_err("the writer holds the lock");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(err, StoreError::Locked(dir.path().display().to_string()));

    // Let the writer go on for a while, to land the kill at no particular point of a write.
    let jitter = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() % 40);
    std::thread::sleep(Duration::from_millis(10 + u64::from(jitter)));
    // `Child::kill` sends SIGKILL to the child's PID: no destructor, no flush, no goodbye.
    child.0.kill().expect("SIGKILL the writer");
    let status = child.0.wait().expect("reap the writer");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "the writer died of SIGKILL, not of its own accord: {status:?}"
    );
    // Everything printed before the kill was acknowledged, even if read only now.
    for line in lines {
        let Ok(line) = line else { break };
        if let Some((key, ack)) = parse_ack(&line) {
            acks.insert(key, ack);
        }
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let store = SledStore::open(dir.path(), Clock::Wall).expect("reopen after the kill");
        let listing = store.list("/kill/").await.expect("list");
        let stored: BTreeMap<_, _> = listing.entries.iter().map(|e| (e.key.clone(), e)).collect();
        let max_acked = acks.values().map(|a| a.mod_revision).max().unwrap_or(0);
        assert!(listing.revision >= max_acked);
        for (key, ack) in &acks {
            let entry = stored
                .get(key)
                .unwrap_or_else(|| panic!("acknowledged {key} ({ack:?}) is lost"));
            assert_eq!(entry.create_revision, ack.create_revision, "{key}");
            // A later write may have landed without being acknowledged; never an earlier.
            assert!(
                entry.mod_revision >= ack.mod_revision,
                "{key}: {entry:?} {ack:?}"
            );
            if entry.mod_revision == ack.mod_revision {
                let i: u64 = key["/kill/".len()..].parse().expect("key number");
                assert_eq!(entry.value, value(i, ack.round), "{key}");
            }
        }
        // The store goes on from where it stopped.
        let next = store
            .put("/kill/after", b"")
            .await
            .expect("write after reopen");
        assert!(next.mod_revision > listing.revision);
        eprintln!(
            "{} keys acknowledged before SIGKILL, {} found at revision {}",
            acks.len(),
            stored.len(),
            listing.revision
        );
    });
}

/// The children only run when a parent asks for them: an ordinary run lists them as
/// ignored rather than running them, where they would pass without doing anything.
#[test]
fn the_children_are_ignored_in_ordinary_runs() {
    let out = Command::new(std::env::current_exe().expect("test binary path"))
        .args(["--list", "--ignored"])
        .env_remove(CHILD_ENV)
        .output()
        .expect("list the ignored tests");
    assert!(out.status.success(), "{out:?}");
    let ignored = String::from_utf8_lossy(&out.stdout);
    assert!(
        ignored.lines().any(|l| l == "child_writer: test"),
        "child_writer is not #[ignore]d:\n{ignored}"
    );
}

const READER_ENV: &str = "WEFT_SLED_READER_DIR";
/// Large enough that sled takes a while to write each one out.
const BIG: usize = 512 * 1024;

/// The child of `nothing_a_reader_saw_is_lost_to_kill_9`: one task rewrites one key
/// with large values, another reads it in a tight loop and prints `SEEN mod_rev` the
/// moment it sees a new revision.
#[test]
#[ignore = "the child of nothing_a_reader_saw_is_lost_to_kill_9, which runs it"]
fn child_reader_writer() {
    let dir = std::env::var_os(READER_ENV)
        .expect("run by nothing_a_reader_saw_is_lost_to_kill_9, with WEFT_SLED_READER_DIR set");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("child runtime");
    runtime.block_on(async {
        let store = SledStore::open(&dir, Clock::Wall).expect("child opens the store");
        let reader = store.clone();
        let read = tokio::spawn(async move {
            let mut last = 0;
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(60) {
                if let Some(e) = reader.get("/seen/k").await.expect("get") {
                    if e.mod_revision > last {
                        last = e.mod_revision;
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "SEEN {last}").expect("stdout");
                        out.flush().expect("stdout");
                    }
                }
                tokio::task::yield_now().await;
            }
        });
        let started = Instant::now();
        let mut i = 0u8;
        while started.elapsed() < Duration::from_secs(60) {
            i = i.wrapping_add(1);
            store.put("/seen/k", &vec![i; BIG]).await.expect("put");
        }
        read.await.expect("reader");
    });
}

/// A reader may only see what is durable: a write a reader saw survives a SIGKILL that
/// comes the moment the reader said so. (A store that shows a write before flushing it
/// loses it to a kill in between.) A few rounds, each killed after a different number
/// of sightings.
#[test]
fn nothing_a_reader_saw_is_lost_to_kill_9() {
    for round in 0..6u64 {
        let dir = tempfile::tempdir().expect("temporary directory");
        let child = Command::new(std::env::current_exe().expect("test binary path"))
            .args([
                "--exact",
                "child_reader_writer",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(READER_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the child");
        let mut child = Reaper(child);
        let stdout = child.0.stdout.take().expect("child stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut seen = 0;
        let mut sightings = 0;
        while sightings < 5 + round * 3 {
            let Some(line) = lines.next() else {
                panic!("the child exited early (status {:?})", child.0.wait());
            };
            let line = line.expect("read the child's output");
            if let Some(rev) = line.rsplit_once("SEEN ").and_then(|(_, r)| r.parse().ok()) {
                seen = rev;
                sightings += 1;
            }
        }
        // At once: whatever the reader saw must be on disk by now.
        child.0.kill().expect("SIGKILL the child");
        child.0.wait().expect("reap the child");
        drop(lines);

        let store = SledStore::open(dir.path(), Clock::Wall).expect("reopen after the kill");
        let revision = store.revision().expect("revision");
        assert!(
            revision >= seen,
            "round {round}: a reader saw revision {seen}, the store came back at {revision}"
        );
    }
}
