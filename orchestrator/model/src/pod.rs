//! The [`Pod`] kind and the [`PodSpec`] a Deployment's template shares: containers (see `container.rs`),
//! volumes, placement constraints (see `scheduling.rs`), and the status the agent reports.

use super::config::check_data_key;
use super::container::Container;
use super::meta::*;
use super::quantity::Quantity;
use super::resources::Resources;
use super::scheduling::{Affinity, Toleration, TopologySpreadConstraint};
use discovery::Protocol;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplateSpec {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: PodSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pod {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
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
#[serde(rename_all = "camelCase")]
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

    /// `terminationGracePeriodSeconds` (a negative value reads as zero).
    pub fn termination_grace_period(&self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::try_from(self.termination_grace_period_seconds).unwrap_or(0))
    }

    /// Every ConfigMap and Secret the pod names: all containers' `env` and `envFrom` sources and every volume,
    /// mounted or not. A Deployment's config hash covers these.
    pub fn config_references(&self) -> ConfigReferences {
        ConfigReferences::of(&self.containers, self.volumes.iter())
    }

    /// The ConfigMaps and Secrets one container reads when it starts: its `env` and `envFrom` sources and the
    /// volumes it mounts. The agent fetches these.
    pub fn container_config_references(&self, container: &Container) -> ConfigReferences {
        let mounted = container.volume_mounts.iter().filter_map(|m| self.volumes.iter().find(|v| v.name == m.name));
        ConfigReferences::of(std::slice::from_ref(container), mounted)
    }

    pub(crate) fn normalize(&mut self) {
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

/// ConfigMaps and Secrets referenced by name (see [`PodSpec::config_references`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigReferences {
    pub config_maps: BTreeSet<String>,
    pub secrets: BTreeSet<String>,
}

impl ConfigReferences {
    /// The one walk over references: the containers' environments, then the given volumes.
    fn of<'a>(containers: &[Container], volumes: impl Iterator<Item = &'a Volume>) -> ConfigReferences {
        let mut refs = ConfigReferences::default();
        for c in containers {
            for source in c.env.iter().filter_map(|e| e.value_from.as_ref()) {
                if let Some(r) = &source.config_map_key_ref {
                    refs.config_maps.insert(r.name.clone());
                }
                if let Some(r) = &source.secret_key_ref {
                    refs.secrets.insert(r.name.clone());
                }
            }
            for source in &c.env_from {
                if let Some(r) = &source.config_map_ref {
                    refs.config_maps.insert(r.name.clone());
                }
                if let Some(r) = &source.secret_ref {
                    refs.secrets.insert(r.name.clone());
                }
            }
        }
        for v in volumes {
            if let Some(c) = &v.config_map {
                refs.config_maps.insert(c.name.clone());
            }
            if let Some(s) = &v.secret {
                refs.secrets.insert(s.secret_name.clone());
            }
        }
        refs
    }
}

// ---------------------------------------------------------------------------------------------------------
// Volumes

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
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
#[serde(rename_all = "camelCase")]
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
#[serde(rename_all = "camelCase")]
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
#[serde(rename_all = "camelCase")]
pub struct KeyToPath {
    pub key: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<i32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EmptyDirVolumeSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub medium: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_limit: Option<Quantity>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
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
// Pod status

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
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
#[serde(rename_all = "camelCase")]
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
#[serde(rename_all = "camelCase")]
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
#[serde(rename_all = "camelCase")]
pub struct ContainerState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<ContainerStateWaiting>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<ContainerStateRunning>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminated: Option<ContainerStateTerminated>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStateWaiting {
    /// `ContainerCreating`, `CrashLoopBackOff`, `ErrImagePull`, `CreateContainerError`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStateRunning {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
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

    /// The restart count `status` last recorded for `container` (0 when none).
    pub fn recorded_restart_count(&self, container: &str) -> u32 {
        let statuses = self.status.iter().flat_map(|s| &s.container_statuses);
        let count = statuses.filter(|c| c.name == container).map(|c| c.restart_count).next();
        count.and_then(|n| u32::try_from(n).ok()).unwrap_or(0)
    }

    pub(crate) fn normalize(&mut self) {
        self.spec.normalize();
    }

    pub(crate) fn check(&self, cx: &mut Check) -> CheckResult {
        self.spec.check("spec", cx)
    }
}
