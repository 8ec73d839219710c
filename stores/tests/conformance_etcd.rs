//! The conformance suite against a real etcd (Debian's `etcd-server`), one etcd per check:
//! etcd's compaction is store-wide, so checks sharing one would compact each other's
//! history. TTLs are whole seconds there; the test etcd grants leases as short as one.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use weft_core::store::{Revision, Store, StoreError};
use weft_core::Timestamp;
use weft_stores::conformance::TestBackend;
use weft_stores::testing::{etcd_or_skip, Etcd};
use weft_stores::{EtcdOptions, EtcdStore};

#[derive(Debug)]
struct RealEtcd {
    store: EtcdStore,
    _etcd: Etcd,
}

#[async_trait]
impl TestBackend for RealEtcd {
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
        Duration::from_secs(1)
    }

    fn patience(&self) -> Duration {
        // etcd looks for expired leases every half second, then revokes through raft.
        Duration::from_secs(15)
    }
}

async fn etcd(check: &str) -> Option<RealEtcd> {
    let etcd = tokio::task::spawn_blocking({
        let check = check.to_string();
        move || etcd_or_skip(&check)
    })
    .await
    .expect("etcd starter")?;
    let store = EtcdStore::connect(&etcd.endpoints(), &EtcdOptions::default())
        .await
        .expect("connect to the test etcd");
    Some(RealEtcd { store, _etcd: etcd })
}

weft_stores::conformance_tests!(etcd, optional);
