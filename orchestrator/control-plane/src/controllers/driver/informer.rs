//! The informer of each watched kind: list, watch from the list's revision, and list again when the watch
//! fails or ends (history compacted, backend error, store closed). Everything goes into one channel per
//! controller, so a burst of events across kinds can be taken as one batch.

use super::cache::Watch;
use crate::store::{Prefix, Store, StoreError, StoreEvent, Versioned};
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// How long an informer waits before listing again after its watch failed.
const RELIST_DELAY: Duration = Duration::from_millis(200);

pub(crate) enum Feed {
    /// A complete list of one kind (at start and after a failed watch).
    Listed {
        kind: &'static str,
        objects: Vec<Versioned>,
    },
    Event {
        kind: &'static str,
        event: StoreEvent,
    },
}

/// Start one informer per watched kind. They stop when the receiver is dropped or the set is shut down.
pub(crate) fn spawn(store: &Arc<dyn Store>, watches: &[Watch]) -> (mpsc::UnboundedReceiver<Feed>, JoinSet<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut tasks = JoinSet::new();
    for w in watches {
        tasks.spawn(inform(store.clone(), w.kind(), tx.clone()));
    }
    (rx, tasks)
}

async fn inform(store: Arc<dyn Store>, kind: &'static str, tx: mpsc::UnboundedSender<Feed>) {
    let prefix = Prefix { kind: kind.to_string(), namespace: None };
    loop {
        let fed = async {
            let (objects, revision) = store.list(&prefix, None).await?;
            if tx.send(Feed::Listed { kind, objects }).is_err() {
                return Ok(());
            }
            let mut events = store.watch(&prefix, revision).await?;
            while let Some(event) = events.next().await {
                if tx.send(Feed::Event { kind, event: event? }).is_err() {
                    return Ok(());
                }
            }
            Ok::<(), StoreError>(())
        };
        let result = fed.await;
        if tx.is_closed() {
            return;
        }
        if let Err(e) = result {
            tracing::warn!(kind, error = %e, "watch failed; listing again");
        }
        tokio::time::sleep(RELIST_DELAY).await;
    }
}

/// The next item and every one already queued behind it, so a burst is handled as one batch.
pub(crate) async fn next_batch(feed: &mut mpsc::UnboundedReceiver<Feed>) -> Option<Vec<Feed>> {
    let mut batch = vec![feed.recv().await?];
    while let Ok(more) = feed.try_recv() {
        batch.push(more);
    }
    Some(batch)
}
