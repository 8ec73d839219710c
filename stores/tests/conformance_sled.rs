//! The conformance suite against the sled backend, each check on a fresh directory, with
//! the wall clock as in production: TTL checks really wait (half-second TTLs).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tempfile::TempDir;
use weft_core::store::{Revision, Store, StoreError};
use weft_core::Timestamp;
use weft_stores::conformance::TestBackend;
use weft_stores::{Clock, SledStore};

#[derive(Debug)]
struct Sled {
    store: SledStore,
    _dir: TempDir,
}

#[async_trait]
impl TestBackend for Sled {
    fn store(&self) -> Arc<dyn Store> {
        Arc::new(self.store.clone())
    }

    async fn advance(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }

    fn now(&self) -> Timestamp {
        weft_stores::clock::wall_now()
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.store.compact(revision).await
    }

    fn short_ttl(&self) -> Duration {
        Duration::from_millis(500)
    }
}

async fn sled() -> Sled {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = SledStore::open(dir.path(), Clock::Wall).expect("open sled store");
    Sled { store, _dir: dir }
}

weft_stores::conformance_tests!(sled);
