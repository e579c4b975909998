//! In-memory store: a `BTreeMap` under a lock, with the same revision, compare-and-swap, watch and
//! compaction semantics as the durable backends. For tests and `memory:` URLs; nothing survives the process.
//!
//! History for watches is the feed's ring itself: it keeps the last `retention` changes, and its floor is
//! the compacted revision.

use super::feed::{self, Feed, History, READ_BATCH};
use super::{
    selected, Key, Prefix, Store, StoreError, StoreEvent, StoreResult, Versioned, WatchStream,
    DEFAULT_HISTORY_RETENTION,
};
use parking_lot::RwLock;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A cheap-to-clone handle on one in-memory store.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    objects: RwLock<State>,
    feed: Feed,
}

struct State {
    objects: BTreeMap<Key, Versioned>,
    revision: u64,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::with_retention(DEFAULT_HISTORY_RETENTION)
    }

    /// A store that keeps only the last `retention` changes for watches.
    pub fn with_retention(retention: u64) -> Self {
        let cap = usize::try_from(retention).unwrap_or(usize::MAX);
        Self {
            inner: Arc::new(Inner {
                objects: RwLock::new(State { objects: BTreeMap::new(), revision: 0 }),
                feed: Feed::new(0, cap),
            }),
        }
    }

    /// Apply one change under the write lock and publish it before releasing the lock, so that the feed
    /// sees revisions in order.
    fn write<T>(&self, f: impl FnOnce(&mut State, u64) -> StoreResult<(StoreEvent, T)>) -> StoreResult<T> {
        let mut st = self.inner.objects.write();
        let next = st.revision + 1;
        let (event, out) = f(&mut st, next)?;
        st.revision = next;
        self.inner.feed.publish([event]);
        Ok(out)
    }
}

fn range_start(prefix: &Prefix) -> Key {
    Key::new(prefix.kind.clone(), prefix.namespace.clone().unwrap_or_default(), "")
}

#[async_trait::async_trait]
impl History for Inner {
    fn feed(&self) -> &Feed {
        &self.feed
    }

    async fn changes_after(&self, prefix: &Prefix, after: u64) -> StoreResult<(Vec<StoreEvent>, u64)> {
        self.feed.read(prefix, after, READ_BATCH).ok_or_else(|| feed::compacted(after, self.feed.floor()))
    }
}

#[async_trait::async_trait]
impl Store for MemoryStore {
    async fn get(&self, key: &Key) -> StoreResult<Option<Versioned>> {
        Ok(self.inner.objects.read().objects.get(key).cloned())
    }

    async fn list(
        &self,
        prefix: &Prefix,
        selector: Option<&discovery::Selector>,
    ) -> StoreResult<(Vec<Versioned>, u64)> {
        let st = self.inner.objects.read();
        let items = st
            .objects
            .range(range_start(prefix)..)
            .take_while(|(k, _)| k.kind == prefix.kind)
            .filter(|(k, v)| prefix.contains(k) && selected(selector, &v.value))
            .map(|(_, v)| v.clone())
            .collect();
        Ok((items, st.revision))
    }

    async fn create(&self, key: &Key, value: Vec<u8>) -> StoreResult<u64> {
        self.write(|st, rev| {
            if st.objects.contains_key(key) {
                return Err(StoreError::AlreadyExists(key.clone()));
            }
            let object = Versioned { key: key.clone(), value, revision: rev };
            st.objects.insert(key.clone(), object.clone());
            Ok((StoreEvent::Put { object, created: true }, rev))
        })
    }

    async fn update(&self, key: &Key, value: Vec<u8>, expected_revision: u64) -> StoreResult<u64> {
        self.write(|st, rev| {
            let current = st.objects.get_mut(key).ok_or_else(|| StoreError::NotFound(key.clone()))?;
            if current.revision != expected_revision {
                return Err(StoreError::Conflict {
                    key: key.clone(),
                    expected: expected_revision,
                    actual: current.revision,
                });
            }
            current.value = value;
            current.revision = rev;
            Ok((StoreEvent::Put { object: current.clone(), created: false }, rev))
        })
    }

    async fn delete(&self, key: &Key, expected_revision: Option<u64>) -> StoreResult<u64> {
        self.write(|st, rev| {
            let current = st.objects.get(key).ok_or_else(|| StoreError::NotFound(key.clone()))?;
            if let Some(expected) = expected_revision {
                if current.revision != expected {
                    return Err(StoreError::Conflict { key: key.clone(), expected, actual: current.revision });
                }
            }
            let prev = st.objects.remove(key).map(|v| v.value);
            Ok((StoreEvent::Delete { key: key.clone(), revision: rev, prev }, rev))
        })
    }

    async fn watch(&self, prefix: &Prefix, from_revision: u64) -> StoreResult<WatchStream> {
        let floor = self.inner.feed.floor();
        if from_revision < floor {
            return Err(feed::compacted(from_revision, floor));
        }
        Ok(feed::watch_stream(self.inner.clone(), prefix.clone(), from_revision))
    }

    async fn revision(&self) -> StoreResult<u64> {
        Ok(self.inner.objects.read().revision)
    }

    async fn compact(&self, revision: u64) -> StoreResult<()> {
        let st = self.inner.objects.read();
        if revision > st.revision {
            return Err(StoreError::Backend(format!(
                "cannot compact at revision {revision}: the current revision is {}",
                st.revision
            )));
        }
        self.inner.feed.trim(revision);
        Ok(())
    }
}
