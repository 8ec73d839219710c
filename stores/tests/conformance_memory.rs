//! The conformance suite against the memory backend: once on a manual clock (the
//! simulator's store, where waiting out a TTL costs nothing) and once on the wall clock
//! (`memory:` in the daemon).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use weft_core::store::{Revision, Store, StoreError};
use weft_core::Timestamp;
use weft_stores::conformance::TestBackend;
use weft_stores::MemoryStore;

#[derive(Debug)]
struct Memory {
    store: MemoryStore,
    short_ttl: Duration,
}

#[async_trait]
impl TestBackend for Memory {
    fn store(&self) -> Arc<dyn Store> {
        Arc::new(self.store.clone())
    }

    async fn advance(&self, d: Duration) {
        if self.store.clock().is_manual() {
            self.store.advance(d);
        } else {
            tokio::time::sleep(d).await;
        }
    }

    fn now(&self) -> Timestamp {
        self.store.now()
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.store.compact(revision)
    }

    fn short_ttl(&self) -> Duration {
        self.short_ttl
    }
}

async fn manual_clock() -> Memory {
    Memory {
        store: MemoryStore::manual(Timestamp::from_millis(1_700_000_000_000)),
        short_ttl: Duration::from_secs(30),
    }
}

weft_stores::conformance_tests!(manual_clock);

mod wall_clock {
    use super::*;

    async fn wall_clock() -> Memory {
        Memory {
            store: MemoryStore::with_wall_clock(),
            short_ttl: Duration::from_millis(300),
        }
    }

    weft_stores::conformance_tests!(wall_clock);
}
