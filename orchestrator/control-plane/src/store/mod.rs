//! The durable store of desired and actual state.
//!
//! CONTRACT (the API server, controllers and tests rely on it):
//! - keys are `(kind plural, namespace, name)`; cluster-scoped kinds use an empty namespace;
//! - values are the object's JSON bytes as stored (the store never interprets them except to read
//!   `metadata.labels` for selector filtering);
//! - one global revision: every write gets a new, strictly greater revision, which becomes the object's
//!   `resourceVersion` (etcd: `mod_revision`);
//! - `update`/`delete` compare the expected revision and fail with [`StoreError::Conflict`] when stale;
//! - a write is acknowledged only after it is durable (redb: fsync'd commit; etcd: quorum);
//! - `watch(prefix, from)` yields every change with revision > `from` exactly once, in order, or fails with
//!   [`StoreError::Compacted`] when `from` is older than retained history.

//!
//! Backends: [`memory::MemoryStore`] (tests), [`redb::RedbStore`] (the default, one file on one machine) and,
//! with the cargo feature `etcd`, [`etcd::EtcdStore`]. [`open_store`] picks one from a URL. This module does
//! not know what the objects mean: validation, defaulting and `resourceVersion` stamping live in the API.

use futures::stream::BoxStream;
use std::sync::Arc;

pub mod encrypt;
#[cfg(feature = "etcd")]
pub mod etcd;
mod feed;
pub mod memory;
pub mod redb;

pub use self::encrypt::EncryptingStore;
pub use self::memory::MemoryStore;
pub use self::redb::RedbStore;
pub use model::{Key, Prefix};

/// An object's bytes with the revision of its last write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub key: Key,
    pub value: Vec<u8>,
    pub revision: u64,
}

/// A change seen by a watcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    /// Created (`created == true`) or updated.
    Put { object: Versioned, created: bool },
    /// Deleted at `revision`; `prev` is the last value.
    Delete { key: Key, revision: u64, prev: Option<Vec<u8>> },
}

impl StoreEvent {
    pub fn revision(&self) -> u64 {
        match self {
            StoreEvent::Put { object, .. } => object.revision,
            StoreEvent::Delete { revision, .. } => *revision,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(Key),
    #[error("{0} already exists")]
    AlreadyExists(Key),
    #[error("{key}: resourceVersion {expected} is stale (current {actual})")]
    Conflict { key: Key, expected: u64, actual: u64 },
    #[error("revision {requested} has been compacted (oldest available {compacted})")]
    Compacted { requested: u64, compacted: u64 },
    #[error("store backend: {0}")]
    Backend(String),
    /// A fenced write (see `ha`) was refused because the writer's leadership term is over: its leader key is
    /// gone or belongs to a later term. Never retry it as a conflict: stop writing.
    #[error("write fenced off: {0}")]
    Fenced(String),
}

pub type StoreResult<T> = Result<T, StoreError>;
pub type WatchStream = BoxStream<'static, StoreResult<StoreEvent>>;

/// A durable, versioned key-value store with optimistic concurrency and watches.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    async fn get(&self, key: &Key) -> StoreResult<Option<Versioned>>;
    /// Objects under `prefix` (matching `selector` on `metadata.labels` when given) and the revision the
    /// list was read at, from which a watch continues without gaps.
    /// Items are ordered by `(namespace, name)` on every backend.
    async fn list(&self, prefix: &Prefix, selector: Option<&discovery::Selector>)
        -> StoreResult<(Vec<Versioned>, u64)>;
    /// Fails with `AlreadyExists` when the key exists. Returns the new revision.
    async fn create(&self, key: &Key, value: Vec<u8>) -> StoreResult<u64>;
    /// Compare-and-swap on the object's revision. Returns the new revision.
    async fn update(&self, key: &Key, value: Vec<u8>, expected_revision: u64) -> StoreResult<u64>;
    /// Delete, optionally only if the revision matches. Returns the revision of the deletion.
    async fn delete(&self, key: &Key, expected_revision: Option<u64>) -> StoreResult<u64>;
    /// Changes under `prefix` with revision > `from_revision`. `Prefix { kind: "*" }` is not special:
    /// watch each kind you need.
    async fn watch(&self, prefix: &Prefix, from_revision: u64) -> StoreResult<WatchStream>;
    /// The current global revision.
    async fn revision(&self) -> StoreResult<u64>;
    /// Forget history at and below `revision` (watches from older revisions then get `Compacted`).
    async fn compact(&self, revision: u64) -> StoreResult<()>;
}

/// How many changes a backend keeps for watches by default before it compacts the oldest ones itself.
pub const DEFAULT_HISTORY_RETENTION: u64 = 100_000;

/// Open a store from a URL: `memory:`, `redb:PATH` (a file, created when missing) or
/// `etcd://host:port[,host:port...]` (needs the cargo feature `etcd`).
pub async fn open_store(url: &str) -> StoreResult<Arc<dyn Store>> {
    if url == "memory:" || url == "memory" {
        return Ok(Arc::new(MemoryStore::new()));
    }
    if let Some(path) = url.strip_prefix("redb:") {
        if path.is_empty() {
            return Err(StoreError::Backend(format!("store URL {url:?}: missing file path after redb:")));
        }
        let path = std::path::PathBuf::from(path);
        let store = tokio::task::spawn_blocking(move || RedbStore::open(&path))
            .await
            .map_err(|e| StoreError::Backend(format!("opening redb store: {e}")))??;
        return Ok(Arc::new(store));
    }
    if let Some(hosts) = url.strip_prefix("etcd://") {
        return open_etcd(url, hosts).await;
    }
    Err(StoreError::Backend(format!(
        "unknown store URL {url:?}: expected memory:, redb:PATH or etcd://host:port[,host:port]"
    )))
}

#[cfg(feature = "etcd")]
async fn open_etcd(url: &str, hosts: &str) -> StoreResult<Arc<dyn Store>> {
    Ok(Arc::new(etcd::EtcdStore::connect(&etcd_endpoints(url, hosts)?).await?))
}

/// The endpoints (`http://host:port`) of an `etcd://host:port[,host:port...]` URL whose host list is `hosts`.
#[cfg(feature = "etcd")]
pub(crate) fn etcd_endpoints(url: &str, hosts: &str) -> StoreResult<Vec<String>> {
    let endpoints: Vec<String> =
        hosts.split(',').map(str::trim).filter(|h| !h.is_empty()).map(|h| format!("http://{h}")).collect();
    if endpoints.is_empty() {
        return Err(StoreError::Backend(format!("store URL {url:?}: no etcd endpoints")));
    }
    Ok(endpoints)
}

#[cfg(not(feature = "etcd"))]
async fn open_etcd(url: &str, _hosts: &str) -> StoreResult<Arc<dyn Store>> {
    Err(StoreError::Backend(format!(
        "store URL {url:?}: this binary was built without etcd support (rebuild with --features etcd)"
    )))
}

/// The labels of a stored object (`metadata.labels` of its JSON); empty when absent or not JSON.
pub fn object_labels(value: &[u8]) -> discovery::Labels {
    #[derive(serde::Deserialize, Default)]
    struct Meta {
        #[serde(default)]
        labels: Option<discovery::Labels>,
    }
    #[derive(serde::Deserialize)]
    struct Obj {
        #[serde(default)]
        metadata: Option<Meta>,
    }
    serde_json::from_slice::<Obj>(value).ok().and_then(|o| o.metadata).and_then(|m| m.labels).unwrap_or_default()
}

/// Whether a stored value passes an optional selector.
pub(crate) fn selected(selector: Option<&discovery::Selector>, value: &[u8]) -> bool {
    match selector {
        None => true,
        Some(s) if s.is_empty() => true,
        Some(s) => s.matches(&object_labels(value)),
    }
}
