//! weft-stores: the backends of weft-core's [`Store`] trait, and the suite they all pass.
//!
//! weft-core defines the contract (revisions, atomic create, TTLs, reservations, watches
//! that resume or say `Compacted`) and never performs I/O; the drivers -- the `weft`
//! binary's daemon and lab, and the simulator -- perform the store operations the core
//! asks for against a `Box<dyn Store>` from this crate, chosen at run time by [`open`]
//! from a URL:
//!
//! - `memory:` -- [`MemoryStore`]: one process, deterministic, its time from a [`Clock`]
//!   the caller may drive by hand. The simulator builds one directly and uses its
//!   synchronous methods; the daemon gets one on the wall clock for trying things out.
//! - `sled:PATH` -- [`SledStore`]: persistent in one directory, surviving `kill -9`; one
//!   process at a time. For `weft lab` and single-host setups.
//! - `etcd://HOST:PORT[,HOST:PORT]` -- the production backend, not available yet.
//!
//! [`conformance`] is the one suite every backend is tested with; each backend's test
//! file instantiates it with [`conformance_tests!`].

pub mod clock;
pub mod conformance;
pub mod memory;
pub mod sled_store;
mod validate;

use weft_core::store::{Store, StoreError};

pub use clock::{Clock, ManualClock};
pub use memory::MemoryStore;
pub use sled_store::SledStore;

/// The store URL forms [`open`] understands, for messages.
pub const SUPPORTED_URLS: &str = "memory:, sled:PATH or etcd://HOST:PORT[,HOST:PORT...]";

/// Why [`open`] could not give a store.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The URL is none of the supported forms.
    #[error("unsupported store URL {url:?}: use {SUPPORTED_URLS}")]
    Unsupported {
        /// The URL as given.
        url: String,
    },
    /// A `sled:` URL without a directory.
    #[error("store URL {url:?} names no directory: use sled:PATH, e.g. sled:/var/lib/weft/store")]
    MissingPath {
        /// The URL as given.
        url: String,
    },
    /// An `etcd://` URL: that backend is not part of weft yet.
    #[error("etcd store is not available yet (asked for {url:?}); use memory: or sled:PATH")]
    EtcdNotAvailable {
        /// The URL as given.
        url: String,
    },
    /// The backend was chosen but failed to open, e.g. [`StoreError::Locked`].
    #[error("cannot open store {url:?}: {source}")]
    Store {
        /// The URL as given.
        url: String,
        /// The backend's error.
        #[source]
        source: StoreError,
    },
}

/// Opens the store named by `url` (see the crate docs for the forms), with expiries
/// measured by the system clock: what the daemon and the other commands use.
pub async fn open(url: &str) -> Result<Box<dyn Store>, OpenError> {
    open_with_clock(url, Clock::Wall).await
}

/// [`open`], with expiries measured by `clock`: a [`Clock::Manual`] lets a test move time
/// through the [`ManualClock`] it keeps, whichever backend the URL names.
pub async fn open_with_clock(url: &str, clock: Clock) -> Result<Box<dyn Store>, OpenError> {
    if url == "memory:" || url == "memory://" {
        return Ok(Box::new(MemoryStore::new(clock)));
    }
    if let Some(path) = url.strip_prefix("sled:") {
        let path = path.strip_prefix("//").unwrap_or(path);
        if path.is_empty() {
            return Err(OpenError::MissingPath {
                url: url.to_string(),
            });
        }
        let store_error = |source| OpenError::Store {
            url: url.to_string(),
            source,
        };
        // Opening replays sled's log: blocking work, kept off the async workers.
        let path = path.to_string();
        let store = tokio::task::spawn_blocking(move || SledStore::open(path, clock))
            .await
            .map_err(|e| store_error(StoreError::Backend(format!("opening task failed: {e}"))))?
            .map_err(store_error)?;
        return Ok(Box::new(store));
    }
    if url.starts_with("etcd://") {
        return Err(OpenError::EtcdNotAvailable {
            url: url.to_string(),
        });
    }
    Err(OpenError::Unsupported {
        url: url.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use weft_core::Timestamp;

    use super::*;

    #[tokio::test]
    async fn urls_choose_backends_or_say_what_is_wrong() {
        let store = open("memory:").await.expect("memory opens");
        assert!(format!("{store:?}").starts_with("MemoryStore"));
        let (clock, hand) = Clock::manual(Timestamp::from_millis(1_000));
        let store = open_with_clock("memory://", clock)
            .await
            .expect("memory opens");
        let e = store
            .create("/k", b"v", Some(Duration::from_secs(1)))
            .await
            .expect("create");
        assert_eq!(e.expires_at, Some(Timestamp::from_millis(2_000)));
        hand.advance(Duration::from_secs(1));
        assert_eq!(store.get("/k").await.expect("get"), None);

        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sled:{}", dir.path().display());
        let store = open(&url).await.expect("sled opens");
        assert!(format!("{store:?}").starts_with("SledStore"));
        let err = open(&url).await.expect_err("second open is locked");
        assert!(
            matches!(&err, OpenError::Store { source: StoreError::Locked(p), .. } if p.contains(&dir.path().display().to_string())),
            "{err}"
        );
        drop(store);

        let err = open("sled:").await.expect_err("no path");
        assert!(matches!(err, OpenError::MissingPath { .. }), "{err}");

        let err = open("etcd://127.0.0.1:2379")
            .await
            .expect_err("no etcd yet");
        assert!(
            err.to_string().contains("etcd store is not available yet"),
            "{err}"
        );

        let err = open("redis://x").await.expect_err("unknown");
        let msg = err.to_string();
        assert!(msg.contains("redis://x") && msg.contains("memory:") && msg.contains("sled:PATH"));
    }
}
