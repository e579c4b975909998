//! `berth cordon`, `berth uncordon` and `berth drain` through the real binary against `berth server`.

use crate::common::Server;
use serde_json::Value;

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: worker-1}
status:
  capacity: {cpu: "4", memory: 8Gi, pods: "110"}
  conditions: [{type: Ready, status: "True"}]
---
apiVersion: v1
kind: Pod
metadata:
  name: managed
  namespace: default
  ownerReferences: [{apiVersion: apps/v1, kind: Deployment, name: web, uid: u1, controller: true}]
spec:
  nodeName: worker-1
  containers: [{name: c, image: x}]
---
apiVersion: v1
kind: Pod
metadata: {name: loose, namespace: default}
spec:
  nodeName: worker-1
  containers: [{name: c, image: x}]
---
apiVersion: v1
kind: Pod
metadata: {name: elsewhere, namespace: default}
spec:
  nodeName: worker-2
  containers: [{name: c, image: x}]
"#;

fn unschedulable(server: &Server) -> bool {
    let out = server.ok(&["get", "node", "worker-1", "-o", "json"]);
    let v: Value = serde_json::from_str(&out).expect("node json");
    v["spec"]["unschedulable"].as_bool().unwrap_or(false)
}

fn pod_names(server: &Server) -> Vec<String> {
    let out = server.ok(&["get", "pods", "-A", "-o", "json"]);
    let v: Value = serde_json::from_str(&out).expect("pods json");
    let mut names: Vec<String> = v["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    names.sort();
    names
}

#[test]
fn cordon_uncordon_drain() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The nodes here are plain objects with no agent heartbeating them, so no controllers run (the node
    // controller would rightly evict their pods).
    let server = Server::start(dir.path(), &["--no-controllers"]);
    let file = dir.path().join("objects.yaml");
    std::fs::write(&file, MANIFESTS).expect("write manifests");
    server.ok(&["apply", "-f", file.to_str().expect("utf-8 path")]);

    assert_eq!(server.ok(&["cordon", "worker-1"]).trim(), "node/worker-1 cordoned");
    assert!(unschedulable(&server));
    assert_eq!(server.ok(&["cordon", "worker-1"]).trim(), "node/worker-1 already cordoned");
    assert_eq!(server.ok(&["uncordon", "worker-1"]).trim(), "node/worker-1 uncordoned");
    assert!(!unschedulable(&server));

    // A pod without a controller would be lost: drain refuses, naming it, but has cordoned the node.
    let out = server.berth(&["drain", "worker-1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("default/loose") && err.contains("--force"), "{err}");
    assert!(unschedulable(&server));
    assert_eq!(pod_names(&server), vec!["elsewhere", "loose", "managed"]);

    let out = server.ok(&["drain", "worker-1", "--force"]);
    assert!(out.contains("evicting pod default/managed"), "{out}");
    assert!(out.contains("evicting pod default/loose"), "{out}");
    assert!(out.trim_end().ends_with("node/worker-1 drained"), "{out}");
    assert_eq!(pod_names(&server), vec!["elsewhere"]);

    let out = server.berth(&["cordon", "nope"]);
    assert!(!out.status.success());
}
