//! The adapter from stored objects ([`model::Pod`], [`model::Node`]) to placement's inputs ([`PodInfo`],
//! [`NodeInfo`]): the model's own taints, tolerations and node affinity, label selectors parsed once, and
//! resources as numbers.
//!
//! It is pure and total: every valid stored object converts, and the conversion decides only what the
//! placement code cannot see in the model's shapes:
//! - a node whose `Ready` condition is not `True` gets the taint `node.kubernetes.io/not-ready:NoSchedule`,
//!   as Kubernetes' node lifecycle controller does, so only pods that tolerate it can land there and the
//!   verdict names the taint as the reason;
//! - `matchFields` on `metadata.name` (the only field the model accepts) becomes a requirement on the
//!   reserved label [`NODE_NAME_LABEL`], which every [`NodeInfo`] carries;
//! - `minDomains`, `matchLabelKeys` and the spread policies are dropped (placement does not model them).
//!
//! It does not decide which pods are pending or bound: see [`super::store`].

use super::types as s;
use super::{NodeInfo, PodInfo};
use model;

/// A label every [`NodeInfo`] carries with the node's name, so `matchFields: metadata.name` can be expressed
/// as a label requirement.
pub const NODE_NAME_LABEL: &str = "berth.dev/node-name";

/// The taint a node whose `Ready` condition is not `True` is treated as having.
pub const NOT_READY_TAINT_KEY: &str = "node.kubernetes.io/not-ready";

/// A stored node as placement sees it.
pub fn node_info(node: &model::Node) -> NodeInfo {
    let alloc = node.allocatable();
    let mut labels = node.metadata.labels.clone();
    labels.insert(NODE_NAME_LABEL.to_string(), node.metadata.name.clone());
    let mut taints = node.spec.taints.clone();
    if !node.is_ready() {
        taints.push(model::Taint {
            key: NOT_READY_TAINT_KEY.to_string(),
            value: None,
            effect: model::TaintEffect::NoSchedule,
            time_added: None,
        });
    }
    NodeInfo {
        name: node.metadata.name.clone(),
        labels,
        allocatable: s::Allocatable {
            cpu_millis: alloc.cpu_millis,
            memory_bytes: alloc.memory_bytes,
            pods: u32::try_from(alloc.pods).unwrap_or(u32::MAX),
        },
        taints,
        unschedulable: node.spec.unschedulable,
    }
}

/// A stored pod as placement sees it.
pub fn pod_info(pod: &model::Pod) -> PodInfo {
    let spec = &pod.spec;
    let req = spec.total_requests();
    let affinity = spec.affinity.clone().unwrap_or_default();
    PodInfo {
        namespace: pod.metadata.namespace.clone(),
        name: pod.metadata.name.clone(),
        labels: pod.metadata.labels.clone(),
        requests: s::Requests { cpu_millis: req.cpu_millis, memory_bytes: req.memory_bytes },
        node_selector: spec.node_selector.clone(),
        node_affinity: affinity.node_affinity.as_ref().map(node_affinity).unwrap_or_default(),
        pod_affinity: affinity.pod_affinity.as_ref().map(affinity_terms).unwrap_or_default(),
        pod_anti_affinity: affinity.pod_anti_affinity.as_ref().map(affinity_terms).unwrap_or_default(),
        tolerations: spec.tolerations.clone(),
        topology_spread_constraints: spec
            .topology_spread_constraints
            .iter()
            .map(|c| s::SpreadConstraint {
                max_skew: u32::try_from(c.max_skew).unwrap_or(1).max(1),
                topology_key: c.topology_key.clone(),
                when_unsatisfiable: c.when_unsatisfiable,
                selector: c.label_selector.as_ref().map(|l| l.to_selector()),
            })
            .collect(),
    }
}

/// The pod's node affinity with `matchFields` folded into `matchExpressions` on [`NODE_NAME_LABEL`].
fn node_affinity(a: &model::NodeAffinity) -> model::NodeAffinity {
    let mut a = a.clone();
    let required =
        a.required_during_scheduling_ignored_during_execution.iter_mut().flat_map(|r| &mut r.node_selector_terms);
    let preferred = a.preferred_during_scheduling_ignored_during_execution.iter_mut().map(|p| &mut p.preference);
    for term in required.chain(preferred) {
        fold_match_fields(term);
    }
    a
}

fn fold_match_fields(t: &mut model::NodeSelectorTerm) {
    // Validation admits only `metadata.name` in matchFields.
    for mut r in std::mem::take(&mut t.match_fields) {
        r.key = NODE_NAME_LABEL.to_string();
        t.match_expressions.push(r);
    }
}

fn affinity_terms(a: &model::PodAffinity) -> s::AffinityTerms {
    s::AffinityTerms {
        required: a.required_during_scheduling_ignored_during_execution.iter().map(affinity_term).collect(),
        preferred: a
            .preferred_during_scheduling_ignored_during_execution
            .iter()
            .map(|w| s::WeightedAffinityTerm { weight: w.weight, term: affinity_term(&w.pod_affinity_term) })
            .collect(),
    }
}

fn affinity_term(t: &model::PodAffinityTerm) -> s::AffinityTerm {
    s::AffinityTerm {
        selector: t.label_selector.as_ref().map(|l| l.to_selector()),
        namespaces: t.namespaces.clone(),
        topology_key: t.topology_key.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::{schedule_batch, ClusterSnapshot, RejectReason};

    fn node(yaml: &str) -> model::Node {
        serde_yaml_ng::from_str(yaml).expect("test node")
    }

    fn pod(yaml: &str) -> model::Pod {
        serde_yaml_ng::from_str(yaml).expect("test pod")
    }

    const READY_NODE: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: n1, labels: {zone: a}}
spec:
  taints: [{key: gpu, value: "yes", effect: NoSchedule}]
status:
  capacity: {cpu: "8", memory: 16Gi, pods: "200"}
  allocatable: {cpu: 3500m, memory: 4Gi, pods: "110"}
  conditions: [{type: Ready, status: "True"}]
"#;

    #[test]
    fn node_reads_allocatable_labels_and_taints() {
        let n = node_info(&node(READY_NODE));
        assert_eq!(n.name, "n1");
        assert_eq!(n.allocatable, s::Allocatable { cpu_millis: 3500, memory_bytes: 4 << 30, pods: 110 });
        assert_eq!(n.labels.get("zone").map(String::as_str), Some("a"));
        assert_eq!(n.labels.get(NODE_NAME_LABEL).map(String::as_str), Some("n1"));
        assert_eq!(
            n.taints,
            vec![model::Taint {
                key: "gpu".into(),
                value: Some("yes".into()),
                effect: model::TaintEffect::NoSchedule,
                time_added: None
            }]
        );
        assert!(!n.unschedulable);
    }

    #[test]
    fn node_readiness_and_cordon_table() {
        // (status block, unschedulable, expect not-ready taint)
        let cases = [
            ("conditions: [{type: Ready, status: \"True\"}]", false, false),
            ("conditions: [{type: Ready, status: \"False\"}]", false, true),
            ("conditions: [{type: Ready, status: Unknown}]", false, true),
            ("conditions: []", false, true),
            ("conditions: [{type: Ready, status: \"True\"}]", true, false),
        ];
        for (cond, cordoned, not_ready) in cases {
            let text = format!(
                "apiVersion: v1\nkind: Node\nmetadata: {{name: n}}\nspec: {{unschedulable: {cordoned}}}\nstatus:\n  capacity: {{cpu: \"1\", memory: 1Gi, pods: \"10\"}}\n  {cond}\n"
            );
            let n = node_info(&node(&text));
            assert_eq!(n.unschedulable, cordoned, "{cond}");
            assert_eq!(n.taints.iter().any(|t| t.key == NOT_READY_TAINT_KEY), not_ready, "{cond}");
            // Allocatable falls back to capacity.
            assert_eq!(n.allocatable.cpu_millis, 1000, "{cond}");
        }
        // A node without status offers nothing and is not ready.
        let n = node_info(&node("apiVersion: v1\nkind: Node\nmetadata: {name: bare}\n"));
        assert_eq!(n.allocatable, s::Allocatable::default());
        assert!(n.taints.iter().any(|t| t.key == NOT_READY_TAINT_KEY));
    }

    #[test]
    fn pod_reads_requests_and_constraints() {
        let p = pod(r#"
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec:
  containers:
  - {name: a, image: x, resources: {requests: {cpu: 250m, memory: 64Mi}}}
  - {name: b, image: x, resources: {limits: {cpu: "1", memory: 1Gi}}}
  nodeSelector: {disk: ssd}
  tolerations:
  - {key: gpu, operator: Equal, value: "yes", effect: NoSchedule}
  - {operator: Exists}
  affinity:
    nodeAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        nodeSelectorTerms:
        - matchExpressions: [{key: cores, operator: Gt, values: ["4"]}]
          matchFields: [{key: metadata.name, operator: In, values: [n1]}]
      preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 5
        preference: {matchExpressions: [{key: zone, operator: In, values: [a]}]}
    podAntiAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
      - labelSelector: {matchLabels: {app: web}}
        topologyKey: kubernetes.io/hostname
    podAffinity:
      preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 7
        podAffinityTerm: {labelSelector: {matchLabels: {app: db}}, topologyKey: zone, namespaces: [data]}
  topologySpreadConstraints:
  - {maxSkew: 2, topologyKey: zone, whenUnsatisfiable: ScheduleAnyway, labelSelector: {matchLabels: {app: web}}}
"#);
        let i = pod_info(&p);
        assert_eq!(i.key().to_string(), "shop/web-1");
        assert_eq!(i.requests, s::Requests { cpu_millis: 1250, memory_bytes: (64 << 20) + (1 << 30) });
        assert_eq!(i.node_selector.get("disk").map(String::as_str), Some("ssd"));
        assert_eq!(i.tolerations.len(), 2);
        assert_eq!(i.tolerations[1].operator, model::TolerationOperator::Exists);
        assert!(i.tolerations[1].key.is_none());
        let req = i.node_affinity.required_during_scheduling_ignored_during_execution.as_ref().expect("required");
        let exprs = &req.node_selector_terms[0].match_expressions;
        assert_eq!(exprs.len(), 2);
        assert_eq!(exprs[0].operator, model::NodeSelectorOperator::Gt);
        assert_eq!(exprs[1].key, NODE_NAME_LABEL);
        assert!(req.node_selector_terms[0].match_fields.is_empty());
        assert_eq!(i.node_affinity.preferred_during_scheduling_ignored_during_execution[0].weight, 5);
        assert_eq!(i.pod_anti_affinity.required[0].topology_key, "kubernetes.io/hostname");
        assert_eq!(i.pod_affinity.preferred[0].weight, 7);
        assert_eq!(i.pod_affinity.preferred[0].term.namespaces, vec!["data"]);
        let c = &i.topology_spread_constraints[0];
        assert_eq!(c.max_skew, 2);
        assert_eq!(c.when_unsatisfiable, model::WhenUnsatisfiable::ScheduleAnyway);
        assert!(c.selector.is_some());
    }

    #[test]
    fn placement_sees_not_ready_and_match_fields() {
        let ready = node_info(&node(READY_NODE));
        let mut other = node(READY_NODE);
        other.metadata.name = "n2".into();
        other.spec.taints.clear();
        if let Some(st) = other.status.as_mut() {
            st.conditions.clear();
        }
        let snapshot = ClusterSnapshot { nodes: vec![ready, node_info(&other)], ..ClusterSnapshot::default() };
        // Tolerates gpu but not not-ready: only n1.
        let p = pod(r#"
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: default}
spec:
  containers: [{name: a, image: x}]
  tolerations: [{key: gpu, operator: Exists}]
"#);
        let out = schedule_batch(&snapshot, &[pod_info(&p)], 1);
        assert_eq!(out[0].1.as_deref().ok(), Some("n1"));
        // Pinned by matchFields to n2, which is not ready.
        let p = pod(r#"
apiVersion: v1
kind: Pod
metadata: {name: q, namespace: default}
spec:
  containers: [{name: a, image: x}]
  tolerations: [{key: gpu, operator: Exists}]
  affinity:
    nodeAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        nodeSelectorTerms: [{matchFields: [{key: metadata.name, operator: In, values: [n2]}]}]
"#);
        let out = schedule_batch(&snapshot, &[pod_info(&p)], 1);
        let why = out[0].1.as_ref().expect_err("n2 is not ready");
        assert_eq!(why.count(RejectReason::NodeAffinity), 1);
        assert_eq!(why.count(RejectReason::UntoleratedTaint), 1);
    }
}
