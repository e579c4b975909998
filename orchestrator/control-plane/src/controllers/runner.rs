//! The thin, level-triggered loops around the pure controllers.
//!
//! Each loop lists the kinds it needs from the store, watches them from the list revision, and keeps typed
//! caches. Events that arrive together are handled as one batch (debounced to the same wake-up): the loop
//! marks what they affect, calls the pure function for those objects only and executes the result. Writes
//! are compare-and-swap on the cached revision; on conflict the object is read again and the change retried
//! on fresh state. A loop's own writes go into its cache at once ("write-through"), so the next batch never
//! acts twice on a stale view; the watch events for them arrive later and are ignored by revision.
//!
//! Nothing is remembered across restarts: a loop starts from a full list, so a control plane that restarts in
//! the middle of a rollout continues it from what is stored (no duplicate pods, since decisions depend only
//! on the pods that exist). A watch that fails (history compacted, backend error) is replaced by a new list.
//! Timers exist only for time-based transitions (heartbeat grace, minReadySeconds, drain, progress deadline)
//! and for a periodic full resync of the registry as a safety net.

use super::autoscaler::{self as scaling, AutoscalerConfig, Evaluation, LoadSample, LoadSource, Missing};
use super::deployment::{self, Action, DeploymentConfig, RevisionRecord, REVISIONS_KIND};
use super::endpoints;
use super::node::{self, NodeAction, NODE_STATUS_UNKNOWN};
use crate::scheduler::SeededRng;
use crate::store::{Key, Prefix, Store, StoreError, StoreEvent, Versioned};
use discovery::{Change, Object, ObjectKey, Registry};
use futures::StreamExt;
use model::clock::Clock;
use model::{
    Autoscaler, AutoscalerStatus, Condition, ConditionStatus, ConfigMap, Deployment, MetricName, MetricStatus, Node,
    Pod, Route, ScaleRecord, Secret, Service, Time, RECENT_DECISIONS,
};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Settings for all controllers.
#[derive(Debug, Clone)]
pub struct ControllersConfig {
    /// A node whose heartbeat is older than this becomes NotReady and its pods are evicted.
    pub node_grace: Duration,
    pub deployment: DeploymentConfig,
    /// Full registry resync period (a safety net; changes flow as events).
    pub resync: Duration,
    /// Seed of the pod-name generator (random when `None`).
    pub seed: Option<u64>,
    pub autoscaler: AutoscalerConfig,
}

impl Default for ControllersConfig {
    fn default() -> Self {
        ControllersConfig {
            node_grace: node::DEFAULT_GRACE,
            deployment: DeploymentConfig::default(),
            resync: Duration::from_secs(60),
            seed: None,
            autoscaler: AutoscalerConfig::default(),
        }
    }
}

/// The running controllers. Dropping this does not stop them: resolve the shutdown future, then
/// [`Controllers::join`].
pub struct Controllers {
    tasks: Vec<JoinHandle<()>>,
}

impl Controllers {
    /// Start the deployment, node-lifecycle, autoscaler (with no load source) and endpoints controllers over
    /// `store`, publishing into `registry`, until `shutdown` resolves. Must be called inside a tokio runtime.
    pub fn start(
        store: Arc<dyn Store>,
        registry: Arc<Registry>,
        clock: Arc<dyn Clock>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Controllers {
        Self::start_with(store, registry, clock, ControllersConfig::default(), shutdown)
    }

    pub fn start_with(
        store: Arc<dyn Store>,
        registry: Arc<Registry>,
        clock: Arc<dyn Clock>,
        config: ControllersConfig,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Controllers {
        Self::start_with_load(store, registry, clock, config, None, shutdown)
    }

    /// As [`Controllers::start_with`], with the autoscaler reading request load from `load` (without one,
    /// every Autoscaler reports its metrics missing and holds its target's replicas).
    pub fn start_with_load(
        store: Arc<dyn Store>,
        registry: Arc<Registry>,
        clock: Arc<dyn Clock>,
        config: ControllersConfig,
        load: Option<Arc<dyn LoadSource>>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Controllers {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = vec![tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        })];
        let seed = config.seed.unwrap_or_else(|| {
            let mut b = [0u8; 8];
            // Only pod-name suffixes depend on it; a fixed fallback is harmless.
            let _ = getrandom::fill(&mut b);
            u64::from_le_bytes(b)
        });
        tasks.push(tokio::spawn(run_deployments(
            store.clone(),
            clock.clone(),
            config.deployment,
            seed,
            stop_rx.clone(),
        )));
        tasks.push(tokio::spawn(run_nodes(store.clone(), clock.clone(), config.node_grace, stop_rx.clone())));
        tasks.push(tokio::spawn(run_autoscalers(
            store.clone(),
            clock.clone(),
            load,
            config.autoscaler,
            stop_rx.clone(),
        )));
        tasks.push(tokio::spawn(run_endpoints(store, registry, config.resync, stop_rx)));
        Controllers { tasks }
    }

    /// Wait until every loop has stopped.
    pub async fn join(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Feeds and caches

/// The next event and every one already queued behind it, so a burst is handled as one batch.
async fn recv_batch(feed: &mut mpsc::UnboundedReceiver<Feed>) -> Option<Vec<Feed>> {
    let mut batch = vec![feed.recv().await?];
    while let Ok(more) = feed.try_recv() {
        batch.push(more);
    }
    Some(batch)
}

enum Feed {
    /// A complete list of one kind (at start and after a failed watch).
    Listed {
        kind: usize,
        objects: Vec<Versioned>,
    },
    Event {
        kind: usize,
        event: StoreEvent,
    },
}

/// List and watch each kind into one channel, relisting whenever a watch fails or ends.
fn spawn_feeds(
    store: &Arc<dyn Store>,
    kinds: &[&'static str],
    stop: &watch::Receiver<bool>,
) -> mpsc::UnboundedReceiver<Feed> {
    let (tx, rx) = mpsc::unbounded_channel();
    for (i, kind) in kinds.iter().enumerate() {
        let store = store.clone();
        let tx = tx.clone();
        let mut stop = stop.clone();
        let prefix = Prefix { kind: (*kind).to_string(), namespace: None };
        tokio::spawn(async move {
            loop {
                let fed = async {
                    let (objects, revision) = store.list(&prefix, None).await?;
                    if tx.send(Feed::Listed { kind: i, objects }).is_err() {
                        return Ok(());
                    }
                    let mut events = store.watch(&prefix, revision).await?;
                    while let Some(event) = events.next().await {
                        if tx.send(Feed::Event { kind: i, event: event? }).is_err() {
                            return Ok(());
                        }
                    }
                    Ok::<(), StoreError>(())
                };
                tokio::select! {
                    r = fed => {
                        if tx.is_closed() {
                            return;
                        }
                        if let Err(e) = r {
                            tracing::warn!(kind = %prefix.kind, error = %e, "watch failed; listing again");
                        }
                    }
                    _ = stop.wait_for(|s| *s) => return,
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        });
    }
    rx
}

/// Typed objects of one kind with their store revisions.
struct Cache<T> {
    objects: HashMap<Key, (u64, T)>,
    /// Keys this loop deleted itself, with the revision of the deletion: older puts still in flight are
    /// ignored.
    tombstones: HashMap<Key, u64>,
}

impl<T: DeserializeOwned> Cache<T> {
    fn new() -> Self {
        Cache { objects: HashMap::new(), tombstones: HashMap::new() }
    }

    fn decode(v: &Versioned) -> Option<T> {
        match serde_json::from_slice(&v.value) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(key = %v.key, error = %e, "skipping undecodable object");
                None
            }
        }
    }

    /// Replace everything; returns every key that was or is present.
    fn relist(&mut self, objects: Vec<Versioned>) -> Vec<Key> {
        let mut keys: Vec<Key> = self.objects.keys().cloned().collect();
        self.objects.clear();
        self.tombstones.clear();
        for v in objects {
            if let Some(t) = Self::decode(&v) {
                keys.push(v.key.clone());
                self.objects.insert(v.key, (v.revision, t));
            }
        }
        keys
    }

    /// Apply a watch event; returns the key when the cache changed.
    fn apply(&mut self, event: StoreEvent) -> Option<Key> {
        match event {
            StoreEvent::Put { object, .. } => {
                let newer = |r: u64| object.revision > r;
                if !self.objects.get(&object.key).is_none_or(|(r, _)| newer(*r))
                    || !self.tombstones.get(&object.key).is_none_or(|r| newer(*r))
                {
                    return None;
                }
                let t = Self::decode(&object)?;
                self.objects.insert(object.key.clone(), (object.revision, t));
                Some(object.key)
            }
            StoreEvent::Delete { key, revision, .. } => {
                if self.tombstones.get(&key).is_some_and(|r| *r <= revision) {
                    self.tombstones.remove(&key);
                }
                match self.objects.get(&key) {
                    Some((r, _)) if *r < revision => {
                        self.objects.remove(&key);
                        Some(key)
                    }
                    _ => None,
                }
            }
        }
    }

    fn put(&mut self, key: Key, revision: u64, t: T) {
        self.objects.insert(key, (revision, t));
    }

    fn forget(&mut self, key: &Key, revision: u64) {
        self.objects.remove(key);
        self.tombstones.insert(key.clone(), revision);
    }

    fn get(&self, key: &Key) -> Option<&(u64, T)> {
        self.objects.get(key)
    }

    fn values(&self) -> impl Iterator<Item = &T> {
        self.objects.values().map(|(_, t)| t)
    }
}

fn encode<T: Serialize>(t: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(t).map_err(|e| StoreError::Backend(format!("encoding object: {e}")))
}

/// Read-modify-write with compare-and-swap, retried on conflict with the object read again. `change`
/// returns false when there is nothing to write. Keeps `cache` current.
async fn update_with<T: Serialize + DeserializeOwned + Clone>(
    store: &dyn Store,
    cache: &mut Cache<T>,
    key: &Key,
    mut change: impl FnMut(&mut T) -> bool,
) -> Result<(), StoreError> {
    for _ in 0..8 {
        let (revision, mut object) = match cache.get(key) {
            Some((r, t)) => (*r, t.clone()),
            None => return Ok(()),
        };
        if !change(&mut object) {
            return Ok(());
        }
        match store.update(key, encode(&object)?, revision).await {
            Ok(r) => {
                cache.put(key.clone(), r, object);
                return Ok(());
            }
            Err(StoreError::Conflict { .. }) => match store.get(key).await? {
                Some(v) => match Cache::<T>::decode(&v) {
                    Some(t) => cache.put(key.clone(), v.revision, t),
                    None => return Ok(()),
                },
                None => {
                    cache.forget(key, 0);
                    return Ok(());
                }
            },
            Err(StoreError::NotFound(_)) => {
                cache.forget(key, 0);
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Backend(format!("{key}: too many concurrent writers")))
}

async fn wait_stop(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Sleep until `at`, or forever when `None`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

// ---------------------------------------------------------------------------------------------------------
// Deployments

type DeployKey = (String, String);

async fn run_deployments(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    config: DeploymentConfig,
    seed: u64,
    mut stop: watch::Receiver<bool>,
) {
    // ConfigMaps and Secrets only matter to Deployments with `berth.dev/rollout-on-config-change`.
    const KINDS: [&str; 5] = ["deployments", "pods", REVISIONS_KIND, "configmaps", "secrets"];
    let mut feed = spawn_feeds(&store, &KINDS, &stop);
    let mut deployments: Cache<Deployment> = Cache::new();
    let mut pods: Cache<Pod> = Cache::new();
    let mut records: Cache<RevisionRecord> = Cache::new();
    let mut config_objects = ConfigCaches { config_maps: Cache::new(), secrets: Cache::new() };
    let mut listed = [false; 5];
    let mut dirty: HashSet<DeployKey> = HashSet::new();
    let mut timers: HashMap<DeployKey, Instant> = HashMap::new();
    let mut rng = SeededRng::new(seed);
    loop {
        let next_timer = timers.values().min().copied();
        tokio::select! {
            _ = wait_stop(&mut stop) => return,
            batch = recv_batch(&mut feed) => {
                let Some(batch) = batch else { return };
                for f in batch {
                    match f {
                        Feed::Listed { kind, objects } => {
                            listed[kind] = true;
                            match kind {
                                0 => { deployments.relist(objects); }
                                1 => { pods.relist(objects); }
                                2 => { records.relist(objects); }
                                3 => { config_objects.config_maps.relist(objects); }
                                _ => { config_objects.secrets.relist(objects); }
                            }
                            // After any relist, look at everything again.
                            dirty.extend(all_deployment_keys(&deployments, &pods, &records));
                        }
                        Feed::Event { kind: 0, event } => {
                            if let Some(k) = deployments.apply(event) {
                                dirty.insert((k.namespace, k.name));
                            }
                        }
                        Feed::Event { kind: 1, event } => {
                            let prev_owner = event_owner(&pods, &event);
                            if let Some(k) = pods.apply(event) {
                                if let Some(o) = prev_owner.or_else(|| pods.get(&k).and_then(|(_, p)| deployment::owner_name(p).map(str::to_string))) {
                                    dirty.insert((k.namespace, o));
                                }
                            }
                        }
                        Feed::Event { kind: kind @ (3 | 4), event } => {
                            let changed = if kind == 3 { config_objects.config_maps.apply(event) } else { config_objects.secrets.apply(event) };
                            if let Some(k) = changed {
                                dirty.extend(config_dependents(&deployments, &k));
                            }
                        }
                        Feed::Event { event, .. } => {
                            if let Some(k) = records.apply(event) {
                                if let Some((_, r)) = records.get(&k) {
                                    dirty.insert((r.namespace.clone(), r.deployment.clone()));
                                }
                            }
                        }
                    }
                }
            }
            _ = sleep_until(next_timer) => {
                let now = Instant::now();
                timers.retain(|k, at| {
                    if *at <= now {
                        dirty.insert(k.clone());
                        false
                    } else {
                        true
                    }
                });
            }
        }
        if !listed.iter().all(|l| *l) {
            continue;
        }
        for key in std::mem::take(&mut dirty) {
            timers.remove(&key);
            let result = reconcile_deployment(
                &*store,
                &*clock,
                &config,
                &mut rng,
                &key,
                &mut deployments,
                &mut pods,
                &mut records,
                &config_objects,
            )
            .await;
            match result {
                Ok(Some(after)) => {
                    timers.insert(key, Instant::now() + after);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(namespace = %key.0, deployment = %key.1, error = %e, "reconcile failed; retrying");
                    timers.insert(key, Instant::now() + Duration::from_millis(500));
                }
            }
        }
    }
}

/// The owner of the pod an event is about, as cached before the event (a delete carries no object).
fn event_owner(pods: &Cache<Pod>, event: &StoreEvent) -> Option<String> {
    let key = match event {
        StoreEvent::Put { object, .. } => &object.key,
        StoreEvent::Delete { key, .. } => key,
    };
    pods.get(key).and_then(|(_, p)| deployment::owner_name(p).map(str::to_string))
}

/// ConfigMaps and Secrets, for config-change rollouts.
struct ConfigCaches {
    config_maps: Cache<ConfigMap>,
    secrets: Cache<Secret>,
}

/// The Deployments that roll on config change and reference the ConfigMap or Secret at `key`.
fn config_dependents(deployments: &Cache<Deployment>, key: &Key) -> Vec<DeployKey> {
    deployments
        .values()
        .filter(|d| d.metadata.namespace == key.namespace && deployment::rolls_on_config_change(d))
        .filter(|d| {
            let (cms, secrets) = deployment::referenced_config(&d.spec.template);
            if key.kind == "configmaps" {
                cms.contains(&key.name)
            } else {
                secrets.contains(&key.name)
            }
        })
        .map(|d| (d.metadata.namespace.clone(), d.metadata.name.clone()))
        .collect()
}

fn all_deployment_keys(
    deployments: &Cache<Deployment>,
    pods: &Cache<Pod>,
    records: &Cache<RevisionRecord>,
) -> Vec<DeployKey> {
    let mut keys: Vec<DeployKey> = deployments.objects.keys().map(|k| (k.namespace.clone(), k.name.clone())).collect();
    keys.extend(
        pods.values().filter_map(|p| deployment::owner_name(p).map(|o| (p.metadata.namespace.clone(), o.to_string()))),
    );
    keys.extend(records.values().map(|r| (r.namespace.clone(), r.deployment.clone())));
    keys
}

/// One Deployment: reconcile and execute. Returns when to look again.
#[allow(clippy::too_many_arguments)]
async fn reconcile_deployment(
    store: &dyn Store,
    clock: &dyn Clock,
    deploy_config: &DeploymentConfig,
    rng: &mut SeededRng,
    key: &DeployKey,
    deployments: &mut Cache<Deployment>,
    pods: &mut Cache<Pod>,
    records: &mut Cache<RevisionRecord>,
    config: &ConfigCaches,
) -> Result<Option<Duration>, StoreError> {
    let (ns, name) = key;
    let dkey = Key::new("deployments", ns.clone(), name.clone());
    let Some((_, d)) = deployments.get(&dkey).cloned() else {
        // The Deployment is gone: its pods and records go too (garbage collection by owner).
        let owned: Vec<(Key, u64)> = pods
            .objects
            .iter()
            .filter(|(k, (_, p))| k.namespace == *ns && deployment::owner_name(p) == Some(name))
            .map(|(k, (r, _))| (k.clone(), *r))
            .collect();
        for (k, r) in owned {
            delete_pod(store, pods, &k, r).await?;
        }
        let recs: Vec<Key> = records
            .objects
            .iter()
            .filter(|(_, (_, r))| r.namespace == *ns && r.deployment == *name)
            .map(|(k, _)| k.clone())
            .collect();
        for k in recs {
            match store.delete(&k, None).await {
                Ok(r) => records.forget(&k, r),
                Err(StoreError::NotFound(_)) => records.forget(&k, 0),
                Err(e) => return Err(e),
            }
        }
        return Ok(None);
    };
    let owned: Vec<Pod> = pods.values().filter(|p| deployment::owns(&d, p)).cloned().collect();
    let recs: Vec<RevisionRecord> =
        records.values().filter(|r| r.namespace == *ns && r.deployment == *name).cloned().collect();
    let now = clock.now();
    let d = deployment::with_config_hash(
        &d,
        |n| config.config_maps.get(&Key::new("configmaps", ns.clone(), n)).map(|(_, c)| c),
        |n| config.secrets.get(&Key::new("secrets", ns.clone(), n)).map(|(_, s)| s),
    );
    let plan = deployment::reconcile(&d, &owned, &recs, now, deploy_config, rng);
    let mut requeue = plan.requeue_after;
    for action in plan.actions {
        match action {
            Action::CreatePod(pod) => create_pod(store, pods, rng, *pod).await?,
            Action::DeletePod { name, reason } => {
                tracing::debug!(pod = %name, ?reason, "marking pod terminating");
                let k = Key::new("pods", ns.clone(), name);
                update_with(store, pods, &k, |p: &mut Pod| {
                    if p.metadata.deletion_timestamp.is_some() {
                        return false;
                    }
                    p.metadata.deletion_timestamp = Some(Time(now));
                    true
                })
                .await?;
            }
            Action::RemovePod { name } => {
                let k = Key::new("pods", ns.clone(), name);
                if let Some((r, _)) = pods.get(&k) {
                    let r = *r;
                    delete_pod(store, pods, &k, r).await?;
                }
                // A removal can unblock the next step (Recreate waits for it); our own delete event is
                // ignored by the cache, so look again now.
                requeue = Some(Duration::ZERO);
            }
            Action::PutRevision(rec) => {
                let k = Key::new(REVISIONS_KIND, ns.clone(), rec.name());
                let bytes = encode(&*rec)?;
                let written = match records.get(&k) {
                    Some((r, _)) => store.update(&k, bytes, *r).await,
                    None => store.create(&k, bytes).await,
                };
                match written {
                    Ok(r) => records.put(k, r, *rec),
                    Err(StoreError::Conflict { .. } | StoreError::AlreadyExists(_)) => {
                        // Someone else wrote it: take theirs and decide again.
                        if let Some(v) = store.get(&k).await? {
                            if let Some(t) = Cache::<RevisionRecord>::decode(&v) {
                                records.put(k, v.revision, t);
                            }
                        }
                        return Ok(Some(Duration::ZERO));
                    }
                    Err(e) => return Err(e),
                }
            }
            Action::DeleteRevision { name } => {
                let k = Key::new(REVISIONS_KIND, ns.clone(), name);
                match store.delete(&k, None).await {
                    Ok(r) => records.forget(&k, r),
                    Err(StoreError::NotFound(_)) => records.forget(&k, 0),
                    Err(e) => return Err(e),
                }
            }
            Action::SetRevisionAnnotation(rev) => {
                update_with(store, deployments, &dkey, |d: &mut Deployment| {
                    let v = rev.to_string();
                    let a = &mut d.metadata.annotations;
                    if a.get(model::well_known::REVISION_ANNOTATION) == Some(&v) {
                        return false;
                    }
                    a.insert(model::well_known::REVISION_ANNOTATION.into(), v);
                    true
                })
                .await?;
            }
            Action::UpdateStatus(status) => {
                update_with(store, deployments, &dkey, |d: &mut Deployment| {
                    // Only the status computed for this generation; a newer spec gets its own reconcile.
                    if d.metadata.generation != status.observed_generation || d.status.as_ref() == Some(&status) {
                        return false;
                    }
                    d.status = Some(status.clone());
                    true
                })
                .await?;
            }
        }
    }
    Ok(requeue)
}

async fn create_pod(
    store: &dyn Store,
    pods: &mut Cache<Pod>,
    rng: &mut SeededRng,
    mut pod: Pod,
) -> Result<(), StoreError> {
    pod.metadata.uid = Some(uuid::Uuid::new_v4().to_string());
    for _ in 0..4 {
        let k = Key::new("pods", pod.metadata.namespace.clone(), pod.metadata.name.clone());
        match store.create(&k, encode(&pod)?).await {
            Ok(r) => {
                pods.put(k, r, pod);
                return Ok(());
            }
            Err(StoreError::AlreadyExists(_)) => {
                // Name suffix collision: draw another.
                let base = pod.metadata.name.rsplit_once('-').map(|(b, _)| b.to_string()).unwrap_or_default();
                let n = rng.next_u64();
                pod.metadata.name = format!("{base}-{:05x}", n & 0xf_ffff);
            }
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Backend("could not find a free pod name".into()))
}

async fn delete_pod(store: &dyn Store, pods: &mut Cache<Pod>, key: &Key, revision: u64) -> Result<(), StoreError> {
    match store.delete(key, Some(revision)).await {
        Ok(r) => {
            pods.forget(key, r);
            Ok(())
        }
        Err(StoreError::NotFound(_)) => {
            pods.forget(key, 0);
            Ok(())
        }
        Err(StoreError::Conflict { .. }) => {
            // Changed meanwhile (e.g. a status write): the decision to delete still stands.
            match store.delete(key, None).await {
                Ok(r) => pods.forget(key, r),
                Err(StoreError::NotFound(_)) => pods.forget(key, 0),
                Err(e) => return Err(e),
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

// ---------------------------------------------------------------------------------------------------------
// Node lifecycle

async fn run_nodes(store: Arc<dyn Store>, clock: Arc<dyn Clock>, grace: Duration, mut stop: watch::Receiver<bool>) {
    let mut feed = spawn_feeds(&store, &["nodes", "pods"], &stop);
    let mut nodes: Cache<Node> = Cache::new();
    let mut pods: Cache<Pod> = Cache::new();
    let mut listed = [false; 2];
    let mut recheck: Option<Instant> = None;
    // Agents could not report while this control plane was down: give each a grace period from now.
    let watching_since = clock.now();
    loop {
        let mut full = false;
        let mut changed_pods: Vec<Key> = Vec::new();
        tokio::select! {
            _ = wait_stop(&mut stop) => return,
            batch = recv_batch(&mut feed) => {
                let Some(batch) = batch else { return };
                for f in batch {
                    match f {
                        Feed::Listed { kind: 0, objects } => { listed[0] = true; nodes.relist(objects); full = true; }
                        Feed::Listed { objects, .. } => { listed[1] = true; pods.relist(objects); full = true; }
                        Feed::Event { kind: 0, event } => { if nodes.apply(event).is_some() { full = true; } }
                        Feed::Event { event, .. } => { if let Some(k) = pods.apply(event) { changed_pods.push(k); } }
                    }
                }
            }
            _ = sleep_until(recheck) => { full = true; }
        }
        if !listed.iter().all(|l| *l) || (!full && changed_pods.is_empty()) {
            continue;
        }
        let node_list: Vec<Node> = nodes.values().cloned().collect();
        let pod_list: Vec<Pod> = if full {
            pods.values().cloned().collect()
        } else {
            changed_pods.iter().filter_map(|k| pods.get(k).map(|(_, p)| p.clone())).collect()
        };
        let now = clock.now();
        let plan = node::reconcile_nodes_observed(&node_list, &pod_list, now, grace, watching_since);
        if full {
            recheck = plan.recheck_after.map(|d| Instant::now() + d);
        }
        for action in plan.actions {
            let result = match action {
                NodeAction::MarkNotReady { node, silent_for } => {
                    tracing::warn!(%node, silent_ms = silent_for.as_millis() as u64, "node heartbeat lost; marking NotReady");
                    let k = Key::new("nodes", "", node);
                    update_with(&*store, &mut nodes, &k, |n: &mut Node| mark_not_ready(n, now, silent_for)).await
                }
                NodeAction::EvictPod { namespace, name, node } => {
                    tracing::info!(%namespace, pod = %name, %node, "evicting pod from lost node");
                    let k = Key::new("pods", namespace, name);
                    match pods.get(&k) {
                        Some((r, _)) => {
                            let r = *r;
                            delete_pod(&*store, &mut pods, &k, r).await
                        }
                        None => Ok(()),
                    }
                }
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "node lifecycle action failed; retrying soon");
                recheck = Some(Instant::now() + Duration::from_millis(500));
            }
        }
    }
}

fn mark_not_ready(n: &mut Node, now: std::time::SystemTime, silent_for: Duration) -> bool {
    let status = n.status.get_or_insert_with(Default::default);
    let message = format!("no heartbeat for {} s; the node agent stopped reporting", silent_for.as_secs());
    match status.conditions.iter_mut().find(|c| c.type_ == "Ready") {
        Some(c) if c.status != ConditionStatus::True && c.reason.as_deref() == Some(NODE_STATUS_UNKNOWN) => false,
        Some(c) => {
            c.status = ConditionStatus::Unknown;
            c.reason = Some(NODE_STATUS_UNKNOWN.into());
            c.message = Some(message);
            c.last_transition_time = Some(Time(now));
            true
        }
        None => {
            status.conditions.push(Condition {
                type_: "Ready".into(),
                status: ConditionStatus::Unknown,
                reason: Some(NODE_STATUS_UNKNOWN.into()),
                message: Some(message),
                last_transition_time: Some(Time(now)),
                ..Condition::default()
            });
            true
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Autoscalers

/// What the autoscaler loop keeps per Autoscaler.
#[derive(Default)]
struct Scaling {
    window: scaling::MetricWindow,
    state: scaling::ScalerState,
    next_periodic: Option<std::time::SystemTime>,
}

/// Samples the load source every `sample_period`, evaluates every `period` (and on every sample as a fast
/// path that may only scale up), writes the target's replicas and the Autoscaler's status.
async fn run_autoscalers(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    load: Option<Arc<dyn LoadSource>>,
    config: AutoscalerConfig,
    mut stop: watch::Receiver<bool>,
) {
    let mut feed = spawn_feeds(&store, &["autoscalers", "deployments", "services"], &stop);
    let mut autoscalers: Cache<Autoscaler> = Cache::new();
    let mut deployments: Cache<Deployment> = Cache::new();
    let mut services: Cache<Service> = Cache::new();
    let mut listed = [false; 3];
    let mut scalers: HashMap<Key, Scaling> = HashMap::new();
    let mut ticker = tokio::time::interval(config.sample_period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = wait_stop(&mut stop) => return,
            batch = recv_batch(&mut feed) => {
                let Some(batch) = batch else { return };
                for f in batch {
                    match f {
                        Feed::Listed { kind: 0, objects } => { listed[0] = true; autoscalers.relist(objects); }
                        Feed::Listed { kind: 1, objects } => { listed[1] = true; deployments.relist(objects); }
                        Feed::Listed { objects, .. } => { listed[2] = true; services.relist(objects); }
                        Feed::Event { kind: 0, event } => { autoscalers.apply(event); }
                        Feed::Event { kind: 1, event } => { deployments.apply(event); }
                        Feed::Event { event, .. } => { services.apply(event); }
                    }
                }
                continue;
            }
            _ = ticker.tick() => {}
        }
        if !listed.iter().all(|l| *l) {
            continue;
        }
        scalers.retain(|k, _| autoscalers.get(k).is_some());
        let keys: Vec<Key> = autoscalers.objects.keys().cloned().collect();
        for key in keys {
            let s = scalers.entry(key.clone()).or_default();
            let mut caches =
                ScaleCaches { autoscalers: &mut autoscalers, deployments: &mut deployments, services: &services };
            if let Err(e) = autoscale_one(&*store, &*clock, load.as_deref(), &config, &key, s, &mut caches).await {
                tracing::warn!(autoscaler = %key, error = %e, "autoscaler write failed; retrying next period");
            }
        }
    }
}

struct ScaleCaches<'a> {
    autoscalers: &'a mut Cache<Autoscaler>,
    deployments: &'a mut Cache<Deployment>,
    services: &'a Cache<Service>,
}

/// The Services in the Deployment's namespace whose selector matches its pod template.
fn services_of<'a>(services: &'a Cache<Service>, d: &Deployment) -> Vec<&'a Service> {
    let labels = &d.spec.template.metadata.labels;
    services
        .values()
        .filter(|svc| {
            svc.metadata.namespace == d.metadata.namespace
                && !svc.spec.selector.is_empty()
                && svc.spec.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        })
        .collect()
}

async fn autoscale_one(
    store: &dyn Store,
    clock: &dyn Clock,
    load: Option<&dyn LoadSource>,
    config: &AutoscalerConfig,
    key: &Key,
    s: &mut Scaling,
    c: &mut ScaleCaches<'_>,
) -> Result<(), StoreError> {
    let Some((_, a)) = c.autoscalers.get(key).cloned() else { return Ok(()) };
    let now = clock.now();
    let periodic = s.next_periodic.is_none_or(|t| now >= t);
    let dkey = Key::new("deployments", key.namespace.clone(), a.spec.scale_target_ref.name.clone());
    let Some((_, d)) = c.deployments.get(&dkey).cloned() else {
        if periodic {
            s.next_periodic = Some(now + config.period);
            let prev = a.status.clone().unwrap_or_default();
            let message = format!("Deployment {} not found", a.spec.scale_target_ref.name);
            let mut st = prev.clone();
            st.observed_generation = a.metadata.generation;
            st.conditions =
                vec![scaling::condition(&prev.conditions, "AbleToScale", false, "FailedGetScale", message, now)];
            write_autoscaler_status(store, c.autoscalers, key, st).await?;
        }
        return Ok(());
    };
    let svcs = services_of(c.services, &d);
    let unavailable = match load {
        None => Some(Missing::NoLoadSource),
        Some(_) if svcs.is_empty() => Some(Missing::NoService),
        Some(load) => {
            let samples: Vec<LoadSample> =
                svcs.iter().filter_map(|svc| load.sample(&svc.metadata.namespace, &svc.metadata.name)).collect();
            if let Some(sample) = LoadSample::combine(&samples) {
                s.window.push(sample, config.rate_window.max(config.period) * 3);
            }
            None
        }
    };
    let current = d.spec.replicas;
    let ready = d.status.as_ref().map_or(0, |st| st.ready_replicas);
    let eval = if periodic {
        s.next_periodic = Some(now + config.period);
        Evaluation::Periodic
    } else {
        Evaluation::FastPath
    };
    let obs = scaling::Observed { window: &s.window, current, ready, unavailable };
    let decision = scaling::decide(&a.spec, &obs, &mut s.state, now, config, eval);
    let scaled = decision.desired != current;
    if scaled {
        tracing::info!(autoscaler = %key, from = current, to = decision.desired, reason = %decision, "scaling");
        let desired = decision.desired;
        update_with(store, c.deployments, &dkey, |d: &mut Deployment| {
            if d.spec.replicas == desired {
                return false;
            }
            d.spec.replicas = desired;
            // A spec change, as the API would record it.
            d.metadata.generation = Some(d.metadata.generation.unwrap_or(1) + 1);
            true
        })
        .await?;
    }
    if !(periodic || scaled) {
        return Ok(());
    }
    let prev = a.status.clone().unwrap_or_default();
    let mut st = AutoscalerStatus {
        observed_generation: a.metadata.generation,
        current_replicas: current,
        desired_replicas: decision.desired,
        current_metrics: decision.readings.iter().map(metric_status).collect(),
        conditions: scaling::conditions(&decision, &prev.conditions, now),
        last_scale_time: prev.last_scale_time,
        recent_decisions: prev.recent_decisions.clone(),
    };
    if scaled {
        st.current_replicas = decision.desired;
        st.last_scale_time = Some(Time(now));
        st.recent_decisions.push(ScaleRecord {
            time: Time(now),
            from_replicas: current,
            to_replicas: decision.desired,
            reason: decision.to_string(),
        });
        let excess = st.recent_decisions.len().saturating_sub(RECENT_DECISIONS);
        st.recent_decisions.drain(..excess);
    }
    write_autoscaler_status(store, c.autoscalers, key, st).await
}

/// The status line of one metric: per replica for rates and concurrency, milliseconds for latency.
fn metric_status(r: &scaling::Reading) -> MetricStatus {
    let current = match r.name {
        MetricName::LatencyP99 => r.value,
        _ => r.per_replica,
    };
    let shown = current.map_or_else(|| "<unknown>".to_string(), |v| format!("{v:.0}"));
    let display = match r.name {
        MetricName::RequestsPerSecond => format!("rps {shown}/{}", r.target),
        MetricName::Concurrency => format!("concurrency {shown}/{}", r.target),
        MetricName::LatencyP99 => format!("p99 {shown}ms/{}ms", r.target),
        MetricName::Cpu => format!("cpu {shown}/{}%", r.target),
    };
    // Rounded, so a status write happens when a figure moves, not on every sampling jitter.
    MetricStatus {
        name: r.name,
        current: current.map(|v| (v * 10.0).round() / 10.0),
        target: r.target,
        stale: r.missing.is_some(),
        display: Some(display),
    }
}

async fn write_autoscaler_status(
    store: &dyn Store,
    autoscalers: &mut Cache<Autoscaler>,
    key: &Key,
    status: AutoscalerStatus,
) -> Result<(), StoreError> {
    update_with(store, autoscalers, key, |a: &mut Autoscaler| {
        if a.status.as_ref() == Some(&status) {
            return false;
        }
        a.status = Some(status.clone());
        true
    })
    .await
}

// ---------------------------------------------------------------------------------------------------------
// Endpoints

const EP_SERVICES: usize = 0;
const EP_ROUTES: usize = 1;
const EP_SECRETS: usize = 2;
const EP_PODS: usize = 3;
// Index 4 is nodes.

struct EndpointState {
    services: Cache<Service>,
    routes: Cache<Route>,
    secrets: Cache<Secret>,
    pods: Cache<Pod>,
    nodes: Cache<Node>,
    /// What each stored object published last time.
    published: HashMap<Key, Vec<ObjectKey>>,
}

async fn run_endpoints(
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    resync: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut feed = spawn_feeds(&store, &["services", "routes", "secrets", "pods", "nodes"], &stop);
    let mut s = EndpointState {
        services: Cache::new(),
        routes: Cache::new(),
        secrets: Cache::new(),
        pods: Cache::new(),
        nodes: Cache::new(),
        published: HashMap::new(),
    };
    let mut listed = [false; 5];
    let mut next_resync = Instant::now() + resync;
    let mut dirty: HashSet<Key> = HashSet::new();
    let mut full = false;
    loop {
        tokio::select! {
            _ = wait_stop(&mut stop) => return,
            batch = recv_batch(&mut feed) => {
                let Some(batch) = batch else { return };
                for f in batch {
                    match f {
                        Feed::Listed { kind, objects } => {
                            listed[kind] = true;
                            full = true;
                            match kind {
                                EP_SERVICES => { s.services.relist(objects); }
                                EP_ROUTES => { s.routes.relist(objects); }
                                EP_SECRETS => { s.secrets.relist(objects); }
                                EP_PODS => { s.pods.relist(objects); }
                                _ => { s.nodes.relist(objects); }
                            }
                        }
                        Feed::Event { kind, event } => {
                            let key = match kind {
                                EP_SERVICES => s.services.apply(event),
                                EP_ROUTES => s.routes.apply(event),
                                EP_SECRETS => s.secrets.apply(event),
                                EP_PODS => s.pods.apply(event),
                                _ => s.nodes.apply(event),
                            };
                            dirty.extend(key);
                        }
                    }
                }
            }
            _ = tokio::time::sleep_until(next_resync) => {
                full = true;
                next_resync = Instant::now() + resync;
            }
        }
        if !listed.iter().all(|l| *l) {
            continue;
        }
        if full {
            full_resync(&s, &registry);
            // Every kind is listed, so the registry now reflects the whole store: remote mirrors may trust it.
            registry.mark_synced();
            s.published = published_by_source(&s);
            dirty.clear();
            full = false;
            continue;
        }
        if !dirty.is_empty() {
            let changes = incremental(&mut s, &registry, std::mem::take(&mut dirty));
            if !changes.is_empty() {
                registry.apply(changes);
            }
        }
    }
}

fn full_resync(s: &EndpointState, registry: &Registry) {
    let services: Vec<Service> = s.services.values().cloned().collect();
    let routes: Vec<Route> = s.routes.values().cloned().collect();
    let secrets: Vec<Secret> = s.secrets.values().cloned().collect();
    let pods: Vec<Pod> = s.pods.values().cloned().collect();
    let nodes: Vec<Node> = s.nodes.values().cloned().collect();
    let desired = endpoints::desired_objects(&services, &routes, &secrets, &pods, &nodes);
    let changes = endpoints::diff(&registry.snapshot(), &desired);
    if !changes.is_empty() {
        tracing::debug!(changes = changes.len(), "registry resync");
        registry.apply(changes);
    }
}

fn published_by_source(s: &EndpointState) -> HashMap<Key, Vec<ObjectKey>> {
    let mut out = HashMap::new();
    for (k, _) in s.services.objects.iter() {
        out.insert(k.clone(), objects_for(s, k).iter().map(Object::key).collect());
    }
    for k in s.routes.objects.keys().chain(s.secrets.objects.keys()).chain(s.pods.objects.keys()) {
        out.insert(k.clone(), objects_for(s, k).iter().map(Object::key).collect());
    }
    out
}

/// What one stored object should publish now.
fn objects_for(s: &EndpointState, key: &Key) -> Vec<Object> {
    match key.kind.as_str() {
        "services" => s.services.get(key).map(|(_, svc)| endpoints::service_objects(svc)).unwrap_or_default(),
        "routes" => s.routes.get(key).map(|(_, r)| endpoints::route_objects(r)).unwrap_or_default(),
        "secrets" => s.secrets.get(key).map(|(_, sec)| endpoints::secret_objects(sec)).unwrap_or_default(),
        "pods" => {
            let Some((_, pod)) = s.pods.get(key) else {
                return Vec::new();
            };
            if !s.services.values().any(|svc| endpoints::selects(svc, pod)) {
                return Vec::new();
            }
            let node = pod
                .spec
                .node_name
                .as_ref()
                .and_then(|n| s.nodes.get(&Key::new("nodes", "", n.clone())))
                .map(|(_, n)| n);
            endpoints::pod_endpoint(pod, node).map(|e| vec![Object::Endpoint(Arc::new(e))]).unwrap_or_default()
        }
        _ => Vec::new(),
    }
}

/// Changes for the stored objects in `dirty` and everything derived from them.
fn incremental(s: &mut EndpointState, registry: &Registry, dirty: HashSet<Key>) -> Vec<Change> {
    let mut sources: HashSet<Key> = HashSet::new();
    for k in dirty {
        match k.kind.as_str() {
            // A Service's selector decides which pods of its namespace are published.
            "services" => sources.extend(s.pods.objects.keys().filter(|p| p.namespace == k.namespace).cloned()),
            "nodes" => sources.extend(
                s.pods
                    .objects
                    .iter()
                    .filter(|(_, (_, p))| p.spec.node_name.as_deref() == Some(k.name.as_str()))
                    .map(|(pk, _)| pk.clone()),
            ),
            _ => {}
        }
        if k.kind != "nodes" {
            sources.insert(k);
        }
    }
    let snapshot = registry.snapshot();
    let mut changes = Vec::new();
    for source in sources {
        let objects = objects_for(s, &source);
        let keys: Vec<ObjectKey> = objects.iter().map(Object::key).collect();
        if let Some(old) = s.published.get(&source) {
            for k in old {
                if !keys.contains(k) {
                    changes.push(Change::Delete(k.clone()));
                }
            }
        }
        for o in objects {
            if snapshot.get(&o.key()).as_ref() != Some(&o) {
                changes.push(Change::Put(o));
            }
        }
        if keys.is_empty() {
            s.published.remove(&source);
        } else {
            s.published.insert(source, keys);
        }
    }
    changes
}
