//! The scheduler's own input types, in Kubernetes shapes and with Kubernetes semantics.
//!
//! They are deliberately independent of `model`: a thin adapter turns stored Pods and Nodes into these,
//! so the placement code can be tested and benchmarked without the object model, the store or any IO.

use discovery::{Labels, Selector};
use std::fmt;

/// How a taint repels pods (`spec.taints[].effect`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaintEffect {
    /// Pods that do not tolerate it are not scheduled onto the node.
    NoSchedule,
    /// The scheduler tries to avoid the node; a scoring input only.
    PreferNoSchedule,
    /// Like `NoSchedule` for the scheduler (eviction of running pods is the node controller's business).
    NoExecute,
}

/// A node taint (`spec.taints[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taint {
    pub key: String,
    pub value: String,
    pub effect: TaintEffect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TolerationOperator {
    #[default]
    Equal,
    Exists,
}

/// A pod toleration (`spec.tolerations[]`). An empty `key` with `Exists` tolerates every taint; `effect: None`
/// matches every effect. `tolerationSeconds` is an eviction concern and not modelled here.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Toleration {
    pub key: String,
    pub operator: TolerationOperator,
    pub value: String,
    pub effect: Option<TaintEffect>,
}

impl Toleration {
    /// Kubernetes `Toleration.ToleratesTaint`.
    pub fn tolerates(&self, taint: &Taint) -> bool {
        if self.effect.is_some_and(|e| e != taint.effect) {
            return false;
        }
        if !self.key.is_empty() && self.key != taint.key {
            return false;
        }
        match self.operator {
            TolerationOperator::Exists => true,
            // An empty key is only meaningful with Exists.
            TolerationOperator::Equal => !self.key.is_empty() && self.value == taint.value,
        }
    }
}

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

/// `NodeSelectorRequirement.operator`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeSelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
    /// The label value, parsed as an integer, is greater than the single value given.
    Gt,
    /// The label value, parsed as an integer, is less than the single value given.
    Lt,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSelectorRequirement {
    pub key: String,
    pub operator: NodeSelectorOperator,
    pub values: Vec<String>,
}

/// A conjunction of requirements. An empty term matches no node (as in Kubernetes).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeSelectorTerm {
    pub match_expressions: Vec<NodeSelectorRequirement>,
}

/// `requiredDuringSchedulingIgnoredDuringExecution`: the terms are ORed; no terms matches no node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeSelector {
    pub node_selector_terms: Vec<NodeSelectorTerm>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreferredSchedulingTerm {
    /// 1..=100.
    pub weight: i32,
    pub preference: NodeSelectorTerm,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeAffinity {
    pub required: Option<NodeSelector>,
    pub preferred: Vec<PreferredSchedulingTerm>,
}

/// `PodAffinityTerm`. `label_selector: None` matches no pod; an empty selector matches every pod.
/// Empty `namespaces` means the namespace of the pod that carries the term.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodAffinityTerm {
    pub label_selector: Option<Selector>,
    pub namespaces: Vec<String>,
    pub topology_key: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightedPodAffinityTerm {
    /// 1..=100.
    pub weight: i32,
    pub term: PodAffinityTerm,
}

/// `podAffinity` or `podAntiAffinity`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodAffinity {
    pub required: Vec<PodAffinityTerm>,
    pub preferred: Vec<WeightedPodAffinityTerm>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhenUnsatisfiable {
    #[default]
    DoNotSchedule,
    ScheduleAnyway,
}

/// `topologySpreadConstraints[]`. Matching pods are counted in the incoming pod's namespace, as in Kubernetes.
/// `label_selector: None` matches no pod.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TopologySpreadConstraint {
    pub max_skew: u32,
    pub topology_key: String,
    pub when_unsatisfiable: WhenUnsatisfiable,
    pub label_selector: Option<Selector>,
}

/// A pod as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub requests: Requests,
    pub node_selector: Labels,
    pub node_affinity: NodeAffinity,
    pub pod_affinity: PodAffinity,
    pub pod_anti_affinity: PodAffinity,
    pub tolerations: Vec<Toleration>,
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
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
