//! The change feed shared by the memory and redb backends: a bounded in-memory ring of the most recent
//! events, a `tokio::sync::watch` cell holding the latest committed revision, and the watch stream built
//! on both.
//!
//! A watcher never receives events pushed at it. It keeps a cursor (the last revision it examined) and
//! pulls everything after the cursor from the backend's history whenever the latest revision moves past
//! it. A slow watcher therefore cannot lose or duplicate events; it can only fall behind retained history,
//! and then it gets [`StoreError::Compacted`]. The etcd backend does not use this: etcd has its own watch.

use super::{Prefix, StoreError, StoreEvent, StoreResult, WatchStream};
use parking_lot::RwLock;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::watch;

/// How many events one history read returns at most, so a far-behind watcher does not load the whole
/// history at once.
pub(crate) const READ_BATCH: usize = 1024;

pub(crate) struct Feed {
    ring: RwLock<Ring>,
    latest: watch::Sender<u64>,
}

struct Ring {
    /// Events with revisions `floor+1 ..= floor+events.len()`, oldest first.
    events: VecDeque<StoreEvent>,
    /// Every event with a revision greater than `floor` is in `events`.
    floor: u64,
    cap: usize,
}

impl Feed {
    /// A feed whose ring starts empty at `revision` (nothing older is in memory).
    pub(crate) fn new(revision: u64, cap: usize) -> Self {
        Self {
            ring: RwLock::new(Ring { events: VecDeque::new(), floor: revision, cap: cap.max(1) }),
            latest: watch::Sender::new(revision),
        }
    }

    /// Append committed events (in revision order) and wake watchers. Callers serialise publishing so
    /// that revisions arrive in order.
    pub(crate) fn publish(&self, events: impl IntoIterator<Item = StoreEvent>) {
        let mut last = None;
        {
            let mut ring = self.ring.write();
            for ev in events {
                last = Some(ev.revision());
                ring.events.push_back(ev);
            }
            while ring.events.len() > ring.cap {
                if let Some(old) = ring.events.pop_front() {
                    ring.floor = old.revision();
                }
            }
        }
        if let Some(rev) = last {
            self.latest.send_replace(rev);
        }
    }

    /// Drop events at and below `revision` from the ring.
    pub(crate) fn trim(&self, revision: u64) {
        let mut ring = self.ring.write();
        while ring.events.front().is_some_and(|e| e.revision() <= revision) {
            ring.events.pop_front();
        }
        ring.floor = ring.floor.max(revision);
    }

    /// The revision below which the ring holds nothing (`after >= floor` can be served from memory).
    pub(crate) fn floor(&self) -> u64 {
        self.ring.read().floor
    }

    /// Matching events with revision > `after` (at most `limit`) and the revision scanned up to, or
    /// `None` when the ring no longer covers `after`.
    pub(crate) fn read(&self, prefix: &Prefix, after: u64, limit: usize) -> Option<(Vec<StoreEvent>, u64)> {
        let ring = self.ring.read();
        if after < ring.floor {
            return None;
        }
        let start = ring.events.partition_point(|e| e.revision() <= after);
        let mut out = Vec::new();
        let mut scanned = after;
        for ev in ring.events.iter().skip(start).take(limit) {
            scanned = ev.revision();
            if prefix.contains(event_key(ev)) {
                out.push(ev.clone());
            }
        }
        Some((out, scanned))
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }
}

pub(crate) fn event_key(ev: &StoreEvent) -> &super::Key {
    match ev {
        StoreEvent::Put { object, .. } => &object.key,
        StoreEvent::Delete { key, .. } => key,
    }
}

/// Where a watch stream reads history from.
#[async_trait::async_trait]
pub(crate) trait History: Send + Sync + 'static {
    fn feed(&self) -> &Feed;
    /// Matching events with revision > `after`, in order, at most [`READ_BATCH`] scanned, and the revision
    /// scanned up to; [`StoreError::Compacted`] when `after` is older than retained history.
    async fn changes_after(&self, prefix: &Prefix, after: u64) -> StoreResult<(Vec<StoreEvent>, u64)>;
}

struct WatchState<H> {
    history: Arc<H>,
    prefix: Prefix,
    cursor: u64,
    buffered: VecDeque<StoreEvent>,
    latest: watch::Receiver<u64>,
    failed: bool,
}

/// The stream of changes under `prefix` after `from`. Check compaction before calling this so that a
/// too-old `from` fails the `watch` call itself; later compaction surfaces as a stream item.
pub(crate) fn watch_stream<H: History>(history: Arc<H>, prefix: Prefix, from: u64) -> WatchStream {
    let latest = history.feed().subscribe();
    let state = WatchState { history, prefix, cursor: from, buffered: VecDeque::new(), latest, failed: false };
    Box::pin(futures::stream::unfold(state, |mut st| async move {
        loop {
            if st.failed {
                return None;
            }
            if let Some(ev) = st.buffered.pop_front() {
                return Some((Ok(ev), st));
            }
            // Mark the current value seen before comparing, so a publish between the comparison and
            // `changed()` still wakes us.
            let latest = *st.latest.borrow_and_update();
            if st.cursor < latest {
                match st.history.changes_after(&st.prefix, st.cursor).await {
                    Ok((events, scanned)) if scanned > st.cursor => {
                        st.cursor = scanned;
                        st.buffered.extend(events);
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        st.failed = true;
                        return Some((Err(e), st));
                    }
                }
            }
            if st.latest.changed().await.is_err() {
                return None;
            }
        }
    }))
}

/// The error for a watch from `requested` when history at and below `compacted` is gone.
pub(crate) fn compacted(requested: u64, compacted: u64) -> StoreError {
    StoreError::Compacted { requested, compacted }
}
