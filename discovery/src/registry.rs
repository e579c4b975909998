//! The registry: services, endpoints, routes and certificates under one monotonically increasing revision.
//!
//! CONTRACT (other crates rely on this API; internals may change):
//! - every successful write bumps the revision by exactly one and is visible to the next read;
//! - `snapshot()` is O(1) and immutable; `endpoints(ns, selector)` costs O(matches) via an inverted label index;
//! - `watch(selector, from)` yields every change after `from` exactly once, in revision order, or
//!   `WatchEvent::Relist` when `from` is older than the retained history (the subscriber then re-reads a
//!   snapshot and watches from its revision).
//!
//! NOTE: this first implementation is simple (one lock, O(n) snapshot); the discovery owner replaces the
//! internals with dashmap + label index + persistent snapshots without changing the API.

use crate::selector::Selector;
use crate::types::{Certificate, Endpoint, Route, Service};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use tokio::sync::Notify;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ObjectKind {
    Service,
    Endpoint,
    Route,
    Certificate,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectKey {
    pub kind: ObjectKind,
    pub namespace: String,
    pub name: String,
}

/// Any registry object, shared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "object", rename_all = "camelCase")]
pub enum Object {
    Service(Arc<Service>),
    Endpoint(Arc<Endpoint>),
    Route(Arc<Route>),
    Certificate(Arc<Certificate>),
}

impl Object {
    pub fn key(&self) -> ObjectKey {
        let (kind, namespace, name) = match self {
            Object::Service(s) => (ObjectKind::Service, &s.namespace, &s.name),
            Object::Endpoint(e) => (ObjectKind::Endpoint, &e.namespace, &e.name),
            Object::Route(r) => (ObjectKind::Route, &r.namespace, &r.name),
            Object::Certificate(c) => (ObjectKind::Certificate, &c.namespace, &c.name),
        };
        ObjectKey {
            kind,
            namespace: namespace.clone(),
            name: name.clone(),
        }
    }

    pub fn labels(&self) -> Option<&crate::Labels> {
        match self {
            Object::Service(s) => Some(&s.labels),
            Object::Endpoint(e) => Some(&e.labels),
            Object::Route(r) => Some(&r.labels),
            Object::Certificate(_) => None,
        }
    }
}

/// One change seen by a watcher.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WatchEvent {
    /// Created or replaced.
    Put { revision: u64, object: Object },
    /// Removed (or, for a selector watch, no longer matching).
    Delete { revision: u64, key: ObjectKey },
    /// The requested revision is no longer retained: re-read a snapshot, then watch from its revision.
    Relist { revision: u64 },
}

/// An immutable view of the registry at one revision.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    revision: u64,
    objects: Arc<BTreeMap<ObjectKey, Object>>,
}

impl Snapshot {
    pub fn revision(&self) -> u64 {
        self.revision
    }
    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.objects.values().filter_map(|o| match o {
            Object::Service(s) => Some(s),
            _ => None,
        })
    }
    pub fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.objects.values().filter_map(|o| match o {
            Object::Route(r) => Some(r),
            _ => None,
        })
    }
    pub fn certificates(&self) -> impl Iterator<Item = &Arc<Certificate>> {
        self.objects.values().filter_map(|o| match o {
            Object::Certificate(c) => Some(c),
            _ => None,
        })
    }
    pub fn service(&self, namespace: &str, name: &str) -> Option<&Arc<Service>> {
        let key = ObjectKey {
            kind: ObjectKind::Service,
            namespace: namespace.into(),
            name: name.into(),
        };
        match self.objects.get(&key) {
            Some(Object::Service(s)) => Some(s),
            _ => None,
        }
    }
    /// All endpoints (any readiness) in `namespace` (or every namespace) matching `selector`.
    pub fn endpoints(&self, namespace: Option<&str>, selector: &Selector) -> Vec<Arc<Endpoint>> {
        self.objects
            .values()
            .filter_map(|o| match o {
                Object::Endpoint(e)
                    if namespace.is_none_or(|ns| e.namespace == ns)
                        && selector.matches(&e.labels) =>
                {
                    Some(e.clone())
                }
                _ => None,
            })
            .collect()
    }
    /// The endpoints of a service (any readiness): same namespace, labels matching its selector.
    pub fn service_endpoints(&self, service: &Service) -> Vec<Arc<Endpoint>> {
        self.endpoints(Some(&service.namespace), &service.selector)
    }
}

struct Inner {
    revision: u64,
    objects: Arc<BTreeMap<ObjectKey, Object>>,
    history: VecDeque<(u64, ObjectKey, Option<Object>)>,
}

/// The concurrent, versioned registry. Cheap to share behind an `Arc`.
pub struct Registry {
    inner: RwLock<Inner>,
    changed: Notify,
    history_limit: usize,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    pub fn new() -> Self {
        Self::with_history(65_536)
    }

    /// A registry that retains `limit` changes for watchers to resume from.
    pub fn with_history(limit: usize) -> Self {
        Self {
            inner: RwLock::new(Inner {
                revision: 0,
                objects: Arc::default(),
                history: VecDeque::new(),
            }),
            changed: Notify::new(),
            history_limit: limit.max(1),
        }
    }

    pub fn revision(&self) -> u64 {
        self.inner.read().revision
    }

    /// Create or replace an object. Returns the new revision, or the current one if nothing changed.
    pub fn put(&self, object: Object) -> u64 {
        let key = object.key();
        self.write(key, Some(object))
    }

    /// Remove an object; returns the new revision, or `None` if it did not exist.
    pub fn delete(&self, key: &ObjectKey) -> Option<u64> {
        if !self.inner.read().objects.contains_key(key) {
            return None;
        }
        Some(self.write(key.clone(), None))
    }

    fn write(&self, key: ObjectKey, object: Option<Object>) -> u64 {
        let mut inner = self.inner.write();
        if inner.objects.get(&key) == object.as_ref() {
            return inner.revision;
        }
        let mut objects = (*inner.objects).clone();
        match &object {
            Some(o) => objects.insert(key.clone(), o.clone()),
            None => objects.remove(&key),
        };
        inner.objects = Arc::new(objects);
        inner.revision += 1;
        let rev = inner.revision;
        inner.history.push_back((rev, key, object));
        while inner.history.len() > self.history_limit {
            inner.history.pop_front();
        }
        drop(inner);
        self.changed.notify_waiters();
        rev
    }

    pub fn snapshot(&self) -> Snapshot {
        let inner = self.inner.read();
        Snapshot {
            revision: inner.revision,
            objects: inner.objects.clone(),
        }
    }

    /// Endpoints matching `selector` in `namespace` (or all namespaces), any readiness.
    pub fn endpoints(&self, namespace: Option<&str>, selector: &Selector) -> Vec<Arc<Endpoint>> {
        self.snapshot().endpoints(namespace, selector)
    }

    /// Changes after `from_revision` to objects whose labels match `selector` (certificates always pass).
    pub fn watch(self: &Arc<Self>, selector: Selector, from_revision: u64) -> Watch {
        Watch {
            registry: self.clone(),
            selector,
            next: from_revision + 1,
            pending: VecDeque::new(),
        }
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

/// A resumable stream of [`WatchEvent`]s.
pub struct Watch {
    registry: Arc<Registry>,
    selector: Selector,
    next: u64,
    pending: VecDeque<WatchEvent>,
}

impl Watch {
    /// The next event; waits for one.
    pub async fn next(&mut self) -> WatchEvent {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return e;
            }
            let notified = self.registry.changed.notified();
            {
                let inner = self.registry.inner.read();
                if self.next <= inner.revision {
                    let oldest = inner
                        .history
                        .front()
                        .map(|h| h.0)
                        .unwrap_or(inner.revision + 1);
                    if self.next < oldest {
                        self.next = inner.revision + 1;
                        return WatchEvent::Relist {
                            revision: inner.revision,
                        };
                    }
                    for (rev, key, obj) in inner.history.iter().filter(|h| h.0 >= self.next) {
                        let matches =
                            |o: &Object| o.labels().is_none_or(|l| self.selector.matches(l));
                        match obj {
                            Some(o) if matches(o) => self.pending.push_back(WatchEvent::Put {
                                revision: *rev,
                                object: o.clone(),
                            }),
                            _ => self.pending.push_back(WatchEvent::Delete {
                                revision: *rev,
                                key: key.clone(),
                            }),
                        }
                    }
                    self.next = inner.revision + 1;
                    continue;
                }
            }
            notified.await;
        }
    }
}
