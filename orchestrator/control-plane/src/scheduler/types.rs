//! The scheduler's compact per-cycle inputs: a node and a pod as placement reads them, built by the adapter
//! (`adapter.rs`) from the stored objects.
//!
//! Kubernetes shapes are the model's own types (`model::Taint`, `model::Toleration`, `model::NodeAffinity`,
//! `model::WhenUnsatisfiable`, ...), with their semantics (`model::Toleration::tolerates`); what is added here is
//! only what placement precomputes: resource figures as numbers and label selectors parsed once
//! ([`AffinityTerm`], [`SpreadConstraint`]). So the placement code is tested and benchmarked without the store
//! or any IO.

use discovery::{Labels, Selector};
use model::{NodeAffinity, Taint, Toleration, WhenUnsatisfiable};
use std::fmt;

/// Quantities a node offers to pods (`status.allocatable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Allocatable {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub pods: u32,
}

/// What a pod asks for (the sum of its containers' `resources.requests`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Requests {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

/// A node as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeInfo {
    pub name: String,
    pub labels: Labels,
    pub allocatable: Allocatable,
    pub taints: Vec<Taint>,
    /// `spec.unschedulable` (cordoned).
    pub unschedulable: bool,
}

/// A `model::PodAffinityTerm` with its label selector parsed. `selector: None` matches no pod; an empty selector
/// matches every pod. Empty `namespaces` means the namespace of the pod that carries the term.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AffinityTerm {
    pub selector: Option<Selector>,
    pub namespaces: Vec<String>,
    pub topology_key: String,
}

/// A `model::WeightedPodAffinityTerm` with its term parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightedAffinityTerm {
    /// 1..=100.
    pub weight: i32,
    pub term: AffinityTerm,
}

/// A pod's `podAffinity` or `podAntiAffinity` with its terms parsed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AffinityTerms {
    pub required: Vec<AffinityTerm>,
    pub preferred: Vec<WeightedAffinityTerm>,
}

/// A `model::TopologySpreadConstraint` with its label selector parsed. Matching pods are counted in the incoming
/// pod's namespace, as in Kubernetes; `selector: None` matches no pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpreadConstraint {
    pub max_skew: u32,
    pub topology_key: String,
    pub when_unsatisfiable: WhenUnsatisfiable,
    pub selector: Option<Selector>,
}

/// A pod as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub requests: Requests,
    pub node_selector: Labels,
    /// The pod's node affinity, with `matchFields` on `metadata.name` already turned into `matchExpressions`
    /// on the node-name label (see `adapter.rs`): placement reads `matchExpressions` only.
    pub node_affinity: NodeAffinity,
    pub pod_affinity: AffinityTerms,
    pub pod_anti_affinity: AffinityTerms,
    pub tolerations: Vec<Toleration>,
    pub topology_spread_constraints: Vec<SpreadConstraint>,
}

impl PodInfo {
    pub fn key(&self) -> PodKey {
        PodKey { namespace: self.namespace.clone(), name: self.name.clone() }
    }
}

/// `namespace/name` of a pod.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodKey {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for PodKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A pod already bound to a node; its requests count against that node and its labels and anti-affinity
/// count for the topology rules of later pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundPod {
    pub pod: PodInfo,
    pub node: String,
}

/// How resource usage turns into a node score; one choice per cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScoringStrategy {
    /// Prefer the emptiest node (spread load).
    #[default]
    LeastAllocated,
    /// Prefer the fullest node that fits (bin-pack).
    MostAllocated,
    /// Prefer the node whose cpu and memory use stay closest to each other.
    Balanced,
}

/// Relative weights of the score plugins (Kubernetes' defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScoreWeights {
    pub resources: i64,
    pub node_affinity: i64,
    pub pod_affinity: i64,
    pub topology_spread: i64,
    pub taint_toleration: i64,
}

impl Default for ScoreWeights {
    fn default() -> Self {
        Self { resources: 1, node_affinity: 2, pod_affinity: 2, topology_spread: 2, taint_toleration: 3 }
    }
}

/// Cluster-wide scheduling policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulingPolicy {
    pub strategy: ScoringStrategy,
    pub weights: ScoreWeights,
    /// Share of nodes to find feasible before scoring, 1..=100; `None` is kube-scheduler's adaptive share
    /// (50% minus 1% per 125 nodes, at least 5%).
    pub percentage_of_nodes_to_score: Option<u32>,
    /// Never score fewer feasible nodes than this (unless fewer exist).
    pub min_feasible_nodes_to_find: usize,
}

impl Default for SchedulingPolicy {
    fn default() -> Self {
        Self {
            strategy: ScoringStrategy::default(),
            weights: ScoreWeights::default(),
            percentage_of_nodes_to_score: None,
            min_feasible_nodes_to_find: 100,
        }
    }
}

/// Everything placement reads: nodes, the pods bound to them, and the cluster's policy.
#[derive(Debug, Clone, Default)]
pub struct ClusterSnapshot {
    pub nodes: Vec<NodeInfo>,
    pub pods: Vec<BoundPod>,
    pub policy: SchedulingPolicy,
}
