//! A pod's [`Container`]: what runs, its environment, ports, resources and probes.

use super::config::check_data_key;
use super::meta::*;
use super::pod::VolumeMount;
use super::resources::ResourceRequirements;
use discovery::Protocol;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
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

    /// The first declared container port, if any (the one the agent tells a process to listen on).
    pub fn first_port(&self) -> Option<u16> {
        self.ports.first().and_then(|p| u16::try_from(p.container_port).ok()).filter(|p| *p != 0)
    }

    /// A probe's port as a port number: a number, or the name of one of this container's ports. A string of
    /// digits reads as its number.
    pub fn resolve_port(&self, port: &IntOrString) -> Option<u16> {
        let by_number = |n: i32| u16::try_from(n).ok();
        match port {
            IntOrString::Int(n) => by_number(*n),
            IntOrString::String(s) => match s.parse::<u16>() {
                Ok(n) => Some(n),
                Err(_) => self.port_by_name(s).and_then(|p| by_number(p.container_port)),
            },
        }
    }

    pub(crate) fn check(&self, p: &str, volumes: &BTreeSet<&str>, cx: &mut Check) -> CheckResult {
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
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
#[serde(rename_all = "camelCase")]
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
#[serde(rename_all = "camelCase")]
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
#[serde(rename_all = "camelCase")]
pub struct ObjectFieldSelector {
    pub field_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<Ignored>,
}

impl Eq for ObjectFieldSelector {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
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
#[serde(rename_all = "camelCase")]
pub struct LocalObjectReference {
    pub name: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub optional: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
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

// ---------------------------------------------------------------------------------------------------------
// Probes

fn default_period() -> i32 {
    10
}
fn default_failure() -> i32 {
    3
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
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

fn default_root() -> String {
    "/".into()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
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
#[serde(rename_all = "camelCase")]
pub struct HttpHeader {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpSocketAction {
    pub port: IntOrString,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecAction {
    pub command: Vec<String>,
}
