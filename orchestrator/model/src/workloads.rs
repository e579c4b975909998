//! Workload kinds in Kubernetes shapes: [`Node`], [`Deployment`], [`Pod`] and the [`PodSpec`] they share, plus
//! [`ConfigMap`] and [`Secret`].
//!
//! Types deserialize strictly (`deny_unknown_fields`); defaults are filled in by `normalize` so that a stored
//! object states every value controllers and the agent act on (probe periods, strategy, restart policy...).
//! Fields Kubernetes has and Berth ignores are kept as [`Ignored`] and produce a warning.

use super::meta::*;
use super::quantity::Quantity;
use discovery::{Labels, Protocol};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

pub type ResourceList = BTreeMap<String, Quantity>;

fn is_false(b: &bool) -> bool {
    !*b
}

// ---------------------------------------------------------------------------------------------------------
// Node

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Node {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: NodeSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<NodeStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSpec {
    /// Cordoned: the scheduler places no new pods here.
    #[serde(default, skip_serializing_if = "is_false")]
    pub unschedulable: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<Taint>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "podCIDR")]
    pub pod_cidr: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "podCIDRs")]
    pub pod_cidrs: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "providerID")]
    pub provider_id: Option<Ignored>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Taint {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    pub effect: TaintEffect,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_added: Option<Time>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaintEffect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeStatus {
    /// `cpu`, `memory`, `pods` (and anything else the agent reports).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub capacity: ResourceList,
    /// What the scheduler may hand out; defaults to capacity when absent.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub allocatable: ResourceList,
    /// `Ready` (with `lastHeartbeatTime`), and any pressure conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<NodeAddress>,
    /// Berth extension: the agent's last heartbeat (Kubernetes keeps this in a Lease).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_info: Option<NodeSystemInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon_endpoints: Option<Ignored>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeAddress {
    /// `InternalIP`, `ExternalIP`, `Hostname`.
    #[serde(rename = "type")]
    pub type_: String,
    pub address: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSystemInfo {
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "machineID")]
    pub machine_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "systemUUID")]
    pub system_uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "bootID")]
    pub boot_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_runtime_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubelet_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube_proxy_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operating_system: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
}

impl Node {
    /// `Ready` condition is `True`.
    pub fn is_ready(&self) -> bool {
        self.status.as_ref().is_some_and(|s| condition_is_true(&s.conditions, "Ready"))
    }

    /// The last heartbeat: `status.heartbeatTime`, else the `Ready` condition's `lastHeartbeatTime`.
    pub fn heartbeat(&self) -> Option<Time> {
        let s = self.status.as_ref()?;
        s.heartbeat_time.or_else(|| find_condition(&s.conditions, "Ready").and_then(|c| c.last_heartbeat_time))
    }

    /// Allocatable resources (capacity where allocatable is not reported).
    pub fn allocatable(&self) -> Resources {
        match &self.status {
            Some(s) if !s.allocatable.is_empty() => Resources::from_list(&s.allocatable),
            Some(s) => Resources::from_list(&s.capacity),
            None => Resources::default(),
        }
    }

    /// The first `InternalIP` address, else the first address of any type.
    pub fn address(&self) -> Option<&str> {
        let s = self.status.as_ref()?;
        s.addresses.iter().find(|a| a.type_ == "InternalIP").or(s.addresses.first()).map(|a| a.address.as_str())
    }

    pub(crate) fn check(&self, cx: &mut Check) -> CheckResult {
        let p = "spec";
        for (i, t) in self.spec.taints.iter().enumerate() {
            let tp = index(p, "taints", i);
            discovery::labels::validate_key(&t.key).map_err(|e| field_err(join(&tp, "key"), e.to_string()))?;
            if let Some(v) = &t.value {
                discovery::labels::validate_value(v).map_err(|e| field_err(join(&tp, "value"), e.to_string()))?;
            }
        }
        cx.ignored(p, "podCIDR", &self.spec.pod_cidr);
        cx.ignored(p, "podCIDRs", &self.spec.pod_cidrs);
        cx.ignored(p, "providerID", &self.spec.provider_id);
        if let Some(s) = &self.status {
            check_resource_list("status.capacity", &s.capacity, cx)?;
            check_resource_list("status.allocatable", &s.allocatable, cx)?;
        }
        Ok(())
    }
}

/// CPU, memory and pod count as plain numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Resources {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub pods: u64,
}

impl Resources {
    /// Read `cpu`, `memory` and `pods` from a resource list; other resources are not counted.
    pub fn from_list(list: &ResourceList) -> Resources {
        Resources {
            cpu_millis: list.get("cpu").map(Quantity::millis).unwrap_or(0),
            memory_bytes: list.get("memory").map(Quantity::units).unwrap_or(0),
            pods: list.get("pods").map(Quantity::units).unwrap_or(0),
        }
    }
}

fn check_resource_list(path: &str, list: &ResourceList, cx: &mut Check) -> CheckResult {
    for name in list.keys() {
        match name.as_str() {
            "cpu" | "memory" | "pods" => {}
            other => {
                if discovery::labels::validate_key(other).is_err() {
                    return Err(field_err(join(path, other), "invalid resource name"));
                }
                cx.warn(&join(path, other), "resource not managed by Berth (neither scheduled nor enforced)");
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// Deployment

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Deployment {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: DeploymentSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DeploymentStatus>,
}

fn default_one() -> i32 {
    1
}
fn default_progress_deadline() -> i32 {
    600
}
fn default_history() -> i32 {
    10
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeploymentSpec {
    #[serde(default = "default_one")]
    pub replicas: i32,
    pub selector: LabelSelector,
    pub template: PodTemplateSpec,
    #[serde(default)]
    pub strategy: DeploymentStrategy,
    #[serde(default)]
    pub min_ready_seconds: i32,
    #[serde(default = "default_progress_deadline")]
    pub progress_deadline_seconds: i32,
    #[serde(default = "default_history")]
    pub revision_history_limit: i32,
    #[serde(default, skip_serializing_if = "is_false")]
    pub paused: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeploymentStrategy {
    #[serde(rename = "type", default)]
    pub type_: StrategyType,
    /// Filled with 25%/25% for `RollingUpdate` when absent; must be absent for `Recreate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling_update: Option<RollingUpdate>,
}

impl Default for DeploymentStrategy {
    fn default() -> Self {
        DeploymentStrategy { type_: StrategyType::RollingUpdate, rolling_update: None }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StrategyType {
    #[default]
    RollingUpdate,
    Recreate,
}

fn default_quarter() -> IntOrString {
    IntOrString::String("25%".into())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RollingUpdate {
    #[serde(default = "default_quarter")]
    pub max_surge: IntOrString,
    #[serde(default = "default_quarter")]
    pub max_unavailable: IntOrString,
}

impl Default for RollingUpdate {
    fn default() -> Self {
        RollingUpdate { max_surge: default_quarter(), max_unavailable: default_quarter() }
    }
}

impl RollingUpdate {
    /// `(maxSurge, maxUnavailable)` as pod counts for `replicas` (surge rounds up, unavailable down; if both
    /// come out 0, unavailable becomes 1, as Kubernetes does).
    pub fn resolve(&self, replicas: i32) -> (i32, i32) {
        let surge = self.max_surge.scaled_value(replicas, true).unwrap_or(0).max(0);
        let mut unavailable = self.max_unavailable.scaled_value(replicas, false).unwrap_or(0).max(0);
        if surge == 0 && unavailable == 0 {
            unavailable = 1;
        }
        (surge, unavailable)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeploymentStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub replicas: i32,
    #[serde(default)]
    pub updated_replicas: i32,
    #[serde(default)]
    pub ready_replicas: i32,
    #[serde(default)]
    pub available_replicas: i32,
    #[serde(default)]
    pub unavailable_replicas: i32,
    /// `Available`, `Progressing` (reason `ProgressDeadlineExceeded` on failure), `ReplicaFailure`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collision_count: Option<i32>,
}

impl Deployment {
    fn normalize(&mut self) {
        let s = &mut self.spec.strategy;
        if s.type_ == StrategyType::RollingUpdate && s.rolling_update.is_none() {
            s.rolling_update = Some(RollingUpdate::default());
        }
        self.spec.template.spec.normalize();
    }

    pub(crate) fn check(&self, cx: &mut Check) -> CheckResult {
        let spec = &self.spec;
        if spec.replicas < 0 {
            return Err(field_err("spec.replicas", format!("must be >= 0 (got {})", spec.replicas)));
        }
        non_negative("spec.minReadySeconds", spec.min_ready_seconds)?;
        non_negative("spec.revisionHistoryLimit", spec.revision_history_limit)?;
        if spec.progress_deadline_seconds <= spec.min_ready_seconds {
            return Err(field_err("spec.progressDeadlineSeconds", "must be greater than minReadySeconds".to_string()));
        }
        spec.selector.check("spec.selector")?;
        if spec.selector.is_empty() {
            return Err(field_err("spec.selector", "must not be empty"));
        }
        spec.template.metadata.check("spec.template.metadata", cx)?;
        if !spec.selector.matches(&spec.template.metadata.labels) {
            return Err(field_err(
                "spec.template.metadata.labels",
                format!("do not match spec.selector ({})", spec.selector.to_selector()),
            ));
        }
        match (&spec.strategy.type_, &spec.strategy.rolling_update) {
            (StrategyType::Recreate, Some(_)) => {
                return Err(field_err("spec.strategy.rollingUpdate", "must not be set when strategy type is Recreate"));
            }
            (StrategyType::RollingUpdate, Some(ru)) => {
                let p = "spec.strategy.rollingUpdate";
                let surge = check_count_or_percent(&join(p, "maxSurge"), &ru.max_surge, false)?;
                let unavail = check_count_or_percent(&join(p, "maxUnavailable"), &ru.max_unavailable, true)?;
                if surge == 0 && unavail == 0 {
                    return Err(field_err(
                        join(p, "maxUnavailable"),
                        "may not be 0 when maxSurge is 0 (the rollout could never make progress)",
                    ));
                }
            }
            _ => {}
        }
        spec.template.spec.check("spec.template.spec", cx)?;
        if spec.template.spec.restart_policy != RestartPolicy::Always {
            return Err(field_err(
                "spec.template.spec.restartPolicy",
                "must be Always in a Deployment (its pods are replaced, not left finished)",
            ));
        }
        Ok(())
    }
}

/// Validate an int-or-percent; returns its magnitude (count or percent) for the both-zero check.
fn check_count_or_percent(path: &str, v: &IntOrString, max_100: bool) -> Result<i32, FieldError> {
    match v {
        IntOrString::Int(n) if *n < 0 => Err(field_err(path, format!("must be >= 0 (got {n})"))),
        IntOrString::Int(n) => Ok(*n),
        IntOrString::String(s) => {
            let pct = parse_percent(s).map_err(|m| field_err(path, m))?;
            if max_100 && pct > 100 {
                return Err(field_err(path, format!("{s:?} must not exceed 100%")));
            }
            Ok(pct)
        }
    }
}

fn non_negative(path: &str, v: i32) -> CheckResult {
    if v < 0 {
        Err(field_err(path, format!("must be >= 0 (got {v})")))
    } else {
        Ok(())
    }
}

fn at_least_one(path: &str, v: i32) -> CheckResult {
    if v < 1 {
        Err(field_err(path, format!("must be >= 1 (got {v})")))
    } else {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------------------
// Pod

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodTemplateSpec {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: PodSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Pod {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: PodSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PodStatus>,
}

fn default_grace() -> i64 {
    30
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodSpec {
    pub containers: Vec<Container>,
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    /// Set by the scheduler when the pod is bound (or by the user to pin it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    #[serde(default = "default_grace")]
    pub termination_grace_period_seconds: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    // Rejected: ignoring them would change what runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_containers: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral_containers: Option<Ignored>,
    // Accepted with a warning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automount_service_account_token: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_policy: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_config: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_network: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "hostPID")]
    pub host_pid: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "hostIPC")]
    pub host_ipc: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preemption_policy: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler_name: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secrets: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_service_links: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subdomain: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_aliases: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_class_name: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_process_namespace: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_gates: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_deadline_seconds: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overhead: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "setHostnameAsFQDN")]
    pub set_hostname_as_fqdn: Option<Ignored>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

impl PodSpec {
    /// The pod's total resource requests: the sum over its containers (a container with only a limit requests
    /// its limit, as in Kubernetes), counting one pod.
    pub fn total_requests(&self) -> Resources {
        let mut r = Resources { cpu_millis: 0, memory_bytes: 0, pods: 1 };
        for c in &self.containers {
            let req = c.resources.effective_requests();
            r.cpu_millis = r.cpu_millis.saturating_add(req.cpu_millis);
            r.memory_bytes = r.memory_bytes.saturating_add(req.memory_bytes);
        }
        r
    }

    fn normalize(&mut self) {
        for c in &mut self.containers {
            // A limit without a request requests the limit (Kubernetes defaulting), so the stored object says
            // what the scheduler will count.
            let limits = c.resources.limits.clone();
            for (k, v) in limits {
                c.resources.requests.entry(k).or_insert(v);
            }
        }
    }

    pub(crate) fn check(&self, p: &str, cx: &mut Check) -> CheckResult {
        cx.unsupported(p, "initContainers", &self.init_containers)?;
        cx.unsupported(p, "ephemeralContainers", &self.ephemeral_containers)?;
        let ignored: [(&str, &Option<Ignored>); 23] = [
            ("serviceAccountName", &self.service_account_name),
            ("serviceAccount", &self.service_account),
            ("automountServiceAccountToken", &self.automount_service_account_token),
            ("securityContext", &self.security_context),
            ("dnsPolicy", &self.dns_policy),
            ("dnsConfig", &self.dns_config),
            ("hostNetwork", &self.host_network),
            ("hostPID", &self.host_pid),
            ("hostIPC", &self.host_ipc),
            ("priorityClassName", &self.priority_class_name),
            ("priority", &self.priority),
            ("preemptionPolicy", &self.preemption_policy),
            ("schedulerName", &self.scheduler_name),
            ("imagePullSecrets", &self.image_pull_secrets),
            ("enableServiceLinks", &self.enable_service_links),
            ("hostname", &self.hostname),
            ("subdomain", &self.subdomain),
            ("hostAliases", &self.host_aliases),
            ("runtimeClassName", &self.runtime_class_name),
            ("shareProcessNamespace", &self.share_process_namespace),
            ("readinessGates", &self.readiness_gates),
            ("activeDeadlineSeconds", &self.active_deadline_seconds),
            ("os", &self.os),
        ];
        for (name, v) in ignored {
            cx.ignored(p, name, v);
        }
        cx.ignored(p, "overhead", &self.overhead);
        cx.ignored(p, "setHostnameAsFQDN", &self.set_hostname_as_fqdn);

        if self.containers.is_empty() {
            return Err(field_err(join(p, "containers"), "at least one container is required"));
        }
        if self.termination_grace_period_seconds < 0 {
            return Err(field_err(join(p, "terminationGracePeriodSeconds"), "must be >= 0"));
        }
        if let Some(n) = &self.node_name {
            validate_dns_subdomain(n).map_err(|m| field_err(join(p, "nodeName"), m))?;
        }
        check_label_map(&join(p, "nodeSelector"), &self.node_selector)?;

        let mut volume_names = BTreeSet::new();
        for (i, v) in self.volumes.iter().enumerate() {
            let vp = index(p, "volumes", i);
            v.check(&vp)?;
            if !volume_names.insert(v.name.as_str()) {
                return Err(field_err(join(&vp, "name"), format!("duplicate volume name {:?}", v.name)));
            }
        }

        let mut names = BTreeSet::new();
        let mut host_ports = std::collections::HashSet::new();
        for (i, c) in self.containers.iter().enumerate() {
            let cp = index(p, "containers", i);
            c.check(&cp, &volume_names, cx)?;
            if !names.insert(c.name.as_str()) {
                return Err(field_err(join(&cp, "name"), format!("duplicate container name {:?}", c.name)));
            }
            for (j, port) in c.ports.iter().enumerate() {
                if !host_ports.insert((port.container_port, port.protocol)) {
                    return Err(field_err(
                        join(&index(&cp, "ports", j), "containerPort"),
                        format!("duplicate port {}/{:?} in the pod", port.container_port, port.protocol),
                    ));
                }
            }
        }
        if let Some(a) = &self.affinity {
            a.check(&join(p, "affinity"))?;
        }
        for (i, t) in self.tolerations.iter().enumerate() {
            t.check(&index(p, "tolerations", i))?;
        }
        for (i, t) in self.topology_spread_constraints.iter().enumerate() {
            t.check(&index(p, "topologySpreadConstraints", i), cx)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------------------
// Containers

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Container {
    pub name: String,
    /// Required by the docker runtime; the process runtime runs `command` instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_from: Vec<EnvFromSource>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
    #[serde(default, skip_serializing_if = "ResourceRequirements::is_empty")]
    pub resources: ResourceRequirements,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Probe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Probe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_probe: Option<Probe>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_message_path: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_message_policy: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin_once: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize_policy: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_devices: Option<Ignored>,
}

impl Container {
    /// The container port with this name, if any.
    pub fn port_by_name(&self, name: &str) -> Option<&ContainerPort> {
        self.ports.iter().find(|p| p.name.as_deref() == Some(name))
    }

    fn check(&self, p: &str, volumes: &BTreeSet<&str>, cx: &mut Check) -> CheckResult {
        validate_dns_label(&self.name).map_err(|m| field_err(join(p, "name"), m))?;
        if self.image.is_none() && self.command.is_empty() {
            return Err(field_err(p, "needs an image or a command"));
        }
        if let Some(img) = &self.image {
            if img.trim().is_empty() || img.chars().any(char::is_whitespace) {
                return Err(field_err(join(p, "image"), format!("invalid image reference {img:?}")));
            }
        }
        for (name, v) in [
            ("imagePullPolicy", &self.image_pull_policy),
            ("securityContext", &self.security_context),
            ("terminationMessagePath", &self.termination_message_path),
            ("terminationMessagePolicy", &self.termination_message_policy),
            ("lifecycle", &self.lifecycle),
            ("stdin", &self.stdin),
            ("stdinOnce", &self.stdin_once),
            ("tty", &self.tty),
            ("resizePolicy", &self.resize_policy),
            ("volumeDevices", &self.volume_devices),
        ] {
            cx.ignored(p, name, v);
        }
        let mut env_names = BTreeSet::new();
        for (i, e) in self.env.iter().enumerate() {
            let ep = index(p, "env", i);
            e.check(&ep, cx)?;
            if !env_names.insert(e.name.as_str()) {
                cx.warn(&join(&ep, "name"), format!("duplicate variable {:?}: the last one wins", e.name));
            }
        }
        for (i, e) in self.env_from.iter().enumerate() {
            e.check(&index(p, "envFrom", i))?;
        }
        let mut port_names = BTreeSet::new();
        for (i, port) in self.ports.iter().enumerate() {
            let pp = index(p, "ports", i);
            check_port(&join(&pp, "containerPort"), port.container_port)?;
            if let Some(n) = &port.name {
                validate_port_name(n).map_err(|m| field_err(join(&pp, "name"), m))?;
                if !port_names.insert(n.as_str()) {
                    return Err(field_err(join(&pp, "name"), format!("duplicate port name {n:?}")));
                }
            }
            cx.ignored(&pp, "hostPort", &port.host_port);
            cx.ignored(&pp, "hostIP", &port.host_ip);
        }
        self.resources.check(&join(p, "resources"), cx)?;
        for (name, probe) in [
            ("livenessProbe", &self.liveness_probe),
            ("readinessProbe", &self.readiness_probe),
            ("startupProbe", &self.startup_probe),
        ] {
            if let Some(pr) = probe {
                let pp = join(p, name);
                pr.check(&pp, self, cx)?;
                if name != "readinessProbe" && pr.success_threshold != 1 {
                    return Err(field_err(join(&pp, "successThreshold"), "must be 1 for liveness and startup probes"));
                }
            }
        }
        let mut mount_paths = BTreeSet::new();
        for (i, m) in self.volume_mounts.iter().enumerate() {
            let mp = index(p, "volumeMounts", i);
            if !volumes.contains(m.name.as_str()) {
                return Err(field_err(join(&mp, "name"), format!("no volume named {:?} in the pod", m.name)));
            }
            if !m.mount_path.starts_with('/') {
                return Err(field_err(join(&mp, "mountPath"), "must be an absolute path"));
            }
            if !mount_paths.insert(m.mount_path.as_str()) {
                return Err(field_err(join(&mp, "mountPath"), format!("duplicate mount path {:?}", m.mount_path)));
            }
            if let Some(sp) = &m.sub_path {
                if sp.starts_with('/') || sp.split('/').any(|s| s == "..") {
                    return Err(field_err(join(&mp, "subPath"), "must be a relative path without '..'"));
                }
            }
            cx.ignored(&mp, "mountPropagation", &m.mount_propagation);
        }
        Ok(())
    }
}

pub(crate) fn check_port(path: &str, port: i32) -> CheckResult {
    if !(1..=65535).contains(&port) {
        return Err(field_err(path, format!("must be between 1 and 65535 (got {port})")));
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvVar {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<EnvVarSource>,
}

impl EnvVar {
    fn check(&self, p: &str, cx: &mut Check) -> CheckResult {
        let n = &self.name;
        if n.is_empty() || n.contains('=') || n.contains('\0') {
            return Err(field_err(join(p, "name"), format!("invalid environment variable name {n:?}")));
        }
        match (&self.value, &self.value_from) {
            (Some(_), Some(_)) => Err(field_err(p, "value and valueFrom are mutually exclusive")),
            (_, Some(src)) => src.check(&join(p, "valueFrom"), cx),
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvVarSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<KeySelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<KeySelector>,
    /// Supported paths: `metadata.name`, `metadata.namespace`, `metadata.uid`, `metadata.labels['k']`,
    /// `metadata.annotations['k']`, `spec.nodeName`, `status.podIP`, `status.hostIP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field_ref: Option<ObjectFieldSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_field_ref: Option<Ignored>,
}

impl EnvVarSource {
    fn check(&self, p: &str, cx: &mut Check) -> CheckResult {
        let n = [self.config_map_key_ref.is_some(), self.secret_key_ref.is_some(), self.field_ref.is_some()]
            .iter()
            .filter(|b| **b)
            .count()
            + usize::from(self.resource_field_ref.is_some());
        if n != 1 {
            return Err(field_err(p, "exactly one of configMapKeyRef, secretKeyRef, fieldRef must be set"));
        }
        cx.ignored(p, "resourceFieldRef", &self.resource_field_ref);
        if let Some(k) = &self.config_map_key_ref {
            k.check(&join(p, "configMapKeyRef"))?;
        }
        if let Some(k) = &self.secret_key_ref {
            k.check(&join(p, "secretKeyRef"))?;
        }
        if let Some(f) = &self.field_ref {
            let fp = &f.field_path;
            let ok = matches!(
                fp.as_str(),
                "metadata.name"
                    | "metadata.namespace"
                    | "metadata.uid"
                    | "spec.nodeName"
                    | "spec.serviceAccountName"
                    | "status.podIP"
                    | "status.podIPs"
                    | "status.hostIP"
                    | "status.hostIPs"
            ) || ((fp.starts_with("metadata.labels['") || fp.starts_with("metadata.annotations['"))
                && fp.ends_with("']"));
            if !ok {
                return Err(field_err(
                    join(&join(p, "fieldRef"), "fieldPath"),
                    format!("unsupported field path {fp:?}"),
                ));
            }
            cx.ignored(&join(p, "fieldRef"), "apiVersion", &f.api_version);
        }
        Ok(())
    }
}

/// A key of a ConfigMap or Secret in the pod's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeySelector {
    pub name: String,
    pub key: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub optional: bool,
}

impl KeySelector {
    fn check(&self, p: &str) -> CheckResult {
        validate_dns_subdomain(&self.name).map_err(|m| field_err(join(p, "name"), m))?;
        check_data_key(&join(p, "key"), &self.key)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectFieldSelector {
    pub field_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<Ignored>,
}

impl Eq for ObjectFieldSelector {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvFromSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<LocalObjectReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectReference>,
}

impl EnvFromSource {
    fn check(&self, p: &str) -> CheckResult {
        match (&self.config_map_ref, &self.secret_ref) {
            (Some(r), None) => validate_dns_subdomain(&r.name).map_err(|m| field_err(join(p, "configMapRef.name"), m)),
            (None, Some(r)) => validate_dns_subdomain(&r.name).map_err(|m| field_err(join(p, "secretRef.name"), m)),
            _ => Err(field_err(p, "exactly one of configMapRef, secretRef must be set")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalObjectReference {
    pub name: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub optional: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub container_port: i32,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "hostIP")]
    pub host_ip: Option<Ignored>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceRequirements {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: ResourceList,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: ResourceList,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claims: Option<Ignored>,
}

impl ResourceRequirements {
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty() && self.limits.is_empty() && self.claims.is_none()
    }

    /// Requests, where a resource with only a limit requests its limit.
    pub fn effective_requests(&self) -> Resources {
        let pick = |k: &str| self.requests.get(k).or_else(|| self.limits.get(k));
        Resources {
            cpu_millis: pick("cpu").map(Quantity::millis).unwrap_or(0),
            memory_bytes: pick("memory").map(Quantity::units).unwrap_or(0),
            pods: 0,
        }
    }

    /// Limits (0 = unlimited).
    pub fn limits(&self) -> Resources {
        Resources {
            cpu_millis: self.limits.get("cpu").map(Quantity::millis).unwrap_or(0),
            memory_bytes: self.limits.get("memory").map(Quantity::units).unwrap_or(0),
            pods: 0,
        }
    }

    fn check(&self, p: &str, cx: &mut Check) -> CheckResult {
        for (what, list) in [("requests", &self.requests), ("limits", &self.limits)] {
            for name in list.keys() {
                let rp = join(&join(p, what), name);
                match name.as_str() {
                    "cpu" | "memory" => {}
                    "pods" => return Err(field_err(rp, "not a container resource")),
                    other => {
                        if discovery::labels::validate_key(other).is_err() {
                            return Err(field_err(rp, "invalid resource name"));
                        }
                        cx.warn(&rp, "resource not managed by Berth (neither scheduled nor enforced)");
                    }
                }
            }
        }
        for (name, limit) in &self.limits {
            if let Some(req) = self.requests.get(name) {
                if req.value_cmp(limit) == std::cmp::Ordering::Greater {
                    return Err(field_err(
                        join(&join(p, "requests"), name),
                        format!("request {req} must not exceed limit {limit}"),
                    ));
                }
            }
        }
        cx.ignored(p, "claims", &self.claims);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------------------
// Probes

fn default_period() -> i32 {
    10
}
fn default_failure() -> i32 {
    3
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Probe {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGetAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpSocketAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecAction>,
    #[serde(default)]
    pub initial_delay_seconds: i32,
    #[serde(default = "default_period")]
    pub period_seconds: i32,
    #[serde(default = "default_one")]
    pub timeout_seconds: i32,
    #[serde(default = "default_one")]
    pub success_threshold: i32,
    #[serde(default = "default_failure")]
    pub failure_threshold: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_grace_period_seconds: Option<Ignored>,
}

/// What a probe does, borrowed from a [`Probe`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ProbeAction<'a> {
    HttpGet(&'a HttpGetAction),
    TcpSocket(&'a TcpSocketAction),
    Exec(&'a ExecAction),
}

impl Probe {
    /// The probe's single handler (validation guarantees exactly one).
    pub fn action(&self) -> Option<ProbeAction<'_>> {
        if let Some(h) = &self.http_get {
            Some(ProbeAction::HttpGet(h))
        } else if let Some(t) = &self.tcp_socket {
            Some(ProbeAction::TcpSocket(t))
        } else {
            self.exec.as_ref().map(ProbeAction::Exec)
        }
    }

    fn check(&self, p: &str, container: &Container, cx: &mut Check) -> CheckResult {
        let n = usize::from(self.http_get.is_some())
            + usize::from(self.tcp_socket.is_some())
            + usize::from(self.exec.is_some());
        if n != 1 {
            return Err(field_err(p, "exactly one of httpGet, tcpSocket, exec must be set"));
        }
        non_negative(&join(p, "initialDelaySeconds"), self.initial_delay_seconds)?;
        at_least_one(&join(p, "periodSeconds"), self.period_seconds)?;
        at_least_one(&join(p, "timeoutSeconds"), self.timeout_seconds)?;
        at_least_one(&join(p, "successThreshold"), self.success_threshold)?;
        at_least_one(&join(p, "failureThreshold"), self.failure_threshold)?;
        cx.ignored(p, "terminationGracePeriodSeconds", &self.termination_grace_period_seconds);
        let check_target = |path: String, port: &IntOrString| -> CheckResult {
            match port {
                IntOrString::Int(n) => check_port(&path, *n),
                IntOrString::String(name) => {
                    validate_port_name(name).map_err(|m| field_err(&path, m))?;
                    if container.port_by_name(name).is_none() {
                        return Err(field_err(path, format!("no container port named {name:?}")));
                    }
                    Ok(())
                }
            }
        };
        if let Some(h) = &self.http_get {
            let hp = join(p, "httpGet");
            check_target(join(&hp, "port"), &h.port)?;
            if !h.path.starts_with('/') {
                return Err(field_err(join(&hp, "path"), "must start with '/'"));
            }
            for (i, hd) in h.http_headers.iter().enumerate() {
                if !is_http_token(&hd.name) {
                    return Err(field_err(join(&index(&hp, "httpHeaders", i), "name"), "invalid header name"));
                }
            }
        }
        if let Some(t) = &self.tcp_socket {
            check_target(join(&join(p, "tcpSocket"), "port"), &t.port)?;
        }
        if let Some(e) = &self.exec {
            if e.command.is_empty() {
                return Err(field_err(join(&join(p, "exec"), "command"), "must not be empty"));
            }
        }
        Ok(())
    }
}

pub(crate) fn is_http_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn default_root() -> String {
    "/".into()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpGetAction {
    #[serde(default = "default_root")]
    pub path: String,
    /// A number, or the name of one of the container's ports.
    pub port: IntOrString,
    /// Defaults to the pod's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default)]
    pub scheme: Scheme,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_headers: Vec<HttpHeader>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Scheme {
    #[default]
    Http,
    Https,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpHeader {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpSocketAction {
    pub port: IntOrString,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecAction {
    pub command: Vec<String>,
}

// ---------------------------------------------------------------------------------------------------------
// Volumes

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Volume {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapVolumeSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretVolumeSource>,
    /// A scratch directory that lives as long as the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_dir: Option<EmptyDirVolumeSource>,
}

impl Volume {
    fn check(&self, p: &str) -> CheckResult {
        validate_dns_label(&self.name).map_err(|m| field_err(join(p, "name"), m))?;
        let n = usize::from(self.config_map.is_some())
            + usize::from(self.secret.is_some())
            + usize::from(self.empty_dir.is_some());
        if n != 1 {
            return Err(field_err(p, "exactly one of configMap, secret, emptyDir must be set"));
        }
        let items = |path: String, items: &[KeyToPath]| -> CheckResult {
            for (i, it) in items.iter().enumerate() {
                let ip = index(&path, "items", i);
                check_data_key(&join(&ip, "key"), &it.key)?;
                if it.path.is_empty() || it.path.starts_with('/') || it.path.split('/').any(|s| s == "..") {
                    return Err(field_err(join(&ip, "path"), "must be a relative path without '..'"));
                }
            }
            Ok(())
        };
        if let Some(c) = &self.config_map {
            let cp = join(p, "configMap");
            validate_dns_subdomain(&c.name).map_err(|m| field_err(join(&cp, "name"), m))?;
            items(cp, &c.items)?;
        }
        if let Some(s) = &self.secret {
            let sp = join(p, "secret");
            validate_dns_subdomain(&s.secret_name).map_err(|m| field_err(join(&sp, "secretName"), m))?;
            items(sp, &s.items)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigMapVolumeSource {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<KeyToPath>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_mode: Option<i32>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub optional: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretVolumeSource {
    pub secret_name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<KeyToPath>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_mode: Option<i32>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub optional: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyToPath {
    pub key: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<i32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EmptyDirVolumeSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub medium: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_limit: Option<Quantity>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VolumeMount {
    pub name: String,
    pub mount_path: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_propagation: Option<Ignored>,
}

// ---------------------------------------------------------------------------------------------------------
// Affinity, tolerations, spread

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Affinity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_affinity: Option<NodeAffinity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_affinity: Option<PodAffinity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_anti_affinity: Option<PodAffinity>,
}

impl Affinity {
    fn check(&self, p: &str) -> CheckResult {
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
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeAffinity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required_during_scheduling_ignored_during_execution: Option<NodeSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preferred_during_scheduling_ignored_during_execution: Vec<PreferredSchedulingTerm>,
}

/// A node matches when it matches ANY of the terms.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSelector {
    pub node_selector_terms: Vec<NodeSelectorTerm>,
}

/// A term matches when ALL its requirements match. `matchFields` supports only `metadata.name`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
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
#[serde(rename_all = "camelCase", deny_unknown_fields)]
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
    Gt,
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
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PreferredSchedulingTerm {
    pub weight: i32,
    pub preference: NodeSelectorTerm,
}

/// Pod affinity or anti-affinity (the same shape serves both).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodAffinity {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_during_scheduling_ignored_during_execution: Vec<PodAffinityTerm>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preferred_during_scheduling_ignored_during_execution: Vec<WeightedPodAffinityTerm>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
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
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WeightedPodAffinityTerm {
    pub weight: i32,
    pub pod_affinity_term: PodAffinityTerm,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
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

    fn check(&self, p: &str) -> CheckResult {
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
#[serde(rename_all = "camelCase", deny_unknown_fields)]
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
    fn check(&self, p: &str, cx: &mut Check) -> CheckResult {
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

// ---------------------------------------------------------------------------------------------------------
// Pod status

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodStatus {
    #[serde(default)]
    pub phase: PodPhase,
    /// `PodScheduled` (reason `Unschedulable` with the scheduler's summary as message), `Ready`,
    /// `ContainersReady`, `Initialized`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "hostIP")]
    pub host_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "podIP")]
    pub pod_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub container_statuses: Vec<ContainerStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos_class: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PodPhase {
    #[default]
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerStatus {
    pub name: String,
    #[serde(default)]
    pub ready: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<bool>,
    #[serde(default)]
    pub restart_count: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ContainerState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_state: Option<ContainerState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "imageID")]
    pub image_id: Option<String>,
    /// `process://PID` or `docker://ID`.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "containerID")]
    pub container_id: Option<String>,
    /// Berth extension: where each container port is reachable on the node (the process runtime allocates a
    /// port and passes it in `PORT`; docker publishes it on 127.0.0.1). Endpoints use `hostPort`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub container_port: i32,
    pub host_port: i32,
    #[serde(default)]
    pub protocol: Protocol,
}

/// Exactly one of the three is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<ContainerStateWaiting>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<ContainerStateRunning>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminated: Option<ContainerStateTerminated>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerStateWaiting {
    /// `ContainerCreating`, `CrashLoopBackOff`, `ErrImagePull`, `CreateContainerError`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerStateRunning {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerStateTerminated {
    pub exit_code: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// `Completed`, `Error`, `OOMKilled`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "containerID")]
    pub container_id: Option<String>,
}

impl Pod {
    /// `Ready` condition is `True`.
    pub fn is_ready(&self) -> bool {
        self.status.as_ref().is_some_and(|s| condition_is_true(&s.conditions, "Ready"))
    }

    pub fn phase(&self) -> PodPhase {
        self.status.as_ref().map(|s| s.phase).unwrap_or_default()
    }

    /// Being deleted (`metadata.deletionTimestamp` is set).
    pub fn is_terminating(&self) -> bool {
        self.metadata.deletion_timestamp.is_some()
    }

    fn normalize(&mut self) {
        self.spec.normalize();
    }

    pub(crate) fn check(&self, cx: &mut Check) -> CheckResult {
        self.spec.check("spec", cx)
    }
}

// ---------------------------------------------------------------------------------------------------------
// ConfigMap and Secret

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigMap {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
    /// Base64-encoded values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub binary_data: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub immutable: Option<bool>,
}

pub(crate) fn check_data_key(path: &str, key: &str) -> CheckResult {
    let ok = !key.is_empty()
        && key.len() <= 253
        && key != "."
        && key != ".."
        && !key.starts_with("..")
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(field_err(path, format!("invalid key {key:?} (use alphanumerics, '-', '_' or '.')")))
    }
}

/// Line-wrapped base64 (as `base64` prints it) is accepted, as Kubernetes accepts it.
fn strip_whitespace(value: &str) -> String {
    value.chars().filter(|c| !c.is_ascii_whitespace()).collect()
}

fn check_base64(path: &str, value: &str) -> CheckResult {
    use base64::Engine;
    // The message never includes the value: it may be a secret.
    base64::engine::general_purpose::STANDARD
        .decode(strip_whitespace(value))
        .map(|_| ())
        .map_err(|_| field_err(path, "value is not valid base64"))
}

impl ConfigMap {
    pub(crate) fn check(&self, _cx: &mut Check) -> CheckResult {
        for k in self.data.keys() {
            check_data_key(&format!("data.{k}"), k)?;
        }
        for (k, v) in &self.binary_data {
            let p = format!("binaryData.{k}");
            check_data_key(&p, k)?;
            check_base64(&p, v)?;
            if self.data.contains_key(k) {
                return Err(field_err(p, "key also present in data"));
            }
        }
        Ok(())
    }
}

fn default_secret_type() -> String {
    "Opaque".into()
}

/// A Secret. `stringData` is folded into `data` (base64) when the object is normalized, so a stored Secret
/// only has `data`. `Debug` never prints values.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Secret {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(rename = "type", default = "default_secret_type")]
    pub type_: String,
    /// Base64-encoded values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub string_data: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub immutable: Option<bool>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("metadata", &self.metadata)
            .field("type", &self.type_)
            .field("keys", &self.data.keys().chain(self.string_data.keys()).collect::<Vec<_>>())
            .finish()
    }
}

impl Secret {
    /// The decoded value of a key (after normalization every key is in `data`).
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        use base64::Engine;
        if let Some(v) = self.string_data.get(key) {
            return Some(v.as_bytes().to_vec());
        }
        base64::engine::general_purpose::STANDARD.decode(strip_whitespace(self.data.get(key)?)).ok()
    }

    fn normalize(&mut self) {
        use base64::Engine;
        for (k, v) in std::mem::take(&mut self.string_data) {
            self.data.insert(k, base64::engine::general_purpose::STANDARD.encode(v.as_bytes()));
        }
    }

    pub(crate) fn check(&self, _cx: &mut Check) -> CheckResult {
        for (k, v) in &self.data {
            let p = format!("data.{k}");
            check_data_key(&p, k)?;
            check_base64(&p, v)?;
        }
        for k in self.string_data.keys() {
            check_data_key(&format!("stringData.{k}"), k)?;
        }
        if self.type_.is_empty() {
            return Err(field_err("type", "must not be empty"));
        }
        if self.type_ == "kubernetes.io/tls" {
            for key in ["tls.crt", "tls.key"] {
                if !self.data.contains_key(key) && !self.string_data.contains_key(key) {
                    return Err(field_err(format!("data.{key}"), "required for type kubernetes.io/tls"));
                }
            }
        }
        Ok(())
    }
}

// Normalization entry points for manifest.rs (private helpers above stay private).
pub(crate) fn normalize_deployment(d: &mut Deployment) {
    d.normalize()
}
pub(crate) fn normalize_pod(p: &mut Pod) {
    p.normalize()
}
pub(crate) fn normalize_secret(s: &mut Secret) {
    s.normalize()
}
