//! The Deployment controller: one key per Deployment (its store key). A pod maps to its owner, a revision
//! record to its Deployment, a ConfigMap or Secret to the Deployments that roll on its change. The decision
//! is [`deployment::reconcile`]; this module executes its [`Action`]s.

use crate::controllers::deployment::{self, Action, DeploymentConfig, RevisionRecord};
use crate::controllers::driver::{Cache, Cached, Caches, Changed, Context, Reconciler, Requeue, Resync, Watch};
use crate::scheduler::SeededRng;
use crate::store::{Key, StoreError};
use model::well_known::REVISION_ANNOTATION;
use model::{ConfigMap, Deployment, Pod, Secret, Time};
use std::time::{Duration, SystemTime};

pub struct Deployments {
    config: DeploymentConfig,
    /// Draws pod-name suffixes.
    rng: SeededRng,
}

impl Deployments {
    pub fn new(config: DeploymentConfig, seed: u64) -> Self {
        Deployments { config, rng: SeededRng::new(seed) }
    }
}

const WATCHES: &[Watch] = &[
    Watch::of::<Deployment>(),
    Watch::of::<Pod>(),
    Watch::of::<RevisionRecord>(),
    // ConfigMaps and Secrets only matter to Deployments with `berth.dev/rollout-on-config-change`.
    Watch::of::<ConfigMap>(),
    Watch::of::<Secret>(),
];

impl Reconciler for Deployments {
    type Key = Key;
    const NAME: &'static str = "deployment-controller";

    fn watches(&self) -> &[Watch] {
        WATCHES
    }

    fn affected(&self, change: &Changed<'_>, caches: &Caches) -> Vec<Key> {
        if change.is::<Deployment>() {
            return vec![change.key.clone()];
        }
        if change.is::<ConfigMap>() || change.is::<Secret>() {
            return config_dependents(caches.of::<Deployment>(), change);
        }
        let owners = change
            .objects::<Pod>()
            .filter_map(|p| deployment::owner_name(p).map(|o| Deployment::store_key(change.key.namespace.clone(), o)));
        let recorded = change.objects::<RevisionRecord>().map(|r| Deployment::store_key(&r.namespace, &r.deployment));
        owners.chain(recorded).collect()
    }

    /// After a relist, every Deployment, and every owner named by a pod or a record (it may be gone).
    fn resync(&mut self, _: Resync, caches: &Caches) -> Vec<Key> {
        let deployments = caches.of::<Deployment>().keys().cloned();
        let owners = caches
            .of::<Pod>()
            .iter()
            .filter_map(|(k, p)| deployment::owner_name(p).map(|o| Deployment::store_key(k.namespace.clone(), o)));
        let recorded =
            caches.of::<RevisionRecord>().values().map(|r| Deployment::store_key(&r.namespace, &r.deployment));
        deployments.chain(owners).chain(recorded).collect()
    }

    async fn reconcile(&mut self, key: &Key, ctx: &mut Context<'_>) -> Result<Requeue, StoreError> {
        let Some(d) = ctx.cache::<Deployment>().get(key) else {
            collect_garbage(key, ctx).await?;
            return Ok(Requeue::OnChange);
        };
        let now = ctx.now();
        let (d, pods, records) = observe(d, key, ctx.caches());
        let plan = deployment::reconcile(&d, &pods, &records, now, &self.config, &mut self.rng);
        let mut requeue = plan.requeue_after;
        for action in plan.actions {
            match self.execute(action, key, now, ctx).await? {
                Then::Continue => {}
                Then::LookAgain => requeue = Some(Duration::ZERO),
                Then::DecideAgain => return Ok(Requeue::After(Duration::ZERO)),
            }
        }
        Ok(requeue.map_or(Requeue::OnChange, Requeue::After))
    }
}

/// What executing one action means for the rest of the plan.
enum Then {
    Continue,
    /// Go on, and reconcile the Deployment again right after this pass.
    LookAgain,
    /// The plan was made on a stale view: drop the rest and decide again right after this pass.
    DecideAgain,
}

impl Deployments {
    async fn execute(
        &mut self,
        action: Action,
        dkey: &Key,
        now: SystemTime,
        ctx: &mut Context<'_>,
    ) -> Result<Then, StoreError> {
        let ns = &dkey.namespace;
        match action {
            Action::CreatePod(pod) => self.create_pod(*pod, ctx).await?,
            Action::DeletePod { name, reason } => {
                tracing::debug!(pod = %name, ?reason, "marking pod terminating");
                ctx.update(&Pod::store_key(ns.clone(), name), |p: &mut Pod| {
                    if p.metadata.deletion_timestamp.is_some() {
                        return false;
                    }
                    p.metadata.deletion_timestamp = Some(Time(now));
                    true
                })
                .await?;
            }
            Action::RemovePod { name } => {
                let k = Pod::store_key(ns.clone(), name);
                if ctx.cache::<Pod>().contains(&k) {
                    ctx.delete(&k).await?;
                }
                // A removal can unblock the next step (Recreate waits for it); our own delete event is ignored
                // by the cache, so look again now.
                return Ok(Then::LookAgain);
            }
            Action::PutRevision(record) => {
                let k = RevisionRecord::store_key(ns.clone(), record.name());
                if !ctx.replace(&k, *record).await? {
                    // Someone else wrote it: their version is cached now.
                    return Ok(Then::DecideAgain);
                }
            }
            Action::DeleteRevision { name } => ctx.delete(&RevisionRecord::store_key(ns.clone(), name)).await?,
            Action::SetRevisionAnnotation(revision) => {
                let v = revision.to_string();
                ctx.update(dkey, |d: &mut Deployment| {
                    if d.metadata.annotations.get(REVISION_ANNOTATION) == Some(&v) {
                        return false;
                    }
                    d.metadata.annotations.insert(REVISION_ANNOTATION.into(), v.clone());
                    true
                })
                .await?;
            }
            Action::UpdateStatus(status) => {
                ctx.update(dkey, |d: &mut Deployment| {
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
        Ok(Then::Continue)
    }

    async fn create_pod(&mut self, mut pod: Pod, ctx: &mut Context<'_>) -> Result<(), StoreError> {
        pod.metadata.uid = Some(uuid::Uuid::new_v4().to_string());
        for _ in 0..4 {
            let k = Pod::store_key(pod.metadata.namespace.clone(), pod.metadata.name.clone());
            match ctx.create(&k, &pod).await {
                Ok(()) => return Ok(()),
                Err(StoreError::AlreadyExists(_)) => {
                    // Name suffix collision: draw another.
                    let base = pod.metadata.name.rsplit_once('-').map(|(b, _)| b.to_string()).unwrap_or_default();
                    let n = self.rng.next_u64();
                    pod.metadata.name = format!("{base}-{:05x}", n & 0xf_ffff);
                }
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Backend("could not find a free pod name".into()))
    }
}

/// What the decision needs: the Deployment as reconciled (with its config hash), its pods and its records.
fn observe(d: &Deployment, key: &Key, caches: &Caches) -> (Deployment, Vec<Pod>, Vec<RevisionRecord>) {
    let pods = caches.of::<Pod>().values().filter(|p| deployment::owns(d, p)).cloned().collect();
    let records = records_of(caches.of::<RevisionRecord>(), key).map(|(_, r)| r.clone()).collect();
    let ns = key.namespace.as_str();
    let d = deployment::with_config_hash(
        d,
        |n| caches.of::<ConfigMap>().get(&ConfigMap::store_key(ns, n)),
        |n| caches.of::<Secret>().get(&Secret::store_key(ns, n)),
    );
    (d, pods, records)
}

fn records_of<'a>(
    records: &'a Cache<RevisionRecord>,
    dkey: &'a Key,
) -> impl Iterator<Item = (&'a Key, &'a RevisionRecord)> {
    records.iter().filter(|(_, r)| r.namespace == dkey.namespace && r.deployment == dkey.name)
}

/// The Deployment is gone: its pods and records go too (garbage collection by owner).
async fn collect_garbage(dkey: &Key, ctx: &mut Context<'_>) -> Result<(), StoreError> {
    let owned = ctx
        .cache::<Pod>()
        .iter()
        .filter(|(k, p)| k.namespace == dkey.namespace && deployment::owner_name(p) == Some(dkey.name.as_str()));
    let mut doomed: Vec<Key> = owned.map(|(k, _)| k.clone()).collect();
    doomed.extend(records_of(ctx.cache::<RevisionRecord>(), dkey).map(|(k, _)| k.clone()));
    for k in doomed {
        ctx.delete(&k).await?;
    }
    Ok(())
}

/// The Deployments that roll on config change and reference the changed ConfigMap or Secret.
fn config_dependents(deployments: &Cache<Deployment>, change: &Changed<'_>) -> Vec<Key> {
    let name = &change.key.name;
    let references = |d: &Deployment| {
        let (config_maps, secrets) = deployment::referenced_config(&d.spec.template);
        if change.is::<ConfigMap>() {
            config_maps.contains(name)
        } else {
            secrets.contains(name)
        }
    };
    deployments
        .iter()
        .filter(|(k, d)| k.namespace == change.key.namespace && deployment::rolls_on_config_change(d) && references(d))
        .map(|(k, _)| k.clone())
        .collect()
}
