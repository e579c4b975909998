//! What readers of a stored pod (the agent, the controllers) ask of the model: the one walk over its ConfigMap
//! and Secret references, in its two scopes (the whole pod, what a Deployment's config hash covers; one
//! container, what the agent fetches before starting it), ports, limits, the grace period, restart counts.

use serde_json::json;

fn names(set: &std::collections::BTreeSet<String>) -> Vec<&str> {
    set.iter().map(String::as_str).collect()
}

#[test]
fn whole_pod_and_one_container() {
    let spec: model::PodSpec = serde_json::from_value(json!({
        "volumes": [
            {"name": "conf", "configMap": {"name": "cm-vol"}},
            {"name": "creds", "secret": {"secretName": "sec-vol"}},
            {"name": "unmounted", "secret": {"secretName": "sec-unmounted"}},
            {"name": "scratch", "emptyDir": {}}
        ],
        "containers": [
            {"name": "a", "command": ["x"],
             "env": [
                 {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cm-env", "key": "k"}}},
                 {"name": "B", "valueFrom": {"secretKeyRef": {"name": "sec-env", "key": "k"}}},
                 {"name": "C", "value": "plain"},
                 {"name": "D", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
             ],
             "volumeMounts": [{"name": "conf", "mountPath": "/c"}, {"name": "scratch", "mountPath": "/s"},
                              {"name": "missing", "mountPath": "/m"}]},
            {"name": "b", "command": ["x"],
             "envFrom": [{"configMapRef": {"name": "cm-from"}}, {"secretRef": {"name": "sec-from"}},
                         {"configMapRef": {"name": "cm-env"}}],
             "volumeMounts": [{"name": "creds", "mountPath": "/k"}]}
        ]
    }))
    .unwrap();
    // (scope, config maps, secrets)
    let cases = [
        (
            "pod",
            spec.config_references(),
            vec!["cm-env", "cm-from", "cm-vol"],
            vec!["sec-env", "sec-from", "sec-unmounted", "sec-vol"],
        ),
        (
            "container a",
            spec.container_config_references(&spec.containers[0]),
            vec!["cm-env", "cm-vol"],
            vec!["sec-env"],
        ),
        (
            "container b",
            spec.container_config_references(&spec.containers[1]),
            vec!["cm-env", "cm-from"],
            vec!["sec-from", "sec-vol"],
        ),
    ];
    for (scope, refs, config_maps, secrets) in cases {
        assert_eq!((names(&refs.config_maps), names(&refs.secrets)), (config_maps, secrets), "{scope}");
    }
}

#[test]
fn ports_limits_grace_and_restart_counts() {
    let pod: model::Pod = serde_json::from_value(json!({
        "metadata": {"name": "p"},
        "spec": {
            "terminationGracePeriodSeconds": 5,
            "containers": [
                {"name": "a", "command": ["x"],
                 "ports": [{"name": "http", "containerPort": 8080}, {"name": "admin", "containerPort": 9090}],
                 "resources": {"limits": {"memory": "64Mi", "cpu": "250m"}}},
                {"name": "b", "command": ["x"], "resources": {"limits": {"memory": 1000}}},
                {"name": "c", "command": ["x"], "ports": [{"containerPort": 70000}]}
            ]
        },
        "status": {"containerStatuses": [{"name": "a", "restartCount": 3}, {"name": "b", "restartCount": -1}]}
    }))
    .unwrap();
    let [a, b, c] = [&pod.spec.containers[0], &pod.spec.containers[1], &pod.spec.containers[2]];
    assert_eq!((a.first_port(), b.first_port(), c.first_port()), (Some(8080), None, None));
    // (probe port, resolved)
    let ports = [
        (model::IntOrString::Int(8081), Some(8081)),
        (model::IntOrString::String("admin".into()), Some(9090)),
        (model::IntOrString::String("9000".into()), Some(9000)),
        (model::IntOrString::String("nope".into()), None),
        (model::IntOrString::Int(-1), None),
        (model::IntOrString::Int(65536), None),
    ];
    for (port, want) in ports {
        assert_eq!(a.resolve_port(&port), want, "{port}");
    }
    assert_eq!(a.resources.limits(), model::Limits { memory_bytes: Some(64 << 20), cpu_millis: Some(250) });
    assert_eq!(b.resources.limits(), model::Limits { memory_bytes: Some(1000), cpu_millis: None });
    assert_eq!(c.resources.limits(), model::Limits::default());
    assert_eq!(pod.spec.termination_grace_period(), std::time::Duration::from_secs(5));
    let defaulted: model::PodSpec = serde_json::from_value(json!({"containers": []})).unwrap();
    assert_eq!(defaulted.termination_grace_period(), std::time::Duration::from_secs(30));
    let restarts: Vec<u32> = ["a", "b", "c"].iter().map(|n| pod.recorded_restart_count(n)).collect();
    assert_eq!(restarts, vec![3, 0, 0]);
}
