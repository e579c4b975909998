//! Verdicts: why a node was rejected for a pod, and the per-pod summary users see in `berth describe pod`.
//!
//! A rejection is not an error: it is a typed reason per node, counted and printed in the Kubernetes style
//! (`0/5 nodes available: 3 insufficient memory, 2 node(s) didn't match pod anti-affinity`).

use std::fmt;
use std::sync::Arc;

/// Why one node cannot take one pod. The order is the order in which the filters run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    NodeUnschedulable,
    NodeAffinity,
    UntoleratedTaint,
    TooManyPods,
    InsufficientCpu,
    InsufficientMemory,
    PodAffinity,
    PodAntiAffinity,
    ExistingPodsAntiAffinity,
    TopologySpreadMissingLabel,
    TopologySpreadSkew,
}

impl RejectReason {
    pub const ALL: [RejectReason; 11] = [
        RejectReason::NodeUnschedulable,
        RejectReason::NodeAffinity,
        RejectReason::UntoleratedTaint,
        RejectReason::TooManyPods,
        RejectReason::InsufficientCpu,
        RejectReason::InsufficientMemory,
        RejectReason::PodAffinity,
        RejectReason::PodAntiAffinity,
        RejectReason::ExistingPodsAntiAffinity,
        RejectReason::TopologySpreadMissingLabel,
        RejectReason::TopologySpreadSkew,
    ];

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// The resource filters: a node that failed only these might fit after another pod leaves.
    pub fn is_resource(self) -> bool {
        matches!(self, RejectReason::TooManyPods | RejectReason::InsufficientCpu | RejectReason::InsufficientMemory)
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RejectReason::NodeUnschedulable => "node(s) were unschedulable",
            RejectReason::NodeAffinity => "node(s) didn't match pod's node affinity/selector",
            RejectReason::UntoleratedTaint => "node(s) had untolerated taint",
            RejectReason::TooManyPods => "too many pods",
            RejectReason::InsufficientCpu => "insufficient cpu",
            RejectReason::InsufficientMemory => "insufficient memory",
            RejectReason::ExistingPodsAntiAffinity => "node(s) didn't satisfy existing pods anti-affinity",
            RejectReason::PodAntiAffinity => "node(s) didn't match pod anti-affinity",
            RejectReason::PodAffinity => "node(s) didn't match pod affinity",
            RejectReason::TopologySpreadMissingLabel => {
                "node(s) didn't match pod topology spread constraints (missing required label)"
            }
            RejectReason::TopologySpreadSkew => "node(s) didn't match pod topology spread constraints",
        })
    }
}

/// A pod fits nowhere: every node was checked and each one rejected it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unschedulable {
    pub total_nodes: usize,
    /// Each reason with the number of nodes that gave it; most frequent first, then in filter order.
    pub reasons: Vec<(RejectReason, u32)>,
    /// The first failing filter of every node, in snapshot order.
    pub per_node: Vec<(Arc<str>, RejectReason)>,
}

impl Unschedulable {
    pub(crate) fn from_per_node(per_node: Vec<(Arc<str>, RejectReason)>) -> Self {
        let mut counts = [0u32; RejectReason::ALL.len()];
        for (_, r) in &per_node {
            counts[r.index()] += 1;
        }
        let mut reasons: Vec<(RejectReason, u32)> =
            RejectReason::ALL.iter().map(|&r| (r, counts[r.index()])).filter(|&(_, n)| n > 0).collect();
        reasons.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        Self { total_nodes: per_node.len(), reasons, per_node }
    }

    /// The number of nodes that rejected the pod for `reason`.
    pub fn count(&self, reason: RejectReason) -> u32 {
        self.reasons.iter().find(|(r, _)| *r == reason).map_or(0, |(_, n)| *n)
    }
}

impl fmt::Display for Unschedulable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0/{} nodes available", self.total_nodes)?;
        for (i, (reason, n)) in self.reasons.iter().enumerate() {
            f.write_str(if i == 0 { ": " } else { ", " })?;
            write!(f, "{n} {reason}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Unschedulable {}
