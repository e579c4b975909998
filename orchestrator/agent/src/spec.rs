//! The agent's reading of a stored Pod: decoding it (leniently) into the model's own [`Pod`], and resolving a
//! container's environment and volume files from already-fetched ConfigMaps and Secrets. It does no IO.
//!
//! The API server validated the pod with the same model types before it was stored; decoding ignores fields
//! this version does not know, so a field added later never breaks a running agent.

pub use model::Limits;
use model::{Container, KeySelector, KeyToPath, ObjectMeta, Pod};
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

/// A stored pod that does not decode into the model's [`Pod`] (the message names the field).
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("pod object: {0}")]
pub struct DecodeError(String);

/// Decode a stored pod, leniently (fields unknown to this version are ignored); a pod without a namespace is in
/// `default`.
pub fn decode_pod(v: &Value) -> Result<Pod, DecodeError> {
    let mut pod: Pod = serde_path_to_error::deserialize(v).map_err(|e| match e.path().to_string().as_str() {
        "." => DecodeError(e.inner().to_string()),
        path => DecodeError(format!("{path}: {}", e.inner())),
    })?;
    in_default_namespace(&mut pod.metadata);
    Ok(pod)
}

/// A pod stored without a namespace is in `default`.
fn in_default_namespace(meta: &mut ObjectMeta) {
    if meta.namespace.is_empty() {
        meta.namespace = "default".to_string();
    }
}

/// What the agent must know of a stored pod to decide whether it keeps running here: its key, uid, node and
/// whether it is terminating. Read from the metadata and `spec.nodeName` alone, so keeping or stopping a pod
/// never depends on understanding the rest of a version a newer server wrote (a pod that does not decode
/// is not started, see [`decode_pod`], but one already running is stopped only when deleted or moved).
pub struct Identity {
    pub key: (String, String),
    pub uid: String,
    pub node: Option<String>,
    pub terminating: bool,
}

/// The [`Identity`] of a stored pod; `None` when even its metadata does not decode.
pub fn identity(p: &Value) -> Option<Identity> {
    let mut meta = ObjectMeta::deserialize(p.get("metadata")?).ok()?;
    in_default_namespace(&mut meta);
    Some(Identity {
        key: (meta.namespace, meta.name),
        uid: meta.uid.unwrap_or_default(),
        node: p.pointer("/spec/nodeName").and_then(Value::as_str).map(str::to_string),
        terminating: meta.deletion_timestamp.is_some(),
    })
}

/// The pod's `metadata.uid` (empty when absent).
pub fn pod_uid(pod: &Pod) -> &str {
    pod.metadata.uid.as_deref().unwrap_or("")
}

/// ConfigMaps and Secrets the agent fetched for one pod: name -> (key -> value). Secret values are decoded.
#[derive(Debug, Clone, Default)]
pub struct EnvSources {
    pub config_maps: HashMap<String, BTreeMap<String, String>>,
    pub secrets: HashMap<String, BTreeMap<String, String>>,
}

/// Why a container's environment cannot be built (Kubernetes: `CreateContainerConfigError`). Never contains
/// a secret value.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum EnvError {
    #[error("configmap {0:?} not found")]
    ConfigMapNotFound(String),
    #[error("secret {0:?} not found")]
    SecretNotFound(String),
    #[error("key {key:?} not found in {source_kind} {name:?}")]
    KeyNotFound { source_kind: &'static str, name: String, key: String },
    #[error("env {0}: unsupported fieldRef {1:?}")]
    UnsupportedField(String, String),
    #[error("volumeMounts: no volume named {0:?} in the pod")]
    NoSuchVolume(String),
    #[error("{path}: {message}")]
    InvalidVolume { path: String, message: String },
}

/// Facts the downward API (`fieldRef`) may expose.
#[derive(Debug, Clone, Default)]
pub struct PodFacts {
    pub node_name: String,
    pub host_ip: String,
}

/// Build a container's environment in Kubernetes order: `envFrom` sources first, then `env` (later wins).
pub fn resolve_env(
    pod: &Pod,
    c: &Container,
    sources: &EnvSources,
    facts: &PodFacts,
) -> Result<Vec<(String, String)>, EnvError> {
    let mut out: Vec<(String, String)> = Vec::new();
    let set = |out: &mut Vec<(String, String)>, k: String, v: String| {
        if let Some(slot) = out.iter_mut().find(|(n, _)| *n == k) {
            slot.1 = v;
        } else {
            out.push((k, v));
        }
    };
    for ef in &c.env_from {
        let prefix = ef.prefix.clone().unwrap_or_default();
        if let Some(r) = &ef.config_map_ref {
            match sources.config_maps.get(&r.name) {
                Some(m) => m.iter().for_each(|(k, v)| set(&mut out, format!("{prefix}{k}"), v.clone())),
                None if r.optional => {}
                None => return Err(EnvError::ConfigMapNotFound(r.name.clone())),
            }
        }
        if let Some(r) = &ef.secret_ref {
            match sources.secrets.get(&r.name) {
                Some(m) => m.iter().for_each(|(k, v)| set(&mut out, format!("{prefix}{k}"), v.clone())),
                None if r.optional => {}
                None => return Err(EnvError::SecretNotFound(r.name.clone())),
            }
        }
    }
    for e in &c.env {
        let value = if let Some(v) = &e.value {
            Some(v.clone())
        } else if let Some(vf) = &e.value_from {
            if let Some(r) = &vf.config_map_key_ref {
                lookup(&sources.config_maps, "configmap", r)?
            } else if let Some(r) = &vf.secret_key_ref {
                lookup(&sources.secrets, "secret", r)?
            } else if let Some(f) = &vf.field_ref {
                Some(match f.field_path.as_str() {
                    "metadata.name" => pod.metadata.name.clone(),
                    "metadata.namespace" => pod.metadata.namespace.clone(),
                    "metadata.uid" => pod_uid(pod).to_string(),
                    "spec.nodeName" => facts.node_name.clone(),
                    "status.podIP" | "status.hostIP" => facts.host_ip.clone(),
                    other => return Err(EnvError::UnsupportedField(e.name.clone(), other.to_string())),
                })
            } else {
                Some(String::new())
            }
        } else {
            Some(String::new())
        };
        if let Some(v) = value {
            set(&mut out, e.name.clone(), v);
        }
    }
    Ok(out)
}

/// Default file mode of ConfigMap volume files (Kubernetes' default).
pub const CONFIG_MAP_DEFAULT_MODE: u32 = 0o644;
/// Default file mode of Secret volume files: owner-only, because the process runtime writes them to the host
/// file system (Kubernetes uses 0644 inside a container's private mount namespace).
pub const SECRET_DEFAULT_MODE: u32 = 0o600;

/// One file of a materialised volume. `Debug` prints no content: it may be a secret.
#[derive(Clone, PartialEq, Eq)]
pub struct MountFile {
    /// Relative to the mount path; empty when the mount path itself is this file (a `subPath` naming a key).
    pub path: String,
    pub data: Vec<u8>,
    pub mode: u32,
}

impl std::fmt::Debug for MountFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MountFile")
            .field("path", &self.path)
            .field("bytes", &self.data.len())
            .field("mode", &format_args!("{:o}", self.mode))
            .finish()
    }
}

/// A volume as one container sees it: what to put at `mount_path` (a path inside the container).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mount {
    pub volume: String,
    /// Absolute container path (validated: no `..`).
    pub mount_path: String,
    pub read_only: bool,
    /// An `emptyDir`: created once per pod and kept across container restarts; `files` is empty.
    pub scratch: bool,
    /// The volume's files, written afresh at every container start.
    pub files: Vec<MountFile>,
}

fn check_mode(path: String, mode: Option<i32>, default: u32) -> Result<u32, EnvError> {
    match mode {
        None => Ok(default),
        Some(m) if (0..=0o777).contains(&m) => Ok(m as u32),
        Some(m) => Err(EnvError::InvalidVolume { path, message: format!("mode {m} is outside 0..=0777 (511)") }),
    }
}

/// A key's files per Kubernetes: every key as a file named after it, or only `items` (key -> path).
fn volume_files(
    kind: &'static str,
    name: &str,
    values: Option<&BTreeMap<String, String>>,
    items: &[KeyToPath],
    default_mode: u32,
    optional: bool,
    vpath: &str,
) -> Result<Vec<MountFile>, EnvError> {
    let Some(values) = values else {
        return match (optional, kind) {
            (true, _) => Ok(Vec::new()),
            (false, "secret") => Err(EnvError::SecretNotFound(name.to_string())),
            (false, _) => Err(EnvError::ConfigMapNotFound(name.to_string())),
        };
    };
    if items.is_empty() {
        return Ok(values
            .iter()
            .map(|(k, v)| MountFile { path: k.clone(), data: v.as_bytes().to_vec(), mode: default_mode })
            .collect());
    }
    let mut files = Vec::new();
    for (i, it) in items.iter().enumerate() {
        let ip = format!("{vpath}.items[{i}]");
        if it.path.is_empty() || it.path.starts_with('/') || it.path.split('/').any(|s| s == "..") {
            return Err(EnvError::InvalidVolume {
                path: format!("{ip}.path"),
                message: "must be a relative path without '..'".into(),
            });
        }
        let mode = check_mode(format!("{ip}.mode"), it.mode, default_mode)?;
        match values.get(&it.key) {
            Some(v) => files.push(MountFile { path: it.path.clone(), data: v.as_bytes().to_vec(), mode }),
            None if optional => {}
            None => {
                return Err(EnvError::KeyNotFound { source_kind: kind, name: name.to_string(), key: it.key.clone() })
            }
        }
    }
    Ok(files)
}

/// The volumes a container mounts, with their content resolved from already-fetched ConfigMaps and Secrets.
/// A missing non-optional object or key is an error, as for the environment.
pub fn resolve_mounts(pod: &Pod, c: &Container, sources: &EnvSources) -> Result<Vec<Mount>, EnvError> {
    let mut out = Vec::new();
    for m in &c.volume_mounts {
        let (vi, v) = pod
            .spec
            .volumes
            .iter()
            .enumerate()
            .find(|(_, v)| v.name == m.name)
            .ok_or_else(|| EnvError::NoSuchVolume(m.name.clone()))?;
        let vpath = format!("volumes[{vi}]");
        if !m.mount_path.starts_with('/')
            || m.mount_path.trim_matches('/').is_empty()
            || m.mount_path.split('/').any(|s| s == "..")
        {
            return Err(EnvError::InvalidVolume {
                path: format!("containers[{}].volumeMounts.mountPath", c.name),
                message: format!("{:?} must be an absolute path below / without '..'", m.mount_path),
            });
        }
        let mut mount = Mount {
            volume: m.name.clone(),
            mount_path: m.mount_path.clone(),
            read_only: m.read_only,
            scratch: false,
            files: Vec::new(),
        };
        if let Some(cm) = &v.config_map {
            let vp = format!("{vpath}.configMap");
            let mode = check_mode(format!("{vp}.defaultMode"), cm.default_mode, CONFIG_MAP_DEFAULT_MODE)?;
            let values = sources.config_maps.get(&cm.name);
            let optional = cm.optional;
            mount.files = volume_files("configmap", &cm.name, values, &cm.items, mode, optional, &vp)?;
            // ConfigMap and Secret volumes are read-only in Kubernetes whatever the mount says.
            mount.read_only = true;
        } else if let Some(s) = &v.secret {
            let vp = format!("{vpath}.secret");
            let mode = check_mode(format!("{vp}.defaultMode"), s.default_mode, SECRET_DEFAULT_MODE)?;
            let values = sources.secrets.get(&s.secret_name);
            let optional = s.optional;
            mount.files = volume_files("secret", &s.secret_name, values, &s.items, mode, optional, &vp)?;
            mount.read_only = true;
        } else if v.empty_dir.is_some() {
            mount.scratch = true;
        } else {
            return Err(EnvError::InvalidVolume {
                path: vpath,
                message: "exactly one of configMap, secret, emptyDir must be set".into(),
            });
        }
        if let Some(sub) = m.sub_path.as_deref().map(|s| s.trim_matches('/')).filter(|s| !s.is_empty()) {
            if sub.split('/').any(|s| s == "..") {
                return Err(EnvError::InvalidVolume {
                    path: format!("containers[{}].volumeMounts.subPath", c.name),
                    message: "must be a relative path without '..'".into(),
                });
            }
            if mount.scratch {
                return Err(EnvError::InvalidVolume {
                    path: format!("containers[{}].volumeMounts.subPath", c.name),
                    message: "subPath of an emptyDir volume is not supported".into(),
                });
            }
            let dir = format!("{sub}/");
            mount.files = std::mem::take(&mut mount.files)
                .into_iter()
                .filter_map(|mut f| {
                    if f.path == sub {
                        f.path = String::new();
                        Some(f)
                    } else {
                        f.path = f.path.strip_prefix(&dir)?.to_string();
                        Some(f)
                    }
                })
                .collect();
        }
        out.push(mount);
    }
    Ok(out)
}

fn lookup(
    maps: &HashMap<String, BTreeMap<String, String>>,
    kind: &'static str,
    r: &KeySelector,
) -> Result<Option<String>, EnvError> {
    let optional = r.optional;
    match maps.get(&r.name) {
        None if optional => Ok(None),
        None if kind == "secret" => Err(EnvError::SecretNotFound(r.name.clone())),
        None => Err(EnvError::ConfigMapNotFound(r.name.clone())),
        Some(m) => match m.get(&r.key) {
            Some(v) => Ok(Some(v.clone())),
            None if optional => Ok(None),
            None => Err(EnvError::KeyNotFound { source_kind: kind, name: r.name.clone(), key: r.key.clone() }),
        },
    }
}

/// A Secret's values, decoded by the model (line-wrapped base64 included, as the API accepts and stores it).
/// A Secret this agent cannot read has none.
pub fn secret_values(secret: &Value) -> BTreeMap<String, String> {
    let Ok(secret) = model::Secret::deserialize(secret) else {
        return BTreeMap::new();
    };
    secret
        .data
        .keys()
        .chain(secret.string_data.keys())
        .filter_map(|k| Some((k.clone(), String::from_utf8_lossy(&secret.get(k)?).into_owned())))
        .collect()
}

/// A ConfigMap's `data` as plain values.
pub fn config_map_values(cm: &Value) -> BTreeMap<String, String> {
    model::ConfigMap::deserialize(cm).map(|cm| cm.data).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn limits_use_the_model_quantity_parser() {
        let view = |mem: &str, cpu: &str| {
            decode_pod(&json!({
                "metadata": {"name": "p", "uid": "u"},
                "spec": {"containers": [{"name": "c", "resources": {"limits": {"memory": mem, "cpu": cpu}}}]}
            }))
        };
        let cases: &[(&str, &str, u64, u64)] = &[
            ("128Mi", "500m", 128 << 20, 500),
            ("1Gi", "1", 1 << 30, 1000),
            ("500M", "0.25", 500_000_000, 250),
            ("1.5Ki", "2.5", 1536, 2500),
            ("1e3", "100m", 1000, 100),
        ];
        for (mem, cpu, bytes, millis) in cases {
            let l = view(mem, cpu).unwrap().spec.containers[0].resources.limits();
            assert_eq!(l, Limits { memory_bytes: Some(*bytes), cpu_millis: Some(*millis) }, "{mem} {cpu}");
        }
        // Limits are parsed when the pod is decoded (the API server parsed them with the same Quantity before
        // storing the pod): a bad one fails the decoding, naming the field.
        let err = view("12Q", "1").unwrap_err().to_string();
        assert!(err.contains("spec.containers[0].resources.limits.memory") && err.contains("12Q"), "{err}");
        let err = view("1Mi", "x").unwrap_err().to_string();
        assert!(err.contains("spec.containers[0].resources.limits.cpu"), "{err}");
    }

    #[test]
    fn env_resolution_order_and_errors() {
        let pod = decode_pod(&json!({
            "metadata": {"name": "p", "uid": "u1"},
            "spec": {"containers": [{
                "name": "c",
                "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}],
                "env": [
                    {"name": "A", "value": "1"},
                    {"name": "CM_X", "value": "override"},
                    {"name": "S", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "pw"}}},
                    {"name": "N", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "O", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k", "optional": true}}}
                ]
            }]}
        }))
        .unwrap();
        let c = &pod.spec.containers[0];
        let mut src = EnvSources::default();
        src.config_maps.insert("cm".into(), [("X".to_string(), "x".to_string()), ("Y".into(), "y".into())].into());
        let facts = PodFacts { node_name: "n1".into(), host_ip: "127.0.0.1".into() };
        assert_eq!(resolve_env(&pod, c, &src, &facts), Err(EnvError::SecretNotFound("sec".into())));
        src.secrets.insert("sec".into(), [("pw".to_string(), "hunter2".to_string())].into());
        let env = resolve_env(&pod, c, &src, &facts).unwrap();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("CM_X"), Some("override"));
        assert_eq!(get("CM_Y"), Some("y"));
        assert_eq!(get("S"), Some("hunter2"));
        assert_eq!(get("N"), Some("p"));
        assert_eq!(get("O"), None);
        assert_eq!(pod.metadata.namespace, "default");
    }

    #[test]
    fn stored_pods_decode_leniently() {
        // Fields a later version may add, at every level, are ignored; a pod without a namespace is in `default`.
        let pod = decode_pod(&json!({
            "metadata": {"name": "p", "future": 1},
            "spec": {"future": {}, "containers": [{
                "name": "c", "future": [1],
                "readinessProbe": {"tcpSocket": {"port": 80, "future": true}, "future": 2}
            }]},
            "status": {"future": "x", "containerStatuses": [{"name": "c", "restartCount": 2, "future": {}}]},
            "future": null
        }))
        .unwrap();
        assert_eq!(pod.metadata.namespace, "default");
        assert_eq!(pod.recorded_restart_count("c"), 2);
        let probe = pod.spec.containers[0].readiness_probe.as_ref().unwrap();
        assert_eq!(probe.period_seconds, 10, "defaults are the model's");
        // What the model cannot read is refused with its path, never half-read.
        let err = decode_pod(&json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": 1}]}})).unwrap_err();
        assert_eq!(
            err.to_string(),
            "pod object: spec.containers[0].name: invalid type: integer `1`, expected a string"
        );
    }

    #[test]
    fn secret_decoding() {
        let s = json!({"data": {"a": "aGVsbG8=", "wrapped": "aGVs\nbG8g\nd29y\nbGQ=\n"}, "stringData": {"b": "plain"}});
        let v = secret_values(&s);
        assert_eq!(v.get("a").map(String::as_str), Some("hello"));
        assert_eq!(v.get("b").map(String::as_str), Some("plain"));
        // Line-wrapped base64 (as `base64` prints it): the API accepts it and stores it as written.
        assert_eq!(v.get("wrapped").map(String::as_str), Some("hello world"));
    }

    fn mount_pod() -> Pod {
        decode_pod(&json!({
            "metadata": {"name": "p"},
            "spec": {
                "volumes": [
                    {"name": "conf", "configMap": {"name": "cm", "items": [{"key": "a", "path": "sub/a.txt"}]}},
                    {"name": "all", "configMap": {"name": "cm", "defaultMode": 0o640}},
                    {"name": "creds", "secret": {"secretName": "sec"}},
                    {"name": "maybe", "secret": {"secretName": "none", "optional": true}},
                    {"name": "scratch", "emptyDir": {}}
                ],
                "containers": [{
                    "name": "c",
                    "volumeMounts": [
                        {"name": "conf", "mountPath": "/etc/conf"},
                        {"name": "all", "mountPath": "/etc/all"},
                        {"name": "creds", "mountPath": "/run/creds"},
                        {"name": "maybe", "mountPath": "/run/maybe"},
                        {"name": "scratch", "mountPath": "/tmp/s"},
                        {"name": "all", "mountPath": "/etc/b.conf", "subPath": "b"}
                    ]
                }]
            }
        }))
        .unwrap()
    }

    #[test]
    fn mounts_resolve_items_modes_and_sub_paths() {
        let pod = mount_pod();
        let c = &pod.spec.containers[0];
        let refs = pod.spec.container_config_references(c);
        let (cms, secrets): (Vec<_>, Vec<_>) =
            (refs.config_maps.into_iter().collect(), refs.secrets.into_iter().collect());
        assert_eq!((cms, secrets), (vec!["cm".to_string()], vec!["none".to_string(), "sec".to_string()]));
        let mut src = EnvSources::default();
        assert_eq!(resolve_mounts(&pod, c, &src), Err(EnvError::ConfigMapNotFound("cm".into())));
        assert_eq!(EnvError::ConfigMapNotFound("cm".into()).to_string(), "configmap \"cm\" not found");
        src.config_maps.insert("cm".into(), [("a".to_string(), "A".to_string()), ("b".into(), "B".into())].into());
        assert_eq!(resolve_mounts(&pod, c, &src), Err(EnvError::SecretNotFound("sec".into())));
        src.secrets.insert("sec".into(), [("pw".to_string(), "hunter2".to_string())].into());
        let m = resolve_mounts(&pod, c, &src).unwrap();
        let files =
            |i: usize| m[i].files.iter().map(|f| (f.path.as_str(), f.data.as_slice(), f.mode)).collect::<Vec<_>>();
        assert_eq!(files(0), vec![("sub/a.txt", &b"A"[..], 0o644)]);
        assert_eq!(files(1), vec![("a", &b"A"[..], 0o640), ("b", &b"B"[..], 0o640)]);
        assert_eq!(files(2), vec![("pw", &b"hunter2"[..], SECRET_DEFAULT_MODE)]);
        assert!(m[2].read_only && !m[4].read_only);
        assert!(files(3).is_empty(), "optional and absent: an empty directory");
        assert!(m[4].scratch);
        assert_eq!(files(5), vec![("", &b"B"[..], 0o640)], "subPath naming a key mounts one file");
        // Debug never shows the content.
        assert!(!format!("{m:?}").contains("hunter2"));
    }

    #[test]
    fn mount_errors_name_the_key_or_field() {
        let pod = decode_pod(&json!({
            "metadata": {"name": "p"},
            "spec": {
                "volumes": [{"name": "v", "configMap": {"name": "cm", "items": [{"key": "missing", "path": "x"}]}}],
                "containers": [{"name": "c", "volumeMounts": [{"name": "v", "mountPath": "/x"}]}]
            }
        }))
        .unwrap();
        let mut src = EnvSources::default();
        src.config_maps.insert("cm".into(), BTreeMap::new());
        let err = resolve_mounts(&pod, &pod.spec.containers[0], &src).unwrap_err();
        assert_eq!(err.to_string(), "key \"missing\" not found in configmap \"cm\"");
        let bad_mode = decode_pod(&json!({
            "metadata": {"name": "p"},
            "spec": {
                "volumes": [{"name": "v", "secret": {"secretName": "s", "defaultMode": 4095}}],
                "containers": [{"name": "c", "volumeMounts": [{"name": "v", "mountPath": "/x"}]}]
            }
        }))
        .unwrap();
        src.secrets.insert("s".into(), BTreeMap::new());
        let err = resolve_mounts(&bad_mode, &bad_mode.spec.containers[0], &src).unwrap_err();
        assert!(err.to_string().starts_with("volumes[0].secret.defaultMode:"), "{err}");
    }

    #[test]
    fn write_volume_replaces_content_with_exact_modes() {
        use crate::runtime::write_volume;
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("etc/conf");
        let file = |path: &str, data: &str, mode| MountFile { path: path.into(), data: data.into(), mode };
        let m = Mount {
            volume: "v".into(),
            mount_path: "/etc/conf".into(),
            read_only: true,
            scratch: false,
            files: vec![file("a", "one", 0o600), file("d/b", "two", 0o644)],
        };
        write_volume(&m, &target).unwrap();
        assert_eq!(std::fs::read_to_string(target.join("a")).unwrap(), "one");
        assert_eq!(std::fs::metadata(target.join("a")).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(target.join("d/b")).unwrap().permissions().mode() & 0o777, 0o644);
        // A later start sees only the new content: stale keys disappear.
        let m2 = Mount { files: vec![file("a", "uno", 0o600)], ..m.clone() };
        write_volume(&m2, &target).unwrap();
        assert_eq!(std::fs::read_to_string(target.join("a")).unwrap(), "uno");
        assert!(!target.join("d").exists());
        // One file at the mount path itself.
        let single = Mount { files: vec![file("", "solo", 0o640)], mount_path: "/etc/x.conf".into(), ..m };
        write_volume(&single, &dir.path().join("etc/x.conf")).unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("etc/x.conf")).unwrap(), "solo");
    }
}
