//! Watches on etcd that never lose their place.
//!
//! The watch keeps a cursor: the revision after the last event it returned. etcd's
//! `start_revision` is inclusive, like the [`Watch`] contract's `from`, and a watch from
//! revision 0 means "from the oldest history kept" as in the other backends (etcd would
//! read 0 as "from now", so it is sent as 1). When the stream breaks (the member died, a
//! leader change, a GOAWAY) the watch opens again from the cursor once, at once; if that
//! fails too the error goes to the caller, who resumes from the same place after a
//! backoff. Responses without events (the creation notice, progress notifications) are
//! skipped: a batch is never empty. A cursor older than etcd's compaction point ends the
//! watch with [`StoreError::Compacted`], and the caller re-lists.
//!
//! Events at revisions below the cursor, which a re-opened stream may send again, are
//! dropped, so that each change is returned once (flannel v0.20 lost the event after its
//! own lease by resuming from the wrong revision; this cursor moves only past what was
//! returned).

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{WatchOptions, WatchStream};
use weft_core::store::{Revision, StoreError, Watch, WatchEvent};

use super::decode::{self, revision, RawEventKind, RawKv};
use super::{EtcdStore, RtKind};
use crate::clock::wall_now;

/// How long to wait before opening a broken stream again.
const REOPEN_DELAY: Duration = Duration::from_millis(100);

/// A watch on an [`EtcdStore`]; see the module docs.
pub(crate) struct EtcdWatch {
    store: EtcdStore,
    prefix: String,
    /// The first revision not yet returned.
    next: Revision,
    stream: Option<WatchStream>,
    failed: Option<StoreError>,
}

impl std::fmt::Debug for EtcdWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdWatch")
            .field("prefix", &self.prefix)
            .field("next", &self.next)
            .field("open", &self.stream.is_some())
            .finish_non_exhaustive()
    }
}

fn range_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl EtcdWatch {
    /// Opens the stream now, so that an unreachable cluster is reported at once.
    pub(crate) async fn open(
        store: EtcdStore,
        prefix: &str,
        from: Revision,
    ) -> Result<Self, StoreError> {
        let mut watch = EtcdWatch {
            store,
            prefix: prefix.to_string(),
            next: from.max(1),
            stream: None,
            failed: None,
        };
        watch.stream = Some(watch.start().await?);
        Ok(watch)
    }

    async fn start(&self) -> Result<WatchStream, StoreError> {
        let (key, end) = if self.prefix.is_empty() {
            (vec![0], vec![0])
        } else {
            (self.prefix.as_bytes().to_vec(), range_end(&self.prefix))
        };
        let from = i64::try_from(self.next).unwrap_or(i64::MAX);
        let opts = WatchOptions::new()
            .with_range(end)
            .with_start_revision(from);
        self.store
            .call_as(RtKind::Watch, |mut c| {
                let (key, opts) = (key.clone(), opts.clone());
                async move { c.watch(key, Some(opts)).await }
            })
            .await
            .map_err(|f| f.into_store(&format!("watch {} from {}", self.prefix, self.next)))
    }

    fn fail(&mut self, e: StoreError) -> Result<Vec<WatchEvent>, StoreError> {
        self.stream = None;
        self.failed = Some(e.clone());
        Err(e)
    }

    /// The events of one response at or after the cursor, with the cursor moved past
    /// them.
    async fn events(
        &mut self,
        response: &etcd_client::WatchResponse,
    ) -> Result<Vec<WatchEvent>, StoreError> {
        let raw: Vec<(RawEventKind, RawKv)> = response
            .events()
            .iter()
            .filter_map(|e| Some((e.event_type().into(), e.kv()?.into())))
            .collect();
        let expiries = self
            .store
            .expiries(decode::leases_wanted(self.next, &raw))
            .await?;
        let (events, next) = decode::watch_events(self.next, &raw, &expiries, wall_now());
        self.next = next;
        Ok(events)
    }
}

#[async_trait]
impl Watch for EtcdWatch {
    async fn next(&mut self) -> Result<Vec<WatchEvent>, StoreError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let mut reopened = false;
        loop {
            let stream = match self.stream.as_mut() {
                Some(stream) => stream,
                None => {
                    tokio::time::sleep(REOPEN_DELAY).await;
                    match self.start().await {
                        Ok(stream) => self.stream.insert(stream),
                        Err(e) => return self.fail(e),
                    }
                }
            };
            let broken = match stream.message().await {
                Ok(Some(response)) => {
                    if response.compact_revision() > 0 {
                        let e = StoreError::Compacted {
                            requested: self.next,
                            compact_revision: revision(response.compact_revision()),
                        };
                        return self.fail(e);
                    }
                    if response.canceled() {
                        let e = StoreError::Unavailable(format!(
                            "etcd cancelled the watch on {}: {}",
                            self.prefix,
                            response.cancel_reason()
                        ));
                        return self.fail(e);
                    }
                    if response.created() {
                        reopened = false;
                    }
                    let events = match self.events(&response).await {
                        Ok(events) => events,
                        Err(e) => return self.fail(e),
                    };
                    if !events.is_empty() {
                        return Ok(events);
                    }
                    continue;
                }
                Ok(None) => "etcd closed the watch stream".to_string(),
                Err(e) => super::error::describe(&e),
            };
            self.stream = None;
            if reopened {
                let e = StoreError::Unavailable(format!(
                    "watch on {} from {}: {broken}",
                    self.prefix, self.next
                ));
                return self.fail(e);
            }
            tracing::debug!(prefix = %self.prefix, next = self.next, error = %broken, "etcd watch broke; resuming");
            reopened = true;
        }
    }
}
