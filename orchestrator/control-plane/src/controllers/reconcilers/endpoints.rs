//! The endpoints controller: publishes Services, Routes, TLS Secrets and pod endpoints into the discovery
//! registry (the pure parts are in [`endpoints`]).
//!
//! Keys are stored objects that publish something: Services, Routes, Secrets and pods. A Service change also
//! affects the pods of its namespace (its selector decides which are published), a Node change the pods bound
//! to it. A pass computes the changes of its keys against what each published last time, and
//! [`Reconciler::after_pass`] applies them as one `Registry::apply`, so a burst of events is one registry
//! revision. After every relist and every `resync` period the whole registry is diffed against the whole
//! view instead; the first such resync (every kind listed) marks the registry synced, so remote mirrors
//! may trust it.

use crate::controllers::driver::{Cached, Caches, Changed, Context, Reconciler, Requeue, Resync, Watch};
use crate::controllers::endpoints;
use crate::store::{Key, StoreError};
use discovery::{Object, ObjectKey, Registry};
use model::{Kind, Node, Pod, Route, Secret, Service};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub struct Endpoints {
    registry: Arc<Registry>,
    resync: Duration,
    /// What each stored object published last time.
    published: HashMap<Key, Vec<ObjectKey>>,
    /// The registry changes of the current pass.
    changes: Vec<discovery::Change>,
}

impl Endpoints {
    pub fn new(registry: Arc<Registry>, resync: Duration) -> Self {
        Endpoints { registry, resync, published: HashMap::new(), changes: Vec::new() }
    }
}

const WATCHES: &[Watch] =
    &[Watch::of::<Service>(), Watch::of::<Route>(), Watch::of::<Secret>(), Watch::of::<Pod>(), Watch::of::<Node>()];

impl Reconciler for Endpoints {
    type Key = Key;
    const NAME: &'static str = "endpoints-controller";

    fn watches(&self) -> &[Watch] {
        WATCHES
    }

    fn affected(&self, change: &Changed<'_>, caches: &Caches) -> Vec<Key> {
        let pods = caches.of::<Pod>().iter();
        if change.is::<Service>() {
            let selectable = pods.filter(|(k, _)| k.namespace == change.key.namespace);
            return selectable.map(|(k, _)| k.clone()).chain([change.key.clone()]).collect();
        }
        if change.is::<Node>() {
            let bound = pods.filter(|(_, p)| p.spec.node_name.as_deref() == Some(change.key.name.as_str()));
            return bound.map(|(k, _)| k.clone()).collect();
        }
        vec![change.key.clone()]
    }

    fn resync_period(&self) -> Option<Duration> {
        Some(self.resync)
    }

    fn resync(&mut self, _: Resync, caches: &Caches) -> Vec<Key> {
        let services: Vec<Service> = caches.of::<Service>().values().cloned().collect();
        let routes: Vec<Route> = caches.of::<Route>().values().cloned().collect();
        let secrets: Vec<Secret> = caches.of::<Secret>().values().cloned().collect();
        let pods: Vec<Pod> = caches.of::<Pod>().values().cloned().collect();
        let nodes: Vec<Node> = caches.of::<Node>().values().cloned().collect();
        let desired = endpoints::desired_objects(&services, &routes, &secrets, &pods, &nodes);
        let changes = endpoints::diff(&self.registry.snapshot(), &desired);
        if !changes.is_empty() {
            tracing::debug!(changes = changes.len(), "registry resync");
            self.registry.apply(changes);
        }
        // Every kind is listed, so the registry now reflects the whole store: remote mirrors may trust it.
        self.registry.mark_synced();
        self.published = published_by_source(caches);
        // The pass's keys now find nothing left to publish.
        Vec::new()
    }

    async fn reconcile(&mut self, key: &Key, ctx: &mut Context<'_>) -> Result<Requeue, StoreError> {
        let objects = objects_for(ctx.caches(), key);
        let keys: Vec<ObjectKey> = objects.iter().map(Object::key).collect();
        if let Some(old) = self.published.get(key) {
            let gone = old.iter().filter(|k| !keys.contains(k));
            self.changes.extend(gone.map(|k| discovery::Change::Delete(k.clone())));
        }
        let snapshot = self.registry.snapshot();
        let changed = objects.into_iter().filter(|o| snapshot.get(&o.key()).as_ref() != Some(o));
        self.changes.extend(changed.map(discovery::Change::Put));
        if keys.is_empty() {
            self.published.remove(key);
        } else {
            self.published.insert(key.clone(), keys);
        }
        Ok(Requeue::OnChange)
    }

    fn after_pass(&mut self) {
        if !self.changes.is_empty() {
            self.registry.apply(std::mem::take(&mut self.changes));
        }
    }
}

fn published_by_source(caches: &Caches) -> HashMap<Key, Vec<ObjectKey>> {
    let sources = (caches.of::<Service>().keys())
        .chain(caches.of::<Route>().keys())
        .chain(caches.of::<Secret>().keys())
        .chain(caches.of::<Pod>().keys());
    sources.map(|k| (k.clone(), objects_for(caches, k).iter().map(Object::key).collect())).collect()
}

/// What one stored object should publish now.
fn objects_for(caches: &Caches, key: &Key) -> Vec<Object> {
    match Kind::from_plural(&key.kind) {
        Some(Kind::Service) => caches.of::<Service>().get(key).map(endpoints::service_objects).unwrap_or_default(),
        Some(Kind::Route) => caches.of::<Route>().get(key).map(endpoints::route_objects).unwrap_or_default(),
        Some(Kind::Secret) => caches.of::<Secret>().get(key).map(endpoints::secret_objects).unwrap_or_default(),
        Some(Kind::Pod) => pod_objects(caches, key),
        _ => Vec::new(),
    }
}

/// A pod's endpoint, when some Service selects it.
fn pod_objects(caches: &Caches, key: &Key) -> Vec<Object> {
    let Some(pod) = caches.of::<Pod>().get(key) else {
        return Vec::new();
    };
    if !caches.of::<Service>().values().any(|svc| endpoints::selects(svc, pod)) {
        return Vec::new();
    }
    let node = pod.spec.node_name.as_ref().and_then(|n| caches.of::<Node>().get(&Node::store_key("", n)));
    endpoints::pod_endpoint(pod, node).map(|e| vec![Object::Endpoint(Arc::new(e))]).unwrap_or_default()
}
