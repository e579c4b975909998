//! Node lifecycle, as a pure decision: a node whose last heartbeat is older than the grace period becomes
//! NotReady, and the pods bound to such a silent (or vanished) node are evicted, i.e. deleted from the store at
//! once, so their endpoints leave the registry and their Deployments create replacements elsewhere.
//!
//! Eviction skips the terminating step Deployments use: nobody can drain a pod whose agent is gone. When the
//! agent returns it finds its pods missing from the store and stops them (the agent's side of the contract).
//! This module never marks a node Ready: only its agent's heartbeat does.

use model::{find_condition, ConditionStatus, Node, Pod, PodPhase};
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

/// The default heartbeat grace period.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// Reason written on the `Ready` condition of a node this controller marks NotReady.
pub const NODE_STATUS_UNKNOWN: &str = "NodeStatusUnknown";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeAction {
    /// Set the node's `Ready` condition to `Unknown` with reason `NodeStatusUnknown`.
    MarkNotReady { node: String, silent_for: Duration },
    /// Delete the pod from the store: its node is lost.
    EvictPod { namespace: String, name: String, node: String },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodePlan {
    pub actions: Vec<NodeAction>,
    /// When the earliest Ready node's heartbeat would go stale, if nothing else happens.
    pub recheck_after: Option<Duration>,
}

/// The decision for all nodes at `now`, for a controller that has been watching for ever.
pub fn reconcile_nodes(nodes: &[Node], pods: &[Pod], now: SystemTime, grace: Duration) -> NodePlan {
    reconcile_nodes_observed(nodes, pods, now, grace, SystemTime::UNIX_EPOCH)
}

/// The decision for all nodes at `now`, for a controller that started watching at `watching_since`.
///
/// Silence is counted from the later of a node's last heartbeat and `watching_since`: heartbeats cannot
/// arrive while the control plane is down, so after a restart every agent gets a full grace period to
/// report again before its node is declared lost (as Kubernetes' node lifecycle controller counts from its
/// own observations). Without this, a control plane down for longer than the grace period would evict
/// every pod in the cluster when it comes back.
pub fn reconcile_nodes_observed(
    nodes: &[Node],
    pods: &[Pod],
    now: SystemTime,
    grace: Duration,
    watching_since: SystemTime,
) -> NodePlan {
    let mut plan = NodePlan::default();
    let mut lost: HashMap<&str, bool> = HashMap::with_capacity(nodes.len());
    for n in nodes {
        let reported = n.heartbeat().map(|t| t.0).or(n.metadata.creation_timestamp.map(|t| t.0));
        let last = match reported {
            Some(t) => Some(t.max(watching_since)),
            None if watching_since > SystemTime::UNIX_EPOCH => Some(watching_since),
            None => None,
        };
        let silent = last.map(|t| now.duration_since(t).unwrap_or_default());
        let stale = silent.is_none_or(|s| s >= grace);
        if stale {
            let already_marked =
                n.status.as_ref().and_then(|s| find_condition(&s.conditions, "Ready")).is_some_and(|c| {
                    c.status != ConditionStatus::True && c.reason.as_deref() == Some(NODE_STATUS_UNKNOWN)
                });
            if !already_marked {
                plan.actions.push(NodeAction::MarkNotReady {
                    node: n.metadata.name.clone(),
                    // The real silence, for the message (longer than `silent` after a restart).
                    silent_for: reported.map(|t| now.duration_since(t).unwrap_or_default()).or(silent).unwrap_or(grace),
                });
            }
            lost.insert(&n.metadata.name, true);
        } else {
            if let Some(s) = silent {
                let left = grace - s;
                plan.recheck_after = Some(plan.recheck_after.map_or(left, |r| r.min(left)));
            }
            lost.insert(&n.metadata.name, false);
        }
    }
    for p in pods {
        let Some(node) = p.spec.node_name.as_deref() else {
            continue;
        };
        if matches!(p.phase(), PodPhase::Succeeded) {
            continue;
        }
        let lost = lost.get(node).copied().unwrap_or(true);
        if lost {
            plan.actions.push(NodeAction::EvictPod {
                namespace: p.metadata.namespace.clone(),
                name: p.metadata.name.clone(),
                node: node.to_string(),
            });
        }
    }
    plan
}
