//! Renewals on etcd that claim revision 0. etcd compares an absent key as having
//! create_revision 0, so a renewal transaction that only compared the create revision
//! would create the key; the contract (and the model) say NotFound. Found by the
//! differential test.

use std::time::Duration;

use weft_core::store::{Store, StoreError};
use weft_stores::testing::etcd_or_skip;
use weft_stores::{EtcdOptions, EtcdStore};

const KEY: &str = "/coreos.com/network/subnets/10.5.34.0-24";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_claiming_revision_0_creates_nothing() {
    let etcd = tokio::task::spawn_blocking(|| {
        etcd_or_skip("a_renewal_claiming_revision_0_creates_nothing")
    })
    .await
    .expect("etcd starter");
    let Some(etcd) = etcd else {
        return;
    };
    let store = EtcdStore::connect(&etcd.endpoints(), &EtcdOptions::default())
        .await
        .expect("connect");
    for ttl in [None, Some(Duration::from_secs(3600))] {
        let result = store.renew(KEY, 0, b"v", ttl).await;
        assert!(
            matches!(&result, Err(StoreError::NotFound { key }) if key == KEY),
            "ttl {ttl:?}: {result:?}"
        );
        assert_eq!(store.get(KEY).await.expect("get"), None, "ttl {ttl:?}");
    }
    let live = store.create(KEY, b"v", None).await.expect("create");
    let result = store.renew(KEY, 0, b"w", None).await;
    assert!(
        matches!(
            &result,
            Err(StoreError::Conflict { expected: 0, found, .. }) if *found == live.create_revision
        ),
        "{result:?}"
    );
    assert_eq!(store.get(KEY).await.expect("get"), Some(live));
}
