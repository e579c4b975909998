//! The registry: services, endpoints, routes and certificates under one monotonically increasing revision.
//!
//! CONTRACT (other crates rely on this API; internals may change):
//! - every successful write bumps the revision by exactly one and is visible to the next read;
//! - `snapshot()` is O(1) and immutable; `endpoints(ns, selector)` costs O(matches) via an inverted label index;
//! - `watch(selector, from)` yields every change after `from` exactly once, in revision order, or
//!   `WatchEvent::Relist` when `from` is older than the retained history (the subscriber then re-reads a
//!   snapshot and watches from its revision; `Watch::resync` does both).
//!
//! Design. The whole registry state (objects, the endpoint label index and the retained change history) is
//! one value of persistent, structurally shared maps (`imbl`), published through an [`ArcSwap`]. Readers load
//! the current pointer and never block; a snapshot is that pointer (O(1), immutable by construction).
//! Writers serialize on one mutex: a write clones the state (O(1): it bumps a handful of reference counts),
//! applies its changes (O(log n) path copies per touched map), appends to the history and publishes, all
//! under the lock, so revision order, history order and publication order are the same order and writes are
//! linearizable. A sharded map (dashmap) was considered and rejected for the object store: the revision
//! counter, the history and the index must change atomically with the object, so a shard lock would still
//! need a global lock around it, and a dashmap cannot give an O(1) immutable snapshot.
//!
//! Label index. Per namespace, endpoints are kept by name and in posting lists keyed by label key, then label
//! value. A selector query picks its most selective positive requirement (`=`, `in`, or bare key), walks only
//! that requirement's posting lists and filters by the other requirements, so it costs O(size of the smallest
//! posting list) rather than O(endpoints). A selector with only negative requirements (`!=`, `notin`, `!a`)
//! or no requirement at all has no posting list to start from and scans the namespace (every namespace when
//! none is given). Results are ordered by namespace, then name.
//!
//! Watches. Every change is recorded with the object before and after it. A watch reads the history of the
//! published state without locks, filters it by its selector, and waits on a [`Notify`] when it is caught up;
//! one write wakes every waiting watch once, so fan-out costs one wake-up and one filtered read per
//! subscriber. For a selector watch an object that stops matching yields a `Delete` and one that starts
//! matching yields a `Put`. Certificates carry no labels and pass every selector.

use crate::object::{Change, Object, ObjectKey, ObjectKind, WatchEvent};
use crate::selector::{Operator, Requirement, Selector};
use crate::types::{Certificate, Endpoint, Route, Service};
use arc_swap::ArcSwap;
use imbl::{OrdMap, Vector};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

type Name = Arc<str>;
type ByName<T> = OrdMap<Name, Arc<T>>;
type ByNamespace<T> = OrdMap<Name, ByName<T>>;

/// The endpoints of one namespace, by name and by label.
#[derive(Clone, Default)]
struct NamespaceEndpoints {
    all: ByName<Endpoint>,
    /// Label key, then label value, then the endpoints carrying that pair.
    labels: OrdMap<Name, KeyPostings>,
}

#[derive(Clone, Default)]
struct KeyPostings {
    /// Endpoints carrying the key with any value (the size of a bare-key requirement's result).
    count: usize,
    values: OrdMap<Name, ByName<Endpoint>>,
}

impl NamespaceEndpoints {
    fn insert(&mut self, endpoint: Arc<Endpoint>) -> Option<Arc<Endpoint>> {
        let name: Name = Name::from(endpoint.name.as_str());
        let prev = self.all.insert(name.clone(), endpoint.clone());
        if let Some(p) = &prev {
            self.unindex(&name, p);
        }
        for (k, v) in &endpoint.labels {
            let key = self.labels.entry(Name::from(k.as_str())).or_default();
            key.count += 1;
            key.values.entry(Name::from(v.as_str())).or_default().insert(name.clone(), endpoint.clone());
        }
        prev
    }

    fn remove(&mut self, name: &str) -> Option<Arc<Endpoint>> {
        let prev = self.all.remove(name)?;
        self.unindex(name, &prev);
        Some(prev)
    }

    fn unindex(&mut self, name: &str, endpoint: &Endpoint) {
        for (k, v) in &endpoint.labels {
            let Some(key) = self.labels.get_mut(k.as_str()) else {
                continue;
            };
            if let Some(posting) = key.values.get_mut(v.as_str()) {
                if posting.remove(name).is_some() {
                    key.count -= 1;
                }
                if posting.is_empty() {
                    key.values.remove(v.as_str());
                }
            }
            if key.count == 0 {
                self.labels.remove(k.as_str());
            }
        }
    }

    /// How many endpoints a positive requirement's posting lists hold; `None` for negative requirements,
    /// which have no posting list.
    fn posting_len(&self, r: &Requirement) -> Option<usize> {
        let key = self.labels.get(r.key.as_str());
        let value_len = |v: &String| key.and_then(|k| k.values.get(v.as_str())).map_or(0, |p| p.len());
        match r.op {
            Operator::Equals => Some(r.values.first().map_or(0, value_len)),
            Operator::In => Some(r.values.iter().map(value_len).sum()),
            Operator::Exists => Some(key.map_or(0, |k| k.count)),
            Operator::NotEquals | Operator::NotIn | Operator::DoesNotExist => None,
        }
    }

    fn for_each_posting<'a>(&'a self, r: &Requirement, mut f: impl FnMut(&'a ByName<Endpoint>)) {
        let Some(key) = self.labels.get(r.key.as_str()) else {
            return;
        };
        match r.op {
            Operator::Equals => {
                if let Some(p) = r.values.first().and_then(|v| key.values.get(v.as_str())) {
                    f(p)
                }
            }
            Operator::In => r.values.iter().filter_map(|v| key.values.get(v.as_str())).for_each(f),
            Operator::Exists => key.values.values().for_each(f),
            Operator::NotEquals | Operator::NotIn | Operator::DoesNotExist => {}
        }
    }

    fn select(&self, selector: &Selector, out: &mut Vec<Arc<Endpoint>>) {
        let mut driver: Option<(usize, usize)> = None;
        for (i, r) in selector.requirements.iter().enumerate() {
            match self.posting_len(r) {
                Some(0) => return,
                Some(n) if driver.is_none_or(|(_, best)| n < best) => driver = Some((i, n)),
                _ => {}
            }
        }
        let Some((d, _)) = driver else {
            out.extend(self.all.values().filter(|e| selector.matches(&e.labels)).cloned());
            return;
        };
        let others =
            |e: &Endpoint| selector.requirements.iter().enumerate().all(|(i, r)| i == d || r.matches(&e.labels));
        let start = out.len();
        let mut lists = 0;
        self.for_each_posting(&selector.requirements[d], |posting| {
            lists += 1;
            out.extend(posting.values().filter(|e| others(e)).cloned());
        });
        // Posting lists are each ordered by name; several (from `in` or a bare key) need merging.
        if lists > 1 {
            out[start..].sort_by(|a, b| a.name.cmp(&b.name));
        }
    }
}

/// One recorded change: the object before and after (absent for a create or a delete).
struct HistoryEntry {
    revision: u64,
    key: ObjectKey,
    prev: Option<Object>,
    object: Option<Object>,
}

/// Everything published at one revision.
#[derive(Clone, Default)]
struct State {
    revision: u64,
    services: ByNamespace<Service>,
    routes: ByNamespace<Route>,
    certificates: ByNamespace<Certificate>,
    endpoints: OrdMap<Name, NamespaceEndpoints>,
    endpoint_count: usize,
    /// The last changes, oldest first, with consecutive revisions ending at `revision`.
    history: Vector<Arc<HistoryEntry>>,
}

fn get_in<T>(map: &ByNamespace<T>, namespace: &str, name: &str) -> Option<Arc<T>> {
    map.get(namespace).and_then(|m| m.get(name)).cloned()
}

fn insert_in<T>(map: &mut ByNamespace<T>, namespace: &str, name: &str, value: Arc<T>) -> Option<Arc<T>> {
    map.entry(Name::from(namespace)).or_default().insert(Name::from(name), value)
}

fn remove_in<T>(map: &mut ByNamespace<T>, namespace: &str, name: &str) -> Option<Arc<T>> {
    let inner = map.get_mut(namespace)?;
    let prev = inner.remove(name);
    if inner.is_empty() {
        map.remove(namespace);
    }
    prev
}

impl State {
    fn get(&self, key: &ObjectKey) -> Option<Object> {
        let (ns, name) = (key.namespace.as_str(), key.name.as_str());
        match key.kind {
            ObjectKind::Service => get_in(&self.services, ns, name).map(Object::Service),
            ObjectKind::Route => get_in(&self.routes, ns, name).map(Object::Route),
            ObjectKind::Certificate => get_in(&self.certificates, ns, name).map(Object::Certificate),
            ObjectKind::Endpoint => {
                self.endpoints.get(ns).and_then(|n| n.all.get(name)).map(|e| Object::Endpoint(e.clone()))
            }
        }
    }

    /// Apply one change; records it and returns true unless it changed nothing.
    fn apply(&mut self, change: Change) -> bool {
        let (key, prev, object) = match change {
            Change::Put(object) => {
                let key = object.key();
                if self.get(&key).as_ref() == Some(&object) {
                    return false;
                }
                let prev = self.insert(object.clone());
                (key, prev, Some(object))
            }
            Change::Delete(key) => match self.remove(&key) {
                Some(prev) => (key, Some(prev), None),
                None => return false,
            },
        };
        self.revision += 1;
        self.history.push_back(Arc::new(HistoryEntry { revision: self.revision, key, prev, object }));
        true
    }

    fn insert(&mut self, object: Object) -> Option<Object> {
        match object {
            Object::Service(s) => {
                let (ns, name) = (s.namespace.clone(), s.name.clone());
                insert_in(&mut self.services, &ns, &name, s).map(Object::Service)
            }
            Object::Route(r) => {
                let (ns, name) = (r.namespace.clone(), r.name.clone());
                insert_in(&mut self.routes, &ns, &name, r).map(Object::Route)
            }
            Object::Certificate(c) => {
                let (ns, name) = (c.namespace.clone(), c.name.clone());
                insert_in(&mut self.certificates, &ns, &name, c).map(Object::Certificate)
            }
            Object::Endpoint(e) => {
                let ns = self.endpoints.entry(Name::from(e.namespace.as_str())).or_default();
                let prev = ns.insert(e);
                if prev.is_none() {
                    self.endpoint_count += 1;
                }
                prev.map(Object::Endpoint)
            }
        }
    }

    fn remove(&mut self, key: &ObjectKey) -> Option<Object> {
        let (ns, name) = (key.namespace.as_str(), key.name.as_str());
        match key.kind {
            ObjectKind::Service => remove_in(&mut self.services, ns, name).map(Object::Service),
            ObjectKind::Route => remove_in(&mut self.routes, ns, name).map(Object::Route),
            ObjectKind::Certificate => remove_in(&mut self.certificates, ns, name).map(Object::Certificate),
            ObjectKind::Endpoint => {
                let n = self.endpoints.get_mut(ns)?;
                let prev = n.remove(name)?;
                if n.all.is_empty() {
                    self.endpoints.remove(ns);
                }
                self.endpoint_count -= 1;
                Some(Object::Endpoint(prev))
            }
        }
    }

    fn trim_history(&mut self, limit: usize) {
        while self.history.len() > limit {
            self.history.pop_front();
        }
    }
}

/// An immutable view of the registry at one revision. Cloning is O(1).
#[derive(Clone, Default)]
pub struct Snapshot {
    state: Arc<State>,
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("revision", &self.state.revision)
            .field("endpoints", &self.state.endpoint_count)
            .finish_non_exhaustive()
    }
}

impl Snapshot {
    pub fn revision(&self) -> u64 {
        self.state.revision
    }
    /// Every service, ordered by namespace and name.
    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.state.services.values().flat_map(|m| m.values())
    }
    /// Every route, ordered by namespace and name.
    pub fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.state.routes.values().flat_map(|m| m.values())
    }
    /// Every certificate, ordered by namespace and name.
    pub fn certificates(&self) -> impl Iterator<Item = &Arc<Certificate>> {
        self.state.certificates.values().flat_map(|m| m.values())
    }
    /// Every endpoint (any readiness), ordered by namespace and name.
    pub fn all_endpoints(&self) -> impl Iterator<Item = &Arc<Endpoint>> {
        self.state.endpoints.values().flat_map(|n| n.all.values())
    }
    /// How many endpoints there are, in O(1).
    pub fn endpoint_count(&self) -> usize {
        self.state.endpoint_count
    }
    pub fn service(&self, namespace: &str, name: &str) -> Option<&Arc<Service>> {
        self.state.services.get(namespace).and_then(|m| m.get(name))
    }
    pub fn route(&self, namespace: &str, name: &str) -> Option<&Arc<Route>> {
        self.state.routes.get(namespace).and_then(|m| m.get(name))
    }
    pub fn certificate(&self, namespace: &str, name: &str) -> Option<&Arc<Certificate>> {
        self.state.certificates.get(namespace).and_then(|m| m.get(name))
    }
    pub fn endpoint(&self, namespace: &str, name: &str) -> Option<&Arc<Endpoint>> {
        self.state.endpoints.get(namespace).and_then(|n| n.all.get(name))
    }
    /// The object stored under `key`, if any.
    pub fn get(&self, key: &ObjectKey) -> Option<Object> {
        self.state.get(key)
    }
    /// Every object whose labels match `selector` (certificates always match), ordered by kind, namespace
    /// and name: what a watcher re-reads after a `Relist`.
    pub fn objects(&self, selector: &Selector) -> Vec<Object> {
        let matches = |l: &crate::Labels| selector.matches(l);
        let mut out: Vec<Object> =
            self.services().filter(|s| matches(&s.labels)).map(|s| Object::Service(s.clone())).collect();
        out.extend(self.endpoints(None, selector).into_iter().map(Object::Endpoint));
        out.extend(self.routes().filter(|r| matches(&r.labels)).map(|r| Object::Route(r.clone())));
        out.extend(self.certificates().map(|c| Object::Certificate(c.clone())));
        out
    }
    /// All endpoints (any readiness) in `namespace` (or every namespace) matching `selector`, ordered by
    /// namespace and name. Uses the label index: see the module documentation for the cost.
    pub fn endpoints(&self, namespace: Option<&str>, selector: &Selector) -> Vec<Arc<Endpoint>> {
        let mut out = Vec::new();
        match namespace {
            Some(ns) => {
                if let Some(n) = self.state.endpoints.get(ns) {
                    n.select(selector, &mut out);
                }
            }
            None => self.state.endpoints.values().for_each(|n| n.select(selector, &mut out)),
        }
        out
    }
    /// The endpoints of a service (any readiness): same namespace, labels matching its selector.
    pub fn service_endpoints(&self, service: &Service) -> Vec<Arc<Endpoint>> {
        self.endpoints(Some(&service.namespace), &service.selector)
    }
}

/// The concurrent, versioned registry. Cheap to share behind an `Arc`.
pub struct Registry {
    current: ArcSwap<State>,
    /// Serializes writers so that revision order is publication order.
    writer: Mutex<()>,
    changed: Notify,
    history_limit: usize,
    /// Identifies this registry instance, so a remote follower can tell a restarted source (whose revisions
    /// start again from zero) from the one it followed.
    epoch: u64,
    /// Set by the writer once the registry holds a complete view of its source (see [`Registry::mark_synced`]).
    synced: AtomicBool,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("revision", &self.revision())
            .field("history_limit", &self.history_limit)
            .finish_non_exhaustive()
    }
}

impl Registry {
    pub fn new() -> Self {
        Self::with_history(65_536)
    }

    /// A registry that retains `limit` changes for watchers to resume from.
    pub fn with_history(limit: usize) -> Self {
        Self {
            current: ArcSwap::from_pointee(State::default()),
            writer: Mutex::new(()),
            changed: Notify::new(),
            history_limit: limit.max(1),
            epoch: new_epoch(),
            synced: AtomicBool::new(false),
        }
    }

    /// A random identifier of this registry instance (not of its contents): a follower that sees another
    /// epoch must re-read a snapshot instead of resuming by revision.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Record that the registry now reflects its whole source (the writer's first full publication). Until
    /// then an empty or partial registry must not be taken for the truth by remote followers.
    pub fn mark_synced(&self) {
        self.synced.store(true, Ordering::Release);
    }

    /// Whether [`Registry::mark_synced`] was called.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    pub fn revision(&self) -> u64 {
        self.current.load().revision
    }

    /// Create or replace an object. Returns the new revision, or the current one if nothing changed.
    pub fn put(&self, object: Object) -> u64 {
        self.apply([Change::Put(object)])
    }

    /// Remove an object; returns the new revision, or `None` if it did not exist.
    pub fn delete(&self, key: &ObjectKey) -> Option<u64> {
        let _w = self.writer.lock();
        let mut state = State::clone(&self.current.load());
        if !state.apply(Change::Delete(key.clone())) {
            return None;
        }
        Some(self.publish(state))
    }

    /// Apply several changes atomically: each effective change gets its own revision (in the given order),
    /// and readers see either none or all of them. Changes that change nothing (an identical put, a delete
    /// of a missing object) are skipped. Returns the last revision (the current one if nothing changed).
    pub fn apply(&self, changes: impl IntoIterator<Item = Change>) -> u64 {
        let _w = self.writer.lock();
        let mut state = State::clone(&self.current.load());
        let before = state.revision;
        for change in changes {
            state.apply(change);
        }
        if state.revision == before {
            return before;
        }
        self.publish(state)
    }

    /// Publish under the writer lock, then wake the watchers.
    fn publish(&self, mut state: State) -> u64 {
        state.trim_history(self.history_limit);
        let revision = state.revision;
        self.current.store(Arc::new(state));
        self.changed.notify_waiters();
        revision
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot { state: self.current.load_full() }
    }

    /// Endpoints matching `selector` in `namespace` (or all namespaces), any readiness.
    pub fn endpoints(&self, namespace: Option<&str>, selector: &Selector) -> Vec<Arc<Endpoint>> {
        self.snapshot().endpoints(namespace, selector)
    }

    /// Changes after `from_revision` to objects whose labels match `selector` (certificates always pass).
    pub fn watch(self: &Arc<Self>, selector: Selector, from_revision: u64) -> Watch {
        Watch { registry: self.clone(), selector, next: from_revision.saturating_add(1), pending: VecDeque::new() }
    }

    /// Resolves when the revision is greater than `revision` (for consumers that re-read snapshots).
    pub async fn changed_since(&self, revision: u64) {
        loop {
            let notified = self.changed.notified();
            if self.revision() > revision {
                return;
            }
            notified.await;
        }
    }
}

/// A per-process-random, per-instance-distinct value: std's randomly keyed hasher over the clock and a counter.
fn new_epoch() -> u64 {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    h.write_u128(nanos);
    h.write_u32(std::process::id());
    h.finish()
}

/// How many history entries one read of the history turns into pending events; bounds the buffer of a
/// watcher that is far behind.
const FILL_BATCH: usize = 1024;

/// A resumable stream of [`WatchEvent`]s.
pub struct Watch {
    registry: Arc<Registry>,
    selector: Selector,
    /// The first revision not yet read from the history.
    next: u64,
    pending: VecDeque<WatchEvent>,
}

impl fmt::Debug for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch")
            .field("selector", &self.selector.to_string())
            .field("next", &self.next)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl Watch {
    /// The next event; waits for one.
    pub async fn next(&mut self) -> WatchEvent {
        loop {
            // Registered before reading, so a write published after the read still wakes us.
            let notified = self.registry.changed.notified();
            if let Some(e) = read(&self.registry, &self.selector, &mut self.next, &mut self.pending) {
                return e;
            }
            notified.await;
        }
    }

    /// The next event if one is available now, without waiting.
    pub fn try_next(&mut self) -> Option<WatchEvent> {
        read(&self.registry, &self.selector, &mut self.next, &mut self.pending)
    }

    /// Re-read the registry after a `Relist`: returns a snapshot and continues this watch from its revision,
    /// dropping anything still buffered.
    pub fn resync(&mut self) -> Snapshot {
        let snapshot = self.registry.snapshot();
        self.pending.clear();
        self.next = snapshot.revision() + 1;
        snapshot
    }

    pub fn selector(&self) -> &Selector {
        &self.selector
    }
}

/// The next event of a watch at `next`, refilling `pending` from the published history.
fn read(
    registry: &Registry,
    selector: &Selector,
    next: &mut u64,
    pending: &mut VecDeque<WatchEvent>,
) -> Option<WatchEvent> {
    loop {
        if let Some(e) = pending.pop_front() {
            return Some(e);
        }
        let state = registry.current.load();
        if *next > state.revision {
            return None;
        }
        let oldest = state.history.front().map_or(state.revision + 1, |h| h.revision);
        if *next < oldest {
            *next = state.revision + 1;
            return Some(WatchEvent::Relist { revision: state.revision });
        }
        // History revisions are consecutive, so a revision's position is its distance from the oldest.
        let start = usize::try_from(*next - oldest).unwrap_or(usize::MAX);
        let end = state.history.len().min(start.saturating_add(FILL_BATCH));
        if start >= end {
            // Unreachable while the history invariant holds; never spin on a broken one.
            *next = state.revision + 1;
            return Some(WatchEvent::Relist { revision: state.revision });
        }
        for i in start..end {
            if let Some(entry) = state.history.get(i) {
                if let Some(e) = event_for(selector, entry) {
                    pending.push_back(e);
                }
                *next = entry.revision + 1;
            }
        }
    }
}

fn event_for(selector: &Selector, entry: &HistoryEntry) -> Option<WatchEvent> {
    let matches = |o: &Object| o.labels().is_none_or(|l| selector.matches(l));
    match &entry.object {
        Some(o) if matches(o) => Some(WatchEvent::Put { revision: entry.revision, object: o.clone() }),
        _ if entry.prev.as_ref().is_some_and(matches) => {
            Some(WatchEvent::Delete { revision: entry.revision, key: entry.key.clone() })
        }
        _ => None,
    }
}
