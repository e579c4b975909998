//! The informer caches: typed objects of one store kind with their revisions ([`Cache`]), and the set of them a
//! controller watches ([`Caches`]), addressed by type rather than by kind name.
//!
//! A cache is kept current from two sides: the store's watch events, and the controller's own writes
//! (write-through, done by [`super::Context`]). Events therefore arrive for changes the cache already holds,
//! and are ignored by revision: a put older than the cached object, or than the tombstone of the controller's
//! own delete, changes nothing.

use crate::store::{Key, StoreEvent, Versioned};
use model::revision::{RevisionRecord, REVISIONS_KIND};
use model::{Autoscaler, ConfigMap, Deployment, Node, Pod, Route, Secret, Service};
use serde::{de::DeserializeOwned, Serialize};
use std::any::Any;
use std::collections::HashMap;

/// A type a controller can cache: decoded from the store's JSON, stored under one kind.
pub trait Cached: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    /// The store kind (key prefix): [`model::Kind::plural`] for object kinds.
    fn kind() -> &'static str;

    /// The store key of the object `name` in `namespace` (empty for cluster-scoped kinds).
    fn store_key(namespace: impl Into<String>, name: impl Into<String>) -> Key {
        Key::new(Self::kind(), namespace, name)
    }
}

macro_rules! cached_objects {
    ($($t:ty),* $(,)?) => {$(
        impl Cached for $t {
            fn kind() -> &'static str {
                <$t as model::Object>::KIND.plural()
            }
        }
    )*};
}

cached_objects!(Node, Deployment, Pod, Service, Route, ConfigMap, Secret, Autoscaler);

/// A Deployment's template history: not an API kind, stored under its own key prefix.
impl Cached for RevisionRecord {
    fn kind() -> &'static str {
        REVISIONS_KIND
    }
}

/// Typed objects of one kind with their store revisions.
pub struct Cache<T> {
    objects: HashMap<Key, (u64, T)>,
    /// Keys the controller deleted itself, with the revision of the deletion: older puts still in flight are
    /// ignored.
    tombstones: HashMap<Key, u64>,
    /// Set by the first complete list.
    listed: bool,
}

impl<T: Cached> Default for Cache<T> {
    fn default() -> Self {
        Cache { objects: HashMap::new(), tombstones: HashMap::new(), listed: false }
    }
}

impl<T: Cached> Cache<T> {
    pub fn get(&self, key: &Key) -> Option<&T> {
        self.objects.get(key).map(|(_, t)| t)
    }

    /// The store revision of the cached object.
    pub fn revision(&self, key: &Key) -> Option<u64> {
        self.objects.get(key).map(|(r, _)| *r)
    }

    pub fn contains(&self, key: &Key) -> bool {
        self.objects.contains_key(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Key, &T)> {
        self.objects.iter().map(|(k, (_, t))| (k, t))
    }

    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        self.objects.keys()
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.objects.values().map(|(_, t)| t)
    }

    pub(crate) fn decode(v: &Versioned) -> Option<T> {
        match serde_json::from_slice(&v.value) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(key = %v.key, error = %e, "skipping undecodable object");
                None
            }
        }
    }

    /// Replace everything with a complete list.
    pub(crate) fn relist(&mut self, objects: Vec<Versioned>) {
        self.objects.clear();
        self.tombstones.clear();
        self.listed = true;
        for v in objects {
            if let Some(t) = Self::decode(&v) {
                self.objects.insert(v.key, (v.revision, t));
            }
        }
    }

    /// Apply a watch event. When the cache changed, returns the key and the object it held before.
    pub(crate) fn apply(&mut self, event: StoreEvent) -> Option<(Key, Option<T>)> {
        match event {
            StoreEvent::Put { object, .. } => {
                let newer = |r: u64| object.revision > r;
                if !self.objects.get(&object.key).is_none_or(|(r, _)| newer(*r))
                    || !self.tombstones.get(&object.key).is_none_or(|r| newer(*r))
                {
                    return None;
                }
                let t = Self::decode(&object)?;
                let before = self.objects.insert(object.key.clone(), (object.revision, t));
                Some((object.key, before.map(|(_, t)| t)))
            }
            StoreEvent::Delete { key, revision, .. } => {
                if self.tombstones.get(&key).is_some_and(|r| *r <= revision) {
                    self.tombstones.remove(&key);
                }
                match self.objects.get(&key) {
                    Some((r, _)) if *r < revision => {
                        let before = self.objects.remove(&key).map(|(_, t)| t);
                        Some((key, before))
                    }
                    _ => None,
                }
            }
        }
    }

    /// Write-through of the controller's own write.
    pub(crate) fn put(&mut self, key: Key, revision: u64, t: T) {
        self.objects.insert(key, (revision, t));
    }

    /// Write-through of the controller's own delete at `revision` (0 when someone else deleted it first).
    pub(crate) fn forget(&mut self, key: &Key, revision: u64) {
        self.objects.remove(key);
        self.tombstones.insert(key.clone(), revision);
    }
}

/// An object the driver holds without knowing its type.
pub(crate) type AnyObject = dyn Any + Send + Sync;

/// What the driver needs of a cache without knowing its type.
pub(crate) trait AnyCache: Send + Sync {
    fn kind(&self) -> &'static str;
    fn listed(&self) -> bool;
    fn relist(&mut self, objects: Vec<Versioned>);
    fn apply(&mut self, event: StoreEvent) -> Option<(Key, Option<Box<AnyObject>>)>;
    fn get(&self, key: &Key) -> Option<&AnyObject>;
    fn forget(&mut self, key: &Key, revision: u64);
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<T: Cached> AnyCache for Cache<T> {
    fn kind(&self) -> &'static str {
        T::kind()
    }
    fn listed(&self) -> bool {
        self.listed
    }
    fn relist(&mut self, objects: Vec<Versioned>) {
        Cache::relist(self, objects)
    }
    fn apply(&mut self, event: StoreEvent) -> Option<(Key, Option<Box<AnyObject>>)> {
        let (key, before) = Cache::apply(self, event)?;
        Some((key, before.map(|t| Box::new(t) as Box<AnyObject>)))
    }
    fn get(&self, key: &Key) -> Option<&AnyObject> {
        Cache::get(self, key).map(|t| t as &AnyObject)
    }
    fn forget(&mut self, key: &Key, revision: u64) {
        Cache::forget(self, key, revision)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// One kind a controller watches; see [`super::Reconciler::watches`].
#[derive(Clone, Copy)]
pub struct Watch {
    kind: fn() -> &'static str,
    cache: fn() -> Box<dyn AnyCache>,
}

impl Watch {
    /// Watch the store kind of `T` into a `Cache<T>`.
    pub const fn of<T: Cached>() -> Watch {
        Watch { kind: T::kind, cache: empty_cache::<T> }
    }

    pub fn kind(&self) -> &'static str {
        (self.kind)()
    }
}

fn empty_cache<T: Cached>() -> Box<dyn AnyCache> {
    Box::new(Cache::<T>::default())
}

/// The caches of every kind one controller watches.
pub struct Caches {
    caches: Vec<Box<dyn AnyCache>>,
}

impl Caches {
    pub(crate) fn new(watches: &[Watch]) -> Self {
        Caches { caches: watches.iter().map(|w| (w.cache)()).collect() }
    }

    /// The cache of `T`.
    ///
    /// # Panics
    /// When the controller does not watch `T`: a programming error that any test running the controller
    /// finds, so not worth an error path in every reconcile.
    pub fn of<T: Cached>(&self) -> &Cache<T> {
        self.find(T::kind()).and_then(|c| c.as_any().downcast_ref()).unwrap_or_else(|| not_watched::<T>())
    }

    pub(crate) fn of_mut<T: Cached>(&mut self) -> &mut Cache<T> {
        self.find_mut(T::kind()).and_then(|c| c.as_any_mut().downcast_mut()).unwrap_or_else(|| not_watched::<T>())
    }

    /// Whether every kind has had its first complete list.
    pub(crate) fn all_listed(&self) -> bool {
        self.caches.iter().all(|c| c.listed())
    }

    pub(crate) fn find(&self, kind: &str) -> Option<&dyn AnyCache> {
        self.caches.iter().find(|c| c.kind() == kind).map(|c| &**c)
    }

    pub(crate) fn find_mut(&mut self, kind: &str) -> Option<&mut Box<dyn AnyCache>> {
        self.caches.iter_mut().find(|c| c.kind() == kind)
    }
}

fn not_watched<T: Cached>() -> ! {
    panic!("the controller reads {} without watching them", T::kind())
}

/// One cached object that changed: what it was and what it is. Either side is absent for a create or a
/// delete; a relist reports no changes (see [`super::Resync::Listed`]).
pub struct Changed<'a> {
    pub key: &'a Key,
    pub(crate) before: Option<&'a AnyObject>,
    pub(crate) after: Option<&'a AnyObject>,
}

impl<'a> Changed<'a> {
    /// Whether the changed object is a `T`.
    pub fn is<T: Cached>(&self) -> bool {
        self.key.kind == T::kind()
    }

    /// The object before the change (`None` for a create, or when it is not a `T`).
    pub fn before<T: Cached>(&self) -> Option<&'a T> {
        self.before?.downcast_ref()
    }

    /// The object after the change (`None` for a delete, or when it is not a `T`).
    pub fn after<T: Cached>(&self) -> Option<&'a T> {
        self.after?.downcast_ref()
    }

    /// Both sides: a change affects what depended on the object before and what depends on it now (a pod
    /// deleted still maps to its owner).
    pub fn objects<T: Cached>(&self) -> impl Iterator<Item = &'a T> {
        self.before::<T>().into_iter().chain(self.after::<T>())
    }
}
