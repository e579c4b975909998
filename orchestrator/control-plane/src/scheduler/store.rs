//! [`StoreCluster`]: the scheduler's [`Observe`] and [`Binder`] over a [`Store`], so any number of scheduler
//! instances can share one store without ever overcommitting a node.
//!
//! # The bind protocol
//!
//! The store offers compare-and-swap on one key only, so a bind cannot atomically check "the node still has
//! room" and "the pod is unchanged". Binds to one node are instead serialised through a per-node
//! *allocation record* (key `nodeallocations//NODE`, [`ALLOCATIONS_KIND`]) that lists every claim of capacity
//! on that node: pod, uid, requests, keyed by the id of the bind attempt that made it. Binding pod `P` at
//! revision `r` to node `N` (attempt id `t`, fresh per bind):
//!
//! 1. read `P` (it must still be at `r` and unbound) and `N` (its allocatable);
//! 2. read `N`'s allocation record at revision `a`; usage = its claims, plus pods the last observation saw
//!    bound to `N` without a claim (pinned by the user); if `P` does not fit, collect dead claims (see below)
//!    and check again, else [`BindError::NodeFull`];
//! 3. add claim `t` and compare-and-swap the record at `a` (on conflict, go back to 2);
//! 4. compare-and-swap `P` at `r`, setting `spec.nodeName` and `PodScheduled=True`; if that fails, remove
//!    claim `t` (only `t`) and report the pod as changed or gone.
//!
//! Two concurrent binds to one node both pass step 2 only on the same record revision, and only one of them
//! wins step 3; the other re-reads and sees the winner's claim. A claim is in the record *before* its pod is
//! bound, so usage computed from the record is never below what is bound: nodes are never overcommitted,
//! whatever the number of schedulers and however stale their snapshots. Claims are per attempt because two
//! schedulers may bind the same pod to the same node at once: each holds its own claim (counted twice, which
//! is only conservative) and the loser of step 4 releases its own, never the winner's.
//!
//! A claim is *dead*, and collected when a node looks full, when its pod is gone (or was recreated with
//! another uid), is bound to another node, or has finished (`Succeeded`/`Failed`). A claim whose pod is still
//! unbound is an in-flight bind, or one whose scheduler died between steps 3 and 4; after [`CLAIM_TTL`] it is
//! collected, but only after rewriting the pod unchanged, which bumps its revision so that a late step 4 of
//! the stalled scheduler fails its compare-and-swap. No timing assumption is needed for correctness. A
//! scheduler that dies between a lost step 4 and its release leaves a duplicate claim of a bound pod, which
//! holds capacity (conservatively) until that pod leaves the node.
//!
//! Records of deleted nodes are not removed (they are small and harmless).
//!
//! Not done here: deciding placements (see [`super::schedule_batch`]) and driving rounds (see
//! [`super::service`]).

use super::adapter::{node_info, pod_info};
use super::bind::{BindError, Binder, Observe, ObserveError, Observed, PendingPod};
use super::{fits, BoundPod, ClusterSnapshot, PodKey, Requests, SchedulingPolicy, Unschedulable, Usage};
use crate::store::{Key, Prefix, Store, StoreError, Versioned};
use model::{self, Condition, ConditionStatus, PodPhase};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The store kind of the per-node allocation records. The API does not serve it.
pub const ALLOCATIONS_KIND: &str = "nodeallocations";

/// How long a claim of a still-unbound pod is considered an in-flight bind.
pub const CLAIM_TTL: Duration = Duration::from_secs(30);

/// The condition type the scheduler writes on pods.
pub const POD_SCHEDULED: &str = "PodScheduled";
/// The `PodScheduled=False` reason for a pod that fits nowhere.
pub const REASON_UNSCHEDULABLE: &str = "Unschedulable";

/// Step-3 attempts before a bind gives up as a conflict (each attempt means another bind to the node won).
const RECORD_ATTEMPTS: u32 = 64;

/// The per-node allocation record (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Allocation {
    /// Claims by the id of the bind attempt that made them. Two schedulers binding the same pod each hold
    /// their own claim (counted twice, which is conservative) and each releases only its own, so the loser
    /// cannot release the winner's capacity.
    #[serde(default)]
    pub claims: BTreeMap<String, Claim>,
}

/// Capacity claimed for one pod on one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Claim {
    /// `namespace/name`.
    pub pod: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    /// Milliseconds since the Unix epoch.
    pub claimed_at_ms: u64,
}

impl Allocation {
    /// The pods (`namespace/name`) with at least one claim.
    pub fn pods(&self) -> std::collections::BTreeSet<&str> {
        self.claims.values().map(|c| c.pod.as_str()).collect()
    }

    fn usage(&self) -> Usage {
        let mut u = Usage::default();
        for c in self.claims.values() {
            u.cpu_millis = u.cpu_millis.saturating_add(c.cpu_millis);
            u.memory_bytes = u.memory_bytes.saturating_add(c.memory_bytes);
            u.pods = u.pods.saturating_add(1);
        }
        u
    }
}

/// The store key of a pod.
pub fn pod_key(pod: &PodKey) -> Key {
    Key::new(model::Kind::Pod.plural(), &pod.namespace, &pod.name)
}

/// The store key of a node.
pub fn node_key(node: &str) -> Key {
    Key::new(model::Kind::Node.plural(), "", node)
}

/// The store key of a node's allocation record.
pub fn allocation_key(node: &str) -> Key {
    Key::new(ALLOCATIONS_KIND, "", node)
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)).unwrap_or(0)
}

fn decode<T: serde::de::DeserializeOwned>(v: &Versioned) -> Result<T, StoreError> {
    serde_json::from_slice(&v.value)
        .map_err(|e| StoreError::Backend(format!("{}: stored value is not valid: {e}", v.key)))
}

fn encode<T: Serialize>(key: &Key, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Backend(format!("{key}: encoding: {e}")))
}

fn is_terminal(pod: &model::Pod) -> bool {
    matches!(pod.status.as_ref().map(|s| s.phase), Some(PodPhase::Succeeded | PodPhase::Failed))
}

/// Sets (or replaces) the condition of `cond.type_`, keeping `lastTransitionTime` when the status is unchanged.
fn set_condition(conditions: &mut Vec<Condition>, mut cond: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == cond.type_) {
        Some(old) => {
            if old.status == cond.status {
                cond.last_transition_time = old.last_transition_time.or(cond.last_transition_time);
            }
            *old = cond;
        }
        None => conditions.push(cond),
    }
}

/// A pod with its uid and requests, as the bind re-check counts it.
#[derive(Debug, Clone)]
struct Counted {
    key: String,
    requests: Requests,
}

/// See the module docs. Cheap to share behind an `Arc`.
pub struct StoreCluster {
    store: Arc<dyn Store>,
    policy: SchedulingPolicy,
    /// Pods the last observation saw bound, by node (they count at bind time when they have no claim).
    observed_bound: Mutex<HashMap<String, Vec<Counted>>>,
}

impl StoreCluster {
    pub fn new(store: Arc<dyn Store>, policy: SchedulingPolicy) -> Self {
        Self { store, policy, observed_bound: Mutex::new(HashMap::new()) }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Records that `pod` fits nowhere: `PodScheduled=False`, reason `Unschedulable`, message the verdict.
    /// Writes only when the condition changes; returns whether it wrote. A pod that is bound, gone or
    /// concurrently changed is left alone (the next round sees it again).
    pub async fn mark_unschedulable(&self, pod: &PodKey, why: &Unschedulable) -> Result<bool, StoreError> {
        let key = pod_key(pod);
        let Some(v) = self.store.get(&key).await? else {
            return Ok(false);
        };
        let mut obj: model::Pod = decode(&v)?;
        if obj.spec.node_name.is_some() {
            return Ok(false);
        }
        let message = why.to_string();
        let status = obj.status.get_or_insert_with(Default::default);
        let current = model::find_condition(&status.conditions, POD_SCHEDULED);
        if current.is_some_and(|c| {
            c.status == ConditionStatus::False
                && c.reason.as_deref() == Some(REASON_UNSCHEDULABLE)
                && c.message.as_deref() == Some(message.as_str())
        }) {
            return Ok(false);
        }
        let now = model::Time::now();
        set_condition(
            &mut status.conditions,
            Condition {
                type_: POD_SCHEDULED.into(),
                status: ConditionStatus::False,
                reason: Some(REASON_UNSCHEDULABLE.into()),
                message: Some(message),
                last_transition_time: Some(now),
                last_probe_time: Some(now),
                ..Condition::default()
            },
        );
        obj.metadata.resource_version = None;
        match self.store.update(&key, encode(&key, &obj)?, v.revision).await {
            Ok(_) => Ok(true),
            Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether a claim no longer holds capacity (see the module docs). May fence an unbound pod.
    async fn claim_is_dead(&self, node: &str, claim: &Claim) -> Result<bool, StoreError> {
        let Some((ns, name)) = claim.pod.split_once('/') else {
            return Ok(true);
        };
        let key = Key::new(model::Kind::Pod.plural(), ns, name);
        let Some(v) = self.store.get(&key).await? else {
            return Ok(true);
        };
        let obj: model::Pod = decode(&v)?;
        if claim.uid.is_some() && obj.metadata.uid.is_some() && claim.uid != obj.metadata.uid {
            return Ok(true);
        }
        match obj.spec.node_name.as_deref() {
            Some(n) if n != node => Ok(true),
            Some(_) => Ok(is_terminal(&obj)),
            None => {
                let age = now_ms().saturating_sub(claim.claimed_at_ms);
                if u128::from(age) < CLAIM_TTL.as_millis() {
                    return Ok(false);
                }
                // Fence a stalled bind: its pod compare-and-swap at the old revision now fails.
                match self.store.update(&key, v.value.clone(), v.revision).await {
                    Ok(_) => Ok(true),
                    Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => Ok(false),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Claims capacity for the pod in the node's record (steps 2 and 3) under the attempt id `attempt`.
    async fn claim(
        &self,
        attempt: &str,
        pod: &PodKey,
        uid: Option<String>,
        requests: Requests,
        node: &str,
        allocatable: &super::Allocatable,
    ) -> Result<(), BindError> {
        let backend =
            |e: StoreError| BindError::Backend { pod: pod.clone(), node: node.to_string(), source: Box::new(e) };
        let akey = allocation_key(node);
        let me = pod.to_string();
        for _ in 0..RECORD_ATTEMPTS {
            let stored = self.store.get(&akey).await.map_err(backend)?;
            let (mut record, revision) = match &stored {
                Some(v) => (decode::<Allocation>(v).map_err(backend)?, Some(v.revision)),
                None => (Allocation::default(), None),
            };
            let mut usage = self.usage_with_unclaimed(node, &record);
            let mut changed = false;
            if fits(allocatable, &usage, &requests).is_err() {
                let claims: Vec<(String, Claim)> = record.claims.iter().map(|(k, c)| (k.clone(), c.clone())).collect();
                for (k, c) in claims {
                    if self.claim_is_dead(node, &c).await.map_err(backend)? {
                        record.claims.remove(&k);
                        changed = true;
                    }
                }
                usage = self.usage_with_unclaimed(node, &record);
            }
            if let Err(reason) = fits(allocatable, &usage, &requests) {
                if changed {
                    // Keep the collection even though this pod does not fit.
                    let _ = self.write_record(&akey, &record, revision).await;
                }
                return Err(BindError::NodeFull { pod: pod.clone(), node: node.to_string(), reason });
            }
            record.claims.insert(
                attempt.to_string(),
                Claim {
                    pod: me.clone(),
                    uid: uid.clone(),
                    cpu_millis: requests.cpu_millis,
                    memory_bytes: requests.memory_bytes,
                    claimed_at_ms: now_ms(),
                },
            );
            match self.write_record(&akey, &record, revision).await {
                Ok(()) => return Ok(()),
                Err(StoreError::Conflict { .. } | StoreError::AlreadyExists(_) | StoreError::NotFound(_)) => continue,
                Err(e) => return Err(backend(e)),
            }
        }
        Err(BindError::Backend {
            pod: pod.clone(),
            node: node.to_string(),
            source: format!("allocation record of {node} kept changing ({RECORD_ATTEMPTS} attempts)").into(),
        })
    }

    async fn write_record(&self, key: &Key, record: &Allocation, revision: Option<u64>) -> Result<(), StoreError> {
        let bytes = encode(key, record)?;
        match revision {
            Some(r) => self.store.update(key, bytes, r).await.map(|_| ()),
            None => self.store.create(key, bytes).await.map(|_| ()),
        }
    }

    /// Removes this attempt's claim from the node's record (after its pod compare-and-swap failed).
    async fn unclaim(&self, attempt: &str, pod: &PodKey, node: &str) {
        let akey = allocation_key(node);
        for _ in 0..RECORD_ATTEMPTS {
            let Ok(Some(v)) = self.store.get(&akey).await else {
                return;
            };
            let Ok(mut record) = decode::<Allocation>(&v) else {
                return;
            };
            if record.claims.remove(attempt).is_none() {
                return;
            }
            match self.write_record(&akey, &record, Some(v.revision)).await {
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => {
                    // The claim then expires through collection (see the module docs).
                    tracing::warn!(error = %e, pod = %pod, node, "could not release a claim");
                    return;
                }
                Ok(()) => return,
            }
        }
    }

    fn usage_with_unclaimed(&self, node: &str, record: &Allocation) -> Usage {
        let mut u = record.usage();
        let claimed = record.pods();
        if let Some(bound) = self.observed_bound.lock().get(node) {
            for p in bound.iter().filter(|p| !claimed.contains(p.key.as_str())) {
                u.cpu_millis = u.cpu_millis.saturating_add(p.requests.cpu_millis);
                u.memory_bytes = u.memory_bytes.saturating_add(p.requests.memory_bytes);
                u.pods = u.pods.saturating_add(1);
            }
        }
        u
    }
}

#[async_trait::async_trait]
impl Observe for StoreCluster {
    async fn observe(&self) -> Result<Observed, ObserveError> {
        let err = |e: StoreError| ObserveError { source: Box::new(e) };
        let nodes_prefix = Prefix { kind: model::Kind::Node.plural().into(), namespace: None };
        let pods_prefix = Prefix { kind: model::Kind::Pod.plural().into(), namespace: None };
        let (nodes, _) = self.store.list(&nodes_prefix, None).await.map_err(err)?;
        let (pods, _) = self.store.list(&pods_prefix, None).await.map_err(err)?;
        let mut snapshot =
            ClusterSnapshot { nodes: Vec::with_capacity(nodes.len()), pods: Vec::new(), policy: self.policy };
        for v in &nodes {
            match decode::<model::Node>(v) {
                Ok(n) => snapshot.nodes.push(node_info(&n)),
                Err(e) => tracing::warn!(error = %e, "skipping a node the scheduler cannot read"),
            }
        }
        let mut pending = Vec::new();
        let mut bound: HashMap<String, Vec<Counted>> = HashMap::new();
        for v in &pods {
            let pod: model::Pod = match decode(v) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "skipping a pod the scheduler cannot read");
                    continue;
                }
            };
            if is_terminal(&pod) {
                continue;
            }
            let info = pod_info(&pod);
            match pod.spec.node_name {
                Some(node) => {
                    bound
                        .entry(node.clone())
                        .or_default()
                        .push(Counted { key: info.key().to_string(), requests: info.requests });
                    snapshot.pods.push(BoundPod { pod: info, node });
                }
                None if pod.metadata.deletion_timestamp.is_none() => {
                    pending.push(PendingPod { pod: info, revision: v.revision })
                }
                None => {}
            }
        }
        *self.observed_bound.lock() = bound;
        Ok(Observed { snapshot, pending })
    }
}

#[async_trait::async_trait]
impl Binder for StoreCluster {
    async fn bind(&self, pod: &PodKey, node: &str, expected_pod_revision: u64) -> Result<(), BindError> {
        let backend =
            |e: StoreError| BindError::Backend { pod: pod.clone(), node: node.to_string(), source: Box::new(e) };
        let pkey = pod_key(pod);
        let Some(v) = self.store.get(&pkey).await.map_err(backend)? else {
            return Err(BindError::PodGone { pod: pod.clone() });
        };
        if v.revision != expected_pod_revision {
            return Err(BindError::PodChanged {
                pod: pod.clone(),
                expected: expected_pod_revision,
                actual: v.revision,
            });
        }
        let mut obj: model::Pod = decode(&v).map_err(backend)?;
        if let Some(bound) = &obj.spec.node_name {
            return Err(BindError::AlreadyBound { pod: pod.clone(), node: bound.clone() });
        }
        let Some(nv) = self.store.get(&node_key(node)).await.map_err(backend)? else {
            return Err(BindError::NodeGone { pod: pod.clone(), node: node.to_string() });
        };
        let n: model::Node = decode(&nv).map_err(backend)?;
        let allocatable = node_info(&n).allocatable;
        let requests = pod_info(&obj).requests;
        let attempt = uuid::Uuid::new_v4().to_string();
        self.claim(&attempt, pod, obj.metadata.uid.clone(), requests, node, &allocatable).await?;

        obj.spec.node_name = Some(node.to_string());
        obj.metadata.resource_version = None;
        let now = model::Time::now();
        let status = obj.status.get_or_insert_with(Default::default);
        set_condition(
            &mut status.conditions,
            Condition {
                type_: POD_SCHEDULED.into(),
                status: ConditionStatus::True,
                last_transition_time: Some(now),
                last_probe_time: Some(now),
                ..Condition::default()
            },
        );
        let bytes = match encode(&pkey, &obj) {
            Ok(b) => b,
            Err(e) => {
                self.unclaim(&attempt, pod, node).await;
                return Err(backend(e));
            }
        };
        match self.store.update(&pkey, bytes, expected_pod_revision).await {
            Ok(_) => Ok(()),
            Err(e) => {
                self.unclaim(&attempt, pod, node).await;
                Err(match e {
                    StoreError::Conflict { actual, .. } => {
                        BindError::PodChanged { pod: pod.clone(), expected: expected_pod_revision, actual }
                    }
                    StoreError::NotFound(_) => BindError::PodGone { pod: pod.clone() },
                    e => backend(e),
                })
            }
        }
    }
}
