//! The [`Node`] kind: a machine that runs pods, its taints, and the capacity and health its agent reports.

use super::meta::*;
use super::resources::{ResourceList, Resources};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: NodeSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<NodeStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
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
#[serde(rename_all = "camelCase")]
pub struct Taint {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    pub effect: TaintEffect,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_added: Option<Time>,
}

/// How a taint repels pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaintEffect {
    /// Pods that do not tolerate it are not scheduled onto the node.
    NoSchedule,
    /// The scheduler tries to avoid the node; a scoring input only.
    PreferNoSchedule,
    /// Like `NoSchedule` for the scheduler (eviction of running pods is the node controller's business).
    NoExecute,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
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
#[serde(rename_all = "camelCase")]
pub struct NodeAddress {
    /// `InternalIP`, `ExternalIP`, `Hostname`.
    #[serde(rename = "type")]
    pub type_: String,
    pub address: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
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
