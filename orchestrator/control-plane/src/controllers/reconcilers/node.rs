//! The node-lifecycle controller. Two kinds of evaluation of [`node::reconcile_nodes_observed`]:
//! - full (every node, every pod) after a relist, on every node change, and when the earliest heartbeat of a
//!   Ready node expires (its requeue);
//! - incremental (one changed pod against its own node) for pod changes, so a pod bound to a lost node is
//!   evicted at once without going over the whole cluster on every pod event. Other nodes need not be looked
//!   at: the full evaluation marks each one NotReady when its heartbeat expires.
//!
//! Silence is counted from the later of a node's heartbeat and this controller's start, so a control plane
//! that was down longer than the grace period does not evict every pod when it returns.

use crate::controllers::driver::{Cached, Caches, Changed, Context, Reconciler, Requeue, Resync, Watch};
use crate::controllers::node::{self, NodeAction, NODE_STATUS_UNKNOWN};
use crate::store::{Key, StoreError};
use model::{Condition, ConditionStatus, Node, Pod, Time};
use std::fmt;
use std::time::{Duration, SystemTime};

pub struct NodeLifecycle {
    grace: Duration,
    /// When this controller started watching: agents could not report while the control plane was down.
    watching_since: SystemTime,
}

impl NodeLifecycle {
    pub fn new(grace: Duration, now: SystemTime) -> Self {
        NodeLifecycle { grace, watching_since: now }
    }
}

/// What one reconcile evaluates.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Evaluation {
    /// Every node and every pod.
    Full,
    /// One pod (by store key) against its node.
    Pod(Key),
}

impl fmt::Display for Evaluation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Evaluation::Full => f.write_str("all nodes"),
            Evaluation::Pod(k) => k.fmt(f),
        }
    }
}

const WATCHES: &[Watch] = &[Watch::of::<Node>(), Watch::of::<Pod>()];

impl Reconciler for NodeLifecycle {
    type Key = Evaluation;
    const NAME: &'static str = "node-lifecycle-controller";

    fn watches(&self) -> &[Watch] {
        WATCHES
    }

    fn affected(&self, change: &Changed<'_>, _: &Caches) -> Vec<Evaluation> {
        if change.is::<Pod>() {
            vec![Evaluation::Pod(change.key.clone())]
        } else {
            vec![Evaluation::Full]
        }
    }

    fn resync(&mut self, _: Resync, _: &Caches) -> Vec<Evaluation> {
        vec![Evaluation::Full]
    }

    async fn reconcile(&mut self, key: &Evaluation, ctx: &mut Context<'_>) -> Result<Requeue, StoreError> {
        let (nodes, pods): (Vec<Node>, Vec<Pod>) = match key {
            Evaluation::Full => {
                (ctx.cache::<Node>().values().cloned().collect(), ctx.cache::<Pod>().values().cloned().collect())
            }
            Evaluation::Pod(k) => {
                let Some(pod) = ctx.cache::<Pod>().get(k) else { return Ok(Requeue::OnChange) };
                let node = pod.spec.node_name.as_ref().and_then(|n| ctx.cache::<Node>().get(&Node::store_key("", n)));
                (node.cloned().into_iter().collect(), vec![pod.clone()])
            }
        };
        let now = ctx.now();
        let plan = node::reconcile_nodes_observed(&nodes, &pods, now, self.grace, self.watching_since);
        execute(plan.actions, now, ctx).await?;
        Ok(match (key, plan.recheck_after) {
            (Evaluation::Full, Some(after)) => Requeue::After(after),
            _ => Requeue::OnChange,
        })
    }
}

/// Execute every action, also after one failed (one pod that cannot be evicted must not shield the others);
/// returns the first error.
async fn execute(actions: Vec<NodeAction>, now: SystemTime, ctx: &mut Context<'_>) -> Result<(), StoreError> {
    let mut first_error = None;
    for action in actions {
        let done = match action {
            NodeAction::MarkNotReady { node, silent_for } => {
                let silent_ms = silent_for.as_millis() as u64;
                tracing::warn!(%node, silent_ms, "node heartbeat lost; marking NotReady");
                ctx.update(&Node::store_key("", node), |n: &mut Node| mark_not_ready(n, now, silent_for)).await
            }
            NodeAction::EvictPod { namespace, name, node } => {
                tracing::info!(%namespace, pod = %name, %node, "evicting pod from lost node");
                let k = Pod::store_key(namespace, name);
                if ctx.cache::<Pod>().contains(&k) {
                    ctx.delete(&k).await
                } else {
                    Ok(())
                }
            }
        };
        match (done, &first_error) {
            (Err(e), None) => first_error = Some(e),
            (Err(e), Some(_)) => tracing::warn!(error = %e, "node lifecycle action failed"),
            (Ok(()), _) => {}
        }
    }
    first_error.map_or(Ok(()), Err)
}

fn mark_not_ready(n: &mut Node, now: SystemTime, silent_for: Duration) -> bool {
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
