//! The scheduler: decides which node each pending pod runs on.
//!
//! Placement is a pure function of a [`ClusterSnapshot`] ([`schedule_batch`]); it does no IO. It runs as a
//! pipeline in the manner of kube-scheduler's framework and Nomad's iterator stack:
//!
//! 1. **PreFilter** (once per pod): intern the pod, register its affinity / anti-affinity / spread terms, and
//!    read the per-cycle topology counts (matching pods per domain, carriers of required anti-affinity per
//!    domain, the minimum per spread constraint).
//! 2. **Filter** (per node, cheapest first): unschedulable, node selector and required node affinity, taints
//!    (`NoSchedule`, `NoExecute`), resources (pods, cpu, memory), existing pods' required anti-affinity
//!    (symmetric), the pod's required anti-affinity and affinity, `DoNotSchedule` topology spread. Nodes are
//!    visited from a rotating start and the scan stops once kube-scheduler's adaptive share of nodes
//!    (at least 100) is feasible, so work is bounded on big clusters. Every scanned node passes *every*
//!    filter, so the chosen node always satisfies all required constraints; a pod is declared
//!    [`Unschedulable`] only after every node was checked, with one typed [`RejectReason`] per node.
//! 3. **Score** (the feasible sample only): the cluster's [`ScoringStrategy`] on cpu/memory, preferred node
//!    affinity, preferred inter-pod (anti-)affinity (the pod's own terms and, symmetrically, existing pods' required affinity and
//!    preferred (anti-)affinity terms that match it), `ScheduleAnyway` spread and `PreferNoSchedule` taints, each
//!    normalised to 0..=100 and weighted ([`ScoreWeights`]).
//! 4. **Select**: the highest total; ties broken by a seeded RNG, so the same snapshot, pods and seed give the
//!    same placements.
//!
//! Placing a pod updates the cycle's state incrementally, so later pods of the same batch see it.
//!
//! Binding is optimistic and lives in [`bind`]: a bind is a compare-and-swap on the pod's revision that also
//! re-validates the node's capacity at commit time; on conflict the runner refreshes the snapshot and retries.
//!
//! Around the pure core: [`adapter`] turns stored Pods and Nodes into [`PodInfo`] / [`NodeInfo`]; [`store`]
//! ([`StoreCluster`]) is the store-backed [`bind::Observe`] and [`bind::Binder`] (per-node allocation records
//! keep several scheduler instances from overcommitting); [`service`] ([`Scheduler`]) runs rounds woken by
//! store watches and writes `PodScheduled` conditions.
//!
//! Known simplifications against Kubernetes: `namespaceSelector`, `matchFields`, `minDomains`,
//! `matchLabelKeys` and `nodeAffinityPolicy`/`nodeTaintsPolicy` are not modelled; `ScheduleAnyway` spread
//! scoring counts matching pods on every node of a domain (Kubernetes counts only nodes that pass the pod's
//! node affinity; `DoNotSchedule` filtering does follow that rule); the resource score is the strategy alone (Kubernetes adds
//! `BalancedAllocation` to `LeastAllocated` by default).

pub mod adapter;
pub mod bind;
mod cycle;
mod intern;
pub mod memory;
mod rng;
pub mod service;
pub mod store;
mod types;
mod verdict;

#[cfg(test)]
mod tests;

pub use cycle::{fits, Cycle, Usage, DEFAULT_SCORE_CPU_MILLIS, DEFAULT_SCORE_MEMORY_BYTES, UNSCHEDULABLE_TAINT_KEY};
pub use rng::SeededRng;
pub use service::Scheduler;
pub use store::StoreCluster;
pub use types::*;
pub use verdict::{RejectReason, Unschedulable};

use std::sync::Arc;

/// A node name as returned by placement (cheap to clone).
pub type NodeName = Arc<str>;

/// Places `pods` in order onto the snapshot's nodes. Pure: the same inputs and seed give the same output.
pub fn schedule_batch(
    snapshot: &ClusterSnapshot,
    pods: &[PodInfo],
    seed: u64,
) -> Vec<(PodKey, Result<NodeName, Unschedulable>)> {
    let mut cycle = Cycle::new(snapshot, seed);
    pods.iter().map(|p| (p.key(), cycle.schedule(p))).collect()
}
