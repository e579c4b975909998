//! Node lifecycle and endpoints as pure functions.

use control_plane::controllers::endpoints::{desired_objects, diff, endpoints_for};
use control_plane::controllers::node::{reconcile_nodes, reconcile_nodes_observed, NodeAction, DEFAULT_GRACE};
use model::clock::{Clock, ManualClock};
use model::{Kind, Node, Pod, Secret, Service};
use serde_json::json;
use std::time::Duration;

fn decode<T: serde::de::DeserializeOwned>(kind: Kind, v: serde_json::Value) -> T {
    let doc = model::decode(Some(kind), v).expect("valid object");
    serde_json::from_value(doc.object).expect("typed object")
}

fn node(name: &str, heartbeat: &str, zone: &str) -> Node {
    decode(
        Kind::Node,
        json!({"apiVersion": "berth.dev/v1", "kind": "Node",
               "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone}},
               "status": {"heartbeatTime": heartbeat,
                          "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}],
                          "conditions": [{"type": "Ready", "status": "True"}]}}),
    )
}

fn pod(name: &str, node: &str, ready: bool, host_port: Option<i32>) -> Pod {
    let mut status = json!({"phase": "Running",
        "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]});
    if let Some(hp) = host_port {
        status["hostIP"] = json!("127.0.0.1");
        status["containerStatuses"] = json!([{"name": "app", "ready": ready,
            "ports": [{"name": "http", "containerPort": 8080, "hostPort": hp}]}]);
    }
    decode(
        Kind::Pod,
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": "default", "labels": {"app": "web", "v": "1"}},
               "spec": {"nodeName": node, "containers": [{"name": "app", "command": ["x"],
                        "ports": [{"name": "http", "containerPort": 8080}]}]},
               "status": status}),
    )
}

fn service() -> Service {
    decode(
        Kind::Service,
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "web", "namespace": "default"},
               "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}}),
    )
}

#[test]
fn silent_node_becomes_not_ready_and_its_pods_are_evicted() {
    let clock = ManualClock::new(humantime::parse_rfc3339("2026-01-01T00:00:20Z").unwrap());
    let nodes = vec![node("fresh", "2026-01-01T00:00:15Z", "a"), node("silent", "2026-01-01T00:00:05Z", "b")];
    let pods = vec![pod("p1", "fresh", true, None), pod("p2", "silent", true, None), pod("p3", "gone", true, None)];
    let plan = reconcile_nodes(&nodes, &pods, clock.now(), DEFAULT_GRACE);
    assert_eq!(
        plan.actions,
        vec![
            NodeAction::MarkNotReady { node: "silent".into(), silent_for: Duration::from_secs(15) },
            NodeAction::EvictPod { namespace: "default".into(), name: "p2".into(), node: "silent".into() },
            NodeAction::EvictPod { namespace: "default".into(), name: "p3".into(), node: "gone".into() },
        ]
    );
    // The fresh node goes stale 5 s later; that is when to look again.
    assert_eq!(plan.recheck_after, Some(Duration::from_secs(5)));
    // Within the grace period nothing happens.
    let early = humantime::parse_rfc3339("2026-01-01T00:00:14Z").unwrap();
    let plan = reconcile_nodes(&nodes[..1], &pods[..1], early, DEFAULT_GRACE);
    assert!(plan.actions.is_empty());
}

#[test]
fn a_restarted_control_plane_gives_every_node_a_grace_period() {
    // The control plane was down from 00:00:05 to 00:00:30; it restarts and watches from 00:00:30.
    let restarted = humantime::parse_rfc3339("2026-01-01T00:00:30Z").unwrap();
    let nodes = vec![node("n1", "2026-01-01T00:00:05Z", "a")];
    let pods = vec![pod("p1", "n1", true, None)];
    let plan = reconcile_nodes_observed(&nodes, &pods, restarted + Duration::from_secs(1), DEFAULT_GRACE, restarted);
    assert!(plan.actions.is_empty(), "{:?}", plan.actions);
    assert_eq!(plan.recheck_after, Some(Duration::from_secs(9)));
    // An agent that stays silent for a full grace period after the restart is lost.
    let plan = reconcile_nodes_observed(&nodes, &pods, restarted + DEFAULT_GRACE, DEFAULT_GRACE, restarted);
    assert_eq!(plan.actions.len(), 2, "{:?}", plan.actions);
    // The old view (watching for ever) would have evicted at once.
    assert_eq!(reconcile_nodes(&nodes, &pods, restarted, DEFAULT_GRACE).actions.len(), 2);
}

#[test]
fn endpoints_follow_pods_selected_by_services() {
    let nodes = vec![node("n1", "2026-01-01T00:00:15Z", "zone-a")];
    let mut terminating = pod("p3", "n1", true, Some(40003));
    terminating.metadata.deletion_timestamp = Some(model::Time::now());
    let mut unselected = pod("p4", "n1", true, None);
    unselected.metadata.labels.insert("app".into(), "other".into());
    let pods = vec![pod("p1", "n1", true, Some(40001)), pod("p2", "n1", false, None), terminating, unselected];
    let eps = endpoints_for(&[service()], &pods, &nodes);
    assert_eq!(eps.len(), 3);
    let p1 = &eps[0];
    assert_eq!(p1.address.to_string(), "127.0.0.1");
    assert_eq!(p1.ports[0].port, 40001, "hostPort wins over containerPort");
    assert_eq!(p1.ports[0].name.as_deref(), Some("http"));
    assert!(p1.ready && p1.serving && !p1.terminating);
    assert_eq!(p1.zone.as_deref(), Some("zone-a"));
    assert_eq!(p1.node.as_deref(), Some("n1"));
    let p2 = &eps[1];
    assert_eq!(p2.address.to_string(), "10.0.0.1", "node address without hostIP");
    assert_eq!(p2.ports[0].port, 8080);
    assert!(!p2.ready);
    let p3 = &eps[2];
    assert!(p3.terminating && !p3.ready && p3.serving);

    // A NotReady node makes its endpoints not ready at once.
    let mut lost = nodes.clone();
    lost[0].status.as_mut().unwrap().conditions[0].status = model::ConditionStatus::Unknown;
    assert!(endpoints_for(&[service()], &pods, &lost).iter().all(|e| !e.ready));
}

#[test]
fn diff_writes_only_what_changed() {
    let nodes = vec![node("n1", "2026-01-01T00:00:15Z", "zone-a")];
    let tls: Secret = decode(
        Kind::Secret,
        json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
               "metadata": {"name": "cert", "namespace": "default"},
               "stringData": {"tls.crt": "-----BEGIN CERTIFICATE-----", "tls.key": "-----BEGIN PRIVATE KEY-----"}}),
    );
    let pods = vec![pod("p1", "n1", true, Some(40001))];
    let registry = discovery::Registry::new();
    let desired = desired_objects(&[service()], &[], std::slice::from_ref(&tls), &pods, &nodes);
    assert_eq!(desired.len(), 3, "service, endpoint, certificate");
    registry.apply(diff(&registry.snapshot(), &desired));
    assert!(diff(&registry.snapshot(), &desired).is_empty(), "nothing to write twice");
    let pods = vec![pod("p1", "n1", false, Some(40001))];
    let desired = desired_objects(&[service()], &[], &[tls], &pods, &nodes);
    let changes = diff(&registry.snapshot(), &desired);
    assert_eq!(changes.len(), 1, "only the endpoint changed: {changes:?}");
    let desired = desired_objects(&[], &[], &[], &pods, &nodes);
    assert_eq!(diff(&registry.snapshot(), &desired).len(), 3, "all removed");
}
