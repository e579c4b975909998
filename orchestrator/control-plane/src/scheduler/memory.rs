//! An in-memory cluster that implements [`Observe`] and [`Binder`] with the full bind contract (revision
//! compare-and-swap plus capacity re-validation under one lock). It is the reference for store-backed binders
//! and what the runner's tests use; it can inject conflicts to exercise the retry path.

use super::bind::{BindError, Binder, Observe, ObserveError, Observed, PendingPod};
use super::{fits, BoundPod, ClusterSnapshot, NodeInfo, PodInfo, PodKey, SchedulingPolicy, Usage};
use parking_lot::Mutex;
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
struct StoredPod {
    pod: PodInfo,
    revision: u64,
    node: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    nodes: Vec<NodeInfo>,
    pods: BTreeMap<PodKey, StoredPod>,
    revision: u64,
    /// The next this-many binds fail as if someone updated the pod first (its revision is bumped).
    inject_pod_conflicts: u32,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct MemoryCluster {
    state: Mutex<State>,
    policy: SchedulingPolicy,
}

impl MemoryCluster {
    pub fn new(nodes: Vec<NodeInfo>, policy: SchedulingPolicy) -> Self {
        Self { state: Mutex::new(State { nodes, ..State::default() }), policy }
    }

    /// Adds a pending pod (or replaces one), giving it a new revision.
    pub fn submit(&self, pod: PodInfo) {
        let mut s = self.state.lock();
        s.revision += 1;
        let revision = s.revision;
        s.pods.insert(pod.key(), StoredPod { pod, revision, node: None });
    }

    /// Makes the next `n` binds fail with a revision conflict.
    pub fn inject_pod_conflicts(&self, n: u32) {
        self.state.lock().inject_pod_conflicts = n;
    }

    /// Where each pod is bound.
    pub fn bindings(&self) -> BTreeMap<PodKey, Option<String>> {
        self.state.lock().pods.iter().map(|(k, p)| (k.clone(), p.node.clone())).collect()
    }

    /// Requested resources per node, from the bound pods.
    pub fn usage(&self) -> BTreeMap<String, Usage> {
        let s = self.state.lock();
        s.nodes.iter().map(|n| (n.name.clone(), usage_of(&s, &n.name))).collect()
    }

    pub fn nodes(&self) -> Vec<NodeInfo> {
        self.state.lock().nodes.clone()
    }
}

fn usage_of(s: &State, node: &str) -> Usage {
    let mut u = Usage::default();
    for p in s.pods.values().filter(|p| p.node.as_deref() == Some(node)) {
        u.cpu_millis += p.pod.requests.cpu_millis;
        u.memory_bytes += p.pod.requests.memory_bytes;
        u.pods += 1;
    }
    u
}

#[async_trait::async_trait]
impl Observe for MemoryCluster {
    async fn observe(&self) -> Result<Observed, ObserveError> {
        let s = self.state.lock();
        let mut pods = Vec::new();
        let mut pending = Vec::new();
        for p in s.pods.values() {
            match &p.node {
                Some(node) => pods.push(BoundPod { pod: p.pod.clone(), node: node.clone() }),
                None => pending.push(PendingPod { pod: p.pod.clone(), revision: p.revision }),
            }
        }
        Ok(Observed { snapshot: ClusterSnapshot { nodes: s.nodes.clone(), pods, policy: self.policy }, pending })
    }
}

#[async_trait::async_trait]
impl Binder for MemoryCluster {
    async fn bind(&self, pod: &PodKey, node: &str, expected_pod_revision: u64) -> Result<(), BindError> {
        let mut s = self.state.lock();
        if s.inject_pod_conflicts > 0 {
            s.inject_pod_conflicts -= 1;
            s.revision += 1;
            let revision = s.revision;
            if let Some(p) = s.pods.get_mut(pod) {
                p.revision = revision;
            }
        }
        let Some(stored) = s.pods.get(pod) else {
            return Err(BindError::PodGone { pod: pod.clone() });
        };
        if stored.revision != expected_pod_revision {
            return Err(BindError::PodChanged {
                pod: pod.clone(),
                expected: expected_pod_revision,
                actual: stored.revision,
            });
        }
        if let Some(bound) = &stored.node {
            return Err(BindError::AlreadyBound { pod: pod.clone(), node: bound.clone() });
        }
        let requests = stored.pod.requests;
        let Some(info) = s.nodes.iter().find(|n| n.name == node) else {
            return Err(BindError::NodeGone { pod: pod.clone(), node: node.to_string() });
        };
        fits(&info.allocatable, &usage_of(&s, node), &requests).map_err(|reason| BindError::NodeFull {
            pod: pod.clone(),
            node: node.to_string(),
            reason,
        })?;
        s.revision += 1;
        let revision = s.revision;
        if let Some(p) = s.pods.get_mut(pod) {
            p.node = Some(node.to_string());
            p.revision = revision;
        }
        Ok(())
    }
}
