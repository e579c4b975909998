//! Helpers over stored objects as JSON: system metadata, the "desired" view that `apply` and `diff` compare,
//! and resourceVersion injection.

use serde_json::{Map, Value};
use std::time::SystemTime;

/// Annotation prefixes written by controllers, not users: `apply` keeps them and `diff` ignores them, so a
/// controller's bookkeeping never makes a re-apply look like a change (or get undone by one).
const CONTROLLER_ANNOTATION_PREFIXES: &[&str] = &["deployment.kubernetes.io/"];

fn controller_owned(key: &str) -> bool {
    CONTROLLER_ANNOTATION_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// The parts of an object a user declares: everything but `status`, the system-owned metadata and
/// controller-owned annotations. Two objects with equal desired views make `apply` a no-op.
pub fn desired_view(object: &Value) -> Value {
    let mut out = Map::new();
    if let Some(map) = object.as_object() {
        for (k, v) in map {
            match k.as_str() {
                "status" => {}
                "metadata" => {
                    let mut meta = Map::new();
                    if let Some(m) = v.as_object() {
                        for key in ["name", "namespace", "labels", "annotations"] {
                            let user_owned;
                            let x = if key == "annotations" {
                                user_owned = m.get(key).and_then(Value::as_object).map(|a| {
                                    let kept = a.iter().filter(|(k, _)| !controller_owned(k));
                                    Value::Object(kept.map(|(k, v)| (k.clone(), v.clone())).collect())
                                });
                                user_owned.as_ref()
                            } else {
                                m.get(key)
                            };
                            if let Some(x) = x {
                                let empty = x.as_object().is_some_and(|o| o.is_empty());
                                if !x.is_null() && !empty {
                                    meta.insert(key.to_string(), x.clone());
                                }
                            }
                        }
                    }
                    out.insert(k.clone(), Value::Object(meta));
                }
                _ => {
                    out.insert(k.clone(), v.clone());
                }
            }
        }
    }
    Value::Object(out)
}

/// `spec` (or, for kinds without one, every top-level field but metadata/status): a change bumps generation.
fn generation_view(object: &Value) -> Value {
    let mut v = desired_view(object);
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
    }
    v
}

pub fn metadata(object: &Value) -> Option<&Map<String, Value>> {
    object.get("metadata").and_then(Value::as_object)
}

fn metadata_mut(object: &mut Value) -> &mut Map<String, Value> {
    if !object.get("metadata").is_some_and(Value::is_object) {
        object["metadata"] = Value::Object(Map::new());
    }
    object["metadata"].as_object_mut().expect("metadata was just made an object")
}

/// `metadata.resourceVersion` as a number, if present and well-formed.
pub fn resource_version(object: &Value) -> Result<Option<u64>, String> {
    match metadata(object).and_then(|m| m.get("resourceVersion")) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => {
            s.parse().map(Some).map_err(|_| format!("metadata.resourceVersion: {s:?} is not a revision"))
        }
        Some(Value::Number(n)) => {
            n.as_u64().map(Some).ok_or_else(|| "metadata.resourceVersion: not a revision".to_string())
        }
        Some(_) => Err("metadata.resourceVersion: expected a string".to_string()),
    }
}

pub fn set_resource_version(object: &mut Value, revision: u64) {
    metadata_mut(object).insert("resourceVersion".into(), Value::String(revision.to_string()));
}

/// Remove fields that the store derives (`resourceVersion`) before writing bytes.
pub fn strip_for_storage(object: &mut Value) {
    metadata_mut(object).remove("resourceVersion");
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Fill system metadata for a new object.
pub fn prepare_create(object: &mut Value) {
    let meta = metadata_mut(object);
    meta.insert("uid".into(), Value::String(uuid::Uuid::new_v4().to_string()));
    meta.insert("creationTimestamp".into(), Value::String(now_rfc3339()));
    meta.insert("generation".into(), Value::from(1u64));
    meta.remove("resourceVersion");
    meta.remove("deletionTimestamp");
}

/// Merge a user's new desired object onto the stored one: keep system metadata and status; bump generation
/// when the spec changed.
pub fn merge_update(stored: &Value, desired: &Value, keep_status: bool) -> Value {
    let mut out = desired.clone();
    let old_meta = metadata(stored).cloned().unwrap_or_default();
    let spec_changed = generation_view(stored) != generation_view(desired);
    let meta = metadata_mut(&mut out);
    for key in ["uid", "creationTimestamp", "deletionTimestamp", "ownerReferences"] {
        match old_meta.get(key) {
            Some(v) if !meta.contains_key(key) => {
                meta.insert(key.to_string(), v.clone());
            }
            _ => {}
        }
    }
    if let Some(Value::Object(old)) = old_meta.get("annotations") {
        let kept: Vec<(String, Value)> =
            old.iter().filter(|(k, _)| controller_owned(k)).map(|(k, v)| (k.clone(), v.clone())).collect();
        if !kept.is_empty() {
            let annotations = meta.entry("annotations").or_insert_with(|| Value::Object(Map::new()));
            if let Some(a) = annotations.as_object_mut() {
                for (k, v) in kept {
                    a.entry(k).or_insert(v);
                }
            }
        }
    }
    let generation = old_meta.get("generation").and_then(Value::as_u64).unwrap_or(1);
    meta.insert("generation".into(), Value::from(if spec_changed { generation + 1 } else { generation }));
    meta.remove("resourceVersion");
    if keep_status {
        match stored.get("status") {
            Some(s) => out["status"] = s.clone(),
            None => {
                if let Some(m) = out.as_object_mut() {
                    m.remove("status");
                }
            }
        }
    }
    out
}

/// Replace only `status` of the stored object (the status subresource).
pub fn merge_status(stored: &Value, update: &Value) -> Value {
    let mut out = stored.clone();
    match update.get("status") {
        Some(s) => out["status"] = s.clone(),
        None => {
            if let Some(m) = out.as_object_mut() {
                m.remove("status");
            }
        }
    }
    metadata_mut(&mut out).remove("resourceVersion");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn desired_view_ignores_system_fields_and_status() {
        let a = json!({"kind":"Deployment","metadata":{"name":"web","uid":"x","resourceVersion":"5","labels":{}},
                       "spec":{"replicas":2},"status":{"readyReplicas":2}});
        let b = json!({"kind":"Deployment","metadata":{"name":"web"},"spec":{"replicas":2}});
        assert_eq!(desired_view(&a), desired_view(&b));
        let c = json!({"kind":"Deployment","metadata":{"name":"web"},"spec":{"replicas":3}});
        assert_ne!(desired_view(&a), desired_view(&c));
    }

    #[test]
    fn merge_update_keeps_status_and_bumps_generation_on_spec_change() {
        let stored = json!({"metadata":{"name":"web","uid":"u","generation":3},"spec":{"replicas":2},"status":{"x":1}});
        let same = merge_update(&stored, &json!({"metadata":{"name":"web"},"spec":{"replicas":2}}), true);
        assert_eq!(same["metadata"]["generation"], 3);
        assert_eq!(same["status"]["x"], 1);
        assert_eq!(same["metadata"]["uid"], "u");
        let changed = merge_update(&stored, &json!({"metadata":{"name":"web"},"spec":{"replicas":5}}), true);
        assert_eq!(changed["metadata"]["generation"], 4);
    }

    #[test]
    fn controller_annotations_survive_apply_and_do_not_count_as_changes() {
        let stored = json!({"metadata":{"name":"web","annotations":{"deployment.kubernetes.io/revision":"2","team":"a"}},
                            "spec":{"replicas":2}});
        let manifest = json!({"metadata":{"name":"web","annotations":{"team":"a"}},"spec":{"replicas":2}});
        assert_eq!(desired_view(&stored), desired_view(&manifest));
        let merged = merge_update(&stored, &json!({"metadata":{"name":"web"},"spec":{"replicas":3}}), true);
        assert_eq!(merged["metadata"]["annotations"], json!({"deployment.kubernetes.io/revision":"2"}));
    }

    #[test]
    fn resource_version_parses_strings_and_rejects_garbage() {
        assert_eq!(resource_version(&json!({"metadata":{"resourceVersion":"12"}})), Ok(Some(12)));
        assert_eq!(resource_version(&json!({"metadata":{}})), Ok(None));
        assert!(resource_version(&json!({"metadata":{"resourceVersion":"abc"}})).is_err());
    }
}
