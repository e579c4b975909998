//! The one walk over a pod's ConfigMap and Secret references, in its two scopes: the whole pod (what a
//! Deployment's config hash covers) and one container (what the agent fetches before starting it).

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
