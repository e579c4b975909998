//! Optimistic binding: the contract between placement (pure) and the store (IO), and the runner that joins
//! them.
//!
//! # How concurrent schedulers never overcommit a node
//!
//! Placement reads a snapshot that may be stale the moment it is taken, and several scheduler instances may
//! place pods onto the same node at once. Correctness therefore does not rest on the snapshot: a [`Binder`]
//! commits a bind only if, *atomically at commit time*,
//! 1. the pod's revision is still the one the scheduler saw (`expected_pod_revision`) and it is still unbound
//!    (otherwise [`BindError::PodChanged`] / [`BindError::AlreadyBound`]); and
//! 2. the node's capacity, recomputed from the pods bound to it in the store, still fits the pod (the same
//!    [`fits`](super::fits) function the filter uses; otherwise [`BindError::NodeFull`]).
//!
//! A store backend makes (2) atomic by serialising binds per node: the redb backend checks and writes in one
//! write transaction; on etcd the bind transaction compares both the pod's `mod_revision` and the
//! `mod_revision` of a per-node allocation record that every bind to that node rewrites, so two concurrent
//! binds to one node cannot both commit. [`super::memory::MemoryCluster`] is the in-memory reference and is
//! what the tests run.
//!
//! Required pod (anti-)affinity and spread are *not* re-validated at bind time (neither does
//! kube-scheduler); with several scheduler instances they can be violated by a race, never capacity.
//!
//! The runner refreshes and retries conflicted pods a bounded number of rounds. Waking it when nodes or pods
//! change (instead of polling) is the caller's wiring: call [`Runner::run_once`] on each store watch event.

use super::{schedule_batch, ClusterSnapshot, NodeName, PodInfo, PodKey, RejectReason, Unschedulable};
use std::collections::BTreeSet;

/// Why a bind did not commit.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("pod {pod} changed since it was scheduled (expected revision {expected}, now {actual})")]
    PodChanged { pod: PodKey, expected: u64, actual: u64 },
    #[error("pod {pod} is already bound to {node}")]
    AlreadyBound { pod: PodKey, node: String },
    #[error("pod {pod} no longer fits node {node} at bind time: {reason}")]
    NodeFull { pod: PodKey, node: String, reason: RejectReason },
    #[error("pod {pod} no longer exists")]
    PodGone { pod: PodKey },
    #[error("node {node} no longer exists (binding {pod})")]
    NodeGone { pod: PodKey, node: String },
    #[error("binding {pod} to {node}: {source}")]
    Backend {
        pod: PodKey,
        node: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl BindError {
    /// Whether a fresh snapshot and another placement may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, BindError::PodChanged { .. } | BindError::NodeFull { .. } | BindError::NodeGone { .. })
    }
}

/// Commits a placement. See the module docs for the atomicity it must provide.
#[async_trait::async_trait]
pub trait Binder: Send + Sync {
    async fn bind(&self, pod: &PodKey, node: &str, expected_pod_revision: u64) -> Result<(), BindError>;
}

/// A pending pod with the revision it was read at.
#[derive(Debug, Clone)]
pub struct PendingPod {
    pub pod: PodInfo,
    pub revision: u64,
}

/// One consistent read of the cluster: the snapshot to place against and the pods waiting for a node.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub snapshot: ClusterSnapshot,
    pub pending: Vec<PendingPod>,
}

#[derive(Debug, thiserror::Error)]
#[error("reading the cluster for scheduling: {source}")]
pub struct ObserveError {
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// Reads the cluster state for one scheduling round.
#[async_trait::async_trait]
pub trait Observe: Send + Sync {
    async fn observe(&self) -> Result<Observed, ObserveError>;
}

/// What one [`Runner::run_once`] did.
#[derive(Debug, Default)]
pub struct RunReport {
    pub bound: Vec<(PodKey, NodeName)>,
    /// Pods that fit nowhere in the last snapshot they were placed against (they stay Pending with this).
    pub unschedulable: Vec<(PodKey, Unschedulable)>,
    /// Binds refused for a retryable reason (each led to a refresh and a retry).
    pub conflicts: u32,
    /// Pods still conflicting when the round limit was reached.
    pub gave_up: Vec<PodKey>,
    /// Pods that were bound elsewhere or deleted meanwhile.
    pub skipped: Vec<PodKey>,
    pub rounds: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Observe(#[from] ObserveError),
    #[error(transparent)]
    Bind(BindError),
}

/// Observe → place → bind, retrying conflicted pods against a fresh observation.
pub struct Runner<O, B> {
    pub observe: O,
    pub binder: B,
    /// Rounds per `run_once`, at least 1.
    pub max_rounds: u32,
}

impl<O: Observe, B: Binder> Runner<O, B> {
    pub fn new(observe: O, binder: B) -> Self {
        Self { observe, binder, max_rounds: 8 }
    }

    /// Schedules every pending pod once; a pod whose bind conflicts is placed again on a fresh snapshot, up to
    /// `max_rounds` rounds. Round `r` uses seed `seed + r`, so a run replays from its seed.
    pub async fn run_once(&self, seed: u64) -> Result<RunReport, RunError> {
        let mut report = RunReport::default();
        let mut retry: Option<BTreeSet<PodKey>> = None;
        for round in 0..self.max_rounds.max(1) {
            let observed = self.observe.observe().await?;
            let pending: Vec<PendingPod> = match &retry {
                None => observed.pending,
                Some(keys) => observed.pending.into_iter().filter(|p| keys.contains(&p.pod.key())).collect(),
            };
            if pending.is_empty() {
                return Ok(report);
            }
            report.rounds = round + 1;
            let pods: Vec<PodInfo> = pending.iter().map(|p| p.pod.clone()).collect();
            let placed = schedule_batch(&observed.snapshot, &pods, seed.wrapping_add(round as u64));
            let mut next = BTreeSet::new();
            for ((key, result), p) in placed.into_iter().zip(&pending) {
                let node = match result {
                    Ok(node) => node,
                    Err(why) => {
                        report.unschedulable.push((key, why));
                        continue;
                    }
                };
                match self.binder.bind(&key, &node, p.revision).await {
                    Ok(()) => report.bound.push((key, node)),
                    Err(e) if e.is_retryable() => {
                        tracing::debug!(error = %e, "bind conflict, will retry on a fresh snapshot");
                        report.conflicts += 1;
                        next.insert(key);
                    }
                    Err(BindError::AlreadyBound { .. } | BindError::PodGone { .. }) => report.skipped.push(key),
                    Err(e) => return Err(RunError::Bind(e)),
                }
            }
            if next.is_empty() {
                return Ok(report);
            }
            retry = Some(next);
        }
        report.gave_up = retry.map(|s| s.into_iter().collect()).unwrap_or_default();
        Ok(report)
    }
}

#[async_trait::async_trait]
impl<T: Binder + ?Sized> Binder for &T {
    async fn bind(&self, pod: &PodKey, node: &str, expected_pod_revision: u64) -> Result<(), BindError> {
        (**self).bind(pod, node, expected_pod_revision).await
    }
}

#[async_trait::async_trait]
impl<T: Binder + ?Sized> Binder for std::sync::Arc<T> {
    async fn bind(&self, pod: &PodKey, node: &str, expected_pod_revision: u64) -> Result<(), BindError> {
        (**self).bind(pod, node, expected_pod_revision).await
    }
}

#[async_trait::async_trait]
impl<T: Observe + ?Sized> Observe for &T {
    async fn observe(&self) -> Result<Observed, ObserveError> {
        (**self).observe().await
    }
}

#[async_trait::async_trait]
impl<T: Observe + ?Sized> Observe for std::sync::Arc<T> {
    async fn observe(&self) -> Result<Observed, ObserveError> {
        (**self).observe().await
    }
}
