//! Strictness lives in decoding, not in the types: manifests and API bodies reject a field their kind does not
//! know, at its path and in the order a strict decoder would have met it, while the same types read stored
//! JSON leniently (a field added by a later version never breaks a reader).

use model::{manifest, Kind, ManifestErrorKind};
use serde_json::{json, Value};

/// A valid Pod API body; cases edit it with a JSON pointer.
fn pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "labels": {"app": "web"}},
        "spec": {
            "containers": [{"name": "c", "command": ["berth", "echo"], "ports": [{"name": "http", "containerPort": 8080}]}],
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]
            }}}
        },
        "status": {"phase": "Running", "containerStatuses": [{"name": "c", "restartCount": 1}]}
    })
}

fn with(mut v: Value, pointer: &str, field: &str, value: Value) -> Value {
    v.pointer_mut(pointer).unwrap_or_else(|| panic!("test bug: no {pointer}"))[field] = value;
    v
}

#[test]
fn api_bodies_reject_unknown_fields_at_their_path_in_order() {
    use ManifestErrorKind::*;
    let cases: Vec<(&str, Value, ManifestErrorKind, &str)> = vec![
        ("top level", with(pod(), "", "specc", json!({})), UnknownField, "specc: unknown field"),
        ("metadata", with(pod(), "/metadata", "labelz", json!({})), UnknownField, "metadata.labelz: unknown field"),
        ("in a list", with(pod(), "/spec/containers/0", "portz", json!(1)), UnknownField, "spec.containers[0].portz: unknown field"),
        (
            "nested list in a list",
            with(pod(), "/spec/containers/0/ports/0", "hostPortz", json!(1)),
            UnknownField,
            "spec.containers[0].ports[0].hostPortz: unknown field",
        ),
        (
            "below optional fields",
            with(pod(), "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms/0", "matchExpressionz", json!([])),
            UnknownField,
            "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressionz: unknown field",
        ),
        ("in status", with(pod(), "/status/containerStatuses/0", "statez", json!({})), UnknownField, "status.containerStatuses[0].statez: unknown field"),
        (
            // `imagePullPolicy` is known but ignored: anything goes inside it, and the unknown field after it
            // is still found.
            "after an ignored field",
            with(with(pod(), "/spec/containers/0", "imagePullPolicy", json!({"any": {"thing": 1}})), "/spec/containers/0", "imagez", json!(1)),
            UnknownField,
            "spec.containers[0].imagez: unknown field",
        ),
        (
            "unknown field before a type error: the unknown field",
            with(with(pod(), "/spec/containers/0", "imagez", json!(1)), "/spec/containers/0", "ports", json!("80")),
            UnknownField,
            "spec.containers[0].imagez: unknown field",
        ),
        (
            "type error before an unknown field: the type error",
            with(with(pod(), "/spec/containers/0", "args", json!(5)), "/spec/containers/0", "zzz", json!(1)),
            InvalidType,
            "spec.containers[0].args: invalid type: integer `5`, expected a sequence",
        ),
        (
            // A missing field is only noticed at the end of its object, after every key in it.
            "unknown field in an object that also misses a field: the unknown field",
            with(pod(), "/spec/containers/0", "ports", json!([{"name": "http", "containerPortz": 80}])),
            UnknownField,
            "spec.containers[0].ports[0].containerPortz: unknown field",
        ),
        (
            "error in an earlier list item, unknown field in a later one: the error",
            with(
                with(pod(), "/spec", "containers", json!([{"name": "a", "args": 5}, {"name": "b", "command": ["x"]}])),
                "/spec/containers/1",
                "zzz",
                json!(1),
            ),
            InvalidType,
            "spec.containers[0].args: invalid type",
        ),
    ];
    let mut failures = Vec::new();
    for (name, body, kind, want) in cases {
        match model::decode(Some(Kind::Pod), body) {
            Ok(d) => failures.push(format!("{name}: accepted: {}", d.object)),
            Err(e) if e.kind != kind || !e.to_string().contains(want) => {
                failures.push(format!("{name}:\n   want {kind:?} {want:?}\n    got {:?} {:?}", e.kind, e.to_string()))
            }
            Err(e) => assert!(e.to_string().starts_with("request body: "), "{name}: {e}"),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The valid body itself is accepted: every case above fails for its edit alone.
    model::decode(Some(Kind::Pod), pod()).unwrap();
}

#[test]
fn manifests_reject_unknown_fields_in_every_kind() {
    use ManifestErrorKind::UnknownField;
    let cases = [
        (
            "list item",
            "{\"items\": [{\"apiVersion\": \"v1\", \"kind\": \"ConfigMap\", \"metadata\": {\"name\": \"a\"}},\n\
             {\"apiVersion\": \"v1\", \"kind\": \"ConfigMap\", \"metadata\": {\"name\": \"b\", \"labelz\": {}}}]}",
            "list.json: document 1: items[1].metadata.labelz: unknown field",
        ),
        (
            "secret, value not echoed",
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndatas: {token: hunter2}\n",
            "list.json: document 1: datas: unknown field",
        ),
        (
            "hpa",
            "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {name: a}\nspec:\n  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}\n  maxReplicas: 3\n  metrics:\n    - type: Pods\n      pods: {metricz: {name: x}}\n",
            "list.json: document 1: spec.metrics[0].pods.metricz: unknown field",
        ),
        (
            "node taint",
            "apiVersion: v1\nkind: Node\nmetadata: {name: n}\nspec:\n  taints: [{key: k, effect: NoSchedule, effectz: x}]\n",
            "list.json: document 1: spec.taints[0].effectz: unknown field",
        ),
        (
            "second document",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports: [{port: 80, targetPortz: 8080}]\n",
            "list.json: document 2: spec.ports[0].targetPortz: unknown field",
        ),
    ];
    for (name, source, want) in cases {
        let e = manifest::parse("list.json", source).expect_err(name);
        assert_eq!((e.kind, e.to_string().as_str()), (UnknownField, want), "{name}");
        assert!(!e.to_string().contains("hunter2"), "{name}: {e}");
    }
}

#[test]
fn known_but_ignored_fields_still_warn() {
    let body = with(pod(), "/spec/containers/0", "securityContext", json!({"runAsUser": 1000, "whatever": true}));
    let d = model::decode(Some(Kind::Pod), body).unwrap();
    assert_eq!(
        d.warnings,
        vec!["spec.containers[0].securityContext: accepted but ignored (Berth does not implement it)"]
    );
}

#[test]
fn stored_json_decodes_leniently_into_the_model_types() {
    // What a later version might store: fields this one does not know, at every level, and no type meta.
    let mut stored = pod();
    stored.as_object_mut().unwrap().remove("apiVersion");
    stored.as_object_mut().unwrap().remove("kind");
    let stored = with(stored, "", "future", json!({"x": 1}));
    let stored = with(stored, "/metadata", "future", json!(1));
    let stored = with(stored, "/spec/containers/0", "future", json!([1, 2]));
    let stored = with(stored, "/spec/containers/0/ports/0", "future", json!("x"));
    let stored = with(stored, "/status/containerStatuses/0", "future", json!(null));
    // The API would refuse it...
    let e = model::decode(Some(Kind::Pod), stored.clone()).unwrap_err();
    assert_eq!(e.kind, ManifestErrorKind::UnknownField);
    // ...and a reader of the store takes what it knows.
    let p: model::Pod = serde_json::from_value(stored).unwrap();
    assert_eq!(p.metadata.name, "p");
    assert_eq!(p.spec.containers[0].port_by_name("http").map(|p| p.container_port), Some(8080));
    assert_eq!(p.status.as_ref().unwrap().container_statuses[0].restart_count, 1);
    assert_eq!((p.api_version.as_str(), p.kind.as_str()), ("", ""));

    let d: model::Deployment = serde_json::from_value(json!({
        "metadata": {"name": "d"},
        "spec": {"selector": {"matchLabels": {"a": "b"}, "future": 1},
                 "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "future": 1}]}},
                 "future": true}
    }))
    .unwrap();
    assert_eq!(d.spec.replicas, 1);
    assert_eq!(d.spec.template.spec.containers[0].name, "c");
}
