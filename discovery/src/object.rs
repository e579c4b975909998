//! Registry objects as they cross crate and wire boundaries: [`Object`] (any of a Service, Endpoint, Route
//! or Certificate), its [`ObjectKey`], the [`WatchEvent`]s a watcher receives and the [`Change`]s a writer
//! applies. Plain data: no registry, no runtime.

use crate::types::{Certificate, Endpoint, Route, Service};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

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
        ObjectKey { kind, namespace: namespace.clone(), name: name.clone() }
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

/// One write in a batch given to [`Registry::apply`].
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Create or replace.
    Put(Object),
    /// Remove, if present.
    Delete(ObjectKey),
}
