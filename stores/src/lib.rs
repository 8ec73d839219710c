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
//! - `etcd://HOST:PORT[,HOST:PORT...]` -- [`EtcdStore`]: the production backend, in
//!   flannel's schema; TLS and credentials come from [`EtcdOptions`] (flannel's
//!   `--etcd-*` flags) through [`open_with`].
//!
//! [`conformance`] is the one suite every backend is tested with; each backend's test
//! file instantiates it with [`conformance_tests!`].

pub mod clock;
pub mod conformance;
pub mod driver;
pub mod etcd;
pub mod memory;
pub mod sled_store;
#[cfg(feature = "testing")]
pub mod testing;

use weft_core::store::{Store, StoreError};

pub use clock::{Clock, ManualClock};
pub use driver::{DriverStats, Latency, NodeDriver, LATENCY_BUCKETS};
pub use etcd::{EtcdOptions, EtcdStats, EtcdStore, RtKind};
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
    /// An `etcd://` URL that does not name its endpoints properly.
    #[error("bad etcd store URL {url:?}: {reason}; use etcd://HOST:PORT[,HOST:PORT...]")]
    BadEtcdUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// etcd keeps time by its own clock: a manual clock cannot drive it.
    #[error("the etcd store {url:?} cannot run on a manual clock")]
    ManualClockOnEtcd {
        /// The URL as given.
        url: String,
    },
    /// The backend was chosen but failed to open, e.g. [`StoreError::Locked`].
    #[error("cannot open store {url:?}: {error}")]
    Store {
        /// The URL as given.
        url: String,
        /// The backend's error.
        error: StoreError,
    },
}

/// How to open a store, besides its URL.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// Where expiries are measured (memory and sled; etcd measures them itself).
    pub clock: Clock,
    /// TLS, credentials and deadlines for `etcd://` URLs.
    pub etcd: EtcdOptions,
}

/// Opens the store named by `url` (see the crate docs for the forms), with expiries
/// measured by the system clock: what the daemon and the other commands use.
pub async fn open(url: &str) -> Result<Box<dyn Store>, OpenError> {
    open_with(url, &StoreOptions::default()).await
}

/// [`open`], with expiries measured by `clock`: a [`Clock::Manual`] lets a test move time
/// through the [`ManualClock`] it keeps (memory and sled).
pub async fn open_with_clock(url: &str, clock: Clock) -> Result<Box<dyn Store>, OpenError> {
    let options = StoreOptions {
        clock,
        ..StoreOptions::default()
    };
    open_with(url, &options).await
}

/// A store URL, read: which backend [`open`] opens, and where. Reading one opens
/// nothing, so a bad URL is refused at once, naming it and the forms expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `memory:` (or `memory://`).
    Memory,
    /// `sled:PATH` (or `sled://PATH`).
    Sled {
        /// The directory.
        path: String,
    },
    /// `etcd://HOST:PORT[,HOST:PORT...]`.
    Etcd {
        /// The `HOST:PORT` endpoints, in the order given.
        endpoints: Vec<String>,
    },
}

impl StoreUrl {
    /// Reads `url` (see the crate docs for the forms).
    pub fn parse(url: &str) -> Result<StoreUrl, OpenError> {
        if url == "memory:" || url == "memory://" {
            return Ok(StoreUrl::Memory);
        }
        if let Some(path) = url.strip_prefix("sled:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(OpenError::MissingPath {
                    url: url.to_string(),
                });
            }
            return Ok(StoreUrl::Sled {
                path: path.to_string(),
            });
        }
        if url.starts_with("etcd://") {
            let endpoints = etcd::parse_url(url).map_err(|reason| OpenError::BadEtcdUrl {
                url: url.to_string(),
                reason,
            })?;
            return Ok(StoreUrl::Etcd { endpoints });
        }
        Err(OpenError::Unsupported {
            url: url.to_string(),
        })
    }
}

/// [`open`], with the options the URL cannot carry: a clock, etcd's TLS files and
/// credentials.
pub async fn open_with(url: &str, options: &StoreOptions) -> Result<Box<dyn Store>, OpenError> {
    let clock = options.clock.clone();
    match StoreUrl::parse(url)? {
        StoreUrl::Memory => Ok(Box::new(MemoryStore::new(clock))),
        StoreUrl::Sled { path } => {
            let store_error = |error| OpenError::Store {
                url: url.to_string(),
                error,
            };
            // Opening replays sled's log: blocking work, kept off the async workers.
            let store = tokio::task::spawn_blocking(move || SledStore::open(path, clock))
                .await
                .map_err(|e| store_error(StoreError::Backend(format!("opening task failed: {e}"))))?
                .map_err(store_error)?;
            Ok(Box::new(store))
        }
        StoreUrl::Etcd { endpoints } => {
            if clock.is_manual() {
                return Err(OpenError::ManualClockOnEtcd {
                    url: url.to_string(),
                });
            }
            let store = EtcdStore::connect(&endpoints, &options.etcd)
                .await
                .map_err(|error| OpenError::Store {
                    url: url.to_string(),
                    error,
                })?;
            Ok(Box::new(store))
        }
    }
}

/// A store call in flight: what [`StoreOp::call`](weft_core::store::StoreOp::call) gives
/// over an async store.
pub type CallFuture<'a> = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<weft_core::store::StoreOutput, StoreError>>
            + Send
            + 'a,
    >,
>;

/// Any async [`Store`] performs a node's store calls, through the one mapping in
/// [`StoreOp::call`](weft_core::store::StoreOp::call).
#[derive(Debug)]
pub struct AsyncCalls<'a>(pub &'a dyn Store);

impl<'a> weft_core::store::StoreCalls for AsyncCalls<'a> {
    type Out = CallFuture<'a>;

    fn list(&mut self, prefix: &str) -> CallFuture<'a> {
        let (store, prefix) = (self.0, prefix.to_owned());
        Box::pin(async move {
            let listing = store.list(&prefix).await?;
            Ok(weft_core::store::StoreOutput::Listing(listing))
        })
    }

    fn prepare_lease(&mut self, ttl: std::time::Duration) {
        self.0.prepare_lease(ttl);
    }

    fn create(
        &mut self,
        key: &str,
        value: &[u8],
        ttl: Option<std::time::Duration>,
    ) -> CallFuture<'a> {
        let (store, key, value) = (self.0, key.to_owned(), value.to_vec());
        Box::pin(async move {
            let entry = store.create(&key, &value, ttl).await?;
            Ok(weft_core::store::StoreOutput::Entry(entry))
        })
    }

    fn renew(
        &mut self,
        key: &str,
        create_revision: weft_core::store::Revision,
        value: &[u8],
        ttl: Option<std::time::Duration>,
    ) -> CallFuture<'a> {
        let (store, key, value) = (self.0, key.to_owned(), value.to_vec());
        Box::pin(async move {
            let entry = store.renew(&key, create_revision, &value, ttl).await?;
            Ok(weft_core::store::StoreOutput::Entry(entry))
        })
    }
}

/// Performs a one-shot [`StoreOp`](weft_core::store::StoreOp) (list, create, renew)
/// against `store`; `None` for a watch, which is long-lived and belongs to the driver.
pub async fn perform(
    store: &dyn Store,
    op: &weft_core::store::StoreOp,
) -> Option<Result<weft_core::store::StoreOutput, StoreError>> {
    Some(op.call(&mut AsyncCalls(store))?.await)
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
            matches!(&err, OpenError::Store { error: StoreError::Locked(p), .. } if p.contains(&dir.path().display().to_string())),
            "{err}"
        );
        drop(store);

        let err = open("sled:").await.expect_err("no path");
        assert!(matches!(err, OpenError::MissingPath { .. }), "{err}");

        // Connecting sends nothing: a cluster that is down is not an error yet.
        let store = open("etcd://127.0.0.1:1,127.0.0.1:2")
            .await
            .expect("etcd opens lazily");
        assert!(format!("{store:?}").starts_with("EtcdStore"));
        let err = open("etcd://127.0.0.1").await.expect_err("no port");
        assert!(matches!(err, OpenError::BadEtcdUrl { .. }), "{err}");
        let (clock, _hand) = Clock::manual(Timestamp::ZERO);
        let err = open_with_clock("etcd://127.0.0.1:1", clock)
            .await
            .expect_err("manual clock");
        assert!(matches!(err, OpenError::ManualClockOnEtcd { .. }), "{err}");

        let err = open("redis://x").await.expect_err("unknown");
        let msg = err.to_string();
        assert!(msg.contains("redis://x") && msg.contains("memory:") && msg.contains("sled:PATH"));
    }
}
