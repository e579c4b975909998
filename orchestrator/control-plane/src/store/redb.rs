//! The default store: one redb file on one machine.
//!
//! Layout: `objects` maps an encoded key (`kind \0 namespace \0 name`) to the object's revision (8 bytes,
//! little endian) followed by its bytes; `meta` holds the global `revision` and the `compacted` revision;
//! `history` maps every revision to its event, which is what watches read (also across restarts). The
//! revision, the object and its history entry are written in the same transaction, so they cannot
//! disagree after a crash.
//!
//! Writes go through one dedicated OS thread that commits them in groups: it takes every request waiting
//! in its queue (up to [`MAX_BATCH`]), applies them in order in one transaction (each still gets its own
//! revision and its own compare-and-swap check), commits with `Durability::Immediate` (fsync), and only
//! then answers each caller. The tokio runtime never waits on fsync; reads run on the blocking pool.
//!
//! Not here: replication (use the etcd backend) and encryption (the API encrypts secrets before storing).

use super::feed::{self, Feed, History, READ_BATCH};
use super::{
    selected, Key, Prefix, Store, StoreError, StoreEvent, StoreResult, Versioned, WatchStream,
    DEFAULT_HISTORY_RETENTION,
};
use ::redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use tokio::sync::oneshot;

const OBJECTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("objects");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const HISTORY: TableDefinition<u64, &[u8]> = TableDefinition::new("history");
const META_REVISION: &str = "revision";
const META_COMPACTED: &str = "compacted";

/// The most write requests committed in one transaction.
pub const MAX_BATCH: usize = 1024;
/// How many recent events watchers can read from memory; older ones come from the `history` table.
const RING_CAPACITY: usize = 16_384;

/// Tuning for [`RedbStore::open_with`].
#[derive(Debug, Clone)]
pub struct RedbOptions {
    /// Changes kept in the `history` table for watches; older ones are compacted automatically.
    pub history_retention: u64,
}

impl Default for RedbOptions {
    fn default() -> Self {
        Self { history_retention: DEFAULT_HISTORY_RETENTION }
    }
}

/// A cheap-to-clone handle on one redb-backed store. The file stays open (and locked) until the last
/// handle and the last watch stream are dropped.
#[derive(Clone)]
pub struct RedbStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    db: Arc<Database>,
    shared: Arc<Shared>,
    requests: Option<mpsc::Sender<Request>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

/// State the writer thread publishes for readers.
struct Shared {
    feed: Feed,
    revision: AtomicU64,
    compacted: AtomicU64,
}

enum Op {
    Create { key: Key, value: Vec<u8> },
    Update { key: Key, value: Vec<u8>, expected: u64 },
    Delete { key: Key, expected: Option<u64> },
    Compact { revision: u64 },
}

struct Request {
    op: Op,
    reply: oneshot::Sender<StoreResult<u64>>,
}

fn backend(context: &str, path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("redb {}: {context}: {e}", path.display()))
}

impl RedbStore {
    /// Open (or create) the store file at `path`. Blocking: call it from a blocking context.
    pub fn open(path: &Path) -> StoreResult<Self> {
        Self::open_with(path, RedbOptions::default())
    }

    pub fn open_with(path: &Path, options: RedbOptions) -> StoreResult<Self> {
        let db = Database::create(path).map_err(|e| backend("open", path, e))?;
        // Create the tables up front so that readers never see a missing table.
        let txn = db.begin_write().map_err(|e| backend("begin init", path, e))?;
        let (revision, compacted) = {
            let init = || -> Result<(u64, u64), ::redb::Error> {
                txn.open_table(OBJECTS)?;
                txn.open_table(HISTORY)?;
                let meta = txn.open_table(META)?;
                let revision = meta.get(META_REVISION)?.map(|v| v.value()).unwrap_or(0);
                let compacted = meta.get(META_COMPACTED)?.map(|v| v.value()).unwrap_or(0);
                Ok((revision, compacted))
            };
            init().map_err(|e| backend("init tables", path, e))?
        };
        txn.commit().map_err(|e| backend("commit init", path, e))?;

        let db = Arc::new(db);
        let shared = Arc::new(Shared {
            feed: Feed::new(revision, RING_CAPACITY),
            revision: AtomicU64::new(revision),
            compacted: AtomicU64::new(compacted),
        });
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            db: db.clone(),
            shared: shared.clone(),
            path: path.to_path_buf(),
            retention: options.history_retention.max(1),
        };
        let handle = std::thread::Builder::new()
            .name("berth-redb-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| backend("spawn writer thread", path, e))?;
        Ok(Self {
            inner: Arc::new(Inner { path: path.to_path_buf(), db, shared, requests: Some(tx), writer: Some(handle) }),
        })
    }

    async fn submit(&self, op: Op) -> StoreResult<u64> {
        let (reply, rx) = oneshot::channel();
        let stopped = || StoreError::Backend(format!("redb {}: writer thread stopped", self.inner.path.display()));
        self.inner.requests.as_ref().ok_or_else(stopped)?.send(Request { op, reply }).map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Run a read on the blocking pool against a fresh read transaction.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&::redb::ReadTransaction) -> Result<T, ReadError> + Send + 'static,
    ) -> StoreResult<T> {
        read_blocking(self.inner.db.clone(), self.inner.path.clone(), f).await
    }
}

/// A read either fails in storage or with a store-level answer (e.g. `Compacted`).
enum ReadError {
    Storage(::redb::Error),
    Store(StoreError),
}

impl<E: Into<::redb::Error>> From<E> for ReadError {
    fn from(e: E) -> Self {
        ReadError::Storage(e.into())
    }
}

async fn read_blocking<T: Send + 'static>(
    db: Arc<Database>,
    path: PathBuf,
    f: impl FnOnce(&::redb::ReadTransaction) -> Result<T, ReadError> + Send + 'static,
) -> StoreResult<T> {
    let p = path.clone();
    tokio::task::spawn_blocking(move || {
        let txn = db.begin_read().map_err(|e| backend("begin read", &path, e))?;
        f(&txn).map_err(|e| match e {
            ReadError::Storage(e) => backend("read", &path, e),
            ReadError::Store(e) => e,
        })
    })
    .await
    .map_err(|e| backend("read task", &p, e))?
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue stops the writer after its current batch; wait for it so that the file lock is
        // released when the last handle goes away (a reopen in the same process then succeeds).
        self.requests.take();
        if let Some(handle) = self.writer.take() {
            if handle.join().is_err() {
                tracing::error!(path = %self.path.display(), "redb writer thread panicked");
            }
        }
    }
}

// ---- key and value encoding ----

fn encode_key(key: &Key) -> StoreResult<Vec<u8>> {
    for part in [&key.kind, &key.namespace, &key.name] {
        if part.as_bytes().contains(&0) {
            return Err(StoreError::Backend(format!("invalid key {key:?}: NUL byte")));
        }
    }
    let mut out = Vec::with_capacity(key.kind.len() + key.namespace.len() + key.name.len() + 2);
    out.extend_from_slice(key.kind.as_bytes());
    out.push(0);
    out.extend_from_slice(key.namespace.as_bytes());
    out.push(0);
    out.extend_from_slice(key.name.as_bytes());
    Ok(out)
}

fn decode_key(raw: &[u8]) -> Result<Key, ReadError> {
    let corrupt = || ReadError::Store(StoreError::Backend("corrupt object key in redb".into()));
    let mut parts = raw.splitn(3, |b| *b == 0);
    let mut next = || -> Result<String, ReadError> {
        let p = parts.next().ok_or_else(corrupt)?;
        String::from_utf8(p.to_vec()).map_err(|_| corrupt())
    };
    Ok(Key { kind: next()?, namespace: next()?, name: next()? })
}

/// The `[start, end)` byte range of encoded keys under a prefix.
fn prefix_range(prefix: &Prefix) -> (Vec<u8>, Vec<u8>) {
    let mut start = prefix.kind.as_bytes().to_vec();
    start.push(0);
    if let Some(ns) = &prefix.namespace {
        start.extend_from_slice(ns.as_bytes());
        start.push(0);
    }
    let mut end = start.clone();
    if let Some(last) = end.last_mut() {
        *last = 1;
    }
    (start, end)
}

fn encode_object(revision: u64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + value.len());
    out.extend_from_slice(&revision.to_le_bytes());
    out.extend_from_slice(value);
    out
}

fn decode_object(raw: &[u8]) -> Result<(u64, &[u8]), ReadError> {
    if raw.len() < 8 {
        return Err(ReadError::Store(StoreError::Backend("corrupt object record in redb".into())));
    }
    let (rev, value) = raw.split_at(8);
    let mut b = [0u8; 8];
    b.copy_from_slice(rev);
    Ok((u64::from_le_bytes(b), value))
}

const EV_CREATED: u8 = 0;
const EV_UPDATED: u8 = 1;
const EV_DELETED: u8 = 2;
const EV_DELETED_NO_PREV: u8 = 3;

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    // Object bytes are bounded far below 4 GiB by the API's body limit.
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// History record: a tag, the key's three parts and the value (or previous value), each length-prefixed.
/// The revision is the table key.
fn encode_event(ev: &StoreEvent) -> Vec<u8> {
    let (tag, key, value) = match ev {
        StoreEvent::Put { object, created } => {
            (if *created { EV_CREATED } else { EV_UPDATED }, &object.key, Some(object.value.as_slice()))
        }
        StoreEvent::Delete { key, prev, .. } => {
            (if prev.is_some() { EV_DELETED } else { EV_DELETED_NO_PREV }, key, prev.as_deref())
        }
    };
    let mut out = Vec::with_capacity(1 + 16 + key.name.len() + value.map_or(0, <[u8]>::len));
    out.push(tag);
    put_bytes(&mut out, key.kind.as_bytes());
    put_bytes(&mut out, key.namespace.as_bytes());
    put_bytes(&mut out, key.name.as_bytes());
    if let Some(v) = value {
        put_bytes(&mut out, v);
    }
    out
}

fn decode_event(revision: u64, raw: &[u8]) -> Result<StoreEvent, ReadError> {
    let corrupt = || ReadError::Store(StoreError::Backend(format!("corrupt history record {revision} in redb")));
    let (&tag, mut rest) = raw.split_first().ok_or_else(corrupt)?;
    let mut take = || -> Result<&[u8], ReadError> {
        if rest.len() < 4 {
            return Err(corrupt());
        }
        let (len, tail) = rest.split_at(4);
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if tail.len() < len {
            return Err(corrupt());
        }
        let (v, tail) = tail.split_at(len);
        rest = tail;
        Ok(v)
    };
    let string = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| corrupt());
    let kind = string(take()?)?;
    let namespace = string(take()?)?;
    let name = string(take()?)?;
    let key = Key { kind, namespace, name };
    Ok(match tag {
        EV_CREATED | EV_UPDATED => {
            StoreEvent::Put { object: Versioned { key, value: take()?.to_vec(), revision }, created: tag == EV_CREATED }
        }
        EV_DELETED => StoreEvent::Delete { key, revision, prev: Some(take()?.to_vec()) },
        EV_DELETED_NO_PREV => StoreEvent::Delete { key, revision, prev: None },
        _ => return Err(corrupt()),
    })
}

// ---- the writer thread ----

struct Writer {
    db: Arc<Database>,
    shared: Arc<Shared>,
    path: PathBuf,
    retention: u64,
}

/// What one committed batch changed.
struct Committed {
    revision: u64,
    compacted: u64,
    events: Vec<StoreEvent>,
}

impl Writer {
    fn run(self, rx: mpsc::Receiver<Request>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            let (ops, replies): (Vec<Op>, Vec<_>) = batch.into_iter().map(|r| (r.op, r.reply)).unzip();
            match self.commit(ops) {
                Ok((committed, results)) => {
                    self.shared.revision.store(committed.revision, Ordering::Release);
                    if committed.compacted > self.shared.compacted.load(Ordering::Acquire) {
                        self.shared.compacted.store(committed.compacted, Ordering::Release);
                        self.shared.feed.trim(committed.compacted);
                    }
                    self.shared.feed.publish(committed.events);
                    for (reply, result) in replies.into_iter().zip(results) {
                        // The caller may have given up waiting; the write is committed regardless.
                        let _ = reply.send(result);
                    }
                }
                Err(e) => {
                    let msg = format!("redb {}: commit: {e}", self.path.display());
                    tracing::error!("{msg}");
                    for reply in replies {
                        let _ = reply.send(Err(StoreError::Backend(msg.clone())));
                    }
                }
            }
        }
    }

    /// Apply `ops` in order in one durable transaction. Per-operation failures (conflicts, missing keys)
    /// are results; a storage failure fails the whole batch and nothing of it is committed.
    #[allow(clippy::type_complexity)]
    fn commit(&self, ops: Vec<Op>) -> Result<(Committed, Vec<StoreResult<u64>>), ::redb::Error> {
        let mut txn = self.db.begin_write()?;
        // The default, but the acknowledgement contract depends on it: say so explicitly.
        txn.set_durability(Durability::Immediate)?;
        let mut results = Vec::with_capacity(ops.len());
        let mut events = Vec::new();
        let (revision, compacted) = {
            let mut objects = txn.open_table(OBJECTS)?;
            let mut history = txn.open_table(HISTORY)?;
            let mut meta = txn.open_table(META)?;
            let mut revision = meta.get(META_REVISION)?.map(|v| v.value()).unwrap_or(0);
            let mut compacted = meta.get(META_COMPACTED)?.map(|v| v.value()).unwrap_or(0);
            for op in ops {
                let next = revision + 1;
                let outcome = match op {
                    Op::Compact { revision: target } => {
                        if target > revision {
                            results.push(Err(StoreError::Backend(format!(
                                "cannot compact at revision {target}: the current revision is {revision}"
                            ))));
                        } else {
                            if target > compacted {
                                history.retain_in(compacted + 1..=target, |_, _| false)?;
                                compacted = target;
                            }
                            results.push(Ok(target));
                        }
                        continue;
                    }
                    op => apply(&mut objects, op, next)?,
                };
                match outcome {
                    Ok(event) => {
                        history.insert(next, encode_event(&event).as_slice())?;
                        events.push(event);
                        revision = next;
                        results.push(Ok(next));
                    }
                    Err(e) => results.push(Err(e)),
                }
            }
            if revision - compacted > self.retention {
                let target = revision - self.retention;
                history.retain_in(compacted + 1..=target, |_, _| false)?;
                compacted = target;
            }
            meta.insert(META_REVISION, revision)?;
            meta.insert(META_COMPACTED, compacted)?;
            (revision, compacted)
        };
        // With Durability::Immediate, commit returns after fsync.
        txn.commit()?;
        Ok((Committed { revision, compacted, events }, results))
    }
}

/// One object write against the open `objects` table at revision `next`.
fn apply(
    objects: &mut ::redb::Table<&[u8], &[u8]>,
    op: Op,
    next: u64,
) -> Result<StoreResult<StoreEvent>, ::redb::Error> {
    let key = match &op {
        Op::Create { key, .. } | Op::Update { key, .. } | Op::Delete { key, .. } => key.clone(),
        Op::Compact { .. } => return Ok(Err(StoreError::Backend("compaction is not an object write".into()))),
    };
    let raw_key = match encode_key(&key) {
        Ok(k) => k,
        Err(e) => return Ok(Err(e)),
    };
    let current: Option<(u64, Vec<u8>)> = match objects.get(raw_key.as_slice())? {
        Some(guard) => match decode_object(guard.value()) {
            Ok((rev, v)) => Some((rev, v.to_vec())),
            Err(_) => return Ok(Err(StoreError::Backend(format!("{key}: corrupt object record")))),
        },
        None => None,
    };
    Ok(match (op, current) {
        (Op::Create { .. }, Some(_)) => Err(StoreError::AlreadyExists(key)),
        (Op::Create { value, .. }, None) => {
            objects.insert(raw_key.as_slice(), encode_object(next, &value).as_slice())?;
            Ok(StoreEvent::Put { object: Versioned { key, value, revision: next }, created: true })
        }
        (Op::Update { .. } | Op::Delete { .. }, None) => Err(StoreError::NotFound(key)),
        (Op::Update { value, expected, .. }, Some((actual, _))) => {
            if actual != expected {
                Err(StoreError::Conflict { key, expected, actual })
            } else {
                objects.insert(raw_key.as_slice(), encode_object(next, &value).as_slice())?;
                Ok(StoreEvent::Put { object: Versioned { key, value, revision: next }, created: false })
            }
        }
        (Op::Delete { expected, .. }, Some((actual, prev))) => match expected {
            Some(expected) if expected != actual => Err(StoreError::Conflict { key, expected, actual }),
            _ => {
                objects.remove(raw_key.as_slice())?;
                Ok(StoreEvent::Delete { key, revision: next, prev: Some(prev) })
            }
        },
        (Op::Compact { .. }, _) => Err(StoreError::Backend("compaction is not an object write".into())),
    })
}

// ---- reads ----

#[async_trait::async_trait]
impl History for Inner {
    fn feed(&self) -> &Feed {
        &self.shared.feed
    }

    async fn changes_after(&self, prefix: &Prefix, after: u64) -> StoreResult<(Vec<StoreEvent>, u64)> {
        let compacted = self.shared.compacted.load(Ordering::Acquire);
        if after < compacted {
            return Err(feed::compacted(after, compacted));
        }
        if let Some(found) = self.shared.feed.read(prefix, after, READ_BATCH) {
            return Ok(found);
        }
        let prefix = prefix.clone();
        read_blocking(self.db.clone(), self.path.clone(), move |txn| {
            let meta = txn.open_table(META)?;
            let compacted = meta.get(META_COMPACTED)?.map(|v| v.value()).unwrap_or(0);
            if after < compacted {
                return Err(ReadError::Store(feed::compacted(after, compacted)));
            }
            let history = txn.open_table(HISTORY)?;
            let mut out = Vec::new();
            let mut scanned = after;
            for entry in history.range(after + 1..)?.take(READ_BATCH) {
                let (rev, raw) = entry?;
                let ev = decode_event(rev.value(), raw.value())?;
                scanned = rev.value();
                if prefix.contains(feed::event_key(&ev)) {
                    out.push(ev);
                }
            }
            Ok((out, scanned))
        })
        .await
    }
}

#[async_trait::async_trait]
impl Store for RedbStore {
    async fn get(&self, key: &Key) -> StoreResult<Option<Versioned>> {
        let raw_key = encode_key(key)?;
        let key = key.clone();
        self.read(move |txn| {
            let objects = txn.open_table(OBJECTS)?;
            let found = match objects.get(raw_key.as_slice())? {
                Some(guard) => {
                    let (revision, value) = decode_object(guard.value())?;
                    Some(Versioned { key, value: value.to_vec(), revision })
                }
                None => None,
            };
            Ok(found)
        })
        .await
    }

    async fn list(
        &self,
        prefix: &Prefix,
        selector: Option<&discovery::Selector>,
    ) -> StoreResult<(Vec<Versioned>, u64)> {
        let (start, end) = prefix_range(prefix);
        let selector = selector.cloned();
        self.read(move |txn| {
            let meta = txn.open_table(META)?;
            let revision = meta.get(META_REVISION)?.map(|v| v.value()).unwrap_or(0);
            let objects = txn.open_table(OBJECTS)?;
            let mut items = Vec::new();
            for entry in objects.range(start.as_slice()..end.as_slice())? {
                let (k, v) = entry?;
                let (rev, value) = decode_object(v.value())?;
                if selected(selector.as_ref(), value) {
                    items.push(Versioned { key: decode_key(k.value())?, value: value.to_vec(), revision: rev });
                }
            }
            Ok((items, revision))
        })
        .await
    }

    async fn create(&self, key: &Key, value: Vec<u8>) -> StoreResult<u64> {
        encode_key(key)?;
        self.submit(Op::Create { key: key.clone(), value }).await
    }

    async fn update(&self, key: &Key, value: Vec<u8>, expected_revision: u64) -> StoreResult<u64> {
        encode_key(key)?;
        self.submit(Op::Update { key: key.clone(), value, expected: expected_revision }).await
    }

    async fn delete(&self, key: &Key, expected_revision: Option<u64>) -> StoreResult<u64> {
        encode_key(key)?;
        self.submit(Op::Delete { key: key.clone(), expected: expected_revision }).await
    }

    async fn watch(&self, prefix: &Prefix, from_revision: u64) -> StoreResult<WatchStream> {
        let compacted = self.inner.shared.compacted.load(Ordering::Acquire);
        if from_revision < compacted {
            return Err(feed::compacted(from_revision, compacted));
        }
        Ok(feed::watch_stream(self.inner.clone(), prefix.clone(), from_revision))
    }

    async fn revision(&self) -> StoreResult<u64> {
        Ok(self.inner.shared.revision.load(Ordering::Acquire))
    }

    async fn compact(&self, revision: u64) -> StoreResult<()> {
        self.submit(Op::Compact { revision }).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_the_history_encoding() {
        let key = Key::new("pods", "default", "web-1");
        let cases = [
            StoreEvent::Put {
                object: Versioned { key: key.clone(), value: b"{}".to_vec(), revision: 7 },
                created: true,
            },
            StoreEvent::Put { object: Versioned { key: key.clone(), value: vec![], revision: 7 }, created: false },
            StoreEvent::Delete { key: key.clone(), revision: 7, prev: Some(b"x".to_vec()) },
            StoreEvent::Delete { key: Key::new("nodes", "", "n1"), revision: 7, prev: None },
        ];
        for ev in cases {
            let decoded = decode_event(7, &encode_event(&ev)).ok();
            assert_eq!(decoded, Some(ev));
        }
    }

    #[test]
    fn truncated_history_records_are_errors_not_panics() {
        let ev = StoreEvent::Put {
            object: Versioned { key: Key::new("pods", "ns", "a"), value: b"hello".to_vec(), revision: 1 },
            created: true,
        };
        let raw = encode_event(&ev);
        for len in 0..raw.len() {
            assert!(decode_event(1, &raw[..len]).is_err(), "prefix of length {len} decoded");
        }
    }

    #[test]
    fn keys_round_trip_and_prefix_ranges_bound_them() {
        let key = Key::new("pods", "default", "web-1");
        let raw = encode_key(&key).ok();
        assert_eq!(raw.as_deref().map(|r| decode_key(r).ok()), Some(Some(key.clone())));
        let raw = raw.unwrap_or_default();
        for prefix in [
            Prefix { kind: "pods".into(), namespace: None },
            Prefix { kind: "pods".into(), namespace: Some("default".into()) },
        ] {
            let (start, end) = prefix_range(&prefix);
            assert!(start.as_slice() <= raw.as_slice() && raw.as_slice() < end.as_slice());
        }
        let other = Prefix { kind: "pods".into(), namespace: Some("def".into()) };
        let (start, end) = prefix_range(&other);
        assert!(!(start.as_slice() <= raw.as_slice() && raw.as_slice() < end.as_slice()));
        assert!(encode_key(&Key::new("pods", "a\0b", "c")).is_err());
    }
}
