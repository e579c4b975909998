//! Where a pod may run: node and pod (anti-)affinity, tolerations of node taints, topology spread.

use super::meta::*;
use super::node::{Taint, TaintEffect};
use discovery::Labels;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Affinity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_affinity: Option<NodeAffinity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_affinity: Option<PodAffinity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_anti_affinity: Option<PodAffinity>,
}

impl Affinity {
    pub(crate) fn check(&self, p: &str) -> CheckResult {
        if let Some(n) = &self.node_affinity {
            let np = join(p, "nodeAffinity");
            if let Some(r) = &n.required_during_scheduling_ignored_during_execution {
                let rp = join(&np, "requiredDuringSchedulingIgnoredDuringExecution");
                if r.node_selector_terms.is_empty() {
                    return Err(field_err(join(&rp, "nodeSelectorTerms"), "must not be empty"));
                }
                for (i, t) in r.node_selector_terms.iter().enumerate() {
                    t.check(&index(&rp, "nodeSelectorTerms", i))?;
                }
            }
            for (i, t) in n.preferred_during_scheduling_ignored_during_execution.iter().enumerate() {
                let tp = index(&np, "preferredDuringSchedulingIgnoredDuringExecution", i);
                check_weight(&join(&tp, "weight"), t.weight)?;
                t.preference.check(&join(&tp, "preference"))?;
            }
        }
        for (name, a) in [("podAffinity", &self.pod_affinity), ("podAntiAffinity", &self.pod_anti_affinity)] {
            if let Some(a) = a {
                let ap = join(p, name);
                for (i, t) in a.required_during_scheduling_ignored_during_execution.iter().enumerate() {
                    t.check(&index(&ap, "requiredDuringSchedulingIgnoredDuringExecution", i))?;
                }
                for (i, t) in a.preferred_during_scheduling_ignored_during_execution.iter().enumerate() {
                    let tp = index(&ap, "preferredDuringSchedulingIgnoredDuringExecution", i);
                    check_weight(&join(&tp, "weight"), t.weight)?;
                    t.pod_affinity_term.check(&join(&tp, "podAffinityTerm"))?;
                }
            }
        }
        Ok(())
    }
}

fn check_weight(path: &str, w: i32) -> CheckResult {
    if !(1..=100).contains(&w) {
        return Err(field_err(path, format!("must be between 1 and 100 (got {w})")));
    }
    Ok(())
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeAffinity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required_during_scheduling_ignored_during_execution: Option<NodeSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preferred_during_scheduling_ignored_during_execution: Vec<PreferredSchedulingTerm>,
}

/// A node matches when it matches ANY of the terms.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSelector {
    pub node_selector_terms: Vec<NodeSelectorTerm>,
}

/// A term matches when ALL its requirements match. `matchFields` supports only `metadata.name`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSelectorTerm {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<NodeSelectorRequirement>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_fields: Vec<NodeSelectorRequirement>,
}

impl NodeSelectorTerm {
    /// Whether a node with these labels and this name matches the term. An empty term matches nothing,
    /// as in Kubernetes.
    pub fn matches(&self, node_name: &str, labels: &Labels) -> bool {
        if self.match_expressions.is_empty() && self.match_fields.is_empty() {
            return false;
        }
        self.match_expressions.iter().all(|r| r.matches(labels.get(&r.key).map(String::as_str)))
            && self.match_fields.iter().all(|r| r.matches(Some(node_name)))
    }

    fn check(&self, p: &str) -> CheckResult {
        for (i, r) in self.match_expressions.iter().enumerate() {
            let rp = index(p, "matchExpressions", i);
            discovery::labels::validate_key(&r.key).map_err(|e| field_err(join(&rp, "key"), e.to_string()))?;
            r.check(&rp)?;
        }
        for (i, r) in self.match_fields.iter().enumerate() {
            let rp = index(p, "matchFields", i);
            if r.key != "metadata.name" {
                return Err(field_err(join(&rp, "key"), "only metadata.name is supported"));
            }
            r.check(&rp)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSelectorRequirement {
    pub key: String,
    pub operator: NodeSelectorOperator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

impl NodeSelectorRequirement {
    /// Whether the value of the key (None when the label is absent) satisfies the requirement.
    pub fn matches(&self, value: Option<&str>) -> bool {
        use NodeSelectorOperator::*;
        match self.operator {
            In => value.is_some_and(|v| self.values.iter().any(|x| x == v)),
            NotIn => !value.is_some_and(|v| self.values.iter().any(|x| x == v)),
            Exists => value.is_some(),
            DoesNotExist => value.is_none(),
            Gt | Lt => {
                let (Some(v), Some(bound)) = (value, self.values.first()) else {
                    return false;
                };
                match (v.parse::<i64>(), bound.parse::<i64>()) {
                    (Ok(v), Ok(b)) if self.operator == Gt => v > b,
                    (Ok(v), Ok(b)) => v < b,
                    _ => false,
                }
            }
        }
    }

    fn check(&self, p: &str) -> CheckResult {
        use NodeSelectorOperator::*;
        let vp = join(p, "values");
        match self.operator {
            In | NotIn if self.values.is_empty() => {
                Err(field_err(vp, format!("must be non-empty when operator is {:?}", self.operator)))
            }
            Exists | DoesNotExist if !self.values.is_empty() => {
                Err(field_err(vp, format!("must be empty when operator is {:?}", self.operator)))
            }
            Gt | Lt if self.values.len() != 1 || self.values[0].parse::<i64>().is_err() => {
                Err(field_err(vp, format!("must hold exactly one integer when operator is {:?}", self.operator)))
            }
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreferredSchedulingTerm {
    pub weight: i32,
    pub preference: NodeSelectorTerm,
}

/// Pod affinity or anti-affinity (the same shape serves both).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodAffinity {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_during_scheduling_ignored_during_execution: Vec<PodAffinityTerm>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preferred_during_scheduling_ignored_during_execution: Vec<WeightedPodAffinityTerm>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodAffinityTerm {
    /// Absent selects no pods (Kubernetes semantics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<LabelSelector>,
    /// Empty means the pod's own namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    pub topology_key: String,
}

impl PodAffinityTerm {
    fn check(&self, p: &str) -> CheckResult {
        if self.topology_key.is_empty() {
            return Err(field_err(join(p, "topologyKey"), "must not be empty"));
        }
        discovery::labels::validate_key(&self.topology_key)
            .map_err(|e| field_err(join(p, "topologyKey"), e.to_string()))?;
        if let Some(s) = &self.label_selector {
            s.check(&join(p, "labelSelector"))?;
        }
        for (i, ns) in self.namespaces.iter().enumerate() {
            validate_dns_label(ns).map_err(|m| field_err(index(p, "namespaces", i), m))?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WeightedPodAffinityTerm {
    pub weight: i32,
    pub pod_affinity_term: PodAffinityTerm,
}

/// A pod's toleration of node taints. `tolerationSeconds` is an eviction concern: placement ignores it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Toleration {
    /// Empty with `Exists` tolerates every taint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default)]
    pub operator: TolerationOperator,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Empty matches every effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<TaintEffect>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toleration_seconds: Option<i64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TolerationOperator {
    Exists,
    #[default]
    Equal,
}

impl Toleration {
    /// Kubernetes' `ToleratesTaint`.
    pub fn tolerates(&self, taint: &Taint) -> bool {
        if self.effect.is_some_and(|e| e != taint.effect) {
            return false;
        }
        match self.key.as_deref() {
            None | Some("") => self.operator == TolerationOperator::Exists,
            Some(k) if k != taint.key => false,
            Some(_) => match self.operator {
                TolerationOperator::Exists => true,
                TolerationOperator::Equal => {
                    self.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
                }
            },
        }
    }

    pub(crate) fn check(&self, p: &str) -> CheckResult {
        match self.key.as_deref() {
            None | Some("") if self.operator != TolerationOperator::Exists => {
                return Err(field_err(join(p, "operator"), "must be Exists when key is empty"));
            }
            Some(k) if !k.is_empty() => {
                discovery::labels::validate_key(k).map_err(|e| field_err(join(p, "key"), e.to_string()))?;
            }
            _ => {}
        }
        if self.operator == TolerationOperator::Exists && self.value.as_deref().is_some_and(|v| !v.is_empty()) {
            return Err(field_err(join(p, "value"), "must be empty when operator is Exists"));
        }
        if self.toleration_seconds.is_some() && self.effect != Some(TaintEffect::NoExecute) {
            return Err(field_err(join(p, "tolerationSeconds"), "only valid with effect NoExecute"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TopologySpreadConstraint {
    pub max_skew: i32,
    pub topology_key: String,
    pub when_unsatisfiable: WhenUnsatisfiable,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_domains: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_label_keys: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_affinity_policy: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_taints_policy: Option<Ignored>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WhenUnsatisfiable {
    DoNotSchedule,
    ScheduleAnyway,
}

impl TopologySpreadConstraint {
    pub(crate) fn check(&self, p: &str, cx: &mut Check) -> CheckResult {
        at_least_one(&join(p, "maxSkew"), self.max_skew)?;
        if self.topology_key.is_empty() {
            return Err(field_err(join(p, "topologyKey"), "must not be empty"));
        }
        discovery::labels::validate_key(&self.topology_key)
            .map_err(|e| field_err(join(p, "topologyKey"), e.to_string()))?;
        if let Some(s) = &self.label_selector {
            s.check(&join(p, "labelSelector"))?;
        }
        if let Some(m) = self.min_domains {
            at_least_one(&join(p, "minDomains"), m)?;
            if self.when_unsatisfiable != WhenUnsatisfiable::DoNotSchedule {
                return Err(field_err(join(p, "minDomains"), "only valid with whenUnsatisfiable DoNotSchedule"));
            }
        }
        cx.ignored(p, "matchLabelKeys", &self.match_label_keys);
        cx.ignored(p, "nodeAffinityPolicy", &self.node_affinity_policy);
        cx.ignored(p, "nodeTaintsPolicy", &self.node_taints_policy);
        Ok(())
    }
}
