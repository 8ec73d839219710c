//! Reading a watch while a case runs.

use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use weft_core::store::{Revision, Store, StoreError, WatchEvent};

use crate::run::failed;

/// A watch read by a task of its own while the case runs, as a node reads its watch.
pub struct Collector {
    batches: mpsc::UnboundedReceiver<Result<Vec<WatchEvent>, StoreError>>,
    task: JoinHandle<()>,
}

impl Collector {
    pub async fn start(
        store: &dyn Store,
        prefix: &str,
        from: Revision,
    ) -> Result<Self, TestCaseError> {
        let mut watch = store
            .watch(prefix, from)
            .await
            .map_err(|e| failed(&format!("watch {prefix} from {from}"), e))?;
        let (tx, batches) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let batch = watch.next().await;
                let end = batch.is_err();
                if tx.send(batch).is_err() || end {
                    return;
                }
            }
        });
        Ok(Collector { batches, task })
    }

    /// Every event up to and including the one about `last`.
    pub async fn until(
        mut self,
        last: &str,
        patience: Duration,
    ) -> Result<Vec<WatchEvent>, TestCaseError> {
        let deadline = tokio::time::Instant::now() + patience;
        let mut events = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.batches.recv()).await {
                Err(_) => {
                    return Err(TestCaseError::fail(format!(
                        "the watch gave no event for {last} within {patience:?}, only {events:?}"
                    )))
                }
                Ok(None) => return Err(TestCaseError::fail("the watch task ended")),
                Ok(Some(Err(e))) => {
                    return Err(failed(&format!("the watch failed after {events:?}"), e))
                }
                Ok(Some(Ok(batch))) => {
                    prop_assert!(!batch.is_empty(), "the watch gave an empty batch");
                    events.extend(batch);
                    if events.iter().any(|e| e.key() == last) {
                        return Ok(events);
                    }
                }
            }
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}
